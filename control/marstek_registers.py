"""The Marstek Venus / Duravolt Modbus register map: one declarative table per register set.

Facts from marstek-modbus.md (sections 2, 3, 7): addresses are PDU addresses (no 40001 offset),
32-bit values are big-endian with the high word first, strings hold two ASCII characters per
register. Only ``battery_client`` talks Modbus; the config loader and the simulator read the facts
(register-set names, power limit, pacing) from here so that each lives in one place.

Signs: AC power + discharging, - charging (W). SoC in percent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from control.devices import BatteryError

RS485_CONTROL_ON = 0x55AA  # 21930, written to 42000 before forcing power
RS485_CONTROL_OFF = 0x55BB  # 21947, restores the stored work mode
WORK_MODE_AUTO = 1  # 43000: the firmware's own anti-feed mode ("auto" in the app)
FIRMWARE_MAX_POWER_W = 2500  # 42020/42021 > 2500 -> exception 3
FIRMWARE_MIN_POWER_W = 50  # smaller forced powers are ignored (seed clamps 50-2500 W, section 10)


class ForceMode(enum.IntEnum):
    """Register 42010."""

    STOP = 0
    CHARGE = 1
    DISCHARGE = 2


class Kind(enum.Enum):
    """Register data type: (registers per value, signed)."""

    U16 = (1, False)
    S16 = (1, True)
    U32 = (2, False)
    S32 = (2, True)
    STR = (0, False)  # count given per register


@dataclass(frozen=True)
class Register:
    """One Modbus holding register (or a 32-bit pair / string block), decoded by ``decode``."""

    address: int
    kind: Kind
    scale: float = 1.0
    unit: str = ""
    writable: bool = False
    max_value: int = 0xFFFF
    string_regs: int = 0
    note: str = ""

    @property
    def count(self) -> int:
        return self.string_regs if self.kind is Kind.STR else self.kind.value[0]

    def decode(self, regs: list[int]) -> float | str:
        """Registers (big-endian, high word first) -> value in ``unit``."""
        if len(regs) != self.count:
            raise BatteryError(f"register {self.address}: expected {self.count} registers, got {len(regs)}")
        if self.kind is Kind.STR:
            raw = b"".join(r.to_bytes(2, "big") for r in regs)
            return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()
        value = 0
        for r in regs:
            value = (value << 16) | (r & 0xFFFF)
        bits = 16 * len(regs)
        if self.kind.value[1] and value >= 1 << (bits - 1):
            value -= 1 << bits
        return value * self.scale


# Control registers: identical on both families (marstek-modbus.md section 3).
_CONTROL = {
    "unit_id": Register(41100, Kind.U16, writable=True, max_value=247, note="applied at once; write on unit 1"),
    "rs485_control": Register(42000, Kind.U16, writable=True, note="0x55AA on, 0x55BB off; RAM"),
    "force_mode": Register(42010, Kind.U16, writable=True, max_value=2, note="0 stop, 1 charge, 2 discharge; RAM"),
    "charge_power": Register(42020, Kind.U16, unit="W", writable=True, max_value=FIRMWARE_MAX_POWER_W),
    "discharge_power": Register(42021, Kind.U16, unit="W", writable=True, max_value=FIRMWARE_MAX_POWER_W),
    "work_mode": Register(43000, Kind.U16, writable=True, max_value=2,
                          note="0 manual, 1 anti-feed, 2 AI; EEPROM: written only when leaving control"),
    # EEPROM, set in the Marstek app (or by another tool): read only, never a control variable.
    "max_charge_power": Register(44002, Kind.U16, unit="W", note="clamps every forced charge; EEPROM"),
    "max_discharge_power": Register(44003, Kind.U16, unit="W", note="clamps every forced discharge; EEPROM"),
}

REGISTER_SETS: dict[str, dict[str, Register]] = {
    # Venus E v1/v2, Venus C, Duravolt
    "v2": {
        "device_name": Register(31000, Kind.STR, string_regs=10),
        "soc": Register(32104, Kind.U16, unit="%"),
        "firmware": Register(31101, Kind.U16, note="EMS firmware version"),
        "ac_power": Register(32202, Kind.S32, unit="W", note="+ discharging, - charging"),
        **_CONTROL,
    },
    # Venus E v3, A, D (reads > 32 registers or across gaps are not answered)
    "v3": {
        "device_name": Register(31000, Kind.STR, string_regs=10),
        "soc": Register(34002, Kind.U16, scale=0.1, unit="%"),
        "firmware": Register(30200, Kind.U16, note="EMS firmware version"),
        "ac_power": Register(30006, Kind.S16, unit="W", note="+ discharging, - charging"),
        **_CONTROL,
    },
}

DEFAULT_PACING_S = {"v2": 0.05, "v3": 0.15}

# Model power limits by device-name prefix (register 31000): (limit W, limit W from firmware 148 on).
# Venus A 1200 -> 1500 W and Venus D 2200 -> 2500 W with EMS firmware 148 (marstek-modbus.md section 1;
# the 1500 W figure is a user report). Venus E and anything unknown: the firmware limit 2500 W.
MODEL_LIMITS_W: dict[str, tuple[int, int]] = {"VNSA": (1200, 1500), "VNSD": (2200, 2500)}
MODEL_LIMIT_FIRMWARE = 148


def model_limit_w(device_name: str, firmware: int | None) -> int:
    """The model's documented AC power limit, W (2500 when the model is not known)."""
    for prefix, (before_w, since_w) in MODEL_LIMITS_W.items():
        if device_name.upper().startswith(prefix):
            return since_w if firmware is not None and firmware >= MODEL_LIMIT_FIRMWARE else before_w
    return FIRMWARE_MAX_POWER_W
