"""Backend messages by code: both languages complete, rendered per answer, logged as text."""

from __future__ import annotations

import ast
import copy
import json
import logging
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest

from config_loader import WebConfig, parse_config
from control import i18n
from control.i18n import Msg
from control.status_store import StatusStore, StoreLogHandler

ROOT = Path(__file__).resolve().parent.parent


def test_both_languages_have_the_same_message_codes_and_placeholders() -> None:
    assert i18n.MESSAGES_DE.keys() == i18n.MESSAGES_EN.keys()
    fields = string.Formatter()
    for code, de in i18n.MESSAGES_DE.items():
        de_fields = {f for _, f, _, _ in fields.parse(de) if f}
        en_fields = {f for _, f, _, _ in fields.parse(i18n.MESSAGES_EN[code]) if f}
        assert de_fields == en_fields, code


def test_every_code_used_in_the_program_exists() -> None:
    used = set()
    for path in product_modules():
        used |= set(re.findall(r'Msg\(\s*"([a-z0-9_]+)"', path.read_text(encoding="utf-8")))
    assert used, "no Msg(...) found: the scan is broken"
    assert used <= i18n.MESSAGES_EN.keys(), used - i18n.MESSAGES_EN.keys()


def test_a_message_is_text_in_the_backend_language_and_renders_in_any_other() -> None:
    note = Msg("note_soc_min", soc=10.4, limit=11.0)
    reason = Msg("reason_notes", notes=[note, Msg("note_offline")])
    assert str(reason) == "SoC 10 % at/below minimum 11 %: no discharge; offline"
    assert reason.text("de") == "SoC 10 % an/unter der Untergrenze 11 %: kein Entladen; nicht erreichbar"
    assert "minimum" in reason  # a str: logs and tests read it as text
    assert json.dumps({"r": reason}) == json.dumps({"r": str(reason)})
    clone = copy.deepcopy(reason)  # snapshots are copied by dataclasses.asdict
    assert clone.code == "reason_notes" and clone.text("de") == reason.text("de")
    assert i18n.render({"a": [note, 3, "x"]}, "de") == {"a": ["SoC 10 % an/unter der Untergrenze 11 %: kein Entladen",
                                                            3, "x"]}
    with pytest.raises(KeyError):
        Msg("no_such_code")


def test_one_status_answer_speaks_one_language() -> None:
    store = StatusStore()
    store.update(errors=(Msg("meter_error", error="Shelly 1.2.3.4: no answer"),))
    logger = logging.getLogger("test_i18n")
    handler = StoreLogHandler(store)
    logger.addHandler(handler)
    try:
        logger.warning(Msg("battery_offline", name=Msg("unit_default_name", n=2), id=2, error="timeout"))
        logger.warning("library text %s", "as is")
    finally:
        logger.removeHandler(handler)
    de = store.status_json("de")
    assert de["errors"] == ["Messgerät: Shelly 1.2.3.4: no answer"]
    assert [e["message"] for e in de["events"]] == ["Akku 2 nicht erreichbar: timeout", "library text as is"]
    en = store.status_json("en")
    assert en["errors"] == ["Meter: Shelly 1.2.3.4: no answer"]
    assert en["events"][0]["message"] == "Battery 2 offline: timeout"


def test_the_backend_language_follows_the_config() -> None:
    try:
        i18n.set_language("de")
        assert str(Msg("reason_no_battery")) == "kein Akku erreichbar"
        i18n.set_language("auto")
        assert i18n.language() == "de"
    finally:
        i18n.set_language("en")
    assert str(Msg("reason_no_battery")) == "no battery online"


# ---------------------------------------------------------------------------- the language policy
PRODUCT_DIRS = ("control", "meters", "integrations", "planning")
LOG_LEVELS = {"info", "warning", "error", "exception", "critical"}  # debug lines may be plain English
# install.py runs with the system Python before the program is installed; it writes its own German lines.
NOT_SCANNED = {"install.py"}
# Known exceptions, each with its reason: (file, literal).
ALLOWED_LITERALS = {
    # The traceback of a bug inside a request handler (the user gets a 500 answer): for the developer.
    ("web_server.py", "Internal error on %s %s"),
}


def _is_msg_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "Msg"


def _plain_text(call: ast.Call, first: int) -> str | None:
    """The literal text a log/print call writes instead of a message code, or None."""
    if len(call.args) <= first:
        return None
    arg = call.args[first]
    if isinstance(arg, ast.JoinedStr):
        return ast.unparse(arg)
    if isinstance(arg, ast.BinOp) and any(isinstance(n, (ast.Constant, ast.JoinedStr)) for n in ast.walk(arg)):
        return ast.unparse(arg)
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        # "%s" with message codes as its arguments still shows a message code.
        if arg.value == "%s" and all(_is_msg_call(a) for a in call.args[first + 1:]):
            return None
        return arg.value
    return None


def plain_texts(path: Path) -> list[tuple[int, str]]:
    """Log calls at INFO and above and ``print`` calls of ``path`` that write a hand-written text."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        text = None
        if isinstance(node.func, ast.Attribute) and node.func.attr in LOG_LEVELS:
            text = _plain_text(node, 0)
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "log" and node.args:
            level = ast.unparse(node.args[0])
            text = None if level.endswith("DEBUG") else _plain_text(node, 1)
        elif isinstance(node.func, ast.Name) and node.func.id == "print":
            text = _plain_text(node, 0)
        if text is not None:
            found.append((node.lineno, text))
    return found


def product_modules() -> list[Path]:
    top = [p for p in ROOT.glob("*.py") if p.name not in NOT_SCANNED]
    return [*top, *(p for d in PRODUCT_DIRS for p in (ROOT / d).glob("*.py"))]


def test_the_scan_for_hand_written_texts_finds_them() -> None:
    sample = ROOT / "tests" / "fixtures" / "i18n_policy_sample.py.txt"
    found = [text for _, text in plain_texts(sample)]
    assert found == ["Battery %d answers again", "f'unit {unit_id} {what}'", "--port: must be 1..65535",
                     "f'Konfigurationsfehler / configuration error: {exc}'", "%s: %s"], found


def test_every_text_a_user_reads_is_a_message_code() -> None:
    """The language policy (README, development): log lines from INFO up and printed lines are ``Msg`` codes
    in control/i18n.py (German and English); technical details (a BatteryError's text) are parameters."""
    modules = product_modules()
    names = {str(p.relative_to(ROOT)) for p in modules}
    assert {"battery_client.py", "control/check.py", "control/status_store.py", "main.py",
            "config_loader.py", "planning/fetcher.py"} <= names
    offenders = [f"{p.relative_to(ROOT)}:{line}: {text!r}" for p in modules for line, text in plain_texts(p)
                 if (str(p.relative_to(ROOT)), text) not in ALLOWED_LITERALS]
    assert not offenders, offenders


def test_the_default_language_is_german_everywhere() -> None:
    """One default: the backend messages of a fresh process, the UI fallback, web.language and the README."""
    fresh = subprocess.run([sys.executable, "-c", "from control import i18n; print(i18n.language())"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    assert fresh.stdout.strip() == i18n.DEFAULT_LANGUAGE == "de"
    assert WebConfig().language == "de"
    assert parse_config({"shelly": {"ip": "10.0.0.2"}, "battery": {"ip": "10.0.0.3"}}).web.language == "de"
    assert "| `web.language` | `\"de\"` |" in (ROOT / "README.md").read_text(encoding="utf-8")
