"""Operating modes: the pure rules in the control law, validation, the mode file, the API and the
control thread on the simulator (hold within one cycle, survival across a restart, expiry on a fake clock)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import main
from config_loader import Config, load_config
from control.commands import SetMode
from control.control_loop import ControlLoop
from control.modes import ModeError, ModeFile, ModeRequest, ModeState, parse_payload, parse_request
from control.status_store import CommandQueue, StatusStore
from simulator.world import Simulation, UnitSpec
from tests.helpers import FakeClock, wait_until
from web_server import create_app
from zero_feed_control import (
    BatteryState,
    ControlParams,
    FastController,
    OperatingMode,
    SeedController,
    Status,
)

ROOT = Path(__file__).resolve().parent.parent
P = ControlParams()
AUTO, HOLD, CHARGE, OFF = OperatingMode.AUTO, OperatingMode.HOLD, OperatingMode.CHARGE, OperatingMode.OFF


def bat(i: int = 1, soc: float | None = 50.0, power: float | None = 0.0) -> BatteryState:
    return BatteryState(i, True, soc, power)


# ---------------------------------------------------------------------------- the law
@pytest.mark.parametrize("law", [FastController, SeedController])
def test_hold_stops_a_discharge_at_once_and_never_discharges(law):
    ctrl = law(P)
    d = ctrl.step(0.0, 800.0, [bat(1, power=0.0)])
    assert d.setpoints_w[1] > 0  # auto: discharges into the house
    d = ctrl.step(1.0, 50.0, [bat(1, power=float(d.setpoints_w[1]))], mode=HOLD)
    assert d.setpoints_w == {1: 0} and d.status is Status.MODE_HOLD
    for t, grid_w in enumerate([900.0, 1500.0, 700.0, 2000.0], start=2):
        d = ctrl.step(float(t), grid_w, [bat(1, power=0.0)], mode=HOLD)
        assert d.setpoints_w[1] <= 0, d
    # A meter failure in hold keeps no discharge either.
    assert ctrl.step(9.0, None, [bat(1, power=0.0)], mode=HOLD).setpoints_w[1] <= 0


def test_hold_still_charges_from_surplus_and_says_why_it_does_not_discharge():
    ctrl = FastController(P)
    d = ctrl.step(0.0, -1000.0, [bat(1, power=0.0)], mode=HOLD)
    assert d.setpoints_w[1] < -900 and d.status is Status.TRACKING
    ctrl = FastController(P)
    d = ctrl.step(0.0, 600.0, [bat(1, power=0.0)], mode=HOLD)
    assert d.setpoints_w == {1: 0} and d.status is Status.MODE_HOLD
    assert d.reason.code == "reason_mode_hold"  # type: ignore[attr-defined]


@pytest.mark.parametrize("law", [FastController, SeedController])
def test_charge_mode_charges_at_the_power_until_full_then_holds(law):
    ctrl = law(P)
    d = ctrl.step(0.0, 300.0, [bat(1, 50), bat(2, 60)], mode=CHARGE, charge_power_w=1200)
    assert d.status is Status.MODE_CHARGE and d.total_w == -1200
    # Without a meter reading the charge goes on (charging can never feed in).
    assert ctrl.step(1.0, None, [bat(1, 50), bat(2, 60)], mode=CHARGE, charge_power_w=1200).total_w == -1200
    d = ctrl.step(2.0, 300.0, [bat(1, 50), bat(2, 98)], mode=CHARGE, charge_power_w=1200)
    assert d.setpoints_w == {1: -1200, 2: 0}  # the full one stops, the other takes the power
    d = ctrl.step(3.0, 900.0, [bat(1, 98, -1200.0), bat(2, 98)], mode=CHARGE, charge_power_w=1200)
    assert d.setpoints_w == {1: 0, 2: 0}  # both full: the charge stops ...
    statuses = []
    for t in range(4, 12):  # ... and they hold: no discharge into the 900 W load
        d = ctrl.step(float(t), 900.0 + t, [bat(1, 98), bat(2, 98)], mode=CHARGE, charge_power_w=1200)
        assert d.setpoints_w == {1: 0, 2: 0}
        statuses.append(d.status)
    assert statuses[-1] is Status.MODE_HOLD
    default = law(P).step(0.0, 0.0, [bat(1), bat(2)], mode=CHARGE)
    assert default.total_w == -2 * P.max_power_w  # default power: every battery's maximum


@pytest.mark.parametrize("law", [FastController, SeedController])
def test_off_stops_every_battery_whatever_the_grid(law):
    ctrl = law(P)
    ctrl.step(0.0, 800.0, [bat(1)])
    for grid_w in (800.0, -1500.0, None):
        d = ctrl.step(1.0, grid_w, [bat(1, power=500.0)], mode=OFF)
        assert d.setpoints_w == {1: 0} and d.status is Status.MODE_OFF
    assert ctrl.step(2.0, 800.0, [bat(1)], mode=AUTO).setpoints_w[1] > 0  # auto resumes


@settings(max_examples=60, deadline=None)
@given(
    law=st.sampled_from([FastController, SeedController]),
    steps=st.lists(st.tuples(st.one_of(st.none(), st.floats(-4000, 4000)), st.floats(5, 99),
                             st.sampled_from([AUTO, HOLD, HOLD, CHARGE, OFF])), min_size=1, max_size=40),
)
def test_no_mode_but_auto_ever_discharges_and_off_always_stops(law, steps):
    """Whatever the grid and the SoC do: hold and charge never discharge, off always stops everything."""
    ctrl = law(P)
    power = {1: 0.0, 2: 0.0}
    for t, (grid_w, soc, mode) in enumerate(steps):
        d = ctrl.step(float(t), grid_w, [bat(1, soc, power[1]), bat(2, 100 - soc, power[2])], mode=mode)
        if mode is not AUTO:
            assert all(w <= 0 for w in d.setpoints_w.values()), (mode, d)
        if mode is OFF:
            assert all(w == 0 for w in d.setpoints_w.values())
        power = {i: float(d.setpoints_w.get(i, 0)) for i in power}


# ---------------------------------------------------------------------------- validation and the file
@pytest.mark.parametrize(("body", "expected"), [
    ({"mode": "auto"}, ModeRequest(AUTO)),
    ({"mode": "normal"}, ModeRequest(AUTO)),
    ({"mode": "HOLD", "minutes": 30}, ModeRequest(HOLD, None, 30)),
    ({"mode": "charge"}, ModeRequest(CHARGE, 5000)),
    ({"mode": "charge", "power_w": 800, "minutes": 1440}, ModeRequest(CHARGE, 800, 1440)),
    ({"mode": "off"}, ModeRequest(OFF)),
])
def test_parse_request_accepts_the_contract(body, expected):
    assert parse_request(body, 5000) == expected


@pytest.mark.parametrize(("body", "words"), [
    ({}, "mode is required"),
    ({"mode": 2}, "mode is required"),
    ({"mode": "boost"}, "mode must be one of"),
    ({"mode": "hold", "power_w": 500}, "only allowed with mode charge"),
    ({"mode": "charge", "power_w": 49}, "50..5000"),
    ({"mode": "charge", "power_w": 5001}, "50..5000"),
    ({"mode": "charge", "power_w": 500.5}, "integer"),
    ({"mode": "hold", "minutes": 0}, "1..1440"),
    ({"mode": "hold", "minutes": 1441}, "1..1440"),
    ({"mode": "hold", "minutes": True}, "1..1440"),
    ({"mode": "hold", "until": "x"}, "unknown field"),
])
def test_parse_request_refuses_with_a_clear_message(body, words):
    with pytest.raises(ModeError, match=words):
        parse_request(body, 5000)


def test_parse_payload_takes_a_name_or_the_json_body():
    assert parse_payload(b" hold\n", 2500) == ModeRequest(HOLD)
    assert parse_payload(b'{"mode": "charge", "power_w": 600}', 2500) == ModeRequest(CHARGE, 600)
    for bad in (b"", b"\xff", b"{nope", b"[1]", b"discharge"):
        with pytest.raises(ModeError):
            parse_payload(bad, 2500)


def test_mode_file_round_trip_and_damaged_file_means_auto(tmp_path, caplog):
    mode_file = ModeFile(tmp_path / "data" / "mode.json")
    assert mode_file.load() == ModeState()  # missing: auto
    state = ModeState(CHARGE, 900, 1_800_000_000.0, "mqtt")
    mode_file.save(state)
    assert mode_file.load() == state
    assert json.loads(mode_file.path.read_text())["until"].startswith("2027-01-15")
    assert list(mode_file.path.parent.iterdir()) == [mode_file.path]  # no temp file left behind
    for damage in ("{", '{"mode": "turbo"}', '{"mode": "hold", "until": "soon"}', "[]"):
        mode_file.path.write_text(damage)
        with caplog.at_level(logging.WARNING, logger="marstek"):
            caplog.clear()
            assert mode_file.load() == ModeState()
        assert str(mode_file.path) in caplog.text


@pytest.mark.parametrize("damage", [
    b"\xff\xfe{\"mode\": \"off\"}",  # not UTF-8
    b"not json at all",
    b"[" * 100_000,  # nested past the recursion limit
    b'{"mode": ["off"]}',
    b'{"mode": "off", "source": ["api"]}',
    b'{"mode": "hold", "until": 1800000000}',
    b'{"mode": "hold", "until": "9999-12-31T23:59:59-14:00", "source": "api"}',  # past year 9999 in UTC
    b'{"mode": "hold", "until": "2027-01-20T00:00:00+00:00", "source": "api"}',  # days ahead: no mode lasts so long
    b'{"mode": "hold", "until": "2027-01-15T09:00:00", "source": "api"}',  # no offset
    b'{"mode": "charge", "power_w": 1000000, "source": "api"}',  # beyond the batteries' total maximum
    b'{"mode": "charge", "power_w": 10, "source": "api"}',  # below 50 W, as the API refuses it
    b'{"mode": "charge", "power_w": 1e400, "source": "api"}',
    b'{"mode": "off", "power_w": true}',
])
def test_any_damaged_mode_file_means_auto_with_a_warning(tmp_path, caplog, damage):
    mode_file = ModeFile(tmp_path / "mode.json")
    mode_file.path.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="marstek"):
        assert mode_file.load(now_s=1_800_000_000.0, max_power_w=5000) == ModeState()
    assert str(mode_file.path) in caplog.text


def test_a_mode_file_within_the_bounds_is_taken() -> None:
    doc = {"mode": "charge", "power_w": 5000, "until": "2027-01-15T09:00:00+01:00", "source": "api"}
    state = ModeState.from_json(doc, now_s=1_800_000_000.0, max_power_w=5000)
    assert state.power_w == 5000 and state.to_json()["until"] is not None
    assert state.anchored(1_800_000_000.0, 100.0).deadline_s == pytest.approx(100.0 + state.until_s - 1_800_000_000.0)


def test_the_control_starts_in_auto_on_a_mode_file_that_would_overflow(tmp_path, caplog):
    with rig_on_simulator(tmp_path) as rig:
        rig.mode_file.path.parent.mkdir(parents=True, exist_ok=True)
        rig.mode_file.path.write_text('{"mode": "off", "until": "9999-12-31T23:59:59-14:00", "source": "api"}')
        with caplog.at_level(logging.WARNING, logger="marstek"):
            restarted = rig.new_loop()
        assert restarted.mode == ModeState() and str(rig.mode_file.path) in caplog.text
        assert restarted.store.latest().operating_mode["mode"] == "auto"


# ---------------------------------------------------------------------------- the control thread
@dataclass
class Rig:
    sim: Simulation
    cfg: Config
    store: StatusStore
    commands: CommandQueue
    loop: ControlLoop
    mode_file: ModeFile
    wall: list[float]
    mono_offset: list[float]  # added to the real monotonic clock of ``loop``

    def skip(self, seconds: float) -> None:
        """Both clocks jump ahead (an expiry comes due without waiting for it)."""
        self.wall[0] += seconds
        self.mono_offset[0] += seconds

    def new_loop(self, clock: Any = time.monotonic) -> ControlLoop:
        """A second ControlLoop on the same mode file: what a restart of the program sees."""
        return ControlLoop(self.cfg, main.build_meter(self.cfg), main.build_bus(self.cfg), StatusStore(),
                           CommandQueue(), mode_file=self.mode_file, wall_clock=lambda: self.wall[0], clock=clock)

    def set_mode(self, request: ModeRequest, source: str) -> dict[str, Any]:
        """A mode request as the command queue hands it over, applied and saved."""
        answer = self.loop.handle_command(SetMode(request=request, source=source))
        self.loop.apply_requested_mode()
        assert self.loop.mode_writer is not None and self.loop.mode_writer.flush()
        return answer

    def discharging(self) -> bool:
        return any(self.sim.unit(i).commanded_w > 0 for i in (1, 2))

    def cycle_until(self, predicate: Any, what: str) -> None:
        def once() -> bool:
            self.loop.cycle()
            return bool(predicate())
        wait_until(once, 30, what, interval_s=0.2)


@contextlib.contextmanager
def rig_on_simulator(tmp_path: Path) -> Iterator[Rig]:
    """The control loop on the simulator, cycled by the test itself (no thread), wall clock faked."""
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)]) as sim:
        sim.set_load_w(900.0)
        sim.set_pv_w(0.0)
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps({
            "energy_meter": {"type": "shelly"},
            "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1},
            "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": [1, 2], "timeout_seconds": 1},
            "web": {"host": "127.0.0.1", "port": 8080},
            "logging": {"file": str(tmp_path / "logs" / "marstek.log")},
        }), encoding="utf-8")
        cfg = load_config(config_path)
        store, commands = StatusStore(), CommandQueue()
        wall = [1_800_000_000.0]
        mono_offset = [0.0]
        mode_file = ModeFile(tmp_path / "data" / "mode.json")
        def mono() -> float:
            return time.monotonic() + mono_offset[0]

        # The meter stamps its readings on the loop's clock: a skip ages no reading.
        loop = ControlLoop(cfg, main.build_meter(cfg, mono), main.build_bus(cfg), store, commands,
                           config_path=config_path, mode_file=mode_file, wall_clock=lambda: wall[0], clock=mono)
        try:
            yield Rig(sim, cfg, store, commands, loop, mode_file, wall, mono_offset)
        finally:
            loop.stop_all("test end")
            loop.meter.close()
            loop.bus.close()


def post_in_background(client: Any, body: dict[str, Any], result: list[Any]) -> threading.Thread:
    """POST /api/mode from another thread: it waits for the control thread, which is the test here."""
    thread = threading.Thread(target=lambda: result.append(client.post("/api/mode", json=body)), daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_hold_from_the_api_stops_discharging_within_one_cycle(tmp_path):
    with rig_on_simulator(tmp_path) as rig:
        app = create_app(rig.store, rig.commands, rig.cfg.web, max_charge_power_w=lambda: rig.loop.max_charge_power_w)
        client = app.test_client()
        rig.cycle_until(rig.discharging, "the batteries discharge into the 900 W load")
        result: list[Any] = []
        thread = post_in_background(client, {"mode": "hold"}, result)
        wait_until(lambda: not rig.commands._queue.empty(), 5, "the command is queued")
        rig.loop.cycle()  # exactly one cycle
        thread.join(5)
        assert result[0].status_code == 200
        assert result[0].get_json() == {"mode": "hold", "power_w": None, "until": None, "source": "api"}
        assert not rig.discharging(), [rig.sim.unit(i).commanded_w for i in (1, 2)]
        assert rig.store.status_json()["operating_mode"]["mode"] == "hold"
        assert client.get("/api/mode").get_json()["mode"] == "hold"
        assert rig.store.latest().status == "mode_hold"
        for _ in range(3):  # and it stays so while the load wants the battery
            rig.loop.cycle()
            assert not rig.discharging()


@pytest.mark.slow
def test_off_stops_every_battery_and_control_state_says_stopped(tmp_path):
    with rig_on_simulator(tmp_path) as rig:
        rig.cycle_until(rig.discharging, "discharging")
        rig.loop.handle_command(SetMode(request=ModeRequest(OFF), source="dashboard"))
        rig.loop.cycle()
        assert all(rig.sim.unit(i).commanded_w == 0 for i in (1, 2))
        snap = rig.store.latest()
        assert snap.control_state == "stopped" and snap.status == "mode_off"
        assert snap.operating_mode["source"] == "dashboard"
        rig.loop.handle_command(SetMode(request=ModeRequest(AUTO), source="dashboard"))
        rig.cycle_until(rig.discharging, "auto resumes the discharge")


@pytest.mark.slow
def test_charge_mode_charges_from_the_grid(tmp_path):
    with rig_on_simulator(tmp_path) as rig:
        rig.loop.handle_command(SetMode(request=ModeRequest(CHARGE, 1000), source="api"))
        rig.cycle_until(lambda: sum(rig.sim.unit(i).commanded_w for i in (1, 2)) == -1000, "charging at 1000 W")
        # The load and the charge come from the grid (the batteries ramp up within a few seconds).
        wait_until(lambda: rig.sim.true_grid_power_w() > 1800, 15, "900 W load + 1000 W charge from the grid")


def test_the_mode_survives_a_restart_and_expires_on_time(tmp_path):
    with rig_on_simulator(tmp_path) as rig:
        answer = rig.set_mode(ModeRequest(HOLD, None, 30), "mqtt")
        assert answer["until"] is not None and answer["source"] == "mqtt"
        mono = FakeClock()
        restarted = rig.new_loop(mono)
        assert restarted.mode == rig.loop.mode  # mode, expiry and source from data/mode.json
        assert restarted.mode.to_json() == answer
        rig.wall[0] += 2 * 3600  # the wall clock steps (NTP): the running program's expiry does not care
        mono.advance(29 * 60)
        restarted.expire_mode()
        assert restarted.mode.mode is HOLD
        rig.wall[0] -= 2 * 3600
        mono.advance(60)
        restarted.expire_mode()
        assert restarted.mode == ModeState()
        assert restarted.mode_writer is not None and restarted.mode_writer.flush()
        assert rig.new_loop().mode == ModeState()  # the expiry was saved too
        # An expiry that passed while the program was off is applied at the first cycle.
        rig.set_mode(ModeRequest(OFF, None, 1), "api")
        rig.wall[0] += 3600
        again = rig.new_loop()
        assert again.mode.mode is OFF
        again.cycle()
        assert again.mode.mode is AUTO and again.store.latest().operating_mode["mode"] == "auto"
        again.stop_all("test end")
        again.meter.close()
        again.bus.close()


@pytest.mark.slow
def test_setup_mode_overrides_every_mode(tmp_path):
    with rig_on_simulator(tmp_path) as rig:
        rig.loop.handle_command(SetMode(request=ModeRequest(CHARGE, 1000), source="api"))
        rig.cycle_until(lambda: sum(rig.sim.unit(i).commanded_w for i in (1, 2)) == -1000, "charging")
        rig.loop.enter_setup()
        rig.loop.cycle()
        assert all(rig.sim.unit(i).commanded_w == 0 for i in (1, 2))
        assert rig.store.latest().control_state == "setup"
        assert rig.store.latest().operating_mode["mode"] == "charge"  # kept for after setup mode
        rig.loop.exit_setup()
        rig.cycle_until(lambda: sum(rig.sim.unit(i).commanded_w for i in (1, 2)) == -1000, "charging again")


# ---------------------------------------------------------------------------- the API without a control thread
def bare_app(**web: Any) -> Any:
    from config_loader import WebConfig
    return create_app(StatusStore(), CommandQueue(), WebConfig(host="127.0.0.1", **web),
                      max_charge_power_w=lambda: 5000)


@pytest.mark.parametrize(("kwargs", "status"), [
    ({"json": {"mode": "turbo"}}, 400),
    ({"json": {"mode": "charge", "power_w": 10}}, 400),
    ({"json": {"mode": "hold", "minutes": "30"}}, 400),
    ({"json": {"power_w": 500}}, 400),
    ({"json": [1]}, 400),
    ({"data": "{", "content_type": "application/json"}, 400),
    ({"data": "mode=hold", "content_type": "application/x-www-form-urlencoded"}, 415),
])
def test_post_mode_refuses_bad_bodies_with_4xx_and_an_error(kwargs, status):
    response = bare_app().test_client().post("/api/mode", **kwargs)
    assert response.status_code == status
    assert set(response.get_json()) == {"error"}


def test_get_mode_answers_the_default_and_post_needs_the_password():
    client = bare_app(password="pw").test_client()
    assert client.get("/api/mode").get_json() == {"mode": "auto", "power_w": None, "until": None,
                                                  "source": "default"}
    assert client.post("/api/mode", json={"mode": "hold"}).status_code == 401
    foreign = bare_app().test_client().post("/api/mode", json={"mode": "hold"},
                                            headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403


# The README's evcc recipe and its requests: tests/test_evcc_recipe.py.


@pytest.mark.slow
def test_main_keeps_the_mode_across_a_restart(tmp_path):
    """main.py as a subprocess: a mode set over the API is there again after SIGTERM and a new start."""
    import signal
    import subprocess
    import sys

    import requests

    from tests.helpers import free_port

    with Simulation(units=[UnitSpec(1, soc_pct=50.0)]) as sim:
        port = free_port()
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps({
            "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1},
            "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": [1], "timeout_seconds": 1},
            "control": {"poll_interval_seconds": 1},
            "web": {"host": "127.0.0.1", "port": port},
            "logging": {"file": str(tmp_path / "logs" / "marstek.log")},
        }), encoding="utf-8")

        def mode() -> dict[str, Any] | None:
            try:
                return requests.get(f"http://127.0.0.1:{port}/api/mode", timeout=1).json()
            except requests.RequestException:
                return None

        answers = []
        for _run in range(2):
            proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--config", str(config_path)],
                                    cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until(mode, 20, "main.py answers")
                if not answers:
                    answer = requests.post(f"http://127.0.0.1:{port}/api/mode", timeout=10,
                                           json={"mode": "charge", "power_w": 700, "minutes": 90})
                    assert answer.status_code == 200
                answers.append(mode())
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=15) == 0
        assert answers[0] == answers[1]
        assert answers[1]["mode"] == "charge" and answers[1]["power_w"] == 700 and answers[1]["until"]
        assert json.loads((tmp_path / "data" / "mode.json").read_text())["source"] == "api"
