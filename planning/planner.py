"""The planner: which operating mode (``auto`` / ``hold`` / ``charge P``) in which price slot.

Pure code like the control law: ``make_plan(PlanInput) -> Plan`` reads no clock and does no I/O.

Model (planning.md §2): the fleet is one battery with the measured efficiency curve
(``planning/efficiency.py``, charge and discharge separately), stored energy in DC Wh between the
reserve and ``max_soc_pct``, AC power limits and a standby draw. Per slot the energy flows of each mode
are those of the fast loop in that mode:

- ``auto`` (zero feed-in): the battery covers load − PV up to its discharge limit, down to the fast
  loop's own floor (``min_soc_pct``), and charges from PV surplus up to ``max_soc_pct``;
- ``hold``: no discharge, PV surplus still charges;
- ``charge P``: the battery charges at P W (AC) from grid and PV; the grid supplies load − PV + P.

Dynamic programming over a SoC grid (1 % steps) finds the cheapest sequence: import cost − feed-in
revenue + wear (per discharged kWh) + a steep penalty for import above ``peak_import_limit_w``, minus the
value of the energy left at the horizon (the import price while the house draws, less wear, times the
curve's efficiency at the mean demand: a plan that empties the battery at the horizon is wrong). Each
slot's own step uses the forecast; the cost-to-go it is judged by uses PV × (1 + ``PV_OPTIMISM``), so the
plan does not grid-charge or hold what the sun would likely fill anyway. A slot whose ``auto`` would end below
the reserve is planned ``hold``. Charging from the grid needs a price for the current slot: without
one the plan is ``auto`` everywhere and says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from control.i18n import Msg, Num
from planning.efficiency import efficiency
from planning.model import FleetModel, Plan, PlanInput, PlanMode, PlannedSlot, PriceSlot

SOC_STEP_PCT = 1.0  # resolution of the SoC grid
PEAK_PENALTY_CT_PER_KWH = 1000.0  # import above the peak limit: as good as forbidden, but never infeasible
CHARGE_LEVELS = 12  # charge powers the plan chooses from per slot
TIE_CT = 0.2  # another mode than auto must save more than this (ct, over the horizon): a margin against forecast noise
# The future is judged with PV × (1 + this): never grid-charge or hold what PV would likely fill anyway
# (a day-ahead PV forecast errs ~25 % RMS; the slot at hand is judged as forecast).
PV_OPTIMISM = 0.25
EARLY_CT = 0.001  # a grid charge within this of the best other mode is taken now rather than later (ct)
_EPS_WH = 1e-6


@dataclass(frozen=True)
class _Slot:
    """One slot as the model sees it: duration, prices, house demand and the unclipped auto powers."""

    dt_h: float
    price: float  # ct/kWh import
    feed: float  # ct/kWh export
    net_w: float  # load − PV (W): + demand, − surplus
    dis_w: float  # auto: discharge power before the energy limit
    dis_eta: float
    chg_w: float  # auto / hold: charge power from surplus before the room limit
    chg_eta: float


@dataclass(frozen=True)
class _Step:
    """The outcome of one mode in one slot from one state."""

    cost_ct: float  # money (import − feed-in + wear)
    penalty_ct: float  # peak penalty (not money)
    e_next_wh: float
    battery_w: float  # + discharge, − charge
    grid_w: float  # + import


class _Model:
    """The fleet's limits in DC Wh and the flows of each mode."""

    def __init__(self, fleet: FleetModel, peak_limit_w: float | None) -> None:
        cap = max(fleet.capacity_wh, 1.0)
        self.cap_wh = cap
        self.e0_wh = fleet.soc_pct / 100.0 * cap
        self.e_res_wh = fleet.reserve_soc_pct / 100.0 * cap
        floor_pct = fleet.reserve_soc_pct if fleet.min_soc_pct is None else fleet.min_soc_pct
        self.e_floor_wh = min(floor_pct, fleet.reserve_soc_pct) / 100.0 * cap  # where auto stops
        self.e_max_wh = max(fleet.max_soc_pct / 100.0 * cap, 0.0)
        self.max_chg_w = max(fleet.max_charge_w, 0.0)
        self.max_dis_w = max(fleet.max_discharge_w, 0.0)
        self.grid_chg_w = max(fleet.grid_charge_max_w, 0.0)
        self.wear = fleet.wear_ct_per_kwh
        self.standby_w = max(fleet.standby_w, 0.0)
        self.peak_w = peak_limit_w
        self.curve_c = fleet.efficiency_charge
        self.curve_d = fleet.efficiency_discharge
        self.best_eta_c = max(e for _, e in self.curve_c)
        self.best_eta_d = max(e for _, e in self.curve_d)
        self.worst_eta_d = min(e for _, e in self.curve_d)

    def slot(self, dt_h: float, price: PriceSlot, net_w: float) -> _Slot:
        dis_w = min(max(net_w, 0.0), self.max_dis_w)
        chg_w = min(max(-net_w, 0.0), self.max_chg_w)
        return _Slot(dt_h, price.import_ct_per_kwh, price.feed_in_ct_per_kwh, net_w,
                     dis_w, efficiency(dis_w, self.curve_d), chg_w, efficiency(chg_w, self.curve_c))

    def _money(self, s: _Slot, grid_w: float, discharge_w: float) -> tuple[float, float]:
        kwh = grid_w * s.dt_h / 1000.0
        cost = kwh * (s.price if kwh > 0 else s.feed) + self.wear * discharge_w * s.dt_h / 1000.0
        penalty = 0.0
        if self.peak_w is not None and grid_w > self.peak_w:
            penalty = (grid_w - self.peak_w) * s.dt_h / 1000.0 * PEAK_PENALTY_CT_PER_KWH
        return cost, penalty

    def _surplus(self, s: _Slot, e_wh: float) -> _Step:
        """PV surplus charges the battery (auto and hold alike)."""
        room = self.e_max_wh - e_wh
        c = s.chg_w
        if c <= 0.0 or room <= _EPS_WH:
            grid = s.net_w + self.standby_w
            return _Step(*self._money(s, grid, 0.0), e_wh, 0.0, grid)
        dc = c * s.dt_h * s.chg_eta
        if dc > room:
            dc = room
            c = dc / (s.dt_h * s.chg_eta)
        grid = s.net_w + c
        return _Step(*self._money(s, grid, 0.0), e_wh + dc, -c, grid)

    def auto(self, s: _Slot, e_wh: float) -> _Step:
        """Zero feed-in: discharge to cover the demand (down to the fast loop's floor) or charge from surplus."""
        if s.net_w <= 0.0:
            return self._surplus(s, e_wh)
        d = s.dis_w
        avail = e_wh - self.e_floor_wh
        if d <= 0.0 or avail <= _EPS_WH:
            grid = s.net_w + self.standby_w
            return _Step(*self._money(s, grid, 0.0), e_wh, 0.0, grid)
        dc = d * s.dt_h / s.dis_eta
        if dc > avail:
            dc = avail
            d = dc * s.dis_eta / s.dt_h
        grid = s.net_w - d
        return _Step(*self._money(s, grid, d), e_wh - dc, d, grid)

    def hold(self, s: _Slot, e_wh: float) -> _Step:
        """No discharge; surplus still charges."""
        if s.net_w <= 0.0:
            return self._surplus(s, e_wh)
        grid = s.net_w + self.standby_w
        return _Step(*self._money(s, grid, 0.0), e_wh, 0.0, grid)

    def charge(self, s: _Slot, e_wh: float, power_w: float, dc_wh: float) -> _Step:
        """Charge at ``power_w`` (AC) from grid and PV, storing ``dc_wh``."""
        grid = s.net_w + power_w
        return _Step(*self._money(s, grid, 0.0), e_wh + dc_wh, -power_w, grid)

    def auto_allowed(self, step: _Step, e_wh: float) -> bool:
        """Auto may discharge only where the slot ends at or above the reserve."""
        return step.battery_w <= 0.0 or step.e_next_wh >= self.e_res_wh - _EPS_WH


