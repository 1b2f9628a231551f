"""The fetcher thread: prices and the PV forecast fetched in their own thread, never in the control cycle.

Public API (what main.py and the plan thread use)::

    fetcher = build_fetcher(config.tariff, config.forecast, on_update=callback)   # None: nothing configured
    fetcher.start()                  # thread "price-fetcher"; the first fetch runs at once
    fetcher.prices() -> FetchState[PriceSlot] | None   # latest snapshot; never waits for the network
    fetcher.pv() -> FetchState[PvSlot] | None           # None without a PV forecast source
    fetcher.stop(timeout_s=5.0)      # sets the stop event, joins the thread, closes the HTTP session

``FetchState`` is immutable: the last good ``slots`` (kept through later failures, so old slots simply
run out of time), ``fetched_at`` (when they arrived), ``error`` (the last attempt's failure, None after a
success), ``failures`` (consecutive) and ``next_attempt_at``. ``on_update(state)`` is called from the
fetcher thread after every attempt, e.g. to publish the state into the status store and to re-plan
when new prices arrived; it must not block.

Schedule: prices every hour; while tomorrow's prices are missing, at 13:00 local time and then every
10 minutes until 15:00 (the day-ahead auction publishes around 12:45–13:15). The PV forecast every hour
(forecast.solar's own limiter keeps within 12 calls an hour). A failure is retried after 1 minute,
doubling to at most 30 minutes (or later, when a rate limit says so); a success resets this.
The loop waits on the stop event, never sleeps; ``step()`` does one round and is what the tests drive
with a fake clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta, timezone
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

import requests

from control.i18n import Msg
from planning.forecasts import ForecastSolarSource, OpenMeteoSource
from planning.model import ForecastError, PriceError, PriceSlot, PriceSource, PvForecastSource, PvSlot
from planning.prices import (
    LOCAL_TZ,
    AwattarSource,
    EnergyChartsSource,
    EntsoeSource,
    FixedSource,
    SpotPricing,
    TibberSource,
    local_days,
)
from planning.tariff_config import ForecastConfig, TariffConfig

log = logging.getLogger(__name__)

SlotT = TypeVar("SlotT", PriceSlot, PvSlot)


@dataclass(frozen=True)
class FetchSchedule:
    """When to fetch; every duration in seconds."""

    price_refresh_s: float = 3600.0
    publish_from: time = time(13, 0)  # local: the day-ahead prices for tomorrow appear from about now
    publish_until: time = time(15, 0)
    publish_poll_s: float = 600.0
    pv_refresh_s: float = 3600.0
    backoff_first_s: float = 60.0
    backoff_max_s: float = 1800.0
    max_wait_s: float = 60.0  # the loop looks at the clock at least this often (a wall clock may jump)


@dataclass(frozen=True)
class FetchState(Generic[SlotT]):
    """One source's latest result (immutable; safe to hand to any thread)."""

    kind: str  # "prices" or "pv"
    source: str  # the source's name, e.g. "energy_charts"
    slots: tuple[SlotT, ...] = ()
    fetched_at: datetime | None = None  # when ``slots`` arrived (aware UTC); None: never
    error: str | None = None  # the last attempt's failure; None after a success
    failures: int = 0  # consecutive failed attempts
    next_attempt_at: datetime | None = None


def backoff_s(failures: int, schedule: FetchSchedule) -> float:
    """Wait after ``failures`` consecutive failures: 1, 2, 4 … minutes, at most 30."""
    return min(schedule.backoff_first_s * 2 ** max(0, failures - 1), schedule.backoff_max_s)


def next_price_fetch(now: datetime, slots: Sequence[PriceSlot], schedule: FetchSchedule,
                     tz: ZoneInfo = LOCAL_TZ) -> datetime:
    """When to fetch prices again after a success at ``now``."""
    _, _, end_of_tomorrow = local_days(now, tz)
    regular = now + timedelta(seconds=schedule.price_refresh_s)
    if slots and max(s.end for s in slots) >= end_of_tomorrow:
        return regular
    local = now.astimezone(tz)
    if local.time() < schedule.publish_from:
        publish = datetime.combine(local.date(), schedule.publish_from, tz).astimezone(timezone.utc)
        return min(regular, publish)
    if local.time() < schedule.publish_until:
        return now + timedelta(seconds=schedule.publish_poll_s)
    return regular


