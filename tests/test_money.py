"""Money per day (issue 21): the history values every segment at its own slot's price, against the same
house without the battery; /api/energy shows it; it survives a restart; unknown prices stay unpriced."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from control.status_store import CommandQueue, HistorySample, StatusStore
from integrations.history import History, SlotPrice, local_day, money_between, prices_from
from planning.fetcher import FetchState
from planning.model import PriceSlot
from tests.test_web import web_cfg
from web_server import create_app

UTC = datetime.timezone.utc


def noon(days_ago: int = 1) -> float:
    """Local noon ``days_ago`` days before today, epoch seconds (a whole past day: no midnight in the way)."""
    d = datetime.date.today() - datetime.timedelta(days=days_ago)
    return datetime.datetime(d.year, d.month, d.day, 12).timestamp()


def slot(start_t: float, minutes: int, import_ct: float, feed_in_ct: float) -> PriceSlot:
    start = datetime.datetime.fromtimestamp(start_t, UTC)
    return PriceSlot(start, start + datetime.timedelta(minutes=minutes), import_ct, feed_in_ct)


def state_of(slots: Sequence[PriceSlot]) -> FetchState[PriceSlot]:
    return FetchState("prices", "test", slots=tuple(slots))


def steady(start_t: float, seconds: int, grid_w: float, battery_w: float, step_s: int = 10) -> list[HistorySample]:
    """Samples ``step_s`` apart covering ``seconds`` with constant powers (the last one at start + seconds)."""
    return [HistorySample(start_t + i, grid_w, battery_w, 50.0) for i in range(0, seconds + 1, step_s)]


class Prices:
    """A holder the test changes, like the fetcher's latest state."""

    def __init__(self, slots: Sequence[PriceSlot] = ()) -> None:
        self.state: FetchState[PriceSlot] | None = state_of(slots)

    def __call__(self) -> FetchState[PriceSlot] | None:
        return self.state


def day_item(h: History, t: float) -> dict[str, Any]:
    return next(d for d in h.energy_days(3) if d["date"] == local_day(t))


# ---------------------------------------------------------------------------- the lookup and one segment
def test_price_lookup_finds_the_slot_of_a_time_and_nothing_outside() -> None:
    t0 = noon()
    prices = Prices([slot(t0, 15, 30.0, 8.0), slot(t0 + 900, 15, -2.0, 0.0)])
    price_at = prices_from(prices)
    assert price_at(t0) == SlotPrice(t0, t0 + 900, 30.0, 8.0)
    assert price_at(t0 + 899.9).import_ct_per_kwh == 30.0  # type: ignore[union-attr]
    assert price_at(t0 + 900).import_ct_per_kwh == -2.0  # type: ignore[union-attr]  # start inclusive
    assert price_at(t0 - 1) is None and price_at(t0 + 1800) is None  # end exclusive, nothing after
    prices.state = None  # no fetcher state at all
    assert price_at(t0) is None
    prices.state = state_of([slot(t0, 60, 25.0, 7.0)])  # a new fetch is seen at once
    assert price_at(t0 + 1000).import_ct_per_kwh == 25.0  # type: ignore[union-attr]


def test_one_segment_is_valued_at_its_price_and_against_the_house_without_battery() -> None:
    price = SlotPrice(0, 3600, 40.0, 8.0)
    # 10 s importing 360 W while discharging 720 W: without the battery 1080 W would have been imported.
    m = money_between(HistorySample(0, 360.0, 720.0, 50), HistorySample(10, 360.0, 720.0, 50), price)
    assert m.cost_ct == pytest.approx(1.0 / 1000 * 40)  # 1 Wh at 40 ct/kWh
    assert m.baseline_ct == pytest.approx(3.0 / 1000 * 40)
    assert m.saved_ct == pytest.approx(2.0 / 1000 * 40) and m.unpriced_wh == 0
    # Exporting 360 W while charging 720 W from PV: without the battery 1080 W would have been exported.
    m = money_between(HistorySample(0, -360.0, -720.0, 50), HistorySample(10, -360.0, -720.0, 50), price)
    assert m.cost_ct == 0 and m.feed_in_revenue_ct == pytest.approx(1.0 / 1000 * 8)
    assert m.saved_ct == pytest.approx(-2.0 / 1000 * 8)  # the feed-in revenue the charging cost
    # No price: nothing valued, the energy is counted as unpriced (the larger of measured and without battery).
    m = money_between(HistorySample(0, 360.0, 720.0, 50), HistorySample(10, 360.0, 720.0, 50), None)
    assert (m.cost_ct, m.feed_in_revenue_ct, m.baseline_ct) == (0, 0, 0) and m.unpriced_wh == pytest.approx(3.0)
    # Battery power unknown: the grid energy is unpriced (no saving can be worked out), never 0-valued.
    m = money_between(HistorySample(0, 360.0, None, 50), HistorySample(10, 360.0, None, 50), price)
    assert m.cost_ct == 0 and m.unpriced_wh == pytest.approx(1.0)


