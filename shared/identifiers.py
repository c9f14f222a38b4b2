"""Swedish person identifiers: personnummer and samordningsnummer.

Pure functions, no I/O. The canonical form is 12 digits, ``YYYYMMDDNNNC``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Literal

PERSONNUMMER_SYSTEM = "http://electronichealth.se/identifier/personnummer"
SAMORDNINGSNUMMER_SYSTEM = "http://electronichealth.se/identifier/samordningsnummer"
PERSONNUMMER_OID = "urn:oid:1.2.752.129.2.1.3.1"
SAMORDNINGSNUMMER_OID = "urn:oid:1.2.752.129.2.1.3.3"
HSA_SYSTEM = "urn:oid:1.2.752.29.4.19"

# The personnummer patterns of the suite, each for one purpose, all here:
# a whole value in the 12-digit form (YYYYMMDD, an optional - or +, NNNC);
TWELVE_DIGITS = re.compile(r"^(\d{8})[-+]?(\d{4})$")
# a number inside free text, 10 or 12 digits (YYMMDD-NNNN, YYYYMMDDNNNN, ...), for the text guards;
PERSONAL_NUMBER_IN_TEXT = re.compile(r"(?<!\d)(?:\d{2})?\d{6}[-+]?\d{4}(?!\d)")
# a 12-digit number from 1800-2099 inside a log line, masked to its birth year before it is written.
PERSONAL_NUMBER_IN_LOG = re.compile(r"(?<!\d)((?:18|19|20)\d{2})(\d{4})[-+]?(\d{4})(?!\d)")


class InvalidPersonIdentifier(ValueError):
    """The value is not a valid personnummer or samordningsnummer; the message says why."""


def luhn_check_digit(nine_digits: str) -> int:
    """Check digit over the nine digits YYMMDDNNN (weights 2,1,2,1,...)."""
    total = 0
    for i, ch in enumerate(nine_digits):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return (10 - total % 10) % 10


@dataclass(frozen=True, slots=True)
class PersonIdentifier:
    value: str  # 12 digits
    kind: Literal["personnummer", "samordningsnummer"]
    birth_date: date

    @property
    def system(self) -> str:
        if self.kind == "personnummer":
            return PERSONNUMMER_SYSTEM
        return SAMORDNINGSNUMMER_SYSTEM

    def age_on(self, day: date) -> int:
        b = self.birth_date
        return day.year - b.year - ((day.month, day.day) < (b.month, b.day))

    def masked(self) -> str:
        """A form that is safe to log: birth year and the last digit only."""
        return mask(self.value)


def mask(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    if len(digits) < 6:
        return "***"
    return f"{digits[:4]}********"


def parse_person_identifier(raw: str) -> PersonIdentifier:
    """Validate a 12-digit personnummer or samordningsnummer (separator ``-`` or ``+`` allowed).

    Ten-digit forms are refused: the century would have to be guessed, and a guess in a health
    record is worse than an error the sender can fix.
    """
    text = raw.strip()
    m = TWELVE_DIGITS.match(text)
    if not m:
        raise InvalidPersonIdentifier("expected 12 digits YYYYMMDDNNNC (optionally YYYYMMDD-NNNC)")
    digits = m.group(1) + m.group(2)
    year, month, day = int(digits[0:4]), int(digits[4:6]), int(digits[6:8])
    kind: Literal["personnummer", "samordningsnummer"] = "personnummer"
    if day > 60:
        kind = "samordningsnummer"
        day -= 60
    try:
        born = date(year, month, day)
    except ValueError as exc:
        raise InvalidPersonIdentifier(f"date part is not a real date: {exc}") from None
    if luhn_check_digit(digits[2:11]) != int(digits[11]):
        raise InvalidPersonIdentifier("check digit does not match (Luhn)")
    return PersonIdentifier(value=digits, kind=kind, birth_date=born)


def is_valid_person_identifier(raw: str) -> bool:
    try:
        parse_person_identifier(raw)
    except InvalidPersonIdentifier:
        return False
    return True
