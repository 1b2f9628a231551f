"""Marstek PV-Akku Steuerung: zero-feed-in control for Marstek Venus / Duravolt batteries.

The command line and the wiring: builds the meter driver and the Modbus gateway from the config,
runs the control thread (``control_loop``), the watchdog (``watchdog``) and the dashboard's waitress
thread (``web_server``), and handles the signals. SIGINT/SIGTERM stop every battery before the
program exits.

    python main.py [--config PATH] [--demo] [--check] [--port N] [--host H]

``--demo --config PATH`` takes the ``web``, ``mqtt`` and ``history`` sections from PATH; the simulator stands in
for the meter and the batteries.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import logging.handlers
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from config_loader import (
    Config,
    ConfigError,
    EcoTrackerConfig,
    HomeWizardConfig,
    HttpJsonConfig,
    MqttMeterConfig,
    ShellyConfig,
    default_config_path,
    load_config,
    parse_config,
    read_sections,
    remove_stray_temp_files,
    set_web_password,
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
from integrations.history import History, PriceAt, prices_from
from meters.http_meters import HomeWizardClient, HttpJsonClient
from planning.plan_switch import PLAN_FILE, PlanSwitchFile, start_plan_switch
from planning.plan_thread import PlanFeeds, StateFeed
from shelly_client import ShellyClient

log = logging.getLogger("marstek")


EMERGENCY_TIMEOUT_S = 1.0  # answer timeout of the watchdog's own connection
MODE_FILE = Path("data") / "mode.json"  # the operating mode, beside the config file
DEMO_SECTIONS = ("web", "mqtt", "history")  # what ``--demo --config FILE`` takes from FILE


def build_meter(cfg: Config, clock: Callable[[], float] = time.monotonic) -> GridMeter:
    """The grid meter driver that ``energy_meter.type`` selects; it stamps readings on ``clock``.

    With ``energy_meter.invert`` every reading is negated before anything else sees it.
    """
    meter: GridMeter
    match cfg.meter:
        case ShellyConfig() as section:
            meter = ShellyClient.from_config(section, clock)
        case EcoTrackerConfig() as section:
            meter = EcoTrackerClient.from_config(section, clock)
        case HomeWizardConfig() as section:
            meter = HomeWizardClient.from_config(section, clock)
        case HttpJsonConfig() as section:
            meter = HttpJsonClient.from_config(section, clock)
        case MqttMeterConfig() as section:
            from meters.mqtt_meter import MqttMeter

            if cfg.mqtt is None:  # the loader refuses this; kept for the type checker
                raise ConfigError('mqtt.host: energy_meter.type "mqtt" needs a broker')
            meter = MqttMeter.from_config(cfg.mqtt, section, clock)
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


def demo_config(port: int, sim: Any, history_path: str = ":memory:",
                sections: Mapping[str, Any] | None = None) -> Config:
    """A config pointing at the built-in simulator: every gateway of ``sim`` and every unit behind it; the
    history in ``history_path`` (a temp dir). ``sections`` (``--demo --config``: the file's ``web``, ``mqtt``
    and ``history``) are laid over the demo's own, key by key; the meter and the batteries stay simulated."""
    units = [{"ip": f"127.0.0.1:{gateway.port}", "id": unit.unit_id, "register_set": unit.register_set,
              "name": name, "rs485_gateway": not gateway.lan}
             for gateway in sim.gateways for unit, name in zip(gateway.units, _demo_names(gateway), strict=False)]
    data: dict[str, Any] = {
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 2, "max_failures_before_stop": 2},
        "battery": {"timeout_seconds": 1, "units": units},
        "control": {"poll_interval_seconds": 1},
        "web": {"host": "127.0.0.1", "port": port},
        "history": {"path": history_path},
    }
    for name, section in (sections or {}).items():
        own = data.get(name)
        # A section that is not an object is passed on as it is: parse_config names it.
        data[name] = {**own, **section} if isinstance(own, dict) and isinstance(section, dict) else section
    return parse_config(data)


