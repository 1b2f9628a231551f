"""Tests for config_loader: defaults, every kind of error, and the atomic akku_ids update."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config_loader import (
    BatteryConfig,
    Config,
    ConfigError,
    ControlConfig,
    EcoTrackerConfig,
    HomeWizardConfig,
    HttpJsonConfig,
    LoggingConfig,
    MeterCommon,
    MqttMeterConfig,
    ShellyConfig,
    UnitConfig,
    WebConfig,
    default_config_path,
    load_config,
    parse_config,
    parse_host_port,
    remove_stray_temp_files,
    update_akku_ids,
)
from zero_feed_control import ControlParams

REPO_DIR = Path(__file__).resolve().parent.parent
EXAMPLE_PATH = REPO_DIR / "config.example.json"

MINIMAL: dict[str, Any] = {"shelly": {"ip": "192.168.1.100"}, "battery": {"ip": "192.168.1.200"}}


def with_value(base: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the key at ``dotted`` (a.b.c) set, creating sections as needed."""
    data = copy.deepcopy(base)
    *parents, leaf = dotted.split(".")
    node = data
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value
    return data


def without(base: dict[str, Any], dotted: str) -> dict[str, Any]:
    data = copy.deepcopy(base)
    *parents, leaf = dotted.split(".")
    node = data
    for name in parents:
        node = node[name]
    del node[leaf]
    return data


def both(first: str, first_value: Any, second: str, second_value: Any) -> dict[str, Any]:
    return with_value(with_value(MINIMAL, first, first_value), second, second_value)


def example_data() -> dict[str, Any]:
    return json.loads(EXAMPLE_PATH.read_text(encoding="utf-8"))


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


# --------------------------------------------------------------------------- the example and defaults


def test_example_loads_with_the_documented_values() -> None:
    cfg = load_config(EXAMPLE_PATH)
    assert cfg.energy_meter_type == "shelly"
    assert cfg.meter == ShellyConfig(ip="192.168.1.100", host="192.168.1.100", port=80, timeout_seconds=2.0)
    assert dataclasses.replace(cfg.battery, units=()) == BatteryConfig(ip="192.168.1.200", akku_ids=(1, 2))
    assert [u.key for u in cfg.battery.units] == ["192.168.1.200:502/1", "192.168.1.200:502/2"]
    assert cfg.control == ControlConfig(poll_interval_seconds=1.0)
    assert cfg.web == WebConfig()
    assert cfg.logging.file == str(REPO_DIR / "logs" / "marstek.log")
    assert cfg.description.startswith("Marstek PV-Akku Steuerung")
    assert cfg.version == "3.1"


def test_example_lists_every_key_the_loader_knows() -> None:
    """The example is the user's reference, so no setting may be missing from it."""
    data = example_data()
    sections = {
        "shelly": ShellyConfig,
        "ecotracker": EcoTrackerConfig,
        "homewizard": HomeWizardConfig,
        "http_json": HttpJsonConfig,
        "mqtt_meter": MqttMeterConfig,
        "battery": BatteryConfig,
        "control": ControlConfig,
        "web": WebConfig,
        "logging": LoggingConfig,
    }
    for section, cls in sections.items():
        expected = {f.name for f in dataclasses.fields(cls)}
        if issubclass(cls, MeterCommon):
            expected -= {"host", "port"}  # derived from "ip" (http_json: from "url")
        if cls is BatteryConfig:
            expected -= {"units", "units_form"}  # the other form: config.v3-household.example.json
        assert expected <= set(data[section]), section
    assert "invert" in data["energy_meter"]


def test_minimal_config_gets_every_default() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg == Config(
        meter=ShellyConfig(ip="192.168.1.100", host="192.168.1.100", port=80),
        battery=BatteryConfig(ip="192.168.1.200", units=(
            UnitConfig("192.168.1.200", 502, 1, "v2", 2500, 50, "Akku 1"),)),
        control=ControlConfig(),
        web=WebConfig(),
        logging=LoggingConfig(),
    )
    assert cfg.meter.timeout_seconds == 5.0
    assert cfg.meter.max_failures_before_stop == 2
    assert cfg.meter.check_interval_seconds == 3.0
    assert cfg.meter.max_frozen_seconds == 60.0
    assert cfg.battery.port == 502
    assert cfg.battery.akku_ids == (1,)
    assert cfg.battery.effective_pacing_ms == 50
    assert cfg.control.poll_interval_seconds == 2.0
    assert cfg.control.algorithm == "fast"
    assert cfg.logging.level == "INFO"


