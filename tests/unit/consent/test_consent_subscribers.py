"""Consent's subscribers with TestRabbitBroker (in memory, no broker): translate, handle, store."""

from datetime import UTC, datetime
from uuid import uuid4

import sqlalchemy as sa
from faststream.rabbit import TestRabbitBroker

from services.consent.adapters.store import SqlConsentRepository, metadata
from services.consent.app import create_app
from services.consent.settings import ConsentSettings
from shared.clock import FixedClock
from shared.contracts import ConsentRequested, RecordConsent
from tests.support.personnummer import ADULT


async def test_request_and_record_via_subscribers(tmp_path):
    app = create_app(
        ConsentSettings(data_dir=str(tmp_path)), clock=FixedClock(datetime(2026, 11, 20, tzinfo=UTC))
    )
    rt = app.state.runtime
    async with rt.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    case_id = uuid4()
    req = ConsentRequested(case_id=case_id, patient_identifier=ADULT, proposed_recipients=("SE-A",))
    async with TestRabbitBroker(rt.broker) as br:
        await br.publish(
            req.model_dump(mode="json"), exchange="consent.commands", routing_key=req.routing_key
        )
        await br.publish(
            req.model_dump(mode="json"), exchange="consent.commands", routing_key=req.routing_key
        )
        rec = RecordConsent(
            case_id=case_id, patient_identifier=ADULT, decision="granted", recorded_by_hsa_id="SE-R"
        )
        await br.publish(
            rec.model_dump(mode="json"), exchange="consent.commands", routing_key=rec.routing_key
        )
        await br.publish(
            rec.model_dump(mode="json"), exchange="consent.commands", routing_key=rec.routing_key
        )
    async with rt.engine.connect() as conn:
        repo = SqlConsentRepository(conn)
        consents = await repo.for_patient(ADULT)
        outbox = (await conn.execute(sa.select(rt.outbox.c.routing_key))).scalars().all()
        request = await repo.get_request(case_id)
    assert len(consents) == 1  # the duplicate RecordConsent had no second effect
    assert consents[0].recipients == ("SE-A",)
    assert request is not None and request.status == "answered"
    assert outbox == ["consent.granted.v1"]
    await rt.engine.dispose()