def _charge_table(dt_h: float, step_wh: float, max_w: float, curve: Sequence[tuple[float, float]]
                  ) -> list[tuple[int, float, float]]:
    """(k, AC power W, stored DC Wh) for charging k grid steps in a slot of ``dt_h``.

    At most ``CHARGE_LEVELS`` powers, evenly spread up to the limit (an hour at 2.5 kW spans ~50 steps;
    ~200 W apart is fine enough for a charge power, and the run time grows with the count)."""
    table: list[tuple[int, float, float]] = []
    k = 1
    while True:
        dc = k * step_wh
        eta = curve[-1][1]
        power = dc / (dt_h * eta)
        for _ in range(4):  # P·dt·η(P) = dc converges in a few rounds (η is flat at these powers)
            eta = efficiency(power, curve)
            power = dc / (dt_h * eta)
        if power > max_w + 1e-9:
            break
        table.append((k, power, dc))
        k += 1
    if len(table) <= CHARGE_LEVELS:
        return table
    return [table[round(len(table) * (i + 1) / CHARGE_LEVELS) - 1] for i in range(CHARGE_LEVELS)]


def _interp(values: Sequence[float], lo: float, step: float, e_wh: float) -> float:
    x = (e_wh - lo) / step
    if x <= 0.0:
        return values[0]
    i = int(x)
    if i >= len(values) - 1:
        return values[-1]
    f = x - i
    return values[i] + f * (values[i + 1] - values[i])


