"""The control loop on test time against the simulator's real servers: shared by the fault tests.

``Rig`` starts simulations and real control loops (real meter driver, real Modbus client) on a
``FakeClock`` shared by the loop and the Modbus client, so back-offs and the frozen-value limit run
on test time; its loops stop their batteries before the simulations end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import main
from battery_client import MarstekGateway
from config_loader import Config
from control.control_loop import ControlLoop
from control.status_store import CommandQueue, StatusStore
from main import build_bus, build_meter
from simulator.world import PlantParams, Simulation, SimUnit
from tests import helpers
from tests.helpers import wait_until
from zero_feed_control import ControlParams

LAW = ControlParams()
ROOT = Path(__file__).resolve().parent.parent


MAX_FAILURES = 3  # shelly.max_failures_before_stop in these tests


TARGET_W = 20.0  # control.target_grid_power_discharge (default)


QUICK = {"plant": PlantParams(dead_time_s=0.0, tau_s=0.05), "meter_cadence_s": 0.1, "meter_latency_s": 0.05,
         "meter_noise_w": 5.0}


def fake_clock() -> helpers.FakeClock:  # kept below time.monotonic() (see ControlLoop.cycle)
    return helpers.FakeClock(10.0)


def fault_config(sim: Simulation, ids: list[int], **battery: Any) -> Config:
    """Short timeouts; pacing at its minimum (20 ms) because pacing is not what these tests are about."""
    return helpers.sim_config(
        sim, ids,
        shelly={"timeout_seconds": 0.5, "max_failures_before_stop": MAX_FAILURES, "max_frozen_seconds": 5},
        battery={"pacing_ms": 20, **battery},
        control={"soc_update_interval_seconds": 5},
    )


class Rig:
    """Simulations and control loops of one test; the loops stop their batteries before the simulations end."""

    def __init__(self) -> None:
        self.sims: list[Simulation] = []
        self.loops: list[ControlLoop] = []

    def simulation(self, **kwargs: Any) -> Simulation:
        sim = Simulation(**kwargs).start()
        self.sims.append(sim)
        return sim

    def loop(self, cfg: Config, clock: helpers.FakeClock) -> ControlLoop:
        """The real loop, meter and Modbus client; the client runs its back-offs on the test's clock."""
        b = cfg.battery
        bus = MarstekGateway(b.ip, b.port, register_set=b.register_set, timeout_s=b.timeout_seconds,
                             pacing_s=b.effective_pacing_ms / 1000.0, max_power_w=b.max_power_per_battery,
                             soc_interval_s=cfg.control.soc_update_interval_seconds, clock=clock)
        loop = ControlLoop(cfg, main.build_meter(cfg, clock), bus, StatusStore(), CommandQueue(), clock=clock)
        self.loops.append(loop)
        return loop

    def close(self) -> None:
        for loop in self.loops:
            loop.stop_all("test end")
            loop.bus.close()
            loop.meter.close()
        for sim in self.sims:
            sim.stop()


def run_until(loop: ControlLoop, clock: helpers.FakeClock, predicate: Callable[[], object], timeout_s: float,
              what: str, step_s: float = 0.5) -> object:
    """Cycle the loop (advancing the clock by ``step_s`` each time) until ``predicate`` holds."""
    def once() -> object:
        loop.cycle()
        clock.advance(step_s)
        return predicate()

    return wait_until(once, timeout_s, what, interval_s=0.0)


def discharging(u: SimUnit) -> bool:
    return u.force_mode == 2 and u.discharge_power_w > 0


def stopped(u: SimUnit) -> bool:
    return (u.force_mode, u.charge_power_w, u.discharge_power_w) == (0, 0, 0)


def battery_doc(loop: ControlLoop, battery_id: int) -> dict[str, Any]:
    return next(b for b in loop.store.status_json()["batteries"] if b["id"] == battery_id)


def sim_config(sim: Simulation, ids: list[int], **control: object) -> Config:
    return helpers.sim_config(sim, ids, control=dict(control))


def make_loop(sim: Simulation, ids: list[int], clock=None, meter=None) -> ControlLoop:
    cfg = sim_config(sim, ids)
    kwargs = {"clock": clock} if clock else {}
    return ControlLoop(cfg, meter or build_meter(cfg, clock or time.monotonic), build_bus(cfg), StatusStore(),
                       CommandQueue(), **kwargs)
