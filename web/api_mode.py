"""The operating mode (interfaces.md "Operating modes"): GET and POST /api/mode."""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

from control import modes
from control.commands import SetMode
from web.common import ApiError, Deps, json_body


def register(app: Flask, deps: Deps) -> None:
    """GET /api/mode (the mode in force), POST /api/mode (set one; limited by the batteries' maximum power)."""

    @app.get("/api/mode")
    def api_mode() -> Response:
        return jsonify(dict(deps.store.latest().operating_mode))

    @app.post("/api/mode")
    def api_set_mode() -> Response:
        data = json_body({"mode": str, "power_w": int, "minutes": int}, required=("mode",))
        # A browser always sends Origin on a POST (the guard refused any foreign one): the dashboard.
        # evcc, Home Assistant's REST commands and scripts send none: "api".
        source = "dashboard" if request.headers.get("Origin") else "api"
        try:
            request_ = modes.parse_request(data, deps.max_charge_power_w())
        except modes.ModeError as exc:
            raise ApiError(str(exc)) from None
        return deps.run(SetMode(request=request_, source=source), timeout_s=10.0)