def test_ecotracker_selected_needs_only_its_own_section() -> None:
    data = {
        "energy_meter": {"type": "ecotracker"},
        "ecotracker": {"ip": "10.0.0.5"},
        "battery": {"ip": "10.0.0.6"},
    }
    cfg = parse_config(data)
    assert cfg.energy_meter_type == "ecotracker"
    assert cfg.meter == EcoTrackerConfig(ip="10.0.0.5", host="10.0.0.5", port=80)


def test_only_the_selected_meter_section_is_kept_typed_and_the_others_are_still_checked() -> None:
    data = {"energy_meter": {"type": "homewizard"}, "homewizard": {"ip": "10.0.0.7:8080", "timeout_seconds": 2},
            "shelly": {"ip": "10.0.0.5", "user": "zaehler"}, "battery": {"ip": "10.0.0.6"}}
    cfg = parse_config(data)
    assert cfg.meter == HomeWizardConfig(ip="10.0.0.7:8080", host="10.0.0.7", port=8080, timeout_seconds=2.0)
    assert (cfg.energy_meter_type, cfg.meter.address) == ("homewizard", "10.0.0.7:8080")
    assert not hasattr(cfg, "shelly")  # an unselected section is not kept, but it is checked:
    assert error_of(with_value(data, "shelly.channels", [7])).startswith("shelly.channels: must be a non-empty list")


def test_meter_sections_are_built_with_keywords_only() -> None:
    with pytest.raises(TypeError):
        ShellyConfig("10.0.0.5", "10.0.0.5", 80)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Config(ShellyConfig(ip="10.0.0.5", host="10.0.0.5", port=80))  # type: ignore[misc]


def test_control_params_map_the_keys_to_the_law_and_default_to_its_defaults() -> None:
    assert parse_config(MINIMAL).control_params() == ControlParams()
    cfg = parse_config(with_value(with_value(with_value(MINIMAL, "control", {
        "target_grid_power_charge": -50, "target_grid_power_discharge": 40, "deadband_w": 25,
        "average_readings": True, "distribution": "balanced"}), "battery", {
        "ip": "10.0.0.6", "min_power_per_battery": 80, "max_power_per_battery": 800, "min_soc_for_discharge": 15,
        "max_soc_for_charge": 90}), "shelly.max_failures_before_stop", 4))
    assert cfg.control_params() == dataclasses.replace(
        ControlParams(), target_grid_charge_w=-50.0, target_grid_discharge_w=40.0, min_power_w=80, max_power_w=800,
        min_soc_pct=15.0, max_soc_pct=90.0, max_meter_failures=4, deadband_w=25.0, average_readings=True,
        distribution="balanced")


def test_config_is_frozen() -> None:
    cfg = parse_config(MINIMAL)
    with pytest.raises(AttributeError):
        cfg.battery.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("dotted", "value", "attribute", "expected"),
    [
        ("shelly.timeout_seconds", 2, ("meter", "timeout_seconds"), 2.0),
        ("shelly.password", "geheim", ("meter", "password"), "geheim"),
        ("shelly.password", "", ("meter", "password"), None),
        ("shelly.password", None, ("meter", "password"), None),
        ("battery.register_set", "V3", ("battery", "register_set"), "v3"),
        ("battery.pacing_ms", 20, ("battery", "pacing_ms"), 20),
        ("battery.pacing_ms", None, ("battery", "pacing_ms"), None),
        ("control.poll_interval_seconds", 0.2, ("control", "poll_interval_seconds"), 0.2),
        ("control.algorithm", "seed", ("control", "algorithm"), "seed"),
        ("control.average_readings", True, ("control", "average_readings"), True),
        ("control.distribution", "Balanced", ("control", "distribution"), "balanced"),
        ("control.target_grid_power_charge", 20, ("control", "target_grid_power_charge"), 20.0),
        ("web.language", "AUTO", ("web", "language"), "auto"),
        ("web.password", "pw", ("web", "password"), "pw"),
        ("logging.level", "debug", ("logging", "level"), "DEBUG"),
        ("logging.file", "/var/log/marstek.log", ("logging", "file"), "/var/log/marstek.log"),
        ("energy_meter.type", "Shelly", ("energy_meter_type",), "shelly"),
    ],
)
def test_accepted_values(dotted: str, value: Any, attribute: tuple[str, ...], expected: Any) -> None:
    cfg: Any = parse_config(with_value(MINIMAL, dotted, value))
    for name in attribute:
        cfg = getattr(cfg, name)
    assert cfg == expected


