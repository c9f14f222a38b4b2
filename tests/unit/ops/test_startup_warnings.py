"""A service whose start-up step hangs says which step and where it waits, instead of staying silent."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shared.runtime import _slow_start_warnings


async def _broker_that_never_answers() -> None:
    await asyncio.Event().wait()


async def test_a_slow_step_is_named_with_its_await_chain(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="sip.runtime")

    async def start() -> None:
        async with _slow_start_warnings("planning", every=0.05) as step:
            step("database")
            await asyncio.sleep(0)
            step("broker topology")
            await _broker_that_never_answers()

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(start(), timeout=0.18)

    warnings = [r for r in caplog.records if r.getMessage() == "start-up still waiting"]
    assert len(warnings) >= 2
    last = warnings[-1]
    assert last.levelno == logging.WARNING
    assert last.service == "planning"  # type: ignore[attr-defined]
    assert last.step == "broker topology"  # type: ignore[attr-defined]
    assert last.step_seconds >= 0.05  # type: ignore[attr-defined]
    assert last.startup_seconds >= last.step_seconds  # type: ignore[attr-defined]
    chain = last.awaiting  # type: ignore[attr-defined]
    assert "test_startup_warnings.py" in chain and "_broker_that_never_answers" in chain
    assert chain.index("start") < chain.index("_broker_that_never_answers")  # outermost first


async def test_a_quick_start_says_nothing_and_leaves_no_task(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="sip.runtime")
    async with _slow_start_warnings("consent", every=0.05) as step:
        step("database")
    await asyncio.sleep(0.12)
    assert not [r for r in caplog.records if r.getMessage() == "start-up still waiting"]
    assert [t for t in asyncio.all_tasks() if t.get_name() == "consent-start-watch"] == []


async def test_a_deep_wait_shows_its_innermost_frames(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="sip.runtime")

    async def layer(depth: int) -> None:
        if depth == 0:
            await _broker_that_never_answers()
        else:
            await layer(depth - 1)

    async def start() -> None:
        async with _slow_start_warnings("notify", every=0.05) as step:
            step("broker connection")
            await layer(30)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(start(), timeout=0.08)
    chain = [r for r in caplog.records if r.getMessage() == "start-up still waiting"][-1].awaiting  # type: ignore[attr-defined]
    frames = chain.split(" > ")
    assert len(frames) == 12
    assert frames[-2].endswith("_broker_that_never_answers") and frames[-1].endswith(" wait")
    assert not any(f.endswith(" start") for f in frames)  # the outer frames are left out
