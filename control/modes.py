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
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from config_loader import replace_file
from control import i18n
from zero_feed_control import OperatingMode

log = logging.getLogger("marstek")

ALIASES = {"normal": OperatingMode.AUTO}  # evcc's word for "auto"
SOURCES = ("api", "mqtt", "dashboard", "default")
MIN_CHARGE_POWER_W = 50
MAX_MINUTES = 1440
UNTIL_SLACK_S = 60.0  # a stored expiry may lie this much beyond the longest mode (clock jitter)
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
    """The operating mode in force.

    ``until_s``: wall-clock epoch seconds when it returns to auto, only to show and to persist it;
    ``deadline_s``: the same moment on the running program's monotonic clock, which decides the expiry (a
    wall clock that steps, NTP on a Pi without RTC, must not end or stretch a mode). ``source`` is one of
    ``SOURCES`` (a new source of modes adds its name there).
    """

    mode: OperatingMode = OperatingMode.AUTO
    power_w: int | None = None
    until_s: float | None = None
    source: str = "default"
    deadline_s: float | None = field(default=None, compare=False)

    @classmethod
    def from_request(cls, request: ModeRequest, source: str, now_s: float, mono_s: float = 0.0) -> ModeState:
        """The mode a request asks for at wall time ``now_s`` / monotonic time ``mono_s``."""
        if request.minutes is None or request.mode is OperatingMode.AUTO:
            return cls(request.mode, request.power_w, None, source)
        duration_s = request.minutes * 60.0
        return cls(request.mode, request.power_w, now_s + duration_s, source, mono_s + duration_s)

    def anchored(self, now_s: float, mono_s: float) -> ModeState:
        """A restored mode with its expiry put on the monotonic clock (wall ``now_s`` = monotonic ``mono_s``)."""
        if self.until_s is None:
            return self
        return replace(self, deadline_s=mono_s + (self.until_s - now_s))

    def expired(self, mono_s: float) -> bool:
        """True when the mode has an expiry and the monotonic ``mono_s`` reached it."""
        return self.deadline_s is not None and mono_s >= self.deadline_s

    def to_json(self) -> dict[str, Any]:
        """The mode object of interfaces.md."""
        until = None
        if self.until_s is not None:
            until = datetime.fromtimestamp(self.until_s, timezone.utc).astimezone().isoformat(timespec="seconds")
        return {"mode": self.mode.value, "power_w": self.power_w, "until": until, "source": self.source}

    @classmethod
    def from_json(cls, doc: Any, *, now_s: float | None = None, max_power_w: int | None = None) -> ModeState:
        """The inverse of ``to_json`` (for the file); raises ModeError on anything unexpected.

        With ``now_s`` (wall clock) an ``until`` more than ``MAX_MINUTES`` ahead is refused (no mode lasts
        longer; a far future is a damaged file or a clock that was wrong); with ``max_power_w`` the charge
        power must be ``MIN_CHARGE_POWER_W``..``max_power_w``, as in the API.
        """
        if not isinstance(doc, dict) or set(doc) - {"mode", "power_w", "until", "source"}:
            raise ModeError("not a mode object")
        name = doc.get("mode")
        if not isinstance(name, str):
            raise ModeError(f"unknown mode {name!r}")
        try:
            mode = OperatingMode(name)
        except ValueError:
            raise ModeError(f"unknown mode {name!r}") from None
        power_w = doc.get("power_w")
        if power_w is not None and (isinstance(power_w, bool) or not isinstance(power_w, int) or power_w <= 0):
            raise ModeError("power_w must be a positive integer or null")
        if power_w is not None and max_power_w is not None and mode is OperatingMode.CHARGE and not (
                MIN_CHARGE_POWER_W <= power_w <= max_power_w):
            raise ModeError(str(i18n.Msg("mode_power_out_of_range", min=MIN_CHARGE_POWER_W, max=max_power_w,
                                         value=power_w)))
        until_s = _until_s(doc.get("until"), now_s)
        source = doc.get("source", "default")
        if not isinstance(source, str) or source not in SOURCES:
            raise ModeError(f"unknown source {source!r}")
        return cls(mode, power_w if mode is OperatingMode.CHARGE else None, until_s, source)


