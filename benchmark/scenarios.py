"""Benchmark scenarios: house profiles, batteries and meters as data (zero-feed-control.md §6).

Pure and deterministic: every scenario is built from its seed. ``scenario_set`` is the full set and the
quick CI subset; the real traces come from ``data/traces/`` (CC BY 4.0, attribution in its README and
in docs/benchmark.md). ``bench_runner`` runs them, ``bench_report`` turns the results into the report.
"""

from __future__ import annotations

import csv
import io
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from simulator.world import PlantParams

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "traces"
CONTROLLERS = ("none", "floor", "naive", "ideal", "project")

@dataclass(frozen=True)
class MeterSpec:
    cadence_s: float = 1.0
    latency_s: float = 0.3
    noise_w: float = 10.0
    timeout_s: float = 2.0  # how long a failed request takes (dropouts)


@dataclass(frozen=True)
class Scenario:
    """One benchmark case: a house profile (per ``slot_s``), batteries, meter, faults."""

    name: str
    group: str
    load_w: tuple[float, ...]
    pv_w: tuple[float, ...]
    slot_s: float = 1.0
    socs: tuple[float, ...] = (50.0,)
    max_power_w: tuple[float, ...] = (2500.0,)
    meter: MeterSpec = MeterSpec()
    plant: PlantParams = field(default_factory=PlantParams)
    dropouts: tuple[tuple[float, float], ...] = ()
    events_s: tuple[float, ...] = ()  # load steps for the settle metrics
    seed: int = 1
    shift_s: float = 0.0  # moves the profile against the meter ticks (step phase)
    control: tuple[tuple[str, Any], ...] = ()  # extra config keys for the project controller
    controllers: tuple[str, ...] = CONTROLLERS
    record: bool = False  # keep the 0.1 s trace (step metrics, plots)
    # Several gateways: units per gateway in order (() = every battery behind one gateway, the seed form),
    # each battery's register set (() = all "v2"), served in parallel (False: one after the other), and
    # the moment the last gateway stops answering (None: never).
    gateways: tuple[int, ...] = ()
    register_sets: tuple[str, ...] = ()
    parallel: bool = True
    gateway_dies_s: float | None = None

    @property
    def duration_s(self) -> float:
        return len(self.load_w) * self.slot_s

    @property
    def batteries(self) -> int:
        return len(self.socs)


def _slots(duration_s: float, fn: Callable[[int], float]) -> tuple[float, ...]:
    return tuple(fn(i) for i in range(int(duration_s)))


def step_scenario(size_w: float, charge_side: bool, seed: int, **kw: Any) -> Scenario:
    """§6 step±X: base 300 W, at 60 s load +X for 180 s, then back; charge side with PV 3000 W."""
    rng = random.Random(1000 + seed)
    load = _slots(480, lambda i: 300.0 + (size_w if 60 <= i < 240 else 0.0))
    pv = _slots(480, lambda i: 3000.0 if charge_side else 0.0)
    side = "chg" if charge_side else "dis"
    name = kw.pop("name", f"step{size_w:.0f}-{side}")
    return Scenario(name, "step", load, pv, events_s=(60.0, 240.0), seed=seed, shift_s=rng.uniform(0.0, 1.0),
                    record=True, **kw)


def pv_zero_cross(seed: int) -> Scenario:
    """Load 500 W, PV 1500 W; at 60 s PV ramps to 300 W over 5 s, for 120 s, then back."""

    def pv(i: int) -> float:
        if i < 60 or i >= 190:
            return 1500.0
        if i < 65:
            return 1500.0 - 1200.0 * (i - 60 + 1) / 5.0
        if i < 185:
            return 300.0
        return 300.0 + 1200.0 * (i - 185 + 1) / 5.0

    rng = random.Random(2000 + seed)
    return Scenario("pv-zero-cross", "pv", _slots(420, lambda i: 500.0), _slots(420, pv), events_s=(60.0, 185.0),
                    seed=seed, shift_s=rng.uniform(0.0, 1.0), record=True)


