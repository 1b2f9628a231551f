"""PV forecast sources: the expected PV power per 15-minute slot, summed over every plane.

Every source implements ``model.PvForecastSource``: ``fetch(now) -> list[PvSlot]`` (aware UTC, sorted,
15-minute slots, W ≥ 0) and raises ``ForecastError``. A slot is returned only where every plane has a
value; nothing is invented.

- ``ForecastSolarSource``: ``GET {url}/estimate/{lat}/{lon}/{declination}/{azimuth}/{kwp}`` per plane
  (no token). ``result.watts`` holds the power at local ISO times (sunrise and sunset with 0 W); a slot's
  value is the mean of the straight line through these points. The public API allows 12 calls an hour
  per address (``message.ratelimit``): each plane's answer is kept for ``min_interval_s`` and a call that
  would exceed the limit is not made; HTTP 429 raises ``ForecastRateLimited`` with the time to retry.
- ``OpenMeteoSource``: ``GET {url}/v1/forecast?latitude&longitude&minutely_15=global_tilted_irradiance
  &tilt&azimuth&timezone=UTC`` per plane → irradiance (W/m², mean of the *preceding* 15 minutes); PV power
  ≈ GTI / 1000 W/m² × kWp × 0.85 (losses of module temperature, inverter, wiring).

Azimuth: our config's convention (0 = south, −90 = east, 90 = west, ±180 = north) is the one of both
services (forecast.solar: "-180 = north, -90 = east, 0 = south, 90 = west, 180 = north"; Open-Meteo:
"0° south, -90° east, 90° west, ±180 north"), so the value is passed on unchanged.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, timezone
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests

from planning.fetch_http import DEFAULT_TIMEOUT_S, json_object, request
from planning.model import ForecastError, PvSlot
from planning.prices import LOCAL_TZ, QUARTER
from planning.tariff_config import PvPlane

FORECAST_SOLAR_URL = "https://api.forecast.solar"
OPEN_METEO_URL = "https://api.open-meteo.com"
FORECAST_SOLAR_CALLS_PER_HOUR = 12  # the public (free) API, per IP address
PERFORMANCE_RATIO = 0.85  # AC power / (irradiance × kWp) of a typical small system
MAX_IRRADIANCE_W_PER_M2 = 1600.0  # above the solar constant: the unit is wrong
MAX_W_PER_KWP = 1500.0  # forecast.solar watts beyond this per kWp are not W


class ForecastRateLimited(ForecastError):
    """The forecast service's rate limit is reached; ``retry_at`` (aware UTC) says when to try again."""

    def __init__(self, message: str, retry_at: datetime) -> None:
        super().__init__(message)
        self.retry_at = retry_at


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ForecastError(f"{what} is not a number: {str(value)[:30]!r}")
    return float(value)


def sum_planes(per_plane: Sequence[dict[datetime, float]]) -> list[PvSlot]:
    """Slots where every plane has a value, with the sum of their powers."""
    if not per_plane:
        return []
    common = set(per_plane[0]).intersection(*per_plane[1:])
    return [PvSlot(start, start + QUARTER, sum(plane[start] for plane in per_plane)) for start in sorted(common)]


def _mean_of_line(points: Sequence[tuple[float, float]], a: float, b: float) -> float:
    """Mean over [a, b] of the straight line through sorted (t, value) points; 0 outside them."""
    times = [t for t, _ in points]

    def value_at(t: float) -> float:
        if not points or t < times[0] or t > times[-1]:
            return 0.0  # before sunrise, after sunset: the service gives 0 W there anyway
        hi = bisect.bisect_left(times, t)
        if times[hi] == t:
            return points[hi][1]
        (t0, v0), (t1, v1) = points[hi - 1], points[hi]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    knots = [a, *(t for t, _ in points if a < t < b), b]
    area = sum((value_at(x) + value_at(y)) / 2 * (y - x) for x, y in pairwise(knots))
    return area / (b - a)


