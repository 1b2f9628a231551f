"""Tests for the simulator package: physics on explicit time, the Modbus units and the meter emulators on loopback.

Wire tests use real sockets on 127.0.0.1 with ephemeral ports and poll with a deadline (no fixed sleeps).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException
from requests.auth import HTTPDigestAuth

from config_loader import parse_config
from simulator.marstek import SimGateway, SimUnit
from simulator.meters import EcoTrackerEmulator, MeterSnapshot, ShellyEmulator
from simulator.world import (
    EFFICIENCY_CHARGE,
    EFFICIENCY_DISCHARGE,
    BatteryPlant,
    HouseModel,
    MeterModel,
    PlantParams,
    Simulation,
    UnitSpec,
    efficiency,
)
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


# ============================================================================ physics (explicit time)


def test_efficiency_interpolates_and_is_flat_outside_the_table() -> None:
    assert efficiency(125.0, EFFICIENCY_DISCHARGE) == pytest.approx(0.738)
    assert efficiency(-1000.0, EFFICIENCY_CHARGE) == pytest.approx(0.955)
    assert efficiency(187.5, EFFICIENCY_DISCHARGE) == pytest.approx((0.738 + 0.856) / 2)
    assert efficiency(10.0, EFFICIENCY_CHARGE) == pytest.approx(0.772)
    assert efficiency(5000.0, EFFICIENCY_DISCHARGE) == pytest.approx(0.893)


# The benchmark protocol's plant (zero-feed-control.md section 6): no overshoot, no standby draw.
PROTOCOL = {"overshoot": 0.0, "standby_w": 0.0}


def test_dead_time_then_first_order_lag() -> None:
    plant = BatteryPlant(PlantParams(dead_time_s=0.5, tau_s=1.0, **PROTOCOL), soc_pct=50.0)
    plant.command(1000.0, 0.0)
    plant.advance(0.49)
    assert plant.power_w == 0.0
    plant.advance(1.5)  # one tau after the dead time
    assert plant.power_w == pytest.approx(1000.0 * (1 - math.exp(-1)), abs=0.5)
    plant.advance(10.0)
    assert plant.power_w == pytest.approx(1000.0, abs=1.0)


def test_commands_within_the_dead_time_take_effect_in_order() -> None:
    plant = BatteryPlant(PlantParams(dead_time_s=0.5, tau_s=0.0))
    plant.command(-800.0, 0.0)
    plant.command(300.0, 0.2)
    plant.advance(0.6)
    assert plant.power_w == pytest.approx(-800.0)
    plant.advance(0.8)
    assert plant.power_w == pytest.approx(300.0)


def test_power_is_clamped_to_the_unit_limit() -> None:
    plant = BatteryPlant(PlantParams(dead_time_s=0.0, tau_s=0.0, max_power_w=1200.0))
    plant.command(-3000.0, 0.0)
    plant.advance(1.0)
    assert plant.power_w == pytest.approx(-1200.0)


@pytest.mark.parametrize(("power_w", "eta"), [(1000.0, 0.912), (-1000.0, 0.955)])
def test_soc_integrates_dc_energy_through_the_efficiency_curve(power_w: float, eta: float) -> None:
    params = PlantParams(dead_time_s=0.0, tau_s=0.0)
    plant = BatteryPlant(params, soc_pct=50.0)
    plant.command(power_w, 0.0)
    plant.advance(3600.0)
    dc_wh = 1000.0 / eta if power_w > 0 else 1000.0 * eta
    expected = 50.0 - math.copysign(dc_wh, power_w) / params.capacity_wh * 100.0
    assert plant.soc_pct == pytest.approx(expected, abs=1e-6)
    assert plant.conversion_loss_wh == pytest.approx(abs(dc_wh - 1000.0), abs=1e-6)
    if power_w > 0:
        assert (plant.discharged_wh, plant.charged_wh) == (pytest.approx(1000.0), 0.0)
    else:
        assert (plant.charged_wh, plant.discharged_wh) == (pytest.approx(1000.0), 0.0)


def test_soc_with_the_lag_counts_only_the_energy_delivered() -> None:
    plant = BatteryPlant(PlantParams(dead_time_s=0.5, tau_s=1.0, **PROTOCOL), soc_pct=50.0)
    plant.command(1000.0, 0.0)
    plant.advance(20.5)
    # 20 s after the dead time, a first-order lag has delivered 1000 W · (20 s − tau) (to e^-20).
    assert plant.discharged_wh == pytest.approx(1000.0 * 19.0 / 3600.0, rel=1e-6)


@pytest.mark.parametrize("step_w", [1000.0, -2000.0])
def test_a_new_setpoint_is_overshot_by_5_to_10_percent_for_a_few_seconds(step_w: float) -> None:
    """Marstek units pass a new setpoint by 5-10 % for a few seconds (issue 9); the energy stays exact."""
    params = PlantParams(dead_time_s=0.5, tau_s=1.0)
    plant = BatteryPlant(params, soc_pct=50.0)
    plant.command(step_w, 0.0)
    trace = []
    for i in range(1, 301):
        plant.advance(i * 0.1)
        trace.append((i * 0.1, plant.power_w))
    peak_s, peak_w = max(trace, key=lambda tp: tp[1] / step_w)
    assert 1.05 <= peak_w / step_w <= 1.10
    assert 2.0 <= peak_s <= 6.0
    assert all(abs(w / step_w - 1.0) <= 0.02 for t, w in trace if t >= 9.0)  # gone after a few seconds
    # Energy: the lag's deficit (step · tau) plus the overshoot's surplus (gain · step · tau_o), to e^-14.
    expected_wh = abs(step_w) * (29.5 - params.tau_s + params.overshoot * params.overshoot_tau_s) / 3600.0
    assert (plant.discharged_wh if step_w > 0 else plant.charged_wh) == pytest.approx(expected_wh, rel=1e-3)


def test_stopping_ramps_down_without_overshooting_into_the_other_direction() -> None:
    plant = BatteryPlant(PlantParams(dead_time_s=0.0, tau_s=1.0), soc_pct=50.0)
    plant.command(1500.0, 0.0)
    plant.advance(20.0)
    plant.command(0.0, 20.0)
    powers = []
    for i in range(1, 200):
        plant.advance(20.0 + i * 0.1)
        powers.append(plant.power_w)
    assert min(powers) == pytest.approx(-plant.params.standby_w)  # never charging beyond the standby draw
    assert powers[-1] == -plant.params.standby_w


def test_a_resting_unit_draws_its_standby_power_from_the_house_without_charging() -> None:
    plant = BatteryPlant(PlantParams(standby_w=12.0), soc_pct=40.0)
    plant.advance(3600.0)
    assert plant.power_w == -12.0  # as the AC power register reads it: a small draw
    assert plant.standby_wh == pytest.approx(12.0)
    assert plant.soc_pct == 40.0 and plant.charged_wh == 0.0
    plant.command(500.0, 3600.0)
    plant.advance(3700.0)
    assert plant.power_w == pytest.approx(500.0, abs=1.0)  # running: the draw is part of the efficiency
    assert plant.standby_wh == pytest.approx(12.0 + 12.0 * 0.5 / 3600.0)  # only during the dead time


def test_bms_stops_discharge_at_min_soc_but_allows_charging() -> None:
    plant = BatteryPlant(PlantParams(dead_time_s=0.0, tau_s=0.0), soc_pct=11.2)
    plant.command(2500.0, 0.0)
    plant.advance(600.0)
    assert plant.resting and plant.power_w == -plant.params.standby_w  # cut by the BMS: resting, standby draw
    assert plant.soc_pct == pytest.approx(11.0, abs=1e-6)
    plant.command(-500.0, 600.0)
    plant.advance(660.0)
    assert plant.power_w == pytest.approx(-500.0)
    assert plant.soc_pct > 11.0


def test_bms_stops_charge_at_max_soc() -> None:
    plant = BatteryPlant(PlantParams(dead_time_s=0.0, tau_s=0.0), soc_pct=99.9)
    plant.command(-2500.0, 0.0)
    plant.advance(600.0)
    assert plant.resting and plant.power_w == -plant.params.standby_w
    assert plant.soc_pct == pytest.approx(100.0)
    plant.command(400.0, 600.0)
    plant.advance(601.0)
    assert plant.power_w == pytest.approx(400.0)


def test_delivers_nothing_keeps_power_and_soc_at_rest() -> None:
    plant = BatteryPlant(PlantParams(), soc_pct=60.0)
    plant.delivers_nothing = True
    plant.command(1500.0, 0.0)
    plant.advance(60.0)
    assert plant.power_w == -plant.params.standby_w
    assert plant.soc_pct == 60.0
    plant.delivers_nothing = False
    plant.advance(80.0)
    assert plant.power_w == pytest.approx(1500.0, abs=1.0)


def test_meter_samples_and_holds_with_latency_and_resolution() -> None:
    meter = MeterModel(cadence_s=1.0, latency_s=0.3, noise_w=0.0, resolution_w=5.0)
    assert meter.read(0.0) is None
    meter.observe(0.0, 101.0)  # first sample: visible at once (primed)
    assert meter.read(0.0) == (100.0, 0.0)
    assert meter.observe(0.5, 999.0) is False  # same tick: ignored
    assert meter.observe(1.0, 512.0) is True
    assert meter.read(1.2) == (100.0, 0.0)  # the new sample is not 0.3 s old yet
    assert meter.read(1.3) == (510.0, 1.0)
    assert meter.read(1.99) == (510.0, 1.0)


def test_meter_value_samples_the_function_at_cadence_ticks() -> None:
    meter = MeterModel(cadence_s=2.0, latency_s=0.5, noise_w=0.0)
    seen: list[float] = []

    def grid(t: float) -> float:
        seen.append(t)
        return 10.0 * t

    assert meter.value(4.4, grid) == (20.0, 2.0)  # the t=4 sample is still in flight
    assert meter.value(4.5, grid) == (40.0, 4.0)
    assert seen == [0.0, 2.0, 4.0]


def test_meter_noise_is_gaussian_and_seeded() -> None:
    a = MeterModel(noise_w=10.0, seed=7)
    b = MeterModel(noise_w=10.0, seed=7)
    values_a = [a.value(float(t), lambda _t: 500.0)[0] for t in range(400)]
    values_b = [b.value(float(t), lambda _t: 500.0)[0] for t in range(400)]
    assert values_a == values_b
    mean = sum(values_a) / len(values_a)
    std = math.sqrt(sum((v - mean) ** 2 for v in values_a) / len(values_a))
    assert abs(mean - 500.0) < 2.5 and 7.0 < std < 13.0
    assert all(v == round(v) for v in values_a)


def test_house_overrides_and_lively_deterministic_demo() -> None:
    house = HouseModel(base_load_w=300.0, pv_peak_w=0.0)
    assert (house.load_w(123.0), house.pv_w(123.0)) == (300.0, 0.0)
    house.set_load_w(900.0)
    house.set_pv_w(250.0)
    assert (house.load_w(5.0), house.pv_w(5.0)) == (900.0, 250.0)

    demo = HouseModel(seed=3, demo=True)
    again = HouseModel(seed=3, demo=True)
    loads = [demo.load_w(float(t)) for t in range(600)]
    assert loads == [again.load_w(float(t)) for t in range(600)]
    assert loads != [HouseModel(seed=4, demo=True).load_w(float(t)) for t in range(600)]
    assert min(loads) >= 50.0 and max(loads) > 1500.0  # appliances switch on
    # Big steps (> 800 W) every 20–60 s, so something visible happens often.
    steps = [t for t in range(1, 600) if abs(loads[t] - loads[t - 1]) > 800.0]
    assert len(steps) >= 8
    assert max(b - a for a, b in zip([0, *steps], [*steps, 600], strict=True)) < 200
    pv = [demo.pv_w(float(t)) for t in range(600)]
    assert min(pv) >= 0.0 and max(pv) > 1500.0 and max(pv) - min(pv) > 1000.0


# ============================================================================ wire side: fixtures

FAST_PLANT = PlantParams(dead_time_s=0.0, tau_s=0.02)


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulation]]:
    """Start simulations with a fast, noiseless meter and stop them afterwards."""
    started: list[Simulation] = []

    def make(**kwargs: Any) -> Simulation:
        kwargs.setdefault("meter_cadence_s", 0.05)
        kwargs.setdefault("meter_latency_s", 0.02)
        kwargs.setdefault("meter_noise_w", 0.0)
        kwargs.setdefault("plant", FAST_PLANT)
        # The meter tests compute exact grid values: their one resting battery draws no standby power
        # (the standby draw is tested on the registers, with the ``bus`` fixture).
        kwargs.setdefault("units", [UnitSpec(1, standby_w=0.0)])
        sim = Simulation(**kwargs)
        started.append(sim)
        sim.start()
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def bus(make_sim: Callable[..., Simulation]) -> Simulation:
    """Two units: id 1 on register set v2, id 2 on v3."""
    return make_sim(units=[UnitSpec(1, "v2", soc_pct=42.4), UnitSpec(2, "v3", soc_pct=67.8)])


@pytest.fixture
def client(bus: Simulation) -> Iterator[ModbusTcpClient]:
    c = ModbusTcpClient("127.0.0.1", port=bus.modbus_port, timeout=0.3, retries=0)
    assert c.connect()
    yield c
    c.close()


def s32(registers: list[int]) -> int:
    value = (registers[0] << 16) | registers[1]
    return value - (1 << 32) if value & 0x80000000 else value


def s16(register: int) -> int:
    return register - (1 << 16) if register & 0x8000 else register


def read(client: ModbusTcpClient, address: int, count: int, unit: int) -> list[int]:
    rr = client.read_holding_registers(address, count=count, device_id=unit)
    assert not rr.isError(), rr
    return list(rr.registers)


def write(client: ModbusTcpClient, address: int, value: int, unit: int) -> None:
    rr = client.write_register(address, value, device_id=unit)
    assert not rr.isError(), rr


def command(client: ModbusTcpClient, unit: int, power_w: int) -> None:
    """Take RS485 control and force a power (+ discharge, − charge), as the project's client does."""
    write(client, 42000, 0x55AA, unit)
    if power_w < 0:
        write(client, 42020, -power_w, unit)
        write(client, 42010, 1, unit)
    else:
        write(client, 42021, power_w, unit)
        write(client, 42010, 2 if power_w else 0, unit)


