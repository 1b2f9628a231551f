"""The pages in a real browser: Playwright (sync API) drives Debian's headless Chromium against
``main.py`` running as a subprocess on a simulator started here (no hardware, loopback only).

Screenshots go to ``test-artifacts/`` (git-ignored). Without /usr/bin/chromium these tests are
skipped, except under CI=true, where a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulator.world import Simulation, UnitSpec
from tests.helpers import free_port, stop_process, wait_until, write_two_unit_config

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync",
]
TIMEOUT_MS = 20_000

if not CHROMIUM.exists():
    reason = f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need it"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=TIMEOUT_MS)
pytestmark = pytest.mark.slow  # a real browser on a running main.py


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class System:
    sim: Simulation
    url: str
    config_path: Path
    proc: subprocess.Popen


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.load(resp)
    except OSError:
        return None


def api_status(system: System) -> dict[str, Any]:
    return get_json(system.url + "/api/status") or {}


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    """Simulated house with batteries on IDs 1 and 2; main.py --config on a free port; control active."""
    with running_system(tmp_path) as system:
        yield system


@pytest.fixture
def priced_system(tmp_path: Path) -> Iterator[System]:
    """The same with a fixed tariff (no network): 30 ct/kWh import, 8 ct/kWh feed-in."""
    tariff = {"type": "fixed", "fixed_ct_per_kwh": 30.0, "feed_in_ct_per_kwh": 8.0}
    with running_system(tmp_path, tariff=tariff) as system:
        yield system


@contextlib.contextmanager
def running_system(tmp_path: Path, **sections: Any) -> Iterator[System]:
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=65.0)]) as sim:
        sim.set_load_w(600.0)
        sim.set_pv_w(0.0)
        port = free_port()
        config_path = write_two_unit_config(tmp_path, sim, {"port": port, "language": "de"}, sections)
        output_path = tmp_path / "main-output.txt"
        output = output_path.open("w", encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--config", str(config_path)],
            cwd=str(tmp_path), stdout=output, stderr=subprocess.STDOUT,
        )
        system = System(sim, f"http://127.0.0.1:{port}", config_path, proc)
        try:
            try:
                wait_until(lambda: proc.poll() is not None or (
                    api_status(system).get("control_state") == "active"
                    and all(b["online"] for b in api_status(system).get("batteries", [{"online": False}]))
                ), 30, "main.py up, control active, batteries online")
            except AssertionError as exc:
                said = output_path.read_text(encoding="utf-8")[-3000:]
                raise AssertionError(f"{exc}\nmain.py said:\n{said}") from None
            assert proc.poll() is None, (
                f"main.py exited with {proc.returncode}:\n{output_path.read_text(encoding='utf-8')[-3000:]}"
            )
            yield system
        finally:
            stop_process(proc)
            output.close()


@contextlib.contextmanager
def open_page(browser: Browser, url: str, width: int = 1280, height: int = 900,
              expected_statuses: tuple[int, ...] = ()) -> Iterator[Page]:
    """A fresh browser context on ``url``; fails on script errors and on failed requests not expected."""
    context = browser.new_context(viewport={"width": width, "height": height}, locale="de-DE")
    page = context.new_page()
    errors: list[str] = []
    expected = tuple(f"status of {status} " for status in expected_statuses)

    def on_console(msg: Any) -> None:
        if msg.type == "error" and not (expected and any(e in msg.text for e in expected)):
            errors.append(msg.text)

    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", on_console)
    try:
        page.goto(url)
        yield page
        assert errors == [], f"browser errors on {url}: {errors}"
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def watts(text: str) -> int:
    """'1.234 W' (German) or '1,234 W' -> 1234."""
    digits = re.sub(r"\D", "", text)
    assert digits, f"no number in {text!r}"
    return int(digits)


def battery_watts(page: Page, verb: str) -> int:
    """Sum of the battery cards' power shown with ``verb`` ("entlädt" / "lädt")."""
    total = 0
    for card in page.locator(".battery").all():
        if card.locator(".verb").inner_text().strip() == verb:
            total += watts(card.locator(".watts").inner_text())
    return total


def no_horizontal_scroll(page: Page) -> bool:
    return page.evaluate("document.scrollingElement.scrollWidth <= document.scrollingElement.clientWidth")


