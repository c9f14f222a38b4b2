"""``SIP_AMQP_URL`` as a list of broker addresses (shared/broker_failover.py): parsing and checking.
The connections themselves are tested on the real broker (tests/integration/ops/test_broker_failover.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from yarl import URL

from shared.broker_failover import FailoverRabbitBroker, amqp_urls, failover_connection_class
from shared.broker_urls import DEFAULT_CONNECT_TIMEOUT_SECONDS, connect_options
from shared.settings import ServiceSettings


def test_one_url_is_a_list_of_one():
    assert amqp_urls("amqp://guest:guest@127.0.0.1:5672/") == ["amqp://guest:guest@127.0.0.1:5672/"]


def test_several_urls_comma_separated_in_order_blanks_ignored():
    value = " amqp://u:p@mq-0:5672/sip , amqps://u:p@mq-1:5671/sip,,amqp://u:p@mq-2:5672/sip "
    assert amqp_urls(value) == [
        "amqp://u:p@mq-0:5672/sip",
        "amqps://u:p@mq-1:5671/sip",
        "amqp://u:p@mq-2:5672/sip",
    ]


@pytest.mark.parametrize("value", ["", " , ", "http://mq-0:5672/", "amqp://u:p@mq-0/,mq-1:5672"])
def test_a_missing_or_wrong_address_is_refused(value: str):
    with pytest.raises(ValueError):
        amqp_urls(value)


def test_the_error_names_the_address_without_its_password():
    with pytest.raises(ValueError) as err:
        amqp_urls("amqp://u:s3cret@mq-0/,http://u:s3cret@mq-1/")
    assert "s3cret" not in str(err.value)
    assert "mq-1" in str(err.value)


def test_settings_take_a_list_and_refuse_a_wrong_one():
    ok = ServiceSettings(amqp_url="amqp://u:p@mq-0:5672/,amqp://u:p@mq-1:5672/")
    assert len(amqp_urls(ok.amqp_url)) == 2
    with pytest.raises(ValidationError):
        ServiceSettings(amqp_url="amqp://u:p@mq-0:5672/,mq-1:5672")


def test_the_connection_class_knows_every_address_and_the_broker_starts_on_the_first():
    cls = failover_connection_class(["amqp://u:p@mq-0/", "amqp://u:p@mq-1/"])
    assert cls.URLS == (URL("amqp://u:p@mq-0/"), URL("amqp://u:p@mq-1/"))
    broker = FailoverRabbitBroker("amqp://u:p@mq-0:5672/,amqp://u:p@mq-1:5672/")
    assert broker.broker_urls == ["amqp://u:p@mq-0:5672/?heartbeat=15", "amqp://u:p@mq-1:5672/?heartbeat=15"]


def test_each_new_connection_attempt_takes_the_next_address_in_turn():
    """aio-pika clears ``transport`` at the start of every (re)connection attempt: the first attempt
    keeps the address the connection was made with, each later one moves on, round the list."""
    import asyncio

    urls = ["amqp://u:p@mq-0:5672/sip", "amqp://u:p@mq-1:5672/sip", "amqp://u:p@mq-2:5672/sip"]

    async def run() -> list[str]:
        conn = failover_connection_class(urls)(URL(urls[1]))
        seen = []
        for _attempt in range(4):
            conn.transport = None  # what RobustConnection does before each attempt
            seen.append(conn.current_url)
        return seen

    assert asyncio.run(run()) == [
        "amqp://u@mq-1:5672/sip",
        "amqp://u@mq-2:5672/sip",
        "amqp://u@mq-0:5672/sip",
        "amqp://u@mq-1:5672/sip",
    ]


def test_a_connect_timeout_and_a_heartbeat_by_default_so_a_silent_node_costs_seconds():
    urls, timeout = connect_options(["amqp://u:p@mq-0/sip", "amqps://u:p@mq-1/sip?cafile=/ca.pem"])
    assert timeout == DEFAULT_CONNECT_TIMEOUT_SECONDS == 10
    assert urls == ["amqp://u:p@mq-0/sip?heartbeat=15", "amqps://u:p@mq-1/sip?cafile=/ca.pem&heartbeat=15"]


def test_the_address_may_set_both_and_connect_timeout_is_not_passed_on():
    urls, timeout = connect_options(["amqp://u:p@mq-0/?connect_timeout=2.5&heartbeat=30", "amqp://u:p@mq-1/"])
    assert timeout == 2.5
    assert urls == ["amqp://u:p@mq-0/?heartbeat=30", "amqp://u:p@mq-1/?heartbeat=15"]
    broker = FailoverRabbitBroker("amqp://u:p@mq-0/?connect_timeout=4")
    assert broker._connection_kwargs["timeout"] == 4


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_a_wrong_connect_timeout_is_refused_naming_the_address_without_password(value: str):
    with pytest.raises(ValueError) as err:
        connect_options([f"amqp://u:s3cret@mq-0/?connect_timeout={value}"])
    assert "connect_timeout" in str(err.value) and "s3cret" not in str(err.value)