def _demo_names(gateway: Any) -> list[str]:
    """Names that say what the demo's batteries stand for."""
    if len(gateway.units) == 1 and gateway.units[0].register_set == "v3":
        return ["Venus E v3 (LAN)"]
    return [f"Venus E v2 #{u.unit_id} (RS485)" for u in gateway.units]


def demo_simulation() -> Any:
    """The demo's mixed fleet (``simulator.demo_simulation``: one v2 RS485 gateway with two units and one Venus E
    v3 on its own LAN port), started in a process of its own: a busy machine must not make the simulated
    batteries look unreachable because the simulator and the program share one interpreter."""
    from simulator.world import SimulationProcess

    return SimulationProcess()


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


def start_prices(cfg: Config, stop: threading.Event) -> tuple[Any, threading.Event]:
    """With a ``tariff``: the started price (and PV forecast) fetcher, and an event set on every new answer;
    without: (None, event). It runs in its own thread; nothing here waits for the network."""
    updated = threading.Event()  # new prices or a new forecast: plan again at once
    if cfg.tariff is None:
        return None, updated
    from planning.fetcher import build_fetcher

    def on_update(state: Any) -> None:
        if state.error is None:
            updated.set()

    fetcher = build_fetcher(cfg.tariff, cfg.forecast, on_update=on_update, stop=stop)
    if fetcher is not None:
        fetcher.start()
    return fetcher, updated


def stop_prices(fetcher: Any) -> None:
    if fetcher is not None:
        fetcher.stop()


def current_import_price_ct(price_at: PriceAt) -> Callable[[], float | None]:
    """The import price in force now (ct/kWh; None: no slot known for now)."""
    def price_now() -> float | None:
        price = price_at(time.time())
        return price.import_ct_per_kwh if price is not None else None
    return price_now


def start_mqtt(cfg: Config, store: StatusStore, commands: CommandQueue, loop: ControlLoop,
               stop: threading.Event, history: History | None = None) -> threading.Thread | None:
    """The MQTT bridge in its own thread when ``mqtt.host`` is set; None when MQTT is off."""
    if cfg.mqtt is None:
        return None
    from integrations.diagnostics import program_version
    from integrations.mqtt_bridge import MqttBridge, gateway_of, start_bridge

    bridge = MqttBridge(cfg.mqtt, store, commands, gateway=gateway_of(cfg.battery),
                        max_charge_power_w=lambda: loop.max_charge_power_w, sw_version=program_version(),
                        energy_today=(lambda: history.energy_days(1)[-1]) if history is not None else None,
                        import_price_ct=(current_import_price_ct(history.price_at)
                                         if history is not None and history.price_at is not None else None))
    return start_bridge(bridge, stop)


def plan_feeds(cfg: Config, fetcher: Any, updated: threading.Event) -> PlanFeeds | None:
    """The fetcher's prices (and PV forecast) as the plan thread's feeds with a ``plan`` section and a ``tariff``
    (``plan.enabled`` is only the plan switch's first value); None otherwise: no plan."""
    if cfg.plan is None or fetcher is None:
        return None
    pv = StateFeed(fetcher.pv) if fetcher.pv() is not None else None
    return PlanFeeds(StateFeed(fetcher.prices), pv, updated)


def plan_switch(cfg: Config, store: StatusStore, feeds: PlanFeeds | None,
                switch_path: Path | None) -> Callable[[], None]:
    """With a plan: the plan switch in ``store`` (``plan.enabled`` at the first start, then ``switch_path``,
    ``data/plan.json``; None: the demo keeps it in memory). Returns what to call at shutdown: the last switch
    reaches the file (a hanging disk is not waited for long)."""
    if feeds is None or cfg.plan is None:
        return lambda: None
    writer = start_plan_switch(store, cfg.plan.enabled, PlanSwitchFile(switch_path) if switch_path else None)
    return writer.close if writer is not None else lambda: None


