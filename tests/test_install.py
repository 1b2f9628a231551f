"""install.py in a temp copy of the project (a real venv, a real pip), its pure helpers, and install.bat's bytes.

The requirements file of the process tests installs one tiny wheel built here with ``--no-index``: fast
and offline, and importing it from the new venv proves that pip installed into that venv.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

import install
from simulator.world import Simulation, SimUnit, UnitSpec
from tests.helpers import free_port, running_main, sim_config_data, wait_until

ROOT = Path(__file__).resolve().parent.parent
TASK_NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}


def build_wheel(directory: Path, name: str = "marstek_probe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel: one module that says its version."""
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist_info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist_info}/RECORD", record)
    return wheel


def project_copy(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("install.py", "config.example.json"):
        shutil.copy2(ROOT / name, directory / name)
    return directory


def run_install(project: Path, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EDITOR", "VISUAL")}
    return subprocess.run([sys.executable, str(project / "install.py"), *args], cwd=str(project), env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


@dataclass
class Installed:
    project: Path
    requirements: Path
    first: subprocess.CompletedProcess[str]

    @property
    def python(self) -> Path:
        return install.venv_python(self.project / ".venv", sys.platform)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """One real ``install.py --no-start`` run (creating a venv takes a few seconds)."""
    project = project_copy(tmp_path_factory.mktemp("install") / "Marstek Steuerung")  # a space, as on Windows
    wheels = tmp_path_factory.mktemp("wheels")
    requirements = wheels / "requirements-test.txt"
    requirements.write_text(f"--no-index\n{build_wheel(wheels)}\n", encoding="utf-8")
    first = run_install(project, "--no-start", "--requirements", str(requirements))
    yield Installed(project, requirements, first)


@pytest.mark.slow
def test_no_start_creates_the_venv_installs_the_requirements_and_the_config(installed: Installed) -> None:
    assert installed.first.returncode == 0, installed.first.stdout + installed.first.stderr
    probe = subprocess.run([str(installed.python), "-c", "import marstek_probe; print(marstek_probe.VERSION)"],
                           capture_output=True, text=True, check=False)
    assert probe.stdout.strip() == "1.0", probe.stderr
    config = installed.project / "config.json"
    assert config.read_bytes() == (ROOT / "config.example.json").read_bytes()
    assert "config.json wurde aus config.example.json erstellt" in installed.first.stdout
    assert "Installation fertig" in installed.first.stdout


@pytest.mark.slow
def test_a_second_run_changes_nothing_and_keeps_an_edited_config(installed: Installed) -> None:
    assert installed.first.returncode == 0
    config = installed.project / "config.json"
    edited = '{"energy_meter": {"type": "shelly"}, "edited": "by the user"}\n'
    config.write_text(edited, encoding="utf-8")
    venv_cfg = installed.project / ".venv" / "pyvenv.cfg"
    venv_mtime_ns = venv_cfg.stat().st_mtime_ns
    second = run_install(installed.project, "--no-start", "--requirements", str(installed.requirements))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "venv exists" in second.stdout
    assert "requirements up to date" in second.stdout
    assert "left unchanged" in second.stdout
    assert config.read_text(encoding="utf-8") == edited
    assert venv_cfg.stat().st_mtime_ns == venv_mtime_ns


@pytest.mark.slow
def test_changed_requirements_are_installed_on_the_next_run(installed: Installed, tmp_path: Path) -> None:
    assert installed.first.returncode == 0
    requirements = tmp_path / "requirements-v2.txt"
    requirements.write_text(f"--no-index\n{build_wheel(tmp_path, version='2.0')}\n", encoding="utf-8")
    again = run_install(installed.project, "--no-start", "--requirements", str(requirements))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "installing requirements-v2.txt" in again.stdout
    probe = subprocess.run([str(installed.python), "-c", "import marstek_probe; print(marstek_probe.VERSION)"],
                           capture_output=True, text=True, check=False)
    assert probe.stdout.strip() == "2.0"


@pytest.mark.slow
def test_a_failing_pip_install_says_so_and_exits_1(installed: Installed, tmp_path: Path) -> None:
    requirements = tmp_path / "requirements-missing.txt"
    requirements.write_text("--no-index\nno-such-package-marstek==1.0\n", encoding="utf-8")
    result = run_install(installed.project, "--no-start", "--requirements", str(requirements))
    assert result.returncode == 1
    assert "Installation der Abhängigkeiten ist fehlgeschlagen" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_missing_requirements_file_is_named(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "p")
    result = run_install(project, "--no-start", "--requirements", str(tmp_path / "nope.txt"), timeout_s=60)
    assert result.returncode == 1
    assert "nope.txt fehlt / is missing" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not (project / ".venv").exists()  # checked before anything is created


def test_an_existing_config_is_never_overwritten(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "p")
    (project / "config.json").write_text("{}", encoding="utf-8")
    assert install.create_config(project) is False
    assert (project / "config.json").read_text(encoding="utf-8") == "{}"


def test_the_config_is_created_once_from_the_example(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "p")
    assert install.create_config(project) is True
    assert (project / "config.json").read_bytes() == (ROOT / "config.example.json").read_bytes()
    assert install.create_config(project) is False


def test_a_missing_example_leaves_no_empty_config(tmp_path: Path) -> None:
    with pytest.raises(install.InstallError, match=r"config\.json konnte nicht erstellt werden"):
        install.create_config(tmp_path)
    assert not (tmp_path / "config.json").exists()


# ---------------------------------------------------------------------------- Python version
@pytest.mark.parametrize("version", [(3, 9, 18), (3, 7, 0), (2, 7, 18)])
def test_a_too_old_python_gets_a_clear_message(version: tuple[int, ...]) -> None:
    message = install.check_python(version)
    assert message is not None
    found = ".".join(map(str, version))
    assert f"Python 3.10 oder neuer wird benötigt, gefunden: Python {found}" in message
    assert "python.org" in message and "Add python.exe to PATH" in message
    assert "Python 3.10 or newer is required" in message


@pytest.mark.parametrize("version", [(3, 10, 0), (3, 13, 1), (4, 0, 0)])
def test_a_new_enough_python_passes(version: tuple[int, ...]) -> None:
    assert install.check_python(version) is None


def test_an_old_python_reaches_the_version_check_and_nothing_is_installed(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "p")
    # The interpreter pretends to be 3.8: install.py must stop before creating anything.
    pretend = ("import runpy, sys; sys.version_info = (3, 8, 10, 'final', 0); "
               "sys.argv = ['install.py', '--no-start']; runpy.run_path('install.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", pretend], cwd=str(project), capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1
    assert "gefunden: Python 3.8.10" in result.stdout
    assert not (project / ".venv").exists() and not (project / "config.json").exists()


def test_install_py_parses_on_old_python_3_so_that_it_can_say_it_is_too_old() -> None:
    ast.parse((ROOT / "install.py").read_text(encoding="utf-8"), feature_version=(3, 7))


# ---------------------------------------------------------------------------- autostart
def test_the_task_runs_pythonw_main_py_at_system_start_in_the_project_folder() -> None:
    project = r"C:\Users\Anna\Marstek Steuerung"
    pythonw = project + r"\.venv\Scripts\pythonw.exe"
    xml = install.task_xml(project, pythonw)
    assert xml.startswith('<?xml version="1.0" encoding="UTF-16"?>')
    task = ElementTree.fromstring(xml.encode("utf-16"))
    assert task.find("t:Triggers/t:BootTrigger/t:Enabled", TASK_NS).text == "true"  # type: ignore[union-attr]
    exec_ = task.find("t:Actions/t:Exec", TASK_NS)
    assert exec_ is not None
    assert exec_.findtext("t:Command", namespaces=TASK_NS) == pythonw
    assert exec_.findtext("t:Arguments", namespaces=TASK_NS) == f'"{project}\\main.py"'
    assert exec_.findtext("t:WorkingDirectory", namespaces=TASK_NS) == project
    restart = task.find("t:Settings/t:RestartOnFailure", TASK_NS)
    assert restart is not None
    assert restart.findtext("t:Interval", namespaces=TASK_NS) == "PT1M"
    assert int(restart.findtext("t:Count", namespaces=TASK_NS) or 0) > 100
    settings = task.find("t:Settings", TASK_NS)
    assert settings is not None
    assert settings.findtext("t:ExecutionTimeLimit", namespaces=TASK_NS) == "PT0S"  # no 72 h limit
    assert settings.findtext("t:DisallowStartIfOnBatteries", namespaces=TASK_NS) == "false"  # laptops
    assert settings.findtext("t:StopIfGoingOnBatteries", namespaces=TASK_NS) == "false"
    principal = task.find("t:Principals/t:Principal", TASK_NS)
    assert principal is not None and principal.findtext("t:UserId", namespaces=TASK_NS) == "S-1-5-18"


def test_special_characters_in_the_path_are_escaped() -> None:
    project = r"D:\PV & Akku <neu>"
    xml = install.task_xml(project, project + r"\.venv\Scripts\pythonw.exe")
    task = ElementTree.fromstring(xml.encode("utf-16"))
    assert task.findtext("t:Actions/t:Exec/t:WorkingDirectory", namespaces=TASK_NS) == project


def test_a_path_without_spaces_is_not_quoted() -> None:
    task = ElementTree.fromstring(install.task_xml(r"C:\marstek", r"C:\marstek\.venv\Scripts\pythonw.exe")
                                  .encode("utf-16"))
    assert task.findtext("t:Actions/t:Exec/t:Arguments", namespaces=TASK_NS) == r"C:\marstek\main.py"


def test_schtasks_commands() -> None:
    assert install.schtasks_create_command(r"C:\t\task.xml") == [
        "schtasks", "/Create", "/TN", install.TASK_NAME, "/XML", r"C:\t\task.xml", "/F"]
    assert install.schtasks_run_command() == ["schtasks", "/Run", "/TN", install.TASK_NAME]
    assert install.schtasks_delete_command() == ["schtasks", "/Delete", "/TN", install.TASK_NAME, "/F"]


def test_a_failed_registration_says_why_and_what_to_do() -> None:
    message = install.autostart_failure("--autostart", "FEHLER: Zugriff verweigert\n", "win32")
    assert "FEHLER: Zugriff verweigert" in message
    assert "Administrator" in message and "Als Administrator ausführen" in message


@pytest.mark.skipif(sys.platform == "win32", reason="the non-Windows answer")
@pytest.mark.parametrize("option", ["--autostart", "--remove-autostart"])
def test_autostart_off_windows_explains_and_installs_nothing(tmp_path: Path, option: str) -> None:
    project = project_copy(tmp_path / "p")
    result = run_install(project, option, timeout_s=60)
    assert result.returncode == 1
    assert "nur unter Windows" in result.stdout and "marstek.service" in result.stdout
    assert not (project / ".venv").exists()


# ---------------------------------------------------------------------------- editor and start
def test_the_editor_is_notepad_on_windows_and_editor_elsewhere(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    assert install.editor_command(config, "win32", {"EDITOR": "vim"}) == ["notepad.exe", str(config)]
    assert install.editor_command(config, "linux", {"EDITOR": "nano -w"}) == ["nano", "-w", str(config)]
    assert install.editor_command(config, "linux", {"VISUAL": "code --wait", "EDITOR": "vi"}) == [
        "code", "--wait", str(config)]
    assert install.editor_command(config, "linux", {}) is None


def test_the_start_command_runs_main_py_with_the_venv_python() -> None:
    win = install.venv_python(Path(r"C:\m\.venv"), "win32")
    assert win.name == "python.exe" and win.parent.name == "Scripts"
    assert install.venv_python(Path("/m/.venv"), "win32", windowed=True).name == "pythonw.exe"
    assert install.venv_python(Path("/m/.venv"), "linux") == Path("/m/.venv/bin/python")
    assert install.start_command(Path("py"), demo=True, extra_args=["--port", "8081"]) == [
        "py", "main.py", "--demo", "--port", "8081"]
    assert install.start_command(Path("py"), demo=False, extra_args=[]) == ["py", "main.py"]


def test_the_real_requirements_file_is_the_default() -> None:
    args, extra = install.parse_args(["--no-start", "--port", "8081"])
    assert args.requirements == ROOT / "requirements.txt"
    assert extra == ["--port", "8081"]  # unknown options go to main.py


# ---------------------------------------------------------------------------- install.bat
def test_install_bat_has_crlf_line_ends_and_only_ascii() -> None:
    data = (ROOT / "install.bat").read_bytes()
    assert data.endswith(b"\r\n")
    assert data.count(b"\n") == data.count(b"\r\n") > 5
    assert data.count(b"\r") == data.count(b"\r\n")
    data.decode("ascii")  # cmd.exe reads it in the OEM code page: no umlauts


def test_install_bat_finds_python_and_hands_everything_to_install_py() -> None:
    text = (ROOT / "install.bat").read_text(encoding="ascii")
    lines = [line.strip() for line in text.splitlines()]
    py_launcher = next(i for i, line in enumerate(lines) if line.startswith("py -3 "))
    plain = next(i for i, line in enumerate(lines) if "python -c" in line)
    missing = next(i for i, line in enumerate(lines) if line.startswith("if not defined PY ("))
    run = lines.index("%PY% install.py %*")
    assert py_launcher < plain < missing < run
    assert 'cd /d "%~dp0"' in lines[:run]  # runs in the project folder wherever it was started from
    assert "python.org" in "\n".join(lines[missing:run]) and "exit /b 1" in lines[missing:run]
    assert lines[-1] == "exit /b %RC%"


def test_install_py_messages_survive_a_redirected_windows_console() -> None:
    """Redirected output on Windows is encoded in the ANSI code page (cp1252): no character outside it."""
    (ROOT / "install.py").read_text(encoding="utf-8").encode("cp1252")


# ---------------------------------------------------------------------------- --stop against the running program
def stop_project(directory: Path, config: dict[str, Any]) -> Path:
    """A project copy with the config the running program uses (install.py reads config.json beside it)."""
    project = project_copy(directory)
    (project / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return project


def discharging(u: SimUnit) -> bool:
    return u.force_mode == 2 and u.discharge_power_w > 300


@pytest.fixture
def running_program(tmp_path: Path) -> Iterator[tuple[Simulation, dict[str, Any]]]:
    """main.py regulating two simulated batteries, its dashboard behind a password."""
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)]) as sim:
        sim.set_load_w(3500.0)
        config = sim_config_data(sim, [1, 2], web={"port": free_port(), "password": "geheim-123"},
                                 logging={"file": str(tmp_path / "logs" / "marstek.log")})
        config_path = tmp_path / "running.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        with running_main(config_path) as proc:
            wait_until(lambda: all(discharging(u) for u in sim.units) or proc.poll() is not None, 40,
                       "both batteries discharging")
            assert proc.poll() is None, "main.py ended early"
            yield sim, config


@pytest.mark.slow
def test_stop_stops_every_battery_through_the_dashboard(
    running_program: tuple[Simulation, dict[str, Any]], tmp_path: Path,
) -> None:
    sim, config = running_program
    result = run_install(stop_project(tmp_path / "p", config), "--stop", timeout_s=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # The answer comes after the control thread stopped them: nothing to wait for.
    assert [(u.force_mode, u.charge_power_w, u.discharge_power_w) for u in sim.units] == [(0, 0, 0), (0, 0, 0)]
    assert "every battery stopped" in result.stdout
    if sys.platform != "win32":
        assert "systemctl stop marstek" in result.stdout


@pytest.mark.slow
def test_stop_with_the_wrong_password_says_so_and_touches_nothing(
    running_program: tuple[Simulation, dict[str, Any]], tmp_path: Path,
) -> None:
    sim, config = running_program
    wrong = {**config, "web": {**config["web"], "password": "falsch"}}
    result = run_install(stop_project(tmp_path / "p", wrong), "--stop", timeout_s=120)
    assert result.returncode == 1
    assert "web.password" in result.stdout and "Nichts beendet" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert all(discharging(u) for u in sim.units)


def test_stop_without_a_running_program_says_it_is_not_reachable(tmp_path: Path) -> None:
    config = {"energy_meter": {"type": "shelly"}, "shelly": {"ip": "127.0.0.1"},
              "battery": {"ip": "127.0.0.1", "akku_ids": [1]}, "web": {"host": "0.0.0.0", "port": free_port()}}
    result = run_install(stop_project(tmp_path / "p", config), "--stop", timeout_s=60)
    assert result.returncode == 1
    assert "nicht erreichbar" in result.stdout and "http://127.0.0.1:" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_stop_with_a_broken_config_names_the_key(tmp_path: Path) -> None:
    config = {"energy_meter": {"type": "shelly"}, "shelly": {"ip": "127.0.0.1"},
              "battery": {"ip": "127.0.0.1", "akku_ids": [1]}, "web": {"port": 0}}
    result = run_install(stop_project(tmp_path / "p", config), "--stop", timeout_s=60)
    assert result.returncode == 1
    assert "web.port muss eine Zahl 1..65535 sein" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ("{}", ("0.0.0.0", 8080, None)),
    ('{"web": {"host": "192.168.1.5", "port": 8081, "password": "x"}}', ("192.168.1.5", 8081, "x")),
    ('{"web": {"password": ""}}', ("0.0.0.0", 8080, None)),
])
def test_web_settings_with_the_program_defaults(tmp_path: Path, text: str, expected: tuple[Any, ...]) -> None:
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf-8")
    assert install.web_settings(path) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "kein gültiges JSON"),
    ('{"web": []}', "web muss ein Objekt sein"),
    ('{"web": {"port": "8080"}}', "web.port muss eine Zahl"),
    ('{"web": {"port": true}}', "web.port muss eine Zahl"),
    ('{"web": {"host": 1}}', "web.host muss ein Text sein"),
    ('{"web": {"password": 123}}', "web.password muss ein Text oder null sein"),
])
def test_web_settings_name_the_bad_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(install.InstallError, match=message):
        install.web_settings(path)


