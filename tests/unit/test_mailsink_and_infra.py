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


def test_a_used_vhost_is_deleted_when_its_test_is_done_and_the_next_one_is_fresh():
    """Used vhosts are not left standing for a batched deletion: their queues hold the broker's
    rationed file handles, and seven of them once made it hold new connections for a minute."""
    import subprocess

    from tests.support.infra import rabbit_vhost

    def vhosts() -> set[str]:
        out = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, timeout=60)
        return set(out.stdout.split())

    with rabbit_vhost() as url:
        first = url.rsplit("/", 1)[1]
        assert first in vhosts()
    with rabbit_vhost() as url:
        second = url.rsplit("/", 1)[1]
        standing = vhosts()
        assert second != first and second in standing
        assert first not in standing


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


def test_a_process_that_never_becomes_healthy_is_stopped_not_left_running(tmp_path):
    import sys

    from tests.support.infra import Proc, free_port

    proc = Proc(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={},
        log_path=tmp_path / "sleeper.log",
        health_url=f"http://127.0.0.1:{free_port()}/healthz",
    )
    with pytest.raises(TimeoutError, match="sleeper not healthy"):
        proc.start(timeout=1)
    assert proc.popen is not None and proc.popen.poll() is not None