# ---------------------------------------------------------------------------- dashboard
def test_dashboard_shows_live_values_that_follow_the_load(browser: Browser, system: System) -> None:
    with open_page(browser, system.url + "/") as page:
        expect(page.locator("#control-state-text")).to_have_text("Regelung aktiv")
        expect(page.locator(".battery")).to_have_count(2)
        expect(page.locator(".battery h3")).to_have_text(["Akku 1", "Akku 2"])
        expect(page.locator(".battery .online-pill").first).to_have_text("online")
        expect(page.locator(".battery .soc-label").first).to_have_text(re.compile(r"^\d+\s%$"))
        expect(page.locator("#meter-type")).to_have_text("Shelly Pro 3EM")  # the identified model
        expect(page.locator("#meter-health")).to_have_text("in Ordnung")
        expect(page.locator("#grid-value")).to_have_text(re.compile(r"^\d[\d.]*$"))
        expect(page.locator("#events .event").first).to_be_visible()
        expect(page.locator("#setup-link")).to_have_attribute("href", "/setup")

        # More load: the batteries discharge more, and the page shows it without a reload.
        wait_until(lambda: battery_watts(page, "entlädt") > 300, 20, "batteries discharge for the 600 W load")
        system.sim.set_load_w(2200.0)
        wait_until(lambda: battery_watts(page, "entlädt") > 1500, 30, "page shows > 1500 W discharge at 2200 W")

        # PV surplus: the batteries charge ("lädt").
        system.sim.set_load_w(200.0)
        system.sim.set_pv_w(1600.0)
        wait_until(lambda: battery_watts(page, "lädt") > 800, 30, "page shows the batteries charging")
        expect(page.locator(".battery-power.charging").first).to_be_visible()

        # Energy figures count up from the history samples.
        expect(page.locator("#energy-discharged")).to_have_text(re.compile(r"[1-9]"))
        expect(page.locator("#energy-share")).to_have_text(re.compile(r"\d+\s%"))
        screenshot(page, "dashboard.png")


def test_chart_draws_the_history(browser: Browser, system: System) -> None:
    with open_page(browser, system.url + "/") as page:
        expect(page.locator("#chart canvas")).to_have_count(1)
        page.wait_for_function(
            "() => { const c = window.marstekDashboard && window.marstekDashboard.chart();"
            " return c && c.data[0].length >= 3 && c.data[1].filter(v => v !== null).length >= 3; }",
            timeout=TIMEOUT_MS,
        )
        expect(page.locator("#chart-empty")).to_be_hidden()
        # Three series (grid, batteries, SoC) with points, drawn onto the canvas.
        series = page.evaluate("window.marstekDashboard.chart().series.map(s => s.label)")
        assert series[1:] == ["Netz", "Akkus", "Ladestand"]
        painted = page.evaluate(
            """() => {
                const canvas = document.querySelector('#chart canvas');
                const ctx = canvas.getContext('2d');
                const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
                let n = 0;
                for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) n++;
                return n;
            }"""
        )
        assert painted > 500, f"only {painted} painted pixels on the chart canvas"
        page.locator("[data-range='10800']").click()
        expect(page.locator("[data-range='10800']")).to_have_attribute("aria-pressed", "true")


