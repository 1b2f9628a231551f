"""The ``tariff`` and ``forecast`` config sections: defaults, accepted forms, every error with its key path."""

from __future__ import annotations

from typing import Any

import pytest

from config_loader import ConfigError, parse_config
from control.status_store import CommandQueue, StatusStore
from integrations.diagnostics import REDACTED, Diagnostics
from planning.tariff_config import ForecastConfig, PriceWindow, PvPlane, TariffConfig
from web_server import create_app

MINIMAL: dict[str, Any] = {"shelly": {"ip": "192.168.1.100"}, "battery": {"ip": "192.168.1.200"}}
PLANE = {"lat": 52.5, "lon": 13.4, "declination": 30, "azimuth": 0, "kwp": 2.0}


def config(**sections: Any) -> Any:
    return parse_config({**MINIMAL, **sections})


def error_of(**sections: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        config(**sections)
    return str(caught.value)


def test_without_the_sections_nothing_is_configured() -> None:
    cfg = config()
    assert cfg.tariff is None and cfg.forecast is None


def test_tariff_defaults() -> None:
    assert config(tariff={"type": "energy_charts"}).tariff == TariffConfig(
        type="energy_charts", url=None, bidding_zone="DE-LU", token=None, fixed_ct_per_kwh=None, windows=(),
        markup_ct_per_kwh=15.0, vat_pct=19.0, feed_in_ct_per_kwh=7.9)


def test_interfaces_example_is_accepted() -> None:
    cfg = config(
        tariff={"type": "fixed", "url": None, "bidding_zone": "DE-LU", "token": None, "fixed_ct_per_kwh": 31.2,
                "windows": [{"from": "22:00", "to": "06:00", "ct_per_kwh": 22.5}], "feed_in_ct_per_kwh": 0},
        forecast={"type": "forecast_solar", "url": None, "planes": [PLANE]})
    assert cfg.tariff.windows == (PriceWindow(22 * 60, 6 * 60, 22.5),)
    assert cfg.tariff.fixed_ct_per_kwh == 31.2 and cfg.tariff.feed_in_ct_per_kwh == 0.0
    assert cfg.forecast == ForecastConfig("forecast_solar", None, (PvPlane(52.5, 13.4, 30.0, 0.0, 2.0),))


@pytest.mark.parametrize("sections", [
    {"tariff": {"type": "tibber", "token": "abc"}},
    {"tariff": {"type": "entsoe", "token": "abc", "bidding_zone": "AT"}},
    {"tariff": {"type": "entsoe", "token": "abc", "bidding_zone": "10YAT-APG------L"}},
    {"tariff": {"type": "awattar", "url": "http://127.0.0.1:8080", "markup_ct_per_kwh": 18.5, "vat_pct": 7}},
    {"tariff": {"type": "fixed", "windows": [{"from": "00:00", "to": "24:00", "ct_per_kwh": 28}]}},
    {"tariff": {"type": "fixed", "windows": [{"from": "06:00", "to": "22:00", "ct_per_kwh": 35},
                                             {"from": "22:00", "to": "06:00", "ct_per_kwh": 20}]}},
    {"tariff": {"type": "ENERGY_CHARTS", "comment": "case does not matter"}},
    {"forecast": {"type": "none"}},
    {"forecast": {"type": "open_meteo", "planes": [PLANE, {**PLANE, "azimuth": -90, "kwp": 0.8}]}},
])
def test_accepted(sections: dict[str, Any]) -> None:
    config(**sections)


@pytest.mark.parametrize(("sections", "fragments"), [
    ({"tariff": {}}, ["tariff.type: missing (required)"]),
    ({"tariff": {"type": "tibbr"}}, ["tariff.type:", 'did you mean "tibber"']),
    ({"tariff": {"type": "tibber"}}, ["tariff.token: missing", "developer.tibber.com"]),
    ({"tariff": {"type": "entsoe", "token": " "}}, ["tariff.token: missing", "ENTSO-E"]),
    ({"tariff": {"type": "entsoe", "token": "x", "bidding_zone": "Bayern"}}, ["tariff.bidding_zone:", "EIC"]),
    ({"tariff": {"type": "energy_charts", "bidding_zone": "de lu"}}, ["tariff.bidding_zone:"]),
    ({"tariff": {"type": "energy_charts", "url": "api.energy-charts.info"}}, ["tariff.url: must start with http"]),
    ({"tariff": {"type": "awattar", "vat_pct": 119}}, ["tariff.vat_pct: must be a number 0..100, got 119"]),
    ({"tariff": {"type": "awattar", "vat_pct": -1}}, ["tariff.vat_pct:"]),
    ({"tariff": {"type": "awattar", "markup_ct_per_kwh": "15"}}, ["tariff.markup_ct_per_kwh:"]),
    ({"tariff": {"type": "awattar", "feed_in_ct_per_kwh": -3}}, ["tariff.feed_in_ct_per_kwh:"]),
    ({"tariff": {"type": "awattar", "fixed_ct_per_kwh": 30}},
     ['tariff.fixed_ct_per_kwh: is only used by type "fixed"']),
    ({"tariff": {"type": "tibber", "token": "t", "markup_ct_per_kwh": 15}}, ["tariff.markup_ct_per_kwh: is not used"]),
    ({"tariff": {"type": "fixed"}}, ["tariff.fixed_ct_per_kwh: missing"]),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 500}}, ["tariff.fixed_ct_per_kwh: must be a number -100..200"]),
    ({"tariff": {"type": "fixed", "windows": [{"from": "22:00", "to": "06:00", "ct_per_kwh": 20}]}},
     ["tariff.fixed_ct_per_kwh: missing", "06:00"]),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 30, "windows": [{"from": "22", "to": "6:00", "ct_per_kwh": 2}]}},
     ['tariff.windows[0].from: must be a time "HH:MM"']),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 30, "windows": [{"from": "25:00", "to": "06:00",
                                                                        "ct_per_kwh": 2}]}},
     ["tariff.windows[0].from:"]),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 30, "windows": [{"from": "22:10", "to": "06:00",
                                                                        "ct_per_kwh": 2}]}},
     ["tariff.windows[0].from: must be on the quarter hour"]),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 30, "windows": [{"from": "22:00", "to": "22:00",
                                                                        "ct_per_kwh": 2}]}},
     ["tariff.windows[0]: ", "empty window"]),
    ({"tariff": {"type": "fixed", "windows": [{"from": "00:00", "to": "24:00", "ct_per_kwh": 2},
                                              {"from": "24:00", "to": "06:00", "ct_per_kwh": 2}]}},
     ['tariff.windows[1].from: must be a time "HH:MM"']),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 30, "windows": [{"from": "22:00", "to": "06:00"}]}},
     ["tariff.windows[0].ct_per_kwh: missing"]),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 30, "windows": [{"from": "22:00", "to": "06:00",
                                                                        "ct_per_kwh": 2, "price": 3}]}},
     ["tariff.windows[0].price: unknown key"]),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 30, "windows": [
        {"from": "22:00", "to": "06:00", "ct_per_kwh": 2}, {"from": "05:00", "to": "07:00", "ct_per_kwh": 3}]}},
     ["tariff.windows[1]: overlaps windows[0] (22:00–06:00)"]),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 30, "windows": {"from": "22:00"}}},
     ["tariff.windows: must be a list"]),
    ({"tariff": {"type": "awattar", "tokn": "x"}}, ["tariff.tokn: unknown key", 'did you mean "token"']),
    ({"tariff": "awattar"}, ["tariff: must be an object"]),
    ({"forecast": {"type": "solar"}}, ["forecast.type:"]),
    ({"forecast": {"type": "forecast_solar"}}, ["forecast.planes: missing"]),
    ({"forecast": {"type": "open_meteo", "planes": []}}, ["forecast.planes: must be a list of 1..6 planes"]),
    ({"forecast": {"type": "open_meteo", "planes": [PLANE] * 7}}, ["forecast.planes: at most 6 planes"]),
    ({"forecast": {"type": "open_meteo", "planes": [{**PLANE, "kwp": 0}]}},
     ["forecast.planes[0].kwp: must be a number above 0 and at most 1000, got 0"]),
    ({"forecast": {"type": "open_meteo", "planes": [PLANE, {**PLANE, "kwp": -2}]}}, ["forecast.planes[1].kwp:"]),
    ({"forecast": {"type": "open_meteo", "planes": [{**PLANE, "azimuth": 270}]}},
     ["forecast.planes[0].azimuth: must be a number -180..180"]),
    ({"forecast": {"type": "open_meteo", "planes": [{**PLANE, "declination": 95}]}},
     ["forecast.planes[0].declination:"]),
    ({"forecast": {"type": "open_meteo", "planes": [{**PLANE, "lat": "52.5"}]}}, ["forecast.planes[0].lat:"]),
    ({"forecast": {"type": "open_meteo", "planes": [{k: v for k, v in PLANE.items() if k != "lon"}]}},
     ["forecast.planes[0].lon: missing"]),
    ({"forecast": {"type": "open_meteo", "planes": [{**PLANE, "tilt": 30}]}}, ["forecast.planes[0].tilt: unknown key"]),
    ({"forecast": {"type": "open_meteo", "planes": ["south"]}}, ["forecast.planes[0]: must be an object"]),
])
def test_rejected_with_the_key_path(sections: dict[str, Any], fragments: list[str]) -> None:
    message = error_of(**sections)
    for fragment in fragments:
        assert fragment in message, message