def test_v3_pacing_default() -> None:
    cfg = parse_config(with_value(MINIMAL, "battery.register_set", "v3"))
    assert cfg.battery.effective_pacing_ms == 150


def test_comment_and_underscore_keys_are_ignored_everywhere() -> None:
    data = copy.deepcopy(MINIMAL)
    data["comment"] = "oben"
    data["_note"] = {"anything": [1, 2]}
    data["shelly"]["comment_2"] = "x"
    data["battery"]["_disabled_port"] = 503
    data["control"] = {"commentary": 1}
    assert parse_config(data) == parse_config(MINIMAL)


@pytest.mark.parametrize(
    ("ip", "host", "port"),
    [
        ("192.168.1.100", "192.168.1.100", 80),
        ("192.168.1.100:8080", "192.168.1.100", 8080),
        ("shelly-pro3em.local", "shelly-pro3em.local", 80),
        ("shelly.fritz.box:81", "shelly.fritz.box", 81),
        ("[fe80::1]:8080", "fe80::1", 8080),
        ("[::1]", "::1", 80),
        ("fe80::1", "fe80::1", 80),
        (" 10.0.0.1 ", "10.0.0.1", 80),
    ],
)
def test_host_port_parsing(ip: str, host: str, port: int) -> None:
    assert parse_host_port(ip) == (host, port)
    cfg = parse_config(with_value(MINIMAL, "shelly.ip", ip))
    assert isinstance(cfg.meter, ShellyConfig) and (cfg.meter.host, cfg.meter.port) == (host, port)


# --------------------------------------------------------------------------- errors


def bad(dotted: str, value: Any, *fragments: str) -> Any:
    """One invalid single key: set ``dotted`` to ``value`` in the minimal config."""
    return pytest.param(with_value(MINIMAL, dotted, value), list(fragments), id=f"{dotted}={value!r}")


def bad_data(case_id: str, data: object, *fragments: str) -> Any:
    return pytest.param(data, list(fragments), id=case_id)


