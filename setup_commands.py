"""The setup page's commands: scan for batteries, give one a new Modbus ID, add an ID to the config.

They run on the control thread (the only owner of the Modbus gateway) while setup mode has stopped
the control; ``control_loop.ControlLoop.handle_command`` calls them. Refusals raise ``CommandError``
with the message the user sees and its HTTP status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from config_loader import Config, ConfigError, update_akku_ids
from devices import BatteryBus, BatteryError
from i18n import Msg
from status_store import CommandError

log = logging.getLogger("marstek")

SCAN_PROBE_TIMEOUT_S = 1.0  # an empty ID costs at most this
FIRST_NEW_ID = 2  # every battery ships as ID 1; new IDs start above it
MAX_UNIT_ID = 247


def _probe(bus: BatteryBus, unit_id: int, alive: Callable[[], None]) -> dict[str, Any] | None:
    alive()
    try:
        model, soc = bus.probe(unit_id)
    except BatteryError:
        return None
    return {"id": unit_id, "model": model, "soc_pct": soc}


def scan(bus: BatteryBus, configured: Collection[int], alive: Callable[[], None], *,
         first_id: int = 1, last_id: int = 10) -> dict[str, Any]:
    """Every unit answering on ``first_id..last_id`` and the next ID that neither answers nor is configured.

    Several IDs answering and also the unused ID 247: one v3 battery on its own LAN port, which ignores the
    unit ID (marstek-modbus.md section 1) - said in ``message`` and the log, ``one_battery_on_every_id``.
    """
    with bus.answer_timeout(SCAN_PROBE_TIMEOUT_S):
        found = [hit for i in range(first_id, last_id + 1) if (hit := _probe(bus, i, alive))]
        every_id = (len(found) > 1 and MAX_UNIT_ID not in configured and last_id < MAX_UNIT_ID
                    and _probe(bus, MAX_UNIT_ID, alive) is not None)
    taken = {f["id"] for f in found} | set(configured)
    next_free = next((i for i in range(FIRST_NEW_ID, MAX_UNIT_ID + 1) if i not in taken), None)
    log.info(Msg("scan_result", first=first_id, last=last_id, found=[f["id"] for f in found] or Msg("scan_nothing")))
    result: dict[str, Any] = {"found": found, "next_free_id": next_free, "one_battery_on_every_id": every_id}
    if every_id:
        result["message"] = Msg("scan_one_battery_every_id")
        log.warning(result["message"])
    return result


def set_id(bus: BatteryBus, configured: Collection[int], alive: Callable[[], None], *,
           new_id: int) -> dict[str, Any]:
    """Re-address the single unit on ID 1 to ``new_id`` and check that it answers there."""
    with bus.answer_timeout(SCAN_PROBE_TIMEOUT_S):
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
    log.warning(Msg("readdressed", id=new_id, model=hit["model"]))
    return {"ok": True, "new_id": new_id, "verified": True, "model": hit["model"], "soc_pct": hit["soc_pct"],
            "in_config": new_id in configured}


def add_to_config(cfg: Config, config_path: Path | None, *, battery_id: int) -> tuple[Config, dict[str, Any]]:
    """``battery.akku_ids`` with ``battery_id`` added, saved atomically with a backup (not in the demo)."""
    ids = list(cfg.battery.akku_ids)
    if battery_id in ids:
        return cfg, {"akku_ids": ids, "saved": False, "message": Msg("already_configured", id=battery_id)}
    ids.append(battery_id)
    if config_path is None:
        new_cfg = replace(cfg, battery=replace(cfg.battery, akku_ids=tuple(ids)))
    else:
        try:
            new_cfg = update_akku_ids(config_path, ids)
        except ConfigError as exc:
            raise CommandError(Msg("config_not_changed", error=str(exc)), 409) from exc
    log.info(Msg("added_to_config" if config_path else "added_to_config_demo", id=battery_id))
    return new_cfg, {"akku_ids": ids, "saved": config_path is not None}
