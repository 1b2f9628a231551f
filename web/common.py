"""What every route group of the web server shares: ``Deps`` (the program's parts and the access state),
``ApiError`` and the validation of request bodies.

``web_server.create_app`` builds one ``Deps`` and hands it to each group's ``register(app, deps)``; the groups
import only this module and ``web.access``, never ``web_server`` (no import cycle).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Response, jsonify, request, session

from control import i18n
from control.commands import Command
from control.status_store import CommandQueue, StatusStore
from integrations.history import History
from web import access as web_access

log = logging.getLogger(__name__)

DAY_S = 86400.0


class ApiError(Exception):
    """A client mistake: answered as {"error": message} with a 4xx status."""

    def __init__(self, message: str | i18n.Msg, status: int = 400) -> None:
        super().__init__(message)
        self.message = message  # an i18n.Msg is answered in the page's language
        self.status = status


@dataclass(frozen=True)
class Deps:
    """The parts of the program the routes use, and the access state (one per app, built by ``create_app``).

    ``web_cfg`` is config_loader.WebConfig. ``max_charge_power_w``: the batteries' total maximum power (the
    limit of ``POST /api/mode``). ``history`` serves /api/history from before a restart and /api/energy;
    ``diagnostics`` builds the bundle of /api/diagnostics; ``save_password`` stores the salted hash that
    /onboarding sets (None: it lasts until the program ends).
    ``no_password_warning``: the warning shown while no password is set on a LAN address (None: not shown).
    The methods read Flask's ``request``/``session``: call them only while a request is handled.
    """

    store: StatusStore
    commands: CommandQueue
    web_cfg: Any
    max_charge_power_w: Callable[[], int]
    history: History | None
    diagnostics: Callable[[], dict[str, Any]] | None
    save_password: Callable[[str], object] | None
    password: web_access.Password
    sessions: web_access.Sessions
    throttle: web_access.LoginThrottle
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    no_password_warning: i18n.Msg | None
    settings_path: Path | None = None  # the config file /settings edits (None: the demo, nothing to save)

    # ------------------------------------------------------------------ the page's language, commands
    def language(self) -> str:
        """web.language, or with "auto" the browser's choice of German and English (default German)."""
        if self.web_cfg.language in ("de", "en"):
            return str(self.web_cfg.language)
        best = request.accept_languages.best_match(["de", "en"])
        return best or "de"

    def run(self, command: Command, timeout_s: float = 60.0) -> Response:
        """Run a command on the control thread; its messages in the page's language."""
        return jsonify(i18n.render(self.commands.submit(command, timeout_s=timeout_s), self.language()))

    # ------------------------------------------------------------------ who is asking
    def client(self) -> tuple[str, bool]:
        """The client's address and whether it came through a proxy (web.trusted_proxies)."""
        return web_access.client_address(request.remote_addr, request.headers.get, self.trusted_proxies)

    def local_client(self) -> bool:
        """A user on this machine itself (not a proxy on it forwarding someone else)."""
        address, forwarded = self.client()
        return web_access.is_loopback(address) and not (forwarded and address == request.remote_addr)

    def check_password(self, candidate: str) -> bool:
        """Compare ``candidate`` unless this client is blocked (LoginBlocked); a wrong one blocks it."""
        address = self.client()[0]
        if self.throttle.attempt(address, lambda: self.password.matches(candidate)):
            return True
        log.warning(i18n.Msg("failed_login", client=address, seconds=self.throttle.blocked_s(address)))
        return False

    def session_ok(self) -> bool:
        return self.password.is_set and self.sessions.valid(session.get("sid"))

    def logged_in(self) -> bool:
        """No password set, a valid session cookie, or a right password by HTTP Basic auth."""
        if not self.password.is_set or self.session_ok():
            return True
        supplied = basic_auth_password()
        if supplied is None:
            return False
        return self.check_password(supplied)

    def start_session(self) -> None:
        session.clear()
        session.permanent = True  # the cookie ends with the server-side session (web.session_days)
        session["sid"] = self.sessions.start()

    def locked(self) -> ApiError:
        """The answer while no password is set and the client is not on this machine."""
        return ApiError(i18n.Msg("web_locked", port=self.web_cfg.port), 403)


def basic_auth_password() -> str | None:
    """The password of an ``Authorization: Basic`` header ("" when malformed, None when there is none)."""
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return ""
    return decoded.split(":", 1)[1] if ":" in decoded else ""


# ---------------------------------------------------------------------------- body validation
def json_body(allowed: Mapping[str, type], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object, with only ``allowed`` fields of the right types."""
    if not request.is_json:
        raise ApiError("Content-Type must be application/json", 415)
    raw = request.get_data(cache=True)
    if not raw.strip():
        data: Any = {}
    else:
        if web_access.json_too_deep(raw):
            raise ApiError(f"body is nested too deeply (at most {web_access.MAX_JSON_DEPTH} levels of [ and {{)")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError("body must be a JSON object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ApiError(f"unknown field(s): {', '.join(unknown)}")
    for name in required:
        if name not in data:
            raise ApiError(f"field {name} is required")
    for name, value in data.items():
        kind = allowed[name]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ApiError(f"{name} must be an integer")
        if kind is str and not isinstance(value, str):
            raise ApiError(f"{name} must be a string")
    return data


def int_in_range(data: Mapping[str, Any], name: str, low: int, high: int, default: int | None = None) -> int:
    """``data[name]`` (or ``default``) checked to lie in ``low..high``."""
    value = data.get(name, default)
    if value is None:
        raise ApiError(f"field {name} is required")
    if not low <= value <= high:
        raise ApiError(f"{name} must be {low}..{high}, got {value}")
    return int(value)
