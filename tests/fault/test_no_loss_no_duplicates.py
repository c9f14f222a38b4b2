"""Fault injection on the real broker: ≥ 2,000 discharges through the three services, with a fault in
the middle. Afterwards every accepted discharge has exactly one SIP case and every participant
exactly one invitation; the figures are printed (run with -s to see them).

Notify's explicit crash rule: a mail in flight when notify is killed is sent again with the same
Message-ID (at-least-once towards SMTP); an invitation is therefore counted once per Message-ID,
and the raw duplicate deliveries are printed beside it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.infra import MailSink, free_port
from tests.support.private_rabbit import private_rabbit
from tests.support.stream import run_stream
from tests.support.suite import Suite, running_suite

pytestmark = [pytest.mark.fault, pytest.mark.e2e, pytest.mark.broker, pytest.mark.timeout(1200)]

N = int(os.environ.get("SIP_FAULT_DISCHARGES", "2000"))


@pytest.fixture
def suite(amqp_url: str, tmp_path: Path, smtp: MailSink, request: pytest.FixtureRequest) -> Iterator[Suite]:
    env = {"SIP_LOG_LEVEL": "WARNING", "NOTIFY_DISPATCH_INTERVAL": "0.2"}
    if marker := request.node.get_closest_marker("suite_env"):
        env.update(marker.kwargs)
    with running_suite(amqp_url, tmp_path, smtp, extra_env=env) as s:
        yield s


def test_broker_restart_mid_stream(tmp_path: Path, smtp: MailSink):
    """The broker's application stopped and started again (``stop_app`` / ``start_app``) mid-stream —
    on a RabbitMQ node of the test's own (tests/support/private_rabbit.py), so the machine's broker,
    which the other tests use, is never stopped and the test needs no ``exclusive`` pass."""
    env = {"SIP_LOG_LEVEL": "WARNING", "NOTIFY_DISPATCH_INTERVAL": "0.2"}
    with private_rabbit() as node, running_suite(node.url(), tmp_path, smtp, extra_env=env) as suite:

        def restart_broker() -> None:
            node.ctl("stop_app")
            time.sleep(3)
            node.ctl("start_app")
            node.wait_ready()

        figures = asyncio.run(run_stream(suite, N, fault=restart_broker, label="broker restart"))
    assert figures.problems == [], figures.line("broker restart")


@pytest.mark.parametrize("service", ["planning", "consent", "notify"])
def test_kill_9_mid_stream(suite: Suite, service: str):
    def kill_and_restart() -> None:
        suite.procs[service].kill9()
        time.sleep(2)
        suite.start(service)

    figures = asyncio.run(run_stream(suite, N, fault=kill_and_restart, label=f"kill -9 {service}"))
    assert figures.problems == [], figures.line(f"kill -9 {service}")


@pytest.mark.suite_env(SIP_FAULT_DUPLICATE_PUBLISH="true")
def test_every_message_delivered_twice(suite: Suite):
    """Each discharge is published twice by the hospital and every service publishes everything twice."""
    figures = asyncio.run(run_stream(suite, N // 4, copies=2, label="duplicates"))
    assert figures.problems == [], figures.line("duplicates")
    assert figures.duplicate_deliveries == 0  # no crash here: not one mail twice


def test_two_planning_replicas_share_the_queues(suite: Suite):
    port = free_port()
    suite.start("planning", instance="planning-2", env={"PLANNING_HTTP_PORT": str(port)})
    figures = asyncio.run(run_stream(suite, N // 4, label="two planning replicas"))
    assert figures.problems == [], figures.line("two planning replicas")
    assert figures.duplicate_deliveries == 0
