"""MLLP deframing (pure)."""

from __future__ import annotations

import pytest

from services.planning.intake.mllp import FrameDecoder, FrameTooLarge, frame


def test_frame_split_byte_by_byte() -> None:
    dec = FrameDecoder()
    data = frame(b"MSH|one")
    got: list[bytes] = []
    for i in range(len(data)):
        got += dec.feed(data[i : i + 1])
    assert got == [b"MSH|one"]


def test_two_frames_in_one_read_and_garbage_before_start() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"noise\r\n" + frame(b"A") + b"junk" + frame(b"B")) == [b"A", b"B"]
    assert dec.discarded == len(b"noise\r\n") + len(b"junk")


def test_abandoned_frame_is_dropped_at_next_start_block() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x0bhalf a mess" + frame(b"C")) == [b"C"]


def test_oversize_frame_refused() -> None:
    dec = FrameDecoder(max_frame=10)
    with pytest.raises(FrameTooLarge):
        dec.feed(b"\x0b" + b"x" * 11)
    dec = FrameDecoder(max_frame=10)
    with pytest.raises(FrameTooLarge):
        dec.feed(frame(b"y" * 11))
    assert FrameDecoder(max_frame=10).feed(frame(b"z" * 10)) == [b"z" * 10]