def _fail(inp: PlanInput, problem: Msg) -> Plan:
    """Every slot auto (zero feed-in), the problem said; no grid charging without a current price."""
    slots: list[PlannedSlot] = []
    model = _Model(inp.fleet, inp.peak_import_limit_w)
    e_wh = model.e0_wh
    reason = Msg("plan_no_price_auto", problem=problem)
    for i, price in enumerate(_current_and_later(inp)):
        pv, load = _at(inp.pv_w, i), _at(inp.load_w, i)
        start = max(price.start, inp.now) if i == 0 else price.start
        s = model.slot((price.end - start).total_seconds() / 3600.0, price, (load or 0.0) - (pv or 0.0))
        slots.append(PlannedSlot(price.start, price.end, price.import_ct_per_kwh, price.feed_in_ct_per_kwh, "auto",
                                 None, round(e_wh / model.cap_wh * 100.0, 2), pv, load, reason))
        e_wh = model.auto(s, e_wh).e_next_wh
    return Plan(inp.now, False, problem, tuple(slots), None, None)


def _at(values: Sequence[float | None], i: int) -> float | None:
    return values[i] if i < len(values) else None


def _current_and_later(inp: PlanInput) -> list[PriceSlot]:
    return [p for p in inp.prices if p.end > inp.now]


def _check(inp: PlanInput) -> Msg | None:
    if not inp.prices:
        return Msg("plan_problem_no_prices")
    for a, b in zip(inp.prices, inp.prices[1:], strict=False):
        if b.start < a.end or a.end <= a.start:
            return Msg("plan_problem_bad_prices", start=a.start.isoformat())
    if inp.prices[-1].end <= inp.prices[-1].start:
        return Msg("plan_problem_bad_prices", start=inp.prices[-1].start.isoformat())
    if len(inp.pv_w) != len(inp.prices) or len(inp.load_w) != len(inp.prices):
        return Msg("plan_problem_forecast_length", pv=len(inp.pv_w), load=len(inp.load_w), slots=len(inp.prices))
    later = _current_and_later(inp)
    if not later or later[0].start > inp.now:
        first = later[0].start.isoformat() if later else inp.prices[-1].end.isoformat()
        return Msg("plan_problem_no_current_price", now=inp.now.isoformat(), first=first)
    return None


