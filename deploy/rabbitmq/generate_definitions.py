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
  with the arguments the services declare, so it exists before any service starts.

Why the topology is here: every service declares the *whole* topology at start (idempotent), and
RabbitMQ checks ``read`` on a queue and ``write`` on its dead-letter exchange only when a declare
*creates* a queue with ``x-dead-letter-exchange``. Pre-created, a redeclare needs ``configure`` only,
so no service needs ``read`` on another service's queues. Each service's regexes are exact
alternations of the suite's names (anchored; RabbitMQ searches, so the anchors matter):

- configure: every suite exchange and queue (the whole-topology declare), + consent's decide queue
  for consent (only consent declares it);
- write: every suite work queue and DLQ (declare_topology binds them all: ``queue.bind`` needs write
  on the queue; retry queues have no binding),
  the exchanges the service publishes to (PUBLICATIONS; planning also sends consent-gate requests to
  consent.commands), its own dead-letter exchange (the middleware dead-letters there) and
  ``amq.default`` (retry parking publishes to ``<queue>.retry`` through it; consent answers the
  gate's direct reply-to through it);
- read: every suite exchange (binding *from* an exchange needs read on it) and only the service's own
  work queues (+ the decide queue for consent). Not the dead-letter or retry queues: services never
  consume those; the operator reads DLQs with ``sipctl dead-letters``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.contracts import EVENT_EXCHANGES, ConsentDecisionRequested
from shared.topology import (
    DEFAULT_RETRY_DELAY_SECONDS,
    PUBLICATIONS,
    SUBSCRIPTIONS,
    dead_letter_exchange_name,
    dead_letter_queue,
    exchange_for,
    retry_queue,
    subscriptions_of,
    work_queue,
)

VHOST = "sip"
SERVICES = ("planning", "consent", "notify")
ADMIN_USER = "@ADMIN_USER@"
HASHING = "rabbit_password_hashing_sha256"
DEFAULT_EXCHANGE = "amq.default"  # the name RabbitMQ checks permissions on for the "" exchange
DECIDE_QUEUE = f"consent.{ConsentDecisionRequested.routing_key}"  # declared by consent only
GATE_CLIENTS = ("planning",)  # services that ask the consent gate over RabbitMQ request/reply


def password_placeholder(user: str) -> str:
    return f"@{user.upper()}_PASSWORD_HASH@"


def suite_exchanges() -> list[str]:
    names = {s.contract.exchange for s in SUBSCRIPTIONS} | set(EVENT_EXCHANGES)
    names |= {dead_letter_exchange_name(s.consumer) for s in SUBSCRIPTIONS}
    return sorted(names)


def suite_queues() -> list[str]:
    return sorted(n for s in SUBSCRIPTIONS for n in (s.queue_name, s.dlq_name, s.retry_queue_name))


def bound_queues() -> list[str]:
    """The queues declare_topology binds (work queues and DLQs; retry queues are reached through the
    default exchange and have no binding)."""
    return sorted(n for s in SUBSCRIPTIONS for n in (s.queue_name, s.dlq_name))


def exact(names: list[str] | set[str]) -> str:
    """A regex that RabbitMQ's search (re:run, not a full match) matches for exactly these names."""
    for n in names:
        assert re.fullmatch(r"[a-z0-9.-]+", n), n  # so escaping the dots is enough
    return "^(?:" + "|".join(n.replace(".", r"\.") for n in sorted(set(names))) + ")$"


def permissions_of(service: str) -> dict[str, str]:
    own_decide = [DECIDE_QUEUE] if service == "consent" else []
    publishes = {c.exchange for c in PUBLICATIONS[service]}
    if service in GATE_CLIENTS:
        publishes.add(ConsentDecisionRequested.exchange)
    return {
        "configure": exact(suite_exchanges() + suite_queues() + own_decide),
        "write": exact(
            bound_queues() + own_decide + [*publishes, dead_letter_exchange_name(service), DEFAULT_EXCHANGE]
        ),
        "read": exact(suite_exchanges() + [s.queue_name for s in subscriptions_of(service)] + own_decide),
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
        "policies": [],
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
