"""FHIR R4 narrative rules as a checker (tests only; independent of the code that builds narrative).

From the R4 narrative page (https://hl7.org/fhir/R4/narrative.html) and its invariants:

- the ``div`` is well-formed XML, an XHTML ``div`` in the namespace ``http://www.w3.org/1999/xhtml``;
- txt-1: only "the basic html formatting elements and attributes described in chapters 7–11 (except
  section 4 of chapter 9) and 15 of the HTML 4.0 standard, ``<a>`` elements (either name or href),
  images and internally contained style attributes" — so no ``script``, ``form``/``input``,
  ``iframe``, ``object``, ``embed``, ``applet``, ``base``, ``link``, ``meta``, ``style`` elements,
  no ``head``/``body``, no event attributes (``on*``), no processing instructions, no DOCTYPE;
- txt-2: some non-whitespace content;
- links: an ``href`` must not run anything (no ``javascript:``/``data:``/``vbscript:``); images only
  from the resource itself (``#id``) or ``data:`` (no fetching from elsewhere).

The element and attribute lists are those the HL7 validator accepts for txt-1 (HTML 4.0 chapters
7–11 and 15: text, lists, tables, links, images, style/class).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

XHTML = "http://www.w3.org/1999/xhtml"

ALLOWED_ELEMENTS = frozenset(
    "p br div h1 h2 h3 h4 h5 h6 a span b em i strong small big tt dfn q var abbr acronym cite "
    "blockquote hr address bdo kbd sub sup ul ol li dl dt dd pre table caption colgroup col thead "
    "tr tfoot tbody th td code samp img map area".split()
)
ALLOWED_ATTRIBUTES = frozenset(
    "title style class id lang xml:lang dir accesskey tabindex "  # core + i18n (chapters 7, 8)
    "rowspan colspan align valign width height border summary span abbr axis headers scope "
    "cellpadding cellspacing char charoff frame rules bgcolor "  # tables (chapter 11)
    "href name type hreflang rel rev charset "  # links (chapter 12 as the validator allows)
    "src alt longdesc usemap ismap shape coords nohref "  # images, maps
    "start value compact cite datetime".split()
)
_BAD_SCHEME = re.compile(r"^\s*(javascript|vbscript|data|file):", re.I)


def narrative_problems(text: object) -> list[str]:
    """Everything wrong with a ``Resource.text`` value (an empty list when it is valid)."""
    if not isinstance(text, dict):
        return ["text is missing"]
    problems = []
    if text.get("status") not in ("generated", "extensions", "additional", "empty"):
        problems.append(f"text.status {text.get('status')!r} is not a narrative-status code")
    div = text.get("div")
    if not isinstance(div, str):
        return [*problems, "text.div is missing"]
    if "<!DOCTYPE" in div or "<?" in div:
        problems.append("no DOCTYPE or processing instruction")
    try:
        root = ET.fromstring(div)
    except ET.ParseError as exc:
        return [*problems, f"text.div is not well-formed XML: {exc}"]
    if root.tag != f"{{{XHTML}}}div":
        problems.append(f"the root is {root.tag}, not an XHTML div")
    for node in root.iter():
        ns, _, name = node.tag.rpartition("}")
        if ns.lstrip("{") != XHTML:
            problems.append(f"<{node.tag}> is not in the XHTML namespace")
        if name not in ALLOWED_ELEMENTS:
            problems.append(f"<{name}> is not allowed in narrative (txt-1)")
        for attr, value in node.attrib.items():
            local = "xml:lang" if attr == "{http://www.w3.org/XML/1998/namespace}lang" else attr
            if local.lower().startswith("on") or local not in ALLOWED_ATTRIBUTES:
                problems.append(f"attribute {local!r} on <{name}> is not allowed (txt-1)")
            if local == "href" and _BAD_SCHEME.match(value):
                problems.append(f"<{name} href> runs or embeds something: {value[:40]!r}")
            if local == "src" and not (value.startswith("#") or value.startswith("data:")):
                problems.append(f"<{name} src> points outside the resource: {value[:40]!r}")
    if not "".join(root.itertext()).strip():
        problems.append("the narrative has no text (txt-2)")
    return problems


def narrative_text(text: dict[str, str]) -> str:
    """The narrative's words (markup removed, whitespace collapsed), for content assertions."""
    return " ".join(" ".join(ET.fromstring(text["div"]).itertext()).split())
