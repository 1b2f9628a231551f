"""The plan as a mode source: effective_mode's precedence table, the load forecast on synthetic history,
the plan thread on fake clocks, GET /api/plan, the plan config section, and the control loop on the
simulator (the plan charges with source "plan", a manual hold wins, auto gives the plan back at once)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from config_loader import BatteryConfig, ConfigError, PlanConfig, WebConfig, parse_config
from control import i18n
from control.commands import SetMode
from control.modes import ModeRequest, ModeState
from control.status_store import BatteryStatus, CommandQueue, HistorySample, StatusSnapshot, StatusStore
from integrations.history import History, HistoryBusy
from planning.load_forecast import forecast_load, history_reader, net_load_w, split_history
from planning.model import Plan, PlanInput, PlannedSlot, PriceSlot, PvSlot
from planning.plan_mode import PLAN_MAX_AGE_S, effective_mode, plan_json, plan_problem
from planning.plan_thread import PlanThread, fleet_model, pv_per_slot
from planning.planner import make_plan
from tests.helpers import FakeClock
from web_server import create_app
from zero_feed_control import OperatingMode

UTC = timezone.utc
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday
Q = timedelta(minutes=15)
AUTO, HOLD, CHARGE, OFF = OperatingMode.AUTO, OperatingMode.HOLD, OperatingMode.CHARGE, OperatingMode.OFF


def slot(start: datetime, mode: str = "auto", power_w: int | None = None, ct: float = 30.0) -> PlannedSlot:
    return PlannedSlot(start, start + Q, ct, 7.9, mode, power_w, 50.0, None, 400.0,  # type: ignore[arg-type]
                       i18n.Msg("plan_pending"))


def plan_at(created: datetime, *slots: PlannedSlot, ok: bool = True, problem: str | None = None) -> Plan:
    return Plan(created, ok, problem, tuple(slots), 1.0 if ok else None, 1.5 if ok else None)


CHARGING = plan_at(T0, slot(T0, "charge", 1500, ct=8.0), slot(T0 + Q, "hold"), slot(T0 + 2 * Q))


# ---------------------------------------------------------------------------- effective_mode
@pytest.mark.parametrize(("manual", "plan", "now", "mode", "power_w", "source", "problem"), [
    # a manual mode other than auto wins, whatever the plan says
    (ModeState(HOLD, source="api"), CHARGING, T0, HOLD, None, "api", None),
    (ModeState(OFF, source="mqtt"), CHARGING, T0, OFF, None, "mqtt", None),
    (ModeState(CHARGE, 800, source="dashboard"), CHARGING, T0, CHARGE, 800, "dashboard", None),
    # default auto (or an expired mode, which the loop turned into the default): the plan's current slot
    (ModeState(), CHARGING, T0 + timedelta(minutes=5), CHARGE, 1500, "plan", None),
    (ModeState(), CHARGING, T0 + Q, HOLD, None, "plan", None),
    (ModeState(), CHARGING, T0 + 2 * Q, AUTO, None, "plan", None),
    # auto set back by hand: the plan too
    (ModeState(AUTO, source="api"), CHARGING, T0, CHARGE, 1500, "plan", None),
    # no plan yet: auto, nothing to complain about
    (ModeState(), None, T0, AUTO, None, "default", None),
    # no slot containing now (prices ran out): auto and the problem
    (ModeState(), replace(CHARGING, created=T0 + 2 * Q), T0 + 3 * Q, AUTO, None, "default", "plan_no_current_price"),
    (ModeState(), CHARGING, T0 - Q, AUTO, None, "default", "plan_no_current_price"),
    # a plan older than 30 minutes: auto and the problem (also while a manual mode wins)
    (ModeState(), plan_at(T0 - timedelta(minutes=31), slot(T0, "charge", 1500)), T0, AUTO, None, "default",
     "plan_stale"),
    (ModeState(HOLD, source="api"), plan_at(T0 - timedelta(hours=2), slot(T0)), T0, HOLD, None, "api", "plan_stale"),
    # a failed plan: auto and its own problem
    (ModeState(), plan_at(T0, ok=False, problem=i18n.Msg("plan_no_battery")), T0, AUTO, None, "default",
     "plan_no_battery"),
])
def test_effective_mode_manual_wins_then_the_plan_then_auto(manual, plan, now, mode, power_w, source, problem):
    choice = effective_mode(manual, plan, now)
    assert (choice.mode.mode, choice.mode.power_w, choice.mode.source) == (mode, power_w, source)
    assert getattr(choice.problem, "code", None) == problem
    if source == "plan":
        assert choice.slot is not None and choice.mode.until_s == choice.slot.end.timestamp()


def test_plan_problem_states_the_age_in_minutes():
    stale = plan_at(T0, slot(T0 + 3 * Q))
    assert plan_problem(stale, T0 + timedelta(seconds=PLAN_MAX_AGE_S)) is not None  # no current slot
    old = plan_at(T0, *(slot(T0 + n * Q) for n in range(8)))
    assert plan_problem(old, T0 + timedelta(minutes=30)) is None
    problem = plan_problem(old, T0 + timedelta(minutes=45))
    assert problem is not None and problem.code == "plan_stale"
    assert "45" in problem


# ---------------------------------------------------------------------------- load forecast
def synthetic_history(days: int, level_w: Any, *, step_s: int = 900, end: datetime = T0) -> list[HistorySample]:
    """Quarter-hour samples of ``days`` days before ``end``: net load ``level_w(local datetime)`` split
    into grid and battery power (the forecast must add them)."""
    samples = []
    t = end - timedelta(days=days)
    while t < end:
        net = level_w(t)
        samples.append(HistorySample(t.timestamp() + step_s / 2, net - 100.0, 100.0, 50.0))
        t += timedelta(seconds=step_s)
    return samples


def evening_peak(t: datetime) -> float:
    """300 W, 1500 W from 18:00 to 21:00 (UTC here: the test's zone), weekends 200 W more all day."""
    base = 1500.0 if 18 <= t.hour < 21 else 300.0
    return base + (200.0 if t.weekday() >= 5 else 0.0)


def price_slots(start: datetime, count: int, step: timedelta = Q) -> list[PriceSlot]:
    return [PriceSlot(start + n * step, start + (n + 1) * step, 30.0, 7.9) for n in range(count)]


def test_net_load_is_grid_plus_battery_and_unknown_when_either_is_missing():
    assert net_load_w(HistorySample(0.0, 200.0, 300.0, 50.0)) == 500.0
    assert net_load_w(HistorySample(0.0, -400.0, 0.0, 50.0)) == -400.0
    assert net_load_w(HistorySample(0.0, None, 300.0, 50.0)) is None
    assert net_load_w(HistorySample(0.0, 200.0, None, 50.0)) is None


def test_load_forecast_repeats_the_profile_of_comparable_days():
    samples = synthetic_history(14, evening_peak)
    slots = price_slots(T0, 48)  # Monday 12:00 .. 24:00
    load = forecast_load(samples, slots, T0, tz=UTC)
    assert load[0] == pytest.approx(300.0)  # the recent level equals the profile: no offset
    assert load[(18 - 12) * 4] == pytest.approx(1500.0)  # 18:00: the evening peak of the weekdays
    assert load[(21 - 12) * 4] == pytest.approx(300.0)
    # Saturday: the weekend's higher level, not the weekdays'
    saturday = T0 + timedelta(days=5)
    weekend = forecast_load(synthetic_history(14, evening_peak, end=saturday), price_slots(saturday, 4), saturday,
                            tz=UTC)
    assert weekend[0] == pytest.approx(500.0)
    # an hourly price slot gets the mean of its four quarter-hours
    hourly = forecast_load(samples, price_slots(T0.replace(hour=17, minute=30), 1, timedelta(hours=1)),
                           T0, tz=UTC)
    assert hourly[0] == pytest.approx((2 * 300.0 + 2 * 1500.0) / 4, rel=0.05)


def test_load_forecast_blends_the_last_hours_level_and_fades_it_out():
    history = synthetic_history(14, evening_peak)
    # the last three hours the house drew 600 W more than usual
    recent = [replace(s, grid_w=(s.grid_w or 0.0) + 600.0) for s in history if s.t > T0.timestamp() - 3 * 3600]
    samples = [s for s in history if s.t <= T0.timestamp() - 3 * 3600] + recent
    load = forecast_load(samples, price_slots(T0, 96), T0, tz=UTC)
    assert 700.0 < load[0] < 900.0  # 300 W usual + most of the (diluted) 600 W offset
    assert load[48] == pytest.approx(300.0, abs=20.0)  # half a day later the offset has faded


def test_load_forecast_without_history_is_unknown_and_never_negative():
    assert forecast_load([], price_slots(T0, 3), T0, tz=UTC) == (None, None, None)
    exporting = synthetic_history(3, lambda t: -2000.0)  # PV surplus all day: the net load is negative
    assert forecast_load(exporting, price_slots(T0, 2), T0, tz=UTC) == (0.0, 0.0)


def test_with_a_pv_forecast_bright_slots_get_the_base_load_not_the_net_load():
    """Midday history: 400 W house − 1400 W PV = −1000 W net. With a PV forecast the midday load must be the
    house's own (about the night level), else the forecast PV would be subtracted a second time."""
    def day(t: datetime) -> float:
        return -1000.0 if 10 <= t.hour < 16 else 400.0

    samples = synthetic_history(7, day)
    slots = price_slots(T0.replace(hour=0), 96)
    pv = [1400.0 if 10 <= s.start.hour < 16 else 0.0 for s in slots]
    without = forecast_load(samples, slots, T0.replace(hour=0), tz=UTC)
    with_pv = forecast_load(samples, slots, T0.replace(hour=0), pv_w=pv, tz=UTC)
    assert without[12 * 4] == 0.0  # net load (clipped): the PV is inside it
    assert with_pv[12 * 4] == pytest.approx(400.0)  # the base load; the planner subtracts the forecast PV
    assert with_pv[20 * 4] == pytest.approx(400.0) and without[20 * 4] == pytest.approx(400.0)


def test_history_reader_asks_the_database_for_quarter_hour_means(tmp_path):
    history = History(tmp_path / "h.sqlite3", store=None, clock=lambda: T0.timestamp())
    history.add([HistorySample(T0.timestamp() - 3600 + n, 500.0, -100.0, 50.0) for n in range(0, 600, 2)])
    samples = history_reader(history.samples, days=1)(T0)
    assert len(samples) == 1 and net_load_w(samples[0]) == pytest.approx(400.0)
    history.close()


# ---------------------------------------------------------------------------- the plan thread
class Prices:
    """A price feed like the fetcher's: the latest good prices and the last error."""

    def __init__(self, slots: Sequence[PriceSlot], error: str | None = None) -> None:
        self.slots, self.last_error = list(slots), error

    def latest(self) -> Sequence[PriceSlot]:
        return self.slots

    def error(self) -> str | None:
        return self.last_error


class Pv:
    def __init__(self, slots: Sequence[PvSlot]) -> None:
        self.slots = slots

    def latest(self) -> Sequence[PvSlot]:
        return self.slots


class RecordingPlanner:
    """The real planner, keeping every input it was given (or raising ``fail``: a planner bug)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.inputs: list[PlanInput] = []
        self.fail = fail

    def __call__(self, plan_input: PlanInput) -> Plan:
        self.inputs.append(plan_input)
        if self.fail is not None:
            raise self.fail
        return make_plan(plan_input)


BATTERY = BatteryConfig(ip="127.0.0.1")
PLAN = PlanConfig(reserve_soc_pct=20.0, grid_charge_max_w=2000.0, wear_ct_per_kwh=3.0, peak_import_limit_w=4000.0)


def store_with_batteries(*socs: float | None) -> StatusStore:
    store = StatusStore()
    store.publish(StatusSnapshot(batteries=tuple(
        BatteryStatus(id=n + 1, online=soc is not None, soc_pct=soc, setpoint_w=0, power_w=0.0, mode="idle",
                      max_power_w=2500) for n, soc in enumerate(socs))))
    return store


def test_with_the_pv_forecast_of_past_days_the_history_is_read_as_house_load():
    """Midday history: a 1500 W kitchen − 2000 W PV = −500 W net. With the PV forecast the program had for
    those days, the net history becomes the house's load again: the midday forecast is the kitchen's 1500 W,
    not the night's 400 W base load. Fewer than three days with a recorded forecast: the base-load rule."""
    def day(t: datetime) -> float:
        return -500.0 if 11 <= t.hour < 14 else 400.0

    samples = synthetic_history(7, day)
    past_pv = {int(s.t) - int(s.t) % 900: 2000.0 for s in samples if 11 <= datetime.fromtimestamp(s.t, UTC).hour < 14}
    slots = price_slots(T0.replace(hour=0), 96)
    pv = [1800.0 if 11 <= s.start.hour < 14 else 0.0 for s in slots]
    split = forecast_load(samples, slots, T0.replace(hour=0), pv_w=pv, tz=UTC, past_pv_w=past_pv)
    assert split[12 * 4] == pytest.approx(1500.0)  # the planner subtracts today's 1800 W itself
    assert split[20 * 4] == pytest.approx(400.0)  # night: no PV then or now
    assert split_history(samples, past_pv, UTC) is not None
    last_two = sorted({t // 86400 for t in past_pv})[-2:]
    two_days = {t: w for t, w in past_pv.items() if t // 86400 in last_two}
    assert split_history(samples, two_days, UTC) is None
    fallback = forecast_load(samples, slots, T0.replace(hour=0), pv_w=pv, tz=UTC, past_pv_w=two_days)
    assert fallback[12 * 4] == pytest.approx(400.0)  # the base load, as without any recorded forecast
    # without a PV forecast for the horizon there is nothing to subtract: the net history as before
    assert forecast_load(samples, slots, T0.replace(hour=0), tz=UTC, past_pv_w=past_pv)[12 * 4] == 0.0
    failed = forecast_load(samples, slots, T0.replace(hour=0), pv_w=[None] * 96, tz=UTC, past_pv_w=past_pv)
    assert failed[12 * 4] == 0.0


def test_fleet_model_counts_the_online_batteries_with_a_soc():
    fleet = fleet_model(store_with_batteries(40.0, 60.0, None).latest().batteries, BATTERY, PLAN)
    assert fleet is not None
    assert fleet.capacity_wh == 2 * 5120.0 and fleet.soc_pct == 50.0
    assert fleet.max_charge_w == fleet.max_discharge_w == 5000.0 and fleet.grid_charge_max_w == 2000.0
    assert fleet.reserve_soc_pct == 20.0 and fleet.max_soc_pct == BATTERY.max_soc_for_charge
    assert fleet.min_soc_pct == BATTERY.min_soc_for_discharge
    assert fleet_model(store_with_batteries(None).latest().batteries, BATTERY, PLAN) is None


def test_pv_per_slot_is_the_time_weighted_mean_and_none_without_forecast():
    forecast = [PvSlot(T0, T0 + timedelta(minutes=30), 1000.0), PvSlot(T0 + timedelta(minutes=30),
                                                                       T0 + timedelta(hours=1), 0.0)]
    assert pv_per_slot(forecast, price_slots(T0, 1, timedelta(hours=1))) == (500.0,)
    assert pv_per_slot(forecast, price_slots(T0 + timedelta(hours=2), 1)) == (None,)


def test_the_plan_thread_builds_the_input_publishes_and_replans_on_time_and_on_new_prices():
    wall, mono = FakeClock(T0.timestamp() + 60), FakeClock()
    store = store_with_batteries(30.0, 50.0)
    prices = Prices(price_slots(T0 - Q, 8))  # one slot in the past: left out
    planner = RecordingPlanner()
    wakeup = threading.Event()
    thread = PlanThread(PLAN, BATTERY, store, prices, planner, pv=Pv([PvSlot(T0, T0 + 8 * Q, 800.0)]),
                        history=lambda now: synthetic_history(3, lambda t: 350.0, end=now), wakeup=wakeup,
                        wall_clock=wall, clock=mono, tz=UTC)
    assert thread.due()
    plan = thread.plan_once()
    assert store.plan() is plan and plan.ok and [s.start for s in plan.slots] == [p.start for p in prices.slots[1:]]
    given = planner.inputs[0]
    assert given.now == T0 + timedelta(seconds=60) and given.prices[0].start == T0 and len(given.prices) == 7
    assert given.pv_w == (800.0,) * 7 and all(load == pytest.approx(350.0) for load in given.load_w)
    assert given.fleet.soc_pct == 40.0 and given.peak_import_limit_w == 4000.0
    # the PV forecast of every planned quarter-hour is kept for the load forecast of later days
    assert thread.past_pv_w == {int((T0 + n * Q).timestamp()): 800.0 for n in range(7)}
    assert not thread.due()
    mono.advance(14 * 60)
    assert not thread.due()
    wakeup.set()  # the fetcher got new prices
    assert thread.due()
    thread.plan_once()
    assert not thread.due()
    mono.advance(15 * 60)
    assert thread.due()


@pytest.mark.parametrize(("prices", "socs", "code"), [
    (Prices([]), (50.0,), "plan_no_current_price"),
    (Prices([], "timeout after 10 s"), (50.0,), "plan_prices_failed"),
    (Prices(price_slots(T0 + Q, 4)), (50.0,), "plan_no_current_price"),  # prices start later than now
    (Prices(price_slots(T0, 4)), (None,), "plan_no_battery"),
])
def test_without_current_prices_or_battery_the_plan_is_not_ok_and_retried_soon(prices, socs, code):
    mono = FakeClock()
    planner = RecordingPlanner()
    thread = PlanThread(PLAN, BATTERY, store_with_batteries(*socs), prices, planner,
                        wall_clock=lambda: T0.timestamp(), clock=mono)
    plan = thread.plan_once()
    assert not plan.ok and plan.problem.code == code and plan.slots == ()
    assert planner.inputs == []  # never asked to plan without a current price
    mono.advance(30)
    assert thread.due()


def test_a_failing_planner_is_caught_logged_and_published_as_the_problem(caplog):
    store = store_with_batteries(50.0)
    thread = PlanThread(PLAN, BATTERY, store, Prices(price_slots(T0, 4)), RecordingPlanner(ZeroDivisionError("x")),
                        wall_clock=lambda: T0.timestamp(), clock=FakeClock())
    plan = thread.plan_once()
    assert not plan.ok and "ZeroDivisionError" in str(plan.problem) and store.plan() is plan
    assert "ZeroDivisionError" in caplog.text


def test_a_busy_history_plans_without_the_load_forecast():
    def busy(now: datetime) -> list[HistorySample]:
        raise HistoryBusy("slow disk")

    planner = RecordingPlanner()
    thread = PlanThread(PLAN, BATTERY, store_with_batteries(50.0), Prices(price_slots(T0, 2)), planner,
                        history=busy, wall_clock=lambda: T0.timestamp(), clock=FakeClock())
    assert thread.plan_once().ok
    assert planner.inputs[0].load_w == (None, None) and planner.inputs[0].pv_w == (None, None)


def test_the_thread_runs_until_stop_and_plans_at_once():
    store = store_with_batteries(50.0)
    now = datetime.now(UTC)
    thread = PlanThread(PLAN, BATTERY, store, Prices(price_slots(now - Q / 2, 4)), RecordingPlanner())
    stop = threading.Event()
    runner = threading.Thread(target=thread.run, args=(stop,), daemon=True)
    runner.start()
    from tests.helpers import wait_until
    wait_until(lambda: store.plan() is not None, 20, "the first plan")
    stop.set()
    runner.join(5)
    assert not runner.is_alive()


# ---------------------------------------------------------------------------- GET /api/plan
def app_with(plan: Plan | None, enabled: bool, language: str = "de") -> Any:
    store = StatusStore()
    if plan is not None:
        store.publish_plan(plan)
    if enabled:
        store.init_plan_switch(True)
    return create_app(store, CommandQueue(), WebConfig(host="127.0.0.1", language=language))


def test_api_plan_without_a_plan_section_says_disabled():
    doc = app_with(None, False).test_client().get("/api/plan").get_json()
    assert doc == {"enabled": False, "created": None, "ok": False, "problem": None, "slots": [],
                   "expected_cost_eur": None, "expected_cost_without_plan_eur": None}


def test_api_plan_answers_the_slots_from_the_current_one_in_the_request_language():
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=now.minute % 15)
    reason = i18n.Msg("plan_mode_charge", power=1500)
    slots = [replace(slot(start - Q), reason=reason), replace(slot(start, "charge", 1500, ct=8.5), reason=reason),
             replace(slot(start + Q, "hold"), reason=reason)]
    plan = plan_at(now - timedelta(minutes=1), *slots)
    doc = app_with(plan, True, "en").test_client().get("/api/plan").get_json()
    assert doc["enabled"] and doc["ok"] and doc["problem"] is None
    assert doc["expected_cost_eur"] == 1.0 and doc["expected_cost_without_plan_eur"] == 1.5
    assert [s["mode"] for s in doc["slots"]] == ["charge", "hold"]  # the past slot is left out
    first = doc["slots"][0]
    assert set(first) == {"start", "end", "import_ct_per_kwh", "feed_in_ct_per_kwh", "mode", "power_w", "soc_pct",
                          "pv_w", "load_w", "reason"}
    assert datetime.fromisoformat(first["start"]) == start and datetime.fromisoformat(first["start"]).utcoffset() \
        is not None
    assert first["power_w"] == 1500 and first["import_ct_per_kwh"] == 8.5 and first["reason"] == "charge at 1500 W"
    assert datetime.fromisoformat(doc["created"]) == now - timedelta(minutes=1)
    german = app_with(plan, True, "de").test_client().get("/api/plan").get_json()
    assert german["slots"][0]["reason"] == "Laden mit 1500 W"


def test_api_plan_shows_a_stale_plan_as_not_ok_with_the_problem():
    now = datetime.now(UTC)
    plan = plan_at(now - timedelta(hours=1), slot(now - Q / 2))
    doc = app_with(plan, True, "en").test_client().get("/api/plan").get_json()
    assert not doc["ok"] and "60 minutes old" in doc["problem"]
    pending = app_with(None, True, "en").test_client().get("/api/plan").get_json()
    assert pending["enabled"] and not pending["ok"] and "being computed" in pending["problem"]


# ---------------------------------------------------------------------------- the config section
BASE = {"shelly": {"ip": "127.0.0.1"}, "battery": {"ip": "127.0.0.1"}}


def test_plan_section_defaults_and_values():
    assert parse_config(BASE).plan is None
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "plan": {"enabled": True}})
    assert "plan.enabled" in str(err.value) and "tariff" in str(err.value)
    cfg = parse_config({**BASE, "plan": {"enabled": False, "reserve_soc_pct": 30, "peak_import_limit_w": 3000}})
    assert cfg.plan == PlanConfig(False, 30.0, 2500.0, 3.0, 3000.0)


@pytest.mark.parametrize(("plan", "words"), [
    ({"enabled": False, "reserve_soc_pct": 5}, "plan.reserve_soc_pct: (5) must be within battery.min_soc"),
    ({"enabled": False, "reserve_soc_pct": 120}, "plan.reserve_soc_pct: must be a number 0..100"),
    ({"enabled": False, "grid_charge_max_w": -1}, "plan.grid_charge_max_w"),
    ({"enabled": False, "wear_ct_per_kwh": "3"}, "plan.wear_ct_per_kwh"),
    ({"enabled": False, "peak_import_limit_w": 0}, "plan.peak_import_limit_w: must be a number above 0"),
    ({"enabled": "yes"}, "plan.enabled: must be true or false"),
    ({"enabled": False, "reserve": 20}, "plan.reserve: unknown key"),
])
def test_plan_section_errors_name_the_key(plan, words):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "plan": plan})
    assert words in str(err.value)


