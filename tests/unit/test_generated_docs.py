"""The committed AsyncAPI/OpenAPI documents are what the code generates (run `make docs` to refresh)."""

import json
from pathlib import Path

from devtools.gendocs import documents
from shared.topology import PUBLICATIONS, SUBSCRIPTIONS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_committed_documents_match_the_code():
    generated = documents()
    stale = [
        rel
        for rel, text in generated.items()
        if not (DOCS / rel).exists() or (DOCS / rel).read_text() != text
    ]
    assert stale == [], f"out of date, run `make docs`: {stale}"


def test_asyncapi_lists_every_queue_consumed_and_message_published():
    for service in ("planning", "consent", "notify"):
        doc = json.loads((DOCS / "asyncapi" / f"{service}.json").read_text())
        text = json.dumps(doc)
        for sub in SUBSCRIPTIONS:
            if sub.consumer == service:
                assert sub.queue_name in doc["channels"], sub.queue_name
        for contract in PUBLICATIONS[service]:
            assert contract.routing_key in text, contract.routing_key
        assert any(op["action"] == "send" for op in doc["operations"].values())