ERROR_CASES = [
    # unknown keys, with a hint for near misses
    bad("battery.prot", 502, "battery.prot: unknown key", 'did you mean "port"?'),
    bad("shelly.IP", "x", "shelly.IP: unknown key", '"ip"'),
    bad("baterry", {}, "baterry: unknown key", '"battery"'),
    bad("web.zzzz", 1, "web.zzzz: unknown key"),
    bad(
        "ecotracker",
        {"ip": "1.2.3.4", "password": "x"},
        "ecotracker.password: the EcoTracker has no password",
    ),
    # wrong types
    bad("battery.port", "502", "battery.port: must be an integer 1..65535", "without quotes"),
    bad("battery.port", 502.0, "battery.port: must be an integer"),
    bad(
        "battery.max_power_per_battery", True, "battery.max_power_per_battery: must be an integer", "got true"
    ),
    bad("shelly.timeout_seconds", False, "shelly.timeout_seconds: must be a number", "got false"),
    bad("shelly.timeout_seconds", None, "shelly.timeout_seconds:", "got null"),
    bad("battery.ip", 192, "battery.ip: must be a non-empty text"),
    bad("shelly.ip", "", "shelly.ip: must be a non-empty text", "empty"),
    bad("shelly.ip", "   ", "shelly.ip: must be a non-empty text"),
    bad("control.average_readings", 1, "control.average_readings: must be true or false"),
    bad("battery.akku_ids", 1, "battery.akku_ids: must be a non-empty list"),
    bad("control", [1], "control: must be an object"),
    bad("version", 3.1, "version: must be a text, got 3.1"),
    bad("control.deadband_w", float("nan"), "control.deadband_w:", "NaN"),
    bad("web.password", 1234, "web.password: must be a text or null"),
    # ranges
    bad("battery.port", 70000, "battery.port: must be an integer 1..65535, got 70000"),
    bad("web.port", 0, "web.port: must be an integer 1..65535, got 0"),
    bad("battery.max_soc_for_charge", 101, "battery.max_soc_for_charge: must be a number 0..100"),
    bad("battery.min_soc_for_discharge", -1, "battery.min_soc_for_discharge: must be a number 0..100"),
    bad(
        "battery.max_power_per_battery",
        3000,
        "battery.max_power_per_battery: must be an integer 1..2500, got 3000",
    ),
    bad("battery.min_power_per_battery", 0, "battery.min_power_per_battery: must be an integer 1..2500"),
    bad(
        "shelly.timeout_seconds", 0, "shelly.timeout_seconds: must be a number above 0 and at most 60, got 0"
    ),
    bad("battery.timeout_seconds", 61, "battery.timeout_seconds: must be a number above 0 and at most 60"),
    bad(
        "control.poll_interval_seconds",
        0.1,
        "control.poll_interval_seconds: must be a number 0.2..60, got 0.1",
    ),
    bad("control.poll_interval_seconds", 61, "control.poll_interval_seconds: must be a number 0.2..60"),
    bad("shelly.max_failures_before_stop", 0, "shelly.max_failures_before_stop: must be an integer 1..100"),
    bad("shelly.max_failures_before_stop", 101, "shelly.max_failures_before_stop: must be an integer 1..100"),
    bad(
        "control.target_grid_power_charge",
        -1001,
        "control.target_grid_power_charge: must be a number -1000..1000",
    ),
    bad("battery.akku_ids", [0], "battery.akku_ids: each id must be an integer 1..247, got 0"),
    bad("battery.akku_ids", [1, 248], "battery.akku_ids: each id must be an integer 1..247, got 248"),
    bad("battery.akku_ids", ["1"], "battery.akku_ids: each id must be an integer 1..247"),
    bad("battery.akku_ids", [], "battery.akku_ids: must be a non-empty list"),
    bad("battery.akku_ids", [1, 2, 2], "battery.akku_ids: duplicate id 2"),
    bad("battery.pacing_ms", 10, "battery.pacing_ms: must be an integer 20..5000 or null"),
    bad("logging.level", "warn", "logging.level: must be one of", 'did you mean "WARNING"?'),
    bad("battery.register_set", "v4", "battery.register_set: must be one of"),
    bad("energy_meter.type", "tasmota", "energy_meter.type: must be one of"),
    bad("web.language", "fr", "web.language: must be one of"),
    bad("control.algorithm", "pid", "control.algorithm: must be one of"),
    bad("control.distribution", "fair", "control.distribution: must be one of"),
    bad("shelly.ip", "192.168.1.300", "shelly.ip: not a valid IPv4 address"),
    bad("shelly.ip", "http://192.168.1.100", "shelly.ip: write only the address", "http://"),
    bad("shelly.ip", "192.168.1.100:99999", "shelly.ip: port must be 1..65535"),
    bad("battery.ip", "192.168.1.200:502", "battery.ip: write only the address", "battery.port"),
    # cross-field rules
    bad_data(
        "charge target above discharge target",
        both("control.target_grid_power_charge", 30, "control.target_grid_power_discharge", 20),
        "control.target_grid_power_charge (30) must not be above control.target_grid_power_discharge (20)",
    ),
    bad_data(
        "min power above max power",
        both("battery.min_power_per_battery", 900, "battery.max_power_per_battery", 800),
        "battery.min_power_per_battery (900) must not be above battery.max_power_per_battery (800)",
    ),
    bad_data(
        "min soc not below max soc",
        both("battery.min_soc_for_discharge", 50, "battery.max_soc_for_charge", 50),
        "battery.min_soc_for_discharge (50) must be below battery.max_soc_for_charge (50)",
    ),
    # required parts
    bad_data("battery missing", without(MINIMAL, "battery"), "battery: section missing"),
    bad("battery", {"port": 502}, "battery.ip: missing"),
    bad_data("selected meter missing", without(MINIMAL, "shelly"), "shelly: section missing"),
    bad("energy_meter.type", "ecotracker", "ecotracker: section missing"),
    bad("shelly", {"timeout_seconds": 2}, "shelly.ip: missing"),
]


