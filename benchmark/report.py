"""The benchmark's report: aggregation over seeds, the targets, docs/benchmark.md and the step plot."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.runner import SAFE_W, UNSETTLED_S, RunResult
from benchmark.scenarios import CADENCE_ROWS, CONTROLLERS, CYPRUS_SCALE, CYPRUS_SOC, Scenario, household_pv_24h


@dataclass
class Aggregate:
    """One scenario × controller over its seeds."""

    scenario: str
    group: str
    controller: str
    seeds: int
    mean: dict[str, float]
    std: dict[str, float]
    worst: dict[str, float]
    settles: list[float]
    by_seed: dict[int, dict[str, float]] = field(default_factory=dict)


def aggregate(results: Sequence[RunResult]) -> dict[tuple[str, str], Aggregate]:
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.controller), []).append(r)
    out = {}
    for key, runs in groups.items():
        names = sorted({k for r in runs for k in r.values})
        mean, std, worst = {}, {}, {}
        for k in names:
            vals = [r.values[k] for r in runs if k in r.values and not math.isnan(r.values[k])]
            if not vals:
                mean[k] = std[k] = worst[k] = math.nan
                continue
            mean[k] = statistics.fmean(vals)
            std[k] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
            worst[k] = max(vals)
        settles = [r.values[k] for r in runs for k in r.values if k.startswith("settle") and k[6:-2].isdigit()]
        out[key] = Aggregate(key[0], runs[0].group, key[1], len(runs), mean, std, worst, settles,
                             {r.seed: r.values for r in runs})
    return out


def p95(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    v = sorted(values)
    return v[min(len(v) - 1, math.ceil(0.95 * len(v)) - 1)]


def beats_naive(agg: dict[tuple[str, str], Aggregate]) -> dict[str, tuple[bool, str]]:
    """Per scenario with both: the project's avoidable energy is lower and its battery export not higher."""
    out = {}
    for (name, ctrl), a in agg.items():
        if ctrl != "project" or (name, "naive") not in agg:
            continue
        n = agg[name, "naive"].mean
        p = a.mean
        ok = p["avoidable_wh"] < n["avoidable_wh"] and p["battery_export_wh"] <= n["battery_export_wh"] + 0.05
        if "stop_cmd_s" in p and not math.isnan(n.get("stop_cmd_s", math.nan)):
            ok = ok and p["stop_cmd_s"] <= n["stop_cmd_s"]
        out[name] = (ok, f"avoidable {p['avoidable_wh']:.1f} vs {n['avoidable_wh']:.1f} Wh, battery export "
                         f"{p['battery_export_wh']:.1f} vs {n['battery_export_wh']:.1f} Wh")
    return out


# Why a settle or overshoot target is out of reach on the realistic plant (issue 9).
PLANT_OVERSHOOT = "the battery itself overshoots a new setpoint by ~7 % for a few seconds (Marstek firmware)"


@dataclass
class Target:
    text: str
    measured: str
    met: bool | None  # None: not evaluated in this set
    note: str = ""


def _get(agg: dict[tuple[str, str], Aggregate], name: str, ctrl: str) -> Aggregate | None:
    return agg.get((name, ctrl))


def stability(agg: dict[tuple[str, str], Aggregate]) -> dict[tuple[float, float], dict[str, float | bool]]:
    """Per (latency, cadence): the §5 stability criterion for the project controller."""
    nominal = _get(agg, "sweep-noisy-lat0.3-cad1", "project") or _get(agg, "noisy", "project")
    base = nominal.mean["crossings_per_h"] if nominal else math.nan
    out: dict[tuple[float, float], dict[str, float | bool]] = {}
    for (name, ctrl), a in agg.items():
        if ctrl != "project" or not name.startswith("sweep-noisy-"):
            continue
        tag = name.removeprefix("sweep-noisy-")
        lat, cad = (float(x[3:]) for x in tag.split("-"))
        step = _get(agg, f"sweep-step2000-{tag}", "project")
        spread = step.mean.get("quiet_p95_p5_w", math.nan) if step else math.nan
        crossings = a.mean["crossings_per_h"]
        out[lat, cad] = {"crossings_per_h": crossings, "nominal_crossings_per_h": base, "quiet_p95_p5_w": spread,
                         "stable": crossings <= 2 * base and spread < 100.0}
    return out


CADENCE_RATIO = 1.15  # target: avoidable energy ≤ this × the ideal deadbeat at the same meter cadence


@dataclass(frozen=True)
class CadenceRow:
    """One meter cadence of the benchmark's cadence rows."""

    cadence_s: float
    latency_s: float
    label: str
    project_wh: float
    ideal_wh: float
    ratio: float
    crossings_project: float
    crossings_ideal: float
    stable: bool
    sign_trips: float
    per: dict[str, tuple[float, float]]  # scenario -> (project Wh, ideal Wh)


