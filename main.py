"""Marstek PV-Akku Steuerung: zero-feed-in control for Marstek Venus / Duravolt batteries.

Wires the drivers together: a control thread polls the grid meter, computes setpoints with
``zero_feed_control`` and writes them with ``battery_client``; a waitress thread serves the
dashboard from the status store. SIGINT/SIGTERM stop every battery before the program exits.

    python main.py [--config PATH] [--demo] [--port N] [--host H]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import logging.handlers
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from battery_client import MarstekGateway
from config_loader import Config, ConfigError, default_config_path, load_config, parse_config, update_akku_ids
from devices import BatteryError, BatteryReading, GridMeter, MeterError
from ecotracker_client import EcoTrackerClient
from quality import QualityTracker
from shelly_client import ShellyClient
from status_store import (
    BatteryStatus,
    CommandError,
    CommandQueue,
    HistorySample,
    StatusSnapshot,
    StatusStore,
    StoreLogHandler,
    now_iso,
)
from zero_feed_control import STOPPING, BatteryState, ControlParams, Decision, Status, make_controller

log = logging.getLogger("marstek")

SCAN_PROBE_TIMEOUT_S = 1.0
SHUTDOWN_BUDGET_S = 6.0
# A battery that acknowledges a setpoint of at least NO_DELIVERY_MIN_W but delivers under 5 % of it
# for NO_DELIVERY_S is excluded for NO_DELIVERY_PAUSE_S (firmware quirk or BMS refusing near its limits).
NO_DELIVERY_MIN_W = 100
NO_DELIVERY_S = 20.0
NO_DELIVERY_PAUSE_S = 300.0
CRASH_BACKOFF_S = (5.0, 10.0, 30.0, 60.0)
MODE_NAMES = {0: "idle", 1: "charge", 2: "discharge"}


def control_params(cfg: Config) -> ControlParams:
    """The control law's parameters from the config."""
    meter = cfg.meter
    b, c = cfg.battery, cfg.control
    return ControlParams(
        target_grid_charge_w=c.target_grid_power_charge,
        target_grid_discharge_w=c.target_grid_power_discharge,
        min_power_w=b.min_power_per_battery,
        max_power_w=b.max_power_per_battery,
        min_soc_pct=b.min_soc_for_discharge,
        max_soc_pct=b.max_soc_for_charge,
        max_meter_failures=meter.max_failures_before_stop,
        deadband_w=c.deadband_w,
        average_readings=c.average_readings,
        distribution=c.distribution,
    )


def build_meter(cfg: Config) -> GridMeter:
    if cfg.energy_meter_type == "ecotracker":
        return EcoTrackerClient.from_config(cfg.ecotracker)
    return ShellyClient.from_config(cfg.shelly)


def build_bus(cfg: Config) -> MarstekGateway:
    b = cfg.battery
    return MarstekGateway(
        b.ip,
        b.port,
        register_set=b.register_set,
        timeout_s=b.timeout_seconds,
        pacing_s=None if b.pacing_ms is None else b.pacing_ms / 1000.0,
        max_power_w=b.max_power_per_battery,
        soc_interval_s=cfg.control.soc_update_interval_seconds,
    )


@dataclass
class _Battery:
    """What the control thread knows about one configured battery."""

    battery_id: int
    reading: BatteryReading | None = None
    online: bool = False
    error: str = ""
    setpoint_w: int = 0
    read_s: float | None = None  # when ``reading`` was taken (control clock)
    short_since_s: float | None = None  # delivering far less than commanded since then
    excluded_until_s: float = float("-inf")

    def usable(self, now_s: float) -> bool:
        return self.online and now_s >= self.excluded_until_s


