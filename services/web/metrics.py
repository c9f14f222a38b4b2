"""The web service's Prometheus metrics, served at ``GET /metrics`` (open, like every service's: no
personal data in it). One :class:`WebMetrics` per app, with its own registry.

- the figures every service has (:class:`shared.metrics.ServiceMetrics`): HTTP requests and latency
  per **route template** (``sip_http_requests_total{method,route,status}``,
  ``sip_http_request_duration_seconds``; ``/plans/{plan_id}``, never the raw path), the process and
  ``sip_service_info{service="web"}``; the messaging and outbox figures stay empty (the web uses no
  broker and keeps no database);
- ``sip_web_signins_total{kind,outcome}`` — sign-ins: ``kind`` staff | citizen, ``outcome`` ok |
  refused (the provider's answer or the development sign-in's form was not accepted) | unavailable
  (the identity provider could not be reached);
- ``sip_web_api_errors_total{service,error}`` — calls to the APIs that did not answer with data:
  ``service`` planning | consent | notify, ``error`` unavailable (no answer) | server (an error
  status: the page says "try again") | token (401: the user signs in again) | refused (403/404: the
  API's authorization said no).

Every label is from a fixed set: never an identifier, a path or a personnummer.
"""

from __future__ import annotations

from shared.metrics import CONTENT_TYPE, ServiceMetrics

__all__ = ["API_ERRORS", "CONTENT_TYPE", "SIGNIN_KINDS", "SIGNIN_OUTCOMES", "WebMetrics"]

SIGNIN_KINDS = ("staff", "citizen")
SIGNIN_OUTCOMES = ("ok", "refused", "unavailable")
API_SERVICES = ("planning", "consent", "notify")
API_ERRORS = ("unavailable", "server", "token", "refused")


class WebMetrics:
    def __init__(self) -> None:
        self.service = ServiceMetrics("web")
        self.signins = self.service.counter(
            "sip_web_signins",
            "Sign-ins at the pages by kind (staff, citizen) and outcome",
            ["kind", "outcome"],
        )
        self.api_errors = self.service.counter(
            "sip_web_api_errors",
            "Calls to the APIs that answered no data, by upstream service and kind of error",
            ["service", "error"],
        )
        for kind in SIGNIN_KINDS:  # every series from the start: a rate() needs its zero
            for outcome in SIGNIN_OUTCOMES:
                self.signins.labels(kind=kind, outcome=outcome)
        for service in API_SERVICES:
            for error in API_ERRORS:
                self.api_errors.labels(service=service, error=error)

    def signin(self, kind: str | None, outcome: str) -> None:
        if kind in SIGNIN_KINDS and outcome in SIGNIN_OUTCOMES:
            self.signins.labels(kind=kind, outcome=outcome).inc()

    def api_error(self, service: str, error: str) -> None:
        if service in API_SERVICES and error in API_ERRORS:
            self.api_errors.labels(service=service, error=error).inc()

    def render(self) -> bytes:
        return self.service.render()
