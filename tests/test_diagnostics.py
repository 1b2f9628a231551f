"""GET /api/diagnostics (diagnostics.py): what the bundle holds, that it holds no secret, and who may read it."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from config_loader import parse_config
from control.status_store import CommandQueue, StatusStore, StoreLogHandler
from integrations.diagnostics import REDACTED, Diagnostics, redact
from integrations.history import History
from tests.helpers import wait_until
from tests.test_web import basic, live_system
from web_server import create_app

WEB_SECRET = "Web-Geheim-4711"
SHELLY_SECRET = "shelly-pw-0815"


def config_with_secrets() -> Any:
    return parse_config({
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": "192.168.1.100", "password": SHELLY_SECRET},
        "battery": {"ip": "192.168.1.200", "akku_ids": [1, 2]},
        "web": {"host": "127.0.0.1", "password": WEB_SECRET, "read_only_without_login": True},
    })


def test_redact_replaces_every_secret_named_value_anywhere() -> None:
    doc, found = redact({
        "web": {"password": "a1"}, "mqtt": {"password": "b2", "username": "user"},
        "http_json": {"api_token": "c3", "nested": [{"client_secret": "d4"}]}, "x": {"password": None},
    })
    assert doc["web"]["password"] == doc["mqtt"]["password"] == doc["http_json"]["api_token"] == REDACTED
    assert doc["http_json"]["nested"][0]["client_secret"] == REDACTED
    assert doc["mqtt"]["username"] == "user" and doc["x"]["password"] is None
    assert found == {"a1", "b2", "c3", "d4"}


def test_the_bundle_holds_no_secret_and_needs_the_password(tmp_path: Path) -> None:
    cfg = config_with_secrets()
    store = StatusStore()
    events = StoreLogHandler(store)
    log = logging.getLogger("marstek")
    log.addHandler(events)
    try:
        # A message that quotes a secret (a URL with credentials, say) must not leak through the events.
        log.warning("Meter answer from http://admin:%s@192.168.1.100/ was odd", SHELLY_SECRET)
    finally:
        log.removeHandler(events)
    history = History(tmp_path / "h.sqlite3", 30, store)
    diag = Diagnostics(cfg, store, history=history)
    app = create_app(store, CommandQueue(), cfg.web, history=history, diagnostics=diag.bundle)
    client = app.test_client()

    resp = client.get("/api/diagnostics")
    assert resp.status_code == 401, "read-only without login does not cover the bundle"
    assert client.get("/api/status").status_code == 200

    resp = client.get("/api/diagnostics", headers=basic(WEB_SECRET))
    assert resp.status_code == 200
    assert re.match(r'attachment; filename="marstek-diagnose-\d{8}-\d{6}\.json"', resp.headers["Content-Disposition"])
    text = resp.get_data(as_text=True)
    for secret in (WEB_SECRET, SHELLY_SECRET):
        assert secret not in text
    bundle = json.loads(text)
    assert bundle["config"]["web"]["password"] == REDACTED
    assert bundle["config"]["shelly"]["password"] == REDACTED and bundle["config"]["energy_meter_type"] == "shelly"
    assert bundle["config"]["battery"]["akku_ids"] == [1, 2], "the rest of the config is there"
    assert any(REDACTED in e["message"] for e in bundle["events"]), "the quoting event is kept, redacted"
    assert set(bundle) >= {"versions", "config", "status", "events", "batteries", "meter", "quirks", "history"}
    assert bundle["versions"]["libraries"]["flask"] and bundle["versions"]["libraries"]["prometheus-client"]
    assert bundle["meter"] == {"type": "shelly", "address": "192.168.1.100"}
    assert bundle["history"]["path"] == str(tmp_path / "h.sqlite3")


def test_without_a_password_the_bundle_is_open() -> None:
    cfg = parse_config({"shelly": {"ip": "10.0.0.2"}, "battery": {"ip": "10.0.0.3"}, "web": {"host": "127.0.0.1"}})
    store = StatusStore()
    client = create_app(store, CommandQueue(), cfg.web, diagnostics=Diagnostics(cfg, store).bundle).test_client()
    assert client.get("/api/diagnostics").status_code == 200


@pytest.mark.slow
def test_bundle_of_the_running_system_names_batteries_meter_and_quirks(tmp_path: Path) -> None:
    with live_system(tmp_path) as live:
        # The battery drops RS485 control by itself: the driver re-asserts it and reports it (on_quirk, wired as
        # in main.py), the bundle counts it.
        live.sim.unit(1).drop_rs485()
        wait_until(lambda: live.loop.quirks.count("rs485_reassert") >= 1, 15, "an RS485 re-assert is counted")
        diag = Diagnostics(live.cfg, live.store, meter=live.loop.meter, quirks=live.loop.quirks)
        bundle = diag.bundle()
        names = {b["id"]: b["read_at_start"].get("device_name") for b in bundle["batteries"]}
        assert set(names) == {1, 2} and all(names.values()), names
        assert bundle["meter"]["type"] == "shelly" and bundle["meter"]["kind"] in ("gen1", "monophase", "triphase")
        reassert = bundle["quirks"]["rs485_reassert"]
        assert reassert["count"] >= 1 and reassert["last"]
        assert bundle["status"]["control_state"] == "active"
