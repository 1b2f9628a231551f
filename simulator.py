"""Simulated house, grid meters and Marstek Venus batteries for tests, the benchmark and ``main.py --demo``.

Two layers:

* **Physics** (pure, steppable with explicit time, no threads, no clock reads): ``BatteryPlant``,
  ``HouseModel``, ``MeterModel`` and the efficiency curve. The benchmark drives these directly with a
  simulated clock.
* **Wire side** (``Simulation``): real servers on loopback that speak the devices' protocols —
  a Shelly emulator (Pro 3EM triphase / monophase, 3EM Gen1) and an EcoTracker emulator over HTTP, and a
  Modbus TCP server with one or more Marstek units behind it (register sets v2 and v3) — plus a physics
  thread that advances simulated time at wall clock × ``speed``.

Sign conventions (as everywhere in this project, see ``devices.py``):
grid power + import / − export, W; battery power + discharging / − charging, W; SoC 0..100 %.

Run alone: ``python simulator.py --batteries 2`` prints the ports and a config.json snippet.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hashlib
import hmac
import itertools
import json
import math
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

# ---------------------------------------------------------------------------------------------------------
# Efficiency curve (marstek-modbus.md §11, MVEM, external AC clamp): (AC power W, efficiency)
# ---------------------------------------------------------------------------------------------------------

EFFICIENCY_DISCHARGE: tuple[tuple[float, float], ...] = (
    (125.0, 0.738),
    (250.0, 0.856),
    (500.0, 0.898),
    (1000.0, 0.912),
    (2500.0, 0.893),
)
EFFICIENCY_CHARGE: tuple[tuple[float, float], ...] = (
    (125.0, 0.772),
    (250.0, 0.885),
    (500.0, 0.938),
    (1000.0, 0.955),
    (2500.0, 0.944),
)


def efficiency(power_w: float, table: Sequence[tuple[float, float]]) -> float:
    """Efficiency at |power_w| by linear interpolation in ``table``; flat outside the table."""
    p = abs(power_w)
    if p <= table[0][0]:
        return table[0][1]
    for (p0, e0), (p1, e1) in itertools.pairwise(table):
        if p <= p1:
            return e0 + (e1 - e0) * (p - p0) / (p1 - p0)
    return table[-1][1]


# ---------------------------------------------------------------------------------------------------------
# Battery plant
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PlantParams:
    """Battery plant model (zero-feed-control.md §6). v3-like variant: dead_time_s=0.8, tau_s=1.5."""

    dead_time_s: float = 0.5
    tau_s: float = 1.0
    max_power_w: float = 2500.0
    capacity_wh: float = 5120.0
    bms_min_soc_pct: float = 11.0
    bms_max_soc_pct: float = 100.0


_PENDING_MAX = 64  # pending commands kept during the dead time
_SETTLED_W = 0.5  # |target - actual| below this counts as settled: the lag is snapped to the target
_SOC_EPS = 1e-9  # SoC tolerance for the BMS limits (floating-point rounding at the exact limit)


class BatteryPlant:
    """One battery's AC power response and state of charge, stepped with explicit time.

    ``command(power_w, now_s)`` sets a new target (+ discharge, − charge) that takes effect ``dead_time_s``
    later; ``advance(now_s)`` integrates up to ``now_s``. The actual AC power follows the target through a
    first-order lag (exact discrete formula), is clamped to ±max_power_w, and is cut to 0 by the BMS
    (no discharge at SoC ≤ bms_min_soc_pct, no charge at SoC ≥ bms_max_soc_pct). SoC integrates DC energy:
    discharge DC = AC / η, charge DC = AC · η (``EFFICIENCY_*``). Energies are cumulative Wh.
    """

    def __init__(self, params: PlantParams | None = None, soc_pct: float = 50.0, now_s: float = 0.0) -> None:
        self.params = params if params is not None else PlantParams()
        self.soc_pct = float(soc_pct)
        self.power_w = 0.0  # actual AC power, + discharging
        self.target_w = 0.0  # target in effect (after the dead time)
        self.conversion_loss_wh = 0.0
        self.charged_wh = 0.0  # AC side
        self.discharged_wh = 0.0  # AC side
        self.delivers_nothing = False  # firmware ACKs setpoints but delivers ~0 W
        self.now_s = float(now_s)
        self._pending: deque[tuple[float, float]] = deque()

    def command(self, power_w: float, now_s: float) -> None:
        """Command ``power_w`` (+ discharge, − charge) at ``now_s``; effective ``dead_time_s`` later."""
        if now_s > self.now_s:
            self.advance(now_s)
        if len(self._pending) >= _PENDING_MAX:
            # Overflow (a flood of commands within one dead time): the oldest one takes effect early.
            self.target_w = self._pending.popleft()[1]
        self._pending.append((now_s + self.params.dead_time_s, float(power_w)))

    def advance(self, now_s: float) -> None:
        """Integrate the plant from its current time up to ``now_s`` (no-op for times in the past)."""
        while True:
            while self._pending and self._pending[0][0] <= self.now_s:
                self.target_w = self._pending.popleft()[1]
            if self.now_s >= now_s:
                return
            t_end = now_s
            if self._pending and self._pending[0][0] < t_end:
                t_end = self._pending[0][0]
            self._integrate(t_end - self.now_s)
            self.now_s = t_end

    # -- internals ------------------------------------------------------------------------------------

    def _effective_target(self) -> float:
        p = self.params
        if self.delivers_nothing:
            return 0.0
        target = max(-p.max_power_w, min(p.max_power_w, self.target_w))
        if target > 0.0 and self.soc_pct <= p.bms_min_soc_pct + _SOC_EPS:
            return 0.0
        if target < 0.0 and self.soc_pct >= p.bms_max_soc_pct - _SOC_EPS:
            return 0.0
        return target

    def _bms_cut(self) -> None:
        p = self.params
        if (
            self.delivers_nothing
            or (self.power_w > 0.0 and self.soc_pct <= p.bms_min_soc_pct + _SOC_EPS)
            or (self.power_w < 0.0 and self.soc_pct >= p.bms_max_soc_pct - _SOC_EPS)
        ):
            self.power_w = 0.0

    def _integrate(self, dt: float) -> None:
        p = self.params
        tau = p.tau_s
        remaining = dt
        while remaining > 1e-12:
            self._bms_cut()
            target = self._effective_target()
            p0 = self.power_w
            if p0 == 0.0 and target == 0.0:
                return
            if abs(target - p0) > _SETTLED_W and tau > 0:
                # Transient: short chunks so the efficiency lookup and the BMS checks stay accurate.
                h = min(remaining, 0.25 * tau)
                if p0 * target < 0.0:
                    # Split exactly where the power changes sign (charge and discharge use different curves).
                    h = min(h, max(tau * math.log((p0 - target) / -target), 1e-9))
                a = math.exp(-h / tau)
                p1 = target + (p0 - target) * a
                energy_wh = (target * h + (p0 - target) * tau * (1.0 - a)) / 3600.0
            else:
                # Settled: constant power, split exactly where the SoC reaches a BMS limit. The small rest
                # of the lag's tail, (p0 - target) · tau, is booked here so that energy is conserved.
                p1 = target
                h = min(remaining, self._time_to_limit(target))
                energy_wh = (target * h + (p0 - target) * tau) / 3600.0
            self._account(energy_wh, h)
            self.power_w = p1
            remaining -= h

    def _time_to_limit(self, power_w: float) -> float:
        p = self.params
        if power_w == 0.0:
            return math.inf
        if power_w > 0.0:
            dc_w = power_w / efficiency(power_w, EFFICIENCY_DISCHARGE)
            room_pct = self.soc_pct - p.bms_min_soc_pct
        else:
            dc_w = -power_w * efficiency(power_w, EFFICIENCY_CHARGE)
            room_pct = p.bms_max_soc_pct - self.soc_pct
        rate_pct_s = dc_w / p.capacity_wh * 100.0 / 3600.0
        return max(room_pct / rate_pct_s, 1e-6)

    def _account(self, energy_ac_wh: float, h: float) -> None:
        if energy_ac_wh == 0.0 or h <= 0.0:
            return
        mean_w = energy_ac_wh * 3600.0 / h
        if energy_ac_wh > 0.0:
            dc_wh = energy_ac_wh / efficiency(mean_w, EFFICIENCY_DISCHARGE)
            self.discharged_wh += energy_ac_wh
            self.conversion_loss_wh += dc_wh - energy_ac_wh
            self.soc_pct -= dc_wh / self.params.capacity_wh * 100.0
        else:
            dc_wh = -energy_ac_wh * efficiency(mean_w, EFFICIENCY_CHARGE)
            self.charged_wh += -energy_ac_wh
            self.conversion_loss_wh += -energy_ac_wh - dc_wh
            self.soc_pct += dc_wh / self.params.capacity_wh * 100.0
        self.soc_pct = min(100.0, max(0.0, self.soc_pct))


# ---------------------------------------------------------------------------------------------------------
# House (load and PV)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    start_s: float
    end_s: float
    power_w: float


class HouseModel:
    """Household load and PV, both ≥ 0 W, as pure functions of time.

    Manual use (tests): ``set_load_w(w)`` / ``set_pv_w(w)`` override with constants. Without override and
    ``demo=False`` the load is ``base_load_w`` and PV is ``pv_peak_w``, both constant.

    ``demo=True``: a lively profile compressed so that something visible happens every ~20–60 s:
    base load with noise, a fridge, kettle / microwave / oven / hair-dryer steps, washing-machine pulses,
    and a PV curve with passing clouds (``pv_peak_w`` defaults to 2500 W in demo mode). The profile
    repeats every ``demo_period_s`` and is deterministic for a given seed.
    """

    def __init__(
        self,
        seed: int = 1,
        base_load_w: float = 300.0,
        pv_peak_w: float = 0.0,
        demo: bool = False,
        demo_period_s: float = 1800.0,
    ) -> None:
        self.seed = seed
        self.base_load_w = float(base_load_w)
        self.demo = demo
        self.pv_peak_w = float(pv_peak_w) if (pv_peak_w or not demo) else 2500.0
        self.demo_period_s = float(demo_period_s)
        self._load_override: float | None = None
        self._pv_override: float | None = None
        self._events: list[_Event] = []
        self._noise: list[float] = []
        self._clouds: list[float] = []
        if demo:
            self._build_demo(random.Random(seed))

    def set_load_w(self, w: float | None) -> None:
        """Override the load with a constant (None: back to the profile)."""
        self._load_override = None if w is None else float(w)

    def set_pv_w(self, w: float | None) -> None:
        """Override PV with a constant (None: back to the profile)."""
        self._pv_override = None if w is None else float(w)

    def load_w(self, t_s: float) -> float:
        """Household consumption at ``t_s``, W ≥ 0."""
        if self._load_override is not None:
            return self._load_override
        if not self.demo:
            return self.base_load_w
        tp = t_s % self.demo_period_s
        second = int(tp)
        load = self.base_load_w + 60.0 * math.sin(2.0 * math.pi * tp / 300.0) + self._noise[second]
        if (tp % 90.0) < 40.0:  # fridge compressor
            load += 100.0
        for ev in self._events:
            if ev.start_s > tp:
                break
            if tp < ev.end_s:
                load += ev.power_w
        return max(50.0, load)

    def pv_w(self, t_s: float) -> float:
        """PV production at ``t_s``, W ≥ 0."""
        if self._pv_override is not None:
            return self._pv_override
        if not self.demo:
            return self.pv_peak_w
        tp = t_s % self.demo_period_s
        sun = 0.55 + 0.45 * math.sin(2.0 * math.pi * tp / 600.0)
        # Cloud factor per 10 s slot, linearly ramped between slots.
        slot = tp / 10.0
        i = int(slot)
        c0 = self._clouds[i % len(self._clouds)]
        c1 = self._clouds[(i + 1) % len(self._clouds)]
        cloud = c0 + (c1 - c0) * (slot - i)
        return max(0.0, self.pv_peak_w * sun * cloud)

    def _build_demo(self, rng: random.Random) -> None:
        period = self.demo_period_s
        appliances = (
            # (power W, min s, max s, weight); power 0 = washing machine
            (2000.0, 60.0, 120.0, 3),  # kettle
            (1100.0, 30.0, 90.0, 2),  # microwave
            (2400.0, 40.0, 90.0, 1),  # oven heating burst
            (1500.0, 45.0, 90.0, 1),  # hair dryer
            (0.0, 120.0, 200.0, 2),  # washing machine
        )
        weights = [a[3] for a in appliances]
        events: list[_Event] = []
        t = rng.uniform(10.0, 30.0)
        # One appliance at a time, 20–60 s of quiet between them: something visible every ~20–60 s.
        while t < period - 30.0:
            power, dmin, dmax, _w = rng.choices(appliances, weights=weights)[0]
            end = min(period, t + rng.uniform(dmin, dmax))
            if power > 0.0:
                events.append(_Event(t, end, power))
            else:
                # Washing machine: 40 s heating, then drum pulses 330 W 8 s / 120 W 8 s.
                events.append(_Event(t, t + 40.0, 2000.0))
                pulse_t = t + 40.0
                high = True
                while pulse_t < end:
                    events.append(_Event(pulse_t, min(end, pulse_t + 8.0), 330.0 if high else 120.0))
                    pulse_t += 8.0
                    high = not high
            t = end + rng.uniform(20.0, 60.0)
        events.sort(key=lambda e: e.start_s)
        self._events = events
        self._noise = [rng.gauss(0.0, 15.0) for _ in range(int(period) + 1)]
        clouds: list[float] = []
        cloudy = False
        level = 1.0
        for _ in range(int(period / 10.0) + 1):
            u = rng.random()
            if not cloudy and u < 0.15:
                cloudy, level = True, rng.uniform(0.15, 0.45)
            elif cloudy and u < 0.30:
                cloudy, level = False, 1.0
            clouds.append(level)
        self._clouds = clouds


# ---------------------------------------------------------------------------------------------------------
# Meter
# ---------------------------------------------------------------------------------------------------------


class MeterModel:
    """Sample-and-hold grid meter with latency, gaussian noise and a resolution, on explicit time.

    Whoever steps time tells the meter the true grid power: ``observe(now_s, true_grid_w)``. The meter
    samples at cadence ticks (t = k · cadence_s); ``observe`` records one sample for the latest tick that
    passed since the previous call, using the value it is given (call it at least once per tick for exact
    sample instants). ``read(now_s)`` returns ``(value_w, sample_time_s)`` of the newest sample that is at
    least ``latency_s`` old, or None before the first sample. Right after the very first sample that one is
    visible at once (the meter is primed as if it had been running before).

    ``value(now_s, true_grid_fn)`` does both: it calls ``true_grid_fn(tick_s)`` for the cadence ticks up to
    ``now_s`` (only those that can still matter) and returns ``read(now_s)``.
    """

    def __init__(
        self,
        cadence_s: float = 1.0,
        latency_s: float = 0.3,
        noise_w: float = 10.0,
        resolution_w: float = 1.0,
        seed: int = 1,
    ) -> None:
        if cadence_s <= 0:
            raise ValueError("cadence_s must be > 0")
        self.cadence_s = float(cadence_s)
        self.latency_s = max(0.0, float(latency_s))
        self.noise_w = float(noise_w)
        self.resolution_w = float(resolution_w)
        self._rng = random.Random(seed)
        self._last_tick: int | None = None
        keep = int(self.latency_s / self.cadence_s) + 3
        self._samples: deque[tuple[float, float]] = deque(maxlen=keep)  # (sample time, value)

    def _quantise(self, true_w: float) -> float:
        v = true_w + (self._rng.gauss(0.0, self.noise_w) if self.noise_w > 0 else 0.0)
        if self.resolution_w > 0:
            v = round(v / self.resolution_w) * self.resolution_w
        return float(v)

    def observe(self, now_s: float, true_grid_w: float) -> bool:
        """Tell the meter the true grid power at ``now_s``; True when a new sample was taken."""
        tick = math.floor(now_s / self.cadence_s + 1e-9)
        if self._last_tick is not None and tick <= self._last_tick:
            return False
        self._last_tick = tick
        self._samples.append((tick * self.cadence_s, self._quantise(true_grid_w)))
        return True

    def read(self, now_s: float) -> tuple[float, float] | None:
        """Newest sample at least latency_s old at ``now_s``: ``(value_w, sample_time_s)``, or None."""
        if not self._samples:
            return None
        limit = now_s - self.latency_s + 1e-9
        for t, v in reversed(self._samples):
            if t <= limit:
                return v, t
        t, v = self._samples[0]
        return v, t

    def value(self, now_s: float, true_grid_fn: Callable[[float], float]) -> tuple[float, float]:
        """Sample ``true_grid_fn`` at the cadence ticks up to ``now_s`` and return ``read(now_s)``."""
        last = math.floor(now_s / self.cadence_s + 1e-9)
        first = last - (self._samples.maxlen or 1) + 1
        if self._last_tick is not None:
            first = max(first, self._last_tick + 1)
        for k in range(first, last + 1):
            t = k * self.cadence_s
            self.observe(t, true_grid_fn(t))
        reading = self.read(now_s)
        assert reading is not None  # the tick at or before now_s has just been observed
        return reading


# ---------------------------------------------------------------------------------------------------------
# Simulated Marstek unit (registers on top of a BatteryPlant)
# ---------------------------------------------------------------------------------------------------------

REG_DEVICE_NAME = 31000  # 10 registers ASCII
REG_UNIT_ID = 41100
REG_RESTART = 41000
REG_BACKUP = 41200
REG_RS485 = 42000
REG_FORCE_MODE = 42010
REG_TARGET_SOC = 42011
REG_CHARGE_POWER = 42020
REG_DISCHARGE_POWER = 42021
REG_WORK_MODE = 43000
REG_MAX_CHARGE = 44002
REG_MAX_DISCHARGE = 44003
RS485_ON = 0x55AA  # 21930
RS485_OFF = 0x55BB  # 21947
FORCE_STOP, FORCE_CHARGE, FORCE_DISCHARGE = 0, 1, 2
MAX_SETPOINT_W = 2500
V3_MAX_READ_COUNT = 32  # larger reads get no answer at all on v3

EXC_ILLEGAL_FUNCTION = 1
EXC_ILLEGAL_ADDRESS = 2
EXC_ILLEGAL_VALUE = 3

_WRITE_LOG_MAX = 1000

# Writable registers: address -> (min, max). Anything else mapped is read-only (exception 2 on write).
_WRITABLE_COMMON: dict[int, tuple[int, int]] = {
    REG_RESTART: (RS485_ON, RS485_ON),
    REG_UNIT_ID: (1, 255),
    REG_BACKUP: (0, 1),
    REG_RS485: (RS485_ON, RS485_OFF),  # exactly one of the two codes, checked separately
    REG_FORCE_MODE: (0, 2),
    REG_TARGET_SOC: (11, 100),
    REG_CHARGE_POWER: (0, MAX_SETPOINT_W),
    REG_DISCHARGE_POWER: (0, MAX_SETPOINT_W),
    REG_WORK_MODE: (0, 2),
    REG_MAX_CHARGE: (0, MAX_SETPOINT_W),
    REG_MAX_DISCHARGE: (0, MAX_SETPOINT_W),
}
_WRITABLE_V2_ONLY: dict[int, tuple[int, int]] = {44000: (800, 1000), 44001: (120, 300)}


def _u16(v: float) -> int:
    return max(0, min(0xFFFF, round(v)))


def _s16(v: float) -> int:
    return max(-0x8000, min(0x7FFF, round(v))) & 0xFFFF


def _s32(v: float) -> tuple[int, int]:
    x = max(-0x80000000, min(0x7FFFFFFF, round(v))) & 0xFFFFFFFF
    return x >> 16, x & 0xFFFF


def _u32(v: float) -> tuple[int, int]:
    x = max(0, min(0xFFFFFFFF, round(v)))
    return x >> 16, x & 0xFFFF


def _ascii_regs(text: str, count: int = 10) -> list[int]:
    raw = text.encode("ascii")[: count * 2].ljust(count * 2, b"\0")
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, count * 2, 2)]


@dataclass
class UnitSpec:
    """One simulated battery on the Modbus bus."""

    unit_id: int
    register_set: str = "v2"  # "v2" (Venus E v1/v2, C, Duravolt) | "v3" (Venus E v3, A, D)
    soc_pct: float = 50.0
    max_power_w: float = 2500.0
    capacity_wh: float = 5120.0


class SimUnit:
    """A simulated Marstek unit: a ``BatteryPlant`` plus the control registers of marstek-modbus.md §3.

    Tests read ``soc_pct``, ``power_w`` (actual AC, + discharge), ``rs485_control``, ``force_mode``,
    ``charge_power_w``, ``discharge_power_w``, ``unit_id`` and ``write_log`` (bounded list of
    ``(register, value)`` writes received, newest last), and may set ``silent`` (no answer at all),
    ``slow_s`` (every answer is sent this many seconds late; the request itself is applied at once),
    ``fail_with_exception`` (a Modbus exception code, e.g. 4 "device failure": every request is answered
    with it and nothing is applied; None = normal), ``delivers_nothing`` (ACKs but delivers 0 W), call
    ``set_soc(pct)`` or ``drop_rs485()``.
    Mutate only through ``Simulation`` methods or while the simulation is idle; attribute writes of
    plain flags are atomic and fine from tests.

    Setpoints are obeyed only while RS485 control is on (force 1 → −42020 W, 2 → +42021 W, 0 → 0 W,
    clamped by 44002/44003). Autonomous work modes (anti-feed, AI) are not simulated: without RS485
    control the unit idles at 0 W.
    """

    def __init__(
        self, spec: UnitSpec, params: PlantParams, now_s: float = 0.0, lock: threading.RLock | None = None
    ) -> None:
        self._lock = lock if lock is not None else threading.RLock()
        if spec.register_set not in ("v2", "v3"):
            raise ValueError(f"register_set must be 'v2' or 'v3', not {spec.register_set!r}")
        self.unit_id = int(spec.unit_id)
        self.register_set = spec.register_set
        plant_params = PlantParams(**{**params.__dict__})
        plant_params.max_power_w = float(spec.max_power_w)
        plant_params.capacity_wh = float(spec.capacity_wh)
        self.plant = BatteryPlant(plant_params, soc_pct=spec.soc_pct, now_s=now_s)
        self.silent = False
        self.slow_s = 0.0
        self.fail_with_exception: int | None = None
        self.rs485_control = False
        self.force_mode = FORCE_STOP
        self.charge_power_w = 0
        self.discharge_power_w = 0
        self.target_soc_pct = 100
        self.work_mode = 1
        self.backup_disabled = 0
        self.max_charge_power_w = MAX_SETPOINT_W
        self.max_discharge_power_w = MAX_SETPOINT_W
        self.cutoff_charge = 1000  # v2 44000, ×0.1 %
        self.cutoff_discharge = 120  # v2 44001, ×0.1 %
        self.write_log: list[tuple[int, int]] = []
        self._commanded_w = 0.0
        self._regs = self._build_register_map()

    # -- state seen by tests --------------------------------------------------------------------------

    @property
    def soc_pct(self) -> float:
        """State of charge, %."""
        return self.plant.soc_pct

    @property
    def power_w(self) -> float:
        """Actual AC power, W, + discharging / − charging."""
        return self.plant.power_w

    @property
    def delivers_nothing(self) -> bool:
        """True: the firmware ACKs setpoints but delivers ~0 W."""
        return self.plant.delivers_nothing

    @delivers_nothing.setter
    def delivers_nothing(self, value: bool) -> None:
        self.plant.delivers_nothing = bool(value)

    @property
    def commanded_w(self) -> float:
        """Power the registers currently ask for (+ discharge), before dead time, lag and BMS."""
        return self._commanded_w

    def set_soc(self, pct: float) -> None:
        """Set the state of charge, %."""
        with self._lock:
            self.plant.soc_pct = max(0.0, min(100.0, float(pct)))

    def drop_rs485(self) -> None:
        """Leave RS485 control silently, as the firmware sometimes does (setpoints stay but are ignored)."""
        with self._lock:
            self.rs485_control = False
            self._apply()

    # -- register access (called by the Simulation under its lock) -----------------------------------

    def read_registers(self, address: int, count: int) -> list[int] | int:
        """Register values for a FC03 read, or a Modbus exception code."""
        out: list[int] = []
        for addr in range(address, address + count):
            getter = self._regs.get(addr)
            if getter is None:
                return EXC_ILLEGAL_ADDRESS
            out.append(getter() & 0xFFFF)
        return out

    def write_register(self, address: int, value: int) -> int | None:
        """Apply one register write (FC06 or one word of FC16); None or a Modbus exception code.

        41100 (unit id) is validated here and applied by the Simulation (re-addressing).
        """
        self.write_log.append((address, value))
        if len(self.write_log) > _WRITE_LOG_MAX:
            del self.write_log[: len(self.write_log) - _WRITE_LOG_MAX]
        limits = _WRITABLE_COMMON.get(address)
        if limits is None and self.register_set == "v2":
            limits = _WRITABLE_V2_ONLY.get(address)
        if limits is None:
            return EXC_ILLEGAL_ADDRESS
        if address == REG_RS485:
            if value not in (RS485_ON, RS485_OFF):
                return EXC_ILLEGAL_VALUE
        elif not limits[0] <= value <= limits[1]:
            return EXC_ILLEGAL_VALUE
        if address == REG_RS485:
            self.rs485_control = value == RS485_ON
        elif address == REG_FORCE_MODE:
            self.force_mode = value
        elif address == REG_CHARGE_POWER:
            self.charge_power_w = value
        elif address == REG_DISCHARGE_POWER:
            self.discharge_power_w = value
        elif address == REG_TARGET_SOC:
            self.target_soc_pct = value
        elif address == REG_WORK_MODE:
            self.work_mode = value
            self.rs485_control = False  # any 43000 write ends RS485 control
        elif address == REG_MAX_CHARGE:
            self.max_charge_power_w = value
        elif address == REG_MAX_DISCHARGE:
            self.max_discharge_power_w = value
        elif address == REG_BACKUP:
            self.backup_disabled = value
        elif address == 44000:
            self.cutoff_charge = value
        elif address == 44001:
            self.cutoff_discharge = value
        elif address == REG_RESTART:
            self._reboot()
        self._apply()
        return None

    def _reboot(self) -> None:
        # RAM registers are 0 after a reboot; RS485 control is off (marstek-modbus.md §4, §5).
        self.rs485_control = False
        self.force_mode = FORCE_STOP
        self.charge_power_w = 0
        self.discharge_power_w = 0
        self.target_soc_pct = 0

    def _apply(self) -> None:
        """Recompute the commanded power from the registers and hand it to the plant."""
        wanted = 0.0
        if self.rs485_control:
            if self.force_mode == FORCE_CHARGE:
                wanted = -float(min(self.charge_power_w, self.max_charge_power_w))
            elif self.force_mode == FORCE_DISCHARGE:
                wanted = float(min(self.discharge_power_w, self.max_discharge_power_w))
        if wanted != self._commanded_w:
            self._commanded_w = wanted
            self.plant.command(wanted, self.plant.now_s)

    # -- register map ---------------------------------------------------------------------------------

    def _dc_power_w(self) -> float:
        """DC battery power, + discharging."""
        ac = self.plant.power_w
        if ac > 0:
            return ac / efficiency(ac, EFFICIENCY_DISCHARGE)
        return ac * efficiency(ac, EFFICIENCY_CHARGE)

    def _battery_voltage_v(self) -> float:
        return 49.6 + 5.6 * self.plant.soc_pct / 100.0

    def _inverter_state(self) -> int:
        p = self.plant.power_w
        if p > 1.0:
            return 3  # discharge
        if p < -1.0:
            return 2  # charge
        return 1  # standby

    def _build_register_map(self) -> dict[int, Callable[[], int]]:
        r: dict[int, Callable[[], int]] = {}
        plant = self.plant
        v3 = self.register_set == "v3"

        def const(value: int) -> Callable[[], int]:
            return lambda: value

        def pair(fn: Callable[[], tuple[int, int]], addr: int) -> None:
            r[addr] = lambda: fn()[0]
            r[addr + 1] = lambda: fn()[1]

        name = _ascii_regs("VNSE3-0" if v3 else "VNSE-2")
        for i, word in enumerate(name):
            r[REG_DEVICE_NAME + i] = const(word)
        soc_int = lambda: _u16(plant.soc_pct)  # noqa: E731
        ac = lambda: plant.power_w  # noqa: E731
        r[32104] = soc_int
        pair(lambda: _s32(ac()), 32202)
        r[32200] = const(2300)  # AC voltage 0.1 V
        r[32201] = lambda: _s16(ac() / 230.0 * 100.0)  # AC current 0.01 A
        pair(lambda: _u32(plant.charged_wh / 10.0), 33000)  # 0.01 kWh
        pair(lambda: _u32(plant.discharged_wh / 10.0), 33002)
        r[35000] = const(_s16(285))  # internal temperature 0.1 °C
        r[35001] = const(_s16(301))
        r[35100] = self._inverter_state
        r[35110] = const(576)  # BMS charge voltage limit 0.1 V
        r[35111] = const(500)  # BMS charge current limit 0.1 A
        r[35112] = const(500)  # BMS discharge current limit 0.1 A
        r[REG_UNIT_ID] = lambda: self.unit_id
        r[REG_BACKUP] = lambda: self.backup_disabled
        r[REG_RS485] = lambda: RS485_ON if self.rs485_control else RS485_OFF
        r[REG_FORCE_MODE] = lambda: self.force_mode
        r[REG_TARGET_SOC] = lambda: self.target_soc_pct
        r[REG_CHARGE_POWER] = lambda: self.charge_power_w
        r[REG_DISCHARGE_POWER] = lambda: self.discharge_power_w
        r[REG_WORK_MODE] = lambda: 1 if self.rs485_control else self.work_mode
        r[REG_MAX_CHARGE] = lambda: self.max_charge_power_w
        r[REG_MAX_DISCHARGE] = lambda: self.max_discharge_power_w
        if not v3:
            r[31100] = const(103)  # SW version 0.01 → 1.03
            r[31101] = const(153)  # EMS firmware
            r[31102] = const(213)  # BMS version
            r[32100] = lambda: _u16(self._battery_voltage_v() * 100.0)  # 0.01 V
            # battery current 0.01 A, + discharging
            r[32101] = lambda: _s16(self._dc_power_w() / self._battery_voltage_v() * 100.0)
            pair(lambda: _s32(self._dc_power_w()), 32102)  # + discharge (sign uncertain on real devices)
            r[32105] = lambda: _u16(plant.soc_pct / 100.0 * plant.params.capacity_wh)  # 0.001 kWh
            r[32204] = const(5000)  # 0.01 Hz
            r[35002] = const(_s16(305))
            r[35010] = const(_s16(24))  # cell temperatures, 1 °C from BMS v213
            r[35011] = const(_s16(22))
            r[37007] = lambda: _u16(self._battery_voltage_v() / 16.0 * 1000.0 + 5)  # max cell 0.001 V
            r[37008] = lambda: _u16(self._battery_voltage_v() / 16.0 * 1000.0 - 5)
            r[44000] = lambda: self.cutoff_charge
            r[44001] = lambda: self.cutoff_discharge
        else:
            r[30001] = lambda: _s16(-self._dc_power_w())  # battery DC power, + charging (opposite to 30006)
            r[30006] = lambda: _s16(ac())  # AC power, + discharging
            r[30007] = const(0)  # off-grid power
            r[30100] = lambda: _u16(self._battery_voltage_v() * 100.0)  # 0.01 V
            r[30101] = lambda: _s16(-self._dc_power_w() / self._battery_voltage_v() * 10.0)  # 0.1 A
            r[30200] = const(150)  # EMS version
            r[30202] = const(108)  # VMS version
            r[30204] = const(215)  # BMS version
            r[32105] = lambda: _u16(plant.soc_pct / 100.0 * plant.params.capacity_wh)  # 1 Wh
            r[32204] = const(500)  # 0.1 Hz
            r[34002] = lambda: _u16(plant.soc_pct * 10.0)  # 0.1 %
            for i in range(16):
                r[34018 + i] = lambda i=i: _u16(self._battery_voltage_v() / 16.0 * 1000.0 + (i % 3) - 1)
            r[35010] = const(_s16(240))
            r[35011] = const(_s16(221))
        return r


# ---------------------------------------------------------------------------------------------------------
# Meter emulators (HTTP)
# ---------------------------------------------------------------------------------------------------------

_PAYLOAD_FAULTS = ("not_json", "missing_field", "non_numeric", "nan", "absurd", "frozen")
METER_FAULTS = (None, "timeout", "http500", *_PAYLOAD_FAULTS, "refused")
SHELLY_PROFILES = ("triphase", "monophase", "gen1")
ABSURD_POWER_W = 150_000.0
_PHASE_SHARES = (0.40, 0.25, 0.35)  # how the total is split over the three phases / EM1 channels
_SHELLY_SERVER = "ShellyHTTP/1.0.0"
_ECOTRACKER_404 = (
    "everHome Local API: <a href='/v1/json'>/v1/json</a><br>everHome Local API Documentation: "
    "<a href='https://everhome.cloud/en/developer/ecotracker'>Local-API Documentation</a><br>everHome Homepage: "
    "<a href='https://everhome.cloud'>everHome.cloud</a><br>everHome Cloud-APi: "
    "<a href='https://everhome.cloud/en/developer/api'>Cloud-API Documentation</a>"
)
_DIGEST_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]*))')
_NONCE_SLOTS = 32  # like the firmware's nonce ring


@dataclass(frozen=True)
class _MeterSnapshot:
    """What the meter emulators serve: the visible reading plus context, taken under the simulation lock."""

    grid_w: float  # reading (after "frozen" / "absurd"), + import
    sample_age_s: float  # wall-clock age of the sample
    avg_w: float  # mean of the last minute of samples
    import_wh: float
    export_wh: float
    fault: str | None
    unixtime: int


def _split_phases(total: float) -> tuple[float, float, float]:
    """Split a total over three phases (0.1 W steps) so that the phases add up to the total."""
    a = round(total * _PHASE_SHARES[0], 1)
    b = round(total * _PHASE_SHARES[1], 1)
    c = round(total - a - b, 1)
    return a, b, c


def _corrupt(obj: Any, keys: frozenset[str], fault: str | None) -> Any:
    """Apply a payload fault (missing_field / non_numeric / nan) to every power key in a nested payload."""
    if fault not in ("missing_field", "non_numeric", "nan"):
        return obj
    if isinstance(obj, list):
        return [_corrupt(x, keys, fault) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k in keys:
            if fault == "missing_field":
                continue
            out[k] = "abc" if fault == "non_numeric" else math.nan
        else:
            out[k] = _corrupt(v, keys, fault)
    return out


class _HttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers its open connections so ``close_all`` can cut them on stop."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], sim: Simulation):
        self.sim = sim
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _MeterHandler(BaseHTTPRequestHandler):
    """Common parts of both meter emulators."""

    protocol_version = "HTTP/1.1"
    server: _HttpServer
    timeout = 30  # idle keep-alive connections end after this (stop() cuts them earlier)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test and demo output quiet."""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None = "application/json",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        # send_response_only: no automatic Server / Date headers (the EcoTracker sends none).
        self.send_response_only(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _hang_if_timeout_fault(self) -> bool:
        """Fault "timeout": answer only after ``meter_delay_s``; True when stopping (send nothing)."""
        sim = self.server.sim
        if sim.meter_fault != "timeout":
            return False
        with sim._lock:
            sim._meter_requests_held += 1
        try:
            if sim._stop.wait(sim.meter_delay_s):
                self.close_connection = True
                return True
        finally:
            with sim._lock:
                sim._meter_requests_held -= 1
        return False


class _ShellyHandler(_MeterHandler):
    """Shelly Pro 3EM (Gen2, triphase / monophase profile) or Shelly 3EM (Gen1) emulator."""

    def do_GET(self) -> None:
        self._handle(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length) if length > 0 else b"")

    # -- responses ------------------------------------------------------------------------------------

    def _json(self, status: int, payload: Any, headers: Sequence[tuple[str, str]] = ()) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._send(status, body, "application/json", [("Server", _SHELLY_SERVER), *headers])

    def _not_found(self, method: str | None) -> None:
        if self.server.sim.shelly_profile == "gen1":
            self._send(404, b"Not Found", "text/plain", [("Server", _SHELLY_SERVER)])
        else:
            self._json(404, {"code": 404, "message": f"No handler for {method or self.path}"})

    # -- auth -----------------------------------------------------------------------------------------

    def _authorized(self) -> bool:
        sim = self.server.sim
        password = sim.shelly_password
        if not password:
            return True
        header = self.headers.get("Authorization", "")
        if sim.shelly_profile == "gen1":
            if header.startswith("Basic "):
                try:
                    user, _, pw = base64.b64decode(header[6:].strip()).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    user, pw = "", ""
                if user == "admin" and hmac.compare_digest(pw, password):
                    return True
            self._send(
                401,
                b"401 Unauthorized",
                "text/plain",
                [("Server", _SHELLY_SERVER), ("WWW-Authenticate", f'Basic realm="{sim.shelly_device_id}"')],
            )
            return False
        if header.startswith("Digest ") and sim._check_digest(self.command, header[7:], password):
            return True
        challenge = f'Digest qop="auth", realm="{sim.shelly_device_id}", nonce="{sim._new_nonce()}", algorithm=SHA-256'
        self.send_response_only(401)
        self.send_header("WWW-Authenticate", challenge)
        self.send_header("Content-Length", "0")
        self.send_header("Server", _SHELLY_SERVER)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        return False

    # -- routing --------------------------------------------------------------------------------------

    def _handle(self, post_body: bytes | None) -> None:
        sim = self.server.sim
        if self._hang_if_timeout_fault():
            return
        parts = urlsplit(self.path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        gen1 = sim.shelly_profile == "gen1"
        rpc_id: Any = None
        if post_body is not None:
            if gen1 or path != "/rpc":
                self._not_found(None)
                return
            try:
                frame = json.loads(post_body or b"{}")
                method = str(frame["method"])
                params = frame.get("params") or {}
                rpc_id = frame.get("id")
            except (ValueError, KeyError, TypeError, AttributeError):
                self._json(400, {"code": -103, "message": "Invalid request"})
                return
        elif path.startswith("/rpc/") and not gen1:
            method = path[5:]
            params = query
        else:
            method = path
            params = query
        open_methods = ("/shelly", "Shelly.GetDeviceInfo")
        if method not in open_methods and not self._authorized():
            return
        if sim.meter_fault == "http500":
            if gen1:
                self._send(500, b"Internal Server Error", "text/plain", [("Server", _SHELLY_SERVER)])
            else:
                self._json(500, {"code": -114, "message": "Internal error"})
            return
        if method == "/shelly" and post_body is None:
            self._json(200, sim._shelly_device_info())
            return
        result = sim._shelly_result(method, params)
        if result is None:
            self._not_found(method)
            return
        status, payload = result
        if status != 200:
            self._json(status, payload)
            return
        if sim.meter_fault == "not_json":
            self._send(
                200,
                b"<html><body>Error: try again later</body></html>",
                "application/json",
                [("Server", _SHELLY_SERVER)],
            )
            return
        if post_body is not None:
            payload = {"id": rpc_id, "src": sim.shelly_device_id, "result": payload}
        self._json(200, payload)


class _EcoTrackerHandler(_MeterHandler):
    """everHome EcoTracker emulator: ``GET /v1/json``."""

    def do_GET(self) -> None:
        sim = self.server.sim
        if self._hang_if_timeout_fault():
            return
        if urlsplit(self.path).path != "/v1/json":
            self._send(404, _ECOTRACKER_404.encode(), "text/html")
            return
        if sim.meter_fault == "http500":
            self._send(500, b"Internal Server Error", "text/html")
            return
        if sim.meter_fault == "not_json":
            self._send(200, b"<html><body>503 Service Unavailable</body></html>", "application/json")
            return
        self._send(200, sim._ecotracker_body(), "application/json")


# ---------------------------------------------------------------------------------------------------------
# Modbus bus (pymodbus server context)
# ---------------------------------------------------------------------------------------------------------


class _BusContext(ModbusServerContext):
    """All simulated units behind one Modbus TCP gateway, resolved per request.

    pymodbus hands the PDU address to ``async_getValues``/``async_setValues`` unchanged (the ``address + 1``
    offset lives only in ``ModbusDeviceContext``, which is not used here). A unit id nobody answers on
    (or a ``silent`` unit, or a v3 read of more than 32 registers) raises ``NoSuchIdException``; with
    ``ignore_missing_devices=True`` the request handler then sends nothing, like a dead RS485 device.
    """

    def __init__(self, sim: Simulation) -> None:
        super().__init__(devices={}, single=False)
        self._sim = sim

    def device_ids(self) -> list[int]:
        return [u.unit_id for u in self._sim.units]

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        # A slow unit: the request is served at once, the answer leaves late. For FC06 this call is the
        # echo read right after async_setValues, so the delay lands here (the write is already applied).
        delay_s = self._sim._answer_delay_s(device_id)
        result = self._sim._modbus_read(device_id, func_code, address, count)
        await self._delay(delay_s)
        return result

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        delay_s = self._sim._answer_delay_s(device_id)
        result = self._sim._modbus_write(device_id, func_code, address, [int(v) for v in values])
        if func_code != 6 or result is not None:  # FC06 without an error: the echo read delays
            await self._delay(delay_s)
        return result

    async def _delay(self, seconds: float) -> None:
        """Wait ``seconds`` before answering; a stopping simulation sends nothing at all."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            if self._sim._stop.is_set():
                raise NoSuchIdException("simulation stopping")
            await asyncio.sleep(min(left, 0.05))


class _SimRequestHandler(ServerRequestHandler):
    """One client connection; closes it after an exception response when the simulation asks for it (v3)."""

    server: _SimModbusServer

    def server_send(self, pdu: ModbusPDU | None, addr: Any) -> None:
        super().server_send(pdu, addr)
        if isinstance(pdu, ExceptionResponse) and self.server.sim.close_after_exception and self.transport:
            self.close()  # asyncio sends what is buffered, then closes the socket


class _SimModbusServer(ModbusTcpServer):
    """pymodbus TCP server whose connections are ``_SimRequestHandler``s."""

    def __init__(self, sim: Simulation, **kwargs: Any) -> None:
        self.sim = sim
        super().__init__(_BusContext(sim), **kwargs)

    def callback_new_connection(self) -> ServerRequestHandler:
        return _SimRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


# ---------------------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------------------


class Simulation:
    """House + meters + batteries on loopback servers, advanced by a physics thread (wall clock × speed).

    ``start()`` binds the Shelly and EcoTracker HTTP emulators and the Modbus TCP server (port 0 =
    ephemeral; the bound ports are then in ``shelly_port``, ``ecotracker_port``, ``modbus_port``) and starts
    the physics thread. ``stop()`` shuts everything down and joins the threads. Also a context manager.

    Both meter emulators serve one ``MeterModel`` fed with the true grid power (sample-and-hold, latency,
    noise). ``set_meter_fault(kind)`` injects a fault into both (``METER_FAULTS``):
    "timeout" (answer only after ``meter_delay_s``; ``stop()`` releases it and sends nothing), "http500",
    "not_json", "missing_field" (all power keys removed), "non_numeric" (power keys are "abc"),
    "nan" (power keys are the JSON token NaN), "absurd" (±150 kW, sign of the true reading),
    "frozen" (the reading at the moment the fault was set, forever), "refused" (both meter ports stop
    listening: connections are refused and open ones cut; clearing the fault listens on the same ports
    again). "timeout" and "http500" also hit ``/shelly``.

    Modbus faults: per unit ``SimUnit.silent``, ``slow_s`` and ``fail_with_exception``; for the whole
    server ``close_after_exception`` (as v3 firmware does, marstek-modbus.md §7: after sending any
    exception response the server closes that TCP connection).

    All public methods are thread-safe.
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
        meter_cadence_s: float = 1.0,
        meter_latency_s: float = 0.3,
        meter_noise_w: float = 10.0,
        meter_delay_s: float = 10.0,
        tick_s: float = 0.02,
        close_after_exception: bool = False,
    ) -> None:
        if shelly_profile not in SHELLY_PROFILES:
            raise ValueError(f"shelly_profile must be one of {SHELLY_PROFILES}")
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = float(speed)
        self.seed = seed
        self.plant_params = plant if plant is not None else PlantParams()
        self.house = house if house is not None else HouseModel(seed=seed)
        self.meter = (
            meter
            if meter is not None
            else MeterModel(cadence_s=meter_cadence_s, latency_s=meter_latency_s, noise_w=meter_noise_w, seed=seed)
        )
        self.shelly_password = shelly_password
        self.shelly_profile = shelly_profile
        self.meter_delay_s = float(meter_delay_s)
        self.tick_s = float(tick_s)
        self.close_after_exception = bool(close_after_exception)
        mac = f"{0xEC6260000000 + (seed * 0x9773D8) % 0xFFFFFF:012x}"
        self.shelly_mac = mac.upper()
        self.shelly_device_id = f"shellypro3em-{mac}"
        self.modbus_port: int | None = None
        self.shelly_port: int | None = None
        self.ecotracker_port: int | None = None
        self.host = "127.0.0.1"

        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._now_s = 0.0
        self._units: list[SimUnit] = []
        for spec in units if units is not None else [UnitSpec(1)]:
            self._units.append(SimUnit(spec, self.plant_params, 0.0, self._lock))
        self._fault: str | None = None
        self._frozen: tuple[float, float] | None = None
        self._meter_requests_held = 0
        self._avg: deque[tuple[float, float]] = deque()
        self._import_wh = 1_541_618.4  # counters start at realistic values (energy-meters.md §8 capture)
        self._export_wh = 5_552_927.8
        self._nonces: dict[str, int] = {}  # nonce -> highest nc seen
        self._nonce_counter = itertools.count(1)
        self._http_servers: list[_HttpServer] = []
        self._http_lock = threading.Lock()
        self._http_listeners: dict[str, tuple[type[_MeterHandler], int]] = {}  # thread name -> (handler, port)
        self._threads: list[threading.Thread] = []
        self._modbus_loop: asyncio.AbstractEventLoop | None = None
        self._modbus_server: ModbusTcpServer | None = None
        self._echo: tuple[int, int, list[int]] | None = None
        self._started = False
        self.meter.observe(0.0, self._true_grid_locked(0.0))
        self._record_avg(0.0)

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(
        self,
        host: str = "127.0.0.1",
        modbus_port: int | None = 0,
        shelly_port: int | None = 0,
        ecotracker_port: int | None = 0,
    ) -> Simulation:
        """Bind the servers (port 0 = ephemeral, None = don't start that one) and start the physics thread."""
        if self._started:
            raise RuntimeError("simulation already started")
        self._started = True
        self._stop.clear()
        self.host = host
        try:
            if shelly_port is not None:
                srv = _HttpServer((host, shelly_port), _ShellyHandler, self)
                self.shelly_port = srv.server_address[1]
                self._serve_http(srv, "sim-shelly")
            if ecotracker_port is not None:
                srv = _HttpServer((host, ecotracker_port), _EcoTrackerHandler, self)
                self.ecotracker_port = srv.server_address[1]
                self._serve_http(srv, "sim-ecotracker")
            if modbus_port is not None:
                self._start_modbus(host, modbus_port)
            if self._fault == "refused":
                self._close_meter_listeners()
            physics = threading.Thread(target=self._physics_loop, name="sim-physics", daemon=True)
            physics.start()
            self._threads.append(physics)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop all servers and threads (quick; releases requests held by the "timeout" fault)."""
        self._stop.set()
        self._close_meter_listeners()
        self._http_listeners.clear()
        self._stop_modbus()
        for t in self._threads:
            t.join(timeout=5.0)
        self._threads.clear()
        self._started = False

    def __enter__(self) -> Simulation:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve_http(self, srv: _HttpServer, name: str) -> None:
        with self._http_lock:
            self._http_servers.append(srv)
            self._http_listeners[name] = (srv.RequestHandlerClass, srv.server_address[1])
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _close_meter_listeners(self) -> None:
        """Stop the meter servers: the ports refuse connections, open connections are cut."""
        with self._http_lock:
            servers, self._http_servers = self._http_servers, []
        for srv in servers:
            srv.shutdown()
            srv.server_close()
            srv.close_all()

    def _reopen_meter_listeners(self) -> None:
        """Listen again on the meter ports closed by ``_close_meter_listeners`` (fault "refused" cleared)."""
        with self._http_lock:
            if not self._started or self._stop.is_set() or self._http_servers:
                return
            listeners = list(self._http_listeners.items())
        for name, (handler, port) in listeners:
            self._serve_http(_HttpServer((self.host, port), handler, self), name)

    def _start_modbus(self, host: str, port: int) -> None:
        """Run a pymodbus TCP server in its own thread with its own asyncio loop; wait until it listens."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            server = _SimModbusServer(self, address=(host, port), ignore_missing_devices=True)
            await server.serve_forever(background=True)
            self._modbus_server = server
            self.modbus_port = server.transport.sockets[0].getsockname()[1]
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await server.serving

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._modbus_loop = loop
            try:
                loop.run_until_complete(serve())
            except BaseException as exc:  # reported to start() through `failure`
                failure.append(exc)
            finally:
                ready.set()
                # Answers still being delayed (slow units) end here instead of dying with the loop.
                pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        t = threading.Thread(target=run, name="sim-modbus", daemon=True)
        t.start()
        self._threads.append(t)
        ready.wait(10.0)
        if failure:
            raise RuntimeError(f"Modbus server could not start on {host}:{port}: {failure[0]}") from failure[0]
        if self.modbus_port is None:
            raise RuntimeError(f"Modbus server did not start on {host}:{port}")

    def _stop_modbus(self) -> None:
        server, loop = self._modbus_server, self._modbus_loop
        self._modbus_server = None
        if server is None or loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(timeout=5.0)

    def drop_modbus_connections(self) -> int:
        """Close every open Modbus TCP connection from the server side and keep listening.

        Like a gateway that restarts or the v3 firmware's periodic Ethernet reset (marstek-modbus.md §9):
        a client finds its idle connection closed on the next request. Returns how many were closed.
        """
        server, loop = self._modbus_server, self._modbus_loop
        if server is None or loop is None or loop.is_closed():
            return 0

        async def drop() -> int:
            connections = list(server.active_connections.values())
            for connection in connections:
                connection.close()
            return len(connections)

        return asyncio.run_coroutine_threadsafe(drop(), loop).result(timeout=5.0)

    # -- Modbus requests (called from the server's asyncio thread) ----------------------------------

    def _answer_delay_s(self, device_id: int) -> float:
        """How late the unit on ``device_id`` answers (``SimUnit.slow_s``), s."""
        with self._lock:
            return next((max(0.0, float(u.slow_s)) for u in self._units if u.unit_id == device_id), 0.0)

    def _unit_for_request(self, device_id: int) -> SimUnit:
        """The unit that answers ``device_id``; NoSuchIdException (= no answer at all) when none does."""
        for u in self._units:
            if u.unit_id == device_id and not u.silent:
                return u
        raise NoSuchIdException(f"no unit answers on id {device_id}")

    def _modbus_read(self, device_id: int, func_code: int, address: int, count: int) -> list[int] | ExcCodes:
        with self._lock:
            if func_code == 6 and self._echo is not None and self._echo[:2] == (device_id, address):
                # Read-back that pymodbus does to build the FC06 response: echo what was written
                # (also right after 41100 moved the unit to another id).
                values = self._echo[2][:count]
                self._echo = None
                return values
            unit = self._unit_for_request(device_id)
            if unit.fail_with_exception is not None:
                return ExcCodes(unit.fail_with_exception)
            if func_code != 3:
                return ExcCodes.ILLEGAL_FUNCTION
            if unit.register_set == "v3" and count > V3_MAX_READ_COUNT:
                raise NoSuchIdException("v3 firmware does not answer reads of more than 32 registers")
            result = unit.read_registers(address, count)
            return ExcCodes(result) if isinstance(result, int) else result

    def _modbus_write(self, device_id: int, func_code: int, address: int, values: list[int]) -> ExcCodes | None:
        with self._lock:
            unit = self._unit_for_request(device_id)
            if unit.fail_with_exception is not None:
                return ExcCodes(unit.fail_with_exception)
            if func_code not in (6, 16):
                return ExcCodes.ILLEGAL_FUNCTION
            if func_code == 6:
                self._echo = (device_id, address, list(values))
            for offset, value in enumerate(values):
                addr = address + offset
                code = unit.write_register(addr, value)
                if code is not None:
                    self._echo = None
                    return ExcCodes(code)
                if addr == REG_UNIT_ID:
                    unit.unit_id = value  # re-addressed at once: answers only on the new id from now on
            return None

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
            max_chunk = min(0.1, self.meter.cadence_s / 2.0)
            remaining = dt_s
            while remaining > 1e-12:
                h = min(remaining, max_chunk)
                t1 = self._now_s + h
                for u in self._units:
                    u.plant.advance(t1)
                grid = self._true_grid_locked(t1)
                if grid > 0:
                    self._import_wh += grid * h / 3600.0
                else:
                    self._export_wh += -grid * h / 3600.0
                self._now_s = t1
                if self.meter.observe(t1, grid):
                    self._record_avg(t1)
                remaining -= h

    def _record_avg(self, now_s: float) -> None:
        reading = self.meter.read(now_s)
        if reading is None:
            return
        self._avg.append((now_s, reading[0]))
        while self._avg and self._avg[0][0] < now_s - 60.0:
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

    def _true_grid_locked(self, t_s: float) -> float:
        return self.house.load_w(t_s) - self.house.pv_w(t_s) - sum(u.plant.power_w for u in self._units)

    def true_grid_power_w(self) -> float:
        """True grid power now: load − PV − Σ battery AC power, W (+ import)."""
        with self._lock:
            return self._true_grid_locked(self._now_s)

    def meter_reading_w(self) -> float | None:
        """The grid power the meters currently serve (before payload faults), W (+ import)."""
        return self._meter_snapshot().grid_w

    # -- meter faults ---------------------------------------------------------------------------------

    @property
    def meter_fault(self) -> str | None:
        """The active meter fault kind (see ``METER_FAULTS``) or None."""
        return self._fault

    @property
    def meter_requests_held(self) -> int:
        """Meter requests the "timeout" fault is holding right now (a client waiting for its answer)."""
        with self._lock:
            return self._meter_requests_held

    def set_meter_fault(self, kind: str | None) -> None:
        """Inject a fault into both meter emulators; None clears it."""
        if kind not in METER_FAULTS:
            raise ValueError(f"unknown meter fault {kind!r}; one of {METER_FAULTS}")
        with self._lock:
            if kind == "frozen" and self._fault != "frozen":
                self._frozen = self.meter.read(self._now_s)
            previous, self._fault = self._fault, kind
        if kind == "refused" and previous != "refused" and self._started:
            self._close_meter_listeners()
        elif previous == "refused" and kind != "refused":
            self._reopen_meter_listeners()

    def _meter_snapshot(self) -> _MeterSnapshot:
        with self._lock:
            now = self._now_s
            reading = self.meter.read(now)
            if self._fault == "frozen" and self._frozen is not None:
                reading = self._frozen
            value, sample_t = reading if reading is not None else (0.0, now)
            if self._fault == "absurd":
                value = ABSURD_POWER_W if value >= 0 else -ABSURD_POWER_W
            avg = sum(v for _, v in self._avg) / len(self._avg) if self._avg else value
            return _MeterSnapshot(
                grid_w=value,
                sample_age_s=max(0.0, now - sample_t) / self.speed,
                avg_w=avg,
                import_wh=self._import_wh,
                export_wh=self._export_wh,
                fault=self._fault,
                unixtime=int(time.time()),
            )

    # -- Shelly payloads ------------------------------------------------------------------------------

    def _shelly_device_info(self) -> dict[str, Any]:
        auth = bool(self.shelly_password)
        if self.shelly_profile == "gen1":
            return {
                "type": "SHEM-3",
                "mac": self.shelly_mac,
                "auth": auth,
                "fw": "20230913-114150/v1.14.0-gcb84623",
                "longid": 1,
                "num_outputs": 1,
                "num_meters": 0,
                "num_emeters": 3,
                "report_period": 1,
            }
        return {
            "name": None,
            "id": self.shelly_device_id,
            "mac": self.shelly_mac,
            "slot": 0,
            "model": "SPEM-003CEBEU",
            "gen": 2,
            "fw_id": "20241011-114455/1.4.4-g6d2a586",
            "ver": "1.4.4",
            "app": "Pro3EM",
            "auth_en": auth,
            "auth_domain": self.shelly_device_id if auth else None,
            "profile": self.shelly_profile,
        }

    @staticmethod
    def _phase_fields(power: float, volts: float) -> dict[str, float]:
        aprt = round(abs(power) / 0.92 + 15.0, 1)
        return {
            "current": round(aprt / volts, 3),
            "voltage": volts,
            "act_power": power,
            "aprt_power": aprt,
            "pf": round(abs(power) / aprt, 2) if aprt else 0.0,
            "freq": 50.0,
        }

    def _em_status(self, snap: _MeterSnapshot) -> dict[str, Any]:
        phases = _split_phases(snap.grid_w)
        em: dict[str, Any] = {"id": 0}
        total_current = 0.0
        total_aprt = 0.0
        for name, power, volts in zip("abc", phases, (231.4, 232.1, 230.6), strict=True):
            f = self._phase_fields(power, volts)
            total_current += f["current"]
            total_aprt += f["aprt_power"]
            for key, value in f.items():
                em[f"{name}_{key}"] = value
        em.update(
            {
                "n_current": None,
                "total_current": round(total_current, 3),
                "total_act_power": round(sum(phases), 3),
                "total_aprt_power": round(total_aprt, 3),
                "user_calibrated_phase": [],
            }
        )
        return em

    def _em1_status(self, snap: _MeterSnapshot, channel: int) -> dict[str, Any]:
        power = _split_phases(snap.grid_w)[channel]
        return {"id": channel, **self._phase_fields(power, (231.4, 232.1, 230.6)[channel]), "calibration": "factory"}

    @staticmethod
    def _emdata(snap: _MeterSnapshot) -> dict[str, Any]:
        out: dict[str, Any] = {"id": 0}
        for name, share in zip("abc", _PHASE_SHARES, strict=True):
            out[f"{name}_total_act_energy"] = round(snap.import_wh * share, 2)
            out[f"{name}_total_act_ret_energy"] = round(snap.export_wh * share, 2)
        out["total_act"] = round(snap.import_wh, 2)
        out["total_act_ret"] = round(snap.export_wh, 2)
        return out

    def _shelly_result(self, method: str, params: dict[str, Any]) -> tuple[int, Any] | None:
        """(status, payload) for a Shelly method / Gen1 path, or None for "no such method"."""
        snap = self._meter_snapshot()
        profile = self.shelly_profile
        try:
            comp_id = int(params.get("id", 0))
        except (TypeError, ValueError):
            return 400, {"code": -103, "message": "Invalid argument 'id'"}
        if profile == "gen1":
            return self._gen1_result(method, snap)
        if method == "Shelly.GetDeviceInfo":
            return 200, self._shelly_device_info()
        keys_tri = frozenset({"a_act_power", "b_act_power", "c_act_power", "total_act_power"})
        keys_mono = frozenset({"act_power"})
        if profile == "triphase" and method in ("EM.GetStatus", "EMData.GetStatus"):
            if comp_id != 0:
                return 500, {"code": -105, "message": f"Argument 'id', value {comp_id} not found!"}
            if method == "EMData.GetStatus":
                return 200, self._emdata(snap)
            return 200, _corrupt(self._em_status(snap), keys_tri, snap.fault)
        if profile == "monophase" and method in ("EM1.GetStatus", "EM1Data.GetStatus"):
            if comp_id not in (0, 1, 2):
                return 500, {"code": -105, "message": f"Argument 'id', value {comp_id} not found!"}
            if method == "EM1Data.GetStatus":
                share = _PHASE_SHARES[comp_id]
                return 200, {
                    "id": comp_id,
                    "total_act_energy": round(snap.import_wh * share, 2),
                    "total_act_ret_energy": round(snap.export_wh * share, 2),
                }
            return 200, _corrupt(self._em1_status(snap, comp_id), keys_mono, snap.fault)
        if method == "Shelly.GetStatus":
            status: dict[str, Any] = {"ble": {}, "cloud": {"connected": False}}
            if profile == "triphase":
                status["em:0"] = _corrupt(self._em_status(snap), keys_tri, snap.fault)
                status["emdata:0"] = self._emdata(snap)
            else:
                for ch in range(3):
                    status[f"em1:{ch}"] = _corrupt(self._em1_status(snap, ch), keys_mono, snap.fault)
            status.update(
                {
                    "eth": {"ip": None},
                    "modbus": {},
                    "mqtt": {"connected": False},
                    "sys": {
                        "mac": self.shelly_mac,
                        "restart_required": False,
                        "time": time.strftime("%H:%M", time.localtime(snap.unixtime)),
                        "unixtime": snap.unixtime,
                        "uptime": int(self.now_s),
                        "cfg_rev": 20,
                        "reset_reason": 3,
                    },
                    "temperature:0": {"id": 0, "tC": 39.1, "tF": 102.4},
                    "wifi": {"sta_ip": self.host, "status": "got ip", "ssid": "sim", "rssi": -60},
                    "ws": {"connected": False},
                }
            )
            return 200, status
        return None

    def _gen1_result(self, path: str, snap: _MeterSnapshot) -> tuple[int, Any] | None:
        keys = frozenset({"power", "total_power"})
        phases = _split_phases(snap.grid_w)
        emeters = []
        for power, volts, share in zip(phases, (240.24, 240.27, 240.31), _PHASE_SHARES, strict=True):
            emeters.append(
                {
                    "power": power,
                    "pf": round(abs(power) / (abs(power) / 0.92 + 15.0), 2),
                    "current": round((abs(power) / 0.92 + 15.0) / volts, 2),
                    "voltage": volts,
                    "is_valid": True,
                    "total": round(snap.import_wh * share, 1),
                    "total_returned": round(snap.export_wh * share, 1),
                }
            )
        if path == "/status":
            payload = {
                "wifi_sta": {"connected": True, "ssid": "sim", "ip": self.host, "rssi": -52},
                "cloud": {"enabled": False, "connected": False},
                "mqtt": {"connected": False},
                "time": time.strftime("%H:%M", time.localtime(snap.unixtime)),
                "unixtime": snap.unixtime,
                "serial": 1081,
                "has_update": False,
                "mac": self.shelly_mac,
                "relays": [{"ison": True, "has_timer": False, "overpower": False, "is_valid": True, "source": "http"}],
                "emeters": emeters,
                "total_power": round(sum(phases), 2),
                "emeter_n": {"current": 0.0, "ixsum": 1.72, "mismatch": False, "is_valid": False},
                "uptime": int(self.now_s),
            }
            return 200, _corrupt(payload, keys, snap.fault)
        if path.startswith("/emeter/") and path[8:] in ("0", "1", "2"):
            return 200, _corrupt(emeters[int(path[8:])], keys, snap.fault)
        return None

    # -- digest auth (Gen2) ---------------------------------------------------------------------------

    def _new_nonce(self) -> str:
        with self._lock:
            nonce = f"{int(time.time())}{next(self._nonce_counter):04d}"
            self._nonces[nonce] = 0
            while len(self._nonces) > _NONCE_SLOTS:
                del self._nonces[next(iter(self._nonces))]
            return nonce

    def _check_digest(self, http_method: str, header: str, password: str) -> bool:
        """Verify an RFC 7616 SHA-256 digest response (user admin, realm = device id, qop auth)."""
        p = {
            m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _DIGEST_PARAM.finditer(header)
        }
        nonce = p.get("nonce", "")
        try:
            nc = int(p.get("nc", ""), 16)
        except ValueError:
            return False
        if (
            p.get("username") != "admin"
            or p.get("realm") != self.shelly_device_id
            or p.get("qop") != "auth"
            or (p.get("algorithm") or "").upper() != "SHA-256"
            or not p.get("cnonce")
            or "uri" not in p
            or "response" not in p
        ):
            return False

        def sha(text: str) -> str:
            return hashlib.sha256(text.encode()).hexdigest()

        ha1 = sha(f"admin:{self.shelly_device_id}:{password}")
        ha2 = sha(f"{http_method}:{p['uri']}")
        expected = sha(f"{ha1}:{nonce}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
        if not hmac.compare_digest(expected, p["response"].lower()):
            return False
        with self._lock:
            last = self._nonces.get(nonce)
            if last is None or nc <= last:  # unknown / expired nonce or replayed nc
                return False
            self._nonces[nonce] = nc
        return True

    # -- EcoTracker payload ---------------------------------------------------------------------------

    def _ecotracker_body(self) -> bytes:
        snap = self._meter_snapshot()
        phases = _split_phases(snap.grid_w)
        fields: dict[str, Any] = {
            "power": round(snap.grid_w),
            "powerAvg": round(snap.avg_w),
            "agePower": round(snap.sample_age_s * 1000.0),
            "powerPhase1": round(phases[0]),
            "powerPhase2": round(phases[1]),
            "powerPhase3": round(phases[2]),
            "energyCounterOut": round(snap.export_wh, 1),
            "energyCounterIn": round(snap.import_wh, 1),
        }
        keys = frozenset({"power", "powerPhase1", "powerPhase2", "powerPhase3"})
        fields = _corrupt(fields, keys, snap.fault)
        lines = [f"\t{json.dumps(k)}:\t{json.dumps(v)}" for k, v in fields.items()]
        return ("{\n" + ",\n".join(lines) + "\n}").encode()

    # -- units ----------------------------------------------------------------------------------------

    def unit(self, unit_id: int) -> SimUnit:
        """The simulated unit that currently answers on ``unit_id`` (KeyError if none)."""
        with self._lock:
            for u in self._units:
                if u.unit_id == unit_id:
                    return u
        raise KeyError(f"no simulated unit with id {unit_id}")

    @property
    def units(self) -> list[SimUnit]:
        """All simulated units (a copy of the list)."""
        with self._lock:
            return list(self._units)

    def add_unit(self, spec: UnitSpec) -> SimUnit:
        """Add a battery to the bus at the current simulated time."""
        with self._lock:
            u = SimUnit(spec, self.plant_params, self._now_s, self._lock)
            self._units.append(u)
            return u


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def config_snippet(sim: Simulation, meter_type: str = "shelly") -> dict[str, Any]:
    """A config.json fragment that points the energy manager at a started simulation."""
    shelly: dict[str, Any] = {"ip": f"{sim.host}:{sim.shelly_port}"}
    if sim.shelly_password:
        shelly["password"] = sim.shelly_password
    units = sim.units
    return {
        "energy_meter": {"type": meter_type},
        "shelly": shelly,
        "ecotracker": {"ip": f"{sim.host}:{sim.ecotracker_port}"},
        "battery": {
            "ip": sim.host,
            "port": sim.modbus_port,
            "akku_ids": [u.unit_id for u in units],
            "register_set": units[0].register_set if units else "v2",
        },
    }


def _status_line(sim: Simulation) -> str:
    with sim._lock:
        t = sim._now_s
        load = sim.house.load_w(t)
        pv = sim.house.pv_w(t)
        grid = sim._true_grid_locked(t)
        bats = ", ".join(
            f"#{u.unit_id} {u.power_w:+.0f} W {u.soc_pct:.1f} %{'' if u.rs485_control else ' (no RS485)'}"
            for u in sim._units
        )
    return f"t={t:8.1f} s  load {load:6.0f} W  pv {pv:6.0f} W  grid {grid:+6.0f} W  | {bats}"


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
    parser.add_argument("--soc", type=float, default=50.0, help="initial state of charge, %% (default 50)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--status-interval", type=float, default=5.0, help="seconds between status lines, 0 = off")
    args = parser.parse_args(argv)
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
        print("config.json snippet:")
        print(json.dumps(config_snippet(sim), indent=2))
        print("Ctrl+C to stop.", flush=True)
        interval = args.status_interval if args.status_interval > 0 else None
        while not stop.wait(interval if interval is not None else 3600.0):
            if interval is not None:
                print(_status_line(sim), flush=True)
    finally:
        sim.stop()
    print("simulator stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
