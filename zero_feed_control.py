"""The zero-feed control law: pure code, no I/O and no clock reads (time is passed in).

Signs: grid power + import / - export; battery power and setpoints + discharge / - charge (W).

``FastController`` (the default) closes the loop on the batteries' *measured* AC power: the house
demand seen at the meter's sampling instant is ``grid + battery power then``, and the new total
setpoint is that demand minus the grid target (deadbeat). It waits for the batteries to settle on
their last command before it acts again, except for reductions that stop battery energy from
flowing into the grid, which are always applied at once.

``SeedController`` keeps the original program's loop (weighted average of the last three
readings, fed back on its own last command, at most 750 W change per cycle) for comparison.

Both hand out a ``Decision`` whose ``reason`` the log and the dashboard show.

Both take the operating mode (``OperatingMode``) in each step as pure rules: ``hold`` never discharges
(a running discharge is stopped in that step), ``charge`` charges at a fixed power without the meter
until every battery is full and then holds, ``off`` stops every battery (``mode_override``).
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from control.i18n import Msg
from control.marstek_registers import FIRMWARE_MAX_POWER_W


class Status(enum.Enum):
    """Why the controller decided what it did (shown in /api/status and the log)."""

    TRACKING = "tracking"  # new setpoints written
    DEADBAND = "deadband"  # error too small to act on
    WAITING_FOR_SAMPLE = "waiting_for_sample"  # the meter still shows the sample already acted on
    IDLE = "idle"  # demand inside the target band or below the minimum power
    SOC_LIMIT = "soc_limit"  # demand exists but no battery may serve it
    NO_BATTERY = "no_battery"  # no battery online
    METER_RETRY = "meter_retry"  # a meter read failed; holding the last command
    METER_FAILED = "meter_failed"  # too many meter failures: batteries stopped
    METER_SIGN = "meter_sign"  # the meter's sign looks reversed (sign_check): batteries stopped
    MODE_OFF = "mode_off"  # operating mode "off": control paused, every battery stopped
    MODE_HOLD = "mode_hold"  # operating mode "hold" (or "charge" when full): a discharge was held back
    MODE_CHARGE = "mode_charge"  # operating mode "charge": charging at the requested power


class OperatingMode(enum.Enum):
    """The operating mode passed to each step (interfaces.md "Operating modes"; modes.py keeps it)."""

    AUTO = "auto"  # zero feed-in
    HOLD = "hold"  # zero feed-in, but never discharge (charging from surplus is fine)
    CHARGE = "charge"  # charge at a fixed power from grid and PV up to max_soc_pct, then hold
    OFF = "off"  # control paused, every battery stopped


STOPPING = frozenset({Status.METER_FAILED, Status.NO_BATTERY, Status.METER_SIGN})
ALGORITHMS = ("fast", "seed")  # control.algorithm; the first is the default
DISTRIBUTIONS = ("efficient", "balanced")  # control.distribution


@dataclass(frozen=True)
class ControlParams:
    """Tuning and limits of the control law (built from the config by ``config_loader.Config.control_params``)."""

    target_grid_charge_w: float = -20.0
    target_grid_discharge_w: float = 20.0
    min_power_w: float = 50.0
    max_power_w: float = float(FIRMWARE_MAX_POWER_W)
    min_soc_pct: float = 11.0
    max_soc_pct: float = 98.0
    max_meter_failures: int = 2
    deadband_w: float = 15.0
    average_readings: bool = False
    # Age of a fresh meter sample when it arrives, until SampleAgeEstimator has learned it, s
    # (wide: a slow meter must not cause an overshoot before its delay is known).
    meter_min_age_s: float = 0.0
    meter_max_age_s: float = 3.0
    # Learned ages whose mean demand mismatch is within this of the best stay in the window, W.
    age_tolerance_w: float = 20.0
    # Changes of at least this are written at once; smaller ones pass the filter first, W.
    jump_w: float = 60.0
    # Weight of a new small deviation in the filter (1 = no filter).
    filter_gain: float = 0.3
    # With a noisy demand the thresholds grow to these multiples of its standard deviation.
    jump_noise: float = 3.0
    deadband_noise: float = 1.0
    # A battery that holds steady clearly below its setpoint for this long is limited to what it
    # delivers, for limit_hold_s (seconds, not cycles: the law must not depend on the poll interval).
    limit_after_s: float = 5.0
    limit_hold_s: float = 600.0
    # A battery that acknowledges at least no_delivery_min_w but delivers under no_delivery_share of it
    # for no_delivery_after_s (firmware quirk, a BMS refusing near its limits) gets nothing in that
    # direction for no_delivery_hold_s, then it is asked again.
    no_delivery_min_w: float = 100.0
    no_delivery_share: float = 0.05
    no_delivery_after_s: float = 20.0
    no_delivery_hold_s: float = 300.0
    # "efficient": as few batteries as needed (higher SoC first); "balanced": shared by headroom.
    distribution: str = DISTRIBUTIONS[0]
    # A second battery joins above this share per battery, W (two units beat one above ~1500 W).
    stage_up_w: float = 1500.0


BatteryId = int | str  # a battery's key: the config's "<host>:<port>/<id>" (ints in the law's own tests)


# A Venus E delivers at most 800 W until 2500 W is chosen in the Marstek app; registers do not show it
# (marstek-modbus.md section 1): a discharge that plateaus here is explained with that setting.
APP_LIMIT_W = 800.0
APP_LIMIT_TOLERANCE_W = 40.0


@dataclass(frozen=True)
class BatteryState:
    """One battery as the control thread last saw it.

    soc_pct: 0..100 or None if never read. power_w: measured AC power (+ discharge) or None.
    max_power_w / min_power_w: this unit's own limits (W); None: ``ControlParams``' values.
    """

    battery_id: BatteryId
    online: bool
    soc_pct: float | None
    power_w: float | None
    read_s: float | None = None  # when power_w was read (same clock as now_s); None: at the step
    # The battery's own power limits (EEPROM 44002/44003, the model's limit), W; None = not known.
    max_charge_w: float | None = None
    max_discharge_w: float | None = None
    max_power_w: float | None = None
    min_power_w: float | None = None


def unit_max_w(b: BatteryState, p: ControlParams) -> float:
    """The most this unit may be commanded (W): its own limit or the common one."""
    return p.max_power_w if b.max_power_w is None else b.max_power_w


def unit_min_w(b: BatteryState, p: ControlParams) -> float:
    """The least a running unit is commanded (W): its own limit or the common one."""
    return p.min_power_w if b.min_power_w is None else b.min_power_w


@dataclass(frozen=True, kw_only=True)
class Decision:
    """Setpoints per battery id (+ discharge, - charge, W) and why."""

    setpoints_w: Mapping[BatteryId, int]
    status: Status
    reason: Msg
    grid_power_avg_w: float | None = None
    demand_w: float | None = None
    battery_notes: Mapping[BatteryId, Msg] = field(default_factory=dict)
    # The grid power the command aims at (+ import), for the live quality figures; None if unknown.
    target_grid_w: float | None = None

    @property
    def total_w(self) -> int:
        return sum(self.setpoints_w.values())


# ---------------------------------------------------------------------------- distribution
def battery_limits(b: BatteryState, p: ControlParams) -> tuple[float, float, Msg | None]:
    """(max charge W, max discharge W, note or None) for one battery under the SoC rules."""
    if not b.online:
        return 0.0, 0.0, Msg("note_offline")
    if b.soc_pct is None:
        return 0.0, 0.0, Msg("note_soc_unknown")
    can_discharge = b.soc_pct > p.min_soc_pct
    can_charge = b.soc_pct < p.max_soc_pct
    unit_w = unit_max_w(b, p)  # the configured limit of this unit
    max_charge_w = unit_w if b.max_charge_w is None else min(unit_w, b.max_charge_w)
    max_discharge_w = unit_w if b.max_discharge_w is None else min(unit_w, b.max_discharge_w)
    note = None
    if not can_discharge:
        note = Msg("note_soc_min", soc=b.soc_pct, limit=p.min_soc_pct)
    elif not can_charge:
        note = Msg("note_soc_max", soc=b.soc_pct, limit=p.max_soc_pct)
    elif max_discharge_w < unit_w:
        note = Msg("note_device_limit_discharge", limit=round(max_discharge_w), max=round(unit_w))
    elif max_charge_w < unit_w:
        note = Msg("note_device_limit_charge", limit=round(max_charge_w), max=round(unit_w))
    return (max_charge_w if can_charge else 0.0), (max_discharge_w if can_discharge else 0.0), note


def notes_reason(notes: Mapping[BatteryId, Msg]) -> Msg:
    """The batteries' notes as one reason, one text per cause: batteries with the same note are counted
    ("2 Akkus: nicht erreichbar"), not listed once each."""
    counts: dict[Msg, int] = {}
    for note in notes.values():
        counts[note] = counts.get(note, 0) + 1
    return Msg("reason_notes", notes=[note if n == 1 else Msg("note_count", count=n, note=note)
                                      for note, n in counts.items()])


def distribute(
    total_w: float,
    batteries: Sequence[BatteryState],
    p: ControlParams,
    limits_w: Mapping[BatteryId, float] | None = None,
) -> tuple[dict[BatteryId, int], dict[BatteryId, Msg]]:
    """Split a total setpoint over the batteries that are online and allowed.

    Never exceeds a battery's power limit (``limits_w``: lower limits learned per battery id for the
    direction of ``total_w``), never discharges at/below the minimum SoC, never charges at/above the
    maximum SoC, never commands less than the minimum power.
    """
    setpoints = {b.battery_id: 0 for b in batteries}
    notes: dict[BatteryId, Msg] = {}
    discharge = total_w > 0
    allowed: list[tuple[BatteryState, float]] = []
    for b in batteries:
        max_chg, max_dis, note = battery_limits(b, p)
        if note:
            notes[b.battery_id] = note
        headroom = max_dis if discharge else max_chg
        if limits_w and b.battery_id in limits_w and headroom > 0:
            headroom = min(headroom, limits_w[b.battery_id])
        if headroom > 0 and (not limits_w or headroom >= unit_min_w(b, p)):
            allowed.append((b, headroom))
    magnitude = min(abs(total_w), sum(h for _, h in allowed))
    if magnitude < p.min_power_w or not allowed:
        return setpoints, notes
    # Higher SoC discharges first, lower SoC charges first (keeps the packs level).
    allowed.sort(key=lambda bh: (-(bh[0].soc_pct or 0.0) if discharge else (bh[0].soc_pct or 0.0)))
    if p.distribution == "efficient":
        count = max(1, math.ceil(magnitude / p.stage_up_w))
        count = min(count, len(allowed))
        while count < len(allowed) and sum(h for _, h in allowed[:count]) < magnitude:
            count += 1
        # Enough for each to run at least at the minimum power.
        while count > 1 and magnitude / count < p.min_power_w:
            count -= 1
        chosen = allowed[:count]
    else:
        chosen = allowed
        while len(chosen) > 1 and magnitude / len(chosen) < p.min_power_w:
            chosen = chosen[:-1]
    shares = _water_fill(magnitude, [h for _, h in chosen])
    sign = 1 if discharge else -1
    for (b, headroom), share in zip(chosen, shares, strict=True):
        watts = round(max(share, unit_min_w(b, p)))
        setpoints[b.battery_id] = sign * min(watts, int(unit_max_w(b, p)), math.floor(headroom + 1e-9))
    return setpoints, notes


def _water_fill(total: float, caps: Sequence[float]) -> list[float]:
    """Equal shares, each capped at its headroom; what a capped unit cannot take goes to the rest."""
    shares = [0.0] * len(caps)
    left = total
    open_idx = list(range(len(caps)))
    while open_idx and left > 1e-9:
        each = left / len(open_idx)
        still_open = []
        for i in open_idx:
            take = min(each, caps[i] - shares[i])
            shares[i] += take
            left -= take
            if caps[i] - shares[i] > 1e-9:
                still_open.append(i)
        if len(still_open) == len(open_idx):
            break
        open_idx = still_open
    return shares


# ---------------------------------------------------------------------------- helpers
def weighted_average(values: Sequence[float]) -> float:
    """The seed's average: weights 1, 2, 3 ... with the newest value heaviest."""
    weights = range(1, len(values) + 1)
    return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)