def _ct(price: float) -> Num:
    return Num(price, 1 if abs(price) < 20.0 else 0)


def _hhmm(t: datetime, tz: tzinfo | None) -> str:
    return t.astimezone(tz).strftime("%H:%M")


def make_plan(inp: PlanInput) -> Plan:
    """The plan from ``inp.now`` to the end of the known prices (see the module docstring)."""
    problem = _check(inp)
    if problem is not None:
        return _fail(inp, problem)
    skipped = len(inp.prices) - len(_current_and_later(inp))
    prices = list(inp.prices[skipped:])
    pv = list(inp.pv_w[skipped:])
    load = list(inp.load_w[skipped:])
    # A gap in the prices ends the horizon: nothing is known beyond it.
    for i in range(1, len(prices)):
        if prices[i].start != prices[i - 1].end:
            prices, pv, load = prices[:i], pv[:i], load[:i]
            break
    known_loads = [x for x in load if x is not None]
    default_load = sum(known_loads) / len(known_loads) if known_loads else 0.0
    model = _Model(inp.fleet, inp.peak_import_limit_w)
    slots: list[_Slot] = []  # as forecast: the slot's own step
    ahead: list[_Slot] = []  # with the optimistic PV: the cost-to-go the steps are judged by
    for i, price in enumerate(prices):
        start = max(price.start, inp.now) if i == 0 else price.start
        dt_h = max((price.end - start).total_seconds(), 1.0) / 3600.0
        demand = default_load if load[i] is None else load[i]
        slots.append(model.slot(dt_h, price, demand - (pv[i] or 0.0)))  # type: ignore[operator]
        ahead.append(model.slot(dt_h, price, demand - (pv[i] or 0.0) * (1.0 + PV_OPTIMISM)))  # type: ignore[operator]

    # The SoC grid: from the reserve (or the current SoC if it is lower) to max_soc (or the current SoC).
    lo = min(model.e_res_wh, model.e0_wh)
    hi = max(model.e_max_wh, model.e0_wh, lo + 1.0)
    n = max(2, round((hi - lo) / (model.cap_wh * SOC_STEP_PCT / 100.0)) + 1)
    step = (hi - lo) / (n - 1)
    tables: dict[float, list[tuple[int, float, float]]] = {}
    for s in slots:
        if s.dt_h not in tables:
            tables[s.dt_h] = _charge_table(s.dt_h, step, model.max_chg_w, model.curve_c)

    total_h = sum(s.dt_h for s in slots)
    mean_price = sum(s.price * s.dt_h for s in slots) / total_h
    value_ct_per_wh = _horizon_value(slots, model, mean_price)
    usable_from = max(model.e_res_wh, lo)
    values = [-max(lo + j * step - usable_from, 0.0) * value_ct_per_wh for j in range(n)]
    stages: list[list[float]] = [values]
    j_max = int((model.e_max_wh - lo) / step + 1e-9)  # highest grid state a charge may reach
    may_charge = _worth_charging(slots, model, value_ct_per_wh)
    # One price over the whole horizon: nothing to shift. Holding could only trade efficiency crumbs at
    # different powers against forecast noise, so zero feed-in it is (unless the reserve or a peak says no).
    flat = model.peak_w is None and max(s.price for s in slots) - min(s.price for s in slots) < 0.01
    stages_nc: list[list[float]] | None = None
    if flat and not any(may_charge):
        # … and neither the reserve (hold is then forced) nor anything else asks for the cost-to-go: no DP
        # (a fixed tariff plans in a few milliseconds).
        stages = [values] * (len(slots) + 1)
    else:
        # The same DP without any grid charging: grid charging must beat it by the margin (noise), while among
        # schedules that charge, equal costs go to the earlier charge (the battery is full sooner: less risk).
        if any(may_charge):
            v_nc = values
            stages_nc = [v_nc]
            for t in range(len(slots) - 1, 0, -1):
                v_nc = _backward_slot(model, ahead[t], v_nc, lo, step, (), j_max)
                stages_nc.append(v_nc)
            stages_nc.append(v_nc)  # slot 0's start is never looked up
            stages_nc.reverse()
        for t in range(len(slots) - 1, -1, -1):
            s = ahead[t]
            nxt = values
            surplus = max(-s.net_w, 0.0)
            charges: list[tuple[int, float]] = []  # (grid steps up, cost) of each allowed charge power
            for k, p, dc in tables[s.dt_h]:
                if may_charge[t] and p > surplus and p - surplus <= model.grid_chg_w:
                    c = model.charge(s, 0.0, p, dc)
                    charges.append((k, c.cost_ct + c.penalty_ct))
            values = _backward_slot(model, s, nxt, lo, step, charges, j_max)
            stages.append(values)
        stages.reverse()  # stages[t]: cost-to-go at the start of slot t

    full_h = [(p.end - p.start).total_seconds() / 3600.0 for p in prices]
    decided = _forward(model, slots, tables, stages, lo, step, may_charge, flat, stages_nc, full_h)
    reasons = _reasons(decided, slots, prices, model, mean_price, inp)
    out = []
    for i, (price, d) in enumerate(zip(prices, decided, strict=True)):
        out.append(PlannedSlot(price.start, price.end, price.import_ct_per_kwh, price.feed_in_ct_per_kwh, d.mode,
                               None if d.mode != "charge" else round(d.power_w),
                               round(d.e_wh / model.cap_wh * 100.0, 2), pv[i], load[i], reasons[i]))
    without = 0.0
    e_wh = model.e0_wh
    for s in slots:
        a = model.auto(s, e_wh)
        without += a.cost_ct
        e_wh = a.e_next_wh
    return Plan(inp.now, True, None, tuple(out), round(sum(d.step.cost_ct for d in decided) / 100.0, 4),
                round(without / 100.0, 4))


