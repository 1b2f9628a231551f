"""Price sources on real and built answers served from 127.0.0.1: parsing, DST days, gaps, every failure kind."""

from __future__ import annotations

import json
import threading
from datetime import datetime, time, timedelta, timezone
from itertools import pairwise
from typing import Any

import pytest
import requests

from planning.model import PriceError, PriceSlot
from planning.prices import (
    LOCAL_TZ,
    AwattarSource,
    EnergyChartsSource,
    EntsoeSource,
    FixedSource,
    SpotPricing,
    TibberSource,
)
from planning.tariff_config import PriceWindow
from tests.helpers import free_port
from tests.recorded_server import RecordedServer, fixture

PRICING = SpotPricing(markup_ct_per_kwh=15.0, vat_pct=19.0, feed_in_ct_per_kwh=7.9)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def end_price(spot_eur_per_mwh: float) -> float:
    return (spot_eur_per_mwh / 10 + 15.0) * 1.19


def assert_contiguous(slots: list[PriceSlot]) -> None:
    for a, b in pairwise(slots):
        assert a.end == b.start, (a, b)
        assert a.start < a.end


# --------------------------------------------------------------------------- Energy-Charts


def energy_charts(server: RecordedServer, session: requests.Session, name: str) -> list[PriceSlot]:
    server.serve("/price", fixture(f"prices/{name}"))
    return EnergyChartsSource(session, PRICING, url=server.url).fetch(utc("2026-05-01T10:00+02:00"))


@pytest.mark.parametrize(("name", "count", "step_min", "hours"), [
    ("energy_charts_price_2024-04-14.json", 24, 60, 24),
    ("energy_charts_price_2025-10-01.json", 96, 15, 24),
    ("energy_charts_price_2026-05-01.json", 96, 15, 24),
    ("energy_charts_price_2024-03-31.json", 23, 60, 23),  # spring forward: 23 hours
    ("energy_charts_price_2024-10-27.json", 25, 60, 25),  # fall back: 25 hours
    ("energy_charts_price_2025-10-26.json", 100, 15, 25),  # 100 quarter-hours
    ("energy_charts_price_2026-03-29.json", 92, 15, 23),  # 92 quarter-hours
])
def test_energy_charts_real_days_and_dst(server: RecordedServer, session: requests.Session, name: str, count: int,
                                         step_min: int, hours: int) -> None:
    slots = energy_charts(server, session, name)
    raw = json.loads(fixture(f"prices/{name}"))
    assert len(slots) == count
    assert all(s.end - s.start == timedelta(minutes=step_min) for s in slots)
    assert_contiguous(slots)
    assert slots[-1].end - slots[0].start == timedelta(hours=hours)
    assert slots[0].start.astimezone(LOCAL_TZ).time() == time(0)  # a Berlin delivery day
    for slot, stamp, price in zip(slots, raw["unix_seconds"], raw["price"], strict=True):
        assert slot.start == datetime.fromtimestamp(stamp, timezone.utc)
        assert slot.import_ct_per_kwh == pytest.approx(end_price(price))
        assert slot.feed_in_ct_per_kwh == 7.9


def test_energy_charts_negative_prices_are_kept(server: RecordedServer, session: requests.Session) -> None:
    slots = energy_charts(server, session, "energy_charts_price_2026-05-01.json")
    cheapest = min(slots, key=lambda s: s.import_ct_per_kwh)
    assert cheapest.import_ct_per_kwh == pytest.approx((-49.999 + 15.0) * 1.19)  # −499.99 €/MWh → −41.65 ct
    assert sum(1 for s in slots if s.import_ct_per_kwh < 0) > 0


