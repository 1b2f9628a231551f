"""The ``tariff`` and ``forecast`` config sections: frozen dataclasses and their validation.

``config_loader.parse_config`` hands each section's reader (its ``_Section``) to ``parse_tariff`` and
``parse_forecast``; problems are reported there with their key path (``tariff.token: …``,
``forecast.planes[1].kwp: …``) and end in one ConfigError. Without the sections both return None and no
price or forecast server is ever asked.

Azimuth convention of ``forecast.planes[].azimuth`` (degrees): 0 = south, −90 = east, 90 = west,
±180 = north — the convention of forecast.solar and of Open-Meteo's ``azimuth`` parameter alike, so the
value goes to both unchanged. ``declination`` is the tilt: 0 = flat, 90 = vertical.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import time
from typing import Any, Protocol

TARIFF_TYPES = ("energy_charts", "awattar", "tibber", "entsoe", "fixed")
FORECAST_TYPES = ("forecast_solar", "open_meteo", "none")
SPOT_TYPES = ("energy_charts", "awattar", "entsoe")  # the end price is computed from the spot price
TOKEN_TYPES = {"tibber": "the personal access token from developer.tibber.com",
               "entsoe": "the security token of the ENTSO-E transparency platform (transparency.entsoe.eu)"}
MAX_PLANES = 6  # forecast.solar allows 12 calls an hour per address; one call per plane and refresh
PRICE_RANGE_CT = (-100.0, 200.0)  # ct/kWh a tariff's import price may have
ENTSOE_ZONES = ("DE-LU", "AT", "BE", "CH", "CZ", "DK1", "DK2", "FR", "NL", "PL")
_ZONE_PATTERN = re.compile(r"^[A-Z]{2}[A-Z0-9-]{0,6}$")
_EIC_PATTERN = re.compile(r"^10Y[A-Z0-9-]{13}$")
_CLOCK_PATTERN = re.compile(r"^(\d{1,2}):(\d{2})$")
_QUARTERS_PER_DAY = 96


@dataclass(frozen=True)
class PriceWindow:
    """A local-time window [start, end) with its own import price, in minutes of the day (0..1440).

    ``end_min`` ≤ ``start_min`` wraps past midnight (22:00–06:00); 1440 is "24:00", the end of the day.
    Minutes rather than ``datetime.time`` keep the config JSON-serialisable (the diagnostics bundle).
    """

    start_min: int
    end_min: int
    ct_per_kwh: float

    def contains(self, moment: time) -> bool:
        """Whether a local wall-clock time lies in the window."""
        minute = moment.hour * 60 + moment.minute
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def text(self) -> str:
        """e.g. "22:00–06:00"."""
        return f"{self.start_min // 60:02d}:{self.start_min % 60:02d}–{self.end_min // 60:02d}:{self.end_min % 60:02d}"


@dataclass(frozen=True)
class TariffConfig:
    """The ``tariff`` section: where prices come from and how the end price is made."""

    type: str
    url: str | None = None  # another base URL (a mirror, a test server); None: the source's own
    bidding_zone: str = "DE-LU"  # energy_charts / entsoe
    token: str | None = None  # tibber / entsoe
    fixed_ct_per_kwh: float | None = None  # fixed: the import price (outside the windows)
    windows: tuple[PriceWindow, ...] = ()  # fixed: local-time windows with their own price
    markup_ct_per_kwh: float = 15.0  # spot sources: supplier margin, grid fees, levies (net)
    vat_pct: float = 19.0  # spot sources
    feed_in_ct_per_kwh: float = 7.9  # paid per exported kWh


@dataclass(frozen=True)
class PvPlane:
    """One PV plane (a roof side, a balcony module group)."""

    lat: float
    lon: float
    declination: float  # tilt in degrees: 0 flat, 90 vertical
    azimuth: float  # degrees: 0 south, -90 east, 90 west, ±180 north
    kwp: float


@dataclass(frozen=True)
class ForecastConfig:
    """The ``forecast`` section: where the PV forecast comes from."""

    type: str  # forecast_solar, open_meteo or none
    url: str | None = None
    planes: tuple[PvPlane, ...] = ()


class SectionReader(Protocol):
    """What config_loader's section reader offers (its ``_Section``)."""

    errors: list[str]
    data: dict[str, Any]

    def take(self, key: str) -> Any: ...
    def fail(self, key: str, message: str) -> Any: ...
    def string(self, key: str, default: Any = ..., *, choices: tuple[str, ...] = (), empty_ok: bool = False) -> Any:
        ...
    def optional_string(self, key: str) -> Any: ...
    def number(self, key: str, default: Any, lo: float, hi: float, *, lo_open: bool = False) -> Any: ...
    def finish(self, hints: dict[str, str] | None = None) -> None: ...


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    return str(value)


