"""``battery.units``: several gateways, one IP per battery, mixed register sets (config side)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from config_loader import ConfigError, add_unit_to_config, load_config, parse_config, update_sections

ROOT = Path(__file__).resolve().parent.parent
V3_EXAMPLE = ROOT / "config.v3-household.example.json"


def units_config(*units: dict[str, Any], **battery: Any) -> dict[str, Any]:
    return {"shelly": {"ip": "192.168.1.100"}, "battery": {**battery, "units": list(units)}}


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


def test_units_get_the_documented_defaults_and_keys() -> None:
    cfg = parse_config(units_config(
        {"ip": "192.168.1.50", "register_set": "v3", "name": "Garage"},
        {"ip": "192.168.1.51:1502", "register_set": "v3", "max_power_per_battery": 800},
        {"ip": "192.168.1.200", "id": 2},
        {"ip": "192.168.1.200", "id": 3},
        port=502, register_set="v2", max_power_per_battery=2500, min_power_per_battery=50))
    b = cfg.battery
    assert b.units_form and b.ip == "" and b.akku_ids == ()
    assert [u.key for u in b.units] == ["192.168.1.50:502/1", "192.168.1.51:1502/1", "192.168.1.200:502/2",
                                       "192.168.1.200:502/3"]
    assert [u.name for u in b.units] == ["Garage", "Akku 2", "Akku 3", "Akku 4"]
    assert [u.register_set for u in b.units] == ["v3", "v3", "v2", "v2"]
    assert [u.max_power_per_battery for u in b.units] == [2500, 800, 2500, 2500]
    assert [u.min_power_per_battery for u in b.units] == [50] * 4
    assert b.gateways == ("192.168.1.50:502", "192.168.1.51:1502", "192.168.1.200:502")
    assert {u.framer for u in b.units} == {"socket"}


def test_a_unit_inherits_the_section_values_and_the_framer() -> None:
    cfg = parse_config(units_config({"ip": "gw.local", "port": 8899}, port=1502, register_set="v3",
                                    max_power_per_battery=1200, min_power_per_battery=100, framer="rtu"))
    (u,) = cfg.battery.units
    assert (u.host, u.port, u.unit_id, u.register_set, u.max_power_per_battery, u.min_power_per_battery,
            u.framer) == ("gw.local", 8899, 1, "v3", 1200, 100, "rtu")


def test_the_seed_form_means_the_same_units_on_one_gateway() -> None:
    seed = parse_config({"shelly": {"ip": "192.168.1.100"},
                         "battery": {"ip": "192.168.1.200", "akku_ids": [1, 3], "max_power_per_battery": 1500}})
    units = parse_config(units_config({"ip": "192.168.1.200", "id": 1, "name": "Akku 1"},
                                      {"ip": "192.168.1.200", "id": 3, "name": "Akku 3"},
                                      max_power_per_battery=1500))
    assert not seed.battery.units_form
    assert seed.battery.units == units.battery.units


@pytest.mark.parametrize(("units", "battery", "expected"), [
    ([{"ip": "192.168.1.50"}], {"ip": "192.168.1.200"}, "battery.units: cannot be combined with battery.ip"),
    ([{"ip": "192.168.1.50"}], {"akku_ids": [1]}, "battery.units: cannot be combined with battery.akku_ids"),
    ([], {}, "battery.units: must be a non-empty list"),
    ([{"ip": "192.168.1.50"}, "192.168.1.51"], {}, "battery.units[1]: must be an object"),
    ([{"id": 2}], {}, "battery.units[0].ip: missing (required)"),
    ([{"ip": "http://192.168.1.50"}], {}, "battery.units[0].ip: write only the address"),
    ([{"ip": "192.168.1.50:99999"}], {}, "battery.units[0].ip: port must be 1..65535"),
    ([{"ip": "192.168.1.50:1502", "port": 502}], {}, "battery.units[0].port: 502 contradicts the port 1502"),
    ([{"ip": "192.168.1.50", "id": 0}], {}, "battery.units[0].id: must be an integer 1..247, got 0"),
    ([{"ip": "a"}, {"ip": "b", "register_set": "v4"}], {}, 'battery.units[1].register_set: must be one of "v2"'),
    ([{"ip": "a", "max_power_per_battery": 3000}], {}, "battery.units[0].max_power_per_battery: must be an integer"),
    ([{"ip": "a", "min_power_per_battery": 900, "max_power_per_battery": 800}], {},
     "battery.units[0].min_power_per_battery (900) must not be above battery.units[0].max_power_per_battery (800)"),
    ([{"ip": "a", "name": ""}], {}, "battery.units[0].name: must be a non-empty text"),
    ([{"ip": "a", "framer": "ascii"}], {}, 'battery.units[0].framer: must be one of "socket", "rtu"'),
    ([{"ip": "a", "adress": 1}], {}, "battery.units[0].adress: unknown key"),
    ([{"ip": "a", "id": 2}, {"ip": "a:502", "id": 2}], {}, "battery.units[1]: the same battery as battery.units[0]"),
    ([{"ip": "a", "id": 2}, {"ip": "a", "id": 3, "register_set": "v3"}], {},
     'battery.units[1].register_set: "v3" differs from "v2" of battery.units[0] on the same gateway a:502'),
    ([{"ip": "a", "id": 2}, {"ip": "a", "id": 3, "framer": "rtu"}], {}, "battery.units[1].framer:"),
    ([{"ip": "a"}], {"framer": "tcp"}, "battery.framer: must be one of"),
    ([{"ip": "a", "id": 1, "name": "Akku 1"}, {"ip": "b", "id": 1, "name": "akku-1"}], {},
     'battery.units[1]: uid "akku_1" (from its uid or name) is already the uid of battery.units[0]'),
    ([{"ip": "a", "uid": "keller"}, {"ip": "b", "uid": "keller"}], {}, 'battery.units[1]: uid "keller"'),
    ([{"ip": "a", "uid": "Keller 1"}], {}, "battery.units[0].uid: must be 1 to 64 of a-z, 0-9"),
    ([{"ip": "a", "uid": 7}], {}, "battery.units[0].uid: must be a non-empty text"),
])
def test_unit_errors_name_their_key_path(units: list[Any], battery: dict[str, Any], expected: str) -> None:
    data: dict[str, Any] = {"shelly": {"ip": "192.168.1.100"}, "battery": {**battery, "units": units}}
    assert expected in error_of(data)


def test_every_unit_gets_a_stable_uid_without_its_address() -> None:
    cfg = parse_config(units_config(
        {"ip": "192.168.1.50", "name": "Akku 1"}, {"ip": "192.168.1.51", "name": "Garage Süd"},
        {"ip": "192.168.1.52", "name": "Keller", "uid": "speicher-keller"}, {"ip": "192.168.1.53"},
        {"ip": "192.168.1.54", "name": "!!!", "id": 9}))
    assert [u.uid for u in cfg.battery.units] == ["akku_1", "garage_sued", "speicher-keller", "akku_4", "akku_9"]
    moved = parse_config(units_config({"ip": "10.0.0.9", "name": "Akku 1"}, {"ip": "10.0.0.8", "name": "Garage Süd"}))
    assert [u.uid for u in moved.battery.units] == ["akku_1", "garage_sued"], "a new address keeps the uid"
    seed = parse_config({"shelly": {"ip": "192.168.1.100"}, "battery": {"ip": "192.168.1.200", "akku_ids": [2, 5]}})
    assert [u.uid for u in seed.battery.units] == ["akku_2", "akku_5"]


def test_same_id_on_different_gateways_is_fine() -> None:
    cfg = parse_config(units_config({"ip": "192.168.1.50"}, {"ip": "192.168.1.51"}, {"ip": "192.168.1.50:1502"}))
    assert len({u.key for u in cfg.battery.units}) == 3


def test_the_v3_household_example_loads_and_lists_every_unit_key() -> None:
    cfg = load_config(V3_EXAMPLE)
    assert cfg.battery.units_form and len(cfg.battery.gateways) == 3
    data = json.loads(V3_EXAMPLE.read_text(encoding="utf-8"))
    listed = {key for unit in data["battery"]["units"] for key in unit}
    assert {"ip", "port", "id", "register_set", "max_power_per_battery", "min_power_per_battery", "name",
            "framer"} <= listed


def test_main_exits_2_naming_the_unit_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "config.json"
    path.write_text(json.dumps(units_config({"ip": "192.168.1.50", "id": 300})), encoding="utf-8")
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(path)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "battery.units[0].id" in result.stderr


def test_add_unit_keeps_the_form_of_the_file(tmp_path: Path) -> None:
    units_path = tmp_path / "units.json"
    units_path.write_text(json.dumps(units_config(
        {"ip": "192.168.1.50", "register_set": "v3"}, {"ip": "192.168.1.200:1502", "id": 2})), encoding="utf-8")
    cfg = add_unit_to_config(units_path, "192.168.1.200:1502", 3)
    saved = json.loads(units_path.read_text(encoding="utf-8"))
    assert saved["battery"]["units"][-1] == {"ip": "192.168.1.200:1502", "id": 3}
    assert cfg.battery.units[-1].key == "192.168.1.200:1502/3"
    assert json.loads((tmp_path / "units.json.bak").read_text(encoding="utf-8"))["battery"]["units"][-1]["id"] == 2

    seed_path = tmp_path / "seed.json"
    seed_path.write_text(json.dumps({"shelly": {"ip": "192.168.1.100"},
                                     "battery": {"ip": "192.168.1.200", "akku_ids": [1]}}), encoding="utf-8")
    add_unit_to_config(seed_path, "192.168.1.200:502", 2)
    saved = json.loads(seed_path.read_text(encoding="utf-8"))
    assert saved["battery"]["akku_ids"] == [1, 2] and "units" not in saved["battery"]
    with pytest.raises(ConfigError):
        add_unit_to_config(seed_path, "192.168.1.99:502", 2)


def test_two_edits_at_once_keep_both_changes(tmp_path: Path) -> None:
    """The settings page saves while setup adds a unit: each reads, changes and writes the whole file, so
    interleaved the later write would drop the other's change. They run one after the other instead."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"shelly": {"ip": "192.168.1.100"},
                                "battery": {"ip": "192.168.1.200", "akku_ids": [1]}}), encoding="utf-8")
    inside, release = threading.Event(), threading.Event()

    def keep(name: str, old: Any, new: Any) -> Any:
        inside.set()  # the settings save has read the file …
        assert release.wait(10)  # … and waits here until the unit's save has had its chance
        return new

    settings = threading.Thread(target=update_sections,
                                args=(path, {"plan": {"enabled": False}}, keep), daemon=True)
    settings.start()
    assert inside.wait(10)
    adding = threading.Thread(target=add_unit_to_config, args=(path, "192.168.1.200:502", 2), daemon=True)
    adding.start()
    adding.join(1.0)  # without the lock it would be done by now; with it, it waits for the settings save
    assert adding.is_alive()
    release.set()
    settings.join(10)
    adding.join(10)
    assert not settings.is_alive() and not adding.is_alive()
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["plan"] == {"enabled": False} and saved["battery"]["akku_ids"] == [1, 2]


