"""Load and validate config.json into typed, frozen dataclasses.

One pass reads every section, fills in the documented defaults, rejects unknown keys
(except ``comment*`` and ``_*``), checks types, ranges and cross-field rules, and reports
every problem at once. Each problem line starts with its key path, e.g.
``battery.port: must be an integer 1..65535, got 70000``; ``main.py`` prints the
message and exits with status 2.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from control import i18n
from control.marstek_registers import DEFAULT_PACING_S, FIRMWARE_MAX_POWER_W, REGISTER_SETS
from planning.tariff_config import ForecastConfig, TariffConfig, parse_forecast, parse_tariff
from zero_feed_control import ALGORITHMS, DISTRIBUTIONS, ControlParams

METER_TYPES = ("shelly", "ecotracker", "homewizard", "http_json", "mqtt")
_HTTP_METERS = ("shelly", "ecotracker", "homewizard", "http_json")  # a section of their own name (mqtt: "mqtt_meter")
# energy_meter.type -> the config section of that meter.
METER_SECTIONS: dict[str, str] = {**{name: name for name in _HTTP_METERS}, "mqtt": "mqtt_meter"}
_MAX_SHELLY_CHANNEL = 2
DEFAULT_MQTT_PORT = 1883
LANGUAGES = (*i18n.LANGUAGES, "auto")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_LAW = ControlParams()  # the control law's defaults are the config's defaults
DEFAULT_METER_PORT = 80
MIN_PACING_MS = 20
_TARGET_RANGE_W = (-1000, 1000)


@dataclass(frozen=True, kw_only=True)
class MeterCommon:
    """The keys every meter section has; ``cfg.meter`` is enough for code that needs only these.

    ``kind`` is the section's ``energy_meter.type``; ``address`` is where the meter is, as written in the
    config (shown by ``--check`` and the diagnostics).
    """

    kind: ClassVar[str]
    timeout_seconds: float = 5.0
    max_failures_before_stop: int = _LAW.max_meter_failures
    check_interval_seconds: float = 3.0
    max_frozen_seconds: float = 60.0

    @property
    def address(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class _HostMeterConfig(MeterCommon):
    """A meter found by ``ip``: ``host`` is the bare host (an IPv4 address, a hostname or an IPv6 address
    without brackets, written ``[v6]:port`` in ``ip``), ``port`` from ``ip`` or 80."""

    ip: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return self.ip


@dataclass(frozen=True, kw_only=True)
class ShellyConfig(_HostMeterConfig):
    """The ``shelly`` section."""

    kind: ClassVar[str] = "shelly"
    password: str | None = None
    channels: tuple[int, ...] | None = None  # None: the model's default
    user: str = "admin"  # Gen1 Basic auth


@dataclass(frozen=True, kw_only=True)
class EcoTrackerConfig(_HostMeterConfig):
    """The ``ecotracker`` section."""

    kind: ClassVar[str] = "ecotracker"


@dataclass(frozen=True, kw_only=True)
class HomeWizardConfig(_HostMeterConfig):
    """The ``homewizard`` section."""

    kind: ClassVar[str] = "homewizard"


@dataclass(frozen=True, kw_only=True)
class HttpJsonConfig(MeterCommon):
    """The ``http_json`` section: ``url`` (``host``/``port`` are its parts; URLs need brackets around IPv6),
    ``power_path`` dotted into the JSON answer, optional Basic auth."""

    kind: ClassVar[str] = "http_json"
    url: str
    host: str
    port: int
    power_path: str
    username: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        return self.url


FRAMERS = ("socket", "rtu")  # Modbus TCP, or Modbus RTU frames over TCP ("transparent" gateways)
MAX_NAME_CHARS = 40


UID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})


def unit_uid(name: str, unit_id: int) -> str:
    """A battery's default ``uid``: the slug of its name (``"Akku 1"`` → ``"akku_1"``, umlauts spelled out);
    ``"akku_<id>"`` when the name has no letter or digit."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower().translate(_TRANSLIT)).strip("_")[:64]
    return slug or f"akku_{unit_id}"