def _horizon_value(slots: Sequence[_Slot], model: _Model, mean_price: float) -> float:
    """What a DC Wh left at the horizon is worth (ct): the price at which the house draws, less wear, times
    the discharge efficiency at the power it draws with.

    Both from the horizon: the demand-weighted mean import price (energy is used when the house draws, not
    at the night's price) and the curve at the mean demand power; the curve's worst point if nothing is
    drawn. Never above what discharging in the horizon itself could earn at that price."""
    demand_wh = sum(s.dis_w * s.dt_h for s in slots)
    if demand_wh <= _EPS_WH:
        return max(mean_price - model.wear, 0.0) * model.worst_eta_d / 1000.0
    price = sum(s.price * s.dis_w * s.dt_h for s in slots) / demand_wh
    hours = sum(s.dt_h for s in slots if s.dis_w > 0.0)
    eta = efficiency(demand_wh / hours, model.curve_d)
    return max(price - model.wear, 0.0) * eta / 1000.0


def _worth_charging(slots: Sequence[_Slot], model: _Model, value_ct_per_wh: float) -> list[bool]:
    """Per slot: can charging from the grid pay at all? An exact shortcut, never a heuristic.

    A kWh stored now costs at least price / best charge efficiency; it is worth at most the highest later
    price × best discharge efficiency, or the value of energy left at the horizon. Negative prices, a
    feed-in above the import price and peak shaving always keep the option.
    """
    eta_c, eta_d = model.best_eta_c, model.best_eta_d
    out = [True] * len(slots)
    later_max = float("-inf")
    for t in range(len(slots) - 1, -1, -1):
        s = slots[t]
        worth = max(later_max * eta_d, value_ct_per_wh * 1000.0)
        if model.peak_w is None and s.price > 0.0 and s.price > s.feed and s.price / eta_c > worth + 1e-9:
            out[t] = False
        later_max = max(later_max, s.price)
    return out