def cadence_rows(agg: dict[tuple[str, str], Aggregate]) -> list[CadenceRow]:
    """Per meter cadence: avoidable energy of the project and of the ideal deadbeat at that cadence (summed over the
    cadence scenarios), band crossings, and whether the project stays free of sustained oscillation (crossings at
    most 2 × the ideal's)."""
    rows: list[CadenceRow] = []
    for cad, lat, label in CADENCE_ROWS:
        names = sorted({n for (n, c) in agg if n.startswith(f"cadence{cad:g}-")})
        pairs = [(p, i) for n in names if (p := _get(agg, n, "project")) and (i := _get(agg, n, "ideal"))]
        if not pairs:
            continue
        av_p = sum(p.mean["avoidable_wh"] for p, _ in pairs)
        av_i = sum(i.mean["avoidable_wh"] for _, i in pairs)
        cr_p = statistics.fmean(p.mean["crossings_per_h"] for p, _ in pairs)
        cr_i = statistics.fmean(i.mean["crossings_per_h"] for _, i in pairs)
        trips = sum(p.mean.get("sign_trips", 0.0) for p, _ in pairs)
        per = {n.split("-", 1)[1]: (p.mean["avoidable_wh"], i.mean["avoidable_wh"])
               for n, (p, i) in zip(names, pairs, strict=False)}
        rows.append(CadenceRow(cad, lat, label, av_p, av_i, av_p / av_i if av_i else math.nan, cr_p, cr_i,
                               cr_p <= 2 * cr_i, trips, per))
    return rows


def _per_seed(a: Aggregate, other: Aggregate, key: str) -> str:
    """Range of a / other over the seeds both ran, as a note."""
    if a.seeds < 2:
        return ""
    ratios = [a.by_seed[s][key] / other.by_seed[s][key] for s in a.by_seed
              if s in other.by_seed and other.by_seed[s][key] > 0]
    return f"per seed {min(ratios):.2f}–{max(ratios):.2f} ×" if ratios else ""


def step_targets(agg: dict[tuple[str, str], Aggregate]) -> list[Target]:
    """The 2 kW step's settle, step energy and overshoot (both edges, both directions)."""
    out: list[Target] = []
    steps = [a for name in ("step2000-dis", "step2000-chg") if (a := _get(agg, name, "project"))]
    if steps:
        settle = statistics.fmean(a.mean["settle_mean_s"] for a in steps)
        energy = statistics.fmean(a.mean["step_energy_wh"] for a in steps)
        over = max(a.worst["overshoot_w"] for a in steps)
        ideal = [a for name in ("step2000-dis", "step2000-chg") if (a := _get(agg, name, "ideal"))]
        ideal_settle = statistics.fmean(a.mean["settle_mean_s"] for a in ideal) if ideal else math.nan
        ideal_over = max((a.worst["overshoot_w"] for a in ideal), default=math.nan)
        out.append(Target("2 kW step: settle ≤ 8 s mean", f"{settle:.1f} s (p95 "
                          f"{p95([s for a in steps for s in a.settles]):.1f} s)", settle <= 8.0,
                          "" if settle <= 8.0 else f"{PLANT_OVERSHOOT}: the ideal deadbeat needs {ideal_settle:.1f} s"))
        out.append(Target("2 kW step: step energy ≤ 2 Wh", f"{energy:.2f} Wh", energy <= 2.0))
        out.append(Target("2 kW step: overshoot ≤ 50 W", f"{over:.0f} W (worst run)", over <= 50.0,
                          "" if over <= 50.0 else f"{PLANT_OVERSHOOT}: the ideal deadbeat {ideal_over:.0f} W"))
        if ideal:
            out.append(Target("2 kW step: overshoot ≤ the plant's own + 50 W",
                              f"{over:.0f} W (ideal deadbeat {ideal_over:.0f} W)", over <= ideal_over + 50.0,
                              "what the control adds to the battery's own overshoot"))
    return out


