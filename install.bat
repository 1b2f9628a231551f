@echo off
REM Marstek PV-Akku Steuerung - Installation und Start unter Windows.
REM Findet Python (py -3, sonst python) und startet install.py; alle Optionen gehen an install.py:
REM   install.bat [--demo] [--no-start] [--autostart] [--remove-autostart]
REM Finds Python and runs install.py with all options (the installer's logic lives there).
setlocal
cd /d "%~dp0"

REM Run each candidate once: "where python" also finds the Microsoft Store placeholder, which is no Python.
set "PY="
py -3 -c "import sys" >nul 2>nul && set "PY=py -3"
if not defined PY python -c "import sys" >nul 2>nul && set "PY=python"
if not defined PY (
  echo Python wurde nicht gefunden. Bitte Python 3.10 oder neuer von https://www.python.org/downloads/
  echo installieren und dabei "Add python.exe to PATH" ankreuzen. Danach install.bat erneut starten.
  echo Python not found: install Python 3.10 or newer from python.org, then run install.bat again.
  pause
  exit /b 1
)

%PY% install.py %*
set "RC=%ERRORLEVEL%"
REM Keep the window open on a failure so that the message can be read.
if not "%RC%"=="0" pause
exit /b %RC%
