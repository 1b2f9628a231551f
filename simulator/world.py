"""Simulated house, grid meters and Marstek Venus batteries for tests, the benchmark and ``main.py --demo``.

``Simulation`` composes the parts, each in its own module:

* ``sim_physics``: battery plant, house (load, PV) and grid meter model on explicit time (pure).
* ``sim_marstek``: the Marstek units' registers (``SimUnit``) and the Modbus TCP gateway they sit
  behind (``SimGateway``, register sets v2 and v3).
* ``sim_meters``: the Shelly (every model of ``SHELLY_MODELS``), EcoTracker, HomeWizard P1 and JSON meter
  HTTP emulators,
  which read the meter through ``MeterSource.meter_snapshot()``.

and adds a physics thread that advances simulated time at wall clock × ``speed``. The names other modules
use (``MeterModel``, ``PlantParams``, ``SimUnit``, ``UnitSpec``, ...) are re-exported here.

Sign conventions (as everywhere in this project, see ``devices.py``):
grid power + import / − export, W; battery power + discharging / − charging, W; SoC 0..100 %.

Run alone: ``python -m simulator --batteries 2`` prints the ports and a config.json snippet.
``main.py --demo`` runs the demo's fleet (``demo_simulation``) in a process of its own (``SimulationProcess``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from simulator.marstek import SimGateway, SimUnit, UnitSpec
from simulator.meters import (
    ABSURD_POWER_W,
    METER_FAULTS,
    SECOND_CHANNEL_W,
    SHELLY_MODELS,
    SHELLY_PROFILES,
    EcoTrackerEmulator,
    HomeWizardEmulator,
    JsonMeterEmulator,
    MeterEmulator,
    MeterSnapshot,
    MeterSource,
    ShellyEmulator,
)
from simulator.physics import (
    EFFICIENCY_CHARGE,
    EFFICIENCY_DISCHARGE,
    BatteryPlant,
    HouseModel,
    MeterModel,
    PlantParams,
    efficiency,
)

__all__ = [
    "ABSURD_POWER_W",
    "EFFICIENCY_CHARGE",
    "EFFICIENCY_DISCHARGE",
    "METER_FAULTS",
    "SHELLY_MODELS",
    "SHELLY_PROFILES",
    "BatteryPlant",
    "EcoTrackerEmulator",
    "HomeWizardEmulator",
    "HouseModel",
    "JsonMeterEmulator",
    "MeterModel",
    "MeterSnapshot",
    "MeterSource",
    "PlantParams",
    "ShellyEmulator",
    "SimGateway",
    "SimUnit",
    "Simulation",
    "SimulationProcess",
    "UnitSpec",
    "config_snippet",
    "demo_simulation",
    "efficiency",
    "main",
]

_AVG_WINDOW_S = 60.0  # the EcoTracker's powerAvg: mean of the samples of the last minute
_IMPORT_WH_START = 1_541_618.4  # counters start at realistic values (energy-meters.md §8 capture)
_EXPORT_WH_START = 5_552_927.8


class Simulation:
    """House + meters + batteries on loopback servers, advanced by a physics thread (wall clock × speed).

    ``start()`` binds the Shelly and EcoTracker HTTP emulators and the Modbus TCP gateway (port 0 =
    ephemeral; the bound ports are then in ``shelly_port``, ``ecotracker_port``, ``modbus_port``) and starts
    the physics thread. ``stop()`` shuts everything down and joins the threads. Also a context manager.

    Both meter emulators serve one ``MeterModel`` fed with the true grid power (sample-and-hold, latency,
    noise); this class is their ``MeterSource``. ``set_meter_fault(kind)`` injects a fault into both
    (``METER_FAULTS``): "timeout" (answer only after ``meter_delay_s``; ``stop()`` releases it and sends
    nothing), "http500", "not_json", "missing_field" (all power keys removed), "non_numeric" (power keys are
    "abc"), "nan" (power keys are the JSON token NaN), "absurd" (±150 kW, sign of the true reading),
    "frozen" (the reading at the moment the fault was set, forever), "refused" (both meter ports stop
    listening: connections are refused and open ones cut; clearing the fault listens on the same ports
    again). "timeout" and "http500" also hit ``/shelly``.

    Modbus faults: per unit ``SimUnit.silent``, ``slow_s`` and ``fail_with_exception``; for the whole
    gateway ``close_after_exception`` (as v3 firmware does, marstek-modbus.md §7: after sending any
    exception response the server closes that TCP connection) and ``drop_modbus_connections()``.

    The parts are public so that one device can be reached on its own: ``gateway`` (the primary
    ``SimGateway`` with its units; ``gateways`` lists all), ``shelly`` (``ShellyEmulator``), ``ecotracker``
    (``EcoTrackerEmulator``), ``house`` and ``meter``. All public methods are thread-safe.
    """

    def __init__(
        self,
        units: list[UnitSpec] | None = None,
        house: HouseModel | None = None,
        speed: float = 1.0,
        plant: PlantParams | None = None,
        meter: MeterModel | None = None,
        seed: int = 1,
        shelly_password: str | None = None,
        shelly_profile: str = "triphase",
        shelly_model: str | None = None,
        shelly_user: str = "admin",
        second_channel_w: float = SECOND_CHANNEL_W,
        json_meter_password: str | None = None,
        meter_reversed: bool = False,
        meter_cadence_s: float = 1.0,
        meter_latency_s: float = 0.3,
        meter_noise_w: float = 10.0,
        meter_delay_s: float = 10.0,
        tick_s: float = 0.02,
        close_after_exception: bool | None = None,
        lan: bool | None = None,
        gateways: Sequence[Sequence[UnitSpec]] = (),
    ) -> None:
        self.shelly = ShellyEmulator(self, shelly_profile, shelly_password, seed=seed, delay_s=meter_delay_s,
                                     model=shelly_model, second_channel_w=second_channel_w, user=shelly_user)
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.ecotracker = EcoTrackerEmulator(self, delay_s=meter_delay_s)
        self.homewizard = HomeWizardEmulator(self, delay_s=meter_delay_s)
        self.json_meter = JsonMeterEmulator(self, delay_s=meter_delay_s, password=json_meter_password)
        self.speed = float(speed)
        self.seed = seed
        self.plant_params = plant if plant is not None else PlantParams()
        self.house = house if house is not None else HouseModel(seed=seed)
        self.meter = (
            meter
            if meter is not None
            else MeterModel(cadence_s=meter_cadence_s, latency_s=meter_latency_s, noise_w=meter_noise_w, seed=seed)
        )
        self.tick_s = float(tick_s)
        self.host = "127.0.0.1"
        self.meter_reversed = bool(meter_reversed)  # the clamp is mounted the wrong way round: every meter serves -grid

        self._lock = threading.RLock()  # one lock for the physics and every request that touches it
        self._stop = threading.Event()
        self._now_s = 0.0
        specs = units if units is not None else [UnitSpec(1)]
        primary = SimGateway(
            [SimUnit(spec, self.plant_params, 0.0, self._lock) for spec in specs],
            lock=self._lock,
            close_after_exception=close_after_exception,
            lan=lan,
        )
        self._gateways: list[SimGateway] = [primary]  # one per host:port; all share the physics lock
        self._gateway_ports: list[int] = [0]  # the port each gateway asks for at start() (0: ephemeral)
        self._fault: str | None = None
        self._frozen: tuple[float, float] | None = None
        self._avg: deque[tuple[float, float]] = deque()
        self._import_wh = _IMPORT_WH_START
        self._export_wh = _EXPORT_WH_START
        self._physics: threading.Thread | None = None
        self._started = False
        self.meter.observe(0.0, self._true_grid_locked(0.0))
        self._record_avg(0.0)
        for more in gateways:  # further gateways (one IP per v3 battery, a second RS485 gateway)
            self.add_gateway(more)

    # -- parts ----------------------------------------------------------------------------------------

    @property
    def gateway(self) -> SimGateway:
        """The primary Modbus gateway (``modbus_port``, ``add_unit``, ``close_after_exception``)."""
        return self._gateways[0]

    @property
    def gateways(self) -> list[SimGateway]:
        """All Modbus gateways, the primary one first (a new list)."""
        with self._lock:
            return list(self._gateways)

    @property
    def meter_emulators(self) -> list[MeterEmulator]:
        """The HTTP meter emulators, all serving this simulation's meter."""
        return [self.shelly, self.ecotracker, self.homewizard, self.json_meter]

    @property
    def modbus_port(self) -> int | None:
        """Port of the primary Modbus gateway once started, else None."""
        return self.gateway.port

    @property
    def shelly_port(self) -> int | None:
        """Port of the Shelly emulator once started, else None."""
        return self.shelly.port

    @property
    def ecotracker_port(self) -> int | None:
        """Port of the EcoTracker emulator once started, else None."""
        return self.ecotracker.port

    @property
    def homewizard_port(self) -> int | None:
        """Port of the HomeWizard P1 emulator once started, else None."""
        return self.homewizard.port

    @property
    def json_meter_port(self) -> int | None:
        """Port of the JSON meter (Tasmota SML) emulator once started, else None."""
        return self.json_meter.port

    @property
    def json_meter_url(self) -> str:
        """The URL a ``http_json`` meter section reads (Tasmota ``Status 10``)."""
        return f"http://{self.host}:{self.json_meter_port}/cm?cmnd=Status%2010"

    @property
    def shelly_password(self) -> str | None:
        """Password the Shelly emulator asks for (None: no auth)."""
        return self.shelly.password

    @property
    def shelly_profile(self) -> str:
        """The Shelly emulator's profile (``SHELLY_PROFILES``)."""
        return self.shelly.profile

    @property
    def shelly_device_id(self) -> str:
        """The Shelly emulator's device id (also the digest realm)."""
        return self.shelly.device_id

    @property
    def shelly_mac(self) -> str:
        """The Shelly emulator's MAC address, upper-case hex."""
        return self.shelly.mac

    @property
    def meter_delay_s(self) -> float:
        """How late the "timeout" meter fault answers, s."""
        return self.shelly.delay_s

    @property
    def close_after_exception(self) -> bool:
        """True: the primary gateway closes a connection after every exception response (v3)."""
        return self.gateway.close_after_exception

    @close_after_exception.setter
    def close_after_exception(self, value: bool) -> None:
        self.gateway.close_after_exception = bool(value)

    def add_gateway(self, units: Sequence[UnitSpec], port: int = 0, framer: str = "socket") -> SimGateway:
        """Another Modbus TCP server (its own host:port) with ``units``; started at once if the simulation runs.

        ``framer`` "rtu": Modbus RTU frames over TCP, like a gateway in transparent mode.
        """
        with self._lock:
            gateway = SimGateway([SimUnit(spec, self.plant_params, self._now_s, self._lock) for spec in units],
                                 lock=self._lock, close_after_exception=self.gateway.close_after_exception)
            gateway.framer = framer
            self._gateways.append(gateway)
            self._gateway_ports.append(port)
        if self._started:
            gateway.start(self.host, port)
        return gateway

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(
        self,
        host: str = "127.0.0.1",
        modbus_port: int | None = 0,
        shelly_port: int | None = 0,
        ecotracker_port: int | None = 0,
        homewizard_port: int | None = 0,
        json_meter_port: int | None = 0,
    ) -> Simulation:
        """Bind the servers (port 0 = ephemeral, None = don't start that one) and start the physics thread."""
        if self._started:
            raise RuntimeError("simulation already started")
        self._started = True
        self._stop.clear()
        self.host = host
        try:
            if shelly_port is not None:
                self.shelly.start(host, shelly_port)
            if ecotracker_port is not None:
                self.ecotracker.start(host, ecotracker_port)
            if homewizard_port is not None:
                self.homewizard.start(host, homewizard_port)
            if json_meter_port is not None:
                self.json_meter.start(host, json_meter_port)
            if modbus_port is not None:
                self.gateway.start(host, modbus_port)
                for gateway, port in zip(self._gateways[1:], self._gateway_ports[1:], strict=True):
                    gateway.start(host, port)
            if self._fault == "refused":
                for emulator in self.meter_emulators:
                    emulator.refuse_connections()
            self._physics = threading.Thread(target=self._physics_loop, name="sim-physics", daemon=True)
            self._physics.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop all servers and threads (quick; releases requests held by the "timeout" fault)."""
        self._stop.set()
        for emulator in self.meter_emulators:
            emulator.stop()
        for gateway in self.gateways:
            gateway.stop()
        if self._physics is not None:
            self._physics.join(timeout=5.0)
            self._physics = None
        self._started = False

    def __enter__(self) -> Simulation:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drop_modbus_connections(self) -> int:
        """Close every open Modbus TCP connection from the server side and keep listening.

        Like a gateway that restarts or the v3 firmware's periodic Ethernet reset (marstek-modbus.md §9):
        a client finds its idle connection closed on the next request. Returns how many were closed.
        """
        return sum(gateway.drop_connections() for gateway in self.gateways)

    # -- time -----------------------------------------------------------------------------------------

    @property
    def now_s(self) -> float:
        """Simulated time, s since construction."""
        with self._lock:
            return self._now_s

    def _physics_loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            self.step((now - last) * self.speed)
            last = now

    def step(self, dt_s: float) -> None:
        """Advance simulated time by ``dt_s`` (the physics thread calls this; tests may too, unstarted)."""
        with self._lock:
            units = self.units
            plants = [u.plant for u in units]
            max_chunk = min(0.1, self.meter.cadence_s / 2.0)
            remaining = dt_s
            while remaining > 1e-12:
                h = min(remaining, max_chunk)
                t1 = self._now_s + h
                for plant in plants:
                    plant.advance(t1)
                grid = self._true_grid_locked(t1, plants)
                if grid > 0:
                    self._import_wh += grid * h / 3600.0
                else:
                    self._export_wh += -grid * h / 3600.0
                self._now_s = t1
                for unit in units:  # out of RS485 control, a unit with its own meter regulates by itself
                    unit.tick(t1, grid)
                if self.meter.observe(t1, grid):
                    self._record_avg(t1)
                remaining -= h

    def _record_avg(self, now_s: float) -> None:
        reading = self.meter.read(now_s)
        if reading is None:
            return
        self._avg.append((now_s, reading[0]))
        while self._avg and self._avg[0][0] < now_s - _AVG_WINDOW_S:
            self._avg.popleft()

    # -- house and grid -------------------------------------------------------------------------------

    def set_load_w(self, w: float | None) -> None:
        """Set the household load to a constant, W (None: back to the house profile)."""
        with self._lock:
            self.house.set_load_w(w)

    def set_pv_w(self, w: float | None) -> None:
        """Set the PV production to a constant, W (None: back to the house profile)."""
        with self._lock:
            self.house.set_pv_w(w)

    def _true_grid_locked(self, t_s: float, plants: Sequence[BatteryPlant] | None = None) -> float:
        if plants is None:
            plants = [u.plant for u in self.units]
        return self.house.load_w(t_s) - self.house.pv_w(t_s) - sum(p.power_w for p in plants)

    def true_grid_power_w(self) -> float:
        """True grid power now: load − PV − Σ battery AC power, W (+ import)."""
        with self._lock:
            return self._true_grid_locked(self._now_s)

    def meter_reading_w(self) -> float | None:
        """The grid power the meters currently serve (before payload faults), W (+ import)."""
        return self.meter_snapshot().grid_w

    def status_line(self) -> str:
        """One line for the console: simulated time, load, PV, grid and every battery."""
        with self._lock:
            t = self._now_s
            load = self.house.load_w(t)
            pv = self.house.pv_w(t)
            grid = self._true_grid_locked(t)
            bats = ", ".join(
                f"#{u.unit_id} {u.power_w:+.0f} W {u.soc_pct:.1f} %{'' if u.rs485_control else ' (no RS485)'}"
                for u in self.units
            )
        return f"t={t:8.1f} s  load {load:6.0f} W  pv {pv:6.0f} W  grid {grid:+6.0f} W  | {bats}"

    # -- meter (the emulators' MeterSource) -----------------------------------------------------------

    @property
    def meter_fault(self) -> str | None:
        """The active meter fault kind (see ``METER_FAULTS``) or None."""
        return self._fault

    @property
    def meter_requests_held(self) -> int:
        """Meter requests the "timeout" fault is holding right now (a client waiting for its answer)."""
        return sum(emulator.requests_held for emulator in self.meter_emulators)

    def set_meter_fault(self, kind: str | None) -> None:
        """Inject a fault into both meter emulators; None clears it."""
        if kind not in METER_FAULTS:
            raise ValueError(f"unknown meter fault {kind!r}; one of {METER_FAULTS}")
        with self._lock:
            if kind == "frozen" and self._fault != "frozen":
                self._frozen = self.meter.read(self._now_s)
            previous, self._fault = self._fault, kind
        if kind == "refused" and previous != "refused" and self._started:
            for emulator in self.meter_emulators:
                emulator.refuse_connections()
        elif previous == "refused" and kind != "refused":
            for emulator in self.meter_emulators:
                emulator.accept_connections()

    def meter_snapshot(self) -> MeterSnapshot:
        """What the meter emulators serve now: the visible reading (after "frozen" / "absurd") and context."""
        with self._lock:
            now = self._now_s
            reading = self.meter.read(now)
            if self._fault == "frozen" and self._frozen is not None:
                reading = self._frozen
            value, sample_t = reading if reading is not None else (0.0, now)
            if self.meter_reversed:
                value = -value + 0.0
            if self._fault == "absurd":
                value = ABSURD_POWER_W if value >= 0 else -ABSURD_POWER_W
            avg = sum(v for _, v in self._avg) / len(self._avg) if self._avg else value
            return MeterSnapshot(
                grid_w=value,
                sample_age_s=max(0.0, now - sample_t) / self.speed,
                avg_w=avg,
                import_wh=self._import_wh,
                export_wh=self._export_wh,
                fault=self._fault,
                unixtime=int(time.time()),
                uptime_s=now,
            )

    # -- units ----------------------------------------------------------------------------------------

    def unit(self, unit_id: int) -> SimUnit:
        """The simulated unit that currently answers on ``unit_id`` (KeyError if none)."""
        with self._lock:
            for u in self.units:
                if u.unit_id == unit_id:
                    return u
        raise KeyError(f"no simulated unit with id {unit_id}")

    @property
    def units(self) -> list[SimUnit]:
        """All simulated units of all gateways (a new list)."""
        with self._lock:
            return [u for gateway in self.gateways for u in gateway.units]

    def add_unit(self, spec: UnitSpec) -> SimUnit:
        """Add a battery to the primary gateway's bus at the current simulated time."""
        with self._lock:
            return self.gateway.add_unit(SimUnit(spec, self.plant_params, self._now_s, self._lock))


