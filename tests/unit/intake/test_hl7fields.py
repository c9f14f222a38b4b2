"""The intake's HL7 v2 field reader answers every read as python-hl7's parse tree does.

:class:`Hl7Fields` splits fields only when they are read, instead of building python-hl7's tree of
every segment, field, repetition and component. Each read must return what ``hl7.parse(text)``'s
first segment of that id returns from ``extract_field`` — or raise where it raises — for the same
path: compared here on the public conformance message, the intake's test messages and generated
messages with other separators, escapes, repetitions, empty and missing fields.
"""

from __future__ import annotations

import itertools
import logging

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.planning.intake.hl7fields import Hl7Fields, Hl7ParseError
from services.planning.intake.hl7v2 import _normalise_segments
from tests.unit.intake.messages import CONFORMANCE, adt

PATHS = list(itertools.product(range(0, 8), range(1, 4), range(1, 4), range(1, 4)))


def _read(reader: object, seg: str, fld: int, rep: int, comp: int, sub: int) -> tuple[str, str]:
    try:
        return "value", reader.extract_field(seg, 1, fld, rep, comp, sub)  # type: ignore[attr-defined]
    except (IndexError, KeyError) as exc:
        return "raises", type(exc).__name__


def _first_segment_reader(tree: hl7.Message, seg: str) -> object | None:
    try:
        return tree.segment(seg)
    except KeyError:
        return None


def assert_same_reads(text: str, fields: range | None = None) -> int:
    """Every path of every segment id, as python-hl7 reads it and as :class:`Hl7Fields` does."""
    tree = hl7.parse(text)
    lean = Hl7Fields(text)
    ids = {s[:3] for s in text.split("\r")} | {s[:1] for s in text.split("\r")} | {"PID", "ZZZ"}
    compared = 0
    for seg in sorted(ids):
        first = _first_segment_reader(tree, seg)
        assert lean.has_segment(seg) == (first is not None), seg
        if first is None:
            with pytest.raises(KeyError):
                lean.extract_field(seg, 1, 1, 1, 1, 1)
            continue
        for fld in fields or range(0, len(first) + 2):
            for _, rep, comp, sub in PATHS[:: 4 if fields is None else 1]:
                compared += 1
                path = (seg, fld, rep, comp, sub)
                assert _read_tree(first, fld, rep, comp, sub) == _read(lean, *path), path
    return compared


def _read_tree(segment: object, fld: int, rep: int, comp: int, sub: int) -> tuple[str, str]:
    try:
        return "value", segment.extract_field(1, fld, rep, comp, sub)  # type: ignore[attr-defined]
    except (IndexError, KeyError) as exc:
        return "raises", type(exc).__name__


def test_the_public_conformance_message_reads_the_same() -> None:
    raw = (CONFORMANCE / "hl7v2-public" / "ADT-A03-fhir-converter-sample.hl7").read_bytes()
    text = _normalise_segments(raw.decode("utf-8"))
    assert assert_same_reads(text) > 500


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"trigger": "A01"},
        {"name": "Öberg^Åsa", "charset": "8859/1"},
        {"pid3": "199001012384^^^SKV&1.2.752.129.2.1.3.1&ISO^PN~X123^^^MRN"},
        {"pd1": False, "pv2_9": "20240302120000+0100"},
        {"pid30": "Y", "pv1_36": "20"},
        {"name": "Smith\\S\\Jones^Ann\\T\\Co\\F\\x\\R\\y\\E\\z\\X41\\"},
    ],
)
def test_the_intakes_test_messages_read_the_same(kwargs: dict[str, str]) -> None:
    text = _normalise_segments(adt(**kwargs))
    assert assert_same_reads(text, fields=range(0, 47)) > 1000


SEPARATOR_SETS = ["|^~\\&", "#*!@%", "|^~\\", "|^~", "|:;/+"]


@st.composite
def messages(draw: st.DrawFn) -> str:
    fs, *enc = draw(st.sampled_from(SEPARATOR_SETS))
    comp = enc[0] if enc else "^"
    rep = enc[1] if len(enc) > 1 else "~"
    esc = enc[2] if len(enc) > 2 else "\\"
    sub = enc[3] if len(enc) > 3 else "&"
    atoms = st.sampled_from(
        ["A", "b", "12", " ", '""', "Å", comp, rep, sub, fs, esc, f"{esc}F{esc}", f"{esc}S{esc}",
         f"{esc}T{esc}", f"{esc}R{esc}", f"{esc}E{esc}", f"{esc}X4142{esc}", f"{esc}H{esc}", f"{esc}Z1{esc}"]
    )  # fmt: skip
    body = st.lists(atoms, max_size=12).map("".join)
    ids = st.sampled_from(["PID", "PV1", "EVN", "PD1", "ZZ1", "MSH", "P", "X^Y"])
    segments = [f"MSH{fs}{''.join(enc)}{fs}" + draw(body)]
    for _ in range(draw(st.integers(0, 5))):
        segments.append(draw(ids) + draw(st.sampled_from(["", fs])) + draw(body))
    return "\r".join(s for s in segments if s.strip())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_messages_read_the_same(text: str) -> None:
    try:
        hl7.parse(text)
    except Exception:  # what python-hl7 cannot parse, the intake refuses either way
        return
    assert_same_reads(text)


def test_what_is_not_an_hl7_message_is_refused() -> None:
    for text in ("PID|1", "", "MS"):
        with pytest.raises(Hl7ParseError):
            Hl7Fields(text)


def test_a_field_is_split_only_when_read() -> None:
    text = _normalise_segments(adt())
    lean = Hl7Fields(text)
    assert isinstance(lean.segment("PID")[3], str)  # kept as the message has it
    assert lean.extract_field("PID", 1, 3, 1, 4, 2) == "1.2.752.129.2.1.3.1"


def test_a_value_python_hl7_cannot_unescape_is_not_written_to_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """python-hl7 logs the whole value around an empty escape sequence; that value is a name."""
    text = _normalise_segments(adt(name="Smith\\\\Jonesdotter^Ann"))
    with caplog.at_level(logging.DEBUG):
        assert Hl7Fields(text).extract_field("PID", 1, 5, 1, 1, 1) == "SmithJonesdotter"
    assert "Jonesdotter" not in caplog.text
