"""sip_notify_delivery_attempts_total{channel, outcome}: what DeliveryFailures and the dashboard read."""

from __future__ import annotations

from datetime import timedelta

from services.notify.ports import ChannelUnavailable, PermanentSendError, TransientSendError
from tests.unit.notify.test_dispatcher import accept
from tests.unit.ops.test_metrics import samples


def attempts(app) -> dict[str, float]:
    got = samples(app.state.runtime.metrics.render().decode())
    return {
        dict(labels)["outcome"]: value
        for (name, labels), value in got.items()
        if name == "sip_notify_delivery_attempts_total" and dict(labels)["channel"] == "email"
    }


async def test_each_send_is_counted_by_channel_and_outcome(app, settings, clock, sender):
    d = app.state.dispatcher
    # every channel's series exist from the start at 0, so an alert sees the first failure as an increase
    assert attempts(app) == {"sent": 0, "retry": 0, "failed": 0, "unavailable": 0}
    [a] = await accept(app, settings, clock, "SE2120001-SOC0180")
    sender.errors = [ChannelUnavailable("cannot reach the mail server"), TransientSendError("timed out")]
    assert await d.deliver(a.id) == "pending"
    clock.advance(timedelta(hours=1))
    assert await d.deliver(a.id) == "pending"
    clock.advance(timedelta(hours=1))
    assert await d.deliver(a.id) == "sent"
    b = next(n for n in await accept(app, settings, clock, "SE2321000016-VC001") if n.channel == "email")
    sender.errors = [PermanentSendError("SMTP 550: mailbox unavailable")]
    assert await d.deliver(b.id) == "failed"
    assert attempts(app) == {"unavailable": 1, "retry": 1, "sent": 1, "failed": 1}