# ---------------------------------------------------------------------------- setup
def test_setup_flow_end_to_end(browser: Browser, system: System) -> None:
    with open_page(browser, system.url + "/setup") as page:
        state = page.locator("#setup-state-text")
        expect(state).to_have_text("Regelung aktiv")
        expect(page.locator("#one-battery-warning")).to_contain_text("nur EIN neuer Akku")
        expect(page.locator("#scan-btn")).to_be_disabled()

        # 1. Enter setup mode: control and batteries stop; the dashboard says so too.
        page.locator("#enter-btn").click()
        expect(state).to_have_text("Steuerung deaktiviert (Setup-Modus)")
        expect(page.locator("#enter-result")).to_contain_text("Setup-Modus aktiv")
        assert api_status(system)["setup_mode"] is True
        with open_page(browser, system.url + "/") as dashboard:
            expect(dashboard.locator("#control-state-text")).to_have_text("Steuerung deaktiviert (Setup-Modus)")
            expect(dashboard.locator("#setup-banner")).to_be_visible()

        # 2. Scan 1..3: batteries 1 and 2 answer, 3 is proposed.
        page.locator("#scan-last").fill("3")
        page.locator("#scan-btn").click()
        rows = page.locator("#scan-rows tr")
        expect(rows).to_have_count(2)
        expect(rows.locator("td:first-child")).to_have_text(["1", "2"])
        expect(page.locator("#next-free")).to_have_text("Nächste freie ID: 3")
        expect(page.locator("#new-id")).to_have_value("3")

        # 3. ID 1 -> 3 after the safety question; the API verifies the battery on its new ID.
        dialogs: list[Dialog] = []

        def accept(dialog: Dialog) -> None:
            dialogs.append(dialog)
            dialog.accept()

        page.once("dialog", accept)
        page.locator("#set-btn").click()
        expect(page.locator("#set-result")).to_contain_text("Der Akku antwortet jetzt auf ID 3", timeout=30_000)
        expect(page.locator("#set-result")).to_contain_text("Geprüft")
        assert len(dialogs) == 1 and dialogs[0].type == "confirm"
        assert "ID 3" in dialogs[0].message and "EIN" in dialogs[0].message
        assert sorted(u.unit_id for u in system.sim.units) == [2, 3]

        page.locator("#scan-btn").click()
        expect(rows.locator("td:first-child")).to_have_text(["2", "3"])
        screenshot(page, "setup.png")

        # 4. Add ID 3 to config.json: the file now lists it.
        expect(page.locator("#add-id")).to_have_value("3")
        page.locator("#add-btn").click()
        expect(page.locator("#add-result")).to_contain_text("[1, 2, 3]")
        saved = json.loads(system.config_path.read_text(encoding="utf-8"))
        assert saved["battery"]["akku_ids"] == [1, 2, 3]

        # 5. Leave setup mode: the control resumes.
        page.locator("#exit-btn").click()
        expect(state).to_have_text("Regelung aktiv")
        expect(page.locator("#exit-result")).to_contain_text("Die Regelung läuft wieder")
        wait_until(lambda: api_status(system).get("control_state") == "active"
                   and {b["id"] for b in api_status(system)["batteries"] if b["online"]} == {2, 3},
                   20, "control active with batteries 2 and 3")


def test_cancelled_confirm_changes_nothing(browser: Browser, system: System) -> None:
    with open_page(browser, system.url + "/setup", expected_statuses=(409,)) as page:
        page.locator("#enter-btn").click()
        expect(page.locator("#setup-state-text")).to_have_text("Steuerung deaktiviert (Setup-Modus)")
        page.locator("#new-id").fill("7")
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.locator("#set-btn").click()
        expect(page.locator("#set-result")).to_contain_text("Abgebrochen")
        assert sorted(u.unit_id for u in system.sim.units) == [1, 2]
        # A refusal from the API is shown as it came: ID 2 is taken.
        page.locator("#new-id").fill("2")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#set-btn").click()
        expect(page.locator("#set-result")).to_contain_text("ist schon belegt", timeout=30_000)
        page.locator("#exit-btn").click()
        expect(page.locator("#setup-state-text")).to_have_text("Regelung aktiv")


def test_leaving_the_page_in_setup_mode_asks_first(browser: Browser, system: System) -> None:
    with open_page(browser, system.url + "/setup") as page:
        page.locator("#enter-btn").click()
        expect(page.locator("#setup-state-text")).to_have_text("Steuerung deaktiviert (Setup-Modus)")

        dialogs: list[str] = []

        def stay(dialog: Dialog) -> None:
            dialogs.append(dialog.type)
            dialog.dismiss()

        page.on("dialog", stay)
        page.locator("#dashboard-link").click(no_wait_after=True)
        wait_until(lambda: dialogs, 10, "the beforeunload prompt")
        assert dialogs == ["beforeunload"]
        expect(page).to_have_url(re.compile(r"/setup$"))
        page.remove_listener("dialog", stay)

        # After leaving setup mode the page lets the user go without asking.
        page.locator("#exit-btn").click()
        expect(page.locator("#setup-state-text")).to_have_text("Regelung aktiv")
        page.locator("#dashboard-link").click()
        expect(page).to_have_url(re.compile(r"/$"))
        assert dialogs == ["beforeunload"]


# ---------------------------------------------------------------------------- phones
def test_no_horizontal_scrolling_at_360_px(browser: Browser, system: System) -> None:
    with open_page(browser, system.url + "/", width=360, height=740) as page:
        expect(page.locator(".battery")).to_have_count(2)
        page.wait_for_function("() => window.marstekDashboard.chart() && "
                               "window.marstekDashboard.chart().data[0].length > 0", timeout=TIMEOUT_MS)
        expect(page.locator("#events .event").first).to_be_visible()
        assert no_horizontal_scroll(page)
        screenshot(page, "dashboard-360.png")
    with open_page(browser, system.url + "/setup", width=360, height=740) as page:
        page.locator("#enter-btn").click()
        expect(page.locator("#setup-state-text")).to_have_text("Steuerung deaktiviert (Setup-Modus)")
        page.locator("#scan-last").fill("2")
        page.locator("#scan-btn").click()
        expect(page.locator("#scan-rows tr")).to_have_count(2)
        assert no_horizontal_scroll(page)
        screenshot(page, "setup-360.png")
        page.locator("#exit-btn").click()
        expect(page.locator("#setup-state-text")).to_have_text("Regelung aktiv")


