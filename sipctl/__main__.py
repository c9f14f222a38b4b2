"""sipctl — the operator's command line for sip-suite.

  sipctl run                 start the whole suite locally (mail sink + planning + consent + notify + web)
  sipctl send-discharge      publish a sample discharge and follow what happens to it
  sipctl consent CASE_ID     record the person's consent for a case (over the consent API)
  sipctl status              health of every service and the open SIP cases
  sipctl dead-letters list   dead letters with their reasons;  `replay QUEUE [--id ID ...]` sends them back
  sipctl declare-topology    declare the suite's whole topology (as the operator; `run` does it first)

Settings come from the environment (see .env.example); the defaults match `make run`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import httpx

from shared.contracts import DischargeNotified, PatientRef

SAMPLE_PERSONNUMMER = "191212121212"  # Skatteverket test personnummer
REPO = Path(__file__).resolve().parents[1]


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def urls() -> dict[str, str]:
    host = "127.0.0.1"
    return {
        "planning": f"http://{host}:{_env('PLANNING_HTTP_PORT', '8080')}",
        "consent": f"http://{host}:{_env('CONSENT_HTTP_PORT', '8081')}",
        "notify": f"http://{host}:{_env('NOTIFY_HTTP_PORT', '8082')}",
        "web": f"http://{host}:{_env('WEB_HTTP_PORT', '8083')}",
    }


def amqp_url() -> str:
    return _env("SIP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def dev_secret() -> str:
    """The development token secret: SIP_JWT_HS256_SECRET, else var/dev-jwt-secret (made once, 0600)."""
    if os.environ.get("SIP_JWT_HS256_SECRET"):
        return os.environ["SIP_JWT_HS256_SECRET"]
    path = Path(_env("SIP_DATA_DIR", str(REPO / "var"))) / "dev-jwt-secret"
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def person_auth(personnummer: str) -> dict[str, str]:
    """Headers for a person signed in with a (development) citizen e-ID: their own data only."""
    from shared.auth import mint_person_token

    return {"Authorization": f"Bearer {mint_person_token(dev_secret(), personnummer, ttl=600)}"}


def auth(organisation: str | None = None) -> dict[str, str]:
    """Headers for the suite's APIs: a short-lived development token for the acting organisation
    (SIPCTL_ORGANISATION, default the sample primary-care unit that owns the sample cases)."""
    from shared.auth import mint_token

    org = organisation or _env("SIPCTL_ORGANISATION", "SE2321000016-VC001")
    # the header names the organisation where authentication is off (a sandbox); with it on, only the
    # verified token counts
    return {
        "Authorization": f"Bearer {mint_token(dev_secret(), org, subject='sipctl', ttl=600)}",
        "X-Sip-Organisation": org,
    }


# ---- declare-topology -------------------------------------------------------------------------
def _declare_topology() -> None:
    from shared.messaging import declare_topology_at
    from shared.settings import ServiceSettings

    delay = ServiceSettings().retry_delay_seconds  # the services' retry queues must have the same TTL
    asyncio.run(asyncio.wait_for(declare_topology_at(amqp_url(), delay), timeout=30))


def cmd_declare_topology(_: argparse.Namespace) -> int:
    """Every exchange, queue and binding of the suite, so that a message published before its consumer
    ever ran is queued (each service declares only its own part; the deployment loads them from
    deploy/rabbitmq/definitions.json). Needs a user with configure on every suite name."""
    _declare_topology()
    print("declared the suite's topology")
    return 0


# ---- run --------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    try:  # the whole topology first: the services declare only their own parts
        _declare_topology()
    except Exception as exc:
        print(f"could not declare the whole topology: {exc!r}", file=sys.stderr)
    env = dict(os.environ)
    env.setdefault("SIP_DATA_DIR", str(REPO / "var"))
    env.setdefault("SIP_LOG_FORMAT", "text")
    # development tokens: the services trust var/dev-jwt-secret, sipctl signs with it
    env.setdefault("SIP_JWT_HS256_SECRET", dev_secret())
    smtp_port = env.setdefault("NOTIFY_SMTP_PORT", "1025")
    # the pages (services/web): plain http on localhost, and the development sign-in (make run only)
    env.setdefault("WEB_SESSION_COOKIE_SECURE", "false")
    env.setdefault("SIP_WEB_DEV_SIGNIN", "true")
    env.setdefault("WEB_PUBLIC_BASE_URL", f"http://localhost:{env.get('WEB_HTTP_PORT', '8083')}")
    env.setdefault("SIP_WEB_BASE_URL", env["WEB_PUBLIC_BASE_URL"])
    for api in ("planning", "consent", "notify"):
        env.setdefault(f"WEB_{api.upper()}_URL", urls()[api])
    mail_http = env.get("MAILSINK_HTTP_PORT", "8025")
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    py = sys.executable
    if not args.no_mailsink:
        procs.append(
            (
                "mailsink",
                subprocess.Popen(
                    [
                        py,
                        "-m",
                        "devtools.mailsink",
                        "--smtp-port",
                        smtp_port,
                        "--http-port",
                        mail_http,
                        "--dir",
                        str(Path(env["SIP_DATA_DIR"]) / "mail"),
                    ],
                    env=env,
                    cwd=REPO,
                ),
            )
        )
    for name in ("consent", "planning", "notify", "web"):
        procs.append((name, subprocess.Popen([py, "-m", f"services.{name}"], env=env, cwd=REPO)))

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    deadline = time.monotonic() + args.startup_timeout
    healthy: set[str] = set()
    while not stopping and time.monotonic() < deadline and len(healthy) < len(urls()):
        for name, base in urls().items():
            if name in healthy:
                continue
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    healthy.add(name)
            except httpx.HTTPError:
                pass
        if any(p.poll() is not None for _, p in procs):
            break
        time.sleep(0.3)
    if len(healthy) == len(urls()):
        print("\nsip-suite is up and healthy:", flush=True)
        for name, base in urls().items():
            print(f"  {name:9s} {base}   ({base}/healthz)", flush=True)
        print(f"  fhir      {urls()['planning']}/fhir/metadata", flush=True)
        print(f"  pages     {env['WEB_PUBLIC_BASE_URL']}/  (development sign-in: /dev/signin)", flush=True)
        if not args.no_mailsink:
            print(f"  mail sink smtp://127.0.0.1:{smtp_port}  web http://127.0.0.1:{mail_http}/", flush=True)
        print("Try: .venv/bin/sipctl send-discharge --follow   (Ctrl-C stops the suite)\n", flush=True)
    else:
        print(f"sip-suite did not become healthy (healthy: {sorted(healthy)})", file=sys.stderr, flush=True)
        stopping = True
    rc = 0 if len(healthy) == len(urls()) else 1
    while not stopping:
        for name, p in procs:
            if p.poll() is not None:
                print(f"{name} exited with {p.returncode}; stopping the suite", file=sys.stderr, flush=True)
                stopping, rc = True, 1
        time.sleep(0.5)
    for _, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for _, p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    return rc


# ---- send-discharge ---------------------------------------------------------------------------
async def _publish(event: DischargeNotified) -> None:
    import aio_pika

    from shared.broker_failover import connect_failover

    conn = await connect_failover(amqp_url())
    async with conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        ex = await ch.declare_exchange(event.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await ex.publish(
            aio_pika.Message(
                event.model_dump_json().encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(event.message_id),
                correlation_id=event.correlation_id,
                type=event.routing_key,
            ),
            routing_key=event.routing_key,
            mandatory=True,
        )


def cmd_send_discharge(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    event = DischargeNotified(
        episode_id=args.episode or f"VISIT-{uuid4().hex[:8].upper()}",
        hospital_hsa_id=args.hospital,
        patient=PatientRef(
            identifier=args.personnummer,
            kommun_code=args.kommun,
            primary_care_unit_hsa_id=args.primary_care,
        ),
        ready_for_discharge_at=now,
        needs_kommun_support=not args.region_only,
        needs_region_support=True,
        correlation_id=f"cli-{uuid4().hex[:12]}",
    )
    asyncio.run(_publish(event))
    print(
        f"published {event.routing_key} message_id={event.message_id} correlation_id={event.correlation_id}"
    )
    print(f"episode {event.episode_id}, ready for discharge {event.ready_for_discharge_at.isoformat()}")
    if not args.follow:
        return 0
    return _follow(event.episode_id, args.timeout)


def _follow(episode_id: str, timeout: float) -> int:
    base = urls()["planning"]
    deadline = time.monotonic() + timeout
    last_state = None
    while time.monotonic() < deadline:
        try:
            cases = httpx.get(f"{base}/cases", params={"all": "true"}, headers=auth(), timeout=3).json()
        except (httpx.HTTPError, ValueError):
            cases = []
        case = next((c for c in cases if c.get("episode_id") == episode_id), None)
        if case and case.get("state") != last_state:
            last_state = case.get("state")
            print(
                f"  case {case.get('reference')} ({case.get('id')}): {last_state}; "
                f"invitation due {case.get('invitation_due_at')}"
            )
        if case and last_state == "consent_pending":  # (case: a state was just read from it)
            print(f"  waiting for the person's consent: sipctl consent {case.get('id')}")
            return 0
        if last_state in ("invited", "declined"):
            return 0
        time.sleep(0.5)
    if last_state is None:
        print("  no SIP case yet (is planning running? did the discharge need both kommun and region?)")
    return 0 if last_state else 1


# ---- consent ----------------------------------------------------------------------------------
def cmd_consent(args: argparse.Namespace) -> int:
    body = {
        "case_id": args.case_id,
        "patient_identifier": args.personnummer,
        "decision": "declined" if args.decline else "granted",
        "method": args.method,
        "given_by": args.given_by,
        "recorded_by_hsa_id": args.recorded_by,
    }
    r = httpx.post(f"{urls()['consent']}/consents", json=body, headers=auth(args.recorded_by), timeout=10)
    print(r.status_code, json.dumps(r.json(), indent=2, ensure_ascii=False))
    return 0 if r.status_code in (200, 201) else 1


# ---- tokens and the person's own access -------------------------------------------------------
def cmd_token(args: argparse.Namespace) -> int:
    """A development token (signed with the development secret): an organisation's, an operator's or
    a person's — for curl and other HTTP clients."""
    from shared.auth import mint_person_token, mint_token

    if args.person:
        print(mint_person_token(dev_secret(), args.person, ttl=args.ttl))
    else:
        print(
            mint_token(
                dev_secret(), args.organisation, subject="sipctl", ttl=args.ttl, operator=args.operator
            )
        )
    return 0


