"""Installer: venv, requirements, config.json, editor, start; on Windows also the autostart task.

    python install.py [--demo] [--no-start] [--autostart | --remove-autostart | --stop] [--requirements FILE]
                      [main.py options]

Steps: check the Python version, create ``.venv`` beside this file, install ``requirements.txt`` into it
(skipped when unchanged since the last run), create ``config.json`` from ``config.example.json`` if it is
missing (never overwritten), open it in an editor (Notepad on Windows, ``$EDITOR`` elsewhere) when it was
just created, then start ``main.py`` in this console (``--demo``: the demo). ``--no-start`` stops before the
editor. ``--autostart`` registers a Windows Task Scheduler task that runs ``.venv\\Scripts\\pythonw.exe
main.py`` at system start (no console window) and restarts it on failure; ``--remove-autostart`` deletes it.
``--stop`` stops every battery through the running program's dashboard (setup mode) and then ends that task:
ending it directly would kill the windowless program before it can stop the batteries.
Before the start (not with ``--demo`` or ``--no-start``) a config.json without ``web.password`` gets the
password step: ``main.py --set-password`` asks for it twice and stores a salted hash; Enter alone skips it.
``install.bat`` is the launcher that finds Python on Windows and runs this file. Unknown options go to main.py.

This file must stay parseable by old Python 3 versions so that they reach the version check.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape

MIN_PYTHON = (3, 10)
PROJECT_DIR = Path(__file__).resolve().parent
TASK_NAME = "Marstek PV-Akku Steuerung"
STAMP_NAME = "marstek-requirements.sha256"  # inside .venv: hash of the requirements last installed
PYTHON_URL = "https://www.python.org/downloads/"
# web.password as main.py --set-password stores it (werkzeug's "<method>$<salt>$<hex>"; see web_access.py).
PASSWORD_HASH_RE = re.compile(r"^(scrypt|pbkdf2):[A-Za-z0-9:_-]*\$[^$\s]+\$[0-9a-f]{32,}$")


class InstallError(Exception):
    """A step failed; the message says why and what to do."""


# ---------------------------------------------------------------------------- pure helpers (tested on Linux)
def check_python(version: tuple[int, ...]) -> str | None:
    """None when ``version`` is new enough, else the message for the user."""
    if tuple(version[:2]) >= MIN_PYTHON:
        return None
    found = ".".join(str(part) for part in version[:3])
    need = ".".join(str(part) for part in MIN_PYTHON)
    return (f"Python {need} oder neuer wird benötigt, gefunden: Python {found} ({sys.executable}).\n"
            f"Bitte ein aktuelles Python von {PYTHON_URL} installieren (unter Windows den Haken bei "
            f"„Add python.exe to PATH“ setzen) und die Installation erneut starten.\n"
            f"Python {need} or newer is required, found {found}: install a current Python and run this again.")


def venv_python(venv_dir: Path, platform: str, windowed: bool = False) -> Path:
    """The venv's interpreter; ``windowed``: pythonw.exe (Windows, no console window)."""
    if platform == "win32":
        return venv_dir / "Scripts" / ("pythonw.exe" if windowed else "python.exe")
    return venv_dir / "bin" / "python"


def editor_command(path: Path, platform: str, environ: dict[str, str]) -> list[str] | None:
    """How to open ``path`` for editing: Notepad on Windows, else $VISUAL/$EDITOR; None when there is none."""
    if platform == "win32":
        return ["notepad.exe", str(path)]
    editor = environ.get("VISUAL") or environ.get("EDITOR")
    if not editor:
        return None
    return [*shlex.split(editor), str(path)]


def start_command(python: Path, demo: bool, extra_args: list[str]) -> list[str]:
    return [str(python), "main.py", *(["--demo"] if demo else []), *extra_args]


