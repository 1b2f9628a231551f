"""Marstek Venus / Duravolt batteries over Modbus TCP (one synchronous client per gateway).

All pymodbus code of the project lives here. The register map is ``marstek_registers``; the
gateway reads with FC03 and writes with FC06, paces its frames, reconnects with back-off and keeps
one silent unit from stalling the others. It receives its Modbus client from a factory, so the
benchmark and the soak hand it their simulated wire.

Signs: battery power + discharging, - charging (W). SoC in percent.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pymodbus import FramerType
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from control.devices import BatteryError, BatteryReading, BatteryUnreachable
from control.i18n import Msg
from control.marstek_registers import (
    DEFAULT_PACING_S,
    FIRMWARE_MAX_POWER_W,
    FIRMWARE_MIN_POWER_W,
    REGISTER_SETS,
    RS485_CONTROL_OFF,
    RS485_CONTROL_ON,
    WORK_MODE_AUTO,
    ForceMode,
    model_limit_w,
)

log = logging.getLogger(__name__)

# pymodbus logs every timeout at ERROR; our own messages say it once and with context.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

# A gateway that stops taking connections is first retried at once and then every RECONNECT_FAST_S for
# RECONNECT_FAST_FOR_S (the v3 firmware's periodic network reset lasts 2-5 s, marstek-modbus.md section 9),
# then with the growing back-off.
RECONNECT_FAST_S = 0.5
RECONNECT_FAST_FOR_S = 10.0
RECONNECT_BACKOFF_S = (2.0, 5.0, 10.0, 30.0)
# 42000 is a RAM register (no flash wear): re-written this often while forcing, because some v3 firmware
# leaves RS485 control after 90-120 s otherwise (marstek-modbus.md section 4, MVEM #244).
RS485_REASSERT_S = 25.0
# Idle runaway (Omnibattery #434/#145): commanded stop, yet this much AC power for this long means the
# firmware runs its own logic. First all four control registers are written again, then a hard reconnect.
RUNAWAY_POWER_W = 100.0
RUNAWAY_AFTER_S = 15.0
PROBE_UNUSED_ID = 247  # asked once to tell a v3 LAN port (answers every ID) from an RS485 gateway
# A v3 LAN port frees its one client slot only about a second after a connection ended (MVEM waits 1 s).
V3_RECONNECT_GAP_S = 1.0
# Another client's close (an aborted connection, the emergency stop's) is not seen here: the aborted socket's RST
# comes from its owner thread a moment later, and the port counts from when it saw the close. Added to the gap.
FOREIGN_CLOSE_MARGIN_S = 0.2
UNIT_BACKOFF_S = (2.0, 5.0, 10.0, 30.0)
QUIRKS = ("rs485_reassert", "modbus_reconnect")  # the names MarstekGateway reports to ``on_quirk``


class ModbusClient(Protocol):
    """The part of a synchronous pymodbus client the gateway uses (``ModbusTcpClient`` or a simulated wire).

    Requests return a response with ``isError()`` and ``registers``, or raise ``ModbusException``.
    """

    @property
    def connected(self) -> bool: ...

    def connect(self) -> bool: ...

    def close(self) -> None: ...

    def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Any: ...

    def write_register(self, address: int, value: int, *, device_id: int) -> Any: ...


ClientFactory = Callable[[float], ModbusClient]  # answer timeout in s -> a new, unconnected client


def fix_v3_exception_frame(sending: bool, packet: bytes) -> bytes:
    """pymodbus ``trace_packet`` hook: repair the v3 LAN firmware's exception frame.

    The firmware sends MBAP length 4 with only 3 bytes following (unit, function | 0x80, code); pymodbus
    would wait for the missing byte until its timeout and lose the code (marstek-modbus.md section 7;
    MVEM ``_marstek_v3_packet_correction``). A correct exception frame has length 3, and a correct frame
    with length 4 is 10 bytes long, so rewriting exactly this case cannot hurt another device.
    """
    if not sending and len(packet) == 9 and packet[4:6] == b"\x00\x04" and packet[7] & 0x80:
        return packet[:4] + b"\x00\x03" + packet[6:]
    return packet


def tcp_client_factory(host: str, port: int, framer: str = "socket") -> ClientFactory:
    """Modbus TCP clients for one gateway: no retries (our back-off decides), no pymodbus reconnect delay,
    v3 exception frames repaired. ``framer`` "rtu" sends Modbus RTU frames over the TCP connection (gateways
    in "transparent" mode).
    """
    framer_type = FramerType(framer)

    def make(timeout_s: float) -> ModbusClient:
        return ModbusTcpClient(host, port=port, framer=framer_type, timeout=timeout_s, retries=0, reconnect_delay=0,
                               trace_packet=fix_v3_exception_frame)

    return make


@dataclass
class _UnitState:
    """What the client knows about one unit between frames."""

    failures: int = 0
    retry_at_s: float = 0.0
    asserted: bool = False  # we switched RS485 control on since the last (re)connect
    asserted_at_s: float = float("-inf")  # when 42000 was last written with 0x55AA
    soc_pct: float | None = None
    soc_read_at_s: float = float("-inf")
    limits_w: tuple[int | None, int | None] = (None, None)  # 44002 / 44003 as read (charge, discharge)
    limits_readable: bool = True
    limits_due: bool = False
    runaway_since_s: float | None = None  # commanded stop but |AC power| > RUNAWAY_POWER_W since then
    runaway_stage: int = 0  # 0 none, 1 registers re-written, 2 reconnected
    model: str | None = None  # device name (31000) and firmware, read once
    model_limit_w: int = FIRMWARE_MAX_POWER_W
    # Register values as last read back or written; None = unknown, must be written.
    held: dict[str, int | None] = field(
        default_factory=lambda: {"rs485_control": None, "force_mode": None, "charge_power": None,
                                 "discharge_power": None}
    )

    def forget_registers(self) -> None:
        """Every control register unknown: all of them are written again with the next setpoint."""
        for name in self.held:
            self.held[name] = None


class MarstekGateway:
    """All Marstek units behind one Modbus TCP gateway (RS485 bridge or a v3 LAN port).

    Not thread-safe by design: the control thread owns it.

    ``on_quirk(name)`` is called (on the owner thread) for each device quirk met, ``name`` one of ``QUIRKS``:
    "rs485_reassert" (a unit left RS485 control on its own and 42000 was written again), "modbus_reconnect"
    (the gateway took a connection again after refusing it). The diagnostics count them (``QuirkCounter.note``).
    """

    def __init__(
        self,
        host: str,
        port: int = 502,
        *,
        register_set: str = "v2",
        timeout_s: float = 3.0,
        pacing_s: float | None = None,
        max_power_w: int = FIRMWARE_MAX_POWER_W,
        soc_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        client_factory: ClientFactory | None = None,
        reconnect_gap_s: float | None = None,
        on_quirk: Callable[[str], None] | None = None,
    ) -> None:
        if register_set not in REGISTER_SETS:
            raise ValueError(f"unknown register set {register_set!r}")
        self.host, self.port = host, port
        self.registers = REGISTER_SETS[register_set]
        self.register_set = register_set
        self.pacing_s = DEFAULT_PACING_S[register_set] if pacing_s is None else pacing_s
        self.max_power_w = min(int(max_power_w), FIRMWARE_MAX_POWER_W)
        self.soc_interval_s = soc_interval_s
        self.timeout_s = timeout_s
        self._clock, self._sleep = clock, sleep
        self._on_quirk = on_quirk
        self._make_client = client_factory or tcp_client_factory(host, port)
        self._client = self._make_client(timeout_s)
        self._last_frame_s = float("-inf")
        # Between closing and opening a connection (v3: the LAN port's one slot must be free again), s.
        self.reconnect_gap_s = (V3_RECONNECT_GAP_S if register_set == "v3" else 0.0) if reconnect_gap_s is None \
            else reconnect_gap_s
        self._closed_at_s = float("-inf")
        # Set by ``abort()`` from another thread: no new connection until ``resume()`` (the emergency stop's
        # own connection needs the one slot of a v3 LAN port).
        self._held = threading.Event()
        self._lan_owner: int | None = None  # v3 LAN port (answers every ID): the one ID that drives it
        self._lan_checked = False
        self._connect_failures = 0
        self._connect_retry_at_s = 0.0
        self._slow_failures = 0
        self._unreachable_since_s: float | None = None
        self._units: dict[int, _UnitState] = {}
        self.writes_total = 0
        self.frame_ended: Callable[[], None] | None = None  # the fleet's straggler watch (owner thread)

    def _quirk(self, name: str) -> None:
        """Report a device quirk (one of ``QUIRKS``) to ``on_quirk``."""
        if self._on_quirk is not None:
            self._on_quirk(name)

    # ------------------------------------------------------------------ frames
    def _unit(self, unit_id: int) -> _UnitState:
        return self._units.setdefault(unit_id, _UnitState())

    def _connect(self) -> None:
        if self._held.is_set():
            self._disconnect()  # the owner thread closes what abort() only shut down (SO_LINGER 0: RST)
            raise BatteryUnreachable(f"gateway {self.host}:{self.port}: connection aborted for an emergency stop",
                                     outage_s=0.0)
        if self._client.connected:
            return
        now = self._clock()
        if now < self._connect_retry_at_s:
            raise self._unreachable(f"next attempt in {self._connect_retry_at_s - now:.1f} s")
        gap_s = self._closed_at_s + self.reconnect_gap_s - now
        if gap_s > 0:
            self._sleep(gap_s)
        if self._client.connect():
            if self._connect_failures:
                log.info(Msg("gateway_reachable_again", gateway=f"{self.host}:{self.port}"))
                self._quirk("modbus_reconnect")
            self._connect_failures = self._slow_failures = 0
            self._unreachable_since_s = None
            # After a reconnect the device may have rebooted: RAM registers are unknown again.
            for state in self._units.values():
                state.forget_registers()
                state.asserted = False
            return
        self._gateway_failed()
        raise self._unreachable("connection refused or timed out")

    def _disconnect(self) -> None:
        self._client.close()
        self._closed_at_s = self._clock()

    def _gateway_failed(self) -> None:
        """The gateway took no connection (or dropped it at once): retry fast first, then back off."""
        now = self._clock()
        if self._unreachable_since_s is None:
            self._unreachable_since_s = now
        if now - self._unreachable_since_s < RECONNECT_FAST_FOR_S:
            delay = RECONNECT_FAST_S
        else:
            delay = RECONNECT_BACKOFF_S[min(self._slow_failures, len(RECONNECT_BACKOFF_S) - 1)]
            self._slow_failures += 1
        self._connect_failures += 1
        self._connect_retry_at_s = now + delay

    def _unreachable(self, detail: str) -> BatteryUnreachable:
        since_s = self._unreachable_since_s if self._unreachable_since_s is not None else self._clock()
        return BatteryUnreachable(f"gateway {self.host}:{self.port} unreachable ({detail})",
                                  outage_s=self._clock() - since_s)

    def _pace(self) -> None:
        wait_s = self._last_frame_s + self.pacing_s - self._clock()
        if wait_s > 0:
            self._sleep(wait_s)

    def _frame(self, unit_id: int, what: str, call: Callable[[], Any]) -> Any:
        """Run one request with pacing; turn every failure into BatteryError; tell ``frame_ended`` after it."""
        try:
            return self._request(unit_id, what, call)
        finally:
            if self.frame_ended is not None:
                self.frame_ended()

    def _request(self, unit_id: int, what: str, call: Callable[[], Any]) -> Any:
        state = self._unit(unit_id)
        now = self._clock()
        if now < state.retry_at_s:
            raise BatteryError(f"unit {unit_id} not answering, next try in {state.retry_at_s - now:.0f} s")
        self._connect()
        self._pace()
        try:
            try:
                response = call()
            except (ConnectionException, ConnectionError):
                # The gateway closed our idle connection (restart, v3 Ethernet reset): that says nothing
                # about this unit. Once more on a fresh connection. (pymodbus >= 3.13 lets a reset socket's
                # ConnectionResetError through as it is.)
                self._disconnect()
                self._connect()
                response = call()
        except (ConnectionException, ConnectionError) as exc:
            # Closed again at once: the gateway (a network reset), not this unit.
            self._disconnect()
            self._gateway_failed()
            raise self._unreachable(_short(exc)) from exc
        except ModbusException as exc:
            # A timeout may leave a late answer in the socket, and v3 closes after exceptions.
            self._disconnect()
            self._unit_failed(unit_id)
            raise BatteryError(f"unit {unit_id}: {what} failed: {_short(exc)}") from exc
        finally:
            self._last_frame_s = self._clock()
        if response is None or response.isError():
            self._disconnect()  # v3 devices close the connection after an exception response
            self._unit_failed(unit_id)
            code = getattr(response, "exception_code", "?")
            raise BatteryError(f"unit {unit_id}: {what} answered with Modbus exception {code}")
        if state.failures:
            log.info(Msg("unit_answers_again", id=unit_id))
        state.failures = 0
        state.retry_at_s = 0.0
        return response

    def _unit_failed(self, unit_id: int) -> None:
        state = self._unit(unit_id)
        state.failures += 1
        delay = UNIT_BACKOFF_S[min(state.failures - 1, len(UNIT_BACKOFF_S) - 1)]
        state.retry_at_s = self._clock() + delay

    def _read(self, unit_id: int, name: str) -> float | str:
        reg = self.registers[name]
        response = self._frame(
            unit_id,
            f"read {name} ({reg.address})",
            lambda: self._client.read_holding_registers(reg.address, count=reg.count, device_id=unit_id),
        )
        regs = list(getattr(response, "registers", []))
        return reg.decode(regs)

    def _read_block(self, unit_id: int, names: tuple[str, ...]) -> list[float | str]:
        """Read registers that sit next to each other in one FC03 frame (no gaps: v3 refuses those)."""
        regs = [self.registers[n] for n in names]
        for a, b in itertools.pairwise(regs):
            if a.address + a.count != b.address:
                raise ValueError(f"registers {names} are not contiguous")
        first, count = regs[0].address, sum(r.count for r in regs)
        response = self._frame(
            unit_id,
            f"read {'+'.join(names)} ({first}..{first + count - 1})",
            lambda: self._client.read_holding_registers(first, count=count, device_id=unit_id),
        )
        raw = list(getattr(response, "registers", []))
        if len(raw) != count:
            raise BatteryError(f"unit {unit_id}: expected {count} registers from {first}, got {len(raw)}")
        values, offset = [], 0
        for reg in regs:
            values.append(reg.decode(raw[offset:offset + reg.count]))
            offset += reg.count
        return values

    def _write(self, unit_id: int, name: str, value: int) -> None:
        reg = self.registers[name]
        if not reg.writable or not 0 <= value <= reg.max_value:
            raise ValueError(f"refusing to write {value} to {name} ({reg.address})")
        self._frame(
            unit_id,
            f"write {name} ({reg.address}) = {value}",
            lambda: self._client.write_register(reg.address, value, device_id=unit_id),
        )
        self.writes_total += 1
        self._unit(unit_id).held[name] = value

    # ------------------------------------------------------------------ public
    def read(self, unit_id: int) -> BatteryReading:
        """AC power and RS485 state every call; SoC and the setpoint registers every ``soc_interval_s``."""
        self._refuse_second_id_on_lan_port(unit_id)
        state = self._unit(unit_id)
        ac_power_w = float(self._read(unit_id, "ac_power"))
        rs485 = int(self._read(unit_id, "rs485_control"))
        if rs485 != RS485_CONTROL_ON:
            # Leaving RS485 control resets force mode and setpoints on the firmware (Omnibattery #477):
            # what we cached is void, so the next setpoint writes all four registers.
            state.forget_registers()
        state.held["rs485_control"] = rs485
        self._check_runaway(unit_id, state, ac_power_w)
        now = self._clock()
        if state.soc_pct is None or now - state.soc_read_at_s >= self.soc_interval_s:
            soc = float(self._read(unit_id, "soc"))
            if not 0.0 <= soc <= 100.0:
                raise BatteryError(f"unit {unit_id}: implausible SoC {soc} %")
            state.soc_pct, state.soc_read_at_s = soc, now
            # Verify what the firmware holds: setpoints are ACKed even when ignored.
            state.held["force_mode"] = int(self._read(unit_id, "force_mode"))
            charge_w, discharge_w = self._read_block(unit_id, ("charge_power", "discharge_power"))
            state.held["charge_power"], state.held["discharge_power"] = int(charge_w), int(discharge_w)
            state.limits_due = True  # read in the next cycle: one cycle's reads stay short
        elif state.limits_due:
            state.limits_due = False
            self._read_limits(unit_id, state)
        max_charge_w, max_discharge_w = state.limits_w
        return BatteryReading(
            unit_id=unit_id,
            soc_pct=state.soc_pct,
            ac_power_w=ac_power_w,
            rs485_control=rs485 == RS485_CONTROL_ON,
            force_mode=state.held["force_mode"] if state.held["force_mode"] is not None else -1,
            charge_power_w=state.held["charge_power"] or 0,
            discharge_power_w=state.held["discharge_power"] or 0,
            max_charge_w=max_charge_w,
            max_discharge_w=max_discharge_w,
            runaway=state.runaway_stage > 0,
        )

    def _refuse_second_id_on_lan_port(self, unit_id: int) -> None:
        """A v3 battery on its own LAN port answers every unit ID: a second configured ID would drive the same
        battery twice. Checked once, when a second ID is read on a v3 gateway: the unused ID 247 answering too
        means a LAN port; from then on only the first ID is served, the others fail with the explanation."""
        if self.register_set != "v3":
            return
        if not self._lan_checked and self._units and unit_id not in self._units:
            self._lan_checked = True
            try:
                self._read(PROBE_UNUSED_ID, "device_name")
            except BatteryError:
                pass  # an RS485 gateway: 247 is silent
            else:
                self._lan_owner = next(iter(self._units))
                log.error(Msg("v3_lan_several_ids", host=self.host, id=self._lan_owner))
            finally:
                self._units.pop(PROBE_UNUSED_ID, None)
        if self._lan_owner is not None and unit_id != self._lan_owner:
            raise BatteryError(str(Msg("v3_lan_several_ids", host=self.host, id=self._lan_owner)))

    def _check_runaway(self, unit_id: int, state: _UnitState, ac_power_w: float) -> None:
        """Commanded stop (force mode 0 written) but the unit keeps charging or discharging on its own."""
        if state.held["force_mode"] is None:
            return  # being written again (after a reconnect or the first step below)
        commanded_stop = state.held["force_mode"] == ForceMode.STOP
        if not commanded_stop or abs(ac_power_w) <= RUNAWAY_POWER_W:
            if state.runaway_stage:
                log.info(Msg("runaway_over", id=unit_id))
            state.runaway_since_s, state.runaway_stage = None, 0
            return
        now = self._clock()
        if state.runaway_since_s is None:
            state.runaway_since_s = now
        if now - state.runaway_since_s <= RUNAWAY_AFTER_S:
            return
        state.runaway_since_s = now  # the next step only after another RUNAWAY_AFTER_S
        if state.runaway_stage == 0:
            log.warning(Msg("runaway_rewrite", id=unit_id, power=round(ac_power_w)))
            state.runaway_stage = 1
            state.forget_registers()  # the next (stop) setpoint writes all four registers
            return
        log.warning(Msg("runaway_reconnect", id=unit_id, power=round(ac_power_w)))
        state.runaway_stage = 2
        self._reconnect_hard()

    def _reconnect_hard(self) -> None:
        """Close the connection hard (RST, no lingering) so that the next request starts a fresh one (owner
        thread only)."""
        sock = getattr(self._client, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._disconnect()
        for state in self._units.values():
            state.forget_registers()
            state.asserted = False

    def abort(self) -> bool:
        """Abort the connection hard (TCP RST) from any thread, even while the owner thread is blocked inside a
        frame on it; no new connection is opened until ``resume()``. True when a connection was open.

        For the watchdog's and the shutdown's emergency stop: a v3 LAN port takes one client only, and the stuck
        connection holds that slot. Only the socket is touched here, never the gateway's state: the owner thread
        may be inside ``_frame`` using it (the class is not thread-safe). The socket is shut down, not closed: a
        descriptor closed under a thread blocked in ``select`` on it does not wake that thread, and its number
        could be handed to the emergency connection's socket meanwhile. The shutdown wakes the blocked frame
        (it fails as a closed connection) and tells the peer; the owner thread's own close then sends the RST
        (SO_LINGER 0) and its next frame finds the hold.
        """
        self._held.set()
        sock = getattr(self._client, "socket", None)
        if sock is None:
            return False
        with contextlib.suppress(OSError):  # closed by the owner thread in the meantime: nothing left to abort
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
        return True

    def resume(self) -> None:
        """Connections allowed again after ``abort()``; the next one keeps ``reconnect_gap_s`` from now (the
        emergency connection has just closed). Safe from any thread."""
        self.connection_closed()
        self._held.clear()

    def connection_closed(self) -> None:
        """Another client's connection to this host was closed just now (the aborted one, or the emergency
        stop's): the next connect waits ``reconnect_gap_s`` from about now, as after a close of our own (a v3
        LAN port frees its slot only then). Safe from any thread: a single store the owner thread reads."""
        if self.reconnect_gap_s > 0:
            self._closed_at_s = max(self._closed_at_s, self._clock() + FOREIGN_CLOSE_MARGIN_S)

    def _read_limits(self, unit_id: int, state: _UnitState) -> None:
        """The EEPROM power limits 44002/44003 (read only: never written by the loop, no flash wear).

        A firmware that does not have them (exception) is not asked again and loses nothing: the failure
        is undone. A 0 is never trusted, on any register set: a Venus D v150 reads 0 while charging at 1.3 kW
        (marstek-modbus.md section 5), and a v2 unit reading 0 was never used at all. 0 means "unknown": the
        battery is commanded, and what it delivers is what the control law learns (a real 0 W limit shows as
        "delivers nothing" and pauses the battery).
        """
        if state.model is None:
            self._read_model(unit_id, state)
        if not state.limits_readable:
            state.limits_w = (state.model_limit_w, state.model_limit_w)
            return
        try:
            charge_w, discharge_w = self._read_block(unit_id, ("max_charge_power", "max_discharge_power"))
        except BatteryError as exc:
            log.info(Msg("limits_not_readable", id=unit_id, error=str(exc)))
            state.limits_readable, state.failures, state.retry_at_s = False, 0, 0.0
            return

        def trusted(value: float | str) -> int | None:
            watts = int(float(value))
            return None if watts == 0 else watts

        def capped(limit: int | None) -> int | None:
            return state.model_limit_w if limit is None else min(limit, state.model_limit_w)

        limits = (trusted(charge_w), trusted(discharge_w))
        for register, before, now in zip((44002, 44003), state.limits_w, limits, strict=True):
            if now is not None and now < self.max_power_w and now != before:
                log.warning(Msg("device_limit_register", id=unit_id, register=register, value=now,
                                max=self.max_power_w))
        state.limits_w = (capped(limits[0]), capped(limits[1]))

    def _read_model(self, unit_id: int, state: _UnitState) -> None:
        """Device name (31000) and EMS firmware once: the model's power limit (Venus A 1200/1500 W, ...)."""
        try:
            name = str(self._read(unit_id, "device_name"))
            firmware: int | None = int(float(self._read(unit_id, "firmware")))
        except BatteryError as exc:
            log.info(Msg("model_not_readable", id=unit_id, error=str(exc), limit=FIRMWARE_MAX_POWER_W))
            state.failures, state.retry_at_s = 0, 0.0
            name, firmware = "?", None
        state.model = name
        state.model_limit_w = model_limit_w(name, firmware)
        if state.model_limit_w < self.max_power_w:
            log.warning(Msg("model_limit_below_config", id=unit_id, model=name, firmware=firmware,
                            limit=state.model_limit_w, max=self.max_power_w))

    def write_setpoint(self, unit_id: int, setpoint_w: float, reading: BatteryReading | None = None) -> int:
        """Command ``setpoint_w`` (+ discharge, - charge, 0 stop); write only what differs. Returns writes."""
        power_w = min(abs(round(setpoint_w)), self.max_power_w)
        if 0 < power_w < FIRMWARE_MIN_POWER_W:
            power_w = FIRMWARE_MIN_POWER_W  # the firmware ignores smaller ones: the nearest power it delivers
        if power_w == 0:
            mode, wanted = ForceMode.STOP, {"charge_power": 0, "discharge_power": 0}
        elif setpoint_w < 0:
            mode, wanted = ForceMode.CHARGE, {"charge_power": power_w}
        else:
            mode, wanted = ForceMode.DISCHARGE, {"discharge_power": power_w}
        held = self._unit(unit_id).held
        state = self._unit(unit_id)
        if reading is not None and not reading.rs485_control:
            state.forget_registers()
        before = self.writes_total
        due = mode is not ForceMode.STOP and self._clock() - state.asserted_at_s >= RS485_REASSERT_S
        if held["rs485_control"] != RS485_CONTROL_ON or due:
            if state.asserted and held["rs485_control"] != RS485_CONTROL_ON:
                log.warning(Msg("rs485_reassert", id=unit_id))
                self._quirk("rs485_reassert")
            self._write(unit_id, "rs485_control", RS485_CONTROL_ON)
            state.asserted, state.asserted_at_s = True, self._clock()
        # Power first, then the mode: a mode change starts at the new power at once.
        for name, value in wanted.items():
            if mode is not ForceMode.STOP and held[name] != value:
                self._write(unit_id, name, value)
        if held["force_mode"] != mode:
            self._write(unit_id, "force_mode", int(mode))
        other = {ForceMode.CHARGE: "discharge_power", ForceMode.DISCHARGE: "charge_power"}.get(mode)
        for name in ("charge_power", "discharge_power"):
            if (mode is ForceMode.STOP or name == other) and held[name] != 0:
                self._write(unit_id, name, 0)
        return self.writes_total - before

    def stop(self, unit_id: int) -> None:
        """Force mode stop and both power setpoints 0, written unconditionally."""
        self._unit(unit_id).retry_at_s = 0.0
        self._write(unit_id, "force_mode", int(ForceMode.STOP))
        self._write(unit_id, "charge_power", 0)
        self._write(unit_id, "discharge_power", 0)

    def release(self, unit_id: int) -> None:
        """Leave control for good: 43000 <- 1 (work mode "anti-feed"/auto), then 42000 <- 0x55BB.

        What evcc's "normal" does. The 43000 write is what reliably ends RS485 control (0x55BB alone did
        nothing on one v3, marstek-modbus.md section 3); it is an EEPROM register, written only here, once.
        """
        self._unit(unit_id).retry_at_s = 0.0
        self._write(unit_id, "work_mode", WORK_MODE_AUTO)
        self._write(unit_id, "rs485_control", RS485_CONTROL_OFF)
        self._unit(unit_id).asserted = False

    def read_device_name(self, unit_id: int) -> str:
        return str(self._read(unit_id, "device_name"))

    def read_unit_id(self, unit_id: int) -> int:
        """Read register 41100 on ``unit_id`` (answers only if a unit has that id)."""
        return int(self._read(unit_id, "unit_id"))

    def probe(self, unit_id: int) -> tuple[str, float]:
        """One unit's model name and SoC for the setup scan and ``--check``; raises BatteryError if silent."""
        self._units.pop(unit_id, None)  # no back-off for a deliberate probe
        try:
            name = self.read_device_name(unit_id)
            soc = float(self._read(unit_id, "soc"))
        finally:
            self._units.pop(unit_id, None)
        return name, soc

    def read_own_id(self, unit_id: int) -> int:
        """The ID the unit answering on ``unit_id`` holds in register 41100 (a v3 LAN port answers on every ID
        and says its own); raises BatteryError."""
        self._units.pop(unit_id, None)  # no back-off for a deliberate probe
        try:
            return int(self._read(unit_id, "unit_id"))
        finally:
            self._units.pop(unit_id, None)

    @contextlib.contextmanager
    def answer_timeout(self, timeout_s: float) -> Iterator[None]:
        """Use a client with a shorter answer timeout inside the block (a scan over empty IDs stays quick)."""
        if timeout_s >= self.timeout_s:
            yield
            return
        self.close()
        self._client = self._make_client(timeout_s)
        try:
            yield
        finally:
            self.close()
            self._client = self._make_client(self.timeout_s)

    def set_unit_id(self, new_id: int, *, current_id: int = 1) -> None:
        """Re-address the single unit answering on ``current_id`` (register 41100)."""
        if not 2 <= new_id <= 247:
            raise ValueError("new unit id must be 2..247")
        self._write(current_id, "unit_id", new_id)
        self._units.pop(current_id, None)
        self._units.pop(new_id, None)

    def forget(self, unit_id: int) -> None:
        """Drop cached state (after re-addressing or when a unit leaves the config)."""
        self._units.pop(unit_id, None)

    def close(self) -> None:
        if self._client.connected:
            self._closed_at_s = self._clock()
        self._client.close()


def _short(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.replace("Modbus Error: ", "").split("\n", 1)[0][:160]