def cmd_my_data(args: argparse.Namespace) -> int:
    """What the person sees with their own e-ID: their cases and plans, their consents, and who
    received — or was refused — what about them, and when."""
    headers = person_auth(args.person)
    base = urls()
    cases = httpx.get(f"{base['planning']}/cases", params={"all": "true"}, headers=headers, timeout=5)
    consents = httpx.get(f"{base['consent']}/consents", headers=headers, timeout=5)
    audit = httpx.get(f"{base['consent']}/audit", headers=headers, timeout=5)
    for title, r in (("cases", cases), ("consents", consents)):
        print(f"{title} ({r.status_code}):")
        for item in r.json() if r.status_code == 200 else []:
            print(f"  {item.get('reference') or item.get('id')}  {item.get('state') or item.get('status')}")
    print(f"who received or was refused what about you ({audit.status_code}):")
    for e in audit.json() if audit.status_code == 200 else []:
        who, what = e.get("recipient_hsa_id") or "you", e.get("category") or e["reason"]
        print(f"  {e['recorded_at']}  {e['action']:10s} {e['outcome']:6s} {who}  {what}")
    return 0 if {cases.status_code, consents.status_code, audit.status_code} == {200} else 1


def cmd_withdraw(args: argparse.Namespace) -> int:
    """The person withdraws their own consent with their e-ID (immediate and irreversible)."""
    r = httpx.post(
        f"{urls()['consent']}/consents/{args.consent_id}/withdraw", json={}, headers=person_auth(args.person),
        timeout=10,
    )  # fmt: skip
    print(r.status_code, json.dumps(r.json(), indent=2, ensure_ascii=False))
    return 0 if r.status_code == 200 else 1


