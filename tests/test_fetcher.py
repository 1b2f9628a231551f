"""The fetcher thread: back-off on a fake clock, the publication schedule, and that nobody waits for it."""

from __future__ import annotations

import threading
import time as systime
from datetime import datetime, time, timedelta, timezone
from typing import Any

import pytest
import requests

from planning.fetcher import (
    Fetcher,
    FetchSchedule,
    FetchState,
    backoff_s,
    build_fetcher,
    build_price_source,
    build_pv_source,
    next_price_fetch,
)
from planning.forecasts import ForecastSolarSource, OpenMeteoSource
from planning.model import PriceSlot
from planning.prices import EnergyChartsSource, FixedSource, SpotPricing, TibberSource
from planning.tariff_config import ForecastConfig, PvPlane, TariffConfig
from tests.helpers import wait_until
from tests.recorded_server import RecordedServer, fixture


class WallClock:
    """Aware UTC time that moves only when the test says so."""

    def __init__(self, start: str) -> None:
        self.now = datetime.fromisoformat(start).astimezone(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def set(self, moment: datetime) -> None:
        self.now = moment


def energy_charts(session: requests.Session, server: RecordedServer, timeout_s: float = 5.0) -> EnergyChartsSource:
    return EnergyChartsSource(session, SpotPricing(), url=server.url, timeout_s=timeout_s)


def test_backoff_doubles_to_30_minutes_and_a_success_resets_it(server: RecordedServer,
                                                                session: requests.Session) -> None:
    clock = WallClock("2026-05-01T10:00+02:00")
    updates: list[FetchState[Any]] = []
    fetcher = Fetcher(energy_charts(session, server), clock=clock, on_update=updates.append)
    server.serve("/price", b"Service Unavailable", 503)
    waits = []
    for _ in range(8):
        fetcher.step()
        state = fetcher.prices()
        assert state.next_attempt_at is not None
        waits.append((state.next_attempt_at - clock.now).total_seconds())
        assert fetcher.step() == pytest.approx(min(60.0, waits[-1]))  # not due yet: no request, wait reported
        clock.set(state.next_attempt_at)
    assert waits == [60, 120, 240, 480, 960, 1800, 1800, 1800]
    assert server.count() == 8
    state = fetcher.prices()
    assert state.failures == 8 and "HTTP 503" in (state.error or "") and state.slots == () and state.fetched_at is None

    server.serve("/price", fixture("prices/energy_charts_price_2026-05-01.json"))
    fetcher.step()
    state = fetcher.prices()
    assert state.error is None and state.failures == 0 and len(state.slots) == 96
    assert state.fetched_at == clock.now
    assert len(updates) == 9 and updates[-1] is state

    server.serve("/price", b"", 500)  # the next failure starts again at one minute
    clock.set(state.next_attempt_at or clock.now)
    fetcher.step()
    state = fetcher.prices()
    assert (state.next_attempt_at - clock.now) == timedelta(minutes=1)  # type: ignore[operator]
    assert len(state.slots) == 96 and state.error is not None  # the last good prices are kept


def test_backoff_formula() -> None:
    schedule = FetchSchedule()
    assert [backoff_s(n, schedule) for n in range(1, 8)] == [60, 120, 240, 480, 960, 1800, 1800]


def slots_until(end: datetime) -> list[PriceSlot]:
    return [PriceSlot(end - timedelta(minutes=15), end, 30.0, 7.9)]


@pytest.mark.parametrize(("local_now", "has_tomorrow", "expected_local"), [
    ("2026-05-01T10:00", False, "2026-05-01T11:00"),  # hourly
    ("2026-05-01T12:20", False, "2026-05-01T13:00"),  # tomorrow's prices are published from 13:00
    ("2026-05-01T13:05", False, "2026-05-01T13:15"),  # every 10 minutes while they are missing
    ("2026-05-01T14:55", False, "2026-05-01T15:05"),
    ("2026-05-01T15:10", False, "2026-05-01T16:10"),  # still missing: hourly again
    ("2026-05-01T13:20", True, "2026-05-01T14:20"),
])
def test_price_refresh_schedule(local_now: str, has_tomorrow: bool, expected_local: str) -> None:
    tz = FixedSource(fixed_ct_per_kwh=1, feed_in_ct_per_kwh=0).tz
    now = datetime.fromisoformat(local_now).replace(tzinfo=tz)
    end_of_tomorrow = datetime(2026, 5, 3, tzinfo=tz)
    slots = slots_until(end_of_tomorrow if has_tomorrow else end_of_tomorrow - timedelta(days=1))
    expected = datetime.fromisoformat(expected_local).replace(tzinfo=tz)
    assert next_price_fetch(now.astimezone(timezone.utc), slots, FetchSchedule()) == expected


def test_rate_limit_retry_time_beats_the_backoff(server: RecordedServer, session: requests.Session) -> None:
    clock = WallClock("2026-04-15T02:10:00+02:00")
    plane = PvPlane(52.52, 13.42, 30, -90, 2.5)
    server.serve("/price", fixture("prices/energy_charts_price_2026-05-01.json"))
    server.serve("/estimate/52.52/13.42/30/-90/2.5", fixture("forecast/forecast_solar_ratelimit_built.json"), 429)
    fetcher = Fetcher(energy_charts(session, server), ForecastSolarSource(session, [plane], url=server.url),
                      clock=clock)
    fetcher.step()
    pv = fetcher.pv()
    assert pv is not None and pv.failures == 1 and "rate limit" in (pv.error or "")
    assert pv.next_attempt_at == datetime.fromisoformat("2026-04-15T02:48:53+02:00")  # not 1 minute
    assert fetcher.prices().error is None


def test_an_unexpected_exception_does_not_end_the_thread(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name = "broken"

        def fetch(self, now: datetime) -> list[PriceSlot]:
            raise KeyError("price")

    def failing_receiver(state: FetchState[Any]) -> None:
        raise RuntimeError("receiver bug")

    fetcher = Fetcher(Broken(), on_update=failing_receiver, schedule=FetchSchedule(backoff_first_s=0.05))
    fetcher.start()
    try:
        wait_until(lambda: fetcher.prices().failures >= 2, 5, "two failed attempts in the thread")
        assert "unexpected error (KeyError" in (fetcher.prices().error or "")
        assert fetcher._thread is not None and fetcher._thread.is_alive()
    finally:
        fetcher.stop()
    assert fetcher._thread is not None and not fetcher._thread.is_alive()


def test_nobody_waits_for_a_hanging_price_server(server: RecordedServer, session: requests.Session) -> None:
    """While the price server hangs, the fetch runs in its own thread and every reader is answered at once."""
    release = threading.Event()
    server.serve("/price", fixture("prices/energy_charts_price_2026-05-01.json"), hang=release)
    arrived = threading.Event()
    fetcher = Fetcher(energy_charts(session, server, timeout_s=30),
                      on_update=lambda state: arrived.set() if state.slots else None)
    fetcher.start()
    try:
        wait_until(lambda: server.count("/price") == 1, 5, "the fetch to hang in the server")
        slowest = 0.0
        for _ in range(50):  # what the control cycle or the web thread would do meanwhile
            started = systime.monotonic()
            state = fetcher.prices()
            slowest = max(slowest, systime.monotonic() - started)
            assert state.slots == () and state.error is None and state.fetched_at is None
        assert slowest < 0.05
        assert not arrived.is_set()
        release.set()
        assert arrived.wait(10)
        assert len(fetcher.prices().slots) == 96
    finally:
        release.set()
        fetcher.stop()


def test_stop_ends_the_thread_without_waiting_for_the_schedule(server: RecordedServer) -> None:
    server.serve("/price", fixture("prices/energy_charts_price_2026-05-01.json"))
    fetcher = build_fetcher(TariffConfig("energy_charts", url=server.url), None)
    assert fetcher is not None
    fetcher.start()
    wait_until(lambda: fetcher.prices().fetched_at is not None, 10, "the first fetch")
    started = systime.monotonic()
    fetcher.stop()
    assert systime.monotonic() - started < 2  # the next fetch is an hour away; stop does not wait for it
    assert server.requests[0].headers["User-Agent"].startswith("marstek-pv-akku-steuerung")


def test_without_a_tariff_nothing_is_built() -> None:
    assert build_fetcher(None, None) is None
    assert build_fetcher(None, ForecastConfig("open_meteo", planes=(PvPlane(52, 13, 30, 0, 2),))) is None


def test_builders_follow_the_config(session: requests.Session) -> None:
    assert isinstance(build_price_source(TariffConfig("tibber", token="t"), session), TibberSource)
    fixed = build_price_source(TariffConfig("fixed", fixed_ct_per_kwh=30.0), session)
    assert isinstance(fixed, FixedSource) and fixed.fixed_ct_per_kwh == 30.0
    assert build_pv_source(ForecastConfig("none"), session) is None
    assert build_pv_source(None, session) is None
    plane = PvPlane(52, 13, 30, 0, 2)
    assert isinstance(build_pv_source(ForecastConfig("open_meteo", planes=(plane,)), session), OpenMeteoSource)
    assert isinstance(build_pv_source(ForecastConfig("forecast_solar", planes=(plane,)), session),
                      ForecastSolarSource)


def test_fixed_tariff_through_the_fetcher_has_tomorrow_at_once() -> None:
    clock = WallClock("2026-05-01T09:00+02:00")
    fetcher = build_fetcher(TariffConfig("fixed", fixed_ct_per_kwh=30.0, feed_in_ct_per_kwh=0.0), None, clock=clock)
    assert fetcher is not None
    fetcher.step()
    state = fetcher.prices()
    assert len(state.slots) == 192 and state.source == "fixed"
    assert state.next_attempt_at == clock.now + timedelta(hours=1)
    assert time(0) == state.slots[0].start.astimezone(fetcher.tz).time()
