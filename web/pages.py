"""The HTML pages: dashboard, setup page, login/logout and the first-visit onboarding (password)."""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, session, url_for

from config_loader import ConfigError
from control import i18n
from web import access as web_access
from web.common import ApiError, Deps

log = logging.getLogger(__name__)


def local_target(target: str) -> str:
    """``target`` when it is a path on this server, else "/" (no open redirect).

    Browsers read a backslash as a slash, so "/\\evil.example" would leave the site like "//evil.example".
    """
    if target.startswith("/") and not target.startswith("//") and "\\" not in target and target.isprintable():
        return target
    return "/"


def check_csrf_token(message: str) -> None:
    """The form's csrf_token must be the one this session's page was given (else 403 with ``message``)."""
    token = request.form.get("csrf_token", "")
    # Bytes: compare_digest raises TypeError for str with non-ASCII characters.
    if not token or not hmac.compare_digest(token.encode(), str(session.get("csrf_token", "")).encode()):
        raise ApiError(message, 403)


def set_first_password(deps: Deps, lock: threading.Lock, new: str) -> str:
    """Store and use ``new`` as the password; "" when done, else the error code for the page."""
    with lock:
        if deps.password.is_set:  # someone was faster
            abort(404)
        stored = web_access.hash_password(new)
        try:
            if deps.save_password is not None:
                deps.save_password(stored)
        except (ConfigError, OSError) as exc:  # shown to the user; nothing is changed
            log.error(i18n.Msg("password_not_saved", error=str(exc)))
            return "save_failed"
        deps.password.set(stored)
        log.info(i18n.Msg("password_set", source="/onboarding"))
        if deps.no_password_warning is not None:
            deps.store.update(warnings=tuple(w for w in deps.store.latest().warnings
                                             if w is not deps.no_password_warning))
        deps.start_session()
        return ""


def register(app: Flask, deps: Deps) -> None:
    """GET /, GET /setup, GET+POST /login, POST /logout, GET+POST /onboarding; the templates' strings."""
    onboarding_lock = threading.Lock()

    @app.context_processor
    def page_strings() -> dict[str, Any]:
        """Every template gets the UI texts of its language as ``t`` (see i18n.py), and the access state."""
        return {"t": i18n.strings(deps.language()), "auth_required": deps.password.is_set,
                "logged_in": not deps.password.is_set or deps.session_ok(),
                "onboarding_open": not deps.password.is_set}

    @app.get("/")
    def dashboard() -> str:
        return render_template("dashboard.html", lang=deps.language())

    @app.get("/setup")
    def setup_page() -> str:
        return render_template("setup.html", lang=deps.language())

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if not deps.password.is_set:
            return redirect(url_for("dashboard"))
        error = ""
        if request.method == "POST":
            check_csrf_token("invalid or missing CSRF token, reload the login page")
            if deps.check_password(request.form.get("password", "")):
                deps.start_session()
                return redirect(local_target(request.args.get("next", "/")))
            error = "wrong_password"
        session["csrf_token"] = secrets.token_urlsafe(24)
        return render_template("login.html", lang=deps.language(), error=error, csrf_token=session["csrf_token"]), (
            401 if error else 200
        )

    @app.post("/logout")
    def logout() -> Response:
        deps.sessions.end(session.get("sid"))  # this cookie never works again, even if someone kept a copy
        session.clear()
        return jsonify(ok=True)

    @app.route("/onboarding", methods=["GET", "POST"])
    def onboarding() -> Any:
        """First visit: set the password. Exists only while none is set; the form only on this machine itself
        (the guard refuses a POST from elsewhere): from the LAN it explains ``--set-password``."""
        if deps.password.is_set:
            abort(404)
        local = deps.local_client()
        error = ""
        if request.method == "POST":
            check_csrf_token("invalid or missing CSRF token, reload the page")
            new, repeated = request.form.get("password", ""), request.form.get("password2", "")
            error = web_access.password_problem(new, repeated) or set_first_password(deps, onboarding_lock, new)
            if not error:
                return redirect(url_for("dashboard"))
        session["csrf_token"] = secrets.token_urlsafe(24)
        page = render_template("onboarding.html", lang=deps.language(), local=local, error=error,
                               port=deps.web_cfg.port, csrf_token=session["csrf_token"],
                               persistent=deps.save_password is not None)
        return page, (500 if error == "save_failed" else 400 if error else 200)
