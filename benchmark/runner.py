"""The benchmark's simulated-time runner: the project's real control thread against the baselines.

The control code under test is the real ``control_loop.ControlLoop`` (built from
``config_loader.parse_config``) with the real ``zero_feed_control`` law and the real
``battery_client.MarstekGateway``; only the wire is simulated: the gateway gets a Modbus client (through
its ``client_factory``) that talks to ``simulator.SimUnit`` register maps on ``simulator.BatteryPlant``
(dead time, first-order lag, limits, SoC, efficiency, BMS), and the grid meter is
``simulator.MeterModel`` (sample-and-hold, latency, noise) behind the ``GridMeter`` interface. The loop
is driven on its own schedule (``ControlLoop.next_cycle_s``), everything on one simulated clock,
deterministic for a given seed.

Controllers (zero-feed-control.md §6): ``none`` (batteries idle), ``floor`` (instant perfect tracking of
the grid targets), ``naive`` (the original law, ``control.algorithm = "seed"``, 2 s cycle), ``ideal`` (a
deadbeat that knows the battery power at each meter sample instant, same plant, meter and write delays,
no deadband, no rate limit) and ``project`` (this project's controller with its defaults, 1 s cycle).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import math
import random
import statistics
import sys
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pymodbus.exceptions import ModbusIOException

from battery_client import MarstekGateway, ModbusClient
from benchmark.scenarios import Scenario
from config_loader import parse_config
from control.control_loop import ControlLoop
from control.devices import BatteryBus, GridReading, MeterError
from control.fleet import Fleet, GatewayWorker, Round, RoundPart
from control.quality import IN_BAND_W, CrossingCounter, battery_export_w
from control.status_store import CommandQueue, StatusStore
from simulator.world import MeterModel, SimUnit, UnitSpec
from zero_feed_control import BatteryState, ControlParams, distribute, target_total

T = TypeVar("T")

DT_S = 0.1  # metric integration step while a battery moves (the plant itself is integrated exactly)
DT_QUIET_S = 1.0  # ... and while every battery holds its power
READ_FRAME_S = 0.05  # one Modbus read request/answer
WRITE_FRAME_S = 0.15  # one Modbus write until the unit has applied it (§6)
SETTLE_BAND_W = 25.0
SETTLE_HOLD_S = 10.0
UNSETTLED_S = 600.0
QUIET_AFTER_S = 120.0
SAFE_W = 10.0  # a battery counts as stopped below this |AC power|
HEADROOM_W = 5.0  # "avoidable": a battery had more than this much power left
DEBUG: list[tuple[Any, ...]] | None = None  # set to a list to record every control cycle


@dataclass
class Metrics:
    """Integrals and counters of one run (energies in Wh, times in s)."""

    import_wh: float = 0.0
    export_wh: float = 0.0
    avoidable_import_wh: float = 0.0
    avoidable_export_wh: float = 0.0
    battery_export_wh: float = 0.0
    abs_error_wh: float = 0.0
    sq_error: float = 0.0
    time_s: float = 0.0
    in_band_s: float = 0.0
    in_band50_s: float = 0.0
    quiet_s: float = 0.0
    quiet_sum: float = 0.0
    quiet_sq: float = 0.0
    imbalance_ws: float = 0.0
    imbalance_s: float = 0.0


class World:
    """House, batteries and meter on one simulated clock; integrates the §5 metrics every ≤ 0.1 s."""

    def __init__(self, sc: Scenario, params: ControlParams) -> None:
        self.sc = sc
        self.t = 0.0
        ids = [i + 1 for i in range(sc.batteries)] if not sc.gateways else [
            i + 1 for count in sc.gateways for i in range(count)]  # unit IDs start at 1 on every gateway
        sets = sc.register_sets or ("v2",) * sc.batteries
        self.units = [
            SimUnit(UnitSpec(unit_id, register_set, soc_pct=soc, max_power_w=pmax), sc.plant)
            for unit_id, register_set, soc, pmax in zip(ids, sets, sc.socs, sc.max_power_w, strict=True)
        ]
        self.pending: list[tuple[float, int, SimUnit, int, int]] = []  # writes on a gateway's own time
        self._write_order = itertools.count()
        self.plants = [u.plant for u in self.units]
        self.max_power = [p.params.max_power_w for p in self.plants]
        self.meter = MeterModel(sc.meter.cadence_s, sc.meter.latency_s, sc.meter.noise_w, seed=sc.seed)
        self.params = params
        self.m = Metrics()
        self.crossings = CrossingCounter()
        self.tick_power: deque[tuple[float, float]] = deque(maxlen=64)  # (sample time, battery W then)
        self._tick = 0
        self._event_i = 0
        self.busy_until = 0.0  # a battery may still move until then (fine metric steps)
        self._last_event = 0.0  # the start counts as an event (batteries ramp up from 0 W)
        self.trace: list[tuple[float, float, float, float]] = []  # (t, grid, error, battery) if recorded
        self.quiet_grid: list[float] = []
        self._observe()

    # -- house
    def _slot(self, t: float) -> int:
        return min(len(self.sc.load_w) - 1, max(0, int((t - self.sc.shift_s) / self.sc.slot_s + 1e-9)))

    def demand_w(self, t: float) -> float:
        i = self._slot(t)
        return self.sc.load_w[i] - self.sc.pv_w[i]

    def battery_w(self) -> float:
        return sum(p.power_w for p in self.plants)

    def true_grid_w(self) -> float:
        return self.demand_w(self.t) - self.battery_w()

    def _observe(self) -> None:
        t_tick = self._tick * self.sc.meter.cadence_s
        self.meter.observe(t_tick, self.true_grid_w())
        self.tick_power.append((t_tick, self.battery_w()))
        self._tick += 1

    def power_at(self, t_sample: float) -> float:
        for t, p in reversed(self.tick_power):
            if abs(t - t_sample) < 1e-6:
                return p
        raise KeyError(t_sample)

    def meter_dead(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.sc.dropouts)

    def moved(self) -> None:
        """A command was just given: integrate finely until the lag has died out."""
        self.busy_until = self.t + self.sc.plant.settle_s + 0.5

    # -- time
    def queue_write(self, t: float, unit: SimUnit, address: int, value: int) -> None:
        """A write sent on a gateway's own (simulated-parallel) time: applied when the world gets there."""
        heapq.heappush(self.pending, (t, next(self._write_order), unit, address, value))

    def advance_to(self, t_end: float) -> None:
        while self.pending and self.pending[0][0] <= t_end:
            t, _, unit, address, value = heapq.heappop(self.pending)
            self._advance(t)
            for u in self.units:
                u.plant.advance(self.t)
            unit.write_register(address, value)
            self.moved()
        self._advance(t_end)

    def _advance(self, t_end: float) -> None:
        sc = self.sc
        while self.t < t_end - 1e-9:
            t0 = self.t
            next_slot = sc.shift_s + (math.floor((t0 - sc.shift_s) / sc.slot_s + 1e-9) + 1) * sc.slot_s
            next_tick = self._tick * sc.meter.cadence_s
            dt = DT_S if t0 < self.busy_until else DT_QUIET_S
            t1 = min(t_end, t0 + dt, next_slot, next_tick)
            if t1 <= t0 + 1e-9:
                t1 = min(t_end, t0 + 1e-6) if next_tick > t0 + 1e-9 else t0
            if t1 > t0:
                self._substep(t0, t1)
                self.t = t1
            if self.t >= next_tick - 1e-9:
                self._observe()

    def _substep(self, t0: float, t1: float) -> None:  # noqa: C901 (the §5 metrics side by side, integrated in one pass)
        h = t1 - t0
        p = self.params
        m = self.m
        demand = self.demand_w(t0)
        can_import = can_export = False
        cap_dis = cap_chg = 0.0
        may_dis: list[bool] = []
        may_chg: list[bool] = []
        # Trapezoid on the AC power (the plant's own energy counters book the lag's tail at once,
        # which would distort very short sub-steps).
        powers = []
        for pl, pmax in zip(self.plants, self.max_power, strict=True):
            soc = round(pl.soc_pct)  # as the battery reports it (whole percent)
            p0 = pl.power_w
            dis, chg = soc > p.min_soc_pct, soc < p.max_soc_pct
            may_dis.append(dis)
            may_chg.append(chg)
            if dis:
                cap_dis += pmax
                if p0 < pmax - HEADROOM_W:
                    can_import = True
            if chg:
                cap_chg += pmax
                if p0 > -pmax + HEADROOM_W:
                    can_export = True
            pl.advance(t1)
            # With no lag (the "floor" run) the power jumps at the start of the sub-step.
            powers.append(0.5 * (p0 + pl.power_w) if pl.params.tau_s > 0 else pl.power_w)
        wanted = target_total(demand, p)
        target = demand - (cap_dis if wanted > cap_dis else -cap_chg if wanted < -cap_chg else wanted)
        battery = sum(powers)
        g = demand - battery
        hh = h / 3600.0
        if g > 0:
            m.import_wh += g * hh
            if can_import:
                m.avoidable_import_wh += g * hh
        else:
            m.export_wh -= g * hh
            if can_export:
                m.avoidable_export_wh -= g * hh
            if battery > 0:
                m.battery_export_wh += min(battery, -g) * hh
        err = g - target
        m.abs_error_wh += abs(err) * hh
        m.sq_error += err * err * h
        m.time_s += h
        if -IN_BAND_W <= err <= IN_BAND_W:
            m.in_band_s += h
        if -2 * IN_BAND_W <= err <= 2 * IN_BAND_W:
            m.in_band50_s += h
        self.crossings.add(err)
        if len(powers) > 1 and abs(battery) >= p.min_power_w:
            allowed = may_dis if battery > 0 else may_chg
            total = sum(pm for pm, ok in zip(self.max_power, allowed, strict=True) if ok) or 1.0
            m.imbalance_ws += sum(abs(pw - (battery * pm / total if ok else 0.0)) for pw, pm, ok
                                  in zip(powers, self.max_power, allowed, strict=True)) / len(powers) * h
            m.imbalance_s += h
        events = self.sc.events_s
        while self._event_i < len(events) and events[self._event_i] + self.sc.shift_s <= t0:
            self._last_event = events[self._event_i] + self.sc.shift_s
            self._event_i += 1
        if t0 - self._last_event >= QUIET_AFTER_S and not (self.sc.dropouts and self.meter_dead(t0)):
            m.quiet_s += h
            m.quiet_sum += err * h
            m.quiet_sq += err * err * h
            if self.sc.record:
                self.quiet_grid.append(g)
        if self.sc.record:
            self.trace.append((t1, g, err, battery))

    # -- clock interface for the code under test
    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance_to(self.t + seconds)