def test_set_mode_request_auto_is_a_manual_auto():
    """A POST of auto is stored as a manual auto: effective_mode hands it to the plan (precedence table)."""
    state = ModeState.from_request(ModeRequest(AUTO), "api", 0.0)
    assert effective_mode(state, CHARGING, T0).mode.source == "plan"
    assert plan_json(None, True, T0)["problem"] == i18n.Msg("plan_pending")


# ---------------------------------------------------------------------------- the control loop on the simulator
def test_the_control_applies_the_plan_below_every_manual_mode_on_the_simulator(tmp_path):
    """A plan charging now: the batteries charge from the grid with source "plan"; a manual hold wins; auto
    gives the plan back within the same cycle; a plan gone stale leaves auto with the problem in the errors."""
    from tests.test_modes import rig_on_simulator

    with rig_on_simulator(tmp_path) as rig:
        store = rig.store
        wall = rig.wall
        rig.loop.plan = store.plan  # what main wires when a plan section is configured
        now = datetime.fromtimestamp(wall[0], UTC)
        start = now - timedelta(minutes=5)
        store.publish_plan(plan_at(now, slot(start, "charge", 1200, ct=6.0), slot(start + Q, "hold")))

        def charging() -> bool:
            return sum(rig.sim.unit(i).commanded_w for i in (1, 2)) == -1200

        rig.cycle_until(charging, "the plan's charge of 1200 W")
        mode = store.latest().operating_mode
        assert mode["mode"] == "charge" and mode["power_w"] == 1200 and mode["source"] == "plan"
        assert datetime.fromisoformat(mode["until"]) == start + Q
        assert rig.loop.mode == ModeState()  # the manual mode (and the mode file) stay auto
        # "auto" set by hand while the plan drives: after the cycle GET /api/mode shows the plan again
        rig.loop.handle_command(SetMode(request=ModeRequest(AUTO), source="dashboard"))
        rig.loop.cycle()
        assert store.latest().operating_mode["source"] == "plan"
        rig.cycle_until(charging, "still charging")

        rig.loop.handle_command(SetMode(request=ModeRequest(HOLD), source="api"))
        assert store.latest().operating_mode["source"] == "api"
        rig.loop.cycle()
        assert rig.loop.active.mode.mode is HOLD  # the law ends the charge once it has a fresh meter sample
        rig.cycle_until(lambda: all(rig.sim.unit(i).commanded_w >= 0 for i in (1, 2)), "the hold ends the charge")
        assert not rig.discharging()
        assert store.latest().operating_mode == {"mode": "hold", "power_w": None, "until": None, "source": "api"}

        rig.loop.handle_command(SetMode(request=ModeRequest(AUTO), source="api"))
        rig.loop.cycle()  # within one cycle the plan is in force again
        assert store.latest().operating_mode["source"] == "plan" and rig.loop.active.mode.mode is CHARGE
        rig.cycle_until(charging, "the plan's charge again")

        # a manual hold with an expiry: back to the plan in the cycle it expires
        rig.loop.handle_command(SetMode(request=ModeRequest(HOLD, None, 1), source="mqtt"))
        rig.loop.cycle()
        assert rig.loop.active.mode.mode is HOLD  # the law stops the charge once it has a fresh sample
        rig.cycle_until(lambda: not charging(), "the manual hold stops the plan's charge")
        rig.skip(61)
        rig.loop.cycle()
        assert store.latest().operating_mode["source"] == "plan" and rig.loop.active.mode.mode is CHARGE
        rig.cycle_until(charging, "the plan's charge after the expiry")

        # the next slot (hold) follows the clock without a new plan
        wall[0] = (start + Q).timestamp() + 1
        rig.loop.cycle()
        assert store.latest().operating_mode["mode"] == "hold"
        rig.cycle_until(lambda: not charging(), "the plan's hold slot ends the charge")
        assert store.status_json()["errors"] == []

        # no slot for now and the plan too old: auto everywhere, the problem in /api/status errors
        wall[0] = (start + 3 * Q).timestamp()
        rig.cycle_until(rig.discharging, "auto discharges into the 900 W load again")
        assert store.latest().operating_mode["source"] == "default"
        errors = store.status_json("en")["errors"]
        assert any("minutes old" in e for e in errors), errors
        # a fresh plan clears it
        fresh = datetime.fromtimestamp(wall[0], UTC)
        store.publish_plan(plan_at(fresh, slot(fresh, "charge", 1200)))
        rig.cycle_until(charging, "the fresh plan charges")
        assert store.status_json()["errors"] == []


