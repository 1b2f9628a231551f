"""The planner (planning/planner.py): its promises as properties, and the decisions it must make."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from planning.efficiency import EFFICIENCY_DISCHARGE
from planning.model import FleetModel, Plan, PlanInput, PriceSlot
from planning.planner import make_plan

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 1, 14, 23, 0, tzinfo=timezone.utc)  # 00:00 in Berlin
ETA_MIN = min(e for _, e in EFFICIENCY_DISCHARGE)


def fleet(soc_pct: float = 30.0, **kw: float) -> FleetModel:
    args = {"capacity_wh": 5120.0, "soc_pct": soc_pct, "reserve_soc_pct": 11.0, "max_soc_pct": 98.0,
            "max_charge_w": 2500.0, "max_discharge_w": 2500.0, "grid_charge_max_w": 2500.0,
            "wear_ct_per_kwh": 3.0, "standby_w": 10.0}
    args.update(kw)
    return FleetModel(**args)  # type: ignore[arg-type]


def plan_for(prices_ct: list[float], pv_w: list[float], load_w: list[float], f: FleetModel, minutes: int = 60,
             now: datetime = T0, peak: float | None = None, feed_in_ct: float = 7.9) -> Plan:
    slots = tuple(PriceSlot(T0 + timedelta(minutes=minutes * i), T0 + timedelta(minutes=minutes * (i + 1)), p,
                            feed_in_ct) for i, p in enumerate(prices_ct))
    return make_plan(PlanInput(now, slots, tuple(pv_w), tuple(load_w), f, peak, BERLIN))


# -- properties -------------------------------------------------------------------------------------------

@st.composite
def plan_inputs(draw: st.DrawFn) -> PlanInput:
    n = draw(st.integers(1, 40))
    minutes = draw(st.sampled_from([15, 60]))
    prices = draw(st.lists(st.floats(-60.0, 90.0), min_size=n, max_size=n))
    pv = draw(st.lists(st.floats(0.0, 4000.0), min_size=n, max_size=n))
    load = draw(st.lists(st.one_of(st.none(), st.floats(0.0, 4000.0)), min_size=n, max_size=n))
    reserve = draw(st.floats(0.0, 50.0))
    f = FleetModel(capacity_wh=draw(st.floats(1000.0, 20000.0)), soc_pct=draw(st.floats(0.0, 100.0)),
                   reserve_soc_pct=reserve, max_soc_pct=draw(st.floats(reserve + 5.0, 100.0)),
                   max_charge_w=draw(st.floats(0.0, 5000.0)), max_discharge_w=draw(st.floats(0.0, 5000.0)),
                   grid_charge_max_w=draw(st.floats(0.0, 5000.0)), wear_ct_per_kwh=draw(st.floats(0.0, 10.0)),
                   standby_w=draw(st.floats(0.0, 20.0)),
                   min_soc_pct=draw(st.one_of(st.none(), st.floats(0.0, reserve))))
    offset = draw(st.integers(0, minutes * 60 - 1))
    slots = tuple(PriceSlot(T0 + timedelta(minutes=minutes * i), T0 + timedelta(minutes=minutes * (i + 1)), p,
                            draw(st.floats(0.0, 10.0))) for i, p in enumerate(prices))
    peak = draw(st.one_of(st.none(), st.floats(500.0, 5000.0)))
    return PlanInput(T0 + timedelta(seconds=offset), slots, tuple(pv), tuple(load), f, peak, BERLIN)


@settings(max_examples=150, deadline=None)
@given(plan_inputs())
def test_the_plan_keeps_every_limit(inp: PlanInput) -> None:
    plan = make_plan(inp)
    f = inp.fleet
    assert plan.ok and plan.problem is None
    assert len(plan.slots) == len(inp.prices)
    socs = [s.soc_pct for s in plan.slots]
    tol = 0.01
    assert socs[0] == round(f.soc_pct, 2)
    for s in socs:
        assert s >= min(f.reserve_soc_pct, f.soc_pct) - tol, "below the reserve"
        assert s <= max(f.max_soc_pct, f.soc_pct) + tol, "above max_soc"
    known = [x for x in inp.load_w if x is not None]
    default_load = sum(known) / len(known) if known else 0.0
    for i, (slot, nxt) in enumerate(zip(plan.slots, [*socs[1:], None], strict=True)):
        load = default_load if inp.load_w[i] is None else inp.load_w[i]
        net_w = load - inp.pv_w[i]  # type: ignore[operator]
        dt_h = (slot.end - max(slot.start, inp.now)).total_seconds() / 3600.0
        if slot.mode == "charge":
            assert slot.power_w is not None and 0 < slot.power_w <= f.max_charge_w + 1
            assert slot.power_w - max(-net_w, 0.0) <= f.grid_charge_max_w + 1, "grid charge above its limit"
        else:
            assert slot.power_w is None
        if nxt is None:
            continue
        drop_wh = (slot.soc_pct - nxt) / 100.0 * f.capacity_wh
        if slot.mode != "auto" or net_w <= 0:
            assert drop_wh <= f.capacity_wh * tol / 100.0 + 1e-6, "discharge where the plan forbids it"
        else:  # never planned export of battery energy: the discharge covers at most load − PV
            assert drop_wh <= net_w * dt_h / ETA_MIN + f.capacity_wh * tol / 100.0 + 1e-6
        assert slot.reason


@settings(max_examples=60, deadline=None)
@given(plan_inputs(), st.integers(1, 7200))
def test_no_grid_charging_without_a_current_price(inp: PlanInput, early_s: int) -> None:
    before = PlanInput(inp.prices[0].start - timedelta(seconds=early_s), inp.prices, inp.pv_w, inp.load_w,
                       inp.fleet, inp.peak_import_limit_w, inp.tz)
    plan = make_plan(before)
    assert not plan.ok and plan.problem and plan.problem.code == "plan_problem_no_current_price"
    assert all(s.mode == "auto" for s in plan.slots)
    after = PlanInput(inp.prices[-1].end + timedelta(seconds=early_s), inp.prices, inp.pv_w, inp.load_w,
                      inp.fleet, inp.peak_import_limit_w, inp.tz)
    plan = make_plan(after)
    assert not plan.ok and plan.slots == () and plan.problem


def test_bad_inputs_give_a_problem_and_auto() -> None:
    plan = plan_for([], [], [], fleet())
    assert not plan.ok and plan.problem is not None and plan.problem.code == "plan_problem_no_prices"
    plan = plan_for([10.0, 20.0], [0.0], [100.0, 100.0], fleet())
    assert not plan.ok and plan.problem is not None and plan.problem.code == "plan_problem_forecast_length"
    assert [s.mode for s in plan.slots] == ["auto", "auto"]


# -- decisions ----------------------------------------------------------------------------------------------

def test_a_cheap_night_before_an_expensive_evening_charges() -> None:
    hours = range(24)
    prices = [10.0 if h < 6 else 50.0 if 17 <= h < 21 else 30.0 for h in hours]
    plan = plan_for(prices, [0.0] * 24, [600.0] * 24, fleet(soc_pct=11.0))
    charged = [s for s in plan.slots if s.mode == "charge"]
    assert charged and all(s.import_ct_per_kwh == 10.0 for s in charged)
    assert plan.expected_cost_eur is not None and plan.expected_cost_without_plan_eur is not None
    assert plan.expected_cost_eur < plan.expected_cost_without_plan_eur
    reason = charged[0].reason
    assert reason.code == "plan_charge_for"  # type: ignore[attr-defined]
    assert "bei 10,0 ct für 17:00–21:00 bei 50 ct" in reason.text("de")  # type: ignore[attr-defined]
    assert "at 10.0 ct for 17:00–21:00 at 50 ct" in reason.text("en")  # type: ignore[attr-defined]
    # the evening is covered by the battery, not held back
    assert all(s.mode == "auto" for s in plan.slots[17:21])


def test_the_expensive_evening_is_kept_instead_of_the_afternoon() -> None:
    # no grid charging allowed: the only way to serve the evening is to keep the energy
    prices = [30.0] * 12 + [25.0] * 6 + [45.0] * 3 + [30.0] * 3
    plan = plan_for(prices, [0.0] * 24, [400.0] * 24, fleet(soc_pct=40.0, grid_charge_max_w=0.0))
    held = [s for s in plan.slots if s.mode == "hold"]
    assert held and held[0].reason.code == "plan_hold_for"  # type: ignore[attr-defined]
    assert "18:00–21:00" in held[0].reason


def test_a_flat_price_plans_zero_feed_in_everywhere() -> None:
    pv = [0.0] * 7 + [300.0, 900.0, 1800.0, 2500.0, 3000.0, 3000.0, 2500.0, 1800.0, 900.0, 300.0] + [0.0] * 7
    load = [300.0 + 40.0 * (i % 5) for i in range(24)] + [300.0] * 0
    for soc in (11.0, 50.0, 98.0):
        plan = plan_for([35.0] * 24, pv, load, fleet(soc_pct=soc), minutes=60)
        assert [s.mode for s in plan.slots] == ["auto"] * 24, soc
        assert plan.expected_cost_eur == plan.expected_cost_without_plan_eur
    plan = plan_for([35.0] * 96, [0.0] * 96, [250.0] * 96, fleet(soc_pct=70.0), minutes=15)
    assert {s.mode for s in plan.slots} == {"auto"}


def test_negative_prices_are_absorbed() -> None:
    prices = [30.0] * 10 + [-8.0] * 4 + [30.0] * 10
    plan = plan_for(prices, [0.0] * 24, [300.0] * 24, fleet(soc_pct=30.0))
    charged = [s for s in plan.slots if s.mode == "charge"]
    assert charged and all(s.import_ct_per_kwh < 0 for s in charged)  # charging only while paid for it
    assert charged[0].reason.code == "plan_charge_negative"  # type: ignore[attr-defined]
    assert "negativem Preis -8,0 ct" in charged[0].reason.text("de")  # type: ignore[attr-defined]
    assert plan.slots[14].soc_pct >= 97.0  # full when the negative hours end


def test_the_peak_limit_keeps_energy_for_the_peak() -> None:
    # flat price, 500 W all day (zero feed-in alone would empty the battery before the evening), then one
    # hour at 3 kW with a 1.5 kW import limit: the battery must still hold 1.5 kWh for that hour.
    load = [500.0] * 19 + [3000.0] + [500.0] * 4
    without = plan_for([30.0] * 24, [0.0] * 24, load, fleet(soc_pct=60.0))
    assert without.slots[19].soc_pct < 30.0
    plan = plan_for([30.0] * 24, [0.0] * 24, load, fleet(soc_pct=60.0), peak=1500.0)
    peak = plan.slots[19]
    assert peak.mode == "auto" and peak.reason.code == "plan_auto_peak"  # type: ignore[attr-defined]
    needed_pct = 1500.0 / ETA_MIN / 5120.0 * 100.0
    assert peak.soc_pct >= 11.0 + needed_pct * 0.95
    held = [s for s in plan.slots[:19] if s.mode == "hold"]
    assert held and held[0].reason.code == "plan_hold_peak"  # type: ignore[attr-defined]


def test_a_slot_begun_counts_only_its_rest() -> None:
    plan = plan_for([30.0, 30.0], [0.0, 0.0], [1000.0, 1000.0], fleet(soc_pct=50.0),
                    now=T0 + timedelta(minutes=45))
    drop_wh = (plan.slots[0].soc_pct - plan.slots[1].soc_pct) / 100.0 * 5120.0
    assert 250.0 / 0.92 < drop_wh < 250.0 / 0.88  # a quarter of an hour at 1 kW


def test_a_begun_slot_at_a_negative_price_absorbs() -> None:
    # 15-minute slots, now 10 minutes into the first at -5 ct: the rest of it charges like the ones after it
    prices = [-5.0] * 4 + [30.0] * 20
    for minutes_in in (1, 5, 10, 14):
        plan = plan_for(prices, [0.0] * 24, [300.0] * 24, fleet(soc_pct=30.0), minutes=15,
                        now=T0 + timedelta(minutes=minutes_in))
        assert [s.mode for s in plan.slots[:4]] == ["charge"] * 4, minutes_in
        assert plan.slots[0].reason.code == "plan_charge_negative"  # type: ignore[attr-defined]


def test_of_two_equally_cheap_slots_the_earlier_charges() -> None:
    # two cheap hours, room for what one of them can charge: charge now rather than leave the battery idle
    prices = [10.0, 10.0] + [50.0] * 6
    f = fleet(soc_pct=60.0, wear_ct_per_kwh=0.0, standby_w=0.0)
    plan = plan_for(prices, [0.0] * 8, [600.0] * 8, f)
    modes = [s.mode for s in plan.slots]
    assert modes[0] == "charge", modes
    # and with 15-minute slots
    plan = plan_for([10.0] * 8 + [50.0] * 24, [0.0] * 32, [600.0] * 32, f, minutes=15)
    modes = [s.mode for s in plan.slots]
    assert modes[0] == "charge", modes


def test_no_grid_charging_for_what_the_sun_likely_fills() -> None:
    # a cheap night, a sunny day whose forecast surplus nearly fills the battery, an expensive evening: the
    # forecast errs, so the night does not buy the last few hundred Wh the sun would likely bring anyway
    prices = [20.0] * 6 + [30.0] * 12 + [40.0] * 6
    pv = [0.0] * 9 + [700.0] * 6 + [0.0] * 9
    load = [0.0] * 18 + [800.0] * 6
    plan = plan_for(prices, pv, load, fleet(soc_pct=11.0, wear_ct_per_kwh=0.0, standby_w=0.0))
    assert [s.mode for s in plan.slots[:6]] == ["auto"] * 6
    # a darker day: the night charges what the sun cannot bring
    plan = plan_for(prices, [x * 0.5 for x in pv], load, fleet(soc_pct=11.0, wear_ct_per_kwh=0.0, standby_w=0.0))
    assert any(s.mode == "charge" for s in plan.slots[:6])