# ---------------------------------------------------------------------------------------------------------
# The demo's simulation in a process of its own
# ---------------------------------------------------------------------------------------------------------

DEMO_START_TIMEOUT_S = 30.0


def demo_simulation() -> Simulation:
    """The demo's mixed fleet: one v2 RS485 gateway with two units and one Venus E v3 on its own LAN port."""
    return Simulation(units=[UnitSpec(1, soc_pct=55.0), UnitSpec(2, soc_pct=70.0)], house=HouseModel(demo=True),
                      gateways=[[UnitSpec(1, "v3", soc_pct=62.0)]])


@dataclass(frozen=True)
class UnitInfo:
    """A simulated unit as a client sees it: its Modbus ID and register set."""

    unit_id: int
    register_set: str


@dataclass(frozen=True)
class GatewayInfo:
    """A started simulated gateway: its port on 127.0.0.1, whether it is a v3 LAN port, its units."""

    port: int
    lan: bool
    units: tuple[UnitInfo, ...]


def describe(sim: Simulation) -> dict[str, Any]:
    """What a client of a started simulation needs: the Shelly's port and each gateway's port, kind and units."""
    return {"host": sim.host, "shelly_port": sim.shelly_port,
            "gateways": [{"port": g.port, "lan": g.lan,
                          "units": [{"unit_id": u.unit_id, "register_set": u.register_set} for u in g.units]}
                         for g in sim.gateways]}


