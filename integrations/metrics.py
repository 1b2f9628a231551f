"""Prometheus metrics for ``GET /metrics``, with the official ``prometheus_client`` library.

A custom collector reads the latest status snapshot at every scrape, so nothing is counted twice and
the control thread does no extra work. The counters come from the control loop's own monotonic
counters (``StatusSnapshot.counters``); a counter never goes backwards during a run (``_Monotonic``
holds the highest value seen, also across a snapshot that lacks it, e.g. before the first cycle).

Money (only with a ``tariff``): ``marstek_import_price_ct_per_kwh`` is the import price of the current
slot (absent while no price is known: never 0), and four counters in euro from the history's running
totals (stored in its database, so they survive restarts): ``marstek_cost_eur_total`` (import cost at
positive prices), ``marstek_cost_negative_eur_total`` (credited for imports at negative prices),
``marstek_saved_eur_total`` and ``marstek_saved_negative_eur_total`` (the positive and negative parts of
the battery's saving; the net saving is their difference). Each only ever grows, as a counter must.

The plan (only with a ``plan`` section and a tariff): ``marstek_plan_mode{mode="auto"|"hold"|"charge"}``, an
enum-style gauge (1 for the mode the plan asks for now, 0 for the others; ``auto`` while it cannot drive), and
``marstek_plan_enabled`` (the plan switch, 1 on / 0 off). Both absent without a plan.

Signs: grid power + import / - export; battery power and setpoints + discharge / - charge (W).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from config_loader import unit_uid
from control.status_store import BatteryStatus, StatusStore
from planning.plan_mode import plan_now

COUNTERS = (
    ("modbus_writes_total", "marstek_modbus_writes", "Modbus register writes to the batteries"),
    ("meter_failures_total", "marstek_meter_failures", "Failed or frozen grid meter readings"),
    ("control_cycles_total", "marstek_control_cycles", "Control cycles run"),
)


def battery_label(b: BatteryStatus) -> str:
    """The ``battery`` label: the battery's stable ``uid`` (``"akku_1"``, never its address, so a new gateway
    address keeps the series), else the slug of its name."""
    return b.uid or unit_uid(b.name or f"Akku {b.id}", b.id)


class _Monotonic:
    """The highest value seen per counter: a scrape never sees a counter go backwards."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}

    def update(self, name: str, value: float | None) -> float:
        with self._lock:
            best = max(self._values.get(name, 0.0), float(value) if value is not None else 0.0)
            self._values[name] = best
            return best


class StatusCollector(Collector):
    """Turns the latest snapshot into metric families at scrape time."""

    def __init__(self, store: StatusStore, *, import_price_ct: Callable[[], float | None] | None = None,
                 money_totals: Callable[[], Mapping[str, float] | None] | None = None) -> None:
        """``import_price_ct``: the current slot's import price, ct/kWh (None: unknown); ``money_totals``:
        ``History.money_totals``. Both None without a tariff: no money metrics."""
        self.store = store
        self.import_price_ct = import_price_ct
        self.money_totals = money_totals
        self._counters = _Monotonic()

    def collect(self) -> Iterator[Metric]:
        snap = self.store.latest()
        grid = GaugeMetricFamily("marstek_grid_power_watts", "Grid power from the meter, W (+ import, - export)")
        if snap.grid_power_w is not None:  # an unknown value is absent, never 0
            grid.add_metric([], snap.grid_power_w)
        yield grid
        avg = GaugeMetricFamily("marstek_grid_power_avg_watts", "Grid power the controller acts on, W")
        if snap.grid_power_avg_w is not None:
            avg.add_metric([], snap.grid_power_avg_w)
        yield avg
        yield GaugeMetricFamily("marstek_meter_ok", "1 when the last meter reading was good", value=int(snap.meter_ok))
        state = GaugeMetricFamily("marstek_control_state", "1 for the current control state", labels=["state"])
        for name in ("active", "setup", "stopped", "error"):
            state.add_metric([name], int(snap.control_state == name))
        yield state

        labels = ["battery"]
        power = GaugeMetricFamily("marstek_battery_power_watts", "Battery AC power, W (+ discharge, - charge)",
                                  labels=labels)
        soc = GaugeMetricFamily("marstek_battery_soc_percent", "Battery state of charge, %", labels=labels)
        setpoint = GaugeMetricFamily("marstek_battery_setpoint_watts", "Commanded power, W (+ discharge, - charge)",
                                     labels=labels)
        online = GaugeMetricFamily("marstek_battery_online", "1 when the battery answers", labels=labels)
        for b in snap.batteries:
            key = [battery_label(b)]
            if b.power_w is not None:
                power.add_metric(key, b.power_w)
            if b.soc_pct is not None:
                soc.add_metric(key, b.soc_pct)
            setpoint.add_metric(key, b.setpoint_w)
            online.add_metric(key, int(b.online))
        yield from (power, soc, setpoint, online)

        for field, name, documentation in COUNTERS:
            counter = CounterMetricFamily(name, documentation)
            counter.add_metric([], self._counters.update(field, snap.counters.get(field)))
            yield counter
        yield from self._money()
        yield from self._plan()

    def _plan(self) -> Iterator[Metric]:
        enabled = self.store.plan_enabled()
        if enabled is None:  # no plan in this program
            return
        mode = plan_now(self.store.plan(), datetime.now(timezone.utc)).mode
        family = GaugeMetricFamily("marstek_plan_mode", "1 for the mode the plan asks for now (auto while it cannot "
                                   "drive), 0 for the others", labels=["mode"])
        for name in PLAN_MODES:
            family.add_metric([name], int(mode == name))
        yield family
        yield GaugeMetricFamily("marstek_plan_enabled", "1 when the control applies the plan (the plan switch)",
                                value=int(enabled))

    def _money(self) -> Iterator[Metric]:
        if self.import_price_ct is not None:
            price = GaugeMetricFamily("marstek_import_price_ct_per_kwh",
                                      "Import price of the current slot, ct/kWh incl. VAT (absent: not known)")
            value = self.import_price_ct()
            if value is not None:
                price.add_metric([], value)
            yield price
        if self.money_totals is None:
            return
        totals = self.money_totals()
        if totals is None:  # the history file is not loaded yet: no counter rather than a false 0
            return
        for key, name, documentation in MONEY_COUNTERS:
            counter = CounterMetricFamily(name, documentation)
            counter.add_metric([], self._counters.update(name, totals.get(key)))
            yield counter


PLAN_MODES = ("auto", "hold", "charge")

MONEY_COUNTERS = (
    ("cost_eur", "marstek_cost_eur", "Import cost at positive prices, EUR (history total)"),
    ("cost_negative_eur", "marstek_cost_negative_eur", "Credited for imports at negative prices, EUR"),
    ("saved_eur", "marstek_saved_eur", "Saved by the battery against the house without it, positive parts, EUR"),
    ("saved_negative_eur", "marstek_saved_negative_eur",
     "Cost of the battery against the house without it (e.g. forgone feed-in), negative parts of the saving, EUR"),
)


def make_registry(store: StatusStore, *, import_price_ct: Callable[[], float | None] | None = None,
                  money_totals: Callable[[], Mapping[str, float] | None] | None = None) -> CollectorRegistry:
    """A registry of its own per app (tests run several apps in one process)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StatusCollector(store, import_price_ct=import_price_ct, money_totals=money_totals))
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper's Accept header asks for (the library's own negotiation:
    the Prometheus text format 0.0.4 by default, OpenMetrics when asked) and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
