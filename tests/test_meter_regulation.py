"""Every supported meter regulates a load step with the real control loop against its emulator; the Pro EM-50's
PV channel is left out by default; a reversed clamp is detected and the batteries stop, and with
``energy_meter.invert`` the same installation regulates."""

from __future__ import annotations

from typing import Any

import pytest

from config_loader import Config
from control.control_loop import ControlLoop
from simulator.world import Simulation, UnitSpec
from tests import helpers
from tests.loop_rig import QUICK, TARGET_W, Rig, fake_clock, run_until, stopped
from zero_feed_control import Status

LOAD_W = 1500.0
TOLERANCE_W = 60.0


def meter_config(sim: Simulation, meter: str, invert: bool = False, **shelly: Any) -> Config:
    sections: dict[str, dict[str, Any]] = {
        "energy_meter": {"type": meter, "invert": invert},
        "shelly": {"timeout_seconds": 0.5, **shelly},
        "battery": {"pacing_ms": 20},
        "control": {"soc_update_interval_seconds": 5},
    }
    if meter == "ecotracker":
        sections["ecotracker"] = {"ip": f"127.0.0.1:{sim.ecotracker_port}", "timeout_seconds": 0.5}
    elif meter == "homewizard":
        sections["homewizard"] = {"ip": f"127.0.0.1:{sim.homewizard_port}", "timeout_seconds": 0.5}
    elif meter == "http_json":
        sections["http_json"] = {"url": sim.json_meter_url, "power_path": "StatusSNS.SML.Power_curr",
                                 "timeout_seconds": 0.5}
    return helpers.sim_config(sim, [1], **sections)


def regulated(sim: Simulation) -> bool:
    return abs(sim.true_grid_power_w() - TARGET_W) < TOLERANCE_W


def regulate_a_load_step(rig: Rig, sim: Simulation, cfg: Config) -> ControlLoop:
    clock = fake_clock()
    loop = rig.loop(cfg, clock)
    sim.set_load_w(400.0)
    run_until(loop, clock, lambda: regulated(sim) and sim.units[0].power_w > 300, 30, "regulating 400 W")
    sim.set_load_w(LOAD_W)
    run_until(loop, clock, lambda: regulated(sim) and sim.units[0].power_w > LOAD_W - 100, 30,
              f"regulating the step to {LOAD_W:g} W")
    assert loop.meter_ok and not loop.sign_check.tripped
    return loop


SHELLY_MODELS = [("pro3em", "triphase"), ("pro3em", "monophase"), ("3em63", "triphase"), ("3em63", "monophase"),
                 ("proem50", "triphase"), ("emg3", "triphase"), ("emmini4", "triphase"), ("gen1_3em", "triphase"),
                 ("gen1_em", "triphase")]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "profile"), SHELLY_MODELS, ids=[f"{m}-{p}" for m, p in SHELLY_MODELS])
def test_every_shelly_model_regulates_a_load_step(rig: Rig, model: str, profile: str) -> None:
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)], shelly_model=model, shelly_profile=profile, **QUICK)
    loop = regulate_a_load_step(rig, sim, meter_config(sim, "shelly"))
    assert loop.store.status_json()["meter_model"] == loop.meter.model  # type: ignore[attr-defined]


@pytest.mark.parametrize("meter", ["ecotracker", "homewizard", "http_json"])
def test_every_other_meter_regulates_a_load_step(rig: Rig, meter: str) -> None:
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)], **QUICK)
    loop = regulate_a_load_step(rig, sim, meter_config(sim, meter))
    assert loop.store.status_json()["meter_type"] == meter


def test_pro_em_with_a_pv_channel_regulates_on_channel_0(rig: Rig) -> None:
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)], shelly_model="proem50", second_channel_w=-850.0,
                         **QUICK)
    loop = regulate_a_load_step(rig, sim, meter_config(sim, "shelly"))
    assert loop.meter.channels == (0,)  # type: ignore[attr-defined]
    # Summing the PV clamp as well would have regulated the true grid to about +870 W.
    assert abs(sim.true_grid_power_w() - TARGET_W) < TOLERANCE_W


def test_reversed_clamp_is_detected_and_the_batteries_stop(rig: Rig) -> None:
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)], meter_reversed=True, **QUICK)
    sim.set_load_w(500.0)
    clock = fake_clock()
    loop = rig.loop(meter_config(sim, "shelly"), clock)
    wrong_way_since: list[float] = []

    def check() -> bool:
        if sim.units[0].power_w < -100 and not wrong_way_since:  # charging from the grid the house imports from
            wrong_way_since.append(sim.now_s)
        return loop.last_decision is not None and loop.last_decision.status is Status.METER_SIGN

    run_until(loop, clock, check, 30, "the sign check trips", step_s=0.5)
    assert loop.sign_check.tripped and stopped(sim.units[0])
    assert wrong_way_since and sim.now_s - wrong_way_since[0] < 8.0, "ran the wrong way for too long"
    doc = loop.store.status_json()
    assert doc["control_state"] == "error"
    assert any("energy_meter.invert" in e for e in doc["errors"]), doc["errors"]
    for _ in range(5):  # stays stopped
        loop.cycle()
        clock.advance(0.5)
    assert stopped(sim.units[0]) and doc["batteries"][0]["setpoint_w"] == 0


def test_reversed_clamp_with_invert_regulates(rig: Rig) -> None:
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)], meter_reversed=True, **QUICK)
    loop = regulate_a_load_step(rig, sim, meter_config(sim, "shelly", invert=True))
    assert not loop.sign_check.tripped and loop.sign_check.wrong == 0
    # The loop sees the true grid power, not its negation.
    run_until(loop, loop.clock, lambda: loop.grid_power_w is not None and abs(  # type: ignore[arg-type]
        loop.grid_power_w - sim.true_grid_power_w()) < TOLERANCE_W and regulated(sim), 10, "reading = true grid")