@pytest.mark.parametrize(("data", "fragments"), ERROR_CASES)
def test_invalid_config_names_the_key_path(data: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert len(info.value.problems) == 1, message
    for fragment in fragments:
        assert fragment in message
    key_path = fragments[0].split(" ")[0].rstrip(":")
    assert message.startswith(key_path)


def test_every_problem_is_reported_at_once() -> None:
    data = with_value(with_value(MINIMAL, "battery.port", 0), "web.port", 0)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert [p.split(":")[0] for p in info.value.problems] == ["battery.port", "web.port"]


def test_top_level_must_be_an_object() -> None:
    assert error_of([1, 2]).startswith("config: must be a JSON object")
    assert "got null" in error_of(None)


# --------------------------------------------------------------------------- files


def write(tmp_path: Path, content: bytes | str, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_bad_json_says_it_is_not_json_with_line_column_and_reason(tmp_path: Path) -> None:
    text = '{\n  "battery": {\n    "ip": "1.2.3.4"\n    "port": 502\n  }\n}\n'
    message = load_error(write(tmp_path, text))
    assert message == (
        f"{tmp_path / 'config.json'}: not a valid JSON file (line 4, column 5): Expecting ',' delimiter"
    )


def test_bad_json_exits_2_with_the_message_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "battery": {\n    "ip": "1.2.3.4",\n  },\n}\n')
    result = subprocess.run(
        [sys.executable, str(REPO_DIR / "main.py"), "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 2
    # Without a readable config there is no web.language: the default language, German.
    assert "Konfigurationsfehler: " in result.stderr
    assert "keine gültige JSON-Datei (Zeile 4, Spalte 3): Expecting property name enclosed in double quotes" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_file_says_to_copy_the_example(tmp_path: Path) -> None:
    message = load_error(tmp_path / "config.json")
    assert "Copy config.example.json to config.json and adjust it" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty"),
        (b"  \n\t\n", "empty"),
        (b"[1, 2]", "must contain a JSON object"),
        (b'"text"', "must contain a JSON object"),
        (b'{"battery": {"ip": "1.2.3.4\xff"}}', "not UTF-8"),
        (b'{"battery": {"ip": "a", "ip": "b"}}', "battery.ip: appears more than once"),
    ],
)
def test_unusable_files_give_clear_messages(tmp_path: Path, content: bytes, fragment: str) -> None:
    assert fragment in load_error(write(tmp_path, content))


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "cannot read" in load_error(tmp_path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + EXAMPLE_PATH.read_bytes())
    assert load_config(path).battery.akku_ids == (1, 2)


def test_relative_log_file_resolves_against_the_config_directory(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, json.dumps(MINIMAL))
    assert load_config(path).logging.file == str(sub / "logs" / "marstek.log")
    assert load_config(str(path)).logging.file == str(sub / "logs" / "marstek.log")


def test_default_config_path_is_beside_the_module() -> None:
    assert default_config_path() == REPO_DIR / "config.json"


# --------------------------------------------------------------------------- update_akku_ids


def test_update_akku_ids_keeps_everything_else_and_a_backup(tmp_path: Path) -> None:
    original = EXAMPLE_PATH.read_text(encoding="utf-8")
    path = write(tmp_path, original)
    cfg = update_akku_ids(path, [1, 2, 3])

    assert cfg.battery.akku_ids == (1, 2, 3)
    assert load_config(path) == cfg
    assert (tmp_path / "config.json.bak").read_text(encoding="utf-8") == original
    new = json.loads(path.read_text(encoding="utf-8"))
    expected = example_data()
    expected["battery"]["akku_ids"] = [1, 2, 3]
    assert new == expected
    assert list(new) == list(expected)  # key order kept
    assert list(new["battery"]) == list(expected["battery"])
    text = path.read_text(encoding="utf-8")
    assert "Verfügbare Typen" in text  # ensure_ascii=False
    assert text.startswith('{\n  "description"')  # indent 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_update_akku_ids_overwrites_the_backup_each_time(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(MINIMAL))
    update_akku_ids(path, [1, 2])
    second_before = path.read_text(encoding="utf-8")
    update_akku_ids(path, [3])
    assert (tmp_path / "config.json.bak").read_text(encoding="utf-8") == second_before
    assert load_config(path).battery.akku_ids == (3,)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_update_akku_ids_keeps_the_file_mode(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(MINIMAL))
    path.chmod(0o640)
    update_akku_ids(path, [2])
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    ("akku_ids", "fragment"),
    [([1, 1], "battery.akku_ids: duplicate id 1"), ([], "battery.akku_ids:"), ([300], "battery.akku_ids:")],
)
def test_update_akku_ids_refuses_invalid_ids(tmp_path: Path, akku_ids: list[int], fragment: str) -> None:
    original = EXAMPLE_PATH.read_bytes()
    path = write(tmp_path, original)
    with pytest.raises(ConfigError) as info:
        update_akku_ids(path, akku_ids)
    assert fragment in str(info.value)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_update_akku_ids_refuses_when_the_rest_of_the_file_is_invalid(tmp_path: Path) -> None:
    content = json.dumps(with_value(MINIMAL, "web.port", 0))
    path = write(tmp_path, content)
    with pytest.raises(ConfigError, match=r"web\.port"):
        update_akku_ids(path, [1, 2])
    assert path.read_text(encoding="utf-8") == content