# ---- status -----------------------------------------------------------------------------------
def cmd_status(_: argparse.Namespace) -> int:
    rc = 0
    for name, base in urls().items():
        try:
            r = httpx.get(f"{base}/healthz", timeout=3)
            print(f"{name:9s} {r.status_code} {r.text}")
            rc |= r.status_code != 200
        except httpx.HTTPError as exc:
            print(f"{name:9s} DOWN ({type(exc).__name__})")
            rc = 1
    try:
        cases = httpx.get(f"{urls()['planning']}/cases", headers=auth(), timeout=3).json()
        print(f"\nopen SIP cases: {len(cases)}")
        for c in cases[:20]:
            print(
                f"  {c.get('reference')}  {c.get('state'):22s} due {c.get('invitation_due_at')}  "
                f"owner {c.get('owner_hsa_id')}"
            )
    except (httpx.HTTPError, ValueError):
        pass
    return int(rc)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from sipctl import deadletters

    if args.action == "list":
        items = asyncio.run(deadletters.list_dead_letters(amqp_url(), args.queue, args.limit))
        if not items:
            print("no dead letters")
        for d in items:
            print(
                f"{d.queue}  message_id={d.message_id}  attempts={d.attempts}  failed_at={d.failed_at}\n"
                f"    from {d.exchange or '(default)'} / {d.routing_key}\n    reason: {d.reason}"
            )
        return 0
    if not args.queue:
        print("replay needs the queue name (see `sipctl dead-letters list`)", file=sys.stderr)
        return 2
    n = asyncio.run(deadletters.replay(amqp_url(), args.queue, set(args.id) if args.id else None))
    print(f"replayed {n} message(s) from {args.queue}")
    return 0


