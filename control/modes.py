"""Operating modes (auto / hold / charge / off): the mode object, its validation and its file.

The mode object is what ``GET /api/mode`` answers: ``{"mode", "power_w", "until", "source"}``.
``parse_request`` validates the body of ``POST /api/mode`` (also the JSON or plain payload of the MQTT
topic ``<prefix>/mode/set``); ``ModeState.expired`` decides the expiry with the wall time passed in
(the control thread's clock, a fake one in tests). ``ModeFile`` keeps the mode across restarts in a
small JSON file beside the config (never in config.json), written atomically (temp file + os.replace).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from control import i18n
from zero_feed_control import OperatingMode

log = logging.getLogger("marstek")

ALIASES = {"normal": OperatingMode.AUTO}  # evcc's word for "auto"
SOURCES = ("api", "mqtt", "dashboard", "default")
MIN_CHARGE_POWER_W = 50
MAX_MINUTES = 1440
REQUEST_FIELDS = ("mode", "power_w", "minutes")


class ModeError(ValueError):
    """A mode request is invalid; the message says which field and why (HTTP 400)."""


@dataclass(frozen=True)
class ModeRequest:
    """A validated request: the mode, the charge power (charge only) and the optional duration."""

    mode: OperatingMode
    power_w: int | None = None
    minutes: int | None = None


@dataclass(frozen=True)
class ModeState:
    """The operating mode in force. ``until_s``: wall-clock epoch seconds when it returns to auto."""

    mode: OperatingMode = OperatingMode.AUTO
    power_w: int | None = None
    until_s: float | None = None
    source: str = "default"

    @classmethod
    def from_request(cls, request: ModeRequest, source: str, now_s: float) -> ModeState:
        until_s = None if request.minutes is None or request.mode is OperatingMode.AUTO else (
            now_s + request.minutes * 60.0)
        return cls(request.mode, request.power_w, until_s, source)

    def expired(self, now_s: float) -> bool:
        """True when the mode has an expiry and ``now_s`` (wall clock, epoch s) reached it."""
        return self.until_s is not None and now_s >= self.until_s

    def remaining_s(self, now_s: float) -> float | None:
        return None if self.until_s is None else max(0.0, self.until_s - now_s)

    def to_json(self) -> dict[str, Any]:
        """The mode object of interfaces.md."""
        until = None
        if self.until_s is not None:
            until = datetime.fromtimestamp(self.until_s, timezone.utc).astimezone().isoformat(timespec="seconds")
        return {"mode": self.mode.value, "power_w": self.power_w, "until": until, "source": self.source}

    @classmethod
    def from_json(cls, doc: Any) -> ModeState:
        """The inverse of ``to_json`` (for the file); raises ModeError on anything unexpected."""
        if not isinstance(doc, dict) or set(doc) - {"mode", "power_w", "until", "source"}:
            raise ModeError("not a mode object")
        try:
            mode = OperatingMode(doc.get("mode"))
        except ValueError:
            raise ModeError(f"unknown mode {doc.get('mode')!r}") from None
        power_w = doc.get("power_w")
        if power_w is not None and (isinstance(power_w, bool) or not isinstance(power_w, int) or power_w <= 0):
            raise ModeError("power_w must be a positive integer or null")
        until = doc.get("until")
        until_s = None
        if until is not None:
            try:
                until_s = datetime.fromisoformat(str(until)).timestamp()
            except ValueError:
                raise ModeError(f"until is not an ISO 8601 time: {until!r}") from None
        source = doc.get("source", "default")
        if source not in SOURCES:
            raise ModeError(f"unknown source {source!r}")
        return cls(mode, power_w if mode is OperatingMode.CHARGE else None, until_s, source)


def parse_mode_name(name: str) -> OperatingMode:
    """"auto", "normal", "hold", "charge" or "off" (case and surrounding blanks ignored)."""
    folded = name.strip().lower()
    if folded in ALIASES:
        return ALIASES[folded]
    try:
        return OperatingMode(folded)
    except ValueError:
        names = ", ".join([m.value for m in OperatingMode] + list(ALIASES))
        raise ModeError(f"mode must be one of {names}, got {name!r}") from None


def parse_request(data: Mapping[str, Any], max_power_w: int) -> ModeRequest:
    """Validate a ``POST /api/mode`` body. ``max_power_w``: the batteries' total maximum power."""
    unknown = sorted(set(data) - set(REQUEST_FIELDS))
    if unknown:
        raise ModeError(f"unknown field(s): {', '.join(unknown)}")
    name = data.get("mode")
    if not isinstance(name, str):
        raise ModeError("field mode is required (a text: auto, normal, hold, charge or off)")
    mode = parse_mode_name(name)
    power_w = data.get("power_w")
    if power_w is not None:
        if mode is not OperatingMode.CHARGE:
            raise ModeError("power_w is only allowed with mode charge")
        if isinstance(power_w, bool) or not isinstance(power_w, int):
            raise ModeError("power_w must be an integer")
        if not MIN_CHARGE_POWER_W <= power_w <= max_power_w:
            raise ModeError(f"power_w must be {MIN_CHARGE_POWER_W}..{max_power_w}, got {power_w}")
    elif mode is OperatingMode.CHARGE:
        power_w = max_power_w
    minutes = data.get("minutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int)
                                or not 1 <= minutes <= MAX_MINUTES):
        raise ModeError(f"minutes must be an integer 1..{MAX_MINUTES}, got {json.dumps(minutes)}")
    return ModeRequest(mode, power_w, minutes)


def parse_payload(payload: bytes | bytearray, max_power_w: int) -> ModeRequest:
    """An MQTT ``mode/set`` payload: a bare mode name or the JSON body of ``POST /api/mode``."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ModeError("payload is not UTF-8 text") from None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModeError(f"payload is not valid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise ModeError("payload must be a mode name or a JSON object")
        return parse_request(data, max_power_w)
    return parse_request({"mode": text}, max_power_w)


class ModeFile:
    """The mode across restarts: ``data/mode.json`` beside the config, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> ModeState:
        """The stored mode; missing → auto; damaged → auto and a warning (the file is left for inspection)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ModeState()
        except OSError as exc:
            log.warning("%s", i18n.Msg("mode_file_unreadable", path=str(self.path), error=str(exc)))
            return ModeState()
        try:
            return ModeState.from_json(json.loads(text))
        except (json.JSONDecodeError, ModeError) as exc:
            log.warning("%s", i18n.Msg("mode_file_damaged", path=str(self.path), error=str(exc)))
            return ModeState()

    def save(self, state: ModeState) -> None:
        """Write temp file + fsync + os.replace; raises OSError (the caller reports it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(state.to_json(), ensure_ascii=False) + "\n"
        fd, tmp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as tmp:
                tmp.write(text)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, self.path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
