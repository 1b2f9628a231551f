"""Faults survived: the control loop in-process against the simulator, the watchdog, crash containment, --check."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from battery_client import MarstekGateway
from config_loader import Config, parse_config
from control_loop import ControlLoop
from devices import GridReading
from main import build_bus, build_meter, emergency_bus
from simulator import Simulation, UnitSpec
from status_store import CommandQueue, StatusStore
from tests.helpers import wait_until
from watchdog import Watchdog, emergency_stop
from zero_feed_control import ControlParams

LAW = ControlParams()

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """Monotonic time the test advances by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def sim_config(sim: Simulation, ids: list[int], **control: object) -> Config:
    return parse_config({
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1, "max_failures_before_stop": 2},
        "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": ids, "timeout_seconds": 0.5},
        "control": {"poll_interval_seconds": 1, **control},
        "web": {"host": "127.0.0.1", "port": 8080},
    })


@pytest.fixture
def sim() -> Iterator[Simulation]:
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)], meter_noise_w=5.0) as s:
        s.set_load_w(300.0)
        yield s


def make_loop(sim: Simulation, ids: list[int], clock=None, meter=None) -> ControlLoop:
    cfg = sim_config(sim, ids)
    kwargs = {"clock": clock} if clock else {}
    return ControlLoop(cfg, meter or build_meter(cfg, clock or time.monotonic), build_bus(cfg), StatusStore(),
                       CommandQueue(), **kwargs)


# ---------------------------------------------------------------------------- firmware quirks
def test_battery_that_acknowledges_but_delivers_nothing_is_paused_and_retried(sim):
    clock = FakeClock()
    loop = make_loop(sim, [1, 2], clock=clock)
    sim.unit(1).delivers_nothing = True
    sim.set_load_w(3200.0)  # both batteries needed
    try:
        for _ in range(int(LAW.no_delivery_after_s) + 8):
            loop.cycle()
            clock.advance(1.0)
        assert loop.controller.limits_w(1).get(1) == 0.0  # no discharge asked of it for now
        assert sim.unit(1).force_mode == 0  # stopped when paused
        doc = loop.store.status_json()
        note = next(b["note"] for b in doc["batteries"] if b["id"] == 1)
        assert "delivers nothing" in note
        # The other battery takes over the load.
        wait_until(lambda: (loop.cycle(), clock.advance(1.0), sim.unit(2).power_w > 2000)[-1], 30, "unit 2 covers")
        # After the pause the battery is tried again.
        clock.advance(LAW.no_delivery_hold_s)
        sim.unit(1).delivers_nothing = False
        wait_until(lambda: (loop.cycle(), clock.advance(1.0), 1 not in loop.controller.limits_w(1))[-1], 10,
                   "asked again after its pause")
    finally:
        loop.stop_all("test")
        loop.bus.close()
        loop.meter.close()


def test_rs485_control_dropped_is_reasserted_by_the_loop(sim, caplog):
    loop = make_loop(sim, [1])
    sim.set_load_w(800.0)
    try:
        wait_until(lambda: (loop.cycle(), sim.unit(1).force_mode == 2)[-1], 20, "discharging")
        sim.unit(1).drop_rs485()
        with caplog.at_level("WARNING"):
            wait_until(lambda: (loop.cycle(), sim.unit(1).rs485_control)[-1], 20, "RS485 control re-asserted")
        assert "RS485" in caplog.text
    finally:
        loop.stop_all("test")
        loop.bus.close()
        loop.meter.close()


def test_bms_cut_off_near_empty_stops_discharge(sim):
    loop = make_loop(sim, [1])
    sim.unit(1).set_soc(11.5)
    sim.set_load_w(1500.0)
    try:
        wait_until(lambda: (loop.cycle(), sim.unit(1).force_mode == 2)[-1], 20, "discharging")
        sim.unit(1).set_soc(10.0)  # at the BMS floor and below min_soc_for_discharge
        loop.bus.soc_interval_s = 0.0  # read the SoC every cycle for this test
        wait_until(lambda: (loop.cycle(), sim.unit(1).force_mode == 0)[-1], 20, "discharge stopped")
        assert loop.last_decision is not None and "minimum" in loop.last_decision.reason
    finally:
        loop.stop_all("test")
        loop.bus.close()
        loop.meter.close()


# ---------------------------------------------------------------------------- Modbus faults
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
        wait_until(lambda: (loop.cycle(), loop.batteries[2].online)[-1], 30, "unit 2 rejoins")
    finally:
        loop.stop_all("test")
        loop.bus.close()
        loop.meter.close()


