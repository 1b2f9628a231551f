"""The settings page: the ``tariff``, ``forecast`` and ``plan`` sections of config.json edited in the browser.

``GET /api/settings`` answers the three sections as they are in the file (a section absent: null), with the
write-only ``tariff.token`` replaced by null and ``token_set`` saying whether one is stored. ``POST
/api/settings`` takes any of the three sections (an object replaces the section, null removes it), validates
the whole changed file with the config loader exactly as at start and writes it atomically with a backup
(``config_loader.update_sections``); a rejected change leaves the file untouched and answers 400 with the
loader's problems, each naming its key path. The running program keeps its configuration: the change takes
effect at the next start (the answer says so). Access is the app's guard: a POST needs the password (or, without
one, a user on this machine).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from flask import Flask, Response, jsonify, render_template, request

from config_loader import ConfigError, read_sections, update_sections
from control import i18n
from web import access as web_access
from web.common import Deps

log = logging.getLogger(__name__)

SECTIONS = ("tariff", "forecast", "plan")
SECRET_KEY = "token"  # tariff.token (Tibber, ENTSO-E): never sent back to the browser


def public_sections(sections: dict[str, Any]) -> dict[str, Any]:
    """The three sections for the browser: absent ones null, the tariff's token null, ``token_set`` beside."""
    shown: dict[str, Any] = {name: sections.get(name) for name in SECTIONS}
    tariff = shown["tariff"]
    token_set = False
    if isinstance(tariff, dict):
        token = tariff.get(SECRET_KEY)
        token_set = isinstance(token, str) and token.strip() != ""
        if SECRET_KEY in tariff:
            shown["tariff"] = {**tariff, SECRET_KEY: None}
    shown["token_set"] = token_set
    return shown


def keep_token(name: str, old: Any, new: Any) -> Any:
    """``update_sections``'s ``keep``: a tariff sent without a token (absent or null) keeps the stored one; an
    empty string removes it."""
    if name != "tariff" or not isinstance(new, dict):
        return new
    new = dict(new)
    token = new.get(SECRET_KEY)
    if token is None:
        new.pop(SECRET_KEY, None)
        if isinstance(old, dict) and isinstance(old.get(SECRET_KEY), str) and old[SECRET_KEY]:
            new[SECRET_KEY] = old[SECRET_KEY]
    elif token == "":
        del new[SECRET_KEY]
    return new


class BadBody(ValueError):
    """The request body is not an object of the three sections."""


def _reject_constant(name: str) -> Any:
    raise BadBody(f"{name} is not a number JSON allows")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The POST body: a JSON object with any of ``SECTIONS``, each an object or null. Raises BadBody."""
    if web_access.json_too_deep(raw):
        raise BadBody(f"body is nested too deeply (at most {web_access.MAX_JSON_DEPTH} levels of [ and {{)")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)  # NaN/Infinity would make config.json unreadable
    except (ValueError, RecursionError) as exc:
        raise BadBody(str(exc) if isinstance(exc, BadBody) else "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadBody("body must be a JSON object")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise BadBody(f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(SECTIONS)})")
    if not data:
        raise BadBody(f"nothing to save: send at least one of {', '.join(SECTIONS)}")
    for name, value in data.items():
        if value is not None and not isinstance(value, dict):
            raise BadBody(f"{name}: must be an object {{...}} or null (removes the section)")
    return data


def register(app: Flask, deps: Deps) -> None:
    """Add ``/settings``, ``GET`` and ``POST /api/settings`` to ``app`` (whose guard protects them).

    ``deps.settings_path``: the config file to read and write (None: the demo, nothing to save; the page says
    so); the texts in the request's page language.
    """
    config_path, language = deps.settings_path, deps.language
    write_lock = threading.Lock()  # one save at a time: the second reads what the first wrote

    @app.get("/settings")
    def settings_page() -> str:
        return render_template("settings.html", lang=language(), editable=config_path is not None)

    @app.get("/api/settings")
    def api_settings() -> Response | tuple[Response, int]:
        if config_path is None:
            return jsonify(editable=False, error=i18n.Msg("settings_no_file").text(language())), 409
        try:
            sections = read_sections(config_path, SECTIONS)
        except ConfigError as exc:
            return jsonify(editable=False, error=i18n.render(str(exc), language())), 409
        return jsonify(editable=True, **public_sections(sections))

    @app.post("/api/settings")
    def api_save_settings() -> tuple[Response, int]:
        if config_path is None:
            return jsonify(error=i18n.Msg("settings_no_file").text(language())), 409
        if not request.is_json:
            return jsonify(error="Content-Type must be application/json"), 415
        try:
            changes = parse_body(request.get_data(cache=True))
        except BadBody as exc:
            return jsonify(error=str(exc)), 400
        with write_lock:
            try:
                update_sections(config_path, changes, keep=keep_token)
            except ConfigError as exc:
                problems = [i18n.render(p, language()) for p in exc.problems]
                return jsonify(error="\n".join(problems), problems=problems), 400
            sections = read_sections(config_path, SECTIONS)
        log.info(i18n.Msg("settings_saved_log", sections=", ".join(changes), path=str(config_path)))
        return jsonify(ok=True, restart_needed=True, message=i18n.Msg("settings_saved_restart").text(language()),
                       editable=True, **public_sections(sections)), 200
