"""Guards over free text that may reach a notification: no personnummer, nothing that looks like
health data. Notify runs them over every rendered text (the last line of defence, see
:mod:`services.notify.templates`); planning runs them where a short practical text that travels to
notify enters (the person's meeting needs), so a bad text is refused with 422 at entry instead of
sending the invitation to the dead-letter queue later. Pure.
"""

from __future__ import annotations

import re

from shared.identifiers import PERSONAL_NUMBER_IN_TEXT as PERSONAL_NUMBER
from shared.identifiers import is_valid_person_identifier, luhn_check_digit

# UUIDs (case and plan ids in links) often hold long digit runs; they are identifiers we issue.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# an ICD-10 code standing alone: F32, F32.1, E11.65, Z99.2A
_ICD10 = re.compile(r"(?<![A-Za-z0-9])[A-TV-Z]\d{2}(?:\.\d{1,2}[A-Z]?)?(?![A-Za-z0-9])")
# word beginnings that name a diagnosis or a sensitive condition (sv/en); deliberately broad
_HEALTH_WORDS = re.compile(
    r"\b(diagnos|depressi|schizofren|schizophren|psykos|psychos|bipol[aä]r|cancer|tum[oö]r|tumour"
    r"|diabet|demens|dementia|alzheimer|hiv\b|aids\b|hepatit|missbruk|substance abuse|addiction"
    r"|alkoholis|alcoholi|narkoman|epileps|epilepsi|stroke|infarkt|infarction|suicid|självmord"
    r"|självskad|self-harm|ätstörning|eating disorder|anorexi|bulimi|ptsd|adhd|autism|psykisk ohälsa"
    r"|mental illness|sjukdom|disease)",
    re.IGNORECASE,
)


def _is_person_number(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if len(digits) == 12:
        return is_valid_person_identifier(digits)
    # ten digits: the check digit is all we can test without the century
    return luhn_check_digit(digits[:9]) == int(digits[9])


def contains_personal_number(text: str) -> bool:
    """True if the text holds a valid personnummer/samordningsnummer (date and check digit).

    Only valid numbers count, and UUIDs are skipped: a guard that fires on any digit run would
    refuse lawful invitations whose plan link happens to contain one.
    """
    scrubbed = _UUID.sub(" ", text)
    return any(_is_person_number(m.group()) for m in PERSONAL_NUMBER.finditer(scrubbed))


def contains_health_data(text: str) -> bool:
    """True if the text holds an ICD-10-shaped code or a common diagnosis word (a heuristic)."""
    scrubbed = _UUID.sub(" ", text)
    return bool(_ICD10.search(scrubbed) or _HEALTH_WORDS.search(scrubbed))