def test_gateway_lost_and_back_mid_run(tmp_path):
    with Simulation(units=[UnitSpec(1)]) as first:
        port = first.modbus_port
        first.set_load_w(900.0)
        loop = make_loop(first, [1])
        wait_until(lambda: (loop.cycle(), first.unit(1).power_w > 700)[-1], 20, "discharging")
        shelly_port = first.shelly_port
    # The gateway (and meter) are gone: the loop keeps running and reports the battery offline.
    loop.cycle()
    assert not loop.batteries[1].online
    with Simulation(units=[UnitSpec(1)]) as second:
        second.stop()
        second.start(modbus_port=port, shelly_port=shelly_port, ecotracker_port=None)
        second.set_load_w(900.0)
        try:
            wait_until(lambda: (loop.cycle(), second.unit(1).power_w > 700)[-1], 45, "regulating after reconnect")
            assert loop.batteries[1].online
        finally:
            loop.stop_all("test")
            loop.bus.close()
            loop.meter.close()


# ---------------------------------------------------------------------------- process faults
class BrokenMeter:
    """A meter driver with a bug (raises something that is not a MeterError) until repaired."""

    name = "shelly"

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.broken = False

    def read(self) -> GridReading:
        if self.broken:
            raise ZeroDivisionError("bug in a driver")
        import time

        return GridReading(self.sim.true_grid_power_w(), time.monotonic())

    def close(self) -> None:
        pass


def test_a_crashing_cycle_stops_the_batteries_and_the_loop_recovers(sim):
    meter = BrokenMeter(sim)
    loop = make_loop(sim, [1], meter=meter)
    stop = threading.Event()
    sim.set_load_w(1000.0)
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: sim.unit(1).power_w > 800, 20, "discharging")
        meter.broken = True
        wait_until(lambda: sim.unit(1).force_mode == 0, 10, "stopped after the crash")
        wait_until(lambda: loop.store.latest().control_state == "error", 10, "error state published")
        assert thread.is_alive()
        assert any("bug in a driver" in e for e in loop.store.latest().errors)
        meter.broken = False
        wait_until(lambda: sim.unit(1).power_w > 800, 30, "regulating again")
    finally:
        stop.set()
        loop.commands.wakeup.set()
        thread.join(10)
    assert sim.unit(1).force_mode == 0  # shutdown leaves it stopped


def test_watchdog_fires_once_per_stall_and_rearms():
    clock = FakeClock()
    beat = {"t": clock()}
    stalls: list[float] = []
    paused = {"on": False}
    dog = Watchdog(lambda: beat["t"], 30.0, stalls.append, paused=lambda: paused["on"], clock=clock)
    clock.advance(29)
    assert not dog.check()
    clock.advance(2)
    assert dog.check() and stalls == [pytest.approx(31)]
    clock.advance(10)
    assert not dog.check()  # once per stall
    beat["t"] = clock()
    assert not dog.check()
    clock.advance(31)
    paused["on"] = True  # setup mode: long scans are no stall
    assert not dog.check()
    paused["on"] = False
    assert dog.check() and len(stalls) == 2


def test_emergency_stop_reaches_the_batteries_over_its_own_connection(sim):
    cfg = sim_config(sim, [1, 2])
    held = MarstekGateway("127.0.0.1", sim.modbus_port, timeout_s=0.5)  # the "stuck" control connection
    try:
        for unit_id in (1, 2):
            held.write_setpoint(unit_id, 600, None)
        store = StatusStore()
        emergency_stop(cfg, store, 42.0, lambda: emergency_bus(cfg))
        for unit_id in (1, 2):
            u = sim.unit(unit_id)
            assert (u.force_mode, u.charge_power_w, u.discharge_power_w) == (0, 0, 0)
        assert store.latest().control_state == "error"
        assert any("42 s" in e for e in store.latest().errors)
    finally:
        held.close()


# ---------------------------------------------------------------------------- --check
def run_check(tmp_path: Path, sim: Simulation, ids: list[int]) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1},
        "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": ids, "timeout_seconds": 0.5},
    }), encoding="utf-8")
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(path), "--check"],
                          capture_output=True, text=True, timeout=60)


def test_check_all_reachable_exits_0(sim, tmp_path):
    result = run_check(tmp_path, sim, [1, 2])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Akku ID 2" in result.stdout and "Alles erreichbar" in result.stdout


def test_check_reports_problems_with_a_fix_and_exits_1(sim, tmp_path):
    sim.set_meter_fault("http500")
    result = run_check(tmp_path, sim, [1, 7])
    assert result.returncode == 1
    assert "Zähler" in result.stdout and "FEHLER" in result.stdout
    assert "Akku ID 7" in result.stdout and "battery.akku_ids" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