class SimResponse:
    """A Modbus answer on the simulated wire: registers, or an exception code."""

    def __init__(self, registers: list[int] | None = None, exception_code: int | None = None) -> None:
        self.registers = registers or []
        self.exception_code = exception_code

    def isError(self) -> bool:
        return self.exception_code is not None


class GatewayClock:
    """One gateway's own simulated time in a simulated-parallel round (``VirtualParallel``)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.t += seconds


class SimModbusClient:
    """Stands in for ``pymodbus.client.ModbusTcpClient`` inside the real ``MarstekGateway``.

    Each request takes simulated time (reads ``READ_FRAME_S``, writes ``WRITE_FRAME_S`` until the unit has
    applied them); the gateway's own pacing sleeps on the simulated clock too. With a ``GatewayClock`` the
    frames run on that gateway's own time and writes reach the units when the world gets there; from
    ``dies_at_s`` on nothing answers (each request costs ``timeout_s``).
    """

    def __init__(self, world: World, units: Sequence[SimUnit] | None = None, vclock: GatewayClock | None = None,
                 dies_at_s: float | None = None, timeout_s: float = 1.0) -> None:
        self.world = world
        self.units = {u.unit_id: u for u in (world.units if units is None else units)}
        self.connected = True
        self.min_gap_s = math.inf  # shortest pause between two frames on the bus
        self._frame_end_s = -math.inf
        self.vclock = vclock
        self._now = vclock.clock if vclock is not None else world.clock
        self._sleep = vclock.sleep if vclock is not None else world.sleep
        self.dies_at_s, self.timeout_s = dies_at_s, timeout_s

    def _frame(self, seconds: float) -> None:
        self.min_gap_s = min(self.min_gap_s, self._now() - self._frame_end_s)
        if self.dies_at_s is not None and self._now() >= self.dies_at_s:
            self._sleep(self.timeout_s)
            raise ModbusIOException("no answer (simulated dead gateway)")
        self._sleep(seconds)
        self._frame_end_s = self._now()

    def connect(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def read_holding_registers(self, address: int, count: int = 1, device_id: int = 1) -> SimResponse:
        unit = self.units.get(device_id)
        if unit is None:
            self._sleep(1.0)
            return SimResponse(exception_code=11)
        regs = unit.read_registers(address, count)
        self._frame(READ_FRAME_S)
        return SimResponse(exception_code=regs) if isinstance(regs, int) else SimResponse(regs)

    def write_register(self, address: int, value: int, device_id: int = 1) -> SimResponse:
        unit = self.units.get(device_id)
        self._frame(WRITE_FRAME_S)
        if unit is None:
            return SimResponse(exception_code=11)
        if self.vclock is not None:  # the world applies it at this gateway's moment
            self.world.queue_write(self._now(), unit, address, value)
            return SimResponse([value])
        for u in self.world.units:
            u.plant.advance(self.world.t)
        code = unit.write_register(address, value)
        self.world.moved()
        return SimResponse(exception_code=code) if code is not None else SimResponse([value])


class SimMeterTimeout(MeterError):
    """The simulated meter did not answer (dropout)."""


class SimMeter:
    """``devices.GridMeter`` on the simulated ``MeterModel``; a dropout costs the request timeout."""

    name = "shelly"

    def __init__(self, world: World) -> None:
        self.world = world
        self.reads = 0

    def read(self) -> GridReading:
        w = self.world
        self.reads += 1
        if w.meter_dead(w.t):
            w.sleep(w.sc.meter.timeout_s)
            raise SimMeterTimeout(f"timeout after {w.sc.meter.timeout_s:.0f} s (simulated dropout)")
        reading = w.meter.read(w.t)
        assert reading is not None
        return GridReading(reading[0], w.t)

    def close(self) -> None:
        pass


def loop_config(sc: Scenario, algorithm: str, poll_s: float, extra: dict[str, Any]) -> dict[str, Any]:
    battery: dict[str, Any] = {"ip": "127.0.0.1", "akku_ids": list(range(1, sc.batteries + 1)), "timeout_seconds": 1}
    if sc.gateways:
        battery = {"units": fleet_units(sc), "timeout_seconds": 1}
    return {
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": "127.0.0.1", "timeout_seconds": sc.meter.timeout_s, "max_failures_before_stop": 2},
        "battery": battery,
        "control": {"poll_interval_seconds": poll_s, "algorithm": algorithm, **extra},
    }


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("marstek", "battery_client")]
    saved = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, was in zip(loggers, saved, strict=True):
            lg.disabled = was


@dataclass
class RunResult:
    scenario: str
    group: str
    controller: str
    seed: int
    values: dict[str, float]
    trace: list[tuple[float, float, float, float]] = field(default_factory=list)
    shift_s: float = 0.0


class VirtualParallel:
    """``fleet.RoundExecutor`` on the world's clock: every gateway's job starts at the same moment on its own
    ``GatewayClock``; the world then advances to when the fleet stops waiting (every job done, or every one
    still running silent for longer than its frames usually take), and writes reach the units at their
    gateway's moment. A gateway not in time by then counts with none of its answers."""

    def __init__(self, world: World, clocks: dict[str, GatewayClock]) -> None:
        self.world, self.clocks = world, clocks

    def frame_clock(self, gateway: str) -> Callable[[], float]:
        return lambda: self.clocks[gateway].t

    def busy(self, worker: GatewayWorker) -> bool:
        return self.clocks[worker.name].t > self.world.t + 1e-9

    def start(self, rnd: Round, part: RoundPart) -> None:
        pass  # every job runs in finish, from the same moment

    def finish(self, rnd: Round) -> None:
        ended = self._run([(part.name, functools.partial(self._begun, part),
                            functools.partial(part.worker.settled_s, allowance_s=part.allowance_s))
                           for part in rnd.parts])
        taken = {name for name, (_end_s, in_time) in ended.items() if in_time}
        while not rnd.answers.empty():
            answer = rnd.answers.get()
            rnd.keep(answer, take=answer.gateway in taken)
        for part in rnd.parts:
            if part.name in taken:
                rnd.ended_in_time(part, ended[part.name][0])

    def call(self, worker: GatewayWorker, job: Callable[[BatteryBus], T], alive: Callable[[], None],
             poll_s: float) -> T:
        box: list[T] = []
        self._run([(worker.name, lambda: box.append(job(worker.bus)), lambda end_s: end_s)])
        return box[0]

    @staticmethod
    def _begun(part: RoundPart) -> None:
        """A gateway's job: its frame times counted from its own start."""
        part.worker.begin()
        part.job(part.worker.bus)

    def _run(self, jobs: Sequence[tuple[str, Callable[[], None], Callable[[float], float]]]
             ) -> dict[str, tuple[float, bool]]:
        """Each job from the world's moment on its gateway's clock; the world advances to the latest moment the
        fleet stops waiting for one (``jobs``' third: a job's end -> that moment; with one job: its end).
        Per gateway: when its job ended, and whether by then."""
        start_s = self.world.t
        ends: dict[str, float] = {}
        settled: list[float] = []
        for name, job, settled_s in jobs:
            clock = self.clocks[name]
            clock.t = max(clock.t, start_s)
            job()
            ends[name] = clock.t
            settled.append(settled_s(clock.t))
        stop_s = max(ends.values(), default=start_s)
        if len(jobs) > 1:
            stop_s = max(settled)
        self.world.advance_to(stop_s)
        return {name: (end_s, end_s <= stop_s + 1e-9) for name, end_s in ends.items()}


