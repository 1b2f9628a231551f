"""Physics of the simulated house, on explicit time: no threads, no clock reads, no I/O.

``BatteryPlant`` (dead time, first-order lag, limits, SoC with the efficiency curve, BMS cut-offs),
``HouseModel`` (load and PV as functions of time) and ``MeterModel`` (sample-and-hold grid meter with
latency and noise). The benchmark steps these directly with a simulated clock; ``simulator.Simulation``
steps them from its physics thread.

Sign conventions (as everywhere in this project, see ``devices.py``):
grid power + import / − export, W; battery power + discharging / − charging, W; SoC 0..100 %.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# The efficiency curve lives with the planner that uses it too (one home for the fact).
from planning.efficiency import EFFICIENCY_CHARGE, EFFICIENCY_DISCHARGE, efficiency

# ---------------------------------------------------------------------------------------------------------
# Battery plant
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PlantParams:
    """Battery plant model (zero-feed-control.md §6). v3-like variant: dead_time_s=0.8, tau_s=1.5.

    On top of the protocol's first-order lag, what the real units do (marstek-modbus.md, issue 9):
    ``overshoot`` is the gain of a transient that makes the AC power pass a new setpoint by ~7 % at 0.35
    (peak ~3 τ after the dead time, within 2 % again after ~7 τ; 0 = none); ``standby_w`` is drawn from
    the house while the unit rests (target 0 W), read as AC power −standby_w (Marstek: 5–15 W).
    """

    dead_time_s: float = 0.5
    tau_s: float = 1.0
    max_power_w: float = 2500.0
    capacity_wh: float = 5120.0
    bms_min_soc_pct: float = 11.0
    bms_max_soc_pct: float = 100.0
    overshoot: float = 0.35
    standby_w: float = 10.0

    @property
    def overshoot_tau_s(self) -> float:
        """Time constant of the overshoot's slow state, s."""
        return OVERSHOOT_TAU_FACTOR * self.tau_s

    @property
    def settle_s(self) -> float:
        """From a command until its response (lag and overshoot) has died out, s."""
        return self.dead_time_s + 8.0 * (self.overshoot_tau_s if self.overshoot else self.tau_s)


OVERSHOOT_TAU_FACTOR = 2.0  # the overshoot's slow state lags the fast one by twice its time constant
_PENDING_MAX = 64  # pending commands kept during the dead time
_SETTLED_W = 0.5  # |target - actual| below this counts as settled: the lag is snapped to the target
_SOC_EPS = 1e-9  # SoC tolerance for the BMS limits (floating-point rounding at the exact limit)


