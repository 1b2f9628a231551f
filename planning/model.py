"""Data types shared by the price and forecast sources, the planner and the plan thread.

Times are timezone-aware ``datetime`` objects (UTC inside the program; the API renders them with the
local offset). Prices are ct/kWh, the end price a household pays (VAT included). Powers are W; the
battery's sign convention holds everywhere: + = discharge, − = charge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Literal, Protocol

from planning.efficiency import EFFICIENCY_CHARGE, EFFICIENCY_DISCHARGE


class PriceError(Exception):
    """A price source failed (network, HTTP status, unexpected answer); the message says which and why."""


class ForecastError(Exception):
    """A PV forecast source failed; the message says which and why."""


@dataclass(frozen=True)
class PriceSlot:
    """One period as the source publishes it (15 or 60 minutes): ``start`` inclusive, ``end`` exclusive."""

    start: datetime
    end: datetime
    import_ct_per_kwh: float  # end price per imported kWh, may be negative
    feed_in_ct_per_kwh: float  # paid per exported kWh (0 for many balcony systems)


@dataclass(frozen=True)
class PvSlot:
    """Forecast mean PV power over [start, end) in W (≥ 0), summed over every plane."""

    start: datetime
    end: datetime
    pv_w: float


class PriceSource(Protocol):
    """Fetches the known prices (today and, once published, tomorrow)."""

    def fetch(self, now: datetime) -> list[PriceSlot]:
        """Slots sorted by start, without overlaps; raises PriceError. ``now`` is aware UTC."""
        ...


class PvForecastSource(Protocol):
    """Fetches a PV power forecast."""

    def fetch(self, now: datetime) -> list[PvSlot]:
        """Slots sorted by start; raises ForecastError. ``now`` is aware UTC."""
        ...


PlanMode = Literal["auto", "hold", "charge"]


@dataclass(frozen=True)
class FleetModel:
    """The fleet seen as one battery, for the planner.

    Energies in Wh of stored (DC) energy; powers in W on the AC side, both directions ≥ 0 here.
    """

    capacity_wh: float  # sum of the batteries' usable capacities (0..100 % SoC)
    soc_pct: float  # current mean SoC, capacity-weighted
    reserve_soc_pct: float  # plan.reserve_soc_pct: never planned below
    max_soc_pct: float  # battery.max_soc_for_charge: never planned above
    max_charge_w: float  # sum of the charge limits
    max_discharge_w: float  # sum of the discharge limits
    grid_charge_max_w: float  # plan.grid_charge_max_w
    wear_ct_per_kwh: float  # plan.wear_ct_per_kwh, per kWh through the battery (AC side, discharged)
    standby_w: float = 0.0  # the fleet's draw at rest (AC)
    min_soc_pct: float | None = None  # battery.min_soc_for_discharge: the fast loop's own floor (None: the reserve)
    # The measured efficiency curves, (AC power W, efficiency) (planning/efficiency.py); tests may pass others.
    efficiency_charge: tuple[tuple[float, float], ...] = EFFICIENCY_CHARGE
    efficiency_discharge: tuple[tuple[float, float], ...] = EFFICIENCY_DISCHARGE


@dataclass(frozen=True)
class PlanInput:
    """Everything the planner needs; the planner reads no clock and does no I/O."""

    now: datetime  # aware UTC; the first planned slot is the one containing ``now``
    prices: tuple[PriceSlot, ...]  # known prices, sorted; the horizon ends with the last one
    pv_w: tuple[float | None, ...]  # forecast PV per price slot (None: unknown, 0 assumed), same length
    load_w: tuple[float | None, ...]  # forecast house load per price slot (None: unknown)
    fleet: FleetModel
    peak_import_limit_w: float | None = None  # plan.peak_import_limit_w
    tz: tzinfo | None = None  # time zone of the times in the reasons (None: the system's local time zone)


@dataclass(frozen=True)
class PlannedSlot:
    """One slot of the plan (``GET /api/plan`` ``slots[]``)."""

    start: datetime
    end: datetime
    import_ct_per_kwh: float
    feed_in_ct_per_kwh: float
    mode: PlanMode
    power_w: int | None  # ``charge``: the battery charge power the mode charges at (W, > 0; from grid and PV)
    soc_pct: float  # expected SoC at the start of the slot
    pv_w: float | None
    load_w: float | None
    reason: str  # an i18n.Msg: why this mode, in words a user understands


@dataclass(frozen=True)
class Plan:
    """The planner's answer. ``ok`` false: every slot is ``auto`` and ``problem`` says why."""

    created: datetime | None
    ok: bool
    problem: str | None  # an i18n.Msg or None
    slots: tuple[PlannedSlot, ...]
    expected_cost_eur: float | None
    expected_cost_without_plan_eur: float | None  # zero feed-in alone (every slot auto)