def test_update_akku_ids_on_bad_json_reports_position(tmp_path: Path) -> None:
    path = write(tmp_path, '{"battery": }')
    with pytest.raises(ConfigError, match=r"line 1, column 13"):
        update_akku_ids(path, [1])


# --------------------------------------------------------------------------- atomic backup, stray temp files
def big_config(path: Path, kilobytes: int, akku_ids: list[int]) -> Path:
    """A valid config of about ``kilobytes`` KB (a long description) with ``akku_ids``."""
    data = {**MINIMAL, "description": "x" * (kilobytes * 1024), "battery": {"ip": "192.168.1.200",
                                                                           "akku_ids": akku_ids}}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


SAVE_WITH_4_KB_LEFT = """
import resource, signal, sys
sys.path.insert(0, sys.argv[2])
from config_loader import ConfigError, update_akku_ids
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    update_akku_ids(sys.argv[1], [1, 2, 3])
except ConfigError as exc:
    print("refused:", exc)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_never_cuts_the_backup_or_the_config(tmp_path: Path) -> None:
    path = big_config(tmp_path / "config.json", 20, [1])
    update_akku_ids(path, [1, 2])  # a good backup of the first version exists now
    config_before, backup_before = path.read_bytes(), (tmp_path / "config.json.bak").read_bytes()
    done = subprocess.run([sys.executable, "-c", SAVE_WITH_4_KB_LEFT, str(path), str(REPO_DIR)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "cannot write the file" in done.stdout
    assert path.read_bytes() == config_before
    assert (tmp_path / "config.json.bak").read_bytes() == backup_before, "the backup is never cut off"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_stray_temp_files_of_config_mode_and_history_are_removed_at_start(tmp_path: Path) -> None:
    import main

    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**MINIMAL, "history": {"path": "data/history.sqlite3"}}), encoding="utf-8")
    strays = [tmp_path / ".config.json.k2j4h5g6.tmp", tmp_path / ".config.json.bak.abcd_123.tmp",
              data / ".mode.json.x1y2z3w4.tmp", data / ".history.sqlite3.q9w8e7r6.tmp"]
    others = [tmp_path / "notes.tmp", tmp_path / ".other.json.k2j4h5g6.tmp", data / "mode.json",
              tmp_path / ".config.json.k2j4h5g6.tmp.keep"]
    for f in strays + others:
        f.write_text("{", encoding="utf-8")
        os.utime(f, (1_000_000_000, 1_000_000_000))
    young = tmp_path / ".config.json.young123.tmp"  # maybe a write in progress: left alone
    young.write_text("{", encoding="utf-8")
    assert sorted(remove_stray_temp_files(config, now_s=young.stat().st_mtime + 1)) == sorted(strays[:2])

    for f in strays[:2]:
        f.write_text("{", encoding="utf-8")
        os.utime(f, (1_000_000_000, 1_000_000_000))
    main.clean_stray_temp_files(load_config(config), config, tmp_path)  # what the start does
    assert not any(f.exists() for f in strays)
    assert all(f.exists() for f in [*others, young])