def _url(sec: SectionReader) -> Any:
    url = sec.optional_string("url")
    if isinstance(url, str) and not re.match(r"^https?://[^\s/]+", url):
        return sec.fail("url", f'must start with http:// or https:// (or be null), got "{url}"')
    return url


def _nullable_number(sec: SectionReader, key: str, lo: float, hi: float) -> Any:
    if sec.data.get(key) is None:
        sec.take(key)
        return None
    return sec.number(key, None, lo, hi)


def _clock(sec: SectionReader, key: str, value: Any, *, allow_24: bool) -> int | None:
    """Minutes of the day of a "HH:MM" text on the quarter-hour grid; "24:00" only where ``allow_24``."""
    match = _CLOCK_PATTERN.match(value) if isinstance(value, str) else None
    if match:
        hours, minutes = int(match[1]), int(match[2])
        if (hours < 24 and minutes < 60) or (allow_24 and (hours, minutes) == (24, 0)):
            if minutes % 15:
                sec.fail(key, f'must be on the quarter hour (:00, :15, :30, :45), got "{value}"')
                return None
            return hours * 60 + minutes
    sec.fail(key, f'must be a time "HH:MM" like "22:00", got {_shown(value)}')
    return None


def _check_keys(sec: SectionReader, prefix: str, item: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in item:
        if key not in allowed and not key.startswith(("comment", "_")):
            sec.fail(f"{prefix}.{key}", f"unknown key (allowed here: {', '.join(allowed)})")


def _item_number(sec: SectionReader, prefix: str, item: dict[str, Any], key: str, lo: float, hi: float,
                 *, lo_open: bool = False) -> float | None:
    value = item.get(key)
    if key not in item:
        sec.fail(f"{prefix}.{key}", "missing (required)")
        return None
    if (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (lo < value if lo_open else lo <= value) and value <= hi):
        return float(value)
    what = f"above {_fmt(lo)} and at most {_fmt(hi)}" if lo_open else f"{_fmt(lo)}..{_fmt(hi)}"
    sec.fail(f"{prefix}.{key}", f"must be a number {what}, got {_shown(value)}")
    return None


def _windows(sec: SectionReader) -> tuple[PriceWindow, ...]:
    raw = sec.take("windows")
    if "windows" not in sec.data or raw is None:
        return ()
    if not isinstance(raw, list):
        sec.fail("windows", f'must be a list like [{{"from": "22:00", "to": "06:00", "ct_per_kwh": 22.5}}], '
                            f"got {_shown(raw)}")
        return ()
    windows: list[PriceWindow] = []
    for i, item in enumerate(raw):
        prefix = f"windows[{i}]"
        if not isinstance(item, dict):
            sec.fail(prefix, f'must be an object {{"from": "HH:MM", "to": "HH:MM", "ct_per_kwh": number}}, '
                             f"got {_shown(item)}")
            continue
        _check_keys(sec, prefix, item, ("from", "to", "ct_per_kwh"))
        start = _clock(sec, f"{prefix}.from", item.get("from"), allow_24=False)
        end = _clock(sec, f"{prefix}.to", item.get("to"), allow_24=True)
        price = _item_number(sec, prefix, item, "ct_per_kwh", *PRICE_RANGE_CT)
        if start is not None and end is not None and start == end:
            sec.fail(prefix, f'"from" and "to" are both {item.get("from")}: an empty window (a whole day: '
                             '"00:00" to "24:00")')
            continue
        if start is not None and end is not None and price is not None:
            windows.append(PriceWindow(start, end, price))
    return tuple(windows)


def _quarters(window: PriceWindow) -> set[int]:
    return {q for q in range(_QUARTERS_PER_DAY) if window.contains(time(q // 4, q % 4 * 15))}


def _check_windows(sec: SectionReader, windows: tuple[PriceWindow, ...], fixed: float | None) -> None:
    covered: set[int] = set()
    for i, window in enumerate(windows):
        mine = _quarters(window)
        for j, other in enumerate(windows[:i]):
            if mine & _quarters(other):
                sec.fail(f"windows[{i}]", f"overlaps windows[{j}] ({other.text()})")
        covered |= mine
    if fixed is None and len(covered) < _QUARTERS_PER_DAY:
        first = min(set(range(_QUARTERS_PER_DAY)) - covered)
        sec.fail("fixed_ct_per_kwh", f"missing: the import price outside the windows (e.g. at "
                                     f"{first // 4:02d}:{first % 4 * 15:02d}) is needed")


def parse_tariff(sec: SectionReader | None) -> TariffConfig | None:
    """The validated ``tariff`` section; None when absent (or invalid: then the problems are in ``sec.errors``)."""
    if sec is None:
        return None
    before = len(sec.errors)
    d = TariffConfig
    kind = sec.string("type", choices=TARIFF_TYPES)
    url = _url(sec)
    zone = sec.string("bidding_zone", d.bidding_zone)
    token = sec.optional_string("token")
    fixed = _nullable_number(sec, "fixed_ct_per_kwh", *PRICE_RANGE_CT)
    windows = _windows(sec)
    markup = sec.number("markup_ct_per_kwh", d.markup_ct_per_kwh, -50, 100)
    vat = sec.number("vat_pct", d.vat_pct, 0, 100)
    feed_in = sec.number("feed_in_ct_per_kwh", d.feed_in_ct_per_kwh, 0, 100)
    sec.finish()
    if not isinstance(kind, str):
        return None
    if kind in TOKEN_TYPES and not (isinstance(token, str) and token.strip()):
        sec.fail("token", f'missing: type "{kind}" needs {TOKEN_TYPES[kind]}')
    if isinstance(zone, str):
        if kind == "entsoe" and zone not in ENTSOE_ZONES and not _EIC_PATTERN.match(zone):
            sec.fail("bidding_zone", f"must be one of {', '.join(ENTSOE_ZONES)} or an EIC area code like "
                                     f'"10Y1001A1001A82H", got "{zone}"')
        elif kind == "energy_charts" and not _ZONE_PATTERN.match(zone):
            sec.fail("bidding_zone", f'must be a bidding zone like "DE-LU", "AT" or "DK1", got "{zone}"')
    if kind == "fixed":
        if isinstance(fixed, float) or fixed is None:
            _check_windows(sec, windows, fixed)
    else:
        for key in ("fixed_ct_per_kwh", "windows"):
            if sec.data.get(key) not in (None, []):
                sec.fail(key, f'is only used by type "fixed", not by "{kind}"; remove it')
    if kind in ("tibber", "fixed"):
        for key in ("markup_ct_per_kwh", "vat_pct"):
            if key in sec.data:
                why = "Tibber's total is the end price" if kind == "tibber" else "the fixed price is the end price"
                sec.fail(key, f'is not used by type "{kind}" ({why}); remove it')
    if len(sec.errors) > before:
        return None
    return TariffConfig(kind, url, zone, token.strip() if token else None, fixed, windows, markup, vat, feed_in)


def _planes(sec: SectionReader, required: bool) -> tuple[PvPlane, ...]:
    raw = sec.take("planes")
    if raw is None or "planes" not in sec.data:
        if required:
            sec.fail("planes", 'missing: at least one plane {"lat", "lon", "declination", "azimuth", "kwp"}')
        return ()
    if not isinstance(raw, list) or (required and not raw):
        sec.fail("planes", f'must be a list of 1..{MAX_PLANES} planes like {{"lat": 52.5, "lon": 13.4, '
                           f'"declination": 30, "azimuth": 0, "kwp": 2.0}}, got {_shown(raw) if raw else "none"}')
        return ()
    if len(raw) > MAX_PLANES:
        sec.fail("planes", f"at most {MAX_PLANES} planes (forecast.solar answers 12 calls an hour), got {len(raw)}")
        return ()
    keys = ("lat", "lon", "declination", "azimuth", "kwp")
    planes = []
    for i, item in enumerate(raw):
        prefix = f"planes[{i}]"
        if not isinstance(item, dict):
            sec.fail(prefix, f"must be an object with {', '.join(keys)}, got {_shown(item)}")
            continue
        _check_keys(sec, prefix, item, keys)
        values = [
            _item_number(sec, prefix, item, "lat", -90, 90),
            _item_number(sec, prefix, item, "lon", -180, 180),
            _item_number(sec, prefix, item, "declination", 0, 90),
            _item_number(sec, prefix, item, "azimuth", -180, 180),
            _item_number(sec, prefix, item, "kwp", 0, 1000, lo_open=True),
        ]
        numbers = [v for v in values if v is not None]
        if len(numbers) == len(values):
            planes.append(PvPlane(*numbers))
    return tuple(planes)


def parse_forecast(sec: SectionReader | None) -> ForecastConfig | None:
    """The validated ``forecast`` section; None when absent (or invalid, see ``parse_tariff``)."""
    if sec is None:
        return None
    before = len(sec.errors)
    kind = sec.string("type", choices=FORECAST_TYPES)
    url = _url(sec)
    planes = _planes(sec, required=kind in ("forecast_solar", "open_meteo"))
    sec.finish()
    if len(sec.errors) > before or not isinstance(kind, str):
        return None
    return ForecastConfig(kind, url, planes)
