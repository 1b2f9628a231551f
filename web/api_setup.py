"""The setup page's API: setup mode on/off, scan for Modbus IDs, give a battery a new ID, add it to the config.

Each request becomes a command for the control thread (control/commands.py), which owns the batteries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response

from control.commands import AddToConfig, EnterSetup, ExitSetup, Scan, SetId
from web.common import ApiError, Deps, int_in_range, json_body


def gateway_of(data: Mapping[str, Any]) -> str | None:
    """The optional ``"gateway": "<host>:<port>"`` of a setup request (the control thread checks that it exists)."""
    if "gateway" not in data:
        return None
    gateway = data["gateway"].strip()
    if not gateway or len(gateway) > 300:
        raise ApiError('gateway must be "<host>:<port>" of a configured gateway')
    return str(gateway)


def register(app: Flask, deps: Deps) -> None:
    """POST /api/setup/enter, /exit, /scan, /set-id, /add-to-config."""

    @app.post("/api/setup/enter")
    def setup_enter() -> Response:
        json_body({})
        return deps.run(EnterSetup())

    @app.post("/api/setup/exit")
    def setup_exit() -> Response:
        json_body({})
        return deps.run(ExitSetup())

    @app.post("/api/setup/scan")
    def setup_scan() -> Response:
        data = json_body({"first_id": int, "last_id": int, "gateway": str})
        first_id = int_in_range(data, "first_id", 1, 247, 1)
        last_id = int_in_range(data, "last_id", 1, 247, 10)
        if last_id < first_id:
            raise ApiError("last_id must not be below first_id")
        if last_id - first_id >= 50:
            raise ApiError("scan at most 50 IDs at once")
        return deps.run(Scan(first_id=first_id, last_id=last_id, gateway=gateway_of(data)), timeout_s=120.0)

    @app.post("/api/setup/set-id")
    def setup_set_id() -> Response:
        data = json_body({"new_id": int, "gateway": str}, required=("new_id",))
        new_id = int_in_range(data, "new_id", 2, 247)
        return deps.run(SetId(new_id=new_id, gateway=gateway_of(data)))

    @app.post("/api/setup/add-to-config")
    def setup_add_to_config() -> Response:
        data = json_body({"id": int, "gateway": str}, required=("id",))
        battery_id = int_in_range(data, "id", 1, 247)
        return deps.run(AddToConfig(battery_id=battery_id, gateway=gateway_of(data)))
