"""Price sources: the known import and feed-in prices of today and (once published) tomorrow.

Every source implements ``model.PriceSource``: ``fetch(now) -> list[PriceSlot]`` (aware UTC times,
sorted, no overlaps, slots as the source publishes them: 15 or 60 minutes) and raises ``PriceError``
with a message naming the source and the problem. A period the source does not publish (a gap, a
``null`` price) is simply absent; nothing is ever invented or turned into 0.

- ``EnergyChartsSource``: ``GET {url}/price?bzn=DE-LU&start=<today>&end=<tomorrow>`` (Fraunhofer ISE,
  data Bundesnetzagentur | SMARD.de, no token) → ``unix_seconds``, ``price`` in EUR/MWh.
- ``AwattarSource``: ``GET {url}/v1/marketdata?start=<ms>&end=<ms>`` → ``data[]`` with
  ``start_timestamp``/``end_timestamp`` (ms) and ``marketprice`` in Eur/MWh.
- ``TibberSource``: GraphQL ``POST {url}`` with the token: ``priceInfo(resolution: QUARTER_HOURLY)
  { today tomorrow }``; ``total`` is the end price in EUR/kWh (VAT included) and is used as given.
- ``EntsoeSource``: ``GET {url}?documentType=A44&in_Domain=…&out_Domain=…&periodStart&periodEnd&securityToken``
  → XML; PT15M and PT60M series may come in one document (the 15-minute one wins where both exist);
  curveType A03 omits a position whose price equals the previous one, so it is filled forward
  within its period.
- ``FixedSource``: one price, or time windows in local time with the fixed price outside; 15-minute
  slots for today and tomorrow (92, 96 or 100 per day, daylight saving time included).

Spot-based end price (ct/kWh) = (spot €/MWh / 10 + markup ct/kWh) × (1 + VAT % / 100); feed-in is the
configured ``feed_in_ct_per_kwh`` in every slot.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import requests

from planning.fetch_http import DEFAULT_TIMEOUT_S, json_object, request
from planning.model import PriceError, PriceSlot
from planning.tariff_config import PriceWindow

LOCAL_TZ = ZoneInfo("Europe/Berlin")  # the German day-ahead market's delivery days and the tariff windows
QUARTER = timedelta(minutes=15)
HOUR = timedelta(hours=1)
_STEPS = (QUARTER, HOUR)  # the only periods a day-ahead market publishes here

ENERGY_CHARTS_URL = "https://api.energy-charts.info"
AWATTAR_URL = "https://api.awattar.de"
TIBBER_URL = "https://api.tibber.com/v1-beta/gql"
ENTSOE_URL = "https://web-api.tp.entsoe.eu/api"

# Plausibility of a spot price (€/MWh): the day-ahead auction's harmonised limits are −500 and +4000
# (raised automatically after extreme prices); beyond these bounds the unit is wrong, not the market.
SPOT_MIN_EUR_PER_MWH = -1000.0
SPOT_MAX_EUR_PER_MWH = 10000.0
# An end price per kWh in EUR: anything outside this range is ct or Wh, not EUR/kWh.
END_PRICE_MIN_EUR_PER_KWH = -2.0
END_PRICE_MAX_EUR_PER_KWH = 5.0

# ENTSO-E area codes (EIC) of the bidding zones most users of this program are in.
ENTSOE_AREAS: dict[str, str] = {
    "DE-LU": "10Y1001A1001A82H",
    "AT": "10YAT-APG------L",
    "BE": "10YBE----------2",
    "CH": "10YCH-SWISSGRIDZ",
    "CZ": "10YCZ-CEPS-----N",
    "DK1": "10YDK-1--------W",
    "DK2": "10YDK-2--------M",
    "FR": "10YFR-RTE------C",
    "NL": "10YNL----------L",
    "PL": "10YPL-AREA-----S",
}
EIC_PATTERN = re.compile(r"^10Y[A-Z0-9-]{13}$")


@dataclass(frozen=True)
class SpotPricing:
    """How a spot price becomes the household's end price, and what feed-in pays."""

    markup_ct_per_kwh: float = 15.0  # supplier margin, grid fees, levies (net)
    vat_pct: float = 19.0
    feed_in_ct_per_kwh: float = 7.9

    def import_ct_per_kwh(self, spot_eur_per_mwh: float) -> float:
        """(spot €/MWh / 10 + markup) × (1 + VAT/100): 1 €/MWh = 0.1 ct/kWh."""
        return (spot_eur_per_mwh / 10.0 + self.markup_ct_per_kwh) * (1.0 + self.vat_pct / 100.0)


