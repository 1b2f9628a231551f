"""The README's evcc recipe, read as YAML like evcc reads it, and exactly its requests against the running
program: the batterymode cases 1..4 (POST, headers, body, HTTP Basic auth) and the power and soc getters
(GET /api/status, then the recipe's jq queries run by jq itself), with one battery that does not answer
(its soc_pct and power_w are null).

evcc's side (its source): ``api/batterymode.go`` 1 normal, 2 hold, 3 charge, 4 holdcharge; the http plugin
takes ``uri``, ``method``, ``headers`` (a map), ``body``, ``auth`` (type basic, user, password), ``cache``
(a duration: the request then asks ``Cache-Control: max-age`` and the answer is reused while its ``Date``
is younger) and ``jq`` (one result; an error or ``null`` is an error in evcc, never 0).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

import main
from config_loader import load_config
from control.control_loop import ControlLoop
from control.status_store import CommandQueue, StatusStore, StoreLogHandler
from simulator.world import Simulation, UnitSpec
from tests.helpers import wait_until
from web_server import create_app

ROOT = Path(__file__).resolve().parent.parent
JQ = shutil.which("jq")
RECIPE_HOST = "http://192.168.1.20:8080"
RECIPE_PASSWORD = "dein-web-passwort"

if JQ is None:
    reason = "jq is missing (apt-get install jq); the evcc recipe test runs the recipe's queries with it"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def recipe() -> dict[str, Any]:
    """The ``marstek`` meter of the README's evcc recipe (the yaml block that starts with ``meters:``)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## evcc: Hausakku halten oder laden"):]
    match = re.search(r"```yaml\n(meters:\n.*?)```", section, re.S)
    assert match, "the evcc recipe (a yaml block starting with 'meters:') is in the README's evcc section"
    doc = yaml.safe_load(match.group(1))
    assert doc["site"]["meters"]["battery"] == "marstek"
    (meter,) = [m for m in doc["meters"] if m["name"] == "marstek"]
    return meter


def jq(query: str, document: str) -> tuple[int, str, str]:
    """``jq -c query`` on ``document``: exit status, output, error text."""
    assert JQ is not None
    done = subprocess.run([JQ, "-c", query], input=document, capture_output=True, text=True, timeout=10, check=False)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def test_the_recipe_covers_every_evcc_battery_mode_with_authenticated_posts() -> None:
    meter = recipe()
    assert meter["type"] == "custom"
    switch = meter["batterymode"]
    assert switch["source"] == "switch"
    cases = {int(c["case"]): c["set"] for c in switch["switch"]}
    assert set(cases) == {1, 2, 3, 4}, "normal, hold, charge, holdcharge (evcc api/batterymode.go)"
    bodies = {n: json.loads(s["body"]) for n, s in cases.items()}
    assert bodies == {1: {"mode": "normal"}, 2: {"mode": "hold"}, 3: {"mode": "charge"}, 4: {"mode": "off"}}
    for s in cases.values():
        assert (s["source"], s["method"], s["uri"]) == ("http", "POST", f"{RECIPE_HOST}/api/mode")
        assert s["headers"] == {"content-type": "application/json"}
        assert s["auth"] == {"type": "basic", "user": "evcc", "password": RECIPE_PASSWORD}
    for getter in ("power", "soc"):
        g = meter[getter]
        assert (g["source"], g["uri"], g["cache"]) == ("http", f"{RECIPE_HOST}/api/status", "1s")
        assert g["auth"] == {"type": "basic", "user": "evcc", "password": RECIPE_PASSWORD}


@contextlib.contextmanager
def running_program(tmp_path: Path, store: StatusStore | None = None) -> Iterator[tuple[str, Simulation]]:
    """The control thread on the simulator (units 1 and 2; unit 3 is configured but does not answer) and
    the web server on a loopback port, with the recipe's password as web.password. With ``store`` the control
    applies the plans published there (what main wires with a ``plan`` section)."""
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=61.9)]) as sim:
        sim.set_load_w(900.0)
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps({
            "energy_meter": {"type": "shelly"},
            "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1},
            "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": [1, 2, 3], "timeout_seconds": 1},
            "control": {"poll_interval_seconds": 1},
            "web": {"host": "127.0.0.1", "port": 8080, "password": RECIPE_PASSWORD},
            "logging": {"file": str(tmp_path / "logs" / "marstek.log")},
        }), encoding="utf-8")
        cfg = load_config(config_path)
        planned = store is not None
        store, commands = store or StatusStore(), CommandQueue()
        events = StoreLogHandler(store)
        logging.getLogger().addHandler(events)
        loop = ControlLoop(cfg, main.build_meter(cfg), main.build_bus(cfg), store, commands, config_path=config_path,
                           plan=store.plan if planned else None)
        app = create_app(store, commands, cfg.web, max_charge_power_w=lambda: loop.max_charge_power_w)
        server, web_thread = main.start_web(app, "127.0.0.1", 0)
        stop = threading.Event()
        control = threading.Thread(target=loop.run, args=(stop,), name="test-control", daemon=True)
        control.start()
        try:
            wait_until(lambda: store.latest().control_state == "active" and
                       sum(b.online for b in store.latest().batteries) == 2, 20, "control active, units 1 and 2")
            yield f"http://127.0.0.1:{server.effective_port}", sim
        finally:
            stop.set()
            commands.wakeup.set()
            control.join(15)
            main.stop_web(server, web_thread)
            logging.getLogger().removeHandler(events)
            assert not control.is_alive(), "control thread did not stop"