def test_energy_charts_asks_for_today_and_tomorrow_local(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/price", fixture("prices/energy_charts_price_2026-05-01.json"))
    source = EnergyChartsSource(session, PRICING, url=server.url + "/", bidding_zone="AT")
    source.fetch(utc("2026-04-30T23:30+00:00"))  # already 1 May in Berlin
    query = server.requests[-1].query
    assert query == {"bzn": "AT", "start": "2026-05-01", "end": "2026-05-02"}


def test_energy_charts_gap_is_left_out_never_invented(server: RecordedServer, session: requests.Session) -> None:
    raw = json.loads(fixture("prices/energy_charts_price_2025-10-01.json"))
    del raw["unix_seconds"][40:44]
    del raw["price"][40:44]
    raw["price"][10] = None  # not published: also a gap
    server.serve("/price", raw)
    slots = EnergyChartsSource(session, PRICING, url=server.url).fetch(utc("2025-10-01T08:00Z"))
    assert len(slots) == 96 - 5
    starts = {s.start for s in slots}
    first = datetime.fromtimestamp(raw["unix_seconds"][0], timezone.utc)
    assert first + 10 * timedelta(minutes=15) not in starts
    for k in range(40, 44):
        assert first + k * timedelta(minutes=15) not in starts
    assert all(s.end - s.start == timedelta(minutes=15) for s in slots)  # the slot before a gap stays 15 min


def test_energy_charts_hourly_and_quarter_hourly_in_one_answer(server: RecordedServer,
                                                               session: requests.Session) -> None:
    hourly = json.loads(fixture("prices/energy_charts_price_2024-04-14.json"))
    quarter = json.loads(fixture("prices/energy_charts_price_2025-10-01.json"))
    # The switch day: the last hour of 2025-09-30 is followed by the first quarter-hour of 2025-10-01.
    last_hour = quarter["unix_seconds"][0] - 3600
    raw = {**quarter, "unix_seconds": [last_hour - 3600, last_hour, *quarter["unix_seconds"]],
           "price": [hourly["price"][0], hourly["price"][1], *quarter["price"]]}
    server.serve("/price", raw)
    slots = EnergyChartsSource(session, PRICING, url=server.url).fetch(utc("2025-10-01T08:00Z"))
    assert [int((s.end - s.start).total_seconds()) for s in slots[:4]] == [3600, 3600, 900, 900]
    assert_contiguous(slots)


def bad_energy_charts(**changes: Any) -> dict[str, Any]:
    raw = json.loads(fixture("prices/energy_charts_price_2025-10-01.json"))
    raw.update(changes)
    return raw


@pytest.mark.parametrize(("answer", "status", "fragment"), [
    (b"<html><body>502 Bad Gateway</body></html>", 502, "HTTP 502"),
    (b'{"detail": "Not Found"}', 404, "HTTP 404"),
    (b"Internal Server Error", 500, "HTTP 500"),
    (b"<html>maintenance</html>", 200, "not JSON"),
    (b'{"unix_seconds": [1759269600], "price": [6', 200, "not JSON"),  # cut off
    (b'{"unix_seconds": [1759269600], "price": [NaN], "unit": "EUR / MWh"}', 200, "NaN"),
    (b"[1, 2, 3]", 200, "not a JSON object"),
    (bad_energy_charts(unit="EUR / kWh"), 200, "unit 'EUR / kWh'"),
    (bad_energy_charts(price=[0.0632] * 96), 200, None),  # EUR/kWh values under a MWh label pass (plausible)
    (bad_energy_charts(price=[63180.0] * 96), 200, "implausible"),
    (bad_energy_charts(price=["63.1"] * 96), 200, "not a number"),
    (bad_energy_charts(price=[None] * 96), 200, "no prices"),
    (bad_energy_charts(price=[1.0] * 95), 200, "96 times but 95 prices"),
    (bad_energy_charts(unix_seconds=[1759269600] * 96), 200, "appears twice"),
    (bad_energy_charts(unix_seconds=[1759269600 + 60 + 900 * k for k in range(96)]), 200, "15-minute grid"),
    (bad_energy_charts(unix_seconds=None), 200, "lacks the lists"),
])
def test_energy_charts_failure_kinds(server: RecordedServer, session: requests.Session, answer: Any, status: int,
                                     fragment: str | None) -> None:
    server.serve("/price", answer, status)
    source = EnergyChartsSource(session, PRICING, url=server.url)
    if fragment is None:
        assert source.fetch(utc("2025-10-01T08:00Z"))
        return
    with pytest.raises(PriceError) as caught:
        source.fetch(utc("2025-10-01T08:00Z"))
    message = str(caught.value)
    assert message.startswith("Energy-Charts /price: ")
    assert fragment in message
    assert "Traceback" not in message


def test_timeout_is_a_price_error(server: RecordedServer, session: requests.Session) -> None:
    release = threading.Event()
    server.serve("/price", fixture("prices/energy_charts_price_2025-10-01.json"), hang=release)
    source = EnergyChartsSource(session, PRICING, url=server.url, timeout_s=0.3)
    with pytest.raises(PriceError, match=r"no answer within 0.3 s"):
        source.fetch(utc("2025-10-01T08:00Z"))
    release.set()


def test_refused_and_dropped_connections_are_price_errors(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/price", b"", drop=True)
    with pytest.raises(PriceError, match=r"Energy-Charts /price: (connection|cannot connect)"):
        EnergyChartsSource(session, PRICING, url=server.url).fetch(utc("2025-10-01T08:00Z"))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(PriceError, match=r"connection refused|cannot connect"):
        EnergyChartsSource(session, PRICING, url=url).fetch(utc("2025-10-01T08:00Z"))


# --------------------------------------------------------------------------- aWATTar


def test_awattar_25_hour_day_and_the_next(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/v1/marketdata", fixture("prices/awattar_2024-10-27.json"))
    source = AwattarSource(session, PricingWithFeedIn0, url=server.url)
    slots = source.fetch(utc("2024-10-27T12:00+01:00"))
    raw = json.loads(fixture("prices/awattar_2024-10-27.json"))["data"]
    assert len(slots) == 49
    assert_contiguous(slots)
    assert all(s.end - s.start == timedelta(hours=1) for s in slots)
    assert slots[0].import_ct_per_kwh == pytest.approx((raw[0]["marketprice"] / 10 + 12.0) * 1.07)
    assert {s.feed_in_ct_per_kwh for s in slots} == {0.0}
    query = server.requests[-1].query
    assert query == {"start": str(int(utc("2024-10-27T00:00+02:00").timestamp() * 1000)),
                     "end": str(int(utc("2024-10-29T00:00+01:00").timestamp() * 1000))}


PricingWithFeedIn0 = SpotPricing(markup_ct_per_kwh=12.0, vat_pct=7.0, feed_in_ct_per_kwh=0.0)


@pytest.mark.parametrize(("item", "fragment"), [
    ({"unit": "ct/kWh"}, "unit 'ct/kWh'"),
    ({"end_timestamp": 1729980000000 + 1800000}, "not 15 or 60 minutes"),
    ({"marketprice": "63.18"}, "not a number"),
    ({"marketprice": 631800}, "implausible"),
    ({"start_timestamp": None}, "missing"),
])
def test_awattar_failure_kinds(server: RecordedServer, session: requests.Session, item: dict[str, Any],
                               fragment: str) -> None:
    raw = json.loads(fixture("prices/awattar_2024-10-27.json"))
    raw["data"][0] = {"start_timestamp": 1729980000000, "end_timestamp": 1729983600000, "marketprice": 63.18,
                      "unit": "Eur/MWh", **item}
    server.serve("/v1/marketdata", raw)
    with pytest.raises(PriceError, match=fragment):
        AwattarSource(session, PRICING, url=server.url).fetch(utc("2024-10-27T12:00+01:00"))


def test_awattar_empty_list_and_null_price(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/v1/marketdata", {"object": "list", "data": [], "url": "/de/v1/marketdata"})
    with pytest.raises(PriceError, match="no prices"):
        AwattarSource(session, PRICING, url=server.url).fetch(utc("2024-10-27T12:00+01:00"))
    raw = json.loads(fixture("prices/awattar_2024-10-27.json"))
    raw["data"][3]["marketprice"] = None
    server.serve("/v1/marketdata", raw)
    slots = AwattarSource(session, PRICING, url=server.url).fetch(utc("2024-10-27T12:00+01:00"))
    assert len(slots) == 48 and slots[2].end != slots[3].start  # the hour is absent, not 0


# --------------------------------------------------------------------------- Tibber


def test_tibber_quarter_hours_today_and_tomorrow(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/v1-beta/gql", fixture("prices/tibber_2026-05-01.json"))
    source = TibberSource(session, "secret-token", feed_in_ct_per_kwh=0.0, url=server.url + "/v1-beta/gql")
    slots = source.fetch(utc("2026-05-01T14:00+02:00"))
    raw = json.loads(fixture("prices/tibber_2026-05-01.json"))
    entries = raw["data"]["viewer"]["homes"][0]["currentSubscription"]["priceInfo"]
    assert len(slots) == 192
    assert_contiguous(slots)
    assert all(s.end - s.start == timedelta(minutes=15) for s in slots)
    assert slots[0].start == utc("2026-05-01T00:00+02:00")
    assert slots[0].import_ct_per_kwh == pytest.approx(entries["today"][0]["total"] * 100)
    assert slots[-1].import_ct_per_kwh == pytest.approx(entries["tomorrow"][-1]["total"] * 100)
    assert min(s.import_ct_per_kwh for s in slots) < 0  # negative end prices on 1 May 2026
    request = server.requests[-1]
    assert request.method == "POST"
    assert request.headers["Authorization"] == "Bearer secret-token"
    assert "priceInfo(resolution: QUARTER_HOURLY)" in json.loads(request.body)["query"]


def test_tibber_empty_tomorrow_on_a_100_quarter_hour_day(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/gql", fixture("prices/tibber_2025-10-26_no_tomorrow.json"))
    slots = TibberSource(session, "t", feed_in_ct_per_kwh=7.9, url=server.url + "/gql").fetch(
        utc("2025-10-26T10:00+01:00"))
    assert len(slots) == 100
    assert slots[-1].end - slots[0].start == timedelta(hours=25)
    assert_contiguous(slots)


def tibber_answer(**entry: Any) -> dict[str, Any]:
    base = {"total": 0.3012, "energy": 0.08, "tax": 0.2212, "startsAt": "2026-05-01T00:00:00.000+02:00",
            "level": "NORMAL", "currency": "EUR"}
    return {"data": {"viewer": {"homes": [{"id": "h", "currentSubscription": {
        "priceInfo": {"today": [{**base, **entry}], "tomorrow": []}}}]}}}


@pytest.mark.parametrize(("answer", "status", "fragment"), [
    ({"errors": [{"message": "Context creation failed: invalid token",
                  "extensions": {"code": "UNAUTHENTICATED"}}], "data": None}, 200, "invalid token"),
    ({"errors": [{"message": "unauthorized"}]}, 401, "token wrong?"),
    (b"Unauthorized", 401, "HTTP 401 (token wrong?)"),
    ({"data": {"viewer": {"homes": []}}}, 200, "no home"),
    ({"data": {"viewer": {"homes": [{"id": "h", "currentSubscription": None}]}}}, 200, "no home has"),
    ({"data": None}, 200, "lacks data.viewer.homes"),
    (tibber_answer(currency="NOK"), 200, "currency 'NOK'"),
    (tibber_answer(total=30.12), 200, "implausible (wrong unit?)"),
    (tibber_answer(total="0.30"), 200, "not a number"),
    (tibber_answer(startsAt="2026-05-01T00:00:00"), 200, "no UTC offset"),
    (tibber_answer(startsAt="morgen"), 200, "is not a time"),
    (tibber_answer(total=None), 200, "no prices"),
    (b"<html>503</html>", 503, "HTTP 503"),
])
def test_tibber_failure_kinds(server: RecordedServer, session: requests.Session, answer: Any, status: int,
                              fragment: str) -> None:
    server.serve("/gql", answer, status)
    with pytest.raises(PriceError, match=fragment.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        TibberSource(session, "t", feed_in_ct_per_kwh=0.0, url=server.url + "/gql").fetch(utc("2026-05-01T10:00Z"))


# --------------------------------------------------------------------------- ENTSO-E


def entsoe(server: RecordedServer, session: requests.Session, body: bytes, status: int = 200) -> list[PriceSlot]:
    server.serve("/api", body, status, content_type="text/xml")
    return EntsoeSource(session, "tok", PRICING, url=server.url + "/api").fetch(utc("2026-05-31T10:00+02:00"))


def test_entsoe_prefers_15_minutes_and_fills_omitted_positions(server: RecordedServer,
                                                               session: requests.Session) -> None:
    slots = entsoe(server, session, fixture("prices/entsoe_DE_60M_15M_built.xml"))
    assert len(slots) == 192  # both days in quarter hours; the hourly series lost everywhere
    assert all(s.end - s.start == timedelta(minutes=15) for s in slots)
    assert_contiguous(slots)
    by_start = {s.start: s.import_ct_per_kwh for s in slots}
    start = utc("2026-05-30T22:00Z")
    quarter = timedelta(minutes=15)
    # Day 1 positions 45-50 are omitted (A03): they repeat position 44 (0 €/MWh).
    assert by_start[start + 43 * quarter] == pytest.approx(end_price(0.0))
    assert by_start[start + 49 * quarter] == pytest.approx(end_price(0.0))
    # Position 51 is negative and stays negative, also where positions 52-61 repeat it.
    assert by_start[start + 50 * quarter] == pytest.approx(end_price(-0.01))
    assert by_start[start + 60 * quarter] == pytest.approx(end_price(-0.01))
    assert by_start[start + 61 * quarter] == pytest.approx(end_price(0.0))
    # Day 2 position 57 repeats position 56 (86.35); position 58 is given again.
    day2 = utc("2026-05-31T22:00Z")
    assert by_start[day2 + 55 * quarter] == pytest.approx(end_price(86.35))
    assert by_start[day2 + 56 * quarter] == pytest.approx(end_price(86.35))
    assert by_start[day2 + 57 * quarter] == pytest.approx(end_price(86.95))
    query = server.requests[-1].query
    assert query == {"documentType": "A44", "in_Domain": "10Y1001A1001A82H", "out_Domain": "10Y1001A1001A82H",
                     "periodStart": "202605302200", "periodEnd": "202606012200", "securityToken": "tok"}


def test_entsoe_hourly_series_fills_where_no_quarter_hours(server: RecordedServer, session: requests.Session) -> None:
    text = fixture("prices/entsoe_DE_60M_15M_built.xml").decode()
    head, _, rest = text.partition("<resolution>PT15M</resolution>")  # first PT15M period: day 1
    second = rest.index("<Period>")
    # Drop day 1 of the 15-minute series: keep its day 2 only.
    period_start = head.rindex("<Period>")
    text = head[:period_start] + rest[second:]
    slots = entsoe(server, session, text.encode())
    hourly = [s for s in slots if s.end - s.start == timedelta(hours=1)]
    assert len(hourly) == 24 and len(slots) == 24 + 96
    assert_contiguous(slots)
    by_start = {s.start: s.import_ct_per_kwh for s in hourly}
    assert by_start[utc("2026-05-31T10:00Z")] == pytest.approx(end_price(-0.01))
    assert by_start[utc("2026-05-31T11:00Z")] == pytest.approx(end_price(-0.01))  # positions 14, 15 omitted (A03)
    assert by_start[utc("2026-05-31T12:00Z")] == pytest.approx(end_price(-0.01))
    assert by_start[utc("2026-05-31T13:00Z")] == pytest.approx(end_price(0.0))


def test_entsoe_92_quarter_hour_day_with_a03(server: RecordedServer, session: requests.Session) -> None:
    slots = entsoe(server, session, fixture("prices/entsoe_2026-03-29_A03.xml"))
    assert len(slots) == 92
    assert slots[-1].end - slots[0].start == timedelta(hours=23)
    assert_contiguous(slots)
    assert slots[62].import_ct_per_kwh == slots[61].import_ct_per_kwh  # position 63 omitted: repeated


@pytest.mark.parametrize(("body", "status", "fragment"), [
    (fixture("prices/entsoe_no_data.xml"), 200, "No matching data found"),
    (b'<?xml version="1.0"?><Acknowledgement_MarketDocument xmlns="urn:x"><Reason><code>999</code>'
     b"<text>Unauthorized. Missing or invalid security token</text></Reason></Acknowledgement_MarketDocument>",
     401, "invalid security token (token wrong?)"),
    (b"<html><body>Unauthorized</body></html", 401, "not readable XML"),
    (b"<Publication_MarketDocument><TimeSeries><Period>", 200, "not readable XML"),
    (b'<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY a "aaaa">]><Publication_MarketDocument/>', 200, "refused"),
    (b"<Something/>", 200, "unexpected document"),
    (b"<Publication_MarketDocument/>", 200, "no prices"),
    (fixture("prices/entsoe_DE_60M_15M_built.xml").replace(b">EUR<", b">PLN<"), 200, "unit PLN/MWH"),
    (fixture("prices/entsoe_DE_60M_15M_built.xml").replace(b"PT15M", b"PT30M"), 200, "PT30M"),
    (fixture("prices/entsoe_DE_60M_15M_built.xml").replace(b"<price.amount>129.91<", b"<price.amount>x<"),
     200, "no readable price"),
    (fixture("prices/entsoe_DE_60M_15M_built.xml").replace(b"<position>96<", b"<position>97<"), 200,
     "outside its period"),
    (fixture("prices/entsoe_DE_60M_15M_built.xml").replace(b"<price.amount>129.91<", b"<price.amount>NaN<"),
     200, "price NaN"),
])
def test_entsoe_failure_kinds(server: RecordedServer, session: requests.Session, body: bytes, status: int,
                              fragment: str) -> None:
    with pytest.raises(PriceError) as caught:
        entsoe(server, session, body, status)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("ENTSO-E A44")


def test_entsoe_bidding_zone_must_be_known() -> None:
    with requests.Session() as s, pytest.raises(ValueError):
        EntsoeSource(s, "t", PRICING, bidding_zone="Bavaria")
    with requests.Session() as s:
        assert EntsoeSource(s, "t", PRICING, bidding_zone="10YAT-APG------L").area == "10YAT-APG------L"


# --------------------------------------------------------------------------- fixed


@pytest.mark.parametrize(("now", "today_slots"), [
    ("2026-05-01T12:00+02:00", 96),
    ("2026-03-29T12:00+02:00", 92),
    ("2025-10-26T12:00+01:00", 100),
])
def test_fixed_price_today_and_tomorrow(now: str, today_slots: int) -> None:
    slots = FixedSource(fixed_ct_per_kwh=31.5, feed_in_ct_per_kwh=8.1).fetch(utc(now))
    assert len(slots) == today_slots + 96
    assert_contiguous(slots)
    assert {s.import_ct_per_kwh for s in slots} == {31.5}
    assert {s.feed_in_ct_per_kwh for s in slots} == {8.1}
    assert slots[0].start.astimezone(LOCAL_TZ).time() == time(0)


def test_fixed_windows_in_local_time_across_midnight_and_dst() -> None:
    source = FixedSource(fixed_ct_per_kwh=30.0, feed_in_ct_per_kwh=0.0, windows=(
        PriceWindow(22 * 60, 6 * 60, 22.5), PriceWindow(17 * 60, 20 * 60, 41.0)))
    slots = source.fetch(utc("2026-03-29T12:00+02:00"))  # a 23-hour day
    local = {s.start.astimezone(LOCAL_TZ).replace(tzinfo=None): s.import_ct_per_kwh for s in slots}
    assert local[datetime(2026, 3, 29, 0, 0)] == 22.5
    assert local[datetime(2026, 3, 29, 5, 45)] == 22.5
    assert local[datetime(2026, 3, 29, 6, 0)] == 30.0
    assert local[datetime(2026, 3, 29, 17, 0)] == 41.0
    assert local[datetime(2026, 3, 29, 19, 45)] == 41.0
    assert local[datetime(2026, 3, 29, 20, 0)] == 30.0
    assert local[datetime(2026, 3, 29, 22, 0)] == 22.5
    assert local[datetime(2026, 3, 30, 23, 45)] == 22.5
    assert datetime(2026, 3, 29, 2, 0) not in local  # the skipped hour does not exist
    assert len(slots) == 92 + 96


def test_fixed_without_a_price_outside_the_windows_is_an_error() -> None:
    source = FixedSource(fixed_ct_per_kwh=None, feed_in_ct_per_kwh=0.0, windows=(PriceWindow(22 * 60, 6 * 60, 20),))
    with pytest.raises(PriceError, match="no price for 06:00"):
        source.fetch(utc("2026-05-01T12:00+02:00"))