class _Job(Generic[SlotT]):
    """One source, its state and when it is due (used by the fetcher thread only)."""

    def __init__(self, kind: str, source: Any, error_types: tuple[type[Exception], ...],
                 next_after_success: Callable[[datetime, Sequence[SlotT]], datetime]) -> None:
        self.kind = kind
        self.source = source
        self.error_types = error_types
        self.next_after_success: Callable[[datetime, Sequence[SlotT]], datetime] = next_after_success
        self.state: FetchState[SlotT] = FetchState(kind, getattr(source, "name", type(source).__name__))
        self.due_at: datetime | None = None  # None: at once


class Fetcher:
    """Fetches prices and the PV forecast in its own thread; see the module docstring."""

    def __init__(self, prices: PriceSource, pv: PvForecastSource | None = None, *,
                 clock: Callable[[], datetime] | None = None, schedule: FetchSchedule | None = None,
                 on_update: Callable[[FetchState[Any]], None] | None = None, stop: threading.Event | None = None,
                 session: requests.Session | None = None, tz: ZoneInfo = LOCAL_TZ) -> None:
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.schedule = schedule or FetchSchedule()
        self.on_update = on_update
        self.tz = tz
        self._stop = stop or threading.Event()
        self._session = session  # closed at stop(): the sources' shared session, used by this thread only
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._price_job: _Job[PriceSlot] = _Job(
            "prices", prices, (PriceError,), lambda now, slots: next_price_fetch(now, slots, self.schedule, self.tz))
        self._pv_job: _Job[PvSlot] | None = None
        if pv is not None:
            self._pv_job = _Job("pv", pv, (ForecastError,),
                                lambda now, _slots: now + timedelta(seconds=self.schedule.pv_refresh_s))

    # -- read side: any thread

    def prices(self) -> FetchState[PriceSlot]:
        """The latest price state (immediately; the network is never waited for)."""
        with self._lock:
            return self._price_job.state

    def pv(self) -> FetchState[PvSlot] | None:
        """The latest PV forecast state, or None without a PV source."""
        with self._lock:
            return self._pv_job.state if self._pv_job is not None else None

    # -- the thread

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="price-fetcher", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; a request under way ends by its own timeout at the latest."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._session is not None and (self._thread is None or not self._thread.is_alive()):
            self._session.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait_s = self.step()
            self._stop.wait(wait_s)

    def step(self) -> float:
        """Run every due fetch once; return the seconds until the next one is due (capped by ``max_wait_s``)."""
        jobs: list[_Job[Any]] = [self._price_job] + ([self._pv_job] if self._pv_job is not None else [])
        for job in jobs:
            if self._stop.is_set():
                break
            if job.due_at is None or self.clock() >= job.due_at:
                self._attempt(job)
        now = self.clock()
        waits = [(job.due_at - now).total_seconds() for job in jobs if job.due_at is not None]
        return max(0.0, min([self.schedule.max_wait_s, *waits]))

    def _attempt(self, job: _Job[Any]) -> None:
        now = self.clock()
        try:
            slots = tuple(job.source.fetch(now))
        except job.error_types as exc:
            self._failed(job, now, str(exc), getattr(exc, "retry_at", None))
        except Exception as exc:  # a bug in a source must not end the thread; it is retried like a failure
            log.exception(Msg("fetch_failed_unexpectedly", kind=job.kind, source=job.state.source))
            self._failed(job, now, f"{job.state.source}: unexpected error ({type(exc).__name__}: {exc})", None)
        else:
            if job.state.error is not None:
                log.info(Msg("fetch_available_again", kind=job.kind, source=job.state.source, count=len(slots)))
            job.due_at = job.next_after_success(now, slots)
            self._publish(job, replace(job.state, slots=slots, fetched_at=now, error=None, failures=0,
                                       next_attempt_at=job.due_at))

    def _failed(self, job: _Job[Any], now: datetime, message: str, retry_at: datetime | None) -> None:
        failures = job.state.failures + 1
        due = now + timedelta(seconds=backoff_s(failures, self.schedule))
        if isinstance(retry_at, datetime) and retry_at > due:
            due = retry_at
        job.due_at = due
        level = logging.WARNING if message != job.state.error else logging.DEBUG
        log.log(level, Msg("fetch_failed", kind=job.kind, error=message, attempt=failures,
                           time=due.astimezone(self.tz).strftime("%H:%M:%S")))
        self._publish(job, replace(job.state, error=message, failures=failures, next_attempt_at=due))

    def _publish(self, job: _Job[Any], state: FetchState[Any]) -> None:
        with self._lock:
            job.state = state
        if self.on_update is not None:
            try:
                self.on_update(state)
            except Exception:  # the receiver's bug must not stop the fetching
                log.exception(Msg("fetch_receiver_failed", kind=job.kind))


