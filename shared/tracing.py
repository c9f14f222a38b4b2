"""OpenTelemetry tracing that follows one discharge through every service — without personal data.

The rule, in one sentence: **a message's trace is the trace of its correlation id**. Every message
carries the ``correlation_id`` of the discharge that caused it, so every span about that discharge —
in planning, consent and notify, before and after the person's consent (which arrives over HTTP,
hours later) — lands in one trace whose id is derived from the correlation id (a UUID is used as
is, anything else is hashed). Within the trace the W3C ``traceparent`` gives each span its exact
parent:

- **outbox write** (:func:`outbox_traceparent`, called by ``shared.persistence.enqueue`` inside
  the state change's transaction): a PRODUCER span ``create <routing key>``; its ``traceparent`` is
  stored in the outbox row and sent as an AMQP header by the relay, so the consumer becomes its
  child even though the publish happens later, after commit, in another task.
- **consume** (:meth:`Tracing.consume_span`, from the consume middleware): a CONSUMER span
  ``process <queue>``, child of the message's ``traceparent``. A message without one (straight from
  a hospital) starts the correlation id's trace; a ``traceparent`` of another trace (an external
  system's) becomes a span link.
- **HTTP request** (:class:`TracingMiddleware`): a SERVER span ``<METHOD> <route template>``,
  continuing the caller's ``traceparent``. A message the request writes to the outbox joins its
  correlation id's trace and links the request span.

Spans carry routing keys, queue names, message and correlation ids, route templates, status codes
and exception class names — never message bodies, URL paths or query strings, exception texts
or anything else that could hold a personnummer (the ids are masked as well, in case a sender put
one there).

Exporting is configuration: ``SIP_OTEL_EXPORTER`` = ``none`` (default) | ``console`` | ``file``
(JSON lines at ``SIP_OTEL_FILE``) | ``otlp`` (needs ``opentelemetry-exporter-otlp-proto-http``,
not installed by default; endpoint from the standard ``OTEL_EXPORTER_OTLP_*`` variables). With
``none`` nothing would read what a span records, so spans are only their ids (non-recording spans
with the same trace ids, new span ids, sampled): ``traceparent`` still flows through every hop and
every log line still carries its trace id.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.logs import bind_correlation_id, mask_personal_data

log = logging.getLogger("sip.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
EXPORTERS = ("none", "console", "file", "otlp")
_PROPAGATOR = TraceContextTextMapPropagator()
_forced_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "sip_forced_trace_id", default=None
)
_active: contextvars.ContextVar[Tracing | None] = contextvars.ContextVar("sip_active_tracing", default=None)
_default: list[Tracing] = []  # the process's most recent runtime (one per process in production)


def trace_id_for(correlation_id: str | None) -> int | None:
    """The trace id of everything caused by ``correlation_id`` (None without one)."""
    if not correlation_id:
        return None
    try:
        value = uuid.UUID(correlation_id).int
    except ValueError:
        # masked first: a personnummer used as correlation id must not be recoverable from the hash
        digest = hashlib.sha256(mask_personal_data(correlation_id).encode()).digest()
        value = int.from_bytes(digest[:16], "big")
    return value or None


def format_traceparent(ctx: SpanContext) -> str | None:
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("ascii", "replace")
    return str(value)


def extract_span_context(headers: Mapping[str, Any] | None) -> SpanContext | None:
    """The remote parent carried in ``headers`` (AMQP headers or HTTP headers), if any."""
    if not headers:
        return None
    carrier = {k.lower(): t for k in (TRACEPARENT, TRACESTATE) if (t := _text(headers.get(k))) is not None}
    if TRACEPARENT not in carrier:
        return None
    ctx = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return ctx if ctx.is_valid else None


def current_traceparent() -> str | None:
    return format_traceparent(trace.get_current_span().get_span_context())


class _CorrelationIdGenerator(RandomIdGenerator):
    """Random ids, except that a root span started for a correlation id gets that id's trace."""

    def generate_trace_id(self) -> int:
        return _forced_trace_id.get() or super().generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return False