def serve_demo(stdin: IO[str], stdout: IO[str]) -> int:
    """The child of ``SimulationProcess``: start the demo's simulation, write ``describe`` as one JSON line, run
    until ``stdin`` ends (the parent stopped it or is gone). SIGINT and SIGTERM are ignored: a Ctrl+C or a
    ``kill`` meant for the program's process group must leave the simulation running while the program stops
    its batteries through it; the program ends it after that (and its end closes ``stdin`` anyway)."""
    with contextlib.suppress(ValueError):  # not the main thread (tests): only the end of stdin counts anyway
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    sim = demo_simulation()
    sim.start()
    try:
        stdout.write(json.dumps(describe(sim)) + "\n")
        stdout.flush()
        stdin.read()  # returns at end of file
    finally:
        sim.stop()
    return 0


class SimulationProcess:
    """The demo's simulation (``demo_simulation``) in a process of its own, so that a busy machine slows the
    simulated devices and the program each on its own, as it does real devices, and the simulator's threads do
    not wait for the program's interpreter (nor the other way round).

    Describes itself like a started ``Simulation``: ``host``, ``shelly_port`` and ``gateways`` (``GatewayInfo``).
    ``stop()`` closes the child's stdin and waits for it; the child also ends by itself when this process ends
    (its stdin closes). Raises RuntimeError when the child does not start.
    """

    def __init__(self, start_timeout_s: float = DEMO_START_TIMEOUT_S) -> None:
        # A process group of its own: signals meant for the program's group (Ctrl+C, timeout, kill -- -pgid) do
        # not stop the simulation before the program has stopped the batteries through it.
        group: dict[str, Any]
        if sys.platform == "win32":
            group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        else:
            group = {"start_new_session": True}
        # ``python -m simulator`` from the project folder, wherever the program was started from.
        self._proc = subprocess.Popen([sys.executable, "-m", "simulator", "--serve-demo"],
                                      cwd=str(Path(__file__).resolve().parent.parent), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, encoding="utf-8", **group)
        first: list[str] = []
        out = self._proc.stdout
        assert out is not None
        reader = threading.Thread(target=lambda: first.append(out.readline()), name="sim-process-start", daemon=True)
        reader.start()
        reader.join(start_timeout_s)
        try:
            data = json.loads(first[0]) if first and first[0] else None
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            self.stop()
            raise RuntimeError(f"the simulator process did not start (exit status {self._proc.returncode})")
        self.host: str = data["host"]
        self.shelly_port: int = data["shelly_port"]
        self.gateways = [GatewayInfo(g["port"], g["lan"], tuple(UnitInfo(u["unit_id"], u["register_set"])
                                                                for u in g["units"]))
                         for g in data["gateways"]]

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the child: its stdin closes, it stops its servers; killed if it has not ended in ``timeout_s``."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def config_snippet(sim: Simulation, meter_type: str = "shelly") -> dict[str, Any]:
    """A config.json fragment that points the energy manager at a started simulation."""
    shelly: dict[str, Any] = {"ip": f"{sim.host}:{sim.shelly_port}"}
    if sim.shelly_password:
        shelly["password"] = sim.shelly_password
    units = sim.units
    battery: dict[str, Any] = {
        "ip": sim.host,
        "port": sim.modbus_port,
        "akku_ids": [u.unit_id for u in units],
        "register_set": units[0].register_set if units else "v2",
    }
    if battery["register_set"] == "v3" and not sim.gateway.lan:
        battery["rs485_gateway"] = True  # several v3 IDs on one host are refused unless it is an RS485 gateway
    if len(sim.gateways) > 1:  # several gateways: the battery.units form
        battery = {"units": [{"ip": f"{sim.host}:{g.port}", "id": u.unit_id, "register_set": u.register_set,
                              **({"framer": g.framer} if g.framer != "socket" else {}),
                              **({"rs485_gateway": True} if u.register_set == "v3" and not g.lan else {})}
                             for g in sim.gateways for u in g.units]}
    return {
        "energy_meter": {"type": meter_type},
        "shelly": shelly,
        "ecotracker": {"ip": f"{sim.host}:{sim.ecotracker_port}"},
        "homewizard": {"ip": f"{sim.host}:{sim.homewizard_port}"},
        "http_json": {"url": sim.json_meter_url, "power_path": "StatusSNS.SML.Power_curr"},
        "battery": battery,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator alone until Ctrl+C / SIGTERM."""
    parser = argparse.ArgumentParser(
        description="Simulated Shelly / EcoTracker grid meter and Marstek Venus batteries on loopback."
    )
    parser.add_argument("--batteries", type=int, default=1, help="number of batteries, ids 1..N (default 1)")
    parser.add_argument("--register-set", choices=("v2", "v3"), default="v2")
    parser.add_argument("--modbus-port", type=int, default=5020)
    parser.add_argument("--shelly-port", type=int, default=8081)
    parser.add_argument("--ecotracker-port", type=int, default=8082)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall-clock second")
    parser.add_argument("--demo-house", action="store_true", help="lively house profile (appliances, PV, clouds)")
    parser.add_argument("--shelly-password", default=None, help="require digest (Gen2) / basic (Gen1) auth")
    parser.add_argument("--shelly-profile", choices=SHELLY_PROFILES, default="triphase")
    parser.add_argument("--shelly-model", choices=tuple(SHELLY_MODELS), default=None,
                        help="Shelly device model (default: Pro 3EM, or Gen1 3EM with --shelly-profile gen1)")
    parser.add_argument("--soc", type=float, default=50.0, help="initial state of charge, %% (default 50)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--status-interval", type=float, default=5.0, help="seconds between status lines, 0 = off")
    parser.add_argument("--serve-demo", action="store_true", help=argparse.SUPPRESS)  # SimulationProcess's child
    args = parser.parse_args(argv)
    if args.serve_demo:
        return serve_demo(sys.stdin, sys.stdout)
    if args.batteries < 1 or args.batteries > 247:
        parser.error("--batteries must be 1..247")
    if args.speed <= 0:
        parser.error("--speed must be > 0")

    units = [UnitSpec(i, args.register_set, soc_pct=args.soc) for i in range(1, args.batteries + 1)]
    house = HouseModel(seed=args.seed, demo=args.demo_house)
    sim = Simulation(
        units,
        house=house,
        speed=args.speed,
        seed=args.seed,
        shelly_password=args.shelly_password,
        shelly_profile=args.shelly_profile,
        shelly_model=args.shelly_model,
    )
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        sim.start(args.host, args.modbus_port, args.shelly_port, args.ecotracker_port)
    except (OSError, RuntimeError) as exc:
        print(f"simulator: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        ids = [u.unit_id for u in sim.units]
        print(f"Modbus TCP   {sim.host}:{sim.modbus_port}  units {ids} ({args.register_set})")
        print(f"Shelly       http://{sim.host}:{sim.shelly_port}/  ({args.shelly_profile})")
        print(f"EcoTracker   http://{sim.host}:{sim.ecotracker_port}/v1/json")
        print(f"HomeWizard   http://{sim.host}:{sim.homewizard_port}/api/v1/data")
        print(f"JSON meter   {sim.json_meter_url}")
        print("config.json snippet:")
        print(json.dumps(config_snippet(sim), indent=2))
        print("Ctrl+C to stop.", flush=True)
        interval = args.status_interval if args.status_interval > 0 else None
        while not stop.wait(interval if interval is not None else 3600.0):
            if interval is not None:
                print(sim.status_line(), flush=True)
    finally:
        sim.stop()
    print("simulator stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
