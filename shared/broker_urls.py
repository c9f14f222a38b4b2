"""``SIP_AMQP_URL``: one broker address or several (a cluster's nodes), comma separated.

Two connection settings ride on each address's query string, so that a node that silently drops
packets (a network partition, a hung host) costs seconds, not the kernel's TCP timeouts:

- ``connect_timeout`` (seconds, default 10): a connection attempt — the first one and every
  reconnect — that has not completed the AMQP handshake by then is given up and the next address
  is tried (:mod:`shared.broker_failover`); the first address that gives it sets it for all;
- ``heartbeat`` (seconds, default 15 here, where aiormq and RabbitMQ would use 60): an open
  connection whose peer sends nothing for about three heartbeats is taken as lost and reconnected.

Parsing only (no transport: the settings import it); the connections are in
:mod:`shared.broker_failover`.
"""

from __future__ import annotations

from yarl import URL


def amqp_urls(value: str) -> list[str]:
    """The broker addresses in ``value`` (comma separated; blanks around them ignored)."""
    urls = [u.strip() for u in (value or "").split(",") if u.strip()]
    if not urls:
        raise ValueError("no broker address: give an amqp:// URL, or several separated by commas")
    for url in urls:
        scheme = URL(url).scheme
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"broker address {without_password(url)!r} is not an amqp:// or amqps:// URL")
    return urls


def without_password(url: str | URL) -> str:
    """The URL without its password (for logs and errors)."""
    u = URL(str(url))
    return str(u.with_password(None)) if u.password else str(u)


DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_HEARTBEAT_SECONDS = 15


def connect_options(urls: list[str] | tuple[str, ...]) -> tuple[list[str], float]:
    """The addresses as the client library takes them (``heartbeat`` added where a URL gives none,
    ``connect_timeout`` taken out) and the connect timeout in seconds."""
    timeout: float | None = None
    out: list[str] = []
    for raw in urls:
        url = URL(raw)
        query = dict(url.query)
        given = query.pop("connect_timeout", None)
        if given is not None:
            try:
                value = float(given)
            except ValueError:
                msg = f"{without_password(raw)}: connect_timeout must be a number of seconds"
                raise ValueError(msg) from None
            if not value > 0:
                raise ValueError(f"{without_password(raw)}: connect_timeout must be more than 0 seconds")
            timeout = value if timeout is None else timeout
        query.setdefault("heartbeat", str(DEFAULT_HEARTBEAT_SECONDS))
        out.append(str(url.with_query(query)))
    return out, timeout if timeout is not None else DEFAULT_CONNECT_TIMEOUT_SECONDS