# ---------------------------------------------------------------------------- operating mode buttons
def test_mode_buttons_switch_the_mode_and_show_the_remaining_time(browser: Browser, system: System) -> None:
    """Automatik / Halten / Laden / Aus on the dashboard: each click reaches the control (the simulated
    batteries follow) and survives in data/mode.json beside the config."""
    mode_file = system.config_path.parent / "data" / "mode.json"

    def commanded() -> list[float]:
        return [system.sim.unit(i).commanded_w for i in (1, 2)]

    with open_page(browser, system.url + "/") as page:
        expect(page.locator("[data-mode='auto']")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#mode-source")).to_have_text("gesetzt von: Standard")
        wait_until(lambda: any(w > 0 for w in commanded()), 20, "the batteries discharge for the 600 W load")

        page.locator("#mode-minutes").select_option("30")
        page.locator("[data-mode='hold']").click()
        expect(page.locator("[data-mode='hold']")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("[data-mode='auto']")).to_have_attribute("aria-pressed", "false")
        expect(page.locator("#mode-until")).to_have_text(re.compile(r"^bis \d\d:\d\d \(noch (30|29) min\)$"))
        expect(page.locator("#mode-source")).to_have_text("gesetzt von: Dashboard")
        wait_until(lambda: all(w <= 0 for w in commanded()), 10, "hold: no battery discharges")
        expect(page.locator("#control-status")).to_have_text("Betriebsart Halten: Entladen gesperrt")
        wait_until(lambda: mode_file.exists() and json.loads(mode_file.read_text())["mode"] == "hold", 5,
                   "saved by the mode file's thread")

        page.locator("#mode-minutes").select_option("")
        page.locator("[data-mode='charge']").click()
        expect(page.locator("[data-mode='charge']")).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#mode-until")).to_be_hidden()
        expect(page.locator("#mode-hint")).to_contain_text("5.000")  # both batteries' maximum, German format
        wait_until(lambda: sum(commanded()) < -1000, 10, "charge: the batteries charge from the grid")

        page.locator("[data-mode='off']").click()
        expect(page.locator("[data-mode='off']")).to_have_attribute("aria-pressed", "true")
        wait_until(lambda: all(w == 0 for w in commanded()), 10, "off: every battery stopped")
        expect(page.locator("#control-state-text")).to_have_text("Steuerung gestoppt")
        screenshot(page, "dashboard-mode-off.png")

        page.locator("[data-mode='auto']").click()
        expect(page.locator("[data-mode='auto']")).to_have_attribute("aria-pressed", "true")
        wait_until(lambda: any(w > 0 for w in commanded()), 20, "auto: discharging again")
        expect(page.locator("#control-state-text")).to_have_text("Regelung aktiv")
        wait_until(lambda: mode_file.exists() and json.loads(mode_file.read_text())["mode"] == "auto", 5,
                   "saved by the mode file's thread")


# ---------------------------------------------------------------------------- energy, 7 days, diagnostics
def canvas_pixels(page: Page, selector: str) -> int:
    """Painted pixels on the chart canvas in ``selector``."""
    return page.evaluate(
        """(sel) => {
            const canvas = document.querySelector(sel + ' canvas');
            if (!canvas) return 0;
            const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) n++;
            return n;
        }""",
        selector,
    )


def seed_earlier_runs(db_path: Path, days: int = 12, money: bool = False) -> None:
    """What earlier runs of the program left in its history file: daily energy and 5-minute power means
    for the days before today (today belongs to the running program); ``money``: with a tariff's money
    per day (cost, feed-in revenue, net cost without battery, in ct)."""
    import math
    import sqlite3
    from datetime import date, datetime, timedelta

    from integrations.history import History

    History(db_path).close()  # the file and its tables, as the program creates them
    today = date.today()
    conn = sqlite3.connect(db_path, timeout=10)
    with conn:
        for n in range(1, days + 1):
            day = today - timedelta(days=n)
            sunny = 0.5 + 0.5 * math.sin(n)
            imported, exported = 2500 + 1500 * (1 - sunny), 300 + 900 * sunny
            discharged, charged = 1800 + 2500 * sunny, 2000 + 3000 * sunny
            cost, revenue = imported * 0.030, exported * 0.008  # ct: 30 ct and 8 ct per kWh
            baseline = (imported + discharged) * 0.030 - (exported + charged) * 0.008  # the house without battery
            conn.execute(
                "INSERT OR REPLACE INTO energy (day, import_wh, export_wh, charge_wh, discharge_wh, avoided_import_wh,"
                " stored_surplus_wh, cost_ct, feed_in_revenue_ct, baseline_ct, unpriced_wh)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (day.isoformat(), imported, exported, charged, discharged, 1700 + 2300 * sunny, 1900 + 2800 * sunny,
                 *((cost, revenue, baseline, 0.0) if money else (None, None, None, None))))
        start = datetime.combine(today - timedelta(days=6), datetime.min.time()).timestamp()
        rows = []
        for i in range(0, 6 * 86400, 300):
            hour = (i % 86400) / 3600
            pv = max(0.0, math.sin((hour - 6) / 12 * math.pi)) * 2400
            battery = max(-1800.0, min(1200.0, 450 - pv))
            soc = 50 + 40 * math.sin((hour - 10) / 24 * 2 * math.pi)
            rows.append((start + i + 150, 450 - pv - battery, battery, soc))  # grid = load - PV - battery
        conn.executemany("INSERT OR REPLACE INTO samples_1m VALUES (?, ?, ?, ?)", rows)
    conn.close()