# --------------------------------------------------------------------------- several IDs on one v3 host

V3_LAN_WHY = "a Venus E v3 / A / D on its own LAN port answers on every unit ID"


def seed_config(**battery: Any) -> dict[str, Any]:
    return {"shelly": {"ip": "192.168.1.100"}, "battery": {"ip": "192.168.1.50", **battery}}


def test_seed_form_refuses_several_ids_on_a_v3_host_with_the_explanation() -> None:
    message = error_of(seed_config(akku_ids=[1, 2], register_set="v3"))
    line = next(line for line in message.splitlines() if V3_LAN_WHY in line)
    assert line.startswith("battery.akku_ids: several unit IDs (1, 2) on the v3 host 192.168.1.50:502")
    assert "would all drive the same battery" in line
    assert "one battery per IP: list each in battery.units with its own ip" in line
    assert "set battery.rs485_gateway: true" in line


def test_main_exits_2_on_several_ids_on_a_v3_host(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "config.json"
    path.write_text(json.dumps(seed_config(akku_ids=[1, 2], register_set="v3")), encoding="utf-8")
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(path)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "battery.akku_ids: several unit IDs (1, 2)" in result.stderr and V3_LAN_WHY in result.stderr
    assert "Traceback" not in result.stderr


def test_units_form_refuses_a_second_id_on_a_v3_host_naming_the_second_unit() -> None:
    message = error_of(units_config({"ip": "192.168.1.50", "id": 1}, {"ip": "192.168.1.60"},
                                    {"ip": "192.168.1.50:502", "id": 2}, register_set="v3"))
    (line,) = message.splitlines()
    assert line.startswith("battery.units[2]: several unit IDs (1, 2) on the v3 host 192.168.1.50:502")
    assert V3_LAN_WHY in line and "set rs485_gateway: true" in line
    # A unit's own register set counts, not only the section's.
    message = error_of(units_config({"ip": "192.168.1.50", "id": 1, "register_set": "v3"},
                                    {"ip": "192.168.1.50", "id": 2, "register_set": "v3"}))
    assert message.startswith("battery.units[1]: several unit IDs (1, 2)") and V3_LAN_WHY in message


def test_rs485_gateway_true_allows_several_ids_on_a_v3_host() -> None:
    seed = parse_config(seed_config(akku_ids=[1, 2], register_set="v3", rs485_gateway=True))
    assert seed.battery.rs485_gateway is True
    assert [(u.key, u.rs485_gateway) for u in seed.battery.units] == [("192.168.1.50:502/1", True),
                                                                       ("192.168.1.50:502/2", True)]
    per_unit = parse_config(units_config({"ip": "192.168.1.50", "id": 1, "rs485_gateway": True},
                                         {"ip": "192.168.1.50", "id": 2, "rs485_gateway": True},
                                         {"ip": "192.168.1.60"}, register_set="v3"))
    assert [u.rs485_gateway for u in per_unit.battery.units] == [True, True, False]
    section = parse_config(units_config({"ip": "192.168.1.50", "id": 1}, {"ip": "192.168.1.50", "id": 2},
                                        register_set="v3", rs485_gateway=True))
    assert [u.rs485_gateway for u in section.battery.units] == [True, True]


def test_rs485_gateway_defaults_to_false_and_one_id_per_v3_host_is_fine() -> None:
    cfg = parse_config(units_config({"ip": "192.168.1.50"}, {"ip": "192.168.1.50:1502"}, register_set="v3"))
    assert cfg.battery.rs485_gateway is False and [u.rs485_gateway for u in cfg.battery.units] == [False, False]
    assert parse_config(seed_config(akku_ids=[3], register_set="v3")).battery.units[0].unit_id == 3


def test_several_ids_on_a_v2_gateway_are_unaffected() -> None:
    seed = parse_config(seed_config(akku_ids=[1, 2, 3]))
    assert [u.unit_id for u in seed.battery.units] == [1, 2, 3]
    units = parse_config(units_config({"ip": "192.168.1.200", "id": 1}, {"ip": "192.168.1.200", "id": 2},
                                      {"ip": "192.168.1.50", "register_set": "v3"}))
    assert len(units.battery.units) == 3


def test_units_on_one_gateway_must_agree_on_rs485_gateway() -> None:
    message = error_of(units_config({"ip": "192.168.1.200", "id": 1, "rs485_gateway": True},
                                    {"ip": "192.168.1.200", "id": 2}, register_set="v3"))
    (line,) = message.splitlines()  # the disagreement only, not also the v3 LAN rule
    assert line.startswith("battery.units[1].rs485_gateway: false differs from true of battery.units[0] on the "
                           "same gateway 192.168.1.200:502")
    # Also for v2, where the key changes nothing: one gateway, one answer.
    assert "battery.units[1].rs485_gateway: true differs from false" in error_of(units_config(
        {"ip": "192.168.1.200", "id": 1}, {"ip": "192.168.1.200", "id": 2, "rs485_gateway": True}))


@pytest.mark.parametrize(("data", "expected"), [
    (seed_config(rs485_gateway="yes"), 'battery.rs485_gateway: must be true or false, got "yes" (text)'),
    (seed_config(rs485_gateway=1), "battery.rs485_gateway: must be true or false, got 1"),
    (units_config({"ip": "192.168.1.50", "rs485_gateway": "yes"}),
     'battery.units[0].rs485_gateway: must be true or false, got "yes" (text)'),
    (units_config({"ip": "192.168.1.50", "rs485_gateway": None}),
     "battery.units[0].rs485_gateway: must be true or false, got null"),
])
def test_rs485_gateway_must_be_a_bool(data: dict[str, Any], expected: str) -> None:
    assert expected in error_of(data)


def test_add_unit_refuses_a_second_id_on_a_v3_lan_host_and_leaves_the_file(tmp_path: Path) -> None:
    units_path = tmp_path / "units.json"
    units_path.write_text(json.dumps(units_config({"ip": "192.168.1.50", "name": "Garage"}, {"ip": "192.168.1.60"},
                                                  register_set="v3"), indent=2), encoding="utf-8")
    seed_path = tmp_path / "seed.json"
    seed_path.write_text(json.dumps(seed_config(akku_ids=[1], register_set="v3"), indent=2), encoding="utf-8")
    for path, gateway, key in ((units_path, "192.168.1.50:502", "battery.units[2]"),
                               (seed_path, "192.168.1.50:502", "battery.akku_ids")):
        before = path.read_bytes()
        with pytest.raises(ConfigError) as refused:
            add_unit_to_config(path, gateway, 2)
        assert str(refused.value).startswith(f"{key}: several unit IDs (1, 2) on the v3 host {gateway}")
        assert V3_LAN_WHY in str(refused.value)
        assert path.read_bytes() == before
        assert not path.with_name(path.name + ".bak").exists()


def test_add_unit_carries_rs485_gateway_of_its_gateway(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(units_config({"ip": "192.168.1.50", "id": 1, "rs485_gateway": True},
                                            {"ip": "192.168.1.60"}, register_set="v3")), encoding="utf-8")
    cfg = add_unit_to_config(path, "192.168.1.50:502", 2)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["battery"]["units"][-1] == {"ip": "192.168.1.50", "id": 2, "rs485_gateway": True}
    assert cfg.battery.units[-1].key == "192.168.1.50:502/2" and cfg.battery.units[-1].rs485_gateway

    seed_path = tmp_path / "seed.json"
    seed_path.write_text(json.dumps(seed_config(akku_ids=[1], register_set="v3", rs485_gateway=True)),
                         encoding="utf-8")
    add_unit_to_config(seed_path, "192.168.1.50:502", 2)
    saved = json.loads(seed_path.read_text(encoding="utf-8"))
    assert saved["battery"]["akku_ids"] == [1, 2] and saved["battery"]["rs485_gateway"] is True