def cmd_messages(args: argparse.Namespace) -> int:
    from shared.auth import mint_token
    from sipctl import messages

    def dev_operator() -> dict[str, str]:
        org = _env("SIPCTL_ORGANISATION", "SE2321000016-VC001")
        token = mint_token(dev_secret(), org, subject="sipctl", ttl=600, operator=True)
        return {"Authorization": f"Bearer {token}", "X-Sip-Organisation": org}

    return messages.run(args, urls()["planning"], messages.operator_headers(dev_operator))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="sipctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="start the whole suite locally")
    r.add_argument("--no-mailsink", action="store_true", help="use a real SMTP server from NOTIFY_SMTP_*")
    r.add_argument("--startup-timeout", type=float, default=90)
    r.set_defaults(fn=cmd_run)
    d = sub.add_parser("send-discharge", help="publish a sample discharge (test personnummer)")
    d.add_argument("--personnummer", default=SAMPLE_PERSONNUMMER)
    d.add_argument("--kommun", default="0180")
    d.add_argument("--primary-care", default="SE2321000016-VC001")
    d.add_argument("--hospital", default="SE2321000016-SJH01")
    d.add_argument("--episode")
    d.add_argument("--region-only", action="store_true", help="needs no kommun help: no SIP")
    d.add_argument("--follow", action="store_true", help="poll planning and print the case as it moves")
    d.add_argument("--timeout", type=float, default=30)
    d.set_defaults(fn=cmd_send_discharge)
    c = sub.add_parser("consent", help="record consent for a case")
    c.add_argument("case_id")
    c.add_argument("--personnummer", default=SAMPLE_PERSONNUMMER)
    c.add_argument("--recorded-by", default="SE2321000016-VC001")
    c.add_argument("--method", choices=["oral", "written"], default="oral")
    c.add_argument("--given-by", choices=["patient", "guardians", "representative"], default="patient")
    c.add_argument("--decline", action="store_true")
    c.set_defaults(fn=cmd_consent)
    s = sub.add_parser("status", help="health and open cases")
    s.set_defaults(fn=cmd_status)
    dl = sub.add_parser("dead-letters", help="list or replay dead letters")
    dl.add_argument("action", choices=["list", "replay"])
    dl.add_argument("queue", nargs="?", help="a work queue or its .dlq (default: all DLQs, for list)")
    dl.add_argument("--id", action="append", help="replay only this message_id (repeatable)")
    dl.add_argument("--limit", type=int, default=100)
    dl.set_defaults(fn=cmd_dead_letters)
    from sipctl import messages

    messages.add_parser(sub, cmd_messages)
    t = sub.add_parser("declare-topology", help="declare the suite's whole topology (operator)")
    t.set_defaults(fn=cmd_declare_topology)
    tk = sub.add_parser("token", help="print a development token (organisation, operator or person)")
    tk.add_argument("--organisation", default="SE2321000016-VC001", help="the organisation's HSA-id")
    tk.add_argument("--operator", action="store_true", help="with the scope sip:operator")
    tk.add_argument("--person", help="a citizen token for this personnummer instead")
    tk.add_argument("--ttl", type=int, default=3600)
    tk.set_defaults(fn=cmd_token)
    md = sub.add_parser("my-data", help="what a person sees with their own e-ID (development token)")
    md.add_argument("--person", default=SAMPLE_PERSONNUMMER)
    md.set_defaults(fn=cmd_my_data)
    w = sub.add_parser("withdraw", help="the person withdraws their own consent (development e-ID)")
    w.add_argument("consent_id")
    w.add_argument("--person", default=SAMPLE_PERSONNUMMER)
    w.set_defaults(fn=cmd_withdraw)
    args = ap.parse_args(argv)
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