def fleet_units(sc: Scenario) -> list[dict[str, Any]]:
    """``battery.units`` for a fleet scenario: gateway g at 127.0.0.1:(1502 + g), IDs from 1 on each."""
    units: list[dict[str, Any]] = []
    index = 0
    sets = sc.register_sets or ("v2",) * sc.batteries
    for g, count in enumerate(sc.gateways):
        for i in range(count):
            units.append({"ip": f"127.0.0.1:{1502 + g}", "id": i + 1, "register_set": sets[index],
                          "max_power_per_battery": int(sc.max_power_w[index])})
            index += 1
    return units


def simulated_fleet(world: World, cfg: Any, sc: Scenario) -> tuple[Fleet, list[SimModbusClient]]:
    """One real ``MarstekGateway`` per gateway of the scenario, each on its own simulated wire (and clock)."""
    clocks: dict[str, GatewayClock] = {}
    clients: list[SimModbusClient] = []
    by_gateway: dict[str, list[SimUnit]] = {}
    for unit_cfg, sim_unit in zip(cfg.battery.units, world.units, strict=True):
        by_gateway.setdefault(unit_cfg.gateway, []).append(sim_unit)
    last = list(by_gateway)[-1]

    def make(unit: Any, _timeout_s: float) -> MarstekGateway:
        clock = clocks.setdefault(unit.gateway, GatewayClock())
        client = SimModbusClient(world, by_gateway[unit.gateway], clock if sc.parallel else None,
                                 dies_at_s=sc.gateway_dies_s if unit.gateway == last else None,
                                 timeout_s=cfg.battery.timeout_seconds)
        clients.append(client)
        on_clock = sc.parallel
        return MarstekGateway(unit.host, unit.port, register_set=unit.register_set,
                              clock=clock.clock if on_clock else world.clock,
                              sleep=clock.sleep if on_clock else world.sleep,
                              client_factory=lambda _t: client, max_power_w=unit.max_power_per_battery,
                              soc_interval_s=cfg.control.soc_update_interval_seconds,
                              timeout_s=cfg.battery.timeout_seconds)

    executor = VirtualParallel(world, clocks) if sc.parallel else None
    fleet = Fleet(cfg.battery.units, make, timeout_s=cfg.battery.timeout_seconds, threaded=False,
                  wait_clock=world.clock, executor=executor)
    return fleet, clients