# ============================================================================ Modbus


def test_soc_scaling_v2_and_v3(bus: Simulation, client: ModbusTcpClient) -> None:
    assert read(client, 32104, 1, 1) == [42]  # v2: integer %
    assert read(client, 34002, 1, 2) == [678]  # v3: 0.1 %
    assert read(client, 32104, 1, 2) == [68]  # v3 alias, integer %
    bus.unit(2).set_soc(12.34)
    assert read(client, 34002, 1, 2) == [123]


def test_device_names_and_unit_id(client: ModbusTcpClient) -> None:
    def text(regs: list[int]) -> str:
        return b"".join(r.to_bytes(2, "big") for r in regs).rstrip(b"\0").decode()

    assert text(read(client, 31000, 10, 1)) == "VNSE-2"
    assert text(read(client, 31000, 10, 2)) == "VNSE3-0"
    assert read(client, 41100, 1, 2) == [2]
    assert read(client, 31101, 1, 1) == [153]


def test_ac_power_signs_and_words_v2_and_v3(bus: Simulation, client: ModbusTcpClient) -> None:
    command(client, 1, -800)  # charge
    command(client, 2, 1200)  # discharge
    wait_until(lambda: abs(bus.unit(1).power_w + 800) < 0.01 and abs(bus.unit(2).power_w - 1200) < 0.01)
    assert s32(read(client, 32202, 2, 1)) == -800
    assert read(client, 32202, 2, 1) == [0xFFFF, 0x10000 - 800]  # high word first
    assert s16(read(client, 30006, 1, 2)[0]) == 1200
    assert s32(read(client, 32202, 2, 2)) == 1200
    dc = s16(read(client, 30001, 1, 2)[0])  # v3 DC power: + charging, so negative while discharging
    assert dc == round(-1200 / efficiency(1200, EFFICIENCY_DISCHARGE))
    assert read(client, 35100, 1, 1) == [2] and read(client, 35100, 1, 2) == [3]  # charge / discharge
    assert bus.true_grid_power_w() == pytest.approx(300.0 + 800.0 - 1200.0, abs=2.0)


