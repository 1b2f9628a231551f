"""PV forecast sources on built answers served from 127.0.0.1: parsing, planes summed, azimuth, rate limit."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from typing import Any

import pytest
import requests

from planning.forecasts import ForecastRateLimited, ForecastSolarSource, OpenMeteoSource
from planning.model import ForecastError
from planning.prices import LOCAL_TZ
from planning.tariff_config import PvPlane
from tests.recorded_server import RecordedServer, fixture

EAST = PvPlane(lat=52.52, lon=13.42, declination=30, azimuth=-90, kwp=2.5)
WEST = PvPlane(lat=52.52, lon=13.42, declination=30, azimuth=90, kwp=1.5)
QUARTER = timedelta(minutes=15)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)


NOW = utc("2026-04-14T18:56:01+02:00")  # message.info.time of the forecast.solar fixture


# --------------------------------------------------------------------------- forecast.solar


def test_forecast_solar_path_keeps_our_azimuth_convention(session: requests.Session) -> None:
    source = ForecastSolarSource(session, [EAST, WEST])
    assert source.path(EAST) == "/estimate/52.52/13.42/30/-90/2.5"  # east stays -90: same convention
    assert source.path(WEST) == "/estimate/52.52/13.42/30/90/1.5"


def test_forecast_solar_watts_become_quarter_hour_means(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/estimate/52.52/13.42/30/-90/2.5", fixture("forecast/forecast_solar_estimate_built.json"))
    slots = ForecastSolarSource(session, [EAST], url=server.url).fetch(NOW)
    assert len(slots) == 2 * 96  # 14 and 15 April, local days
    assert slots[0].start == utc("2026-04-14T00:00+02:00")
    assert all(b.start == a.end and a.end - a.start == QUARTER for a, b in pairwise(slots))
    by_start = {s.start: s.pv_w for s in slots}
    # 12:00 1481 W → 13:00 1319 W: the mean over 12:00–12:15 lies on that line at 12:07:30.
    assert by_start[utc("2026-04-14T12:00+02:00")] == pytest.approx(1481 - 162 * 0.125)
    assert by_start[utc("2026-04-14T03:00+02:00")] == 0.0  # night
    assert by_start[utc("2026-04-14T22:00+02:00")] == 0.0
    assert all(s.pv_w >= 0 for s in slots)
    raw = json.loads(fixture("forecast/forecast_solar_estimate_built.json"))
    for day, energy_wh in raw["result"]["watt_hours_day"].items():
        ours = sum(s.pv_w * 0.25 for s in slots if s.start.astimezone(LOCAL_TZ).date().isoformat() == day)
        assert ours == pytest.approx(energy_wh, rel=0.01)  # the service's own day energy
    assert server.requests[-1].headers["Accept"] == "application/json"


def test_forecast_solar_sums_planes(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/estimate/52.52/13.42/30/-90/2.5", fixture("forecast/forecast_solar_estimate_built.json"))
    raw = json.loads(fixture("forecast/forecast_solar_estimate_built.json"))
    raw["result"]["watts"] = {k: v // 2 for k, v in raw["result"]["watts"].items()}
    server.serve("/estimate/52.52/13.42/30/90/1.5", raw)
    one = ForecastSolarSource(session, [EAST], url=server.url).fetch(NOW)
    both = ForecastSolarSource(session, [EAST, WEST], url=server.url).fetch(NOW)
    by_start = {s.start: s.pv_w for s in one}
    noon = utc("2026-04-14T12:00+02:00")
    west_noon = 740 - (740 - 659) * 0.125  # 1481 // 2 → 1319 // 2
    assert {s.start: s.pv_w for s in both}[noon] == pytest.approx(by_start[noon] + west_noon)
    assert len(both) == len(one)


def test_forecast_solar_keeps_answers_and_respects_12_calls_an_hour(server: RecordedServer,
                                                                    session: requests.Session) -> None:
    for plane in (EAST, WEST):
        path = ForecastSolarSource(session, [plane]).path(plane)
        server.serve(path, fixture("forecast/forecast_solar_estimate_built.json"))
    source = ForecastSolarSource(session, [EAST, WEST], url=server.url)  # answers kept for an hour
    source.fetch(NOW)
    source.fetch(NOW + timedelta(minutes=59))
    assert server.count() == 2  # the second fetch used the kept answers
    source.fetch(NOW + timedelta(minutes=60))
    assert server.count() == 4

    eager = ForecastSolarSource(session, [EAST, WEST], url=server.url, min_interval_s=0)
    start = server.count()
    for k in range(6):
        eager.fetch(NOW + timedelta(minutes=k))
    assert server.count() - start == 12
    with pytest.raises(ForecastRateLimited) as caught:
        eager.fetch(NOW + timedelta(minutes=10))
    assert server.count() - start == 12  # the 13th and 14th call were not made
    assert caught.value.retry_at == NOW + timedelta(hours=1)
    assert "would exceed 12 an hour" in str(caught.value)
    eager.fetch(NOW + timedelta(minutes=61))  # the first two calls have left the window
    assert server.count() - start == 14


def test_forecast_solar_reads_ratelimit_remaining(server: RecordedServer, session: requests.Session) -> None:
    raw = json.loads(fixture("forecast/forecast_solar_estimate_built.json"))
    raw["message"]["ratelimit"]["remaining"] = 0
    server.serve("/estimate/52.52/13.42/30/-90/2.5", raw)
    source = ForecastSolarSource(session, [EAST], url=server.url, min_interval_s=0)
    assert source.fetch(NOW)
    assert source.ratelimit == {"period": 3600, "limit": 12, "remaining": 0}
    with pytest.raises(ForecastRateLimited):
        source.fetch(NOW + timedelta(minutes=5))
    assert server.count() == 1


def test_forecast_solar_429_gives_the_retry_time(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/estimate/52.52/13.42/30/-90/2.5", fixture("forecast/forecast_solar_ratelimit_built.json"), 429)
    source = ForecastSolarSource(session, [EAST], url=server.url)
    now = utc("2026-04-15T02:10:00+02:00")
    with pytest.raises(ForecastRateLimited) as caught:
        source.fetch(now)
    assert caught.value.retry_at == utc("2026-04-15T02:48:53+02:00")
    assert "HTTP 429" in str(caught.value) and "02:48" in str(caught.value)
    with pytest.raises(ForecastRateLimited):
        source.fetch(now + timedelta(minutes=20))
    assert server.count() == 1  # no call before the retry time


def solar_answer(**result: Any) -> dict[str, Any]:
    raw = json.loads(fixture("forecast/forecast_solar_estimate_built.json"))
    raw["result"].update(result)
    return raw


@pytest.mark.parametrize(("answer", "status", "fragment"), [
    (b"<html>Bad Gateway</html>", 502, "HTTP 502"),
    ({"result": None, "message": {"code": 422, "type": "error", "text": "Invalid plane, kwp must be > 0"}},
     422, "HTTP 422"),
    ({"result": None, "message": {"code": 422, "type": "error", "text": "Invalid plane"}}, 200, "Invalid plane"),
    (b"not json", 200, "not JSON"),
    (solar_answer(watts={}), 200, "lacks result.watts"),
    (solar_answer(watts={"2026-04-14 12:00:00": "1481"}), 200, "not a number"),
    (solar_answer(watts={"2026-04-14 12:00:00": -5}), 200, "implausible"),
    (solar_answer(watts={"gestern": 5}), 200, "not readable"),
])
def test_forecast_solar_failure_kinds(server: RecordedServer, session: requests.Session, answer: Any, status: int,
                                      fragment: str) -> None:
    server.serve("/estimate/52.52/13.42/30/-90/2.5", answer, status)
    with pytest.raises(ForecastError) as caught:
        ForecastSolarSource(session, [EAST], url=server.url).fetch(NOW)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("forecast.solar /estimate/52.52/13.42/30/-90/2.5")


def test_forecast_solar_timeout(server: RecordedServer, session: requests.Session) -> None:
    release = threading.Event()
    server.serve("/estimate/52.52/13.42/30/-90/2.5", fixture("forecast/forecast_solar_estimate_built.json"),
                 hang=release)
    with pytest.raises(ForecastError, match=r"no answer within 0\.3 s"):
        ForecastSolarSource(session, [EAST], url=server.url, timeout_s=0.3).fetch(NOW)
    release.set()


# --------------------------------------------------------------------------- Open-Meteo


def test_open_meteo_irradiance_becomes_pv_power(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/v1/forecast", fixture("forecast/open_meteo_gti.json"))
    slots = OpenMeteoSource(session, [EAST], url=server.url).fetch(utc("2026-05-01T06:00Z"))
    raw = json.loads(fixture("forecast/open_meteo_gti.json"))["minutely_15"]
    assert len(slots) == 3 * 96 - 8  # the last 8 values are null: absent, not 0
    assert all(a.end == b.start for a, b in pairwise(slots))
    by_start = {s.start: s.pv_w for s in slots}
    for stamp, gti in zip(raw["time"], raw["global_tilted_irradiance"], strict=True):
        if gti is None:
            continue
        start = datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc) - QUARTER  # preceding 15 minutes
        assert by_start[start] == pytest.approx(max(gti, 0) / 1000 * 2.5 * 1000 * 0.85)
    assert min(by_start.values()) == 0.0  # the negative night value is darkness
    query = server.requests[-1].query
    assert query == {"latitude": "52.52", "longitude": "13.42", "minutely_15": "global_tilted_irradiance",
                     "tilt": "30", "azimuth": "-90", "timezone": "UTC", "forecast_days": "3"}


def test_open_meteo_sums_planes(server: RecordedServer, session: requests.Session) -> None:
    server.serve("/v1/forecast", fixture("forecast/open_meteo_gti.json"))
    one = OpenMeteoSource(session, [EAST], url=server.url).fetch(utc("2026-05-01T06:00Z"))
    both = OpenMeteoSource(session, [EAST, WEST], url=server.url).fetch(utc("2026-05-01T06:00Z"))
    assert [s.pv_w for s in both] == pytest.approx([s.pv_w * (2.5 + 1.5) / 2.5 for s in one])
    assert [r.query["azimuth"] for r in server.requests[-2:]] == ["-90", "90"]


def meteo_answer(**changes: Any) -> dict[str, Any]:
    raw = json.loads(fixture("forecast/open_meteo_gti.json"))
    raw.update(changes)
    return raw


@pytest.mark.parametrize(("answer", "status", "fragment"), [
    ({"error": True, "reason": "Parameter 'tilt' must be between 0 and 90"}, 400, "must be between 0 and 90"),
    (b"<html>504 Gateway Time-out</html>", 504, "HTTP 504"),
    (b"{", 200, "not JSON"),
    (meteo_answer(minutely_15_units={"time": "iso8601", "global_tilted_irradiance": "kW/m²"}), 200, "unit 'kW/m²'"),
    (meteo_answer(minutely_15={"time": ["2026-05-01T12:00"], "global_tilted_irradiance": [856000.0]}), 200,
     "implausible"),
    (meteo_answer(minutely_15={"time": ["2026-05-01T12:00"], "global_tilted_irradiance": []}), 200,
     "unequal length"),
    (meteo_answer(minutely_15={"time": ["2026-05-01T12:00"], "global_tilted_irradiance": [None]}), 200,
     "no forecast"),
    (meteo_answer(minutely_15=None), 200, "lacks minutely_15"),
])
def test_open_meteo_failure_kinds(server: RecordedServer, session: requests.Session, answer: Any, status: int,
                                  fragment: str) -> None:
    server.serve("/v1/forecast", answer, status)
    with pytest.raises(ForecastError) as caught:
        OpenMeteoSource(session, [EAST], url=server.url).fetch(utc("2026-05-01T06:00Z"))
    assert fragment in str(caught.value)