def task_xml(project_dir: str, pythonw: str) -> str:
    """The Task Scheduler definition: at system start as SYSTEM, no time limit, restart on failure.

    SYSTEM runs it without anybody logged on; the working directory is the project folder, so the
    program finds config.json and writes logs/ there.
    """
    main_py = project_dir.rstrip("\\") + "\\main.py"
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>Marstek PV-Akku Steuerung (Nulleinspeisung), eingerichtet von install.py --autostart</Description>
  </RegistrationInfo>
  <Triggers>
    <BootTrigger>
      <Enabled>true</Enabled>
    </BootTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>S-1-5-18</UserId>
      <RunLevel>HighestAvailable</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <AllowHardTerminate>true</AllowHardTerminate>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <IdleSettings>
      <StopOnIdleEnd>false</StopOnIdleEnd>
      <RestartOnIdle>false</RestartOnIdle>
    </IdleSettings>
    <AllowStartOnDemand>true</AllowStartOnDemand>
    <Enabled>true</Enabled>
    <Hidden>false</Hidden>
    <RunOnlyIfIdle>false</RunOnlyIfIdle>
    <WakeToRun>false</WakeToRun>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>4</Priority>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>999</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(pythonw)}</Command>
      <Arguments>{escape(_quote_windows(main_py))}</Arguments>
      <WorkingDirectory>{escape(project_dir)}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"""


def _quote_windows(arg: str) -> str:
    return f'"{arg}"' if " " in arg or "\t" in arg else arg


def schtasks_create_command(xml_path: str, task_name: str = TASK_NAME) -> list[str]:
    return ["schtasks", "/Create", "/TN", task_name, "/XML", xml_path, "/F"]


def schtasks_run_command(task_name: str = TASK_NAME) -> list[str]:
    return ["schtasks", "/Run", "/TN", task_name]


def schtasks_delete_command(task_name: str = TASK_NAME) -> list[str]:
    return ["schtasks", "/Delete", "/TN", task_name, "/F"]


def schtasks_end_command(task_name: str = TASK_NAME) -> list[str]:
    return ["schtasks", "/End", "/TN", task_name]


def dashboard_url(host: str, port: int) -> str:
    """Where this machine reaches the dashboard that listens on ``host``."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def autostart_failure(action: str, output: str, platform: str) -> str:
    """Why an autostart change failed and what to do."""
    if platform != "win32":
        return (f"{action}: nur unter Windows (Aufgabenplanung). Unter Linux startet die systemd-Unit "
                "marstek.service das Programm beim Hochfahren (README, „Installation unter Linux“).\n"
                f"{action}: Windows only (Task Scheduler); on Linux use the systemd unit marstek.service.")
    return (f"{action} fehlgeschlagen: {output.strip() or 'schtasks meldet einen Fehler'}\n"
            "Meist fehlen Administratorrechte: Eingabeaufforderung mit Rechtsklick, „Als Administrator "
            "ausführen“ öffnen, mit cd in den Projektordner wechseln und den Befehl erneut ausführen.\n"
            f"{action} failed (usually no administrator rights): run it again from an administrator "
            "command prompt in the project folder.")


def requirements_hash(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- steps
def say(message: str) -> None:
    print(message, flush=True)


def create_venv(venv_dir: Path, platform: str) -> Path:
    """Create the venv unless its interpreter exists; returns that interpreter."""
    python = venv_python(venv_dir, platform)
    if python.exists():
        say(f"Virtuelle Umgebung vorhanden / venv exists: {venv_dir}")
        return python
    say(f"Erstelle virtuelle Umgebung / creating venv: {venv_dir} ...")
    result = subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=False)
    if result.returncode != 0 or not python.exists():
        hint = (" Unter Debian/Raspberry Pi OS zuerst: sudo apt install python3-venv"
                if platform.startswith("linux") else "")
        raise InstallError(f"Die virtuelle Umgebung {venv_dir} konnte nicht erstellt werden.{hint}\n"
                           f"Could not create the venv {venv_dir}.")
    return python


def install_requirements(python: Path, venv_dir: Path, requirements: Path) -> None:
    """pip install -r, skipped when this file's content was installed before."""
    stamp = venv_dir / STAMP_NAME
    digest = requirements_hash(requirements)
    if stamp.is_file() and stamp.read_text(encoding="ascii").strip() == digest:
        say(f"Abhängigkeiten aktuell / requirements up to date ({requirements.name})")
        return
    say(f"Installiere Abhängigkeiten / installing {requirements.name} ...")
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(requirements)], check=False
    )
    if result.returncode != 0:
        raise InstallError("Die Installation der Abhängigkeiten ist fehlgeschlagen (siehe pip-Meldung oben; "
                           "Internetverbindung?).\nInstalling the requirements failed (see pip's output above).")
    stamp.write_text(digest + "\n", encoding="ascii")


