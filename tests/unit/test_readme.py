"""The README tells the truth: its first commands are the Makefile's, its catalogue is the topology."""

import re
from pathlib import Path

from shared.contracts import ALL_CONTRACTS
from shared.topology import SUBSCRIPTIONS

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_message_catalogue_matches_the_topology():
    rows = re.findall(r"^\| `([a-z.\-0-9]+)` \| `([a-z.]+)` \((topic|direct)\) \| (.+?) \|", README, re.M)
    catalogue = {key: (exchange, kind, flow) for key, exchange, kind, flow in rows}
    assert set(catalogue) == {c.routing_key for c in ALL_CONTRACTS}
    for contract in ALL_CONTRACTS:
        exchange, kind, _ = catalogue[contract.routing_key]
        assert exchange == contract.exchange
        assert kind == ("topic" if exchange.endswith(".events") else "direct")
    for sub in SUBSCRIPTIONS:
        assert f"`{sub.queue_name}`" in catalogue[sub.contract.routing_key][2], sub.queue_name
