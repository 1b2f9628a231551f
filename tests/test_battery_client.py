"""battery_client against the simulator's Modbus TCP server on 127.0.0.1 (real frames, real sockets)."""

from __future__ import annotations

import itertools
import socket
import time

import pytest

from battery_client import MarstekGateway
from control.devices import BatteryError
from control.marstek_registers import REGISTER_SETS, RS485_CONTROL_ON, Kind, Register
from simulator.world import Simulation, UnitSpec
from tests.helpers import wait_until


@pytest.fixture
def sim():
    with Simulation(units=[UnitSpec(1, "v2", soc_pct=40.0), UnitSpec(2, "v2", soc_pct=80.0)]) as s:
        yield s


@pytest.fixture
def gateway(sim):
    gw = MarstekGateway("127.0.0.1", sim.modbus_port, register_set="v2", timeout_s=0.5)
    yield gw
    gw.close()


# ---------------------------------------------------------------------------- the register table
@pytest.mark.parametrize("name", sorted(REGISTER_SETS))
def test_register_table_is_consistent(name):
    table = REGISTER_SETS[name]
    spans = sorted((r.address, r.address + r.count) for r in table.values())
    for (a0, a1), (b0, _) in itertools.pairwise(spans):
        assert a1 <= b0, f"{name}: overlapping registers at {a0} and {b0}"
    for key, reg in table.items():
        assert 0 < reg.count <= 32, key  # v3 does not answer reads over 32 registers
        if reg.writable:
            assert 0 < reg.max_value <= 2500 or reg.address == 42000, key
    needed = {"soc", "ac_power", "rs485_control", "force_mode", "charge_power", "discharge_power", "unit_id"}
    assert needed <= set(table)
    # EEPROM: read (the firmware's own limits), never written, never a control variable.
    assert {r.address for r in table.values() if not r.writable} >= {44002, 44003}


@pytest.mark.parametrize(
    ("reg", "raw", "value"),
    [
        (Register(32202, Kind.S32), [0xFFFF, 0xFC18], -1000),
        (Register(32202, Kind.S32), [0x0000, 0x03E8], 1000),
        (Register(30006, Kind.S16), [0xFC18], -1000),
        (Register(34002, Kind.U16, scale=0.1), [555], 55.5),
        (Register(31000, Kind.STR, string_regs=3), [0x5645, 0x4E55, 0x5300], "VENUS"),
    ],
)
def test_decode(reg, raw, value):
    assert reg.decode(raw) == pytest.approx(value) if isinstance(value, float) else reg.decode(raw) == value


def test_decode_rejects_a_short_answer():
    with pytest.raises(BatteryError):
        Register(32202, Kind.S32).decode([1])


# ---------------------------------------------------------------------------- against the simulator
@pytest.mark.parametrize("register_set", ["v2", "v3"])
def test_reads_soc_power_and_control_state(register_set):
    with Simulation(units=[UnitSpec(1, register_set, soc_pct=63.0)]) as sim:
        gw = MarstekGateway("127.0.0.1", sim.modbus_port, register_set=register_set, timeout_s=0.5)
        try:
            reading = gw.read(1)
            assert reading.soc_pct == pytest.approx(63.0, abs=1.0)
            assert reading.ac_power_w == -sim.unit(1).standby_w  # resting: the standby draw
            assert reading.rs485_control is False
            assert gw.probe(1)[0]  # a model name
        finally:
            gw.close()


@pytest.mark.slow
def test_discharge_then_charge_then_stop_write_the_documented_registers(sim, gateway):
    unit = sim.unit(1)
    writes = gateway.write_setpoint(1, 800, gateway.read(1))
    # RS485 control reads off: every control register is unknown -> 42000, 42021, 42010 and 42020 <- 0.
    assert writes == 4
    assert [a for a, _ in unit.write_log[-4:]] == [42000, 42021, 42010, 42020]
    assert unit.rs485_control and unit.force_mode == 2 and unit.discharge_power_w == 800
    wait_until(lambda: unit.power_w > 760, 10.0, "battery discharges")
    assert gateway.read(1).ac_power_w > 700  # + discharge

    gateway.write_setpoint(1, -600, gateway.read(1))
    assert unit.force_mode == 1 and unit.charge_power_w == 600 and unit.discharge_power_w == 0
    wait_until(lambda: unit.power_w < -560, 10.0, "battery charges")
    assert gateway.read(1).ac_power_w < -500  # - charge

    gateway.stop(1)
    assert (unit.force_mode, unit.charge_power_w, unit.discharge_power_w) == (0, 0, 0)


