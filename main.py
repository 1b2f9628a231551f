"""Marstek PV-Akku Steuerung: zero-feed-in control for Marstek Venus / Duravolt batteries.

The command line and the wiring: builds the meter driver and the Modbus gateway from the config,
runs the control thread (``control_loop``), the watchdog (``watchdog``) and the dashboard's waitress
thread (``web_server``), and handles the signals. SIGINT/SIGTERM stop every battery before the
program exits.

    python main.py [--config PATH] [--demo] [--check] [--port N] [--host H]
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from config_loader import (
    Config,
    ConfigError,
    default_config_path,
    load_config,
    parse_config,
    remove_stray_temp_files,
)
from control import i18n
from control.check import run_check
from control.control_loop import SHUTDOWN_BUDGET_S, ControlLoop
from control.devices import GridMeter, InvertedMeter
from control.fleet import Fleet
from control.modes import ModeFile
from control.status_store import CommandQueue, QuirkCounter, StatusStore, StoreLogHandler
from control.watchdog import Watchdog, emergency_stop, watchdog_limit_s
from ecotracker_client import EcoTrackerClient
from integrations.diagnostics import Diagnostics
from integrations.history import History
from meters.http_meters import HomeWizardClient, HttpJsonClient
from shelly_client import ShellyClient

log = logging.getLogger("marstek")


EMERGENCY_TIMEOUT_S = 1.0  # answer timeout of the watchdog's own connection
MODE_FILE = Path("data") / "mode.json"  # the operating mode, beside the config file


def build_meter(cfg: Config, clock: Callable[[], float] = time.monotonic) -> GridMeter:
    """The grid meter driver that ``energy_meter.type`` selects; it stamps readings on ``clock``.

    With ``energy_meter.invert`` every reading is negated before anything else sees it.
    """
    meter: GridMeter
    if cfg.energy_meter_type == "ecotracker":
        meter = EcoTrackerClient.from_config(cfg.ecotracker, clock)
    elif cfg.energy_meter_type == "homewizard":
        meter = HomeWizardClient.from_config(cfg.homewizard, clock)
    elif cfg.energy_meter_type == "http_json":
        meter = HttpJsonClient.from_config(cfg.http_json, clock)
    elif cfg.energy_meter_type == "mqtt" and cfg.mqtt is not None and cfg.mqtt_meter is not None:
        from meters.mqtt_meter import MqttMeter

        meter = MqttMeter.from_config(cfg.mqtt, cfg.mqtt_meter, clock)
    else:
        meter = ShellyClient.from_config(cfg.shelly, clock)
    return InvertedMeter(meter) if cfg.energy_meter_invert else meter


def build_fleet(cfg: Config, timeout_s: float | None = None, *,
                quirks: QuirkCounter | None = None) -> Fleet:
    """Every battery: one Modbus gateway per host:port, served in parallel; ``timeout_s`` overrides
    ``battery.timeout_seconds``; the gateways report their quirks (RS485 re-asserts, reconnects) to ``quirks``."""
    return Fleet.from_config(cfg, timeout_s=timeout_s, on_quirk=None if quirks is None else quirks.note)


build_bus = build_fleet  # the name of the single-gateway days


def emergency_bus(cfg: Config) -> Fleet:
    """Second connections for the watchdog's and the shutdown's emergency stop."""
    return build_fleet(cfg, timeout_s=EMERGENCY_TIMEOUT_S)


# ---------------------------------------------------------------------------- process
class SharedRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler that keeps logging when the rollover rename is refused.

    Windows cannot rename a file that another program holds open (a log viewer, ``Get-Content -Wait``):
    the plain handler then loses every record and prints a traceback for each. This one notes the failure
    in the file, keeps appending to it and tries again after ``retry_s``.
    """

    retry_s = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after_s = float("-inf")

    def shouldRollover(self, record: logging.LogRecord) -> int:
        if time.monotonic() < self.retry_after_s:
            return 0
        return super().shouldRollover(record)

    def doRollover(self) -> None:
        try:
            super().doRollover()
        except OSError as exc:
            self.retry_after_s = time.monotonic() + self.retry_s
            if self.stream is None:
                self.stream = self._open()
            self.stream.write(f"Log rotation failed, continuing in this file (in use by another program?): {exc}\n")