def simulated_gateway(world: World, cfg: Any, client: ModbusClient) -> MarstekGateway:
    """The real gateway logic (writes, pacing, back-off) on the simulated wire and clock."""
    return MarstekGateway("127.0.0.1", clock=world.clock, sleep=world.sleep, client_factory=lambda _timeout_s: client,
                          soc_interval_s=cfg.control.soc_update_interval_seconds)


def _run_loop(sc: Scenario, controller: str) -> tuple[World, dict[str, float]]:
    algorithm, poll_s = ("seed", 2.0) if controller == "naive" else ("fast", 1.0)
    extra = dict(sc.control) if controller == "project" else {}
    tuning = {k[4:]: extra.pop(k) for k in list(extra) if k.startswith("law.")}  # experiments only
    cfg = parse_config(loop_config(sc, algorithm, poll_s, extra))
    params = cfg.control_params()
    world = World(sc, params)
    bus: Fleet | MarstekGateway
    if sc.gateways:
        bus, clients = simulated_fleet(world, cfg, sc)
    else:
        clients = [SimModbusClient(world)]
        bus = simulated_gateway(world, cfg, clients[0])
    loop = ControlLoop(cfg, SimMeter(world), bus, StatusStore(history_kept=4), CommandQueue(), clock=world.clock,
                       controller_params=replace(params, **tuning) if tuning else None)
    write_delays: tuple[list[float], list[float]] = ([], [])  # healthy writes wait: before, after the death
    dies_s = sc.gateway_dies_s if sc.gateway_dies_s is not None else math.inf
    dying = cfg.battery.units[-1].gateway if sc.gateway_dies_s is not None and sc.gateways else None
    t_next = random.Random(3000 + sc.seed).uniform(0.0, cfg.control.poll_interval_seconds)
    extra_values: dict[str, float] = {"mode_switches": 0.0}
    last_modes = {i: u.force_mode for i, u in enumerate(world.units)}
    stop_s = math.inf
    with _quiet_logs():
        while t_next < sc.duration_s:
            world.advance_to(t_next)
            started = world.t
            loop.run_once()
            if loop.internal_error:  # contained in production; a benchmark result would be meaningless
                raise RuntimeError(f"{sc.name}/{controller}: the control cycle failed: {loop.internal_error}")
            if DEBUG is not None:
                d = loop.last_decision
                DEBUG.append((started, world.t, loop.grid_power_w, [u.plant.power_w for u in world.units],
                              d.status.value if d else "", d.reason if d else "", dict(d.setpoints_w) if d else {}))
            for i, u in enumerate(world.units):
                if u.force_mode != last_modes[i]:
                    extra_values["mode_switches"] += 1
                    last_modes[i] = u.force_mode
            rounds = loop.bus.last_rounds
            if dying is not None and "read" in rounds and "write" in rounds:
                # How long the healthy gateways' writes wait after their own reads are done: waiting for the
                # dying gateway (a healthy gateway's own long round, SoC every 30 s, is not the other's fault).
                read, write = rounds["read"], rounds["write"]
                healthy = [g.done_s for name, g in read.gateways.items() if name != dying and g.done_s is not None]
                if healthy and write.started_s >= read.started_s:
                    write_delays[started >= dies_s].append(write.started_s - max(healthy))
            if sc.dropouts and stop_s == math.inf and world.meter_dead(started) and all(
                    u.commanded_w == 0 for u in world.units):
                stop_s = world.t - sc.dropouts[0][0]
            t_next = max(loop.next_cycle_s, world.t)  # the production schedule
        world.advance_to(sc.duration_s)
    extra_values["writes"] = float(loop.bus.writes_total)
    extra_values["sign_trips"] = float(loop.sign_check.tripped)  # a right meter must never trip it
    extra_values["min_frame_gap_s"] = min(c.min_gap_s for c in clients)
    if sc.gateway_dies_s is not None:
        # How much later the healthy unit's writes start once a gateway is dead (worst cycle vs the usual).
        before, after = write_delays
        extra_values["dead_gateway_write_delay_s"] = max(after) - statistics.median(before)
    extra_values["stop_cmd_s"] = stop_s
    return world, extra_values


