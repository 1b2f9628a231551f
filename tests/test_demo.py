"""The demo: ``main.py --demo --config FILE`` takes the ``web``, ``mqtt`` and ``history`` sections from FILE (a
real mosquitto, the dashboard on FILE's port, the history beside FILE); the simulator stays the meter and the
batteries, and nothing is written into FILE. The demo's simulator runs in a process of its own that ends with
the program."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from simulator.world import SimulationProcess
from tests.helpers import free_port, stop_process, wait_until
from tests.test_mqtt import Broker, listening

ROOT = Path(__file__).resolve().parent.parent
DEMO_NAMES = {"Venus E v2 #1 (RS485)", "Venus E v2 #2 (RS485)", "Venus E v3 (LAN)"}


def status(port: int) -> dict[str, Any]:
    try:
        return requests.get(f"http://127.0.0.1:{port}/api/status", timeout=2).json()
    except (requests.RequestException, ValueError):
        return {}


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free loopback port (tests/test_mqtt.py)."""
    broker = Broker(tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()


def test_demo_takes_web_mqtt_and_history_from_the_config_file(tmp_path: Path, mosquitto: Broker) -> None:
    broker = mosquitto
    web_port = free_port()
    config = tmp_path / "config.json"
    text = json.dumps({
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": "192.0.2.1"},  # a real installation's devices: the demo does not touch them
        "battery": {"ip": "192.0.2.2", "akku_ids": [1]},
        "web": {"port": web_port, "language": "en"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": "demo-test", "client_id": "demo-test"},
        "history": {"path": "demo-history.sqlite3", "retention_days": 7},
    }, indent=2)
    config.write_text(text, encoding="utf-8")
    output = (tmp_path / "demo-output.txt").open("w", encoding="utf-8")
    with listening(broker.port, "demo-test/#") as listener:
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--demo", "--config", str(config)],
                                cwd=str(tmp_path), stdout=output, stderr=subprocess.STDOUT)
        try:
            def up() -> bool:
                assert proc.poll() is None, (tmp_path / "demo-output.txt").read_text(encoding="utf-8")[-3000:]
                batteries = status(web_port).get("batteries", [])
                return {b["name"] for b in batteries} == DEMO_NAMES and all(b["online"] for b in batteries)

            wait_until(up, 30, "the demo's three batteries online on the port from the config file")

            def state() -> dict[str, Any] | None:
                got = listener.latest("demo-test/state")
                return json.loads(got.payload) if got is not None else None

            wait_until(lambda: (state() or {}).get("batteries"), 20, "the demo's state on the file's broker and prefix")
            assert len((state() or {})["batteries"]) == 3
            assert listener.latest("demo-test/availability") is not None
            wait_until((tmp_path / "demo-history.sqlite3").exists, 20, "the history beside the config file")
            assert status(web_port)["events"], "the events of the demo"
        finally:
            stop_process(proc)
            output.close()
    assert proc.returncode == 0
    assert config.read_text(encoding="utf-8") == text, "the demo writes nothing into the config file"


def test_demo_with_a_bad_section_in_the_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"mqtt": {"host": "127.0.0.1", "port": "1883x"}, "battery": "ignored"}),
                      encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--demo", "--config", str(config), "--port",
                           str(free_port())], cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "mqtt.port" in proc.stderr
    missing = subprocess.run([sys.executable, str(ROOT / "main.py"), "--demo", "--config", str(tmp_path / "none.json")],
                             cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "none.json" in missing.stderr


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_demo_simulator_runs_in_a_process_of_its_own_and_ends_with_its_parent(tmp_path: Path) -> None:
    sim = SimulationProcess()
    try:
        assert sim.pid != os.getpid()
        assert [(len(g.units), g.lan) for g in sim.gateways] == [(2, False), (1, True)]
        shelly = requests.get(f"http://127.0.0.1:{sim.shelly_port}/rpc/EM.GetStatus?id=0", timeout=5).json()
        assert "total_act_power" in shelly
        with socket.create_connection(("127.0.0.1", sim.gateways[1].port), timeout=5):
            pass  # the v3 LAN port takes a client
    finally:
        sim.stop()
    assert not alive(sim.pid)

    # A parent that dies without stopping it (SIGKILL) takes the simulation with it: its stdin closes.
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from simulator.world import SimulationProcess; "
              "print(SimulationProcess().pid, flush=True); sys.stdin.read()")
    parent = subprocess.Popen([sys.executable, "-c", script, str(ROOT)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert alive(child_pid)
        parent.kill()
        parent.wait()
        wait_until(lambda: not alive(child_pid), 10, "the simulator process ends with its parent")
    finally:
        stop_process(parent)
        for pipe in (parent.stdin, parent.stdout):
            if pipe is not None:
                pipe.close()
