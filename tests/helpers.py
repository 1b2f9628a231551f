"""Helpers shared by the tests (no fixed sleeps: poll with a deadline); conftest.py offers them as fixtures."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmark.footprint import stop_process  # re-exported: the tests stop main.py the same way
from config_loader import Config, parse_config
from simulator.world import Simulation

ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    predicate: Callable[[], object], timeout_s: float = 3.0, what: str = "condition", interval_s: float = 0.05
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for: {what}")
        time.sleep(interval_s)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeClock:
    """Monotonic seconds that move only when the test says so (start well above 0, like time.monotonic())."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def sim_config_data(sim: Simulation, ids: list[int], **sections: dict[str, Any]) -> dict[str, Any]:
    """A config.json document pointing at a started simulation; ``sections`` update its sections."""
    data: dict[str, Any] = {
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1, "max_failures_before_stop": 2},
        "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": ids, "timeout_seconds": 0.5},
        "control": {"poll_interval_seconds": 1},
        "web": {"host": "127.0.0.1", "port": 8080},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def sim_config(sim: Simulation, ids: list[int], **sections: dict[str, Any]) -> Config:
    """``sim_config_data`` validated like a real config file."""
    return parse_config(sim_config_data(sim, ids, **sections))


def write_two_unit_config(tmp_path: Path, sim: Simulation, web: dict[str, Any] | None = None,
                          sections: dict[str, Any] | None = None) -> Path:
    """config.json in ``tmp_path`` for the simulator's units 1 and 2 behind one gateway, ``web`` keys and
    further top-level ``sections`` added."""
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1},
        "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": [1, 2], "timeout_seconds": 1},
        "control": {"poll_interval_seconds": 1},
        "web": {"host": "127.0.0.1", "port": 8080, **(web or {})},
        "logging": {"file": str(tmp_path / "logs" / "marstek.log")},
        **(sections or {}),
    }), encoding="utf-8")
    return config_path


@contextlib.contextmanager
def running_main(config_path: Path, *extra_args: str) -> Iterator[subprocess.Popen]:
    """``main.py --config config_path`` as its own process; SIGTERM (then kill) when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--config", str(config_path), *extra_args],
        cwd=str(config_path.parent), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield proc
    finally:
        stop_process(proc)
        if proc.stdout:
            proc.stdout.close()


