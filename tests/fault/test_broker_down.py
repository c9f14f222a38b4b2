"""The broker down for two minutes in the middle of a stream of ≥ 500 discharges (issue #17), on a
RabbitMQ node of the test's own (tests/support/private_rabbit.py; the machine's broker is never
stopped): the whole node stopped — every connection gone, nothing to reconnect to — then started
again. The services wait it out (their outboxes keep what they have to publish, their readiness says
the broker is down), reconnect on their own and finish the work: one case per accepted discharge, one
invitation per participant (per Message-ID at the SMTP server), no dead letter — and no operator
action (nothing is restarted, replayed or reconfigured by the test).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.support.infra import MailSink
from tests.support.private_rabbit import private_rabbit
from tests.support.stream import run_stream
from tests.support.suite import running_suite

pytestmark = [pytest.mark.fault, pytest.mark.e2e, pytest.mark.broker, pytest.mark.timeout(1200)]

N = int(os.environ.get("SIP_BROKER_DOWN_DISCHARGES", "500"))
DOWN_SECONDS = float(os.environ.get("SIP_BROKER_DOWN_SECONDS", "120"))


def test_broker_down_for_two_minutes_mid_stream(tmp_path: Path, smtp: MailSink):
    env = {"SIP_LOG_LEVEL": "WARNING", "NOTIFY_DISPATCH_INTERVAL": "0.2"}
    with private_rabbit() as node, running_suite(node.url(), tmp_path, smtp, extra_env=env) as suite:
        not_ready: dict[str, int] = {}

        def broker_down() -> None:
            node.stop()
            down_at = time.monotonic()
            time.sleep(min(20.0, DOWN_SECONDS / 2))
            # while it is down, each service says so on /readyz (what the operator's probes see)
            for name in ("planning", "consent", "notify"):
                not_ready[name] = httpx.get(f"{suite.url(name)}/readyz", timeout=10).status_code
            time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
            node.start()

        figures = asyncio.run(run_stream(suite, N, fault=broker_down, label="broker down 2 min"))
        assert figures.problems == [], figures.line("broker down 2 min") + "\n" + suite.logs()[-5000:]
        assert figures.duplicate_deliveries == 0
        assert not_ready == {"planning": 503, "consent": 503, "notify": 503}
        # the same processes (no restart by anyone) are ready again
        for name, proc in suite.procs.items():
            assert proc.popen is not None and proc.popen.poll() is None, f"{name} exited"
            assert httpx.get(f"{suite.url(name)}/readyz", timeout=10).status_code == 200