def local_days(now: datetime, tz: ZoneInfo = LOCAL_TZ) -> tuple[date, datetime, datetime]:
    """(today's local date, start of today, end of tomorrow) with the times in UTC."""
    today = now.astimezone(tz).date()
    start = datetime.combine(today, time(0), tz).astimezone(timezone.utc)
    end = datetime.combine(today + timedelta(days=2), time(0), tz).astimezone(timezone.utc)
    return today, start, end


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


def _number(value: Any, *, what: str, error: type[Exception] = PriceError) -> float | None:
    """A finite number, None for JSON null; text, booleans, NaN raise ``error``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what} is not a number: {str(value)[:30]!r}")
    if not math.isfinite(value):
        raise error(f"{what} is {value}")
    return float(value)


def _check_spot(value: float, *, what: str) -> float:
    if not SPOT_MIN_EUR_PER_MWH <= value <= SPOT_MAX_EUR_PER_MWH:
        raise PriceError(f"{what}: {value:g} €/MWh is implausible (wrong unit?)")
    return value


def _steps_of(starts: Sequence[datetime], default: timedelta, what: str) -> list[timedelta]:
    """The period of each start: the shorter of its distances to its neighbours that is 15 or 60 minutes.

    A distance of another length is a gap and does not count; a start with no such neighbour gets the
    shortest period seen in the series (or ``default``). Starts must be on the 15-minute grid.
    """
    for moment in starts:
        if moment.timestamp() % QUARTER.total_seconds():
            raise PriceError(f"{what}: {moment.isoformat()} is not on the 15-minute grid")
    diffs = [b - a for a, b in pairwise(starts)]
    usable = [d for d in diffs if d in _STEPS]
    fallback = min(usable) if usable else default
    steps = []
    for i in range(len(starts)):
        near = [d for d in (diffs[i - 1] if i else None, diffs[i] if i < len(diffs) else None) if d in _STEPS]
        steps.append(min(near) if near else fallback)
    return steps


def slots_from_points(
    points: Iterable[tuple[datetime, float | None]],
    make: Any,
    *,
    what: str,
    default_step: timedelta = QUARTER,
) -> list[PriceSlot]:
    """Slots from (start, value) points: sorted, duplicates rejected, null values left out, never overlapping.

    ``make(start, end, value)`` builds one slot from a non-null value.
    """
    ordered = sorted((_utc(t), v) for t, v in points)
    starts = [t for t, _ in ordered]
    for a, b in pairwise(starts):
        if a == b:
            raise PriceError(f"{what}: period {a.isoformat()} appears twice")
    steps = _steps_of(starts, default_step, what)
    slots: list[PriceSlot] = []
    for i, ((start, value), step) in enumerate(zip(ordered, steps, strict=True)):
        if value is None:
            continue
        end = start + step
        if i + 1 < len(starts):
            end = min(end, starts[i + 1])
        slots.append(make(start, end, value))
    return slots


def _require_slots(slots: list[PriceSlot], what: str) -> list[PriceSlot]:
    if not slots:
        raise PriceError(f"{what}: the answer holds no prices (not published yet?)")
    return slots


class EnergyChartsSource:
    """Day-ahead prices from Energy-Charts (Fraunhofer ISE; data Bundesnetzagentur | SMARD.de, CC BY 4.0)."""

    name = "energy_charts"

    def __init__(self, session: requests.Session, pricing: SpotPricing, *, url: str | None = None,
                 bidding_zone: str = "DE-LU", timeout_s: float = DEFAULT_TIMEOUT_S, tz: ZoneInfo = LOCAL_TZ) -> None:
        self.session = session
        self.pricing = pricing
        self.url = (url or ENERGY_CHARTS_URL).rstrip("/")
        self.bidding_zone = bidding_zone
        self.timeout_s = timeout_s
        self.tz = tz

    def fetch(self, now: datetime) -> list[PriceSlot]:
        """Today's and (once published) tomorrow's prices; raises PriceError."""
        what = "Energy-Charts /price"
        today, _, _ = local_days(now, self.tz)
        params = {"bzn": self.bidding_zone, "start": today.isoformat(),
                  "end": (today + timedelta(days=1)).isoformat()}
        answer = request(self.session, "GET", f"{self.url}/price", params=params, error=PriceError, what=what,
                         timeout_s=self.timeout_s)
        return self.parse(json_object(answer.body, error=PriceError, what=what))

    def parse(self, data: dict[str, Any]) -> list[PriceSlot]:
        """Slots from one Energy-Charts answer."""
        what = "Energy-Charts /price"
        unit = data.get("unit")
        if not isinstance(unit, str) or unit.replace(" ", "").lower() != "eur/mwh":
            raise PriceError(f"{what}: unit {unit!r}, expected 'EUR / MWh'")
        seconds, prices = data.get("unix_seconds"), data.get("price")
        if not isinstance(seconds, list) or not isinstance(prices, list):
            raise PriceError(f"{what}: answer lacks the lists unix_seconds and price")
        if len(seconds) != len(prices):
            raise PriceError(f"{what}: {len(seconds)} times but {len(prices)} prices")
        points = []
        for i, (stamp, price) in enumerate(zip(seconds, prices, strict=True)):
            if isinstance(stamp, bool) or not isinstance(stamp, int):
                raise PriceError(f"{what}: unix_seconds[{i}] is not an integer: {str(stamp)[:30]!r}")
            value = _number(price, what=f"{what}: price[{i}]")
            if value is not None:
                _check_spot(value, what=f"{what}: price[{i}]")
            points.append((datetime.fromtimestamp(stamp, timezone.utc), value))
        slots = slots_from_points(points, self._slot, what=what)
        return _require_slots(slots, what)

    def _slot(self, start: datetime, end: datetime, spot: float) -> PriceSlot:
        return PriceSlot(start, end, self.pricing.import_ct_per_kwh(spot), self.pricing.feed_in_ct_per_kwh)


class AwattarSource:
    """Day-ahead prices from aWATTar (``api.awattar.de``; ``api.awattar.at`` for Austria)."""

    name = "awattar"

    def __init__(self, session: requests.Session, pricing: SpotPricing, *, url: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, tz: ZoneInfo = LOCAL_TZ) -> None:
        self.session = session
        self.pricing = pricing
        self.url = (url or AWATTAR_URL).rstrip("/")
        self.timeout_s = timeout_s
        self.tz = tz

    def fetch(self, now: datetime) -> list[PriceSlot]:
        """Today's and (once published) tomorrow's prices; raises PriceError."""
        what = "aWATTar /v1/marketdata"
        _, start, end = local_days(now, self.tz)
        params = {"start": str(int(start.timestamp() * 1000)), "end": str(int(end.timestamp() * 1000))}
        answer = request(self.session, "GET", f"{self.url}/v1/marketdata", params=params, error=PriceError,
                         what=what, timeout_s=self.timeout_s)
        return self.parse(json_object(answer.body, error=PriceError, what=what))

    def parse(self, data: dict[str, Any]) -> list[PriceSlot]:
        """Slots from one aWATTar answer."""
        what = "aWATTar /v1/marketdata"
        items = data.get("data")
        if not isinstance(items, list):
            raise PriceError(f"{what}: answer lacks the list 'data'")
        slots: list[PriceSlot] = []
        for i, item in enumerate(items):
            where = f"{what}: data[{i}]"
            if not isinstance(item, dict):
                raise PriceError(f"{where} is not an object")
            unit = item.get("unit")
            if not isinstance(unit, str) or unit.replace(" ", "").lower() != "eur/mwh":
                raise PriceError(f"{where}: unit {unit!r}, expected 'Eur/MWh'")
            start_ms = _number(item.get("start_timestamp"), what=f"{where}.start_timestamp")
            end_ms = _number(item.get("end_timestamp"), what=f"{where}.end_timestamp")
            if start_ms is None or end_ms is None:
                raise PriceError(f"{where}: start_timestamp or end_timestamp missing")
            start = datetime.fromtimestamp(start_ms / 1000, timezone.utc)
            end = datetime.fromtimestamp(end_ms / 1000, timezone.utc)
            if end - start not in _STEPS or start.timestamp() % QUARTER.total_seconds():
                raise PriceError(f"{where}: period {start.isoformat()}–{end.isoformat()} is not 15 or 60 minutes "
                                 "on the quarter-hour grid")
            spot = _number(item.get("marketprice"), what=f"{where}.marketprice")
            if spot is None:
                continue  # not published: the period stays unknown
            _check_spot(spot, what=f"{where}.marketprice")
            slots.append(PriceSlot(start, end, self.pricing.import_ct_per_kwh(spot), self.pricing.feed_in_ct_per_kwh))
        slots.sort(key=lambda s: s.start)
        _check_no_overlap(slots, what)
        return _require_slots(slots, what)


def _check_no_overlap(slots: Sequence[PriceSlot], what: str) -> None:
    for a, b in pairwise(slots):
        if b.start < a.end:
            raise PriceError(f"{what}: periods {a.start.isoformat()} and {b.start.isoformat()} overlap")


TIBBER_QUERY = """{
  viewer {
    homes {
      id
      currentSubscription {
        priceInfo(resolution: QUARTER_HOURLY) {
          today { total energy tax startsAt level currency }
          tomorrow { total energy tax startsAt level currency }
        }
      }
    }
  }
}"""


class TibberSource:
    """End prices of a Tibber contract (GraphQL API, personal access token), 15 minutes per slot."""

    name = "tibber"

    def __init__(self, session: requests.Session, token: str, *, feed_in_ct_per_kwh: float, url: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.session = session
        self.token = token
        self.feed_in_ct_per_kwh = feed_in_ct_per_kwh
        self.url = url or TIBBER_URL
        self.timeout_s = timeout_s

    def fetch(self, now: datetime) -> list[PriceSlot]:
        """Today's and (once published) tomorrow's prices; raises PriceError."""
        what = "Tibber API"
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        # GraphQL reports some errors with 400/401 and a JSON body naming them: read that body.
        answer = request(self.session, "POST", self.url, json_body={"query": TIBBER_QUERY}, headers=headers,
                         error=PriceError, what=what, timeout_s=self.timeout_s, ok_statuses=(400, 401, 403))
        try:
            data = json_object(answer.body, error=PriceError, what=what)
        except PriceError:
            if answer.status >= 400:
                hint = " (token wrong?)" if answer.status != 400 else ""
                raise PriceError(f"{what}: HTTP {answer.status}{hint}") from None
            raise
        return self.parse(data, status=answer.status)

    def parse(self, data: dict[str, Any], *, status: int = 200) -> list[PriceSlot]:
        """Slots from one Tibber answer (the first home with a subscription)."""
        what = "Tibber API"
        errors = data.get("errors")
        if errors:
            messages = [str(e.get("message"))[:120] for e in errors if isinstance(e, dict)] or [str(errors)[:120]]
            hint = " (token wrong?)" if status in (401, 403) or "auth" in " ".join(messages).lower() else ""
            raise PriceError(f"{what}: {'; '.join(messages)}{hint}")
        if status >= 400:
            raise PriceError(f"{what}: HTTP {status}")
        try:
            homes = data["data"]["viewer"]["homes"]
        except (KeyError, TypeError):
            raise PriceError(f"{what}: answer lacks data.viewer.homes") from None
        if not isinstance(homes, list) or not homes:
            raise PriceError(f"{what}: the token's account has no home")
        info = None
        for home in homes:
            subscription = home.get("currentSubscription") if isinstance(home, dict) else None
            if isinstance(subscription, dict) and isinstance(subscription.get("priceInfo"), dict):
                info = subscription["priceInfo"]
                break
        if info is None:
            raise PriceError(f"{what}: no home has a current subscription with prices")
        points: list[tuple[datetime, float | None]] = []
        for day in ("today", "tomorrow"):
            entries = info.get(day)
            if entries is None:
                continue  # tomorrow before publication
            if not isinstance(entries, list):
                raise PriceError(f"{what}: priceInfo.{day} is not a list")
            for i, entry in enumerate(entries):
                points.append(self._point(entry, f"{what}: priceInfo.{day}[{i}]"))
        slots = slots_from_points(points, self._slot, what=what, default_step=QUARTER)
        return _require_slots(slots, what)

    @staticmethod
    def _point(entry: Any, where: str) -> tuple[datetime, float | None]:
        if not isinstance(entry, dict):
            raise PriceError(f"{where} is not an object")
        currency = entry.get("currency")
        if currency is not None and currency != "EUR":
            raise PriceError(f"{where}: currency {currency!r}; this program calculates in EUR (ct/kWh)")
        starts_at = entry.get("startsAt")
        try:
            start = datetime.fromisoformat(str(starts_at).replace("Z", "+00:00"))
        except ValueError:
            raise PriceError(f"{where}: startsAt {str(starts_at)[:40]!r} is not a time") from None
        if start.tzinfo is None:
            raise PriceError(f"{where}: startsAt {starts_at!r} has no UTC offset")
        total = _number(entry.get("total"), what=f"{where}.total")
        if total is not None and not END_PRICE_MIN_EUR_PER_KWH <= total <= END_PRICE_MAX_EUR_PER_KWH:
            raise PriceError(f"{where}.total: {total:g} EUR/kWh is implausible (wrong unit?)")
        return start, total

    def _slot(self, start: datetime, end: datetime, total_eur_per_kwh: float) -> PriceSlot:
        return PriceSlot(start, end, total_eur_per_kwh * 100.0, self.feed_in_ct_per_kwh)


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    for child in element:
        if _local_name(child.tag) == name:
            return child
    return None


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local_name(child.tag) == name]


def _text(element: ET.Element | None, path: Sequence[str]) -> str | None:
    for name in path:
        if element is None:
            return None
        element = _child(element, name)
    return element.text.strip() if element is not None and element.text else None


def _entsoe_time(text: str | None, what: str) -> datetime:
    """ENTSO-E writes "2024-10-05T22:00Z" (no seconds)."""
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise PriceError(f"{what}: time {str(text)[:30]!r} is not readable") from None
    if moment.tzinfo is None:
        raise PriceError(f"{what}: time {text!r} has no zone")
    return _utc(moment)


_RESOLUTIONS = {"PT15M": QUARTER, "PT60M": HOUR, "PT1H": HOUR}


class EntsoeSource:
    """Day-ahead prices from the ENTSO-E transparency platform (document A44, security token)."""

    name = "entsoe"

    def __init__(self, session: requests.Session, token: str, pricing: SpotPricing, *, url: str | None = None,
                 bidding_zone: str = "DE-LU", timeout_s: float = DEFAULT_TIMEOUT_S, tz: ZoneInfo = LOCAL_TZ) -> None:
        self.session = session
        self.token = token
        self.pricing = pricing
        self.url = url or ENTSOE_URL
        self.area = entsoe_area(bidding_zone)
        self.timeout_s = timeout_s
        self.tz = tz

    def fetch(self, now: datetime) -> list[PriceSlot]:
        """Today's and (once published) tomorrow's prices; raises PriceError."""
        what = "ENTSO-E A44"
        _, start, end = local_days(now, self.tz)
        params = {"documentType": "A44", "in_Domain": self.area, "out_Domain": self.area,
                  "periodStart": start.strftime("%Y%m%d%H%M"), "periodEnd": end.strftime("%Y%m%d%H%M"),
                  "securityToken": self.token}
        # The platform answers "no data" and a wrong token with 400/401 and an acknowledgement document.
        answer = request(self.session, "GET", self.url, params=params, error=PriceError, what=what,
                         timeout_s=self.timeout_s, ok_statuses=(400, 401))
        return self.parse(answer.body, status=answer.status)

    def parse(self, body: bytes, *, status: int = 200) -> list[PriceSlot]:
        """Slots from one A44 document; an acknowledgement document raises PriceError with its reason."""
        what = "ENTSO-E A44"
        if b"<!DOCTYPE" in body[:2000] or b"<!ENTITY" in body:
            raise PriceError(f"{what}: the answer declares a DTD or entities; refused")
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            hint = " (token wrong?)" if status == 401 else ""
            raise PriceError(f"{what}: answer is not readable XML ({exc}){hint}") from None
        kind = _local_name(root.tag)
        if kind == "Acknowledgement_MarketDocument":
            reason = _text(root, ("Reason", "text")) or "no reason given"
            hint = " (token wrong?)" if status == 401 else ""
            raise PriceError(f"{what}: {reason[:200]}{hint}")
        if kind != "Publication_MarketDocument":
            raise PriceError(f"{what}: unexpected document {kind!r}")
        if status >= 400:
            raise PriceError(f"{what}: HTTP {status}")
        by_step: dict[timedelta, dict[datetime, float]] = {QUARTER: {}, HOUR: {}}
        for n, series in enumerate(_children(root, "TimeSeries")):
            self._read_series(series, by_step, f"{what}: TimeSeries {n + 1}")
        quarters = by_step[QUARTER]
        points: list[PriceSlot] = [self._slot(t, t + QUARTER, v) for t, v in quarters.items()]
        for start, value in by_step[HOUR].items():
            # The 15-minute auction wins: an hour any of whose quarters it priced is left to it.
            if not any(start + k * QUARTER in quarters for k in range(4)):
                points.append(self._slot(start, start + HOUR, value))
        points.sort(key=lambda s: s.start)
        _check_no_overlap(points, what)
        return _require_slots(points, what)

    def _read_series(self, series: ET.Element, by_step: dict[timedelta, dict[datetime, float]], what: str) -> None:
        currency = _text(series, ("currency_Unit.name",))
        measure = _text(series, ("price_Measure_Unit.name",))
        if currency not in (None, "EUR") or measure not in (None, "MWH"):
            raise PriceError(f"{what}: unit {currency}/{measure}, expected EUR/MWH")
        curve = _text(series, ("curveType",)) or "A01"
        for period in _children(series, "Period"):
            resolution = _text(period, ("resolution",))
            step = _RESOLUTIONS.get(resolution or "")
            if step is None:
                raise PriceError(f"{what}: resolution {resolution!r} is neither PT15M nor PT60M")
            start = _entsoe_time(_text(period, ("timeInterval", "start")), what)
            end = _entsoe_time(_text(period, ("timeInterval", "end")), what)
            count = int((end - start) / step)
            if count <= 0 or count > 200:
                raise PriceError(f"{what}: period {start.isoformat()}–{end.isoformat()} is not plausible")
            prices: dict[int, float] = {}
            for point in _children(period, "Point"):
                position_text = _text(point, ("position",))
                amount = _text(point, ("price.amount",))
                try:
                    position = int(position_text or "")
                    value = float(amount or "")
                except ValueError:
                    raise PriceError(f"{what}: point {position_text!r} has no readable price {amount!r}") from None
                if not math.isfinite(value):
                    raise PriceError(f"{what}: point {position} has price {amount}")
                if not 1 <= position <= count:
                    raise PriceError(f"{what}: position {position} outside its period of {count}")
                prices[position] = _check_spot(value, what=f"{what}: position {position}")
            target = by_step[step]
            last: float | None = None
            for position in range(1, count + 1):
                value_at = prices.get(position)
                if value_at is None and curve == "A03":
                    value_at = last  # A03: an omitted position repeats the previous price
                if value_at is not None:
                    target.setdefault(start + (position - 1) * step, value_at)
                    last = value_at

    def _slot(self, start: datetime, end: datetime, spot: float) -> PriceSlot:
        return PriceSlot(start, end, self.pricing.import_ct_per_kwh(spot), self.pricing.feed_in_ct_per_kwh)


def entsoe_area(bidding_zone: str) -> str:
    """The EIC area code of a bidding zone ("DE-LU") or the code itself; ValueError if unknown."""
    if bidding_zone in ENTSOE_AREAS:
        return ENTSOE_AREAS[bidding_zone]
    if EIC_PATTERN.match(bidding_zone):
        return bidding_zone
    raise ValueError(bidding_zone)


class FixedSource:
    """A fixed import price, optionally with time windows (e.g. §14a EnWG "Modul 3" grid fees)."""

    name = "fixed"

    def __init__(self, *, fixed_ct_per_kwh: float | None, feed_in_ct_per_kwh: float,
                 windows: Sequence[PriceWindow] = (), tz: ZoneInfo = LOCAL_TZ) -> None:
        self.fixed_ct_per_kwh = fixed_ct_per_kwh
        self.feed_in_ct_per_kwh = feed_in_ct_per_kwh
        self.windows = tuple(windows)
        self.tz = tz

    def price_at(self, moment: datetime) -> float | None:
        """The import price at an aware time: the first window containing its local time, else the fixed price."""
        local = moment.astimezone(self.tz).time()
        for window in self.windows:
            if window.contains(local):
                return window.ct_per_kwh
        return self.fixed_ct_per_kwh

    def fetch(self, now: datetime) -> list[PriceSlot]:
        """15-minute slots for today and tomorrow (local days); no I/O."""
        _, start, end = local_days(now, self.tz)
        slots = []
        moment = start
        while moment < end:
            price = self.price_at(moment)
            if price is None:
                local = moment.astimezone(self.tz)
                raise PriceError(f"fixed tariff: no price for {local:%H:%M} (set fixed_ct_per_kwh)")
            slots.append(PriceSlot(moment, moment + QUARTER, price, self.feed_in_ct_per_kwh))
            moment += QUARTER
        return slots