def _run_ideal(sc: Scenario, params: ControlParams) -> tuple[World, dict[str, float]]:
    world = World(sc, params)
    cad, lat = sc.meter.cadence_s, sc.meter.latency_s
    k = 0
    writes = 0
    while True:
        t_arrival = k * cad + lat
        k += 1
        if t_arrival >= sc.duration_s:
            break
        world.advance_to(t_arrival)
        reading = world.meter.read(world.t)
        assert reading is not None
        value, t_sample = reading
        demand = value + world.power_at(t_sample)
        states = _ideal_states(world, sc)
        setpoints, _ = distribute(target_total(demand, params), states, params)
        world.advance_to(min(sc.duration_s, world.t + WRITE_FRAME_S))
        for i, u in enumerate(world.units):
            u.plant.command(setpoints[i], world.t)
            writes += 1
        world.moved()
    world.advance_to(sc.duration_s)
    return world, {"writes": float(writes), "mode_switches": math.nan, "stop_cmd_s": math.nan}


def _run_floor(sc: Scenario, params: ControlParams) -> tuple[World, dict[str, float]]:
    """Batteries that follow ``target_total(demand)`` at once (no delay, no lag, exact demand)."""
    world = World(replace(sc, plant=replace(sc.plant, dead_time_s=0.0, tau_s=0.0)), params)  # standby as the plant
    for k in range(len(sc.load_w)):
        world.advance_to(sc.shift_s + k * sc.slot_s if k else 0.0)
        states = _ideal_states(world, sc)
        setpoints, _ = distribute(target_total(world.demand_w(world.t), params), states, params)
        for i, u in enumerate(world.units):
            u.plant.command(setpoints[i], world.t)
    world.advance_to(sc.duration_s)
    return world, {"writes": math.nan, "mode_switches": math.nan, "stop_cmd_s": math.nan}


