"""Skatteverket's published test personnummer — the only person identifiers tests may use.

Taken from Skatteverket's open data set of test identity numbers (testpersonnummer); checked by
``tests/unit/test_identifiers.py`` to be valid.
"""

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
