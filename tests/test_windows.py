"""The Windows shutdown paths, as far as Linux allows: console events and SIGBREAK stop every battery.

The process test runs main.py against the simulator and calls the installed console handler from another
thread, as Windows does, then ends the process the moment the handler returns (as Windows does after
CTRL_CLOSE_EVENT): every simulated battery must already be stopped, within the handler's budget.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import config_loader
import main
from config_loader import ConfigError, update_akku_ids
from control import i18n, shutdown_windows
from control.shutdown_windows import (
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
from simulator.world import Simulation, UnitSpec
from tests.helpers import free_port, sim_config_data, wait_until

ROOT = Path(__file__).resolve().parent.parent
ALL_EVENTS = [CTRL_C_EVENT, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT]

# main.py in a process whose "Windows" thread calls the installed console handler when told on stdin.
WINDOWS_SENDS = r"""
import os, sys, threading, time
sys.path.insert(0, sys.argv[1])
import main
from control import shutdown_windows

def windows_sends(event):
    sys.stdin.readline()
    handler = shutdown_windows.installed_handler()
    started = time.monotonic()
    handled = handler(event)
    print(f"HANDLER-RETURNED {handled} {time.monotonic() - started:.3f}", flush=True)
    os._exit(0)  # Windows ends the process as soon as the handler returns

sender = threading.Thread(target=windows_sends, args=(int(sys.argv[2]),), daemon=True)
sender.start()
code = main.main(["--config", sys.argv[3]])
sender.join(10)  # on Windows the process ends when the handler returns; here main() may finish first
sys.exit(code)
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
    data = sim_config_data(sim, [1, 2], web={"port": web_port},
                           logging={"level": "INFO", "file": str(path.parent / "logs" / "marstek.log")})
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.slow
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


# ---------------------------------------------------------------------------- nothing assumes POSIX
def fill_log(handler: logging.Handler, count: int) -> list[str]:
    logger = logging.getLogger(f"test_windows.rotation.{id(handler)}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        messages = [f"record {i:03d} " + "x" * 40 for i in range(count)]
        for message in messages:
            logger.warning("%s", message)
    finally:
        logger.removeHandler(handler)
    return messages


def refuse_renaming_the_open_log(monkeypatch: pytest.MonkeyPatch, log_path: Path) -> None:
    """As on Windows while another program holds the log open: renaming it fails, other renames work."""
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        if Path(src) == log_path:
            raise PermissionError(13, "The process cannot access the file because it is being used by another "
                                      "process", src)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)


