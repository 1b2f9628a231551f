"""The plan as a mode source, below every manual one; and the ``GET /api/plan`` document.

Pure functions: the manual mode, the latest plan and ``now`` in, the mode the control applies out. The
control thread calls ``effective_mode`` every cycle, so a manual mode that expires or is set back to
``auto`` gives way to the plan's current slot within that same cycle.

Precedence: a manual mode other than ``auto`` (dashboard, API, MQTT, evcc; ``off`` included) wins. With
``auto`` the current slot of a fresh, valid plan drives (``source: "plan"``); a plan that is missing,
failed, older than ``PLAN_MAX_AGE_S`` or without a slot containing ``now`` (stale or missing prices)
leaves ``auto`` in force, and the problem says why (never grid charging without a current price).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from control.i18n import Msg
from control.modes import ModeState
from planning.model import Plan, PlannedSlot
from zero_feed_control import OperatingMode

PLAN_MAX_AGE_S = 30 * 60.0  # planned every 15 minutes: twice that without a new plan is stale
PLAN_SOURCE = "plan"


@dataclass(frozen=True)
class ModeChoice:
    """The mode in force, the plan slot that chose it (None: not the plan) and the plan's problem."""

    mode: ModeState
    slot: PlannedSlot | None = None
    problem: str | None = None  # an i18n.Msg: why the plan does not drive (None: it does, or manual wins)


def current_slot(plan: Plan, now: datetime) -> PlannedSlot | None:
    """The slot with start <= now < end, or None."""
    return next((s for s in plan.slots if s.start <= now < s.end), None)


def plan_problem(plan: Plan | None, now: datetime, max_age_s: float = PLAN_MAX_AGE_S) -> str | None:
    """Why ``plan`` cannot drive at ``now`` (an i18n.Msg), or None when its current slot applies.

    ``plan`` None: the first plan is still being computed (not an error, see ``effective_mode``)."""
    if plan is None:
        return Msg("plan_pending")
    if not plan.ok:
        return plan.problem or Msg("plan_no_current_price")
    if plan.created is None or (now - plan.created).total_seconds() > max_age_s:
        age_s = (now - plan.created).total_seconds() if plan.created is not None else max_age_s
        return Msg("plan_stale", minutes=round(age_s / 60))
    if current_slot(plan, now) is None:
        return Msg("plan_no_current_price")
    return None


def effective_mode(manual: ModeState, plan: Plan | None, now: datetime,
                   max_age_s: float = PLAN_MAX_AGE_S, *, enabled: bool = True) -> ModeChoice:
    """The mode the control applies: a manual mode wins unless it is ``auto``; then the plan's current slot.

    ``manual``: the mode set by hand (already expired back to auto by the caller); ``plan``: the latest plan,
    None while the first is computed (auto, no problem shown); ``now``: aware wall time; ``enabled``: the plan
    switch (off: the plan is ignored, no problem shown, it is still computed and shown in ``GET /api/plan``).
    The plan's problem is returned whoever drives, so a stale price feed is shown while a manual mode is in
    force too."""
    if plan is None or not enabled:
        return ModeChoice(manual)
    problem = plan_problem(plan, now, max_age_s)
    slot = current_slot(plan, now)
    if manual.mode is not OperatingMode.AUTO or problem is not None or slot is None:
        return ModeChoice(manual, problem=problem)  # the problem is shown even while a manual mode wins
    mode = OperatingMode(slot.mode)
    power_w = slot.power_w if mode is OperatingMode.CHARGE and slot.power_w else None
    if mode is OperatingMode.CHARGE and power_w is None:
        mode = OperatingMode.AUTO  # a charge without a power is not a plan the fast loop can carry out
    return ModeChoice(ModeState(mode=mode, power_w=power_w, until_s=slot.end.timestamp(), source=PLAN_SOURCE), slot)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone().isoformat(timespec="seconds")


def plan_json(plan: Plan | None, enabled: bool | None, now: datetime) -> dict[str, Any]:
    """The ``GET /api/plan`` document (interfaces.md); messages stay ``Msg`` for ``i18n.render``.

    ``enabled``: the plan switch (``StatusStore.plan_enabled``): None without a plan in this program (no
    ``plan`` section or no tariff): no slots, ``ok`` false and ``problem`` null, nothing is wrong, there is just
    no plan. False: the plan is computed and shown but not applied (``"enabled": false`` with its slots).
    Slots from the current one on (oldest first); ``ok`` is false whenever the plan could not drive now
    (``problem`` says why)."""
    if enabled is None:
        return {"enabled": False, "created": None, "ok": False, "problem": None, "slots": [],
                "expected_cost_eur": None, "expected_cost_without_plan_eur": None}
    problem = plan_problem(plan, now)
    slots = [] if plan is None else [s for s in plan.slots if s.end > now]
    return {
        "enabled": enabled,
        "created": _iso(plan.created) if plan else None,
        "ok": problem is None,
        "problem": problem,
        "slots": [{
            "start": _iso(s.start), "end": _iso(s.end),
            "import_ct_per_kwh": s.import_ct_per_kwh, "feed_in_ct_per_kwh": s.feed_in_ct_per_kwh,
            "mode": s.mode, "power_w": s.power_w, "soc_pct": s.soc_pct,
            "pv_w": s.pv_w, "load_w": s.load_w, "reason": s.reason,
        } for s in slots],
        "expected_cost_eur": plan.expected_cost_eur if plan else None,
        "expected_cost_without_plan_eur": plan.expected_cost_without_plan_eur if plan else None,
    }


@dataclass(frozen=True)
class PlanNow:
    """What the plan says now, for Home Assistant and Prometheus: its mode (``auto`` while it cannot drive), why
    (the slot's reason or the problem, an i18n.Msg) and the start of the next charge window (None: none planned)."""

    mode: str
    power_w: int | None
    reason: str
    next_charge_start: datetime | None


def plan_now(plan: Plan | None, now: datetime, max_age_s: float = PLAN_MAX_AGE_S) -> PlanNow:
    """The plan's current mode and reason and its next charge window at ``now`` (pure).

    A plan that cannot drive (pending, failed, stale, no current price) says ``auto`` with the problem as the
    reason and no charge window (it will not charge). The next charge window is the run of consecutive charge
    slots that has not ended yet: while charging, the start of the running window."""
    problem = plan_problem(plan, now, max_age_s)
    slot = current_slot(plan, now) if plan is not None else None
    if plan is None or problem is not None or slot is None:
        return PlanNow("auto", None, problem or Msg("plan_pending"), None)
    start: datetime | None = None
    previous: PlannedSlot | None = None
    for s in plan.slots:
        if s.mode == "charge" and s.power_w:
            if previous is None or previous.end != s.start or previous.mode != "charge" or not previous.power_w:
                start = s.start  # a new window begins here
            if s.end > now:
                break
        previous = s
    else:
        start = None
    power_w = slot.power_w if slot.mode == "charge" else None
    return PlanNow(slot.mode, power_w, slot.reason, start)


def iso_time(t: datetime | None) -> str | None:
    """``t`` as ISO 8601 with the local offset (seconds), None stays None."""
    return _iso(t)