def at_rest(unit: SimUnit) -> bool:
    """Resting: nothing commanded reaches the plant, only the standby draw (read as a small negative power)."""
    return unit.resting and unit.power_w == pytest.approx(-unit.standby_w, abs=0.01)


def test_rs485_gate_setpoints_acked_but_ignored_until_0x55aa(bus: Simulation, client: ModbusTcpClient) -> None:
    unit = bus.unit(1)
    write(client, 42021, 1000, 1)
    write(client, 42010, 2, 1)
    assert read(client, 42000, 1, 1) == [0x55BB]
    assert (unit.force_mode, unit.discharge_power_w, unit.rs485_control) == (2, 1000, False)
    wait_for_sim_time(bus, 0.3)
    assert at_rest(unit)

    write(client, 42000, 0x55AA, 1)
    assert read(client, 42000, 1, 1) == [0x55AA]
    wait_until(lambda: abs(unit.power_w - 1000.0) < 1.0)
    assert read(client, 43000, 1, 1) == [1]

    unit.drop_rs485()  # firmware leaves RS485 mode silently and resets the setpoints (default)
    assert read(client, 42000, 1, 1) == [0x55BB]
    assert read(client, 42010, 1, 1) == [0] and read(client, 42021, 1, 1) == [0]
    wait_until(lambda: at_rest(unit))
    write(client, 42000, 0x55AA, 1)
    write(client, 42021, 1000, 1)
    write(client, 42010, 2, 1)
    wait_until(lambda: unit.power_w > 999.0)

    unit.drop_clears_setpoints = False  # the other behaviour: setpoints stay, but are ignored
    unit.drop_rs485()
    assert read(client, 42021, 1, 1) == [1000]
    wait_until(lambda: at_rest(unit))

    write(client, 42000, 0x55AA, 1)
    wait_until(lambda: unit.power_w > 999.0)
    write(client, 43000, 0, 1)  # any work-mode write ends RS485 control
    assert not unit.rs485_control
    wait_until(lambda: at_rest(unit))
    assert (42021, 1000) in unit.write_log and unit.write_log[-1] == (43000, 0)


