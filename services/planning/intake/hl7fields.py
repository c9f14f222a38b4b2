"""HL7 v2 field access without building the message tree.

``hl7.parse`` (python-hl7) turns every segment, field, repetition and component of a message into a
container object before the first field is read; for an ADT that was about a quarter of the intake's
CPU per message, though the intake reads some thirty values of five segments. :class:`Hl7Fields`
splits the message into segments and each segment into its fields once, and splits a field into
repetitions, components and subcomponents only when that field is read.

What a read returns — and when it raises — is python-hl7's ``Segment.extract_field`` for the first
segment with that id, rule for rule (the empty string for a value that is not present, ``IndexError``
for a path that runs past a leaf, MSH-1 and MSH-2 returned as they are, every other value unescaped
by python-hl7's own ``unescape``): ``tests/unit/intake/test_hl7fields.py`` compares the two on the
conformance message, the intake's test messages and generated ones with other separators, escapes,
repetitions and empty fields.
"""

from __future__ import annotations

import logging

import hl7.util
from hl7.util import unescape as _hl7_unescape

#: segments whose second and third "fields" are the field separator and the encoding characters
_HEADERS = ("MSH", "FHS", "BHS")


def _drop_content(record: logging.LogRecord) -> bool:
    return False


# python-hl7's unescape writes a value it cannot unescape — a name, an address — into a WARNING line
# ("Error unescaping value [...]"): personal data, never logged. What it could not read stays as sent.
# (Its logger is named by the module's file path.)
hl7.util.logger.addFilter(_drop_content)


class Hl7ParseError(ValueError):
    """The text is not an HL7 v2 message python-hl7 could parse."""


class Hl7Fields:
    """One parsed HL7 v2 message (text already decoded, segments separated by CR)."""

    __slots__ = ("_first", "_opaque", "_parts", "esc", "separators")

    def __init__(self, text: str) -> None:
        text = text.strip()
        if text[:3] not in _HEADERS:
            raise Hl7ParseError(f"First segment is {text[:3]}, must be one of MHS, FHS or BHS")
        if len(text) < 4:
            raise Hl7ParseError("no field separator after the header segment's id")
        # python-hl7's create_parse_plan: MSH-1, then MSH-2's component, repetition, escape, subcomponent
        fs = text[3]
        seps = text[3 : text.find(fs, 4)]
        rep = seps[2] if len(seps) > 2 else "~"
        comp = seps[1] if len(seps) > 1 else "^"
        sub = seps[4] if len(seps) > 4 else "&"
        self.esc = seps[3] if len(seps) > 3 else "\\"
        self.separators = "\r" + fs + rep + comp + sub
        self._parts = (rep, comp, sub)
        self._first: dict[str, list[str]] = {}
        #: segment id → how many leading fields are opaque leaves (the header's id, MSH-1, MSH-2)
        self._opaque: dict[str, int] = {}
        splitters = (fs, rep, comp, sub)
        for segment in text.split("\r"):
            if not any(s in segment for s in splitters):
                # python-hl7 keeps such a segment as one string: its "id" is the first character
                if segment[:1] and segment[:1] not in self._first:
                    self._first[segment[:1]] = [segment]
                    self._opaque[segment[:1]] = 1
                continue
            if segment[:3] in _HEADERS:
                seg_id = segment[:3]
                own_fs = segment[3]
                end = segment.find(own_fs, 4)
                rest = segment[end + 1 :]
                fields = [seg_id, own_fs, segment[4:end]] + (rest.split(fs) if rest else [])
                opaque = 3
            else:
                fields = segment.split(fs)
                seg_id = fields[0]
                opaque = 0
                if any(s in seg_id for s in self._parts):
                    continue  # python-hl7 compares a container with the id: never found
            if seg_id not in self._first:
                self._first[seg_id] = fields
                self._opaque[seg_id] = opaque

    def has_segment(self, seg: str) -> bool:
        return seg in self._first

    def segment(self, seg: str) -> list[str]:
        """The first ``seg`` segment's fields as they are in the message (``[0]`` is the id)."""
        try:
            return self._first[seg]
        except KeyError:
            raise KeyError(f"No {seg} segments") from None

    def _unescape(self, value: str) -> str:
        if not value or self.esc not in value:
            return value
        return _hl7_unescape(self, value)

    def extract_field(
        self, seg: str, segment_num: int = 1, fld: int = 1, rep: int = 1, comp: int = 1, sub: int = 1
    ) -> str:
        if segment_num != 1:
            raise NotImplementedError("only the first segment of an id is read")
        fields = self.segment(seg)
        fld, rep, comp, sub = fld or 1, rep or 1, comp or 1, sub or 1
        if fld >= len(fields):
            if rep == 1 and comp == 1 and sub == 1:
                return ""  # an optional value that is not present
            raise IndexError(f"Field not present: {seg}.F{fld}")
        value = fields[fld]
        rs, cs, ss = self._parts
        if fld < self._opaque[seg] or (rs not in value and cs not in value and ss not in value):
            # a leaf field: one repetition of one component
            if rep != 1:
                raise IndexError(f"Repetition not present: {seg}.F{fld}.R{rep}")
            if comp == 1 and sub == 1:
                return value if seg == "MSH" and fld in (1, 2) else self._unescape(value)
            raise IndexError(f"Field reaches leaf node before completing path: {seg}.F{fld}")
        repetitions = value.split(rs)
        if rep > len(repetitions):
            raise IndexError(f"Repetition not present: {seg}.F{fld}.R{rep}")
        repetition = repetitions[rep - 1]
        if cs not in repetition and ss not in repetition:
            if comp > 1:
                if sub == 1:
                    return ""
                raise IndexError(f"Component not present: {seg}.F{fld}.R{rep}.C{comp}")
            if sub == 1:
                return self._unescape(repetition)
            raise IndexError(f"Field reaches leaf node before completing path: {seg}.F{fld}.R{rep}")
        components = repetition.split(cs)
        if comp > len(components):
            if sub == 1:
                return ""
            raise IndexError(f"Component not present: {seg}.F{fld}.R{rep}.C{comp}")
        subcomponents = components[comp - 1].split(ss)
        if sub <= len(subcomponents):
            return self._unescape(subcomponents[sub - 1])
        return ""