def _ideal_states(world: World, sc: Scenario) -> list[BatteryState]:
    """The baselines' view of the batteries, by index; a fleet's per-unit limits are known (they are configured)."""
    return [BatteryState(i, True, round(u.plant.soc_pct), u.plant.power_w,
                         max_power_w=u.plant.params.max_power_w if sc.gateways else None)
            for i, u in enumerate(world.units)]


def run(sc: Scenario, controller: str) -> RunResult:
    """Run one controller on one scenario; all metrics as a flat dict."""
    base = parse_config(loop_config(sc, "fast", 1.0, {k: v for k, v in sc.control if not k.startswith("law.")}))
    params = base.control_params()
    if controller in ("naive", "project"):
        world, extra = _run_loop(sc, controller)
    elif controller == "ideal":
        world, extra = _run_ideal(sc, params)
    elif controller == "floor":
        world, extra = _run_floor(sc, params)
    else:
        world = World(sc, params)
        world.advance_to(sc.duration_s)
        extra = {"writes": 0.0, "mode_switches": 0.0, "stop_cmd_s": math.nan}
    values = _summarise(world, sc, extra)
    trace = world.trace if sc.record else []
    return RunResult(sc.name, sc.group, controller, sc.seed, values, trace, sc.shift_s)


def _summarise(world: World, sc: Scenario, extra: dict[str, float]) -> dict[str, float]:
    m = world.m
    hours = m.time_s / 3600.0
    v: dict[str, float] = {
        "import_wh": m.import_wh,
        "export_wh": m.export_wh,
        "avoidable_import_wh": m.avoidable_import_wh,
        "avoidable_export_wh": m.avoidable_export_wh,
        "avoidable_wh": m.avoidable_import_wh + m.avoidable_export_wh,
        "battery_export_wh": m.battery_export_wh,
        "error_wh": m.abs_error_wh,
        "rms_w": math.sqrt(m.sq_error / m.time_s) if m.time_s else math.nan,
        "crossings_per_h": world.crossings.count / hours if hours else math.nan,
        "in_band_pct": 100.0 * m.in_band_s / m.time_s if m.time_s else math.nan,
        "in_band50_pct": 100.0 * m.in_band50_s / m.time_s if m.time_s else math.nan,
        "writes_per_h": extra["writes"] / hours / sc.batteries if hours else math.nan,
        "mode_switches_per_h": extra["mode_switches"] / hours / sc.batteries if hours else math.nan,
        "loss_wh": sum(p.conversion_loss_wh for p in world.plants),
        "steady_rms_w": math.sqrt(m.quiet_sq / m.quiet_s) if m.quiet_s else math.nan,
        "steady_bias_w": m.quiet_sum / m.quiet_s if m.quiet_s else math.nan,
        "imbalance_w": m.imbalance_ws / m.imbalance_s if m.imbalance_s else math.nan,
        "soc_spread_pct": max(p.soc_pct for p in world.plants) - min(p.soc_pct for p in world.plants),
        "duration_h": hours,
    }
    if world.quiet_grid:
        q = sorted(world.quiet_grid)
        v["quiet_p95_p5_w"] = q[int(0.95 * (len(q) - 1))] - q[int(0.05 * (len(q) - 1))]
    if sc.events_s and sc.record:
        v.update(_step_metrics(world, sc))
    if sc.dropouts:
        v.update(_dropout_metrics(world, sc, extra))
    if "min_frame_gap_s" in extra:
        v["min_frame_gap_s"] = extra["min_frame_gap_s"]
    if "dead_gateway_write_delay_s" in extra:
        v["dead_gateway_write_delay_s"] = extra["dead_gateway_write_delay_s"]
    if "sign_trips" in extra:
        v["sign_trips"] = extra["sign_trips"]
    return v