def test_dashboard_url_and_the_end_command() -> None:
    assert install.dashboard_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert install.dashboard_url("::", 8080) == "http://127.0.0.1:8080"
    assert install.dashboard_url("192.168.1.5", 80) == "http://192.168.1.5:80"
    assert install.dashboard_url("::1", 8080) == "http://[::1]:8080"
    assert install.schtasks_end_command() == ["schtasks", "/End", "/TN", install.TASK_NAME]


def test_schtasks_errors_on_stderr_reach_the_message() -> None:
    """schtasks writes "ERROR: Access is denied." to stderr: it must end up in what the user reads."""
    denied = install._schtasks([sys.executable, "-c",
                                "import sys; sys.stderr.write('ERROR: Access is denied.\\n'); sys.exit(1)"])
    assert denied.returncode == 1 and "ERROR: Access is denied." in denied.stdout
    missing = install._schtasks(["no-such-schtasks-binary", "/Query"])
    assert missing.returncode == 1 and "no-such-schtasks-binary" in missing.stdout


def test_stop_with_a_hashed_password_and_no_console_says_how(tmp_path: Path) -> None:
    """--set-password stores only a hash: --stop must ask for the password itself, on a console."""
    from web.access import hash_password

    config = {"energy_meter": {"type": "shelly"}, "shelly": {"ip": "127.0.0.1"},
              "battery": {"ip": "127.0.0.1", "akku_ids": [1]},
              "web": {"host": "0.0.0.0", "port": free_port(), "password": hash_password("geheim-123")}}
    project = stop_project(tmp_path / "p", config)
    result = subprocess.run([sys.executable, str(project / "install.py"), "--stop"], cwd=str(project),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "Hash" in result.stdout and "Nichts beendet" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
def test_the_password_step_runs_set_password_on_a_terminal(tmp_path: Path) -> None:
    from werkzeug.security import check_password_hash

    from tests.test_web_access import minimal_config, run_on_terminal

    config = tmp_path / "config.json"
    minimal_config(config)
    script = ("import sys; from pathlib import Path; import install; "
              f"sys.exit(0 if install.password_step(Path(sys.executable), Path({str(ROOT)!r}), Path({str(config)!r})) "
              "else 1)")
    status, output = run_on_terminal([sys.executable, "-c", script], ["geheim-12345", "geheim-12345"])
    assert status == 0, output
    assert check_password_hash(json.loads(config.read_text(encoding="utf-8"))["web"]["password"], "geheim-12345")
    # A config with a password: the step is skipped (no prompt, nothing typed).
    status, output = run_on_terminal([sys.executable, "-c", script], [])
    assert status == 1 and "Passwort" not in output
