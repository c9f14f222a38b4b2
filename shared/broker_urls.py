"""``SIP_AMQP_URL``: one broker address or several (a cluster's nodes), comma separated.

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
