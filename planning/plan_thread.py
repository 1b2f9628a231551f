"""The plan thread: every 15 minutes and when new prices arrive, a new plan into the status store.

It builds the planner's input (``PlanInput``) from the price fetcher's latest prices, the PV forecast
(optional), the load forecast from our own history (``load_forecast``), the fleet's state as the control
thread last published it, and the ``plan`` config; calls the pure planner; publishes the ``Plan``
(immutable) with ``StatusStore.publish_plan``. The control thread reads it every cycle
(``plan_mode.effective_mode``); nothing here ever waits on or touches the batteries.

Any failure (a planner bug, a damaged answer) is caught, logged, and published as a plan that is not
``ok`` with the problem: the control then runs ``auto`` everywhere (and logs the problem once, with the
staleness it alone can see). A plan that could not be made is retried after ``RETRY_S``, not only after
the full interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any, Protocol

from config_loader import BatteryConfig, PlanConfig
from control.i18n import Msg
from control.status_store import BatteryStatus, HistorySample, StatusStore
from integrations.history import HistoryBusy
from planning.load_forecast import DAY_S, DEFAULT_DAYS, QUARTER_S, forecast_load
from planning.model import FleetModel, Plan, PlanInput, PriceSlot, PvSlot

log = logging.getLogger("marstek")

PLAN_INTERVAL_S = 15 * 60.0
RETRY_S = 30.0  # a plan that failed (no battery yet, no current price) is tried again this soon
POLL_S = 1.0  # how often the thread looks for new prices (an Event) between plans
# At start the control thread has not read the batteries yet, nor the fetcher the prices: the first plan
# waits this long for both rather than showing "no battery" or "no price" for a moment.
STARTUP_GRACE_S = 60.0
# Usable energy of one Venus E / Venus D (5.12 kWh, marstek-modbus.md); the registers give no better figure
# on every firmware, so the plan counts this per battery.
VENUS_CAPACITY_WH = 5120.0


class PriceFeed(Protocol):
    """The price fetcher's latest answer (its own thread fetches; reading never waits on the network)."""

    def latest(self) -> Sequence[PriceSlot]:
        """The last good prices, sorted by start ([] before the first success)."""
        ...

    def error(self) -> str | None:
        """Why the last fetch failed (a message), None when it worked."""
        ...


class PvFeed(Protocol):
    """The PV forecast fetcher's latest answer."""

    def latest(self) -> Sequence[PvSlot]:
        """The last good forecast, sorted by start ([] before the first success)."""
        ...


class FetchStateLike(Protocol):
    """What a fetcher publishes per source (``planning.fetcher.FetchState``): the last good slots, the last error."""

    @property
    def slots(self) -> Sequence[Any]: ...

    @property
    def error(self) -> str | None: ...


class StateFeed:
    """A fetcher's state getter (``Fetcher.prices`` / ``Fetcher.pv``) seen as a ``PriceFeed`` / ``PvFeed``."""

    def __init__(self, state: Callable[[], FetchStateLike | None]) -> None:
        self.state = state

    def latest(self) -> Sequence[Any]:
        state = self.state()
        return tuple(state.slots) if state is not None else ()

    def error(self) -> str | None:
        state = self.state()
        return state.error if state is not None else None


@dataclass(frozen=True)
class PlanFeeds:
    """What the price and forecast fetchers hand the plan thread: their latest answers and the Event they set
    when new prices (or a new forecast) arrived."""

    prices: PriceFeed
    pv: PvFeed | None
    updated: threading.Event


def fleet_model(batteries: Sequence[BatteryStatus], battery: BatteryConfig, plan: PlanConfig) -> FleetModel | None:
    """The fleet as one battery from the control thread's last status; None without any known SoC.

    Only batteries that are online with a SoC count (an offline one can neither charge nor discharge)."""
    known = [b for b in batteries if b.online and b.soc_pct is not None]
    if not known:
        return None
    max_w = float(sum(b.max_power_w for b in known))
    return FleetModel(
        capacity_wh=VENUS_CAPACITY_WH * len(known),
        soc_pct=sum(b.soc_pct or 0.0 for b in known) / len(known),  # equal capacities: the plain mean
        reserve_soc_pct=plan.reserve_soc_pct,
        max_soc_pct=battery.max_soc_for_charge,
        max_charge_w=max_w,
        max_discharge_w=max_w,
        grid_charge_max_w=min(plan.grid_charge_max_w, max_w),
        wear_ct_per_kwh=plan.wear_ct_per_kwh,
        min_soc_pct=battery.min_soc_for_discharge,
    )


def pv_per_slot(forecast: Sequence[PvSlot], slots: Sequence[PriceSlot]) -> tuple[float | None, ...]:
    """The forecast's mean PV power over each price slot (time-weighted); None where it says nothing."""
    out: list[float | None] = []
    for slot in slots:
        covered_s = energy_ws = 0.0
        for pv in forecast:
            overlap_s = (min(slot.end, pv.end) - max(slot.start, pv.start)).total_seconds()
            if overlap_s > 0:
                covered_s += overlap_s
                energy_ws += pv.pv_w * overlap_s
        out.append(energy_ws / covered_s if covered_s > 0 else None)
    return tuple(out)


def failed_plan(now: datetime, problem: str) -> Plan:
    """A plan that is not ``ok``: the control runs ``auto`` everywhere and shows ``problem``."""
    return Plan(created=now, ok=False, problem=problem, slots=(), expected_cost_eur=None,
                expected_cost_without_plan_eur=None)