class ControlLoop:
    """The control thread: meter in, setpoints out, status published. Owns meter and bus."""

    def __init__(
        self,
        cfg: Config,
        meter: GridMeter,
        bus: MarstekGateway,
        store: StatusStore,
        commands: CommandQueue,
        *,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.meter = meter
        self.bus = bus
        self.store = store
        self.commands = commands
        self.config_path = config_path
        self.clock = clock
        self.controller = make_controller(cfg.control.algorithm, control_params(cfg))
        self.batteries = {i: _Battery(i) for i in cfg.battery.akku_ids}
        self.setup_mode = False
        self.last_decision: Decision | None = None
        self.grid_power_w: float | None = None
        self.meter_ok = False
        self.meter_error = ""
        self.meter_error_since: str | None = None
        self._last_value: float | None = None
        self._last_change_s = clock()
        self._last_reason = ""
        self._last_status = ""
        self.internal_error = ""
        self.quality = QualityTracker()
        self.heartbeat_s = clock()

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        """Cycle until ``stop`` is set; always leaves the batteries stopped."""
        interval_s = self.cfg.control.poll_interval_seconds
        log.info("Control started: %s meter, batteries %s, %s", self.meter.name,
                 list(self.batteries), self.cfg.control.algorithm)
        crashes = 0
        try:
            while not stop.is_set():
                started_s = self.clock()
                try:
                    self.cycle()
                    crashes, self.internal_error = 0, ""
                except Exception as exc:
                    # A bug must not leave a battery running on a stale setpoint, nor end the
                    # program: stop everything, say so, and try again later.
                    log.exception("Control cycle failed: batteries stopped, retrying")
                    self.internal_error = f"Interner Fehler / internal error: {type(exc).__name__}: {exc}"
                    self.stop_all("control error")
                    self.publish("error")
                    stop.wait(CRASH_BACKOFF_S[min(crashes, len(CRASH_BACKOFF_S) - 1)])
                    crashes += 1
                    continue
                self.heartbeat_s = self.clock()
                wait_s = interval_s
                if self.last_decision is not None and self.last_decision.status is Status.METER_FAILED:
                    wait_s = max(interval_s, self.meter_retry_interval_s)
                wait_s = max(0.0, wait_s - (self.clock() - started_s))
                # Woken early by a web command or by the stop request (request_stop sets both).
                self.commands.wakeup.wait(wait_s)
        finally:
            self.stop_all("shutdown")
            self.publish("stopped")
            self.meter.close()
            self.bus.close()
            log.info("Control stopped, batteries stopped")

    @property
    def meter_retry_interval_s(self) -> float:
        meter = self.cfg.meter
        return meter.check_interval_seconds

    def cycle(self) -> None:
        """One control cycle (also called directly by tests)."""
        self.commands.run_pending(self.handle_command)
        if self.setup_mode:
            # The meter is not on the Modbus bus: keep showing live grid power. The batteries are
            # stopped and not polled, so their power is unknown rather than the last value.
            self.read_meter()
            for b in self.batteries.values():
                b.reading, b.setpoint_w = None, 0
            self.publish("setup")
            return
        grid_w, received_s = self.read_meter()
        self.read_batteries()
        now_s = self.clock()
        self.check_delivery(now_s)
        states = [
            BatteryState(b.battery_id, b.usable(now_s), b.reading.soc_pct if b.reading else None,
                         b.reading.ac_power_w if b.reading else None, read_s=b.read_s if b.reading else None)
            for b in self.batteries.values()
        ]
        decision = self.controller.step(
            self.clock(), grid_w, states, grid_received_s=received_s, meter_error=self.meter_error
        )
        self.last_decision = decision
        # Log transitions; a reason that only counts up ("meter failed 5x") is not a new event.
        quiet = {Status.SETTLING, Status.DEADBAND, Status.METER_RETRY, Status.METER_FAILED}
        changed = decision.status.value != self._last_status or (
            decision.reason != self._last_reason and decision.status not in quiet)
        if changed:
            level = logging.WARNING if decision.status in STOPPING | {Status.METER_RETRY} else logging.INFO
            if decision.status not in (Status.SETTLING, Status.DEADBAND):
                log.log(level, "%s", decision.reason)
        self._last_reason, self._last_status = decision.reason, decision.status.value
        self.apply(decision)
        self.track_quality(now_s, grid_w, decision)
        self.publish("error" if decision.status in STOPPING else "active")

    def track_quality(self, now_s: float, grid_w: float | None, decision: Decision) -> None:
        """Feed the live control-quality figures (RMS error, export today, writes/h)."""
        c = self.cfg.control
        total_w = decision.total_w
        target_w = c.target_grid_power_discharge if total_w > 0 else c.target_grid_power_charge if total_w < 0 else None
        measured = [b.reading.ac_power_w for b in self.batteries.values() if b.online and b.reading]
        self.quality.add(now_s, grid_w, target_w, self.bus.writes_total, datetime.date.today(),
                         battery_w=sum(measured) if measured else None)

    def read_meter(self) -> tuple[float | None, float | None]:
        """Grid power (+ import) or None; a value frozen too long counts as a failure."""
        meter_cfg = self.cfg.meter
        now_s = self.clock()
        try:
            reading = self.meter.read()
        except MeterError as exc:
            self._meter_failed(str(exc))
            return None, None
        if reading.grid_power_w != self._last_value:
            self._last_value, self._last_change_s = reading.grid_power_w, now_s
        elif now_s - self._last_change_s > meter_cfg.max_frozen_seconds:
            self._meter_failed(
                f"meter value frozen at {reading.grid_power_w:.0f} W for {now_s - self._last_change_s:.0f} s"
            )
            return None, None
        if not self.meter_ok and self.meter_error:
            log.info("Meter OK again (%.0f W)", reading.grid_power_w)
        self.meter_ok, self.meter_error, self.meter_error_since = True, "", None
        self.grid_power_w = reading.grid_power_w
        return reading.grid_power_w, reading.received_at_s

    def _meter_failed(self, message: str) -> None:
        if self.meter_ok or not self.meter_error:
            log.warning("Meter read failed: %s", message)
            self.meter_error_since = now_iso()
        self.meter_ok, self.meter_error = False, message
        self.grid_power_w = None

    def read_batteries(self) -> None:
        for b in self.batteries.values():
            try:
                b.reading = self.bus.read(b.battery_id)
                b.read_s = self.clock()  # the law matches battery power to the meter's sample instant
            except BatteryError as exc:
                if b.online or not b.error:
                    log.warning("Battery %d offline: %s", b.battery_id, exc)
                b.online, b.error = False, str(exc)
                continue
            if not b.online:
                log.info("Battery %d online (SoC %.0f %%)", b.battery_id, b.reading.soc_pct)
            b.online, b.error = True, ""

    def check_delivery(self, now_s: float) -> None:
        """Exclude a battery that acknowledges its setpoint but delivers (almost) nothing; retry later."""
        for b in self.batteries.values():
            if b.excluded_until_s != float("-inf") and now_s >= b.excluded_until_s:
                b.excluded_until_s = float("-inf")
                log.info("Battery %d: trying again after its pause", b.battery_id)
            if not b.online or b.reading is None or abs(b.setpoint_w) < NO_DELIVERY_MIN_W:
                b.short_since_s = None
                continue
            delivered = b.reading.ac_power_w * (1 if b.setpoint_w > 0 else -1)
            if delivered >= 0.05 * abs(b.setpoint_w):
                b.short_since_s = None
            elif b.short_since_s is None:
                b.short_since_s = now_s
            elif now_s - b.short_since_s >= NO_DELIVERY_S:
                log.warning("Battery %d acknowledges %d W but delivers %.0f W: paused for %.0f min",
                            b.battery_id, b.setpoint_w, b.reading.ac_power_w, NO_DELIVERY_PAUSE_S / 60)
                b.excluded_until_s = now_s + NO_DELIVERY_PAUSE_S
                b.short_since_s = None
                try:
                    self.bus.stop(b.battery_id)
                    b.setpoint_w = 0
                except BatteryError as exc:
                    log.warning("Battery %d: stop failed: %s", b.battery_id, exc)

    def apply(self, decision: Decision) -> None:
        """Write each online battery's setpoint; a failing battery never blocks the others."""
        stopping = decision.status in STOPPING
        now_s = self.clock()
        for b in self.batteries.values():
            setpoint_w = 0 if stopping else int(decision.setpoints_w.get(b.battery_id, 0))
            if not b.usable(now_s):
                if b.online:
                    continue  # paused: it was stopped when it was excluded
                b.setpoint_w = 0
                continue
            try:
                self.bus.write_setpoint(b.battery_id, setpoint_w, b.reading)
                b.setpoint_w = setpoint_w
            except BatteryError as exc:
                log.warning("Battery %d: write failed: %s", b.battery_id, exc)
                b.online, b.error = False, str(exc)

    def stop_all(self, why: str, budget_s: float = SHUTDOWN_BUDGET_S) -> list[str]:
        """Force mode stop and both setpoints 0 on every battery; returns the failures."""
        deadline_s = self.clock() + budget_s
        failures = []
        for b in self.batteries.values():
            if self.clock() > deadline_s:
                failures.append(f"battery {b.battery_id}: no time left to stop it")
                continue
            try:
                self.bus.stop(b.battery_id)
                b.setpoint_w = 0
            except BatteryError as exc:
                failures.append(f"battery {b.battery_id}: {exc}")
        self.controller.reset()
        for failure in failures:
            log.error("Could not stop %s (%s)", failure, why)
        return failures

    # ------------------------------------------------------------------ status
    def publish(self, state: str) -> None:
        decision = self.last_decision
        errors = [self.internal_error] if self.internal_error else []
        if not self.meter_ok and self.meter_error:
            errors.append(f"Messgerät / meter: {self.meter_error}")
        errors += [f"Akku / battery {b.battery_id}: {b.error}" for b in self.batteries.values() if b.error]
        batteries = tuple(self._battery_status(b, state) for b in self.batteries.values())
        snapshot = StatusSnapshot(
            grid_power_w=self.grid_power_w,
            grid_power_avg_w=decision.grid_power_avg_w if decision else None,
            meter_type=self.meter.name,
            meter_ok=self.meter_ok,
            control_state="setup" if self.setup_mode else state,
            setup_mode=self.setup_mode,
            batteries=batteries,
            errors=tuple(errors),
            reason=decision.reason if decision else "",
            status=decision.status.value if decision else "",
            meter_error_since=self.meter_error_since,
            warnings=self.store.latest().warnings,
            quality=self.quality.figures(),
        )
        online = [b for b in batteries if b.online and b.power_w is not None]
        socs = [b.soc_pct for b in batteries if b.online and b.soc_pct is not None]
        sample = HistorySample(
            t=time.time(),
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
        note = b.error or (self.last_decision.battery_notes.get(b.battery_id, "") if self.last_decision else "")
        if b.online and not b.usable(self.clock()):
            minutes = (b.excluded_until_s - self.clock()) / 60
            note = f"liefert trotz Sollwert keine Leistung – Pause, neuer Versuch in {minutes:.0f} min"
        return BatteryStatus(
            id=b.battery_id,
            online=b.online,
            soc_pct=r.soc_pct if r else None,
            setpoint_w=b.setpoint_w,
            power_w=r.ac_power_w if r else None,
            mode=mode,
            note=note,
        )

    # ------------------------------------------------------------------ setup commands
    def handle_command(self, name: str, args: Mapping[str, Any]) -> Any:
        """Commands from the web thread (run here because only this thread owns the bus)."""
        handlers = {
            "enter_setup": self._enter_setup,
            "exit_setup": self._exit_setup,
            "scan": self._scan,
            "set_id": self._set_id,
            "add_to_config": self._add_to_config,
        }
        if name not in handlers:
            raise CommandError(f"unknown command {name}", 400)
        return handlers[name](**args)

    def _require_setup(self) -> None:
        if not self.setup_mode:
            raise CommandError("Nicht im Setup-Modus – zuerst den Setup-Modus starten / "
                               "not in setup mode: POST /api/setup/enter first", 409)

    def _enter_setup(self) -> dict[str, Any]:
        if not self.setup_mode:
            self.setup_mode = True
            failures = self.stop_all("setup mode")
            log.warning("Setup mode: control stopped, all batteries stopped")
            self.publish("setup")
            return {"setup_mode": True, "stop_failures": failures}
        return {"setup_mode": True, "stop_failures": []}

    def _exit_setup(self) -> dict[str, Any]:
        if self.setup_mode:
            self.setup_mode = False
            self.controller.reset()
            for b in self.batteries.values():
                self.bus.forget(b.battery_id)
            log.info("Setup mode left: control resumes")
            self.publish("active")
        return {"setup_mode": False}

    def _probe(self, unit_id: int) -> dict[str, Any] | None:
        self.heartbeat_s = self.clock()  # a long scan is progress, not a stall
        try:
            model, soc = self.bus.probe(unit_id, timeout_s=SCAN_PROBE_TIMEOUT_S)
        except BatteryError:
            return None
        return {"id": unit_id, "model": model, "soc_pct": soc}

    def _scan(self, first_id: int = 1, last_id: int = 10) -> dict[str, Any]:
        self._require_setup()
        found = [hit for i in range(first_id, last_id + 1) if (hit := self._probe(i))]
        taken = {f["id"] for f in found} | set(self.batteries)
        next_free = next((i for i in range(2, 248) if i not in taken), None)
        log.info("Scan %d..%d: found %s", first_id, last_id, [f["id"] for f in found] or "nothing")
        return {"found": found, "next_free_id": next_free}

    def _set_id(self, new_id: int) -> dict[str, Any]:
        self._require_setup()
        if self._probe(new_id) is not None:
            raise CommandError(f"ID {new_id} ist schon belegt / ID {new_id} is already in use by another battery", 409)
        if self._probe(1) is None:
            raise CommandError("Kein Akku antwortet auf ID 1 / no battery answers on ID 1", 409)
        try:
            self.bus.set_unit_id(new_id, current_id=1)
        except BatteryError as exc:
            raise CommandError(f"Schreiben der neuen ID fehlgeschlagen / writing the new ID failed: {exc}",
                               502) from exc
        hit = self._probe(new_id)
        if hit is None:
            raise CommandError(f"Der Akku antwortet nach der Änderung nicht auf ID {new_id} / "
                               f"no answer on ID {new_id} after the change", 502)
        log.warning("Battery re-addressed: ID 1 -> %d (%s)", new_id, hit["model"])
        return {"ok": True, "new_id": new_id, "verified": True, "model": hit["model"], "soc_pct": hit["soc_pct"],
                "in_config": new_id in self.batteries}

    def _add_to_config(self, battery_id: int) -> dict[str, Any]:
        ids = list(self.batteries)
        if battery_id in ids:
            return {"akku_ids": ids, "saved": False, "message": f"ID {battery_id} is already configured"}
        ids.append(battery_id)
        saved = False
        if self.config_path is not None:
            try:
                self.cfg = update_akku_ids(self.config_path, ids)
            except ConfigError as exc:
                raise CommandError(f"config.json nicht geändert / config not changed: {exc}", 409) from exc
            saved = True
        else:
            self.cfg = replace(self.cfg, battery=replace(self.cfg.battery, akku_ids=tuple(ids)))
        self.batteries[battery_id] = _Battery(battery_id)
        log.info("Battery %d added to battery.akku_ids%s", battery_id, "" if saved else " (demo: not saved)")
        return {"akku_ids": ids, "saved": saved}


# ---------------------------------------------------------------------------- watchdog
class Watchdog:
    """Notices a control loop that stopped cycling and puts the batteries in the safe state."""

    def __init__(
        self,
        heartbeat_s: Callable[[], float],
        limit_s: float,
        on_stall: Callable[[float], None],
        *,
        paused: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.heartbeat_s, self.limit_s, self.on_stall = heartbeat_s, limit_s, on_stall
        self.paused, self.clock = paused, clock
        self.fired = False

    def check(self) -> bool:
        """True when a stall was detected by this call."""
        stalled_s = self.clock() - self.heartbeat_s()
        if self.paused() or stalled_s <= self.limit_s:
            if self.fired and stalled_s <= self.limit_s:
                log.info("Control loop running again")
            self.fired = False
            return False
        if self.fired:
            return False
        self.fired = True
        self.on_stall(stalled_s)
        return True

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            self.check()


def watchdog_limit_s(cfg: Config) -> float:
    """Longest a healthy cycle can take (every timeout hit once) plus a margin."""
    meter = cfg.meter
    frames = 5 * len(cfg.battery.akku_ids)
    return meter.timeout_seconds + frames * cfg.battery.timeout_seconds + cfg.control.poll_interval_seconds + 10.0


def emergency_stop(cfg: Config, store: StatusStore, stalled_s: float) -> None:
    """Stop every battery over a separate connection: the control thread is stuck in its own."""
    message = f"Regelung hängt seit {stalled_s:.0f} s: Akkus gestoppt / control loop stalled: batteries stopped"
    log.error("%s", message)
    store.update(control_state="error", errors=(*store.latest().errors, message))
    bus = build_bus(replace(cfg, battery=replace(cfg.battery, timeout_seconds=1.0)))
    try:
        for battery_id in cfg.battery.akku_ids:
            try:
                bus.stop(battery_id)
            except BatteryError as exc:
                log.error("Watchdog could not stop battery %d: %s", battery_id, exc)
    finally:
        bus.close()


# ---------------------------------------------------------------------------- --check
def run_check(cfg: Config, config_path: Path) -> int:
    """Contact the meter and every battery once and print a diagnosis with likely fixes."""
    problems = 0
    print(f"Konfiguration {config_path}: OK")
    meter_cfg = cfg.meter
    meter = build_meter(cfg)
    try:
        reading = meter.read()
        sign = "Bezug" if reading.grid_power_w >= 0 else "Einspeisung"
        print(f"Zähler {cfg.energy_meter_type} {meter_cfg.ip}: OK, {reading.grid_power_w:.0f} W ({sign})")
    except MeterError as exc:
        problems += 1
        print(f"Zähler {cfg.energy_meter_type} {meter_cfg.ip}: FEHLER: {exc}")
        print(f"  -> {meter_hint(str(exc), cfg.energy_meter_type)}")
    finally:
        meter.close()
    bus = build_bus(cfg)
    try:
        for battery_id in cfg.battery.akku_ids:
            try:
                model, soc = bus.probe(battery_id, timeout_s=min(2.0, cfg.battery.timeout_seconds))
                reading = bus.read(battery_id)
                control = "an" if reading.rs485_control else "aus (wird beim Start eingeschaltet)"
                print(f"Akku ID {battery_id} ({cfg.battery.ip}:{cfg.battery.port}): OK, {model or '?'}, "
                      f"SoC {soc:.0f} %, {reading.ac_power_w:+.0f} W, RS485-Steuerung {control}")
            except BatteryError as exc:
                problems += 1
                print(f"Akku ID {battery_id} ({cfg.battery.ip}:{cfg.battery.port}): FEHLER: {exc}")
                print(f"  -> {battery_hint(str(exc), cfg)}")
    finally:
        bus.close()
    print("Alles erreichbar." if problems == 0 else f"{problems} Problem(e) gefunden.")
    return 0 if problems == 0 else 1


def meter_hint(message: str, meter_type: str) -> str:
    text = message.lower()
    if "401" in text or "password" in text or "passwort" in text:
        return "Passwort des Shelly in shelly.password eintragen (Benutzer ist immer 'admin')."
    if "refused" in text or "timed out" in text or "timeout" in text or "unreachable" in text:
        return (f"IP-Adresse in {meter_type}.ip prüfen, 'ping <ip>' versuchen, Gerät eingeschaltet und im selben "
                "Netz? Richtiger Typ in energy_meter.type?")
    if "field" in text or "json" in text or "404" in text:
        return ("Antwort passt nicht zum Zählertyp: energy_meter.type prüfen (shelly/ecotracker) und im Browser "
                "http://<ip>/rpc/EM.GetStatus?id=0 bzw. http://<ip>/v1/json öffnen.")
    return "Zähler neu starten und erneut prüfen; Einzelheiten oben."


def battery_hint(message: str, cfg: Config) -> str:
    text = message.lower()
    if "unreachable" in text or "refused" in text:
        return (f"Gateway {cfg.battery.ip}:{cfg.battery.port} nicht erreichbar: IP/Port prüfen, Gateway "
                "eingeschaltet, Modus 'Modbus TCP' (nicht transparent)?")
    if "exception" in text:
        other = "v3" if cfg.battery.register_set == "v2" else "v2"
        return f"Akku antwortet, kennt aber die Register nicht: battery.register_set auf '{other}' stellen?"
    return ("Keine Antwort unter dieser ID: ID in battery.akku_ids prüfen (Setup-Seite -> Geräte scannen), "
            "RS485-Verkabelung A/B, Gateway 115200 8N1.")


# ---------------------------------------------------------------------------- process
def setup_logging(cfg: Config, store: StatusStore, base_dir: Path) -> None:
    root = logging.getLogger()
    root.setLevel(cfg.logging.level)
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    root.addHandler(console)
    log_path = Path(cfg.logging.file)
    if not log_path.is_absolute():
        log_path = base_dir / log_path
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            log_path, maxBytes=int(cfg.logging.max_file_size_mb * 1024 * 1024),
            backupCount=cfg.logging.backup_count, encoding="utf-8",
        )
    except OSError as exc:
        log.warning("Cannot write the log file %s (%s): logging to the console only", log_path, exc)
    else:
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    root.addHandler(StoreLogHandler(store))
    # Keep library chatter (waitress, urllib3) out of the event list.
    for noisy in ("waitress", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth" is not an event


def demo_config(port: int, sim: Any) -> Config:
    """A config pointing at the built-in simulator."""
    return parse_config({
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 2, "max_failures_before_stop": 2},
        "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": [1, 2], "timeout_seconds": 1},
        "control": {"poll_interval_seconds": 1},
        "web": {"host": "127.0.0.1", "port": port},
    })


def start_web(app: Any, host: str, port: int) -> tuple[Any, threading.Thread]:
    """Serve the Flask app with waitress in its own thread."""
    from waitress.server import create_server

    server = create_server(app, host=host, port=port, threads=4, ident="")
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    return server, thread


def stop_web(server: Any, thread: threading.Thread) -> None:
    """Close waitress from its own loop thread (closing its sockets from outside races select)."""
    from waitress import wasyncore

    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
    thread.join(timeout=3.0)
    server.task_dispatcher.shutdown()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Marstek PV-Akku Steuerung (Nulleinspeisung)")
    parser.add_argument("--config", type=Path, default=None, help="config file (default: config.json beside main.py)")
    parser.add_argument("--demo", action="store_true", help="run against the built-in simulator, no hardware")
    parser.add_argument("--port", type=int, default=None, help="dashboard port (overrides web.port)")
    parser.add_argument("--host", default=None, help="dashboard address (overrides web.host)")
    parser.add_argument("--check", action="store_true",
                        help="check the config, contact the meter and every battery once, print a diagnosis")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        print("--port: must be 1..65535", file=sys.stderr)
        return 2
    sim = None
    config_path: Path | None = None
    store = StatusStore()
    try:
        if args.demo:
            from simulator import HouseModel, Simulation, UnitSpec

            sim = Simulation(units=[UnitSpec(1, soc_pct=55.0), UnitSpec(2, soc_pct=70.0)],
                             house=HouseModel(demo=True))
            sim.start()
            cfg = demo_config(args.port or 8080, sim)
        else:
            config_path = (args.config or default_config_path()).resolve()
            cfg = load_config(config_path)
    except ConfigError as exc:
        print(f"Konfigurationsfehler / configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check and config_path is not None:
        logging.basicConfig(level=logging.CRITICAL)
        return run_check(cfg, config_path)
    web = cfg.web
    web = replace(web, port=args.port or web.port, host=args.host or web.host)
    cfg = replace(cfg, web=web)
    base_dir = config_path.parent if config_path else Path(__file__).resolve().parent
    setup_logging(cfg, store, base_dir)

    stop = threading.Event()

    commands = CommandQueue()

    def request_stop() -> None:
        stop.set()
        commands.wakeup.set()  # the control loop waits on this event

    def on_signal(signum: int, _frame: object) -> None:
        log.info("Signal %s received: stopping", signal.Signals(signum).name)
        request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    from web_server import create_app

    loop = ControlLoop(cfg, build_meter(cfg), build_bus(cfg), store, commands, config_path=config_path)
    app = create_app(store, commands, cfg.web)
    try:
        server, web_thread = start_web(app, cfg.web.host, cfg.web.port)
    except OSError as exc:
        print(f"Web server: cannot listen on {cfg.web.host}:{cfg.web.port}: {exc}", file=sys.stderr)
        if sim:
            sim.stop()
        return 1
    host = "localhost" if cfg.web.host in ("0.0.0.0", "::", "127.0.0.1") else cfg.web.host
    log.info("Dashboard: http://%s:%d", host, cfg.web.port)
    control = threading.Thread(target=loop.run, args=(stop,), name="control", daemon=True)
    control.start()
    watchdog = Watchdog(lambda: loop.heartbeat_s, watchdog_limit_s(cfg),
                        lambda stalled_s: emergency_stop(cfg, store, stalled_s), paused=lambda: loop.setup_mode)
    threading.Thread(target=watchdog.run, args=(stop,), name="watchdog", daemon=True).start()
    try:
        while not stop.wait(0.5):
            if not control.is_alive():
                log.error("Control thread ended unexpectedly: stopping")
                request_stop()
            elif not web_thread.is_alive():
                log.error("Web server thread ended unexpectedly: restarting it (the control keeps running)")
                server, web_thread = start_web(app, cfg.web.host, cfg.web.port)
    finally:
        request_stop()
        control.join(timeout=SHUTDOWN_BUDGET_S + 2)
        if control.is_alive():
            # Still inside a long meter or Modbus timeout: the batteries would keep their last setpoint.
            # Free its connection (a v3 device takes only one client) and stop them over a new one.
            loop.bus.close()
            emergency_stop(cfg, store, time.monotonic() - loop.heartbeat_s)
        stop_web(server, web_thread)
        if sim:
            sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
