"""Stops that fail are retried (issue 18): at shutdown and on entering setup mode a battery whose stop failed is
stopped again within the budget over a new connection (the stuck one aborted); the last log line names every
battery, stopped or not; main.py exits 1 when one could not be stopped. Against the simulator's Modbus server."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

import pytest

import main
from control import i18n, setup_commands
from control.commands import ExitSetup
from control.control_loop import ControlLoop
from control.devices import BatteryBus, BatteryError
from control.status_store import CommandQueue, StatusStore
from simulator.world import Simulation, UnitSpec
from tests.helpers import free_port, running_main, wait_until
from tests.loop_rig import discharging, sim_config, stopped
from tests.test_end_to_end import write_config


def hold_the_gateway(loop: ControlLoop) -> threading.Thread:
    """A long job on the gateway's worker (a scan of IDs nobody answers on): the control's own connection is
    busy, so a stop over it cannot get through in time."""
    gateway = loop.bus.gateways[0]
    running = threading.Event()

    def job(bus: BatteryBus) -> object:
        running.set()
        return setup_commands.scan(bus, gateway, [], lambda: None, first_id=3, last_id=20)

    def scan() -> None:
        with contextlib.suppress(BatteryError):  # aborted under it: whatever it says, it is over
            loop.bus.call(gateway, job)

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    assert running.wait(5), "the scan runs on the gateway's worker"
    return thread


@pytest.mark.parametrize("why", ["shutdown", "setup mode"])
def test_a_stop_stuck_behind_a_busy_connection_is_retried_over_a_new_one(caplog: pytest.LogCaptureFixture,
                                                                         why: str) -> None:
    with Simulation(units=[UnitSpec(1, soc_pct=60.0), UnitSpec(2, soc_pct=60.0)]) as sim:
        sim.set_load_w(2000.0)
        cfg = sim_config(sim, [1, 2])
        loop = ControlLoop(cfg, main.build_meter(cfg), main.build_fleet(cfg), StatusStore(), CommandQueue(),
                           emergency_fleet=main.emergency_bus)
        try:
            wait_until(lambda: (loop.cycle(), all(discharging(u) for u in sim.units))[-1], 30, "both discharging")
            holder = hold_the_gateway(loop)
            with caplog.at_level(logging.WARNING, logger="marstek"):
                if why == "shutdown":
                    failures = loop.stop_all(why, budget_s=4.0, retry=True)
                else:
                    failures = loop.enter_setup()["stop_failures"]
            assert failures == [] and loop.not_stopped == []
            assert all(stopped(u) for u in sim.units), [(u.force_mode, u.discharge_power_w) for u in sim.units]
            codes = [getattr(r.msg, "code", "") for r in caplog.records]
            retry = "setup_stop_retry" if why == "setup mode" else "battery_stop_retry"
            assert codes.count(retry) == 2 and "stuck_connection_aborted" in codes, codes
            holder.join(30)
            # The control's own connection works again afterwards.
            loop.handle_command(ExitSetup())
            wait_until(lambda: (loop.cycle(), all(discharging(u) for u in sim.units))[-1], 30, "regulating again")
        finally:
            loop.stop_all("test end")
            loop.bus.close()
            loop.meter.close()


def test_sigterm_with_a_battery_that_does_not_answer_the_stop_exits_1_and_says_so(tmp_path: Path) -> None:
    """One battery goes silent while it discharges: at SIGTERM its stop fails, is retried over a new connection
    and fails again. The other is stopped; the last log line names both; the exit status is 1."""
    units = [UnitSpec(1, soc_pct=60.0), UnitSpec(2, soc_pct=60.0)]
    with Simulation(units=units) as sim:
        sim.set_load_w(3000.0)
        port = free_port()
        config = write_config(tmp_path / "config.json", sim, [1, 2], port)
        with running_main(config) as proc:
            wait_until(lambda: all(discharging(u) for u in sim.units), 40, "both discharging")
            sim.unit(2).silent = True
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 1
        assert stopped(sim.unit(1)) and not stopped(sim.unit(2))
        lines = (tmp_path / "logs" / "marstek.log").read_text(encoding="utf-8").strip().splitlines()
        last = lines[-1]
        gateway = f"127.0.0.1:{sim.modbus_port}"
        head, not_stopped = last.split(i18n.MESSAGES_DE["control_stopped_some"].split("NICHT")[1].split("{")[0])
        assert f"{gateway}/1" in head and f"{gateway}/2" not in head, last
        assert f"{gateway}/2" in not_stopped and f"{gateway}/1" not in not_stopped, last
        assert "ERROR" in last
        retried = i18n.MESSAGES_DE["battery_stop_retry"].split(":")[1]
        assert any(retried in line for line in lines), lines[-10:]
