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
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace


class Status(enum.Enum):
    """Why the controller decided what it did (shown in /api/status and the log)."""

    TRACKING = "tracking"  # new setpoints written
    DEADBAND = "deadband"  # error too small to act on
    SETTLING = "settling"  # waiting for the batteries to reach the last command
    IDLE = "idle"  # demand inside the target band or below the minimum power
    SOC_LIMIT = "soc_limit"  # demand exists but no battery may serve it
    NO_BATTERY = "no_battery"  # no battery online
    METER_RETRY = "meter_retry"  # a meter read failed; holding the last command
    METER_FAILED = "meter_failed"  # too many meter failures: batteries stopped


STOPPING = frozenset({Status.METER_FAILED, Status.NO_BATTERY})


@dataclass(frozen=True)
class ControlParams:
    """Tuning and limits of the control law (built from the config in main.py)."""

    target_grid_charge_w: float = -20.0
    target_grid_discharge_w: float = 20.0
    min_power_w: float = 50.0
    max_power_w: float = 2500.0
    min_soc_pct: float = 11.0
    max_soc_pct: float = 98.0
    max_meter_failures: int = 2
    deadband_w: float = 15.0
    average_readings: bool = False
    # Age of a meter reading when it arrives: transport latency up to latency plus one hold period, s.
    meter_min_age_s: float = 0.2
    meter_max_age_s: float = 1.5
    # The batteries count as settled within this tolerance of their command (W, or 5 %).
    settle_tolerance_w: float = 30.0
    # Act again after this long even if a battery never reached its command (BMS limit), s.
    settle_timeout_s: float = 6.0
    # Export while discharging (or import while charging) beyond this margin is cut at once, W.
    urgent_margin_w: float = 40.0
    # "efficient": as few batteries as needed (higher SoC first); "balanced": shared by headroom.
    distribution: str = "efficient"
    # A second battery joins above this share per battery, W (two units beat one above ~1500 W).
    stage_up_w: float = 1500.0


@dataclass(frozen=True)
class BatteryState:
    """One battery as the control thread last saw it.

    soc_pct: 0..100 or None if never read. power_w: measured AC power (+ discharge) or None.
    """

    battery_id: int
    online: bool
    soc_pct: float | None
    power_w: float | None


@dataclass(frozen=True)
class Decision:
    """Setpoints per battery id (+ discharge, - charge, W) and why."""

    setpoints_w: Mapping[int, int]
    status: Status
    reason: str
    grid_power_avg_w: float | None = None
    demand_w: float | None = None
    battery_notes: Mapping[int, str] = field(default_factory=dict)

    @property
    def total_w(self) -> int:
        return sum(self.setpoints_w.values())


# ---------------------------------------------------------------------------- distribution
def battery_limits(b: BatteryState, p: ControlParams) -> tuple[float, float, str]:
    """(max charge W, max discharge W, note) for one battery under the SoC rules."""
    if not b.online:
        return 0.0, 0.0, "offline"
    if b.soc_pct is None:
        return 0.0, 0.0, "SoC unknown"
    can_discharge = b.soc_pct > p.min_soc_pct
    can_charge = b.soc_pct < p.max_soc_pct
    note = ""
    if not can_discharge:
        note = f"SoC {b.soc_pct:.0f} % at/below minimum {p.min_soc_pct:.0f} %: no discharge"
    elif not can_charge:
        note = f"SoC {b.soc_pct:.0f} % at/above maximum {p.max_soc_pct:.0f} %: no charge"
    return (p.max_power_w if can_charge else 0.0), (p.max_power_w if can_discharge else 0.0), note


def distribute(
    total_w: float, batteries: Sequence[BatteryState], p: ControlParams
) -> tuple[dict[int, int], dict[int, str]]:
    """Split a total setpoint over the batteries that are online and allowed.

    Never exceeds a battery's power limit, never discharges at/below the minimum SoC, never
    charges at/above the maximum SoC, never commands less than the minimum power.
    """
    setpoints = {b.battery_id: 0 for b in batteries}
    notes: dict[int, str] = {}
    discharge = total_w > 0
    allowed: list[tuple[BatteryState, float]] = []
    for b in batteries:
        max_chg, max_dis, note = battery_limits(b, p)
        if note:
            notes[b.battery_id] = note
        headroom = max_dis if discharge else max_chg
        if headroom > 0:
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
    for (b, _), share in zip(chosen, shares, strict=True):
        watts = round(max(share, p.min_power_w))
        setpoints[b.battery_id] = sign * min(watts, int(p.max_power_w))
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

    def failed(self, error: str, last_setpoints: Mapping[int, int]) -> Decision:
        self.count += 1
        if self.count >= self.limit:
            return Decision(
                {i: 0 for i in last_setpoints},
                Status.METER_FAILED,
                f"meter failed {self.count}x: batteries stopped ({error})",
            )
        return Decision(
            dict(last_setpoints), Status.METER_RETRY, f"meter failed {self.count}x: holding ({error})"
        )