def test_the_first_plan_waits_for_the_fleet_soc_at_start():
    mono = FakeClock()
    store = store_with_batteries(None)
    thread = PlanThread(PLAN, BATTERY, store, Prices(price_slots(T0, 2)), RecordingPlanner(),
                        wall_clock=lambda: T0.timestamp(), clock=mono)
    assert not thread.due()  # the control thread has not read a SoC yet
    store.publish(StatusSnapshot(batteries=store_with_batteries(50.0).latest().batteries))
    assert thread.due()
    store.publish(StatusSnapshot(batteries=store_with_batteries(None).latest().batteries))
    mono.advance(61)
    assert thread.due()  # no SoC after a minute: plan anyway (and say why it is not ok)
    assert thread.plan_once().problem.code == "plan_no_battery"


def test_the_first_plan_waits_for_the_first_price_answer_at_start():
    mono = FakeClock()
    prices = Prices([])
    thread = PlanThread(PLAN, BATTERY, store_with_batteries(50.0), prices, RecordingPlanner(),
                        wall_clock=lambda: T0.timestamp(), clock=mono)
    assert not thread.due()  # the fetcher has not answered yet
    prices.last_error = "timeout"
    assert thread.due()  # it failed: plan now, and say why
    prices.last_error, prices.slots = None, price_slots(T0, 2)
    assert thread.due()