def evaluate_targets(agg: dict[tuple[str, str], Aggregate]) -> list[Target]:
    out: list[Target] = step_targets(agg)
    for name in [n for (n, c) in agg if c == "project" and (n.startswith(("day24", "trace-")))]:
        p, i, n = (_get(agg, name, c) for c in ("project", "ideal", "naive"))
        if not (p and i and n):
            continue
        av, ai, an = p.mean["avoidable_wh"], i.mean["avoidable_wh"], n.mean["avoidable_wh"]
        out.append(Target(f"{name}: avoidable ≤ 1.3 × ideal", f"{av:.0f} Wh = {av / ai:.2f} × ideal ({ai:.0f} Wh)",
                          av <= 1.3 * ai, _per_seed(p, i, "avoidable_wh")))
        floor = _get(agg, name, "floor")
        why = ""
        if av > 0.5 * an:
            why = f"the ideal deadbeat reaches {ai / an:.2f} ×"
            if floor:
                why += (f", perfect tracking of the ±20 W targets alone {floor.mean['avoidable_wh'] / an:.2f} ×: "
                        "the targets cost the same for every controller")
        if p.seeds > 1:
            why = (_per_seed(p, n, "avoidable_wh") + " (the naive law falls into a limit cycle on some days)"
                   + ("; " + why if why else ""))
        out.append(Target(f"{name}: avoidable ≤ 0.5 × naive", f"{av:.0f} Wh = {av / an:.2f} × naive ({an:.0f} Wh)",
                          av <= 0.5 * an, why))
        bp, bn, bi = p.mean["battery_export_wh"], n.mean["battery_export_wh"], i.mean["battery_export_wh"]
        why = _per_seed(p, n, "battery_export_wh") if bp <= 0.3 * bn + 1e-9 else f"ideal deadbeat {bi:.1f} Wh" + (
            f"; all below {math.ceil(max(bp, bn))} Wh in {p.mean['duration_h']:.0f} h"
            if max(bp, bn) < 2.0 else "")
        out.append(Target(f"{name}: battery export ≤ 0.3 × naive",
                          f"{bp:.1f} Wh = {bp / bn:.2f} × naive ({bn:.1f} Wh)" if bn else f"{bp:.1f} Wh",
                          bp <= 0.3 * bn + 1e-9, why))
    writes = [(a.worst["writes_per_h"], name) for (name, c), a in agg.items() if c == "project"]
    if writes:
        w, where = max(writes)
        out.append(Target("setpoint writes ≤ 1500 /h per battery", f"at most {w:.0f} /h ({where})", w <= 1500.0))
        gaps = [a.mean.get("min_frame_gap_s", math.inf) for (name, c), a in agg.items() if c == "project"]
        gap = min(gaps)
        out.append(Target("never faster than the bus pacing (50 ms between frames)",
                          f"shortest pause {gap * 1000:.0f} ms", gap >= 0.05 - 1e-6))
    stab = stability(agg)
    for lat, cad, label in ((2.0, 1.0, "2 s meter latency"), (0.3, 10.0, "10 s meter cadence")):
        s = stab.get((lat, cad))
        if s:
            out.append(Target(f"no sustained oscillation with {label}",
                              f"{s['crossings_per_h']:.0f} crossings/h (nominal {s['nominal_crossings_per_h']:.0f}),"
                              f" quiet p95−p5 {s['quiet_p95_p5_w']:.0f} W", bool(s["stable"])))
    for row in cadence_rows(agg):
        parts = ", ".join(f"{k} {a / b:.2f} ×" for k, (a, b) in row.per.items() if b)
        out.append(Target(f"meter cadence {row.label}: avoidable ≤ {CADENCE_RATIO:g} × ideal at that cadence",
                          f"{row.project_wh:.0f} Wh = {row.ratio:.2f} × ideal ({row.ideal_wh:.0f} Wh)",
                          row.ratio <= CADENCE_RATIO, parts))
        out.append(Target(f"meter cadence {row.label}: no sustained oscillation",
                          f"{row.crossings_project:.0f} crossings/h (ideal {row.crossings_ideal:.0f})",
                          row.stable, "crossings ≤ 2 × the ideal deadbeat's at that cadence"))
    trips = [(a.mean["sign_trips"], name) for (name, c), a in agg.items() if c == "project" and "sign_trips" in a.mean]
    if trips:
        tripped = [name for t, name in trips if t > 0]
        out.append(Target("sign check: never trips on a right meter", f"tripped in {len(tripped)} of {len(trips)} "
                          "scenarios", not tripped, ", ".join(tripped)))
    drops = [a for (name, c), a in agg.items() if c == "project" and name.startswith("dropout-")
             and "timeout" not in name]
    if drops:
        stop = max(a.worst["stop_cmd_s"] for a in drops)
        # A 10 s dropout ends before the lag has died out: only the longer ones show the time to 0 W.
        safes = [a.worst["safe_state_s"] for a in drops if not math.isinf(a.worst["safe_state_s"])]
        safe = f", all AC power < {SAFE_W:.0f} W after {max(safes):.1f} s" if safes else ""
        out.append(Target("meter dropout: batteries stopped within 10 s", f"stop written after {stop:.1f} s{safe}",
                          stop <= 10.0, "2 s meter request timeout, 2 failures before the stop"))
    eff, bal = _get(agg, "2bat-low-efficient", "project"), _get(agg, "2bat-low-balanced", "project")
    if eff and bal:
        out.append(Target("two batteries < 500 W: less conversion loss than an equal split",
                          f"{eff.mean['loss_wh']:.1f} Wh vs {bal.mean['loss_wh']:.1f} Wh",
                          eff.mean["loss_wh"] < bal.mean["loss_wh"]))
    imb = [a for (name, c), a in agg.items() if c == "project" and "balanced" in name and "low" not in name]
    if imb:
        worst = max(a.worst["imbalance_w"] for a in imb)
        out.append(Target("two batteries, balanced: share imbalance ≤ 25 W", f"{worst:.1f} W", worst <= 25.0))
    return out + fleet_targets(agg)


MULTI_STEPS = ("2bat-step", "3bat-step", "fleet-2v3-step", "fleet-mixed-step", "fleet-3gw-step")