def test_every_problem_at_once() -> None:
    message = error_of(tariff={"type": "tibber", "vat_pct": 300},
                       forecast={"type": "open_meteo", "planes": [{**PLANE, "kwp": 0}]})
    assert "tariff.token" in message and "tariff.vat_pct" in message and "forecast.planes[0].kwp" in message


def test_the_diagnostics_bundle_shows_the_sections_without_the_token() -> None:
    cfg = parse_config({"shelly": {"ip": "10.0.0.2"}, "battery": {"ip": "10.0.0.3"}, "web": {"host": "127.0.0.1"},
                        "tariff": {"type": "entsoe", "token": "entsoe-secret-4711"},
                        "forecast": {"type": "open_meteo", "planes": [PLANE]}})
    store = StatusStore()
    client = create_app(store, CommandQueue(), cfg.web, diagnostics=Diagnostics(cfg, store).bundle).test_client()
    resp = client.get("/api/diagnostics")
    assert resp.status_code == 200
    assert "entsoe-secret-4711" not in resp.get_data(as_text=True)
    bundle = resp.get_json()
    assert bundle["config"]["tariff"]["token"] == REDACTED
    assert bundle["config"]["forecast"]["planes"][0]["kwp"] == 2.0
    windows = parse_config({**MINIMAL, "web": {"host": "127.0.0.1"}, "tariff": {
        "type": "fixed", "fixed_ct_per_kwh": 30, "windows": [{"from": "22:00", "to": "06:00", "ct_per_kwh": 20}]}})
    app = create_app(store, CommandQueue(), windows.web, diagnostics=Diagnostics(windows, store).bundle)
    client = app.test_client()
    assert client.get("/api/diagnostics").get_json()["config"]["tariff"]["windows"] == [
        {"start_min": 1320, "end_min": 360, "ct_per_kwh": 20.0}]