def build_price_source(cfg: TariffConfig, session: requests.Session, tz: ZoneInfo = LOCAL_TZ) -> PriceSource:
    """The price source a ``tariff`` section describes."""
    pricing = SpotPricing(cfg.markup_ct_per_kwh, cfg.vat_pct, cfg.feed_in_ct_per_kwh)
    if cfg.type == "energy_charts":
        return EnergyChartsSource(session, pricing, url=cfg.url, bidding_zone=cfg.bidding_zone, tz=tz)
    if cfg.type == "awattar":
        return AwattarSource(session, pricing, url=cfg.url, tz=tz)
    if cfg.type == "tibber":
        return TibberSource(session, cfg.token or "", feed_in_ct_per_kwh=cfg.feed_in_ct_per_kwh, url=cfg.url)
    if cfg.type == "entsoe":
        return EntsoeSource(session, cfg.token or "", pricing, url=cfg.url, bidding_zone=cfg.bidding_zone, tz=tz)
    if cfg.type == "fixed":
        return FixedSource(fixed_ct_per_kwh=cfg.fixed_ct_per_kwh, feed_in_ct_per_kwh=cfg.feed_in_ct_per_kwh,
                           windows=cfg.windows, tz=tz)
    raise ValueError(f"unknown tariff type {cfg.type!r}")


def build_pv_source(cfg: ForecastConfig | None, session: requests.Session,
                    tz: ZoneInfo = LOCAL_TZ) -> PvForecastSource | None:
    """The PV forecast source a ``forecast`` section describes; None for type "none" or no section."""
    if cfg is None or cfg.type == "none":
        return None
    if cfg.type == "forecast_solar":
        return ForecastSolarSource(session, cfg.planes, url=cfg.url, tz=tz)
    if cfg.type == "open_meteo":
        return OpenMeteoSource(session, cfg.planes, url=cfg.url)
    raise ValueError(f"unknown forecast type {cfg.type!r}")


def build_fetcher(tariff: TariffConfig | None, forecast: ForecastConfig | None, *,
                  clock: Callable[[], datetime] | None = None,
                  on_update: Callable[[FetchState[Any]], None] | None = None,
                  schedule: FetchSchedule | None = None, stop: threading.Event | None = None) -> Fetcher | None:
    """A fetcher for the configured sources, not started; None without a ``tariff`` section (nothing is fetched).

    A PV forecast without prices is not fetched either: the plan needs prices first.
    """
    if tariff is None:
        return None
    session = requests.Session()
    session.headers["User-Agent"] = "marstek-pv-akku-steuerung (+zero feed-in; price planning)"
    return Fetcher(build_price_source(tariff, session), build_pv_source(forecast, session), clock=clock,
                   schedule=schedule, on_update=on_update, stop=stop, session=session)