def send(spec: dict[str, Any], base: str) -> requests.Response:
    """The request evcc's http plugin makes from ``spec`` (a ``set`` or a getter), to ``base`` instead of the
    recipe's example address: the method (GET without a body), the headers, the body, HTTP Basic auth."""
    url = spec["uri"].replace(RECIPE_HOST, base)
    body = spec.get("body")
    method = spec.get("method", "POST" if body else "GET")
    auth = spec.get("auth")
    headers = dict(spec.get("headers", {}))
    if spec.get("cache"):
        headers["Cache-Control"] = "max-age=1, must-revalidate"  # what evcc adds with cache: 1s
    return requests.request(method, url, data=body.encode() if body else None, headers=headers, timeout=10,
                            auth=(auth["user"], auth["password"]) if auth else None)


def test_exactly_the_requests_of_the_recipe_against_the_running_program(tmp_path: Path) -> None:
    meter = recipe()
    cases = {int(c["case"]): c["set"] for c in meter["batterymode"]["switch"]}
    with running_program(tmp_path) as (base, sim):
        # Without the password a POST from evcc is refused: the recipe's auth is what makes it work.
        bare = requests.post(f"{base}/api/mode", data=cases[2]["body"].encode(), timeout=10,
                             headers={"content-type": "application/json"})
        assert bare.status_code == 401, bare.text

        for batterymode, mode in ((2, "hold"), (3, "charge"), (4, "off"), (1, "auto")):
            answer = send(cases[batterymode], base)
            assert answer.status_code == 200, (batterymode, answer.text)
            assert answer.json()["mode"] == mode and answer.json()["source"] == "api"
            if batterymode == 4:  # holdcharge: no charging; the batteries stand at 0 W
                wait_until(lambda: all(sim.unit(i).commanded_w == 0 for i in (1, 2)), 10, "both units at 0 W")

        # The getters: one GET (both share the uri; cache: 1s needs the Date header to reuse the answer).
        answer = send(meter["soc"], base)
        assert answer.status_code == 200 and "Date" in answer.headers
        status = answer.json()
        by_id = {b["id"]: b for b in status["batteries"]}
        assert by_id[3]["soc_pct"] is None and by_id[3]["power_w"] is None, "unit 3 does not answer"
        known_soc = [b["soc_pct"] for b in status["batteries"] if b["soc_pct"] is not None]
        known_power = [b["power_w"] for b in status["batteries"] if b["power_w"] is not None]
        assert len(known_soc) == len(known_power) == 2

        code, out, err = jq(meter["soc"]["jq"], answer.text)
        assert code == 0, err
        assert float(out) == pytest.approx(sum(known_soc) / 2)
        code, out, err = jq(meter["power"]["jq"], answer.text)
        assert code == 0, err
        assert float(out) == pytest.approx(sum(known_power))

        # Nobody answers: an error evcc logs, never 0 % or 0 W.
        for b in status["batteries"]:
            b["soc_pct"] = b["power_w"] = None
        for getter, words in (("soc", "kein Ladestand bekannt"), ("power", "kein Akku antwortet")):
            code, out, err = jq(meter[getter]["jq"], json.dumps(status))
            assert code != 0 and out == "" and words in err


def test_evccs_hold_wins_over_the_plan_and_normal_gives_it_back_at_once(tmp_path: Path) -> None:
    """The plan charges now (1200 W from the grid, source "plan"); evcc's exact hold request (batterymode 2)
    wins: the charge ends, source "api"; evcc's normal (batterymode 1, = auto) hands the control back to the
    plan at once: charging again, source "plan". Its charge request (3) wins the same way."""
    from datetime import datetime, timedelta, timezone

    from control import i18n
    from planning.model import Plan, PlannedSlot

    meter = recipe()
    cases = {int(c["case"]): c["set"] for c in meter["batterymode"]["switch"]}
    store = StatusStore()
    store.init_plan_switch(True)
    now = datetime.now(timezone.utc)
    q = timedelta(minutes=15)
    start = now - timedelta(minutes=5)
    reason = i18n.Msg("plan_mode_charge", power=1200)
    store.publish_plan(Plan(now, True, None, tuple(
        PlannedSlot(start + n * q, start + (n + 1) * q, 8.0, 7.9, "charge", 1200, 50.0, None, 900.0, reason)
        for n in range(3)), 1.0, 1.5))
    with running_program(tmp_path, store) as (base, sim):
        def mode() -> dict[str, Any]:
            return requests.get(f"{base}/api/mode", timeout=10).json()

        def plan_charging() -> bool:
            total_w = sum(sim.unit(i).commanded_w for i in (1, 2))
            return mode()["source"] == "plan" and total_w <= -1000

        wait_until(plan_charging, 30, "the plan charges with 1200 W")

        answer = send(cases[2], base)  # evcc: batterymode hold
        assert answer.status_code == 200 and answer.json() == {"mode": "hold", "power_w": None, "until": None,
                                                               "source": "api"}
        wait_until(lambda: all(sim.unit(i).commanded_w >= 0 for i in (1, 2)), 30, "the hold ends the plan's charge")
        assert mode()["source"] == "api" and mode()["mode"] == "hold"
        assert requests.get(f"{base}/api/plan", timeout=10).json()["slots"][0]["mode"] == "charge"  # still planned

        answer = send(cases[1], base)  # evcc: batterymode normal (= auto)
        assert answer.status_code == 200 and answer.json()["mode"] == "auto"
        # at once: the request is applied at the start of the next control cycle (1 s), the plan with it
        wait_until(lambda: mode()["source"] == "plan", 5, "the plan in force again in the next cycle")
        wait_until(plan_charging, 30, "normal gives the control back to the plan")

        answer = send(cases[3], base)  # evcc: batterymode charge wins too (with all the batteries' power)
        assert answer.status_code == 200 and answer.json()["source"] == "api" and answer.json()["mode"] == "charge"
        send(cases[1], base)
        wait_until(plan_charging, 30, "the plan again after normal")