def gateway_text(host: str, port: int) -> str:
    """``"<host>:<port>"`` (IPv6 in brackets): how a gateway is named in keys, the API and messages."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class UnitConfig:
    """One battery: its gateway (host, port, framer), Modbus unit ID, register set, power limits and name.

    ``rs485_gateway``: the gateway is an RS485-to-TCP converter, not a v3 battery's own LAN port (which answers
    on every unit ID); only then may several IDs share a v3 host. Changes nothing for register set "v2".
    """

    host: str
    port: int
    unit_id: int
    register_set: str
    max_power_per_battery: int
    min_power_per_battery: int
    name: str
    framer: str = "socket"
    rs485_gateway: bool = False
    # Stable identity without the address (Home Assistant unique_ids, the Prometheus label): battery.units[i].uid,
    # else the slug of ``name`` (filled in here when not given, e.g. ``replace(unit, name=..., uid="")``).
    uid: str = ""

    def __post_init__(self) -> None:
        if not self.uid:
            object.__setattr__(self, "uid", unit_uid(self.name, self.unit_id))

    @property
    def gateway(self) -> str:
        """``"<host>:<port>"``: units with the same gateway share one connection."""
        return gateway_text(self.host, self.port)

    @property
    def key(self) -> str:
        """``"<host>:<port>/<id>"``: unique per battery (status, events, the control's state)."""
        return f"{self.gateway}/{self.unit_id}"

ON_EXIT_CHOICES = ("stop", "release")


@dataclass(frozen=True)
class BatteryConfig:
    """The batteries and their Modbus TCP gateways.

    ``units`` always lists every battery: from ``battery.units`` (``units_form``) or, for the seed
    form, one unit per ``akku_ids`` entry behind ``ip``:``port`` (then ``ip`` and ``akku_ids`` are set).
    """

    ip: str
    port: int = 502
    timeout_seconds: float = 3.0
    akku_ids: tuple[int, ...] = (1,)
    max_power_per_battery: int = int(_LAW.max_power_w)
    min_power_per_battery: int = int(_LAW.min_power_w)
    min_soc_for_discharge: float = _LAW.min_soc_pct
    max_soc_for_charge: float = _LAW.max_soc_pct
    register_set: str = "v2"
    pacing_ms: int | None = None  # None: the register set's default (marstek_registers.DEFAULT_PACING_S)
    framer: str = "socket"
    units: tuple[UnitConfig, ...] = ()
    units_form: bool = False  # the file uses ``battery.units`` (else the seed form ip + akku_ids)
    # When the program stops: "stop" (force mode 0, RS485 control stays on: the battery idles) or "release"
    # (43000 <- 1 and 42000 <- 0x55BB: the battery runs its own anti-feed mode again).
    on_exit: str = "stop"
    rs485_gateway: bool = False  # the section default of every unit (see UnitConfig)

    @property
    def effective_pacing_ms(self) -> int:
        """Delay between Modbus frames, with the register-set default applied."""
        return self.pacing_ms_for(self.register_set)

    def pacing_ms_for(self, register_set: str) -> int:
        """Delay between Modbus frames on a gateway of ``register_set``."""
        if self.pacing_ms is not None:
            return self.pacing_ms
        return round(DEFAULT_PACING_S[register_set] * 1000)

    @property
    def gateways(self) -> tuple[str, ...]:
        """Every gateway ``"<host>:<port>"`` once, in the order of the units."""
        return tuple(dict.fromkeys(u.gateway for u in self.units))


@dataclass(frozen=True)
class ControlConfig:
    """Control loop timing and targets; grid targets in W, + import, - export."""

    poll_interval_seconds: float = 2.0
    soc_update_interval_seconds: float = 30.0
    target_grid_power_charge: float = _LAW.target_grid_charge_w
    target_grid_power_discharge: float = _LAW.target_grid_discharge_w
    algorithm: str = ALGORITHMS[0]
    average_readings: bool = _LAW.average_readings
    deadband_w: float = _LAW.deadband_w
    distribution: str = _LAW.distribution  # several batteries: "efficient" (fewest units) | "balanced"


@dataclass(frozen=True)
class WebConfig:
    """Dashboard web server."""

    host: str = "0.0.0.0"
    port: int = 8080
    password: str | None = dataclasses.field(default=None, repr=False)  # plain text or a salted hash
    language: str = "de"
    read_only_without_login: bool = True
    setup_timeout_minutes: int = 15  # setup mode ends by itself after this long without a setup request
    # Access (interfaces.md "Access: locked by default"): host names besides IP literals, localhost and
    # this machine's name; sessions end after session_days; X-Forwarded-For counts only from trusted_proxies.
    allowed_hosts: tuple[str, ...] = ()
    session_days: float = 30
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and rotating log file (``file`` is resolved against the config's directory)."""

    level: str = "INFO"
    file: str = "logs/marstek.log"
    max_file_size_mb: float = 10
    backup_count: int = 3


@dataclass(frozen=True)
class MqttConfig:
    """The MQTT broker (section ``mqtt``); absent or ``host`` null: MQTT is off (Config.mqtt is None)."""

    host: str
    port: int = DEFAULT_MQTT_PORT
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)  # never in a log line
    topic_prefix: str = "marstek"
    discovery_prefix: str = "homeassistant"
    client_id: str = "marstek-pv"


@dataclass(frozen=True, kw_only=True)
class MqttMeterConfig(MeterCommon):
    """The grid power from an MQTT topic (section ``mqtt_meter``; the broker is the ``mqtt`` section).

    ``power_path``: dotted path into a JSON payload, None for a payload that is a bare number.
    ``max_age_seconds``: a value older than this is a failed read. ``timeout_seconds``: how long a read
    waits for a fresh value when the last one is missing or too old (like an HTTP meter's answer).
    """

    kind: ClassVar[str] = "mqtt"
    topic: str
    power_path: str | None = None
    max_age_seconds: float = 10.0

    @property
    def address(self) -> str:
        return self.topic


# The section of the meter selected by ``energy_meter.type`` (``Config.meter``).
MeterSection = ShellyConfig | EcoTrackerConfig | HomeWizardConfig | HttpJsonConfig | MqttMeterConfig


@dataclass(frozen=True)
class HistoryConfig:
    """The SQLite history (chart samples and daily energy); ``path`` is resolved against the config's directory.

    ``path`` ":memory:" keeps the history in memory only (the demo).
    """

    path: str = "data/history.sqlite3"
    retention_days: int = 30


@dataclass(frozen=True)
class PlanConfig:
    """The plan by price and forecast (``plan``); it needs a ``tariff`` section. Powers W, SoC %."""

    enabled: bool = True
    reserve_soc_pct: float = 20.0  # never planned below this (backup); the fast loop keeps its own floor
    grid_charge_max_w: float = 2500.0  # total grid charge power of all batteries
    wear_ct_per_kwh: float = 3.0  # cost of one kWh through the battery
    peak_import_limit_w: float | None = None  # peak shaving: discharge to keep the import at or below this


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole validated configuration.

    ``meter`` is the section of the meter selected by ``energy_meter.type`` (the other meter sections are
    checked when present, then not kept): match on its class for its own keys, or use the shared keys of
    ``MeterCommon`` directly.
    """

    meter: MeterSection
    battery: BatteryConfig
    control: ControlConfig
    web: WebConfig
    logging: LoggingConfig
    history: HistoryConfig = HistoryConfig()
    description: str = ""
    version: str = ""
    mqtt: MqttConfig | None = None  # None: MQTT off
    plan: PlanConfig | None = None  # None: no plan section (the program runs as without prices)
    energy_meter_invert: bool = False  # energy_meter.invert: negate every reading (clamp mounted reversed)
    # Prices, forecasts and the plan (issue 20; planning/tariff_config.py): None = section absent, nothing fetched.
    tariff: TariffConfig | None = None
    forecast: ForecastConfig | None = None
    # The JSON document it was parsed from (a deep copy): a change (setup's "add to config") is made on it and
    # parsed again, in the file as in the demo, so no unit is ever built by hand beside the loader.
    source: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def energy_meter_type(self) -> str:
        """``energy_meter.type``: "shelly", "ecotracker", "homewizard", "http_json" or "mqtt"."""
        return self.meter.kind

    def control_params(self) -> ControlParams:
        """The control law's parameters: the one place where the config's key names meet the law's names
        (the config's defaults are the law's, ``_LAW``)."""
        b, c = self.battery, self.control
        return ControlParams(
            target_grid_charge_w=c.target_grid_power_charge,
            target_grid_discharge_w=c.target_grid_power_discharge,
            min_power_w=b.min_power_per_battery,
            max_power_w=b.max_power_per_battery,
            min_soc_pct=b.min_soc_for_discharge,
            max_soc_pct=b.max_soc_for_charge,
            max_meter_failures=self.meter.max_failures_before_stop,
            deadband_w=c.deadband_w,
            average_readings=c.average_readings,
            distribution=c.distribution,
        )


class ConfigError(Exception):
    """The configuration is invalid; ``str(e)`` is the user-facing message.

    ``problems`` holds one line per problem, each starting with its key path.
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems: tuple[str, ...] = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------- helpers

_MISSING: Any = object()  # key absent
_BAD: Any = object()  # key present but invalid (already reported)


def _default(cls: type, name: str) -> Any:
    """The dataclass default of one field, so defaults live in one place only."""
    for field in dataclasses.fields(cls):
        if field.name == name:
            return field.default
    raise KeyError(name)


def _is_ignored_key(key: str) -> bool:
    return key.startswith("comment") or key.startswith("_")


def _describe(value: Any) -> str:
    """Show a value the way the user wrote it in JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=False)
        try:
            float(value)
        except ValueError:
            return f"{shown} (text)"
        return f"{shown} (text; write the number without quotes)"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _fmt(number: float) -> str:
    """1.0 -> "1", 0.2 -> "0.2"."""
    return str(int(number)) if float(number).is_integer() else str(number)


class _DupDict(dict):
    """A JSON object that remembers keys that appeared more than once."""

    duplicates: tuple[str, ...] = ()


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = _DupDict()
    dups: list[str] = []
    for key, value in pairs:
        if key in result and key not in dups:
            dups.append(key)
        result[key] = value
    if dups:
        result.duplicates = tuple(dups)
    return result


class _Section:
    """Reads the keys of one JSON object and remembers which keys are known."""

    def __init__(self, errors: list[str], path: str, data: dict[str, Any]) -> None:
        self.errors = errors
        self.path = path
        self.data = data
        self.known: list[str] = []
        for key in getattr(data, "duplicates", ()):
            self.fail(key, "appears more than once in this section; keep only one")

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, message: str) -> Any:
        self.errors.append(f"{self.key_path(key)}: {message}")
        return _BAD

    def conflict(self, key: str, value: float, relation: str, other_key: str, other_value: float) -> Any:
        """Report a cross-field rule, e.g. ``a.b (30) must not be above a.c (20)``."""
        first, second = self.key_path(key), self.key_path(other_key)
        self.errors.append(f"{first} ({_fmt(value)}) {relation} {second} ({_fmt(other_value)})")
        return _BAD

    def take(self, key: str) -> Any:
        self.known.append(key)
        return self.data.get(key, _MISSING)

    def string(
        self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] = (), empty_ok: bool = False
    ) -> Any:
        """A string, non-empty unless ``empty_ok``; ``choices`` match case-insensitively."""
        value = self.take(key)
        if value is _MISSING:
            return default if default is not _MISSING else self.fail(key, "missing (required)")
        if choices:
            wanted = "one of " + ", ".join(f'"{c}"' for c in choices)
        else:
            wanted = "a text" if empty_ok else "a non-empty text"
        if not isinstance(value, str):
            return self.fail(key, f"must be {wanted}, got {_describe(value)}")
        if empty_ok and not choices:
            return value
        if not value.strip():
            return self.fail(key, f"must be {wanted}, got an empty text")
        if choices:
            folded = {c.lower(): c for c in choices}
            if value.strip().lower() in folded:
                return folded[value.strip().lower()]
            close = difflib.get_close_matches(value.strip().lower(), list(folded), n=1, cutoff=0.5)
            hint = f'; did you mean "{folded[close[0]]}"?' if close else ""
            return self.fail(key, f"must be {wanted}, got {_describe(value)}{hint}")
        return value.strip()

    def optional_string(self, key: str) -> Any:
        """A string or null; an empty string means "not set" (None)."""
        value = self.take(key)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, str):
            return self.fail(key, f"must be a text or null, got {_describe(value)}")
        return value if value != "" else None

    def boolean(self, key: str, default: bool) -> Any:
        value = self.take(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            return self.fail(key, f"must be true or false, got {_describe(value)}")
        return value

    def integer(self, key: str, default: Any, lo: int, hi: int, *, nullable: bool = False) -> Any:
        value = self.take(key)
        if value is _MISSING or (nullable and value is None):
            return default
        if type(value) is not int or not lo <= value <= hi:
            what = f"an integer {lo}..{hi}" + (" or null" if nullable else "")
            return self.fail(key, f"must be {what}, got {_describe(value)}")
        return value

    def number(self, key: str, default: Any, lo: float, hi: float, *, lo_open: bool = False) -> Any:
        """A finite number (int or float, not bool) in [lo, hi], or (lo, hi] with ``lo_open``."""
        value = self.take(key)
        if value is _MISSING:
            return default
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (lo < value if lo_open else lo <= value)
            and value <= hi
        )
        if not ok:
            what = f"above {_fmt(lo)} and at most {_fmt(hi)}" if lo_open else f"{_fmt(lo)}..{_fmt(hi)}"
            return self.fail(key, f"must be a number {what}, got {_describe(value)}")
        return float(value)

    def section(self, key: str, *, required: bool) -> _Section | None:
        """A nested object; None when absent and not required (or invalid)."""
        value = self.take(key)
        if value is _MISSING:
            if required:
                self.fail(key, "section missing (required); see config.example.json")
            return None
        if not isinstance(value, dict):
            self.fail(key, f"must be an object {{...}}, got {_describe(value)}")
            return None
        return _Section(self.errors, self.key_path(key), value)

    def finish(self, hints: dict[str, str] | None = None) -> None:
        """Report keys that were never read, with a "did you mean" hint for near misses."""
        hints = hints or {}
        by_lower = {k.lower(): k for k in self.known}
        for key in self.data:
            if key in self.known or _is_ignored_key(key):
                continue
            if key in hints:
                self.fail(key, hints[key])
                continue
            match = by_lower.get(key.lower())
            if match is None:
                close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
                match = by_lower[close[0]] if close else None
            hint = f'; did you mean "{match}"?' if match else ""
            allowed = ", ".join(self.known)
            self.fail(key, f"unknown key{hint} (allowed here: {allowed}; comment*/_* keys are ignored)")


def _ok(*values: Any) -> bool:
    return all(v is not _BAD for v in values)


# --------------------------------------------------------------------------- host parsing

_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_DOTTED_DIGITS_RE = re.compile(r"^[0-9.]+$")


def _check_host(host: str) -> str | None:
    """Return a problem description, or None if ``host`` is a valid IPv4/IPv6 address or hostname."""
    if _DOTTED_DIGITS_RE.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "not a valid IPv4 address"
        return None
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "not a valid IPv6 address"
        return None
    if not _HOSTNAME_RE.match(host):
        return "not a valid IP address or host name"
    return None


def parse_host_port(text: str, default_port: int = DEFAULT_METER_PORT) -> tuple[str, int]:
    """Split "host", "host:port", "[v6]" or "[v6]:port"; raise ValueError with a plain reason."""
    text = text.strip()
    if "://" in text or "/" in text:
        raise ValueError("write only the address (like 192.168.1.100 or 192.168.1.100:8080), no http://")
    if any(c.isspace() for c in text):
        raise ValueError("must not contain spaces")
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ] after an IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected :port after ]")
            port_text = rest[1:]
        if ":" not in host:
            raise ValueError("only IPv6 addresses go in [brackets]")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text  # a hostname, IPv4, or a bare IPv6 address without a port
    if not host:
        raise ValueError("host is empty")
    problem = _check_host(host)
    if problem:
        raise ValueError(problem)
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("port must be 1..65535")
    return host, int(port_text)


# --------------------------------------------------------------------------- sections


def _meter_common(sec: _Section) -> dict[str, Any]:
    """The keys every meter section has (``MeterCommon``), by field name; a value may be _BAD."""
    m = MeterCommon
    return {
        "timeout_seconds": sec.number("timeout_seconds", _default(m, "timeout_seconds"), 0, 60, lo_open=True),
        "max_failures_before_stop": sec.integer(
            "max_failures_before_stop", _default(m, "max_failures_before_stop"), 1, 100),
        "check_interval_seconds": sec.number(
            "check_interval_seconds", _default(m, "check_interval_seconds"), 0.2, 3600),
        # Up to a day: a very large value effectively switches the frozen-reading check off.
        "max_frozen_seconds": sec.number("max_frozen_seconds", _default(m, "max_frozen_seconds"), 5, 86400),
    }


_NO_PASSWORD = {"ecotracker": "the EcoTracker has no password; remove this key",
                "homewizard": "the HomeWizard local API v1 has no password; remove this key"}


def _meter(sec: _Section, kind: str) -> ShellyConfig | EcoTrackerConfig | HomeWizardConfig | HttpJsonConfig | None:
    """One HTTP meter section; ``kind`` is its energy_meter.type ("shelly", "ecotracker", "homewizard",
    "http_json")."""
    if kind == "http_json":
        return _http_json(sec)
    ip = sec.string("ip")
    host, port = _BAD, _BAD
    if _ok(ip):
        try:
            host, port = parse_host_port(ip)
        except ValueError as exc:
            sec.fail("ip", f"{exc}, got {json.dumps(ip, ensure_ascii=False)}")
    common = _meter_common(sec)
    if kind == "shelly":
        password = sec.optional_string("password")
        channels = _shelly_channels(sec)
        user = sec.string("user", _default(ShellyConfig, "user"))
        sec.finish()
        if not _ok(ip, host, port, password, channels, user, *common.values()):
            return None
        return ShellyConfig(ip=ip, host=host, port=port, password=password, channels=channels, user=user, **common)
    sec.finish({"password": _NO_PASSWORD[kind]})
    if not _ok(ip, host, port, *common.values()):
        return None
    section = EcoTrackerConfig if kind == "ecotracker" else HomeWizardConfig
    return section(ip=ip, host=host, port=port, **common)


def _http_json(sec: _Section) -> HttpJsonConfig | None:
    url = sec.string("url")
    host, port = _BAD, _BAD
    if _ok(url):
        try:
            host, port = _parse_url(url)
        except ValueError as exc:
            url = sec.fail("url", f"{exc}, got {json.dumps(url, ensure_ascii=False)}")
    power_path = _power_path(sec)
    username = sec.optional_string("username")
    common = _meter_common(sec)
    password = sec.optional_string("password")
    sec.finish()
    if not _ok(url, host, port, power_path, username, password, *common.values()):
        return None
    return HttpJsonConfig(url=url, host=host, port=port, power_path=power_path, username=username,
                          password=password, **common)


def _shelly_channels(sec: _Section) -> Any:
    value = sec.take("channels")
    if value is _MISSING or value is None:
        return None
    wanted = f"a non-empty list of channel numbers 0..{_MAX_SHELLY_CHANNEL} like [0] or [0, 1, 2]"
    if not isinstance(value, list) or not value:
        return sec.fail("channels", f"must be {wanted}, got {_describe(value)}")
    for item in value:
        if type(item) is not int or not 0 <= item <= _MAX_SHELLY_CHANNEL:
            return sec.fail("channels", f"must be {wanted}, got {_describe(item)} in the list")
    if len(set(value)) != len(value):
        return sec.fail("channels", "names a channel more than once")
    return tuple(value)


_PATH_PART_RE = re.compile(r"^[^.\s]+$")


def _power_path(sec: _Section) -> Any:
    path = sec.string("power_path")
    if _ok(path) and not all(_PATH_PART_RE.match(part) for part in path.split(".")):
        return sec.fail("power_path", f"must be keys separated by dots like \"StatusSNS.SML.Power_curr\", "
                                      f"got {json.dumps(path, ensure_ascii=False)}")
    return path


def _parse_url(url: str) -> tuple[str, int]:
    """(host, port) of an http:// or https:// URL; ValueError with a plain reason."""
    from urllib.parse import urlsplit

    if any(c.isspace() for c in url):
        raise ValueError("must not contain spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL (port 1..65535?)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be a full URL like http://192.168.1.50/cm?cmnd=Status%2010")
    if parts.username or parts.password:
        raise ValueError("put the user name and password into username / password, not into the URL")
    problem = _check_host(parts.hostname)
    if problem:
        raise ValueError(problem)
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _battery(sec: _Section) -> BatteryConfig | None:
    b = BatteryConfig
    units_form = "units" in sec.data
    if units_form:
        for key in ("ip", "akku_ids"):
            if key in sec.data:
                sec.fail("units", f"cannot be combined with battery.{key}: list every battery in battery.units "
                                  f"(with its own ip) and remove battery.{key}")
        sec.known += ["ip", "akku_ids"]
        ip, akku_ids = "", ()
    else:
        ip = _seed_ip(sec)
        akku_ids = _akku_ids(sec)
    port = sec.integer("port", _default(b, "port"), 1, 65535)
    timeout = sec.number("timeout_seconds", _default(b, "timeout_seconds"), 0, 60, lo_open=True)
    max_w = sec.integer("max_power_per_battery", _default(b, "max_power_per_battery"), 1, FIRMWARE_MAX_POWER_W)
    min_w = sec.integer("min_power_per_battery", _default(b, "min_power_per_battery"), 1, FIRMWARE_MAX_POWER_W)
    min_soc = sec.number("min_soc_for_discharge", _default(b, "min_soc_for_discharge"), 0, 100)
    max_soc = sec.number("max_soc_for_charge", _default(b, "max_soc_for_charge"), 0, 100)
    register_set = sec.string("register_set", _default(b, "register_set"), choices=tuple(REGISTER_SETS))
    pacing = sec.integer("pacing_ms", None, MIN_PACING_MS, 5000, nullable=True)
    framer = sec.string("framer", _default(b, "framer"), choices=FRAMERS)
    units_value = sec.take("units")
    on_exit = sec.string("on_exit", _default(b, "on_exit"), choices=ON_EXIT_CHOICES)
    rs485 = sec.boolean("rs485_gateway", _default(b, "rs485_gateway"))
    sec.finish()
    if _ok(min_w, max_w) and min_w > max_w:
        min_w = sec.conflict(
            "min_power_per_battery", min_w, "must not be above", "max_power_per_battery", max_w
        )
    if _ok(min_soc, max_soc) and min_soc >= max_soc:
        min_soc = sec.conflict(
            "min_soc_for_discharge", min_soc, "must be below", "max_soc_for_charge", max_soc
        )
    if not _ok(ip, port, timeout, akku_ids, max_w, min_w, min_soc, max_soc, register_set, pacing, framer,
                on_exit, rs485):
        return None
    defaults = UnitConfig(host="", port=port, unit_id=1, register_set=register_set, max_power_per_battery=max_w,
                          min_power_per_battery=min_w, name="", framer=framer, rs485_gateway=rs485)
    if units_form:
        listed = _units(sec, units_value, defaults)
        if listed is None:
            return None
        units = listed
    else:
        seed_ids: tuple[int, ...] = akku_ids
        units = tuple(replace(defaults, host=ip, unit_id=i, name=f"Akku {i}", uid=f"akku_{i}") for i in seed_ids)
        problem = v3_lan_problem(units, units_form=False)
        if problem is not None:
            sec.errors.append(problem)
            return None
    return BatteryConfig(ip=ip, port=port, timeout_seconds=timeout, akku_ids=akku_ids, max_power_per_battery=max_w,
                         min_power_per_battery=min_w, min_soc_for_discharge=min_soc, max_soc_for_charge=max_soc,
                         register_set=register_set, pacing_ms=pacing, framer=framer, units=units,
                         units_form=units_form, on_exit=on_exit, rs485_gateway=rs485)


def _seed_ip(sec: _Section) -> Any:
    ip = sec.string("ip")
    if not _ok(ip):
        return ip
    shown = json.dumps(ip, ensure_ascii=False)
    try:
        host, inline_port = parse_host_port(ip, default_port=0)
    except ValueError as exc:
        return sec.fail("ip", f"{exc}, got {shown}")
    if inline_port:
        return sec.fail("ip", f"write only the address; the port goes into battery.port, got {shown}")
    return host


def _units(sec: _Section, value: Any, defaults: UnitConfig) -> tuple[UnitConfig, ...] | None:
    """``battery.units``: every battery with its own gateway; errors name ``battery.units[<i>].<key>``."""
    if not isinstance(value, list) or not value:
        sec.fail("units", f'must be a non-empty list of batteries like [{{"ip": "192.168.1.50"}}], '
                          f"got {_describe(value)}")
        return None
    units: list[UnitConfig] = []
    ok = True
    for i, item in enumerate(value):
        path = f"{sec.key_path('units')}[{i}]"
        if not isinstance(item, dict):
            sec.errors.append(f"{path}: must be an object like {{\"ip\": \"192.168.1.50\"}}, got {_describe(item)}")
            ok = False
            continue
        unit = _unit(_Section(sec.errors, path, item), defaults, len(units) + 1)
        if unit is None:
            ok = False
        else:
            units.append(unit)
    if not ok:
        return None
    return _check_gateways(sec, units)


def _unit(sec: _Section, d: UnitConfig, n: int) -> UnitConfig | None:
    ip = sec.string("ip")
    host, inline_port = _BAD, None
    if _ok(ip):
        try:
            host, port_in_ip = parse_host_port(ip, default_port=0)
            inline_port = port_in_ip or None
        except ValueError as exc:
            sec.fail("ip", f"{exc}, got {json.dumps(ip, ensure_ascii=False)}")
    explicit_port = sec.integer("port", None, 1, 65535)
    port = inline_port or explicit_port or d.port
    if inline_port and _ok(explicit_port) and explicit_port is not None and explicit_port != inline_port:
        port = sec.fail("port", f"{explicit_port} contradicts the port {inline_port} written in ip; keep only one")
    unit_id = sec.integer("id", 1, 1, 247)
    register_set = sec.string("register_set", d.register_set, choices=tuple(REGISTER_SETS))
    max_w = sec.integer("max_power_per_battery", d.max_power_per_battery, 1, FIRMWARE_MAX_POWER_W)
    min_w = sec.integer("min_power_per_battery", d.min_power_per_battery, 1, FIRMWARE_MAX_POWER_W)
    name = sec.string("name", f"Akku {n}")
    if _ok(name) and len(name) > MAX_NAME_CHARS:
        name = sec.fail("name", f"must be at most {MAX_NAME_CHARS} characters, got {len(name)}")
    framer = sec.string("framer", d.framer, choices=FRAMERS)
    rs485 = sec.boolean("rs485_gateway", d.rs485_gateway)
    uid = sec.string("uid", None)
    if _ok(uid) and uid is not None and not UID_PATTERN.fullmatch(uid):
        uid = sec.fail("uid", f"must be 1 to 64 of a-z, 0-9, _ and - (starting with a letter or digit), got "
                              f"{json.dumps(uid, ensure_ascii=False)}")
    sec.finish()
    if _ok(min_w, max_w) and min_w > max_w:
        min_w = sec.conflict("min_power_per_battery", min_w, "must not be above", "max_power_per_battery", max_w)
    if not _ok(host, port, explicit_port, unit_id, register_set, max_w, min_w, name, framer, rs485, uid):
        return None
    return UnitConfig(host=host, port=port, unit_id=unit_id, register_set=register_set, max_power_per_battery=max_w,
                      min_power_per_battery=min_w, name=name, framer=framer, rs485_gateway=rs485, uid=uid or "")


def _check_gateways(sec: _Section, units: list[UnitConfig]) -> tuple[UnitConfig, ...] | None:
    """No battery twice; the units of one gateway share its register set, framer and ``rs485_gateway`` (one
    connection); several IDs on one v3 host only behind an RS485 gateway."""
    first: dict[str, int] = {}
    keys: dict[str, int] = {}
    uids: dict[str, int] = {}
    ok = True
    for i, u in enumerate(units):
        path = f"{sec.key_path('units')}[{i}]"
        if u.uid in uids:
            sec.errors.append(f"{path}: uid {json.dumps(u.uid)} (from its uid or name) is already the uid of "
                              f"battery.units[{uids[u.uid]}]; give each battery its own name or uid")
            ok = False
        uids.setdefault(u.uid, i)
        key = u.key.lower()
        if key in keys:
            sec.errors.append(f"{path}: the same battery as battery.units[{keys[key]}] "
                              f"(host, port and id {u.key}); give it its own id or remove it")
            ok = False
            continue
        keys[key] = i
        gateway = u.gateway.lower()
        j = first.setdefault(gateway, i)
        other = units[j]
        for field_name in ("register_set", "framer", "rs485_gateway"):
            mine, theirs = getattr(u, field_name), getattr(other, field_name)
            if mine != theirs:
                sec.errors.append(
                    f"{path}.{field_name}: {json.dumps(mine)} differs from {json.dumps(theirs)} of battery.units[{j}] "
                    f"on the same gateway {u.gateway}; the units behind one gateway share its connection and must "
                    f"agree")
                ok = False
    if not ok:
        return None
    problem = v3_lan_problem(units, units_form=True)
    if problem is not None:
        sec.errors.append(problem)
        return None
    return tuple(units)


def v3_lan_problem(units: Sequence[UnitConfig], *, units_form: bool) -> str | None:
    """The problem line when several unit IDs share one v3 host:port that is not declared ``rs485_gateway``:
    a v3 battery on its own LAN port answers on every unit ID. Named ``battery.akku_ids`` (seed form) or
    ``battery.units[<i>]`` of the second such unit; None when every v3 host has one ID (or an RS485 gateway)."""
    seen: set[str] = set()
    for i, u in enumerate(units):
        if u.register_set != "v3" or u.rs485_gateway:
            continue
        gateway = u.gateway.lower()
        if gateway not in seen:
            seen.add(gateway)
            continue
        ids = ", ".join(str(v.unit_id) for v in units if v.gateway.lower() == gateway)
        if units_form:
            key, hint = f"battery.units[{i}]", "set rs485_gateway: true on these units (or in the battery section)"
        else:
            key, hint = "battery.akku_ids", "set battery.rs485_gateway: true"
        return (f"{key}: several unit IDs ({ids}) on the v3 host {u.gateway}: a Venus E v3 / A / D on its own LAN "
                f"port answers on every unit ID, so these IDs would all drive the same battery. Use one battery "
                f"per IP: list each in battery.units with its own ip. If they really sit behind an RS485 "
                f"gateway, {hint}")
    return None


def _akku_ids(sec: _Section) -> Any:
    value = sec.take("akku_ids")
    if value is _MISSING:
        return _default(BatteryConfig, "akku_ids")
    if not isinstance(value, list) or not value:
        return sec.fail("akku_ids", f"must be a non-empty list of IDs like [1, 2], got {_describe(value)}")
    seen: set[int] = set()
    for item in value:
        if type(item) is not int or not 1 <= item <= 247:
            return sec.fail("akku_ids", f"each id must be an integer 1..247, got {_describe(item)}")
        if item in seen:
            return sec.fail("akku_ids", f"duplicate id {item}")
        seen.add(item)
    return tuple(value)


def _control(sec: _Section | None) -> ControlConfig | None:
    c = ControlConfig
    if sec is None:
        return c()
    poll = sec.number("poll_interval_seconds", _default(c, "poll_interval_seconds"), 0.2, 60)
    soc = sec.number("soc_update_interval_seconds", _default(c, "soc_update_interval_seconds"), 1, 3600)
    charge = sec.number("target_grid_power_charge", _default(c, "target_grid_power_charge"), *_TARGET_RANGE_W)
    discharge = sec.number(
        "target_grid_power_discharge", _default(c, "target_grid_power_discharge"), *_TARGET_RANGE_W
    )
    algorithm = sec.string("algorithm", _default(c, "algorithm"), choices=ALGORITHMS)
    average = sec.boolean("average_readings", _default(c, "average_readings"))
    deadband = sec.number("deadband_w", _default(c, "deadband_w"), 0, 1000)
    distribution = sec.string("distribution", _default(c, "distribution"), choices=DISTRIBUTIONS)
    sec.finish()
    if _ok(charge, discharge) and charge > discharge:
        charge = sec.conflict(
            "target_grid_power_charge", charge, "must not be above", "target_grid_power_discharge", discharge
        )
    if not _ok(poll, soc, charge, discharge, algorithm, average, deadband, distribution):
        return None
    return ControlConfig(poll_interval_seconds=poll, soc_update_interval_seconds=soc,
                         target_grid_power_charge=charge, target_grid_power_discharge=discharge,
                         algorithm=algorithm, average_readings=average, deadband_w=deadband,
                         distribution=distribution)


def _web(sec: _Section | None) -> WebConfig | None:
    w = WebConfig
    if sec is None:
        return w()
    host = sec.string("host", _default(w, "host"))
    port = sec.integer("port", _default(w, "port"), 1, 65535)
    password = sec.optional_string("password")
    language = sec.string("language", _default(w, "language"), choices=LANGUAGES)
    read_only = sec.boolean("read_only_without_login", _default(w, "read_only_without_login"))
    setup_timeout = sec.integer("setup_timeout_minutes", _default(w, "setup_timeout_minutes"), 1, 1440)
    allowed_hosts = _host_names(sec, "allowed_hosts")
    session_days = sec.number("session_days", _default(w, "session_days"), 0, 3650, lo_open=True)
    trusted_proxies = _ip_networks(sec, "trusted_proxies")
    sec.finish()
    if not _ok(host, port, password, language, read_only, setup_timeout, allowed_hosts, session_days, trusted_proxies):
        return None
    return WebConfig(host=host, port=port, password=password, language=language, read_only_without_login=read_only,
                     setup_timeout_minutes=setup_timeout, allowed_hosts=allowed_hosts, session_days=session_days,
                     trusted_proxies=trusted_proxies)


_HOST_NAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


def _host_names(sec: _Section, key: str) -> Any:
    """A list of DNS host names (lower case, no port, no scheme)."""
    value = sec.take(key)
    if value is _MISSING or value is None:
        return ()
    if not isinstance(value, list):
        return sec.fail(key, f'must be a list of host names, e.g. ["marstek.fritz.box"], got {_describe(value)}')
    names = []
    for item in value:
        if not isinstance(item, str) or not _HOST_NAME_RE.match(item.strip().lower()):
            return sec.fail(key, f'each entry must be a host name without port or "http://", got {_describe(item)}')
        names.append(item.strip().lower())
    return tuple(names)


def _ip_networks(sec: _Section, key: str) -> Any:
    """A list of IP addresses or networks ("192.168.1.2", "10.0.0.0/8"), normalised."""
    value = sec.take(key)
    if value is _MISSING or value is None:
        return ()
    if not isinstance(value, list):
        return sec.fail(key, f'must be a list of IP addresses, e.g. ["127.0.0.1"], got {_describe(value)}')
    networks = []
    for item in value:
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except (AttributeError, ValueError):
            return sec.fail(key, f"each entry must be an IP address or network, got {_describe(item)}")
    return tuple(networks)


def _logging(sec: _Section | None, base_dir: Path | None) -> LoggingConfig | None:
    lc = LoggingConfig
    if sec is None:
        sec = _Section([], "logging", {})  # all defaults, but the file path still gets resolved
    level = sec.string("level", _default(lc, "level"), choices=LOG_LEVELS)
    file = sec.string("file", _default(lc, "file"))
    size = sec.number("max_file_size_mb", _default(lc, "max_file_size_mb"), 0, 1000, lo_open=True)
    backups = sec.integer("backup_count", _default(lc, "backup_count"), 0, 100)
    sec.finish()
    if not _ok(level, file, size, backups):
        return None
    if base_dir is not None and not Path(file).is_absolute():
        file = str(Path(base_dir) / file)
    return LoggingConfig(level=level, file=file, max_file_size_mb=size, backup_count=backups)


def _mqtt(sec: _Section | None) -> MqttConfig | Any | None:
    """The broker section; None when absent or ``host`` is null (MQTT off)."""
    if sec is None:
        return None
    m = MqttConfig
    host = sec.take("host")
    if host is None or host is _MISSING:
        host = None
    elif not isinstance(host, str) or not host.strip():
        host = sec.fail("host", f"must be a host name or IP address, or null (MQTT off), got {_describe(host)}")
    elif (problem := _check_host(host.strip())) is not None:
        host = sec.fail("host", f"{problem}, got {json.dumps(host, ensure_ascii=False)}")
    else:
        host = host.strip()
    port = sec.integer("port", _default(m, "port"), 1, 65535)
    username = sec.optional_string("username")
    password = sec.optional_string("password")
    prefix = sec.string("topic_prefix", _default(m, "topic_prefix"))
    discovery = sec.string("discovery_prefix", _default(m, "discovery_prefix"))
    client_id = sec.string("client_id", _default(m, "client_id"))
    for key, value in (("topic_prefix", prefix), ("discovery_prefix", discovery)):
        if _ok(value) and (any(c in value for c in "#+") or value.startswith("/") or value.endswith("/")):
            sec.fail(key, f"must be a topic without wildcards (# +) and without a leading or trailing /, got "
                          f"{json.dumps(value, ensure_ascii=False)}")
            prefix = _BAD if key == "topic_prefix" else prefix
            discovery = _BAD if key == "discovery_prefix" else discovery
    sec.finish()
    if not _ok(host, port, username, password, prefix, discovery, client_id):
        return _BAD
    if host is None:
        return None
    return MqttConfig(host=host, port=port, username=username, password=password, topic_prefix=prefix,
                      discovery_prefix=discovery, client_id=client_id)


def _mqtt_meter(sec: _Section) -> MqttMeterConfig | None:
    topic = sec.string("topic")
    if _ok(topic) and any(c in topic for c in "#+"):
        topic = sec.fail("topic", f"must be one topic without wildcards (# +), got {json.dumps(topic)}")
    path = sec.optional_string("power_path")
    if _ok(path) and path is not None and any(not part for part in path.split(".")):
        path = sec.fail("power_path", f'must be a dotted path like "ENERGY.Power" or null, got {json.dumps(path)}')
    max_age = sec.number("max_age_seconds", _default(MqttMeterConfig, "max_age_seconds"), 0, 3600, lo_open=True)
    common = _meter_common(sec)
    sec.finish()
    if not _ok(topic, path, max_age, *common.values()):
        return None
    return MqttMeterConfig(topic=topic, power_path=path, max_age_seconds=max_age, **common)


def _history(sec: _Section | None, base_dir: Path | None) -> HistoryConfig | None:
    hc = HistoryConfig
    if sec is None:
        sec = _Section([], "history", {})  # all defaults, but the path still gets resolved
    path = sec.string("path", _default(hc, "path"))
    retention = sec.integer("retention_days", _default(hc, "retention_days"), 1, 3650)
    sec.finish()
    if not _ok(path, retention):
        return None
    if base_dir is not None and path != ":memory:" and not Path(path).is_absolute():
        path = str(Path(base_dir) / path)
    return HistoryConfig(path=path, retention_days=retention)


def _plan(sec: _Section | None, battery: BatteryConfig | None, has_tariff: bool) -> PlanConfig | Any | None:
    """The ``plan`` section; None when absent. ``enabled`` needs a ``tariff`` section."""
    if sec is None:
        return None
    p = PlanConfig
    enabled = sec.boolean("enabled", _default(p, "enabled"))
    reserve = sec.number("reserve_soc_pct", _default(p, "reserve_soc_pct"), 0, 100)
    grid_charge = sec.number("grid_charge_max_w", _default(p, "grid_charge_max_w"), 0, 100_000)
    wear = sec.number("wear_ct_per_kwh", _default(p, "wear_ct_per_kwh"), 0, 100)
    peak = sec.take("peak_import_limit_w")
    if peak is _MISSING or peak is None:
        peak = None
    elif isinstance(peak, bool) or not isinstance(peak, (int, float)) or not math.isfinite(peak) or peak <= 0:
        peak = sec.fail("peak_import_limit_w", f"must be a number above 0 (W) or null, got {_describe(peak)}")
    else:
        peak = float(peak)
    sec.finish()
    if _ok(reserve) and battery is not None and not (
            battery.min_soc_for_discharge <= reserve <= battery.max_soc_for_charge):
        # The fast loop never discharges below its floor nor charges above its ceiling: a reserve outside
        # could never be kept.
        reserve = sec.fail("reserve_soc_pct", f"({_fmt(reserve)}) must be within battery.min_soc_for_discharge "
                                              f"({_fmt(battery.min_soc_for_discharge)}) .. battery.max_soc_for_charge "
                                              f"({_fmt(battery.max_soc_for_charge)})")
    if _ok(enabled) and enabled and not has_tariff:
        enabled = sec.fail("enabled", "true needs a tariff section (the prices to plan with); see README "
                                      '"Plan nach Strompreis", or set plan.enabled to false')
    if not _ok(enabled, reserve, grid_charge, wear, peak):
        return _BAD
    return PlanConfig(enabled, reserve, grid_charge, wear, peak)


def parse_config(data: object, *, base_dir: Path | None = None) -> Config:
    """Validate an already-loaded JSON value; raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: must be a JSON object {{...}}, got {_describe(data)}")
    errors: list[str] = []
    top = _Section(errors, "", data)
    description = top.string("description", "", empty_ok=True)
    version = top.string("version", "", empty_ok=True)

    meter_type: Any = "shelly"
    invert: Any = False
    em = top.section("energy_meter", required=False)
    if em is not None:
        meter_type = em.string("type", "shelly", choices=METER_TYPES)
        invert = em.boolean("invert", False)
        em.finish()

    # Every meter section present is checked; only the selected one is kept.
    meter: MeterSection | None = None
    for name in _HTTP_METERS:
        sec = top.section(METER_SECTIONS[name], required=meter_type == name)
        if sec is not None:
            section = _meter(sec, name)
            meter = section if name == meter_type else meter

    battery_sec = top.section("battery", required=True)
    battery = _battery(battery_sec) if battery_sec is not None else None
    control = _control(top.section("control", required=False))
    web = _web(top.section("web", required=False))
    log = _logging(top.section("logging", required=False), base_dir)
    mqtt = _mqtt(top.section("mqtt", required=False))
    mqtt_meter_sec = top.section("mqtt_meter", required=meter_type == "mqtt")
    if mqtt_meter_sec is not None:
        mqtt_meter = _mqtt_meter(mqtt_meter_sec)
        meter = mqtt_meter if meter_type == "mqtt" else meter
    if meter_type == "mqtt" and mqtt is None:
        errors.append('mqtt.host: energy_meter.type "mqtt" needs a broker: the mqtt section with a host')
    plan = _plan(top.section("plan", required=False), battery, isinstance(data.get("tariff"), dict))
    history = _history(top.section("history", required=False), base_dir)
    # Prices, forecasts and the plan (issue 20): each section parsed by its own module.
    tariff = parse_tariff(top.section("tariff", required=False))
    forecast = parse_forecast(top.section("forecast", required=False))
    top.finish()

    if errors:
        raise ConfigError(errors)
    assert battery and control and web and log and history and meter
    return Config(
        meter=meter,
        battery=battery,
        control=control,
        web=web,
        logging=log,
        history=history,
        description=description,
        version=version,
        mqtt=mqtt,
        plan=plan,
        energy_meter_invert=invert,
        tariff=tariff,
        forecast=forecast,
        source=copy.deepcopy(data),
    )


# --------------------------------------------------------------------------- files


def default_config_path() -> Path:
    """config.json beside this module, independent of the working directory."""
    return Path(__file__).resolve().parent / "config.json"


def _read_json(path: Path) -> Any:
    """Read and decode a JSON file; every failure becomes a one-line ConfigError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(i18n.Msg("config_file_missing", path=str(path), name=path.name)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows like to add a BOM
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty; copy config.example.json and adjust it")
    try:
        return json.loads(text, object_pairs_hook=_pairs_hook)
    except json.JSONDecodeError as exc:
        raise ConfigError(i18n.Msg("config_not_json", path=str(path), line=exc.lineno, column=exc.colno,
                                   error=exc.msg)) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None


def load_config(path: Path | str) -> Config:
    """Read ``path`` and validate it; raise ConfigError with a user-facing message."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must contain a JSON object {{...}}, got {_describe(data)}")
    return parse_config(data, base_dir=path.resolve().parent)


def read_sections(path: Path | str, names: tuple[str, ...]) -> dict[str, Any]:
    """The top-level sections ``names`` of the config file at ``path``, as written (absent ones left out), for
    ``--demo --config``; a relative ``history.path`` is made absolute against the file's folder. Raises
    ConfigError for a file that cannot be read or is not a JSON object; the sections are checked by
    ``parse_config`` where they are used."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must contain a JSON object {{...}}, got {_describe(data)}")
    sections = {name: data[name] for name in names if name in data}
    history = sections.get("history")
    if isinstance(history, dict) and isinstance(history.get("path"), str) and history["path"].strip() \
            and history["path"] != ":memory:":
        history = dict(history)
        history["path"] = str(path.resolve().parent / history["path"])  # an absolute path stays as it is
        sections["history"] = history
    return sections


def update_akku_ids(path: Path | str, akku_ids: list[int]) -> Config:
    """Set ``battery.akku_ids`` in the file, keeping every other key and its order.

    The result is validated before anything is written; the old file is kept as
    ``<name>.bak``; the new file replaces the old one atomically.
    """
    def change(data: dict[str, Any]) -> None:
        battery = data.get("battery")
        if not isinstance(battery, dict):
            raise ConfigError(f"battery: must be an object {{...}}, got {_describe(battery)}")
        battery["akku_ids"] = list(akku_ids)

    return _edit(Path(path), change)


def unit_entry(battery: BatteryConfig, gateway: str, unit_id: int) -> dict[str, Any]:
    """The ``battery.units`` item for a new unit on a configured gateway (inherits its register set, framer and
    ``rs485_gateway``)."""
    like = next((u for u in battery.units if u.gateway == gateway), None)
    if like is None:
        raise ConfigError(f"battery.units: no configured gateway {gateway}")
    ip = like.host if like.port == battery.port else gateway
    entry: dict[str, Any] = {"ip": ip, "id": unit_id}
    if like.register_set != battery.register_set:
        entry["register_set"] = like.register_set
    if like.framer != battery.framer:
        entry["framer"] = like.framer
    if like.rs485_gateway != battery.rs485_gateway:
        entry["rs485_gateway"] = like.rs485_gateway
    return entry


def add_unit_to_document(data: dict[str, Any], gateway: str, unit_id: int, *,
                         base_dir: Path | None = None) -> Config:
    """Add unit ``unit_id`` behind ``gateway`` to the config document ``data`` (changed in place) in the form it
    uses (``units`` or ``akku_ids``) and validate the result; raises ConfigError (``data`` is then unusable)."""
    current = parse_config(data, base_dir=base_dir).battery
    battery = data["battery"]
    if current.units_form:
        battery["units"].append(unit_entry(current, gateway, unit_id))
    else:
        if gateway not in current.gateways:
            raise ConfigError(f"battery.ip: the configured gateway is {current.gateways[0]}, not {gateway}")
        battery["akku_ids"] = [*current.akku_ids, unit_id]
    return parse_config(data, base_dir=base_dir)


def add_unit_to_config(path: Path | str, gateway: str, unit_id: int) -> Config:
    """Add unit ``unit_id`` behind ``gateway`` to the file in the form it uses (``units`` or ``akku_ids``).

    Validated before anything is written; the old file is kept as ``<name>.bak``; atomic replace.
    """
    path = Path(path)
    return _edit(path, lambda data: add_unit_to_document(data, gateway, unit_id, base_dir=path.resolve().parent))


def set_web_password(path: Path | str, password_hash: str) -> Config:
    """Store ``web.password`` (a salted hash from ``--set-password`` or /onboarding) in the file.

    Every other key keeps its value and order; validated before writing; ``<name>.bak``; atomic replace.
    """
    def change(data: dict[str, Any]) -> None:
        web = data.setdefault("web", {})
        if not isinstance(web, dict):
            raise ConfigError(f"web: must be an object {{...}}, got {_describe(web)}")
        web["password"] = password_hash

    return _edit(Path(path), change)


def update_sections(path: Path | str, sections: Mapping[str, Any],
                    keep: Callable[[str, Any, Any], Any] | None = None) -> Config:
    """Replace the top-level ``sections`` of the file (a value None removes the section), keeping every other
    key and its order; ``keep(name, old, new)`` may return the value to store instead (e.g. a write-only token
    kept from ``old``). Validated exactly as at start before anything is written; ``<name>.bak``; atomic
    replace. Raises ConfigError (each problem with its key path) and leaves the file untouched then."""
    def change(data: dict[str, Any]) -> None:
        for name, value in sections.items():
            if keep is not None:
                value = keep(name, data.get(name), value)
            if value is None:
                data.pop(name, None)
            else:
                data[name] = value

    return _edit(Path(path), change)


# One edit of a config file at a time in this process: the settings page, setup's add-to-config and the
# onboarding password each read, change and write the whole file; interleaved, one would undo the other.
_EDITING = threading.Lock()


def _edit(path: Path, change: Callable[[dict[str, Any]], object]) -> Config:
    """Read the file, ``change`` the document in place, validate it and save it (atomically, with a backup),
    all under ``_EDITING``; raises ConfigError and leaves the file untouched on any problem."""
    with _EDITING:
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must contain a JSON object {{...}}, got {_describe(data)}")
        change(data)
        return _validate_and_save(path, data)


def _validate_and_save(path: Path, data: dict[str, Any]) -> Config:
    """Validate the changed document before anything is written, then write it atomically with a backup."""
    config = parse_config(data, base_dir=path.resolve().parent)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        _write_atomically(path, text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the file: {exc.strerror or exc}") from None
    return config


def _write_atomically(path: Path, text: str) -> None:
    """Back up the old file as ``<name>.bak``, then replace the file; both atomically (temp file beside it,
    fsync, rename), so neither a crash nor a full disk ever leaves a cut-off file or backup."""
    old = path.read_bytes()
    mode = path.stat().st_mode & 0o777  # keep the owner's permissions (the file may hold passwords)
    replace_file(path.with_name(path.name + ".bak"), old, mode)
    replace_file(path, text.encode("utf-8"), mode)


def replace_file(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a temp file beside ``path`` (``.<name>.<random>.tmp``), fsync it, give it ``mode``
    and rename it over ``path``; the temp file is removed when anything fails."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        if mode is not None and sys.platform != "win32":  # Windows has ACLs (inherited from the folder)
            os.chmod(tmp_name, mode)
        attempts = 5
        for attempt in range(attempts):
            try:
                os.replace(tmp_name, path)
                break
            except PermissionError:
                # Windows refuses while a virus scanner or indexer briefly holds the file open.
                if sys.platform != "win32" or attempt == attempts - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


STRAY_TEMP_MIN_AGE_S = 10.0  # younger temp files may belong to a write in progress (e.g. --set-password)


def remove_stray_temp_files(*paths: Path, min_age_s: float = STRAY_TEMP_MIN_AGE_S,
                            now_s: float | None = None) -> list[Path]:
    """Remove the temp files a crash left beside ``paths`` (``.<name>.<8 random chars>.tmp``, as ``replace_file``
    and mkstemp name them; ``<name>.bak`` included) that are at least ``min_age_s`` old; the removed ones.
    Only files of exactly that pattern are touched; a folder that cannot be listed is skipped."""
    now = time.time() if now_s is None else now_s
    removed: list[Path] = []
    for path in paths:
        for name in (path.name, path.name + ".bak"):
            pattern = re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}\.tmp")
            try:
                candidates = [p for p in path.parent.glob(f".{name}.*.tmp") if pattern.fullmatch(p.name)]
            except OSError:
                continue
            for stray in candidates:
                try:
                    if now - stray.stat().st_mtime >= min_age_s and stray.is_file():
                        stray.unlink()
                        removed.append(stray)
                except OSError:
                    continue  # gone meanwhile or not ours to remove: never a reason not to start
    return removed


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
