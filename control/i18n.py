"""Every text the program shows, one dictionary per language (German first, English second).

UI texts (``DE``/``EN``): the templates get the chosen language's dictionary as ``t``; the page scripts
get the same dictionary as a JSON block (``<script type="application/json" id="i18n">``), because the
Content-Security-Policy allows no inline script. Placeholders are written ``{name}`` and are filled in
by the page scripts (``T.fmt`` in static/common.js).

Backend messages (``MESSAGES_DE``/``MESSAGES_EN``: errors, notes, the control law's reasons, log
events, ``--check`` output) are built by code: ``Msg("meter_error", error=...)``. A ``Msg`` is a
``str`` in the backend language (``set_language``, from ``web.language``) so that logs and tests read
it as text, and it keeps its code and parameters so that ``/api/status`` renders every message of one
answer in the language of that answer (``render``). Parameters may themselves be messages.

Each pair of dictionaries must have exactly the same keys (tests/test_web.py, tests/test_i18n.py check this).
The policy (README, development): every text a user reads is a code here; plain English only in ``log.debug``.
The default language, for messages written before the config is read, is German (``DEFAULT_LANGUAGE``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LANGUAGES = ("de", "en")
DEFAULT_LANGUAGE = "de"

DE: dict[str, str] = {
    # -- common
    "app_title": "Marstek PV-Akku Steuerung",
    "nav_dashboard": "Übersicht",
    "nav_setup": "Modbus-ID-Setup",
    "nav_login": "Anmelden",
    "nav_logout": "Abmelden",
    "locale": "de-DE",
    "unit_w": "W",
    "unit_wh": "Wh",
    "unit_kwh": "kWh",
    "unit_pct": "%",
    "none_value": "–",
    "busy": "Bitte warten …",
    "err_prefix": "Fehler",
    "err_network": "Keine Verbindung zum Programm. Läuft es noch? Neuer Versuch in wenigen Sekunden.",
    "err_401": "Dafür ist das Passwort nötig. Bitte zuerst anmelden.",
    "err_403": "Anfrage abgelehnt",
    "err_stale": "Die angezeigten Werte sind veraltet (letzte Aktualisierung {time}).",
    "login_hint": "Nur ansehen: Zum Ändern ist das Passwort nötig.",
    "warnings_title": "Achtung",
    "errors_title": "Aktuelle Probleme",
    # -- control state
    "state_active": "Regelung aktiv",
    "state_setup": "Steuerung deaktiviert (Setup-Modus)",
    "state_stopped": "Steuerung gestoppt",
    "state_error": "Störung – alle Akkus gestoppt",
    "state_unknown": "Status unbekannt",
    "status_tracking": "regelt nach",
    "status_deadband": "Abweichung gering, keine Änderung nötig",
    "status_waiting_for_sample": "wartet auf einen neuen Messwert des Zählers",
    "status_idle": "kein Bedarf",
    "status_soc_limit": "Ladegrenze erreicht, kein Akku darf laden oder entladen",
    "status_no_battery": "kein Akku erreichbar",
    "status_meter_retry": "Messwert fehlt, der letzte Sollwert bleibt",
    "status_meter_failed": "Messgerät ausgefallen, Akkus gestoppt",
    "status_mode_off": "Betriebsart Aus: Regelung pausiert, Akkus gestoppt",
    "status_mode_hold": "Betriebsart Halten: Entladen gesperrt",
    "status_mode_charge": "Betriebsart Laden: lädt mit fester Leistung",
    "opmode_title": "Betriebsart",
    "opmode_auto": "Automatik",
    "opmode_hold": "Halten",
    "opmode_charge": "Laden",
    "opmode_off": "Aus",
    "opmode_hint_auto": "Nulleinspeisung: Akkus laden aus Überschuss und entladen bei Bezug.",
    "opmode_hint_hold": "Nulleinspeisung, aber die Akkus entladen nie (z. B. während das Auto lädt).",
    "opmode_hint_charge": "Akkus laden mit {power} aus Netz und PV bis zum Höchst-Ladestand, dann Halten.",
    "opmode_hint_off": "Regelung pausiert, alle Akkus gestoppt.",
    "opmode_until": "bis {time} (noch {remaining})",
    "opmode_source": "gesetzt von: {source}",
    "opmode_source_api": "API",
    "opmode_source_mqtt": "MQTT",
    "opmode_source_dashboard": "Dashboard",
    "opmode_source_default": "Standard",
    "opmode_source_plan": "Plan nach Strompreis",
    "opmode_duration_label": "Dauer",
    "opmode_duration_none": "unbegrenzt",
    "opmode_minutes": "{minutes} min",
    "opmode_setup_overrides": "Der Setup-Modus hat Vorrang vor der Betriebsart.",
    # -- dashboard
    "grid_title": "Stromnetz",
    "grid_import": "Bezug aus dem Netz",
    "grid_export": "Einspeisung ins Netz",
    "grid_balanced": "Ausgeglichen",
    "grid_no_value": "kein Messwert",
    "grid_avg": "Mittelwert für die Regelung: {value}",
    "meter_label": "Messgerät",
    "meter_ok": "in Ordnung",
    "meter_error": "Störung",
    "meter_error_since": "Störung seit {time}",
    "control_title": "Regelung",
    "setup_banner": "Setup-Modus aktiv: Die Regelung ist aus und alle Akkus sind gestoppt.",
    "setup_banner_link": "Zum Setup",
    "batteries_title": "Akkus",
    "battery_name": "Akku {id}",
    "battery_online": "online",
    "battery_offline": "offline",
    "battery_soc": "Ladestand",
    "battery_power": "Leistung",
    "battery_setpoint": "Sollwert",
    "battery_mode": "Modus",
    "battery_discharging": "entlädt",
    "battery_charging": "lädt",
    "battery_standby": "Standby",
    "mode_charge": "Laden",
    "mode_discharge": "Entladen",
    "mode_idle": "Bereit",
    "mode_stopped": "Gestoppt",
    "no_batteries": "Keine Akkus in battery.akku_ids eingetragen.",
    "chart_title": "Verlauf",
    "chart_time": "Zeit",
    "chart_grid": "Netz",
    "chart_battery": "Akkus",
    "chart_soc": "Ladestand",
    "chart_hint": "Netz: + Bezug / − Einspeisung. Akkus: + Entladen / − Laden. Ladestand: Mittel aller Akkus.",
    "chart_empty": "Noch keine Messwerte.",
    "chart_range_label": "Zeitraum",
    "range_30m": "30 min",
    "range_3h": "3 h",
    "range_24h": "24 h",
    "energy_title": "Energie heute",
    "energy_avoided": "Vom Akku eingespart (Netzbezug vermieden)",
    "energy_unavailable": "Die Energiewerte sind gerade nicht abrufbar (Verlaufsdatenbank belegt).",
    "energy_chart_title": "Energie pro Tag",
    "energy_chart_empty": "Noch keine Tageswerte.",
    "energy_chart_hint": (
        "Links: Netzbezug (nach oben) und Einspeisung (nach unten). Rechts: Entladen (nach oben) und "
        "Laden (nach unten) der Akkus. In kWh, pro Kalendertag."
    ),
    "energy_chart_day": "Tag",
    "unit_eur": "€",
    "energy_unit_label": "Einheit",
    "energy_cost": "Stromkosten",
    "energy_saved": "Ersparnis durch den Akku",
    "energy_money_hint": (
        "Ersparnis: was derselbe Tag ohne Akku gekostet hätte, minus die tatsächlichen Kosten "
        "(Netzbezug × Strompreis − Einspeisung × Vergütung), jeder Abschnitt zum Preis seines Zeitfensters."
    ),
    "energy_unpriced": "Ohne bekannten Preis, daher nicht bewertet: {energy}.",
    "energy_chart_cost": "Stromkosten",
    "energy_chart_revenue": "Einspeisevergütung",
    "energy_chart_saved": "Ersparnis",
    "energy_chart_hint_eur": (
        "Links: Stromkosten (nach oben) und Einspeisevergütung (nach unten). Rechts: Ersparnis durch den Akku "
        "gegenüber demselben Tag ohne Akku (unter null: der Akku hat an dem Tag gekostet). In €, pro Kalendertag."
    ),
    "plan_title": "Plan nach Strompreis",
    "plan_price": "Strompreis",
    "plan_soc": "Ladestand (geplant)",
    "plan_pv": "PV (Prognose)",
    "plan_load": "Verbrauch (Prognose)",
    "plan_mode": "Betriebsart",
    "plan_time": "Zeit",
    "plan_now": "jetzt",
    "unit_ct": "ct/kWh",
    "plan_band_auto": "Automatik",
    "plan_band_hold": "Halten",
    "plan_band_charge": "Laden aus dem Netz",
    "plan_reason_now": "Jetzt",
    "plan_cost": "Erwartete Kosten mit Plan",
    "plan_cost_without": "ohne Plan",
    "plan_created": "Plan berechnet um {time}.",
    "plan_costs_no_load": (
        "Noch ohne Verbrauchsprognose (sie entsteht aus dem Verlauf der letzten Tage): die Kosten enthalten nur "
        "das geplante Laden aus dem Netz, nicht den Verbrauch des Hauses."
    ),
    "plan_empty": "Noch kein Plan (keine Preise für die kommenden Stunden).",
    "plan_hint": (
        "Balken: Strompreis je Zeitabschnitt (unter null: negativer Preis). Linie: geplanter Ladestand (rechte "
        "Achse). Das farbige Band unten zeigt die Betriebsart je Abschnitt; die senkrechte Linie ist jetzt. "
        "In jedem Abschnitt regelt die Nulleinspeisung weiter."
    ),
    "range_7d": "7 Tage",
    "range_30d": "30 Tage",
    "week_chart_title": "Leistung der letzten 7 Tage",
    "week_chart_hint": "Mittelwerte über je 5 Minuten. Netz: + Bezug / − Einspeisung. Akkus: + Entladen / − Laden.",
    "diagnostics_title": "Hilfe bei Problemen",
    "diagnostics_hint": (
        "Die Diagnose-Datei enthält Versionen, Einstellungen (Passwörter durch *** ersetzt), den Zustand, "
        "die letzten Ereignisse und was von Akkus und Zähler gelesen wurde. Bitte einer Fehlermeldung beilegen."
    ),
    "diagnostics_download": "Diagnose herunterladen",
    "diagnostics_login": "Zum Herunterladen der Diagnose bitte zuerst anmelden.",
    "energy_charged": "Geladen",
    "energy_discharged": "Entladen",
    "energy_imported": "Netzbezug",
    "energy_exported": "Einspeisung",
    "energy_share": "Vom Akku gedeckt",
    "energy_share_hint": (
        "Anteil des Stroms, den das Haus zusätzlich zum direkt genutzten Solarstrom brauchte "
        "und den der Akku statt des Netzes geliefert hat."
    ),
    "quality_title": "Regelgüte",
    "quality_rms_error_w": "Mittlere Abweichung vom Ziel (RMS)",
    "quality_export_wh_today": "Einspeisung heute",
    "quality_writes_per_h": "Schreibbefehle pro Stunde",
    "quality_import_wh_today": "Netzbezug heute",
    "quality_battery_export_wh_today": "Einspeisung aus dem Akku heute",
    "quality_band_crossings_per_h": "Pendeln um das Ziel pro Stunde",
    "quality_time_in_band_pct": "Zeit nahe am Ziel (±25 W)",
    "events_title": "Ereignisse",
    "events_empty": "Noch keine Ereignisse.",
    "level_DEBUG": "Debug",
    "level_INFO": "Info",
    "level_WARNING": "Warnung",
    "level_ERROR": "Fehler",
    "level_CRITICAL": "Kritisch",
    "updated_at": "Stand: {time}",
    # -- setup page
    "setup_title": "Modbus-ID-Setup",
    "setup_intro": (
        "Jeder Akku braucht am Modbus eine eigene ID. Neue Akkus haben ab Werk die ID 1. "
        "Hier stellen Sie einen neu angeschlossenen Akku Schritt für Schritt auf eine freie ID um."
    ),
    "back_dashboard": "← Zur Übersicht",
    "step1_title": "1. Setup-Modus starten",
    "step1_text": (
        "Die Regelung wird angehalten und alle Akkus werden gestoppt (0 W), "
        "damit während der Umstellung nichts geladen oder entladen wird."
    ),
    "step1_button": "Setup-Modus starten",
    "step1_done": "Setup-Modus aktiv: Regelung und Akkus sind gestoppt.",
    "step1_stop_failures": "Diese Akkus konnten nicht gestoppt werden:",
    "step2_title": "2. Geräte scannen",
    "step2_text": "Fragt die IDs im gewählten Bereich ab (bis zu 1 Sekunde je ID) und zeigt, welche Akkus antworten.",
    "scan_first": "Von ID",
    "scan_last": "bis ID",
    "scan_button": "Geräte scannen",
    "scan_running": "Scanne die IDs {first} bis {last} …",
    "scan_none": "Kein Akku hat im Bereich {first} bis {last} geantwortet.",
    "scan_found": "{count} Akku(s) gefunden:",
    "scan_range_invalid": "Bitte einen Bereich von höchstens 50 IDs zwischen 1 und 247 angeben.",
    "col_id": "ID",
    "col_model": "Modell",
    "col_soc": "Ladestand",
    "next_free": "Nächste freie ID: {id}",
    "step3_title": "3. ID 1 → neue ID setzen",
    "step3_warning": (
        "Wichtig: Es darf nur EIN neuer Akku mit der ID 1 angeschlossen sein! "
        "Antworten zwei Akkus auf ID 1, geht die Umstellung schief. "
        "Mehrere neue Akkus bitte einzeln anschließen und nacheinander umstellen."
    ),
    "new_id_label": "Neue ID (2 bis 247)",
    "new_id_help": (
        "Modbus erlaubt nur die Adressen 1 bis 247. Die 1 bleibt für neue Akkus frei, "
        "daher 2 bis 247. Nehmen Sie eine ID, die noch kein anderer Akku hat – der Scan schlägt eine vor."
    ),
    "new_id_invalid": "Bitte eine ganze Zahl von 2 bis 247 eingeben.",
    "set_button": "ID 1 → neue ID setzen",
    "set_confirm": (
        "Der Akku mit der ID 1 bekommt jetzt die ID {id}.\n\n"
        "Ist wirklich nur EIN neuer Akku mit der ID 1 angeschlossen?\n\n"
        "OK = ID jetzt ändern, Abbrechen = nichts ändern."
    ),
    "set_running": "Ändere die ID auf {id} und prüfe das Ergebnis …",
    "set_ok": "Erfolgreich: Der Akku antwortet jetzt auf ID {id}.",
    "set_details": "Modell: {model}, Ladestand: {soc}",
    "set_verified": "Geprüft: Der Akku wurde unter der neuen ID gelesen.",
    "set_cancelled": "Abgebrochen, es wurde nichts geändert.",
    "step4_title": "4. In die Konfiguration übernehmen",
    "step4_text": (
        "Damit die Regelung den Akku nutzt, muss seine ID in battery.akku_ids in der config.json stehen. "
        "Die laufende Regelung übernimmt ihn ohne Neustart."
    ),
    "add_id_label": "ID",
    "add_button": "In config.json eintragen",
    "add_saved": "Gespeichert: battery.akku_ids ist jetzt {ids}.",
    "add_not_saved": "Übernommen, aber nicht in eine Datei gespeichert (Demo-Modus): battery.akku_ids ist jetzt {ids}.",
    "add_already": "Die ID {id} steht schon in battery.akku_ids: {ids}.",
    "already_in_config": "Die ID {id} steht bereits in config.json.",
    "add_saved_units": "Gespeichert: battery.units enthält jetzt {ids}.",
    "add_not_saved_units": "Übernommen, aber nicht in eine Datei gespeichert (Demo-Modus): Akkus jetzt {ids}.",
    "add_already_units": "Dieser Akku steht schon in battery.units: {ids}.",
    "gateway_label": "Gateway",
    "gateway_help": "Scan, ID-Änderung und Eintragen gelten für dieses Gateway (Adresse:Port).",
    "gateway_option": "{gateway} ({register_set}: {names})",
    "gateway_group": "Gateway {gateway}",
    "battery_unit_info": "ID {id} · {register_set} · max. {max} W",
    "manual_title": "Oder von Hand:",
    "manual_text": (
        "config.json mit einem Texteditor öffnen, bei \"akku_ids\" die neue ID ergänzen "
        "(zum Beispiel \"akku_ids\": [1, 2, 3]), speichern und das Programm neu starten."
    ),
    "step5_title": "5. Setup beenden",
    "step5_text": "Beendet den Setup-Modus. Die Regelung läuft wieder mit allen Akkus aus battery.akku_ids.",
    "exit_button": "Setup-Modus beenden und Steuerung fortsetzen",
    "exit_done": "Setup-Modus beendet: Die Regelung läuft wieder.",
    "need_setup_mode": "Zuerst Schritt 1: Setup-Modus starten.",
    "leave_warning": "Der Setup-Modus ist noch aktiv, die Regelung bleibt aus. Seite trotzdem verlassen?",
    # -- login page
    "login_title": "Anmelden",
    "login_text": "Diese Steuerung ist mit einem Passwort geschützt (web.password in der config.json).",
    "login_password": "Passwort",
    "login_button": "Anmelden",
    "login_wrong_password": "Das Passwort ist falsch.",
    "login_too_many_attempts": "Zu viele falsche Passwörter. Bitte kurz warten und dann erneut versuchen.",
    # -- first visit: set the password (/onboarding)
    "onboarding_banner": (
        "Noch kein Passwort gesetzt: Änderungen sind nur an dem Rechner möglich, auf dem die Steuerung läuft."
    ),
    "onboarding_banner_link": "Passwort festlegen",
    "onboarding_title": "Passwort festlegen",
    "onboarding_text": (
        "Ohne Passwort darf nur dieser Rechner selbst (localhost) etwas ändern; aus dem Heimnetz kann man nur "
        "ansehen. Mit einem Passwort kann man sich von jedem Gerät im Heimnetz anmelden. Gespeichert wird nur "
        "ein gesalzener Hash in web.password der config.json."
    ),
    "onboarding_password": "Neues Passwort (mindestens 8 Zeichen)",
    "onboarding_password2": "Passwort wiederholen",
    "onboarding_button": "Passwort speichern",
    "onboarding_memory_only": "Demo: Das Passwort gilt nur, bis das Programm endet.",
    "onboarding_remote": (
        "Das erste Passwort lässt sich aus Sicherheitsgründen nur am Rechner selbst festlegen, auf dem die "
        "Steuerung läuft (sonst könnte es jeder im Heimnetz vor Ihnen tun). Dort entweder diese Seite über "
        "http://localhost:{port}/onboarding öffnen oder im Programmordner ausführen:"
    ),
    "onboarding_remote_after": "Danach das Programm neu starten (Dienst: sudo systemctl restart marstek).",
    "onboarding_err_password_mismatch": "Die beiden Passwörter sind verschieden.",
    "onboarding_err_password_too_short": "Das Passwort ist zu kurz (mindestens 8 Zeichen).",
    "onboarding_err_password_too_long": "Das Passwort ist zu lang (höchstens 1024 Zeichen).",
    "onboarding_err_save_failed": "Die config.json konnte nicht geschrieben werden (siehe Log). Nichts geändert.",
    # -- settings page (/settings, web/settings.py)
    "nav_settings": "Einstellungen",
    "settings_title": "Einstellungen",
    "settings_intro": "Strompreis, PV-Prognose und Plan nach Strompreis. Gespeichert wird in die config.json "
                      "(geprüft wie beim Start, die alte Datei bleibt als config.json.bak); wirksam nach einem "
                      "Neustart des Programms.",
    "settings_no_file": "Im Demo-Modus gibt es keine config.json: hier lässt sich nichts speichern.",
    "settings_loading": "Lade Einstellungen …",
    "settings_tariff": "Strompreis (tariff)",
    "settings_tariff_type": "Tarif",
    "settings_tariff_none": "kein Tarif (ohne Preise)",
    "settings_tariff_energy_charts": "Börsenpreis Energy-Charts",
    "settings_tariff_awattar": "Börsenpreis aWATTar",
    "settings_tariff_entsoe": "Börsenpreis ENTSO-E (Token)",
    "settings_tariff_tibber": "Tibber (Token)",
    "settings_tariff_fixed": "Fester Preis / Zeitfenster",
    "settings_url": "Andere Adresse (URL, leer = Standard)",
    "settings_bidding_zone": "Preiszone",
    "settings_token": "Token",
    "settings_token_unchanged": "unverändert (gespeichert)",
    "settings_token_empty": "noch kein Token",
    "settings_fixed_ct": "Preis außerhalb der Zeitfenster (ct/kWh)",
    "settings_windows": "Zeitfenster mit eigenem Preis",
    "settings_window_from": "von",
    "settings_window_to": "bis",
    "settings_window_ct": "ct/kWh",
    "settings_add_window": "+ Zeitfenster",
    "settings_remove": "Entfernen",
    "settings_markup": "Aufschlag (ct/kWh netto)",
    "settings_vat": "MwSt. (%)",
    "settings_feed_in": "Einspeisevergütung (ct/kWh)",
    "settings_forecast": "PV-Prognose (forecast)",
    "settings_forecast_type": "Quelle",
    "settings_forecast_absent": "keine (Abschnitt fehlt)",
    "settings_forecast_forecast_solar": "forecast.solar",
    "settings_forecast_open_meteo": "Open-Meteo",
    "settings_forecast_none_type": "keine Prognose",
    "settings_planes": "PV-Flächen",
    "settings_plane_lat": "Breite",
    "settings_plane_lon": "Länge",
    "settings_plane_declination": "Neigung (°)",
    "settings_plane_azimuth": "Ausrichtung (°, 0 = Süd)",
    "settings_plane_kwp": "kWp",
    "settings_add_plane": "+ PV-Fläche",
    "settings_plan": "Plan nach Strompreis (plan)",
    "settings_plan_enabled": "Plan einschalten",
    "settings_reserve": "Reserve (SoC %)",
    "settings_grid_charge": "Laden aus dem Netz höchstens (W)",
    "settings_wear": "Verschleiß (ct/kWh)",
    "settings_peak": "Bezugsspitze höchstens (W, leer = keine)",
    "settings_save": "Speichern",
    "settings_saving": "Speichere …",
    "settings_saved": "Gespeichert.",
    "settings_error": "Nicht gespeichert:",
    "settings_restart_hint": "Neustart nötig: Dienst mit „sudo systemctl restart marstek“ neu starten (oder das "
                             "Programm beenden und neu starten).",
}

EN: dict[str, str] = {
    # -- common
    "app_title": "Marstek PV Battery Control",
    "nav_dashboard": "Dashboard",
    "nav_setup": "Modbus ID setup",
    "nav_login": "Log in",
    "nav_logout": "Log out",
    "locale": "en-GB",
    "unit_w": "W",
    "unit_wh": "Wh",
    "unit_kwh": "kWh",
    "unit_pct": "%",
    "none_value": "–",
    "busy": "Please wait …",
    "err_prefix": "Error",
    "err_network": "No connection to the program. Is it still running? Retrying in a few seconds.",
    "err_401": "This needs the password. Please log in first.",
    "err_403": "Request refused",
    "err_stale": "The values shown are out of date (last update {time}).",
    "login_hint": "View only: changes need the password.",
    "warnings_title": "Attention",
    "errors_title": "Current problems",
    # -- control state
    "state_active": "Control active",
    "state_setup": "Control disabled (setup mode)",
    "state_stopped": "Control stopped",
    "state_error": "Fault – all batteries stopped",
    "state_unknown": "State unknown",
    "status_tracking": "adjusting",
    "status_deadband": "deviation small, no change needed",
    "status_waiting_for_sample": "waiting for a new meter sample",
    "status_idle": "no demand",
    "status_soc_limit": "charge limit reached, no battery may charge or discharge",
    "status_no_battery": "no battery reachable",
    "status_meter_retry": "meter value missing, keeping the last setpoint",
    "status_meter_failed": "meter failed, batteries stopped",
    "status_mode_off": "Mode off: control paused, batteries stopped",
    "status_mode_hold": "Mode hold: discharging blocked",
    "status_mode_charge": "Mode charge: charging at a fixed power",
    "opmode_title": "Operating mode",
    "opmode_auto": "Automatic",
    "opmode_hold": "Hold",
    "opmode_charge": "Charge",
    "opmode_off": "Off",
    "opmode_hint_auto": "Zero feed-in: the batteries charge from surplus and discharge on import.",
    "opmode_hint_hold": "Zero feed-in, but the batteries never discharge (e.g. while the car charges).",
    "opmode_hint_charge": "The batteries charge at {power} from grid and PV up to the maximum SoC, then hold.",
    "opmode_hint_off": "Control paused, every battery stopped.",
    "opmode_until": "until {time} ({remaining} left)",
    "opmode_source": "set by: {source}",
    "opmode_source_api": "API",
    "opmode_source_mqtt": "MQTT",
    "opmode_source_dashboard": "dashboard",
    "opmode_source_default": "default",
    "opmode_source_plan": "price plan",
    "opmode_duration_label": "Duration",
    "opmode_duration_none": "unlimited",
    "opmode_minutes": "{minutes} min",
    "opmode_setup_overrides": "Setup mode overrides the operating mode.",
    # -- dashboard
    "grid_title": "Grid",
    "grid_import": "Importing from the grid",
    "grid_export": "Exporting to the grid",
    "grid_balanced": "Balanced",
    "grid_no_value": "no reading",
    "grid_avg": "Average used by the control: {value}",
    "meter_label": "Meter",
    "meter_ok": "OK",
    "meter_error": "fault",
    "meter_error_since": "fault since {time}",
    "control_title": "Control",
    "setup_banner": "Setup mode active: the control is off and all batteries are stopped.",
    "setup_banner_link": "Go to setup",
    "batteries_title": "Batteries",
    "battery_name": "Battery {id}",
    "battery_online": "online",
    "battery_offline": "offline",
    "battery_soc": "State of charge",
    "battery_power": "Power",
    "battery_setpoint": "Setpoint",
    "battery_mode": "Mode",
    "battery_discharging": "discharging",
    "battery_charging": "charging",
    "battery_standby": "standby",
    "mode_charge": "Charge",
    "mode_discharge": "Discharge",
    "mode_idle": "Ready",
    "mode_stopped": "Stopped",
    "no_batteries": "No batteries listed in battery.akku_ids.",
    "chart_title": "History",
    "chart_time": "Time",
    "chart_grid": "Grid",
    "chart_battery": "Batteries",
    "chart_soc": "State of charge",
    "chart_hint": (
        "Grid: + import / − export. Batteries: + discharge / − charge. State of charge: mean of all batteries."
    ),
    "chart_empty": "No readings yet.",
    "chart_range_label": "Time range",
    "range_30m": "30 min",
    "range_3h": "3 h",
    "range_24h": "24 h",
    "energy_title": "Energy today",
    "energy_avoided": "Saved by the battery (grid import avoided)",
    "energy_unavailable": "The energy figures cannot be fetched right now (history database busy).",
    "energy_chart_title": "Energy per day",
    "energy_chart_empty": "No daily figures yet.",
    "energy_chart_hint": (
        "Left: grid import (up) and export (down). Right: battery discharge (up) and charge (down). "
        "In kWh, per calendar day."
    ),
    "energy_chart_day": "Day",
    "unit_eur": "€",
    "energy_unit_label": "Unit",
    "energy_cost": "Electricity cost",
    "energy_saved": "Saved by the battery",
    "energy_money_hint": (
        "Saved: what the same day would have cost without the battery, minus the actual cost "
        "(import × price − export × feed-in tariff), each period at the price of its time slot."
    ),
    "energy_unpriced": "No known price, so not valued: {energy}.",
    "energy_chart_cost": "Electricity cost",
    "energy_chart_revenue": "Feed-in revenue",
    "energy_chart_saved": "Saved",
    "energy_chart_hint_eur": (
        "Left: electricity cost (up) and feed-in revenue (down). Right: saved by the battery against the same "
        "day without it (below zero: the battery cost money that day). In €, per calendar day."
    ),
    "plan_title": "Plan by electricity price",
    "plan_price": "Electricity price",
    "plan_soc": "State of charge (planned)",
    "plan_pv": "PV (forecast)",
    "plan_load": "Consumption (forecast)",
    "plan_mode": "Mode",
    "plan_time": "Time",
    "plan_now": "now",
    "unit_ct": "ct/kWh",
    "plan_band_auto": "Automatic",
    "plan_band_hold": "Hold",
    "plan_band_charge": "Charge from the grid",
    "plan_reason_now": "Now",
    "plan_cost": "Expected cost with the plan",
    "plan_cost_without": "without the plan",
    "plan_created": "Plan computed at {time}.",
    "plan_costs_no_load": (
        "No consumption forecast yet (it comes from the history of the last days): the costs hold only the "
        "planned charging from the grid, not the house's consumption."
    ),
    "plan_empty": "No plan yet (no prices for the coming hours).",
    "plan_hint": (
        "Bars: electricity price per time slot (below zero: negative price). Line: planned state of charge "
        "(right axis). The coloured band at the bottom shows the mode per slot; the vertical line is now. "
        "Zero feed-in keeps regulating in every slot."
    ),
    "range_7d": "7 days",
    "range_30d": "30 days",
    "week_chart_title": "Power over the last 7 days",
    "week_chart_hint": "Means over 5 minutes each. Grid: + import / − export. Batteries: + discharge / − charge.",
    "diagnostics_title": "Help with problems",
    "diagnostics_hint": (
        "The diagnostics file holds versions, settings (passwords replaced by ***), the state, the recent "
        "events and what was read from the batteries and the meter. Please attach it to a bug report."
    ),
    "diagnostics_download": "Download diagnostics",
    "diagnostics_login": "Please log in first to download the diagnostics.",
    "energy_charged": "Charged",
    "energy_discharged": "Discharged",
    "energy_imported": "Grid import",
    "energy_exported": "Grid export",
    "energy_share": "Covered by the battery",
    "energy_share_hint": (
        "Share of the power the house needed on top of the solar power used directly "
        "that the battery supplied instead of the grid."
    ),
    "quality_title": "Control quality",
    "quality_rms_error_w": "Mean deviation from target (RMS)",
    "quality_export_wh_today": "Export today",
    "quality_writes_per_h": "Write commands per hour",
    "quality_import_wh_today": "Grid import today",
    "quality_battery_export_wh_today": "Export from the battery today",
    "quality_band_crossings_per_h": "Swings around the target per hour",
    "quality_time_in_band_pct": "Time near the target (±25 W)",
    "events_title": "Events",
    "events_empty": "No events yet.",
    "level_DEBUG": "Debug",
    "level_INFO": "Info",
    "level_WARNING": "Warning",
    "level_ERROR": "Error",
    "level_CRITICAL": "Critical",
    "updated_at": "As of {time}",
    # -- setup page
    "setup_title": "Modbus ID setup",
    "setup_intro": (
        "Every battery needs its own ID on the Modbus. New batteries come with ID 1. "
        "Here you move a newly connected battery to a free ID, step by step."
    ),
    "back_dashboard": "← Back to the dashboard",
    "step1_title": "1. Start setup mode",
    "step1_text": (
        "The control is paused and every battery is stopped (0 W), "
        "so that nothing charges or discharges during the change."
    ),
    "step1_button": "Start setup mode",
    "step1_done": "Setup mode active: control and batteries are stopped.",
    "step1_stop_failures": "These batteries could not be stopped:",
    "step2_title": "2. Scan for devices",
    "step2_text": "Asks every ID in the chosen range (up to 1 second per ID) and lists the batteries that answer.",
    "scan_first": "From ID",
    "scan_last": "to ID",
    "scan_button": "Scan for devices",
    "scan_running": "Scanning IDs {first} to {last} …",
    "scan_none": "No battery answered in the range {first} to {last}.",
    "scan_found": "{count} battery/batteries found:",
    "scan_range_invalid": "Please give a range of at most 50 IDs between 1 and 247.",
    "col_id": "ID",
    "col_model": "Model",
    "col_soc": "State of charge",
    "next_free": "Next free ID: {id}",
    "step3_title": "3. Change ID 1 → new ID",
    "step3_warning": (
        "Important: only ONE new battery with ID 1 may be connected! "
        "If two batteries answer on ID 1, the change goes wrong. "
        "Connect several new batteries one at a time and change them one after the other."
    ),
    "new_id_label": "New ID (2 to 247)",
    "new_id_help": (
        "Modbus only allows addresses 1 to 247. ID 1 stays free for new batteries, "
        "hence 2 to 247. Pick an ID no other battery has – the scan proposes one."
    ),
    "new_id_invalid": "Please enter a whole number from 2 to 247.",
    "set_button": "Change ID 1 → new ID",
    "set_confirm": (
        "The battery with ID 1 now gets ID {id}.\n\n"
        "Is really only ONE new battery with ID 1 connected?\n\n"
        "OK = change the ID now, Cancel = change nothing."
    ),
    "set_running": "Changing the ID to {id} and checking the result …",
    "set_ok": "Done: the battery now answers on ID {id}.",
    "set_details": "Model: {model}, state of charge: {soc}",
    "set_verified": "Verified: the battery was read on its new ID.",
    "set_cancelled": "Cancelled, nothing was changed.",
    "step4_title": "4. Add it to the configuration",
    "step4_text": (
        "For the control to use the battery, its ID must be in battery.akku_ids in config.json. "
        "The running control picks it up without a restart."
    ),
    "add_id_label": "ID",
    "add_button": "Add to config.json",
    "add_saved": "Saved: battery.akku_ids is now {ids}.",
    "add_not_saved": "Taken over but not saved to a file (demo mode): battery.akku_ids is now {ids}.",
    "add_already": "ID {id} is already in battery.akku_ids: {ids}.",
    "already_in_config": "ID {id} is already in config.json.",
    "add_saved_units": "Saved: battery.units now holds {ids}.",
    "add_not_saved_units": "Taken over but not saved to a file (demo mode): batteries now {ids}.",
    "add_already_units": "This battery is already in battery.units: {ids}.",
    "gateway_label": "Gateway",
    "gateway_help": "Scan, ID change and adding to the config apply to this gateway (address:port).",
    "gateway_option": "{gateway} ({register_set}: {names})",
    "gateway_group": "Gateway {gateway}",
    "battery_unit_info": "ID {id} · {register_set} · max. {max} W",
    "manual_title": "Or by hand:",
    "manual_text": (
        "Open config.json in a text editor, add the new ID to \"akku_ids\" "
        "(for example \"akku_ids\": [1, 2, 3]), save it and restart the program."
    ),
    "step5_title": "5. Finish setup",
    "step5_text": "Leaves setup mode. The control runs again with every battery in battery.akku_ids.",
    "exit_button": "Leave setup mode and resume control",
    "exit_done": "Setup mode left: the control is running again.",
    "need_setup_mode": "First step 1: start setup mode.",
    "leave_warning": "Setup mode is still active and the control stays off. Leave the page anyway?",
    # -- login page
    "login_title": "Log in",
    "login_text": "This control is protected by a password (web.password in config.json).",
    "login_password": "Password",
    "login_button": "Log in",
    "login_wrong_password": "Wrong password.",
    "login_too_many_attempts": "Too many wrong passwords. Please wait a moment and try again.",
    # -- first visit: set the password (/onboarding)
    "onboarding_banner": "No password set yet: changes are possible only on the computer the control runs on.",
    "onboarding_banner_link": "Set a password",
    "onboarding_title": "Set a password",
    "onboarding_text": (
        "Without a password only this computer itself (localhost) may change anything; the home network can "
        "only look. With a password you can log in from every device in the home network. Only a salted hash "
        "is stored, in web.password of config.json."
    ),
    "onboarding_password": "New password (at least 8 characters)",
    "onboarding_password2": "Repeat the password",
    "onboarding_button": "Save password",
    "onboarding_memory_only": "Demo: the password lasts until the program ends.",
    "onboarding_remote": (
        "For safety the first password can only be set on the computer the control runs on (otherwise anyone "
        "in the home network could set it before you). There, either open this page as "
        "http://localhost:{port}/onboarding or run in the program folder:"
    ),
    "onboarding_remote_after": "Then restart the program (service: sudo systemctl restart marstek).",
    "onboarding_err_password_mismatch": "The two passwords differ.",
    "onboarding_err_password_too_short": "The password is too short (at least 8 characters).",
    "onboarding_err_password_too_long": "The password is too long (at most 1024 characters).",
    "onboarding_err_save_failed": "config.json could not be written (see the log). Nothing changed.",
    # -- settings page (/settings, web/settings.py)
    "nav_settings": "Settings",
    "settings_title": "Settings",
    "settings_intro": "Electricity price, PV forecast and the plan by price. Saved into config.json (checked as at "
                      "start, the old file is kept as config.json.bak); takes effect after a restart of the program.",
    "settings_no_file": "The demo has no config.json: nothing can be saved here.",
    "settings_loading": "Loading settings …",
    "settings_tariff": "Electricity price (tariff)",
    "settings_tariff_type": "Tariff",
    "settings_tariff_none": "no tariff (no prices)",
    "settings_tariff_energy_charts": "Spot price Energy-Charts",
    "settings_tariff_awattar": "Spot price aWATTar",
    "settings_tariff_entsoe": "Spot price ENTSO-E (token)",
    "settings_tariff_tibber": "Tibber (token)",
    "settings_tariff_fixed": "Fixed price / time windows",
    "settings_url": "Other address (URL, empty = default)",
    "settings_bidding_zone": "Bidding zone",
    "settings_token": "Token",
    "settings_token_unchanged": "unchanged (stored)",
    "settings_token_empty": "no token yet",
    "settings_fixed_ct": "Price outside the windows (ct/kWh)",
    "settings_windows": "Time windows with their own price",
    "settings_window_from": "from",
    "settings_window_to": "to",
    "settings_window_ct": "ct/kWh",
    "settings_add_window": "+ Time window",
    "settings_remove": "Remove",
    "settings_markup": "Markup (ct/kWh net)",
    "settings_vat": "VAT (%)",
    "settings_feed_in": "Feed-in tariff (ct/kWh)",
    "settings_forecast": "PV forecast (forecast)",
    "settings_forecast_type": "Source",
    "settings_forecast_absent": "none (section absent)",
    "settings_forecast_forecast_solar": "forecast.solar",
    "settings_forecast_open_meteo": "Open-Meteo",
    "settings_forecast_none_type": "no forecast",
    "settings_planes": "PV planes",
    "settings_plane_lat": "Latitude",
    "settings_plane_lon": "Longitude",
    "settings_plane_declination": "Tilt (°)",
    "settings_plane_azimuth": "Azimuth (°, 0 = south)",
    "settings_plane_kwp": "kWp",
    "settings_add_plane": "+ PV plane",
    "settings_plan": "Plan by price (plan)",
    "settings_plan_enabled": "Enable the plan",
    "settings_reserve": "Reserve (SoC %)",
    "settings_grid_charge": "Grid charging at most (W)",
    "settings_wear": "Wear (ct/kWh)",
    "settings_peak": "Import peak at most (W, empty = none)",
    "settings_save": "Save",
    "settings_saving": "Saving …",
    "settings_saved": "Saved.",
    "settings_error": "Not saved:",
    "settings_restart_hint": "Restart needed: restart the service with \"sudo systemctl restart marstek\" (or stop "
                             "and start the program).",
}

STRINGS: Mapping[str, Mapping[str, str]] = {"de": DE, "en": EN}


def strings(lang: str) -> Mapping[str, str]:
    """The UI texts for ``lang`` ("de" or "en"); German for anything else."""
    return STRINGS.get(lang, STRINGS[DEFAULT_LANGUAGE])


# ---------------------------------------------------------------------------- backend messages
MESSAGES_DE: dict[str, str] = {
    # -- control loop
    "control_started": "Regelung gestartet: Zähler {meter}, Akkus {ids}, Regelgesetz {algorithm}",
    "battery_label": "{name} ({key})",
    "unit_default_name": "Akku {n}",
    "control_stopped": "Regelung beendet, alle Akkus gestoppt: {stopped}{unreached}",
    "control_cycle_failed": "Regeltakt fehlgeschlagen: Akkus gestoppt, neuer Versuch folgt",
    "internal_error": "Interner Fehler: {error}",
    "meter_error": "Messgerät: {error}",
    "battery_error": "{name}: {error}",
    "meter_read_failed": "Zähler nicht lesbar: {error}",
    "meter_frozen": "Zählerwert seit {seconds} s unverändert bei {value} W",
    "meter_sign_wrong": (
        "Vorzeichen des Zählers verkehrt: der Netzbezug stieg {count}x, als die Akkus mehr entluden. Akkus "
        "gestoppt. Abhilfe: energy_meter.invert auf true setzen (oder im Shelly beim Kanal die Einstellung "
        "„reverse“ umschalten) und das Programm neu starten. Zeigt der Zähler ohne Akku und ohne PV-Überschuss "
        "einen positiven Wert (Bezug), ist er richtig herum: dann nur das Programm neu starten."
    ),
    "meter_ok_again": "Zähler wieder in Ordnung ({value} W)",
    "battery_offline": "{name} nicht erreichbar: {error}",
    "battery_online": "{name} erreichbar (SoC {soc} %)",
    "battery_write_failed": "{name}: Schreiben fehlgeschlagen: {error}",
    "battery_stop_failed": "{name} konnte nicht gestoppt werden ({why}): {error}",
    "device_limit_register": (
        "Akku {id}: Register {register} = {value} W liegt unter battery.max_power_per_battery ({max} W); "
        "die Regelung nutzt {value} W – in der Marstek-App die maximale Lade-/Entladeleistung erhöhen"
    ),
    "battery_no_time_to_stop": "keine Zeit mehr, ihn zu stoppen",
    "runaway_rewrite": (
        "Akku {id}: Sollwert Stopp, liefert aber {power} W (eigene Logik der Firmware): alle Steuerregister "
        "werden neu geschrieben"
    ),
    "runaway_reconnect": "Akku {id}: liefert weiter {power} W trotz Stopp: Verbindung wird hart neu aufgebaut",
    "runaway_over": "Akku {id} folgt seinem Sollwert wieder",
    "gateway_reachable_again": "Modbus-Gateway {gateway} wieder erreichbar",
    "unit_answers_again": "Akku {id} antwortet wieder",
    "rs485_reassert": "Akku {id} hat die RS485-Steuerung von sich aus verlassen: sie wird wieder eingeschaltet",
    "limits_not_readable": (
        "Akku {id}: Leistungsgrenzen 44002/44003 nicht lesbar ({error}): werden nicht mehr abgefragt"
    ),
    "model_not_readable": "Akku {id}: Modell nicht lesbar ({error}): angenommen werden {limit} W",
    "model_limit_below_config": (
        "Akku {id} ist ein {model} (Firmware {firmware}): seine Grenze ist {limit} W, weniger als die "
        "eingestellten {max} W"
    ),
    "note_runaway": "folgt dem Stopp nicht ({power} W, eigene Logik der Firmware): wird neu angesteuert",
    "battery_released": "{name} an seine eigene Regelung zurückgegeben (43000 = 1, RS485-Steuerung aus)",
    "battery_release_failed": "{name} konnte nicht zurückgegeben werden: {error}",
    "setup_entered": "Setup-Modus: Regelung angehalten, alle Akkus gestoppt",
    "setup_left": "Setup-Modus beendet: die Regelung läuft weiter",
    "setup_timed_out": "Setup-Modus nach {minutes} min ohne Setup-Anfrage beendet: die Regelung läuft weiter",
    "setup_stop_retry": "{name} beim Start des Setup-Modus nicht gestoppt: neuer Versuch über eine neue Verbindung",
    "add_not_in_setup": "Nur im Setup-Modus: zuerst den Setup-Modus starten und das Gateway durchsuchen",
    "add_not_scanned": (
        "ID {id} hat beim letzten Suchlauf an {gateway} nicht geantwortet: erst suchen, dann nur gefundene IDs "
        "eintragen"
    ),
    "add_too_many": "An {gateway} sind schon {count} Akkus eingetragen: höchstens {max} je Gateway",
    "command_busy": "Beschäftigt, bitte gleich noch einmal versuchen",
    "command_cancelled": (
        "Die Regelung hat nicht rechtzeitig geantwortet: der Befehl wurde verworfen und wird nicht ausgeführt"
    ),
    "command_still_running": "Der Befehl läuft noch; sein Ergebnis erscheint in den Ereignissen",
    "control_stopped_some": "Regelung beendet. Gestoppt: {stopped}. NICHT gestoppt: {failed}{unreached}",
    "control_unreached": ". Nicht erreichbar, von diesem Lauf nie angesteuert: {names}",
    "nobody": "keiner",
    "battery_stop_retry": "{name} nicht gestoppt: neuer Versuch über eine neue Verbindung",
    "mode_power_out_of_range": "power_w muss {min}..{max} sein, ist {value}",
    "mode_until_out_of_range": "until liegt mehr als {minutes} min in der Zukunft: {until}",
    "unknown_command": "unbekannter Befehl {name}",
    "not_in_setup": "Nicht im Setup-Modus – zuerst den Setup-Modus starten (POST /api/setup/enter)",
    "id_in_use": "ID {id} ist schon belegt",
    "no_battery_on_id1": "Kein Akku antwortet auf ID 1",
    "set_id_write_failed": "Schreiben der neuen ID fehlgeschlagen: {error}",
    "set_id_not_verified": "Der Akku antwortet nach der Änderung nicht auf ID {id}",
    "readdressed": "Akku an {gateway} umadressiert: ID 1 -> {id} ({model})",
    "scan_result": "Scan {gateway} {first}..{last}: gefunden {found}",
    "scan_nothing": "nichts",
    "v3_lan_several_ids": (
        "{host} ist ein v3-LAN-Anschluss (ein Akku antwortet auf jeder ID): nur ID {id} wird angesteuert – "
        "ein Akku je IP, in battery.akku_ids nur eine ID für diese Adresse"
    ),
    "config_not_changed": "config.json nicht geändert: {error}",
    "already_configured": "ID {id} ist schon eingetragen",
    "added_to_config": "Akku {id} an {gateway} in die config.json eingetragen",
    "added_to_config_demo": "Akku {id} an {gateway} eingetragen (Demo: nicht gespeichert)",
    # -- watchdog
    "control_stalled": "Regelung hängt seit {seconds} s: Akkus gestoppt",
    "control_running_again": "Regelung läuft wieder",
    "watchdog_stop_failed": "Wächter konnte {name} nicht stoppen: {error}",
    "stuck_connection_aborted": "Hängende Verbindung zu {gateway} hart getrennt (RST), damit der Nothalt "
                                "eine eigene aufbauen kann",
    # -- process
    "signal_received": "Signal {name} empfangen: Programm wird beendet",
    "control_thread_ended": "Regel-Thread unerwartet beendet: Programm wird beendet",
    "web_thread_ended": "Webserver-Thread unerwartet beendet: wird neu gestartet (die Regelung läuft weiter)",
    "log_file_unwritable": "Logdatei {path} nicht schreibbar ({error}): Log nur auf der Konsole",
    "failed_login": "Fehlgeschlagene Anmeldung von {client}; nächster Versuch erst in {seconds} s",
    "windows_event": "Windows-Ereignis {event}: die Akkus werden gestoppt",
    "windows_shutdown_late": (
        "Beenden nicht innerhalb von {seconds} s nach {event} fertig: Windows beendet das Programm womöglich vorher"
    ),
    "windows_event_failed": "Behandlung von {event} fehlgeschlagen",
    "windows_handler_failed": (
        "SetConsoleCtrlHandler fehlgeschlagen (Fehler {error}): Schließen des Fensters stoppt die Akkus nicht"
    ),
    "gateway_busy": "Gateway {gateway} ist noch mit der letzten Anfrage beschäftigt",
    "gateway_too_slow": "Gateway {gateway} hat nicht rechtzeitig geantwortet",
    "gateway_silent": "Gateway {gateway} hat nicht rechtzeitig geantwortet (über {silent_ms} ms ohne Antwort)",
    "unknown_gateway": "Unbekanntes Gateway {gateway}; eingetragen sind: {gateways}",
    "v3_lan_no_id_change": (
        "{gateway} ist der LAN-Anschluss eines Venus E v3/A/D: er antwortet auf jede ID und braucht keine "
        "andere Modbus-ID. Jeder solche Akku bekommt einen eigenen Eintrag in battery.units mit seiner IP."
    ),
    # -- web
    "web_cannot_listen": "Webserver: kann nicht auf {host}:{port} lauschen: {error}",
    "demo_simulator_failed": "Der Simulator der Demo startet nicht: {error}",
    "dashboard_at": "Dashboard: {url}",
    "warning_no_password": (
        "Kein Passwort (web.password) gesetzt: Die Web-Oberfläche auf {host} erlaubt Änderungen nur von diesem "
        "Rechner selbst. Passwort setzen mit: python main.py --set-password (oder die Seite /onboarding auf "
        "diesem Rechner)."
    ),
    "web_locked": (
        "Ohne Passwort sind Änderungen nur an dem Rechner selbst möglich, auf dem die Steuerung läuft. "
        "Passwort (web.password) dort setzen: python main.py --set-password, oder http://localhost:{port}/onboarding "
        "dort öffnen."
    ),
    "web_login_required": "Dafür ist das Passwort nötig (web.password): anmelden oder HTTP-Basic-Auth senden.",
    "web_host_refused": (
        "Unbekannter Host-Name {host}: erlaubt sind IP-Adressen, localhost, der Name dieses Rechners und die "
        "Namen in web.allowed_hosts (Schutz vor DNS-Rebinding)."
    ),
    "web_cross_origin": (
        "Anfrage von einer fremden Webseite abgelehnt: nur diese Oberfläche selbst oder ein Name aus "
        "web.allowed_hosts darf etwas ändern."
    ),
    "password_set": "Passwort der Web-Oberfläche gesetzt ({source}).",
    "password_not_saved": "Passwort nicht gespeichert: {error}",
    "set_password_prompt": "Neues Passwort für die Web-Oberfläche: ",
    "set_password_repeat": "Passwort wiederholen: ",
    "password_mismatch": "Die beiden Passwörter sind verschieden. Nichts geändert.",
    "password_too_short": "Das Passwort ist zu kurz (mindestens 8 Zeichen). Nichts geändert.",
    "password_too_long": "Das Passwort ist zu lang (höchstens 1024 Zeichen). Nichts geändert.",
    "set_password_done": (
        "Passwort als gesalzener Hash in {path} (web.password) gespeichert. Ein laufendes Programm neu starten, "
        "z. B. sudo systemctl restart marstek."
    ),
    "set_password_no_terminal": "--set-password braucht ein Terminal (die Eingabe wird nicht angezeigt).",
    # -- the control law's reasons and notes
    "reason_meter_failed": "Zähler {count}x ausgefallen: Akkus gestoppt ({error})",
    "reason_meter_retry": "Zähler {count}x ausgefallen: letzter Sollwert bleibt ({error})",
    "reason_no_battery": "kein Akku erreichbar",
    "reason_waiting": "wartet auf einen neuen Messwert",
    "reason_discharge": "entladen {power} W (Bedarf {demand} W)",
    "reason_charge": "laden {power} W (Bedarf {demand} W)",
    "reason_stop": "stoppen (Bedarf {demand} W)",
    "reason_meter_back": "Zähler wieder da: Regelung läuft weiter",
    "reason_in_band": "Netz {grid} W innerhalb des Zielbereichs",
    "reason_below_min_power": "Bedarf {demand} W unter der Mindestleistung",
    "reason_deadband": "Abweichung {change} W innerhalb des Totbands",
    "reason_battery_offline": "Akku nicht erreichbar",
    "reason_notes": "{notes}",
    "reason_seed_idle": "bereit (gemittelt Netz {grid} W)",
    "reason_seed_hold": "halten (gemittelt Netz {grid} W)",
    "reason_seed_track": "Ursprungsregelung: {power} W (gemittelt Netz {grid} W)",
    "note_offline": "nicht erreichbar",
    "note_count": "{count} Akkus: {note}",
    "note_reconnecting": "Verbindung kurz unterbrochen (Netzwerk-Reset der Firmware?): verbindet neu",
    "note_device_limit_discharge": (
        "Akku entlädt höchstens mit {limit} W (statt {max} W): Grenze des Modells oder Register 44003 – "
        "die maximale Entladeleistung in der Marstek-App erhöhen"
    ),
    "note_device_limit_charge": (
        "Akku lädt höchstens mit {limit} W (statt {max} W): Grenze des Modells oder Register 44002 – "
        "die maximale Ladeleistung in der Marstek-App erhöhen"
    ),
    "note_app_limit": (
        "entlädt höchstens ~{limit} W: vermutlich die 800-W-Einstellung der Marstek-App (Venus E) – dort "
        "2500 W wählen; bis dahin wird der Akku mit {limit} W eingeplant"
    ),
    "note_learned_limit_discharge": (
        "entlädt nur ~{limit} W statt des Sollwerts: die anderen Akkus übernehmen den Rest, neuer Versuch in "
        "{minutes} min"
    ),
    "note_learned_limit_charge": (
        "lädt nur ~{limit} W statt des Sollwerts: die anderen Akkus übernehmen den Rest, neuer Versuch in "
        "{minutes} min"
    ),
    "battery_note": "{name}: {note}",
    "reason_sign_probe": "prüft das Vorzeichen des Zählers: Akkuleistung kurz auf {power} W",
    "sign_probe": (
        "Netzleistung bewegte sich mit der Akkuleistung statt gegen sie: Gegenprobe mit {power} W "
        "(ein verkehrt montierter Zähler fällt dabei auf, eine zufällige PV-Änderung nicht)"
    ),
    "note_soc_unknown": "Ladestand unbekannt",
    "note_soc_min": "SoC {soc} % an/unter der Untergrenze {limit} %: kein Entladen",
    "note_soc_max": "SoC {soc} % an/über der Obergrenze {limit} %: kein Laden",
    "note_no_delivery_discharge": (
        "bestätigt den Sollwert, liefert aber keine Leistung: vorerst kein Entladen, neuer Versuch in {minutes} min"
    ),
    "note_no_delivery_charge": (
        "bestätigt den Sollwert, liefert aber keine Leistung: vorerst kein Laden, neuer Versuch in {minutes} min"
    ),
    # -- operating modes
    "reason_mode_off": "Betriebsart Aus: Regelung pausiert, alle Akkus gestoppt",
    "reason_mode_charge": "Betriebsart Laden: lädt mit {power} W",
    "reason_mode_hold_stop": "Betriebsart Halten: Entladen gestoppt",
    "reason_mode_hold": "Betriebsart Halten: Bedarf {demand} W wird nicht aus dem Akku gedeckt",
    "mode_set": "Betriebsart {mode} (von {source}){until}",
    "mode_until": " bis {time}",
    "mode_expired": "Betriebsart {mode} abgelaufen: zurück auf Automatik",
    "mode_file_damaged": "Gespeicherte Betriebsart {path} unlesbar ({error}): Automatik",
    "mode_file_unreadable": "Gespeicherte Betriebsart {path} nicht lesbar ({error}): Automatik",
    "mode_file_write_failed": "Betriebsart nicht gespeichert ({path}): {error}",
    # -- the plan as a mode source (planning/plan_mode.py, planning/plan_thread.py)
    "plan_pending": "Der Plan wird berechnet; bis dahin regelt die Automatik",
    "plan_no_current_price": (
        "Kein Strompreis für die aktuelle Zeit bekannt: Automatik ohne Plan, kein Laden aus dem Netz. "
        "Abhilfe: Abschnitt „tariff“ der Einstellungen prüfen (bei „fixed“: Preis oder Zeitfenster für jede "
        "Uhrzeit) und die Internetverbindung"
    ),
    "plan_stale": (
        "Der Plan ist {minutes} Minuten alt (keine neuen Preise?): Automatik ohne Plan, kein Laden aus dem Netz. "
        "Abhilfe: Internetverbindung und Abschnitt „tariff“ prüfen; die Ereignisliste nennt den Fehler"
    ),
    "plan_failed": (
        "Plan nicht berechnet ({error}): Automatik ohne Plan. Abhilfe: Abschnitte „plan“ und „forecast“ prüfen; "
        "bleibt der Fehler, die Diagnose-Datei mit einer Fehlermeldung einsenden"
    ),
    "plan_no_battery": (
        "Kein Akku mit bekanntem Ladestand erreichbar: kein Plan, Automatik. Abhilfe: Verbindung zu den Akkus "
        "prüfen (siehe Akku-Karten)"
    ),
    "plan_prices_failed": (
        "Strompreise nicht abrufbar: {error}. Automatik ohne Plan, kein Laden aus dem Netz. Abhilfe: "
        "Internetverbindung und Abschnitt „tariff“ der Einstellungen prüfen (Anbieter, Token, Gebotszone)"
    ),
    "plan_mode_changed": "Plan: {mode} – {reason}",
    "plan_mode_charge": "Laden mit {power} W",
    "plan_switched_on": "Plan eingeschaltet (von {source}): die Regelung folgt wieder dem Plan",
    "plan_switched_off": "Plan ausgeschaltet (von {source}): er wird weiter berechnet und angezeigt, die Regelung "
                         "folgt ihm nicht",
    "plan_is_off": "Plan ausgeschaltet: er wird berechnet und angezeigt, die Regelung folgt ihm nicht "
                   "(einschalten auf dem Dashboard, mit POST /api/plan/enabled oder über MQTT)",
    "plan_not_configured": "Kein Plan in diesem Programm: dafür die Abschnitte tariff und plan in der config.json",
    "plan_file_damaged": "Gespeicherter Plan-Schalter {path} unlesbar ({error}): es gilt plan.enabled aus der "
                         "Konfiguration",
    "plan_file_write_failed": "Plan-Schalter nicht gespeichert ({path}): {error}",
    "plan_switch_payload": "erwartet ON oder OFF",
    # -- MQTT
    "mqtt_connected": "MQTT verbunden mit {broker}",
    "mqtt_connect_failed": "MQTT: keine Verbindung zu {broker} ({error}); neuer Versuch läuft",
    "mqtt_disconnected": "MQTT-Verbindung zu {broker} getrennt ({error}); verbinde neu",
    "mqtt_bad_payload": "MQTT {topic}: Nachricht ignoriert: {error}",
    "mqtt_command_failed": "MQTT {topic}: Befehl nicht ausgeführt: {error}",
    "mqtt_callback_failed": "MQTT: Fehler bei der Verarbeitung ({callback}): {error}; Nachricht ignoriert, "
                            "Befehle werden weiter angenommen",
    "mqtt_discovery_removed": "MQTT: {count} veraltete Home-Assistant-Einträge entfernt (nicht mehr konfigurierte "
                              "Akkus oder ältere Programmversion)",
    "mqtt_retained_ignored": "MQTT {topic}: gespeicherte (retained) Nachricht ignoriert; Befehle ohne Retain senden",
    "mqtt_meter_no_value": "noch kein Messwert auf {topic} empfangen",
    "mqtt_meter_no_broker": "keine Verbindung zum MQTT-Broker {broker} (Topic {topic})",
    "mqtt_meter_too_old": "letzter Messwert auf {topic} ist {age} s alt (erlaubt: {limit} s)",
    "mqtt_meter_bad_payload": "Nachricht auf {topic} unbrauchbar: {error}",
    "mqtt_publish_failed": "MQTT: Veröffentlichen fehlgeschlagen; nächster Versuch im nächsten Takt",
    # -- prices and PV forecasts (planning/fetcher.py); {kind} is "prices" or "pv"
    "fetch_failed": "{kind}: {error} (Versuch {attempt} fehlgeschlagen; nächster Versuch {time})",
    "fetch_failed_unexpectedly": "{kind}: Quelle {source} unerwartet fehlgeschlagen",
    "fetch_available_again": "{kind} von {source} wieder verfügbar ({count} Zeitfenster)",
    "fetch_receiver_failed": "{kind}: Weitergabe des Abrufs fehlgeschlagen; der Abruf läuft weiter",
    # -- python main.py --check
    "check_config_ok": "Konfiguration {path}: OK",
    "check_meter_ok": "Zähler {type} {ip}: OK, {power} W ({direction})",
    "check_import": "Bezug",
    "check_export": "Einspeisung",
    "check_failed": "{what}: FEHLER: {error}",
    "check_meter": "Zähler {type} {ip}",
    "check_meter_model": "  Gerät: {model}",
    "check_meter_total": (
        "  Regelt auf total_act_power (Summe aller Phasen, Profil {profile}); shelly.channels gilt hier nicht."
    ),
    "check_meter_channels": (
        "  Regelt auf die Summe der Kanäle {channels} von {count} ({source}); nicht summierte Kanäle zählen nicht "
        "zum Netzbezug."
    ),
    "check_meter_field": "  Regelt auf den Wert {field}.",
    "check_channels_default": "Standard dieses Geräts",
    "check_channels_configured": "aus shelly.channels",
    "check_meter_inverted": "  energy_meter.invert: das Vorzeichen jedes Messwerts wird umgekehrt.",
    "check_meter_sign_hint": (
        "  Vorzeichen prüfen: ohne Akku und ohne PV-Überschuss muss der Wert positiv sein (Bezug); sonst "
        "energy_meter.invert auf true setzen."
    ),
    "check_battery": "{name}, ID {id} ({gateway}, {register_set})",
    "check_battery_ok": "{what}: OK, {model}, SoC {soc} %, {power} W, RS485-Steuerung {control}",
    "check_rs485_on": "an",
    "check_rs485_off": "aus (wird beim Start eingeschaltet)",
    "check_all_ok": "Alles erreichbar.",
    "check_problems": "{count} Problem(e) gefunden.",
    "check_hint": "  -> {hint}",
    # -- start (main.py) and the config file (config_loader.py)
    "config_error": "Konfigurationsfehler: {error}",
    "set_password_not_demo": "--set-password geht nicht zusammen mit --demo (die Demo hat keine Konfigurationsdatei)",
    "price_lookup_failed": "Preisabfrage fehlgeschlagen (Programmfehler); dieser Abschnitt gilt als ohne Preis",
    "port_out_of_range": "--port: muss 1..65535 sein",
    "config_file_missing": "{path}: Datei fehlt. config.example.json nach {name} kopieren und anpassen.",
    "config_not_json": "{path}: keine gültige JSON-Datei (Zeile {line}, Spalte {column}): {error}",
    "hint_meter_password": "Passwort des Shelly in shelly.password eintragen (Benutzer ist immer 'admin').",
    "hint_meter_unreachable": (
        "IP-Adresse in {type}.ip prüfen, 'ping <ip>' versuchen, Gerät eingeschaltet und im selben Netz? "
        "Richtiger Typ in energy_meter.type?"
    ),
    "hint_meter_wrong_type": (
        "Antwort passt nicht zum Zählertyp: energy_meter.type prüfen (shelly/ecotracker/homewizard/http_json) "
        "und im Browser http://<ip>/shelly, http://<ip>/v1/json, http://<ip>/api/v1/data bzw. die http_json.url "
        "öffnen (bei http_json: stimmt power_path?)."
    ),
    "hint_meter_other": "Zähler neu starten und erneut prüfen; Einzelheiten oben.",
    "hint_gateway_unreachable": (
        "Gateway {gateway} nicht erreichbar: IP/Port prüfen, Gateway eingeschaltet, Modus 'Modbus TCP' "
        "(nicht transparent)?"
    ),
    "hint_wrong_register_set": (
        "Akku antwortet, kennt aber die Register nicht: battery.register_set auf '{other}' stellen?"
    ),
    "hint_no_answer": (
        "Keine Antwort unter dieser ID: ID in battery.akku_ids prüfen (Setup-Seite -> Geräte scannen), "
        "RS485-Verkabelung A/B, Gateway 115200 8N1."
    ),
    # -- history database (history.py)
    "history_moved_aside": (
        "Verlaufsdatenbank {path} war beschädigt oder nicht beschreibbar ({error}): beiseitegelegt als "
        "{moved}, eine neue wurde angelegt"
    ),
    "history_in_memory": (
        "Verlaufsdatenbank {path} nicht nutzbar ({error}): Verlauf und Energie werden nur im Speicher "
        "gehalten und gehen beim Neustart verloren. Ordner und Rechte von history.path prüfen."
    ),
    "history_disk_full": "Verlaufsdatenbank {path}: Speicher voll ({error}), neue Messwerte werden nicht gespeichert",
    "history_ok_again": "Verlaufsdatenbank {path} wieder beschreibbar",
    "stray_temp_removed": "Übrig gebliebene temporäre Datei eines früheren Abbruchs entfernt: {path}",
    "history_clock_step": "Die Systemuhr ist um {step} gesprungen; der Verlauf nimmt weiter auf und löscht deshalb "
                          "nichts vorzeitig",
    "history_future_sample": "Verlaufsdatenbank: der neueste gespeicherte Messwert liegt {ahead} in der Zukunft "
                             "(Systemuhr verstellt?); neue Messwerte werden trotzdem gespeichert",
    # -- the plan (planning/planner.py): why a slot has its mode
    "plan_auto": "Nulleinspeisung bei {price} ct",
    "plan_auto_surplus": "Nulleinspeisung: lädt aus PV-Überschuss (Einspeisung {feed_in} ct)",
    "plan_auto_discharge": "Nulleinspeisung: Akku deckt den Bedarf bei {price} ct",
    "plan_auto_peak": "Nulleinspeisung, Spitzenkappung: Akku hält den Bezug bei höchstens {limit} W",
    "plan_hold_for": "hält die Ladung für {window} bei {later} ct (jetzt {price} ct)",
    "plan_hold_peak": "hält die Ladung für die Spitzenkappung {window} (Bezug höchstens {limit} W)",
    "plan_hold_later": "hält die Ladung für später (jetzt {price} ct, erwartet {later} ct)",
    "plan_hold_reserve": "hält die Reserve von {reserve} % (jetzt {price} ct)",
    "plan_charge_for": "lädt {power} kW bei {price} ct für {window} bei {later} ct",
    "plan_charge_negative": "lädt {power} kW bei negativem Preis {price} ct",
    "plan_charge_peak": "lädt {power} kW bei {price} ct für die Spitzenkappung {window}",
    "plan_charge_later": "lädt {power} kW bei {price} ct für später (erwartet {later} ct)",
    "plan_no_price_auto": "Nulleinspeisung (kein Plan: {problem})",
    "plan_problem_no_prices": "keine Preise bekannt",
    "plan_problem_no_current_price": "kein Preis für die aktuelle Zeit {now} (Preise ab {first})",
    "plan_problem_forecast_length": "Prognose passt nicht zu den Preisen ({pv} PV, {load} Last für {slots} Preise)",
    "plan_problem_bad_prices": "Preise ungeordnet oder überlappend ab {start}",
    # -- settings (web/settings.py)
    "settings_no_file": "Im Demo-Modus gibt es keine config.json: hier lässt sich nichts speichern.",
    "settings_saved_restart": "Gespeichert. Wirksam nach einem Neustart (Dienst: sudo systemctl restart marstek).",
    "settings_saved_log": "Einstellungen gespeichert ({sections}) in {path}; wirksam nach einem Neustart",
}

MESSAGES_EN: dict[str, str] = {
    # -- control loop
    "control_started": "Control started: {meter} meter, batteries {ids}, {algorithm} control law",
    "battery_label": "{name} ({key})",
    "unit_default_name": "Battery {n}",
    "control_stopped": "Control ended, every battery stopped: {stopped}{unreached}",
    "control_cycle_failed": "Control cycle failed: batteries stopped, retrying",
    "internal_error": "Internal error: {error}",
    "meter_error": "Meter: {error}",
    "battery_error": "{name}: {error}",
    "meter_read_failed": "Meter read failed: {error}",
    "meter_frozen": "meter value frozen at {value} W for {seconds} s",
    "meter_sign_wrong": (
        "meter sign reversed: grid import rose {count}x when the batteries discharged more. Batteries "
        "stopped. Fix: set energy_meter.invert to true (or switch the channel's \"reverse\" setting in the "
        "Shelly) and restart the program. If the meter shows a positive value (import) with no battery running "
        "and no PV surplus, it is the right way round: then just restart the program."
    ),
    "meter_ok_again": "Meter OK again ({value} W)",
    "battery_offline": "{name} offline: {error}",
    "battery_online": "{name} online (SoC {soc} %)",
    "battery_write_failed": "{name}: write failed: {error}",
    "battery_stop_failed": "Could not stop {name} ({why}): {error}",
    "device_limit_register": (
        "Battery {id}: register {register} = {value} W is below battery.max_power_per_battery ({max} W); "
        "the control uses {value} W - raise the maximum charge/discharge power in the Marstek app"
    ),
    "battery_no_time_to_stop": "no time left to stop it",
    "runaway_rewrite": (
        "Battery {id}: commanded stop but delivers {power} W (the firmware's own logic): writing all control "
        "registers again"
    ),
    "runaway_reconnect": "Battery {id}: still {power} W despite the stop: reconnecting hard",
    "runaway_over": "Battery {id} follows its setpoint again",
    "gateway_reachable_again": "Modbus gateway {gateway} reachable again",
    "unit_answers_again": "Battery {id} answers again",
    "rs485_reassert": "Battery {id} left RS485 control on its own: re-asserting it",
    "limits_not_readable": "Battery {id}: power limits 44002/44003 not readable ({error}): not asked again",
    "model_not_readable": "Battery {id}: model not readable ({error}): assuming {limit} W",
    "model_limit_below_config": (
        "Battery {id} is a {model} (firmware {firmware}): its limit is {limit} W, below the configured {max} W"
    ),
    "note_runaway": "does not follow the stop ({power} W, the firmware's own logic): taking control again",
    "battery_released": "{name} handed back to its own control (43000 = 1, RS485 control off)",
    "battery_release_failed": "{name} could not be handed back: {error}",
    "setup_entered": "Setup mode: control stopped, all batteries stopped",
    "setup_left": "Setup mode left: control resumes",
    "setup_timed_out": "Setup mode ended after {minutes} min without a setup request: control resumes",
    "setup_stop_retry": "{name} not stopped on entering setup mode: retrying over a new connection",
    "add_not_in_setup": "Only in setup mode: start setup mode and scan the gateway first",
    "add_not_scanned": "ID {id} did not answer the last scan on {gateway}: scan first, then add only IDs found",
    "add_too_many": "{gateway} already has {count} batteries configured: at most {max} per gateway",
    "command_busy": "Busy, try again in a moment",
    "command_cancelled": "The control did not answer in time: the command was cancelled and will not run",
    "command_still_running": "The command is still running; its result will appear in the events",
    "control_stopped_some": "Control ended. Stopped: {stopped}. NOT stopped: {failed}{unreached}",
    "control_unreached": ". Not reachable, never driven by this run: {names}",
    "nobody": "none",
    "battery_stop_retry": "{name} not stopped: retrying over a new connection",
    "mode_power_out_of_range": "power_w must be {min}..{max}, is {value}",
    "mode_until_out_of_range": "until is more than {minutes} min ahead: {until}",
    "unknown_command": "unknown command {name}",
    "not_in_setup": "Not in setup mode: start setup mode first (POST /api/setup/enter)",
    "id_in_use": "ID {id} is already in use by another battery",
    "no_battery_on_id1": "No battery answers on ID 1",
    "set_id_write_failed": "Writing the new ID failed: {error}",
    "set_id_not_verified": "No answer on ID {id} after the change",
    "readdressed": "Battery on {gateway} re-addressed: ID 1 -> {id} ({model})",
    "scan_result": "Scan {gateway} {first}..{last}: found {found}",
    "scan_nothing": "nothing",
    "v3_lan_several_ids": (
        "{host} is a v3 LAN port (one battery answering on every ID): only ID {id} is driven - "
        "one battery per IP, only one ID in battery.akku_ids for this address"
    ),
    "config_not_changed": "config.json not changed: {error}",
    "already_configured": "ID {id} is already configured",
    "added_to_config": "Battery {id} on {gateway} added to config.json",
    "added_to_config_demo": "Battery {id} on {gateway} added (demo: not saved)",
    # -- watchdog
    "control_stalled": "Control loop stalled for {seconds} s: batteries stopped",
    "control_running_again": "Control loop running again",
    "watchdog_stop_failed": "Watchdog could not stop {name}: {error}",
    "stuck_connection_aborted": "Aborted the stuck connection to {gateway} (RST) so that the emergency stop can "
                                "open its own",
    # -- process
    "signal_received": "Signal {name} received: stopping",
    "control_thread_ended": "Control thread ended unexpectedly: stopping",
    "web_thread_ended": "Web server thread ended unexpectedly: restarting it (the control keeps running)",
    "log_file_unwritable": "Cannot write the log file {path} ({error}): logging to the console only",
    "failed_login": "Failed login from {client}; its next try is refused for {seconds} s",
    "windows_event": "Windows {event} received: stopping the batteries",
    "windows_shutdown_late": "Shutdown not finished within {seconds} s of {event}: Windows may end the program first",
    "windows_event_failed": "Handling {event} failed",
    "windows_handler_failed": (
        "SetConsoleCtrlHandler failed (error {error}): closing the window will not stop the batteries"
    ),
    "gateway_busy": "Gateway {gateway} is still busy with its last request",
    "gateway_too_slow": "Gateway {gateway} did not answer in time",
    "gateway_silent": "Gateway {gateway} did not answer in time (no answer for over {silent_ms} ms)",
    "unknown_gateway": "Unknown gateway {gateway}; configured: {gateways}",
    "v3_lan_no_id_change": (
        "{gateway} is the LAN port of a Venus E v3/A/D: it answers on every ID and needs no other Modbus ID. "
        "Give each such battery its own entry in battery.units with its IP."
    ),
    # -- web
    "web_cannot_listen": "Web server: cannot listen on {host}:{port}: {error}",
    "demo_simulator_failed": "The demo's simulator does not start: {error}",
    "dashboard_at": "Dashboard: {url}",
    "warning_no_password": (
        "No password (web.password) set: the web UI on {host} accepts changes only from this computer itself. "
        "Set one with: python main.py --set-password (or the page /onboarding on this computer)."
    ),
    "web_locked": (
        "Without a password, changes are possible only on the computer the control runs on. Set the password "
        "(web.password) there: python main.py --set-password, or open http://localhost:{port}/onboarding there."
    ),
    "web_login_required": "This needs the password (web.password): log in or send HTTP Basic auth.",
    "web_host_refused": (
        "Unknown host name {host}: allowed are IP addresses, localhost, this computer's name and the names in "
        "web.allowed_hosts (protection against DNS rebinding)."
    ),
    "web_cross_origin": (
        "Request from a foreign web page refused: only this web UI itself or a name in web.allowed_hosts may "
        "change anything."
    ),
    "password_set": "Web UI password set ({source}).",
    "password_not_saved": "Password not saved: {error}",
    "set_password_prompt": "New password for the web UI: ",
    "set_password_repeat": "Repeat the password: ",
    "password_mismatch": "The two passwords differ. Nothing changed.",
    "password_too_short": "The password is too short (at least 8 characters). Nothing changed.",
    "password_too_long": "The password is too long (at most 1024 characters). Nothing changed.",
    "set_password_done": (
        "Password stored as a salted hash in {path} (web.password). Restart a running program, "
        "e.g. sudo systemctl restart marstek."
    ),
    "set_password_no_terminal": "--set-password needs a terminal (the input is not shown).",
    # -- the control law's reasons and notes
    "reason_meter_failed": "meter failed {count}x: batteries stopped ({error})",
    "reason_meter_retry": "meter failed {count}x: holding ({error})",
    "reason_no_battery": "no battery online",
    "reason_waiting": "waiting for a new meter sample",
    "reason_discharge": "discharge {power} W (demand {demand} W)",
    "reason_charge": "charge {power} W (demand {demand} W)",
    "reason_stop": "stop (demand {demand} W)",
    "reason_meter_back": "meter back: resuming",
    "reason_in_band": "grid {grid} W inside the target band",
    "reason_below_min_power": "demand {demand} W below the minimum power",
    "reason_deadband": "deviation {change} W inside deadband",
    "reason_battery_offline": "battery offline",
    "reason_notes": "{notes}",
    "reason_seed_idle": "idle (avg grid {grid} W)",
    "reason_seed_hold": "hold (avg grid {grid} W)",
    "reason_seed_track": "seed loop: {power} W (avg grid {grid} W)",
    "note_offline": "offline",
    "note_count": "{count} batteries: {note}",
    "note_reconnecting": "connection briefly lost (firmware network reset?): reconnecting",
    "note_device_limit_discharge": (
        "the battery discharges at most {limit} W (instead of {max} W): the model's limit or register 44003 - "
        "raise the maximum discharge power in the Marstek app"
    ),
    "note_device_limit_charge": (
        "the battery charges at most {limit} W (instead of {max} W): the model's limit or register 44002 - "
        "raise the maximum charge power in the Marstek app"
    ),
    "note_app_limit": (
        "discharges at ~{limit} W at most: probably the Marstek app's 800 W setting (Venus E) - choose 2500 W "
        "there; until then the battery is planned with {limit} W"
    ),
    "note_learned_limit_discharge": (
        "discharges only ~{limit} W instead of its setpoint: the other batteries take the rest, next try in "
        "{minutes} min"
    ),
    "note_learned_limit_charge": (
        "charges only ~{limit} W instead of its setpoint: the other batteries take the rest, next try in "
        "{minutes} min"
    ),
    "battery_note": "{name}: {note}",
    "reason_sign_probe": "checking the meter's sign: battery power briefly at {power} W",
    "sign_probe": (
        "grid power moved with the battery's power instead of against it: cross-check at {power} W "
        "(a meter mounted the wrong way round shows up, a chance PV change does not)"
    ),
    "note_soc_unknown": "SoC unknown",
    "note_soc_min": "SoC {soc} % at/below minimum {limit} %: no discharge",
    "note_soc_max": "SoC {soc} % at/above maximum {limit} %: no charge",
    "note_no_delivery_discharge": (
        "acknowledges its setpoint but delivers nothing: no discharge for now, next try in {minutes} min"
    ),
    "note_no_delivery_charge": (
        "acknowledges its setpoint but delivers nothing: no charge for now, next try in {minutes} min"
    ),
    # -- operating modes
    "reason_mode_off": "mode off: control paused, every battery stopped",
    "reason_mode_charge": "mode charge: charging at {power} W",
    "reason_mode_hold_stop": "mode hold: discharge stopped",
    "reason_mode_hold": "mode hold: demand {demand} W is not served from the battery",
    "mode_set": "Operating mode {mode} (from {source}){until}",
    "mode_until": " until {time}",
    "mode_expired": "Operating mode {mode} expired: back to auto",
    "mode_file_damaged": "Stored operating mode {path} is damaged ({error}): auto",
    "mode_file_unreadable": "Stored operating mode {path} cannot be read ({error}): auto",
    "mode_file_write_failed": "Operating mode not saved ({path}): {error}",
    # -- the plan as a mode source (planning/plan_mode.py, planning/plan_thread.py)
    "plan_pending": "The plan is being computed; until then the automatic mode regulates",
    "plan_no_current_price": (
        "No electricity price known for the current time: auto without a plan, no grid charging. Fix: check the "
        "\"tariff\" section of the settings (with \"fixed\": a price or window for every time of day) and the "
        "internet connection"
    ),
    "plan_stale": (
        "The plan is {minutes} minutes old (no new prices?): auto without a plan, no grid charging. Fix: check "
        "the internet connection and the \"tariff\" section; the events list names the error"
    ),
    "plan_failed": (
        "Plan not computed ({error}): auto without a plan. Fix: check the \"plan\" and \"forecast\" sections; "
        "if it persists, send the diagnostics file with a bug report"
    ),
    "plan_no_battery": (
        "No battery with a known state of charge reachable: no plan, auto. Fix: check the connection to the "
        "batteries (see the battery cards)"
    ),
    "plan_prices_failed": (
        "Electricity prices not available: {error}. Auto without a plan, no grid charging. Fix: check the "
        "internet connection and the \"tariff\" section of the settings (provider, token, bidding zone)"
    ),
    "plan_mode_changed": "Plan: {mode} – {reason}",
    "plan_mode_charge": "charge at {power} W",
    "plan_switched_on": "Plan switched on (by {source}): the control follows the plan again",
    "plan_switched_off": "Plan switched off (by {source}): it is still computed and shown, the control does not "
                         "follow it",
    "plan_is_off": "Plan switched off: it is computed and shown, the control does not follow it "
                   "(switch it on in the dashboard, with POST /api/plan/enabled or over MQTT)",
    "plan_not_configured": "No plan in this program: it needs the tariff and plan sections in config.json",
    "plan_file_damaged": "Stored plan switch {path} is damaged ({error}): plan.enabled from the config applies",
    "plan_file_write_failed": "Plan switch not saved ({path}): {error}",
    "plan_switch_payload": "expected ON or OFF",
    # -- MQTT
    "mqtt_connected": "MQTT connected to {broker}",
    "mqtt_connect_failed": "MQTT: cannot connect to {broker} ({error}); retrying",
    "mqtt_disconnected": "MQTT connection to {broker} lost ({error}); reconnecting",
    "mqtt_bad_payload": "MQTT {topic}: message ignored: {error}",
    "mqtt_command_failed": "MQTT {topic}: command not applied: {error}",
    "mqtt_callback_failed": "MQTT: processing failed ({callback}): {error}; message ignored, commands are still "
                            "taken",
    "mqtt_discovery_removed": "MQTT: removed {count} stale Home Assistant entries (batteries no longer configured "
                              "or an older version)",
    "mqtt_retained_ignored": "MQTT {topic}: retained message ignored; send commands without the retain flag",
    "mqtt_meter_no_value": "no reading received on {topic} yet",
    "mqtt_meter_no_broker": "not connected to the MQTT broker {broker} (topic {topic})",
    "mqtt_meter_too_old": "the last reading on {topic} is {age} s old (allowed: {limit} s)",
    "mqtt_meter_bad_payload": "message on {topic} unusable: {error}",
    "mqtt_publish_failed": "MQTT publishing failed; next try in the next round",
    # -- prices and PV forecasts (planning/fetcher.py); {kind} is "prices" or "pv"
    "fetch_failed": "{kind}: {error} (attempt {attempt} failed; next try {time})",
    "fetch_failed_unexpectedly": "{kind} source {source} failed unexpectedly",
    "fetch_available_again": "{kind} from {source} available again ({count} slots)",
    "fetch_receiver_failed": "{kind}: handing on the fetch result failed; fetching goes on",
    # -- python main.py --check
    "check_config_ok": "Configuration {path}: OK",
    "check_meter_ok": "Meter {type} {ip}: OK, {power} W ({direction})",
    "check_import": "import",
    "check_export": "export",
    "check_failed": "{what}: ERROR: {error}",
    "check_meter": "Meter {type} {ip}",
    "check_meter_model": "  Device: {model}",
    "check_meter_total": (
        "  Regulates on total_act_power (sum of all phases, profile {profile}); shelly.channels does not apply."
    ),
    "check_meter_channels": (
        "  Regulates on the sum of channels {channels} of {count} ({source}); channels not summed do not count as "
        "grid power."
    ),
    "check_meter_field": "  Regulates on the value {field}.",
    "check_channels_default": "this device's default",
    "check_channels_configured": "from shelly.channels",
    "check_meter_inverted": "  energy_meter.invert: the sign of every reading is flipped.",
    "check_meter_sign_hint": (
        "  Check the sign: with no battery running and no PV surplus the value must be positive (import); "
        "otherwise set energy_meter.invert to true."
    ),
    "check_battery": "{name}, ID {id} ({gateway}, {register_set})",
    "check_battery_ok": "{what}: OK, {model}, SoC {soc} %, {power} W, RS485 control {control}",
    "check_rs485_on": "on",
    "check_rs485_off": "off (switched on at start)",
    "check_all_ok": "Everything reachable.",
    "check_problems": "{count} problem(s) found.",
    "check_hint": "  -> {hint}",
    # -- start (main.py) and the config file (config_loader.py)
    "config_error": "Configuration error: {error}",
    "set_password_not_demo": "--set-password does not work with --demo (the demo has no config file)",
    "price_lookup_failed": "price lookup failed (a program error); this stretch counts as unpriced",
    "port_out_of_range": "--port: must be 1..65535",
    "config_file_missing": "{path}: file not found. Copy config.example.json to {name} and adjust it.",
    "config_not_json": "{path}: not a valid JSON file (line {line}, column {column}): {error}",
    "hint_meter_password": "Enter the Shelly's password in shelly.password (the user is always 'admin').",
    "hint_meter_unreachable": (
        "Check the IP address in {type}.ip, try 'ping <ip>': is the device on and in the same network? "
        "Right type in energy_meter.type?"
    ),
    "hint_meter_wrong_type": (
        "The answer does not fit the meter type: check energy_meter.type (shelly/ecotracker/homewizard/http_json) "
        "and open http://<ip>/shelly, http://<ip>/v1/json, http://<ip>/api/v1/data or the http_json.url in a "
        "browser (http_json: is power_path right?)."
    ),
    "hint_meter_other": "Restart the meter and check again; details above.",
    "hint_gateway_unreachable": (
        "Gateway {gateway} unreachable: check IP/port, is the gateway on, in 'Modbus TCP' mode (not transparent)?"
    ),
    "hint_wrong_register_set": (
        "The battery answers but does not know the registers: set battery.register_set to '{other}'?"
    ),
    "hint_no_answer": (
        "No answer on this ID: check the ID in battery.akku_ids (setup page -> scan), RS485 wiring A/B, "
        "gateway 115200 8N1."
    ),
    # -- history database (history.py)
    "history_moved_aside": (
        "History database {path} was damaged or not writable ({error}): moved aside as {moved}, "
        "a new one was started"
    ),
    "history_in_memory": (
        "History database {path} not usable ({error}): history and energy are kept in memory only and are "
        "lost on a restart. Check the folder and permissions of history.path."
    ),
    "history_disk_full": "History database {path}: disk full ({error}), new samples are not stored",
    "history_ok_again": "History database {path} writable again",
    "stray_temp_removed": "Removed a temporary file left by an earlier crash: {path}",
    "history_clock_step": "The system clock stepped by {step}; the history keeps recording and deletes nothing "
                          "early because of it",
    "history_future_sample": "History database: the newest stored sample is {ahead} in the future (clock "
                             "wrong?); new samples are stored anyway",
    # -- the plan (planning/planner.py): why a slot has its mode
    "plan_auto": "zero feed-in at {price} ct",
    "plan_auto_surplus": "zero feed-in: charging from PV surplus (feed-in {feed_in} ct)",
    "plan_auto_discharge": "zero feed-in: battery covers the demand at {price} ct",
    "plan_auto_peak": "zero feed-in, peak shaving: battery keeps the import at or below {limit} W",
    "plan_hold_for": "holds the charge for {window} at {later} ct (now {price} ct)",
    "plan_hold_peak": "holds the charge for peak shaving {window} (import at most {limit} W)",
    "plan_hold_later": "holds the charge for later (now {price} ct, expected {later} ct)",
    "plan_hold_reserve": "holds the reserve of {reserve} % (now {price} ct)",
    "plan_charge_for": "charges {power} kW at {price} ct for {window} at {later} ct",
    "plan_charge_negative": "charges {power} kW at a negative price of {price} ct",
    "plan_charge_peak": "charges {power} kW at {price} ct for peak shaving {window}",
    "plan_charge_later": "charges {power} kW at {price} ct for later (expected {later} ct)",
    "plan_no_price_auto": "zero feed-in (no plan: {problem})",
    "plan_problem_no_prices": "no prices known",
    "plan_problem_no_current_price": "no price for the current time {now} (prices from {first})",
    "plan_problem_forecast_length": "forecast does not fit the prices ({pv} PV, {load} load for {slots} prices)",
    "plan_problem_bad_prices": "prices out of order or overlapping from {start}",
    # -- settings (web/settings.py)
    "settings_no_file": "The demo has no config.json: nothing can be saved here.",
    "settings_saved_restart": "Saved. Takes effect after a restart (service: sudo systemctl restart marstek).",
    "settings_saved_log": "Settings saved ({sections}) to {path}; they take effect after a restart",
}

MESSAGES: Mapping[str, Mapping[str, str]] = {"de": MESSAGES_DE, "en": MESSAGES_EN}
_backend = {"language": DEFAULT_LANGUAGE}  # set once at start by main.py from web.language


def set_language(lang: str) -> None:
    """The language backend messages are written in (logs, ``--check``); "auto" and unknown mean German."""
    _backend["language"] = lang if lang in LANGUAGES else DEFAULT_LANGUAGE


def language() -> str:
    """The backend language (see ``set_language``)."""
    return _backend["language"]


class Msg(str):
    """A backend message: text in the backend language that can be rendered again in another language."""

    code: str
    params: Mapping[str, Any]

    def __new__(cls, code: str, **params: Any) -> Msg:
        if code not in MESSAGES_EN:
            raise KeyError(f"unknown message code {code!r}")
        obj = super().__new__(cls, _format(code, params, language()))
        obj.code, obj.params = code, params
        return obj

    def __reduce__(self) -> tuple[Any, ...]:  # copy/pickle: rebuild from code and parameters
        return (_rebuild, (self.code, dict(self.params)))

    def text(self, lang: str) -> str:
        """This message in ``lang``."""
        return _format(self.code, self.params, lang)


@dataclass(frozen=True)
class Num:
    """A number shown with ``digits`` decimals and the language's decimal mark ("1,8" / "1.8")."""

    value: float
    digits: int = 1

    def text(self, lang: str) -> str:
        shown = f"{self.value:.{self.digits}f}"
        return shown.replace(".", ",") if lang == "de" else shown


def _rebuild(code: str, params: dict[str, Any]) -> Msg:
    return Msg(code, **params)


def _format(code: str, params: Mapping[str, Any], lang: str) -> str:
    table = MESSAGES.get(lang, MESSAGES[DEFAULT_LANGUAGE])
    shown = {k: _param(v, lang) for k, v in params.items()}
    return table[code].format(**shown)


def _param(value: Any, lang: str) -> str:
    if isinstance(value, (Msg, Num)):
        return value.text(lang)
    if isinstance(value, (list, tuple)):
        return "; ".join(_param(v, lang) for v in value)
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def render(value: Any, lang: str) -> Any:
    """``value`` with every ``Msg`` inside (also in lists, tuples and dicts) rendered in ``lang``."""
    if isinstance(value, Msg):
        return value.text(lang)
    if isinstance(value, dict):
        return {k: render(v, lang) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render(v, lang) for v in value]
    return value