def create_config(project_dir: Path) -> bool:
    """Copy config.example.json to config.json if that is missing; True when it was created now."""
    config = project_dir / "config.json"
    example = project_dir / "config.example.json"
    if config.exists():
        say(f"{config.name} vorhanden, bleibt unverändert / exists, left unchanged")
        return False
    try:
        content = example.read_bytes()
        with open(config, "xb") as out:  # "x": never overwrite, even if it appeared just now
            out.write(content)
    except FileExistsError:
        return False
    except OSError as exc:
        raise InstallError(f"{config} konnte nicht erstellt werden / could not be created: {exc}") from None
    say(f"{config.name} wurde aus {example.name} erstellt / created from {example.name}.")
    return True


def open_editor(config: Path) -> None:
    command = editor_command(config, sys.platform, dict(os.environ))
    say("Bitte die IP-Adressen von Zähler und Akku-Gateway eintragen, speichern und den Editor schließen.\n"
        "Enter the IP addresses of the meter and the battery gateway, save, close the editor.")
    if command is None:
        say(f"Kein Editor gefunden ($EDITOR): bitte {config} von Hand bearbeiten und danach starten.")
        return
    try:
        subprocess.run(command, check=False)
    except OSError as exc:
        say(f"Editor {command[0]} nicht startbar ({exc}): bitte {config} von Hand bearbeiten.")


def start(python: Path, project_dir: Path, demo: bool, extra_args: list[str]) -> int:
    """Run main.py in this console until it ends; returns its exit code."""
    say("Starte Marstek PV-Akku Steuerung (Beenden mit Strg+C oder durch Schließen des Fensters: "
        "die Akkus werden dabei gestoppt) / starting, stop with Ctrl+C ...")
    proc = subprocess.Popen(start_command(python, demo, extra_args), cwd=str(project_dir))
    while True:
        try:
            rc = proc.wait()
            break
        except KeyboardInterrupt:
            continue  # main.py got the Ctrl+C too and is stopping the batteries: wait for it
    if rc == 2:
        say("Konfigurationsfehler: bitte config.json korrigieren (siehe Meldung oben), dann erneut starten.\n"
            "Configuration error: fix config.json (see above) and start again.")
    return rc


def password_step(python: Path, project_dir: Path, config: Path | None = None) -> bool:
    """Offer ``main.py --set-password`` when ``config`` (default: config.json) has no ``web.password``; True when
    a password was set now. A step of its own: without a password only this computer may change anything."""
    config = config or project_dir / "config.json"
    try:
        password = web_settings(config)[2]
    except InstallError:
        return False  # main.py names the problem at the start
    if password or not sys.stdin.isatty():
        return False
    say("Passwort für die Weboberfläche festlegen (ohne Passwort sind Änderungen nur an diesem Rechner möglich;\n"
        "Enter ohne Eingabe überspringt). / Set the web UI password (Enter alone skips).")
    result = subprocess.run([str(python), str(project_dir / "main.py"), "--config", str(config), "--set-password"],
                            cwd=str(project_dir), check=False)
    if result.returncode != 0:
        say("Kein Passwort gesetzt. Später: install.bat --set-password (Windows) bzw. "
            ".venv/bin/python main.py --set-password / no password set; later: install.bat --set-password.")
    return result.returncode == 0