def _backward_slot(model: _Model, s: _Slot, nxt: Sequence[float], lo: float, step: float,
                   charges: Sequence[tuple[int, float]], j_max: int) -> list[float]:
    """Cost-to-go at the start of slot ``s`` on every grid state, given the one after it (``nxt``).

    The same flows as ``_Model.auto``/``hold``/``charge``. Away from the SoC limits a mode moves every state
    by the same energy at the same cost, so those states are done as whole lists (this function is the
    planner's run time); the few states a limit cuts go through ``_Model.auto`` one by one.
    """
    n = len(nxt)
    padded = [*nxt, nxt[-1]]
    idle = model.hold(s, lo)  # no battery power: the demand (or surplus) goes to the grid
    idle_v = idle.cost_ct + idle.penalty_ct
    best = [idle_v + x for x in nxt]  # hold (demand), or no room for the surplus
    floor, e_max, e_res = model.e_floor_wh, model.e_max_wh, model.e_res_wh - _EPS_WH
    if s.net_w > 0.0 and s.dis_w > 0.0:  # auto discharges
        dc_full = s.dis_w * s.dt_h / s.dis_eta
        full = model.auto(s, floor + dc_full + 1.0)
        full_v = full.cost_ct + full.penalty_ct
        shift = dc_full / step
        # unclipped and ending at or above the reserve: e − dc_full ≥ max(floor, reserve)
        j0 = max(0, math.ceil((max(floor, e_res) + dc_full - lo) / step - 1e-9))
        if j0 < n:
            i0 = math.floor(shift)
            g = 1.0 - (shift - i0)  # x = j − shift lies between j − i0 − 1 and j − i0, weight g on the upper
            if j0 - i0 - 1 >= 0 and g < 1.0:
                lower, upper = nxt[j0 - i0 - 1:n - i0 - 1], nxt[j0 - i0:n - i0]
                moved = [a + g * (b - a) for a, b in zip(lower, upper, strict=True)]
            else:
                moved = [_interp(nxt, lo, step, lo + j * step - dc_full) for j in range(j0, n)]
            best[j0:] = [h if h <= full_v + w else full_v + w for h, w in zip(best[j0:], moved, strict=True)]
        for j in range(min(j0, n)):  # the floor cuts the discharge
            e = lo + j * step
            if e - floor > _EPS_WH:
                a = model.auto(s, e)
                if a.e_next_wh >= e_res:
                    best[j] = min(best[j], a.cost_ct + a.penalty_ct + _interp(nxt, lo, step, a.e_next_wh))
    elif s.net_w <= 0.0 and s.chg_w > 0.0:  # the surplus charges (auto and hold alike): no choice
        dc_full = s.chg_w * s.dt_h * s.chg_eta
        full = model.auto(s, e_max - dc_full - 1.0)
        full_v = full.cost_ct + full.penalty_ct
        shift = dc_full / step
        i0 = math.floor(shift)
        f = shift - i0
        j1 = min(n - 1, math.floor((e_max - dc_full - lo) / step + 1e-9))  # last state not cut by max_soc
        if j1 >= 0:
            lower, upper = padded[i0:j1 + 1 + i0], padded[i0 + 1:j1 + 2 + i0]
            best[:j1 + 1] = [full_v + a + f * (b - a) for a, b in zip(lower, upper, strict=True)]
        for j in range(max(j1 + 1, 0), n):
            e = lo + j * step
            if e_max - e > _EPS_WH:
                a = model.auto(s, e)
                best[j] = a.cost_ct + a.penalty_ct + _interp(nxt, lo, step, a.e_next_wh)
    for k, c in charges:
        m = j_max - k + 1  # states from which k steps up stay within max_soc
        if m <= 0:
            break
        best[:m] = map(min, best[:m], map(c.__add__, nxt[k:k + m]))
    return best