def setup_logging(cfg: Config, store: StatusStore, base_dir: Path) -> None:
    root = logging.getLogger()
    root.setLevel(cfg.logging.level)
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if sys.stderr is not None:  # None under pythonw.exe (the Windows autostart has no console)
        console = logging.StreamHandler()
        console.setFormatter(fmt)
        root.addHandler(console)
    log_path = Path(cfg.logging.file)
    if not log_path.is_absolute():
        log_path = base_dir / log_path
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = SharedRotatingFileHandler(
            log_path, maxBytes=int(cfg.logging.max_file_size_mb * 1024 * 1024),
            backupCount=cfg.logging.backup_count, encoding="utf-8",
        )
    except OSError as exc:
        log.warning(i18n.Msg("log_file_unwritable", path=log_path, error=str(exc)))
    else:
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    root.addHandler(StoreLogHandler(store))
    # Keep library chatter (waitress, urllib3) out of the event list.
    for noisy in ("waitress", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth" is not an event


def demo_config(port: int, sim: Any, history_path: str = ":memory:") -> Config:
    """A config pointing at the built-in simulator: every gateway of ``sim`` and every unit behind it; the
    history in ``history_path`` (a temp dir)."""
    units = [{"ip": f"127.0.0.1:{gateway.port}", "id": unit.unit_id, "register_set": unit.register_set,
              "name": name, "rs485_gateway": not gateway.lan}
             for gateway in sim.gateways for unit, name in zip(gateway.units, _demo_names(gateway), strict=False)]
    return parse_config({
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 2, "max_failures_before_stop": 2},
        "battery": {"timeout_seconds": 1, "units": units},
        "control": {"poll_interval_seconds": 1},
        "web": {"host": "127.0.0.1", "port": port},
        "history": {"path": history_path},
    })


def _demo_names(gateway: Any) -> list[str]:
    """Names that say what the demo's batteries stand for."""
    if len(gateway.units) == 1 and gateway.units[0].register_set == "v3":
        return ["Venus E v3 (LAN)"]
    return [f"Venus E v2 #{u.unit_id} (RS485)" for u in gateway.units]


def demo_simulation() -> Any:
    """The demo's mixed fleet: one v2 RS485 gateway with two units and one Venus E v3 on its own LAN port."""
    from simulator.world import HouseModel, Simulation, UnitSpec

    return Simulation(units=[UnitSpec(1, soc_pct=55.0), UnitSpec(2, soc_pct=70.0)], house=HouseModel(demo=True),
                      gateways=[[UnitSpec(1, "v3", soc_pct=62.0)]])


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

    # waitress has no public way to close its sockets from its own loop thread.
    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))  # noqa: SLF001
    thread.join(timeout=3.0)
    server.task_dispatcher.shutdown()


def start_mqtt(cfg: Config, store: StatusStore, commands: CommandQueue, loop: ControlLoop,
               stop: threading.Event, history: History | None = None) -> threading.Thread | None:
    """The MQTT bridge in its own thread when ``mqtt.host`` is set; None when MQTT is off."""
    if cfg.mqtt is None:
        return None
    from integrations.diagnostics import program_version
    from integrations.mqtt_bridge import MqttBridge, gateway_of, start_bridge

    bridge = MqttBridge(cfg.mqtt, store, commands, gateway=gateway_of(cfg.battery),
                        max_charge_power_w=lambda: loop.max_charge_power_w, sw_version=program_version(),
                        energy_today=(lambda: history.energy_days(1)[-1]) if history is not None else None)
    return start_bridge(bridge, stop)


