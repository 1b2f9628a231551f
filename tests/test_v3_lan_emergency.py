"""The emergency stop on a v3 battery's own LAN port (issue 9): the port takes one TCP client only and frees
the slot about a second after it left, so the watchdog's and the shutdown's own connection is refused while the
control's connection hangs inside a frame. Both first abort the stuck connection (RST), keep the port's gap
and then stop the battery. Against the simulator's v3 LAN gateway on 127.0.0.1."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config_loader import Config
from control.control_loop import SHUTDOWN_BUDGET_S
from control.devices import BatteryError
from control.fleet import Fleet
from control.marstek_registers import REGISTER_SETS
from control.status_store import StatusStore
from control.watchdog import emergency_stop
from main import emergency_bus
from simulator.world import Simulation, UnitSpec
from tests.helpers import free_port, running_main, sim_config, wait_until
from tests.loop_rig import QUICK, discharging, stopped
from tests.test_end_to_end import status, write_config

STUCK_TIMEOUT_S = 30.0  # the control's answer timeout: its frame stays stuck for the whole test
HELD_ANSWER_S = 60.0  # the unit answers the stuck frame this late (never, within the test)
V3 = REGISTER_SETS["v3"]
STOP_WRITES = {(V3["force_mode"].address, 0), (V3["charge_power"].address, 0), (V3["discharge_power"].address, 0)}


@pytest.fixture
def lan() -> Iterator[Simulation]:
    with Simulation(units=[UnitSpec(1, "v3", soc_pct=60.0)], **QUICK) as sim:
        assert sim.gateway.lan and sim.gateway.one_client
        yield sim


def lan_config(sim: Simulation) -> Config:
    return sim_config(sim, [1], battery={"register_set": "v3", "timeout_seconds": STUCK_TIMEOUT_S, "pacing_ms": 20})


class StuckControl:
    """The control's fleet on the LAN port, discharging, then stuck inside a read the unit answers too late."""

    def __init__(self, sim: Simulation, cfg: Config) -> None:
        self.sim = sim
        self.fleet = Fleet.from_config(cfg)
        self.key = cfg.battery.units[0].key
        result = self.fleet.write_all({self.key: (600.0, None)})
        assert result[self.key] and not isinstance(result[self.key], BatteryError), result
        wait_until(lambda: discharging(sim.unit(1)), 10, "discharging")
        self.results: dict[str, object] = {}
        self.thread = threading.Thread(target=lambda: self.results.update(self.fleet.read_all()), daemon=True)

    def hang(self) -> None:
        """Start the read and return once its answer is held back; later requests are answered at once."""
        self.sim.unit(1).slow_s = HELD_ANSWER_S
        self.thread.start()
        wait_until(lambda: self.sim.gateway.answers_held > 0, 10, "the control's frame hangs")
        self.sim.unit(1).slow_s = 0.0  # the emergency connection's frames are answered

    def close(self) -> None:
        self.fleet.abort()
        self.thread.join(timeout=5)
        self.fleet.close()


def emergency_writes(sim: Simulation, since: int) -> set[tuple[int, int]]:
    return set(sim.unit(1).write_log[since:])


@pytest.mark.slow
def test_emergency_stop_aborts_the_stuck_connection_and_stops_the_battery(lan: Simulation) -> None:
    cfg = lan_config(lan)
    control = StuckControl(lan, cfg)
    try:
        control.hang()
        writes_before = len(lan.unit(1).write_log)
        log_before = len(lan.gateway.connections_log)
        store = StatusStore()
        started = time.monotonic()
        emergency_stop(cfg, store, 42.0, lambda: emergency_bus(cfg), stuck=control.fleet)
        took_s = time.monotonic() - started
        assert stopped(lan.unit(1)), lan.unit(1).write_log[writes_before:]
        assert emergency_writes(lan, writes_before).issuperset(STOP_WRITES)  # written by the emergency stop itself
        log = lan.gateway.connections_log[log_before:]
        assert [kind for kind, _t in log[:2]] == ["closed", "open"], log  # the stuck one first, then ours
        assert "refused" not in [kind for kind, _t in log], log  # the port's gap was kept: in at the first try
        assert log[1][1] - log[0][1] >= 1.0
        assert took_s < SHUTDOWN_BUDGET_S
        # The stuck frame failed at once instead of waiting for its 30 s timeout.
        control.thread.join(timeout=5)
        assert not control.thread.is_alive()
        assert isinstance(control.results[control.key], BatteryError)
        # Resumed: the control's fleet connects again once the emergency connection is gone.
        reading = control.fleet.read_all()[control.key]
        assert not isinstance(reading, BatteryError), reading
    finally:
        control.close()


def test_without_the_abort_the_lan_port_refuses_the_emergency_connection(lan: Simulation) -> None:
    """The control for the test above: the stuck connection holds the one slot, so an emergency stop that does
    not abort it reaches nothing and the battery keeps discharging."""
    cfg = lan_config(lan)
    control = StuckControl(lan, cfg)
    try:
        control.hang()
        writes_before = len(lan.unit(1).write_log)
        log_before = len(lan.gateway.connections_log)
        emergency_stop(cfg, StatusStore(), 42.0, lambda: emergency_bus(cfg))
        assert discharging(lan.unit(1))
        assert not emergency_writes(lan, writes_before)
        log = lan.gateway.connections_log[log_before:]
        assert log and all(kind == "refused" for kind, _t in log), log
    finally:
        control.close()


@pytest.mark.slow
def test_sigterm_while_the_control_hangs_in_a_frame_on_a_lan_port_stops_the_battery(tmp_path: Path) -> None:
    """main.py on a v3 LAN port whose unit stops answering mid-frame (answer timeout 30 s): on SIGTERM the
    control thread cannot stop the battery itself; the shutdown aborts its connection and stops the battery
    over a new one within its budget (the wait for the control thread plus the emergency stop's budget)."""
    with Simulation(units=[UnitSpec(1, "v3", soc_pct=60.0)], **QUICK) as sim:
        sim.set_load_w(900.0)
        port = free_port()
        config = write_config(tmp_path / "config.json", sim, [1], port,
                              battery={"register_set": "v3", "timeout_seconds": STUCK_TIMEOUT_S})
        with running_main(config) as proc:
            wait_until(lambda: status(port) is not None, 30, "dashboard up")
            wait_until(lambda: discharging(sim.unit(1)), 40, "discharging")
            sim.unit(1).slow_s = HELD_ANSWER_S
            wait_until(lambda: sim.gateway.answers_held > 0, 20, "the control's frame hangs")
            sim.unit(1).slow_s = 0.0
            writes_before = len(sim.unit(1).write_log)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            budget_s = SHUTDOWN_BUDGET_S + 2 + SHUTDOWN_BUDGET_S  # main.py: join the control, then the emergency
            wait_until(lambda: emergency_writes(sim, writes_before).issuperset(STOP_WRITES), budget_s,
                       "the battery stopped")
            assert time.monotonic() - signalled < budget_s
            assert stopped(sim.unit(1))
            assert proc.wait(timeout=20) == 0
            assert proc.stdout is not None
            output = proc.stdout.read()
        assert "Traceback" not in output, output[-3000:]
        assert "Hängende Verbindung zu 127.0.0.1:" in output, output[-3000:]
        assert "Wächter konnte" not in output, output[-3000:]  # the emergency stop reached the battery
