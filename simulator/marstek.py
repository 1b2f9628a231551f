"""Simulated Marstek Venus units and the Modbus TCP gateway they sit behind.

``SimUnit`` is one battery: the control and telemetry registers of marstek-modbus.md §3 (register sets
v2 and v3) on top of a ``sim_physics.BatteryPlant``. ``SimGateway`` is one Modbus TCP server on loopback
(one host:port, like one RS485-to-Ethernet gateway) with the units behind it, in its own thread with its
own asyncio loop. Firmware behaviour that belongs to the wire (silent / slow units, a v3 read of more
than 32 registers that gets no answer, closing the connection after an exception response, dropping all
connections) lives here; a ``simulator.Simulation`` owns one or more gateways and steps the plants.

Sign conventions: battery power + discharging / − charging, W; SoC 0..100 %.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from simulator.physics import EFFICIENCY_CHARGE, EFFICIENCY_DISCHARGE, BatteryPlant, PlantParams, efficiency

# ---------------------------------------------------------------------------------------------------------
# Simulated Marstek unit (registers on top of a BatteryPlant)
# ---------------------------------------------------------------------------------------------------------

REG_DEVICE_NAME = 31000  # 10 registers ASCII
REG_UNIT_ID = 41100
REG_RESTART = 41000
REG_BACKUP = 41200
REG_RS485 = 42000
REG_FORCE_MODE = 42010
REG_TARGET_SOC = 42011
REG_CHARGE_POWER = 42020
REG_DISCHARGE_POWER = 42021
REG_WORK_MODE = 43000
REG_MAX_CHARGE = 44002
REG_MAX_DISCHARGE = 44003
RS485_ON = 0x55AA  # 21930
RS485_OFF = 0x55BB  # 21947
FORCE_STOP, FORCE_CHARGE, FORCE_DISCHARGE = 0, 1, 2
MAX_SETPOINT_W = 2500
V3_MAX_READ_COUNT = 32  # larger reads get no answer at all on v3
OWN_PERIOD_S = 3.0  # the firmware's own anti-feed loop: one correction every few seconds (slower than ours)
OWN_GAIN = 0.8  # share of the grid power it corrects per step
OWN_DEADBAND_W = 20.0
LAN_SLOT_FREE_S = 1.0  # a v3 LAN port takes a new client only this long after the last one left (MVEM)

EXC_ILLEGAL_FUNCTION = 1
EXC_ILLEGAL_ADDRESS = 2
EXC_ILLEGAL_VALUE = 3

_WRITE_LOG_MAX = 1000

# Writable registers: address -> (min, max). Anything else mapped is read-only (exception 2 on write).
_WRITABLE_COMMON: dict[int, tuple[int, int]] = {
    REG_RESTART: (RS485_ON, RS485_ON),
    REG_UNIT_ID: (1, 255),
    REG_BACKUP: (0, 1),
    REG_RS485: (RS485_ON, RS485_OFF),  # exactly one of the two codes, checked separately
    REG_FORCE_MODE: (0, 2),
    REG_TARGET_SOC: (11, 100),
    REG_CHARGE_POWER: (0, MAX_SETPOINT_W),
    REG_DISCHARGE_POWER: (0, MAX_SETPOINT_W),
    REG_WORK_MODE: (0, 2),
    REG_MAX_CHARGE: (0, MAX_SETPOINT_W),
    REG_MAX_DISCHARGE: (0, MAX_SETPOINT_W),
}
_WRITABLE_V2_ONLY: dict[int, tuple[int, int]] = {44000: (800, 1000), 44001: (120, 300)}
# Writable registers that just hold their value: address -> SimUnit attribute.
_PLAIN_REGISTERS: dict[int, str] = {
    REG_FORCE_MODE: "force_mode",
    REG_CHARGE_POWER: "charge_power_w",
    REG_DISCHARGE_POWER: "discharge_power_w",
    REG_TARGET_SOC: "target_soc_pct",
    REG_MAX_CHARGE: "max_charge_power_w",
    REG_MAX_DISCHARGE: "max_discharge_power_w",
    REG_BACKUP: "backup_disabled",
    44000: "cutoff_charge",
    44001: "cutoff_discharge",
}


def _model_limit_w(model: str, firmware: int) -> int:
    """What the model delivers at most (marstek-modbus.md section 1): Venus A 1200 W (1500 W from firmware
    148 on), Venus D 2200 W (2500 W from 148 on), everything else 2500 W."""
    limits = {"VNSA": (1200, 1500), "VNSD": (2200, 2500)}
    for prefix, (before_w, since_w) in limits.items():
        if model.upper().startswith(prefix):
            return since_w if firmware >= 148 else before_w
    return MAX_SETPOINT_W


def _u16(v: float) -> int:
    return max(0, min(0xFFFF, round(v)))


def _s16(v: float) -> int:
    return max(-0x8000, min(0x7FFF, round(v))) & 0xFFFF


def _s32(v: float) -> tuple[int, int]:
    x = max(-0x80000000, min(0x7FFFFFFF, round(v))) & 0xFFFFFFFF
    return x >> 16, x & 0xFFFF


def _u32(v: float) -> tuple[int, int]:
    x = max(0, min(0xFFFFFFFF, round(v)))
    return x >> 16, x & 0xFFFF


def _ascii_regs(text: str, count: int = 10) -> list[int]:
    raw = text.encode("ascii")[: count * 2].ljust(count * 2, b"\0")
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, count * 2, 2)]


@dataclass
class UnitSpec:
    """One simulated battery on the Modbus bus."""

    unit_id: int
    register_set: str = "v2"  # "v2" (Venus E v1/v2, C, Duravolt) | "v3" (Venus E v3, A, D)
    soc_pct: float = 50.0
    max_power_w: float = 2500.0
    capacity_wh: float = 5120.0
    # Firmware quirks (marstek-modbus.md §4): the defaults are what the real firmware does.
    model: str | None = None  # device name in 31000; None: "VNSE-2" (v2) / "VNSE3-0" (v3). "VNSA-0": Venus A
    firmware: int | None = None  # EMS firmware (31101 v2, default 153 / 30200 v3, default 150); A/D: more from 148
    max_charge_power_w: int = MAX_SETPOINT_W  # EEPROM 44002, as set in the app (a reset or evcc may lower it)
    max_discharge_power_w: int = MAX_SETPOINT_W  # EEPROM 44003
    # 44002/44003 read 0 whatever limit is in force (a Venus D v150 reads 0 there while charging at 1.3 kW,
    # marstek-modbus.md section 5; seen as a field report on v2 too): the registers say nothing.
    limits_read_zero: bool = False
    min_setpoint_w: float = 50.0  # smaller forced powers are ignored by the firmware (seed clamps >= 50 W)
    drop_clears_setpoints: bool = True  # leaving RS485 control resets 42010/42020/42021 to 0
    rs485_watchdog_s: float | None = None  # leave RS485 control unless 42000 is re-written this often (uncertain)
    # The Venus E's output setting in the Marstek app (800 W until 2500 W is chosen there): discharge capped
    # here although 44003 reads more. None: 2500 W chosen, as the README's setup asks first.
    app_limit_w: float | None = None
    # Paired with a meter of its own in the app (a CT002, a Shelly): without RS485 control it then runs its
    # stored work mode (43000: 1 anti-feed, 2 AI) against that meter. False: nothing to regulate on, it rests.
    own_meter: bool = False
    overshoot: float | None = None  # PlantParams.overshoot for this unit (None: the simulation's)
    standby_w: float | None = None  # PlantParams.standby_w for this unit (None: the simulation's)


class SimUnit:
    """A simulated Marstek unit: a ``BatteryPlant`` plus the control registers of marstek-modbus.md §3.

    Tests read ``soc_pct``, ``power_w`` (actual AC, + discharge), ``rs485_control``, ``force_mode``,
    ``charge_power_w``, ``discharge_power_w``, ``unit_id`` and ``write_log`` (bounded list of
    ``(register, value)`` writes received, newest last), and may set ``silent`` (no answer at all),
    ``slow_s`` (every answer is sent this many seconds late; the request itself is applied at once),
    ``fail_with_exception`` (a Modbus exception code, e.g. 4 "device failure": every request is answered
    with it and nothing is applied; None = normal), ``delivers_nothing`` (ACKs but delivers 0 W), call
    ``set_soc(pct)`` or ``drop_rs485()``.
    Mutate only through ``Simulation`` / ``SimGateway`` methods or while the simulation is idle; attribute
    writes of plain flags are atomic and fine from tests.

    Setpoints are obeyed only while RS485 control is on (force 1 → −42020 W, 2 → +42021 W, 0 → 0 W,
    clamped by 44002/44003 and, discharging, by the app's output setting ``app_limit_w``). Without RS485
    control the unit runs its stored work mode (43000): manual (0) rests (schedules are not simulated);
    anti-feed (1) and AI (2) regulate the grid to zero with the unit's own meter (``own_meter``, fed by
    ``tick``) or rest when it has none. Resting, it draws ``standby_w`` from the house.
    """

    def __init__(
        self, spec: UnitSpec, params: PlantParams, now_s: float = 0.0, lock: threading.RLock | None = None
    ) -> None:
        self._lock = lock if lock is not None else threading.RLock()
        if spec.register_set not in ("v2", "v3"):
            raise ValueError(f"register_set must be 'v2' or 'v3', not {spec.register_set!r}")
        self.unit_id = int(spec.unit_id)
        self.register_set = spec.register_set
        plant_params = PlantParams(**{**params.__dict__})
        for name in ("overshoot", "standby_w"):
            if getattr(spec, name) is not None:
                setattr(plant_params, name, float(getattr(spec, name)))
        self.model = spec.model or ("VNSE3-0" if spec.register_set == "v3" else "VNSE-2")
        self.firmware = int(spec.firmware if spec.firmware is not None else 150 if spec.register_set == "v3" else 153)
        plant_params.max_power_w = min(float(spec.max_power_w), float(_model_limit_w(self.model, self.firmware)))
        plant_params.capacity_wh = float(spec.capacity_wh)
        self.plant = BatteryPlant(plant_params, soc_pct=spec.soc_pct, now_s=now_s)
        self.silent = False
        self.slow_s = 0.0
        self.fail_with_exception: int | None = None
        self.rs485_control = False
        self.force_mode = FORCE_STOP
        self.charge_power_w = 0
        self.discharge_power_w = 0
        self.target_soc_pct = 100
        self.work_mode = 1
        self.backup_disabled = 0
        self.max_charge_power_w = int(spec.max_charge_power_w)
        self.max_discharge_power_w = int(spec.max_discharge_power_w)
        self.limits_read_zero = bool(spec.limits_read_zero)
        self.cutoff_charge = 1000  # v2 44000, ×0.1 %
        self.cutoff_discharge = 120  # v2 44001, ×0.1 %
        self.write_log: list[tuple[int, int]] = []
        self.writes_received = 0  # every write ever received (``write_log`` keeps only the newest)
        self.runaway_w: float | None = None  # own logic at this power despite the registers (slip_out)
        self.deaf = False  # writes ACKed but ignored until the next connection
        self.drop_clears_setpoints = bool(spec.drop_clears_setpoints)
        self.min_setpoint_w = float(spec.min_setpoint_w)
        self.rs485_watchdog_s = spec.rs485_watchdog_s
        self._rs485_written_s = now_s
        self.app_limit_w = spec.app_limit_w
        self.own_meter = bool(spec.own_meter)
        self._own_w = 0.0  # what the firmware's own loop asks for
        self._own_at_s = now_s
        self._commanded_w = 0.0
        self._regs = self._build_register_map()

    # -- state seen by tests --------------------------------------------------------------------------

    @property
    def soc_pct(self) -> float:
        """State of charge, %."""
        return self.plant.soc_pct

    @property
    def power_w(self) -> float:
        """Actual AC power, W, + discharging / − charging."""
        return self.plant.power_w

    @property
    def resting(self) -> bool:
        """True while the unit rests (target 0 W): it then draws ``standby_w`` from the house."""
        return self.plant.resting

    @property
    def standby_w(self) -> float:
        """What the resting unit draws from the house, W (read as AC power −standby_w)."""
        return self.plant.params.standby_w

    @property
    def delivers_nothing(self) -> bool:
        """True: the firmware ACKs setpoints but delivers ~0 W."""
        return self.plant.delivers_nothing

    @delivers_nothing.setter
    def delivers_nothing(self, value: bool) -> None:
        self.plant.delivers_nothing = bool(value)

    @property
    def commanded_w(self) -> float:
        """Power the registers currently ask for (+ discharge), before dead time, lag and BMS."""
        return self._commanded_w

    def set_soc(self, pct: float) -> None:
        """Set the state of charge, %."""
        with self._lock:
            self.plant.soc_pct = max(0.0, min(100.0, float(pct)))

    def drop_rs485(self) -> None:
        """Leave RS485 control silently, as the firmware sometimes does (after read timeouts, a client restart,
        marstek-modbus.md §4). With ``drop_clears_setpoints`` (the default) force mode and both setpoints
        read 0 afterwards (Omnibattery #477); without it they stay but are ignored."""
        with self._lock:
            self.rs485_control = False
            if self.drop_clears_setpoints:
                self._clear_setpoints()
            self._apply()

    def reset_setpoints(self) -> None:
        """Force mode stop and both setpoints 0 (RS485 control unchanged), as after a v3 LAN reconnect."""
        with self._lock:
            self._clear_setpoints()
            self._apply()

    def _clear_setpoints(self) -> None:
        self.force_mode = FORCE_STOP
        self.charge_power_w = 0
        self.discharge_power_w = 0

    def _watchdog(self) -> None:
        """Firmware that leaves RS485 control unless 42000 is re-written every ``rs485_watchdog_s`` (MVEM #244)."""
        if (self.rs485_watchdog_s is not None and self.rs485_control
                and self.plant.now_s - self._rs485_written_s >= self.rs485_watchdog_s):
            self.drop_rs485()

    # -- register access (called by the SimGateway under the simulation lock) ------------------------

    def read_registers(self, address: int, count: int) -> list[int] | int:
        """Register values for a FC03 read, or a Modbus exception code."""
        self._watchdog()
        out: list[int] = []
        for addr in range(address, address + count):
            getter = self._regs.get(addr)
            if getter is None:
                return EXC_ILLEGAL_ADDRESS
            out.append(getter() & 0xFFFF)
        return out

    def write_register(self, address: int, value: int) -> int | None:
        """Apply one register write (FC06 or one word of FC16); None or a Modbus exception code.

        41100 (unit id) is validated here and applied by the ``SimGateway`` (re-addressing).
        """
        self._watchdog()
        self.writes_received += 1
        self.write_log.append((address, value))
        if len(self.write_log) > _WRITE_LOG_MAX:
            del self.write_log[: len(self.write_log) - _WRITE_LOG_MAX]
        code = self._check_write(address, value)
        if code is not None:
            return code
        if self.deaf:
            return None  # ACKed, ignored
        if address == REG_RS485 and value == RS485_ON and self.runaway_w is not None:
            self.runaway_w = None  # back under control
        if address == REG_RS485:
            if value == RS485_ON:
                self._rs485_written_s = self.plant.now_s
                self._own_w = 0.0  # its own loop starts afresh the next time it is out of control
            elif self.rs485_control and self.drop_clears_setpoints:
                self._clear_setpoints()
            self.rs485_control = value == RS485_ON
        elif address == REG_WORK_MODE:
            self.work_mode = value
            self.rs485_control = False  # any 43000 write ends RS485 control
        elif address == REG_RESTART:
            self._reboot()
        elif address in _PLAIN_REGISTERS:
            setattr(self, _PLAIN_REGISTERS[address], value)
        self._apply()
        return None

    def _check_write(self, address: int, value: int) -> int | None:
        """None when ``value`` may be written to ``address`` on this register set, else the exception code."""
        limits = _WRITABLE_COMMON.get(address)
        if limits is None and self.register_set == "v2":
            limits = _WRITABLE_V2_ONLY.get(address)
        if limits is None:
            return EXC_ILLEGAL_ADDRESS
        if address == REG_RS485:  # exactly one of the two codes, not the range between them
            return None if value in (RS485_ON, RS485_OFF) else EXC_ILLEGAL_VALUE
        return None if limits[0] <= value <= limits[1] else EXC_ILLEGAL_VALUE

    def _reboot(self) -> None:
        # RAM registers are 0 after a reboot; RS485 control is off (marstek-modbus.md §4, §5).
        self.rs485_control = False
        self._clear_setpoints()
        self.target_soc_pct = 0

    def slip_out(self, own_power_w: float, deaf: bool = True) -> None:
        """The unit slips out of forced mode and runs its own logic at ``own_power_w`` (+ discharge) while the
        registers still read what was written (Omnibattery #434/#145). ``deaf``: writes over the live
        connection are ACKed but ignored until the client connects anew; otherwise writing 0x55AA to 42000
        brings it back."""
        with self._lock:
            self.runaway_w = float(own_power_w)
            self.deaf = bool(deaf)
            self._apply()

    def connection_reset(self) -> None:
        """A client connected anew: a deaf unit listens again and is back under control (RS485 gateways
        and v3 LAN ports alike: the firmware's Modbus task restarts with the connection)."""
        with self._lock:
            if self.runaway_w is not None and self.deaf:
                self.runaway_w, self.deaf = None, False
                self._apply()

    @property
    def autonomous(self) -> bool:
        """Out of RS485 control in a work mode that regulates on the unit's own meter."""
        return not self.rs485_control and self.own_meter and self.work_mode in (1, 2)

    def _max_discharge_w(self) -> float:
        limit_w = float(self.max_discharge_power_w)
        return limit_w if self.app_limit_w is None else min(limit_w, float(self.app_limit_w))

    def tick(self, now_s: float, grid_w: float) -> None:
        """The firmware's own anti-feed loop, given the grid power its own meter sees (W, + import): every
        ``OWN_PERIOD_S`` it sets its power to what it delivers plus most of the grid power."""
        if not self.autonomous or self.runaway_w is not None or now_s - self._own_at_s < OWN_PERIOD_S:
            return
        self._own_at_s = now_s
        if abs(grid_w) < OWN_DEADBAND_W:
            return
        with self._lock:
            delivered_w = self.plant.power_w if not self.plant.resting else 0.0
            wanted = delivered_w + OWN_GAIN * grid_w
            self._own_w = max(-float(self.max_charge_power_w), min(self._max_discharge_w(), wanted))
            self._apply()

    def _apply(self) -> None:
        """Recompute the commanded power from the registers and hand it to the plant."""
        wanted = 0.0
        if self.runaway_w is not None:
            wanted = self.runaway_w
        elif self.rs485_control:
            if self.force_mode == FORCE_CHARGE:
                wanted = -float(min(self.charge_power_w, self.max_charge_power_w))
            elif self.force_mode == FORCE_DISCHARGE:
                wanted = min(float(self.discharge_power_w), self._max_discharge_w())
            if abs(wanted) < self.min_setpoint_w:
                wanted = 0.0  # below what the firmware acts on
        elif self.autonomous:
            wanted = self._own_w
        if wanted != self._commanded_w:
            self._commanded_w = wanted
            self.plant.command(wanted, self.plant.now_s)

    # -- register map ---------------------------------------------------------------------------------

    def _dc_power_w(self) -> float:
        """DC battery power, + discharging (0 at rest: the standby draw comes from the house)."""
        if self.plant.resting:
            return 0.0
        ac = self.plant.power_w
        if ac > 0:
            return ac / efficiency(ac, EFFICIENCY_DISCHARGE)
        return ac * efficiency(ac, EFFICIENCY_CHARGE)

    def _battery_voltage_v(self) -> float:
        return 49.6 + 5.6 * self.plant.soc_pct / 100.0

    def _inverter_state(self) -> int:
        if self.plant.resting:
            return 1  # standby
        p = self.plant.power_w
        if p > 1.0:
            return 3  # discharge
        if p < -1.0:
            return 2  # charge
        return 1  # standby

    def _build_register_map(self) -> dict[int, Callable[[], int]]:
        r: dict[int, Callable[[], int]] = {}
        plant = self.plant
        v3 = self.register_set == "v3"

        def const(value: int) -> Callable[[], int]:
            return lambda: value

        def pair(fn: Callable[[], tuple[int, int]], addr: int) -> None:
            r[addr] = lambda: fn()[0]
            r[addr + 1] = lambda: fn()[1]

        name = _ascii_regs(self.model)
        for i, word in enumerate(name):
            r[REG_DEVICE_NAME + i] = const(word)
        soc_int = lambda: _u16(plant.soc_pct)  # noqa: E731
        ac = lambda: plant.power_w  # noqa: E731
        r[32104] = soc_int
        pair(lambda: _s32(ac()), 32202)
        r[32200] = const(2300)  # AC voltage 0.1 V
        r[32201] = lambda: _s16(ac() / 230.0 * 100.0)  # AC current 0.01 A
        pair(lambda: _u32(plant.charged_wh / 10.0), 33000)  # 0.01 kWh
        pair(lambda: _u32(plant.discharged_wh / 10.0), 33002)
        r[35000] = const(_s16(285))  # internal temperature 0.1 °C
        r[35001] = const(_s16(301))
        r[35100] = self._inverter_state
        r[35110] = const(576)  # BMS charge voltage limit 0.1 V
        r[35111] = const(500)  # BMS charge current limit 0.1 A
        r[35112] = const(500)  # BMS discharge current limit 0.1 A
        r[REG_UNIT_ID] = lambda: self.unit_id
        r[REG_BACKUP] = lambda: self.backup_disabled
        r[REG_RS485] = lambda: RS485_ON if self.rs485_control else RS485_OFF
        r[REG_FORCE_MODE] = lambda: self.force_mode
        r[REG_TARGET_SOC] = lambda: self.target_soc_pct
        r[REG_CHARGE_POWER] = lambda: self.charge_power_w
        r[REG_DISCHARGE_POWER] = lambda: self.discharge_power_w
        r[REG_WORK_MODE] = lambda: 1 if self.rs485_control else self.work_mode
        r[REG_MAX_CHARGE] = lambda: 0 if self.limits_read_zero else self.max_charge_power_w
        r[REG_MAX_DISCHARGE] = lambda: 0 if self.limits_read_zero else self.max_discharge_power_w
        if not v3:
            r[31100] = const(103)  # SW version 0.01 → 1.03
            r[31101] = lambda: self.firmware  # EMS firmware
            r[31102] = const(213)  # BMS version
            r[32100] = lambda: _u16(self._battery_voltage_v() * 100.0)  # 0.01 V
            # battery current 0.01 A, + discharging
            r[32101] = lambda: _s16(self._dc_power_w() / self._battery_voltage_v() * 100.0)
            pair(lambda: _s32(self._dc_power_w()), 32102)  # + discharge (sign uncertain on real devices)
            r[32105] = lambda: _u16(plant.soc_pct / 100.0 * plant.params.capacity_wh)  # 0.001 kWh
            r[32204] = const(5000)  # 0.01 Hz
            r[35002] = const(_s16(305))
            r[35010] = const(_s16(24))  # cell temperatures, 1 °C from BMS v213
            r[35011] = const(_s16(22))
            r[37007] = lambda: _u16(self._battery_voltage_v() / 16.0 * 1000.0 + 5)  # max cell 0.001 V
            r[37008] = lambda: _u16(self._battery_voltage_v() / 16.0 * 1000.0 - 5)
            r[44000] = lambda: self.cutoff_charge
            r[44001] = lambda: self.cutoff_discharge
        else:
            r[30001] = lambda: _s16(-self._dc_power_w())  # battery DC power, + charging (opposite to 30006)
            r[30006] = lambda: _s16(ac())  # AC power, + discharging
            r[30007] = const(0)  # off-grid power
            r[30100] = lambda: _u16(self._battery_voltage_v() * 100.0)  # 0.01 V
            r[30101] = lambda: _s16(-self._dc_power_w() / self._battery_voltage_v() * 10.0)  # 0.1 A
            r[30200] = lambda: self.firmware  # EMS version
            r[30202] = const(108)  # VMS version
            r[30204] = const(215)  # BMS version
            r[32105] = lambda: _u16(plant.soc_pct / 100.0 * plant.params.capacity_wh)  # 1 Wh
            r[32204] = const(500)  # 0.1 Hz
            r[34002] = lambda: _u16(plant.soc_pct * 10.0)  # 0.1 %

            def cell_mv(i: int) -> Callable[[], int]:  # cell voltages 0.001 V, slightly spread
                return lambda: _u16(self._battery_voltage_v() / 16.0 * 1000.0 + (i % 3) - 1)

            for i in range(16):
                r[34018 + i] = cell_mv(i)
            r[35010] = const(_s16(240))
            r[35011] = const(_s16(221))
        return r


# ---------------------------------------------------------------------------------------------------------
# Modbus TCP gateway (pymodbus server)
# ---------------------------------------------------------------------------------------------------------


class SimGateway:
    """One Modbus TCP server (one host:port, like one RS485-to-Ethernet gateway) with its simulated units.

    ``start(host, port)`` (port 0 = ephemeral) runs a pymodbus server in its own thread with its own asyncio
    loop and returns once it listens; the bound port is then in ``port``. ``stop()`` shuts it down (answers
    still being delayed are dropped). Every request is served under ``lock``, the lock under which the
    physics steps the units' plants (pass the same lock to the units and to the gateway).

    Faults: per unit ``SimUnit.silent`` (no answer), ``slow_s`` (late answer) and ``fail_with_exception``;
    for the whole gateway ``close_after_exception`` (as v3 firmware does, marstek-modbus.md §7: after
    sending any exception response the server closes that TCP connection) and ``drop_connections()``.
    A v3 unit does not answer a read of more than ``V3_MAX_READ_COUNT`` registers.
    """

    def __init__(
        self,
        units: Iterable[SimUnit] = (),
        lock: threading.RLock | None = None,
        close_after_exception: bool | None = None,
        lan: bool | None = None,
    ) -> None:
        self.lock = lock if lock is not None else threading.RLock()
        self._units: list[SimUnit] = list(units)
        # A v3 battery on its own LAN port (default: a gateway whose only unit is v3); else an RS485 gateway.
        self.lan = (len(self._units) == 1 and self._units[0].register_set == "v3") if lan is None else bool(lan)
        # v3 LAN firmware closes the connection after every exception response (marstek-modbus.md section 7).
        self.close_after_exception = self.lan if close_after_exception is None else bool(close_after_exception)
        # v3 LAN exception frames say MBAP length 4 but carry 3 bytes (schau; MVEM).
        self.malformed_exceptions = self.lan
        self.one_client = self.lan  # one TCP client at a time, the slot freed LAN_SLOT_FREE_S after it left
        self.answers_every_id = self.lan  # the unit ID is ignored on the LAN port
        self.requests_total = 0  # requests answered or refused (not counting ones nobody answers)
        self.answers_held = 0  # answers of slow units being held back right now (a client stuck in a frame)
        self.connections_log: list[tuple[str, float]] = []  # ("open"/"refused"/"closed", time.monotonic())
        self._clients = 0
        self._slot_freed_s = float("-inf")
        self.framer = "socket"  # "rtu": Modbus RTU frames over TCP (a gateway in transparent mode)
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusTcpServer | None = None
        self._echo: tuple[int, int, list[int]] | None = None  # (device id, address, values) of the last FC06
        self._outage_port: int | None = None  # the port to listen on again after a network reset

    # -- units ----------------------------------------------------------------------------------------

    @property
    def units(self) -> list[SimUnit]:
        """The units behind this gateway (a copy of the list)."""
        with self.lock:
            return list(self._units)

    def unit(self, unit_id: int) -> SimUnit:
        """The unit that currently answers on ``unit_id`` (KeyError if none)."""
        with self.lock:
            for u in self._units:
                if u.unit_id == unit_id:
                    return u
        raise KeyError(f"no simulated unit with id {unit_id}")

    def add_unit(self, unit: SimUnit) -> SimUnit:
        """Put ``unit`` on this gateway's bus (it answers from the next request on)."""
        with self.lock:
            self._units.append(unit)
        return unit

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 = ephemeral) and return the bound port; RuntimeError if that fails."""
        if self._thread is not None:
            raise RuntimeError("Modbus gateway already started")
        self.host = host
        self.port = None
        self._stopping.clear()
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            server = _SimModbusServer(self, address=(host, port), ignore_missing_devices=True,
                                      framer=FramerType(self.framer))
            await server.serve_forever(background=True)
            self._server = server
            listener = cast(asyncio.Server, server.transport)  # a listening protocol's transport is the server
            self.port = listener.sockets[0].getsockname()[1]
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await server.serving

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(serve())
            except BaseException as exc:  # reported to start() through `failure`
                failure.append(exc)
            finally:
                ready.set()
                # Answers still being delayed (slow units) end here instead of dying with the loop.
                pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="sim-modbus", daemon=True)
        self._thread.start()
        ready.wait(10.0)
        if failure:
            raise RuntimeError(f"Modbus server could not start on {host}:{port}: {failure[0]}") from failure[0]
        if self.port is None:
            raise RuntimeError(f"Modbus server did not start on {host}:{port}")
        return self.port

    def stop(self) -> None:
        """Stop serving and join the server thread (delayed answers are not sent)."""
        self._stopping.set()
        server, loop = self._server, self._loop
        self._server = None
        if server is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
                asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(timeout=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    @property
    def stopping(self) -> bool:
        """True from ``stop()`` on: answers still being delayed are not sent."""
        return self._stopping.is_set()

    def drop_connections(self) -> int:
        """Close every open Modbus TCP connection from the server side and keep listening.

        Like a gateway that restarts or the v3 firmware's periodic Ethernet reset (marstek-modbus.md §9):
        a client finds its idle connection closed on the next request. Returns how many were closed.
        """
        server, loop = self._server, self._loop
        if server is None or loop is None or loop.is_closed():
            return 0

        async def drop() -> int:
            connections = list(server.active_connections.values())
            for connection in connections:
                if isinstance(connection, _SimRequestHandler):
                    connection.free_at_once = True  # a reset: the slot is free at once
                connection.close()
            return len(connections)

        return asyncio.run_coroutine_threadsafe(drop(), loop).result(timeout=5.0)

    def network_reset(self, outage_s: float | None = None) -> None:
        """The firmware resets its network chip (v150 without cloud access: every 1800 s on LAN, 900 s on
        Wi-Fi, 2-5 s each, marstek-modbus.md section 9): every connection drops and none is taken until
        ``network_back()``, or for ``outage_s`` seconds of wall time when given. The units keep running."""
        port = self.port
        if port is None:
            raise RuntimeError("Modbus gateway not started")
        self._outage_port = port
        self.stop()
        self.port = port  # where it will listen again
        if outage_s is not None:
            timer = threading.Timer(outage_s, self.network_back)
            timer.daemon = True
            timer.start()

    def network_back(self) -> None:
        """End a ``network_reset``: listen on the same port again."""
        port = self._outage_port
        if port is None or self._thread is not None:
            return
        self._outage_port = None
        self.start(self.host, port)

    # -- requests (called from the server's asyncio thread) -----------------------------------------

    def admit(self) -> bool:
        """A client connected: False when a v3 LAN port refuses it (another client holds the one slot, or
        it left less than LAN_SLOT_FREE_S ago). On a v3 LAN port force mode and setpoints read 0 after a
        reconnect (firmware V150, Omnibattery #477, evcc #33459): the client must write them again."""
        with self.lock:
            now = time.monotonic()
            if self.one_client and (self._clients > 0 or now - self._slot_freed_s < LAN_SLOT_FREE_S):
                self.connections_log.append(("refused", now))
                return False
            self._clients += 1
            self.connections_log.append(("open", now))
            for unit in self._units:
                unit.connection_reset()
            if self.lan:
                for unit in self._units:
                    unit.reset_setpoints()
            return True

    def released(self, at_once: bool = False) -> None:
        """An admitted client left; its slot is free again LAN_SLOT_FREE_S later (at once after a reset)."""
        with self.lock:
            self._clients = max(0, self._clients - 1)
            self._slot_freed_s = time.monotonic() - (LAN_SLOT_FREE_S if at_once else 0.0)
            self.connections_log.append(("closed", self._slot_freed_s))

    def malform(self, sending: bool, packet: bytes) -> bytes:
        """The server's raw-frame hook: v3 LAN exception frames go out with MBAP length 4 for 3 bytes."""
        if (sending and self.malformed_exceptions and len(packet) == 9 and packet[7] & 0x80
                and packet[4:6] == b"\x00\x03"):
            return packet[:4] + b"\x00\x04" + packet[6:]
        return packet

    def answer_delay_s(self, device_id: int) -> float:
        """How late the unit on ``device_id`` answers (``SimUnit.slow_s``), s."""
        with self.lock:
            return next((max(0.0, float(u.slow_s)) for u in self._units if u.unit_id == device_id), 0.0)

    def _unit_for_request(self, device_id: int) -> SimUnit:
        """The unit that answers ``device_id``; NoSuchIdException (= no answer at all) when none does."""
        if self.answers_every_id and len(self._units) == 1 and not self._units[0].silent:
            self.requests_total += 1
            return self._units[0]
        for u in self._units:
            if u.unit_id == device_id and not u.silent:
                self.requests_total += 1
                return u
        raise NoSuchIdException(f"no unit answers on id {device_id}")

    def serve_read(self, device_id: int, func_code: int, address: int, count: int) -> list[int] | ExcCodes:
        """Register values or an exception code for a read; NoSuchIdException means "send nothing"."""
        with self.lock:
            if func_code == 6 and self._echo is not None and self._echo[:2] == (device_id, address):
                # Read-back that pymodbus does to build the FC06 response: echo what was written
                # (also right after 41100 moved the unit to another id).
                values = self._echo[2][:count]
                self._echo = None
                return values
            unit = self._unit_for_request(device_id)
            if unit.fail_with_exception is not None:
                return ExcCodes(unit.fail_with_exception)
            if func_code != 3:
                return ExcCodes.ILLEGAL_FUNCTION
            if unit.register_set == "v3" and count > V3_MAX_READ_COUNT:
                raise NoSuchIdException("v3 firmware does not answer reads of more than 32 registers")
            result = unit.read_registers(address, count)
            return ExcCodes(result) if isinstance(result, int) else result

    def serve_write(self, device_id: int, func_code: int, address: int, values: list[int]) -> ExcCodes | None:
        """Apply a FC06 / FC16 write; None or an exception code; NoSuchIdException means "send nothing"."""
        with self.lock:
            unit = self._unit_for_request(device_id)
            if unit.fail_with_exception is not None:
                return ExcCodes(unit.fail_with_exception)
            if func_code not in (6, 16):
                return ExcCodes.ILLEGAL_FUNCTION
            if func_code == 6:
                self._echo = (device_id, address, list(values))
            for offset, value in enumerate(values):
                addr = address + offset
                code = unit.write_register(addr, value)
                if code is not None:
                    self._echo = None
                    return ExcCodes(code)
                if addr == REG_UNIT_ID:
                    unit.unit_id = value  # re-addressed at once: answers only on the new id from now on
            return None


class _BusContext(ModbusServerContext):
    """All units behind one ``SimGateway``, resolved per request.

    pymodbus hands the PDU address to ``async_getValues``/``async_setValues`` unchanged (the ``address + 1``
    offset lives only in ``ModbusDeviceContext``, which is not used here). A unit id nobody answers on
    (or a ``silent`` unit, or a v3 read of more than 32 registers) raises ``NoSuchIdException``; with
    ``ignore_missing_devices=True`` the request handler then sends nothing, like a dead RS485 device.
    """

    def __init__(self, gateway: SimGateway) -> None:
        # No super().__init__(): every request is resolved here, its device table is never used, and
        # pymodbus >= 3.13 refuses an empty one. A context without SimDevices that says ``old_simulator``
        # is served as it is by pymodbus >= 3.13 (otherwise it is replaced by a SimCore that never calls
        # the methods below); older releases do not read the two attributes.
        self.simdevices: list[Any] = []
        self.old_simulator = True
        self._gateway = gateway

    def device_ids(self) -> list[int]:
        return [u.unit_id for u in self._gateway.units]

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        # A slow unit: the request is served at once, the answer leaves late. For FC06 this call is the
        # echo read right after async_setValues, so the delay lands here (the write is already applied).
        delay_s = self._gateway.answer_delay_s(device_id)
        result = self._gateway.serve_read(device_id, func_code, address, count)
        await self._delay(delay_s)
        return result

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        delay_s = self._gateway.answer_delay_s(device_id)
        result = self._gateway.serve_write(device_id, func_code, address, [int(v) for v in values])
        if func_code != 6 or result is not None:  # FC06 without an error: the echo read delays
            await self._delay(delay_s)
        return result

    async def _delay(self, seconds: float) -> None:
        """Wait ``seconds`` before answering (counted in ``answers_held``); a stopping gateway sends nothing."""
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        gateway = self._gateway
        with gateway.lock:
            gateway.answers_held += 1
        try:
            while (left := end - loop.time()) > 0:
                if gateway.stopping:
                    raise NoSuchIdException("simulation stopping")
                await asyncio.sleep(min(left, 0.05))
        finally:
            with gateway.lock:
                gateway.answers_held -= 1


class _SimRequestHandler(ServerRequestHandler):
    """One client connection; closes it after an exception response when the gateway asks for it (v3), and
    at once when a v3 LAN port's one client slot is taken."""

    server: _SimModbusServer
    _admitted = False
    free_at_once = False

    def callback_connected(self) -> None:
        super().callback_connected()
        self._admitted = self.server.gateway.admit()
        if not self._admitted:
            self.close()

    def callback_disconnected(self, exc: Exception | None) -> None:
        self._release()
        super().callback_disconnected(exc)

    def close(self, reconnect: bool = False) -> None:
        self._release()
        super().close(reconnect)

    def _release(self) -> None:
        if self._admitted:
            self._admitted = False
            self.server.gateway.released(self.free_at_once)

    def server_send(self, pdu: ModbusPDU | None, addr: Any) -> None:
        super().server_send(pdu, addr)
        if isinstance(pdu, ExceptionResponse) and self.server.gateway.close_after_exception and self.transport:
            self.close()  # asyncio sends what is buffered, then closes the socket


class _SimModbusServer(ModbusTcpServer):
    """pymodbus TCP server whose connections are ``_SimRequestHandler``s."""

    def __init__(self, gateway: SimGateway, **kwargs: Any) -> None:
        self.gateway = gateway
        super().__init__(_BusContext(gateway), **kwargs)

    def callback_new_connection(self) -> ServerRequestHandler:
        return _SimRequestHandler(self, self.gateway.malform, self.trace_pdu, self.trace_connect)
