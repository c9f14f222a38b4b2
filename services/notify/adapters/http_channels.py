"""Channels over HTTP (httpx): the organisation's webhook (a signed FHIR Communication) and an SMS gateway.

Classification, the same for both (what retrying can fix):

- 2xx → delivered;
- 408, 429, 5xx, connection refused/reset, timeouts → :class:`TransientSendError` (the dispatcher
  retries with its backoff);
- any other 4xx, a redirect (not followed), a bad URL, a missing secret/gateway setting →
  :class:`PermanentSendError`.

Recorded reasons (``last_error``) and logs name the status code, never the response body (it may
echo what was sent) nor the URL (it may hold a token).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

from services.notify import signing
from services.notify.ports import Delivery, PermanentSendError, SendError, TransientSendError

log = logging.getLogger("sip.notify.http")
# httpx logs every request with its full URL at INFO; a webhook URL may hold a token
logging.getLogger("httpx").setLevel(logging.WARNING)

FHIR_JSON = "application/fhir+json"
SECRET_ENV_PREFIX = "NOTIFY_WEBHOOK_SECRET_"
_PHONE = re.compile(r"^\+?[0-9][0-9 \-]{5,19}$")


def classify_status(status: int, what: str) -> SendError | None:
    """None for 2xx; otherwise the error a status code means."""
    if 200 <= status < 300:
        return None
    phrase = httpx.codes.get_reason_phrase(status)
    text = f"{what} answered HTTP {status}" + (f" {phrase}" if phrase else "")
    if status in (408, 429) or status >= 500:
        return TransientSendError(text)
    if 300 <= status < 400:
        return PermanentSendError(f"{text} (redirects are not followed)")
    return PermanentSendError(text)


def classify_exception(exc: BaseException, what: str) -> SendError:
    if isinstance(exc, SendError):
        return exc
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return PermanentSendError(f"{what}: invalid URL ({type(exc).__name__})")
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return TransientSendError(f"timed out talking to {what} ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError | OSError):
        return TransientSendError(f"cannot reach {what} ({type(exc).__name__})")
    return TransientSendError(f"unexpected error talking to {what} ({type(exc).__name__})")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, what: str) -> None:
    """https only (plain http is allowed to the loopback interface, for development and tests)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise PermanentSendError(f"{what}: invalid URL") from None
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    raise PermanentSendError(f"{what}: URL must use https")


# ---- webhook secrets ------------------------------------------------------------------------
def secret_env_name(hsa_id: str) -> str:
    """``NOTIFY_WEBHOOK_SECRET_`` + the HSA-id in capitals, anything but letters/digits as ``_``."""
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", hsa_id).upper()


class WebhookSecrets:
    """Per-organisation shared secrets: from a secrets file (HSA-id: secret) and the environment.

    An environment variable wins over the file. Secrets never appear in logs or errors.
    """

    def __init__(
        self, by_hsa_id: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self._by_hsa = {k.upper(): v for k, v in (by_hsa_id or {}).items() if v}
        self._env = {
            k.upper(): v for k, v in (env or {}).items() if k.upper().startswith(SECRET_ENV_PREFIX) and v
        }

    @classmethod
    def load(cls, *, file: str | None = None, environ: Mapping[str, str] | None = None) -> WebhookSecrets:
        found: dict[str, str] = {}
        if file:
            data = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
            if not isinstance(data, dict):
                raise ValueError("webhook secrets file must map HSA-id to secret")
            found = {str(k): str(v) for k, v in data.items()}
        return cls(found, os.environ if environ is None else environ)

    def get(self, hsa_id: str) -> str | None:
        return self._env.get(secret_env_name(hsa_id)) or self._by_hsa.get(hsa_id.upper())


# ---- the channels ---------------------------------------------------------------------------
class WebhookChannelSender:
    """POSTs the FHIR Communication to the organisation's endpoint, signed (see ``signing``).

    Headers: ``Content-Type: application/fhir+json``, ``X-Sip-Signature: t=…,v1=…``,
    ``X-Sip-Delivery-Id`` (the notification id: the same on every attempt, for the receiver's
    deduplication) and ``Idempotency-Key`` (the same value).
    """

    def __init__(
        self,
        secrets: WebhookSecrets,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.secrets = secrets
        self.timeout = timeout
        self.transport = transport

    async def deliver(self, delivery: Delivery) -> None:
        n = delivery.notification
        if not n.address:
            raise PermanentSendError("webhook: no URL in the directory")
        check_endpoint(n.address, "webhook")
        secret = self.secrets.get(n.recipient_hsa_id)
        if not secret:
            raise PermanentSendError(
                f"webhook: no shared secret configured for {n.recipient_hsa_id} "
                f"(set {secret_env_name(n.recipient_hsa_id)} or the secrets file)"
            )
        body = json.dumps(delivery.communication, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {
            "Content-Type": FHIR_JSON,
            "Accept": f"{FHIR_JSON}, application/json",
            signing.SIGNATURE_HEADER: signing.sign(secret, body),
            "X-Sip-Delivery-Id": str(n.id),
            "Idempotency-Key": str(n.id),
            "User-Agent": "sip-suite-notify",
        }
        try:
            async with httpx.AsyncClient(
                timeout=self.timeout, transport=self.transport, follow_redirects=False
            ) as client:
                response = await client.post(n.address, content=body, headers=headers)
        except Exception as exc:
            raise classify_exception(exc, "webhook") from exc
        error = classify_status(response.status_code, "webhook")
        if error is not None:
            raise error


class SmsGatewaySender:
    """Sends the SMS text through a generic HTTP gateway: ``POST {"to": number, "text": text}``.

    ``Authorization: Bearer <token>``; ``Idempotency-Key`` is ``<notification id>:<n>`` for the n-th
    number. An organisation with several numbers gets one request per number; a retry after a
    partial failure sends to all of them again (at-least-once, as for e-mail).
    """

    def __init__(
        self,
        *,
        url: str | None,
        token: str | None,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        self.transport = transport

    async def deliver(self, delivery: Delivery) -> None:
        n = delivery.notification
        if not self.url:
            raise PermanentSendError("sms: no SMS gateway configured (NOTIFY_SMS_GATEWAY_URL)")
        check_endpoint(self.url, "sms gateway")
        numbers = [a.strip() for a in (n.address or "").split(",") if a.strip()]
        if not numbers:
            raise PermanentSendError("sms: no number in the directory")
        if not all(_PHONE.match(x) for x in numbers):
            raise PermanentSendError("sms: a number in the directory is not a phone number")
        headers = {"Content-Type": "application/json", "User-Agent": "sip-suite-notify"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with httpx.AsyncClient(
                timeout=self.timeout, transport=self.transport, follow_redirects=False
            ) as client:
                for i, number in enumerate(numbers):
                    response = await client.post(
                        self.url,
                        json={"to": number.replace(" ", "").replace("-", ""), "text": n.body},
                        headers={**headers, "Idempotency-Key": f"{n.id}:{i}"},
                    )
                    error = classify_status(response.status_code, "sms gateway")
                    if error is not None:
                        raise error
        except Exception as exc:
            raise classify_exception(exc, "sms gateway") from exc
