"""/onboarding in a real browser (Playwright + Debian's Chromium, launched as in tests/test_browser.py) against
``main.py`` on the simulator: the first password is set on this machine itself; from the LAN the page only
explains ``--set-password``. Skipped without /usr/bin/chromium (a failure under CI=true)."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.security import check_password_hash

from simulator.world import Simulation, UnitSpec
from tests.helpers import free_port, running_main, sim_config_data, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync",
]
TIMEOUT_MS = 20_000
PASSWORD = "Sonnen-Akku-2024"

if not CHROMIUM.exists():
    reason = f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need it"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Running:
    port: int
    config_path: Path


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """main.py without a password, listening on every address (so that the LAN address reaches it too)."""
    with Simulation(units=[UnitSpec(1, soc_pct=50.0)]) as sim:
        port = free_port()
        config_path = tmp_path / "config.json"
        data = sim_config_data(sim, [1], web={"host": "0.0.0.0", "port": port, "language": "de"},
                               logging={"file": str(tmp_path / "logs" / "marstek.log")})
        config_path.write_text(json.dumps(data, indent=2), encoding="utf-8")
        with running_main(config_path) as proc:
            wait_until(lambda: proc.poll() is not None or http_status(f"http://127.0.0.1:{port}/api/status") == 200,
                       30, "main.py answers")
            assert proc.poll() is None, "main.py ended"
            yield Running(port, config_path)


def lan_address() -> str | None:
    """This machine's address towards the network (no packet is sent), None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def new_page(browser: Browser) -> Page:
    return browser.new_context(locale="de-DE").new_page()


def test_the_first_password_is_set_on_this_machine_in_the_browser(browser: Browser, running: Running) -> None:
    base = f"http://127.0.0.1:{running.port}"
    page = new_page(browser)
    try:
        page.goto(base + "/")
        expect(page.locator("#onboarding-banner")).to_be_visible()
        page.click("#onboarding-link")
        expect(page).to_have_url(base + "/onboarding")

        page.fill("#password", PASSWORD)
        page.fill("#password2", PASSWORD + "!")
        page.click("#onboarding-form button[type=submit]")
        expect(page.locator("#onboarding-error")).to_contain_text("verschieden")

        page.fill("#password", PASSWORD)
        page.fill("#password2", PASSWORD)
        page.click("#onboarding-form button[type=submit]")
        expect(page).to_have_url(base + "/")
        expect(page.locator("#logout")).to_be_visible()  # logged in right away
        expect(page.locator("#onboarding-banner")).to_have_count(0)

        stored = json.loads(running.config_path.read_text(encoding="utf-8"))["web"]["password"]
        assert stored != PASSWORD and check_password_hash(stored, PASSWORD)
        assert http_status(base + "/onboarding") == 404  # gone once a password is set

        page.click("#logout")
        expect(page.locator("#login-link")).to_be_visible()
        page.goto(base + "/login")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("#logout")).to_be_visible()
    finally:
        page.context.close()


def test_from_the_lan_the_onboarding_page_only_explains_set_password(browser: Browser, running: Running) -> None:
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    base = f"http://{address}:{running.port}"
    page = new_page(browser)
    try:
        page.goto(base + "/onboarding")
        expect(page.locator("#onboarding-remote")).to_contain_text(f"http://localhost:{running.port}/onboarding")
        expect(page.locator("body")).to_contain_text("python main.py --set-password")
        expect(page.locator("#onboarding-form")).to_have_count(0)
        resp = page.request.post(base + "/api/mode", data={"mode": "off"}, headers={"Origin": base})
        assert resp.status == 403 and "web.password" in resp.json()["error"]
        assert "password" not in json.loads(running.config_path.read_text(encoding="utf-8"))["web"]
    finally:
        page.context.close()