def test_end_to_end_the_plan_charges_in_a_cheap_slot_a_manual_hold_wins_and_auto_gives_it_back():
    """The simulator, the control thread, main's plan wiring (real planner, real history) and the web API:
    a cheap current slot before an expensive evening makes the batteries charge from the grid with source
    "plan"; POST hold wins; POST auto hands the control back to the plan."""
    import main
    from control.control_loop import ControlLoop
    from planning.plan_thread import PlanFeeds
    from simulator.world import Simulation, UnitSpec
    from tests.helpers import sim_config, wait_until

    with Simulation(units=[UnitSpec(1, soc_pct=30.0), UnitSpec(2, soc_pct=40.0)]) as sim:
        sim.set_load_w(600.0)
        sim.set_pv_w(0.0)
        cfg = replace(sim_config(sim, [1, 2]), plan=PlanConfig(reserve_soc_pct=20.0, grid_charge_max_w=2000.0))
        now = datetime.now(UTC)
        start = now - timedelta(minutes=now.minute % 15, seconds=now.second, microseconds=now.microsecond)
        # two cheap slots: a quarter-hour boundary during the test leaves a cheap one
        prices = Prices([PriceSlot(start + n * Q, start + (n + 1) * Q, 5.0 if n < 2 else 45.0, 0.0)
                         for n in range(24)])
        store, commands, stop = StatusStore(), CommandQueue(), threading.Event()
        loop = ControlLoop(cfg, main.build_meter(cfg), main.build_fleet(cfg), store, commands, plan=store.plan)
        history = History(":memory:", store=store)
        store.init_plan_switch(True)
        client = create_app(store, commands, cfg.web, max_charge_power_w=lambda: loop.max_charge_power_w,
                            history=history).test_client()
        control = threading.Thread(target=loop.run, args=(stop,), daemon=True)
        control.start()
        planner = main.start_plan(cfg, store, history, stop, PlanFeeds(prices, None, threading.Event()))
        try:
            def charging_from_the_plan() -> bool:
                mode = client.get("/api/mode").get_json()
                total_w = sum(sim.unit(i).commanded_w for i in (1, 2))
                return mode["source"] == "plan" and mode["mode"] == "charge" and total_w <= -1000

            try:
                wait_until(charging_from_the_plan, 60, "the plan charges the batteries in the cheap slot")
            except AssertionError as exc:  # say what the plan and the control did instead
                raise AssertionError(f"{exc}; mode {client.get('/api/mode').get_json()}, plan "
                                     f"{client.get('/api/plan').get_json()}, status {store.latest()}") from None
            wait_until(lambda: sim.true_grid_power_w() > 1200, 30, "the charge comes from the grid")
            doc = client.get("/api/plan").get_json()
            assert doc["ok"] and doc["slots"][0]["mode"] == "charge" and doc["slots"][0]["import_ct_per_kwh"] == 5.0
            assert all(s["mode"] != "charge" for s in doc["slots"] if s["import_ct_per_kwh"] > 5)  # not at 45 ct

            assert client.post("/api/mode", json={"mode": "hold"}).status_code == 200
            wait_until(lambda: all(sim.unit(i).commanded_w == 0 for i in (1, 2)), 30, "the manual hold wins")
            assert client.get("/api/mode").get_json()["source"] == "api"

            assert client.post("/api/mode", json={"mode": "auto"}).status_code == 200
            wait_until(charging_from_the_plan, 30, "auto gives the control back to the plan")
            assert store.status_json()["errors"] == []
        finally:
            stop.set()
            commands.wakeup.set()
            control.join(10)
            planner.join(5)
            history.close()
        assert not control.is_alive() and not planner.is_alive()


