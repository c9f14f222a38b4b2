"""An empty NOTIFY_SMTP_USERNAME / NOTIFY_SMTP_PASSWORD (as .env.example has them, and compose passes
them on) means no SMTP AUTH: found by tests/e2e/test_compose_stack.py, where the mail sink refused
the login with an empty name."""

from __future__ import annotations

import pytest

from services.notify.settings import NotifySettings


def test_empty_smtp_credentials_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SMTP_USERNAME", "")
    monkeypatch.setenv("NOTIFY_SMTP_PASSWORD", " ")
    s = NotifySettings()
    assert s.smtp_username is None and s.smtp_password is None


def test_given_smtp_credentials_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SMTP_USERNAME", "relay-user")
    monkeypatch.setenv("NOTIFY_SMTP_PASSWORD", "relay-secret")
    s = NotifySettings()
    assert s.smtp_username == "relay-user"
    assert s.smtp_password is not None and s.smtp_password.get_secret_value() == "relay-secret"