def register_autostart(project_dir: Path, venv_dir: Path, run_now: bool) -> None:
    if sys.platform != "win32":
        raise InstallError(autostart_failure("--autostart", "", sys.platform))
    pythonw = venv_python(venv_dir, sys.platform, windowed=True)
    xml = task_xml(str(project_dir), str(pythonw))
    with tempfile.TemporaryDirectory(prefix="marstek-task-") as tmp:
        xml_path = Path(tmp) / "task.xml"
        xml_path.write_text(xml, encoding="utf-16")  # UTF-16 with BOM, as the XML declaration says
        result = _schtasks(schtasks_create_command(str(xml_path)))
    if result.returncode != 0:
        raise InstallError(autostart_failure("--autostart", result.stdout, sys.platform))
    say(f"Autostart eingerichtet: Aufgabe „{TASK_NAME}“ startet beim Hochfahren {pythonw} main.py.\n"
        "Autostart registered (Task Scheduler, at system start, restart on failure).")
    if run_now:
        result = _schtasks(schtasks_run_command())
        if result.returncode == 0:
            say("Die Aufgabe läuft jetzt im Hintergrund; das Log steht in logs/marstek.log.")
        else:
            say(f"Die Aufgabe konnte nicht sofort gestartet werden ({result.stdout.strip()}); "
                "sie startet beim nächsten Hochfahren.")


def remove_autostart() -> None:
    if sys.platform != "win32":
        raise InstallError(autostart_failure("--remove-autostart", "", sys.platform))
    result = _schtasks(schtasks_delete_command())
    if result.returncode != 0:
        raise InstallError(autostart_failure("--remove-autostart", result.stdout, sys.platform))
    say(f"Autostart entfernt: Aufgabe „{TASK_NAME}“ gelöscht / autostart removed.")


