"""The dashboard's web server: pages, the JSON API of interfaces.md, and its protection.

The web thread never touches hardware: it reads snapshots from the ``StatusStore`` and hands
setup commands to the control thread through the ``CommandQueue``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hmac
import json
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

from config_loader import ConfigError
from control import i18n, modes
from control.commands import AddToConfig, Command, EnterSetup, ExitSetup, Scan, SetId, SetMode
from control.status_store import CommandError, CommandQueue, HistorySample, StatusStore
from integrations import metrics
from integrations.history import History, HistoryBusy, PriceAt, bucket_samples
from planning.plan_mode import plan_json
from web import access as web_access

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
MAX_BODY_BYTES = 16 * 1024
DAY_S = 86400.0
LOGIN_BLOCK_FIRST_S = 1.0  # blocked after the first wrong password; doubles with each further one
LOGIN_BLOCK_MAX_S = 60.0
LOGIN_FORGET_AFTER_S = 900.0  # a client without a wrong password for this long starts again at 1 s
LOGIN_MAX_CLIENTS = 4096  # bounds the table when many addresses try
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class ApiError(Exception):
    """A client mistake: answered as {"error": message} with a 4xx status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message  # an i18n.Msg is answered in the page's language
        self.status = status


# ---------------------------------------------------------------------------- failed logins
class LoginBlocked(Exception):
    """A client that must wait before its password is checked again (answered with 429 and Retry-After)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"blocked for {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class _Failures:
    count: int
    last_failure_s: float
    blocked_until_s: float


class LoginThrottle:
    """Wrong passwords per client address, and how long each client is blocked.

    After the n-th wrong password in a row a client is blocked for ``first_s * 2**(n-1)`` seconds, at
    most ``max_s``; a right password forgets it. Memory is bounded: a client without a wrong password
    for ``forget_after_s`` is forgotten, and at most ``max_clients`` are kept (the one whose last wrong
    password is oldest goes first). Nothing sleeps: a blocked client is refused at once. Thread-safe.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        first_s: float = LOGIN_BLOCK_FIRST_S,
        max_s: float = LOGIN_BLOCK_MAX_S,
        forget_after_s: float = LOGIN_FORGET_AFTER_S,
        max_clients: int = LOGIN_MAX_CLIENTS,
    ) -> None:
        if not 0 < first_s <= max_s < forget_after_s or max_clients < 1:
            raise ValueError("need 0 < first_s <= max_s < forget_after_s and max_clients >= 1")
        self._clock = clock
        self._first_s = first_s
        self._max_s = max_s
        self._forget_after_s = forget_after_s
        self._max_clients = max_clients
        self._clients: OrderedDict[str, _Failures] = OrderedDict()  # oldest last failure first
        self._lock = threading.Lock()

    def attempt(self, client: str, check: Callable[[], bool]) -> bool:
        """Run ``check`` (the password comparison) for ``client``; raise LoginBlocked while it is blocked.

        True: right, the client's failures are forgotten. False: wrong, the client is now blocked.
        Check and bookkeeping happen under one lock, so parallel requests get no extra tries.
        """
        with self._lock:
            now = self._clock()
            self._forget_old(now)
            entry = self._clients.get(client)
            if entry is not None and entry.blocked_until_s > now:
                raise LoginBlocked(entry.blocked_until_s - now)
            if check():
                self._clients.pop(client, None)
                return True
            count = 1 if entry is None else entry.count + 1
            block_s = min(self._first_s * 2.0 ** min(count - 1, 30), self._max_s)
            self._clients.pop(client, None)
            self._clients[client] = _Failures(count, now, now + block_s)
            while len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
            return False

    def blocked_s(self, client: str) -> float:
        """Seconds until ``client``'s password is checked again (0: now)."""
        with self._lock:
            now = self._clock()
            entry = self._clients.get(client)
            return 0.0 if entry is None else max(0.0, entry.blocked_until_s - now)

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)

    def _forget_old(self, now: float) -> None:
        while self._clients:
            oldest = next(iter(self._clients.values()))
            if now - oldest.last_failure_s < self._forget_after_s:
                return
            self._clients.popitem(last=False)


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


