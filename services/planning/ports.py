from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from services.planning.domain import SipCase


class CaseRepository(Protocol):
    async def add_episode(
        self,
        hospital_hsa_id: str,
        episode_id: str,
        received_at: datetime,
        ready_for_discharge_at: datetime,
        sip_needed: bool,
    ) -> bool: ...
    async def add_case(self, case: SipCase) -> None: ...
    async def get_case(self, case_id: UUID) -> SipCase | None: ...
    async def update_case(self, case: SipCase) -> None: ...
    async def open_cases(self, include_closed: bool = False) -> list[SipCase]: ...
    async def next_plan_version(self, case_id: UUID) -> int: ...
    async def add_plan_version(
        self, case_id: UUID, version: int, resource: dict[str, Any], at: datetime
    ) -> None: ...
    async def latest_plan(self, case_id: UUID) -> dict[str, Any] | None: ...
    async def record_invitation(
        self, case_id: UUID, recipient: str, channel: str, sent_at: datetime
    ) -> bool: ...


class Outbox(Protocol):
    async def send(self, message: object) -> None: ...