def fleet_targets(agg: dict[tuple[str, str], Aggregate]) -> list[Target]:
    """Issue 10: multi-battery steps ≤ 1.2 × ideal, a 3 kW step on three batteries settles in ≤ 8 s, and a dead
    gateway delays the healthy units' writes by < 0.5 s."""
    out: list[Target] = []
    for name in sorted({n for (n, c) in agg if c == "project" and n.startswith(MULTI_STEPS)}):
        p, i = _get(agg, name, "project"), _get(agg, name, "ideal")
        if p and i and i.mean["avoidable_wh"] > 0:
            av, ai = p.mean["avoidable_wh"], i.mean["avoidable_wh"]
            out.append(Target(f"{name}: avoidable ≤ 1.2 × ideal", f"{av:.1f} Wh = {av / ai:.2f} × ideal ({ai:.1f} Wh)",
                              av <= 1.2 * ai))
    for name in ("fleet-3gw-step3000-dis", "3bat-step3000-dis"):
        a = _get(agg, name, "project")
        if a:
            where = "three gateways in parallel" if name.startswith("fleet") else "one gateway"
            i = _get(agg, name, "ideal")
            settle = a.mean["settle_mean_s"]
            why = "" if settle <= 8.0 or not i else (f"{PLANT_OVERSHOOT}: the ideal deadbeat needs "
                                                     f"{i.mean['settle_mean_s']:.1f} s")
            out.append(Target(f"3 kW step on three batteries ({where}): settle ≤ 8 s mean", f"{settle:.1f} s",
                              settle <= 8.0, why))
    dies = _get(agg, "fleet-2v3-gateway-dies", "project")
    if dies and "dead_gateway_write_delay_s" in dies.mean:
        delay = dies.worst["dead_gateway_write_delay_s"]
        out.append(Target("a dead gateway delays the healthy units' writes by < 0.5 s", f"{delay:.2f} s",
                          delay < 0.5, "the others stop waiting once it is silent for its usual frame time + 0.35 s"))
    return out


