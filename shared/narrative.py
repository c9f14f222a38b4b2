"""Building FHIR narrative (``Resource.text``): XHTML that is safe by construction.

FHIR's narrative rules (R4 narrative page, invariants txt-1/txt-2): the ``div`` is an XHTML ``div``
in the XHTML namespace holding only the basic formatting subset of HTML (no script, form, iframe,
object, no event attributes, no ``head``/``body``), with some non-whitespace content. This module
emits only a handful of those elements (``div p b br ul li table tr th td h3 span a``), every text is
escaped here, and characters XML cannot carry are dropped — so a plan text with ``<script>`` or an
ampersand renders as that text, never as markup.

Usage: ``narrative(el("p", "Plan för ", el("b", name)))`` → ``{"status": "generated", "div": ...}``.
A plain ``str`` child is text (escaped); only what :func:`el` returns is markup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime

from shared.clock import STOCKHOLM

XHTML_NS = "http://www.w3.org/1999/xhtml"

#: the elements this builder emits (a subset of what txt-1 allows)
ELEMENTS = frozenset({"div", "p", "b", "i", "br", "ul", "li", "table", "tr", "th", "td", "h3", "span", "a"})
#: their attributes (``href`` only on ``a``, and only https or a fragment)
ATTRIBUTES = frozenset({"class", "href", "colspan"})

# XML 1.0 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SAFE_HREF = re.compile(r"^(https://[^\s\"'<>]+|#[A-Za-z0-9\-.]+)$")


class Markup(str):
    """XHTML produced by :func:`el` (already escaped)."""

    __slots__ = ()


Child = str | Markup | None


def escape(text: str) -> str:
    """Text for element content or a double-quoted attribute."""
    text = _NOT_XML.sub("", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def el(tag: str, *children: Child | Iterable[Child], **attrs: str | None) -> Markup:
    """One element; ``None`` children and attributes are left out, iterables are flattened."""
    if tag not in ELEMENTS:
        raise ValueError(f"<{tag}> is not emitted in FHIR narrative")
    parts = [f"<{tag}"]
    for name, value in attrs.items():
        name = name.rstrip("_")  # class_ → class
        if value is None:
            continue
        if name not in ATTRIBUTES:
            raise ValueError(f"attribute {name!r} is not emitted in FHIR narrative")
        if name == "href" and not _SAFE_HREF.match(value):
            raise ValueError("a narrative link must be https or a fragment")
        parts.append(f' {name}="{escape(value)}"')
    body = "".join(_render(c) for c in children)
    if not body and tag == "br":
        return Markup("<br/>")
    return Markup("".join(parts) + ">" + body + f"</{tag}>")


def _render(child: Child | Iterable[Child]) -> str:
    if child is None:
        return ""
    if isinstance(child, Markup):
        return str(child)
    if isinstance(child, str):
        return escape(child)
    return "".join(_render(c) for c in child)


def link_or_text(url: str) -> Markup:
    """An https link as ``<a>``; anything else as its text."""
    return el("a", url, href=url) if _SAFE_HREF.match(url) else el("span", url)


def narrative(*children: Child | Iterable[Child]) -> dict[str, str]:
    """``Resource.text``: status ``generated`` and the root ``div`` in the XHTML namespace."""
    body = "".join(_render(c) for c in children)
    if not body.strip():
        raise ValueError("a narrative needs some content (txt-2)")
    return {"status": "generated", "div": f'<div xmlns="{XHTML_NS}">{body}</div>'}


def local_time(value: datetime) -> str:
    """A time as a Swedish reader reads it: Stockholm time, ``2026-11-25 kl. 11:00``."""
    return value.astimezone(STOCKHOLM).strftime("%Y-%m-%d kl. %H:%M")


def day(value: date | datetime) -> str:
    if isinstance(value, datetime):
        return value.astimezone(STOCKHOLM).date().isoformat()
    return value.isoformat()
