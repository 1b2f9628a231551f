"""``--check`` names the meter model, its profile and the channels it will sum (in-process, against the
simulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from control import i18n
from control.check import run_check
from main import build_bus, build_meter
from simulator.world import Simulation, UnitSpec
from tests import helpers


@pytest.fixture(autouse=True)
def german() -> Any:
    before = i18n.language()
    i18n.set_language("de")
    yield
    i18n.set_language(before)


def check_output(sim: Simulation, capsys: Any, **sections: dict[str, Any]) -> str:
    cfg = helpers.sim_config(sim, [1], **sections)
    assert run_check(cfg, Path("config.json"), build_meter(cfg), build_bus(cfg)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(("model", "profile", "expected"), [
    ("proem50", "triphase", ["Gerät: Shelly Pro EM-50", "Summe der Kanäle 0 von 2 (Standard dieses Geräts)"]),
    ("pro3em", "triphase", ["Gerät: Shelly Pro 3EM", "total_act_power", "Profil triphase"]),
    ("3em63", "monophase", ["Gerät: Shelly 3EM-63 Gen3", "Summe der Kanäle 0, 1, 2 von 3"]),
    ("gen1_em", "triphase", ["Gerät: Shelly EM (Gen1)", "Summe der Kanäle 0 von 2"]),
])
def test_check_identifies_the_shelly(capsys: Any, model: str, profile: str, expected: list[str]) -> None:
    with Simulation(units=[UnitSpec(1)], shelly_model=model, shelly_profile=profile) as sim:
        out = check_output(sim, capsys)
    for fragment in expected:
        assert fragment in out, out
    assert "energy_meter.invert" in out  # how to tell a reversed clamp


def test_check_names_configured_channels_and_invert(capsys: Any) -> None:
    with Simulation(units=[UnitSpec(1)], shelly_model="proem50") as sim:
        out = check_output(sim, capsys, energy_meter={"type": "shelly", "invert": True},
                           shelly={"channels": [0, 1]})
    assert "Summe der Kanäle 0, 1 von 2 (aus shelly.channels)" in out
    assert "das Vorzeichen jedes Messwerts wird umgekehrt" in out


def test_check_names_the_json_field(capsys: Any) -> None:
    with Simulation(units=[UnitSpec(1)]) as sim:
        out = check_output(sim, capsys, energy_meter={"type": "http_json"}, http_json={
            "url": sim.json_meter_url, "power_path": "StatusSNS.SML.Power_curr"})
        hw = check_output(sim, capsys, energy_meter={"type": "homewizard"},
                          homewizard={"ip": f"127.0.0.1:{sim.homewizard_port}"})
    assert "Gerät: JSON StatusSNS.SML.Power_curr" in out and "Regelt auf den Wert StatusSNS.SML.Power_curr" in out
    assert "Gerät: HomeWizard P1 meter (HWE-P1)" in hw and "active_power_w" in hw
