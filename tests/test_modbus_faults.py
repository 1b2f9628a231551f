"""Modbus faults: slow, silent and exception-answering units, a gateway that closes idle connections or
disappears. The others keep regulating; the faulty one shows offline and rejoins by itself."""

from __future__ import annotations

import pytest

from battery_client import MarstekGateway
from control.devices import BatteryError
from simulator.world import Simulation, UnitSpec
from tests.helpers import wait_until
from tests.loop_rig import (
    QUICK,
    TARGET_W,
    Rig,
    battery_doc,
    discharging,
    fake_clock,
    fault_config,
    make_loop,
    run_until,
)
from zero_feed_control import Status


@pytest.mark.slow
def test_slow_unit_within_the_timeout_regulates_beyond_it_goes_offline_and_rejoins(rig: Rig) -> None:
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=70.0)], **QUICK)
    sim.set_load_w(3400.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1, 2]), clock)  # battery.timeout_seconds 0.5
    run_until(loop, clock, lambda: all(discharging(u) for u in sim.units), 30, "both discharging")

    sim.unit(2).slow_s = 0.15  # slow, but within the timeout: nothing to complain about
    for _ in range(3):
        loop.cycle()
        clock.advance(1.0)
        assert loop.unit(2).online and not loop.store.status_json()["errors"]

    sim.unit(2).slow_s = 1.5  # beyond the timeout: a failure
    run_until(loop, clock, lambda: not loop.unit(2).online, 20, "slow battery 2 offline", step_s=1.0)
    assert battery_doc(loop, 2)["online"] is False
    assert any("battery 2" in e.lower() for e in loop.store.status_json()["errors"])
    # Battery 1 keeps regulating on its own: a load step is covered (battery 2 holds its last power).
    sim.set_load_w(2600.0)
    run_until(loop, clock, lambda: abs(sim.true_grid_power_w() - TARGET_W) < 60, 30,
              "battery 1 regulates the grid to the target alone", step_s=1.0)
    assert loop.unit(1).online and battery_doc(loop, 1)["online"] is True

    sim.unit(2).slow_s = 0.0
    clock.advance(30.0)  # past the longest per-unit back-off
    run_until(loop, clock, lambda: loop.unit(2).online, 20, "battery 2 rejoins", step_s=1.0)
    run_until(loop, clock, lambda: not loop.store.status_json()["errors"], 20, "no errors left", step_s=1.0)
    assert battery_doc(loop, 2)["online"] is True


@pytest.mark.slow
@pytest.mark.parametrize(("register_set", "close_after_exception"), [("v2", False), ("v3", True)])
def test_unit_answering_with_exceptions_goes_offline_the_others_regulate_and_it_rejoins(
    rig: Rig, register_set: str, close_after_exception: bool
) -> None:
    units = [UnitSpec(1, register_set, soc_pct=50.0), UnitSpec(2, register_set, soc_pct=70.0)]
    sim = rig.simulation(units=units, close_after_exception=close_after_exception, **QUICK)
    sim.set_load_w(3400.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1, 2], register_set=register_set, rs485_gateway=True), clock)  # no LAN port
    run_until(loop, clock, lambda: all(discharging(u) for u in sim.units), 30, "both discharging")

    sim.unit(2).fail_with_exception = 4  # "device failure" for every request
    run_until(loop, clock, lambda: not loop.unit(2).online, 20, "battery 2 offline", step_s=1.0)
    errors = loop.store.status_json()["errors"]
    assert any("battery 2" in e.lower() and "exception 4" in e for e in errors), errors
    assert battery_doc(loop, 2)["online"] is False
    sim.set_load_w(2600.0)
    run_until(loop, clock, lambda: abs(sim.true_grid_power_w() - TARGET_W) < 60, 30,
              "battery 1 regulates the grid to the target alone", step_s=1.0)
    assert loop.unit(1).online, loop.unit(1).error  # the closed connection is not its fault

    sim.unit(2).fail_with_exception = None
    clock.advance(30.0)
    run_until(loop, clock, lambda: loop.unit(2).online and loop.unit(2).setpoint_w > 0, 20,
              "battery 2 rejoins and gets a setpoint again", step_s=1.0)
    run_until(loop, clock, lambda: sim.unit(2).discharge_power_w == loop.unit(2).setpoint_w, 10,
              "battery 2 follows its setpoint")


@pytest.mark.parametrize("close_after_exception", [False, True])
def test_exception_answer_does_not_cost_the_next_unit_anything(close_after_exception: bool) -> None:
    """v3 firmware closes the connection after an exception; the next request to another unit must not fail."""
    with Simulation(units=[UnitSpec(1), UnitSpec(2)], close_after_exception=close_after_exception) as sim:
        gateway = MarstekGateway("127.0.0.1", sim.modbus_port, timeout_s=0.5)
        try:
            sim.unit(2).fail_with_exception = 4
            for _ in range(3):
                gateway.forget(2)  # no back-off between these deliberate tries
                with pytest.raises(BatteryError, match="exception 4"):
                    gateway.read(2)
                assert gateway.read(1).soc_pct == pytest.approx(50.0)
                gateway.write_setpoint(1, 300)
            assert sim.unit(1).discharge_power_w == 300
        finally:
            gateway.close()