def stop_batteries(url: str, password: str | None, timeout_s: float = 70.0) -> str | None:
    """Put the running program into setup mode (control paused, every battery stopped).

    None when every battery is stopped, else the message for the user.
    """
    request = urllib.request.Request(url + "/api/setup/enter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    if password:
        token = base64.b64encode(f"admin:{password}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(request, timeout=timeout_s) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return ("Das Dashboard verlangt ein Passwort, und web.password in config.json passt nicht.\n"
                    "The dashboard refused the password in config.json (web.password).")
        return f"Das Dashboard {url} antwortet mit Fehler {exc.code} / answered {exc.code}: {_error_text(exc)}"
    except (OSError, ValueError) as exc:  # URLError, timeouts and refused connections are OSErrors
        reason = getattr(exc, "reason", exc)
        return (f"Dashboard {url} nicht erreichbar ({reason}): läuft das Programm, mit diesem Port?\n"
                f"Dashboard {url} not reachable: is the program running?")
    failures = answer.get("stop_failures") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or answer.get("setup_mode") is not True or not isinstance(failures, list):
        return f"Unerwartete Antwort des Dashboards / unexpected answer: {answer!r}"
    if failures:
        return ("Nicht jeder Akku hat den Stopp bestätigt / not every battery confirmed the stop: "
                + "; ".join(str(f) for f in failures))
    return None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read().decode("utf-8")).get("error", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def web_settings(config_path: Path) -> tuple[str, int, str | None]:
    """``web.host``, ``web.port`` and ``web.password`` of config.json, with the program's defaults.

    Read with json alone: this runs in the system Python, before or without the venv.
    """
    try:
        data = json.loads(config_path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise InstallError(f"{config_path} nicht lesbar / not readable: {exc}") from None
    except ValueError as exc:
        raise InstallError(f"{config_path}: kein gültiges JSON / not valid JSON: {exc}") from None
    web = data.get("web", {}) if isinstance(data, dict) else None
    if not isinstance(web, dict):
        raise InstallError(f"{config_path}: web muss ein Objekt sein / web: must be an object {{...}}")
    host, port, password = web.get("host", "0.0.0.0"), web.get("port", 8080), web.get("password")
    if not isinstance(host, str):
        raise InstallError(f"{config_path}: web.host muss ein Text sein / must be a string")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InstallError(f"{config_path}: web.port muss eine Zahl 1..65535 sein / must be 1..65535, got {port!r}")
    if password is not None and not isinstance(password, str):
        raise InstallError(f"{config_path}: web.password muss ein Text oder null sein / must be a string or null")
    return host, port, password or None


def stop_running_program(project_dir: Path) -> None:
    """Stop every battery through the dashboard, then (Windows) end the autostart task."""
    host, port, password = web_settings(project_dir / "config.json")
    if password and PASSWORD_HASH_RE.match(password):
        # config.json holds only the salted hash (main.py --set-password): the dashboard wants the password itself.
        if not sys.stdin.isatty():
            raise InstallError("web.password ist als Hash gespeichert: --stop in einer Eingabeaufforderung starten, "
                               "es fragt nach dem Passwort. / web.password is a hash: run --stop in a console.")
        password = getpass.getpass("Passwort der Weboberfläche / web UI password: ")
    problem = stop_batteries(dashboard_url(host, port), password)
    if problem:
        raise InstallError(f"{problem}\nNichts beendet: erst die Ursache beheben, sonst behalten die Akkus ihren "
                           "letzten Sollwert. / Nothing was ended.")
    say("Alle Akkus gestoppt, die Regelung ist angehalten (Setup-Modus) / every battery stopped, control paused.")
    if sys.platform != "win32":
        say("Das Programm läuft im Setup-Modus weiter; beenden z. B. mit: sudo systemctl stop marstek")
        return
    result = _schtasks(schtasks_end_command())
    if result.returncode == 0:
        say(f"Aufgabe „{TASK_NAME}“ beendet / autostart task ended.")
    else:
        say(f"Die Aufgabe wurde nicht beendet ({result.stdout.strip() or 'schtasks-Fehler'}). Läuft das Programm "
            "in einem Fenster, dort mit Strg+C beenden; sonst als Administrator erneut versuchen.")


def _schtasks(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run schtasks; its messages (stdout and stderr, in the console's OEM code page) end up in stdout."""
    encoding = "oem" if sys.platform == "win32" else None
    try:
        result = subprocess.run(command, capture_output=True, text=True, encoding=encoding, errors="replace",
                                check=False)
    except OSError as exc:
        return subprocess.CompletedProcess(command, 1, stdout=f"{command[0]}: {exc}", stderr="")
    return subprocess.CompletedProcess(command, result.returncode, stdout=f"{result.stdout}{result.stderr}", stderr="")


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description="Marstek PV-Akku Steuerung: Installation und Start")
    parser.add_argument("--demo", action="store_true", help="start the demo (simulator) instead of the real program")
    parser.add_argument("--no-start", action="store_true", help="install only: no editor, no start")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--autostart", action="store_true",
                       help="Windows: register a Task Scheduler task (at system start, no window); needs admin")
    group.add_argument("--remove-autostart", action="store_true", help="Windows: delete that task")
    group.add_argument("--stop", action="store_true",
                       help="stop every battery through the running program's dashboard (setup mode), "
                            "then end the autostart task (Windows)")
    parser.add_argument("--requirements", type=Path, default=PROJECT_DIR / "requirements.txt",
                        help="requirements file to install (default: requirements.txt)")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    problem = check_python(sys.version_info[:3])
    if problem:
        say(problem)
        return 1
    args, extra_args = parse_args(argv)
    try:
        if args.remove_autostart:
            remove_autostart()
            return 0
        if args.stop:
            stop_running_program(PROJECT_DIR)
            return 0
        if args.autostart and sys.platform != "win32":
            raise InstallError(autostart_failure("--autostart", "", sys.platform))
        requirements = args.requirements.resolve()
        if not requirements.is_file():
            raise InstallError(f"{requirements} fehlt / is missing.")
        venv_dir = PROJECT_DIR / ".venv"
        python = create_venv(venv_dir, sys.platform)
        install_requirements(python, venv_dir, requirements)
        created = create_config(PROJECT_DIR)
        if created and not args.no_start and not args.demo:
            open_editor(PROJECT_DIR / "config.json")
        if not args.no_start and not args.demo and "--set-password" not in extra_args:
            password_step(python, PROJECT_DIR)
        if args.autostart:
            register_autostart(PROJECT_DIR, venv_dir, run_now=not args.no_start)
            return 0
        if args.no_start:
            say("Installation fertig / installation done. Start: " + " ".join(start_command(python, args.demo, [])))
            return 0
        return start(python, PROJECT_DIR, args.demo, extra_args)
    except InstallError as exc:
        say(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