def test_force_mode_charge_discharge_stop(bus: Simulation, client: ModbusTcpClient) -> None:
    unit = bus.unit(2)
    command(client, 2, -1500)
    wait_until(lambda: abs(unit.power_w + 1500.0) < 1.0)
    write(client, 42010, 0, 2)
    wait_until(lambda: at_rest(unit))
    assert unit.write_log[-4:] == [(42000, 0x55AA), (42020, 1500), (42010, 1), (42010, 0)]


def test_setpoint_above_2500_is_an_illegal_value(client: ModbusTcpClient) -> None:
    rr = client.write_register(42020, 2501, device_id=1)
    assert rr.isError() and rr.exception_code == 3
    rr = client.write_register(42021, 3000, device_id=2)
    assert rr.isError() and rr.exception_code == 3
    rr = client.write_register(42000, 0, device_id=2)
    assert rr.isError() and rr.exception_code == 3
    assert read(client, 42020, 1, 1) == [0]


def test_unmapped_read_is_an_illegal_address(client: ModbusTcpClient) -> None:
    rr = client.read_holding_registers(32110, count=1, device_id=1)
    assert rr.isError() and rr.exception_code == 2
    rr = client.read_holding_registers(32104, count=2, device_id=2)  # v3: 32105 exists, 32106 not
    assert not rr.isError()
    rr = client.read_holding_registers(32104, count=3, device_id=2)
    assert rr.isError() and rr.exception_code == 2


def assert_no_answer(client: ModbusTcpClient, address: int, count: int, unit: int) -> None:
    start = time.monotonic()
    try:
        rr = client.read_holding_registers(address, count=count, device_id=unit)
    except ModbusException:
        pass
    else:
        raise AssertionError(f"unit {unit} answered: {rr}")
    assert time.monotonic() - start >= 0.25  # a timeout, not an exception response


def test_unknown_id_gets_no_answer_at_all(client: ModbusTcpClient) -> None:
    assert_no_answer(client, 32104, 1, 9)
    assert read(client, 32104, 1, 1) == [42]  # the connection still works for the others


def test_silent_unit_and_v3_large_read_get_no_answer(bus: Simulation, client: ModbusTcpClient) -> None:
    bus.unit(1).silent = True
    assert_no_answer(client, 32104, 1, 1)
    assert read(client, 34002, 1, 2) == [678]
    bus.unit(1).silent = False
    assert read(client, 32104, 1, 1) == [42]
    assert_no_answer(client, 34018, 33, 2)  # v3: more than 32 registers
    assert len(read(client, 34018, 16, 2)) == 16


def test_41100_readdresses_the_unit_at_once(bus: Simulation, client: ModbusTcpClient) -> None:
    rr = client.write_register(41100, 7, device_id=1)
    assert not rr.isError() and rr.registers == [7]
    assert read(client, 41100, 1, 7) == [7]
    assert bus.unit(7).register_set == "v2"
    assert_no_answer(client, 41100, 1, 1)
    with pytest.raises(KeyError):
        bus.unit(1)


def test_fc16_writes_are_accepted(bus: Simulation, client: ModbusTcpClient) -> None:
    rr = client.write_registers(42020, [600, 700], device_id=1)
    assert not rr.isError()
    assert (bus.unit(1).charge_power_w, bus.unit(1).discharge_power_w) == (600, 700)


