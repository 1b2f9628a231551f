"""The meter's sign check: does the grid power move against the battery's discharge, as it must?

Pure (no I/O, no clock reads): the control loop feeds it once per cycle with the meter's reading, the
batteries' measured AC power and the total command it just wrote. Each step of the command of at least
``MIN_STEP_W`` opens an observation: the grid and battery power before the step are kept, and the first
fresh meter sample after the batteries have followed (at least half of the step, measured) closes it.
With the meter's sign right the grid moves by about minus the battery's change (discharging more means
importing less); a meter whose clamp is mounted the wrong way round shows the grid moving *with* it.
Observations in between (a load change at the same moment) count for nothing.

A meter sample is judged against the battery power at the instant it was *taken*, not at the cycle that
received it: the loop passes the earliest plausible sample instant (``sample_from_s``: the request's start
minus the law's learned oldest sample age) and the batteries' read time, and the check keeps the recent
battery readings. Each sample is paired with the range of battery power over its window (from the last
reading at or before ``sample_from_s`` to the current one). A late sample (a slow answer, a busy host: the
issue-18 demo beside heavy CPU load) thus cannot show a grid taken before a battery move next to the battery
power after it: a move counts as followed only when the whole range has moved by half the step, a wrong-way
observation needs the grid to move with the battery by half of the *largest* plausible move, and a probe
waits for a sample whose window saw the batteries where they were sent.

``NEEDED`` wrong-way observations in a row (within ``RUN_WINDOW_S``), without a right-way one between them,
the last of them the answer to a probe (below), trip the check: the loop stops the batteries and names
``energy_meter.invert``. A tripped check stays tripped until the program restarts (the fix is a config
change or the meter's own "reverse" setting; with a right meter, the restart alone).

After one wrong-way observation the check does not wait for the law's next step: it asks for a **probe**
(``probe_w``): the loop halves the batteries' command (to 0 when half would be below ``MIN_STEP_W``) and
holds it until that step's observation closes. Towards 0 is the safe direction with a reversed meter, and
the probe's answer is clear: a PV ramp that happened to move the grid with the battery once (the benchmark
saw one on a cloudy morning) now meets a step against it and is cleared; a reversed meter answers the wrong
way again and trips. It also catches a reversed meter whose first wrong-way step already drove the
batteries to their limit, where the law makes no further step to observe.

Signs: grid + import / - export; battery + discharge / - charge (W).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from control.i18n import Msg


@dataclass(frozen=True)
class _Pending:
    started_s: float
    grid_before_w: float
    battery_before_w: tuple[float, float]  # (lowest, highest) battery power over the baseline sample's window
    step_w: float  # the command's change since the baseline
    command_before_w: float  # the command at the baseline


class SignCheck:
    """Watches the law's setpoint steps for a meter whose grid power moves with the battery's discharge."""

    MIN_STEP_W = 300.0  # smaller steps drown in load noise and passing clouds (benchmark: 150 W tripped on PV days)
    FOLLOWED_SHARE = 0.5  # the battery must have delivered this share of the step
    RATIO = 0.5  # |Δgrid / Δbattery| at least this to count (1.0 ideally)
    NEEDED = 2  # wrong-way observations in a row that trip the check
    MAX_WAIT_S = 90.0  # an observation not closed by then is dropped (a 30 s meter needs two samples)
    RUN_WINDOW_S = 120.0  # wrong-way observations further apart than this are not one runaway
    SETTLED_W, SETTLED_SHARE = 50.0, 0.1  # the batteries are where they were sent (a probe may start)
    PROBE_MAX_S = 45.0  # the longest a probe is held (a 30 s meter needs one sample after the move)
    HISTORY_S = 120.0  # battery readings kept to pair with late samples (a 30 s meter's window and more)

    def __init__(self) -> None:
        self.wrong = 0  # wrong-way observations in a row
        self.right = 0  # right-way observations so far
        self.tripped = False
        self._pending: _Pending | None = None
        self._last_grid_w: float | None = None
        self._last_command_w = 0.0
        self.last_ratio: float | None = None  # Δgrid / Δbattery of the last closed observation
        self._last_wrong_s = -float("inf")
        self._probe_w: float | None = None  # the probe's command while it runs
        self._probe_s = 0.0  # when it started
        self._probe_observed = False  # its step opened an observation
        self._quiet_samples = 0  # fresh meter samples in a row with the batteries where they were sent
        self.probes = 0  # probes asked for so far
        self._battery: deque[tuple[float, float]] = deque()  # (read time, measured total W), oldest first
        # The newest fresh sample with the batteries steady over its window: (time, grid W, battery span, command)
        self._grid_from_s: float | None = None  # the earliest instant of the current meter value
        self._clean: tuple[float, float, tuple[float, float], float] | None = None

    @property
    def probing(self) -> bool:
        """True while a probe's command is to be held."""
        return self._probe_w is not None

    def probe_w(self, now_s: float, wanted_w: float) -> float | None:
        """The total command the loop must write now instead of the law's ``wanted_w`` (W, + discharge), or None.

        Asked after one wrong-way observation (within ``RUN_WINDOW_S``): half the last command, or 0 when
        that half step would be too small to judge; held until the probe's observation closes. A probe only
        ever asks for less power in the direction the law wants: when the law wants less still (or stops),
        its own step is the better probe and this one ends."""
        if self.tripped:
            return None
        if self._probe_w is not None:
            # Over once its observation has closed (or was dropped), if it never got one in time, or when the
            # law itself wants less.
            if ((self._probe_observed and self._pending is None) or now_s - self._probe_s > self.PROBE_MAX_S
                    or wanted_w * self._probe_w < 0 or abs(wanted_w) < abs(self._probe_w)):
                self._probe_w = None
            return self._probe_w
        if (self.wrong == 0 or now_s - self._last_wrong_s > self.RUN_WINDOW_S or self._pending is not None
                or self._quiet_samples < 1):
            return None  # not suspected, or the last move is still settling (its tail would blur the probe)
        last_w = self._last_command_w
        if abs(last_w) < self.MIN_STEP_W:
            return None  # too little power to judge (and to matter)
        probe_w = last_w / 2.0 if abs(last_w) / 2.0 >= self.MIN_STEP_W else 0.0
        if wanted_w * last_w <= 0 or abs(wanted_w) <= abs(probe_w):
            return None  # the law steps towards 0 by itself: that step is observed like a probe
        self._probe_w = probe_w
        self._probe_s, self._probe_observed = now_s, False
        self.probes += 1
        return self._probe_w

    def reset(self) -> None:
        """Forget an open observation and probe (setup mode, a restart of the control); a trip is kept."""
        self._pending = None
        self._probe_w = None
        self._last_command_w = 0.0

    def observe(self, now_s: float, grid_w: float | None, battery_w: float | None, command_w: float, *,
                sample_from_s: float | None = None, battery_read_s: float | None = None) -> bool:
        """Feed one control cycle; returns True when the check has tripped (now or before).

        ``sample_from_s``: the earliest instant the meter sample can have been taken (control clock, s);
        None: taken now. ``battery_read_s``: when ``battery_w`` was read (default ``now_s``)."""
        if self.tripped:
            return True
        if battery_w is not None:
            self._battery.append((now_s if battery_read_s is None else battery_read_s, battery_w))
        while len(self._battery) > 1 and self._battery[1][0] <= now_s - self.HISTORY_S:
            self._battery.popleft()
        fresh = grid_w is not None and grid_w != self._last_grid_w
        if fresh or self._grid_from_s is None:  # a repeated value is the sample that first brought it
            self._grid_from_s = now_s if sample_from_s is None else sample_from_s
        span = self._battery_span(self._grid_from_s) if battery_w is not None else None
        pending = self._pending
        if pending is not None and (now_s - pending.started_s > self.MAX_WAIT_S or battery_w is None):
            pending = self._pending = None
        if pending is not None and fresh and grid_w is not None and span is not None:
            self._close(now_s, pending, grid_w, span)
        if grid_w is not None:
            self._last_grid_w = grid_w
        tolerance_w = max(self.SETTLED_W, self.SETTLED_SHARE * abs(self._last_command_w))
        step_w = command_w - self._last_command_w
        # Quiet: over the whole window of this sample the batteries were where the last command sent them,
        # and this cycle sends them nowhere new.
        if (span is None or max(abs(w - self._last_command_w) for w in span) > tolerance_w
                or abs(step_w) > tolerance_w):
            self._quiet_samples = 0
        elif fresh:
            self._quiet_samples += 1
        before_w, self._last_command_w = self._last_command_w, command_w
        if grid_w is not None and span is not None and span[1] - span[0] <= tolerance_w:
            self._clean = (now_s, grid_w, span, before_w)
        if abs(step_w) >= self.MIN_STEP_W and grid_w is not None and battery_w is not None:
            self._open(now_s, step_w, before_w, command_w)
        return self.tripped

    def _open(self, now_s: float, step_w: float, before_w: float, command_w: float) -> None:
        """A step of the command: observed from the newest clean sample (the batteries steady over its whole
        window, so its battery power is known): this cycle's, or an earlier one while they were still moving."""
        clean = self._clean
        if clean is None or now_s - clean[0] > self.MAX_WAIT_S:
            self._pending = None
            return
        clean_s, grid_w, span, clean_command_w = clean
        total_w = command_w - clean_command_w if clean_s < now_s else step_w
        if abs(total_w) < self.MIN_STEP_W:
            self._pending = None
            return
        self._pending = _Pending(clean_s, grid_w, span, total_w, before_w if clean_s == now_s else clean_command_w)
        self._probe_observed = self._probe_observed or self._probe_w is not None

    def _battery_span(self, from_s: float) -> tuple[float, float] | None:
        """(lowest, highest) measured battery power that a sample taken at or after ``from_s`` can have seen:
        the last reading at or before ``from_s`` and every later one; None before the first reading."""
        values: list[float] = []
        for read_s, w in reversed(self._battery):
            values.append(w)
            if read_s <= from_s:
                break
        # Older than every reading (the first seconds after start): the first reading stands for before.
        return (min(values), max(values)) if values else None

    def _close(self, now_s: float, pending: _Pending, grid_w: float, span: tuple[float, float]) -> None:
        sign = 1.0 if pending.step_w > 0 else -1.0
        before_lo, before_hi = sorted((sign * pending.battery_before_w[0], sign * pending.battery_before_w[1]))
        after_lo, after_hi = sorted((sign * span[0], sign * span[1]))
        moved_lo_w, moved_hi_w = after_lo - before_hi, after_hi - before_lo  # in the step's direction
        if moved_lo_w < self.FOLLOWED_SHARE * abs(pending.step_w):
            return  # the batteries have not (surely) followed by the time of this sample: wait for a later one
        grid_moved_w = sign * (grid_w - pending.grid_before_w)  # in the step's direction
        ratio = grid_moved_w / ((moved_lo_w + moved_hi_w) / 2.0)
        if grid_moved_w <= -self.RATIO * moved_lo_w:
            self.wrong, self.right, self._pending, self.last_ratio = 0, self.right + 1, None, ratio
        elif grid_moved_w >= self.RATIO * moved_hi_w:
            in_run = now_s - self._last_wrong_s <= self.RUN_WINDOW_S
            self.wrong = self.wrong + 1 if in_run else 1
            self._pending, self.last_ratio, self._last_wrong_s = None, ratio, now_s
            # Only the probe's answer trips: a step of the law judged on a sample that is staler than any
            # time stamp shows (a busy meter, a loaded host) can look wrong-way twice; the held probe cannot.
            self.tripped = self.wrong >= self.NEEDED and self._probe_w is not None
        # In between: the sample shows only part of the battery's move (or a load change): wait for the next.

    def reason(self) -> Msg:
        """Why the batteries are stopped, naming the fix."""
        return Msg("meter_sign_wrong", count=self.wrong)
