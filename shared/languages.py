"""Interpreter languages by name, in Swedish and English: the one list notify's texts and the web's
pages both use (a person's interpreter need travels as a BCP 47 code, e.g. ``ar``; people read its
name, e.g. "arabiska" / "Arabic"). Pure.

A code is validated before it is named: anything not shaped like a language code (free text, a
personnummer, a diagnosis) raises :class:`InvalidLanguageCode`, so no text can travel as a "code".
An unlisted but well-formed code is shown as itself.
"""

from __future__ import annotations

import re

__all__ = ["LANGUAGE_CODE", "LANGUAGE_NAMES", "InvalidLanguageCode", "interpreter_language_name"]

#: a BCP 47 language tag as the contracts accept it (``ar``, ``ckb``, ``sr-Latn``)
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$")

#: interpreter languages: code → (Swedish, English). An unknown but well-formed code is shown as is.
LANGUAGE_NAMES: dict[str, tuple[str, str]] = {
    "am": ("amhariska", "Amharic"),
    "ar": ("arabiska", "Arabic"),
    "bs": ("bosniska", "Bosnian"),
    "ckb": ("sorani", "Sorani Kurdish"),
    "de": ("tyska", "German"),
    "el": ("grekiska", "Greek"),
    "en": ("engelska", "English"),
    "es": ("spanska", "Spanish"),
    "fa": ("persiska", "Persian"),
    "fi": ("finska", "Finnish"),
    "fit": ("meänkieli", "Meänkieli"),
    "fr": ("franska", "French"),
    "hr": ("kroatiska", "Croatian"),
    "hu": ("ungerska", "Hungarian"),
    "it": ("italienska", "Italian"),
    "kmr": ("kurmanji", "Kurmanji Kurdish"),
    "ku": ("kurdiska", "Kurdish"),
    "pl": ("polska", "Polish"),
    "prs": ("dari", "Dari"),
    "ps": ("pashto", "Pashto"),
    "pt": ("portugisiska", "Portuguese"),
    "ro": ("rumänska", "Romanian"),
    "rmy": ("romani", "Romani"),
    "ru": ("ryska", "Russian"),
    "se": ("nordsamiska", "Northern Sami"),
    "so": ("somaliska", "Somali"),
    "sq": ("albanska", "Albanian"),
    "sr": ("serbiska", "Serbian"),
    "swl": ("svenskt teckenspråk", "Swedish Sign Language"),
    "th": ("thailändska", "Thai"),
    "ti": ("tigrinja", "Tigrinya"),
    "tr": ("turkiska", "Turkish"),
    "uk": ("ukrainska", "Ukrainian"),
    "ur": ("urdu", "Urdu"),
    "vi": ("vietnamesiska", "Vietnamese"),
    "yi": ("jiddisch", "Yiddish"),
    "zh": ("kinesiska", "Chinese"),
}


class InvalidLanguageCode(ValueError):
    """Not a language code (the message names the rule, never the value)."""


def interpreter_language_name(code: str, language: str) -> str:
    """The name of an interpreter language in the reader's language (``sv``, else English); the code
    itself if it is not listed. Not a language code: :class:`InvalidLanguageCode`."""
    if not LANGUAGE_CODE.match(code):
        raise InvalidLanguageCode("interpreter_language: must be a language code such as 'ar' (BCP 47)")
    names = LANGUAGE_NAMES.get(code.split("-", 1)[0])
    if names is None:
        return code
    return names[0] if language == "sv" else names[1]