class _PriceServer:
    """An Energy-Charts-shaped price server on 127.0.0.1: 15-minute prices around now, the current and the next
    quarter-hour cheap (−5 €/MWh), the rest expensive (500 €/MWh)."""

    def __init__(self) -> None:
        import http.server
        import json as json_module

        now = datetime.now(UTC)
        start = now - timedelta(minutes=now.minute % 15, seconds=now.second, microseconds=now.microsecond)
        stamps = [int((start + n * Q).timestamp()) for n in range(-8, 48)]
        body = json_module.dumps({"license_info": "test", "unix_seconds": stamps, "unit": "EUR / MWh",
                                  "price": [-5.0 if 0 <= n < 2 else 500.0 for n in range(-8, 48)]}).encode()
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_main_with_a_tariff_plans_charges_cheaply_lets_a_manual_hold_win_and_takes_over_again(tmp_path):
    """main.py as its own process on the simulator, the tariff pointing at a loopback price server with a cheap
    current quarter-hour: the batteries charge from the grid with source "plan"; a manual hold wins; auto gives
    the control back to the plan."""
    pytest.importorskip("planning.fetcher")  # the price sources and their fetcher (planning/fetcher.py)
    import json

    import requests

    from simulator.world import Simulation, UnitSpec
    from tests.helpers import free_port, running_main, sim_config_data, wait_until

    prices = _PriceServer()
    try:
        with Simulation(units=[UnitSpec(1, soc_pct=30.0), UnitSpec(2, soc_pct=40.0)]) as sim:
            sim.set_load_w(500.0)
            sim.set_pv_w(0.0)
            port = free_port()
            config_path = tmp_path / "config.json"
            config_path.write_text(json.dumps(sim_config_data(
                sim, [1, 2], web={"port": port}, logging={"file": str(tmp_path / "logs" / "marstek.log")},
                history={"path": str(tmp_path / "history.sqlite3")},
                tariff={"type": "energy_charts", "url": prices.url, "markup_ct_per_kwh": 15.0, "vat_pct": 19,
                        "feed_in_ct_per_kwh": 0.0},
                plan={"enabled": True, "reserve_soc_pct": 20, "grid_charge_max_w": 2000})), encoding="utf-8")
            base = f"http://127.0.0.1:{port}"

            def get(path: str) -> Any:
                try:
                    return requests.get(base + path, timeout=2).json()
                except requests.RequestException:
                    return None

            def charging_from_the_plan() -> bool:
                mode = get("/api/mode")
                return bool(mode and mode["source"] == "plan" and mode["mode"] == "charge"
                            and sum(sim.unit(i).commanded_w for i in (1, 2)) <= -1000)

            with running_main(config_path):
                try:
                    wait_until(charging_from_the_plan, 60, "the plan charges in the cheap quarter-hour")
                except AssertionError as exc:  # say what the plan and the control did instead
                    raise AssertionError(f"{exc}; mode {get('/api/mode')}, plan {get('/api/plan')}, "
                                         f"status {get('/api/status')}") from None
                assert prices.requests and prices.requests[0].startswith("/price?bzn=DE-LU")
                wait_until(lambda: sim.true_grid_power_w() > 1000, 30, "the charge comes from the grid")
                plan = get("/api/plan")
                assert plan["enabled"] and plan["ok"] and plan["slots"][0]["mode"] == "charge"

                answer = requests.post(base + "/api/mode", json={"mode": "hold"}, timeout=10)
                assert answer.status_code == 200 and answer.json()["source"] == "api"
                wait_until(lambda: all(sim.unit(i).commanded_w == 0 for i in (1, 2)), 30, "the manual hold wins")

                assert requests.post(base + "/api/mode", json={"mode": "auto"}, timeout=10).status_code == 200
                wait_until(charging_from_the_plan, 30, "auto gives the control back to the plan")
                assert get("/api/status")["errors"] == []
    finally:
        prices.close()


