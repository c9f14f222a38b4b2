"""``sipctl messages search|show|replay``: the message store over planning's HTTP API, as an operator.

The token: ``SIPCTL_TOKEN`` (an operator's token from the identity provider), else a short-lived
development token with the scope ``sip:operator`` for ``SIPCTL_ORGANISATION`` (signed with the
development secret, as the rest of sipctl). A search by the person sends the personnummer in the JSON
body only (never in a URL, never printed back); it is recorded in the person's audit trail.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx

FILTERS = ("since", "until", "sender", "type", "status", "control_id", "correlation_id")


def operator_headers(mint: Callable[[], dict[str, str]]) -> dict[str, str]:
    token = os.environ.get("SIPCTL_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else mint()


def _line(m: dict[str, Any]) -> str:
    replay = f"  replay of {m['replay_of']}" if m.get("replay_of") else ""
    case = f"  case {m['case_id']}" if m.get("case_id") else ""
    reason = f"  ({m['reason']})" if m.get("reason") else ""
    return (
        f"{m['id']:>8}  {m['received_at']}  {m['source']:6s} {m.get('message_type') or '-':24s} "
        f"{m['status']:13s} {m['sender']}  ctl={m.get('control_id')}{case}{replay}{reason}"
    )


def _fail(r: httpx.Response) -> int:
    print(f"{r.status_code}: {r.text[:500]}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace, base: str, headers: dict[str, str]) -> int:
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        if args.action == "search":
            return _search(http, args)
        if args.id is None:
            print(f"messages {args.action} needs the message id", file=sys.stderr)
            return 2
        if args.action == "show":
            r = http.get(f"/messages/{args.id}")
            if r.status_code != 200:
                return _fail(r)
            if args.raw:
                raw = http.get(f"/messages/{args.id}/raw")  # recorded in the person's audit trail
                if raw.status_code != 200:
                    return _fail(raw)
                sys.stdout.write(raw.content.decode("utf-8", "replace").replace("\r", "\n") + "\n")
                return 0
            print(json.dumps(r.json(), indent=2, ensure_ascii=False))
            return 0
        r = http.post(f"/messages/{args.id}/replay")
        if r.status_code != 200:
            return _fail(r)
        body = r.json()
        print(f"{'replayed' if body['replayed'] else 'not replayed'}: {body['reason']}")
        if body.get("replay"):
            print(_line(body["replay"]))
        return 0


def _search(http: httpx.Client, args: argparse.Namespace) -> int:
    shown, cursor = 0, None
    while shown < args.limit:
        page_size = min(500, args.limit - shown)
        if args.patient:
            body: dict[str, Any] = {"patient": args.patient, "limit": page_size, "cursor": cursor}
            body |= {k: getattr(args, k) for k in ("since", "until") if getattr(args, k)}
            r = http.post("/messages/search", json=body)
        else:
            params = {k: getattr(args, k) for k in FILTERS if getattr(args, k)}
            r = http.get("/messages", params={**params, "limit": page_size, "cursor": cursor or ""})
        if r.status_code != 200:
            return _fail(r)
        page = r.json()
        for m in page["items"]:
            print(json.dumps(m, ensure_ascii=False) if args.json else _line(m))
        shown += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    if shown == 0 and not args.json:
        print("no messages")
    return 0


def add_parser(sub: Any, fn: Callable[[argparse.Namespace], int]) -> None:
    m = sub.add_parser("messages", help="search the message store, show a message, replay one (operator)")
    m.add_argument("action", choices=["search", "show", "replay"])
    m.add_argument("id", nargs="?", type=int, help="the message id (show, replay)")
    m.add_argument("--since", help="received at or after (ISO 8601)")
    m.add_argument("--until", help="received before (ISO 8601)")
    m.add_argument("--sender")
    m.add_argument("--type", help="ADT^A03, discharge-inpatient-home, hospital.discharge.v1, ...")
    m.add_argument("--status", choices=["accepted", "refused", "effected", "dead-lettered"])
    m.add_argument("--control-id", dest="control_id")
    m.add_argument("--correlation-id", dest="correlation_id")
    m.add_argument("--patient", help="the person's personnummer (sent in the body; audited)")
    m.add_argument("--limit", type=int, default=50)
    m.add_argument("--json", action="store_true", help="one JSON object a line")
    m.add_argument("--raw", action="store_true", help="show: the message as received (audited)")
    m.set_defaults(fn=fn)
