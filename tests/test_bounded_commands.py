"""Bounded commands (issue 18, interfaces.md "Bounded setup commands"): add-to-config only for IDs that
answered, a timed-out command never runs later, setup mode ends by itself, mode floods are coalesced.

Against the simulator's real Modbus and Shelly servers; the control thread is the real one where the race
matters, cycled by the test where a fake clock decides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import main
from config_loader import Config, load_config, parse_config
from control import i18n, setup_commands
from control.commands import Command, EnterSetup, ExitSetup, Scan, SetId
from control.control_loop import ControlLoop
from control.status_store import CommandError, CommandQueue, StatusStore, StoreLogHandler
from simulator.world import Simulation, UnitSpec
from tests.helpers import wait_until, write_two_unit_config
from web_server import create_app


@dataclass
class Running:
    sim: Simulation
    cfg: Config
    config_path: Path
    store: StatusStore
    commands: CommandQueue
    loop: ControlLoop


@contextlib.contextmanager
def running_loop(tmp_path: Path, **web: Any) -> Iterator[Running]:
    """Simulator with batteries on IDs 1 and 2 and the real control thread in front of it."""
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)]) as sim:
        sim.set_load_w(400.0)
        config_path = write_two_unit_config(tmp_path, sim, web)
        cfg = load_config(config_path)
        store, commands = StatusStore(), CommandQueue()
        events = StoreLogHandler(store)
        logging.getLogger().addHandler(events)
        loop = ControlLoop(cfg, main.build_meter(cfg), main.build_bus(cfg), store, commands, config_path=config_path)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,), name="test-control", daemon=True)
        thread.start()
        try:
            wait_until(lambda: store.latest().control_state == "active"
                       and all(b.online for b in store.latest().batteries), 15, "control active, both online")
            yield Running(sim, cfg, config_path, store, commands, loop)
        finally:
            stop.set()
            commands.wakeup.set()
            thread.join(timeout=15)
            logging.getLogger().removeHandler(events)
            assert not thread.is_alive(), "control thread did not stop"


# ---------------------------------------------------------------------------- add-to-config
def test_bogus_ids_are_refused_and_the_config_stays_as_it_was(tmp_path: Path) -> None:
    """The attack of issue 18: 30 IDs nobody answers on, written to config.json, stretched the cycle to ~20 s.
    Now: outside setup mode 409; in setup mode only an ID that answered the last scan, else 409 with the reason."""
    with running_loop(tmp_path) as run:
        client = create_app(run.store, run.commands, run.cfg.web).test_client()
        before = run.config_path.read_bytes()
        outside = client.post("/api/setup/add-to-config", json={"id": 3})
        assert outside.status_code == 409
        assert outside.get_json()["error"] == i18n.MESSAGES_DE["add_not_in_setup"]
        assert client.post("/api/setup/enter", json={}).status_code == 200
        unscanned = client.post("/api/setup/add-to-config", json={"id": 3})
        assert unscanned.status_code == 409 and "ID 3" in unscanned.get_json()["error"]
        scan = client.post("/api/setup/scan", json={"first_id": 1, "last_id": 3}).get_json()
        assert [f["id"] for f in scan["found"]] == [1, 2]
        for bogus in range(3, 33):
            resp = client.post("/api/setup/add-to-config", json={"id": bogus})
            assert resp.status_code == 409, resp.get_json()
            gateway = f"127.0.0.1:{run.sim.modbus_port}"
            assert resp.get_json()["error"] == i18n.MESSAGES_DE["add_not_scanned"].format(id=bogus, gateway=gateway)
        assert run.config_path.read_bytes() == before
        assert len(run.loop.batteries) == 2
        # A battery that answered is configured already: nothing to do, nothing refused.
        assert client.post("/api/setup/add-to-config", json={"id": 2}).get_json()["saved"] is False
        # Setup mode ended: what the scan found no longer counts.
        assert client.post("/api/setup/exit", json={}).status_code == 200
        assert client.post("/api/setup/add-to-config", json={"id": 2}).status_code == 409


def test_at_most_16_units_per_gateway() -> None:
    ids = list(range(1, 17))
    cfg = parse_config({"shelly": {"ip": "127.0.0.1"}, "battery": {"ip": "127.0.0.1", "akku_ids": ids}})
    with pytest.raises(CommandError) as refused:
        setup_commands.add_to_config(cfg, None, gateway="127.0.0.1:502", battery_id=17, answered={17})
    assert refused.value.status == 409
    assert str(refused.value.message) == i18n.Msg("add_too_many", gateway="127.0.0.1:502", count=16, max=16)
    fewer = parse_config({"shelly": {"ip": "127.0.0.1"}, "battery": {"ip": "127.0.0.1", "akku_ids": ids[:15]}})
    new_cfg, result = setup_commands.add_to_config(fewer, None, gateway="127.0.0.1:502", battery_id=17,
                                                   answered={17})
    assert len(new_cfg.battery.units) == 16 and result["akku_ids"][-1] == 17


# ---------------------------------------------------------------------------- a timed-out command never runs
def test_a_command_that_timed_out_behind_a_long_scan_never_runs_later(tmp_path: Path) -> None:
    """A scan of IDs nobody answers on holds the control thread for seconds; a set-id and a mode change
    submitted meanwhile time out (504) and are never applied, not even once the scan is over."""
    with running_loop(tmp_path) as run:
        run.commands.submit(EnterSetup())
        scan_result: list[Any] = []
        scan = threading.Thread(target=lambda: scan_result.append(
            run.commands.submit(Scan(first_id=3, last_id=6), timeout_s=60.0)), daemon=True)
        scan.start()  # 4 IDs without an answer: about 4 s on the control thread
        wait_until(lambda: run.commands._queue.empty(), 5, "the control thread took the scan")
        for command in (SetId(new_id=9), ExitSetup()):
            with pytest.raises(CommandError) as timed_out:
                run.commands.submit(command, timeout_s=0.3)
            assert timed_out.value.status == 504
            assert timed_out.value.message == i18n.Msg("command_cancelled")
        scan.join(30)
        assert scan_result and scan_result[0]["found"] == []
        # Commands run in order: this one answering means the cancelled ones were passed over.
        assert run.commands.submit(EnterSetup(), timeout_s=10.0)["setup_mode"] is True
        assert run.loop.setup_mode and run.store.latest().control_state == "setup"
        assert sorted(u.unit_id for u in run.sim.units) == [1, 2]
        assert all(register != 41100 for u in run.sim.units for register, _value in u.write_log)


def test_every_submitted_command_either_ran_and_answered_or_never_ran() -> None:
    """The race between the waiter's cancel and the control thread's claim, hammered with real threads."""
    commands = CommandQueue()
    ran: list[int] = []
    stop = threading.Event()

    def control() -> None:
        def handler(command: Command) -> int:
            assert isinstance(command, SetId)
            ran.append(command.new_id)
            stop.wait(random.uniform(0.0, 0.002))  # the command's own duration
            return command.new_id

        while not stop.is_set():
            commands.wakeup.wait(0.01)
            commands.run_pending(handler)

    thread = threading.Thread(target=control, daemon=True)
    thread.start()
    answered: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def client(first: int) -> None:
        for n in range(first, first + 100):
            try:
                result = commands.submit(SetId(new_id=n), timeout_s=random.uniform(0.0, 0.004),
                                         running_grace_s=10.0)
            except CommandError as exc:
                assert exc.status in (503, 504) and exc.message != i18n.Msg("command_still_running")
                with lock:
                    refused.append(n)
            else:
                assert result == n
                with lock:
                    answered.append(n)

    clients = [threading.Thread(target=client, args=(i * 1000,)) for i in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(30)
    stop.set()
    thread.join(5)
    assert sorted(ran) == sorted(answered)  # nothing refused ever ran, everything that ran was answered
    assert len(answered) + len(refused) == 400 and refused and answered


def test_a_command_already_running_at_its_timeout_is_waited_for_not_disowned() -> None:
    """Claimed by the control thread before the waiter gave up: it runs now, so the answer is its result
    (within the grace) or a 504 that says it is still running, never "cancelled"."""
    commands = CommandQueue()
    release = threading.Event()
    claimed = threading.Event()

    def handler(command: Command) -> int:
        assert isinstance(command, SetId)
        claimed.set()
        release.wait(10)
        return command.new_id

    control = threading.Thread(target=lambda: (commands.wakeup.wait(5), commands.run_pending(handler)), daemon=True)
    control.start()
    # The command takes 1 s, the waiter gives up after 0.5 s: it is running by then (claimed at once).
    timer = threading.Thread(target=lambda: (claimed.wait(5), release.wait(1.0), release.set()), daemon=True)
    timer.start()
    assert commands.submit(SetId(new_id=7), timeout_s=0.5, running_grace_s=10.0) == 7
    control.join(5)

    release.clear()
    claimed.clear()
    control = threading.Thread(target=lambda: (commands.wakeup.wait(5), commands.run_pending(handler)), daemon=True)
    control.start()
    with pytest.raises(CommandError) as still:
        commands.submit(SetId(new_id=8), timeout_s=0.5, running_grace_s=0.2)
    assert still.value.status == 504 and still.value.message == i18n.Msg("command_still_running")
    assert claimed.is_set()
    release.set()
    control.join(5)


# ---------------------------------------------------------------------------- a flood of mode changes
MAX_WRITES_PER_CYCLE = 4  # the most one battery gets in a normal cycle: 42000, 42010 and both power registers


def test_a_flood_of_mode_toggles_costs_no_more_writes_than_normal_cycles(tmp_path: Path) -> None:
    """300 charge/off toggles over the API (as from a script or a flapping MQTT automation): at most one mode
    applied per control cycle, never more Modbus writes per battery than a cycle makes, and the mode file
    written by its own thread, far fewer times than asked."""
    with running_loop(tmp_path) as run:
        client = create_app(run.store, run.commands, run.cfg.web).test_client()
        writes_before = [u.writes_received for u in run.sim.units]
        cycles_before = run.loop.cycles_total
        started_s = time.monotonic()
        applied: list[logging.LogRecord] = []
        counter = logging.Handler()
        counter.emit = lambda record: applied.append(record) if getattr(record.msg, "code", "") == "mode_set" else None
        marstek = logging.getLogger("marstek")
        old_level = marstek.level
        marstek.setLevel(logging.INFO)
        marstek.addHandler(counter)
        for n in range(300):
            body = {"mode": "charge", "power_w": 2000} if n % 2 == 0 else {"mode": "off"}
            resp = client.post("/api/mode", json=body)
            assert resp.status_code == 200 and resp.get_json()["mode"] == body["mode"]
        # The last request wins: off, applied by the next cycle.
        assert client.get("/api/mode").get_json()["mode"] == "off"
        wait_until(lambda: run.loop.mode.mode.value == "off" and run.store.latest().control_state == "stopped",
                   10, "off applied")
        cycles = run.loop.cycles_total - cycles_before + 1  # the cycle under way when the flood began
        poll_s = run.cfg.control.poll_interval_seconds
        assert cycles <= (time.monotonic() - started_s) / poll_s + 2  # the commands added no cycles of their own
        writes = [u.writes_received - before for u, before in zip(run.sim.units, writes_before, strict=True)]
        assert all(w <= MAX_WRITES_PER_CYCLE * cycles for w in writes), (writes, cycles)
        marstek.removeHandler(counter)
        marstek.setLevel(old_level)
        assert 1 <= len(applied) <= cycles, (len(applied), cycles)
        assert run.loop.mode_writer is None  # this loop has no mode file; the next test has one


def test_the_mode_file_is_written_by_its_own_thread_latest_wins(tmp_path: Path) -> None:
    from control.modes import ModeFile, ModeState, ModeWriter
    from zero_feed_control import OperatingMode

    mode_file = ModeFile(tmp_path / "data" / "mode.json")
    writer = ModeWriter(mode_file)
    caller = threading.current_thread()
    writers: list[threading.Thread] = []
    real_save = mode_file.save

    class Recording(ModeFile):
        def save(self, state: ModeState) -> None:
            writers.append(threading.current_thread())
            real_save(state)

    writer.mode_file = Recording(mode_file.path)
    for n in range(300):
        writer.save(ModeState(OperatingMode.CHARGE if n % 2 == 0 else OperatingMode.OFF, source="mqtt"))
    assert writer.flush(10)
    assert json.loads(mode_file.path.read_text())["mode"] == "off"
    assert 1 <= writer.writes <= 300 and caller not in writers
    writer.close()


# ---------------------------------------------------------------------------- setup mode ends by itself
def test_setup_mode_ends_after_the_timeout_without_a_setup_request(caplog: pytest.LogCaptureFixture) -> None:
    """web.setup_timeout_minutes (default 15) after the last setup request the control resumes and says so;
    every setup request (here a scan) starts the time again. On the control's (fake) clock."""
    from tests.loop_rig import QUICK, Rig, discharging, fake_clock, fault_config, run_until

    rig = Rig()
    try:
        sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)], **QUICK)
        sim.set_load_w(900.0)
        clock = fake_clock()
        loop = rig.loop(fault_config(sim, [1]), clock)
        assert loop.cfg.web.setup_timeout_minutes == 15
        run_until(loop, clock, lambda: discharging(sim.unit(1)), 30, "discharging")
        loop.handle_command(EnterSetup())
        clock.advance(14 * 60)
        loop.cycle()
        loop.handle_command(Scan(first_id=1, last_id=1))  # still in use: the time starts again
        clock.advance(14 * 60)
        loop.cycle()
        assert loop.setup_mode and loop.store.latest().control_state == "setup"
        with caplog.at_level(logging.WARNING, logger="marstek"):
            clock.advance(60)
            loop.cycle()
        assert not loop.setup_mode
        assert any(getattr(r.msg, "code", "") == "setup_timed_out" for r in caplog.records)
        run_until(loop, clock, lambda: discharging(sim.unit(1)), 30, "regulating again")
    finally:
        rig.close()


def test_setup_timeout_is_checked_in_the_config() -> None:
    from config_loader import ConfigError

    base = {"shelly": {"ip": "127.0.0.1"}, "battery": {"ip": "127.0.0.1", "akku_ids": [1]}}
    assert parse_config({**base, "web": {"setup_timeout_minutes": 5}}).web.setup_timeout_minutes == 5
    for bad in (0, 1441, "15", 1.5):
        with pytest.raises(ConfigError, match=r"web\.setup_timeout_minutes"):
            parse_config({**base, "web": {"setup_timeout_minutes": bad}})