class PlanThread:
    """Makes a plan every ``interval_s`` and when ``wakeup`` is set (new prices); publishes it to ``store``."""

    def __init__(
        self,
        plan_cfg: PlanConfig,
        battery_cfg: BatteryConfig,
        store: StatusStore,
        prices: PriceFeed,
        planner: Callable[[PlanInput], Plan],
        *,
        pv: PvFeed | None = None,
        history: Callable[[datetime], Sequence[HistorySample]] | None = None,
        wakeup: threading.Event | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = PLAN_INTERVAL_S,
        tz: tzinfo | None = None,
    ) -> None:
        """``history(now)``: the samples of the last days (``load_forecast.history_reader``); ``wall_clock``:
        epoch seconds (the prices' time); ``clock``: monotonic seconds (the schedule); ``tz``: the household's
        local zone for the load profile (default: the machine's)."""
        self.plan_cfg = plan_cfg
        self.battery_cfg = battery_cfg
        self.store = store
        self.prices = prices
        self.planner = planner
        self.pv = pv
        self.history = history
        self.wakeup = wakeup or threading.Event()
        self.wall_clock = wall_clock
        self.clock = clock
        self.interval_s = interval_s
        self.tz = tz
        self.started_s = clock()
        self.next_plan_s = clock()  # the first plan as soon as the fleet's SoC is known
        # The PV forecast per quarter-hour as it was last known (epoch seconds of the quarter's start → W):
        # with it the load forecast reads the net history as house load (``load_forecast.split_history``).
        # Kept in memory for the history's days; after a restart the net history serves until it has filled.
        self.past_pv_w: dict[int, float] = {}

    def due(self) -> bool:
        """True when a plan is due: new prices arrived (``wakeup``) or the interval is over; the first one
        once the control thread has published a SoC and the fetcher's first answer is in (or after
        ``STARTUP_GRACE_S``)."""
        if self.store.plan() is None and self.clock() < self.started_s + STARTUP_GRACE_S:
            no_prices_yet = not self.prices.latest() and self.prices.error() is None
            if no_prices_yet or fleet_model(self.store.latest().batteries, self.battery_cfg, self.plan_cfg) is None:
                return False
        return self.wakeup.is_set() or self.clock() >= self.next_plan_s

    def run(self, stop: threading.Event) -> None:
        """Plan until ``stop`` is set."""
        while not stop.is_set():
            if self.due():
                self.plan_once()
            stop.wait(POLL_S)

    def plan_once(self) -> Plan:
        """Build the input, plan, publish; never raises (a failure is a plan that is not ``ok``)."""
        self.wakeup.clear()
        now = datetime.fromtimestamp(self.wall_clock(), timezone.utc)
        try:
            plan = self._plan(now)
        except Exception as exc:  # a planner bug or a damaged answer must not end the thread
            log.exception("%s", Msg("plan_failed", error=f"{type(exc).__name__}: {exc}"))
            plan = failed_plan(now, Msg("plan_failed", error=f"{type(exc).__name__}: {exc}"))
        self.store.publish_plan(plan)
        self.next_plan_s = self.clock() + (self.interval_s if plan.ok else min(RETRY_S, self.interval_s))
        return plan

    def plan_input(self, now: datetime) -> PlanInput | str:
        """The planner's input at ``now``, or the problem (an i18n.Msg) why there is none."""
        prices = tuple(sorted((p for p in self.prices.latest() if p.end > now), key=lambda p: p.start))
        if not prices or not prices[0].start <= now:
            error = self.prices.error()
            return Msg("plan_prices_failed", error=error) if error else Msg("plan_no_current_price")
        fleet = fleet_model(self.store.latest().batteries, self.battery_cfg, self.plan_cfg)
        if fleet is None:
            return Msg("plan_no_battery")
        pv = pv_per_slot(self.pv.latest(), prices) if self.pv is not None else None
        if pv is not None:
            self._remember_pv(prices, pv, now)
        samples: Sequence[HistorySample] = ()
        if self.history is not None:
            try:
                samples = self.history(now)
            except HistoryBusy as exc:  # a slow disk: plan without the history this time
                log.debug("load history not readable: %s", exc)
        load = forecast_load(samples, prices, now, pv_w=pv, tz=self.tz, past_pv_w=self.past_pv_w)
        return PlanInput(now=now, prices=prices, pv_w=pv if pv is not None else (None,) * len(prices),
                         load_w=load, fleet=fleet, peak_import_limit_w=self.plan_cfg.peak_import_limit_w,
                         tz=self.tz)

    def _remember_pv(self, prices: Sequence[PriceSlot], pv: Sequence[float | None], now: datetime) -> None:
        """Keep each quarter-hour's PV forecast (the latest one wins) for the history's days."""
        for slot, pv_w in zip(prices, pv, strict=True):
            if pv_w is None:
                continue
            t = int(slot.start.timestamp())
            while t < slot.end.timestamp():
                self.past_pv_w[t - t % QUARTER_S] = pv_w
                t += QUARTER_S
        oldest = now.timestamp() - (DEFAULT_DAYS + 1) * DAY_S
        for t in [t for t in self.past_pv_w if t < oldest]:
            del self.past_pv_w[t]

    def _plan(self, now: datetime) -> Plan:
        made = self.plan_input(now)
        if isinstance(made, str):
            return failed_plan(now, made)
        return self.planner(made)