def gateway_of(data: Mapping[str, Any]) -> str | None:
    """The optional ``"gateway": "<host>:<port>"`` of a setup request (the control thread checks that it exists)."""
    if "gateway" not in data:
        return None
    gateway = data["gateway"].strip()
    if not gateway or len(gateway) > 300:
        raise ApiError('gateway must be "<host>:<port>" of a configured gateway')
    return str(gateway)


def int_in_range(data: Mapping[str, Any], name: str, low: int, high: int, default: int | None = None) -> int:
    value = data.get(name, default)
    if value is None:
        raise ApiError(f"field {name} is required")
    if not low <= value <= high:
        raise ApiError(f"{name} must be {low}..{high}, got {value}")
    return int(value)


def _import_price_ct(price_at: PriceAt) -> float | None:
    """The import price in force now, ct/kWh (None: no slot covers now)."""
    price = price_at(time.time())
    return price.import_ct_per_kwh if price is not None else None


# ---------------------------------------------------------------------------- the app
def create_app(  # noqa: C901 (the app factory: each route is a small closure)
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
) -> Flask:
    """Flask app factory; ``web_cfg`` is config_loader.WebConfig (host, port, password, language, ...).

    ``clock`` (monotonic seconds) times the blocks after wrong passwords (LoginThrottle).
    ``max_charge_power_w``: the batteries' total maximum power (the limit of ``POST /api/mode``).
    ``history`` serves /api/history from before a restart and /api/energy; ``diagnostics`` builds the
    bundle of /api/diagnostics (diagnostics.Diagnostics.bundle). ``save_password`` stores the salted hash that
    /onboarding sets into the config file (None: it lasts until the program ends, as in the demo).
    """
    app = Flask(__name__, static_folder="static", template_folder="templates")
    price_at = history.price_at if history is not None else None  # set only with a tariff
    registry = metrics.make_registry(
        store,
        import_price_ct=(lambda: _import_price_ct(price_at)) if price_at is not None else None,
        money_totals=history.money_totals if history is not None and price_at is not None else None)
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(days=web_cfg.session_days),
        JSON_SORT_KEYS=False,
    )
    password = web_access.Password(web_cfg.password)
    throttle = LoginThrottle(clock)
    sessions = web_access.Sessions(web_cfg.session_days * DAY_S, clock)
    allowed_hosts = frozenset(web_cfg.allowed_hosts)
    own_names = web_access.own_host_names()
    trusted_proxies = web_access.parse_networks(web_cfg.trusted_proxies)
    onboarding_lock = threading.Lock()

    no_password_warning: i18n.Msg | None = None
    if not password.is_set and web_cfg.host not in LOOPBACK_HOSTS:
        no_password_warning = i18n.Msg("warning_no_password", host=web_cfg.host)
        log.warning(no_password_warning)
        store.update(warnings=(no_password_warning,))

    # ------------------------------------------------------------------ auth helpers
    def client() -> tuple[str, bool]:
        """The client's address and whether it came through a proxy (web.trusted_proxies)."""
        return web_access.client_address(request.remote_addr, request.headers.get, trusted_proxies)

    def local_client() -> bool:
        """A user on this machine itself (not a proxy on it forwarding someone else)."""
        address, forwarded = client()
        return web_access.is_loopback(address) and not (forwarded and address == request.remote_addr)

    def check_password(candidate: str) -> bool:
        """Compare ``candidate`` unless this client is blocked (LoginBlocked); a wrong one blocks it."""
        address = client()[0]
        if throttle.attempt(address, lambda: password.matches(candidate)):
            return True
        log.warning(i18n.Msg("failed_login", client=address, seconds=throttle.blocked_s(address)))
        return False

    def basic_auth_password() -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return ""
        return decoded.split(":", 1)[1] if ":" in decoded else ""

    def session_ok() -> bool:
        return password.is_set and sessions.valid(session.get("sid"))

    def logged_in() -> bool:
        if not password.is_set or session_ok():
            return True
        supplied = basic_auth_password()
        if supplied is None:
            return False
        return check_password(supplied)

    def start_session() -> None:
        session.clear()
        session.permanent = True  # the cookie ends with the server-side session (web.session_days)
        session["sid"] = sessions.start()

    def same_origin() -> bool:
        """CSRF guard: an Origin or Referer, when present, must be this address or a web.allowed_hosts name."""
        source = request.headers.get("Origin") or request.headers.get("Referer")
        if not source:
            return True  # scripts (curl) send neither; browsers always send Origin on POST
        return web_access.origin_allowed(source, request.host, allowed_hosts)

    def locked() -> ApiError:
        return ApiError(i18n.Msg("web_locked", port=web_cfg.port), 403)

    @app.before_request
    def guard() -> WerkzeugResponse | None:
        if not web_access.host_allowed(request.host, allowed_hosts, own_names):
            raise ApiError(i18n.Msg("web_host_refused", host=request.host[:100]), 403)
        is_api = request.path.startswith("/api/") or request.path == "/metrics"
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if not same_origin():
                raise ApiError(i18n.Msg("web_cross_origin"), 403)
            if not password.is_set:
                if not local_client():
                    raise locked()  # no password: only a user on this machine may change anything
            elif request.path != "/login" and not logged_in():
                raise ApiError(i18n.Msg("web_login_required"), 401)
            return None
        if request.path == "/api/diagnostics":
            # The bundle shows the whole setup: never read-only, never to the LAN without a password.
            if not password.is_set and not local_client():
                raise locked()
            if not logged_in():
                raise ApiError(i18n.Msg("web_login_required"), 401)
        if web_cfg.read_only_without_login or request.endpoint in ("login", "static", "onboarding"):
            return None
        if not password.is_set and not local_client():
            if is_api:
                raise locked()
            return redirect(url_for("onboarding"))
        if not logged_in():
            if is_api:
                raise ApiError(i18n.Msg("web_login_required"), 401)
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
        return jsonify(error=i18n.render(exc.message, language())), exc.status

    @app.errorhandler(LoginBlocked)
    def login_blocked(exc: LoginBlocked) -> Response:
        retry_after_s = max(1, math.ceil(exc.retry_after_s))
        if request.path == "/login" or (request.method in ("GET", "HEAD") and not request.path.startswith("/api/")):
            session["csrf_token"] = secrets.token_urlsafe(24)
            page = render_template("login.html", lang=language(), error="too_many_attempts",
                                   csrf_token=session["csrf_token"])
            response = make_response(page, 429)
        else:
            response = jsonify(error=f"too many wrong passwords from this address, retry in {retry_after_s} s")
            response.status_code = 429
        response.headers["Retry-After"] = str(retry_after_s)
        return response

    @app.errorhandler(CommandError)
    def command_error(exc: CommandError) -> tuple[Response, int]:
        return jsonify(error=i18n.render(exc.message, language())), exc.status

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
        """Every template gets the UI texts of its language as ``t`` (see i18n.py), and the access state."""
        return {"t": i18n.strings(language()), "auth_required": password.is_set,
                "logged_in": not password.is_set or session_ok(), "onboarding_open": not password.is_set}

    @app.get("/")
    def dashboard() -> str:
        return render_template("dashboard.html", lang=language())

    @app.get("/setup")
    def setup_page() -> str:
        return render_template("setup.html", lang=language())

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if not password.is_set:
            return redirect(url_for("dashboard"))
        error = ""
        if request.method == "POST":
            token = request.form.get("csrf_token", "")
            # Bytes: compare_digest raises TypeError for str with non-ASCII characters.
            if not token or not hmac.compare_digest(token.encode(), str(session.get("csrf_token", "")).encode()):
                raise ApiError("invalid or missing CSRF token, reload the login page", 403)
            if check_password(request.form.get("password", "")):
                start_session()
                return redirect(local_target(request.args.get("next", "/")))
            error = "wrong_password"
        session["csrf_token"] = secrets.token_urlsafe(24)
        return render_template("login.html", lang=language(), error=error, csrf_token=session["csrf_token"]), (
            401 if error else 200
        )

    @app.post("/logout")
    def logout() -> Response:
        sessions.end(session.get("sid"))  # this cookie never works again, even if someone kept a copy
        session.clear()
        return jsonify(ok=True)

    @app.route("/onboarding", methods=["GET", "POST"])
    def onboarding() -> Any:
        """First visit: set the password. Exists only while none is set; the form only on this machine itself
        (the guard refuses a POST from elsewhere): from the LAN it explains ``--set-password``."""
        if password.is_set:
            abort(404)
        local = local_client()
        error = ""
        if request.method == "POST":
            token = request.form.get("csrf_token", "")
            if not token or not hmac.compare_digest(token.encode(), str(session.get("csrf_token", "")).encode()):
                raise ApiError("invalid or missing CSRF token, reload the page", 403)
            new, repeated = request.form.get("password", ""), request.form.get("password2", "")
            error = web_access.password_problem(new, repeated) or ""
            if not error:
                with onboarding_lock:
                    if password.is_set:  # someone was faster
                        abort(404)
                    stored = web_access.hash_password(new)
                    try:
                        if save_password is not None:
                            save_password(stored)
                    except (ConfigError, OSError) as exc:  # shown to the user; nothing is changed
                        log.error(i18n.Msg("password_not_saved", error=str(exc)))
                        error = "save_failed"
                    else:
                        password.set(stored)
                        log.info(i18n.Msg("password_set", source="/onboarding"))
                        if no_password_warning is not None:
                            store.update(warnings=tuple(w for w in store.latest().warnings
                                                        if w is not no_password_warning))
                        start_session()
                        return redirect(url_for("dashboard"))
        session["csrf_token"] = secrets.token_urlsafe(24)
        page = render_template("onboarding.html", lang=language(), local=local, error=error, port=web_cfg.port,
                               csrf_token=session["csrf_token"], persistent=save_password is not None)
        return page, (500 if error == "save_failed" else 400 if error else 200)


    # ------------------------------------------------------------------ API
    @app.get("/api/status")
    def api_status() -> Response:
        return jsonify(store.status_json(language()))

    @app.get("/api/history")
    def api_history() -> Response:
        """Chart samples newer than ?since= (epoch seconds; default: the last day), also from before the last
        restart; ?step=<s> averages them into buckets of that many seconds (long ranges)."""
        since_t = finite_arg("since")
        step = request.args.get("step")
        step_s = None
        if step is not None:
            if not step.isdigit() or not 1 <= int(step) <= 86400:
                raise ApiError("step must be an integer 1..86400 (seconds)")
            step_s = int(step)
        lower_t = since_t if since_t is not None else time.time() - DAY_S
        samples: list[HistorySample] | None = None
        if step_s is not None:
            if history is not None:
                with contextlib.suppress(HistoryBusy):  # busy: the day in memory
                    samples = history.samples(lower_t, None, step_s)
            if samples is None:
                samples = bucket_samples(store.history(lower_t), step_s)
        else:
            memory = store.history(since_t)  # no since: all of memory (2 h), the rest of the day from the file
            samples = list(memory)
            if history is not None and (not memory or memory[0].t > lower_t):
                # Older than this run's memory: from the file (the memory's samples are in it too: skip those).
                with contextlib.suppress(HistoryBusy):  # busy: what is in memory
                    samples = history.samples(lower_t, memory[0].t if memory else None) + samples
        return jsonify(
            t=[s.t for s in samples],
            grid_w=[s.grid_w for s in samples],
            battery_w=[s.battery_w for s in samples],
            soc_pct=[s.soc_pct for s in samples],
        )

    def finite_arg(name: str) -> float | None:
        raw = request.args.get(name)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise ApiError(f"{name} must be a number (epoch seconds)") from None
        if not math.isfinite(value):
            raise ApiError(f"{name} must be a finite number (epoch seconds)")
        return value

    @app.get("/api/energy")
    def api_energy() -> Response | tuple[Response, int, dict[str, str]]:
        """Energy per local day, the last ?days=N (1..366, default 7), oldest first, today included."""
        raw = request.args.get("days", "7")
        if not raw.isdigit() or not 1 <= int(raw) <= 366:
            raise ApiError(f"days must be an integer 1..366, got {raw!r}")
        if history is None:
            return jsonify(error="no history database in this program"), 503, {}
        try:
            days = history.energy_days(int(raw))
        except HistoryBusy as exc:
            return jsonify(error=str(exc)), 503, {"Retry-After": "5"}
        return jsonify(days=days)

    @app.get("/api/plan")
    def api_plan() -> Response:
        """The plan by price (planning/plan_mode.py), from the current slot on; messages in the page's language."""
        now = datetime.datetime.now(datetime.timezone.utc)
        return jsonify(i18n.render(plan_json(store.plan(), store.plan_enabled(), now), language()))

    @app.post("/api/plan/enabled")
    def api_plan_enabled() -> Response:
        """The plan switch (planning/plan_switch.py): off, the plan is still computed and shown, not applied."""
        data = json_body({"enabled": bool}, required=("enabled",))
        if not isinstance(data["enabled"], bool):
            raise ApiError("enabled must be true or false")
        source = "dashboard" if request.headers.get("Origin") else "api"
        if not store.set_plan_enabled(data["enabled"], source):
            raise ApiError(i18n.Msg("plan_not_configured"), 409)
        return jsonify(enabled=store.plan_enabled())

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition(registry, request.headers.get("Accept"))
        return Response(body, headers={"Content-Type": content_type})

    @app.get("/api/diagnostics")
    def api_diagnostics() -> Response:
        if diagnostics is None:
            abort(404)
        response = jsonify(diagnostics())
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        response.headers["Content-Disposition"] = f'attachment; filename="marstek-diagnose-{stamp}.json"'
        return response

    def run(command: Command, timeout_s: float = 60.0) -> Response:
        """Run a command on the control thread; its messages in the page's language."""
        return jsonify(i18n.render(commands.submit(command, timeout_s=timeout_s), language()))

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
        return run(SetMode(request=request_, source=source), timeout_s=10.0)

    @app.post("/api/setup/enter")
    def setup_enter() -> Response:
        json_body({})
        return run(EnterSetup())

    @app.post("/api/setup/exit")
    def setup_exit() -> Response:
        json_body({})
        return run(ExitSetup())

    @app.post("/api/setup/scan")
    def setup_scan() -> Response:
        data = json_body({"first_id": int, "last_id": int, "gateway": str})
        first_id = int_in_range(data, "first_id", 1, 247, 1)
        last_id = int_in_range(data, "last_id", 1, 247, 10)
        if last_id < first_id:
            raise ApiError("last_id must not be below first_id")
        if last_id - first_id >= 50:
            raise ApiError("scan at most 50 IDs at once")
        return run(Scan(first_id=first_id, last_id=last_id, gateway=gateway_of(data)), timeout_s=120.0)

    @app.post("/api/setup/set-id")
    def setup_set_id() -> Response:
        data = json_body({"new_id": int, "gateway": str}, required=("new_id",))
        new_id = int_in_range(data, "new_id", 2, 247)
        return run(SetId(new_id=new_id, gateway=gateway_of(data)))

    @app.post("/api/setup/add-to-config")
    def setup_add_to_config() -> Response:
        data = json_body({"id": int, "gateway": str}, required=("id",))
        battery_id = int_in_range(data, "id", 1, 247)
        return run(AddToConfig(battery_id=battery_id, gateway=gateway_of(data)))

    @app.get("/api/<path:_rest>")
    def api_not_found(_rest: str) -> Response:
        # This catch-all also takes GETs to the POST-only routes: those are 405, not 404.
        allowed = app.url_map.bind_to_environ(request.environ).allowed_methods(request.path)
        others = sorted(set(allowed) - {"GET", "HEAD", "OPTIONS"})
        if others:
            raise MethodNotAllowed(valid_methods=others)
        abort(404)

    return app