class ForecastSolarSource:
    """PV forecast from forecast.solar (public API, one call per plane, 12 calls an hour)."""

    name = "forecast_solar"

    def __init__(self, session: requests.Session, planes: Sequence[PvPlane], *, url: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, tz: ZoneInfo = LOCAL_TZ,
                 calls_per_hour: int = FORECAST_SOLAR_CALLS_PER_HOUR, min_interval_s: float = 3600.0) -> None:
        if not 0 < len(planes) <= calls_per_hour:
            raise ValueError(f"forecast.solar needs 1..{calls_per_hour} planes")
        self.session = session
        self.planes = tuple(planes)
        self.url = (url or FORECAST_SOLAR_URL).rstrip("/")
        self.timeout_s = timeout_s
        self.tz = tz
        self.calls_per_hour = calls_per_hour
        self.min_interval_s = min_interval_s
        self.ratelimit: dict[str, Any] | None = None  # the last answer's message.ratelimit
        self._calls: list[datetime] = []  # when calls were made, the last hour
        self._blocked_until: datetime | None = None
        self._answers: dict[int, tuple[datetime, dict[datetime, float]]] = {}  # plane index → (time, W per slot)

    def path(self, plane: PvPlane) -> str:
        """The estimate path of one plane."""
        return (f"/estimate/{plane.lat:g}/{plane.lon:g}/{plane.declination:g}/{plane.azimuth:g}/{plane.kwp:g}")

    def fetch(self, now: datetime) -> list[PvSlot]:
        """The summed forecast; planes answered less than ``min_interval_s`` ago are not asked again."""
        self._calls = [t for t in self._calls if now - t < timedelta(hours=1)]
        due = [i for i in range(len(self.planes))
               if i not in self._answers or (now - self._answers[i][0]).total_seconds() >= self.min_interval_s]
        if due:
            self._check_limit(now, len(due))
        for i in due:
            self._calls.append(now)
            self._answers[i] = (now, self._fetch_plane(self.planes[i], now))
        slots = sum_planes([self._answers[i][1] for i in range(len(self.planes))])
        if not slots:
            raise ForecastError("forecast.solar: the answers hold no common forecast period")
        return slots

    def _check_limit(self, now: datetime, calls: int) -> None:
        if self._blocked_until is not None and now < self._blocked_until:
            raise ForecastRateLimited(f"forecast.solar: rate limit reached; next try after "
                                      f"{self._blocked_until.astimezone(self.tz):%H:%M}", self._blocked_until)
        if len(self._calls) + calls > self.calls_per_hour:
            retry_at = self._calls[len(self._calls) + calls - self.calls_per_hour - 1] + timedelta(hours=1)
            raise ForecastRateLimited(f"forecast.solar: {calls} more calls would exceed {self.calls_per_hour} an hour; "
                                      f"next try after {retry_at.astimezone(self.tz):%H:%M}", retry_at)

    def _fetch_plane(self, plane: PvPlane, now: datetime) -> dict[datetime, float]:
        what = f"forecast.solar {self.path(plane)}"
        answer = request(self.session, "GET", self.url + self.path(plane), error=ForecastError, what=what,
                         timeout_s=self.timeout_s, ok_statuses=(429,), headers={"Accept": "application/json"})
        if answer.status == 429:
            self._blocked_until = self._retry_at(answer.body, now)
            raise ForecastRateLimited(f"{what}: rate limit reached (HTTP 429); next try after "
                                      f"{self._blocked_until.astimezone(self.tz):%H:%M}", self._blocked_until)
        data = json_object(answer.body, error=ForecastError, what=what)
        slots = self.parse(data, what=what)
        remaining = self.ratelimit.get("remaining") if self.ratelimit else None
        period = self.ratelimit.get("period") if self.ratelimit else None
        if isinstance(remaining, int) and remaining <= 0:
            # The server's own count says no more calls this period: do not try before it has passed.
            wait_s = period if isinstance(period, int) and 0 < period <= 86400 else 3600
            self._blocked_until = now + timedelta(seconds=wait_s)
        return slots

    def _retry_at(self, body: bytes, now: datetime) -> datetime:
        """``message.ratelimit.retry-at`` of a 429 answer, else one hour from now."""
        try:
            retry = json_object(body, error=ForecastError, what="429")["message"]["ratelimit"]["retry-at"]
            moment = datetime.fromisoformat(str(retry))
            if moment.tzinfo is not None and now < moment <= now + timedelta(days=1):
                return moment.astimezone(timezone.utc)
        except (ForecastError, KeyError, TypeError, ValueError):
            pass
        return now + timedelta(hours=1)

    def _zone(self, data: dict[str, Any]) -> ZoneInfo:
        try:
            name = data["message"]["info"]["timezone"]
            return ZoneInfo(name) if isinstance(name, str) else self.tz
        except (KeyError, TypeError, ValueError, ZoneInfoNotFoundError):
            return self.tz

    def parse(self, data: dict[str, Any], *, what: str = "forecast.solar") -> dict[datetime, float]:
        """W per 15-minute slot start (UTC) of one plane's answer; also remembers ``message.ratelimit``."""
        message = data.get("message")
        if isinstance(message, dict):
            if isinstance(message.get("ratelimit"), dict):
                self.ratelimit = message["ratelimit"]
            if message.get("type") == "error" or message.get("code") not in (None, 0):
                raise ForecastError(f"{what}: {str(message.get('text') or message.get('code'))[:200]}")
        result = data.get("result")
        watts = result.get("watts") if isinstance(result, dict) else None
        if not isinstance(watts, dict) or not watts:
            raise ForecastError(f"{what}: answer lacks result.watts")
        zone = self._zone(data)
        points: list[tuple[float, float]] = []
        days: set[date] = set()
        for stamp, value in watts.items():
            try:
                moment = datetime.fromisoformat(stamp)
            except ValueError:
                raise ForecastError(f"{what}: time {stamp[:40]!r} is not readable") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
            power = _number(value, f"{what}: watts[{stamp}]")
            if power is None:
                continue
            if power < 0 or power > MAX_W_PER_KWP * 1000:
                raise ForecastError(f"{what}: watts[{stamp}] = {power:g} is implausible")
            days.add(moment.astimezone(zone).date())
            points.append((moment.timestamp(), power))
        points.sort()
        slots: dict[datetime, float] = {}
        for day in sorted(days):
            start = datetime.combine(day, time(0), zone).astimezone(timezone.utc)
            end = datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(timezone.utc)
            moment = start
            while moment < end:
                a = moment.timestamp()
                slots[moment] = _mean_of_line(points, a, a + QUARTER.total_seconds())
                moment += QUARTER
        return slots