def washer(seed: int, minutes: float = 30.0) -> Scenario:
    """Base 300 W plus washing-machine pulses 330 W for 8 s / 120 W for 8 s."""
    load = _slots(minutes * 60, lambda i: 300.0 + (330.0 if (i // 8) % 2 == 0 else 120.0))
    return Scenario("washer", "washer", load, _slots(minutes * 60, lambda i: 0.0), seed=seed)


def noisy(seed: int, minutes: float = 60.0, **kw: Any) -> Scenario:
    """400 W plus a new uniform(-150, 150) W every second."""
    rng = random.Random(seed)
    load = tuple(400.0 + rng.uniform(-150.0, 150.0) for _ in range(int(minutes * 60)))
    name = kw.pop("name", "noisy")
    return Scenario(name, "noisy", load, tuple(0.0 for _ in load), seed=seed, **kw)


def household_pv_24h(seed: int, pv_peak_w: float) -> tuple[list[float], list[float]]:  # noqa: C901 (the reference's procedure, draw by draw in its order)
    """The reference's seeded day "household-pv-24h v1" (zero-feed-control.md §6), 1 s resolution."""
    rng = random.Random(seed)
    n = 86400
    h = 3600
    load = [150.0] * n
    for t in range(int(6.5 * h), 8 * h):
        load[t] += 100.0
    for t in range(18 * h, 23 * h):
        load[t] += 200.0
    phase = rng.uniform(0.0, 1800.0)
    for t in range(n):
        if (t - phase) % 1800.0 < 600.0:
            load[t] += 100.0

    def add(start: float, seconds: float, watts: float) -> float:
        for t in range(max(0, math.ceil(start)), min(n, math.ceil(start + seconds))):
            load[t] += watts
        return start + seconds

    for _ in range(4):  # kettle
        start = rng.uniform(6 * h, 22 * h)
        add(start, rng.uniform(90.0, 240.0), 2000.0)
    for _ in range(2):  # microwave
        start = rng.uniform(11 * h, 20 * h)
        add(start, rng.uniform(60.0, 180.0), 1100.0)
    start = rng.uniform(17 * h, 19 * h)  # oven: 600 s heating, then 45 min of on/off pairs
    at = add(start, 600.0, 2400.0)
    end = at + 45 * 60
    while at < end:
        at = add(at, min(rng.uniform(40.0, 90.0), end - at), 2400.0)
        at += rng.uniform(60.0, 120.0)
    start = rng.uniform(9 * h, 14 * h)  # washing machine
    at = add(start, 900.0, 2000.0)
    end = at + 60 * 60
    high = True
    while at < end:
        at = add(at, min(8.0, end - at), 330.0 if high else 120.0)
        high = not high
    add(end, 300.0, 500.0)
    start = rng.uniform(19.5 * h, 21.5 * h)  # dishwasher
    at = add(start, 1200.0, 1800.0)
    at = add(at, 1800.0, 80.0)
    add(at, 900.0, 1800.0)
    # Clouds: a two-state chain drawn each minute 06:00-19:59, changes ramp over 20 s.
    cloud = [1.0] * n
    level, cloudy = 1.0, False
    for minute in range(6 * 60, 20 * 60):
        u = rng.random()
        new = level
        if not cloudy and u < 0.04:
            cloudy, new = True, rng.uniform(0.15, 0.40)
        elif cloudy and u < 0.20:
            cloudy, new = False, 1.0
        t0 = minute * 60
        for t in range(t0, min(n, t0 + 60)):
            ramp = min(1.0, (t - t0) / 20.0)
            cloud[t] = level + (new - level) * ramp
        level = new
    for t in range(20 * h, n):
        cloud[t] = level
    pv = [0.0] * n
    for t in range(6 * h, 20 * h):
        pv[t] = pv_peak_w * math.sin(math.pi * (t - 6 * h) / (14 * h)) * cloud[t]
    for t in range(n):
        load[t] = max(50.0, load[t] + rng.gauss(0.0, 15.0))
    return load, pv


def day24(seed: int, pv_peak_w: float, start_h: float = 0.0, hours: float = 24.0, **kw: Any) -> Scenario:
    load, pv = household_pv_24h(seed, pv_peak_w)
    a, b = int(start_h * 3600), int((start_h + hours) * 3600)
    name = kw.pop("name", f"day24-pv{pv_peak_w:.0f}")
    return Scenario(name, "day24", tuple(load[a:b]), tuple(pv[a:b]), seed=seed, **kw)


def _read_trace(name: str, data_dir: Path) -> list[dict[str, float]]:
    text = (data_dir / name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO("\n".join(lines)))]


def rae_trace(data_dir: Path, start_h: float = 0.0, hours: float = 6.0, seed: int = 1) -> Scenario:
    """6 h of a real 1 Hz household load (RAE House 1), no PV."""
    rows = _read_trace("rae_household_1hz.csv", data_dir)
    watts = [r["watts"] for r in rows][int(start_h * 3600):int((start_h + hours) * 3600)]
    return Scenario("trace-rae", "trace", tuple(watts), tuple(0.0 for _ in watts), seed=seed)


TARGET_VARIANTS = ((20.0, 0.0), (10.0, -10.0))  # (discharge, charge) grid targets beside the default
CYPRUS_SCALE = 0.45  # balcony-size system (data README)
CYPRUS_SOC = 20.0  # starts nearly empty so the battery can absorb the midday surplus for hours


def cyprus_trace(data_dir: Path, start_h: float = 0.0, hours: float = 7.0, seed: int = 1) -> Scenario:
    """7 h real PV + load at 30 s resolution, scaled × 0.45 and interpolated to 1 s."""
    rows = _read_trace("cyprus_pv_load_30s.csv", data_dir)
    ts = [r["t_s"] for r in rows]

    def interp(col: str, t: float) -> float:
        i = min(max(0, int(t // 30)), len(rows) - 2)
        a, b = rows[i][col], rows[i + 1][col]
        frac = min(1.0, max(0.0, (t - ts[i]) / (ts[i + 1] - ts[i])))
        return CYPRUS_SCALE * (a + (b - a) * frac)

    a, b = int(start_h * 3600), int(min(start_h + hours, (ts[-1] + 30) / 3600) * 3600)
    load = tuple(interp("load_w", t) for t in range(a, b))
    pv = tuple(interp("pv_w", t) for t in range(a, b))
    return Scenario("trace-cyprus", "trace", load, pv, socs=(CYPRUS_SOC,), seed=seed)


def dropout(seconds: float, seed: int = 1, timeout_s: float = 2.0) -> Scenario:
    """1300 W load, battery discharging; the meter dies at 60 s for ``seconds``; load -800 W at 65 s."""
    duration = 60 + seconds + 120
    load = _slots(duration, lambda i: 1300.0 if i < 65 else 500.0)
    name = f"dropout-{seconds:.0f}s" + ("" if timeout_s == 2.0 else f"-timeout{timeout_s:.0f}s")
    return Scenario(name, "dropout", load, _slots(duration, lambda i: 0.0), dropouts=((60.0, 60.0 + seconds),),
                    meter=MeterSpec(timeout_s=timeout_s), seed=seed, controllers=("none", "naive", "project"),
                    record=True)


def low_demand(seed: int, distribution: str, minutes_each: float = 10.0) -> Scenario:
    """Two batteries at demands 120..480 W (staging vs equal split)."""
    levels = (140.0, 240.0, 340.0, 440.0, 540.0)
    per = int(minutes_each * 60)
    load = tuple(levels[min(i // per, len(levels) - 1)] for i in range(per * len(levels)))
    return Scenario(f"2bat-low-{distribution}", "multi", load, tuple(0.0 for _ in load), socs=(50.0, 50.0),
                    max_power_w=(2500.0, 2500.0), seed=seed, control=(("distribution", distribution),),
                    controllers=("project",))


def fleet_scenarios(seeds: Sequence[int]) -> list[Scenario]:
    """Several gateways: two v3 LAN units, a mixed fleet with an 800 W unit, three batteries on three
    gateways against the same on one (parallel vs serial I/O), and a gateway that dies mid-run."""
    out: list[Scenario] = []
    v3_pair: dict[str, Any] = {"socs": (30.0, 70.0), "max_power_w": (2500.0, 2500.0), "gateways": (1, 1),
                               "register_sets": ("v3", "v3")}
    mixed: dict[str, Any] = {"socs": (30.0, 50.0, 70.0), "max_power_w": (2500.0, 2500.0, 800.0),
                             "gateways": (2, 1), "register_sets": ("v2", "v2", "v3")}
    three: dict[str, Any] = {"socs": (30.0, 50.0, 70.0), "max_power_w": (2500.0, 2500.0, 1200.0)}
    for seed in seeds:
        out.append(step_scenario(2000, False, seed, name="fleet-2v3-step2000-dis", **v3_pair))
        out.append(step_scenario(2000, True, seed, name="fleet-2v3-step2000-chg", **v3_pair))
        out.append(step_scenario(3000, False, seed, name="fleet-mixed-step3000-dis", **mixed))
        out.append(step_scenario(3000, False, seed, name="fleet-3gw-step3000-dis", gateways=(1, 1, 1), **three))
        out.append(step_scenario(3000, False, seed, name="fleet-3gw-serial-step3000-dis", gateways=(1, 1, 1),
                                 parallel=False, controllers=("project",), **three))
        out.append(step_scenario(3000, False, seed, name="fleet-1gw-step3000-dis", controllers=("project",), **three))
    out.append(step_scenario(1500, False, 1, name="fleet-2v3-gateway-dies", gateway_dies_s=120.0,
                             controllers=("project",), **v3_pair))
    return [replace(sc, group="fleet") for sc in out]


# Meter cadence rows (issue 11): (cadence s, latency s, what reads that slowly).
CADENCE_ROWS: tuple[tuple[float, float, str], ...] = (
    (1.0, 0.3, "1 s Shelly"),
    (2.0, 0.3, "2 s"),
    (5.0, 0.5, "5 s HomeWizard-like"),
    (10.0, 0.5, "10 s P1 DSMR 4"),
    (30.0, 1.0, "30 s IR reader"),
)


def cadence_scenarios(quick: bool, data_dir: Path = DATA_DIR) -> list[Scenario]:
    """The same house at every meter cadence of ``CADENCE_ROWS``, against the ideal deadbeat at that cadence."""
    out: list[Scenario] = []
    for cad, lat, _ in CADENCE_ROWS:
        spec = MeterSpec(cadence_s=cad, latency_s=lat)
        base = day24(1, 800.0, start_h=7.0, hours=1.0 if quick else 6.0)
        out.append(replace(base, name=f"cadence{cad:g}-day24-pv800", group="cadence", meter=spec,
                           controllers=("ideal", "project")))
        if (data_dir / "rae_household_1hz.csv").exists():
            rae = rae_trace(data_dir, hours=0.5 if quick else 3.0)
            out.append(replace(rae, name=f"cadence{cad:g}-trace-rae", group="cadence", meter=spec,
                               controllers=("ideal", "project")))
    return out


def scenario_set(quick: bool, data_dir: Path = DATA_DIR) -> list[Scenario]:  # noqa: C901 (the list of scenarios)
    seeds = (1, 2) if quick else (1, 2, 3, 4, 5)
    out: list[Scenario] = []
    for seed in seeds:
        out += [step_scenario(2000, False, seed), step_scenario(2000, True, seed)]
        if not quick or seed == 1:
            out += [step_scenario(500, False, seed), step_scenario(500, True, seed)]
    out += [pv_zero_cross(s) for s in seeds[:1 if quick else 5]]
    out.append(washer(1, minutes=10 if quick else 30))
    out += [noisy(s, minutes=10 if quick else 60) for s in seeds[:1 if quick else 3]]
    if quick:
        out.append(day24(1, 3000.0, start_h=16.0, hours=1.5, name="day24-pv3000-1600"))
        out.append(day24(1, 800.0, start_h=11.0, hours=1.0, name="day24-pv800-1100"))
    else:
        for seed in seeds:
            out += [day24(seed, 800.0), day24(seed, 3000.0)]
    if (data_dir / "rae_household_1hz.csv").exists():
        out.append(rae_trace(data_dir, hours=1.0) if quick else rae_trace(data_dir))
        out.append(cyprus_trace(data_dir, start_h=1.0, hours=1.0) if quick else cyprus_trace(data_dir))
    # Several batteries
    two: dict[str, Any] = {"socs": (30.0, 70.0), "max_power_w": (2500.0, 2500.0)}
    for seed in seeds[:1 if quick else 3]:
        out.append(step_scenario(2000, False, seed, name="2bat-step2000-dis", **two))
        out.append(step_scenario(2000, True, seed, name="2bat-step2000-chg", **two))
        out.append(step_scenario(2000, False, seed, name="2bat-balanced-step2000",
                                 control=(("distribution", "balanced"),), controllers=("project",), **two))
        if not quick:
            out.append(step_scenario(3000, False, seed, name="3bat-step3000-dis", socs=(30.0, 50.0, 70.0),
                                     max_power_w=(2500.0, 2500.0, 1200.0)))
    out += fleet_scenarios(seeds[:1 if quick else 3])
    # More than the 1200 W unit can take: its share must go to the others.
    out.append(step_scenario(4200, False, 1, name="3bat-step4200-dis", socs=(30.0, 50.0, 70.0),
                             max_power_w=(2500.0, 2500.0, 1200.0)))
    if not quick:
        out.append(replace(day24(1, 3000.0), name="2bat-day24-pv3000", **two))
        out.append(replace(day24(1, 3000.0), name="2bat-balanced-day24-pv3000", control=(("distribution", "balanced"),),
                           controllers=("project",), **two))
    for dist in ("efficient", "balanced"):
        out.append(low_demand(1, dist, minutes_each=2 if quick else 10))
    for seconds in ((60,) if quick else (10, 60, 600)):
        out.append(dropout(seconds))
    if not quick:
        out.append(dropout(60, timeout_s=5.0))
    # Other grid targets (the default is -20 W charging / +20 W discharging)
    if not quick:
        bases = [day24(1, 800.0)]
        if (data_dir / "rae_household_1hz.csv").exists():
            bases += [rae_trace(data_dir), cyprus_trace(data_dir)]
        for base in bases:
            for dis, chg in TARGET_VARIANTS:
                out.append(replace(base, name=f"targets {dis:+g}/{chg:+g} W: {base.name}", group="targets",
                                   control=(("target_grid_power_discharge", dis), ("target_grid_power_charge", chg)),
                                   controllers=("floor", "project")))
    # Meter latency / cadence
    sweep = [(2.0, 1.0), (0.3, 10.0)] if quick else [
        (lat, cad) for cad in (1.0, 2.0, 5.0, 10.0) for lat in (0.0, 0.3, 0.5, 1.0, 2.0, 3.0)]
    for lat, cad in sweep:
        spec = MeterSpec(cadence_s=cad, latency_s=lat)
        tag = f"lat{lat:g}-cad{cad:g}"
        ctrls = ("naive", "ideal", "project")
        out.append(step_scenario(2000, False, 1, name=f"sweep-step2000-{tag}", meter=spec, controllers=ctrls))
        out.append(replace(noisy(1, minutes=10 if quick else 30, name=f"sweep-noisy-{tag}", meter=spec),
                           group="sweep", controllers=ctrls))
    out += cadence_scenarios(quick, data_dir)
    return [replace(sc, group="sweep") if sc.name.startswith("sweep-") else sc for sc in out]
