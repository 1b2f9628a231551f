"""A Venus E v3 / A / D on its own LAN port (marstek-modbus.md section 7): one client at a time with the slot
freed about a second later, malformed exception frames, the connection closed after an exception, every
unit ID answered. The simulator's v3 LAN gateway (a gateway whose only unit is v3) does all of it."""

from __future__ import annotations

import time

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from battery_client import MarstekGateway
from config_loader import UnitConfig, parse_config
from control import setup_commands
from control.devices import BatteryError
from control.status_store import CommandError
from simulator.world import Simulation, UnitSpec
from tests.helpers import wait_until
from tests.loop_rig import QUICK, Rig, fake_clock, fault_config, run_until


def _outcome(client: ModbusTcpClient) -> object:
    """"no answer" when the read raised (timeout, closed), else the response (data or a parsed exception)."""
    try:
        return client.read_holding_registers(42000, count=1, device_id=1)
    except (ModbusException, OSError):  # pymodbus lets a reset connection through as OSError
        return "no answer"


@pytest.fixture
def lan() -> Simulation:
    with Simulation(units=[UnitSpec(1, "v3", soc_pct=55.0)]) as sim:
        assert sim.gateway.lan
        yield sim


def test_malformed_exception_frame_is_repaired_and_answered_at_once(lan: Simulation) -> None:
    """MBAP length 4 with 3 bytes following: without the trace_packet repair pymodbus waits for its timeout
    and loses the code; with it the exception comes at once, code included."""
    gw = MarstekGateway("127.0.0.1", lan.modbus_port, register_set="v3", timeout_s=2.0)
    try:
        gw.read(1)
        lan.unit(1).fail_with_exception = 4
        started = time.monotonic()
        with pytest.raises(BatteryError, match="exception 4"):
            gw.read(1)
        assert time.monotonic() - started < 1.0
    finally:
        gw.close()


def test_plain_pymodbus_client_loses_the_malformed_exception(lan: Simulation) -> None:
    """The quirk is really in the simulator's frames: an uncorrected client gets no answer (the test above
    would pass without the repair otherwise)."""
    lan.unit(1).fail_with_exception = 4
    client = ModbusTcpClient("127.0.0.1", port=lan.modbus_port, timeout=0.5, retries=0)
    try:
        assert client.connect()
        assert _outcome(client) == "no answer"
    finally:
        client.close()


def test_no_resend_after_the_close_that_followed_an_exception(lan: Simulation) -> None:
    gw = MarstekGateway("127.0.0.1", lan.modbus_port, register_set="v3", timeout_s=1.0)
    try:
        gw.read(1)
        lan.unit(1).fail_with_exception = 3
        before = lan.gateway.requests_total
        with pytest.raises(BatteryError, match="exception 3"):
            gw.write_setpoint(1, 500)
        assert lan.gateway.requests_total - before == 1  # answered once, never re-sent
    finally:
        gw.close()


@pytest.mark.slow
def test_one_client_only_and_a_second_between_close_and_connect(lan: Simulation) -> None:
    """A second client is refused while one is connected; after an exception-close the gateway waits the
    second the port needs before it connects again, and then gets in at the first try."""
    gw = MarstekGateway("127.0.0.1", lan.modbus_port, register_set="v3", timeout_s=1.0)
    other = ModbusTcpClient("127.0.0.1", port=lan.modbus_port, timeout=0.5, retries=0)
    try:
        gw.read(1)
        other.connect()
        assert _outcome(other) == "no answer"  # closed by the device at once
        other.close()
        assert lan.gateway.connections_log[-1][0] == "refused"
        lan.unit(1).fail_with_exception = 4
        with pytest.raises(BatteryError):
            gw.read(1)
        lan.unit(1).fail_with_exception = None
        gw.forget(1)
        reading = gw.read(1)  # reconnects after the gap, first try
        assert reading.soc_pct == pytest.approx(55.0, abs=0.2)
        log = lan.gateway.connections_log
        opens = [t for kind, t in log if kind == "open"]
        closes = [t for kind, t in log if kind == "closed"]
        assert log[-1][0] == "open" and log[-2][0] == "closed", log
        assert opens[-1] - closes[-1] >= 0.95
    finally:
        other.close()
        gw.close()


@pytest.mark.slow
def test_every_unit_id_reaches_the_same_battery(lan: Simulation) -> None:
    gw = MarstekGateway("127.0.0.1", lan.modbus_port, register_set="v3", timeout_s=0.5)
    try:
        gw.write_setpoint(7, 400)  # "unit 7" is the one battery
        wait_until(lambda: lan.unit(1).power_w > 350, 10, "the battery discharges")
        assert gw.read_unit_id(2) == 1 and gw.read_unit_id(9) == 1
    finally:
        gw.close()