def test_energy_chart_week_chart_and_diagnostics_button(browser: Browser, system: System) -> None:
    seed_earlier_runs(system.config_path.parent / "data" / "history.sqlite3")
    # Let the batteries work a while so that today's bars have a height.
    wait_until(lambda: (get_json(system.url + "/api/energy?days=1") or {"days": [{}]})["days"][0].get(
        "discharge_wh", 0) > 0.05, 30, "the server counts some discharge energy")
    with open_page(browser, system.url + "/") as page:
        page.wait_for_function(
            "() => { const c = window.marstekDashboard.energyChart(); return c && c.data[0].length === 7; }",
            timeout=TIMEOUT_MS,
        )
        imports = page.evaluate("window.marstekDashboard.energyChart().data[1]")
        assert all(v > 1 for v in imports[:-1]), f"the earlier days come from the history file: {imports}"
        labels = page.evaluate("window.marstekDashboard.energyChart().series.map(s => s.label)")
        assert labels[1:] == ["Netzbezug", "Einspeisung", "Entladen", "Geladen"]
        expect(page.locator("#energy-chart-empty")).to_be_hidden()
        expect(page.locator("#energy-discharged")).to_have_text(re.compile(r"[1-9]"))
        # Without a tariff: no euro figures and no kWh / € switch.
        expect(page.locator("#energy-cost-row")).to_be_hidden()
        expect(page.locator("#energy-unit")).to_be_hidden()
        base = canvas_pixels(page, "#energy-chart")
        assert base > 500, f"only {base} painted pixels on the energy chart"
        page.locator("[data-days='30']").click()
        expect(page.locator("[data-days='30']")).to_have_attribute("aria-pressed", "true")
        assert page.evaluate("window.marstekDashboard.energyChart().data[0].length") == 30

        page.wait_for_function(
            "() => { const c = window.marstekDashboard.weekChart(); return c && c.data[0].length >= 1000; }",
            timeout=TIMEOUT_MS,
        )
        week = canvas_pixels(page, "#week-chart")
        assert week > 2000, f"only {week} painted pixels on the 7-day chart"
        expect(page.locator("#week-chart-empty")).to_be_hidden()
        assert page.evaluate("window.marstekDashboard.weekChart().series.map(s => s.label)")[1:] == [
            "Netz", "Akkus", "Ladestand"]

        link = page.locator("#diagnostics-download")
        expect(link).to_have_text("Diagnose herunterladen")
        with page.expect_download() as download_info:
            link.click()
        download = download_info.value
        assert re.match(r"marstek-diagnose-\d{8}-\d{6}\.json$", download.suggested_filename)
        bundle = json.loads(Path(download.path()).read_text(encoding="utf-8"))
        assert bundle["status"]["control_state"] == "active" and len(bundle["batteries"]) == 2
        page.locator("#energy-chart-card").scroll_into_view_if_needed()
        screenshot(page, "dashboard-energy.png")
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#energy-chart-card").screenshot(path=str(ARTIFACTS / "energy-chart.png"))
        page.locator("#week-card").screenshot(path=str(ARTIFACTS / "week-chart.png"))
    with open_page(browser, system.url + "/", width=360, height=740) as page:
        page.wait_for_function("() => window.marstekDashboard.energyChart() && "
                               "window.marstekDashboard.energyChart().data[0].length === 7", timeout=TIMEOUT_MS)
        assert no_horizontal_scroll(page)
        page.locator("#energy-chart-card").screenshot(path=str(ARTIFACTS / "energy-chart-360.png"))