def _step_metrics(world: World, sc: Scenario) -> dict[str, float]:
    settles, overshoots, energies = [], [], []
    trace = world.trace
    times = [t for t, *_ in trace]
    events = [e + sc.shift_s for e in sc.events_s]
    for k, ts in enumerate(events):
        t_end = events[k + 1] if k + 1 < len(events) else sc.duration_s
        i0 = bisect_right(times, ts)
        i1 = bisect_right(times, t_end)
        seg = trace[i0:i1]
        if not seg:
            continue
        sign = 1.0 if seg[0][2] > 0 else -1.0
        # Settled: the error stays inside ±25 W for 10 s; the settle time is the start of that hold.
        settle = math.inf
        hold_start = ts
        for t, _, e, _ in seg:
            if abs(e) > SETTLE_BAND_W:
                hold_start = t
            elif t - hold_start >= SETTLE_HOLD_S:
                settle = hold_start - ts
                break
        settles.append(min(settle, UNSETTLED_S))
        # Overshoot: worst excursion against the initial error until the settle hold has passed.
        t_over = ts + settle + SETTLE_HOLD_S if settle < math.inf else t_end
        overshoots.append(max(0.0, max(-sign * e for t, _, e, _ in seg if t <= t_over)))
        t_stop = ts + settle if settle < math.inf else t_end
        energy = 0.0
        t_prev = ts
        for t, _, e, _ in seg:
            if t > t_stop:
                break
            energy += abs(e) * (t - t_prev) / 3600.0
            t_prev = t
        energies.append(energy)
    out = {
        "settle_mean_s": statistics.fmean(settles),
        "settle_max_s": max(settles),
        "overshoot_w": max(overshoots),
        "step_energy_wh": statistics.fmean(energies),
    }
    for k, (s, o, e) in enumerate(zip(settles, overshoots, energies, strict=True)):
        out[f"settle{k}_s"], out[f"overshoot{k}_w"], out[f"step_energy{k}_wh"] = s, o, e
    return out


