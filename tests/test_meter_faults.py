"""Meter faults in the control loop: every fault kind of ``Simulation.set_meter_fault`` is held for
``max_failures_before_stop - 1`` cycles, then every battery is stopped, the status says what and since when,
and regulation resumes by itself when the meter recovers."""

from __future__ import annotations

from datetime import datetime

import pytest

from simulator.world import UnitSpec
from tests.loop_rig import (
    MAX_FAILURES,
    QUICK,
    Rig,
    discharging,
    fake_clock,
    fault_config,
    run_until,
    stopped,
)
from zero_feed_control import Status

METER_FAULTS = [
    ("timeout", "no answer"),
    ("http500", "HTTP 500"),
    ("not_json", "not JSON"),
    ("missing_field", "missing"),
    ("non_numeric", "not a number"),
    ("nan", "NaN"),
    ("absurd", "implausible"),
    ("frozen", "frozen"),
    ("refused", "refused"),  # connection refused: nothing listens on the meter's port any more
]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "fragment"), METER_FAULTS, ids=[k for k, _ in METER_FAULTS])
def test_meter_fault_stops_every_battery_after_max_failures_and_regulation_resumes(
    rig: Rig, kind: str, fragment: str
) -> None:
    units = [UnitSpec(1, soc_pct=60.0), UnitSpec(2, soc_pct=60.0)]
    # A lively meter (new sample every 0.1 s, 5 W noise), so only the "frozen" fault looks frozen.
    sim = rig.simulation(units=units, meter_delay_s=3.0, **QUICK)
    sim.set_load_w(3400.0)  # above what one battery should carry: both discharge
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1, 2]), clock)
    run_until(loop, clock, lambda: all(discharging(u) for u in sim.units), 30, "both batteries discharging")

    sim.set_meter_fault(kind)
    # One second of test time per cycle; "frozen" counts only after shelly.max_frozen_seconds (5 s).
    run_until(loop, clock, lambda: not loop.meter_ok, 20, f"meter fault {kind} noticed", step_s=1.0)
    doc = loop.store.status_json()
    since = doc["meter_error_since"]
    assert since is not None
    datetime.fromisoformat(since)
    for failure in range(1, MAX_FAILURES):
        assert loop.last_decision is not None and loop.last_decision.status is Status.METER_RETRY, failure
        assert all(discharging(u) for u in sim.units), f"a single failed read ({failure}) stopped a battery"
        loop.cycle()
        clock.advance(1.0)
    assert loop.last_decision is not None and loop.last_decision.status is Status.METER_FAILED
    assert all(stopped(u) for u in sim.units), [(u.force_mode, u.discharge_power_w) for u in sim.units]

    doc = loop.store.status_json()
    assert doc["meter_ok"] is False
    assert doc["control_state"] == "error"
    assert doc["grid_power_w"] is None
    meter_errors = [e for e in doc["errors"] if "meter" in e.lower()]
    assert meter_errors and fragment in meter_errors[0], doc["errors"]
    assert doc["meter_error_since"] == since  # the time the trouble started, not the latest failure
    assert all(b["setpoint_w"] == 0 for b in doc["batteries"])
    loop.cycle()  # still failing: stays stopped
    assert all(stopped(u) for u in sim.units)

    sim.set_meter_fault(None)
    run_until(loop, clock, lambda: all(discharging(u) for u in sim.units), 30, "regulating again")
    doc = loop.store.status_json()
    assert doc["meter_ok"] is True and doc["meter_error_since"] is None
    assert doc["control_state"] == "active"
    assert not [e for e in doc["errors"] if "meter" in e.lower()]
