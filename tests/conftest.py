from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.infra import MailSink, mail_sink, pg_database, rabbit_vhost


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A fresh vhost on the machine's real RabbitMQ, deleted afterwards."""
    with rabbit_vhost() as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the machine's real PostgreSQL, dropped afterwards."""
    with pg_database() as url:
        yield url


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[MailSink]:
    """A real SMTP server process (aiosmtpd) on localhost that keeps what arrives."""
    with mail_sink(tmp_path) as sink:
        yield sink


@pytest.fixture
def directory_path() -> Path:
    return Path(__file__).resolve().parents[1] / "config" / "directory.yaml"