def test_delivers_nothing_acks_but_stays_at_zero(bus: Simulation, client: ModbusTcpClient) -> None:
    unit = bus.unit(1)
    unit.delivers_nothing = True
    command(client, 1, 900)
    wait_for_sim_time(bus, 0.3)
    assert unit.rs485_control and unit.force_mode == 2
    assert at_rest(unit) and s32(read(client, 32202, 2, 1)) == -unit.standby_w


def test_added_unit_answers(bus: Simulation, client: ModbusTcpClient) -> None:
    bus.add_unit(UnitSpec(3, "v3", soc_pct=20.0, max_power_w=1200.0))
    assert read(client, 34002, 1, 3) == [200]
    command(client, 3, 2000)
    wait_until(lambda: abs(bus.unit(3).power_w - 1200.0) < 1.0)  # clamped by the model limit


def test_slow_unit_answers_late_and_applies_the_request_at_once(bus: Simulation, client: ModbusTcpClient) -> None:
    bus.unit(1).slow_s = 0.6  # the client's timeout is 0.3 s
    with pytest.raises(ModbusException):
        client.read_holding_registers(32104, count=1, device_id=1)
    client.close()  # a late answer may still be on its way on that connection
    with pytest.raises(ModbusException):
        client.write_register(42021, 700, device_id=1)
    client.close()
    assert bus.unit(1).discharge_power_w == 700  # applied at once, only the answer is late
    assert read(client, 34002, 1, 2) == [678]  # the other unit answers at normal speed meanwhile
    with ModbusTcpClient("127.0.0.1", port=bus.modbus_port, timeout=2.0, retries=0) as patient:
        assert read(patient, 32104, 1, 1) == [42]  # a client that waits long enough gets the answer
        write(patient, 42020, 300, 1)
    bus.unit(1).slow_s = 0.0
    assert read(client, 32104, 1, 1) == [42]