class BatteryPlant:
    """One battery's AC power response and state of charge, stepped with explicit time.

    ``command(power_w, now_s)`` sets a new target (+ discharge, − charge) that takes effect ``dead_time_s``
    later; ``advance(now_s)`` integrates up to ``now_s``. The response follows the target through a
    first-order lag (exact discrete formula) plus the overshoot transient (``PlantParams.overshoot``: a
    second, slower state; exact too), is clamped to ±max_power_w, and is cut to 0 by the BMS (no discharge
    at SoC ≤ bms_min_soc_pct, no charge at SoC ≥ bms_max_soc_pct). At rest (target 0 W) the unit draws
    ``standby_w`` from the house. SoC integrates DC energy: discharge DC = AC / η, charge DC = AC · η
    (``EFFICIENCY_*``); the standby draw is a loss that does not charge it. Energies are cumulative Wh.
    """

    def __init__(self, params: PlantParams | None = None, soc_pct: float = 50.0, now_s: float = 0.0) -> None:
        self.params = params if params is not None else PlantParams()
        self.soc_pct = float(soc_pct)
        self._fast_w = 0.0  # the first-order lag's output, + discharging
        self._slow_w = 0.0  # lags _fast_w by overshoot_tau_s; their difference is the overshoot
        self.target_w = 0.0  # target in effect (after the dead time)
        self.conversion_loss_wh = 0.0
        self.standby_wh = 0.0  # drawn from the house while resting
        self.charged_wh = 0.0  # AC side
        self.discharged_wh = 0.0  # AC side
        self.delivers_nothing = False  # firmware ACKs setpoints but delivers ~0 W
        self.now_s = float(now_s)
        self._pending: deque[tuple[float, float]] = deque()

    @property
    def resting(self) -> bool:
        """True while the target in effect is 0 W (stopped, cut by the BMS, or delivering nothing)."""
        return self._effective_target() == 0.0

    @property
    def power_w(self) -> float:
        """Actual AC power, W, + discharging / − charging; at rest −standby_w plus what is still decaying."""
        p = self.params
        if self.resting:
            return self._fast_w - p.standby_w
        power_w = self._fast_w + p.overshoot * (self._fast_w - self._slow_w)
        return max(-p.max_power_w, min(p.max_power_w, power_w))

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
            or (self._fast_w > 0.0 and self.soc_pct <= p.bms_min_soc_pct + _SOC_EPS)
            or (self._fast_w < 0.0 and self.soc_pct >= p.bms_max_soc_pct - _SOC_EPS)
        ):
            self._fast_w = self._slow_w = 0.0

    def _slow(self, target: float, h: float) -> tuple[float, float]:
        """The slow state after ``h`` s (h = inf: its rest) and its integral minus target·h, exact.

        Driven by the fast state x1(t) = T + D·e^(−t/τ): x2(t) = T + C·e^(−t/τo) + E·e^(−t/τ) with
        E = D·τ/(τ − τo) and C = x2(0) − T − E."""
        tau, tau_o = self.params.tau_s, self.params.overshoot_tau_s
        e = (self._fast_w - target) * tau / (tau - tau_o)
        c = self._slow_w - target - e
        a, a_o = math.exp(-h / tau), math.exp(-h / tau_o)
        return target + c * a_o + e * a, c * tau_o * (1.0 - a_o) + e * tau * (1.0 - a)

    def _integrate(self, dt: float) -> None:
        p = self.params
        tau = p.tau_s
        remaining = dt
        while remaining > 1e-12:
            self._bms_cut()
            target = self._effective_target()
            x1 = self._fast_w
            if target == 0.0 and x1 == 0.0:
                self._slow_w = 0.0
                self.standby_wh += p.standby_w * remaining / 3600.0
                return
            k = p.overshoot if target != 0.0 and tau > 0 else 0.0  # no overshoot when stopping
            if tau > 0 and (abs(target - x1) > _SETTLED_W or k * abs(x1 - self._slow_w) > _SETTLED_W):
                # Transient: short chunks so the efficiency lookup and the BMS checks stay accurate.
                h = min(remaining, 0.25 * tau)
                if x1 * target < 0.0:
                    # Split exactly where the power changes sign (charge and discharge use different curves).
                    h = min(h, max(tau * math.log((x1 - target) / -target), 1e-9))
                a = math.exp(-h / tau)
                x1_end = target + (x1 - target) * a
                x2_end, slow_rest_ws = self._slow(target, h)
                fast_rest_ws = (x1 - target) * tau * (1.0 - a)
            else:
                # Settled: constant power, split exactly where the SoC reaches a BMS limit. The small rest
                # of the transient's tail is booked here so that energy is conserved.
                x1_end = x2_end = target
                h = min(remaining, self._time_to_limit(target))
                fast_rest_ws = (x1 - target) * tau
                slow_rest_ws = self._slow(target, math.inf)[1] if tau > 0 else 0.0
            # AC power = x1 + k·(x1 − x2): the lag plus the overshoot (unclamped here: the clamp at the
            # unit's maximum only shaves a few watt-seconds off a rare peak).
            self._account((target * h + (1.0 + k) * fast_rest_ws - k * slow_rest_ws) / 3600.0, h)
            if target == 0.0:
                self.standby_wh += p.standby_w * h / 3600.0
            self._fast_w, self._slow_w = x1_end, x2_end
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