def test_load_profile_follows_local_time_across_the_dst_change():
    """The evening peak at 18:00-21:00 local time stays there although the days before 29 March were UTC+1."""
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    end = datetime(2026, 3, 31, 12, 0, tzinfo=berlin).astimezone(UTC)
    samples = synthetic_history(10, lambda t: evening_peak(t.astimezone(berlin)), end=end)
    evening = datetime(2026, 3, 31, 18, 0, tzinfo=berlin).astimezone(UTC)
    load = forecast_load(samples, price_slots(evening - Q, 2), end, tz=berlin)
    assert load[0] == pytest.approx(300.0) and load[1] == pytest.approx(1500.0)


def test_the_diagnostics_bundle_carries_the_plan():
    from integrations.diagnostics import Diagnostics

    cfg = replace(parse_config(BASE), plan=PlanConfig(enabled=True))
    store = StatusStore()
    store.init_plan_switch(True)  # main: a plan section (with a tariff) sets up the switch
    now = datetime.now(UTC)
    store.publish_plan(plan_at(now, replace(slot(now - Q / 2, "charge", 900), reason=i18n.Msg("plan_mode_charge",
                                                                                              power=900))))
    plan = Diagnostics(cfg, store).bundle()["plan"]
    assert plan["enabled"] and plan["ok"] and plan["slots"][0]["reason"] == "charge at 900 W"
    assert Diagnostics(parse_config(BASE), StatusStore()).bundle()["plan"]["enabled"] is False


def test_a_damaged_plan_never_stops_the_control(tmp_path):
    """A plan with naive times (a planner bug) cannot be compared with now: the control runs auto and says so."""
    from tests.test_modes import rig_on_simulator

    with rig_on_simulator(tmp_path) as rig:
        rig.loop.plan = rig.store.plan
        naive = datetime(2027, 1, 15, 8, 0)
        rig.store.publish_plan(plan_at(naive, slot(naive, "charge", 1000)))
        rig.cycle_until(rig.discharging, "auto discharges into the load")
        assert rig.store.latest().operating_mode["source"] == "default"
        assert rig.store.latest().control_state == "active"
        assert any("TypeError" in e for e in rig.store.status_json("en")["errors"])


def test_api_plan_is_readable_without_login_unless_read_only_is_off():
    def app(read_only: bool) -> Any:
        store = StatusStore()
        store.init_plan_switch(True)
        return create_app(store, CommandQueue(), WebConfig(host="127.0.0.1", password="pw",
                                                           read_only_without_login=read_only))

    assert app(True).test_client().get("/api/plan").status_code == 200
    assert app(False).test_client().get("/api/plan").status_code == 401
