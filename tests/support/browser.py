"""A real browser for tests: Debian's chromium and chromedriver through selenium, headless, with
axe-core (npm, devtools/oidc-provider/node_modules) run inside each page for WCAG 2.1 A/AA.

- :func:`chromium` — a fresh headless browser (its own profile directory), quit after.
- :func:`assert_no_axe_violations` — axe-core's WCAG 2.1 A/AA rules on the page as it is now; a
  violation fails with each rule's id, impact, help and the offending nodes.
- :func:`screenshot` — ``docs/screenshots/<name>.png`` when ``SIP_SCREENSHOTS=1`` (the committed
  screenshots are regenerated on demand, not by every run).

Nothing is downloaded at run time: the browser is the Debian package (``apt-get install chromium
chromium-driver``; scripts/ensure-infra.sh installs it), axe-core comes from the committed lock file.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.infra import REPO
from tests.support.oidc import PROVIDER_DIR, ensure_node_modules

CHROMIUM = Path(os.environ.get("SIP_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("SIP_CHROMEDRIVER", "/usr/bin/chromedriver"))
SCREENSHOTS = REPO / "docs" / "screenshots"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


def browser_missing() -> str | None:
    """Why no browser test can run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return (
                f"{path} is missing: install Debian's {package} (`apt-get install -y --no-install-recommends"
                " chromium chromium-driver`; scripts/ensure-infra.sh test does it)"
            )
    return None


@contextmanager
def chromium(*, lang: str = "sv-SE") -> Iterator[WebDriver]:
    """A headless chromium with a fresh profile (no cookies, no cache), quit and removed after."""
    missing = browser_missing()
    if missing:
        raise RuntimeError(missing)
    profile = tempfile.mkdtemp(prefix="sip-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}", f"--lang={lang}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


_axe_source: str | None = None


def axe_source() -> str:
    global _axe_source
    if _axe_source is None:
        ensure_node_modules()
        _axe_source = (PROVIDER_DIR / "node_modules" / "axe-core" / "axe.min.js").read_text()
    return _axe_source


def axe_violations(driver: WebDriver) -> list[dict[str, Any]]:
    """axe-core's WCAG 2.0/2.1 A and AA rules run in the current page; the violations it reports."""
    driver.execute_script(axe_source())
    result = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}, resultTypes: ['violations']})
          .then(r => done({violations: r.violations, passes: r.passes.length}))
          .catch(e => done({error: String(e)}));
        """,
        WCAG_21_AA,
    )
    if "error" in result:
        raise RuntimeError(f"axe-core failed: {result['error']}")
    return list(result["violations"])


def format_violations(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v.get('impact')}): {v['help']} — {v.get('helpUrl', '')}")
        for node in v.get("nodes", [])[:10]:
            lines.append(f"    {', '.join(map(str, node.get('target', [])))}: {node.get('html', '')[:200]}")
            if node.get("failureSummary"):
                lines.append("      " + node["failureSummary"].replace("\n", "\n      "))
    return "\n".join(lines)


def assert_no_axe_violations(driver: WebDriver, page_name: str) -> None:
    """Fail, naming each WCAG 2.1 A/AA violation axe-core finds on the page as it is now."""
    violations = axe_violations(driver)
    if violations:
        report = format_violations(violations)
        print(f"axe-core on {page_name} ({driver.current_url}):\n{report}")
        raise AssertionError(
            f"axe-core found {len(violations)} WCAG 2.1 A/AA violation(s) on {page_name}:\n{report}"
        )


def screenshot(driver: WebDriver, name: str) -> Path | None:
    """The whole page (not only the window) as ``docs/screenshots/<name>.png`` when SIP_SCREENSHOTS=1;
    else nothing is written."""
    if os.environ.get("SIP_SCREENSHOTS") != "1":
        return None
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    width, height = driver.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(  # type: ignore[attr-defined]
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True,
         "clip": {"x": 0, "y": 0, "width": int(width), "height": int(height), "scale": 1}},
    )  # fmt: skip
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
