"""The settings page in a real browser (Playwright + Debian's Chromium, as tests/test_browser.py): a user without
an editor switches on a fixed tariff and the plan, saves, and the config file holds it. Screenshots at desktop
and 360 px width go to test-artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from config_loader import load_config
from tests.test_browser import (  # noqa: F401 (browser: a fixture)
    System,
    browser,
    no_horizontal_scroll,
    open_page,
    running_system,
    screenshot,
)


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    """main.py on a simulated house, no tariff, no plan."""
    with running_system(tmp_path) as system:
        yield system


def test_settings_form_enables_a_fixed_tariff_and_the_plan(browser: Browser, system: System) -> None:  # noqa: F811
    with open_page(browser, system.url + "/", expected_statuses=(400,)) as page:
        page.locator("#settings-link").click()
        expect(page).to_have_url(system.url + "/settings")
        expect(page.locator("#settings-form")).to_be_visible()
        expect(page.locator("#tariff-type")).to_have_value("")
        expect(page.locator("#tariff-fixed")).to_be_hidden()

        # First a mistake: the plan without a tariff. The loader's message names the key; nothing is written.
        before = system.config_path.read_bytes()
        page.locator("#plan-enabled").check()
        page.locator("#settings-save").click()
        expect(page.locator("#settings-error")).to_be_visible()
        expect(page.locator("#settings-problems")).to_contain_text("plan.enabled")
        assert system.config_path.read_bytes() == before

        page.locator("#tariff-type").select_option("fixed")
        expect(page.locator("#tariff-fixed")).to_be_visible()
        expect(page.locator("#tariff-markup")).to_be_hidden()  # not used by "fixed"
        expect(page.locator("#tariff-token")).to_be_hidden()
        page.locator("#tariff-fixed").fill("31.5")
        page.locator("#tariff-feed-in").fill("8.2")
        page.locator("#add-window").click()
        page.locator("#add-window").click()
        expect(page.locator(".window-row")).to_have_count(2)
        page.locator(".window-row").nth(1).locator(".remove-row").click()
        expect(page.locator(".window-row")).to_have_count(1)
        row = page.locator(".window-row").first
        row.locator(".w-from").fill("22:00")
        row.locator(".w-to").fill("06:00")
        row.locator(".w-ct").fill("24")
        page.locator("#plan-reserve").fill("20")
        page.locator("#plan-grid-charge").fill("1500")
        page.locator("#settings-save").click()
        expect(page.locator("#settings-saved")).to_be_visible()
        expect(page.locator("#settings-error")).to_be_hidden()
        expect(page.locator("#settings-restart")).to_contain_text("systemctl restart marstek")
        screenshot(page, "settings.png")

        saved = json.loads(system.config_path.read_text(encoding="utf-8"))
        assert saved["tariff"] == {"type": "fixed", "fixed_ct_per_kwh": 31.5, "feed_in_ct_per_kwh": 8.2,
                                   "windows": [{"from": "22:00", "to": "06:00", "ct_per_kwh": 24}]}
        assert saved["plan"] == {"enabled": True, "reserve_soc_pct": 20, "grid_charge_max_w": 1500}
        assert "forecast" not in saved and saved["battery"]["akku_ids"] == [1, 2]
        cfg = load_config(system.config_path)  # what main.py reads at its next start
        assert cfg.plan is not None and cfg.plan.enabled and cfg.tariff is not None and cfg.tariff.type == "fixed"

        # A reload shows what is saved.
        page.reload()
        expect(page.locator("#tariff-type")).to_have_value("fixed")
        expect(page.locator("#tariff-fixed")).to_have_value("31.5")
        expect(page.locator(".window-row .w-from")).to_have_value("22:00")
        expect(page.locator("#plan-enabled")).to_be_checked()
        expect(page.locator("#plan-reserve")).to_have_value("20")


def test_settings_page_at_phone_width(browser: Browser, system: System) -> None:  # noqa: F811
    with open_page(browser, system.url + "/settings", width=360, height=740) as page:
        expect(page.locator("#settings-form")).to_be_visible()
        page.locator("#tariff-type").select_option("fixed")
        page.locator("#add-window").click()
        page.locator("#forecast-type").select_option("open_meteo")
        page.locator("#add-plane").click()
        page.locator("#plan-enabled").check()
        assert no_horizontal_scroll(page)
        screenshot(page, "settings-360.png")