class _MeterFailures:
    """Counts consecutive meter failures; shared by both control laws."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def failed(self, error: str, last_setpoints: Mapping[BatteryId, int]) -> Decision:
        self.count += 1
        if self.count >= self.limit:
            return Decision(
                setpoints_w={i: 0 for i in last_setpoints},
                status=Status.METER_FAILED,
                reason=Msg("reason_meter_failed", count=self.count, error=error),
            )
        return Decision(
            setpoints_w=dict(last_setpoints),
            status=Status.METER_RETRY,
            reason=Msg("reason_meter_retry", count=self.count, error=error),
        )


def target_total(demand_w: float, p: ControlParams) -> float:
    """Total battery power for a house demand (load - PV, W), using the charge/discharge targets."""
    if demand_w - p.target_grid_discharge_w > 0:
        return demand_w - p.target_grid_discharge_w
    if demand_w - p.target_grid_charge_w < 0:
        return demand_w - p.target_grid_charge_w
    return 0.0


def mode_override(
    mode: OperatingMode, charge_power_w: float | None, batteries: Sequence[BatteryState], p: ControlParams
) -> Decision | None:
    """The decision a mode makes on its own, without the meter: "off" stops every battery; "charge"
    charges at ``charge_power_w`` (None: every battery's maximum) while a battery may still charge.
    None: the zero-feed law decides (auto, hold, and charge once every battery is full)."""
    if mode is OperatingMode.OFF:
        return Decision(setpoints_w={b.battery_id: 0 for b in batteries}, status=Status.MODE_OFF,
                        reason=Msg("reason_mode_off"))
    if mode is OperatingMode.CHARGE:
        power_w = p.max_power_w * len(batteries) if charge_power_w is None else charge_power_w
        setpoints, notes = distribute(-abs(power_w), batteries, p)
        if any(setpoints.values()):
            return Decision(setpoints_w=setpoints, status=Status.MODE_CHARGE, battery_notes=notes,
                            reason=Msg("reason_mode_charge", power=float(-sum(setpoints.values()))))
    return None


def _hold_stop(setpoints: Mapping[BatteryId, int]) -> dict[BatteryId, int] | None:
    """In hold: the setpoints with every discharge set to 0, or None when nothing discharges."""
    if not any(w > 0 for w in setpoints.values()):
        return None
    return {i: min(w, 0) for i, w in setpoints.items()}


# ---------------------------------------------------------------------------- the fast law
class SampleAgeEstimator:
    """Learns how old a fresh meter sample is when it arrives (transport latency plus hold phase).

    The meter shows ``demand - P(t_sample)``. For each candidate age ``a`` the demand estimate is
    ``grid + P(received - a)``; while the batteries move, only the true age gives a demand that does
    not jump between consecutive samples. Each informative pair of samples (the candidates disagree,
    and at least one of them sees no load change) adds ``|Δ demand|`` to every candidate's cost. The
    ages whose mean cost is within ``tolerance_w`` of the best form the window the controller uses.
    """

    STEP_S = 0.1
    MAX_AGE_S = 4.0
    DECAY = 0.95
    MIN_PAIRS = 3.0
    INFORMATIVE_W = 100.0  # candidates must disagree by this much
    LOAD_EVENT_W = 150.0  # every candidate jumps by more: the load changed, skip
    COST_CAP_W = 500.0

    def __init__(self, default_window_s: tuple[float, float], tolerance_w: float = 20.0) -> None:
        self.default_window_s = default_window_s
        self.tolerance_w = tolerance_w
        n = round(self.MAX_AGE_S / self.STEP_S) + 1
        self.ages = [round(i * self.STEP_S, 3) for i in range(n)]
        self.cost = [0.0] * n
        self.weight = 0.0
        self._prev: list[float] | None = None
        self._prev_s = -math.inf

    def update(self, received_s: float, grid_w: float, powers: Callable[[Sequence[float]], list[float]]) -> None:
        demands = [grid_w + w for w in powers([received_s - a for a in self.ages])]
        prev, self._prev = self._prev, demands
        gap_s, self._prev_s = received_s - self._prev_s, received_s
        if prev is None or gap_s > 15.0:
            return
        deltas = [d - q for d, q in zip(demands, prev, strict=True)]
        if max(deltas) - min(deltas) < self.INFORMATIVE_W or min(abs(x) for x in deltas) > self.LOAD_EVENT_W:
            return
        self.cost = [self.DECAY * c + min(abs(x), self.COST_CAP_W) for c, x in zip(self.cost, deltas, strict=True)]
        self.weight = self.DECAY * self.weight + 1.0

    def window(self) -> tuple[float, float]:
        """(youngest, oldest) plausible age of a fresh sample at arrival, s."""
        if self.weight < self.MIN_PAIRS:
            return self.default_window_s
        best = min(self.cost)
        limit = best + self.tolerance_w * self.weight
        fit = [a for a, c in zip(self.ages, self.cost, strict=True) if c <= limit]
        return fit[0], fit[-1]


@dataclass(frozen=True)
class _Move:
    """One cycle's zero-feed move before the deadband decides whether it is written (W)."""

    grid_w: float  # the grid power acted on (averaged when configured)
    command_w: float  # the total commanded now
    wanted_w: float  # the total zero feed-in asks for (0 while hold holds back a discharge)
    held_back_w: float  # the discharge that hold does not give
    demand_w: float  # wanted plus the direction's target grid power
    setpoints: dict[BatteryId, int]
    notes: dict[BatteryId, Msg]
    noise_w: float


class FastController:
    """Deadbeat on the measured battery power, at the meter's sampling instant.

    Each *fresh* meter sample (its value changed) gives the house demand ``grid + P(t_sample)``. The
    sample instant is only known to lie in a window learned by ``SampleAgeEstimator``; while the
    batteries move, the demand is therefore a range, and the controller moves its command only as far
    as the whole range demands (cautious: it never acts on the battery movement itself). Changes of at
    least ``jump_w`` are written at once; smaller ones pass a short filter (noise is not chased) and
    are written when the filtered change exceeds the deadband. Repeated samples change nothing.
    """

    HISTORY_S = 30.0
    NOISE_SAMPLES = 60  # fresh samples in the demand-noise estimate

    def __init__(self, params: ControlParams) -> None:
        self.p = params
        self._failures = _MeterFailures(params.max_meter_failures)
        self._power_t: deque[float] = deque()
        self._power_w: deque[float] = deque()
        self._readings: deque[float] = deque(maxlen=3)
        self._setpoints: dict[BatteryId, int] = {}
        self._command_total_w = 0.0
        self._last_value: float | None = None
        self._small_w = 0.0
        self._last_demand_w: float | None = None
        self._demand_steps: deque[float] = deque(maxlen=self.NOISE_SAMPLES)
        self._limits: dict[tuple[BatteryId, int], tuple[float, float]] = {}  # (id, ±1) -> (W, valid until)
        self._short_since: dict[BatteryId, float] = {}  # battery id -> steady and short of its setpoint since
        self._dead_since: dict[BatteryId, float] = {}  # battery id -> delivering (almost) nothing since
        self._last_power: dict[BatteryId, tuple[float, float]] = {}  # battery id -> (time, measured W)
        self.ages = SampleAgeEstimator((params.meter_min_age_s, params.meter_max_age_s), params.age_tolerance_w)

    @property
    def setpoints_w(self) -> dict[BatteryId, int]:
        return dict(self._setpoints)

    def reset(self) -> None:
        """Forget the last command (after the batteries were stopped from outside)."""
        self._setpoints = {i: 0 for i in self._setpoints}
        self._command_total_w = 0.0
        self._readings.clear()
        self._last_value = None
        self._small_w = 0.0

    def adopt(self, setpoints_w: Mapping[BatteryId, int]) -> None:
        """The loop wrote ``setpoints_w`` instead of this law's last command (the sign check's probe): judge
        delivery and the next change against what the batteries were really asked for."""
        self._setpoints = dict(setpoints_w)
        self._command_total_w = float(sum(setpoints_w.values()))
        self._small_w = 0.0

    def _powers_at(self, times_s: Sequence[float]) -> list[float]:
        """Total measured battery power at each of ``times_s`` (descending, as the estimator asks), linearly
        interpolated between the read-backs."""
        times, powers = self._power_t, self._power_w
        n = len(times)
        out = []
        i = n - 1  # index of the newest read-back at or before t
        for t in times_s:
            while i >= 0 and times[i] > t:
                i -= 1
            if i < 0:
                out.append(powers[0])
            elif i == n - 1 or times[i] == t:
                out.append(powers[i])
            else:
                t0, t1 = times[i], times[i + 1]
                out.append(powers[i] + (powers[i + 1] - powers[i]) * (t - t0) / (t1 - t0))
        return out

    def _power_range(self, t0_s: float, t1_s: float) -> tuple[float, float]:
        """Lowest and highest battery power that may have flowed in [t0, t1].

        Between two read-backs the power is only known to lie between them (a ramp after a dead time
        is not linear), so the read-backs enclosing the interval count too.
        """
        times = self._power_t
        i0 = max(0, bisect_right(times, t0_s) - 1)
        i1 = min(len(times) - 1, bisect_left(times, t1_s))
        values = [self._power_w[i] for i in range(i0, i1 + 1)]
        return min(values), max(values)

    def step(
        self,
        now_s: float,
        grid_power_w: float | None,
        batteries: Sequence[BatteryState],
        *,
        grid_received_s: float | None = None,
        meter_error: str = "no reading",
        mode: OperatingMode = OperatingMode.AUTO,
        charge_power_w: float | None = None,
    ) -> Decision:
        """One control cycle. ``grid_power_w`` None means the meter read failed. ``mode``: the operating
        mode (``charge_power_w``: its charge power, W > 0; None: every battery's maximum).

        A ladder of early returns, each with its status: the operating mode's own decision, a failed
        meter, no battery online, a held setpoint that became unsafe, no new sample; then the zero-feed
        move, written or held back by the deadband."""
        for b in batteries:
            self._setpoints.setdefault(b.battery_id, 0)
        early, mode = self._mode_step(mode, charge_power_w, batteries)
        if early is not None:
            return early
        if grid_power_w is None or not math.isfinite(grid_power_w):
            return self._meter_failed(now_s, batteries, meter_error)
        recovered = self._failures.count >= self._failures.limit
        self._failures.count = 0
        online = [b for b in batteries if b.online and b.power_w is not None]
        if not online:
            self.reset()
            return Decision(setpoints_w={b.battery_id: 0 for b in batteries}, status=Status.NO_BATTERY,
                            reason=Msg("reason_no_battery"))
        self._record_power(now_s, online)
        self._learn_limits(now_s, online)
        fresh = grid_power_w != self._last_value
        self._last_value = grid_power_w
        received_s = now_s if grid_received_s is None else min(grid_received_s, now_s)
        notes = self._notes(now_s, batteries)
        if (unsafe := self._drop_unsafe(batteries, grid_power_w, notes)) is not None:
            return unsafe
        if not fresh and not recovered:
            return Decision(setpoints_w=dict(self._setpoints), status=Status.WAITING_FOR_SAMPLE,
                            reason=Msg("reason_waiting"), grid_power_avg_w=grid_power_w,
                            battery_notes=notes, target_grid_w=self._target_grid_w(grid_power_w))
        move = self._move(grid_power_w, received_s, fresh, batteries, mode, notes)
        return self._write_or_hold(move, recovered)

    def _mode_step(
        self, mode: OperatingMode, charge_power_w: float | None, batteries: Sequence[BatteryState]
    ) -> tuple[Decision | None, OperatingMode]:
        """The operating mode's own decision (off, charge, a discharge stopped in hold), and the mode the
        zero-feed rules then follow (charge with every battery full holds)."""
        override = mode_override(mode, charge_power_w, batteries, self.p)
        if override is not None:
            if override.status is Status.MODE_OFF:
                self.reset()
                return override, mode
            return self._command(override.setpoints_w, override), mode
        if mode is OperatingMode.CHARGE:
            mode = OperatingMode.HOLD  # every battery full: hold
        if mode is OperatingMode.HOLD and (stopped := _hold_stop(self._setpoints)) is not None:
            return self._command(stopped, Decision(setpoints_w=dict(stopped), status=Status.MODE_HOLD,
                                                   reason=Msg("reason_mode_hold_stop"))), mode
        return None, mode

    def _meter_failed(self, now_s: float, batteries: Sequence[BatteryState], meter_error: str) -> Decision:
        """No usable reading: hold for a few failures, then stop (``_MeterFailures``)."""
        self._last_value = None
        decision = self._failures.failed(meter_error, self._setpoints)
        if decision.status is Status.METER_FAILED:
            self.reset()
        # The batteries' own notes (SoC limits, a no-delivery pause) stay visible while the meter is out.
        return replace(decision, battery_notes=self._notes(now_s, batteries))

    def _record_power(self, now_s: float, online: Sequence[BatteryState]) -> None:
        """Keep the total measured battery power, stamped with its read time, for the last ``HISTORY_S``."""
        measured_w = sum(b.power_w or 0.0 for b in online)
        stamps = [b.read_s for b in online if b.read_s is not None]
        stamp_s = min(now_s, sum(stamps) / len(stamps)) if len(stamps) == len(online) else now_s
        if self._power_t and stamp_s <= self._power_t[-1]:
            stamp_s = min(now_s, self._power_t[-1] + 1e-3)
        self._power_t.append(stamp_s)
        self._power_w.append(measured_w)
        while self._power_t and self._power_t[0] < now_s - self.HISTORY_S:
            self._power_t.popleft()
            self._power_w.popleft()

    def _drop_unsafe(self, batteries: Sequence[BatteryState], grid_power_w: float,
                     notes: Mapping[BatteryId, Msg]) -> Decision | None:
        """A held setpoint that became unsafe (SoC limit, offline, paused) is dropped at once."""
        held = self._safe_hold(batteries)
        if held == self._setpoints:
            return None
        why = notes_reason(notes) if notes else Msg("reason_battery_offline")
        return self._command(held, Decision(setpoints_w=dict(held), status=Status.SOC_LIMIT, reason=why,
                                            grid_power_avg_w=grid_power_w, battery_notes=dict(notes)))

    def _move(self, grid_power_w: float, received_s: float, fresh: bool, batteries: Sequence[BatteryState],
              mode: OperatingMode, notes: Mapping[BatteryId, Msg]) -> _Move:
        """What zero feed-in asks for now: the cautious total over every plausible sample instant, split."""
        p = self.p
        if fresh:
            self._readings.append(grid_power_w)
            self.ages.update(received_s, grid_power_w, self._powers_at)
        grid_w = weighted_average(self._readings) if p.average_readings else grid_power_w
        age_lo, age_hi = self.ages.window()
        p_lo, p_hi = self._power_range(received_s - age_hi, received_s - age_lo)
        if fresh:
            demand_mid_w = grid_w + (p_lo + p_hi) / 2
            if self._last_demand_w is not None:
                self._demand_steps.append(abs(demand_mid_w - self._last_demand_w))
            self._last_demand_w = demand_mid_w
        command_w = self._command_total_w
        want_lo, want_hi = target_total(grid_w + p_lo, p), target_total(grid_w + p_hi, p)
        # Cautious: move only as far as every plausible sample instant demands.
        wanted_w = min(max(command_w, want_lo), want_hi)
        held_back_w = wanted_w if mode is OperatingMode.HOLD and wanted_w > 0 else 0.0
        if held_back_w:
            wanted_w = 0.0
        demand_w = wanted_w + (p.target_grid_discharge_w if wanted_w > 0 else p.target_grid_charge_w
                               if wanted_w < 0 else 0.0)
        setpoints, split_notes = distribute(wanted_w, batteries, p, self.limits_w(1 if wanted_w > 0 else -1))
        return _Move(grid_w=grid_w, command_w=command_w, wanted_w=wanted_w, held_back_w=held_back_w,
                     demand_w=demand_w, setpoints=setpoints, noise_w=self.noise_w(),
                     # a paused battery keeps its note while the others take its share
                     notes={**split_notes, **notes})

    def _write_or_hold(self, move: _Move, recovered: bool) -> Decision:
        """Write the move when it is large, a new split or a meter that came back; filter small ones."""
        p, setpoints = self.p, move.setpoints
        new_total_w = float(sum(setpoints.values()))
        change_w = new_total_w - move.command_w

        def decide(status: Status, reason: Msg, new: Mapping[BatteryId, int]) -> Decision:
            return Decision(setpoints_w=dict(new), status=status, reason=reason, grid_power_avg_w=move.grid_w,
                            demand_w=move.demand_w, battery_notes=move.notes,
                            target_grid_w=self._target_grid_w(move.grid_w, new))

        code = "reason_discharge" if new_total_w > 0 else "reason_charge" if new_total_w < 0 else "reason_stop"
        reason = Msg(code, power=abs(new_total_w), demand=move.demand_w)
        if recovered:
            return self._command(setpoints, decide(Status.TRACKING, Msg("reason_meter_back"), setpoints))
        if new_total_w == 0 and move.command_w == 0:
            return self._at_rest(move, decide)
        jump_w = max(p.jump_w, p.jump_noise * move.noise_w)
        moved_w = max((abs(setpoints.get(i, 0) - w) for i, w in self._setpoints.items()), default=0)
        if abs(change_w) >= jump_w or not self._same_split(setpoints) or moved_w >= jump_w:  # also a new split
            return self._command(setpoints, decide(Status.TRACKING, reason, setpoints))
        # Small deviation: filter it, so that measurement noise is not written to the batteries.
        self._small_w += p.filter_gain * (change_w - self._small_w)
        if abs(self._small_w) >= max(p.deadband_w, p.deadband_noise * move.noise_w):
            return self._command(setpoints, decide(Status.TRACKING, reason, setpoints))
        return decide(Status.DEADBAND, Msg("reason_deadband", change=f"{change_w:+.0f}"), self._setpoints)

    def _at_rest(self, move: _Move, decide: Callable[[Status, Msg, Mapping[BatteryId, int]], Decision]) -> Decision:
        """Nothing commanded and nothing to command: say why (in band, hold, a battery note, too little)."""
        self._small_w = 0.0
        if move.held_back_w:
            return decide(Status.MODE_HOLD, Msg("reason_mode_hold", demand=move.held_back_w), self._setpoints)
        if move.wanted_w == 0:
            return decide(Status.IDLE, Msg("reason_in_band", grid=move.grid_w), self._setpoints)
        why = notes_reason(move.notes) if move.notes else Msg("reason_below_min_power", demand=abs(move.wanted_w))
        return decide(Status.SOC_LIMIT if move.notes else Status.IDLE, why, self._setpoints)

    def limits_w(self, direction: int) -> dict[BatteryId, float]:
        """Power limits learned per battery id for discharging (+1) or charging (-1), W."""
        return {i: w for (i, d), (w, _) in self._limits.items() if d == direction}

    def _learn_limits(self, now_s: float, batteries: Sequence[BatteryState]) -> None:
        """The one policy for a battery that delivers less than commanded.

        One that holds steady clearly below its setpoint (a smaller unit, a BMS limit) is only given what it
        delivers, so that the others take the rest; one that delivers (almost) nothing at all (a firmware
        quirk, a BMS refusing near its limits) gets nothing in that direction for a while. Both limits are
        forgotten after their hold time and the battery is asked in full again."""
        p = self.p
        for key, (_, until_s) in list(self._limits.items()):
            if now_s >= until_s:
                del self._limits[key]
        for b in batteries:
            i, power_w = b.battery_id, b.power_w or 0.0
            sp = self._setpoints.get(i, 0)
            previous = self._last_power.get(i)
            self._last_power[i] = (now_s, power_w)
            direction = (sp > 0) - (sp < 0)
            delivered_w = direction * power_w
            if direction and abs(sp) >= p.no_delivery_min_w and delivered_w < p.no_delivery_share * abs(sp):
                since_s = self._dead_since.setdefault(i, now_s)
                if now_s - since_s >= p.no_delivery_after_s:
                    self._limits[i, direction] = (0.0, now_s + p.no_delivery_hold_s)
                    del self._dead_since[i]
            else:
                self._dead_since.pop(i, None)
            # Steady: changing by at most 10 W + 2 % of the setpoint per second, however often we look.
            steady = previous is not None and now_s > previous[0] and abs(power_w - previous[1]) <= (
                10.0 + 0.02 * abs(sp)) * min(1.0, now_s - previous[0])
            if direction and steady and delivered_w >= p.min_power_w and abs(sp) - delivered_w > max(
                    50.0, 0.1 * abs(sp)):
                since_s = self._short_since.setdefault(i, now_s)
                if now_s - since_s >= p.limit_after_s:
                    self._limits[i, direction] = (delivered_w, now_s + p.limit_hold_s)
                    del self._short_since[i]
            else:
                self._short_since.pop(i, None)

    def _notes(self, now_s: float, batteries: Sequence[BatteryState]) -> dict[BatteryId, Msg]:
        """Per battery: why it may not take (all of) its share now."""
        notes = {b.battery_id: note for b in batteries if (note := battery_limits(b, self.p)[2])}
        for (i, direction), (limit_w, until_s) in self._limits.items():
            minutes = max(1, math.ceil((until_s - now_s) / 60))
            if limit_w == 0.0:
                code = "note_no_delivery_discharge" if direction > 0 else "note_no_delivery_charge"
                notes[i] = Msg(code, minutes=minutes)
            elif i not in notes:  # a reason the battery reports itself (SoC, EEPROM limit) comes first
                if direction > 0 and abs(limit_w - APP_LIMIT_W) <= APP_LIMIT_TOLERANCE_W:
                    notes[i] = Msg("note_app_limit", limit=round(limit_w))
                else:
                    code = "note_learned_limit_discharge" if direction > 0 else "note_learned_limit_charge"
                    notes[i] = Msg(code, limit=round(limit_w), minutes=minutes)
        return notes

    def noise_w(self) -> float:
        """Standard deviation of the sample-to-sample demand noise (robust: from the median step), W."""
        if len(self._demand_steps) < 10:
            return 0.0
        steps = sorted(self._demand_steps)
        return steps[len(steps) // 2] / 0.954  # median |N(0, 2σ²)| = 0.954 σ

    def _target_grid_w(self, grid_w: float, setpoints: Mapping[BatteryId, int] | None = None) -> float:
        """The grid power the command aims at (for the quality figures): the target of its direction,
        or the grid itself while the batteries rest."""
        c = self._command_total_w if setpoints is None else sum(setpoints.values())
        return self.p.target_grid_discharge_w if c > 0 else self.p.target_grid_charge_w if c < 0 else grid_w

    def _safe_hold(self, batteries: Sequence[BatteryState]) -> dict[BatteryId, int]:
        """The current setpoints with every one that the SoC rules, the online state or a no-delivery pause
        forbid set to 0."""
        held = dict(self._setpoints)
        for b in batteries:
            max_chg, max_dis, _ = battery_limits(b, self.p)
            sp = held.get(b.battery_id, 0)
            direction = (sp > 0) - (sp < 0)
            paused = self._limits.get((b.battery_id, direction), (None, 0.0))[0] == 0.0
            if (sp > 0 and max_dis <= 0) or (sp < 0 and max_chg <= 0) or (direction and paused):
                held[b.battery_id] = 0
        return held

    def _same_split(self, setpoints: Mapping[BatteryId, int]) -> bool:
        """True when the same batteries run in the same direction as commanded now."""
        return all((setpoints.get(i, 0) > 0) - (setpoints.get(i, 0) < 0) == (v > 0) - (v < 0)
                   for i, v in self._setpoints.items())

    def _command(self, setpoints: Mapping[BatteryId, int], decision: Decision) -> Decision:
        self._setpoints = dict(setpoints)
        self._command_total_w = float(sum(setpoints.values()))
        self._small_w = 0.0
        return decision


# ---------------------------------------------------------------------------- the seed's law
class SeedController:
    """The original program's loop, kept as ``control.algorithm = "seed"`` and as a benchmark baseline.

    Works on its own commanded total (no read-back), a weighted average of the last three
    readings, a 50 W start threshold, at most 750 W change per cycle, equal split.
    """

    START_THRESHOLD_W = 50.0
    MAX_STEP_W = 750.0
    WRITE_THRESHOLD_W = 25.0
    LOW_SOC_PCT = 13.0

    def __init__(self, params: ControlParams) -> None:
        self.p = params
        self._failures = _MeterFailures(params.max_meter_failures)
        self._readings: deque[float] = deque(maxlen=3)
        self._setpoints: dict[BatteryId, int] = {}
        self._command_total_w = 0.0

    @property
    def setpoints_w(self) -> dict[BatteryId, int]:
        return dict(self._setpoints)

    def reset(self) -> None:
        self._setpoints = {i: 0 for i in self._setpoints}
        self._command_total_w = 0.0
        self._readings.clear()

    def adopt(self, setpoints_w: Mapping[BatteryId, int]) -> None:
        """The loop wrote ``setpoints_w`` instead of this law's last command (see ``FastController.adopt``)."""
        self._setpoints = dict(setpoints_w)
        self._command_total_w = float(sum(setpoints_w.values()))

    def step(
        self,
        now_s: float,
        grid_power_w: float | None,
        batteries: Sequence[BatteryState],
        *,
        grid_received_s: float | None = None,
        meter_error: str = "no reading",
        mode: OperatingMode = OperatingMode.AUTO,
        charge_power_w: float | None = None,
    ) -> Decision:
        """The seed loop as it was, plus the two rules of the hold mode."""
        p = self.p
        for b in batteries:
            self._setpoints.setdefault(b.battery_id, 0)
        early, mode = self._mode_step(mode, charge_power_w, batteries)
        if early is not None:
            return early
        if grid_power_w is None or not math.isfinite(grid_power_w):
            decision = self._failures.failed(meter_error, self._setpoints)
            if decision.status is Status.METER_FAILED:
                self.reset()
            return decision
        self._failures.count = 0
        self._readings.append(grid_power_w)
        grid_w = weighted_average(self._readings)
        c = self._command_total_w
        new = self._seed_total(grid_w, c, batteries)
        held_back_w = max(new, 0.0) if mode is OperatingMode.HOLD else 0.0
        new -= held_back_w  # hold: never discharge
        setpoints, notes = self._split(new, batteries)
        new_total = float(sum(setpoints.values()))
        t_chg, t_dis = p.target_grid_charge_w, p.target_grid_discharge_w

        def target(total: float) -> float:
            return t_dis if total > 0 else t_chg if total < 0 else grid_power_w

        if held_back_w and new_total == c == 0:
            return Decision(setpoints_w=dict(self._setpoints), status=Status.MODE_HOLD, battery_notes=notes,
                            reason=Msg("reason_mode_hold", demand=held_back_w), grid_power_avg_w=grid_w,
                            target_grid_w=target(c))
        if new_total == c and new_total == 0:
            return Decision(setpoints_w=dict(self._setpoints), status=Status.IDLE,
                            reason=Msg("reason_seed_idle", grid=grid_w), grid_power_avg_w=grid_w,
                            battery_notes=notes, target_grid_w=target(c))
        if abs(new_total - c) <= self.WRITE_THRESHOLD_W and (new_total == 0) == (c == 0):
            return Decision(setpoints_w=dict(self._setpoints), status=Status.DEADBAND,
                            reason=Msg("reason_seed_hold", grid=grid_w), grid_power_avg_w=grid_w,
                            battery_notes=notes, target_grid_w=target(c))
        self._setpoints = setpoints
        self._command_total_w = new_total
        return Decision(setpoints_w=dict(setpoints), status=Status.TRACKING,
                        reason=Msg("reason_seed_track", power=new_total, grid=grid_w), grid_power_avg_w=grid_w,
                        battery_notes=notes, target_grid_w=target(new_total))

    def _seed_total(self, grid_w: float, c: float, batteries: Sequence[BatteryState]) -> float:
        """The seed's new total from the averaged grid power and its own last command ``c`` (W)."""
        p = self.p
        socs = [b.soc_pct for b in batteries if b.online and b.soc_pct is not None]
        avg_soc = sum(socs) / len(socs) if socs else None
        t_chg, t_dis = p.target_grid_charge_w, p.target_grid_discharge_w
        if c == 0:
            charge_start = t_chg - self.START_THRESHOLD_W
            if avg_soc is not None and avg_soc < self.LOW_SOC_PCT:
                charge_start = -100.0
            if grid_w < charge_start:
                new = -(abs(grid_w) + t_chg)  # charge |grid| - 20
            elif grid_w > t_dis + self.START_THRESHOLD_W:
                new = grid_w - t_dis
            else:
                new = 0.0
        elif c > 0:
            need = grid_w + c
            new = need - t_dis if need >= 70 else need
        else:
            pv = -c - grid_w
            new = -(pv + t_chg) if pv >= 70 or grid_w < 0 else -pv
        if abs(new) < self.START_THRESHOLD_W or (c != 0 and (new > 0) != (c > 0)):
            return 0.0  # stop; a direction change always passes through stop
        new = max(c - self.MAX_STEP_W, min(c + self.MAX_STEP_W, new))
        return 0.0 if (new > 0) != (c > 0) and c != 0 else new

    def _mode_step(
        self, mode: OperatingMode, charge_power_w: float | None, batteries: Sequence[BatteryState]
    ) -> tuple[Decision | None, OperatingMode]:
        """The operating mode's own decision (off, charge, a discharge stopped in hold), and the mode the
        zero-feed rules then follow (charge with every battery full holds)."""
        override = mode_override(mode, charge_power_w, batteries, self.p)
        if override is not None:
            self.reset()
            if override.status is Status.MODE_CHARGE:
                self._setpoints = dict(override.setpoints_w)
                self._command_total_w = float(override.total_w)
            return override, mode
        if mode is OperatingMode.CHARGE:
            mode = OperatingMode.HOLD  # every battery full: hold
        if mode is OperatingMode.HOLD and (stopped := _hold_stop(self._setpoints)) is not None:
            self._setpoints, self._command_total_w = stopped, float(sum(stopped.values()))
            return Decision(setpoints_w=dict(stopped), status=Status.MODE_HOLD,
                            reason=Msg("reason_mode_hold_stop")), mode
        return None, mode

    def _split(self, total_w: float, batteries: Sequence[BatteryState]
               ) -> tuple[dict[BatteryId, int], dict[BatteryId, Msg]]:
        """Equal split over the batteries inside the SoC window, 50..max W each."""
        return distribute(total_w, batteries, replace(self.p, distribution="balanced"))


Controller = FastController | SeedController


def make_controller(algorithm: str, params: ControlParams) -> Controller:
    """``"fast"`` (default) or ``"seed"``."""
    if algorithm == "seed":
        return SeedController(params)
    if algorithm == "fast":
        return FastController(params)
    raise ValueError(f"unknown control algorithm {algorithm!r}")