def test_slow_unit_does_not_delay_stop(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim(units=[UnitSpec(1)])
    sim.unit(1).slow_s = 30.0
    with ModbusTcpClient("127.0.0.1", port=sim.modbus_port, timeout=0.2, retries=0) as c, \
            pytest.raises(ModbusException):
        c.read_holding_registers(32104, count=1, device_id=1)
    start = time.monotonic()
    sim.stop()  # the pending answer must not hold the server
    assert time.monotonic() - start < 10.0  # far below the 30 s answer delay


@pytest.mark.parametrize("code", [4, 6])
def test_fail_with_exception_answers_every_request_with_that_code(
    bus: Simulation, client: ModbusTcpClient, code: int
) -> None:
    unit = bus.unit(1)
    unit.fail_with_exception = code
    rr = client.read_holding_registers(32104, count=1, device_id=1)
    assert rr.isError() and rr.exception_code == code
    rr = client.write_register(42021, 500, device_id=1)
    assert rr.isError() and rr.exception_code == code
    assert unit.discharge_power_w == 0  # nothing applied
    assert read(client, 34002, 1, 2) == [678]  # the other unit is unaffected
    unit.fail_with_exception = None
    assert read(client, 32104, 1, 1) == [42]


def test_drop_modbus_connections_closes_them_and_keeps_listening(bus: Simulation, client: ModbusTcpClient) -> None:
    assert read(client, 32104, 1, 1) == [42]
    assert bus.drop_modbus_connections() == 1
    with pytest.raises(ModbusException):  # the client finds its connection closed
        client.read_holding_registers(32104, count=1, device_id=1)
    client.close()
    assert read(client, 32104, 1, 1) == [42]  # a new connection is served
    assert bus.drop_modbus_connections() == 1


def raw_read_frame(tid: int, unit: int, address: int, count: int) -> bytes:
    """A Modbus TCP FC03 request: MBAP (transaction, protocol 0, length 6, unit) + PDU."""
    return tid.to_bytes(2, "big") + b"\x00\x00\x00\x06" + bytes([unit, 3]) + address.to_bytes(2, "big") + \
        count.to_bytes(2, "big")


def raw_exchange(sock: socket.socket, frame: bytes) -> bytes:
    sock.sendall(frame)
    header = sock.recv(7)
    assert len(header) == 7, header
    length = int.from_bytes(header[4:6], "big")
    return header + sock.recv(length - 1)


@pytest.mark.parametrize("close_after_exception", [False, True])
def test_close_after_exception_like_v3_firmware(
    make_sim: Callable[..., Simulation], close_after_exception: bool
) -> None:
    sim = make_sim(units=[UnitSpec(1, soc_pct=42.4)], close_after_exception=close_after_exception)
    with socket.create_connection(("127.0.0.1", sim.modbus_port), timeout=2.0) as sock:
        answer = raw_exchange(sock, raw_read_frame(7, 1, 32110, 1))  # unmapped: exception 2
        assert answer[:2] == (7).to_bytes(2, "big") and answer[7:] == bytes([0x83, 2])
        if close_after_exception:
            assert sock.recv(16) == b""  # the server closed the connection after the exception
        else:
            answer = raw_exchange(sock, raw_read_frame(8, 1, 32104, 1))
            assert answer[7:] == bytes([3, 2, 0, 42])  # still open and answering
    with ModbusTcpClient("127.0.0.1", port=sim.modbus_port, timeout=1.0, retries=0) as c:
        assert read(c, 32104, 1, 1) == [42]  # a new connection is served normally


def wait_for_sim_time(sim: Simulation, duration_s: float) -> None:
    target = sim.now_s + duration_s
    wait_until(lambda: sim.now_s >= target)


# ============================================================================ meters


def shelly_url(sim: Simulation, path: str) -> str:
    return f"http://127.0.0.1:{sim.shelly_port}{path}"


def eco_url(sim: Simulation, path: str = "/v1/json") -> str:
    return f"http://127.0.0.1:{sim.ecotracker_port}{path}"


def get_json(url: str, **kwargs: Any) -> Any:
    r = requests.get(url, timeout=2, **kwargs)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def wait_for_total(sim: Simulation, expected_w: float) -> None:
    wait_until(lambda: sim.meter_reading_w() == pytest.approx(expected_w, abs=0.01))


def test_shelly_triphase_payload(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim()
    sim.set_load_w(1000.0)
    sim.set_pv_w(1480.5)
    wait_for_total(sim, -480.0)  # 1 W resolution
    info = get_json(shelly_url(sim, "/shelly"))
    assert info["gen"] == 2 and info["model"] == "SPEM-003CEBEU" and info["app"] == "Pro3EM"
    assert info["id"].startswith("shellypro3em-") and info["auth_en"] is False and info["profile"] == "triphase"
    em = get_json(shelly_url(sim, "/rpc/EM.GetStatus?id=0"))
    assert em["id"] == 0 and em["total_act_power"] == pytest.approx(-480.0)
    assert em["a_act_power"] + em["b_act_power"] + em["c_act_power"] == pytest.approx(em["total_act_power"])
    for key in ("a_current", "b_voltage", "c_aprt_power", "a_pf", "b_freq", "total_current", "total_aprt_power"):
        assert isinstance(em[key], float | int)
    assert em["n_current"] is None and em["user_calibrated_phase"] == []
    status = get_json(shelly_url(sim, "/rpc/Shelly.GetStatus"))
    assert status["em:0"]["total_act_power"] == pytest.approx(-480.0)
    assert status["emdata:0"]["total_act_ret"] > 0
    r = requests.get(shelly_url(sim, "/rpc/EM1.GetStatus?id=0"), timeout=2)
    assert r.status_code == 404 and r.json() == {"code": 404, "message": "No handler for EM1.GetStatus"}
    r = requests.post(shelly_url(sim, "/rpc"), json={"id": 5, "method": "EM.GetStatus", "params": {"id": 0}}, timeout=2)
    assert r.json()["id"] == 5 and r.json()["result"]["total_act_power"] == pytest.approx(-480.0)
    assert requests.get(shelly_url(sim, "/nothing"), timeout=2).status_code == 404


def test_shelly_monophase_payload(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim(shelly_profile="monophase")
    sim.set_load_w(2000.0)
    sim.set_pv_w(0.0)
    wait_for_total(sim, 2000.0)
    assert get_json(shelly_url(sim, "/shelly"))["profile"] == "monophase"
    r = requests.get(shelly_url(sim, "/rpc/EM.GetStatus?id=0"), timeout=2)
    assert r.status_code == 404 and r.json() == {"code": 404, "message": "No handler for EM.GetStatus"}
    channels = [get_json(shelly_url(sim, f"/rpc/EM1.GetStatus?id={i}")) for i in range(3)]
    assert [c["id"] for c in channels] == [0, 1, 2]
    assert sum(c["act_power"] for c in channels) == pytest.approx(2000.0)
    assert all(c["calibration"] == "factory" for c in channels)
    status = get_json(shelly_url(sim, "/rpc/Shelly.GetStatus"))
    assert "em:0" not in status and status["em1:2"]["act_power"] == channels[2]["act_power"]


def test_shelly_gen1_payload(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim(shelly_profile="gen1")
    sim.set_load_w(500.0)
    sim.set_pv_w(1500.0)
    wait_for_total(sim, -1000.0)
    info = get_json(shelly_url(sim, "/shelly"))
    assert info["type"] == "SHEM-3" and "gen" not in info and info["auth"] is False
    status = get_json(shelly_url(sim, "/status"))
    assert status["total_power"] == pytest.approx(-1000.0)
    assert sum(e["power"] for e in status["emeters"]) == pytest.approx(-1000.0)
    assert all(e["is_valid"] for e in status["emeters"])
    assert get_json(shelly_url(sim, "/emeter/1"))["power"] == status["emeters"][1]["power"]
    assert requests.get(shelly_url(sim, "/rpc/EM.GetStatus?id=0"), timeout=2).status_code == 404


def test_shelly_digest_auth(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim(shelly_password="s3cret")
    info = get_json(shelly_url(sim, "/shelly"))  # never protected
    assert info["auth_en"] is True
    r = requests.get(shelly_url(sim, "/rpc/EM.GetStatus?id=0"), timeout=2)
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    assert re.fullmatch(rf'Digest qop="auth", realm="{info["id"]}", nonce="[^"]+", algorithm=SHA-256', challenge), (
        challenge
    )
    with requests.Session() as session:
        session.auth = HTTPDigestAuth("admin", "s3cret")
        for _ in range(3):  # nonce reuse with an incrementing nc
            r = session.get(shelly_url(sim, "/rpc/EM.GetStatus?id=0"), timeout=2)
            assert r.status_code == 200 and "total_act_power" in r.json()
    r = requests.get(shelly_url(sim, "/rpc/EM.GetStatus?id=0"), auth=HTTPDigestAuth("admin", "wrong"), timeout=2)
    assert r.status_code == 401
    r = requests.get(shelly_url(sim, "/rpc/EM.GetStatus?id=0"), auth=HTTPDigestAuth("user", "s3cret"), timeout=2)
    assert r.status_code == 401


def test_shelly_gen1_basic_auth(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim(shelly_profile="gen1", shelly_password="pw")
    assert get_json(shelly_url(sim, "/shelly"))["auth"] is True
    assert requests.get(shelly_url(sim, "/status"), timeout=2).status_code == 401
    assert requests.get(shelly_url(sim, "/status"), auth=("admin", "nope"), timeout=2).status_code == 401
    assert "total_power" in get_json(shelly_url(sim, "/status"), auth=("admin", "pw"))


ECO_LINE = re.compile(r'\t"(\w+)":\t(-?\d+(?:\.\d+)?)')


def test_ecotracker_tab_indented_body_and_headers(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim()
    sim.set_load_w(200.0)
    sim.set_pv_w(3327.4)
    wait_for_total(sim, -3127.0)
    r = requests.get(eco_url(sim), timeout=2)
    assert r.status_code == 200
    assert {k.lower() for k in r.headers} == {"content-type", "content-length"}
    assert r.headers["Content-Type"] == "application/json"
    body = r.content.decode()
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert body.startswith("{\n\t") and body.endswith("\n}")
    lines = body.split("\n")[1:-1]
    keys = []
    for line in lines:
        m = ECO_LINE.fullmatch(line.rstrip(","))
        assert m, repr(line)
        keys.append(m.group(1))
    assert keys == [
        "power", "powerAvg", "agePower", "powerPhase1", "powerPhase2", "powerPhase3",
        "energyCounterOut", "energyCounterIn",
    ]  # fmt: skip
    data = r.json()
    assert data["power"] == -3127 and isinstance(data["power"], int)
    assert data["powerPhase1"] + data["powerPhase2"] + data["powerPhase3"] == pytest.approx(-3127, abs=2)
    assert isinstance(data["agePower"], int) and data["agePower"] >= 0


def test_ecotracker_404_page(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim()
    for path in ("/", "/favicon.ico"):
        r = requests.get(eco_url(sim, path), timeout=2)
        assert r.status_code == 404 and r.headers["Content-Type"] == "text/html"
        assert r.text.startswith("everHome Local API: <a href='/v1/json'>/v1/json</a>")


def shelly_power(sim: Simulation) -> requests.Response:
    return requests.get(shelly_url(sim, "/rpc/EM.GetStatus?id=0"), timeout=2)


def eco_power(sim: Simulation) -> requests.Response:
    return requests.get(eco_url(sim), timeout=2)


@pytest.mark.parametrize("meter", ["shelly", "ecotracker"])
def test_payload_faults(make_sim: Callable[..., Simulation], meter: str) -> None:
    sim = make_sim()
    sim.set_load_w(700.0)
    wait_for_total(sim, 700.0)
    fetch = shelly_power if meter == "shelly" else eco_power
    key = "total_act_power" if meter == "shelly" else "power"

    sim.set_meter_fault("http500")
    assert fetch(sim).status_code == 500

    sim.set_meter_fault("not_json")
    r = fetch(sim)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.text)

    sim.set_meter_fault("missing_field")
    data = fetch(sim).json()
    assert key not in data and data  # the rest of the payload is still there

    sim.set_meter_fault("non_numeric")
    assert fetch(sim).json()[key] == "abc"

    sim.set_meter_fault("nan")
    r = fetch(sim)
    assert "NaN" in r.text and math.isnan(r.json()[key])

    sim.set_meter_fault("absurd")
    assert fetch(sim).json()[key] == pytest.approx(150_000.0)

    sim.set_meter_fault("frozen")
    sim.set_load_w(1900.0)
    wait_for_sim_time(sim, 0.3)
    assert sim.true_grid_power_w() == pytest.approx(1900.0)
    assert fetch(sim).json()[key] == pytest.approx(700.0)

    sim.set_meter_fault(None)
    wait_until(lambda: fetch(sim).json()[key] == pytest.approx(1900.0))


def test_absurd_export_is_negative(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim()
    sim.set_pv_w(2000.0)
    wait_for_total(sim, -1700.0)
    sim.set_meter_fault("absurd")
    assert eco_power(sim).json()["power"] == -150000


def test_timeout_fault_holds_the_answer_and_stop_is_quick(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim(meter_delay_s=30.0)
    sim.set_meter_fault("timeout")
    for url in (shelly_url(sim, "/rpc/EM.GetStatus?id=0"), eco_url(sim)):
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(url, timeout=0.3)
    with pytest.raises(ValueError):
        sim.set_meter_fault("bogus")
    start = time.monotonic()
    sim.stop()  # the handlers still wait in the delay: stop must release them
    assert time.monotonic() - start < 2.0


def test_timeout_fault_answers_after_the_delay(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim(meter_delay_s=0.3)
    sim.set_meter_fault("timeout")
    start = time.monotonic()
    assert "power" in eco_power(sim).json()
    assert time.monotonic() - start >= 0.3


def test_timeout_fault_counts_the_requests_it_holds(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim(meter_delay_s=30.0)
    assert sim.meter_requests_held == 0
    sim.set_meter_fault("timeout")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(eco_url(sim), timeout=0.3)
    assert sim.meter_requests_held == 1  # still held after the client gave up
    sim.stop()
    wait_until(lambda: sim.meter_requests_held == 0)


def test_refused_fault_closes_the_meter_ports_and_reopens_them(make_sim: Callable[..., Simulation]) -> None:
    sim = make_sim()
    session = requests.Session()  # keeps a connection open across the fault
    assert session.get(shelly_url(sim, "/rpc/EM.GetStatus?id=0"), timeout=2).status_code == 200
    sim.set_meter_fault("refused")
    for url in (shelly_url(sim, "/rpc/EM.GetStatus?id=0"), eco_url(sim)):
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, timeout=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(shelly_url(sim, "/rpc/EM.GetStatus?id=0"), timeout=1)
    sim.set_meter_fault(None)
    assert session.get(shelly_url(sim, "/rpc/EM.GetStatus?id=0"), timeout=2).status_code == 200
    assert "power" in eco_power(sim).json()
    session.close()
    start = time.monotonic()
    sim.stop()
    assert time.monotonic() - start < 5.0


def test_refused_fault_set_before_start_takes_effect_on_start() -> None:
    sim = Simulation(units=[UnitSpec(1)])
    sim.set_meter_fault("refused")
    with sim:
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(shelly_url(sim, "/shelly"), timeout=1)
        sim.set_meter_fault(None)
        assert get_json(shelly_url(sim, "/shelly"))["gen"] == 2


def test_meters_follow_the_batteries(bus: Simulation, client: ModbusTcpClient) -> None:
    bus.set_load_w(1500.0)
    bus.set_pv_w(0.0)
    command(client, 1, 1000)
    expected_w = 500.0 + bus.unit(2).standby_w  # unit 2 rests and draws its standby power
    wait_until(lambda: bus.meter_reading_w() == pytest.approx(expected_w, abs=1.0))
    wait_until(lambda: eco_power(bus).json()["power"] == round(expected_w))


def test_context_manager_and_fixed_port_reuse() -> None:
    with Simulation(meter_noise_w=0.0) as sim:
        port = sim.shelly_port
        assert get_json(shelly_url(sim, "/shelly"))["gen"] == 2
    assert port is not None
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/shelly", timeout=0.5)
    with Simulation(meter_noise_w=0.0).start(shelly_port=port, modbus_port=None, ecotracker_port=None) as sim2:
        assert sim2.shelly_port == port


# ============================================================================ CLI


def test_cli_prints_config_and_exits_cleanly_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--batteries", "2", "--register-set", "v3",
         "--modbus-port", "0", "--shelly-port", "0", "--ecotracker-port", "0", "--demo-house", "--speed", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or lines[-1] != "}\n":
            line = proc.stdout.readline()
            assert line, "simulator exited early"
            if line.startswith("{") or lines:
                lines.append(line)
        cfg = json.loads("".join(lines))
        assert cfg["energy_meter"]["type"] == "shelly"
        assert cfg["battery"]["ip"] == "127.0.0.1" and cfg["battery"]["akku_ids"] == [1, 2]
        # Two v3 units behind the simulator's RS485 gateway (not a LAN port): declared, so the loader accepts it.
        assert cfg["battery"]["rs485_gateway"] is True
        assert len(parse_config(cfg).battery.units) == 2
        host, port = cfg["shelly"]["ip"].split(":")
        assert get_json(f"http://{host}:{port}/shelly")["gen"] == 2
        with ModbusTcpClient("127.0.0.1", port=cfg["battery"]["port"], timeout=1, retries=0) as c:
            assert not c.read_holding_registers(34002, count=1, device_id=2).isError()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ============================================================================ the parts on their own


@dataclass
class FixedMeter:
    """A ``MeterSource`` that serves one given snapshot: the emulators need nothing else from a simulation."""

    snapshot: MeterSnapshot

    def meter_snapshot(self) -> MeterSnapshot:
        return self.snapshot


def test_meter_emulators_serve_any_meter_source() -> None:
    source = FixedMeter(MeterSnapshot(grid_w=-432.1, sample_age_s=0.25, avg_w=-400.0, import_wh=1000.0,
                                      export_wh=2000.0, fault=None, unixtime=1_700_000_000, uptime_s=12.0))
    shelly = ShellyEmulator(source, profile="triphase")
    eco = EcoTrackerEmulator(source)
    try:
        shelly_url = f"http://127.0.0.1:{shelly.start()}/rpc/EM.GetStatus?id=0"
        eco_url = f"http://127.0.0.1:{eco.start()}/v1/json"
        assert get_json(shelly_url)["total_act_power"] == pytest.approx(-432.1)
        body = get_json(eco_url)
        assert (body["power"], body["powerAvg"], body["agePower"], body["energyCounterIn"]) == (-432, -400, 250, 1000.0)
        source.snapshot = replace(source.snapshot, fault="http500")
        assert requests.get(eco_url, timeout=2).status_code == 500
        shelly.refuse_connections()
        with pytest.raises(requests.ConnectionError):
            requests.get(shelly_url, timeout=2)
        shelly.accept_connections()  # same port again
        assert requests.get(shelly_url, timeout=2).status_code == 500
    finally:
        shelly.stop()
        eco.stop()


def test_gateway_serves_its_units_without_a_simulation() -> None:
    lock = threading.RLock()
    # An RS485 gateway (lan=False): a lone v3 unit would otherwise be a v3 LAN port answering every ID.
    gateway = SimGateway([SimUnit(UnitSpec(3, "v3", soc_pct=61.0), FAST_PLANT, lock=lock)], lock=lock, lan=False)
    try:
        port = gateway.start()
        with ModbusTcpClient("127.0.0.1", port=port, timeout=0.3, retries=0) as c:
            assert read(c, 32104, 1, 3) == [61]
            assert_no_answer(c, 32104, 1, 4)
            added = gateway.add_unit(SimUnit(UnitSpec(4, soc_pct=55.0), FAST_PLANT, lock=lock))
            assert gateway.unit(4) is added
            assert read(c, 32104, 1, 4) == [55]
            assert gateway.drop_connections() == 1
        with pytest.raises(KeyError):
            gateway.unit(5)
    finally:
        gateway.stop()
    assert gateway.stopping
