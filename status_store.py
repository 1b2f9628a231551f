"""The only state shared between the control thread and the web thread.

The control thread publishes immutable snapshots; the web thread reads them and hands
commands (setup mode, scan, re-addressing) to the control thread through ``CommandQueue``,
because only the control thread may touch the hardware.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import i18n

EVENTS_KEPT = 200
HISTORY_KEPT = 24 * 3600  # one sample per second, one day


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class BatteryStatus:
    """One battery in /api/status. power_w and setpoint_w: + discharge, - charge."""

    id: int
    online: bool
    soc_pct: float | None
    setpoint_w: int
    power_w: float | None
    mode: str  # "charge" | "discharge" | "idle" | "stopped"
    note: str = ""


@dataclass(frozen=True)
class Event:
    time: str
    level: str
    message: str


@dataclass(frozen=True)
class HistorySample:
    """One point of the dashboard chart: epoch seconds, grid W (+ import), battery W (+ discharge), mean SoC."""

    t: float
    grid_w: float | None
    battery_w: float | None
    soc_pct: float | None


@dataclass(frozen=True)
class StatusSnapshot:
    """What /api/status shows (see interfaces.md); events are added by the store."""

    grid_power_w: float | None = None
    grid_power_avg_w: float | None = None
    meter_type: str = ""
    meter_model: str | None = None  # e.g. "Shelly Pro EM-50"; None until the meter has been identified
    meter_ok: bool = False
    control_state: str = "stopped"  # "active" | "setup" | "stopped" | "error"
    setup_mode: bool = False
    batteries: tuple[BatteryStatus, ...] = ()
    errors: tuple[str, ...] = ()
    updated_at: str = field(default_factory=now_iso)
    reason: str = ""
    status: str = ""
    meter_error_since: str | None = None
    quality: Mapping[str, float | None] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # The operating mode object of GET /api/mode (modes.ModeState.to_json()).
    operating_mode: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_OPERATING_MODE))


DEFAULT_OPERATING_MODE: Mapping[str, Any] = {"mode": "auto", "power_w": None, "until": None, "source": "default"}


class StatusStore:
    """Lock-protected latest snapshot, bounded event list and bounded chart history."""

    def __init__(self, events_kept: int = EVENTS_KEPT, history_kept: int = HISTORY_KEPT) -> None:
        self._lock = threading.Lock()
        self._snapshot = StatusSnapshot()
        self._events: deque[Event] = deque(maxlen=events_kept)
        self._history: deque[HistorySample] = deque(maxlen=history_kept)

    def publish(self, snapshot: StatusSnapshot, sample: HistorySample | None = None) -> None:
        with self._lock:
            self._snapshot = snapshot
            if sample is not None:
                self._history.append(sample)

    def update(self, **changes: Any) -> None:
        """Replace some fields of the current snapshot (e.g. setup_mode from a command)."""
        with self._lock:
            self._snapshot = replace(self._snapshot, **changes)

    def latest(self) -> StatusSnapshot:
        with self._lock:
            return self._snapshot

    def add_event(self, level: str, message: str) -> None:
        with self._lock:
            self._events.append(Event(now_iso(), level, message))

    def events(self) -> tuple[Event, ...]:
        with self._lock:
            return tuple(self._events)

    def history(self, since_t: float | None = None) -> tuple[HistorySample, ...]:
        with self._lock:
            if since_t is None:
                return tuple(self._history)
            return tuple(s for s in self._history if s.t > since_t)

    def status_json(self, lang: str | None = None) -> dict[str, Any]:
        """The /api/status document (interfaces.md), every message in ``lang`` (default: the backend's)."""
        snap = self.latest()
        doc = asdict(snap)
        doc["batteries"] = [asdict(b) for b in snap.batteries]
        doc["errors"] = list(snap.errors)
        doc["warnings"] = list(snap.warnings)
        doc["quality"] = dict(snap.quality)
        doc["operating_mode"] = dict(snap.operating_mode)
        doc["events"] = [asdict(e) for e in self.events()]
        return i18n.render(doc, lang or i18n.language())


class StoreLogHandler(logging.Handler):
    """Feeds log records (INFO and above) into the store's live event list."""

    def __init__(self, store: StatusStore, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.store = store

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # A message logged by code stays a Msg, so /api/status can show it in its own language.
            message = record.msg if isinstance(record.msg, i18n.Msg) and not record.args else record.getMessage()
            self.store.add_event(record.levelname, message)
        except Exception:  # a log handler must never raise into the caller
            self.handleError(record)


class CommandError(Exception):
    """A command was refused; the message is shown to the user (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message  # an i18n.Msg where the text is the program's own
        self.status = status


@dataclass
class _Command:
    name: str
    args: Mapping[str, Any]
    future: Future


class CommandQueue:
    """Commands from the web thread, executed by the control thread between cycles."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Command] = queue.Queue(maxsize=16)
        self.wakeup = threading.Event()  # lets the control loop react at once

    def submit(self, name: str, timeout_s: float = 60.0, **args: Any) -> Any:
        """Run a command on the control thread and wait for its result (raises CommandError)."""
        cmd = _Command(name, args, Future())
        try:
            self._queue.put_nowait(cmd)
        except queue.Full:
            raise CommandError("busy, try again in a moment", 503) from None
        self.wakeup.set()
        try:
            return cmd.future.result(timeout=timeout_s)
        except TimeoutError:
            raise CommandError("the control thread did not answer in time", 504) from None

    def run_pending(self, handler: Callable[[str, Mapping[str, Any]], Any]) -> None:
        """Execute every queued command with ``handler`` (control thread only)."""
        self.wakeup.clear()
        while True:
            try:
                cmd = self._queue.get_nowait()
            except queue.Empty:
                return
            if not cmd.future.set_running_or_notify_cancel():
                continue
            try:
                cmd.future.set_result(handler(cmd.name, cmd.args))
            except Exception as exc:  # handed to the waiting web thread, never lost
                cmd.future.set_exception(exc)