def _f(v: float, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "–"
    return f"{v:.{digits}f}"


def _pm(a: Aggregate | None, key: str, digits: int = 1) -> str:
    if a is None or key not in a.mean or math.isnan(a.mean[key]):
        return "–"
    if a.seeds > 1 and a.std[key] > 0:
        return f"{a.mean[key]:.{digits}f} ± {a.std[key]:.{digits}f}"
    return _f(a.mean[key], digits)


FLEET_NOTE = (
    "Also measured for issue 10 (three seeds, not re-run by this report): ordering a gateway's writes by the size o"
    'f the change changed nothing measurable (3bat-step3000-dis 10.15 vs 10.18 Wh, fleet-mixed 14.7 vs 15.2 Wh'
    ') and was not kept; staging (`distribution` efficient vs balanced) is what the mixed fleet pays for: bala'
    'nced gives 10.0 Wh = 1.51 × ideal instead of 15.2 Wh = 2.28 ×, the other steps move by ≤ 0.2 Wh. The rema'
    'ining gap to the ideal on the single-gateway and v3 steps is the frames themselves (v3: 150 ms pacing) an'
    "d the law's step response, not the gateway scheduling."
)


def fleet_section(agg: dict[tuple[str, str], Aggregate]) -> list[str]:
    """Several gateways: what parallel I/O contributes (the same three batteries behind one gateway, three
    gateways served one after the other, three in parallel), and the fleet scenarios' notes."""
    lines = ["## Several gateways", "",
             "| Three batteries, 3 kW step | Avoidable, Wh | Settle mean, s | Settle max, s |", "|---|---|---|---|"]
    for name, label in (("fleet-1gw-step3000-dis", "one gateway (every frame in series)"),
                        ("fleet-3gw-serial-step3000-dis", "three gateways, served one after the other"),
                        ("fleet-3gw-step3000-dis", "three gateways in parallel (the fleet)")):
        a = _get(agg, name, "project")
        if a:
            lines.append(f"| {label} | {_pm(a, 'avoidable_wh')} | {_pm(a, 'settle_mean_s')} | "
                         f"{_pm(a, 'settle_max_s')} |")
    ideal = _get(agg, "fleet-3gw-step3000-dis", "ideal")
    if ideal:
        lines.append(f"| ideal deadbeat | {_pm(ideal, 'avoidable_wh')} | – | – |")
    lines += ["",
              "The gateways run on a simulated-parallel clock: each gateway's frames advance its own time from the "
              "round's common start, writes reach the units at their gateway's moment, and the world advances to "
              "when the fleet stops waiting (every gateway done, or the rest silent for longer than their usual frame "
              "time + 0.35 s). "
              "Reads see the plant at the round's start (up to one gateway's read round early). "
              "`fleet-2v3-*`: two Venus E v3 on their own LAN ports (v3 pacing 150 ms); `fleet-mixed-*`: two v2 "
              "units behind one RS485 gateway and an 800 W v3 unit; `fleet-2v3-gateway-dies`: the second gateway "
              "stops answering at 120 s (its battery keeps its last setpoint, so after the step down the healthy "
              "one charges against it and the grid sits at the charge target: its second step does not settle "
              "into the ±25 W band around the discharge target); its delay is how long the healthy unit's writes wait "
              "after its own reads are done, worst cycle after the death against the median before.", "",
              FLEET_NOTE, ""]
    return lines


LABELS = {"none": "no battery", "floor": "targets alone", "naive": "naive (seed)", "ideal": "ideal deadbeat",
          "project": "this project"}


def markdown(scenarios: Sequence[Scenario], results: Sequence[RunResult], quick: bool, elapsed_s: float,  # noqa: C901 (one linear report, section after section)
             plot_name: str | None) -> str:
    agg = aggregate(results)
    order = list(dict.fromkeys(sc.name for sc in scenarios))
    seeds = {sc.name: sorted({s.seed for s in scenarios if s.name == sc.name}) for sc in scenarios}
    lines: list[str] = []
    w = lines.append
    w("# Control-quality benchmark")
    w("")
    w(f"Generated by `python -m benchmark{' --quick' if quick else ''}` ({len(results)} runs, "
      f"{elapsed_s:.0f} s wall clock). Deterministic: the same code gives the same numbers.")
    w("")
    w("**What runs.** The real control thread `control.control_loop.ControlLoop` with the real `zero_feed_control` law "
      "and the "
      "real `battery_client.MarstekGateway` (register writes, pacing), on one simulated clock. Only the wire is "
      "simulated: Modbus frames go to `simulator.marstek.SimUnit` register maps on `simulator.physics.BatteryPlant`, "
      "the grid "
      "meter is `simulator.physics.MeterModel` behind the `GridMeter` interface.")
    w("")
    w("**Model** (zero-feed-control.md §6): per battery a Modbus write takes 0.15 s, a read 0.05 s, 50 ms pacing "
      "between frames; then 0.5 s dead time and a first-order lag τ = 1.0 s; ±2500 W, 5.12 kWh, SoC from the "
      "measured Venus efficiency curve, BMS cut-off at 11 % / 100 %. Meter: sample-and-hold every 1 s, delivered "
      "0.3 s late, noise σ = 10 W, 1 W steps; a dropout is a request that times out after 2 s. Metrics are "
      "integrated every 0.1 s while a battery moves; SoC limits use the SoC as the battery reports it "
      "(whole percent).")
    w("")
    w("**The real firmware on top** (issue 9, README „Firmware-Eigenheiten“): the AC power overshoots a new setpoint "
      "by ~7 % (peak about 3 s after the dead time, within 2 % again after ~7 s; every controller's plant, the ideal "
      "deadbeat's too), a resting battery draws 10 W from the house, setpoints below 50 W are ignored, v3 units pace "
      "their frames 150 ms apart. Since this plant the 2 kW step settles more slowly and overshoots by what the "
      "battery itself does: the targets written for the first-order plant of §6 (settle ≤ 8 s, overshoot ≤ 50 W) "
      "are out of reach for every controller, the ideal deadbeat included (see their rows); the row "
      "\"overshoot ≤ the plant's own + 50 W\" keeps the old promise for what the control itself adds.")
    w("")
    w("**Controllers.** *no battery*: the batteries stay idle. *targets alone*: batteries that follow the grid "
      "targets instantly and exactly (no delay at all; what the targets and limits alone cost). "
      "*naive (seed)*: the original program's law, "
      "`control.algorithm = \"seed\"` with a 2 s cycle (3-value weighted average, no read-back, ≤ 750 W per "
      "cycle, equal split). *ideal deadbeat*: acts on every new meter sample with the exact battery power at the "
      "sample instant (`P(t_sample) + grid − target`), same plant, meter and write delay, no deadband, no rate "
      "limit. *this project*: `control.algorithm = \"fast\"` with the default tuning and a 1 s cycle. All use the "
      "grid targets −20 W (charging) / +20 W (discharging) and the SoC window 11–98 %.")
    w("")
    w("Avoidable import/export: import (export) while a battery could still have discharged (charged), i.e. SoC "
      "inside the window and more than 5 W of power left; battery export: export that came out of a battery. "
      "Settle: error within ±25 W of the achievable target and held 10 s. Definitions: zero-feed-control.md §5 "
      "and `control/quality.py`. Figures with ± are mean ± standard deviation over the seeds.")
    w("")
    targets = evaluate_targets(agg)
    w("## Targets")
    w("")
    w("| Target | Measured | Met | Note |")
    w("|---|---|---|---|")
    for t in targets:
        mark = "✅" if t.met else "❌" if t.met is not None else "–"
        w(f"| {t.text} | {t.measured} | {mark} | {t.note} |")
    w("")
    verdict = beats_naive(agg)
    losers = [n for n, (ok, _) in verdict.items() if not ok]
    w(f"This project's controller beats the naive algorithm on {len(verdict) - len(losers)} of {len(verdict)} "
      "scenarios (lower avoidable energy, no more battery export, after a meter dropout no later stop)"
      + (": all of them." if not losers else f"; not on: {', '.join(losers)}."))
    w("")
    w("## Energy")
    w("")
    w("| Scenario | Seeds | Avoidable import + export, Wh: no battery | targets alone | naive | ideal | this project "
      "| project / ideal | project / naive | Battery export, Wh: naive | ideal | this project "
      "| Import / export, Wh: naive | ideal | this project |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    def flows(a: Aggregate | None) -> str:
        return "–" if a is None else f"{a.mean['import_wh']:.0f} / {a.mean['export_wh']:.0f}"

    for name in order:
        if name.startswith("sweep-") or (name, "naive") not in agg:
            continue
        by_ctrl = {c: _get(agg, name, c) for c in CONTROLLERS}
        p, i, n = by_ctrl["project"], by_ctrl["ideal"], by_ctrl["naive"]
        r_i = _f(p.mean["avoidable_wh"] / i.mean["avoidable_wh"], 2) if p and i else "–"
        r_n = _f(p.mean["avoidable_wh"] / n.mean["avoidable_wh"], 2) if p and n else "–"
        w(f"| {name} | {len(seeds[name])} | {_pm(by_ctrl['none'], 'avoidable_wh')} | "
          f"{_pm(by_ctrl['floor'], 'avoidable_wh')} | "
          f"{_pm(n, 'avoidable_wh')} | "
          f"{_pm(i, 'avoidable_wh')} | **{_pm(p, 'avoidable_wh')}** | {r_i} | {r_n} | {_pm(n, 'battery_export_wh')} | "
          f"{_pm(i, 'battery_export_wh')} | **{_pm(p, 'battery_export_wh')}** | {flows(n)} | {flows(i)} | "
          f"{flows(p)} |")
    w("")
    w("## Step responses")
    w("")
    if plot_name:
        w(f"![Step responses]({plot_name})")
        w("")
    w("| Scenario | Controller | Settle mean / p95, s | Overshoot, W (worst) | Step energy, Wh | Steady RMS, W |")
    w("|---|---|---|---|---|---|")
    for name in order:
        for c in CONTROLLERS:
            a = _get(agg, name, c)
            if a is None or "settle_mean_s" not in a.mean or c in ("none", "floor") or name.startswith("sweep-"):
                continue
            settle = f"{statistics.fmean(a.settles):.1f} / {p95(a.settles):.1f}" if a.settles else "–"
            if a.settles and max(a.settles) >= UNSETTLED_S:
                settle += " (unsettled)"
            w(f"| {name} | {LABELS[c]} | {settle} | {_f(a.worst['overshoot_w'], 0)} | "
              f"{_pm(a, 'step_energy_wh', 2)} | {_pm(a, 'steady_rms_w')} |")
    w("")
    w("## Regulation")
    w("")
    w("| Scenario | Controller | RMS error, W | Band crossings /h | Time within ±25 W, % | Writes /h per battery "
      "| Mode switches /h | Conversion loss, Wh |")
    w("|---|---|---|---|---|---|---|---|")
    for name in order:
        if name.startswith(("sweep-", "dropout-", "targets")):
            continue
        for c in ("naive", "ideal", "project"):
            a = _get(agg, name, c)
            if a is None:
                continue
            w(f"| {name} | {LABELS[c]} | {_pm(a, 'rms_w')} | {_pm(a, 'crossings_per_h', 0)} | "
              f"{_pm(a, 'in_band_pct')} | {_pm(a, 'writes_per_h', 0)} | {_pm(a, 'mode_switches_per_h', 0)} | "
              f"{_pm(a, 'loss_wh')} |")
    w("")
    multi = [n for n in order if n.startswith(("2bat", "3bat", "fleet-"))]
    if multi:
        w("## Several batteries")
        w("")
        w("| Scenario | Controller | Conversion loss, Wh | Share imbalance, W | SoC spread at the end, % | "
          "Avoidable, Wh | Writes /h per battery |")
        w("|---|---|---|---|---|---|---|")
        for name in multi:
            for c in ("naive", "ideal", "project"):
                a = _get(agg, name, c)
                if a is None:
                    continue
                w(f"| {name} | {LABELS[c]} | {_pm(a, 'loss_wh')} | {_pm(a, 'imbalance_w')} | "
                  f"{_pm(a, 'soc_spread_pct')} | {_pm(a, 'avoidable_wh')} | {_pm(a, 'writes_per_h', 0)} |")
        w("")
        w("*efficient* (default): as few batteries as needed, the fullest discharges and the emptiest charges "
          "first; *balanced*: equal shares. The `2bat-low-*` runs step through 140–540 W of house load.")
        w("")
    if any(n.startswith("fleet-") for n in order):
        for line in fleet_section(agg):
            w(line)
    drops = [n for n in order if n.startswith("dropout-")]
    if drops:
        w("## Meter dropout")
        w("")
        w("1300 W load, battery discharging; the meter stops answering at 60 s (each request times out); the load "
          "falls by 800 W at 65 s.")
        w("")
        w("| Scenario | Controller | Stop written after, s | All batteries < 10 W after, s | Export during the "
          "dropout, Wh | of it from the battery, Wh | Recovery overshoot, W |")
        w("|---|---|---|---|---|---|---|")
        for name in drops:
            for c in ("none", "naive", "project"):
                a = _get(agg, name, c)
                if a is None or c == "none":
                    continue
                w(f"| {name} | {LABELS[c]} | {_f(a.mean['stop_cmd_s'])} | {_f(a.mean['safe_state_s'])} | "
                  f"{_f(a.mean['dropout_export_wh'], 2)} | {_f(a.mean['dropout_battery_export_wh'], 2)} | "
                  f"{_f(a.mean['recovery_overshoot_w'], 0)} |")
        w("")
    stab = stability(agg)
    if stab:
        w("## Meter latency and cadence")
        w("")
        w("2 kW step (settle, overshoot) and the noisy load (band crossings) with other meters. Stable (§5): "
          "crossings ≤ 2 × the nominal meter's and the quiet grid's p95 − p5 < 100 W.")
        w("")
        w("| Latency, s | Cadence, s | Settle, s: ideal | naive | this project | Overshoot, W: project | "
          "Crossings /h: ideal | naive | project | Quiet p95−p5, W | Stable |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for lat, cad in sorted(stab, key=lambda k: (k[1], k[0])):
            tag = f"lat{lat:g}-cad{cad:g}"
            st = {c: _get(agg, f"sweep-step2000-{tag}", c) for c in ("ideal", "naive", "project")}
            no = {c: _get(agg, f"sweep-noisy-{tag}", c) for c in ("ideal", "naive", "project")}
            s = stab[lat, cad]

            def settle_text(a: Aggregate | None) -> str:
                return "–" if a is None else ("> 600" if a.mean["settle_mean_s"] >= UNSETTLED_S
                                              else _f(a.mean["settle_mean_s"]))

            w(f"| {lat:g} | {cad:g} | {settle_text(st['ideal'])} | {settle_text(st['naive'])} | "
              f"{settle_text(st['project'])} | "
              f"{_f(st['project'].worst['overshoot_w'], 0) if st['project'] else '–'} | "
              f"{_pm(no['ideal'], 'crossings_per_h', 0)} | {_pm(no['naive'], 'crossings_per_h', 0)} | "
              f"{_pm(no['project'], 'crossings_per_h', 0)} | {_f(s['quiet_p95_p5_w'], 0)} | "
              f"{'yes' if s['stable'] else 'no'} |")
        w("")
    cad_rows = cadence_rows(agg)
    if cad_rows:
        w("## Meter cadence")
        w("")
        w("Slow meters (issue 11): the same house with a meter that delivers a new value only every 1 s (Shelly), "
          "2 s, 5 s (HomeWizard-like), 10 s (P1 DSMR 4) or 30 s (IR reading head), against the ideal deadbeat at "
          "the same cadence and latency. Scenarios: `day24-pv800` 07:00–13:00"
          + (" (quick: 1 h)" if quick else "") + " and `trace-rae`" + (" 30 min" if quick else " 3 h") + ". "
          f"Target: avoidable energy ≤ {CADENCE_RATIO:g} × the ideal's at every cadence, and no sustained "
          "oscillation (band crossings ≤ 2 × the ideal's).")
        w("")
        w("| Cadence, s | Latency, s | Meter | Avoidable, Wh: ideal | this project | project / ideal | per scenario "
          "| Crossings /h: ideal | this project | Stable | Sign check tripped |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in cad_rows:
            per = ", ".join(f"{k} {a / b:.2f}" for k, (a, b) in row.per.items() if b)
            w(f"| {row.cadence_s:g} | {row.latency_s:g} | {row.label} | {_f(row.ideal_wh)} | {_f(row.project_wh)} | "
              f"{row.ratio:.2f} | {per} | {row.crossings_ideal:.0f} | {row.crossings_project:.0f} | "
              f"{'yes' if row.stable else 'no'} | {'yes' if row.sign_trips else 'no'} |")
        w("")
    variants = [n for n in order if n.startswith("targets")]
    if variants:
        w("## Grid targets")
        w("")
        w("The avoidable energy includes what the grid targets themselves cost: discharging aims at +20 W import, "
          "charging at −20 W export. *targets alone* is a battery that follows the targets instantly and exactly. "
          "The same scenarios with other targets (this project's controller):")
        w("")
        w("| Scenario | Targets discharge / charge, W | Avoidable, Wh: targets alone | this project | "
          "Battery export, Wh | naive at −20/+20 W, Wh |")
        w("|---|---|---|---|---|---|")
        def seed1(name: str, ctrl: str, key: str) -> str:
            vals = [r.values[key] for r in results if r.scenario == name and r.controller == ctrl and r.seed == 1]
            return _f(vals[0]) if vals else "–"

        bases = [n for n in order if any(v.endswith(": " + n) for v in variants)]
        for base in bases:
            rows = [(base, "+20 / −20 (default)")]
            rows += [(v, v.split(" ")[1].replace("/", " / ")) for v in variants if v.endswith(": " + base)]
            for name, label in rows:
                w(f"| {base} (seed 1) | {label} | {seed1(name, 'floor', 'avoidable_wh')} | "
                  f"{seed1(name, 'project', 'avoidable_wh')} | {seed1(name, 'project', 'battery_export_wh')} | "
                  f"{seed1(base, 'naive', 'avoidable_wh')} |")
        w("")
    w("## Scenarios and data")
    w("")
    w("* `step{500,2000}-{dis,chg}`: base load 300 W (PV 0 W, or PV 3000 W on the charge side); at 60 s the load "
      "rises by 500 / 2000 W for 180 s. Settle and overshoot are taken on both edges; the seed moves the step "
      "against the meter's sampling instants and sets the meter noise.")
    w("* `pv-zero-cross`: load 500 W, PV 1500 W; at 60 s PV falls to 300 W within 5 s for 2 min (charging turns "
      "into discharging), then back.")
    w("* `washer`: 300 W plus washing-machine pulses 330 W / 120 W every 8 s. `noisy`: 400 W plus a new "
      "uniform(−150, 150) W every second.")
    w("* `day24-pv800`, `day24-pv3000`: the reference's seeded day \"household-pv-24h v1\" (zero-feed-control.md "
      "§6, implemented in `household_pv_24h`), PV peak 800 W or 3000 W, SoC 50 % at midnight.")
    if not quick:
        energies = []
        for peak in (800.0, 3000.0):
            load, pv = household_pv_24h(1, peak)
            energies.append(f"PV peak {peak:.0f} W: load {sum(load) / 3.6e6:.2f} kWh, PV {sum(pv) / 3.6e6:.2f} kWh")
        w(f"  Seed 1 daily energies: {'; '.join(energies)}.")
    w("* `trace-rae`: 6 h of a real 1 Hz household load, no PV, SoC 50 %. Source: Makonin, S. (2018). "
      "*Rainforest Automation Energy Dataset (RAE)*, House 1 mains. Harvard Dataverse, "
      "https://doi.org/10.7910/DVN/ZJW4LC; paper: Makonin, Wang & Tumpach (2018), *Data* 3(1):8. Licence "
      "CC BY 4.0. Excerpt as published in tomquist/AstraMeter, values unmodified; in this repository as "
      "`data/traces/rae_household_1hz.csv` (attribution and licence note in `data/traces/README.md`).")
    w(f"* `trace-cyprus`: 7 h of real PV generation and household load (2022-09-01 09:00–16:00, partly cloudy) at "
      f"30 s resolution, both scaled × {CYPRUS_SCALE} to a balcony-size system and interpolated linearly to 1 s; "
      f"SoC {CYPRUS_SOC:.0f} % at the start so the battery can take the surplus for hours. Source: Venizelou et al. "
      "(2023). *Photovoltaic Generation and Load Demand Datasets with 30 seconds resolution from an Actual Prosumer "
      "in Cyprus*. Zenodo, https://doi.org/10.5281/zenodo.8348862. Licence CC BY 4.0. Excerpt as published in "
      "tomquist/AstraMeter, values unmodified; in this repository as `data/traces/cyprus_pv_load_30s.csv`.")
    w("* Several batteries: SoC 30 % / 70 % (and 50 % for the third; the third one has 1200 W, which the "
      "controller is not told: `battery.max_power_per_battery` stays 2500 W); `*-balanced-*` run "
      "`control.distribution = \"balanced\"`.")
    w("* `dropout-*`: see above; `-timeout5s` uses the config's default meter timeout of 5 s instead of 2 s.")
    w("")
    return "\n".join(lines) + "\n"


def plot_steps(results: Sequence[RunResult], path: Path) -> bool:
    """PNG of the 2 kW step responses (seed 1, both edges); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = {r.controller: r for r in results if r.scenario == "step2000-dis" and r.seed == 1 and r.trace}
    if not runs:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = {"none": "#bbbbbb", "naive": "#d62728", "ideal": "#2ca02c", "project": "#1f77b4"}
    for ax, (t0, title) in zip(axes, ((60.0, "load +2000 W"), (240.0, "load −2000 W")), strict=True):
        for c in ("naive", "ideal", "project"):
            r = runs.get(c)
            if r is None:
                continue
            ts = t0 + r.shift_s
            pts = [(t - ts, g) for t, g, _, _ in r.trace if ts - 5 <= t <= ts + 40]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=LABELS[c], color=colours[c], lw=1.4)
        ax.axhline(20.0, color="#555555", lw=0.8, ls="--")
        ax.set_title(f"2 kW step, {title}")
        ax.set_xlabel("time after the step, s")
        ax.set_ylim(-2200, 2200)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("grid power, W (+ import)")
    axes[0].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