@dataclass(frozen=True)
class _Decision:
    mode: PlanMode
    power_w: float
    e_wh: float  # at the start of the slot
    step: _Step
    auto_blocked: bool  # auto would have ended below the reserve


def _forward(model: _Model, slots: Sequence[_Slot], tables: dict[float, list[tuple[int, float, float]]],
             stages: Sequence[Sequence[float]], lo: float, step: float, may_charge: Sequence[bool],
             flat: bool = False, stages_nc: Sequence[Sequence[float]] | None = None,
             full_h: Sequence[float] | None = None) -> list[_Decision]:
    """Follow the cheapest mode slot by slot from the true (off-grid) SoC.

    ``hold`` must beat ``auto`` by the margin; ``charge`` must beat the best plan without any grid charging
    (``stages_nc``) by the margin and be within ``EARLY_CT`` of the best other mode: of two equally cheap
    slots the earlier charges. The margins shrink with a slot begun (``full_h``: the slots' whole lengths)."""
    decided: list[_Decision] = []
    e = model.e0_wh
    for t, s in enumerate(slots):
        nxt = stages[t + 1]
        share = 1.0 if full_h is None else min(1.0, s.dt_h / max(full_h[t], 1e-9))
        margin = TIE_CT * share
        a = model.auto(s, e)
        blocked = not model.auto_allowed(a, e)
        best_v = float("inf") if blocked else a.cost_ct + a.penalty_ct + _interp(nxt, lo, step, a.e_next_wh)
        best = _Decision("auto", 0.0, e, a, blocked)
        if flat and not blocked:
            decided.append(best)
            e = a.e_next_wh
            continue
        h = model.hold(s, e)
        v = h.cost_ct + h.penalty_ct + _interp(nxt, lo, step, h.e_next_wh)
        if v < best_v - margin or blocked:
            best_v, best = v, _Decision("hold", 0.0, e, h, blocked)
        if may_charge[t]:
            if stages_nc is None:
                base_v = best_v
            else:
                nc = stages_nc[t + 1]
                base_v = min(float("inf") if blocked else a.cost_ct + a.penalty_ct + _interp(nc, lo, step, a.e_next_wh),
                             h.cost_ct + h.penalty_ct + _interp(nc, lo, step, h.e_next_wh))
            charge_v, charge = float("inf"), None
            for p, dc in _charge_options(model, s, tables[s.dt_h], e, share < 1.0):
                c = model.charge(s, e, p, dc)
                v = c.cost_ct + c.penalty_ct + _interp(nxt, lo, step, c.e_next_wh)
                if v < charge_v - 1e-9:
                    charge_v, charge = v, _Decision("charge", p, e, c, blocked)
            if charge is not None and charge_v < base_v - margin and charge_v <= best_v + EARLY_CT * share:
                best_v, best = charge_v, charge
        decided.append(best)
        e = best.step.e_next_wh
    return decided


def _charge_options(model: _Model, s: _Slot, table: Sequence[tuple[int, float, float]], e_wh: float,
                    begun: bool) -> list[tuple[float, float]]:
    """(AC power W, stored DC Wh) the forward pass may charge at from ``e_wh``.

    The DP's table (whole grid steps); for a slot begun also evenly spread powers up to the limit, because
    a few minutes at full power store less than one grid step and the table would offer nothing."""
    surplus = max(-s.net_w, 0.0)
    top = min(model.max_chg_w, surplus + model.grid_chg_w)
    out = [(p, dc) for _, p, dc in table
           if surplus < p <= top + 1e-9 and p >= 1.0 and e_wh + dc <= model.e_max_wh + _EPS_WH]
    if begun and top > surplus:
        room = model.e_max_wh - e_wh
        for i in range(1, CHARGE_LEVELS + 1):
            p = surplus + (top - surplus) * i / CHARGE_LEVELS
            dc = p * s.dt_h * efficiency(p, model.curve_c)
            if dc > room:
                break
            if p >= 1.0:  # a plan says whole watts
                out.append((p, dc))
    return out


