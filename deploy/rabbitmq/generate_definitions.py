"""Write deploy/rabbitmq/definitions.json from shared.topology (run it after the topology changes).

    .venv/bin/python deploy/rabbitmq/generate_definitions.py > deploy/rabbitmq/definitions.json

The file is a *template*: user passwords are ``@…_PASSWORD_HASH@`` placeholders and the operator's
name is ``@ADMIN_USER@``; ``entrypoint.sh`` fills them in from the environment when the RabbitMQ
container starts. tests/unit/test_deployment_files.py fails when the committed file differs from
what this script writes.

What is in it:

- vhost ``sip``; the operator user (administrator tag, everything on ``sip``: management UI,
  ``sipctl dead-letters``); one user per service with exactly the names it needs (below);
- the whole topology of shared.topology (exchanges, quorum work/retry/dead-letter queues, bindings)
  with the arguments the services declare, so it exists before any service starts: a message
  published before its consumer ever ran is queued (an event on a topic exchange would otherwise
  reach only the consumers that have declared their queues so far).

Each service declares only its own part at start (shared.messaging.declare_service_topology): every
exchange it publishes to or binds from (actively — so it starts on an empty vhost in any order; on
the pre-created topology the redeclare is a no-op), its own ``<service>.dlx``, and its own work,
retry and dead-letter queues with their bindings; faststream's subscribers redeclare and bind the
same. RabbitMQ's rules (access-control guide): ``exchange.declare`` and ``queue.declare`` need
configure on the name (passive ones need nothing); a ``queue.declare`` that *creates* a queue with
``x-dead-letter-exchange`` also needs read on the queue and write on that exchange (``""`` is checked
as ``amq.default``); ``queue.bind`` needs write on the queue and read on the exchange;
``basic.publish`` write on the exchange; ``basic.consume``/``basic.get``/``queue.purge`` read on the
queue; ``queue.delete``/``exchange.delete`` configure. So, per service (regexes are exact
alternations of names, anchored; RabbitMQ searches, so the anchors matter):

- configure: its own work, retry and dead-letter queues and its request/reply queues
  (shared.topology.REPLY_QUEUES: consent's decide queue, declared by consent only), its own
  dead-letter exchange and the exchanges it publishes to or binds from
  (shared.topology.exchanges_of). No other service's queue: it cannot declare, delete or redeclare
  those. (Configure on a shared exchange does let it delete that exchange — the price of any start
  order on an empty vhost; see README, "Containers".)
- write: its own work queues and DLQs (it binds them; retry queues have no binding) + its
  request/reply queues, the exchanges it publishes to (shared.topology.publishes_to: PUBLICATIONS, and
  consent.commands for planning's consent-gate requests, shared.topology.REQUESTS), its own
  dead-letter exchange (the middleware dead-letters there; also its queues' x-dead-letter-exchange)
  and ``amq.default`` (retry parking publishes to ``<queue>.retry`` through it, the retry queues
  dead-letter through it, consent answers the gate's direct reply-to through it — which also lets a
  service publish into any queue by name).
- read: the exchanges it binds from and its own dead-letter exchange (its DLQs bind from it), its own
  work queues (it consumes them) and retry queues (creating a queue with a dead-letter exchange needs
  read on it) + its request/reply queues (it consumes them). Not a DLQ (the operator reads those
  with ``sipctl dead-letters``) and no other service's queue: it cannot consume, get or purge them.
- a retired subscription's queues (shared.topology.RETIRED, left by an earlier version): configure on
  all three (the service deletes them once drained) and read on the work queue (it takes what waits
  there, shared.retired_queues).

RabbitMQ 4.x (compose runs 4.1; the tests run 3.10): since 4.0 every quorum queue has a delivery
limit of 20 by default and dead-letters (or, without a dead-letter exchange, drops) a message
returned more often. The work queues declare ``x-delivery-limit`` themselves (shared.topology,
the same on both); the retry queues and DLQs declare none, so on 4.x a DLQ message that the operator
looked at 20 times (a get and a requeue each) would be dropped. The policy ``sip-explicit-delivery-
limit`` gives them an explicit, large limit (:data:`PARKED_DELIVERY_LIMIT`) on both series: a policy,
not a queue argument, so the queues the services declare still match the definitions exactly
(``apply-to: queues``: 3.10 knows no ``quorum_queues``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.contracts import EVENT_EXCHANGES
from shared.topology import (
    DEFAULT_RETRY_DELAY_SECONDS,
    SUBSCRIPTIONS,
    binds_from,
    dead_letter_exchange_name,
    dead_letter_queue,
    exchange_for,
    exchanges_of,
    publishes_to,
    reply_queues_of,
    retired_of,
    retry_queue,
    subscriptions_of,
    work_queue,
)

VHOST = "sip"
SERVICES = ("planning", "consent", "notify")
ADMIN_USER = "@ADMIN_USER@"
HASHING = "rabbit_password_hashing_sha256"
DEFAULT_EXCHANGE = "amq.default"  # the name RabbitMQ checks permissions on for the "" exchange
PARKED_DELIVERY_LIMIT = 1_000_000  # retry queues and DLQs: effectively none, on 3.10 and 4.x alike
PARKED_QUEUES = r"^[a-z0-9.-]+\.(?:retry|dlq)$"


def policies() -> list[dict]:
    return [
        {
            "vhost": VHOST,
            "name": "sip-explicit-delivery-limit",
            "pattern": PARKED_QUEUES,
            "apply-to": "queues",
            "definition": {"delivery-limit": PARKED_DELIVERY_LIMIT},
            "priority": 0,
        }
    ]


def password_placeholder(user: str) -> str:
    return f"@{user.upper()}_PASSWORD_HASH@"


def suite_exchanges() -> list[str]:
    names = {s.contract.exchange for s in SUBSCRIPTIONS} | set(EVENT_EXCHANGES)
    names |= {dead_letter_exchange_name(s.consumer) for s in SUBSCRIPTIONS}
    return sorted(names)


def exact(names: list[str] | set[str]) -> str:
    """A regex that RabbitMQ's search (re:run, not a full match) matches for exactly these names."""
    for n in names:
        assert re.fullmatch(r"[a-z0-9.-]+", n), n  # so escaping the dots is enough
    return "^(?:" + "|".join(n.replace(".", r"\.") for n in sorted(set(names))) + ")$"


