"""Server-side sessions: the browser holds only an opaque random id in a Secure, HttpOnly, SameSite=Lax
cookie; the session's data (the user's tokens, the CSRF token, the language) stays in this process.

The store is in memory: a restart signs everyone out (they sign in again), and several replicas need
sticky sessions. A session ends after ``idle`` without use or ``max_age`` after it began, and at logout
— then its id is forgotten, so an old cookie opens nothing.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

COOKIE = "sip_session"
ROTATE = "_rotate"  # set in a session's data to give it a new id (after sign-in: no session fixation)


@dataclass
class _Entry:
    data: dict[str, Any]
    created: float
    used: float


@dataclass
class SessionStore:
    idle_seconds: float
    max_seconds: float
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, sid: str | None, now: float | None = None) -> tuple[str, dict[str, Any]] | None:
        if not sid:
            return None
        now = time.time() if now is None else now
        with self._lock:
            entry = self._entries.get(sid)
            if entry is None:
                return None
            if now - entry.used > self.idle_seconds or now - entry.created > self.max_seconds:
                del self._entries[sid]
                return None
            entry.used = now
            return sid, entry.data

    def create(self, data: dict[str, Any]) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._expire(now)
            self._entries[sid] = _Entry(data, now, now)
        return sid

    def delete(self, sid: str) -> None:
        with self._lock:
            self._entries.pop(sid, None)

    def __contains__(self, sid: str) -> bool:
        return sid in self._entries

    def _expire(self, now: float) -> None:
        for sid in [
            s
            for s, e in self._entries.items()
            if now - e.used > self.idle_seconds or now - e.created > self.max_seconds
        ]:
            del self._entries[sid]


class ServerSessionMiddleware(BaseHTTPMiddleware):
    """Puts the session's data in ``request.session`` (authlib keeps its OIDC state there too)."""

    def __init__(self, app: ASGIApp, store: SessionStore, *, secure: bool) -> None:
        super().__init__(app)
        self.store = store
        self.secure = secure

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        found = self.store.get(request.cookies.get(COOKIE))
        sid, data = found if found is not None else (None, {})
        request.scope["session"] = data
        response = await call_next(request)
        if data.pop(ROTATE, False) and sid is not None:
            self.store.delete(sid)
            sid = None
        if sid is None and data:
            self._set(response, self.store.create(data))
        elif sid is not None and not data:  # cleared: the session has ended
            self.store.delete(sid)
            response.delete_cookie(COOKIE, path="/", secure=self.secure, httponly=True, samesite="lax")
        return response

    def _set(self, response: Response, sid: str) -> None:
        response.set_cookie(
            COOKIE, sid, path="/", secure=self.secure, httponly=True, samesite="lax",
            max_age=int(self.store.max_seconds),
        )  # fmt: skip
