"""The only state shared between the control thread and the web thread.

The control thread publishes immutable snapshots; the web thread reads them and hands
commands (``control.commands``: mode, setup mode, scan, re-addressing) to the control thread through ``CommandQueue``,
because only the control thread may touch the hardware.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent import futures
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from control import i18n
from control.commands import Command
from planning.model import Plan

EVENTS_KEPT = 200
HISTORY_KEPT = 2 * 3600  # one sample per second, two hours; older ones come from the history database
PENDING_KEPT = 600  # samples waiting for the history writer; older ones are dropped if it is stuck


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class BatteryStatus:
    """One battery in /api/status. power_w and setpoint_w: + discharge, - charge.

    ``id`` is the Modbus unit ID; ``key`` ("<host>:<port>/<id>") is unique across gateways; ``uid`` is the
    stable identity without the address (config_loader.UnitConfig.uid: Home Assistant, Prometheus).
    """

    id: int
    online: bool
    soc_pct: float | None
    setpoint_w: int
    power_w: float | None
    mode: str  # "charge" | "discharge" | "idle" | "stopped"
    note: str = ""
    key: str = ""
    name: str = ""
    gateway: str = ""  # "<host>:<port>"
    register_set: str = "v2"
    max_power_w: int = 2500
    uid: str = ""


@dataclass(frozen=True)
class Event:
    time: str
    level: str
    message: str


@dataclass(frozen=True, slots=True)  # slots: thousands of them are kept
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
    # Monotonic counters for /metrics: control_cycles_total, meter_failures_total, modbus_writes_total.
    counters: Mapping[str, int] = field(default_factory=dict)


DEFAULT_OPERATING_MODE: Mapping[str, Any] = {"mode": "auto", "power_w": None, "until": None, "source": "default"}


class StatusStore:
    """Lock-protected latest snapshot, bounded event list and bounded chart history."""

    def __init__(self, events_kept: int = EVENTS_KEPT, history_kept: int = HISTORY_KEPT) -> None:
        self._lock = threading.Lock()
        self._snapshot = StatusSnapshot()
        self._events: deque[Event] = deque(maxlen=events_kept)
        self._history: deque[HistorySample] = deque(maxlen=history_kept)
        # Samples for the history writer (history.py): bounded, so a stuck disk costs memory, never time.
        self._pending: deque[HistorySample] = deque(maxlen=PENDING_KEPT)
        self._problems: dict[str, tuple[str, bool]] = {}  # source -> (message, is_error)
        self._facts: dict[str, dict[str, Any]] = {}  # battery -> what was read from it at start
        self._plan: Plan | None = None  # the plan thread's latest plan
        # The plan switch: None without a plan in this program; else whether the control applies the plan.
        self._plan_enabled: bool | None = None
        self._plan_switched: Callable[[bool, str], None] | None = None
        self._plan_switch_lock = threading.Lock()  # one switch at a time: the file gets the last word

    def publish(self, snapshot: StatusSnapshot, sample: HistorySample | None = None) -> None:
        with self._lock:
            self._snapshot = snapshot
            if sample is not None:
                self._history.append(sample)
                self._pending.append(sample)

    def take_samples(self) -> list[HistorySample]:
        """The samples published since the last call (the history writer's feed; never blocks long)."""
        with self._lock:
            taken = list(self._pending)
            self._pending.clear()
            return taken

    def set_problem(self, source: str, message: str | None, *, error: bool = False) -> None:
        """A problem of a thread other than the control thread (e.g. the history database), shown in
        /api/status ``errors`` (``error``) or ``warnings``; ``None`` clears it."""
        with self._lock:
            if message is None:
                self._problems.pop(source, None)
            else:
                self._problems[source] = (message, error)

    def publish_plan(self, plan: Plan) -> None:
        """The latest plan (an immutable ``planning.model.Plan``) from the plan thread."""
        with self._lock:
            self._plan = plan

    def plan(self) -> Plan | None:
        """The latest plan, or None before the first (``planning.model.Plan``)."""
        with self._lock:
            return self._plan

    def init_plan_switch(self, enabled: bool, on_change: Callable[[bool, str], None] | None = None) -> None:
        """A plan runs in this program; ``enabled``: the switch at start (``plan.enabled`` or the stored one).

        ``on_change(enabled, source)`` is called after every ``set_plan_enabled`` (persisting, logging); it must
        not block (it runs on the caller's thread: the web or the MQTT thread)."""
        with self._lock:
            self._plan_enabled = enabled
            self._plan_switched = on_change

    def plan_enabled(self) -> bool | None:
        """The plan switch: True the control applies the plan, False it is only computed and shown, None: no plan
        in this program (no ``plan`` section or no tariff)."""
        with self._lock:
            return self._plan_enabled

    def set_plan_enabled(self, enabled: bool, source: str) -> bool:
        """Switch the plan on or off (``source``: "api", "mqtt", "dashboard"); False when there is no plan."""
        with self._plan_switch_lock:
            with self._lock:
                if self._plan_enabled is None:
                    return False
                self._plan_enabled = enabled
                on_change = self._plan_switched
            if on_change is not None:  # outside the store's lock: it may log, and the log feeds the store
                on_change(enabled, source)
            return True

    def set_battery_facts(self, battery: str, facts: Mapping[str, Any]) -> None:
        """What was read from one battery at start (model name, ...), for the diagnostics bundle."""
        with self._lock:
            self._facts[battery] = dict(facts)

    def battery_facts(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._facts.items()}

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
        with self._lock:
            problems = list(self._problems.values())
        doc["errors"] = list(snap.errors) + [m for m, is_error in problems if is_error]
        doc["warnings"] = list(snap.warnings) + [m for m, is_error in problems if not is_error]
        doc["counters"] = dict(snap.counters)
        doc["quality"] = dict(snap.quality)
        doc["operating_mode"] = dict(snap.operating_mode)
        doc["events"] = [asdict(e) for e in self.events()]
        return i18n.render(doc, lang or i18n.language())


class QuirkCounter:
    """Counts device quirks (meter failures, RS485 re-asserts, no-delivery pauses, reconnects) with the
    time each was last seen; any thread may ``note`` (the gateways through ``on_quirk``, the control loop), the
    diagnostics bundle reads ``figures``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, str]] = {}
        self._paused: set[int] = set()

    def note(self, name: str) -> None:
        with self._lock:
            count, _ = self._seen.get(name, (0, ""))
            self._seen[name] = (count + 1, now_iso())

    def count(self, name: str) -> int:
        with self._lock:
            return self._seen.get(name, (0, ""))[0]

    def figures(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: {"count": count, "last": last} for name, (count, last) in self._seen.items()}

    def notes(self, battery_notes: Mapping[Any, str]) -> None:
        """Count each battery's entry into a no-delivery pause (the law's ``note_no_delivery_*`` notes)."""
        paused = {i for i, note in battery_notes.items() if getattr(note, "code", "").startswith("note_no_delivery")}
        for _ in paused - self._paused:
            self.note("no_delivery_pause")
        self._paused = paused


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
class _Queued:
    command: Command
    future: Future


class CommandQueue:
    """Commands from the web thread, executed by the control thread between cycles.

    A command either runs or never runs: the control thread claims each one
    (``Future.set_running_or_notify_cancel``) before it starts, and a waiter that gives up cancels it first
    (``Future.cancel``); both happen under the future's lock, so a command answered with 504 is never applied
    later (a late set-id must not re-address the next battery plugged in).
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[_Queued] = queue.Queue(maxsize=16)
        self.wakeup = threading.Event()  # lets the control loop react at once

    def submit(self, command: Command, timeout_s: float = 60.0, *, running_grace_s: float | None = None) -> Any:
        """Run ``command`` on the control thread and wait for its result (raises CommandError).

        Not started within ``timeout_s``: cancelled (it never runs) and 504. Started but not finished by then:
        it is running on the hardware now, so the answer waits for it up to ``running_grace_s`` more (default
        ``timeout_s``); still not done, 504 saying so (its outcome goes to the events).
        """
        if not isinstance(command, Command):  # a caller outside the type checker: refused here, in its thread
            raise TypeError(f"not a command: {command!r}")
        cmd = _Queued(command, Future())
        try:
            self._queue.put_nowait(cmd)
        except queue.Full:
            raise CommandError(i18n.Msg("command_busy"), 503) from None
        self.wakeup.set()
        try:
            return cmd.future.result(timeout=timeout_s)
        except futures.TimeoutError:  # TimeoutError itself from Python 3.11 on
            if cmd.future.cancel():
                raise CommandError(i18n.Msg("command_cancelled"), 504) from None
        try:  # the control thread claimed it before the cancel: it runs now
            return cmd.future.result(timeout=timeout_s if running_grace_s is None else running_grace_s)
        except futures.TimeoutError:
            raise CommandError(i18n.Msg("command_still_running"), 504) from None

    def run_pending(self, handler: Callable[[Command], Any]) -> None:
        """Execute every queued command with ``handler`` (control thread only); cancelled ones are dropped."""
        self.wakeup.clear()
        while True:
            try:
                cmd = self._queue.get_nowait()
            except queue.Empty:
                return
            if not cmd.future.set_running_or_notify_cancel():
                continue  # its waiter gave up (504): it never runs
            try:
                cmd.future.set_result(handler(cmd.command))
            except Exception as exc:  # handed to the waiting web thread, never lost
                cmd.future.set_exception(exc)
