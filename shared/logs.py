"""JSON logs that carry the correlation id and trace id, and never personal data.

Every record passes a filter that masks anything shaped like a personnummer/samordningsnummer, so a
stray identifier in an exception text is still not written out. A second filter adds the
``correlation_id`` bound for the current message or request (:func:`bind_correlation_id`, done by
the consume middleware and the HTTP tracing middleware) and the current OpenTelemetry ``trace_id``
and ``span_id``, so one discharge's lines can be found in every service and next to its trace.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

from opentelemetry import trace

from shared.identifiers import PERSONAL_NUMBER_IN_LOG

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def mask_personal_data(text: str) -> str:
    return PERSONAL_NUMBER_IN_LOG.sub(lambda m: f"{m.group(1)}********", text)


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = mask_personal_data(record.msg)
        if record.args:
            record.args = tuple(
                mask_personal_data(a) if isinstance(a, str) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, mask_personal_data(value))
        return True


_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sip_correlation_id", default=None
)


def current_correlation_id() -> str | None:
    return _correlation_id.get()


@contextlib.contextmanager
def bind_correlation_id(correlation_id: str | None) -> Iterator[None]:
    """Log lines written inside carry ``correlation_id`` (masked: senders choose it)."""
    token = _correlation_id.set(mask_personal_data(correlation_id) if correlation_id else None)
    try:
        yield
    finally:
        _correlation_id.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``correlation_id``, ``trace_id`` and ``span_id`` when there are any (explicit extras win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        correlation_id = _correlation_id.get()
        if correlation_id and not getattr(record, "correlation_id", None):
            record.correlation_id = correlation_id
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = f"{ctx.trace_id:032x}"
            record.span_id = f"{ctx.span_id:016x}"
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            out["exc"] = mask_personal_data(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskingFilter())
    handler.addFilter(ContextFilter())  # after masking: hex trace ids are not personal data
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
