@echo off
REM Marstek PV-Akku Steuerung - Installation und Start unter Windows
setlocal
cd /d "%~dp0"

set "PY="
where py >nul 2>nul && set "PY=py -3"
if not defined PY where python >nul 2>nul && set "PY=python"
if not defined PY (
  echo Python wurde nicht gefunden. Bitte Python 3.10 oder neuer von https://www.python.org installieren
  echo und dabei "Add python.exe to PATH" ankreuzen. Danach install.bat erneut starten.
  pause
  exit /b 1
)
%PY% -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)"
if errorlevel 1 (
  echo Python ist zu alt: benoetigt wird Version 3.10 oder neuer.
  %PY% --version
  pause
  exit /b 1
)

if not exist ".venv\Scripts\python.exe" (
  echo Erstelle virtuelle Umgebung .venv ...
  %PY% -m venv .venv
  if errorlevel 1 ( echo Fehler beim Erstellen der virtuellen Umgebung. & pause & exit /b 1 )
)
echo Installiere Abhaengigkeiten ...
".venv\Scripts\python.exe" -m pip install --upgrade pip >nul
".venv\Scripts\python.exe" -m pip install -r requirements.txt
if errorlevel 1 ( echo Fehler bei der Installation der Abhaengigkeiten. & pause & exit /b 1 )

if not exist "config.json" (
  copy /Y "config.example.json" "config.json" >nul
  echo config.json wurde aus config.example.json erstellt.
  echo Bitte jetzt die IP-Adressen von Zaehler und Akku-Gateway eintragen, speichern und Notepad schliessen.
  notepad "config.json"
)

echo Starte Marstek PV-Akku Steuerung - Dashboard: http://localhost:8080  (Beenden mit Strg+C)
".venv\Scripts\python.exe" main.py %*
set "RC=%ERRORLEVEL%"
if "%RC%"=="2" echo Konfigurationsfehler: bitte config.json korrigieren (siehe Meldung oben).
pause
exit /b %RC%
