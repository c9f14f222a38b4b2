"""The suite on a 3-node RabbitMQ cluster of the test's own (three local nodes on their own ports,
tests/support/private_rabbit.py), ``SIP_AMQP_URL`` naming all three: ≥ 1,000 discharges, and in the
middle the node every service is connected to (the first address) is stopped and, a while later,
started again. Afterwards: one case per accepted discharge, one invitation per participant (per
Message-ID at the SMTP server), no duplicate delivery, no dead letter — with no operator.

The topology is checked on the cluster first: every work, retry and dead-letter queue is a quorum
queue with a member on each of the three nodes, so the node that goes takes no message with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.topology import SUBSCRIPTIONS, decision_queue
from tests.support.infra import MailSink
from tests.support.private_rabbit import PrivateRabbitCluster, private_rabbit_cluster
from tests.support.stream import run_stream
from tests.support.suite import Suite, running_suite

pytestmark = [pytest.mark.fault, pytest.mark.e2e, pytest.mark.broker, pytest.mark.timeout(1200)]

N = int(os.environ.get("SIP_CLUSTER_DISCHARGES", "1000"))
NODE_DOWN_SECONDS = float(os.environ.get("SIP_CLUSTER_NODE_DOWN_SECONDS", "15"))


@pytest.fixture
def cluster() -> Iterator[PrivateRabbitCluster]:
    with private_rabbit_cluster(3) as c:
        yield c


@pytest.fixture
def suite(cluster: PrivateRabbitCluster, tmp_path: Path, smtp: MailSink) -> Iterator[Suite]:
    env = {"SIP_LOG_LEVEL": "WARNING", "NOTIFY_DISPATCH_INTERVAL": "0.2"}
    with running_suite(cluster.amqp_url, tmp_path, smtp, extra_env=env) as s:
        yield s


def queues(cluster: PrivateRabbitCluster) -> dict[str, tuple[str, list[str]]]:
    """name -> (type, members) as the cluster reports them."""
    node = next(n for n in cluster.nodes if n.is_running())
    out = node.ctl("--formatter", "json", "list_queues", "name", "type", "members")
    return {q["name"]: (q["type"], sorted(q.get("members") or [])) for q in json.loads(out.stdout)}


def check_topology_replicated(cluster: PrivateRabbitCluster) -> None:
    """Every work, retry and dead-letter queue the services declared, and consent's request/reply
    queue, is a quorum queue with a member on each of the three nodes."""
    found = queues(cluster)
    nodes = sorted(n.name for n in cluster.nodes)
    names = {n for s in SUBSCRIPTIONS for n in (s.queue_name, s.dlq_name, s.retry_queue_name)}
    names.add(decision_queue().name)
    assert names <= set(found), f"not declared: {sorted(names - set(found))}"
    for name in sorted(names):
        kind, members = found[name]
        assert kind == "quorum", f"{name} is {kind}"
        assert members == nodes, f"{name} has members {members}"
    others = {name: kind for name, (kind, _m) in found.items() if name not in names}
    print(f"\nqueues outside the subscriptions: {others}")


def test_one_node_stopped_and_restarted_mid_stream(cluster: PrivateRabbitCluster, suite: Suite):
    """(One test, so the cluster and the suite are started once.)"""
    check_topology_replicated(cluster)
    first = cluster.nodes[0]  # every service connected to the first address

    def stop_and_restart_node() -> None:
        first.stop()
        assert len(cluster.running_nodes()) == 2
        time.sleep(NODE_DOWN_SECONDS)
        first.start()

    figures = asyncio.run(run_stream(suite, N, fault=stop_and_restart_node, label="cluster node restart"))
    logs = suite.logs()
    assert figures.problems == [], figures.line("cluster node restart") + "\n" + logs[-5000:]
    assert "home node" not in logs  # no queue lived on the stopped node alone (consent kept consuming)
    assert figures.duplicate_deliveries == 0
    assert len(cluster.running_nodes()) == 3
