"""Several broker addresses on the real RabbitMQ: the first that answers is used, and when its node
goes away the connection moves to the next address with its channels, queues and consumers.

Each "node" is a TCP proxy of this test's own in front of the machine's broker (its own vhost): closing
a proxy (listener and every connection through it) is, for the client, a node that went away; the
3-node cluster itself is in tests/fault/test_rabbitmq_cluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aio_pika
import pytest

from shared.broker_failover import FailoverConnection, FailoverRabbitBroker, connect_failover
from tests.support.infra import free_port

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120), pytest.mark.store_free]


class NodeProxy:
    """A TCP proxy to the broker; :meth:`close` drops the listener and every connection through it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> NodeProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()  # as a node that went away: no AMQP close, the socket just drops
        self.writers.clear()
        await self.server.wait_closed()


def via(proxy_port: int, amqp_url: str) -> str:
    parts = urlsplit(amqp_url)
    return f"amqp://guest:guest@127.0.0.1:{proxy_port}{parts.path}"


@contextlib.asynccontextmanager
async def two_nodes(amqp_url: str) -> AsyncIterator[tuple[NodeProxy, NodeProxy]]:
    port = urlsplit(amqp_url).port or 5672
    a, b = await NodeProxy(port).start(), await NodeProxy(port).start()
    try:
        yield a, b
    finally:
        for p in (a, b):
            with contextlib.suppress(Exception):
                await p.close()


async def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.1)


def test_the_first_address_that_answers_is_used(amqp_url: str):
    async def run() -> None:
        dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
        async with two_nodes(amqp_url) as (a, _b):
            conn = await connect_failover(f"{dead},{via(a.port, amqp_url)}", timeout=5)
            try:
                assert isinstance(conn, FailoverConnection)
                assert conn.current_url.endswith(f":{a.port}{urlsplit(amqp_url).path}")
                ch = await conn.channel()
                await ch.declare_queue("failover-probe", auto_delete=True)
            finally:
                await conn.close()

    asyncio.run(run())


class SilentNode:
    """A node that takes the TCP connection and then says nothing (a hung host, or a network that drops
    the packets after the handshake): without a connect timeout a client waits for it forever."""

    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SilentNode:
        async def hold(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.writers.append(w)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()


def test_a_silent_first_node_is_given_up_after_the_connect_timeout(amqp_url: str):
    """``connect_timeout`` on the address (default 10 s): the silent node is left and the next
    address used, for aio-pika connections and for the services' faststream broker alike."""

    async def run() -> None:
        async with SilentNode() as silent, two_nodes(amqp_url) as (a, _b):
            urls = f"amqp://guest:guest@127.0.0.1:{silent.port}/?connect_timeout=2,{via(a.port, amqp_url)}"
            loop = asyncio.get_running_loop()
            started = loop.time()
            conn = await asyncio.wait_for(connect_failover(urls), timeout=30)
            try:
                assert 1.5 <= loop.time() - started < 15, loop.time() - started
                assert conn.current_url.endswith(f":{a.port}{urlsplit(amqp_url).path}")
            finally:
                await conn.close()
            broker = FailoverRabbitBroker(urls)
            started = loop.time()
            await asyncio.wait_for(broker.connect(), timeout=30)
            try:
                assert loop.time() - started < 15
                assert await broker.ping(timeout=5)
            finally:
                await broker.stop()

    asyncio.run(run())


def test_no_address_answers_names_each_without_password(amqp_url: str):
    async def run() -> None:
        urls = f"amqp://guest:s3cret@127.0.0.1:{free_port()}/,amqp://guest:s3cret@127.0.0.1:{free_port()}/"
        with pytest.raises(ConnectionError) as err:
            await connect_failover(urls, timeout=3)
        assert "s3cret" not in str(err.value)
        assert str(err.value).count("127.0.0.1:") == 2

    asyncio.run(run())


def test_a_consumer_moves_to_the_next_node_when_its_node_goes(amqp_url: str):
    async def run() -> None:
        async with two_nodes(amqp_url) as (a, b):
            urls = f"{via(a.port, amqp_url)},{via(b.port, amqp_url)}"
            conn = await connect_failover(urls, timeout=5, reconnect_interval=0.3)
            received: list[bytes] = []
            try:
                ch = await conn.channel(publisher_confirms=True)
                queue = await ch.declare_queue("failover-consumer", durable=True)

                async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
                    async with msg.process():
                        received.append(msg.body)

                await queue.consume(on_message)
                await ch.default_exchange.publish(aio_pika.Message(b"before"), routing_key=queue.name)
                await wait_for(lambda: received == [b"before"])
                assert b.connections == 0

                await a.close()  # the node goes away
                await wait_for(lambda: b.connections >= 1 and conn.connected.is_set())
                assert conn.current_url.endswith(f":{b.port}{urlsplit(amqp_url).path}")
                # the same connection, channel and consumer, now through the other node: the robust
                # channel is reopened (and its consumer restored) just after the connection, so wait
                # for it as an application would before publishing again
                await asyncio.wait_for(ch.ready(), timeout=10)  # type: ignore[attr-defined]
                await ch.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue.name)
                await wait_for(lambda: received == [b"before", b"after"])
            finally:
                await conn.close()

    asyncio.run(run())


def test_a_faststream_broker_keeps_consuming_after_its_node_goes(amqp_url: str):
    async def run() -> None:
        async with two_nodes(amqp_url) as (a, b):
            dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
            broker = FailoverRabbitBroker(
                f"{dead},{via(a.port, amqp_url)},{via(b.port, amqp_url)}", reconnect_interval=0.3
            )
            got: list[str] = []

            @broker.subscriber("failover-faststream")
            async def handle(body: str) -> None:
                got.append(body)

            await broker.start()
            try:
                await broker.publish("one", queue="failover-faststream")
                await wait_for(lambda: got == ["one"])
                await a.close()
                await wait_for(lambda: b.connections >= 1)
                publisher = await connect_failover(amqp_url)
                async with publisher:
                    ch = await publisher.channel()
                    await ch.default_exchange.publish(
                        aio_pika.Message(b"two"), routing_key="failover-faststream"
                    )
                await wait_for(lambda: got == ["one", "two"])
                assert await broker.ping(timeout=5)
            finally:
                await broker.stop()

    asyncio.run(run())
