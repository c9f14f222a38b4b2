"""The browser harness itself (tests/support/browser.py), on static pages: Debian's headless chromium
starts through selenium, axe-core finds a planted WCAG violation (an image without alternative text,
a field without a label) and none on a clean page, and screenshots are written only on demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support import browser
from tests.support.browser import assert_no_axe_violations, axe_violations, chromium, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CLEAN = """<!DOCTYPE html>
<html lang="sv"><head><meta charset="utf-8"><title>Ren sida</title></head>
<body><header><a href="#main">Till innehållet</a></header>
<main id="main"><h1>Samordnad individuell plan</h1>
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="Logotyp">
<form><label for="q">Sök</label><input id="q" name="q"><button type="submit">Sök</button></form>
</main></body></html>"""

PLANTED = CLEAN.replace('alt="Logotyp"', "").replace('<label for="q">Sök</label>', "")


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    with chromium() as d:
        yield d


def open_html(driver: WebDriver, tmp_path: Path, name: str, html: str) -> None:
    page = tmp_path / f"{name}.html"
    page.write_text(html, encoding="utf-8")
    driver.get(page.as_uri())


def test_axe_finds_nothing_on_a_clean_page(driver: WebDriver, tmp_path: Path) -> None:
    open_html(driver, tmp_path, "clean", CLEAN)
    assert driver.title == "Ren sida"
    assert_no_axe_violations(driver, "a clean page")


def test_axe_finds_the_planted_violations_and_names_them(driver: WebDriver, tmp_path: Path) -> None:
    open_html(driver, tmp_path, "planted", PLANTED)
    ids = {v["id"] for v in axe_violations(driver)}
    assert {"image-alt", "label"} <= ids, ids
    with pytest.raises(AssertionError) as failure:
        assert_no_axe_violations(driver, "the planted page")
    message = str(failure.value)
    assert "image-alt" in message and "critical" in message and "<img" in message, message


def test_screenshots_only_when_asked(
    driver: WebDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browser, "SCREENSHOTS", tmp_path / "shots")
    open_html(driver, tmp_path, "clean", CLEAN)
    monkeypatch.delenv("SIP_SCREENSHOTS", raising=False)
    assert screenshot(driver, "clean") is None and not (tmp_path / "shots").exists()
    monkeypatch.setenv("SIP_SCREENSHOTS", "1")
    path = screenshot(driver, "clean")
    assert path == tmp_path / "shots" / "clean.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
