"""Secrets stay secret (against a real control loop on the simulator); wrong passwords block the client."""

from __future__ import annotations

import base64
import logging
import re
import threading

import pytest

from config_loader import parse_config
from control import i18n
from control.control_loop import ControlLoop
from control.status_store import CommandQueue, StatusStore, StoreLogHandler
from main import build_bus, build_meter
from simulator.world import Simulation, UnitSpec
from tests.helpers import FakeClock, wait_until
from web_server import LoginBlocked, LoginThrottle, create_app

WEB_PASSWORD = "web-Geheimnis-4711"
SHELLY_PASSWORD = "shelly-Geheimnis-0815"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


def test_no_secret_in_status_events_or_log(caplog):
    with Simulation(units=[UnitSpec(1)], shelly_password=SHELLY_PASSWORD) as sim:
        cfg = parse_config({
            "energy_meter": {"type": "shelly"},
            "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "password": SHELLY_PASSWORD, "timeout_seconds": 1},
            "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": [1], "timeout_seconds": 0.5},
            "control": {"poll_interval_seconds": 1},
            "web": {"host": "0.0.0.0", "password": WEB_PASSWORD},
        })
        store, commands = StatusStore(), CommandQueue()
        handler = StoreLogHandler(store)
        logging.getLogger().addHandler(handler)
        loop = ControlLoop(cfg, build_meter(cfg), build_bus(cfg), store, commands)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
        clock = FakeClock()
        try:
            with caplog.at_level(logging.DEBUG):
                thread.start()
                client = create_app(store, commands, cfg.web, clock=clock).test_client()
                wait_until(lambda: store.latest().meter_ok, 20, "meter read with digest auth")
                wrong = base64.b64encode(b"admin:" + WEB_PASSWORD[::-1].encode()).decode()
                client.post("/api/setup/enter", json={}, headers={"Authorization": f"Basic {wrong}"})
                clock.advance(1.0)  # past the block the wrong password earned
                right = base64.b64encode(f"x:{WEB_PASSWORD}".encode()).decode()
                assert client.post("/api/setup/enter", json={},
                                   headers={"Authorization": f"Basic {right}"}).status_code == 200
                client.post("/api/setup/exit", json={}, headers={"Authorization": f"Basic {right}"})
                status_text = client.get("/api/status").get_data(as_text=True)
        finally:
            stop.set()
            commands.wakeup.set()
            thread.join(10)
            logging.getLogger().removeHandler(handler)
    for secret in (WEB_PASSWORD, SHELLY_PASSWORD, WEB_PASSWORD[::-1]):
        assert secret not in status_text
        assert secret not in caplog.text
        assert all(secret not in e.message for e in store.events())
    assert "Failed login" in caplog.text  # the attempt is logged, the password is not


# ---------------------------------------------------------------------------- wrong passwords
def locked_app(clock: FakeClock):
    """Nothing without the password (not even /api/status), so every request is a password check."""
    web = parse_config({"battery": {"ip": "1.2.3.4"}, "shelly": {"ip": "1.2.3.4"},
                        "web": {"host": "127.0.0.1", "password": WEB_PASSWORD,
                                "read_only_without_login": False}}).web
    return create_app(StatusStore(), CommandQueue(), web, clock=clock)


def test_a_wrong_password_blocks_the_client_for_a_growing_time_without_waiting():
    clock = FakeClock()
    client = locked_app(clock).test_client()
    blocks_s = []
    for _ in range(9):
        assert client.get("/api/status", headers=basic("nope")).status_code == 401
        # Blocked: refused at once (the fake clock does not move), even with the right password.
        resp = client.get("/api/status", headers=basic(WEB_PASSWORD))
        assert resp.status_code == 429
        assert "retry in" in resp.get_json()["error"]
        blocks_s.append(int(resp.headers["Retry-After"]))
        clock.advance(blocks_s[-1] - 0.5)
        assert client.get("/api/status", headers=basic(WEB_PASSWORD)).headers["Retry-After"] == "1"
        clock.advance(0.5)
    assert blocks_s == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_the_right_password_after_the_block_passes_and_resets_the_count():
    clock = FakeClock()
    client = locked_app(clock).test_client()
    for _ in range(3):
        client.get("/api/status", headers=basic("nope"))
        clock.advance(10.0)
    assert client.get("/api/status", headers=basic(WEB_PASSWORD)).status_code == 200
    assert client.get("/api/status", headers=basic("nope")).status_code == 401
    assert client.get("/api/status", headers=basic("nope")).headers["Retry-After"] == "1"  # 1 s again, not 8


