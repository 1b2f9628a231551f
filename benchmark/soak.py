"""Soak run: the real control thread through many simulated hours with random meter and Modbus faults.

Run it with ``python -m benchmark --soak`` (24 simulated hours); the test suite runs a shortened form.
It reuses the benchmark's simulated world (house, plants, meter on one clock) and drives the real
``control_loop.ControlLoop`` with the real ``battery_client.MarstekGateway`` on the loop's own schedule
(``next_cycle_s``, so the back-off after a meter failure and after a contained error is the real one);
only the wire carries faults.

Checked invariants:
- no exception escapes the control cycle, and none is contained as an internal error;
- no battery discharges while the grid exports (beyond small noise) for longer than ``grace_s``,
  except while that battery cannot be reached at all (the real device then keeps its last setpoint
  and no controller can stop it; ``unreachable_export_s`` reports that time separately);
- every buffer stays bounded: events, chart history, controller history, quality bins.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tracemalloc
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pymodbus.exceptions import ModbusIOException

from benchmark.runner import (
    SimMeter,
    SimMeterTimeout,
    SimModbusClient,
    SimResponse,
    World,
    loop_config,
    simulated_gateway,
)
from benchmark.scenarios import day24
from config_loader import parse_config
from control.control_loop import ControlLoop
from control.devices import GridReading, MeterError
from control.status_store import EVENTS_KEPT, HISTORY_KEPT, CommandQueue, StatusStore, StoreLogHandler

# Longest tolerated discharge of a reachable battery into an exporting grid. Not shorter: while PV
# ramps up over a cloud edge (20 s in the household day) every controller with the plant's ~2.5 s of
# meter, write, dead time and lag trails the ramp, so the grid sits ~150-250 W on the export side for
# the whole ramp (the ideal deadbeat too). A battery that is really stuck (meter lost, a wrong
# setpoint held) exports for minutes; that is what this catches.
GRACE_S = 30.0
DISCHARGE_W = 25.0  # a battery counts as discharging above this
EXPORT_W = -50.0  # the grid counts as exporting below this (meter noise and the -20 W target stay above)
CONTROLLER_QUEUE_LIMIT = 1000  # the law keeps seconds of history, never hours
FAULT_KINDS = ("meter_dead", "meter_garbage", "unit_silent", "unit_exception", "gateway_down", "rs485_drop",
               "no_delivery")


@dataclass
class Episode:
    kind: str
    start_s: float
    end_s: float
    unit_id: int = 1


def fault_schedule(hours: float, units: int, seed: int) -> list[Episode]:
    """Random fault episodes, one every 2..15 minutes, 5 s..10 min long (seeded).

    Kinds come in shuffled rounds, so every kind occurs once in each round of seven.
    """
    rng = random.Random(seed)
    episodes, t = [], rng.uniform(60.0, 300.0)
    kinds: list[str] = []
    while t < hours * 3600.0:
        if not kinds:
            kinds = rng.sample(FAULT_KINDS, len(FAULT_KINDS))
        kind = kinds.pop()
        length = rng.choice((5.0, 10.0, 30.0, 60.0, 120.0, 600.0))
        episodes.append(Episode(kind, t, t + length, rng.randint(1, units)))
        t += length + rng.uniform(120.0, 900.0)
    return episodes


class FaultyMeter(SimMeter):
    """The simulated meter, dead or answering garbage during its episodes."""

    def __init__(self, world: World, episodes: list[Episode]) -> None:
        super().__init__(world)
        self.episodes = [e for e in episodes if e.kind.startswith("meter_")]

    def read(self) -> GridReading:
        t = self.world.t
        for e in self.episodes:
            if e.start_s <= t < e.end_s:
                if e.kind == "meter_dead":
                    self.world.sleep(self.world.sc.meter.timeout_s)
                    raise SimMeterTimeout("timeout (soak fault)")
                raise MeterError("body is not JSON (soak fault)")
        return super().read()


class FaultyModbusClient(SimModbusClient):
    """The simulated Modbus wire with silent units, exception answers and gateway outages."""

    def __init__(self, world: World, episodes: list[Episode], timeout_s: float) -> None:
        super().__init__(world)
        self.episodes = [e for e in episodes if e.kind in ("unit_silent", "unit_exception", "gateway_down")]
        self.timeout_s = timeout_s

    def _active(self, kind: str, unit_id: int | None = None) -> bool:
        t = self.world.t
        return any(e.kind == kind and e.start_s <= t < e.end_s and (unit_id is None or e.unit_id == unit_id)
                   for e in self.episodes)

    def connect(self) -> bool:
        self.connected = not self._active("gateway_down")
        return self.connected

    def _fault(self, device_id: int) -> Any:
        if self._active("gateway_down"):
            self.connected = False
            raise ModbusIOException("connection lost (soak fault)")
        if self._active("unit_silent", device_id):
            self.world.sleep(self.timeout_s)
            raise ModbusIOException("no response (soak fault)")
        if self._active("unit_exception", device_id):
            self._frame(0.05)
            return SimResponse(exception_code=4)
        return None

    def read_holding_registers(self, address: int, count: int = 1, device_id: int = 1) -> Any:
        return self._fault(device_id) or super().read_holding_registers(address, count, device_id)

    def write_register(self, address: int, value: int, device_id: int = 1) -> Any:
        return self._fault(device_id) or super().write_register(address, value, device_id)

    def unreachable(self, unit_id: int) -> bool:
        return any(self._active(k, unit_id if k != "gateway_down" else None)
                   for k in ("unit_silent", "unit_exception", "gateway_down"))


@dataclass
class SoakResult:
    hours: float
    faults: dict[str, int]
    cycles: int = 0
    worst_battery_export_s: float = 0.0  # longest discharge-while-export run of a reachable battery
    worst_at_s: float = 0.0  # simulated time when that run ended
    unreachable_export_s: float = 0.0  # total such time while the battery could not be reached
    battery_export_wh: float = 0.0
    internal_errors: list[str] = field(default_factory=list)
    buffer_sizes: dict[str, int] = field(default_factory=dict)
    peak_memory_mb: float = 0.0

    def violations(self, grace_s: float) -> list[str]:
        found = [f"internal error: {e}" for e in self.internal_errors]
        if self.worst_battery_export_s > grace_s:
            found.append("a reachable battery discharged into an exporting grid for "
                         f"{self.worst_battery_export_s:.1f} s (grace {grace_s:.0f} s)")
        if self.buffer_sizes.get("events", 0) > EVENTS_KEPT:
            found.append(f"event list grew to {self.buffer_sizes['events']}")
        if self.buffer_sizes.get("chart_history", 0) > HISTORY_KEPT:
            found.append(f"chart history grew to {self.buffer_sizes['chart_history']}")
        if self.buffer_sizes.get("controller_queues", 0) > CONTROLLER_QUEUE_LIMIT:
            found.append(f"a control-law queue grew to {self.buffer_sizes['controller_queues']}")
        return found


def run_soak(hours: float = 24.0, seed: int = 1, track_memory: bool = False) -> SoakResult:
    """Run ``hours`` of the seeded household day with random faults on two batteries.

    ``track_memory`` measures the peak with tracemalloc (slows the run down about tenfold).
    """
    sc = day24(seed, 3000.0, hours=hours, socs=(35.0, 65.0), max_power_w=(2500.0, 2500.0), name="soak")
    episodes = fault_schedule(hours, sc.batteries, seed)
    cfg = parse_config(loop_config(sc, "fast", 1.0, {}))
    world = World(sc, cfg.control_params())
    client = FaultyModbusClient(world, episodes, cfg.battery.timeout_seconds)
    bus = simulated_gateway(world, cfg, client)  # the wire is simulated (with faults), the gateway's logic is real
    store = StatusStore()
    loop = ControlLoop(cfg, FaultyMeter(world, episodes), bus, store, CommandQueue(), clock=world.clock)
    result = SoakResult(hours, {k: sum(e.kind == k for e in episodes) for k in FAULT_KINDS})
    pending = sorted((e for e in episodes if e.kind in ("rs485_drop", "no_delivery")), key=lambda e: e.start_s)
    run_s = 0.0
    if track_memory:
        tracemalloc.start()
    try:
        with _store_logs(store):
            t_next = 0.37
            while t_next < sc.duration_s:
                while world.t < t_next - 1e-9:  # check the invariant every 0.5 s
                    t_before = world.t
                    world.advance_to(min(t_next, world.t + 0.5))
                    run_s = _check_export(world, client, result, run_s, world.t - t_before)
                _apply_device_faults(world, pending)
                loop.run_once()  # contained like in production; a contained error is a violation
                result.cycles += 1
                if loop.internal_error and loop.internal_error not in result.internal_errors:
                    result.internal_errors.append(loop.internal_error)
                t_next = max(loop.next_cycle_s, world.t)  # the production schedule
            world.advance_to(sc.duration_s)
        if track_memory:
            result.peak_memory_mb = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        if track_memory:
            tracemalloc.stop()
    result.battery_export_wh = world.m.battery_export_wh
    result.buffer_sizes = {
        "events": len(store.events()),
        "chart_history": len(store.history()),
        "quality_bins": loop.quality.bins_kept,
        # Every queue the control law keeps (its measured-power history and filters).
        "controller_queues": max((len(v) for v in vars(loop.controller).values() if isinstance(v, deque)), default=0),
    }
    return result


@contextlib.contextmanager
def _store_logs(store: StatusStore) -> Iterator[None]:
    """The program's log records go to the live event list only (as in production), not to the console."""
    handler = StoreLogHandler(store)
    loggers = [logging.getLogger(n) for n in ("marstek", "battery_client")]
    saved = [(lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, (propagate, level) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.propagate, lg.level = propagate, level


def _apply_device_faults(world: World, pending: list[Episode]) -> None:
    """Firmware quirks that live in the device: RS485 control dropped, ACK without delivery."""
    t = world.t
    units = {u.unit_id: u for u in world.units}
    for e in pending:
        unit = units[e.unit_id]
        if e.kind == "rs485_drop" and e.start_s <= t < e.start_s + 1.0:
            unit.drop_rs485()
        if e.kind == "no_delivery":
            unit.delivers_nothing = e.start_s <= t < e.end_s


def _check_export(world: World, client: FaultyModbusClient, result: SoakResult, run_s: float, dt_s: float) -> float:
    """Track how long a reachable battery has been discharging into an exporting grid."""
    grid_w = world.true_grid_w()
    offending = [u for u in world.units if u.plant.power_w > DISCHARGE_W] if grid_w < EXPORT_W else []
    if not offending:
        return 0.0
    if all(client.unreachable(u.unit_id) for u in offending):
        result.unreachable_export_s += dt_s
        return 0.0
    run_s += dt_s
    if run_s > result.worst_battery_export_s:
        result.worst_battery_export_s, result.worst_at_s = run_s, world.t
    return run_s


def report(result: SoakResult, grace_s: float) -> str:
    lines = [
        f"Soak: {result.hours:g} simulated hours, {result.cycles} control cycles",
        "Faults injected: " + ", ".join(f"{k} {n}" for k, n in result.faults.items()),
        f"Longest discharge into an exporting grid (reachable battery): {result.worst_battery_export_s:.1f} s "
        f"(grace {grace_s:.0f} s), ending at {result.worst_at_s:.0f} s",
        f"Same while the battery was unreachable (no software can stop it): {result.unreachable_export_s:.0f} s",
        f"Battery-sourced export: {result.battery_export_wh:.1f} Wh",
        "Buffers: " + ", ".join(f"{k} {n}" for k, n in result.buffer_sizes.items()),
        f"Peak traced memory: {result.peak_memory_mb:.1f} MB" if result.peak_memory_mb else "Memory not traced",
    ]
    problems = result.violations(grace_s)
    lines.append("OK: all invariants held." if not problems else "VIOLATIONS: " + "; ".join(problems))
    return "\n".join(lines)
