import smtplib
from email.message import EmailMessage

import pytest

pytestmark = pytest.mark.broker


def test_smtp_sink_is_a_real_server(smtp):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@x.example", "b@y.example", "Hej"
    msg.set_content("innehåll")
    with smtplib.SMTP("127.0.0.1", smtp.smtp_port, timeout=10) as s:
        s.send_message(msg)
    got = smtp.wait_for(1)
    assert [m["Subject"] for m in got] == ["Hej"]
    assert got[0].get_content().strip() == "innehåll"


def test_vhost_fixture_gives_isolated_broker(amqp_url):
    import asyncio

    import aio_pika

    async def roundtrip() -> bytes:
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue("probe", auto_delete=True)
            await ch.default_exchange.publish(aio_pika.Message(b"x"), routing_key="probe")
            m = await q.get(timeout=5)
            await m.ack()
            return m.body

    assert asyncio.run(roundtrip()) == b"x"


def test_smtp_sink_keeps_mail_across_a_restart(smtp):
    for subject in ("first", "second"):
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "a@x.example", "b@y.example", subject
        msg.set_content("x")
        with smtplib.SMTP("127.0.0.1", smtp.smtp_port, timeout=10) as s:
            s.send_message(msg)
        smtp.proc.stop()
        smtp.proc.start()
    assert [m["Subject"] for m in smtp.wait_for(2)] == ["first", "second"]
