"""The dashboard's web server: pages, the JSON API of interfaces.md, and its protection.

The web thread never touches hardware: it reads snapshots from the ``StatusStore`` and hands
setup commands to the control thread through the ``CommandQueue``.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed

import i18n
import modes
from status_store import CommandError, CommandQueue, StatusStore

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
MAX_BODY_BYTES = 16 * 1024
FAILED_LOGIN_DELAY_S = (0.5, 1.0, 2.0, 4.0)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class ApiError(Exception):
    """A client mistake: answered as {"error": message} with a 4xx status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------- body validation
def json_body(allowed: Mapping[str, type], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object, with only ``allowed`` fields of the right types."""
    if not request.is_json:
        raise ApiError("Content-Type must be application/json", 415)
    raw = request.get_data(cache=True)
    if not raw.strip():
        data: Any = {}
    else:
        data = request.get_json(silent=True)
        if data is None:
            raise ApiError("body is not valid JSON")
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
    value = data.get(name, default)
    if value is None:
        raise ApiError(f"field {name} is required")
    if not low <= value <= high:
        raise ApiError(f"{name} must be {low}..{high}, got {value}")
    return int(value)


# ---------------------------------------------------------------------------- the app
def create_app(
    store: StatusStore,
    commands: CommandQueue,
    web_cfg: Any,
    *,
    secret_key: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    max_charge_power_w: Callable[[], int] = lambda: 2500,
) -> Flask:
    """Flask app factory; ``web_cfg`` is config_loader.WebConfig (host, port, password, language, ...).

    ``max_charge_power_w``: the batteries' total maximum power (the limit of ``POST /api/mode``)."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        JSON_SORT_KEYS=False,
    )
    password: str | None = web_cfg.password or None
    failed = {"count": 0}
    failed_lock = threading.Lock()

    if password is None and web_cfg.host not in LOOPBACK_HOSTS:
        warning = (
            f"Web-Oberfläche ohne Passwort auf {web_cfg.host} erreichbar: jeder im Netz kann den Setup-Modus "
            "starten. Bitte web.password setzen. / Web UI reachable without a password: set web.password."
        )
        log.warning("%s", warning)
        store.update(warnings=(warning,))

    # ------------------------------------------------------------------ auth helpers
    def password_ok(candidate: str) -> bool:
        return password is not None and hmac.compare_digest(candidate.encode(), password.encode())

    def basic_auth_password() -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return ""
        return decoded.split(":", 1)[1] if ":" in decoded else ""

    def logged_in() -> bool:
        if password is None or session.get("auth") is True:
            return True
        supplied = basic_auth_password()
        if supplied is None:
            return False
        if password_ok(supplied):
            return True
        slow_down()
        return False

    def slow_down() -> None:
        """Delay after a failed attempt; grows with repeated failures."""
        with failed_lock:
            failed["count"] += 1
            delay_s = FAILED_LOGIN_DELAY_S[min(failed["count"], len(FAILED_LOGIN_DELAY_S)) - 1]
        log.warning("Failed login from %s", request.remote_addr)
        sleep(delay_s)

    def same_origin() -> bool:
        """CSRF guard: an Origin or Referer, when present, must name this host."""
        source = request.headers.get("Origin") or request.headers.get("Referer")
        if not source:
            return True  # scripts (curl) send neither; browsers always send Origin on POST
        try:
            return urlsplit(source).netloc == request.host
        except ValueError:
            return False

    @app.before_request
    def guard() -> Response | None:
        is_api = request.path.startswith("/api/")
        if request.method == "POST":
            if not same_origin():
                raise ApiError("cross-origin request refused", 403)
            if request.path != "/login" and not logged_in():
                raise ApiError("password required (web.password)", 401)
        elif password is not None and not web_cfg.read_only_without_login and request.endpoint not in (
            "login", "static"
        ) and not logged_in():
            if is_api:
                raise ApiError("password required (web.password)", 401)
            return redirect(url_for("login", next=request.path))
        return None

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.pop("Server", None)
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int]:
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(CommandError)
    def command_error(exc: CommandError) -> tuple[Response, int]:
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int] | HTTPException:
        if request.path.startswith("/api/") or request.method != "GET":
            response = jsonify(error=exc.description or exc.name)
            if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
                response.headers["Allow"] = ", ".join(exc.valid_methods)  # a 405 must say what is allowed
            return response, exc.code or 400
        return exc

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("Internal error on %s %s", request.method, request.path)
        return jsonify(error="internal error, see the log"), 500

    # ------------------------------------------------------------------ pages
    def local_target(target: str) -> str:
        """``target`` when it is a path on this server, else "/" (no open redirect).

        Browsers read a backslash as a slash, so "/\\evil.example" would leave the site like "//evil.example".
        """
        if target.startswith("/") and not target.startswith("//") and "\\" not in target and target.isprintable():
            return target
        return "/"

    def language() -> str:
        if web_cfg.language in ("de", "en"):
            return web_cfg.language
        best = request.accept_languages.best_match(["de", "en"])
        return best or "de"

    @app.context_processor
    def page_strings() -> dict[str, Any]:
        """Every template gets the UI texts of its language as ``t`` (see i18n.py)."""
        return {"t": i18n.strings(language())}

    @app.get("/")
    def dashboard() -> str:
        return render_template("dashboard.html", lang=language(), auth_required=password is not None,
                               logged_in=password is None or session.get("auth") is True)

    @app.get("/setup")
    def setup_page() -> str:
        return render_template("setup.html", lang=language(), auth_required=password is not None,
                               logged_in=password is None or session.get("auth") is True)

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if password is None:
            return redirect(url_for("dashboard"))
        error = ""
        if request.method == "POST":
            token = request.form.get("csrf_token", "")
            # Bytes: compare_digest raises TypeError for str with non-ASCII characters.
            if not token or not hmac.compare_digest(token.encode(), str(session.get("csrf_token", "")).encode()):
                raise ApiError("invalid or missing CSRF token, reload the login page", 403)
            if password_ok(request.form.get("password", "")):
                session.clear()
                session["auth"] = True
                return redirect(local_target(request.args.get("next", "/")))
            slow_down()
            error = "wrong_password"
        session["csrf_token"] = secrets.token_urlsafe(24)
        return render_template("login.html", lang=language(), error=error, csrf_token=session["csrf_token"]), (
            401 if error else 200
        )

    @app.post("/logout")
    def logout() -> Response:
        session.clear()
        return jsonify(ok=True)

    # ------------------------------------------------------------------ API
    @app.get("/api/status")
    def api_status() -> Response:
        return jsonify(store.status_json())

    @app.get("/api/history")
    def api_history() -> Response:
        """Chart samples newer than ?since= (epoch seconds), at most one day."""
        since = request.args.get("since")
        try:
            since_t = float(since) if since is not None else None
        except ValueError:
            raise ApiError("since must be a number (epoch seconds)") from None
        samples = store.history(since_t)
        return jsonify(
            t=[s.t for s in samples],
            grid_w=[s.grid_w for s in samples],
            battery_w=[s.battery_w for s in samples],
            soc_pct=[s.soc_pct for s in samples],
        )

    @app.get("/api/mode")
    def api_mode() -> Response:
        return jsonify(dict(store.latest().operating_mode))

    @app.post("/api/mode")
    def api_set_mode() -> Response:
        data = json_body({"mode": str, "power_w": int, "minutes": int}, required=("mode",))
        # A browser always sends Origin on a POST (the guard refused any foreign one): the dashboard.
        # evcc, Home Assistant's REST commands and scripts send none: "api".
        source = "dashboard" if request.headers.get("Origin") else "api"
        try:
            request_ = modes.parse_request(data, max_charge_power_w())
        except modes.ModeError as exc:
            raise ApiError(str(exc)) from None
        return jsonify(commands.submit("set_mode", timeout_s=10.0, request=request_, source=source))

    @app.post("/api/setup/enter")
    def setup_enter() -> Response:
        json_body({})
        return jsonify(commands.submit("enter_setup"))

    @app.post("/api/setup/exit")
    def setup_exit() -> Response:
        json_body({})
        return jsonify(commands.submit("exit_setup"))

    @app.post("/api/setup/scan")
    def setup_scan() -> Response:
        data = json_body({"first_id": int, "last_id": int})
        first_id = int_in_range(data, "first_id", 1, 247, 1)
        last_id = int_in_range(data, "last_id", 1, 247, 10)
        if last_id < first_id:
            raise ApiError("last_id must not be below first_id")
        if last_id - first_id >= 50:
            raise ApiError("scan at most 50 IDs at once")
        return jsonify(commands.submit("scan", timeout_s=120.0, first_id=first_id, last_id=last_id))

    @app.post("/api/setup/set-id")
    def setup_set_id() -> Response:
        data = json_body({"new_id": int}, required=("new_id",))
        new_id = int_in_range(data, "new_id", 2, 247)
        return jsonify(commands.submit("set_id", new_id=new_id))

    @app.post("/api/setup/add-to-config")
    def setup_add_to_config() -> Response:
        data = json_body({"id": int}, required=("id",))
        battery_id = int_in_range(data, "id", 1, 247)
        return jsonify(commands.submit("add_to_config", battery_id=battery_id))

    @app.get("/api/<path:_rest>")
    def api_not_found(_rest: str) -> Response:
        # This catch-all also takes GETs to the POST-only routes: those are 405, not 404.
        allowed = app.url_map.bind_to_environ(request.environ).allowed_methods(request.path)
        others = sorted(set(allowed) - {"GET", "HEAD", "OPTIONS"})
        if others:
            raise MethodNotAllowed(valid_methods=others)
        abort(404)

    return app
