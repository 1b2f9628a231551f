"""/settings and /api/settings: the tariff, forecast and plan sections edited through the app, validated by the
config loader as at start, written atomically with a backup, the token never sent back, the app's guard."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from config_loader import WebConfig, load_config
from control.status_store import CommandQueue, StatusStore
from web.access import hash_password
from web_server import create_app

PASSWORD = "geheim-123"
BASE: dict[str, Any] = {
    "energy_meter": {"type": "shelly"},
    "shelly": {"ip": "192.0.2.10"},
    "battery": {"ip": "192.0.2.20", "akku_ids": [1]},
    "web": {"language": "en"},
    "tariff": {"type": "tibber", "token": "SECRET-TIBBER-TOKEN", "feed_in_ct_per_kwh": 8.0},
}


def write_config(path: Path, **sections: Any) -> Path:
    path.write_text(json.dumps({**BASE, **sections}, indent=2), encoding="utf-8")
    return path


def make_app(config_path: Path | None, password: str | None = None) -> Flask:
    web = WebConfig(host="127.0.0.1", port=8080, password=hash_password(password) if password else None,
                    language="en")
    return create_app(StatusStore(), CommandQueue(), web, settings_path=config_path)


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.json")


@pytest.fixture
def client(config_path: Path) -> FlaskClient:
    return make_app(config_path).test_client()


def post(client: FlaskClient, body: Any, **kwargs: Any) -> Any:
    return client.post("/api/settings", data=json.dumps(body), content_type="application/json", **kwargs)


def test_get_hides_the_token(client: FlaskClient) -> None:
    resp = client.get("/api/settings")
    assert resp.status_code == 200
    data = resp.get_json()
    assert data["tariff"] == {"type": "tibber", "token": None, "feed_in_ct_per_kwh": 8.0}
    assert data["token_set"] is True and data["forecast"] is None and data["plan"] is None
    assert b"SECRET-TIBBER-TOKEN" not in resp.data


def test_valid_save_round_trip(client: FlaskClient, config_path: Path) -> None:
    before = config_path.read_bytes()
    tariff = {"type": "fixed", "fixed_ct_per_kwh": 32.5, "feed_in_ct_per_kwh": 8.1,
              "windows": [{"from": "22:00", "to": "06:00", "ct_per_kwh": 24.0}]}
    forecast = {"type": "open_meteo", "planes": [{"lat": 52.5, "lon": 13.4, "declination": 30, "azimuth": 0,
                                                  "kwp": 2.0}]}
    plan = {"enabled": True, "reserve_soc_pct": 20, "grid_charge_max_w": 1500, "peak_import_limit_w": 4000}
    resp = post(client, {"tariff": tariff, "forecast": forecast, "plan": plan})
    assert resp.status_code == 200, resp.get_json()
    answer = resp.get_json()
    assert answer["restart_needed"] is True and "restart" in answer["message"]
    assert answer["plan"] == plan and answer["forecast"] == forecast
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    # The token stays stored (sent without one); "fixed" ignores it.
    assert saved["tariff"] == {**tariff, "token": "SECRET-TIBBER-TOKEN"}
    assert saved["plan"] == plan and saved["forecast"] == forecast
    assert saved["battery"] == BASE["battery"] and list(saved)[:3] == list(BASE)[:3]  # the rest kept, in order
    assert (config_path.with_name("config.json.bak")).read_bytes() == before
    cfg = load_config(config_path)  # what the program reads at its next start
    assert cfg.plan is not None and cfg.plan.enabled and cfg.plan.reserve_soc_pct == 20
    assert cfg.tariff is not None and cfg.tariff.type == "fixed" and cfg.tariff.fixed_ct_per_kwh == 32.5
    assert client.get("/api/settings").get_json()["plan"] == plan


def test_token_write_only(client: FlaskClient, config_path: Path) -> None:
    resp = post(client, {"tariff": {"type": "tibber", "token": None}})
    assert resp.status_code == 200 and b"SECRET" not in resp.data
    assert json.loads(config_path.read_text())["tariff"]["token"] == "SECRET-TIBBER-TOKEN"
    resp = post(client, {"tariff": {"type": "tibber", "token": "NEW-TOKEN"}})
    assert resp.status_code == 200 and b"NEW-TOKEN" not in resp.data and resp.get_json()["token_set"] is True
    assert json.loads(config_path.read_text())["tariff"]["token"] == "NEW-TOKEN"
    resp = post(client, {"tariff": {"type": "tibber", "token": ""}})  # removed: tibber then misses its token
    assert resp.status_code == 400 and "tariff.token" in resp.get_json()["error"]


def test_section_null_removes_it(client: FlaskClient, config_path: Path) -> None:
    assert post(client, {"plan": {"enabled": False}}).status_code == 200
    assert post(client, {"plan": None}).status_code == 200
    assert "plan" not in json.loads(config_path.read_text())


@pytest.mark.parametrize(("body", "key"), [
    ({"tariff": {"type": "spot"}}, "tariff.type"),
    ({"tariff": {"type": "fixed"}}, "tariff.fixed_ct_per_kwh"),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 999}}, "tariff.fixed_ct_per_kwh"),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 30, "windows": [{"from": "25:00", "to": "06:00",
                                                                       "ct_per_kwh": 20}]}},
     "tariff.windows[0].from"),
    ({"tariff": {"type": "fixed", "fixed_ct_per_kwh": 30, "vat_pct": 19}}, "tariff.vat_pct"),
    ({"tariff": {"type": "awattar", "colour": "red"}}, "tariff.colour"),
    ({"tariff": {"type": "entsoe", "bidding_zone": "XX"}}, "tariff.bidding_zone"),
    ({"tariff": {"type": "awattar", "url": "ftp://x"}}, "tariff.url"),
    ({"forecast": {"type": "open_meteo"}}, "forecast.planes"),
    ({"forecast": {"type": "open_meteo", "planes": [{"lat": 99, "lon": 0, "declination": 0, "azimuth": 0,
                                                     "kwp": 1}]}}, "forecast.planes[0].lat"),
    ({"plan": {"enabled": "yes"}}, "plan.enabled"),
    ({"plan": {"reserve_soc_pct": 150}}, "plan.reserve_soc_pct"),
    ({"plan": {"grid_charge_max_w": "much"}}, "plan.grid_charge_max_w"),
    ({"plan": {"peak_import_limit_w": 0}}, "plan.peak_import_limit_w"),
    ({"plan": {"enabled": True}, "tariff": None}, "plan.enabled"),
])
def test_bad_input_is_400_naming_the_key_and_leaves_the_file(client: FlaskClient, config_path: Path,
                                                            body: dict[str, Any], key: str) -> None:
    before = config_path.read_bytes()
    resp = post(client, body)
    assert resp.status_code == 400
    data = resp.get_json()
    assert key in data["error"] and any(p.startswith(key) for p in data["problems"]), data
    assert b"SECRET" not in resp.data
    assert config_path.read_bytes() == before
    assert not config_path.with_name("config.json.bak").exists()
    assert sorted(p.name for p in config_path.parent.iterdir()) == ["config.json"]  # no temp file left


@pytest.mark.parametrize(("raw", "word"), [
    (b"[1]", "JSON object"),
    (b"{", "not valid JSON"),
    (b"{}", "nothing to save"),
    (b'{"web": {"password": null}}', "unknown field"),
    (b'{"tariff": 5}', "tariff: must be an object"),
    (b'{"plan": {"reserve_soc_pct": NaN}}', "NaN"),
    (b"[" * 100 + b"]" * 100, "nested too deeply"),
])
def test_bad_body_is_400(client: FlaskClient, config_path: Path, raw: bytes, word: str) -> None:
    before = config_path.read_bytes()
    resp = client.post("/api/settings", data=raw, content_type="application/json")
    assert resp.status_code == 400 and word in resp.get_json()["error"]
    assert config_path.read_bytes() == before


def test_not_json_is_415(client: FlaskClient) -> None:
    assert client.post("/api/settings", data="plan=1").status_code == 415


def test_atomic_write_keeps_mode_and_leaves_no_temp_file(client: FlaskClient, config_path: Path) -> None:
    os.chmod(config_path, 0o600)
    inode = config_path.stat().st_ino
    assert post(client, {"plan": {"enabled": True}}).status_code == 200
    assert config_path.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert config_path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in config_path.parent.iterdir()) == ["config.json", "config.json.bak"]


def test_demo_without_file(tmp_path: Path) -> None:
    client = make_app(None).test_client()
    assert client.get("/api/settings").status_code == 409
    assert post(client, {"plan": {"enabled": True}}).status_code == 409
    page = client.get("/settings")
    assert page.status_code == 200 and b'id="settings-no-file"' in page.data


def test_page_and_nav_link(client: FlaskClient) -> None:
    page = client.get("/settings")
    assert page.status_code == 200 and b"settings.js" in page.data and b'id="tariff-type"' in page.data
    assert b'href="/settings"' in client.get("/").data


def test_guard_without_password_refuses_the_lan(config_path: Path) -> None:
    client = make_app(config_path).test_client()
    before = config_path.read_bytes()
    lan = {"REMOTE_ADDR": "192.0.2.7"}
    assert post(client, {"plan": {"enabled": True}}, environ_base=lan).status_code == 403
    assert client.get("/api/settings", environ_base=lan).status_code == 403
    assert config_path.read_bytes() == before


def test_guard_with_password_needs_login(config_path: Path) -> None:
    client = make_app(config_path, PASSWORD).test_client()
    before = config_path.read_bytes()
    lan = {"REMOTE_ADDR": "192.0.2.7"}
    assert post(client, {"plan": {"enabled": True}}, environ_base=lan).status_code == 401
    assert client.get("/api/settings", environ_base=lan).status_code == 401
    assert config_path.read_bytes() == before
    resp = post(client, {"plan": {"enabled": True}}, environ_base=lan, headers=basic(PASSWORD))
    assert resp.status_code == 200
    assert json.loads(config_path.read_text())["plan"] == {"enabled": True}


def test_cross_origin_post_refused(client: FlaskClient, config_path: Path) -> None:
    before = config_path.read_bytes()
    resp = post(client, {"plan": {"enabled": True}}, headers={"Origin": "http://evil.example"})
    assert resp.status_code == 403
    assert config_path.read_bytes() == before
