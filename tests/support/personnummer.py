"""Skatteverket's published test personnummer — the only person identifiers tests may use.

Taken from Skatteverket's open data set of test identity numbers (testpersonnummer); checked by
``tests/unit/test_identifiers.py`` to be valid.
"""

import re

ADULTS = (
    "200001012384",
    "200001022391",
    "200001032382",
    "200001042399",
    "200001052380",
    "200001062397",
    "200001072388",
    "200001082395",
    "200001092386",
    "200001102391",
    "200001112382",
    "200001122399",
    "200001132380",
    "200001142397",
    "200001152388",
    "200001162395",
    "200001172386",
    "200001182393",
    "200001192384",
    "200001202399",
    "199912012391",
    "199912022382",
    "199912032399",
    "199912042380",
    "199912052397",
    "191212121212",
    "189001019802",
)
CHILD = "201701012393"  # born 2017: under 18, guardians consent
SAMORDNINGSNUMMER = "191401682396"
ADULT = ADULTS[0]


# --- finding personnummer-shaped numbers in text a person or a log reader sees ----------------------
_PNR_SHAPED = re.compile(r"(?<!\d)(?:\d{2})?\d{6}[-+]?\d{4}(?!\d)")
# A case link carries the case's UUID; its hex groups are now and then all digits (e.g. "...-3137500634")
# and would look like a personnummer. A UUID is not personal data, so it is taken out before the check.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def personnummer_shaped(text: str) -> list[str]:
    """Every number in ``text`` shaped like a personnummer or samordningsnummer (10 or 12 digits, with or
    without the separator), ignoring UUIDs."""
    return _PNR_SHAPED.findall(_UUID.sub("<uuid>", text))