def start_plan(cfg: Config, store: StatusStore, history: History, stop: threading.Event,
               feeds: PlanFeeds) -> threading.Thread:
    """The plan thread: plans with ``feeds``' prices and the history's load, publishes to ``store``."""
    from planning.load_forecast import history_reader
    from planning.plan_thread import PlanThread
    from planning.planner import make_plan

    assert cfg.plan is not None  # plan_feeds gave feeds: there is a plan section
    planner = PlanThread(cfg.plan, cfg.battery, store, feeds.prices, make_plan, pv=feeds.pv,
                         history=history_reader(history.samples), wakeup=feeds.updated)
    thread = threading.Thread(target=planner.run, args=(stop,), name="plan", daemon=True)
    thread.start()
    return thread


def stop_demo(sim: Any, demo_dir: str | None) -> None:
    """Stop the demo's simulator and remove its temporary history."""
    if sim:
        sim.stop()
    if demo_dir:
        shutil.rmtree(demo_dir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Marstek PV-Akku Steuerung (Nulleinspeisung)")
    parser.add_argument("--config", type=Path, default=None,
                        help="config file (default: config.json beside main.py); with --demo only its web, mqtt and "
                             "history sections are used")
    parser.add_argument("--demo", action="store_true", help="run against the built-in simulator, no hardware")
    parser.add_argument("--port", type=int, default=None, help="dashboard port (overrides web.port)")
    parser.add_argument("--host", default=None, help="dashboard address (overrides web.host)")
    parser.add_argument("--check", action="store_true",
                        help="check the config, contact the meter and every battery once, print a diagnosis")
    parser.add_argument("--set-password", action="store_true",
                        help="ask for the web UI password twice and store it as a salted hash in the config file")
    return parser.parse_args(argv)


def clean_stray_temp_files(cfg: Config, config_path: Path, base_dir: Path) -> None:
    """Remove the temp files an earlier crash left beside the config, mode and history files."""
    beside = [config_path, base_dir / MODE_FILE, base_dir / PLAN_FILE]
    if cfg.history.path != ":memory:":
        beside.append(Path(cfg.history.path))
    for stray in remove_stray_temp_files(*beside):
        log.info(i18n.Msg("stray_temp_removed", path=str(stray)))
def set_password(config_path: Path, ask: Callable[[str], str] = getpass.getpass) -> int:
    """``--set-password``: ask twice (not echoed), store a salted hash in ``web.password``; exit status."""
    from web.access import hash_password, password_problem

    if not sys.stdin.isatty():
        print(i18n.Msg("set_password_no_terminal"), file=sys.stderr)
        return 2
    try:
        new = ask(i18n.Msg("set_password_prompt"))
        repeated = ask(i18n.Msg("set_password_repeat"))
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return 1
    problem = password_problem(new, repeated)
    if problem is not None:
        print(i18n.Msg(problem), file=sys.stderr)
        return 1
    try:
        set_web_password(config_path, hash_password(new))
    except ConfigError as exc:
        print(i18n.Msg("config_error", error=str(exc)), file=sys.stderr)
        return 2
    print(i18n.Msg("set_password_done", path=config_path))
    return 0


@dataclass
class _Start:
    """What the command line chose: the config, its file (None for the demo) and the demo's simulator."""

    cfg: Config
    config_path: Path | None = None
    sim: Any = None
    demo_dir: str | None = None


def stop_control(control: threading.Thread, loop: ControlLoop, store: StatusStore) -> list[str]:
    """Wait for the control thread's own stop of the batteries; if it hangs, stop them over new connections.
    Returns the batteries that could not be stopped."""
    control.join(timeout=SHUTDOWN_BUDGET_S + 2)
    if not control.is_alive():
        return list(loop.not_stopped)
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
    return list(not_stopped)


def _configure(args: argparse.Namespace) -> _Start | int:
    """The config from its file, or the demo's around a started simulator; an exit status on failure."""
    sim = None
    demo_dir: str | None = None
    try:
        if args.demo:
            # Not config_path: the demo writes nothing into the file (mode, setup's "add to config").
            sections = read_sections(args.config.resolve(), DEMO_SECTIONS) if args.config is not None else None
            try:
                sim = demo_simulation()
            except (OSError, RuntimeError) as exc:
                print(i18n.Msg("demo_simulator_failed", error=str(exc)), file=sys.stderr)
                return 1
            demo_dir = tempfile.mkdtemp(prefix="marstek-demo-")
            cfg = demo_config(args.port or 8080, sim, str(Path(demo_dir) / "history.sqlite3"), sections)
            return _Start(cfg, None, sim, demo_dir)
        config_path = (args.config or default_config_path()).resolve()
        return _Start(load_config(config_path), config_path)
    except ConfigError as exc:
        # No web.language without a config: the message is in the default language (German).
        print(i18n.Msg("config_error", error=str(exc)), file=sys.stderr)
        stop_demo(sim, demo_dir)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        print(i18n.Msg("port_out_of_range"), file=sys.stderr)
        return 2
    start = _configure(args)
    if isinstance(start, int):
        return start
    cfg, config_path, sim, demo_dir = start.cfg, start.config_path, start.sim, start.demo_dir
    store = StatusStore()
    i18n.set_language(cfg.web.language)
    if args.set_password:
        if config_path is None:
            print(i18n.Msg("set_password_not_demo"), file=sys.stderr)
            stop_demo(sim, demo_dir)
            return 2
        return set_password(config_path)
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
    # Prices (only with a tariff): fetched in their own thread. The history values energy at the slot's price
    # through a lookup over the fetcher's latest slots; the plan (with a plan section) plans with them.
    # Without tariff and plan: no plan thread, no requests, the control as without a plan (plan=None).
    fetcher, prices_updated = start_prices(cfg, stop)
    price_at = prices_from(fetcher.prices) if fetcher is not None else None
    feeds = plan_feeds(cfg, fetcher, prices_updated)
    close_plan_switch = plan_switch(cfg, store, feeds, base_dir / PLAN_FILE if config_path is not None else None)
    # One counter for the device quirks: the gateways report theirs, the loop its own (meter failures, ...).
    quirks = QuirkCounter()
    loop = ControlLoop(cfg, meter, build_fleet(cfg, quirks=quirks), store, commands, config_path=config_path,
                       mode_file=mode_file, emergency_fleet=emergency_bus, quirks=quirks,
                       plan=store.plan if feeds is not None else None)
    # Opened by its own thread: a hanging disk never delays the control.
    history = History(cfg.history.path, cfg.history.retention_days, store, open_now=False, price_at=price_at)
    diagnostics = Diagnostics(cfg, store, meter=meter, quirks=quirks, history=history)
    saved_config = config_path  # /onboarding writes the password's hash there (the demo: memory only)
    app = create_app(store, commands, cfg.web, max_charge_power_w=lambda: loop.max_charge_power_w,
                     history=history, diagnostics=diagnostics.bundle, settings_path=saved_config,
                     save_password=(lambda stored: set_web_password(saved_config, stored)) if saved_config else None)
    try:
        server, web_thread = start_web(app, cfg.web.host, cfg.web.port)
    except OSError as exc:
        print(i18n.Msg("web_cannot_listen", host=cfg.web.host, port=cfg.web.port, error=str(exc)), file=sys.stderr)
        stop_prices(fetcher)
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
    if feeds is not None:
        start_plan(cfg, store, history, stop, feeds)
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
        not_stopped = stop_control(control, loop, store)
        stopped.set()
        stop_prices(fetcher)
        close_plan_switch()
        stop_web(server, web_thread)
        if mqtt_thread is not None:
            mqtt_thread.join(timeout=5.0)  # says "offline" (retained) before the program ends
        history_thread.join(timeout=3.0)  # its last batch; a hanging disk must not keep the program alive
        stop_demo(sim, demo_dir)
    return 1 if not_stopped else 0  # a battery that could not be stopped may still be running


if __name__ == "__main__":
    sys.exit(main())