class OpenMeteoSource:
    """PV forecast from Open-Meteo's global tilted irradiance (15-minute values, no token)."""

    name = "open_meteo"

    def __init__(self, session: requests.Session, planes: Sequence[PvPlane], *, url: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, performance_ratio: float = PERFORMANCE_RATIO) -> None:
        if not planes:
            raise ValueError("Open-Meteo needs at least one plane")
        self.session = session
        self.planes = tuple(planes)
        self.url = (url or OPEN_METEO_URL).rstrip("/")
        self.timeout_s = timeout_s
        self.performance_ratio = performance_ratio

    def params(self, plane: PvPlane) -> dict[str, str]:
        """The query of one plane (today and the next two UTC days, times in UTC)."""
        return {"latitude": f"{plane.lat:g}", "longitude": f"{plane.lon:g}",
                "minutely_15": "global_tilted_irradiance", "tilt": f"{plane.declination:g}",
                "azimuth": f"{plane.azimuth:g}", "timezone": "UTC", "forecast_days": "3"}

    def fetch(self, now: datetime) -> list[PvSlot]:
        """The summed forecast of every plane; raises ForecastError."""
        per_plane = []
        for plane in self.planes:
            what = f"Open-Meteo forecast ({plane.lat:g}, {plane.lon:g}, tilt {plane.declination:g}, " \
                   f"azimuth {plane.azimuth:g})"
            answer = request(self.session, "GET", f"{self.url}/v1/forecast", params=self.params(plane),
                             error=ForecastError, what=what, timeout_s=self.timeout_s, ok_statuses=(400,))
            data = json_object(answer.body, error=ForecastError, what=what)
            if answer.status == 400 or data.get("error"):
                raise ForecastError(f"{what}: {str(data.get('reason') or 'HTTP 400')[:200]}")
            per_plane.append(self.parse(data, plane, what=what))
        slots = sum_planes(per_plane)
        if not slots:
            raise ForecastError("Open-Meteo: the answers hold no forecast")
        return slots

    def parse(self, data: dict[str, Any], plane: PvPlane, *, what: str = "Open-Meteo") -> dict[datetime, float]:
        """W per 15-minute slot start (UTC) of one plane's answer."""
        block = data.get("minutely_15")
        if not isinstance(block, dict):
            raise ForecastError(f"{what}: answer lacks minutely_15")
        times, values = block.get("time"), block.get("global_tilted_irradiance")
        if not isinstance(times, list) or not isinstance(values, list) or len(times) != len(values):
            raise ForecastError(f"{what}: minutely_15.time and global_tilted_irradiance missing or of unequal length")
        units = data.get("minutely_15_units")
        unit = units.get("global_tilted_irradiance") if isinstance(units, dict) else None
        if unit is not None and str(unit).replace(" ", "") not in ("W/m²", "W/m2", "Wm⁻²"):
            raise ForecastError(f"{what}: unit {unit!r}, expected W/m²")
        offset = data.get("utc_offset_seconds", 0)
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise ForecastError(f"{what}: utc_offset_seconds is not an integer")
        slots: dict[datetime, float] = {}
        for i, (stamp, value) in enumerate(zip(times, values, strict=True)):
            try:
                moment = datetime.fromisoformat(str(stamp))
            except ValueError:
                raise ForecastError(f"{what}: time {str(stamp)[:40]!r} is not readable") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc) - timedelta(seconds=offset)
            irradiance = _number(value, f"{what}: global_tilted_irradiance[{i}]")
            if irradiance is None:
                continue  # beyond the model's horizon: unknown, not dark
            if irradiance > MAX_IRRADIANCE_W_PER_M2:
                raise ForecastError(f"{what}: irradiance {irradiance:g} W/m² is implausible (wrong unit?)")
            # The value is the mean of the preceding 15 minutes; small negative values are a known
            # artefact of the model (open-meteo issue #1355) and mean darkness.
            start = moment.astimezone(timezone.utc) - QUARTER
            slots[start] = max(0.0, irradiance) / 1000.0 * plane.kwp * 1000.0 * self.performance_ratio
        return slots
