"""The dashboard's web server: pages, the JSON API of interfaces.md, and its protection.

The web thread never touches hardware: it reads snapshots from the ``StatusStore`` and hands
setup commands to the control thread through the ``CommandQueue``.

How it is built (add a page or an API group the same way):

- ``create_app`` (this module) makes the Flask app, one ``web.common.Deps`` (store, command queue, web config,
  history, the callables of main.py, and the access state: password, sessions, login throttle), the access
  guard that runs before every request, the security headers and the error handlers (every error of an
  ``/api/`` route is JSON ``{"error": ...}``). Then it calls ``register(app, deps)`` of each route group in
  ``ROUTE_GROUPS`` and last adds the ``/api/...`` catch-all (404, or 405 with ``Allow``).
- Each group is a module of the package ``web/`` with one function ``register(app: Flask, deps: Deps) -> None``
  that defines its routes as small closures over ``deps``: ``web/pages.py`` (dashboard, setup page,
  login/logout, onboarding), ``web/api_status.py`` (status, history, energy, plan, metrics, diagnostics),
  ``web/settings.py`` (the page and API that edit the tariff, forecast and plan sections),
  ``web/api_mode.py`` (GET/POST /api/mode), ``web/api_setup.py`` (setup enter/exit/scan/set-id/add-to-config).
- A group imports only ``web.common`` (``Deps``, ``ApiError``, ``json_body``, ``int_in_range``,
  ``deps.run(command)``, ``deps.language()``) and ``web.access``, never this module: no import cycle.
  A new group: a module ``web/<name>.py`` with ``register``, added to ``ROUTE_GROUPS``. The guard below protects
  it without further work (a change needs the same origin and the password; a read the login unless
  ``web.read_only_without_login``).
"""

from __future__ import annotations

import datetime
import logging
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.wrappers import Response as WerkzeugResponse

from control import i18n
from control.status_store import CommandError, CommandQueue, StatusStore
from integrations.history import History
from web import access as web_access
from web import api_mode, api_setup, api_status, pages, settings
from web.access import LoginBlocked, LoginThrottle
from web.common import DAY_S, ApiError, Deps

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
MAX_BODY_BYTES = 16 * 1024
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The route groups, each ``register(app, deps)``; their routes do not overlap, so the order does not matter.
ROUTE_GROUPS: tuple[Callable[[Flask, Deps], None], ...] = (
    pages.register,
    api_status.register,
    api_mode.register,
    api_setup.register,
    settings.register,
)


# ---------------------------------------------------------------------------- the access guard
def same_origin(allowed_hosts: frozenset[str]) -> bool:
    """CSRF guard: an Origin or Referer, when present, must be this address or a web.allowed_hosts name."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return True  # scripts (curl) send neither; browsers always send Origin on POST
    return web_access.origin_allowed(source, request.host, allowed_hosts)


def guard_change(deps: Deps, allowed_hosts: frozenset[str]) -> None:
    """A request that changes something (not GET/HEAD/OPTIONS): same origin, then this machine or the password."""
    if not same_origin(allowed_hosts):
        raise ApiError(i18n.Msg("web_cross_origin"), 403)
    if not deps.password.is_set:
        if not deps.local_client():
            raise deps.locked()  # no password: only a user on this machine may change anything
    elif request.path != "/login" and not deps.logged_in():
        raise ApiError(i18n.Msg("web_login_required"), 401)


def guard_read(deps: Deps) -> WerkzeugResponse | None:
    """A GET/HEAD/OPTIONS: the diagnostics and the settings always need the login; the rest unless
    web.read_only_without_login."""
    is_api = request.path.startswith("/api/") or request.path == "/metrics"
    if request.path in ("/api/diagnostics", "/api/settings"):
        # The bundle shows the whole setup, the settings the home's location (forecast.planes): never
        # read-only, never to the LAN without a password.
        if not deps.password.is_set and not deps.local_client():
            raise deps.locked()
        if not deps.logged_in():
            raise ApiError(i18n.Msg("web_login_required"), 401)
    if deps.web_cfg.read_only_without_login or request.endpoint in ("login", "static", "onboarding"):
        return None
    if not deps.password.is_set and not deps.local_client():
        if is_api:
            raise deps.locked()
        return redirect(url_for("onboarding"))
    if not deps.logged_in():
        if is_api:
            raise ApiError(i18n.Msg("web_login_required"), 401)
        return redirect(url_for("login", next=request.path))
    return None


def add_error_handlers(app: Flask, deps: Deps) -> None:
    """Client mistakes as JSON {"error": ...} in the page's language; a bug as a 500 without its traceback."""

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int]:
        return jsonify(error=i18n.render(exc.message, deps.language())), exc.status

    @app.errorhandler(LoginBlocked)
    def login_blocked(exc: LoginBlocked) -> Response:
        retry_after_s = max(1, math.ceil(exc.retry_after_s))
        if request.path == "/login" or (request.method in ("GET", "HEAD") and not request.path.startswith("/api/")):
            session["csrf_token"] = secrets.token_urlsafe(24)
            page = render_template("login.html", lang=deps.language(), error="too_many_attempts",
                                   csrf_token=session["csrf_token"])
            response = make_response(page, 429)
        else:
            response = jsonify(error=f"too many wrong passwords from this address, retry in {retry_after_s} s")
            response.status_code = 429
        response.headers["Retry-After"] = str(retry_after_s)
        return response

    @app.errorhandler(CommandError)
    def command_error(exc: CommandError) -> tuple[Response, int]:
        return jsonify(error=i18n.render(exc.message, deps.language())), exc.status

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


