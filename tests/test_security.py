"""Secrets stay secret, failed logins slow down: against a real control loop on the simulator."""

from __future__ import annotations

import base64
import logging
import threading

from config_loader import parse_config
from control_loop import ControlLoop
from main import build_bus, build_meter
from simulator import Simulation, UnitSpec
from status_store import CommandQueue, StatusStore, StoreLogHandler
from tests.helpers import wait_until
from web_server import FAILED_LOGIN_DELAY_S, create_app

WEB_PASSWORD = "web-Geheimnis-4711"
SHELLY_PASSWORD = "shelly-Geheimnis-0815"


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
        try:
            with caplog.at_level(logging.DEBUG):
                thread.start()
                client = create_app(store, commands, cfg.web, sleep=lambda _s: None).test_client()
                wait_until(lambda: store.latest().meter_ok, 20, "meter read with digest auth")
                wrong = base64.b64encode(b"admin:" + WEB_PASSWORD[::-1].encode()).decode()
                client.post("/api/setup/enter", json={}, headers={"Authorization": f"Basic {wrong}"})
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


def test_failed_attempts_are_slowed_down_more_and_more():
    delays: list[float] = []
    web = parse_config({"battery": {"ip": "1.2.3.4"}, "shelly": {"ip": "1.2.3.4"},
                        "web": {"host": "127.0.0.1", "password": WEB_PASSWORD}}).web
    client = create_app(StatusStore(), CommandQueue(), web, sleep=delays.append).test_client()
    wrong = base64.b64encode(b"admin:nope").decode()
    for _ in range(6):
        assert client.post("/api/setup/enter", json={}, headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    assert delays == sorted(delays) and delays[0] > 0
    assert delays[-1] == FAILED_LOGIN_DELAY_S[-1]