def _reasons(decided: Sequence[_Decision], slots: Sequence[_Slot], prices: Sequence[PriceSlot], model: _Model,
             mean_price: float, inp: PlanInput) -> list[Msg]:
    """Why each slot has its mode, in words a user understands."""
    tz = inp.tz
    reasons: list[Msg] = []
    for t, d in enumerate(decided):
        s = slots[t]
        price = _ct(s.price)
        if d.mode == "auto":
            if model.peak_w is not None and s.net_w > model.peak_w and d.step.battery_w > 0:
                reasons.append(Msg("plan_auto_peak", limit=round(model.peak_w)))
            elif d.step.battery_w < 0:
                reasons.append(Msg("plan_auto_surplus", feed_in=_ct(s.feed)))
            elif d.step.battery_w > 0:
                reasons.append(Msg("plan_auto_discharge", price=price))
            else:
                reasons.append(Msg("plan_auto", price=price))
            continue
        window, later, peak = _target(decided, slots, prices, t, model)
        if d.mode == "hold":
            if d.auto_blocked:
                reasons.append(Msg("plan_hold_reserve", reserve=round(inp.fleet.reserve_soc_pct), price=price))
            elif peak and window is not None:
                reasons.append(Msg("plan_hold_peak", window=_window(window, tz), limit=round(model.peak_w or 0.0)))
            elif window is not None:
                reasons.append(Msg("plan_hold_for", window=_window(window, tz), later=_ct(later), price=price))
            else:
                reasons.append(Msg("plan_hold_later", price=price, later=_ct(mean_price)))
            continue
        power = Num(d.power_w / 1000.0, 1)
        if s.price < 0:
            reasons.append(Msg("plan_charge_negative", power=power, price=price))
        elif peak and window is not None:
            reasons.append(Msg("plan_charge_peak", power=power, price=price, window=_window(window, tz)))
        elif window is not None:
            reasons.append(Msg("plan_charge_for", power=power, price=price, window=_window(window, tz),
                               later=_ct(later)))
        else:
            reasons.append(Msg("plan_charge_later", power=power, price=price, later=_ct(mean_price)))
    return reasons


def _target(decided: Sequence[_Decision], slots: Sequence[_Slot], prices: Sequence[PriceSlot], t: int,
            model: _Model) -> tuple[tuple[datetime, datetime] | None, float, bool]:
    """The later discharge the energy is kept for: (window, its highest price, is it peak shaving)."""
    best: int | None = None
    for u in range(t + 1, len(decided)):
        if decided[u].step.battery_w > 0 and slots[u].price > slots[t].price and (
                best is None or slots[u].price > slots[best].price):
            best = u
    peak = False
    if best is None and model.peak_w is not None:
        for u in range(t + 1, len(decided)):
            if decided[u].step.battery_w > 0 and slots[u].net_w > model.peak_w:
                best, peak = u, True
                break
    if best is None:
        return None, 0.0, False
    # The window: the discharge around that slot while its price stays in the upper half of the gap.
    bar = slots[best].price - (slots[best].price - slots[t].price) / 2.0

    def keeps(u: int) -> bool:
        return decided[u].step.battery_w > 0 and (peak or slots[u].price > bar)

    first = last = best
    while first - 1 > t and keeps(first - 1):
        first -= 1
    while last + 1 < len(decided) and keeps(last + 1):
        last += 1
    return (prices[first].start, prices[last].end), max(slots[u].price for u in range(first, last + 1)), peak


def _window(window: tuple[datetime, datetime], tz: tzinfo | None) -> str:
    return f"{_hhmm(window[0], tz)}–{_hhmm(window[1], tz)}"
