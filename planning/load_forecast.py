"""The house's load forecast from our own history (history.py), per planned slot.

What the history knows: grid power (+ import) and battery power (+ discharge) once a second, one-minute
means after a day. Their sum is the **net load**: what the house draws minus what the PV delivers at that
moment, i.e. exactly what grid and battery together must cover. PV itself is not measured.

The forecast of one quarter-hour: the mean net load of the same local quarter-hour on comparable days
(weekdays with weekdays, Saturday/Sunday with the weekend; all days when fewer than ``MIN_DAYS`` comparable
ones have data) over the last ``days`` days, plus the offset of the last ``RECENT_S`` (how much the house
draws now above or below its usual level at this time), fading out with ``RECENT_FADE_S``.

PV without double counting: the planner gets ``load_w`` and ``pv_w`` and works with load − PV.
- Without a PV forecast (``pv_w`` None) the net load is passed as the load: yesterday's PV is already in it,
  which is the best guess we have (a sunny week predicts a sunny day).
- With a PV forecast, a quarter-hour the forecast calls dark (< ``DARK_W``) keeps its net load (no PV in
  the history then either, the sun follows the clock). A bright one would count the PV twice (once in the
  history, once in the forecast), so its load is the house's **base load** instead: the mean net load of
  the quarter-hours the forecast calls dark (evening and night; 00:00-05:00 when the horizon has none).
  That underestimates a midday cooking peak, but it never invents PV that the forecast does not promise.
- Better, once the plan thread has kept the PV forecast of past quarter-hours (``past_pv_w``) for at least
  ``MIN_SPLIT_DAYS`` days: those days' net load + their PV forecast is the house's load, the profile is built
  from them alone, and every slot (bright or dark) gets it; the planner subtracts today's forecast. In the cost
  benchmark this took the captured share from 47 % to 53 % (docs/benchmark.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone, tzinfo

from control.status_store import HistorySample
from planning.model import PriceSlot

QUARTER_S = 900
DAY_S = 86400
DEFAULT_DAYS = 14
MIN_DAYS = 2  # fewer comparable days with data: all days count
RECENT_S = 3 * 3600.0  # the last hours' level
RECENT_FADE_S = 3 * 3600.0  # how fast their offset fades into the typical profile
DARK_W = 10.0  # a forecast below this is night
NIGHT_QUARTERS = 5 * 4  # 00:00-05:00 local
MIN_SPLIT_DAYS = 3  # days with a recorded PV forecast before the history is read as house load


def net_load_w(sample: HistorySample) -> float | None:
    """Grid + battery power (W): the house's load minus PV; None when either is unknown."""
    if sample.grid_w is None or sample.battery_w is None:
        return None
    value = sample.grid_w + sample.battery_w
    return value if math.isfinite(value) else None


def _local(t: float, tz: tzinfo | None) -> datetime:
    """Local time of epoch seconds ``t``; ``tz`` None: the machine's zone, daylight saving time included."""
    return datetime.fromtimestamp(t) if tz is None else datetime.fromtimestamp(t, timezone.utc).astimezone(tz)


def _quarter(t: float, tz: tzinfo | None) -> int:
    """The local quarter-hour of the day, 0..95 (a DST day's extra hour shares its quarters)."""
    local = _local(t, tz)
    return (local.hour * 60 + local.minute) // 15


def _weekend(t: float, tz: tzinfo | None) -> bool:
    return _local(t, tz).weekday() >= 5