def test_unchanged_setpoint_is_not_written_again(sim, gateway):
    gateway.write_setpoint(1, 500, gateway.read(1))
    assert gateway.write_setpoint(1, 500, gateway.read(1)) == 0
    assert gateway.write_setpoint(1, 520, gateway.read(1)) == 1  # only 42021


def test_setpoint_is_capped_at_max_power(sim):
    gw = MarstekGateway("127.0.0.1", sim.modbus_port, timeout_s=0.5, max_power_w=1200)
    try:
        gw.write_setpoint(1, 5000, None)
        assert sim.unit(1).discharge_power_w == 1200
    finally:
        gw.close()


def test_rs485_control_is_reasserted_when_the_read_back_shows_it_dropped(sim, gateway):
    unit = sim.unit(1)
    gateway.write_setpoint(1, 700, gateway.read(1))
    unit.drop_rs485()  # firmware leaves RS485 mode silently
    reading = gateway.read(1)
    assert reading.rs485_control is False
    gateway.write_setpoint(1, 700, reading)
    assert unit.rs485_control is True
    # The drop reset force mode and setpoints (firmware default): all of them are written again.
    assert (unit.force_mode, unit.discharge_power_w) == (2, 700)
    assert (42000, RS485_CONTROL_ON) in list(unit.write_log)[-4:]


def test_pacing_between_frames(sim):
    gw = MarstekGateway("127.0.0.1", sim.modbus_port, timeout_s=0.5, pacing_s=0.1)
    try:
        gw.read(1)  # warm up the connection
        started = time.monotonic()
        gw.read(1)  # 2 frames (power, 42000) after the previous frame
        assert time.monotonic() - started >= 0.2 - 0.01
    finally:
        gw.close()


@pytest.mark.slow
def test_one_silent_unit_does_not_block_the_others(sim, gateway):
    sim.unit(2).silent = True
    with pytest.raises(BatteryError):
        gateway.read(2)
    # Immediately after, unit 2 is in back-off (no waiting on it) and unit 1 answers.
    started = time.monotonic()
    with pytest.raises(BatteryError, match="next try"):
        gateway.read(2)
    assert gateway.read(1).soc_pct == pytest.approx(40.0, abs=1.0)
    assert time.monotonic() - started < 0.5 + 0.4
    sim.unit(2).silent = False
    wait_until(lambda: _answers(gateway, 2), 15.0, "unit 2 rejoins after its back-off")


def _answers(gw: MarstekGateway, unit_id: int) -> bool:
    try:
        gw.read(unit_id)
    except BatteryError:
        return False
    return True


def test_unknown_unit_id_does_not_answer(sim, gateway):
    with pytest.raises(BatteryError):
        gateway.read(9)


def test_exception_response_is_a_battery_error(sim):
    # A v3 register map against a v2 unit: the unit answers "illegal address".
    gw = MarstekGateway("127.0.0.1", sim.modbus_port, register_set="v3", timeout_s=0.5)
    try:
        with pytest.raises(BatteryError, match="exception"):
            gw.read(1)
    finally:
        gw.close()


def test_gateway_unreachable_fails_fast_with_back_off():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = MarstekGateway("127.0.0.1", port, timeout_s=0.5)
    try:
        with pytest.raises(BatteryError, match="unreachable"):
            gw.read(1)
        with pytest.raises(BatteryError, match="next attempt"):
            gw.read(1)
    finally:
        gw.close()


def test_set_unit_id_readdresses_and_verifies(sim, gateway):
    gateway.set_unit_id(3)
    assert gateway.read_unit_id(3) == 3
    with pytest.raises(BatteryError), gateway.answer_timeout(0.3):
        gateway.probe(1)
    with pytest.raises(ValueError):
        gateway.set_unit_id(248)


@pytest.mark.slow
def test_setpoints_below_50_w_are_raised_to_what_the_firmware_acts_on(sim, gateway):
    """The firmware ignores forced powers below ~50 W (the simulator too): a 30 W setpoint becomes 50 W."""
    unit = sim.unit(1)
    write = unit.write_register  # the simulator on its own first: 30 W is acknowledged and ignored
    for address, value in ((42000, 0x55AA), (42021, 30), (42010, 2)):
        assert write(address, value) is None
    assert unit.commanded_w == 0.0
    gateway.write_setpoint(1, 30, gateway.read(1))
    assert unit.discharge_power_w == 50
    wait_until(lambda: unit.power_w > 45, 10.0, "the battery delivers 50 W")