# ---------------------------------------------------------------------------- the app
def create_app(
    store: StatusStore,
    commands: CommandQueue,
    web_cfg: Any,
    *,
    secret_key: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    max_charge_power_w: Callable[[], int] = lambda: 2500,
    history: History | None = None,
    diagnostics: Callable[[], dict[str, Any]] | None = None,
    save_password: Callable[[str], object] | None = None,
    settings_path: Path | None = None,
) -> Flask:
    """Flask app factory; ``web_cfg`` is config_loader.WebConfig (host, port, password, language, ...).

    ``clock`` (monotonic seconds) times the blocks after wrong passwords (LoginThrottle).
    ``max_charge_power_w``: the batteries' total maximum power (the limit of ``POST /api/mode``).
    ``history`` serves /api/history from before a restart and /api/energy; ``diagnostics`` builds the
    bundle of /api/diagnostics (diagnostics.Diagnostics.bundle). ``save_password`` stores the salted hash that
    /onboarding sets into the config file (None: it lasts until the program ends, as in the demo).
    ``settings_path``: the config file /settings edits (None: the demo, nothing to save). The plan and its switch
    come from ``store`` (``GET /api/plan``, ``POST /api/plan/enabled``).
    """
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(days=web_cfg.session_days),
        JSON_SORT_KEYS=False,
    )
    password = web_access.Password(web_cfg.password)
    no_password_warning: i18n.Msg | None = None
    if not password.is_set and web_cfg.host not in LOOPBACK_HOSTS:
        no_password_warning = i18n.Msg("warning_no_password", host=web_cfg.host)
        log.warning(no_password_warning)
        store.update(warnings=(no_password_warning,))
    deps = Deps(
        store=store, commands=commands, web_cfg=web_cfg, max_charge_power_w=max_charge_power_w, history=history,
        diagnostics=diagnostics, save_password=save_password, password=password,
        sessions=web_access.Sessions(web_cfg.session_days * DAY_S, clock), throttle=LoginThrottle(clock),
        trusted_proxies=web_access.parse_networks(web_cfg.trusted_proxies),
        no_password_warning=no_password_warning, settings_path=settings_path)
    allowed_hosts = frozenset(web_cfg.allowed_hosts)
    own_names = web_access.own_host_names()

    @app.before_request
    def guard() -> WerkzeugResponse | None:
        """In this order: the Host header, then for a change the origin and the password, else the read rules."""
        if not web_access.host_allowed(request.host, allowed_hosts, own_names):
            raise ApiError(i18n.Msg("web_host_refused", host=request.host[:100]), 403)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            guard_change(deps, allowed_hosts)
            return None
        return guard_read(deps)

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

    add_error_handlers(app, deps)
    for register in ROUTE_GROUPS:
        register(app, deps)

    @app.get("/api/<path:_rest>")
    def api_not_found(_rest: str) -> Response:
        # This catch-all also takes GETs to the POST-only routes: those are 405, not 404.
        allowed = app.url_map.bind_to_environ(request.environ).allowed_methods(request.path)
        others = sorted(set(allowed) - {"GET", "HEAD", "OPTIONS"})
        if others:
            raise MethodNotAllowed(valid_methods=others)
        abort(404)

    return app