def stop_demo(sim: Any, demo_dir: str | None) -> None:
    """Stop the demo's simulator and remove its temporary history."""
    if sim:
        sim.stop()
    if demo_dir:
        shutil.rmtree(demo_dir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Marstek PV-Akku Steuerung (Nulleinspeisung)")
    parser.add_argument("--config", type=Path, default=None, help="config file (default: config.json beside main.py)")
    parser.add_argument("--demo", action="store_true", help="run against the built-in simulator, no hardware")
    parser.add_argument("--port", type=int, default=None, help="dashboard port (overrides web.port)")
    parser.add_argument("--host", default=None, help="dashboard address (overrides web.host)")
    parser.add_argument("--check", action="store_true",
                        help="check the config, contact the meter and every battery once, print a diagnosis")
    return parser.parse_args(argv)


def clean_stray_temp_files(cfg: Config, config_path: Path, base_dir: Path) -> None:
    """Remove the temp files an earlier crash left beside the config, mode and history files."""
    beside = [config_path, base_dir / MODE_FILE]
    if cfg.history.path != ":memory:":
        beside.append(Path(cfg.history.path))
    for stray in remove_stray_temp_files(*beside):
        log.info(i18n.Msg("stray_temp_removed", path=str(stray)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        print(i18n.Msg("port_out_of_range"), file=sys.stderr)
        return 2
    sim = None
    demo_dir: str | None = None
    config_path: Path | None = None
    store = StatusStore()
    try:
        if args.demo:
            sim = demo_simulation()
            sim.start()
            demo_dir = tempfile.mkdtemp(prefix="marstek-demo-")
            cfg = demo_config(args.port or 8080, sim, str(Path(demo_dir) / "history.sqlite3"))
        else:
            config_path = (args.config or default_config_path()).resolve()
            cfg = load_config(config_path)
    except ConfigError as exc:
        # No web.language without a config: the message is in the default language (German).
        print(i18n.Msg("config_error", error=str(exc)), file=sys.stderr)
        return 2
    i18n.set_language(cfg.web.language)
    if args.check and config_path is not None:
        logging.basicConfig(level=logging.CRITICAL)
        return run_check(cfg, config_path, build_meter(cfg), build_fleet(cfg))
    web = cfg.web
    web = replace(web, port=args.port or web.port, host=args.host or web.host)
    cfg = replace(cfg, web=web)
    base_dir = config_path.parent if config_path else Path(__file__).resolve().parent
    setup_logging(cfg, store, base_dir)
    if config_path is not None:
        clean_stray_temp_files(cfg, config_path, base_dir)

    stop = threading.Event()

    commands = CommandQueue()

    def request_stop() -> None:
        stop.set()
        commands.wakeup.set()  # the control loop waits on this event

    def on_signal(signum: int, _frame: object) -> None:
        log.info(i18n.Msg("signal_received", name=signal.Signals(signum).name))
        request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    from control.shutdown_windows import install_shutdown_handlers

    stopped = threading.Event()  # set when the batteries are stopped: the Windows handler waits for it
    install_shutdown_handlers(request_stop, stopped.wait)

    from web_server import create_app

    # The operating mode survives a restart in data/mode.json beside the config (the demo keeps it in memory).
    mode_file = ModeFile(base_dir / MODE_FILE) if config_path is not None else None
    meter = build_meter(cfg)
    # One counter for the device quirks: the gateways report theirs, the loop its own (meter failures, ...).
    quirks = QuirkCounter()
    loop = ControlLoop(cfg, meter, build_fleet(cfg, quirks=quirks), store, commands, config_path=config_path,
                       mode_file=mode_file, emergency_fleet=emergency_bus, quirks=quirks)
    # Opened by its own thread: a hanging disk never delays the control.
    history = History(cfg.history.path, cfg.history.retention_days, store, open_now=False)
    diagnostics = Diagnostics(cfg, store, meter=meter, quirks=quirks, history=history)
    app = create_app(store, commands, cfg.web, max_charge_power_w=lambda: loop.max_charge_power_w,
                     history=history, diagnostics=diagnostics.bundle)
    try:
        server, web_thread = start_web(app, cfg.web.host, cfg.web.port)
    except OSError as exc:
        print(i18n.Msg("web_cannot_listen", host=cfg.web.host, port=cfg.web.port, error=str(exc)), file=sys.stderr)
        stop_demo(sim, demo_dir)
        return 1
    host = "localhost" if cfg.web.host in ("0.0.0.0", "::", "127.0.0.1") else cfg.web.host
    log.info(i18n.Msg("dashboard_at", url=f"http://{host}:{cfg.web.port}"))
    control = threading.Thread(target=loop.run, args=(stop,), name="control", daemon=True)
    control.start()
    history_thread = threading.Thread(target=history.run, args=(stop,), name="history", daemon=True)
    history_thread.start()
    watchdog = Watchdog(lambda: loop.heartbeat_s, watchdog_limit_s(cfg),
                        lambda stalled_s: emergency_stop(cfg, store, stalled_s, lambda: emergency_bus(cfg),
                                                         stuck=loop.bus),
                        paused=lambda: loop.setup_mode)
    threading.Thread(target=watchdog.run, args=(stop,), name="watchdog", daemon=True).start()
    mqtt_thread = start_mqtt(cfg, store, commands, loop, stop, history)
    try:
        while not stop.wait(0.5):
            if not control.is_alive():
                log.error(i18n.Msg("control_thread_ended"))
                request_stop()
            elif not web_thread.is_alive():
                log.error(i18n.Msg("web_thread_ended"))
                server, web_thread = start_web(app, cfg.web.host, cfg.web.port)
    finally:
        request_stop()
        control.join(timeout=SHUTDOWN_BUDGET_S + 2)
        not_stopped = loop.not_stopped
        if control.is_alive():
            # Still inside a long meter or Modbus timeout: the batteries would keep their last setpoint.
            # Abort its connections (RST: a v3 LAN port takes only one client) and stop them over new ones;
            # they stay aborted, so the control thread's late stop cannot race the emergency stop for the slot.
            loop.abandon()
            results = emergency_stop(loop.cfg, store, time.monotonic() - loop.heartbeat_s,
                                     lambda: emergency_bus(loop.cfg), stuck=loop.bus, resume=False,
                                     budget_s=SHUTDOWN_BUDGET_S)
            not_stopped, unreached = loop.classify_stops(results)
            # The last word, as the control thread would have said it.
            log.log(logging.ERROR if not_stopped else logging.INFO, loop.stop_summary(not_stopped, unreached))
        stopped.set()
        stop_web(server, web_thread)
        if mqtt_thread is not None:
            mqtt_thread.join(timeout=5.0)  # says "offline" (retained) before the program ends
        history_thread.join(timeout=3.0)  # its last batch; a hanging disk must not keep the program alive
        stop_demo(sim, demo_dir)
    return 1 if not_stopped else 0  # a battery that could not be stopped may still be running


if __name__ == "__main__":
    sys.exit(main())
