"""HomeWizard P1 and the generic JSON meter (``http_json``) against the simulator's emulators, and their
config sections."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from config_loader import ConfigError, HomeWizardConfig, HttpJsonConfig, ShellyConfig, parse_config
from control.devices import describe_meter
from main import build_meter
from meters.http_meters import HomeWizardClient, HomeWizardError, HttpJsonClient, HttpJsonError, value_at
from simulator.world import Simulation
from tests.helpers import free_port, wait_until

LOAD_W = 640.0
SML_PATH = "StatusSNS.SML.Power_curr"


@pytest.fixture
def sim() -> Iterator[Simulation]:
    # Meters only: no battery (a resting one's standby draw would shift the values).
    with Simulation(units=[], meter_noise_w=0.0, meter_latency_s=0.0, json_meter_password="lesekopf") as s:
        s.set_load_w(LOAD_W)
        wait_until(lambda: s.meter_reading_w() == LOAD_W, 5, "the meter shows the load")
        yield s


def test_homewizard_identifies_the_p1_and_reads_active_power(sim: Simulation) -> None:
    meter = HomeWizardClient("127.0.0.1", sim.homewizard_port or 0, timeout_s=2.0)
    assert meter.read().grid_power_w == LOAD_W
    assert meter.model == "HomeWizard P1 meter (HWE-P1)"
    assert meter.describe()["model"] == "HomeWizard P1 meter (HWE-P1)"


def test_homewizard_with_the_local_api_off_says_how_to_switch_it_on(sim: Simulation) -> None:
    sim.homewizard.api_enabled = False
    with pytest.raises(HomeWizardError, match=r"HTTP 403.*local API in the HomeWizard app"):
        HomeWizardClient("127.0.0.1", sim.homewizard_port or 0, timeout_s=2.0).read()


def test_http_json_reads_a_tasmota_sml_reader_with_basic_auth(sim: Simulation) -> None:
    meter = HttpJsonClient(sim.json_meter_url, SML_PATH, timeout_s=2.0, username="admin", password="lesekopf")
    assert meter.read().grid_power_w == LOAD_W
    with pytest.raises(HttpJsonError, match=r"HTTP 401.*http_json.username"):
        HttpJsonClient(sim.json_meter_url, SML_PATH, timeout_s=2.0).read()


def test_http_json_missing_path_names_the_key(sim: Simulation) -> None:
    meter = HttpJsonClient(sim.json_meter_url, "StatusSNS.SML.Power_total", timeout_s=2.0, username="admin",
                           password="lesekopf")
    with pytest.raises(HttpJsonError, match=r"field StatusSNS.SML.Power_total missing .*http_json.power_path"):
        meter.read()


@pytest.mark.parametrize(("data", "path", "expected"), [
    ({"data": [{"tuples": [[1700000000000, -412.5]]}]}, "data.0.tuples.0.1", -412.5),  # vzlogger
    ({"Body": {"Data": {"PowerReal_P_Sum": 1234.5}}}, "Body.Data.PowerReal_P_Sum", 1234.5),  # Fronius
    ({"power": "-42.5"}, "power", "-42.5"),
])
def test_value_at_walks_keys_and_list_indices(data: Any, path: str, expected: Any) -> None:
    assert value_at(data, path) == expected


def test_value_at_names_the_first_missing_part() -> None:
    with pytest.raises(KeyError) as info:
        value_at({"a": {"b": [1]}}, "a.b.3")
    assert info.value.args[0] == "a.b.3"


@pytest.mark.parametrize("meter", ["homewizard", "http_json"])
def test_refused_connection_is_the_driver_error(meter: str) -> None:
    port = free_port()
    client: Any = (HomeWizardClient("127.0.0.1", port, timeout_s=1.0) if meter == "homewizard"
                   else HttpJsonClient(f"http://127.0.0.1:{port}/cm?cmnd=Status%2010", SML_PATH, timeout_s=1.0))
    with pytest.raises((HomeWizardError, HttpJsonError), match="refused"):
        client.read()


# --------------------------------------------------------------------------- config sections

BATTERY = {"ip": "192.168.1.200"}


def test_config_builds_each_new_meter() -> None:
    cfg = parse_config({"energy_meter": {"type": "homewizard"}, "homewizard": {"ip": "192.168.1.60"},
                        "battery": BATTERY})
    assert isinstance(cfg.meter, HomeWizardConfig) and isinstance(build_meter(cfg), HomeWizardClient)
    cfg = parse_config({"energy_meter": {"type": "http_json"}, "battery": BATTERY, "http_json": {
        "url": "http://tasmota.local/cm?cmnd=Status%2010", "power_path": SML_PATH, "username": "admin",
        "password": "x"}})
    assert isinstance(cfg.meter, HttpJsonConfig)
    assert (cfg.meter.host, cfg.meter.port, cfg.meter.power_path) == ("tasmota.local", 80, SML_PATH)
    assert (cfg.meter.address, cfg.meter.username, cfg.meter.password) == (
        "http://tasmota.local/cm?cmnd=Status%2010", "admin", "x")
    meter = build_meter(cfg)
    assert isinstance(meter, HttpJsonClient) and meter.url == "http://tasmota.local/cm?cmnd=Status%2010"


@pytest.mark.parametrize(("section", "fragment"), [
    ({"url": "192.168.1.5/cm", "power_path": "power"}, "http_json.url: must be a full URL"),
    ({"url": "http://u:p@192.168.1.5/", "power_path": "power"}, "http_json.url: put the user name"),
    ({"url": "http://192.168.1.5:99999/", "power_path": "power"}, "http_json.url: not a valid URL"),
    ({"url": "http://192.168.1.5/"}, "http_json.power_path: missing (required)"),
    ({"url": "http://192.168.1.5/", "power_path": "a..b"}, "http_json.power_path: must be keys separated"),
    ({"url": "http://192.168.1.5/", "power_path": "p", "ip": "1.2.3.4"}, "http_json.ip: unknown key"),
])
def test_http_json_config_errors_name_the_key(section: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"energy_meter": {"type": "http_json"}, "http_json": section, "battery": BATTERY})
    assert fragment in str(info.value)


@pytest.mark.parametrize(("data", "fragment"), [
    ({"energy_meter": {"type": "homewizard"}, "homewizard": {"ip": "1.2.3.4", "password": "x"}},
     "homewizard.password: the HomeWizard local API v1 has no password"),
    ({"energy_meter": {"type": "homewizard"}}, "homewizard: section missing (required)"),
    ({"energy_meter": {"invert": "yes"}, "shelly": {"ip": "1.2.3.4"}}, "energy_meter.invert: must be true or false"),
    ({"shelly": {"ip": "1.2.3.4", "channels": [3]}}, "shelly.channels: must be a non-empty list"),
    ({"shelly": {"ip": "1.2.3.4", "channels": [0, 0]}}, "shelly.channels: names a channel more than once"),
    ({"shelly": {"ip": "1.2.3.4", "channels": []}}, "shelly.channels: must be a non-empty list"),
    ({"shelly": {"ip": "1.2.3.4", "user": ""}}, "shelly.user: must be a non-empty text"),
])
def test_meter_config_errors_name_the_key(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**data, "battery": BATTERY})
    assert fragment in str(info.value), str(info.value)


def test_shelly_channels_user_and_invert_reach_the_driver() -> None:
    cfg = parse_config({"energy_meter": {"type": "shelly", "invert": True}, "battery": BATTERY,
                        "shelly": {"ip": "1.2.3.4", "channels": [0, 2], "user": "zaehler"}})
    assert isinstance(cfg.meter, ShellyConfig)
    assert cfg.energy_meter_invert and cfg.meter.channels == (0, 2) and cfg.meter.user == "zaehler"
    meter = build_meter(cfg)
    assert getattr(meter, "inverted", False) is True
    info = describe_meter(meter)  # the wrapper forwards the driver's identification
    assert (info["type"], info["inverted"], info["model"]) == ("shelly", True, None)  # None: not read yet
    assert json.dumps(info)


def test_ecotracker_age_power_dates_the_sample(sim: Simulation) -> None:
    from ecotracker_client import EcoTrackerClient

    reading = EcoTrackerClient("127.0.0.1", sim.ecotracker_port or 0, timeout_s=2.0).read()
    assert reading.sample_age_s is not None and 0.0 <= reading.sample_age_s < 2.0
    assert reading.sampled_at_s == pytest.approx(reading.received_at_s - reading.sample_age_s)
    # A driver without a sample age dates the sample at its arrival.
    hw = HomeWizardClient("127.0.0.1", sim.homewizard_port or 0, timeout_s=2.0).read()
    assert hw.sample_age_s is None and hw.sampled_at_s == hw.received_at_s