def test_todays_energy_survives_a_restart(browser: Browser, system: System, tmp_path: Path) -> None:
    def discharged_wh() -> float:
        doc = get_json(system.url + "/api/energy?days=1")
        return float(doc["days"][0]["discharge_wh"]) if doc else -1.0

    wait_until(lambda: discharged_wh() > 1.0, 40, "the server counts over 1 Wh of discharge")
    stop_process(system.proc)
    assert system.proc.returncode == 0
    before = float(json.loads(subprocess.run(  # what the file holds now, read by its own reader
        [sys.executable, "-c", "import json, sys; from integrations.history import History; "
         "print(json.dumps(History(sys.argv[1]).energy_days(1)[0]['discharge_wh']))",
         str(system.config_path.parent / "data" / "history.sqlite3")],
        cwd=str(ROOT), capture_output=True, text=True, check=True, timeout=30).stdout))
    assert before > 1.0
    output = (tmp_path / "restart-output.txt").open("w", encoding="utf-8")
    again = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--config", str(system.config_path)],
                             cwd=str(tmp_path), stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: discharged_wh() >= 0, 30, "main.py up again")
        assert discharged_wh() >= before, "today's energy carries on from the file, it does not start at 0"
        with open_page(browser, system.url + "/") as page:
            expect(page.locator("#energy-discharged")).to_have_text(re.compile(r"[1-9]"))
    finally:
        stop_process(again)  # the fixture stops only the first program
        output.close()


