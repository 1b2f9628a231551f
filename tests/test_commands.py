"""Commands are frozen dataclasses (issue 19): a wrong field or a stranger object is refused before it runs.

The type check is the real one (mypy on a snippet, from the repository root); the run-time refusals are
checked on a real ``CommandQueue`` and a real control loop in front of the simulator.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from control import i18n
from control.commands import AddToConfig, EnterSetup, ExitSetup, Scan, SetId, SetMode
from control.modes import ModeRequest
from control.status_store import CommandError, CommandQueue
from simulator.world import UnitSpec
from zero_feed_control import OperatingMode

ROOT = Path(__file__).resolve().parent.parent

MISTYPED = """\
from control.commands import Scan, SetId
from control.status_store import CommandQueue

Scan(first_ids=1)
CommandQueue().submit("scan", timeout_s=1.0)
SetId(new_id="2")
"""


def test_mypy_refuses_a_mistyped_command(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    snippet = tmp_path / "mistyped.py"
    snippet.write_text(MISTYPED, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", str(snippet), "--follow-imports=silent", "--ignore-missing-imports",
         "--python-version=3.10", f"--cache-dir={tmp_path / 'cache'}", "--no-error-summary"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    errors = {int(line): code for line, code in re.findall(r"mistyped\.py:(\d+): error: .*\[([a-z-]+)\]",
                                                           done.stdout)}
    assert errors == {4: "call-arg", 5: "arg-type", 6: "arg-type"}, done.stdout + done.stderr


def test_a_misspelt_field_is_a_type_error_and_a_command_cannot_change() -> None:
    with pytest.raises(TypeError):
        Scan(first_ids=1)  # type: ignore[call-arg]
    scan = Scan(first_id=3, last_id=6)
    assert scan == Scan(3, 6, None) and scan.gateway is None  # None: the first gateway
    with pytest.raises(dataclasses.FrozenInstanceError):
        scan.last_id = 200  # type: ignore[misc]


def test_the_queue_refuses_what_is_not_a_command_in_the_callers_thread() -> None:
    commands = CommandQueue()
    for stranger in ("set_mode", {"name": "scan"}, ModeRequest(OperatingMode.OFF)):
        with pytest.raises(TypeError, match="not a command"):
            commands.submit(stranger, timeout_s=0.1)  # type: ignore[arg-type]
    assert commands._queue.empty() and not commands.wakeup.is_set()  # nothing was queued, nothing woken


def test_the_control_loop_refuses_an_unknown_command_object() -> None:
    """The ``match`` default: mypy proves it unreachable; an object that still gets there is a 400, not a no-op."""
    from tests.loop_rig import Rig, fake_clock, fault_config

    @dataclasses.dataclass(frozen=True)
    class Reboot:
        battery_id: int

    rig = Rig()
    try:
        sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)])
        loop = rig.loop(fault_config(sim, [1]), fake_clock())
        with pytest.raises(CommandError) as refused:
            loop.handle_command(Reboot(1))  # type: ignore[arg-type]
        assert refused.value.status == 400
        assert refused.value.message == i18n.Msg("unknown_command", name="Reboot")
        assert not loop.setup_mode
        # The known ones still go their way.
        assert loop.handle_command(EnterSetup())["setup_mode"] is True
        with pytest.raises(CommandError) as not_scanned:
            loop.handle_command(AddToConfig(battery_id=9))
        assert not_scanned.value.status == 409
        assert loop.handle_command(ExitSetup()) == {"setup_mode": False}
        with pytest.raises(CommandError) as outside_setup:
            loop.handle_command(SetId(new_id=2))
        assert outside_setup.value.message == i18n.Msg("not_in_setup")
        answer = loop.handle_command(SetMode(request=ModeRequest(OperatingMode.OFF), source="api"))
        assert answer["mode"] == "off"
    finally:
        rig.close()