def _until_s(until: Any, now_s: float | None) -> float | None:
    """The file's ``until`` as epoch seconds; refused when not an ISO 8601 time with an offset that can be
    shown again, or (with ``now_s``) more than ``MAX_MINUTES`` ahead."""
    if until is None:
        return None
    if not isinstance(until, str):
        raise ModeError(f"until is not an ISO 8601 time: {until!r}")
    try:
        moment = datetime.fromisoformat(until)
        if moment.tzinfo is None:
            raise ModeError(f"until has no UTC offset: {until!r}")
        until_s = moment.timestamp()
        datetime.fromtimestamp(until_s, timezone.utc).astimezone()  # shown again in GET /api/mode
    except (ValueError, OverflowError, OSError):  # 9999-12-31T23:59:59-14:00 is past the year 9999 in UTC
        raise ModeError(f"until is not a usable ISO 8601 time: {until!r}") from None
    if now_s is not None and until_s > now_s + MAX_MINUTES * 60.0 + UNTIL_SLACK_S:
        raise ModeError(str(i18n.Msg("mode_until_out_of_range", minutes=MAX_MINUTES, until=until)))
    return until_s


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

    def load(self, *, now_s: float | None = None, max_power_w: int | None = None) -> ModeState:
        """The stored mode; missing → auto; damaged in any way (not UTF-8, not JSON, wrong types, a charge power
        outside 50..``max_power_w``, an ``until`` that cannot be or is too far ahead of wall time ``now_s``)
        → auto and a warning (the file is left for inspection). Never raises."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ModeState()
        except OSError as exc:
            log.warning("%s", i18n.Msg("mode_file_unreadable", path=str(self.path), error=str(exc)))
            return ModeState()
        try:
            return ModeState.from_json(json.loads(data.decode("utf-8")), now_s=now_s, max_power_w=max_power_w)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # ModeError, JSON and UTF-8 too
            log.warning("%s", i18n.Msg("mode_file_damaged", path=str(self.path), error=str(exc)))
            return ModeState()

    def save(self, state: ModeState) -> None:
        """Write temp file + fsync + os.replace; raises OSError (the caller reports it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(self.path, (json.dumps(state.to_json(), ensure_ascii=False) + "\n").encode("utf-8"))


T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class StateFile(Protocol[T_contra]):
    """A small state file (``ModeFile``, ``planning.plan_switch.PlanSwitchFile``): ``save`` raises OSError."""

    def save(self, state: T_contra) -> None: ...


class ModeWriter(Generic[T]):
    """Writes ``ModeFile`` (or another ``StateFile``) on a thread of its own, latest wins: the control thread
    only hands the state over (a flood of mode changes costs one fsync per write the disk can take, never one per
    change on the control thread). ``on_error`` gets the OSError of a failed write (the caller reports it)."""

    def __init__(self, mode_file: StateFile[T], on_error: Callable[[OSError], None] = lambda _exc: None) -> None:
        self.mode_file, self.on_error = mode_file, on_error
        self.writes = 0  # files written so far (tests, diagnostics)
        self._cond = threading.Condition()
        self._latest: T | None = None
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None

    def save(self, state: T) -> None:
        """Write ``state`` soon (replacing one not yet written); never blocks on the disk."""
        with self._cond:
            self._latest = state
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="mode file", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything handed over is written (or failed); False after ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(lambda: self._latest is None and not self._busy, timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what is pending, then end the thread (a hanging disk is not waited for beyond ``timeout_s``)."""
        self.flush(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._latest is not None or self._closing)
                state, self._latest = self._latest, None
                if state is None:
                    return
                self._busy = True
            try:
                self.mode_file.save(state)
                self.writes += 1
            except OSError as exc:
                self.on_error(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
