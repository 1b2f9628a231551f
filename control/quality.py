"""Control-quality figures: small pure building blocks shared by the benchmark and the live dashboard.

No I/O and no clock reads: every time is passed in. Signs as everywhere in the project: grid power
+ import / - export, battery power + discharging (W).

Definitions follow the reference (zero-feed-control.md §5):

* band crossings: sign flips of the control error ``grid - target`` across a ±20 W hysteresis band;
* time in band: share of time with ``|grid - target| <= 25 W``;
* battery-sourced export: ``min(max(P, 0), max(-grid, 0))``, the part of the export that came out of
  the battery (the zero-feed violation).

``QualityTracker`` turns the control thread's cycles into the live figures the dashboard shows
(bounded memory: a few hundred numbers whatever the run time).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

CROSSING_BAND_W = 20.0
IN_BAND_W = 25.0


def battery_export_w(grid_w: float, battery_w: float) -> float:
    """Export that the batteries supplied: min(max(P, 0), max(-g, 0)), W."""
    return min(max(battery_w, 0.0), max(-grid_w, 0.0))


class CrossingCounter:
    """Counts sign flips of the control error across a ±``band_w`` hysteresis band."""

    def __init__(self, band_w: float = CROSSING_BAND_W) -> None:
        self.band_w = band_w
        self.state = 0  # +1 last seen above +band, -1 below -band, 0 not yet outside
        self.count = 0

    def add(self, error_w: float) -> bool:
        """Feed one error sample; True when it completed a crossing."""
        side = 1 if error_w > self.band_w else -1 if error_w < -self.band_w else 0
        if side == 0:
            return False
        crossed = self.state != 0 and side != self.state
        self.state = side
        if crossed:
            self.count += 1
        return crossed


class QualityTracker:
    """Live control-quality figures from the control thread's cycles.

    Call ``add`` once per control cycle. Each sample's values hold until the next sample (at most
    ``MAX_GAP_S``; a longer gap, for example a meter outage, is not integrated). Energies reset when
    ``wall_date`` changes (pass the local date, e.g. ``datetime.date.today()``); the RMS error covers
    the last ``RMS_WINDOW_S``, the rates and the time in band the last ``RATE_WINDOW_S``.
    """

    RMS_WINDOW_S = 600.0
    RATE_WINDOW_S = 3600.0
    BIN_S = 10.0  # resolution of the sliding windows
    MAX_GAP_S = 10.0

    def __init__(self) -> None:
        self._day: Any = None
        self._import_wh = 0.0
        self._export_wh = 0.0
        self._battery_export_wh = 0.0
        self._last: tuple[float, float | None, float | None, float | None] | None = None
        # Bins of BIN_S: [start, seconds with an error, sum e²·dt, seconds in band, crossings before the bin]
        self._bins: deque[list[float]] = deque()
        self._crossings = CrossingCounter()
        self._writes: deque[tuple[float, int]] = deque()  # (time, writes_total), >= BIN_S apart

    def add(
        self,
        now_s: float,
        grid_w: float | None,
        target_w: float | None,
        writes_total: int,
        wall_date: Any,
        battery_w: float | None = None,
    ) -> None:
        """One control cycle: monotonic time, grid W (None: meter failed), the grid target the
        controller aims at (None: none), the bus's register-write counter, today's date and the
        total measured battery power (+ discharging, None: unknown)."""
        if wall_date != self._day:
            self._day = wall_date
            self._import_wh = self._export_wh = self._battery_export_wh = 0.0
        if self._last is not None:
            t0, g0, tgt0, p0 = self._last
            dt = now_s - t0
            if 0.0 < dt <= self.MAX_GAP_S and g0 is not None:
                self._integrate(t0, dt, g0, tgt0, p0)
        if grid_w is not None and not math.isfinite(grid_w):
            grid_w = None
        self._last = (now_s, grid_w, target_w, battery_w)
        if grid_w is not None and target_w is not None:
            self._crossings.add(grid_w - target_w)
        if not self._writes or now_s - self._writes[-1][0] >= self.BIN_S:
            self._writes.append((now_s, writes_total))
        while len(self._writes) > 2 and now_s - self._writes[1][0] >= self.RATE_WINDOW_S:
            self._writes.popleft()
        while self._bins and now_s - self._bins[0][0] > self.RATE_WINDOW_S + self.BIN_S:
            self._bins.popleft()

    def _integrate(self, t0: float, dt: float, grid_w: float, target_w: float | None, battery_w: float | None) -> None:
        h = dt / 3600.0
        self._import_wh += max(grid_w, 0.0) * h
        self._export_wh += max(-grid_w, 0.0) * h
        if battery_w is not None:
            self._battery_export_wh += battery_export_w(grid_w, battery_w) * h
        start = math.floor(t0 / self.BIN_S) * self.BIN_S
        if not self._bins or self._bins[-1][0] != start:
            self._bins.append([start, 0.0, 0.0, 0.0, float(self._crossings.count)])
        b = self._bins[-1]
        if target_w is not None:
            e = grid_w - target_w
            b[1] += dt
            b[2] += e * e * dt
            if abs(e) <= IN_BAND_W:
                b[3] += dt

    @property
    def bins_kept(self) -> int:
        """How many time bins the sliding windows hold (bounded whatever the run time)."""
        return len(self._bins)

    def figures(self) -> dict[str, float | None]:
        """The dashboard's figures; None where there is no data yet."""
        now = self._last[0] if self._last else 0.0
        rms_bins = [b for b in self._bins if b[0] >= now - self.RMS_WINDOW_S]
        rate_bins = [b for b in self._bins if b[0] >= now - self.RATE_WINDOW_S]
        err_s = sum(b[1] for b in rms_bins)
        rate_s = sum(b[1] for b in rate_bins)
        writes_per_h = None
        if len(self._writes) >= 2:
            (t0, w0), (t1, w1) = self._writes[0], self._writes[-1]
            if t1 - t0 >= 60.0:
                writes_per_h = (w1 - w0) / (t1 - t0) * 3600.0
        crossings_per_h = None
        if rate_bins and rate_s >= 60.0:
            crossings_per_h = (self._crossings.count - rate_bins[0][4]) / rate_s * 3600.0
        return {
            "rms_error_w": round(math.sqrt(sum(b[2] for b in rms_bins) / err_s), 1) if err_s > 0 else None,
            "export_wh_today": round(self._export_wh, 1),
            "import_wh_today": round(self._import_wh, 1),
            "battery_export_wh_today": round(self._battery_export_wh, 1),
            "writes_per_h": round(writes_per_h) if writes_per_h is not None else None,
            "band_crossings_per_h": round(crossings_per_h, 1) if crossings_per_h is not None else None,
            "time_in_band_pct": round(100.0 * sum(b[3] for b in rate_bins) / rate_s, 1) if rate_s > 0 else None,
        }