@pytest.mark.slow
@pytest.mark.parametrize("register_set", ["v3"])  # an RS485 gateway that restarts (v2) behaves the same
def test_gateway_closing_the_idle_connection_is_no_battery_failure(rig: Rig, register_set: str) -> None:
    """A gateway restart or the v3 firmware's Ethernet reset every 30 min (marstek-modbus.md §9) closes the
    client's idle connection. The next request finds it closed: that says nothing about the battery. It used
    to count as a failure of whichever unit came next: offline for its 2 s back-off, "no battery online"."""
    sim = rig.simulation(units=[UnitSpec(1, register_set, soc_pct=60.0)], **QUICK)
    sim.set_load_w(1500.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1], register_set=register_set), clock)
    run_until(loop, clock, lambda: discharging(sim.unit(1)), 30, "discharging")
    for _ in range(3):
        assert sim.drop_modbus_connections() == 1
        for _ in range(2):
            loop.cycle()
            clock.advance(1.0)
            assert loop.unit(1).online, loop.unit(1).error
            assert loop.last_decision is not None and loop.last_decision.status is not Status.NO_BATTERY
            assert loop.store.status_json()["control_state"] == "active"
            assert discharging(sim.unit(1))


@pytest.mark.slow
def test_one_silent_unit_shows_offline_the_other_regulates_and_it_rejoins(sim):
    loop = make_loop(sim, [1, 2])
    sim.set_load_w(1200.0)
    try:
        sim.unit(2).silent = True
        wait_until(lambda: (loop.cycle(), sim.unit(1).power_w > 1000)[-1], 30, "unit 1 regulates alone")
        doc = loop.store.status_json()
        assert [b["online"] for b in doc["batteries"]] == [True, False]
        assert any("battery 2" in e.lower() for e in doc["errors"])
        sim.unit(2).silent = False
        wait_until(lambda: (loop.cycle(), loop.unit(2).online)[-1], 30, "unit 2 rejoins")
    finally:
        loop.stop_all("test")
        loop.bus.close()
        loop.meter.close()


@pytest.mark.slow
def test_gateway_lost_and_back_mid_run(tmp_path):
    with Simulation(units=[UnitSpec(1)]) as first:
        port = first.modbus_port
        first.set_load_w(900.0)
        loop = make_loop(first, [1])
        wait_until(lambda: (loop.cycle(), first.unit(1).power_w > 700)[-1], 20, "discharging")
        shelly_port = first.shelly_port
    # The gateway (and meter) are gone: the loop keeps running and reports the battery offline.
    loop.cycle()
    assert not loop.unit(1).online
    with Simulation(units=[UnitSpec(1)]) as second:
        second.stop()
        second.start(modbus_port=port, shelly_port=shelly_port, ecotracker_port=None)
        second.set_load_w(900.0)
        try:
            wait_until(lambda: (loop.cycle(), second.unit(1).power_w > 700)[-1], 45, "regulating after reconnect")
            assert loop.unit(1).online
        finally:
            loop.stop_all("test")
            loop.bus.close()
            loop.meter.close()


@pytest.mark.slow
@pytest.mark.parametrize("register_set", ["v2", "v3"])
def test_firmware_network_reset_is_bridged_and_regulation_resumes_with_the_full_state(
        rig: Rig, register_set: str) -> None:
    """Firmware v150 without cloud access resets its network chip every 1800 s (LAN) for 2-5 s
    (marstek-modbus.md section 9). The client retries at once and then every <= 1 s, the battery is shown
    "reconnecting" (not offline) for up to 10 s, and the first cycle with the gateway back writes every
    control register (a v3 LAN port has reset force mode and setpoints on the reconnect)."""
    sim = rig.simulation(units=[UnitSpec(1, register_set, soc_pct=60.0)], **QUICK)
    sim.set_load_w(1200.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1], register_set=register_set), clock)
    run_until(loop, clock, lambda: discharging(sim.unit(1)), 30, "discharging")
    for _ in range(2):
        sim.gateway.network_reset()
        attempts_before = len(sim.unit(1).write_log)
        for _ in range(8):  # 4 s of outage
            loop.cycle()
            clock.advance(0.5)
            doc = battery_doc(loop, 1)
            assert doc["online"] is True and "reconnect" in doc["note"], doc
            assert not loop.store.status_json()["errors"]
        assert len(sim.unit(1).write_log) == attempts_before  # nothing reached it
        sim.gateway.network_back()
        if register_set == "v3":
            wait_until(lambda: sim.modbus_port is not None, 5, "listening again")
        loop.cycle()
        clock.advance(0.5)
        assert loop.unit(1).online, loop.unit(1).error
        run_until(loop, clock, lambda: discharging(sim.unit(1)) and sim.unit(1).rs485_control, 3,
                  "regulating again", step_s=0.5)


def test_gateway_unreachable_past_ten_seconds_shows_the_battery_offline(rig: Rig) -> None:
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)], **QUICK)
    sim.set_load_w(1200.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1]), clock)
    run_until(loop, clock, lambda: discharging(sim.unit(1)), 30, "discharging")
    sim.gateway.network_reset()
    reset_s = clock()
    run_until(loop, clock, lambda: battery_doc(loop, 1)["online"] is False, 15, "shown offline", step_s=0.5)
    assert clock() - reset_s >= 10.0  # not before the grace
    assert any("unreachable" in e for e in loop.store.status_json()["errors"])
    sim.gateway.network_back()
    clock.advance(30.0)
    run_until(loop, clock, lambda: loop.unit(1).online and discharging(sim.unit(1)), 10, "back")