def _dropout_metrics(world: World, sc: Scenario, extra: dict[str, float]) -> dict[str, float]:
    a, b = sc.dropouts[0]
    safe = math.inf
    exported = 0.0
    t_prev = None
    for t, g, _, _ in world.trace:
        if t_prev is not None and a <= t_prev < b:
            exported += max(-g, 0.0) * (t - t_prev) / 3600.0
        t_prev = t
    # Safe: every battery at (nearly) 0 W from some time on while the meter is dead.
    last_unsafe = a
    for t, _, _, p in world.trace:
        if a <= t < b and abs(p) > SAFE_W:
            last_unsafe = t
    if last_unsafe < b - 1e-6:
        safe = last_unsafe - a
    recovery = [e for t, _, e, _ in world.trace if b <= t < b + 60.0]
    bexp = 0.0
    t_prev = None
    for t, g, _, p in world.trace:
        if t_prev is not None and a <= t_prev < b:
            bexp += battery_export_w(g, p) * (t - t_prev) / 3600.0
        t_prev = t
    # Recovery overshoot: the worst excursion against the error seen when the meter came back.
    sign = 1.0 if recovery and recovery[0] > 0 else -1.0
    return {
        "safe_state_s": safe,
        "stop_cmd_s": extra.get("stop_cmd_s", math.nan),
        "dropout_export_wh": exported,
        "dropout_battery_export_wh": bexp,
        "recovery_overshoot_w": max((max(0.0, -sign * e) for e in recovery), default=math.nan),
    }


def _job(args: tuple[Scenario, str]) -> RunResult:
    sc, controller = args
    return run(sc, controller)


def run_all(scenarios: Sequence[Scenario], jobs: int = 1, progress: bool = False) -> list[RunResult]:
    work = [(sc, c) for sc in scenarios for c in sc.controllers]
    # Longest first so that the pool finishes together.
    work.sort(key=lambda w: -w[0].duration_s * w[0].batteries)
    results: list[RunResult] = []
    if jobs <= 1:
        for k, w in enumerate(work):
            results.append(_job(w))
            if progress:
                print(f"  [{k + 1}/{len(work)}] {w[0].name} {w[1]}", file=sys.stderr)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for k, r in enumerate(pool.map(_job, work, chunksize=1)):
                results.append(r)
                if progress:
                    print(f"  [{k + 1}/{len(work)}] {r.scenario} {r.controller}", file=sys.stderr)
    return results