def test_the_plain_rotating_handler_loses_records_when_the_rename_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The failure the shared handler exists for (checks that the simulation is faithful)."""
    log_path = tmp_path / "plain.log"
    refuse_renaming_the_open_log(monkeypatch, log_path)
    handler = logging.handlers.RotatingFileHandler(log_path, maxBytes=500, backupCount=2, encoding="utf-8")
    try:
        messages = fill_log(handler, 40)
    finally:
        handler.close()
    text = log_path.read_text(encoding="utf-8")
    assert any(m not in text for m in messages)
    assert "PermissionError" in capsys.readouterr().err


def test_the_log_keeps_every_record_while_another_program_holds_it_open_and_rotates_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    log_path = tmp_path / "marstek.log"
    with monkeypatch.context() as windows:
        refuse_renaming_the_open_log(windows, log_path)
        handler = main.SharedRotatingFileHandler(log_path, maxBytes=500, backupCount=2, encoding="utf-8")
        try:
            messages = fill_log(handler, 40)
        finally:
            handler.flush()
        text = log_path.read_text(encoding="utf-8")
        assert all(m in text for m in messages)
        assert text.count("Log rotation failed, continuing in this file") == 1  # not once per record
        assert not Path(f"{log_path}.1").exists()
    # The other program closed the file: once the retry time has come, the log rotates as usual.
    handler.retry_after_s = float("-inf")
    try:
        later = fill_log(handler, 20)
    finally:
        handler.close()
    assert Path(f"{log_path}.1").exists()
    rotated = "".join(p.read_text(encoding="utf-8") for p in tmp_path.glob("marstek.log*"))
    assert all(m in rotated for m in later)
    assert capsys.readouterr().err == ""  # no "--- Logging error ---" tracebacks


def config_copy(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    shutil.copy(ROOT / "config.example.json", path)
    return path


def test_the_config_write_on_windows_retries_a_briefly_locked_file_and_sets_no_mode_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = config_copy(tmp_path)
    real_replace = os.replace
    refusals: list[str] = []

    def replace(src: str, dst: str) -> None:
        if len(refusals) < 2:  # a virus scanner holds the file for a moment
            refusals.append(dst)
            raise PermissionError(13, "Access is denied", str(dst))
        real_replace(src, dst)

    real_chmod = os.chmod

    def chmod(target: str, mode: int, **kwargs: object) -> None:
        if str(target).endswith(".tmp"):  # Windows has ACLs: no mode bits on the temp files
            raise AssertionError("os.chmod of the temp file on Windows")
        real_chmod(target, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "chmod", chmod)
    update_akku_ids(path, [1, 2, 3])
    assert json.loads(path.read_text(encoding="utf-8"))["battery"]["akku_ids"] == [1, 2, 3]
    assert len(refusals) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "config.json.bak"]  # no temp file left


def test_a_config_that_stays_locked_gives_a_clear_error_and_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = config_copy(tmp_path)
    before = path.read_bytes()

    def replace(_src: str, dst: str) -> None:
        raise PermissionError(13, "Access is denied", str(dst))

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ConfigError, match="cannot write the file: Access is denied"):
        update_akku_ids(path, [1, 2, 3])
    assert path.read_bytes() == before
    # Not even the backup could be renamed into place (it is written atomically too): no temp file is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_off_windows_a_refused_replace_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config_copy(tmp_path)
    calls: list[str] = []

    def replace(_src: str, dst: str) -> None:
        calls.append(dst)
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ConfigError):
        update_akku_ids(path, [1])
    assert len(calls) == 1


def test_a_folder_that_cannot_be_opened_for_fsync_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows cannot open a directory with os.open (PermissionError): the write still succeeds."""
    path = config_copy(tmp_path)
    real_open = os.open

    def open_(file: str | os.PathLike[str], flags: int, *args: object) -> int:
        if Path(file).is_dir():
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_)
    update_akku_ids(path, [4])
    config_loader._fsync_dir(tmp_path)
    assert json.loads(path.read_text(encoding="utf-8"))["battery"]["akku_ids"] == [4]


# Like pythonw.exe: no console, sys.stdout and sys.stderr are None.
WITHOUT_CONSOLE = r"""
import runpy, sys
root, config = sys.argv[1], sys.argv[2]
sys.stdout = sys.stderr = None
sys.path.insert(0, root)
sys.argv = [root + "/main.py", "--config", config]
runpy.run_path(root + "/main.py", run_name="__main__")
"""


@pytest.mark.slow
def test_without_a_console_like_pythonw_the_program_runs_logs_to_its_file_and_stops_the_batteries(
    tmp_path: Path,
) -> None:
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)]) as sim:
        sim.set_load_w(3500.0)
        config = write_config(tmp_path / "config.json", sim, free_port())
        log_path = tmp_path / "logs" / "marstek.log"
        proc = subprocess.Popen([sys.executable, "-c", WITHOUT_CONSOLE, str(ROOT), str(config)], cwd=str(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: all(u.discharge_power_w > 300 for u in sim.units) or proc.poll() is not None,
                       40, "both batteries discharging")
            assert proc.poll() is None, "ended early"
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        states = [(u.force_mode, u.charge_power_w, u.discharge_power_w) for u in sim.units]
    assert proc.returncode == 0
    assert output == ""
    text = log_path.read_text(encoding="utf-8")
    assert "Dashboard: http://" in text and i18n.MESSAGES_DE["control_stopped"].split("{")[0] in text
    assert states == [(0, 0, 0), (0, 0, 0)]