class JsonLinesSpanExporter(SpanExporter):
    """One JSON object per finished span, appended to a file (for tests and log shippers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_dict(s), ensure_ascii=False) + "\n" for s in spans)
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as fh:
                fh.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "service": (span.resource.attributes or {}).get("service.name"),
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
    }


def make_exporter(kind: str, *, service: str, file: str = "") -> SpanExporter | None:
    kind = (kind or "none").lower()
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter(formatter=lambda s: json.dumps(span_to_dict(s)) + "\n")
    if kind == "file":
        if not file:
            raise ValueError("SIP_OTEL_EXPORTER=file needs SIP_OTEL_FILE")
        return JsonLinesSpanExporter(file.replace("{service}", service))
    if kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as exc:  # pragma: no cover - depends on an optional package
            raise ValueError(
                "SIP_OTEL_EXPORTER=otlp needs the package opentelemetry-exporter-otlp-proto-http"
            ) from exc
        otlp: SpanExporter = OTLPSpanExporter()
        return otlp
    raise ValueError(f"unknown SIP_OTEL_EXPORTER {kind!r}; one of {', '.join(EXPORTERS)}")


def _masked(value: Any) -> str | None:
    return mask_personal_data(str(value)) if value not in (None, "") else None


def _attrs(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class Tracing:
    """One service runtime's tracer provider, exporter and span helpers."""

    def __init__(
        self, service: str, *, exporter: str = "none", file: str = "", export_delay_ms: int = 500
    ) -> None:
        self.service = service
        span_exporter = make_exporter(exporter, service=service, file=file)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.namespace": "sip-suite"}),
            id_generator=_CorrelationIdGenerator(),
            shutdown_on_exit=span_exporter is not None,  # flush at exit; nothing to flush otherwise
        )
        if span_exporter is not None:
            self.provider.add_span_processor(
                BatchSpanProcessor(span_exporter, schedule_delay_millis=export_delay_ms)
            )
        #: without an exporter no span is recorded: spans are only their ids (see start_span)
        self.recording = span_exporter is not None
        self._ids = RandomIdGenerator()
        self.tracer = self.provider.get_tracer("sip-suite")
        _default[:] = [self]

    def flush(self) -> None:
        """Export what is pending (a runtime may start again; the provider shuts down at exit)."""
        self.provider.force_flush(5000)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make this runtime's tracer the one outbox writes in this context use."""
        token = _active.set(self)
        try:
            yield
        finally:
            _active.reset(token)

    def start_span(
        self,
        name: str,
        *,
        kind: SpanKind,
        parent: SpanContext | None,
        correlation_id: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[SpanContext] = (),
    ) -> trace.Span:
        """Start (not activate) a span under the correlation-id rule described in the module doc.

        With no exporter (``SIP_OTEL_EXPORTER=none``) nothing would ever read what a span records,
        so the span is only its ids — the same trace id (the correlation id's, or the parent's), a
        new span id, sampled — as a non-recording span: ``traceparent`` headers and the trace ids
        in the logs are what they would be, at a fraction of the SDK's cost per span."""
        wanted = trace_id_for(correlation_id)
        # the parent is continued when it is of the correlation id's trace (or there is no such id)
        child = parent is not None and parent.is_valid and (wanted is None or parent.trace_id == wanted)
        if not self.recording:
            if child and parent is not None:
                trace_id = parent.trace_id
            else:
                trace_id = wanted or self._ids.generate_trace_id()
            return trace.NonRecordingSpan(
                SpanContext(trace_id, self._ids.generate_span_id(), False, TraceFlags(TraceFlags.SAMPLED))
            )
        link_ctxs = [c for c in links if c.is_valid]
        forced = None
        if child and parent is not None:
            ctx = trace.set_span_in_context(trace.NonRecordingSpan(parent), otel_context.Context())
        else:
            if parent is not None and parent.is_valid:
                link_ctxs.insert(0, parent)
            ctx = otel_context.Context()  # a root: no accidental parent from the current context
            forced = _forced_trace_id.set(wanted)
        try:
            return self.tracer.start_span(
                name,
                context=ctx,
                kind=kind,
                attributes=_attrs(attributes or {}),
                links=[Link(c) for c in link_ctxs],
                record_exception=False,  # exception texts may carry personal data
                set_status_on_exception=False,
            )
        finally:
            if forced is not None:
                _forced_trace_id.reset(forced)

    # ---- messaging ----------------------------------------------------------------------------
    def create_span_traceparent(
        self, *, exchange: str, routing_key: str, message_id: str, correlation_id: str | None
    ) -> str | None:
        """A finished PRODUCER span for an outbox write; its ``traceparent`` goes in the row."""
        current = trace.get_current_span().get_span_context()
        span = self.start_span(
            f"create {routing_key}",
            kind=SpanKind.PRODUCER,
            parent=current if current.is_valid else None,
            correlation_id=correlation_id,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "create",
                "messaging.destination.name": exchange,
                "messaging.rabbitmq.destination.routing_key": routing_key,
                "messaging.message.id": _masked(message_id),
                "messaging.message.conversation_id": _masked(correlation_id),
                "sip.service": self.service,
            },
        )
        span.end()
        return format_traceparent(span.get_span_context())

    @contextlib.contextmanager
    def consume_span(
        self,
        *,
        queue: str,
        routing_key: str,
        message_id: str | None,
        correlation_id: str | None,
        headers: Mapping[str, Any] | None,
        attempt: int,
    ) -> Iterator[trace.Span]:
        """The CONSUMER span of one delivery, current (with the correlation id bound for logs)."""
        span = self.start_span(
            f"process {queue}",
            kind=SpanKind.CONSUMER,
            parent=extract_span_context(headers),
            correlation_id=correlation_id,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": queue,
                "messaging.rabbitmq.destination.routing_key": routing_key,
                "messaging.message.id": _masked(message_id),
                "messaging.message.conversation_id": _masked(correlation_id),
                "sip.service": self.service,
                "sip.attempt": attempt,
            },
        )
        with (
            self.activate(),
            trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False),
            bind_correlation_id(correlation_id),
        ):
            yield span