def _target_total(demand_w: float, p: ControlParams) -> float:
    """Total battery power for a house demand (load - PV, W), using the charge/discharge targets."""
    if demand_w - p.target_grid_discharge_w > 0:
        return demand_w - p.target_grid_discharge_w
    if demand_w - p.target_grid_charge_w < 0:
        return demand_w - p.target_grid_charge_w
    return 0.0


# ---------------------------------------------------------------------------- the fast law
class FastController:
    """Deadbeat on measured battery power, synchronised to the meter's sampling instant."""

    HISTORY_S = 15.0

    def __init__(self, params: ControlParams) -> None:
        self.p = params
        self._failures = _MeterFailures(params.max_meter_failures)
        self._power_history: deque[tuple[float, float]] = deque()
        self._readings: deque[float] = deque(maxlen=3)
        self._setpoints: dict[int, int] = {}
        self._command_total_w = 0.0
        self._command_time_s = -math.inf

    @property
    def setpoints_w(self) -> dict[int, int]:
        return dict(self._setpoints)

    def reset(self) -> None:
        """Forget the last command (after the batteries were stopped from outside)."""
        self._setpoints = {i: 0 for i in self._setpoints}
        self._command_total_w = 0.0
        self._readings.clear()

    def _measured_at(self, t_s: float) -> float:
        """Total measured battery power at time t_s, linearly interpolated in the history."""
        hist = self._power_history
        times = [t for t, _ in hist]
        i = bisect_left(times, t_s)
        if i == 0:
            return hist[0][1]
        if i >= len(hist):
            return hist[-1][1]
        (t0, p0), (t1, p1) = hist[i - 1], hist[i]
        return p0 + (p1 - p0) * (t_s - t0) / (t1 - t0) if t1 > t0 else p1

    def step(
        self,
        now_s: float,
        grid_power_w: float | None,
        batteries: Sequence[BatteryState],
        *,
        grid_received_s: float | None = None,
        meter_error: str = "no reading",
    ) -> Decision:
        """One control cycle. ``grid_power_w`` None means the meter read failed."""
        p = self.p
        for b in batteries:
            self._setpoints.setdefault(b.battery_id, 0)
        if grid_power_w is None or not math.isfinite(grid_power_w):
            decision = self._failures.failed(meter_error, self._setpoints)
            if decision.status is Status.METER_FAILED:
                self.reset()
            return decision
        recovered = self._failures.count >= self._failures.limit
        self._failures.count = 0

        online = [b for b in batteries if b.online and b.power_w is not None]
        if not online:
            self.reset()
            return Decision({b.battery_id: 0 for b in batteries}, Status.NO_BATTERY, "no battery online")
        measured_w = sum(b.power_w or 0.0 for b in online)
        self._power_history.append((now_s, measured_w))
        while self._power_history and self._power_history[0][0] < now_s - self.HISTORY_S:
            self._power_history.popleft()

        self._readings.append(grid_power_w)
        grid_w = weighted_average(self._readings) if p.average_readings else grid_power_w
        received_s = now_s if grid_received_s is None else grid_received_s
        # The meter sampled at an unknown instant inside [received - max age, received - min age].
        # While the batteries move, the battery power at that instant is uncertain: take the end of
        # the window that changes the command least (a cautious estimate; exact once they settle).
        candidates = [grid_w + self._measured_at(received_s - age) for age in (p.meter_max_age_s, p.meter_min_age_s)]
        demand_w = min(candidates, key=lambda d: abs(_target_total(d, p) - self._command_total_w))
        wanted_w = _target_total(demand_w, p)
        setpoints, notes = distribute(wanted_w, batteries, p)
        new_total_w = float(sum(setpoints.values()))

        def decide(status: Status, reason: str, new: Mapping[int, int]) -> Decision:
            return Decision(dict(new), status, reason, grid_w, demand_w, notes)

        change_w = new_total_w - self._command_total_w
        if recovered:
            return self._command(now_s, setpoints, decide(Status.TRACKING, "meter back: resuming", setpoints))
        held = self._safe_hold(batteries)
        if held != self._setpoints:  # a held setpoint became unsafe (SoC limit, offline): drop it now
            return self._command(now_s, held, decide(Status.SOC_LIMIT, "; ".join(notes.values()) or "battery offline",
                                                     held))
        if new_total_w == 0 and self._command_total_w == 0:
            if wanted_w == 0:
                return decide(Status.IDLE, f"grid {grid_w:.0f} W inside the target band", self._setpoints)
            why = "; ".join(notes.values()) or f"demand {abs(wanted_w):.0f} W below the minimum power"
            return decide(Status.SOC_LIMIT if notes else Status.IDLE, why, self._setpoints)
        if abs(change_w) < p.deadband_w and self._same_split(setpoints):
            return decide(Status.DEADBAND, f"deviation {change_w:+.0f} W inside deadband", self._setpoints)
        verb = "discharge" if new_total_w > 0 else "charge" if new_total_w < 0 else "stop"
        reason = f"{verb} {abs(new_total_w):.0f} W (demand {demand_w:.0f} W)"
        if self._settled(now_s) or now_s - self._command_time_s >= p.settle_timeout_s:
            return self._command(now_s, setpoints, decide(Status.TRACKING, reason, setpoints))
        # Batteries still moving: cut only what even the most favourable estimate says will still
        # flow the wrong way once the command in flight has taken effect.
        command_w = self._command_total_w
        if command_w > 0 and max(candidates) - command_w < p.target_grid_charge_w - p.urgent_margin_w:
            cut, _ = distribute(_target_total(max(candidates), p), batteries, p)
            if sum(cut.values()) < command_w:
                return self._command(now_s, cut, decide(Status.TRACKING, f"export: cut at once, {reason}", cut))
        if command_w < 0 and min(candidates) - command_w > p.target_grid_discharge_w + p.urgent_margin_w:
            cut, _ = distribute(_target_total(min(candidates), p), batteries, p)
            if sum(cut.values()) > command_w:
                return self._command(now_s, cut, decide(Status.TRACKING, f"import: cut at once, {reason}", cut))
        return decide(
            Status.SETTLING,
            f"waiting for batteries: {measured_w:.0f} W of {self._command_total_w:.0f} W",
            self._setpoints,
        )

    def _settled(self, now_s: float) -> bool:
        """The batteries held their command through the whole window the meter sample may come from."""
        tolerance_w = max(self.p.settle_tolerance_w, 0.03 * abs(self._command_total_w))
        since_s = now_s - self.p.meter_max_age_s
        window = [w for t, w in self._power_history if t >= since_s]
        return bool(window) and all(abs(w - self._command_total_w) <= tolerance_w for w in window)

    def _safe_hold(self, batteries: Sequence[BatteryState]) -> dict[int, int]:
        """The current setpoints with every one that the SoC rules or the online state forbid set to 0."""
        held = dict(self._setpoints)
        for b in batteries:
            max_chg, max_dis, _ = battery_limits(b, self.p)
            sp = held.get(b.battery_id, 0)
            if (sp > 0 and max_dis <= 0) or (sp < 0 and max_chg <= 0):
                held[b.battery_id] = 0
        return held

    def _same_split(self, setpoints: Mapping[int, int]) -> bool:
        """True when the same batteries run in the same direction as commanded now."""
        return all((setpoints.get(i, 0) > 0) - (setpoints.get(i, 0) < 0) == (v > 0) - (v < 0)
                   for i, v in self._setpoints.items())

    def _command(self, now_s: float, setpoints: Mapping[int, int], decision: Decision) -> Decision:
        self._setpoints = dict(setpoints)
        self._command_total_w = float(sum(setpoints.values()))
        self._command_time_s = now_s
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
        self._setpoints: dict[int, int] = {}
        self._command_total_w = 0.0

    @property
    def setpoints_w(self) -> dict[int, int]:
        return dict(self._setpoints)

    def reset(self) -> None:
        self._setpoints = {i: 0 for i in self._setpoints}
        self._command_total_w = 0.0
        self._readings.clear()

    def step(
        self,
        now_s: float,
        grid_power_w: float | None,
        batteries: Sequence[BatteryState],
        *,
        grid_received_s: float | None = None,
        meter_error: str = "no reading",
    ) -> Decision:
        p = self.p
        for b in batteries:
            self._setpoints.setdefault(b.battery_id, 0)
        if grid_power_w is None or not math.isfinite(grid_power_w):
            decision = self._failures.failed(meter_error, self._setpoints)
            if decision.status is Status.METER_FAILED:
                self.reset()
            return decision
        self._failures.count = 0
        self._readings.append(grid_power_w)
        grid_w = weighted_average(self._readings)
        c = self._command_total_w
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
            new = 0.0  # stop; a direction change always passes through stop
        if new != 0:
            new = max(c - self.MAX_STEP_W, min(c + self.MAX_STEP_W, new))
            if (new > 0) != (c > 0) and c != 0:
                new = 0.0
        setpoints, notes = self._split(new, batteries)
        new_total = float(sum(setpoints.values()))
        grid_info = f"avg grid {grid_w:.0f} W"
        if new_total == c and new_total == 0:
            return Decision(dict(self._setpoints), Status.IDLE, f"idle ({grid_info})", grid_w, None, notes)
        if abs(new_total - c) <= self.WRITE_THRESHOLD_W and (new_total == 0) == (c == 0):
            return Decision(dict(self._setpoints), Status.DEADBAND, f"hold ({grid_info})", grid_w, None, notes)
        self._setpoints = setpoints
        self._command_total_w = new_total
        return Decision(dict(setpoints), Status.TRACKING, f"seed loop: {new_total:.0f} W ({grid_info})",
                        grid_w, None, notes)

    def _split(self, total_w: float, batteries: Sequence[BatteryState]) -> tuple[dict[int, int], dict[int, str]]:
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