# ---------------------------------------------------------------------------- a day in the history
def test_charging_from_pv_at_noon_and_discharging_at_night_is_valued_at_each_slots_price(tmp_path: Path) -> None:
    t_noon = noon()
    t_night = t_noon + 8 * 3600  # 20:00 the same day
    prices = Prices([slot(t_noon, 60, 20.0, 8.0), slot(t_night, 60, 40.0, 8.0)])
    h = History(tmp_path / "h.sqlite3", clock=lambda: t_night + 7200, price_at=prices_from(prices))
    # Noon: PV surplus of 1000 W goes into the battery, nothing to the grid (1 kWh in the hour).
    h.add(steady(t_noon, 3600, 0.0, -1000.0))
    # Evening: the house draws 700 W; the battery gives 500 W, the grid 200 W (0.5 kWh + 0.2 kWh).
    h.add(steady(t_night, 3600, 200.0, 500.0))
    day = day_item(h, t_noon)
    assert day["import_wh"] == pytest.approx(200.0) and day["charge_wh"] == pytest.approx(1000.0)
    assert day["cost_eur"] == pytest.approx(0.2 * 0.40)  # 0.2 kWh at 40 ct
    assert day["feed_in_revenue_eur"] == 0
    # Without the battery: 1 kWh exported at noon (8 ct) and 0.7 kWh imported at night (28 ct): net 20 ct.
    # With it: 8 ct. Saved: 12 ct (not what one price for the whole day would give).
    assert day["saved_eur"] == pytest.approx(0.12)
    assert day["unpriced_wh"] == 0
    totals = h.money_totals()
    assert totals is not None
    assert totals["cost_eur"] == pytest.approx(0.08) and totals["saved_eur"] == pytest.approx(0.20)
    assert totals["saved_negative_eur"] == pytest.approx(0.08)  # the noon hour's forgone feed-in
    assert totals["saved_eur"] - totals["saved_negative_eur"] == pytest.approx(day["saved_eur"])


def test_energy_without_a_known_price_is_shown_as_unpriced_not_valued_at_zero(tmp_path: Path) -> None:
    t0 = noon()
    prices = Prices([slot(t0, 60, 30.0, 8.0)])  # the second hour has no price (the fetcher had none)
    h = History(tmp_path / "h.sqlite3", clock=lambda: t0 + 7200, price_at=prices_from(prices))
    h.add(steady(t0, 7200, 1000.0, 0.0))
    day = day_item(h, t0)
    assert day["import_wh"] == pytest.approx(2000.0)
    assert day["cost_eur"] == pytest.approx(0.30)  # only the priced hour
    assert day["unpriced_wh"] == pytest.approx(1000.0)


def test_negative_prices_make_import_earn_and_the_totals_only_grow(tmp_path: Path) -> None:
    t0 = noon()
    prices = Prices([slot(t0, 60, -10.0, 0.0)])
    h = History(tmp_path / "h.sqlite3", clock=lambda: t0 + 3600, price_at=prices_from(prices))
    h.add(steady(t0, 3600, 1000.0, -1000.0))  # charging 1 kW from the grid at -10 ct/kWh
    day = day_item(h, t0)
    assert day["cost_eur"] == pytest.approx(-0.10)  # paid for taking 1 kWh
    assert day["saved_eur"] == pytest.approx(0.10)  # the house alone would have paid 0: the battery earned it
    totals = h.money_totals()
    assert totals is not None and totals["cost_eur"] == 0 and totals["cost_negative_eur"] == pytest.approx(0.10)


def test_without_a_tariff_nothing_changes(tmp_path: Path) -> None:
    t0 = noon()
    h = History(tmp_path / "h.sqlite3", clock=lambda: t0 + 3600)
    h.add(steady(t0, 3600, 1000.0, 500.0))
    assert set(day_item(h, t0)) == {"date", "import_wh", "export_wh", "charge_wh", "discharge_wh",
                                    "avoided_import_wh", "stored_surplus_wh"}
    assert h.money_totals() is None


def test_a_day_before_the_tariff_has_null_money(tmp_path: Path) -> None:
    t0 = noon(2)
    path = tmp_path / "h.sqlite3"
    before = History(path, clock=lambda: t0 + 3600)
    before.add(steady(t0, 3600, 1000.0, 0.0))
    before.close()
    h = History(path, clock=lambda: noon(1), price_at=prices_from(Prices()))
    assert day_item(h, t0)["import_wh"] == pytest.approx(1000.0)
    assert {k: day_item(h, t0)[k] for k in ("cost_eur", "feed_in_revenue_eur", "saved_eur", "unpriced_wh")} == {
        "cost_eur": None, "feed_in_revenue_eur": None, "saved_eur": None, "unpriced_wh": None}


