"""``python main.py --check``: contact the meter and every battery once and print a diagnosis with likely fixes."""

from __future__ import annotations

from pathlib import Path

from config_loader import Config
from devices import BatteryBus, BatteryError, GridMeter, MeterError

CHECK_TIMEOUT_S = 2.0  # longest answer wait per battery request during the check


def run_check(cfg: Config, config_path: Path, meter: GridMeter, bus: BatteryBus) -> int:
    """Print one line per device and a fix for each problem; 0 when everything answered, else 1."""
    problems = 0
    print(f"Konfiguration {config_path}: OK")
    meter_cfg = cfg.meter
    try:
        reading = meter.read()
        sign = "Bezug" if reading.grid_power_w >= 0 else "Einspeisung"
        print(f"Zähler {cfg.energy_meter_type} {meter_cfg.ip}: OK, {reading.grid_power_w:.0f} W ({sign})")
    except MeterError as exc:
        problems += 1
        print(f"Zähler {cfg.energy_meter_type} {meter_cfg.ip}: FEHLER: {exc}")
        print(f"  -> {meter_hint(str(exc), cfg.energy_meter_type)}")
    finally:
        meter.close()
    try:
        with bus.answer_timeout(min(CHECK_TIMEOUT_S, cfg.battery.timeout_seconds)):
            for battery_id in cfg.battery.akku_ids:
                where = f"Akku ID {battery_id} ({cfg.battery.ip}:{cfg.battery.port})"
                try:
                    model, soc = bus.probe(battery_id)
                    reading = bus.read(battery_id)
                except BatteryError as exc:
                    problems += 1
                    print(f"{where}: FEHLER: {exc}")
                    print(f"  -> {battery_hint(str(exc), cfg)}")
                    continue
                control = "an" if reading.rs485_control else "aus (wird beim Start eingeschaltet)"
                print(f"{where}: OK, {model or '?'}, SoC {soc:.0f} %, {reading.ac_power_w:+.0f} W, "
                      f"RS485-Steuerung {control}")
    finally:
        bus.close()
    print("Alles erreichbar." if problems == 0 else f"{problems} Problem(e) gefunden.")
    return 0 if problems == 0 else 1


def meter_hint(message: str, meter_type: str) -> str:
    text = message.lower()
    if "401" in text or "password" in text or "passwort" in text:
        return "Passwort des Shelly in shelly.password eintragen (Benutzer ist immer 'admin')."
    if "refused" in text or "timed out" in text or "timeout" in text or "unreachable" in text:
        return (f"IP-Adresse in {meter_type}.ip prüfen, 'ping <ip>' versuchen, Gerät eingeschaltet und im selben "
                "Netz? Richtiger Typ in energy_meter.type?")
    if "field" in text or "json" in text or "404" in text:
        return ("Antwort passt nicht zum Zählertyp: energy_meter.type prüfen (shelly/ecotracker) und im Browser "
                "http://<ip>/rpc/EM.GetStatus?id=0 bzw. http://<ip>/v1/json öffnen.")
    return "Zähler neu starten und erneut prüfen; Einzelheiten oben."


def battery_hint(message: str, cfg: Config) -> str:
    text = message.lower()
    if "unreachable" in text or "refused" in text:
        return (f"Gateway {cfg.battery.ip}:{cfg.battery.port} nicht erreichbar: IP/Port prüfen, Gateway "
                "eingeschaltet, Modus 'Modbus TCP' (nicht transparent)?")
    if "exception" in text:
        other = "v3" if cfg.battery.register_set == "v2" else "v2"
        return f"Akku antwortet, kennt aber die Register nicht: battery.register_set auf '{other}' stellen?"
    return ("Keine Antwort unter dieser ID: ID in battery.akku_ids prüfen (Setup-Seite -> Geräte scannen), "
            "RS485-Verkabelung A/B, Gateway 115200 8N1.")
