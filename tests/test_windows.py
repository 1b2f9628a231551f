"""The Windows shutdown paths, as far as Linux allows: console events and SIGBREAK stop every battery.

The process test runs main.py against the simulator and calls the installed console handler from another
thread, as Windows does, then ends the process the moment the handler returns (as Windows does after
CTRL_CLOSE_EVENT): every simulated battery must already be stopped, within the handler's budget.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import shutdown_windows
from shutdown_windows import (
    CTRL_BREAK_EVENT,
    CTRL_C_EVENT,
    CTRL_CLOSE_EVENT,
    CTRL_LOGOFF_EVENT,
    CTRL_SHUTDOWN_EVENT,
    HANDLER_BUDGET_S,
    handle_console_event,
    install_shutdown_handlers,
    register_console_handler,
)
from simulator import Simulation, UnitSpec
from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
ALL_EVENTS = [CTRL_C_EVENT, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT]

# main.py in a process whose "Windows" thread calls the installed console handler when told on stdin.
WINDOWS_SENDS = r"""
import os, sys, threading, time
sys.path.insert(0, sys.argv[1])
import main
import shutdown_windows

def windows_sends(event):
    sys.stdin.readline()
    handler = shutdown_windows.installed_handler()
    started = time.monotonic()
    handled = handler(event)
    print(f"HANDLER-RETURNED {handled} {time.monotonic() - started:.3f}", flush=True)
    os._exit(0)  # Windows ends the process as soon as the handler returns

threading.Thread(target=windows_sends, args=(int(sys.argv[2]),), daemon=True).start()
sys.exit(main.main(["--config", sys.argv[3]]))
"""


class Recorder:
    """request_stop / wait_until_stopped stand-ins that remember their calls."""

    def __init__(self, finished: bool = True) -> None:
        self.stops = 0
        self.waits: list[float] = []
        self.finished = finished

    def request_stop(self) -> None:
        self.stops += 1

    def wait_until_stopped(self, timeout_s: float) -> bool:
        self.waits.append(timeout_s)
        return self.finished


@pytest.mark.parametrize("event", ALL_EVENTS)
def test_every_console_event_requests_the_stop_and_waits_within_the_budget(event: int) -> None:
    rec = Recorder()
    assert handle_console_event(event, rec.request_stop, rec.wait_until_stopped) is True
    assert rec.stops == 1
    assert rec.waits == [HANDLER_BUDGET_S]


def test_the_budget_leaves_a_margin_before_windows_ends_the_process() -> None:
    assert 2.0 <= HANDLER_BUDGET_S < 5.0  # CTRL_CLOSE_EVENT: the process ends about 5 s after the event


@pytest.mark.parametrize("event", [3, 4, 7, 42])
def test_an_unknown_event_is_left_to_the_next_handler(event: int) -> None:
    rec = Recorder()
    assert handle_console_event(event, rec.request_stop, rec.wait_until_stopped) is False
    assert (rec.stops, rec.waits) == (0, [])


def test_a_shutdown_that_does_not_finish_returns_after_the_budget_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = threading.Event()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="marstek"):
        assert handle_console_event(CTRL_CLOSE_EVENT, lambda: None, never.wait, budget_s=0.2) is True
    assert 0.2 <= time.monotonic() - started < 2.0
    assert "not finished within" in caplog.text and "CTRL_CLOSE_EVENT" in caplog.text


def test_a_failing_stop_request_is_logged_and_the_event_still_counts_as_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.WARNING, logger="marstek"):
        assert handle_console_event(CTRL_SHUTDOWN_EVENT, broken, lambda _t: True) is True
    assert "Handling CTRL_SHUTDOWN_EVENT failed" in caplog.text and "boom" in caplog.text


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows branch")
def test_registration_is_a_no_op_off_windows() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    rec = Recorder()
    assert register_console_handler(lambda _event: True) is False
    handler = install_shutdown_handlers(rec.request_stop, rec.wait_until_stopped)
    assert {s: signal.getsignal(s) for s in before} == before
    assert shutdown_windows._callbacks == []  # nothing handed to Windows
    assert shutdown_windows.installed_handler() is handler
    assert handler(CTRL_CLOSE_EVENT) is True and rec.stops == 1


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs a spare POSIX signal to stand in for SIGBREAK")
def test_sigbreak_where_it_exists_requests_the_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    # Linux has no SIGBREAK: let SIGUSR1 play it to exercise the Windows branch.
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        stopped = threading.Event()
        install_shutdown_handlers(stopped.set, lambda _t: True)
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_until(stopped.is_set, 2.0, "SIGBREAK handled")
    finally:
        signal.signal(signal.SIGUSR1, previous)


# ---------------------------------------------------------------------------- against the running program
def write_config(path: Path, sim: Simulation, web_port: int) -> Path:
    cfg = {
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1, "max_failures_before_stop": 2},
        "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": [1, 2], "timeout_seconds": 1},
        "control": {"poll_interval_seconds": 1, "soc_update_interval_seconds": 5},
        "web": {"host": "127.0.0.1", "port": web_port},
        "logging": {"level": "INFO", "file": str(path.parent / "logs" / "marstek.log")},
    }
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


@pytest.mark.parametrize("event", [CTRL_CLOSE_EVENT, CTRL_BREAK_EVENT])
def test_the_console_handler_returns_only_when_every_battery_is_stopped(tmp_path: Path, event: int) -> None:
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)]) as sim:
        sim.set_load_w(3500.0)
        config = write_config(tmp_path / "config.json", sim, free_port())
        proc = subprocess.Popen(
            [sys.executable, "-c", WINDOWS_SENDS, str(ROOT), str(event), str(config)],
            cwd=str(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            wait_until(lambda: all(u.discharge_power_w > 300 for u in sim.units) or proc.poll() is not None,
                       40, "both batteries discharging")
            assert proc.poll() is None, "main.py ended early"
            output, _ = proc.communicate("\n", timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        # The process ended right after the handler returned: whatever is stopped now was stopped before.
        states = {u.unit_id: (u.force_mode, u.charge_power_w, u.discharge_power_w) for u in sim.units}
    result = [line for line in output.splitlines() if line.startswith("HANDLER-RETURNED")]
    assert result, output[-3000:]
    _, handled, elapsed_s = result[0].split()
    assert handled == "True"
    assert float(elapsed_s) < HANDLER_BUDGET_S, output[-3000:]
    assert all(state == (0, 0, 0) for state in states.values()), (states, output[-3000:])
    assert "Traceback" not in output and "not finished within" not in output, output[-3000:]
    assert shutdown_windows.EVENT_NAMES[event] in output
