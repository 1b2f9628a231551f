"""The plan switch: ``plan.enabled`` as the first value of a runtime switch in the status store, kept in
``data/plan.json``, set with ``POST /api/plan/enabled``; off, the plan is computed and shown but the control
does not apply it (on the simulator). Also ``plan_now`` (what Home Assistant and Prometheus show)."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import main
from config_loader import PlanConfig, WebConfig, parse_config
from control import i18n
from control.modes import ModeState
from control.status_store import CommandQueue, StatusStore
from planning.plan_mode import effective_mode, plan_json, plan_now
from planning.plan_switch import PlanSwitchFile, SwitchState, start_plan_switch
from tests.test_plan_mode import CHARGING, T0, Q, plan_at, slot
from web_server import create_app
from zero_feed_control import OperatingMode

UTC = timezone.utc


@pytest.fixture(autouse=True)
def english_messages() -> Any:
    before = i18n.language()
    i18n.set_language("en")
    yield
    i18n.set_language(before)


# ---------------------------------------------------------------------------- pure parts
def test_a_switched_off_plan_is_ignored_by_effective_mode_without_a_problem():
    assert effective_mode(ModeState(), CHARGING, T0).mode.source == "plan"
    off = effective_mode(ModeState(), CHARGING, T0, enabled=False)
    assert off.mode == ModeState() and off.slot is None and off.problem is None
    stale = plan_at(T0 - timedelta(hours=2), slot(T0))
    assert effective_mode(ModeState(), stale, T0, enabled=False).problem is None  # nothing to warn about


def test_plan_json_shows_a_switched_off_plan_with_its_slots():
    doc = plan_json(CHARGING, False, T0)
    assert doc["enabled"] is False and doc["ok"] and [s["mode"] for s in doc["slots"]] == ["charge", "hold", "auto"]
    assert plan_json(CHARGING, True, T0)["enabled"] is True
    assert plan_json(CHARGING, None, T0) == {"enabled": False, "created": None, "ok": False, "problem": None,
                                             "slots": [], "expected_cost_eur": None,
                                             "expected_cost_without_plan_eur": None}


def test_plan_now_gives_mode_reason_and_the_next_charge_window():
    later = plan_at(T0, slot(T0, "hold"), slot(T0 + Q, "charge", 1000), slot(T0 + 2 * Q, "charge", 800),
                    slot(T0 + 3 * Q), slot(T0 + 4 * Q, "charge", 500))
    now = plan_now(later, T0 + timedelta(minutes=1))
    assert (now.mode, now.power_w, now.next_charge_start) == ("hold", None, T0 + Q)
    later = replace(later, created=T0 + 2 * Q)  # planned again every 15 minutes
    during = plan_now(later, T0 + 2 * Q + timedelta(minutes=1))  # in the second slot of the window
    assert (during.mode, during.power_w, during.next_charge_start) == ("charge", 800, T0 + Q)
    after = plan_now(later, T0 + 3 * Q)
    assert (after.mode, after.next_charge_start) == ("auto", T0 + 4 * Q)
    assert plan_now(plan_at(T0, slot(T0), slot(T0 + Q, "hold")), T0).next_charge_start is None
    # a plan that cannot drive: auto, the problem as the reason, no charge window
    stale = plan_now(plan_at(T0 - timedelta(hours=1), slot(T0, "charge", 900)), T0)
    assert (stale.mode, stale.next_charge_start) == ("auto", None) and stale.reason.code == "plan_stale"
    assert plan_now(None, T0).reason.code == "plan_pending"


# ---------------------------------------------------------------------------- the file
def test_the_switch_file_keeps_the_choice_and_yields_to_a_changed_config(tmp_path):
    switch_file = PlanSwitchFile(tmp_path / "data" / "plan.json")
    assert switch_file.load(True) is True and switch_file.load(False) is False  # missing: the config's value
    switch_file.save(SwitchState(False, True))
    assert switch_file.load(True) is False  # switched off at runtime, config unchanged: off after a restart
    assert switch_file.load(False) is False
    switch_file.save(SwitchState(True, False))
    assert switch_file.load(False) is True
    assert switch_file.load(True) is True  # plan.enabled changed in the config since: the config wins


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe", b"[]", b'{"enabled": "yes", "config_enabled": true}',
                                     b'{"enabled": true}', b'{"enabled": 1, "config_enabled": true}'])
def test_a_damaged_switch_file_gives_the_config_value_and_a_warning(tmp_path, caplog, content):
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="marstek"):
        assert PlanSwitchFile(path).load(True) is True
        assert PlanSwitchFile(path).load(False) is False
    assert "Stored plan switch" in caplog.text and "plan.enabled from the config applies" in caplog.text
    assert path.read_bytes() == content  # left for inspection


def test_switching_is_logged_and_written_by_the_writer_thread(tmp_path):
    store = StatusStore()
    assert store.plan_enabled() is None and not store.set_plan_enabled(True, "api")  # no plan: nothing to switch
    path = tmp_path / "data" / "plan.json"
    writer = start_plan_switch(store, True, PlanSwitchFile(path))
    assert writer is not None and store.plan_enabled() is True and not path.exists()
    handler = _Events(store)
    assert store.set_plan_enabled(False, "mqtt")
    assert writer.flush()
    assert store.plan_enabled() is False and PlanSwitchFile(path).load(True) is False
    assert any("Plan switched off (by mqtt)" in m for m in handler.messages())
    # a restart: the stored choice, not plan.enabled
    again = StatusStore()
    start_plan_switch(again, True, PlanSwitchFile(path))
    assert again.plan_enabled() is False
    writer.close()


class _Events:
    """The store's event list (the log handler main installs), for the texts of the switch."""

    def __init__(self, store: StatusStore) -> None:
        from control.status_store import StoreLogHandler

        self.store = store
        handler = StoreLogHandler(store)
        logger = logging.getLogger("marstek")
        logger.addHandler(handler)
        previous = logger.level
        logger.setLevel(logging.INFO)
        self._undo = lambda: (logger.removeHandler(handler), logger.setLevel(previous))

    def messages(self) -> list[str]:
        self._undo()
        return [e.message for e in self.store.events()]


