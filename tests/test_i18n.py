"""Backend messages by code: both languages complete, rendered per answer, logged as text."""

from __future__ import annotations

import copy
import json
import logging
import re
import string
from pathlib import Path

import pytest

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
    for path in ROOT.glob("*.py"):
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
