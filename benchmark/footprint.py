"""Footprint of the running program: RSS and CPU of ``main.py --demo`` (history on) over a while.

    python -m benchmark.footprint [--minutes 10] [--interval 10]

Starts ``main.py --demo`` on a free port, reads its resident memory (/proc/<pid>/status VmRSS) and CPU
time (/proc/<pid>/stat utime + stime) every ``--interval`` seconds, and prints the figures: RSS at the
start of the measurement, at the end and the highest, the memory slope (MB per hour, from a least-squares
line: "flat memory" is a slope near 0) and the mean CPU load in % of one core. Linux only. The first
minute (start-up, imports) is not measured.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WARMUP_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def slope_per_h(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return 0.0 if var == 0 else sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (the program's clean shutdown), then kill if it does not end within 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--demo", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    print("main.py --demo did not come up", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        time.sleep(WARMUP_S)
        start_t, start_cpu = time.monotonic(), cpu_s(proc.pid)
        points = [(0.0, rss_mb(proc.pid))]
        end_t = start_t + args.minutes * 60
        while time.monotonic() < end_t:
            time.sleep(args.interval)
            # The dashboard's requests, as an open browser tab would make them (status each s is the most).
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5).close()
            points.append((time.monotonic() - start_t, rss_mb(proc.pid)))
        used_cpu = cpu_s(proc.pid) - start_cpu
        elapsed = time.monotonic() - start_t
    finally:
        stop_process(proc)
    rss = [v for _, v in points]
    print(f"measured {elapsed / 60:.1f} min after {WARMUP_S:.0f} s warm-up, {len(points)} samples")
    print(f"RSS: start {rss[0]:.1f} MB, end {rss[-1]:.1f} MB, max {max(rss):.1f} MB, "
          f"slope {slope_per_h(points):+.2f} MB/h")
    print(f"CPU: {100 * used_cpu / elapsed:.2f} % of one core ({used_cpu:.1f} s in {elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
