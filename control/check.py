"""``python main.py --check``: contact the meter and every battery once and print a diagnosis with likely fixes.

Every line is a backend message (``i18n.Msg``) in the configured language (``web.language``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from config_loader import Config, UnitConfig
from control.devices import BatteryBus, BatteryError, GridMeter, MeterError, describe_meter
from control.fleet import Fleet, unit_name
from control.i18n import Msg

CHECK_TIMEOUT_S = 2.0  # longest answer wait per battery request during the check


def run_check(cfg: Config, config_path: Path, meter: GridMeter, fleet: Fleet) -> int:
    """Print one line per device (every gateway, every unit) and a fix for each problem; 0 when all answered."""
    problems = 0
    print(Msg("check_config_ok", path=config_path))
    meter_cfg = cfg.meter
    what = Msg("check_meter", type=cfg.energy_meter_type, ip=meter_cfg.address)
    try:
        reading = meter.read()
        direction = Msg("check_import" if reading.grid_power_w >= 0 else "check_export")
        print(Msg("check_meter_ok", type=cfg.energy_meter_type, ip=meter_cfg.address, power=reading.grid_power_w,
                  direction=direction))
        for line in meter_identification(meter):
            print(line)
    except MeterError as exc:
        problems += 1
        print(Msg("check_failed", what=what, error=str(exc)))
        print(Msg("check_hint", hint=meter_hint(str(exc), cfg.energy_meter_type)))
    finally:
        meter.close()
    try:
        for gateway in fleet.gateways:
            units = [u for u in cfg.battery.units if u.gateway == gateway]
            problems += fleet.call(gateway, functools.partial(_check_gateway, cfg=cfg, units=units))
    finally:
        fleet.close()
    print(Msg("check_all_ok") if problems == 0 else Msg("check_problems", count=problems))
    return 0 if problems == 0 else 1


def _check_gateway(bus: BatteryBus, cfg: Config, units: list[UnitConfig]) -> int:
    """Probe and read every unit of one gateway (on its worker); print a line each; returns the problems."""
    problems = 0
    with bus.answer_timeout(min(CHECK_TIMEOUT_S, cfg.battery.timeout_seconds)):
        for unit in units:
            what = Msg("check_battery", name=unit_name(unit), id=unit.unit_id, gateway=unit.gateway,
                       register_set=unit.register_set)
            try:
                model, soc = bus.probe(unit.unit_id)
                battery = bus.read(unit.unit_id)
            except BatteryError as exc:
                problems += 1
                print(Msg("check_failed", what=what, error=str(exc)))
                print(Msg("check_hint", hint=battery_hint(str(exc), unit)))
                continue
            control = Msg("check_rs485_on" if battery.rs485_control else "check_rs485_off")
            print(Msg("check_battery_ok", what=what, model=model or "?", soc=soc,
                      power=f"{battery.ac_power_w:+.0f}", control=control))
    return problems


def meter_identification(meter: GridMeter) -> list[Msg]:
    """What --check says about the meter after a good read: model, profile, the channels summed, the sign."""
    info = describe_meter(meter)
    lines = [Msg("check_meter_model", model=info["model"])] if info.get("model") else []
    if info.get("kind") == "triphase":
        lines.append(Msg("check_meter_total", profile=info.get("profile") or "triphase"))
    elif info.get("kind") in ("monophase", "gen1"):
        source = Msg("check_channels_configured" if info.get("configured_channels") else "check_channels_default")
        lines.append(Msg("check_meter_channels", channels=", ".join(map(str, info["channels"])),
                         count=info.get("channel_count") or "?", source=source))
    elif info.get("field"):
        lines.append(Msg("check_meter_field", field=info["field"]))
    if info["inverted"]:
        lines.append(Msg("check_meter_inverted"))
    lines.append(Msg("check_meter_sign_hint"))
    return lines


def meter_hint(message: str, meter_type: str) -> Msg:
    """The likely fix for a meter error message."""
    text = message.lower()
    if "401" in text or "password" in text or "passwort" in text:
        return Msg("hint_meter_password")
    if "refused" in text or "timed out" in text or "timeout" in text or "unreachable" in text:
        return Msg("hint_meter_unreachable", type=meter_type)
    if "field" in text or "json" in text or "404" in text:
        return Msg("hint_meter_wrong_type")
    return Msg("hint_meter_other")


def battery_hint(message: str, unit: UnitConfig) -> Msg:
    """The likely fix for a battery error message."""
    text = message.lower()
    if "unreachable" in text or "refused" in text:
        return Msg("hint_gateway_unreachable", gateway=unit.gateway)
    if "exception" in text:
        return Msg("hint_wrong_register_set", other="v3" if unit.register_set == "v2" else "v2")
    return Msg("hint_no_answer")
