"""Only Skatteverket's test personnummer appear in the repository (tests, examples, docs, config).

Every 12-digit number (optionally with - or + before the last four) in any committed text file that is
a *valid* personnummer or samordningsnummer must be one of tests/support/personnummer.py. The public
conformance examples under tests/conformance carry foreign identifiers (Danish CPR, US ids) and are
left out: a Danish CPR can look like a Swedish number by accident.
"""

import re
import subprocess
from pathlib import Path

from shared.identifiers import is_valid_person_identifier
from tests.support.personnummer import ADULTS, CHILD, SAMORDNINGSNUMMER

REPO = Path(__file__).resolve().parents[2]
ALLOWED = {*ADULTS, CHILD, SAMORDNINGSNUMMER}
CANDIDATE = re.compile(r"(?<![\d.])(\d{8})[-+]?(\d{4})(?![\d.])")
SKIP_PREFIXES = ("tests/conformance/", "uv.lock")


def test_every_valid_personnummer_in_the_repository_is_a_skatteverket_test_number():
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    offenders = []
    for name in files:
        if name.startswith(SKIP_PREFIXES):
            continue
        path = REPO / name
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        for m in CANDIDATE.finditer(text):
            number = m.group(1) + m.group(2)
            if is_valid_person_identifier(number) and number not in ALLOWED:
                offenders.append(f"{name}: {number[:8]}-****")
    assert offenders == []


def test_the_allowed_numbers_are_valid():
    assert all(is_valid_person_identifier(n) for n in ALLOWED)
