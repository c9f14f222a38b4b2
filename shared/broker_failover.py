"""Several broker addresses: connect to a RabbitMQ cluster and reconnect to a surviving node.

``SIP_AMQP_URL`` takes one URL or a comma-separated list of them — one per node of a RabbitMQ cluster
(or a single load-balanced address). Every connection the suite makes goes through here:

- :func:`amqp_urls` splits and checks the list (each an ``amqp://`` / ``amqps://`` URL);
- :class:`FailoverConnection` is aio-pika's robust connection (it restores channels, exchanges, queues
  and consumers after a reconnect) that tries the next address on every reconnect attempt, in turn,
  so a node that stopped is left for the next one in the list — and the node that comes back is
  used again when the others go;
- :func:`connect_failover` makes the first connection: each address in order until one answers (an
  address that is down at start-up is not fatal while another is up); only when none answers does it
  raise, with every address's error — passwords left out;
- :class:`FailoverRabbitBroker` is faststream's ``RabbitBroker`` connecting that way.

The queues are quorum queues (``shared.topology``), replicated on the cluster's nodes: what a
stopped node held is served by the others, so no message is lost by a reconnect; what was in flight
unacknowledged is delivered again (the inboxes make that harmless).
"""

from __future__ import annotations

import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from faststream.rabbit import RabbitBroker
from yarl import URL

from shared.broker_urls import amqp_urls, connect_options, without_password

log = logging.getLogger("sip.messaging.failover")

__all__ = ["FailoverConnection", "FailoverRabbitBroker", "amqp_urls", "connect_failover"]


class FailoverConnection(RobustConnection):
    """A robust connection with several addresses: each new connection attempt uses the next one.

    aio-pika starts every (re)connection attempt by clearing ``transport``; that is the moment to move
    on to the next address (the first attempt uses the address the connection was made with).
    """

    #: the addresses, in order; set per connection by :func:`failover_connection_class`
    URLS: tuple[URL, ...] = ()

    def __init__(self, url: URL, *args: Any, **kwargs: Any) -> None:
        self._failover_attempts = -1  # the first attempt (transport cleared) makes this 0
        self._failover_index = 0
        super().__init__(url, *args, **kwargs)
        urls = self.URLS or (self.url,)
        self._failover_urls = tuple(urls)
        if self.url in self._failover_urls:
            self._failover_index = self._failover_urls.index(self.url)

    @property
    def transport(self) -> Any:
        return self.__dict__.get("_failover_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        self.__dict__["_failover_transport"] = value
        if value is not None or "_failover_urls" not in self.__dict__:
            return  # connected, or not yet set up (``__init__``)
        if self._close_called or self._close_in_progress:
            return  # closing
        self._failover_attempts += 1
        if self._failover_attempts == 0 or len(self._failover_urls) < 2:
            return
        self._failover_index = (self._failover_index + 1) % len(self._failover_urls)
        self.url = self._failover_urls[self._failover_index]
        log.debug("trying the next broker address", extra={"broker": without_password(self.url)})

    @property
    def current_url(self) -> str:
        """The address this connection uses now (or tries next), without its password and options."""
        return without_password(self.url.with_query(None))


def failover_connection_class(urls: list[str] | tuple[str, ...]) -> type[FailoverConnection]:
    """A :class:`FailoverConnection` class that knows ``urls`` (aio-pika takes a class, not a factory)."""
    return type("FailoverConnection", (FailoverConnection,), {"URLS": tuple(URL(u) for u in urls)})


async def connect_failover(urls: str | list[str], **kwargs: Any) -> AbstractRobustConnection:
    """A robust connection to the first address of ``urls`` that answers (tried in order), which
    reconnects to the next address whenever its node goes away. ``kwargs`` as for
    ``aio_pika.connect_robust`` (``reconnect_interval``, …); the connect timeout and heartbeat come
    from the addresses (:func:`shared.broker_urls.connect_options`)."""
    found, timeout = connect_options(amqp_urls(urls) if isinstance(urls, str) else list(urls))
    kwargs.setdefault("timeout", timeout)
    cls = failover_connection_class(found)
    errors: list[str] = []
    for url in found:
        try:
            connection: AbstractRobustConnection = await aio_pika.connect_robust(
                url, connection_class=cls, **kwargs
            )
            return connection
        except (OSError, ConnectionError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
            errors.append(f"{without_password(url)}: {type(exc).__name__}: {exc}")
            log.warning(
                "broker address does not answer, trying the next", extra={"broker": without_password(url)}
            )
    raise ConnectionError("no broker address answered: " + "; ".join(errors))


class FailoverRabbitBroker(RabbitBroker):
    """faststream's ``RabbitBroker`` on several addresses (``url``: a comma-separated list or a list).

    Everything else is as for ``RabbitBroker``; faststream's channels, consumers and publishers ride on
    the robust connection, which aio-pika restores on whichever node it reconnects to."""

    def __init__(self, url: str | list[str], **kwargs: Any) -> None:
        found = amqp_urls(url) if isinstance(url, str) else list(url)
        self.broker_urls, timeout = connect_options(found)
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = timeout  # every attempt, reconnects included (aio-pika keeps it)
        super().__init__(self.broker_urls[0], **kwargs)

    async def _connect(self) -> RobustConnection:
        kwargs = dict(self._connection_kwargs)
        kwargs.pop("url", None)
        cls = failover_connection_class(self.broker_urls)
        errors: list[str] = []
        for url in self.broker_urls:
            self._connection_kwargs = {**kwargs, "url": url, "connection_class": cls}
            try:
                return await super()._connect()
            except (OSError, ConnectionError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
                errors.append(f"{without_password(url)}: {type(exc).__name__}: {exc}")
                log.warning(
                    "broker address does not answer, trying the next", extra={"broker": without_password(url)}
                )
            finally:
                self._connection_kwargs = {**kwargs, "url": self.broker_urls[0]}
        raise ConnectionError("no broker address answered: " + "; ".join(errors))
