"""The web server (web_server.py, templates/, static/, i18n.py) through Flask's test client.

Two kinds of app:
* ``make_app``: a bare app on a fresh StatusStore and CommandQueue, for everything that is decided
  before a command reaches the control thread (validation, auth, headers, pages, languages).
* ``live_system``: the real control thread (ControlLoop) on the simulator (simulator.Simulation),
  for the setup commands and the status document the control thread publishes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from waitress import wasyncore

import main
from config_loader import Config, WebConfig, load_config
from control import i18n
from control.control_loop import ControlLoop
from control.status_store import (
    BatteryStatus,
    CommandQueue,
    HistorySample,
    QuirkCounter,
    StatusSnapshot,
    StatusStore,
    StoreLogHandler,
)
from simulator.world import Simulation, UnitSpec
from tests.helpers import free_port, wait_until, write_two_unit_config
from web_server import create_app

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "geheim-123"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
I18N_RE = re.compile(r'<script type="application/json" id="i18n">(.*?)</script>', re.S)


def web_cfg(**changes: Any) -> WebConfig:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 8080, "password": None, "language": "de"}
    values.update(changes)
    return WebConfig(**values)


def make_app(store: StatusStore | None = None, **web: Any) -> Flask:
    """A bare app (no control thread behind the command queue)."""
    return create_app(store or StatusStore(), CommandQueue(), web_cfg(**web))


def basic(password: str, user: str = "admin") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def i18n_block(html: str) -> dict[str, str]:
    match = I18N_RE.search(html)
    assert match, "the page carries its texts as a JSON block"
    return json.loads(match.group(1))


# ---------------------------------------------------------------------------- the live system
@dataclass
class Live:
    sim: Simulation
    store: StatusStore
    commands: CommandQueue
    loop: ControlLoop
    cfg: Config
    config_path: Path
    app: Flask
    client: FlaskClient
    clock_s: list[float]  # the app's clock (blocks after wrong passwords); tests move it by hand


@contextlib.contextmanager
def live_system(tmp_path: Path, **web: Any) -> Iterator[Live]:
    """Simulator with batteries on IDs 1 and 2, the real control thread, and the app in front of it."""
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)]) as sim:
        sim.set_load_w(400.0)
        config_path = write_two_unit_config(tmp_path, sim, web)
        cfg = load_config(config_path)
        store, commands = StatusStore(), CommandQueue()
        events = StoreLogHandler(store)  # as main.setup_logging does: log records become the live events
        logging.getLogger().addHandler(events)
        app_logger = logging.getLogger("marstek")
        old_level = app_logger.level
        app_logger.setLevel(logging.INFO)
        quirks = QuirkCounter()  # as main.py wires it: the gateways report their quirks into the loop's counter
        loop = ControlLoop(cfg, main.build_meter(cfg), main.build_bus(cfg, quirks=quirks), store, commands,
                           config_path=config_path, quirks=quirks)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,), name="test-control", daemon=True)
        thread.start()
        clock_s = [0.0]
        app = create_app(store, commands, cfg.web, clock=lambda: clock_s[0])
        try:
            wait_until(lambda: store.latest().control_state == "active" and
                       all(b.online for b in store.latest().batteries), 15, "control active, both batteries online")
            yield Live(sim, store, commands, loop, cfg, config_path, app, app.test_client(), clock_s)
        finally:
            stop.set()
            commands.wakeup.set()
            thread.join(timeout=15)
            logging.getLogger().removeHandler(events)
            app_logger.setLevel(old_level)
            assert not thread.is_alive(), "control thread did not stop"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with live_system(tmp_path) as system:
        yield system


# ---------------------------------------------------------------------------- /api/status, /api/history
STATUS_KEYS = {"grid_power_w", "grid_power_avg_w", "meter_type", "meter_ok", "control_state", "setup_mode",
               "batteries", "errors", "events", "updated_at"}
BATTERY_KEYS = {"id", "online", "soc_pct", "setpoint_w", "power_w", "mode"}


def check_status_shape(doc: dict[str, Any]) -> None:
    """The /api/status document of interfaces.md (extra keys allowed)."""
    assert set(doc) >= STATUS_KEYS
    for key in ("grid_power_w", "grid_power_avg_w"):
        assert doc[key] is None or isinstance(doc[key], (int, float))
    assert isinstance(doc["meter_type"], str)
    assert isinstance(doc["meter_ok"], bool)
    assert doc["control_state"] in ("active", "setup", "stopped", "error")
    assert isinstance(doc["setup_mode"], bool)
    for b in doc["batteries"]:
        assert set(b) >= BATTERY_KEYS
        assert isinstance(b["id"], int) and isinstance(b["online"], bool)
        assert b["soc_pct"] is None or 0 <= b["soc_pct"] <= 100
        assert isinstance(b["setpoint_w"], (int, float))
        assert b["power_w"] is None or isinstance(b["power_w"], (int, float))
        assert b["mode"] in ("charge", "discharge", "idle", "stopped")
    assert all(isinstance(e, str) for e in doc["errors"])
    for e in doc["events"]:
        assert {"time", "level", "message"} <= set(e)
        datetime.fromisoformat(e["time"])
    datetime.fromisoformat(doc["updated_at"])
    # Additions the dashboard uses.
    assert isinstance(doc["warnings"], list)
    assert isinstance(doc["quality"], dict)


def test_status_of_a_fresh_store_has_the_documented_shape() -> None:
    resp = make_app().test_client().get("/api/status")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    doc = resp.get_json()
    check_status_shape(doc)
    assert doc["grid_power_w"] is None and doc["batteries"] == []


def test_status_shows_the_published_snapshot_and_events() -> None:
    store = StatusStore()
    store.publish(StatusSnapshot(
        grid_power_w=-123.0, grid_power_avg_w=-100.0, meter_type="shelly", meter_ok=True, control_state="active",
        batteries=(BatteryStatus(1, True, 55.0, 300, 290.0, "discharge"), BatteryStatus(2, False, None, 0, None,
                                                                                         "idle")),
        errors=("Akku / battery 2: no answer",), quality={"rms_error_w": 12.5},
    ))
    store.add_event("WARNING", "Battery 2 offline")
    doc = make_app(store).test_client().get("/api/status").get_json()
    check_status_shape(doc)
    assert doc["grid_power_w"] == -123.0
    assert [b["id"] for b in doc["batteries"]] == [1, 2]
    assert doc["batteries"][0]["power_w"] == 290.0 and doc["batteries"][1]["soc_pct"] is None
    assert doc["errors"] == ["Akku / battery 2: no answer"]
    assert doc["quality"] == {"rms_error_w": 12.5}
    assert doc["events"][-1]["message"] == "Battery 2 offline"


def test_status_from_the_real_control_thread(live: Live) -> None:
    doc = live.client.get("/api/status").get_json()
    check_status_shape(doc)
    assert doc["control_state"] == "active" and doc["setup_mode"] is False
    assert doc["meter_type"] == "shelly" and doc["meter_ok"] is True
    assert [b["id"] for b in doc["batteries"]] == [1, 2]
    assert all(b["online"] and b["soc_pct"] is not None for b in doc["batteries"])
    started = i18n.MESSAGES_DE["control_started"].split(":")[0]  # the page's language: web.language (de)
    assert any(started in e["message"] for e in doc["events"])


def test_history_returns_parallel_arrays_and_filters_by_since() -> None:
    store = StatusStore()
    for i in range(5):
        store.publish(StatusSnapshot(), HistorySample(1000.0 + i, 100.0 - i, -50.0, 60.0 if i else None))
    client = make_app(store).test_client()
    doc = client.get("/api/history").get_json()
    assert doc == {
        "t": [1000.0, 1001.0, 1002.0, 1003.0, 1004.0],
        "grid_w": [100.0, 99.0, 98.0, 97.0, 96.0],
        "battery_w": [-50.0] * 5,
        "soc_pct": [None, 60.0, 60.0, 60.0, 60.0],
    }
    assert client.get("/api/history?since=1002").get_json()["t"] == [1003.0, 1004.0]
    assert client.get("/api/history?since=2000").get_json()["t"] == []


def test_history_with_a_bad_since_is_400() -> None:
    resp = make_app().test_client().get("/api/history?since=yesterday")
    assert resp.status_code == 400
    assert "since" in resp.get_json()["error"]


def test_history_from_the_real_control_thread(live: Live) -> None:
    wait_until(lambda: len(live.store.history()) >= 2, 10, "two history samples")
    doc = live.client.get("/api/history").get_json()
    assert len(doc["t"]) == len(doc["grid_w"]) == len(doc["battery_w"]) == len(doc["soc_pct"]) >= 2
    assert doc["t"] == sorted(doc["t"])
    assert doc["soc_pct"][-1] is not None


# ---------------------------------------------------------------------------- routing errors
def test_unknown_api_path_is_404_json() -> None:
    resp = make_app().test_client().get("/api/does-not-exist")
    assert resp.status_code == 404
    assert resp.mimetype == "application/json"
    assert "error" in resp.get_json()


def test_unknown_page_is_404() -> None:
    assert make_app().test_client().get("/nothing-here").status_code == 404


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/api/setup/enter"),
    ("get", "/api/setup/scan"),
    ("get", "/api/setup/set-id"),
    ("get", "/api/setup/exit"),
    ("get", "/api/setup/add-to-config"),
    ("post", "/api/status"),
    ("post", "/api/history"),
    ("delete", "/api/status"),
])
def test_wrong_method_is_405_json(method: str, path: str) -> None:
    client = make_app().test_client()
    resp = getattr(client, method)(path, json={}) if method == "post" else getattr(client, method)(path)
    assert resp.status_code == 405
    assert "error" in resp.get_json()
    assert ("POST" if method == "get" else "GET") in resp.headers["Allow"]


# ---------------------------------------------------------------------------- body validation (before the queue)
SETUP_POSTS = ["/api/setup/enter", "/api/setup/scan", "/api/setup/set-id", "/api/setup/exit",
               "/api/setup/add-to-config"]


@pytest.mark.parametrize("path", SETUP_POSTS)
def test_post_without_json_content_type_is_415(path: str) -> None:
    client = make_app().test_client()
    for kwargs in ({"data": '{"new_id": 3}', "content_type": "text/plain"}, {"data": "new_id=3"}, {}):
        resp = client.post(path, **kwargs)
        assert resp.status_code == 415, kwargs
        assert "application/json" in resp.get_json()["error"]


@pytest.mark.parametrize("path", SETUP_POSTS)
def test_post_with_bad_json_is_400(path: str) -> None:
    client = make_app().test_client()
    for body in ("{not json", "[1, 2]", '"text"', "3"):
        resp = client.post(path, data=body, content_type="application/json")
        assert resp.status_code == 400, body
        assert resp.get_json()["error"]


@pytest.mark.parametrize(("path", "body"), [
    ("/api/setup/enter", {"force": True}),
    ("/api/setup/exit", {"now": 1}),
    ("/api/setup/scan", {"first_id": 1, "last": 5}),
    ("/api/setup/set-id", {"new_id": 3, "old_id": 1}),
    ("/api/setup/add-to-config", {"id": 3, "save": False}),
])
def test_unknown_fields_are_400(path: str, body: dict[str, Any]) -> None:
    resp = make_app().test_client().post(path, json=body)
    assert resp.status_code == 400
    assert "unknown field" in resp.get_json()["error"]


@pytest.mark.parametrize(("path", "field"), [
    ("/api/setup/set-id", "new_id"),
    ("/api/setup/add-to-config", "id"),
    ("/api/setup/scan", "first_id"),
    ("/api/setup/scan", "last_id"),
])
@pytest.mark.parametrize("value", ["3", 3.0, 3.5, True, None, [3], {"id": 3}])
def test_non_integer_ids_are_400(path: str, field: str, value: Any) -> None:
    resp = make_app().test_client().post(path, json={field: value})
    assert resp.status_code == 400
    assert field in resp.get_json()["error"]


@pytest.mark.parametrize("new_id", [-1, 0, 1, 248, 255, 10_000])
def test_new_id_outside_2_to_247_is_400(new_id: int) -> None:
    resp = make_app().test_client().post("/api/setup/set-id", json={"new_id": new_id})
    assert resp.status_code == 400
    assert "2..247" in resp.get_json()["error"]


def test_set_id_needs_new_id() -> None:
    resp = make_app().test_client().post("/api/setup/set-id", json={})
    assert resp.status_code == 400
    assert "new_id" in resp.get_json()["error"]


@pytest.mark.parametrize("body", [
    {"first_id": 0}, {"last_id": 248}, {"first_id": 5, "last_id": 4}, {"first_id": 1, "last_id": 51},
])
def test_bad_scan_ranges_are_400(body: dict[str, int]) -> None:
    resp = make_app().test_client().post("/api/setup/scan", json=body)
    assert resp.status_code == 400
    assert resp.get_json()["error"]


def test_add_to_config_id_out_of_range_is_400() -> None:
    for battery_id in (0, 248):
        resp = make_app().test_client().post("/api/setup/add-to-config", json={"id": battery_id})
        assert resp.status_code == 400


def test_oversized_body_is_413_json() -> None:
    resp = make_app().test_client().post("/api/setup/scan", data="{" + " " * 20_000 + "}",
                                         content_type="application/json")
    assert resp.status_code == 413
    assert "error" in resp.get_json()


# ---------------------------------------------------------------------------- the setup commands, live
@pytest.mark.slow
def test_scan_and_set_id_are_refused_outside_setup_mode(live: Live) -> None:
    for path, body in (("/api/setup/scan", {"first_id": 1, "last_id": 2}), ("/api/setup/set-id", {"new_id": 5})):
        resp = live.client.post(path, json=body)
        assert resp.status_code == 409
        assert resp.get_json()["error"] == i18n.MESSAGES_DE["not_in_setup"]  # the page's language (de)
    assert live.sim.unit(1).unit_id == 1  # nothing was re-addressed


@pytest.mark.slow
def test_setup_flow_enter_scan_set_add_exit(live: Live) -> None:
    client = live.client
    # Enter: the control stops, every battery is stopped.
    resp = client.post("/api/setup/enter", json={})
    assert resp.status_code == 200
    assert resp.get_json() == {"setup_mode": True, "stop_failures": []}
    status = client.get("/api/status").get_json()
    assert status["setup_mode"] is True and status["control_state"] == "setup"
    assert all(b["mode"] == "stopped" for b in status["batteries"])
    assert all(u.force_mode == 0 for u in live.sim.units)
    assert client.post("/api/setup/enter", json={}).get_json()["setup_mode"] is True  # idempotent

    # Scan: both batteries answer, 3 is proposed.
    resp = client.post("/api/setup/scan", json={"first_id": 1, "last_id": 3})
    assert resp.status_code == 200
    doc = resp.get_json()
    assert [f["id"] for f in doc["found"]] == [1, 2]
    assert all(f["model"] and 0 <= f["soc_pct"] <= 100 for f in doc["found"])
    assert doc["next_free_id"] == 3

    # Refusals: the new ID already answers; then the change 1 -> 3, verified on the new ID.
    resp = client.post("/api/setup/set-id", json={"new_id": 2})
    assert resp.status_code == 409
    assert resp.get_json()["error"] == i18n.MESSAGES_DE["id_in_use"].format(id=2)
    resp = client.post("/api/setup/set-id", json={"new_id": 3})
    assert resp.status_code == 200
    doc = resp.get_json()
    assert doc["ok"] is True and doc["new_id"] == 3 and doc["verified"] is True
    assert doc["in_config"] is False and doc["model"]
    assert sorted(u.unit_id for u in live.sim.units) == [2, 3]
    resp = client.post("/api/setup/set-id", json={"new_id": 4})
    assert resp.status_code == 409
    assert "ID 1" in resp.get_json()["error"]

    resp = client.post("/api/setup/scan", json={"first_id": 1, "last_id": 3})
    assert [f["id"] for f in resp.get_json()["found"]] == [2, 3]

    # Add to config.json: saved, and the running controller knows the battery.
    resp = client.post("/api/setup/add-to-config", json={"id": 3})
    assert resp.status_code == 200
    answer = resp.get_json()
    assert answer["akku_ids"] == [1, 2, 3] and answer["saved"] is True
    assert answer["units"] == [f"127.0.0.1:{live.sim.modbus_port}/{i}" for i in (1, 2, 3)]
    assert json.loads(live.config_path.read_text(encoding="utf-8"))["battery"]["akku_ids"] == [1, 2, 3]
    again = client.post("/api/setup/add-to-config", json={"id": 3}).get_json()
    assert again["saved"] is False and again["akku_ids"] == [1, 2, 3]

    # Exit: the control resumes with batteries 2 and 3 (1 no longer exists).
    resp = client.post("/api/setup/exit", json={})
    assert resp.status_code == 200
    assert resp.get_json() == {"setup_mode": False}
    wait_until(lambda: client.get("/api/status").get_json()["control_state"] in ("active", "error"), 10,
               "control resumes")
    status = client.get("/api/status").get_json()
    assert status["setup_mode"] is False
    assert [b["id"] for b in status["batteries"]] == [1, 2, 3]
    wait_until(lambda: {b["id"] for b in client.get("/api/status").get_json()["batteries"] if b["online"]} == {2, 3},
               15, "batteries 2 and 3 online, 1 gone")


@pytest.mark.slow
def test_set_id_with_nothing_on_id_1_is_409(live: Live) -> None:
    live.sim.unit(1).silent = True
    assert live.client.post("/api/setup/enter", json={}).status_code == 200
    resp = live.client.post("/api/setup/set-id", json={"new_id": 5})
    assert resp.status_code == 409
    assert resp.get_json()["error"] == i18n.MESSAGES_DE["no_battery_on_id1"]
    assert live.client.post("/api/setup/exit", json={}).status_code == 200


# ---------------------------------------------------------------------------- auth and CSRF
@pytest.mark.slow
def test_without_password_posts_need_no_login(live: Live) -> None:
    assert live.client.post("/api/setup/enter", json={}).status_code == 200
    assert live.client.post("/api/setup/exit", json={}).status_code == 200


@pytest.mark.parametrize("path", SETUP_POSTS)
def test_with_password_posts_without_it_are_401(path: str) -> None:
    resp = make_app(password=PASSWORD).test_client().post(path, json={})
    assert resp.status_code == 401
    assert "password" in resp.get_json()["error"]


@pytest.mark.parametrize("headers", [
    basic("wrong"),
    basic(PASSWORD.upper()),
    {"Authorization": "Basic not-base64!!"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    {"Authorization": "Bearer " + PASSWORD},
])
def test_with_password_wrong_credentials_are_401(headers: dict[str, str]) -> None:
    resp = make_app(password=PASSWORD).test_client().post("/api/setup/enter", json={}, headers=headers)
    assert resp.status_code == 401


def test_with_password_basic_auth_passes_any_user_name() -> None:
    client = make_app(password=PASSWORD).test_client()
    for user in ("admin", "", "anyone"):
        # Past the password check the request fails on its (bad) body, not on auth.
        resp = client.post("/api/setup/set-id", json={"new_id": 1}, headers=basic(PASSWORD, user))
        assert resp.status_code == 400


@pytest.mark.slow
def test_with_password_basic_auth_runs_the_command(tmp_path: Path) -> None:
    with live_system(tmp_path, password=PASSWORD) as system:
        client = system.client
        assert client.post("/api/setup/enter", json={}).status_code == 401
        resp = client.post("/api/setup/enter", json={}, headers=basic(PASSWORD))
        assert resp.status_code == 200 and resp.get_json()["setup_mode"] is True
        assert client.post("/api/setup/exit", json={}, headers=basic(PASSWORD)).get_json() == {"setup_mode": False}


@pytest.mark.slow
def test_login_form_flow_with_csrf_token(tmp_path: Path) -> None:
    with live_system(tmp_path, password=PASSWORD) as system:
        client = system.client
        page = client.get("/login?next=/setup")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        token = CSRF_RE.search(html).group(1)
        assert 'type="password"' in html and i18n.DE["login_button"] in html

        # Without or with a wrong CSRF token: refused before the password is looked at.
        assert client.post("/login", data={"password": PASSWORD}).status_code == 403
        assert client.post("/login", data={"password": PASSWORD, "csrf_token": "forged"}).status_code == 403

        # Wrong password: the form again, with the message and a fresh token.
        resp = client.post("/login?next=/setup", data={"password": "nope", "csrf_token": token})
        assert resp.status_code == 401
        html = resp.get_data(as_text=True)
        assert i18n.DE["login_wrong_password"] in html
        token = CSRF_RE.search(html).group(1)
        system.clock_s[0] += 1.0  # past the block the wrong password earned (tests/test_security.py)

        resp = client.post("/login?next=/setup", data={"password": PASSWORD, "csrf_token": token})
        assert resp.status_code == 302
        assert resp.headers["Location"].endswith("/setup")

        # The session now allows the commands; the pages show the logout button.
        assert client.post("/api/setup/enter", json={}).status_code == 200
        assert client.post("/api/setup/exit", json={}).status_code == 200
        assert 'id="logout"' in client.get("/").get_data(as_text=True)

        assert client.post("/logout", json={}).status_code == 200
        assert client.post("/api/setup/enter", json={}).status_code == 401


@pytest.mark.parametrize("target", ["//evil.example/", "/\\evil.example", "http://evil.example/", "javascript:x"])
def test_login_never_redirects_off_site(target: str) -> None:
    client = make_app(password=PASSWORD).test_client()
    token = CSRF_RE.search(client.get("/login").get_data(as_text=True)).group(1)
    resp = client.post("/login", query_string={"next": target}, data={"password": PASSWORD, "csrf_token": token})
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/"


def test_login_page_without_password_redirects_to_the_dashboard() -> None:
    resp = make_app().test_client().get("/login")
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/"


def test_read_only_without_login_shows_pages_but_refuses_changes() -> None:
    client = make_app(password=PASSWORD).test_client()
    for path in ("/", "/setup", "/api/status", "/api/history"):
        assert client.get(path).status_code == 200, path
    html = client.get("/").get_data(as_text=True)
    assert 'id="login-link"' in html and i18n.DE["login_hint"] in html
    assert client.post("/api/setup/enter", json={}).status_code == 401


def test_not_read_only_without_login_hides_everything() -> None:
    client = make_app(password=PASSWORD, read_only_without_login=False).test_client()
    for path in ("/", "/setup"):
        resp = client.get(path)
        assert resp.status_code == 302
        assert "/login" in resp.headers["Location"]
    assert client.get("/api/status").status_code == 401
    assert client.get("/api/status", headers=basic(PASSWORD)).status_code == 200
    assert client.get("/login").status_code == 200
    with client.get("/static/style.css") as resp:
        assert resp.status_code == 200


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "http://localhost.evil.example"},
    {"Origin": "null"},
    {"Referer": "http://evil.example/page"},
])
def test_cross_origin_posts_are_403(headers: dict[str, str]) -> None:
    for app in (make_app(), make_app(password=PASSWORD)):
        resp = app.test_client().post("/api/setup/set-id", json={"new_id": 1}, headers={**headers, **basic(PASSWORD)})
        assert resp.status_code == 403
        assert "web.allowed_hosts" in resp.get_json()["error"]


def test_same_origin_posts_pass_the_origin_check() -> None:
    client = make_app().test_client()
    for headers in ({"Origin": "http://localhost"}, {"Referer": "http://localhost/setup"}, {}):
        # The bad body shows the request got past the origin check.
        assert client.post("/api/setup/set-id", json={"new_id": 1}, headers=headers).status_code == 400


def test_cross_origin_login_is_403() -> None:
    resp = make_app(password=PASSWORD).test_client().post("/login", data={"password": PASSWORD},
                                                          headers={"Origin": "http://evil.example"})
    assert resp.status_code == 403


def test_missing_password_on_a_lan_address_is_a_warning() -> None:
    store = StatusStore()
    make_app(store, host="0.0.0.0")
    warnings = make_app(store, host="0.0.0.0").test_client().get("/api/status").get_json()["warnings"]
    assert warnings and "web.password" in warnings[0]
    assert make_app(host="127.0.0.1").test_client().get("/api/status").get_json()["warnings"] == []
    assert make_app(host="0.0.0.0", password=PASSWORD).test_client().get("/api/status").get_json()["warnings"] == []


# ---------------------------------------------------------------------------- headers
@pytest.mark.parametrize("path", ["/", "/setup", "/api/status", "/api/does-not-exist", "/static/style.css"])
def test_security_headers_everywhere(path: str) -> None:
    with make_app().test_client().get(path) as resp:
        check_security_headers(resp)


def check_security_headers(resp: Any) -> None:
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "same-origin"
    assert "Server" not in resp.headers


def test_the_real_server_sends_no_server_version() -> None:
    app = make_app()
    port = free_port()
    server, thread = main.start_web(app, "127.0.0.1", port)
    try:
        def fetch(path: str) -> Any:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
            except urllib.error.HTTPError as exc:
                return exc

        for path in ("/", "/api/status", "/api/nope"):
            with contextlib.closing(fetch(path)) as resp:
                server_header = resp.headers.get("Server", "")
                assert not re.search(r"\d", server_header), server_header
                assert "waitress" not in server_header.lower() and "werkzeug" not in server_header.lower()
                assert "python" not in server_header.lower()
    finally:
        # Closed from inside the server's own loop thread: closing its sockets from here races its select().
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        thread.join(timeout=5)
        server.task_dispatcher.shutdown()
        assert not thread.is_alive()


# ---------------------------------------------------------------------------- pages and languages
def test_dashboard_page() -> None:
    resp = make_app().test_client().get("/")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert '<html lang="de">' in html
    assert 'href="/setup"' in html
    for element_id in ("grid-value", "meter-health", "control-state", "batteries", "chart", "events", "warnings",
                       "energy-imported", "energy-share", "quality"):
        assert f'id="{element_id}"' in html, element_id
    assert "/static/vendor/uplot/uPlot.iife.min.js" in html and "/static/dashboard.js" in html


def test_setup_page() -> None:
    resp = make_app().test_client().get("/setup")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    for key in ("step1_button", "scan_button", "set_button", "add_button", "exit_button", "step3_warning",
                "new_id_help", "manual_text"):
        assert i18n.DE[key].replace('"', "&#34;") in html, key
    assert 'min="2" max="247"' in html
    assert "/static/setup.js" in html


def test_setup_page_shows_a_login_link_when_a_password_is_set() -> None:
    html = make_app(password=PASSWORD).test_client().get("/setup").get_data(as_text=True)
    assert 'href="/login?next=/setup"' in html or 'href="/login?next=%2Fsetup"' in html


@pytest.mark.parametrize(("language", "accept", "expected"), [
    ("de", None, "de"),
    ("de", "en-US,en;q=0.9", "de"),
    ("en", None, "en"),
    ("en", "de-DE", "en"),
    ("auto", "en-US,en;q=0.9,de;q=0.5", "en"),
    ("auto", "de-AT,de;q=0.9,en;q=0.5", "de"),
    ("auto", "fr-FR,fr;q=0.9", "de"),
    ("auto", None, "de"),
])
def test_language_selection(language: str, accept: str | None, expected: str) -> None:
    client = make_app(language=language).test_client()
    headers = {"Accept-Language": accept} if accept else {}
    for path in ("/", "/setup"):
        html = client.get(path, headers=headers).get_data(as_text=True)
        assert f'<html lang="{expected}">' in html
        assert i18n_block(html) == i18n.STRINGS[expected]
        assert i18n.STRINGS[expected]["app_title"] in html


def test_login_page_language() -> None:
    html = make_app(password=PASSWORD, language="en").test_client().get("/login").get_data(as_text=True)
    assert '<html lang="en">' in html and i18n.EN["login_button"] in html


def test_both_languages_have_the_same_keys_and_no_empty_text() -> None:
    assert set(i18n.DE) == set(i18n.EN)
    for lang, texts in i18n.STRINGS.items():
        for key, text in texts.items():
            assert isinstance(text, str) and text.strip(), (lang, key)
    assert i18n.strings("xx") is i18n.STRINGS["de"]


def test_every_text_key_the_pages_use_exists() -> None:
    used: set[str] = set()
    for template in (ROOT / "templates").glob("*.html"):
        used |= set(re.findall(r"\bt\.(\w+)", template.read_text(encoding="utf-8")))
    for script in (ROOT / "static").glob("*.js"):
        used |= set(re.findall(r"\bt\(\"(\w+)\"\s*[,)]", script.read_text(encoding="utf-8")))
    # Keys built at run time from API values.
    used |= {f"state_{s}" for s in ("active", "setup", "stopped", "error", "unknown")}
    used |= {f"status_{s}" for s in ("tracking", "deadband", "waiting_for_sample", "idle", "soc_limit", "no_battery",
                                     "meter_retry", "meter_failed")}
    used |= {f"mode_{m}" for m in ("charge", "discharge", "idle", "stopped")}
    used |= {f"level_{lv}" for lv in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
    used |= {f"quality_{q}" for q in ("rms_error_w", "export_wh_today", "import_wh_today", "battery_export_wh_today",
                                      "writes_per_h", "band_crossings_per_h", "time_in_band_pct")}
    used |= {"login_wrong_password", "login_too_many_attempts"}
    assert used - set(i18n.DE) == set()


def test_pages_obey_the_content_security_policy() -> None:
    """No inline script or style (the CSP forbids them) and nothing loaded from another host."""
    client = make_app(password=PASSWORD).test_client()
    for path in ("/", "/setup", "/login"):
        html = client.get(path).get_data(as_text=True)
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag or 'type="application/json"' in tag, tag
        assert not re.search(r"\sstyle=", html), path
        assert not re.search(r"\son[a-z]+=", html), path
        assert not re.search(r"(src|href)=\"(https?:)?//", html), path
    for asset in list((ROOT / "static").glob("*.js")) + list((ROOT / "static").glob("*.css")):
        assert not re.search(r"https?://", asset.read_text(encoding="utf-8")), asset.name


@pytest.mark.parametrize("path", [
    "/static/style.css", "/static/common.js", "/static/dashboard.js", "/static/setup.js", "/static/favicon.svg",
    "/static/vendor/uplot/uPlot.iife.min.js", "/static/vendor/uplot/uPlot.min.css",
])
def test_static_assets_are_served(path: str) -> None:
    with make_app().test_client().get(path) as resp:
        assert resp.status_code == 200
        assert resp.data


def test_vendored_chart_library_keeps_its_licence() -> None:
    licence = (ROOT / "static" / "vendor" / "uplot" / "LICENSE").read_text(encoding="utf-8")
    assert "MIT" in licence and "Leon Sorokin" in licence
    readme = (ROOT / "static" / "vendor" / "README.md").read_text(encoding="utf-8")
    assert "uPlot" in readme and "1.6.32" in readme


def test_status_items_carry_key_name_gateway_register_set_and_limit(live: Live) -> None:
    gateway = f"127.0.0.1:{live.sim.modbus_port}"
    items = live.client.get("/api/status").get_json()["batteries"]
    assert [(b["id"], b["key"], b["name"], b["gateway"], b["register_set"], b["max_power_w"]) for b in items] == [
        (1, f"{gateway}/1", "Akku 1", gateway, "v2", 2500), (2, f"{gateway}/2", "Akku 2", gateway, "v2", 2500)]


@pytest.mark.slow
def test_setup_requests_name_a_gateway(live: Live) -> None:
    client = live.client
    gateway = f"127.0.0.1:{live.sim.modbus_port}"
    assert client.post("/api/setup/enter", json={}).status_code == 200
    resp = client.post("/api/setup/scan", json={"first_id": 1, "last_id": 2, "gateway": gateway})
    assert resp.status_code == 200 and resp.get_json()["gateway"] == gateway
    assert [f["id"] for f in resp.get_json()["found"]] == [1, 2]
    unknown = client.post("/api/setup/scan", json={"gateway": "192.168.9.9:502"})
    assert unknown.status_code == 400 and "192.168.9.9:502" in unknown.get_json()["error"]
    assert client.post("/api/setup/set-id", json={"new_id": 5, "gateway": 7}).status_code == 400
    assert client.post("/api/setup/add-to-config", json={"id": 5, "gateway": " "}).status_code == 400
    assert client.post("/api/setup/exit", json={}).status_code == 200
