"""main.py as a subprocess against the simulator: regulation, limits, failures, shutdown, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from control import i18n
from simulator.world import Simulation, UnitSpec
from tests.helpers import free_port, running_main, wait_until

ROOT = Path(__file__).resolve().parent.parent
TARGET_W = 20.0  # control.target_grid_power_discharge

pytestmark = pytest.mark.slow  # main.py as a process on real time


def write_config(path: Path, sim: Simulation, ids: list[int], web_port: int, **sections: dict) -> Path:
    cfg = {
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1, "max_failures_before_stop": 2},
        "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": ids, "timeout_seconds": 1},
        "control": {"poll_interval_seconds": 1, "soc_update_interval_seconds": 5},
        "web": {"host": "127.0.0.1", "port": web_port},
        "logging": {"level": "INFO", "file": str(path.parent / "logs" / "marstek.log")},
    }
    for key, values in sections.items():
        cfg[key].update(values)
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def status(web_port: int) -> dict | None:
    try:
        return requests.get(f"http://127.0.0.1:{web_port}/api/status", timeout=1).json()
    except requests.RequestException:
        return None


def holds_near(sim: Simulation, target_w: float, band_w: float, duration_s: float = 3.0) -> bool:
    """True when the true grid power stays within the band, sampled every 0.1 s for ``duration_s``."""
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        if abs(sim.true_grid_power_w() - target_w) > band_w:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def sim() -> Iterator[Simulation]:
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)]) as s:
        s.set_load_w(300.0)
        s.set_pv_w(0.0)
        yield s


def test_regulates_a_load_step_and_charges_on_surplus(sim, tmp_path):
    port = free_port()
    with running_main(write_config(tmp_path / "config.json", sim, [1, 2], port)):
        wait_until(lambda: (s := status(port)) and s["control_state"] == "active", 20, "control active")
        wait_until(lambda: holds_near(sim, TARGET_W, 50), 60, "initial 300 W load covered")
        sim.set_load_w(1100.0)  # an 800 W step
        wait_until(lambda: holds_near(sim, TARGET_W, 50), 60, "800 W step settled within ±50 W")
        total = sum(sim.unit(i).power_w for i in (1, 2))
        assert 1000 < total < 1150  # the batteries cover the house
        doc = status(port)
        assert doc["grid_power_w"] is not None and doc["meter_ok"] is True
        assert any(b["mode"] == "discharge" for b in doc["batteries"])

        sim.set_pv_w(2000.0)  # surplus: 1100 W load, 2000 W PV
        wait_until(lambda: holds_near(sim, -20.0, 50), 60, "surplus charged, grid near the charge target")
        assert sum(sim.unit(i).power_w for i in (1, 2)) < -800


def test_respects_the_soc_limits(sim, tmp_path):
    sim.unit(1).set_soc(10.0)  # below min_soc_for_discharge (11)
    sim.unit(2).set_soc(99.0)  # above max_soc_for_charge (98)
    port = free_port()
    with running_main(write_config(tmp_path / "config.json", sim, [1, 2], port)):
        sim.set_load_w(1500.0)
        wait_until(lambda: sim.unit(2).power_w > 1000, 40, "the full battery discharges")
        assert sim.unit(1).force_mode != 2 and sim.unit(1).power_w <= 0
        sim.set_pv_w(4000.0)
        wait_until(lambda: sim.unit(1).power_w < -1000, 40, "the empty battery charges")
        wait_until(lambda: sim.unit(2).force_mode != 1 and sim.unit(2).power_w >= 0, 20, "the full one never charges")
        doc = status(port)
        notes = " ".join(b["note"] for b in doc["batteries"])
        assert "SoC" in notes


def test_stops_the_batteries_on_meter_failure_and_resumes(sim, tmp_path):
    port = free_port()
    with running_main(write_config(tmp_path / "config.json", sim, [1], port)):
        sim.set_load_w(1000.0)
        wait_until(lambda: sim.unit(1).power_w > 800, 40, "discharging")
        sim.set_meter_fault("http500")
        wait_until(lambda: sim.unit(1).force_mode == 0 and sim.unit(1).discharge_power_w == 0, 20,
                   "battery stopped after 2 meter failures")
        doc = wait_until(lambda: (s := status(port)) and not s["meter_ok"] and s["errors"]
                         and s["control_state"] == "error" and s, 10, "error shown")
        assert any("500" in e or "HTTP" in e for e in doc["errors"])
        sim.set_meter_fault(None)
        wait_until(lambda: sim.unit(1).power_w > 800, 40, "regulating again after the meter recovered")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_battery_and_exits_0(sim, tmp_path, sig):
    port = free_port()
    with running_main(write_config(tmp_path / "config.json", sim, [1, 2], port)) as proc:
        sim.set_load_w(3500.0)
        wait_until(lambda: sim.unit(1).power_w > 500 and sim.unit(2).power_w > 500, 40, "both discharging")
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        for i in (1, 2):
            u = sim.unit(i)
            assert (u.force_mode, u.charge_power_w, u.discharge_power_w) == (0, 0, 0)
        log_text = (tmp_path / "logs" / "marstek.log").read_text(encoding="utf-8")
        # The log speaks web.language (default de); its last line names every battery as stopped.
        last = log_text.strip().splitlines()[-1]
        assert i18n.MESSAGES_DE["control_stopped"].split("{")[0] in last, last
        assert all(f"127.0.0.1:{sim.modbus_port}/{i}" in last for i in (1, 2)), last


def test_starts_without_gateway_and_shows_it(tmp_path):
    with Simulation(units=[UnitSpec(1)]) as sim:
        cfg = write_config(tmp_path / "config.json", sim, [1], free_port())
    # The simulator is gone: meter and gateway unreachable. The program runs, shows it, and exits cleanly.
    port = json.loads(cfg.read_text())["web"]["port"]
    with running_main(cfg) as proc:
        doc = wait_until(lambda: (s := status(port)) and s["errors"] and s, 20, "errors on the dashboard")
        assert doc["batteries"][0]["online"] is False
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


# ---------------------------------------------------------------------------- configuration errors
BASE = '{"energy_meter": {"type": "shelly"}, "shelly": {"ip": "1.2.3.4"}'


@pytest.mark.parametrize(
    ("content", "key"),
    [
        (BASE + ', "battery": {"ip": "1.2.3.4", "port": 70000}}', "battery.port"),
        (BASE + ', "battery": {"ip": "1.2.3.4"}, "web": {"prot": 1}}', "web.prot"),
        ('{"energy_meter": {"type": "smartmeter"}}', "energy_meter.type"),
        (BASE + ', "battery": {"ip": "1.2.3.4", "akku_ids": [2, 2]}}', "battery.akku_ids"),
        ('{"energy_meter": {"type": "shelly"},\n "shelly": {"ip": "1.2.3.4",}}', "Zeile 2"),
    ],
)
def test_config_errors_exit_2_naming_the_key(tmp_path, content, key):
    path = tmp_path / "config.json"
    path.write_text(content, encoding="utf-8")
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert key in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_config_says_to_copy_the_example(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(tmp_path / "config.json")],
                            capture_output=True, text=True, timeout=30, env={**os.environ})
    assert result.returncode == 2
    assert "config.example.json" in result.stderr
