"""The plan switch across restarts: ``data/plan.json`` beside the config, like the mode's ``data/mode.json``.

``plan.enabled`` in the config is the switch's value at the first start; ``POST /api/plan/enabled`` and the MQTT
topic ``<prefix>/plan/set`` change it while running (``StatusStore.set_plan_enabled``), and the file keeps the
latest choice. The file also notes the config value it was made under: when ``plan.enabled`` in the config has
changed since (an editor, the settings page), the config wins. A damaged file gives the config value and a
warning. The file is written by a thread of its own (``ModeWriter``): no caller ever waits on the disk.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from config_loader import replace_file
from control.i18n import Msg
from control.modes import ModeWriter
from control.status_store import StatusStore

log = logging.getLogger("marstek")

PLAN_FILE = Path("data") / "plan.json"  # beside the config file


@dataclass(frozen=True)
class SwitchState:
    """The switch (``enabled``) and the config's ``plan.enabled`` it was set under."""

    enabled: bool
    config_enabled: bool


class PlanSwitchFile:
    """``{"enabled": bool, "config_enabled": bool}``, replaced atomically (temp file + fsync + os.replace)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, config_enabled: bool) -> bool:
        """The stored switch; missing, made under another ``plan.enabled`` or damaged → ``config_enabled``
        (damaged: with a warning, the file is left for inspection). Never raises."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return config_enabled
        except OSError as exc:
            log.warning("%s", Msg("plan_file_damaged", path=str(self.path), error=str(exc)))
            return config_enabled
        try:
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict) or set(doc) != {"enabled", "config_enabled"} or not all(
                    isinstance(v, bool) for v in doc.values()):
                raise ValueError('not {"enabled": true|false, "config_enabled": true|false}')
        except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors too
            log.warning("%s", Msg("plan_file_damaged", path=str(self.path), error=str(exc)))
            return config_enabled
        if doc["config_enabled"] != config_enabled:
            return config_enabled  # plan.enabled was changed in the config since: the config's word counts
        return bool(doc["enabled"])

    def save(self, state: SwitchState) -> None:
        """Write atomically; raises OSError (the writer reports it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"enabled": state.enabled, "config_enabled": state.config_enabled}
        replace_file(self.path, (json.dumps(doc) + "\n").encode("utf-8"))


def start_plan_switch(store: StatusStore, config_enabled: bool,
                      switch_file: PlanSwitchFile | None) -> ModeWriter[SwitchState] | None:
    """Put the switch into ``store`` (the stored value, else ``config_enabled``); every change is logged and,
    with ``switch_file`` (None: the demo, memory only), written by the returned writer's thread."""
    writer: ModeWriter[SwitchState] | None = None
    enabled = config_enabled
    if switch_file is not None:
        enabled = switch_file.load(config_enabled)

        def not_saved(exc: OSError) -> None:
            log.error("%s", Msg("plan_file_write_failed", path=str(switch_file.path), error=str(exc)))

        writer = ModeWriter(switch_file, not_saved)

    def switched(on: bool, source: str) -> None:
        log.info("%s", Msg("plan_switched_on" if on else "plan_switched_off", source=source))
        if writer is not None:
            writer.save(SwitchState(on, config_enabled))

    store.init_plan_switch(enabled, switched)
    if not enabled:
        log.info("%s", Msg("plan_is_off"))
    return writer