def test_concurrent_switches_leave_the_file_with_the_stores_value(tmp_path):
    store = StatusStore()
    path = tmp_path / "plan.json"
    writer = start_plan_switch(store, True, PlanSwitchFile(path))
    assert writer is not None
    threads = [threading.Thread(target=lambda n=n: [store.set_plan_enabled(bool((n + k) % 2), "api")
                                                    for k in range(50)]) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert writer.flush()
    assert PlanSwitchFile(path).load(True) is store.plan_enabled()
    writer.close()


def test_main_runs_the_plan_thread_with_a_switched_off_plan_section():
    cfg = replace(parse_config({"shelly": {"ip": "127.0.0.1"}, "battery": {"ip": "127.0.0.1"}}),
                  plan=PlanConfig(enabled=False))

    class Fetcher:
        def prices(self) -> None:
            return None

        def pv(self) -> None:
            return None

    assert main.plan_feeds(cfg, Fetcher(), threading.Event()) is not None  # computed and shown even when off
    assert main.plan_feeds(cfg, None, threading.Event()) is None  # no tariff: no plan
    store = StatusStore()
    close = main.plan_switch(cfg, store, main.plan_feeds(cfg, Fetcher(), threading.Event()), None)
    assert store.plan_enabled() is False
    close()


# ---------------------------------------------------------------------------- the API
def client_for(store: StatusStore, **web: Any) -> Any:
    return create_app(store, CommandQueue(), WebConfig(host="127.0.0.1", **web)).test_client()


def test_post_plan_enabled_switches_and_get_plan_shows_it():
    store = StatusStore()
    now = datetime.now(UTC)
    store.publish_plan(plan_at(now, slot(now - Q / 2, "charge", 900)))
    store.init_plan_switch(True)
    client = client_for(store)
    assert client.get("/api/plan").get_json()["enabled"] is True
    answer = client.post("/api/plan/enabled", json={"enabled": False})
    assert answer.status_code == 200 and answer.get_json() == {"enabled": False}
    doc = client.get("/api/plan").get_json()
    assert doc["enabled"] is False and doc["ok"] and doc["slots"][0]["mode"] == "charge"  # still shown
    assert client.post("/api/plan/enabled", json={"enabled": True}).get_json() == {"enabled": True}
    assert store.plan_enabled() is True


@pytest.mark.parametrize(("body", "words"), [
    ({}, "field enabled is required"), ({"enabled": 1}, "enabled must be true or false"),
    ({"enabled": "off"}, "enabled must be true or false"), ({"enabled": True, "x": 1}, "unknown field(s): x"),
    ([], "body must be a JSON object"),
])
def test_post_plan_enabled_refuses_a_bad_body_with_400(body, words):
    store = StatusStore()
    store.init_plan_switch(True)
    answer = client_for(store).post("/api/plan/enabled", json=body)
    assert answer.status_code == 400 and words in answer.get_json()["error"]
    assert store.plan_enabled() is True


def test_post_plan_enabled_without_a_plan_is_409_and_follows_the_access_rules():
    answer = client_for(StatusStore(), language="en").post("/api/plan/enabled", json={"enabled": True})
    assert answer.status_code == 409 and "tariff and plan sections" in answer.get_json()["error"]
    store = StatusStore()
    store.init_plan_switch(True)
    # without a password only loopback clients may change anything
    remote = client_for(store).post("/api/plan/enabled", json={"enabled": False},
                                    environ_base={"REMOTE_ADDR": "192.168.1.50"})
    assert remote.status_code == 403 and "web.password" in remote.get_json()["error"]
    # with a password: a login (here HTTP Basic) is needed
    guarded = client_for(store, password="pw")
    assert guarded.post("/api/plan/enabled", json={"enabled": False}).status_code == 401
    import base64
    auth = {"Authorization": "Basic " + base64.b64encode(b"x:pw").decode()}
    assert guarded.post("/api/plan/enabled", json={"enabled": False}, headers=auth).status_code == 200
    # a foreign Origin (CSRF) is refused
    foreign = guarded.post("/api/plan/enabled", json={"enabled": True},
                           headers={**auth, "Origin": "http://evil.example"})
    assert foreign.status_code == 403 and store.plan_enabled() is False


# ---------------------------------------------------------------------------- the control on the simulator
def test_switched_off_the_control_runs_auto_and_switched_on_the_plan_again(tmp_path):
    """A plan charging now: switched off, the control runs auto (source "default", discharging into the load)
    while GET /api/plan still shows the plan; switched on, the plan charges again within one cycle."""
    from tests.test_modes import rig_on_simulator

    with rig_on_simulator(tmp_path) as rig:
        store = rig.store
        rig.loop.plan = store.plan  # what main wires with a plan section
        store.init_plan_switch(True)
        client = client_for(store)
        now = datetime.fromtimestamp(rig.wall[0], UTC)
        start = now - timedelta(minutes=5)
        store.publish_plan(plan_at(now, slot(start, "charge", 1200, ct=6.0), slot(start + Q, "hold")))

        def charging() -> bool:
            return sum(rig.sim.unit(i).commanded_w for i in (1, 2)) == -1200

        rig.cycle_until(charging, "the plan's charge of 1200 W")
        assert client.post("/api/plan/enabled", json={"enabled": False}).status_code == 200
        rig.loop.cycle()
        assert store.latest().operating_mode["source"] == "default" and rig.loop.active.mode.mode is OperatingMode.AUTO
        rig.cycle_until(rig.discharging, "auto discharges into the 900 W load")
        assert store.status_json()["errors"] == []
        assert client.get("/api/plan").get_json()["slots"][0]["mode"] == "charge"  # computed and shown

        assert client.post("/api/plan/enabled", json={"enabled": True}).status_code == 200
        rig.loop.cycle()
        assert store.latest().operating_mode["source"] == "plan"
        rig.cycle_until(charging, "the plan's charge again")


def test_main_keeps_the_switch_in_data_plan_json_across_a_restart(tmp_path):
    """main.py as its own process with a fixed tariff (no network) and a plan: POST /api/plan/enabled false is
    written to data/plan.json beside the config, GET /api/plan says so with the plan still shown, and after a
    restart the switch is still off although plan.enabled is true."""
    import json

    import requests

    from simulator.world import Simulation, UnitSpec
    from tests.helpers import free_port, running_main, sim_config_data, wait_until

    with Simulation(units=[UnitSpec(1, soc_pct=50.0)]) as sim:
        port = free_port()
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(sim_config_data(
            sim, [1], web={"port": port}, logging={"file": str(tmp_path / "logs" / "marstek.log")},
            history={"path": str(tmp_path / "history.sqlite3")},
            tariff={"type": "fixed", "fixed_ct_per_kwh": 30.0, "feed_in_ct_per_kwh": 0.0},
            plan={"enabled": True})), encoding="utf-8")
        base = f"http://127.0.0.1:{port}"

        def plan() -> dict[str, Any] | None:
            try:
                return requests.get(base + "/api/plan", timeout=2).json()
            except requests.RequestException:
                return None

        switch_file = tmp_path / "data" / "plan.json"
        with running_main(config_path):
            wait_until(lambda: (plan() or {}).get("created") is not None, 90, "the first plan")
            assert plan()["enabled"] is True and not switch_file.exists()  # type: ignore[index]
            answer = requests.post(base + "/api/plan/enabled", json={"enabled": False}, timeout=10)
            assert answer.status_code == 200 and answer.json() == {"enabled": False}
            doc = plan()
            assert doc is not None and doc["enabled"] is False and doc["slots"]  # computed and shown
            wait_until(switch_file.exists, 10, "data/plan.json written")
            assert json.loads(switch_file.read_text(encoding="utf-8")) == {"enabled": False, "config_enabled": True}
        with running_main(config_path):
            wait_until(lambda: plan() is not None, 30, "the program answers again")
            assert plan()["enabled"] is False  # type: ignore[index]