def permissions_of(service: str) -> dict[str, str]:
    own = subscriptions_of(service)
    retired = retired_of(service)  # drained (basic.get: read) and deleted (configure) at start
    replies = [r.queue_name for r in reply_queues_of(service)]  # request/reply: declared by the owner only
    dlx = dead_letter_exchange_name(service)
    return {
        "configure": exact(
            [n for s in (*own, *retired) for n in (s.queue_name, s.retry_queue_name, s.dlq_name)]
            + replies
            + [*exchanges_of(service), dlx]
        ),
        "write": exact(
            [n for s in own for n in (s.queue_name, s.dlq_name)]
            + replies
            + [*publishes_to(service), dlx, DEFAULT_EXCHANGE]
        ),
        "read": exact(
            [n for s in own for n in (s.queue_name, s.retry_queue_name)]
            + [s.queue_name for s in retired]
            + replies
            + [*binds_from(service), dlx]
        ),
    }


def _queue(q) -> dict:
    return {
        "name": q.name,
        "vhost": VHOST,
        "durable": True,
        "auto_delete": False,
        "arguments": dict(q.arguments),
    }


def definitions(retry_delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS) -> dict:
    users = [{"name": ADMIN_USER, "tags": "administrator"}] + [{"name": s, "tags": ""} for s in SERVICES]
    queues, bindings = [], []
    for sub in SUBSCRIPTIONS:
        queues += [_queue(work_queue(sub)), _queue(dead_letter_queue(sub))]
        queues.append(_queue(retry_queue(sub, retry_delay_seconds)))
        for source, destination in ((sub.contract.exchange, sub.queue_name), (sub.dlx_name, sub.dlq_name)):
            bindings.append(
                {
                    "source": source,
                    "vhost": VHOST,
                    "destination": destination,
                    "destination_type": "queue",
                    "routing_key": sub.contract.routing_key,
                    "arguments": {},
                }
            )
    return {
        "users": [
            {
                "name": u["name"],
                "password_hash": password_placeholder("admin" if u["name"] == ADMIN_USER else u["name"]),
                "hashing_algorithm": HASHING,
                "tags": u["tags"],
            }
            for u in users
        ],
        "vhosts": [{"name": VHOST}],
        "permissions": [{"user": ADMIN_USER, "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"}]
        + [{"user": s, "vhost": VHOST, **permissions_of(s)} for s in SERVICES],
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": policies(),
        "exchanges": [
            {
                "name": name,
                "vhost": VHOST,
                "type": exchange_for(name).type.value,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for name in suite_exchanges()
        ],
        "queues": queues,
        "bindings": bindings,
    }


def render(retry_delay_seconds: float = DEFAULT_RETRY_DELAY_SECONDS) -> str:
    return json.dumps(definitions(retry_delay_seconds), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(float(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RETRY_DELAY_SECONDS))