def v3_unit(port: int, unit_id: int) -> UnitConfig:
    return UnitConfig("127.0.0.1", port, unit_id, "v3", 2500, 50, f"Akku {unit_id}")


def test_scan_says_one_battery_answers_on_every_id(lan: Simulation) -> None:
    gw = MarstekGateway("127.0.0.1", lan.modbus_port, register_set="v3", timeout_s=0.5)
    try:
        result = setup_commands.scan(gw, f"127.0.0.1:{lan.modbus_port}", [v3_unit(lan.modbus_port, 1)],
                                     lambda: None, first_id=1, last_id=3)
    finally:
        gw.close()
    assert [f["id"] for f in result["found"]] == [1]  # one battery, not one per ID
    assert result["one_battery_on_every_id"] is True
    assert "v3" in result["message"] and ("IP" in result["message"])


def test_scan_knows_the_lan_port_by_register_41100_alone(lan: Simulation) -> None:
    """Asked on ID 2 and 3, the battery says it is ID 1 (register 41100): one battery on every ID, even when the
    unused ID 247 cannot be asked (here: it is configured)."""
    gw = MarstekGateway("127.0.0.1", lan.modbus_port, register_set="v3", timeout_s=0.5)
    try:
        assert gw.read_own_id(3) == 1
        result = setup_commands.scan(gw, f"127.0.0.1:{lan.modbus_port}",
                                     [v3_unit(lan.modbus_port, 1), v3_unit(lan.modbus_port, 247)],
                                     lambda: None, first_id=1, last_id=3)
    finally:
        gw.close()
    assert [f["id"] for f in result["found"]] == [1] and result["one_battery_on_every_id"] is True


@pytest.mark.slow
def test_scan_behind_an_rs485_gateway_finds_separate_batteries() -> None:
    with Simulation(units=[UnitSpec(1, "v3"), UnitSpec(2, "v3")]) as sim:
        assert not sim.gateway.lan
        gw = MarstekGateway("127.0.0.1", sim.modbus_port, register_set="v3", timeout_s=0.5)
        try:
            result = setup_commands.scan(gw, f"127.0.0.1:{sim.modbus_port}", [v3_unit(sim.modbus_port, 1)],
                                         lambda: None, first_id=1, last_id=3)
        finally:
            gw.close()
    assert [f["id"] for f in result["found"]] == [1, 2]
    assert result["one_battery_on_every_id"] is False and "message" not in result


def test_two_ids_on_one_v3_lan_port_drive_the_battery_once(rig: Rig) -> None:
    """``akku_ids: [1, 2]`` on one v3 LAN host would drive the same battery twice. The config refuses that
    unless ``rs485_gateway`` is claimed; claimed wrongly (a LAN port, not a gateway), the run-time check still
    refuses the second ID with the explanation (offline, in the errors), the first one regulates."""
    sim = rig.simulation(units=[UnitSpec(1, "v3", soc_pct=60.0)], **QUICK)
    assert sim.gateway.lan
    sim.set_load_w(900.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1, 2], register_set="v3", rs485_gateway=True), clock)
    run_until(loop, clock, lambda: abs(sim.true_grid_power_w() - 20.0) < 60, 40, "regulated by one ID",
              step_s=1.0)
    assert loop.unit(1).online and not loop.unit(2).online
    assert "v3" in loop.unit(2).error and "247" not in loop.unit(2).error
    assert any("battery.akku_ids" in e for e in loop.store.status_json()["errors"])


def test_demo_add_to_config_refuses_a_second_id_on_a_v3_lan_host() -> None:
    """The demo has no file to validate; "add to config" still refuses what the file's check would refuse."""
    data = {"shelly": {"ip": "127.0.0.1"}, "battery": {"units": [
        {"ip": "127.0.0.1:1502", "register_set": "v3"}, {"ip": "127.0.0.1:1503", "register_set": "v3",
                                                          "rs485_gateway": True}]}}
    cfg = parse_config(data)
    with pytest.raises(CommandError) as refused:
        setup_commands.add_to_config(cfg, None, gateway="127.0.0.1:1502", battery_id=2, answered={1, 2})
    assert refused.value.status == 409
    message = str(refused.value.message)
    assert "battery.units[2]: several unit IDs (1, 2) on the v3 host 127.0.0.1:1502" in message
    assert "answers on every unit ID" in message and "rs485_gateway: true" in message
    new_cfg, result = setup_commands.add_to_config(cfg, None, gateway="127.0.0.1:1503", battery_id=2,
                                                   answered={2})
    assert result["saved"] is False and "127.0.0.1:1503/2" in result["units"]
    assert new_cfg.battery.units[-1].rs485_gateway is True