def active_tracing() -> Tracing | None:
    return _active.get() or (_default[0] if _default else None)


def outbox_traceparent(
    *, exchange: str, routing_key: str, message_id: str, correlation_id: str | None
) -> str | None:
    """The ``traceparent`` to store with an outbox row written now (None when nothing traces)."""
    tracing = active_tracing()
    if tracing is None:
        return current_traceparent()
    try:
        return tracing.create_span_traceparent(
            exchange=exchange, routing_key=routing_key, message_id=message_id, correlation_id=correlation_id
        )
    except Exception:  # tracing must never fail a state change
        log.warning("could not create the outbox span", exc_info=False)
        return current_traceparent()


def set_error(span: trace.Span, exc: BaseException) -> None:
    """Mark ``span`` failed with the exception's class only (its text may hold personal data)."""
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


_SKIP_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class TracingMiddleware:
    """ASGI middleware: one SERVER span per HTTP request (health and metrics probes excepted)."""

    def __init__(self, app: Any, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") in _SKIP_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        method = scope.get("method", "GET")
        span = self.tracing.start_span(
            method,
            kind=SpanKind.SERVER,
            parent=extract_span_context(headers),
            attributes={"http.request.method": method, "sip.service": self.tracing.service},
        )
        status: dict[str, int] = {}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status["code"] = int(message.get("status", 0))
            await send(message)

        correlation = headers.get("x-correlation-id")
        try:
            with (
                self.tracing.activate(),
                trace.use_span(span, record_exception=False, set_status_on_exception=False),
                bind_correlation_id(correlation),
            ):
                await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            set_error(span, exc)
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None)
            if template:  # the template only (/cases/{case_id}): the path itself may hold identifiers
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", template)
            if "code" in status:
                span.set_attribute("http.response.status_code", status["code"])
                if status["code"] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