# ---------------------------------------------------------------------------- several gateways (the demo's mixed fleet)
@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    """``main.py --demo``: one v2 RS485 gateway with two units and one Venus E v3 on its own LAN port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    output_path = tmp_path / "demo-output.txt"
    with output_path.open("w", encoding="utf-8") as output:
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--demo", "--port", str(port)],
                                cwd=str(tmp_path), stdout=output, stderr=subprocess.STDOUT)
        try:
            def up() -> bool:
                batteries = (get_json(url + "/api/status") or {}).get("batteries", [])
                return proc.poll() is not None or (len(batteries) == 3 and all(b["online"] for b in batteries))

            wait_until(up, 30, "demo up, three batteries online")
            assert proc.poll() is None, output_path.read_text(encoding="utf-8")[-3000:]
            yield url
        finally:
            stop_process(proc)


def test_dashboard_groups_batteries_by_gateway_with_their_names(browser: Browser, demo: str) -> None:
    batteries = get_json(demo + "/api/status")["batteries"]
    gateways = list(dict.fromkeys(b["gateway"] for b in batteries))
    assert len(gateways) == 2
    with open_page(browser, demo + "/") as page:
        groups = page.locator(".gateway-group")
        expect(groups).to_have_count(2)
        expect(groups.locator(".gateway-title")).to_have_text([f"Gateway {g}" for g in gateways])
        expect(groups.nth(0).locator(".battery h3")).to_have_text(["Venus E v2 #1 (RS485)", "Venus E v2 #2 (RS485)"])
        expect(groups.nth(1).locator(".battery h3")).to_have_text(["Venus E v3 (LAN)"])
        expect(groups.nth(1).locator(".unit-info")).to_contain_text("v3")
        screenshot(page, "dashboard-gateways.png")


def test_setup_page_scans_the_chosen_gateway(browser: Browser, demo: str) -> None:
    batteries = get_json(demo + "/api/status")["batteries"]
    v3_gateway = next(b["gateway"] for b in batteries if b["register_set"] == "v3")
    with open_page(browser, demo + "/setup", expected_statuses=(409,)) as page:  # the refused second v3 ID
        expect(page.locator("#gateway-select option")).to_have_count(2)
        page.locator("#enter-btn").click()
        expect(page.locator("#enter-result")).to_be_visible()
        page.locator("#gateway-select").select_option(v3_gateway)
        page.locator("#scan-btn").click()
        expect(page.locator("#scan-rows tr")).to_have_count(1)
        expect(page.locator(".scan-note")).to_contain_text("ID")
        # A second ID on the v3 LAN port would be the same battery: refused, and the page says why.
        page.locator("#add-id").fill("2")
        page.locator("#add-btn").click()
        expect(page.locator("#add-result")).to_contain_text("answers on every unit ID")
        expect(page.locator("#add-result")).to_contain_text("rs485_gateway: true")
        assert len(get_json(demo + "/api/status")["batteries"]) == 3
        page.locator("#exit-btn").click()
        expect(page.locator("#exit-result")).to_be_visible()


# ---------------------------------------------------------------------------- money (a tariff)
def test_todays_cost_and_saving_and_the_euro_chart(browser: Browser, priced_system: System) -> None:
    system = priced_system
    seed_earlier_runs(system.config_path.parent / "data" / "history.sqlite3", money=True)

    def today() -> dict[str, Any]:
        return ((get_json(system.url + "/api/energy?days=1") or {}).get("days") or [{}])[0]

    wait_until(lambda: (today().get("saved_eur") or 0) >= 0.0005, 40, "the server counts a saving today")
    for width, height, suffix in ((1280, 900, ""), (360, 740, "-360")):
        with open_page(browser, system.url + "/", width=width, height=height) as page:
            expect(page.locator("#energy-cost-row")).to_be_visible()
            expect(page.locator("#energy-saved")).to_have_text(re.compile(r"^-?\d+,\d\d\s€$"))
            expect(page.locator("#energy-cost")).to_have_text(re.compile(r"^-?\d+,\d\d\s€$"))
            expect(page.locator("#energy-money-hint")).to_be_visible()
            page.wait_for_function("() => { const c = window.marstekDashboard.energyChart(); "
                                   "return c && c.data[0].length === 7; }", timeout=TIMEOUT_MS)
            expect(page.locator("#energy-unit")).to_be_visible()
            page.locator("[data-unit='eur']").click()
            expect(page.locator("[data-unit='eur']")).to_have_attribute("aria-pressed", "true")
            expect(page.locator("#energy-chart-hint")).to_contain_text("In €")
            labels = page.evaluate("window.marstekDashboard.energyChart().series.map(s => s.label)")
            assert labels[1:] == ["Stromkosten", "Einspeisevergütung", "Ersparnis"]
            days = get_json(system.url + "/api/energy?days=7")["days"]
            data = page.evaluate("window.marstekDashboard.energyChart().data")
            assert data[1][:-1] == [d["cost_eur"] for d in days[:-1]], "the bars are the API's cost per day"
            assert data[2][:-1] == [-d["feed_in_revenue_eur"] for d in days[:-1]], "the revenue below zero"
            assert data[3][:-1] == [d["saved_eur"] for d in days[:-1]]
            assert all(v > 0.2 for v in data[1][:-1]), data[1]
            painted = canvas_pixels(page, "#energy-chart")
            assert painted > 500, f"only {painted} painted pixels on the € chart"
            assert no_horizontal_scroll(page)
            ARTIFACTS.mkdir(exist_ok=True)
            page.locator("#energy-card").screenshot(path=str(ARTIFACTS / f"energy-money{suffix}.png"))
            page.locator("#energy-chart-card").screenshot(path=str(ARTIFACTS / f"energy-chart-eur{suffix}.png"))
            page.locator("[data-unit='kwh']").click()  # and back: the kWh bars again
            expect(page.locator("#energy-chart-hint")).to_contain_text("In kWh")
            assert page.evaluate("window.marstekDashboard.energyChart().series.length") == 5


# ---------------------------------------------------------------------------- the plan by price
PLAN_TARIFF = {"type": "fixed", "fixed_ct_per_kwh": 30.0, "feed_in_ct_per_kwh": 8.0,
               "windows": [{"from": "00:00", "to": "06:00", "ct_per_kwh": -5.0},
                           {"from": "17:00", "to": "21:00", "ct_per_kwh": 45.0}]}


def test_plan_card_draws_the_slots_the_reason_and_the_costs(browser: Browser, tmp_path: Path) -> None:
    with running_system(tmp_path, tariff=PLAN_TARIFF, plan={"enabled": True}) as system:
        wait_until(lambda: (get_json(system.url + "/api/plan") or {}).get("ok") is True, 40, "a plan")
        doc = get_json(system.url + "/api/plan")
        for width, height, suffix in ((1280, 900, ""), (360, 740, "-360")):
            with open_page(browser, system.url + "/", width=width, height=height) as page:
                expect(page.locator("#plan-card")).to_be_visible()
                page.wait_for_function("() => { const c = window.marstekDashboard.planChart(); "
                                       "return c && c.data[0].length > 1; }", timeout=TIMEOUT_MS)
                data = page.evaluate("window.marstekDashboard.planChart().data")
                slots = page.evaluate("window.marstekDashboard.plan.doc.slots")
                assert len(data[0]) == len(slots) + 1, "one x per slot start plus the last slot's end"
                assert len(slots) >= len(doc["slots"]) - 1
                assert data[1][:-1] == [s["import_ct_per_kwh"] for s in slots], "the price bars are the API's"
                assert data[2][:-1] == [s["soc_pct"] for s in slots], "the SoC line is the API's"
                assert sorted(set(data[1][:-1])) == [-5.0, 30.0, 45.0], "the tariff's prices over the horizon"
                scale = page.evaluate("(() => { const s = window.marstekDashboard.planChart().scales.ct; "
                                      "return [s.min, s.max]; })()")
                assert scale[0] < -5.0 < 45.0 < scale[1], f"negative prices drawn below zero: {scale}"
                labels = page.evaluate("window.marstekDashboard.planChart().series.map(s => s.label)")
                forecasts = [name for key, name in (("pv_w", "PV (Prognose)"), ("load_w", "Verbrauch (Prognose)"))
                             if any(s[key] is not None for s in slots)]
                assert labels[1:] == ["Strompreis", "Ladestand (geplant)", *forecasts, "Betriebsart"]
                assert data[-1][:-1] == [["auto", "hold", "charge"].index(s["mode"]) for s in slots], "the mode band"
                expect(page.locator("#plan-reason")).to_be_visible()
                expect(page.locator("#plan-reason-text")).to_have_text(slots[0]["reason"])
                assert slots[0]["reason"], "the current slot says why"
                expect(page.locator("#plan-reason-mode")).to_have_text(
                    {"auto": "Automatik", "hold": "Halten", "charge": "Laden aus dem Netz"}[slots[0]["mode"]])
                expect(page.locator("#plan-costs")).to_be_visible()
                expect(page.locator("#plan-cost")).to_have_text(re.compile(r"^-?\d+,\d\d\s€$"))
                expect(page.locator("#plan-cost-without")).to_have_text(re.compile(r"^-?\d+,\d\d\s€$"))
                expect(page.locator("#plan-problem")).to_be_hidden()
                if all(s["load_w"] is None for s in slots):  # no history yet: the costs are only the charging
                    expect(page.locator("#plan-costs-no-load")).to_be_visible()
                painted = canvas_pixels(page, "#plan-chart")
                assert painted > 2000, f"only {painted} painted pixels on the plan chart"
                assert no_horizontal_scroll(page)
                ARTIFACTS.mkdir(exist_ok=True)
                page.locator("#plan-card").screenshot(path=str(ARTIFACTS / f"plan-card{suffix}.png"))
                screenshot(page, f"dashboard-plan{suffix}.png")


def test_plan_card_is_hidden_without_a_plan(browser: Browser, system: System) -> None:
    with open_page(browser, system.url + "/") as page:
        page.wait_for_function("() => window.marstekDashboard.plan.doc !== null", timeout=TIMEOUT_MS)
        assert page.evaluate("window.marstekDashboard.plan.doc.enabled") is False
        expect(page.locator("#plan-card")).to_be_hidden()


def test_a_plan_problem_shows_in_the_errors_card_with_the_fix(browser: Browser, tmp_path: Path) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the price source fails at once
    tariff = {"type": "awattar", "url": dead_url}
    with (running_system(tmp_path, tariff=tariff, plan={"enabled": True}) as system,
          open_page(browser, system.url + "/", width=360, height=740) as page):
        errors = page.locator("#errors-list li", has_text="Strompreise nicht abrufbar")
        expect(errors).to_be_visible(timeout=40_000)
        expect(errors).to_contain_text("Abhilfe: Internetverbindung und Abschnitt „tariff“")
        expect(page.locator("#plan-card")).to_be_visible()
        expect(page.locator("#plan-problem")).to_contain_text("Strompreise nicht abrufbar")
        expect(page.locator("#plan-empty")).to_be_visible()
        assert no_horizontal_scroll(page)
        screenshot(page, "dashboard-plan-problem-360.png")
