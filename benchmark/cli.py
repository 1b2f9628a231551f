"""Control-quality benchmark on simulated time: the project's real control thread against baselines.

    python -m benchmark            # full set (several minutes, two worker processes)
    python -m benchmark --quick    # the CI subset, well under a minute
    python -m benchmark --quick --no-write   # print only
    python -m benchmark --soak     # 24 simulated hours with random faults (soak.py)
    python -m benchmark cost --json   # the cost benchmark: a year of prices, the plan against perfect foresight

The parts: ``bench_scenarios`` (what is simulated), ``bench_runner`` (the real ``ControlLoop`` and the
baselines on one simulated clock), ``bench_report`` (aggregation, targets, docs/benchmark.md). Metric
definitions: zero-feed-control.md §5 (see also ``quality.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmark import cost as bench_cost
from benchmark import soak
from benchmark.report import markdown, plot_steps
from benchmark.runner import run_all
from benchmark.scenarios import DATA_DIR, scenario_set

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["cost"]:
        return bench_cost.main(args_list[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="the CI subset (under a minute)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write docs/ (--quick never writes)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with the real traces")
    parser.add_argument("--soak", action="store_true",
                        help="instead: 24 simulated hours with random meter and Modbus faults (soak.py)")
    parser.add_argument("--hours", type=float, default=24.0, help="soak length in simulated hours")
    parser.add_argument("--seed", type=int, default=1, help="soak fault schedule seed")
    parser.add_argument("--grace", type=float, default=None, help="soak: tolerated discharge into export, s")
    args = parser.parse_args(args_list)
    if args.soak:
        grace_s = soak.GRACE_S if args.grace is None else args.grace
        result = soak.run_soak(hours=args.hours, seed=args.seed, track_memory=False)
        print(soak.report(result, grace_s))
        return 0 if not result.violations(grace_s) else 1
    started = time.monotonic()
    scenarios = scenario_set(args.quick, args.data_dir)
    results = run_all(scenarios, jobs=args.jobs, progress=True)
    elapsed = time.monotonic() - started
    print(f"{len(results)} runs in {elapsed:.0f} s", file=sys.stderr)
    write = not (args.quick or args.no_write)
    plot_name = None
    if write:
        DOCS_DIR.mkdir(exist_ok=True)
        if plot_steps(results, DOCS_DIR / "benchmark_steps.png"):
            plot_name = "benchmark_steps.png"
    text = markdown(scenarios, results, args.quick, elapsed, plot_name)
    if write:
        cost = bench_cost.cost_section(DOCS_DIR / "benchmark.md")  # the cost benchmark's part stays
        (DOCS_DIR / "benchmark.md").write_text(text if cost is None else f"{text.rstrip()}\n\n{cost}",
                                               encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
