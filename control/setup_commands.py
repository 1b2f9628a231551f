"""The setup page's commands: scan a gateway for batteries, give one a new Modbus ID, add it to the config.

Scan and set-id run on the chosen gateway's worker (the only thread that touches its client, see
``fleet.Fleet.call``) while setup mode has stopped the control;
``control_loop.ControlLoop.handle_command`` calls them. Refusals raise ``CommandError``
with the message the user sees and its HTTP status.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from config_loader import Config, ConfigError, UnitConfig, add_unit_to_config, add_unit_to_document
from control.devices import BatteryBus, BatteryError
from control.i18n import Msg
from control.status_store import CommandError

log = logging.getLogger("marstek")

SCAN_PROBE_TIMEOUT_S = 1.0  # an empty ID costs at most this
FIRST_NEW_ID = 2  # every battery ships as ID 1; new IDs start above it
MAX_UNIT_ID = 247
MAX_UNITS_PER_GATEWAY = 16  # one RS485 bus; more would stretch the control cycle past its interval


def _probe(bus: BatteryBus, unit_id: int, alive: Callable[[], None]) -> dict[str, Any] | None:
    alive()
    try:
        model, soc = bus.probe(unit_id)
    except BatteryError:
        return None
    try:
        own_id: int | None = bus.read_own_id(unit_id)
    except BatteryError:
        own_id = None  # not readable: the other signs decide
    return {"id": unit_id, "model": model, "soc_pct": soc, "own_id": own_id}


def answers_every_id(bus: BatteryBus, configured: Collection[int], alive: Callable[[], None]) -> bool:
    """True when the unused ID 247 answers too: one v3 battery on its own LAN port, which ignores the unit ID
    (marstek-modbus.md section 1). Behind an RS485 gateway (v2 or v3 batteries) nothing answers there."""
    return MAX_UNIT_ID not in configured and _probe(bus, MAX_UNIT_ID, alive) is not None


def scan(bus: BatteryBus, gateway: str, units: Sequence[UnitConfig], alive: Callable[[], None], *,
         first_id: int = 1, last_id: int = 10) -> dict[str, Any]:
    """Every unit answering on ``first_id..last_id`` behind ``gateway`` and the next ID neither answering nor
    configured there.

    Several IDs answering, and a unit whose register 41100 names another ID than it was asked on or the unused
    ID 247 answering too: one v3 battery on its LAN port, reported once with a note that it needs no new ID
    (``one_battery_on_every_id``, ``note``, ``message`` and a warning in the log).
    """
    configured = {u.unit_id for u in units}
    with bus.answer_timeout(SCAN_PROBE_TIMEOUT_S):
        found = [hit for i in range(first_id, last_id + 1) if (hit := _probe(bus, i, alive))]
        own_ids = [hit.pop("own_id") for hit in found]
        other_id = any(own not in (None, hit["id"]) for own, hit in zip(own_ids, found, strict=True))
        probe_247 = last_id < MAX_UNIT_ID  # the unused ID, asked only when the scan did not reach it
        every_id = len(found) > 1 and (other_id or (probe_247 and answers_every_id(bus, configured, alive)))
    if every_id:
        found = found[:1]  # one battery, not one per ID
    taken = {f["id"] for f in found} | configured
    next_free = next((i for i in range(FIRST_NEW_ID, MAX_UNIT_ID + 1) if i not in taken), None)
    log.info(Msg("scan_result", gateway=gateway, first=first_id, last=last_id,
                 found=[f["id"] for f in found] or Msg("scan_nothing")))
    result: dict[str, Any] = {"gateway": gateway, "found": found, "next_free_id": next_free,
                              "one_battery_on_every_id": every_id}
    if every_id:
        result["note"] = result["message"] = Msg("v3_lan_no_id_change", gateway=gateway)
        log.warning(result["message"])
    return result


def set_id(bus: BatteryBus, gateway: str, units: Sequence[UnitConfig], alive: Callable[[], None], *,
           new_id: int) -> dict[str, Any]:
    """Re-address the single unit on ID 1 behind ``gateway`` to ``new_id`` and check that it answers there."""
    with bus.answer_timeout(SCAN_PROBE_TIMEOUT_S):
        if answers_every_id(bus, {u.unit_id for u in units}, alive):
            raise CommandError(Msg("v3_lan_no_id_change", gateway=gateway), 409)
        if _probe(bus, new_id, alive) is not None:
            raise CommandError(Msg("id_in_use", id=new_id), 409)
        if _probe(bus, 1, alive) is None:
            raise CommandError(Msg("no_battery_on_id1"), 409)
        try:
            bus.set_unit_id(new_id, current_id=1)
        except BatteryError as exc:
            raise CommandError(Msg("set_id_write_failed", error=str(exc)), 502) from exc
        hit = _probe(bus, new_id, alive)
    if hit is None:
        raise CommandError(Msg("set_id_not_verified", id=new_id), 502)
    log.warning(Msg("readdressed", gateway=gateway, id=new_id, model=hit["model"]))
    return {"ok": True, "gateway": gateway, "new_id": new_id, "verified": True, "model": hit["model"],
            "soc_pct": hit["soc_pct"], "in_config": new_id in {u.unit_id for u in units}}


def add_to_config(cfg: Config, config_path: Path | None, *, gateway: str, battery_id: int,
                  answered: Collection[int]) -> tuple[Config, dict[str, Any]]:
    """Unit ``battery_id`` behind ``gateway`` added in the form the config uses (``battery.units`` or
    ``battery.akku_ids``), saved atomically with a backup (not in the demo).

    Only an ID in ``answered`` (the IDs that answered the last scan on ``gateway``, or were re-addressed to
    since) and at most ``MAX_UNITS_PER_GATEWAY`` units per gateway: bogus IDs would each cost the control
    cycle a timeout (409 otherwise)."""
    b = cfg.battery
    if any(u.gateway == gateway and u.unit_id == battery_id for u in b.units):
        return cfg, {**_listing(cfg), "saved": False, "message": Msg("already_configured", id=battery_id)}
    if battery_id not in answered:
        raise CommandError(Msg("add_not_scanned", id=battery_id, gateway=gateway), 409)
    count = sum(1 for u in b.units if u.gateway == gateway)
    if count >= MAX_UNITS_PER_GATEWAY:
        raise CommandError(Msg("add_too_many", gateway=gateway, count=count, max=MAX_UNITS_PER_GATEWAY), 409)
    try:
        if config_path is None:  # the demo: no file, the same change on the document it was parsed from
            if cfg.source is None:
                raise ConfigError("the configuration has no source document to change")
            new_cfg = add_unit_to_document(copy.deepcopy(dict(cfg.source)), gateway, battery_id)
        else:
            new_cfg = add_unit_to_config(config_path, gateway, battery_id)
    except ConfigError as exc:
        raise CommandError(Msg("config_not_changed", error=str(exc)), 409) from exc
    log.info(Msg("added_to_config" if config_path else "added_to_config_demo", id=battery_id, gateway=gateway))
    return new_cfg, {**_listing(new_cfg), "saved": config_path is not None}


def _listing(cfg: Config) -> dict[str, Any]:
    """What the setup page shows after "add to config": the IDs (seed form) and every unit's key."""
    b = cfg.battery
    listing: dict[str, Any] = {"units": [u.key for u in b.units]}
    if not b.units_form:
        listing["akku_ids"] = list(b.akku_ids)
    return listing
