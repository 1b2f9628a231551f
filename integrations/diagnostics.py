"""The diagnostics bundle for a bug report (``GET /api/diagnostics``): one JSON file that says what runs,
how it is configured, what it sees and which device quirks it has met.

Every secret is replaced by ``"***"``: each value under a key named like a password, token, secret or
key (anywhere in the configuration), and then every occurrence of those secret values anywhere in the
bundle (a log message that quoted one, say).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import platform
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config_loader import METER_SECTIONS, Config
from control import i18n
from control.status_store import QuirkCounter, StatusStore, now_iso
from planning.plan_mode import plan_json

REDACTED = "***"
SECRET_KEY_RE = re.compile(r"pass(word|wd)?$|password|token|secret|api_?key|credential|private", re.I)
LIBRARIES = ("flask", "waitress", "pymodbus", "requests", "prometheus-client")
ROOT = Path(__file__).resolve().parent.parent


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY_RE.search(key))


def redact(value: Any) -> tuple[Any, set[str]]:
    """``value`` with every secret-named key's value replaced by "***"; also the secret strings found."""
    found: set[str] = set()

    def walk(v: Any, key: str = "") -> Any:
        if key and is_secret_key(key) and v not in (None, ""):
            if isinstance(v, str):
                found.add(v)
            return REDACTED
        if isinstance(v, dict):
            return {k: walk(item, str(k)) for k, item in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(item) for item in v]
        return v

    return walk(value), found


def scrub(value: Any, secrets: set[str]) -> Any:
    """Every occurrence of a secret string (also inside longer texts) replaced by "***"."""
    wanted = sorted((s for s in secrets if s), key=len, reverse=True)
    if not wanted:
        return value
    pattern = re.compile("|".join(re.escape(s) for s in wanted))

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return pattern.sub(REDACTED, v)
        if isinstance(v, dict):
            return {walk(k): walk(item) for k, item in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(item) for item in v]
        return v

    return walk(value)


def _git_version() -> str | None:
    """``git describe`` of the program's folder, when it is a git checkout (asked once at start)."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=ROOT, capture_output=True,
                              text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


@functools.cache
def program_version() -> str:
    """The program's version (``git describe`` of its folder, asked once), ``"unknown"`` outside a checkout:
    the one version the diagnostics bundle and Home Assistant's device ``sw_version`` show."""
    return _git_version() or "unknown"


def versions() -> dict[str, Any]:
    libs: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            libs[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libs[name] = None
    libs["sqlite"] = sqlite3.sqlite_version
    return {
        "program": program_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": libs,
    }


def config_document(cfg: Config) -> dict[str, Any]:
    """The configuration as plain data, the selected meter under its section's name (``"shelly"``,
    ``"mqtt_meter"``, ...) beside ``energy_meter_type``, as the bundle has always shown it."""
    doc = dataclasses.asdict(cfg)
    doc.pop("meter")
    return {"energy_meter_type": cfg.energy_meter_type,
            METER_SECTIONS[cfg.energy_meter_type]: dataclasses.asdict(cfg.meter), **doc}


class Diagnostics:
    """Builds the bundle from the config, the status store and what the threads have counted."""

    def __init__(
        self,
        cfg: Config,
        store: StatusStore,
        *,
        meter: Any = None,
        quirks: QuirkCounter | None = None,
        history: Any = None,
        clock: Callable[[], str] = now_iso,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.meter = meter
        self.quirks = quirks
        self.history = history
        self.clock = clock
        self._versions = versions()

    def meter_identity(self) -> dict[str, Any]:
        """Type and address from the config; the detected device kind where the driver knows one (Shelly)."""
        meter_cfg = self.cfg.meter
        identity: dict[str, Any] = {"type": self.cfg.energy_meter_type, "address": meter_cfg.address}
        if self.meter is not None:
            identity["driver"] = getattr(self.meter, "name", type(self.meter).__name__)
            if hasattr(self.meter, "kind"):
                identity["kind"] = self.meter.kind
        return identity

    def batteries(self) -> list[dict[str, Any]]:
        """Per configured battery: where it is and what was read from it at start."""
        facts = self.store.battery_facts()
        return [{"key": u.key, "name": u.name, "id": u.unit_id, "gateway": u.gateway, "register_set": u.register_set,
                 "rs485_gateway": u.rs485_gateway, "read_at_start": facts.get(u.key, {})}
                for u in self.cfg.battery.units]

    def history_info(self) -> dict[str, Any] | None:
        if self.history is None:
            return None
        return {"path": self.history.path, "in_memory": self.history.in_memory,
                "disk_bytes": self.history.disk_bytes(), "retention_days": self.history.retention_days}

    def plan_info(self) -> dict[str, Any]:
        """The latest plan as ``GET /api/plan`` shows it (English): why it charged or held, or why it could not."""
        now = datetime.datetime.now(datetime.timezone.utc)
        return i18n.render(plan_json(self.store.plan(), self.store.plan_enabled(), now), "en")

    def bundle(self) -> dict[str, Any]:
        config, secrets = redact(config_document(self.cfg))
        status = self.store.status_json("en")
        events = status.pop("events", [])
        doc = {
            "generated_at": self.clock(),
            "versions": self._versions,
            "config": config,
            "status": status,
            "events": events[-200:],
            "batteries": self.batteries(),
            "meter": self.meter_identity(),
            "quirks": self.quirks.figures() if self.quirks is not None else {},
            "history": self.history_info(),
            "plan": self.plan_info(),
        }
        return scrub(redact(doc)[0], secrets)
