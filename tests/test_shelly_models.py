"""Every Shelly energy meter model against the simulator's Shelly emulator (real ``/shelly`` and RPC shapes):
detection by model / app or by the components ``Shelly.GetStatus`` lists, ``shelly.channels`` with its
defaults, -105 as an absent channel, and ``shelly.user`` for Gen1 Basic auth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from shelly_client import ShellyClient, ShellyError
from simulator.world import Simulation
from tests.helpers import wait_until

GRID_W = 1000.0
PV_CHANNEL_W = -850.0  # the emulator's second clamp of a two-channel meter (a PV string)


@pytest.fixture
def make_sim() -> Iterator[Any]:
    sims: list[Simulation] = []

    def make(**kwargs: Any) -> Simulation:
        kwargs.setdefault("units", [])  # meters only: no battery (its standby draw would shift the values)
        sim = Simulation(meter_noise_w=0.0, meter_latency_s=0.0, second_channel_w=PV_CHANNEL_W, **kwargs)
        sim.set_load_w(GRID_W)
        sim.start(modbus_port=None, ecotracker_port=None)
        sims.append(sim)
        wait_until(lambda: abs((sim.meter_reading_w() or 0.0) - GRID_W) < 0.5, 5, "the meter shows the load")
        return sim

    yield make
    for sim in sims:
        sim.stop()


def client(sim: Simulation, **kwargs: Any) -> ShellyClient:
    return ShellyClient("127.0.0.1", sim.shelly_port or 0, timeout_s=2.0, **kwargs)


# (emulator model, profile, detected model name, kind, channels summed by default, expected grid W)
MODELS = [
    ("pro3em", "triphase", "Shelly Pro 3EM", "triphase", (), GRID_W),
    ("pro3em", "monophase", "Shelly Pro 3EM", "monophase", (0, 1, 2), GRID_W),
    ("3em63", "triphase", "Shelly 3EM-63 Gen3", "triphase", (), GRID_W),
    ("3em63", "monophase", "Shelly 3EM-63 Gen3", "monophase", (0, 1, 2), GRID_W),
    ("proem50", "triphase", "Shelly Pro EM-50", "monophase", (0,), GRID_W),
    ("emg3", "triphase", "Shelly EM Gen3", "monophase", (0,), GRID_W),
    ("emmini4", "triphase", "Shelly EM Mini Gen4", "monophase", (0,), GRID_W),
    ("gen1_3em", "triphase", "Shelly 3EM (Gen1)", "gen1", (0, 1, 2), GRID_W),
    ("gen1_em", "triphase", "Shelly EM (Gen1)", "gen1", (0,), GRID_W),
]


@pytest.mark.parametrize(("model", "profile", "name", "kind", "channels", "expected_w"), MODELS,
                         ids=[f"{m[0]}-{m[1]}" for m in MODELS])
def test_every_model_is_detected_and_read(make_sim: Any, model: str, profile: str, name: str, kind: str,
                                          channels: tuple[int, ...], expected_w: float) -> None:
    sim = make_sim(shelly_model=model, shelly_profile=profile)
    meter = client(sim)
    assert meter.read().grid_power_w == pytest.approx(expected_w, abs=0.5)
    assert (meter.model, meter.kind, meter.channels) == (name, kind, channels)
    assert meter.describe()["model"] == name
    meter.close()


@pytest.mark.parametrize("model", ["proem50", "emg3", "emmini4"])
def test_em1_meters_have_no_profile_key_and_no_em_component(make_sim: Any, model: str) -> None:
    sim = make_sim(shelly_model=model)
    base = f"http://127.0.0.1:{sim.shelly_port}"
    info = requests.get(f"{base}/shelly", timeout=2).json()
    assert "profile" not in info and info["gen"] >= 2
    status = requests.get(f"{base}/rpc/Shelly.GetStatus", timeout=2).json()
    assert "em:0" not in status and "em1:0" in status
    assert requests.get(f"{base}/rpc/EM.GetStatus?id=0", timeout=2).status_code == 404
    missing = requests.get(f"{base}/rpc/EM1.GetStatus?id=2", timeout=2)
    assert missing.json()["code"] == -105


def test_pro_em_sums_both_channels_when_configured(make_sim: Any) -> None:
    sim = make_sim(shelly_model="proem50")
    meter = client(sim, channels=[0, 1])
    assert meter.read().grid_power_w == pytest.approx(GRID_W + PV_CHANNEL_W, abs=0.5)
    assert meter.channels == (0, 1)


def test_monophase_three_channel_meter_sums_only_the_configured_channels(make_sim: Any) -> None:
    sim = make_sim(shelly_model="3em63", shelly_profile="monophase")
    meter = client(sim, channels=[0])
    assert meter.read().grid_power_w == pytest.approx(GRID_W * 0.40, abs=0.5)


def test_a_configured_channel_the_model_lacks_is_an_error(make_sim: Any) -> None:
    sim = make_sim(shelly_model="proem50")
    with pytest.raises(ShellyError, match=r"shelly.channels names channel 2, but a Shelly Pro EM-50 has channels 0..1"):
        client(sim, channels=[0, 2]).read()


def test_triphase_ignores_channels(make_sim: Any) -> None:
    sim = make_sim(shelly_model="pro3em")
    meter = client(sim, channels=[1])
    assert meter.read().grid_power_w == pytest.approx(GRID_W, abs=0.5)
    assert meter.channels == ()


def test_gen1_3em_with_channels_sums_those_emeters(make_sim: Any) -> None:
    sim = make_sim(shelly_model="gen1_3em")
    assert client(sim, channels=[0, 2]).read().grid_power_w == pytest.approx(GRID_W * 0.75, abs=0.5)


def test_gen1_user_is_configurable(make_sim: Any) -> None:
    sim = make_sim(shelly_model="gen1_em", shelly_password="geheim", shelly_user="zaehler")
    assert client(sim, password="geheim", user="zaehler").read().grid_power_w == pytest.approx(GRID_W, abs=0.5)
    with pytest.raises(ShellyError, match="401"):
        client(sim, password="geheim").read()  # the default user "admin" is not this device's user


def test_gen2_digest_user_stays_admin(make_sim: Any) -> None:
    sim = make_sim(shelly_model="proem50", shelly_password="geheim")
    assert client(sim, password="geheim", user="zaehler").read().grid_power_w == pytest.approx(GRID_W, abs=0.5)


# --------------------------------------------------------------------------- an unknown model and -105




def test_unknown_model_is_identified_by_its_components(make_sim: Any) -> None:
    sim = make_sim(shelly_model="emg3")
    sim.shelly.app, sim.shelly.model_code = "EMFutureG5", "S5EM-002XXEU"  # a model this driver does not know
    meter = client(sim)
    assert meter.read().grid_power_w == pytest.approx(GRID_W, abs=0.5)
    assert meter.kind == "monophase" and meter.channels == (0,)
    assert meter.model == "Shelly S5EM-002XXEU"


def test_absent_default_channel_answering_105_is_skipped(make_sim: Any) -> None:
    sim = make_sim(shelly_model="pro3em", shelly_profile="monophase")
    sim.shelly.missing_channels = {2}  # the third EM1 instance answers -105
    meter = client(sim)
    assert meter.read().grid_power_w == pytest.approx(GRID_W * 0.65, abs=0.5)
    assert meter.channels == (0, 1)


def test_rpc_minus_105_body_is_the_real_shape(make_sim: Any) -> None:
    sim = make_sim(shelly_model="emmini4")
    answer = requests.get(f"http://127.0.0.1:{sim.shelly_port}/rpc/EM1.GetStatus?id=1", timeout=2)
    assert json.loads(answer.text) == {"code": -105, "message": "Argument 'id', value 1 not found!"}
