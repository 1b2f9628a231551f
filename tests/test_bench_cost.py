"""The cost benchmark (benchmark/cost.py): its energy simulation, its independent LP, and a week of the real data."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from benchmark import cost as bc
from planning.model import FleetModel, PlanInput, PriceSlot
from planning.planner import make_plan


def test_every_slot_balances_energy() -> None:
    rng = random.Random(7)
    e = 0.5 * bc.CAPACITY_WH
    for _ in range(5000):
        mode = rng.choice(["auto", "hold", "charge"])
        load, pv, power = rng.uniform(0, 4000), rng.uniform(0, 4000), rng.uniform(0, 3000)
        grid, battery, e_next = bc.step(mode, power, e, load, pv)
        idle = bc.STANDBY_W if battery == 0 else 0.0
        assert grid == pytest.approx(load - pv - battery + idle)  # house balance: PV + grid + battery = load
        assert bc.E_MIN_WH - 1e-6 <= e_next <= bc.E_MAX_WH + 1e-6
        # a slot that reaches a limit ran at its power only until then: the mean power is lower, η is not
        limited = abs(e_next - bc.E_MIN_WH) < 1e-6 or abs(e_next - bc.E_MAX_WH) < 1e-6
        if battery > 0:  # discharge: never more than the house needs (no export of battery energy)
            assert battery <= load - pv + 1e-9 and mode == "auto"
            if not limited:
                assert e - e_next == pytest.approx(battery * bc.DT_H / bc.efficiency(battery, bc.EFFICIENCY_DISCHARGE))
        elif battery < 0 and not limited:
            assert e_next - e == pytest.approx(-battery * bc.DT_H * bc.efficiency(battery, bc.EFFICIENCY_CHARGE))
        e = e_next


def test_the_lp_and_the_dp_agree_with_a_constant_efficiency() -> None:
    """A tiny day: cheap night, middle day, expensive evening that empties the battery either way."""
    prices = [10.0] * 6 + [30.0] * 6 + [50.0] * 4
    load = [1000.0] * len(prices)
    curve = ((100.0, 0.9), (5000.0, 0.9))
    t0 = datetime(2026, 1, 15, 0, 0, tzinfo=timezone.utc)
    slots = tuple(PriceSlot(t0 + timedelta(hours=i), t0 + timedelta(hours=i + 1), p, 0.0)
                  for i, p in enumerate(prices))
    fleet = FleetModel(bc.CAPACITY_WH, bc.MIN_SOC_PCT, bc.MIN_SOC_PCT, bc.MAX_SOC_PCT, bc.POWER_W, bc.POWER_W,
                       bc.POWER_W, 0.0, 0.0, bc.MIN_SOC_PCT, curve, curve)
    plan = make_plan(PlanInput(t0, slots, (0.0,) * len(prices), tuple(load), fleet))
    assert plan.ok and plan.expected_cost_eur is not None
    lp = bc.perfect_foresight(load, [0.0] * len(prices), prices, [0.0] * len(prices),
                              e0_wh=bc.E_MIN_WH, eta_charge=0.9, eta_discharge=0.9, dt_h=1.0)
    dp_ct, lp_ct = plan.expected_cost_eur * 100.0, sum(lp.cost_ct)
    assert lp_ct <= dp_ct + 0.5  # the LP is a relaxation
    assert dp_ct - lp_ct <= 0.01 * lp_ct + 2.0  # … and the DP finds the same optimum up to its 1 % SoC grid
    assert any(s.mode == "charge" for s in plan.slots[:6])


def test_a_winter_week_ranks_the_strategies() -> None:
    start = bc.YEAR_START + timedelta(days=140)
    run = bc.run_scenario((bc.HOUSEHOLDS[0], bc.TARIFFS[0], 7, 1, start, True))
    cost = {name: s["cost_eur"] for name, s in run["strategies"].items()}  # type: ignore[union-attr]
    assert cost["perfect_foresight"] <= cost["plan_exact"] <= cost["plan"] <= cost["zero_feed_in"] <= cost["no_battery"]
    assert cost["threshold"] <= cost["zero_feed_in"]  # the best threshold includes "never"
    # with exact forecasts the planner itself must get most of the way; with forecasts from a week without
    # history (the load profile starts with this week) it must still gain
    assert isinstance(run["exact_captured_share"], float) and run["exact_captured_share"] >= 0.3
    assert isinstance(run["captured_share"], float) and run["captured_share"] >= 0.05
    assert run["hours_below_reserve"] == 0
    assert run["plan_compute_s"] > 0


def test_a_fixed_price_plan_never_loses_against_zero_feed_in() -> None:
    start = bc.YEAR_START + timedelta(days=200)
    run = bc.run_scenario((bc.HOUSEHOLDS[1], bc.TARIFFS[1], 4, 1, start, False))
    cost = {name: s["cost_eur"] for name, s in run["strategies"].items()}  # type: ignore[union-attr]
    assert cost["plan"] <= cost["zero_feed_in"] + 0.01
    assert run["strategies"]["plan"]["grid_charge_kwh"] == 0  # type: ignore[index]


def test_the_household_is_mapped_by_weekday_and_day_of_year() -> None:
    load, pv, first = bc.load_household()
    assert len(load) == len(pv) == 8784 and min(load) >= 0
    for target in (datetime(2025, 8, 24).date(), datetime(2026, 1, 1).date(), datetime(2026, 12, 31).date()):
        idx = bc.source_day(target, first, 366)
        src = first + timedelta(days=idx)
        assert src.weekday() == target.weekday() and 0 <= idx < 366
        assert abs(src.timetuple().tm_yday - target.timetuple().tm_yday) <= 7


def test_the_cost_section_is_replaced_and_kept(tmp_path: Path) -> None:
    doc = tmp_path / "benchmark.md"
    doc.write_text("# Control\n\nresults\n", encoding="utf-8")
    bc.write_section("## Kosten\nfirst", doc)
    bc.write_section("## Kosten\nsecond", doc)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Control\n\nresults\n") and "second" in text and "first" not in text
    assert bc.cost_section(doc) == f"{bc.SECTION_BEGIN}\n## Kosten\nsecond\n{bc.SECTION_END}\n"


def test_the_cost_data_is_in_the_repository_with_its_licence() -> None:
    prices = (bc.ROOT / "data" / "prices" / "README.md").read_text(encoding="utf-8")
    household = (bc.ROOT / "data" / "household" / "README.md").read_text(encoding="utf-8")
    assert "Bundesnetzagentur | SMARD.de, CC BY 4.0" in prices
    assert "CC BY 4.0" in household and "10.25832/household_data/2020-04-15" in household
    assert bc.PRICES_CSV.stat().st_size > 1_000_000 and bc.HOUSEHOLD_CSV.stat().st_size > 300_000


def test_python_m_benchmark_cost_prints_the_json_last(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from benchmark import cli as benchmark

    assert benchmark.main(["cost", "--days", "1", "--skip-days", "150", "--jobs", "1", "--no-write", "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in ("captured_share", "threshold_captured_share", "hours_below_reserve", "plan_compute_s"):
        assert key in summary
    assert summary["hours_below_reserve"] == 0 and summary["plan_compute_s"] > 0


def test_the_plan_forecasts_the_load_from_what_the_program_would_have_recorded() -> None:
    """The benchmark's plan gets the program's own load forecast, from grid + battery = load − PV only (the
    program measures no PV): a forecaster given the load itself would know more than the program does."""
    from planning.load_forecast import forecast_load, net_load_w

    year = bc.build_year(9, bc.YEAR_START + timedelta(days=150))
    history = bc.program_history(year)
    net = [x - y for x, y in zip(year.load_w, year.pv_w, strict=True)]
    assert [net_load_w(s) for s in history] == pytest.approx(net)
    assert [s.t for s in history] == [(year.start + q * bc.SLOT).timestamp() for q in range(len(history))]
    # a week of it gives a forecast for the next day's evening (the history reader's window)
    now = year.start + 8 * bc.PER_DAY * bc.SLOT
    evening = (PriceSlot(now + timedelta(hours=17), now + timedelta(hours=18), 30.0, 0.0),)
    load = forecast_load(history[: 8 * bc.PER_DAY], evening, now, tz=bc.BERLIN)
    assert load[0] is not None and load[0] > 0