# ---------------------------------------------------------------------------- restart, old files, the API
def test_money_and_totals_survive_a_restart_and_keep_counting(tmp_path: Path) -> None:
    t0 = noon(0) if datetime.datetime.now().hour >= 14 else noon(1)
    now = [t0 + 1800.0]
    path = tmp_path / "data" / "history.sqlite3"
    prices = Prices([slot(t0, 60, 30.0, 8.0)])
    h1 = History(path, clock=lambda: now[0], price_at=prices_from(prices))
    h1.add(steady(t0, 1800, 600.0, 400.0))  # half an hour: 0.3 kWh import, 0.2 kWh discharge
    first = day_item(h1, t0)
    totals = h1.money_totals()
    h1.close()

    h2 = History(path, clock=lambda: now[0], price_at=prices_from(prices))  # a new program on the same file
    assert day_item(h2, t0) == first
    assert h2.money_totals() == totals
    assert first["cost_eur"] == pytest.approx(0.09) and first["saved_eur"] == pytest.approx(0.06)
    h2.add(steady(t0 + 1810, 1790, 600.0, 400.0))  # after a 10 s pause (not a gap): the rest of the hour
    day = day_item(h2, t0)
    assert day["cost_eur"] == pytest.approx(0.18) and day["saved_eur"] == pytest.approx(0.12)
    h2.close()
    with sqlite3.connect(path) as conn:  # the slot's price is stored with the history
        assert conn.execute("SELECT * FROM prices").fetchall() == [(t0, t0 + 3600, 30.0, 8.0)]


def test_a_version_1_file_gains_the_money_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    t0 = noon(2)
    with sqlite3.connect(path) as conn:  # the schema of version 1, as written by the previous release
        conn.executescript("""
            CREATE TABLE samples (t REAL PRIMARY KEY, grid_w REAL, battery_w REAL, soc_pct REAL) WITHOUT ROWID;
            CREATE TABLE samples_1m (t REAL PRIMARY KEY, grid_w REAL, battery_w REAL, soc_pct REAL) WITHOUT ROWID;
            CREATE TABLE energy (day TEXT PRIMARY KEY, import_wh REAL NOT NULL, export_wh REAL NOT NULL,
                charge_wh REAL NOT NULL, discharge_wh REAL NOT NULL, avoided_import_wh REAL NOT NULL,
                stored_surplus_wh REAL NOT NULL) WITHOUT ROWID;
            PRAGMA user_version=1;""")
        conn.execute("INSERT INTO energy VALUES (?, 500, 100, 200, 300, 250, 150)", (local_day(t0),))
    conn.close()
    t1 = noon(1)
    h = History(path, clock=lambda: t1 + 3600, price_at=prices_from(Prices([slot(t1, 60, 30.0, 8.0)])))
    assert day_item(h, t0)["import_wh"] == 500 and day_item(h, t0)["cost_eur"] is None
    h.add(steady(t1, 3600, 1000.0, 0.0))
    assert day_item(h, t1)["cost_eur"] == pytest.approx(0.30)


def test_energy_endpoint_has_the_money_keys_with_a_tariff_only(tmp_path: Path) -> None:
    t0 = noon()
    prices = Prices([slot(t0, 60, 30.0, 8.0)])
    h = History(tmp_path / "h.sqlite3", clock=lambda: t0 + 3600, price_at=prices_from(prices))
    h.add(steady(t0, 3600, -100.0, 300.0))
    client = create_app(StatusStore(), CommandQueue(), web_cfg(), history=h).test_client()
    days = client.get("/api/energy?days=3").get_json()["days"]
    item = next(d for d in days if d["date"] == local_day(t0))
    assert item["feed_in_revenue_eur"] == pytest.approx(0.1 * 0.08)
    # Without the battery 0.2 kWh imported (6 ct) instead of 0.1 kWh exported (0.8 ct earned): 6.8 ct saved.
    assert item["saved_eur"] == pytest.approx(0.068)
    assert item["cost_eur"] == 0 and item["unpriced_wh"] == 0
    plain = History(tmp_path / "p.sqlite3", clock=lambda: t0 + 3600)
    client = create_app(StatusStore(), CommandQueue(), web_cfg(), history=plain).test_client()
    assert all("cost_eur" not in d for d in client.get("/api/energy").get_json()["days"])


def test_a_tariff_added_during_the_day_counts_the_earlier_energy_as_unpriced(tmp_path: Path) -> None:
    t0 = noon(0) if datetime.datetime.now().hour >= 14 else noon(1)
    path = tmp_path / "h.sqlite3"
    before = History(path, clock=lambda: t0 + 1800)  # this morning's run, without a tariff
    before.add(steady(t0, 1800, 400.0, 0.0))  # 200 Wh imported, not valued
    before.close()
    prices = Prices([slot(t0 + 1800, 60, 30.0, 8.0)])
    h = History(path, clock=lambda: t0 + 5400, price_at=prices_from(prices))  # restarted with a tariff
    h.add(steady(t0 + 3600, 1800, 1000.0, 0.0))  # after a gap: 500 Wh at 30 ct
    day = day_item(h, t0)
    assert day["import_wh"] == pytest.approx(700.0)
    assert day["cost_eur"] == pytest.approx(0.15) and day["unpriced_wh"] == pytest.approx(200.0)