def test_the_block_is_per_client_address():
    clock = FakeClock()
    client = locked_app(clock).test_client()
    attacker, other = {"REMOTE_ADDR": "192.0.2.7"}, {"REMOTE_ADDR": "192.0.2.8"}
    assert client.get("/api/status", headers=basic("nope"), environ_base=attacker).status_code == 401
    assert client.get("/api/status", headers=basic(WEB_PASSWORD), environ_base=attacker).status_code == 429
    assert client.get("/api/status", headers=basic(WEB_PASSWORD), environ_base=other).status_code == 200


def test_a_blocked_post_without_a_session_is_429_json():
    clock = FakeClock()
    client = locked_app(clock).test_client()
    client.post("/api/setup/enter", json={}, headers=basic("nope"))
    resp = client.post("/api/setup/enter", json={}, headers=basic(WEB_PASSWORD))
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
    assert resp.is_json and resp.get_json()["error"]


def test_a_blocked_login_form_shows_the_message_and_the_next_try_after_the_block_logs_in():
    clock = FakeClock()
    client = locked_app(clock).test_client()
    token = CSRF_RE.search(client.get("/login").get_data(as_text=True)).group(1)
    resp = client.post("/login", data={"password": "nope", "csrf_token": token})
    assert resp.status_code == 401
    token = CSRF_RE.search(resp.get_data(as_text=True)).group(1)

    resp = client.post("/login", data={"password": WEB_PASSWORD, "csrf_token": token})
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
    html = resp.get_data(as_text=True)
    assert i18n.DE["login_too_many_attempts"] in html
    token = CSRF_RE.search(html).group(1)  # the page stays usable: a fresh token for the next try

    clock.advance(1.0)
    resp = client.post("/login", data={"password": WEB_PASSWORD, "csrf_token": token})
    assert resp.status_code == 302
    assert client.get("/api/status").status_code == 200  # the session, no password check


def test_a_blocked_page_request_with_basic_auth_shows_the_login_page_with_the_message():
    clock = FakeClock()
    client = locked_app(clock).test_client()
    client.get("/", headers=basic("nope"))
    resp = client.get("/", headers=basic(WEB_PASSWORD))
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
    assert i18n.DE["login_too_many_attempts"] in resp.get_data(as_text=True)


def test_throttle_forgets_quiet_clients_and_keeps_at_most_max_clients():
    clock = FakeClock()
    throttle = LoginThrottle(clock, first_s=1.0, max_s=4.0, forget_after_s=100.0, max_clients=3)
    for n in range(5):
        assert throttle.attempt(f"10.0.0.{n}", lambda: False) is False
        clock.advance(1.0)
    assert len(throttle) == 3
    assert throttle.blocked_s("10.0.0.0") == 0  # pushed out: the oldest failure went first
    assert throttle.attempt("10.0.0.4", lambda: False) is False  # 2nd failure in a row: 2 s
    assert throttle.blocked_s("10.0.0.4") == 2.0
    clock.advance(100.0)
    assert throttle.attempt("10.0.0.9", lambda: True) is True
    assert len(throttle) == 0  # nobody failed in the last 100 s
    assert throttle.attempt("10.0.0.4", lambda: False) is False
    assert throttle.blocked_s("10.0.0.4") == 1.0  # forgotten, so it starts again at the first block


def test_throttle_does_not_run_the_check_while_blocked():
    clock = FakeClock()
    throttle = LoginThrottle(clock)
    throttle.attempt("10.0.0.1", lambda: False)
    checks: list[str] = []
    with pytest.raises(LoginBlocked) as info:
        throttle.attempt("10.0.0.1", lambda: checks.append("ran") or True)
    assert checks == [] and info.value.retry_after_s == 1.0


@pytest.mark.parametrize("kwargs", [{"first_s": 0.0}, {"first_s": 5.0, "max_s": 2.0},
                                    {"max_s": 60.0, "forget_after_s": 30.0}, {"max_clients": 0}])
def test_throttle_refuses_settings_that_make_no_sense(kwargs):
    with pytest.raises(ValueError):
        LoginThrottle(FakeClock(), **kwargs)
