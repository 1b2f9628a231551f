"""The control thread: grid meter in, setpoints out, status published.

``ControlLoop`` owns the meter driver and the battery fleet (``fleet.Fleet``: one Modbus gateway per
host:port, each served by its own worker thread that only the fleet hands work to). Each cycle reads
the meter and every battery (all gateways at once), asks the pure control law (``zero_feed_control``)
for the setpoints with one ``now`` for the whole cycle, writes them (all gateways at once), and
publishes an immutable snapshot to the status store. Batteries are keyed ``"<host>:<port>/<id>"``.
Setup commands from the web thread arrive through the ``CommandQueue`` and run here between cycles.
``next_cycle_s`` is the one schedule: the thread, the benchmark and the soak
all ask it when the next cycle is due.

Signs: grid power + import / - export; battery power and setpoints + discharge / - charge (W).
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import planning.plan_mode as plan_mode
from config_loader import Config, UnitConfig
from control import setup_commands
from control.commands import SETUP_REQUESTS, AddToConfig, Command, EnterSetup, ExitSetup, Scan, SetId, SetMode
from control.devices import (
    BatteryBus,
    BatteryError,
    BatteryReading,
    BatteryUnreachable,
    GridMeter,
    MeterError,
    describe_meter,
)
from control.fleet import SHUTDOWN_BUDGET_S, Fleet, unit_name
from control.i18n import Msg
from control.modes import ModeFile, ModeRequest, ModeState, ModeWriter
from control.quality import QualityTracker
from control.status_store import (
    BatteryStatus,
    CommandError,
    CommandQueue,
    HistorySample,
    QuirkCounter,
    StatusSnapshot,
    StatusStore,
    now_iso,
)
from control.watchdog import stop_over_new_connections
from meters.sign_check import SignCheck
from zero_feed_control import (
    STOPPING,
    BatteryId,
    BatteryState,
    ControlParams,
    Decision,
    FastController,
    OperatingMode,
    Status,
    make_controller,
)

log = logging.getLogger("marstek")

CRASH_BACKOFF_S = (5.0, 10.0, 30.0, 60.0)
# A gateway that takes no connections for up to this long (the v3 firmware's network reset, 2-5 s) is shown
# as "reconnecting", not offline; the law leaves its battery out meanwhile.
RECONNECT_GRACE_S = 10.0
# Statuses whose reason only counts up or repeats ("meter failed 5x"): logged on a change of status only.
_QUIET = frozenset({Status.WAITING_FOR_SAMPLE, Status.DEADBAND, Status.METER_RETRY, Status.METER_FAILED})


@dataclass
class _Battery:
    """What the control thread knows about one configured battery."""

    unit: UnitConfig
    reading: BatteryReading | None = None
    online: bool = False
    error: str = ""
    setpoint_w: int = 0
    read_s: float | None = None  # when ``reading`` was taken (control clock)
    reconnecting: bool = False  # its gateway is briefly unreachable (within RECONNECT_GRACE_S)
    driven: bool = False  # a power was written to it since the start or its last stop (it may be running)

    @property
    def key(self) -> str:
        return self.unit.key

    @property
    def battery_id(self) -> int:
        """The Modbus unit ID."""
        return self.unit.unit_id

    @property
    def name(self) -> Msg | str:
        """The name for messages: a default name "Akku <n>" reads "Battery <n>" in English."""
        return unit_name(self.unit)


def _device_name(bus: BatteryBus, *, unit_id: int) -> str:
    return bus.read_device_name(unit_id)


# A setup job as ``setup_commands`` writes them: (bus, gateway, units configured there, heartbeat) -> its answer.
SetupJob = Callable[[BatteryBus, str, Sequence[UnitConfig], Callable[[], None]], dict[str, Any]]


def _unknown_command(command: NoReturn) -> NoReturn:
    """The ``match`` default: mypy proves it unreachable (a new command type must be handled); at run time an
    object from outside the type checker is refused, not ignored."""
    raise CommandError(Msg("unknown_command", name=type(command).__name__), 400)


class ControlLoop:
    """The control thread: meter in, setpoints out, status published. Owns meter and bus."""

    def __init__(
        self,
        cfg: Config,
        meter: GridMeter,
        bus: Fleet | BatteryBus,
        store: StatusStore,
        commands: CommandQueue,
        *,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        controller_params: ControlParams | None = None,
        plan: Callable[[], plan_mode.Plan | None] | None = None,
        mode_file: ModeFile | None = None,
        wall_clock: Callable[[], float] = time.time,
        emergency_fleet: Callable[[Config], Fleet] | None = None,
        quirks: QuirkCounter | None = None,
    ) -> None:
        self.cfg = cfg
        self.meter = meter
        # A single bus (tests, benchmark, soak) is the fleet of the config's one gateway.
        self.bus = bus if isinstance(bus, Fleet) else Fleet.around(bus, cfg.battery.units)
        self.store = store
        self.commands = commands
        # New connections for a stop that failed over the control's own (main.py: short answer timeouts).
        self.emergency_fleet = emergency_fleet
        self.not_stopped: list[str] = []  # keys of the batteries the last stop_all could not stop
        self.unreached: list[str] = []  # keys of those it could not reach that this run never drove
        self._abandoned = threading.Event()  # main.py's emergency stop took over: no stop of our own any more
        self.config_path = config_path
        self.clock = clock
        self.controller = make_controller(cfg.control.algorithm, controller_params or cfg.control_params())
        self.batteries = {u.key: _Battery(u) for u in cfg.battery.units}
        self.setup_mode = False
        self.last_decision: Decision | None = None
        # The plan (planning/plan_mode.py) drives below every manual mode; ``plan`` gives its latest one.
        self.plan = plan
        self.active = plan_mode.ModeChoice(ModeState())  # the mode in force (select_mode): manual or the plan's
        self.grid_power_w: float | None = None
        self.meter_ok = False
        self.meter_error: Msg | str = ""
        self.meter_error_since: str | None = None
        self._last_value: float | None = None
        self._last_change_s = clock()
        self._last_reason = ""
        self._last_status = ""
        self._note_codes: dict[str, str | None] = {}  # per battery key: the code of the note last logged
        self._probe_setpoints: dict[BatteryId, int] | None = None  # held while the sign check probes
        self.internal_error: Msg | str = ""
        self.quality = QualityTracker()
        self.sign_check = SignCheck()  # a meter whose sign looks reversed stops the batteries
        self.heartbeat_s = clock()
        self._crashes = 0
        self._cycle_started_s = clock()
        self._next_cycle_s = clock()
        # The operating mode (modes.py): kept across restarts in ``mode_file`` (written by its own thread);
        # the expiry runs on ``clock``, ``wall_clock`` only dates ``until`` for the file and the API.
        self.mode_file = mode_file
        self.wall_clock = wall_clock
        self.mode_writer = ModeWriter(mode_file, self._mode_not_saved) if mode_file is not None else None
        self.mode = ModeState()
        if mode_file is not None:
            self.mode = mode_file.load(now_s=wall_clock(), max_power_w=self.max_charge_power_w).anchored(
                wall_clock(), clock())
        # The latest mode asked for since the last cycle: applied at the start of the next one (a flood of
        # requests costs one mode change and one cycle's writes per cycle).
        self._mode_requested: ModeState | None = None
        store.update(operating_mode=self.mode.to_json())  # GET /api/mode before the first cycle
        self.cycles_total = 0  # counters for /metrics and the diagnostics bundle
        # Device quirks; main.py shares this counter with the fleet's gateways (``on_quirk``).
        self.quirks = quirks if quirks is not None else QuirkCounter()
        self._unnamed: set[str] = set()  # keys of the batteries whose device name run() still has to read
        self._setup_request_s = clock()  # the last setup command (control clock): setup mode times out
        self._answered: dict[str, set[int]] = {}  # per gateway: the IDs that answered its last scan (setup)

    def unit(self, unit_id: int, gateway: str | None = None) -> _Battery:
        """The battery with Modbus ID ``unit_id`` (on ``gateway``, default: the first that has it)."""
        return next(b for b in self.batteries.values()
                    if b.battery_id == unit_id and gateway in (None, b.unit.gateway))

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        """Cycle until ``stop`` is set; always leaves the batteries stopped."""
        names = ", ".join(Msg("battery_label", name=b.name, key=b.key) for b in self.batteries.values())
        log.info(Msg("control_started", meter=self.meter.name, ids=names,
                     algorithm=self.cfg.control.algorithm))
        self._unnamed = set(self.batteries)
        try:
            while not stop.is_set():
                if self.clock() >= self.next_cycle_s:
                    self.run_once()
                    self.read_device_names()
                else:  # woken early by a command: run it, the cycles stay on their schedule
                    self.commands.run_pending(self.handle_command)
                # Woken early by a web command or by the stop request (both set ``wakeup``).
                self.commands.wakeup.wait(max(0.0, self.next_cycle_s - self.clock()))
        finally:
            self.apply_requested_mode()  # answered 200 before the stop: kept for the next start
            if self.mode_writer is not None:
                self.mode_writer.close()
            self.stop_all("shutdown", retry=True)
            if self.cfg.battery.on_exit == "release":
                self.release_all()
            self.publish("stopped")
            self.meter.close()
            self.bus.close()
            if not self._abandoned.is_set():  # else main.py has the last word
                # The last word: which battery is stopped and which is not (main.py exits 1 then).
                log.log(logging.ERROR if self.not_stopped else logging.INFO,
                        self.stop_summary(self.not_stopped, self.unreached))

    def run_once(self) -> None:
        """One cycle, contained: a bug stops every battery, is reported, and delays the next cycle."""
        self._cycle_started_s = self.clock()
        self.cycles_total += 1
        try:
            self.cycle()
        except Exception as exc:
            # A bug must not leave a battery running on a stale setpoint, nor end the program:
            # stop everything, say so, and try again later.
            log.exception(Msg("control_cycle_failed"))
            self.internal_error = Msg("internal_error", error=f"{type(exc).__name__}: {exc}")
            self.stop_all("control error")
            self.publish("error")
            self._next_cycle_s = self.clock() + CRASH_BACKOFF_S[min(self._crashes, len(CRASH_BACKOFF_S) - 1)]
            self._crashes += 1
            return
        self._crashes, self.internal_error = 0, ""
        self.heartbeat_s = self.clock()
        interval_s = self.cfg.control.poll_interval_seconds
        if self.last_decision is not None and self.last_decision.status is Status.METER_FAILED:
            # Batteries are stopped: poll the dead meter only every check interval.
            interval_s = max(interval_s, self.cfg.meter.check_interval_seconds)
        self._next_cycle_s = self._cycle_started_s + interval_s

    @property
    def next_cycle_s(self) -> float:
        """When the next cycle is due (control clock); the thread, the benchmark and the soak all ask this."""
        return self._next_cycle_s

    def cycle(self) -> None:
        """One control cycle (also called directly by tests)."""
        self.commands.run_pending(self.handle_command)
        self.apply_requested_mode()
        self.expire_mode()
        self.expire_setup()
        if self.setup_mode:
            # The meter is not on the Modbus bus: keep showing live grid power. The batteries are
            # stopped and not polled, so their power is unknown rather than the last value.
            self.read_meter()
            for b in self.batteries.values():
                b.reading, b.setpoint_w = None, 0
            self.publish("setup")
            return
        asked_s = self.clock()  # a late answer (a busy host) can carry a sample from before this
        grid_w, received_s = self.read_meter()
        self.read_batteries()
        now_s = self.clock()
        states = [
            BatteryState(b.key, b.online, b.reading.soc_pct if b.reading else None,
                         b.reading.ac_power_w if b.reading else None, read_s=b.read_s if b.reading else None,
                         max_power_w=b.unit.max_power_per_battery, min_power_w=b.unit.min_power_per_battery,
                         max_charge_w=b.reading.max_charge_w if b.reading else None,
                         max_discharge_w=b.reading.max_discharge_w if b.reading else None)
            for b in self.batteries.values()
        ]
        self.select_mode()
        decision = self.controller.step(now_s, grid_w, states, grid_received_s=received_s,
                                        meter_error=self.meter_error, mode=self.active.mode.mode,
                                        charge_power_w=self.active.mode.power_w)
        sample_from_s = None if received_s is None else self.earliest_sample_s(asked_s, received_s)
        decision = self.check_sign(now_s, grid_w, states, decision, sample_from_s)
        self.last_decision = decision
        self.quirks.notes(decision.battery_notes)
        self._log_decision(decision)
        self._log_notes(decision)
        self.apply(decision)
        self.track_quality(now_s, grid_w, decision)
        self.publish("error" if decision.status in STOPPING else "stopped" if decision.status is Status.MODE_OFF
                     else "active")

    def select_mode(self) -> None:
        """The mode in force this cycle: the manual one, or the plan's current slot when it is ``auto``.

        Without a plan (no ``plan`` section) this is always the manual mode. The plan's problem (stale or
        missing prices, a failed plan) goes to /api/status ``errors``. Called before the law and in
        ``publish``: a manual mode that expires or is set back to ``auto`` gives way in the same cycle."""
        if self.plan is None:
            self.active = plan_mode.ModeChoice(self.mode)
            return
        before = self.active
        now = datetime.datetime.fromtimestamp(self.wall_clock(), datetime.timezone.utc)
        try:
            # The plan switch (off: computed and shown, not applied); None (no switch set up) counts as on.
            self.active = plan_mode.effective_mode(self.mode, self.plan(), now,
                                                   enabled=self.store.plan_enabled() is not False)
        except Exception as exc:  # a damaged plan from the plan thread must never stop the control
            error = Msg("plan_failed", error=f"{type(exc).__name__}: {exc}")
            self.active = plan_mode.ModeChoice(self.mode, problem=error)
        if self.active.problem != before.problem:
            self.store.set_problem("plan", self.active.problem, error=True)
            if self.active.problem is not None:
                log.warning(self.active.problem)  # a Msg: shown in each reader's language
        state, was = self.active.mode, before.mode
        if (state.mode, state.power_w, state.source) != (was.mode, was.power_w, was.source):
            self.store.update(operating_mode=state.to_json())
            slot = self.active.slot
            if slot is not None:
                what = Msg("plan_mode_charge", power=state.power_w) if state.power_w else state.mode.value
                log.info("%s", Msg("plan_mode_changed", mode=what, reason=slot.reason))
        elif state.source == plan_mode.PLAN_SOURCE and state.until_s != was.until_s:  # the next slot's "until"
            self.store.update(operating_mode=state.to_json())

    def earliest_sample_s(self, asked_s: float, sampled_at_s: float) -> float:
        """The earliest instant the meter's sample can have been taken (control clock): the device answered
        after it was asked (``asked_s``) with a value at most the law's learned oldest sample age old; a
        device that dates its value (``sampled_at_s``) may date it earlier still."""
        age_hi_s = self.controller.ages.window()[1] if isinstance(self.controller, FastController) else 0.0
        return min(asked_s, sampled_at_s) - age_hi_s

    def check_sign(self, now_s: float, grid_w: float | None, states: list[BatteryState],
                   decision: Decision, sample_from_s: float | None = None) -> Decision:
        """Feed the sign check; once it trips, every battery stays stopped with a reason naming the fix.

        ``sample_from_s``: the earliest instant the meter sample can have been taken (``earliest_sample_s``);
        the check pairs it with the battery power over that whole window, so a late sample is not judged
        against a battery move it cannot have seen.

        Only with the default law: the seed law's own oscillation moves grid and battery power the same way
        for a while and would look like a reversed clamp (the benchmark's naive baseline tripped it)."""
        if self.cfg.control.algorithm != "fast":
            return decision
        measured = [s.power_w for s in states if s.online and s.power_w is not None]
        stopping = decision.status in STOPPING or decision.status is Status.MODE_OFF
        probe_w = self.sign_check.probe_w(now_s, 0.0 if stopping else decision.total_w)
        if probe_w is None or stopping:
            self._probe_setpoints = None
        else:
            decision = self._sign_probe(decision, probe_w)
        command_w = 0 if decision.status in STOPPING else decision.total_w
        read = [s.read_s for s in states if s.online and s.power_w is not None and s.read_s is not None]
        if not self.sign_check.observe(now_s, grid_w, sum(measured) if measured else None, command_w,
                                       sample_from_s=sample_from_s, battery_read_s=max(read, default=None)):
            return decision
        if self.last_decision is None or self.last_decision.status is not Status.METER_SIGN:
            self.controller.reset()
        return Decision(setpoints_w={i: 0 for i in decision.setpoints_w}, status=Status.METER_SIGN,
                        reason=self.sign_check.reason(), grid_power_avg_w=decision.grid_power_avg_w)

    def _sign_probe(self, decision: Decision, probe_w: float) -> Decision:
        """The sign check's probe: the last setpoints scaled to ``probe_w`` in total, held until it is over."""
        if self._probe_setpoints is None:
            last = self.last_decision.setpoints_w if self.last_decision else {}
            total_w = sum(last.values())
            factor = probe_w / total_w if total_w else 0.0
            self._probe_setpoints = {i: round(last.get(i, 0) * factor) for i in decision.setpoints_w}
            log.info(Msg("sign_probe", power=round(probe_w)))
        setpoints = dict(self._probe_setpoints)
        self.controller.adopt(setpoints)  # the law judges delivery against what was really written
        return Decision(setpoints_w=setpoints, status=Status.TRACKING,
                        reason=Msg("reason_sign_probe", power=round(probe_w)),
                        grid_power_avg_w=decision.grid_power_avg_w, battery_notes=decision.battery_notes,
                        target_grid_w=decision.target_grid_w)

    def _log_decision(self, decision: Decision) -> None:
        """Log transitions; a reason that only counts up ("meter failed 5x") is not a new event."""
        changed = decision.status.value != self._last_status or (
            decision.reason != self._last_reason and decision.status not in _QUIET)
        if changed and decision.status not in (Status.WAITING_FOR_SAMPLE, Status.DEADBAND):
            level = logging.WARNING if decision.status in STOPPING | {Status.METER_RETRY} else logging.INFO
            log.log(level, decision.reason)
        self._last_reason, self._last_status = decision.reason, decision.status.value

    def _log_notes(self, decision: Decision) -> None:
        """Log a battery's note when it is a new one (a new code: a countdown or a new SoC is not new);
        "offline" is logged by the reads themselves."""
        for key, b in self.batteries.items():
            note = decision.battery_notes.get(key)
            code = getattr(note, "code", None)
            if code != self._note_codes.get(key):
                self._note_codes[key] = code
                if note is not None and code != "note_offline":
                    log.info(Msg("battery_note", name=b.name, note=note))

    def track_quality(self, now_s: float, grid_w: float | None, decision: Decision) -> None:
        """Feed the live control-quality figures (RMS error, export today, writes/h)."""
        measured = [b.reading.ac_power_w for b in self.batteries.values() if b.online and b.reading]
        self.quality.add(now_s, grid_w, decision.target_grid_w, self.bus.writes_total, datetime.date.today(),
                         battery_w=sum(measured) if measured else None)

    def read_meter(self) -> tuple[float | None, float | None]:
        """Grid power (+ import) and its receive time, or (None, None); a value frozen too long is a failure."""
        meter_cfg = self.cfg.meter
        try:
            reading = self.meter.read()
        except MeterError as exc:
            self._meter_failed(str(exc))
            return None, None
        now_s = self.clock()
        if reading.grid_power_w != self._last_value:
            self._last_value, self._last_change_s = reading.grid_power_w, now_s
        elif now_s - self._last_change_s > meter_cfg.max_frozen_seconds:
            self._meter_failed(Msg("meter_frozen", value=reading.grid_power_w, seconds=now_s - self._last_change_s))
            return None, None
        if not self.meter_ok and self.meter_error:
            log.info(Msg("meter_ok_again", value=reading.grid_power_w))
        self.meter_ok, self.meter_error, self.meter_error_since = True, "", None
        self.grid_power_w = reading.grid_power_w
        # A device that says how old its value is (EcoTracker agePower) dates the sample more exactly.
        return reading.grid_power_w, reading.sampled_at_s

    def _meter_failed(self, message: Msg | str) -> None:
        self.quirks.note("meter_failure")
        if self.meter_ok or not self.meter_error:
            log.warning(Msg("meter_read_failed", error=message))
            self.meter_error_since = now_iso()
        self.meter_ok, self.meter_error = False, message
        self.grid_power_w = None

    def read_device_names(self) -> None:
        """Once per battery, when it is first online after the start: its model name, for the diagnostics."""
        for b in self.batteries.values():
            if b.key in self._unnamed and b.online:
                self._unnamed.discard(b.key)
                facts: dict[str, Any]
                try:
                    name = self.bus.call(b.unit.gateway, functools.partial(_device_name, unit_id=b.battery_id))
                    facts = {"device_name": name}
                except BatteryError as exc:
                    facts = {"device_name": None, "error": str(exc)}
                self.store.set_battery_facts(b.key, facts)

    def read_batteries(self) -> None:
        """Read every battery, all gateways at once; a gateway that does not answer in time counts as failed."""
        results = self.bus.read_all(self.batteries)
        read_s = self.clock()  # the law matches battery power to the meter's sample instant
        for key, result in results.items():
            b = self.batteries[key]
            if isinstance(result, BatteryError):
                if (isinstance(result, BatteryUnreachable) and result.outage_s < RECONNECT_GRACE_S
                        and (b.online or b.reconnecting)):
                    b.online, b.reconnecting = False, True  # not shown offline yet (network reset)
                    continue
                if b.online or b.reconnecting or not b.error:
                    log.warning(Msg("battery_offline", name=b.name, id=b.battery_id, error=str(result)))
                b.online, b.reconnecting, b.error = False, False, str(result)
                continue
            b.reading, b.read_s = result, read_s
            if not b.online and not b.reconnecting:
                log.info(Msg("battery_online", name=b.name, id=b.battery_id, soc=result.soc_pct))
            b.online, b.reconnecting, b.error = True, False, ""

    def apply(self, decision: Decision) -> None:
        """Write each online battery's setpoint, all gateways starting together; a failing one blocks nobody."""
        stopping = decision.status in STOPPING
        commands: dict[str, tuple[float, BatteryReading | None]] = {}
        for b in self.batteries.values():
            if not b.online:
                b.setpoint_w = 0
                continue
            commands[b.key] = (0 if stopping else int(decision.setpoints_w.get(b.key, 0)), b.reading)
            b.driven = b.driven or commands[b.key][0] != 0  # a failed write may still have reached it
        for key, result in self.bus.write_all(commands).items():
            b = self.batteries[key]
            if isinstance(result, BatteryError):
                log.warning(Msg("battery_write_failed", name=b.name, id=b.battery_id, error=str(result)))
                b.online, b.error = False, str(result)
            else:
                b.setpoint_w = int(commands[key][0])

    def stop_all(self, why: str, budget_s: float = SHUTDOWN_BUDGET_S, *, retry: bool = False) -> list[Msg]:
        """Force mode stop and both setpoints 0 on every battery (all gateways at once); returns the failures.

        With ``retry`` (shutdown, entering setup mode) and ``emergency_fleet``, a battery whose stop failed is
        stopped again within the same budget over a new connection, after the stuck one is aborted (RST).
        ``not_stopped`` keeps the keys of the batteries still not stopped."""
        can_retry = retry and self.emergency_fleet is not None and not self._abandoned.is_set()
        first_s = budget_s / 2 if can_retry else budget_s
        results = self.bus.stop_all(self.batteries, budget_s=first_s)
        failed = [key for key, error in results.items() if error is not None]
        if failed and can_retry and self.emergency_fleet is not None and not self._abandoned.is_set():
            for key in failed:
                b = self.batteries[key]
                log.warning(Msg("setup_stop_retry" if why == "setup mode" else "battery_stop_retry", name=b.name))
            make, cfg = self.emergency_fleet, self.cfg
            again = stop_over_new_connections(lambda: make(cfg), failed, stuck=self.bus, resume=True,
                                              budget_s=budget_s - first_s)
            results.update({key: again[key] for key in failed if key in again})
        failures = []
        self.not_stopped, self.unreached = self.classify_stops(results)
        for key, error in results.items():
            b = self.batteries[key]
            if error is None:
                b.setpoint_w, b.driven = 0, False
                continue
            failure = Msg("battery_stop_failed", name=b.name, id=b.battery_id, why=why, error=str(error))
            log.error(failure)
            failures.append(failure)
        self.controller.reset()
        return failures

    def abandon(self) -> None:
        """The shutdown gave up waiting for this thread and stops the batteries itself (another thread): a late
        stop of ours must not race it for a v3 LAN port's one connection slot."""
        self._abandoned.set()

    def classify_stops(self, results: Mapping[str, BatteryError | None]) -> tuple[list[str], list[str]]:
        """The keys of the batteries not stopped (a stop failed, or none was tried, after power was written to
        them) and of those not reached that this run never drove (nothing of ours can be running there)."""
        failed = [key for key in self.batteries if key not in results or results[key] is not None]
        return ([key for key in failed if self.batteries[key].driven],
                [key for key in failed if not self.batteries[key].driven])

    def stop_summary(self, not_stopped: Collection[str], unreached: Collection[str] = ()) -> Msg:
        """The last log line: every battery named, stopped or not."""
        def label(b: _Battery) -> Msg:
            return Msg("battery_label", name=b.name, key=b.key)

        stopped = [label(b) for key, b in self.batteries.items() if key not in not_stopped and key not in unreached]
        failed = [label(b) for key, b in self.batteries.items() if key in not_stopped]
        never = [label(b) for key, b in self.batteries.items() if key in unreached]
        extra = Msg("control_unreached", names=never) if never else ""
        if failed:
            return Msg("control_stopped_some", stopped=stopped or Msg("nobody"), failed=failed, unreached=extra)
        return Msg("control_stopped", stopped=stopped or Msg("nobody"), unreached=extra)

    def release_all(self) -> None:
        """battery.on_exit "release": hand every battery back to its own logic (after stop_all)."""
        for key, error in self.bus.release_all(self.batteries).items():
            b = self.batteries[key]
            if error is None:
                log.info(Msg("battery_released", name=b.name, id=b.battery_id))
            else:
                log.error(Msg("battery_release_failed", name=b.name, id=b.battery_id, error=str(error)))

    # ------------------------------------------------------------------ status
    def publish(self, state: str) -> None:
        decision = self.last_decision
        errors: list[Msg | str] = [self.internal_error] if self.internal_error else []
        if self.sign_check.tripped:
            errors.append(self.sign_check.reason())
        if not self.meter_ok and self.meter_error:
            errors.append(Msg("meter_error", error=self.meter_error))
        errors += [Msg("battery_error", name=b.name, id=b.battery_id, error=b.error)
                   for b in self.batteries.values() if b.error]
        batteries = tuple(self._battery_status(b, state) for b in self.batteries.values())
        self.select_mode()  # also in setup mode: GET /api/mode shows the mode that applies after it
        snapshot = StatusSnapshot(
            grid_power_w=self.grid_power_w,
            grid_power_avg_w=decision.grid_power_avg_w if decision else None,
            meter_type=self.meter.name,
            meter_model=describe_meter(self.meter)["model"],
            meter_ok=self.meter_ok,
            control_state="setup" if self.setup_mode else state,
            setup_mode=self.setup_mode,
            batteries=batteries,
            errors=tuple(errors),
            reason=decision.reason if decision else "",
            status=decision.status.value if decision else "",
            meter_error_since=self.meter_error_since,
            warnings=self.store.latest().warnings,
            counters={"control_cycles_total": self.cycles_total, "modbus_writes_total": self.bus.writes_total,
                      "meter_failures_total": self.quirks.count("meter_failure")},
            quality=self.quality.figures(),
            operating_mode=(self._mode_requested or self.active.mode).to_json(),
        )
        online = [b for b in batteries if b.online and b.power_w is not None]
        socs = [b.soc_pct for b in batteries if b.online and b.soc_pct is not None]
        sample = HistorySample(
            t=self.wall_clock(),
            grid_w=self.grid_power_w,
            battery_w=sum(b.power_w or 0.0 for b in online) if online else None,
            soc_pct=sum(socs) / len(socs) if socs else None,
        )
        self.store.publish(snapshot, sample)

    def _battery_status(self, b: _Battery, state: str) -> BatteryStatus:
        r = b.reading if b.online else None
        if state in ("setup", "stopped") or self.setup_mode:
            mode = "stopped"
        else:
            mode = "discharge" if b.setpoint_w > 0 else "charge" if b.setpoint_w < 0 else "idle"
        note: Msg | str = b.error or (self.last_decision.battery_notes.get(b.key, "") if self.last_decision else "")
        if b.reconnecting:
            note = Msg("note_reconnecting")
        elif r is not None and r.runaway:
            note = Msg("note_runaway", power=round(r.ac_power_w))
        return BatteryStatus(
            id=b.battery_id,
            online=b.online or b.reconnecting,
            soc_pct=r.soc_pct if r else None,
            setpoint_w=b.setpoint_w,
            power_w=r.ac_power_w if r else None,
            mode=mode,
            note=note,
            key=b.key,
            name=b.unit.name,
            gateway=b.unit.gateway,
            register_set=b.unit.register_set,
            max_power_w=b.unit.max_power_per_battery,
            uid=b.unit.uid,
        )

    # ------------------------------------------------------------------ commands from the web thread
    def handle_command(self, command: Command) -> Any:
        """Commands from the web and MQTT threads (run here because only this thread owns the bus)."""
        if isinstance(command, SETUP_REQUESTS):
            self._setup_request_s = self.clock()  # setup mode lasts while the setup page is being used
        match command:
            case EnterSetup():
                return self.enter_setup()
            case ExitSetup():
                return self.exit_setup()
            case SetMode(request=request, source=source):
                return self.set_mode(request, source)
            case AddToConfig(battery_id=battery_id, gateway=name):
                return self._add_to_config(self._gateway(name), battery_id)
            case Scan(first_id=first_id, last_id=last_id, gateway=name):
                gateway = self._gateway(name)
                result = self._on_setup_gateway(
                    gateway, functools.partial(setup_commands.scan, first_id=first_id, last_id=last_id))
                # What add-to-config may take: the IDs that answered this (the last) scan.
                self._answered[gateway] = {hit["id"] for hit in result["found"]}
                if result["one_battery_on_every_id"]:  # every ID answers: the config check explains the rest
                    self._answered[gateway] = set(range(1, setup_commands.MAX_UNIT_ID + 1))
                return result
            case SetId(new_id=new_id, gateway=name):
                gateway = self._gateway(name)
                result = self._on_setup_gateway(gateway, functools.partial(setup_commands.set_id, new_id=new_id))
                # Re-addressed and verified: the new ID answers now, the old ID 1 no longer.
                self._answered.setdefault(gateway, set()).discard(1)
                self._answered[gateway].add(result["new_id"])
                return result
            case _:
                _unknown_command(command)

    def _add_to_config(self, gateway: str, battery_id: int) -> dict[str, Any]:
        if not self.setup_mode:
            raise CommandError(Msg("add_not_in_setup"), 409)
        self.cfg, result = setup_commands.add_to_config(self.cfg, self.config_path, gateway=gateway,
                                                        battery_id=battery_id,
                                                        answered=self._answered.get(gateway, set()))
        for unit in self.cfg.battery.units:  # the running control takes the new unit in at once
            self.bus.add_unit(unit)
            self.batteries.setdefault(unit.key, _Battery(unit))
        return result

    def _on_setup_gateway(self, gateway: str, job: SetupJob) -> dict[str, Any]:
        """``job`` run on ``gateway``'s bus (in setup mode only), with the units configured there."""
        if not self.setup_mode:
            raise CommandError(Msg("not_in_setup"), 409)
        units = [b.unit for b in self.batteries.values() if b.unit.gateway == gateway]
        # On a worker thread the heartbeat is kept up here, in ``call`` (the loop's fields stay this thread's).
        inner_alive = self._still_alive if not self.bus.threaded else lambda: None
        return self.bus.call(gateway, lambda bus: job(bus, gateway, units, inner_alive), self._still_alive)

    def _gateway(self, gateway: object) -> str:
        """The gateway a setup command names ("<host>:<port>"), or the first one."""
        gateways = self.bus.gateways
        if gateway is None:
            return gateways[0]
        if gateway not in gateways:
            raise CommandError(Msg("unknown_gateway", gateway=gateway, gateways=", ".join(gateways)), 400)
        return str(gateway)

    def _still_alive(self) -> None:
        """A long scan is progress, not a stall (the watchdog reads the heartbeat)."""
        self.heartbeat_s = self.clock()

    def enter_setup(self) -> dict[str, Any]:
        """Stop the control and every battery; the setup page may now re-address batteries."""
        if self.setup_mode:
            return {"setup_mode": True, "stop_failures": []}
        self.setup_mode = True
        failures = self.stop_all("setup mode", retry=True)
        log.warning(Msg("setup_entered"))
        self.publish("setup")
        return {"setup_mode": True, "stop_failures": failures}

    def expire_setup(self) -> None:
        """Setup mode ends by itself ``web.setup_timeout_minutes`` after the last setup request (a forgotten
        setup page must not leave the batteries unregulated and the watchdog paused)."""
        minutes = self.cfg.web.setup_timeout_minutes
        if self.setup_mode and self.clock() - self._setup_request_s >= minutes * 60.0:
            log.warning(Msg("setup_timed_out", minutes=minutes))
            self.exit_setup()

    def exit_setup(self) -> dict[str, Any]:
        """Resume the control with a fresh start (the batteries may have new IDs)."""
        if self.setup_mode:
            self.setup_mode = False
            self._answered.clear()  # a later setup mode scans again
            self.controller.reset()
            self.sign_check.reset()
            for key in self.batteries:
                self.bus.forget(key)
            log.info(Msg("setup_left"))
            self.publish("active")
        return {"setup_mode": False}


    # ------------------------------------------------------------------ operating mode
    @property
    def max_charge_power_w(self) -> int:
        """The batteries' total maximum power: the default and the limit of the "charge" mode, W."""
        return self.cfg.battery.max_power_per_battery * len(self.batteries)

    def set_mode(self, request: ModeRequest, source: str) -> dict[str, Any]:
        """Take a validated mode request (web or MQTT thread, via the command queue); answers the mode object.

        Applied at the start of the next cycle; a later request before then replaces it (latest wins)."""
        state = ModeState.from_request(request, source, self.wall_clock(), self.clock())
        self._mode_requested = state
        self.store.update(operating_mode=state.to_json())  # GET /api/mode sees it at once
        return state.to_json()

    def apply_requested_mode(self) -> None:
        """The latest mode asked for since the last cycle becomes the one in force (at most one per cycle)."""
        state, self._mode_requested = self._mode_requested, None
        if state is None:
            return
        self._change_mode(state)
        until = state.to_json()["until"]
        log.info(Msg("mode_set", mode=state.mode.value, source=state.source,
                     until=Msg("mode_until", time=until) if until else ""))

    def expire_mode(self) -> None:
        """Back to auto once the mode's time is up (on the monotonic clock; ``until`` is kept for a restart)."""
        if self.mode.expired(self.clock()):
            log.info("%s", Msg("mode_expired", mode=self.mode.mode.value))
            self._change_mode(ModeState(OperatingMode.AUTO))

    def _change_mode(self, state: ModeState) -> None:
        self.mode = state
        self.store.update(operating_mode=state.to_json())  # GET /api/mode sees it before the next publish
        if self.mode_writer is not None:
            self.mode_writer.save(state)  # written by its own thread: the disk never delays the cycle

    def _mode_not_saved(self, exc: OSError) -> None:
        """The mode file could not be written (the writer's thread)."""
        path = str(self.mode_file.path) if self.mode_file is not None else "?"
        log.error("%s", Msg("mode_file_write_failed", path=path, error=str(exc)))
