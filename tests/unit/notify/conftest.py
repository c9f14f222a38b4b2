from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.notify.app import create_app
from services.notify.ports import Delivery, OutgoingEmail
from services.notify.settings import NotifySettings
from shared.clock import FixedClock

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

DIRECTORY = """
organisations:
  - hsa_id: SE2120001-SOC0180
    name: Stockholms stad, socialtjänsten
    kind: kommun_social_services
    serves: {kommun_codes: ["0180"]}
    channels:
      - {type: email, address: sip-socialtjanst@stockholm.example}
  - hsa_id: SE2321000016-VC001
    name: Vårdcentralen Södermalm
    kind: primary_care_unit
    channels:
      - {type: email, address: fast-vardkontakt@vc-sodermalm.example}
      - {type: email, address: reception@vc-sodermalm.example}
      - {type: webhook, url: "https://vc.example/hook"}
      - {type: sms, number: "+46700000000"}
  - hsa_id: SE2321000016-NONE
    name: Utan kanal
    kind: other
"""


class FakeSender:
    """Records what would be sent; raises the queued errors first."""

    def __init__(self) -> None:
        self.sent: list[OutgoingEmail] = []
        self.errors: list[BaseException] = []

    async def send(self, email: OutgoingEmail) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(email)


class FakeChannel:
    """A webhook/SMS channel that records deliveries; raises the queued errors first."""

    def __init__(self) -> None:
        self.delivered: list[Delivery] = []
        self.errors: list[BaseException] = []

    async def deliver(self, delivery: Delivery) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.delivered.append(delivery)


@pytest.fixture
def webhook() -> FakeChannel:
    return FakeChannel()


@pytest.fixture
def sms() -> FakeChannel:
    return FakeChannel()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender()


@pytest.fixture
def settings(tmp_path: Path) -> NotifySettings:
    directory = tmp_path / "directory.yaml"
    directory.write_text(DIRECTORY, encoding="utf-8")
    return NotifySettings(
        data_dir=str(tmp_path),
        directory_path=str(directory),
        retry_base_seconds=2,
        retry_max_seconds=60,
        max_send_attempts=3,
    )


@pytest.fixture
async def app(
    settings: NotifySettings, clock: FixedClock, sender: FakeSender, webhook: FakeChannel, sms: FakeChannel
) -> Any:
    """The app with its tables created; the lifespan (broker, dispatcher loop) does not run.

    E-mail goes through the real e-mail channel to the fake SMTP sender; webhook and SMS to fakes.
    """
    app = create_app(settings, clock=clock, sender=sender, channels={"webhook": webhook, "sms": sms})
    runtime = app.state.runtime
    await runtime.prepare_database()  # as the service does at start (Alembic on PostgreSQL)
    yield app
    await runtime.engine.dispose()
