"""Builders for HL7 v2 ADT test messages (Skatteverket test personnummer only)."""

from __future__ import annotations

from pathlib import Path

from tests.support.personnummer import ADULT

PNR_AUTHORITY = "SKV&1.2.752.129.2.1.3.1&ISO"
SNR_AUTHORITY = "SKV&1.2.752.129.2.1.3.3&ISO"
CONFORMANCE = Path(__file__).resolve().parents[2] / "conformance"


def bad_check_digit(pnr: str) -> str:
    return pnr[:-1] + str((int(pnr[-1]) + 1) % 10)


def adt(
    trigger: str = "A03",
    *,
    msg_type: str = "ADT",
    control_id: str = "MSG00001",
    version: str = "2.5",
    pid3: str | None = None,
    name: str = "Andersson^Anna",
    charset: str | None = None,
    pv1_36: str = "01",
    visit: str = "V12345",
    discharge: str = "20240301140000+0100",
    evn_recorded: str = "20240301140500+0100",
    evn_occurred: str = "",
    pv2_9: str = "",
    pid30: str = "",
    kommun: str = "1480",
    pd1: bool = True,
    segment_end: str = "\r",
) -> str:
    if pid3 is None:
        pid3 = f"{ADULT}^^^{PNR_AUTHORITY}^PN"
    msh = [
        "MSH",
        "^~\\&",
        "PAS",
        "SU^1.2.752.129.2.1.4.1^ISO",
        "SIP",
        "KOMMUN",
        "20240301140600+0100",
        "",
        f"{msg_type}^{trigger}",
        control_id,
        "P",
        version,
    ]
    if charset is not None:
        msh += ["", "", "", "", "", charset]
    evn = ["EVN", trigger, evn_recorded, "", "", "", evn_occurred]
    pid = [""] * 31
    pid[0], pid[1], pid[3], pid[5], pid[7], pid[8] = "PID", "1", pid3, name, "20000101", "F"
    pid[11] = f"Storgatan 1^^Göteborg^^41101^SWE^H^^{kommun}"
    pid[30] = pid30
    pv1 = [""] * 46
    pv1[0], pv1[1], pv1[2], pv1[19], pv1[36] = "PV1", "1", "I", visit, pv1_36
    pv1[44], pv1[45] = "20240225090000+0100", discharge if trigger == "A03" else ""
    segments = ["|".join(msh[:1]) + "|" + "|".join(msh[1:]), "|".join(evn), "|".join(pid)]
    if pd1:
        segments.append("PD1|||Vårdcentralen Centrum^^^^^^^^^SE2321000131-E000000000111")
    segments.append("|".join(pv1))
    if pv2_9:
        pv2 = [""] * 10
        pv2[0], pv2[9] = "PV2", pv2_9
        segments.append("|".join(pv2))
    return segment_end.join(segments) + segment_end


def adt_bytes(*args: object, encoding: str = "utf-8", **kwargs: object) -> bytes:
    return adt(*args, **kwargs).encode(encoding)  # type: ignore[arg-type]


def msa(ack: bytes) -> list[str]:
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(b"MSA|"):
            return seg.decode("latin-1").split("|")
    raise AssertionError(f"no MSA segment in {ack!r}")


def segment(ack: bytes, name: str) -> list[str] | None:
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(name.encode() + b"|"):
            return seg.decode("latin-1").split("|")
    return None
