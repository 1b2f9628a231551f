"""The watchdog: notices a control thread that stopped cycling and puts the batteries in the safe state.

The control thread reports progress through its heartbeat; when that is older than the longest a
healthy cycle can take, ``emergency_stop`` stops every battery over a connection of its own (the
control thread is stuck in the old one). It aborts the old connection first (TCP RST): a v3 battery on its own
LAN port takes one client only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

from config_loader import Config
from control.devices import BatteryError
from control.fleet import Fleet, unit_name
from control.i18n import Msg
from control.status_store import StatusStore

log = logging.getLogger("marstek")

FRAMES_PER_BATTERY = 5  # the most Modbus frames one battery costs in a cycle (reads + writes)
MARGIN_S = 10.0
EMERGENCY_BUDGET_S = 6.0  # the most the emergency stop waits for its stop round (reconnect gap included)


class Watchdog:
    """Calls ``on_stall`` once when ``heartbeat_s()`` is older than ``limit_s`` (not while ``paused()``)."""

    def __init__(
        self,
        heartbeat_s: Callable[[], float],
        limit_s: float,
        on_stall: Callable[[float], object],
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
                log.info(Msg("control_running_again"))
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
    """Longest a healthy cycle can take (every timeout hit once, as if the gateways were served in series) plus a
    margin."""
    frames = FRAMES_PER_BATTERY * len(cfg.battery.units)
    return (cfg.meter.timeout_seconds + frames * cfg.battery.timeout_seconds + cfg.control.poll_interval_seconds
            + MARGIN_S)


def emergency_stop(cfg: Config, store: StatusStore, stalled_s: float, make_fleet: Callable[[], Fleet], *,
                   stuck: Fleet | None = None, resume: bool = True, budget_s: float = EMERGENCY_BUDGET_S
                   ) -> dict[str, BatteryError | None]:
    """Stop every battery over new connections from ``make_fleet`` (all gateways at once): the control thread is
    stuck in its own. Returns per battery key the error of its stop (None: stopped).

    ``stuck`` (the control thread's fleet) is aborted first (TCP RST): a v3 battery on its own LAN port takes
    one client only, and the stuck connection holds that slot. The new connection to an aborted gateway then
    keeps the reconnect gap (the port frees the slot about a second later), inside ``budget_s``. With
    ``resume`` the stuck fleet may connect again once the emergency connections are closed (the control thread
    regulates again if it comes back); without it (the program ends) it stays aborted.
    """
    message = Msg("control_stalled", seconds=stalled_s)
    log.error(message)
    store.update(control_state="error", errors=(*store.latest().errors, message))
    def failed(fleet: Fleet, key: str, error: BatteryError) -> None:
        unit = fleet.units[key]
        log.error(Msg("watchdog_stop_failed", name=unit_name(unit), id=unit.unit_id, error=str(error)))

    return stop_over_new_connections(make_fleet, None, stuck=stuck, resume=resume, budget_s=budget_s,
                                     on_failure=failed)


def stop_over_new_connections(make_fleet: Callable[[], Fleet], keys: Collection[str] | None, *,
                              stuck: Fleet | None, resume: bool, budget_s: float,
                              on_failure: Callable[[Fleet, str, BatteryError], None] = lambda _f, _k, _e: None
                              ) -> dict[str, BatteryError | None]:
    """Stop the batteries ``keys`` (None: all) over new connections from ``make_fleet``, after aborting
    ``stuck``'s connections (TCP RST); per key the error of its stop (None: stopped). The watchdog's emergency
    stop, and the retry of a stop that failed at shutdown or on entering setup mode."""
    aborted = stuck.abort() if stuck is not None else []
    for gateway in aborted:
        log.warning(Msg("stuck_connection_aborted", gateway=gateway))
    fleet = make_fleet()
    try:
        fleet.connection_closed(aborted)  # before its first connect: the slot comes free only after the gap
        wanted = None if keys is None else [k for k in keys if k in fleet.units]
        results = fleet.stop_all(wanted, budget_s=budget_s)
        for key, error in results.items():
            if error is not None:
                on_failure(fleet, key, error)
        return results
    finally:
        fleet.close()
        if stuck is not None and resume:
            stuck.resume()