class LoadProfile:
    """Mean net load per local quarter-hour, kept apart for weekdays and weekends, from history samples."""

    def __init__(self, samples: Sequence[HistorySample], tz: tzinfo | None) -> None:
        self.tz = tz
        # (weekend, quarter) -> {day ordinal: [sum, count]}: each day weighs the same however dense its samples.
        per_day: dict[tuple[bool, int], dict[int, list[float]]] = {}
        for s in samples:
            value = net_load_w(s)
            if value is None:
                continue
            local = _local(s.t, tz)
            key = (local.weekday() >= 5, (local.hour * 60 + local.minute) // 15)
            acc = per_day.setdefault(key, {}).setdefault(local.toordinal(), [0.0, 0])
            acc[0] += value
            acc[1] += 1
        self._days = {key: [total / count for total, count in days.values()] for key, days in per_day.items()}

    def mean_w(self, quarter: int, weekend: bool) -> float | None:
        """The mean over comparable days, or over all days when too few comparable ones have data."""
        same = self._days.get((weekend, quarter), [])
        if len(same) < MIN_DAYS:
            same = same + self._days.get((not weekend, quarter), [])
        return sum(same) / len(same) if same else None

    def at(self, t: float) -> float | None:
        return self.mean_w(_quarter(t, self.tz), _weekend(t, self.tz))


def forecast_load(
    samples: Sequence[HistorySample],
    slots: Sequence[PriceSlot],
    now: datetime,
    *,
    pv_w: Sequence[float | None] | None = None,
    tz: tzinfo | None = None,
    past_pv_w: Mapping[int, float] | None = None,
) -> tuple[float | None, ...]:
    """The forecast load (W, ≥ 0) per slot, to go with ``pv_w`` (see the module docstring); None: unknown.

    ``samples``: the history of the last days (any resolution), oldest first; ``now``: aware; ``tz``: the
    local zone of the household's days (default: the machine's); ``past_pv_w``: the PV forecast the program
    had for past quarter-hours (epoch seconds of the quarter's start → W, see ``split_history``)."""
    if past_pv_w is not None and pv_w is not None and any(v is not None for v in pv_w):
        # (a horizon without any PV value: the forecast failed, the planner will subtract nothing)
        split = split_history(samples, past_pv_w, tz)
        if split is not None:  # the history as house load: every slot from the profile, no base-load rule
            samples, pv_w = split, None
    profile = LoadProfile(samples, tz)
    now_s = now.timestamp()
    recent = [(s.t, v) for s in samples if now_s - RECENT_S <= s.t <= now_s and (v := net_load_w(s)) is not None]
    offset_w = 0.0
    if recent:
        typical = [p for t, _ in recent if (p := profile.at(t)) is not None]
        if typical:
            offset_w = sum(v for _, v in recent) / len(recent) - sum(typical) / len(typical)
    base_w = _base_load_w(profile, slots, pv_w)
    out: list[float | None] = []
    for n, slot in enumerate(slots):
        bright = pv_w is not None and (pv_w[n] or 0.0) >= DARK_W
        values = []
        t = slot.start.timestamp()
        while t < slot.end.timestamp():
            typical_w = base_w if bright else profile.at(t)
            if typical_w is not None:
                fade = math.exp(-max(0.0, t - now_s) / RECENT_FADE_S)
                values.append(max(0.0, typical_w + offset_w * fade))
            t += QUARTER_S
        out.append(sum(values) / len(values) if values else None)
    return tuple(out)


def split_history(samples: Sequence[HistorySample], past_pv_w: Mapping[int, float],
                  tz: tzinfo | None) -> list[HistorySample] | None:
    """The history as house load: net load + the PV forecast the program had for that quarter-hour.

    Only days the PV forecast covered count (a quarter-hour of such a day without a value is night: 0 W);
    None when fewer than ``MIN_SPLIT_DAYS`` days are covered (e.g. after a restart: the net history then)."""
    rows = [(s, _local(s.t, tz).toordinal(), past_pv_w.get(int(s.t) - int(s.t) % QUARTER_S)) for s in samples]
    covered = {day for _, day, pv in rows if pv is not None}
    if len(covered) < MIN_SPLIT_DAYS:
        return None
    return [HistorySample(s.t, value + (pv or 0.0), 0.0, s.soc_pct)
            for s, day, pv in rows if day in covered and (value := net_load_w(s)) is not None]


def _base_load_w(profile: LoadProfile, slots: Sequence[PriceSlot],
                 pv_w: Sequence[float | None] | None) -> float | None:
    """The mean net load of the quarter-hours the PV forecast calls dark (None without a forecast)."""
    if pv_w is None:
        return None
    dark_quarters = {_quarter(t, profile.tz)
                     for slot, pv in zip(slots, pv_w, strict=True) if (pv or 0.0) < DARK_W
                     for t in range(int(slot.start.timestamp()), int(slot.end.timestamp()), QUARTER_S)}
    if not dark_quarters:  # a horizon without a dark slot: the small hours are dark in every season
        dark_quarters = set(range(NIGHT_QUARTERS))
    values = [v for q in dark_quarters for weekend in (False, True) if (v := profile.mean_w(q, weekend)) is not None]
    return sum(values) / len(values) if values else None


def history_reader(samples: Callable[[float, float | None, int | None], Sequence[HistorySample]],
                   days: int = DEFAULT_DAYS) -> Callable[[datetime], Sequence[HistorySample]]:
    """The thin reader: ``History.samples`` → the last ``days`` days in quarter-hour means (one query)."""
    def read(now: datetime) -> Sequence[HistorySample]:
        now_s = now.timestamp()
        return samples(now_s - days * DAY_S, now_s, QUARTER_S)
    return read

