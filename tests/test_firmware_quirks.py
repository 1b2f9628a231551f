"""How the batteries really behave: BMS limits near full and empty, acknowledged setpoints that deliver
nothing, RS485 control dropped by the firmware (marstek-modbus.md §4, §10)."""

from __future__ import annotations

import itertools
import threading

import pytest

from battery_client import MarstekGateway
from config_loader import ConfigError, parse_config
from control.devices import BatteryError
from control.status_store import QuirkCounter
from simulator.marstek import OWN_PERIOD_S
from simulator.world import PlantParams, Simulation, UnitSpec
from tests.helpers import FakeClock, wait_until
from tests.loop_rig import (
    LAW,
    QUICK,
    Rig,
    battery_doc,
    discharging,
    fake_clock,
    fault_config,
    make_loop,
    run_until,
    stopped,
)


def test_full_battery_stops_charging_at_max_soc(rig: Rig) -> None:
    """The mirror of the cut-off near empty (below): charging ends at battery.max_soc_for_charge."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=97.0)], **QUICK)
    sim.set_load_w(300.0)
    sim.set_pv_w(2500.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1]), clock)  # max_soc_for_charge 98 (default)
    run_until(loop, clock, lambda: sim.unit(1).force_mode == 1 and sim.unit(1).power_w < -1000, 30, "charging")
    sim.unit(1).set_soc(99.0)
    run_until(loop, clock, lambda: sim.unit(1).force_mode != 1 and sim.unit(1).charge_power_w == 0, 30,
              "charging stopped at the maximum SoC", step_s=1.0)
    assert "maximum" in battery_doc(loop, 1)["note"]
    for _ in range(5):  # and it stays stopped while the surplus lasts
        loop.cycle()
        clock.advance(1.0)
        assert sim.unit(1).force_mode != 1


@pytest.mark.slow
def test_bms_standing_by_near_full_while_charging_is_paused(rig: Rig) -> None:
    """max_soc_for_charge 100, but the BMS stops at 99 % (top cell voltage): the setpoint is acknowledged and
    nothing flows. The no-delivery rule must catch it on the charge side too: pause, stop, say so."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=99.3)], plant=PlantParams(dead_time_s=0.0, tau_s=0.05,
                                                                               bms_max_soc_pct=99.0),
                         meter_cadence_s=0.1, meter_latency_s=0.05, meter_noise_w=5.0)
    sim.set_load_w(300.0)
    sim.set_pv_w(2500.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1], max_soc_for_charge=100), clock)
    run_until(loop, clock, lambda: sim.unit(1).force_mode == 1 and sim.unit(1).charge_power_w > 1000
              and sim.unit(1).resting, 30, "charge commanded (SoC reads 99 % < 100 %), the BMS refuses")
    key = loop.unit(1).key
    run_until(loop, clock, lambda: loop.controller.limits_w(-1).get(key) == 0.0, 60, "paused for delivering nothing",
              step_s=1.0)
    assert stopped(sim.unit(1))
    assert "delivers nothing" in battery_doc(loop, 1)["note"]
    for _ in range(5):
        loop.cycle()
        clock.advance(1.0)
        assert stopped(sim.unit(1))


@pytest.mark.slow
def test_battery_that_acknowledges_but_delivers_nothing_is_paused_and_retried(sim):
    clock = fake_clock()
    loop = make_loop(sim, [1, 2], clock=clock)
    sim.unit(1).delivers_nothing = True
    sim.set_load_w(3200.0)  # both batteries needed
    try:
        for _ in range(int(LAW.no_delivery_after_s) + 8):
            loop.cycle()
            clock.advance(1.0)
        assert loop.controller.limits_w(1).get(loop.unit(1).key) == 0.0  # no discharge asked of it for now
        assert sim.unit(1).force_mode == 0  # stopped when paused
        doc = loop.store.status_json()
        note = next(b["note"] for b in doc["batteries"] if b["id"] == 1)
        assert "delivers nothing" in note, (doc["batteries"], loop.last_decision)
        # The other battery takes over the load.
        wait_until(lambda: (loop.cycle(), clock.advance(1.0), sim.unit(2).power_w > 2000)[-1], 30, "unit 2 covers")
        # After the pause the battery is tried again.
        clock.advance(LAW.no_delivery_hold_s)
        sim.unit(1).delivers_nothing = False
        key = loop.unit(1).key
        wait_until(lambda: (loop.cycle(), clock.advance(1.0), key not in loop.controller.limits_w(1))[-1], 10,
                   "asked again after its pause")
    finally:
        loop.stop_all("test")
        loop.bus.close()
        loop.meter.close()


def test_rs485_control_dropped_is_reasserted_by_the_loop(sim, caplog):
    loop = make_loop(sim, [1])
    sim.set_load_w(800.0)
    try:
        wait_until(lambda: (loop.cycle(), sim.unit(1).force_mode == 2)[-1], 20, "discharging")
        sim.unit(1).drop_rs485()
        with caplog.at_level("WARNING"):
            wait_until(lambda: (loop.cycle(), sim.unit(1).rs485_control)[-1], 20, "RS485 control re-asserted")
        assert "RS485" in caplog.text
    finally:
        loop.stop_all("test")
        loop.bus.close()
        loop.meter.close()


def test_the_gateway_reports_an_rs485_reassert_and_a_reconnect_to_the_quirk_counter() -> None:
    """The quirks the driver meets reach the diagnostics' counter through ``on_quirk`` (as main.py wires it),
    not through its log text."""
    quirks = QuirkCounter()
    clock = FakeClock()
    with Simulation(units=[UnitSpec(1, soc_pct=60.0)]) as world:
        gw = MarstekGateway("127.0.0.1", world.modbus_port, timeout_s=0.5, clock=clock, sleep=clock.advance,
                            on_quirk=quirks.note)
        try:
            gw.write_setpoint(1, 500.0, gw.read(1))
            assert world.unit(1).rs485_control and quirks.figures() == {}, "the first assert is no quirk"
            world.unit(1).drop_rs485()
            gw.write_setpoint(1, 500.0, gw.read(1))
            assert world.unit(1).rs485_control
            assert quirks.count("rs485_reassert") == 1

            world.gateway.network_reset()
            with pytest.raises(BatteryError):
                gw.read(1)
            assert quirks.count("modbus_reconnect") == 0, "counted when the gateway is back, not when it left"
            world.gateway.network_back()
            clock.advance(1.0)  # past the fast retry
            gw.read(1)
            assert quirks.count("modbus_reconnect") == 1
            assert set(quirks.figures()) == {"rs485_reassert", "modbus_reconnect"}
        finally:
            gw.close()


def test_bms_cut_off_near_empty_stops_discharge(sim):
    loop = make_loop(sim, [1])
    sim.unit(1).set_soc(11.5)
    sim.set_load_w(1500.0)
    try:
        wait_until(lambda: (loop.cycle(), sim.unit(1).force_mode == 2)[-1], 20, "discharging")
        sim.unit(1).set_soc(10.0)  # at the BMS floor and below min_soc_for_discharge
        loop.bus.bus(loop.bus.gateways[0]).soc_interval_s = 0.0  # read the SoC every cycle for this test
        wait_until(lambda: (loop.cycle(), sim.unit(1).force_mode == 0)[-1], 20, "discharge stopped")
        assert loop.last_decision is not None and "minimum" in loop.last_decision.reason
    finally:
        loop.stop_all("test")
        loop.bus.close()
        loop.meter.close()


def test_rs485_drop_clears_the_setpoints_and_one_cycle_writes_them_all_again(rig: Rig) -> None:
    """Leaving RS485 control resets 42010/42020/42021 to 0 (Omnibattery #477, Viper #267/#277). The next cycle
    sees 42000 off and writes all four control registers, not just 42000: delivery is back after one cycle."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)], **QUICK)
    sim.set_load_w(900.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1]), clock)
    run_until(loop, clock, lambda: discharging(sim.unit(1)) and sim.unit(1).power_w > 500, 30, "discharging")
    for _ in range(3):
        setpoint_w = sim.unit(1).discharge_power_w
        sim.unit(1).drop_rs485()
        assert stopped(sim.unit(1)) and not sim.unit(1).rs485_control  # what the firmware does
        loop.cycle()
        clock.advance(1.0)
        u = sim.unit(1)
        # The setpoint is back (the law may raise it: the drop cost power, the grid imported meanwhile).
        assert u.rs485_control and u.force_mode == 2 and u.discharge_power_w >= 0.8 * setpoint_w, (
            u.rs485_control, u.force_mode, u.discharge_power_w, setpoint_w)
    assert 1 not in loop.controller.limits_w(1)  # never taken for "delivers nothing"


@pytest.mark.slow
def test_rs485_drop_hands_the_battery_to_its_own_anti_feed_and_one_cycle_takes_it_back(rig: Rig) -> None:
    """A battery paired with a meter of its own (CT002, Shelly in the app) runs its stored work mode (43000 = 1,
    anti-feed) as soon as RS485 control drops: it regulates by itself, slower than we do. One cycle later it is
    under our control again, at our setpoint."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0, own_meter=True)], **QUICK)
    sim.set_load_w(900.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1]), clock)
    run_until(loop, clock, lambda: discharging(sim.unit(1)) and sim.unit(1).power_w > 500, 30, "discharging")
    u = sim.unit(1)
    u.drop_rs485()
    sim.set_load_w(1500.0)  # the house changes meanwhile: its own loop follows
    wait_until(lambda: u.autonomous and u.commanded_w > 1000, 20, "the battery regulates on its own meter")
    loop.cycle()
    clock.advance(1.0)
    assert u.rs485_control and not u.autonomous and u.force_mode == 2
    assert u.commanded_w == u.discharge_power_w  # our setpoint again, not its own


@pytest.mark.slow
def test_rs485_control_is_reasserted_at_least_every_30_s_while_forcing(rig: Rig) -> None:
    """Some v3 firmware leaves RS485 control after 90-120 s unless 42000 is re-written (MVEM #244): the client
    re-writes the RAM register 42000 while forcing, even when every read-back says it is on."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)], **QUICK)
    sim.set_load_w(900.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1]), clock)
    run_until(loop, clock, lambda: discharging(sim.unit(1)), 30, "discharging")
    written_at: list[float] = []
    for _ in range(130):
        before = len([w for w in sim.unit(1).write_log if w == (42000, 0x55AA)])
        loop.cycle()
        if len([w for w in sim.unit(1).write_log if w == (42000, 0x55AA)]) > before:
            written_at.append(clock())
        clock.advance(1.0)
    assert sim.unit(1).rs485_control and discharging(sim.unit(1))
    gaps = [b - a for a, b in itertools.pairwise(written_at)]
    assert len(written_at) >= 4 and max(gaps) <= 30.0, written_at


def test_simulated_rs485_watchdog_leaves_control_unless_42000_is_rewritten() -> None:
    """The simulator's option for the firmware watchdog (uncertain, so off by default): without a 42000 write
    for ``rs485_watchdog_s`` the unit leaves RS485 control and, like every drop, clears its setpoints."""
    sim = Simulation(units=[UnitSpec(1, rs485_watchdog_s=90.0)], plant=PlantParams(dead_time_s=0.0, tau_s=0.05))
    unit = sim.unit(1)
    for address, value in ((42000, 0x55AA), (42021, 800), (42010, 2)):
        assert unit.write_register(address, value) is None
    sim.step(60.0)
    assert unit.read_registers(42000, 1) == [0x55AA] and unit.power_w > 700
    assert unit.write_register(42000, 0x55AA) is None  # re-asserted: the 90 s start again
    sim.step(80.0)
    assert unit.read_registers(42000, 1) == [0x55AA]
    sim.step(15.0)
    assert unit.read_registers(42000, 1) == [0x55BB] and stopped(unit)
    sim.step(5.0)
    assert unit.resting


@pytest.mark.slow
def test_standby_draw_of_a_resting_battery_is_shown_and_not_chased(rig: Rig) -> None:
    """A resting unit draws 5-15 W from the house (simulator: 10 W), read as a small negative AC power. The law
    does not try to cover it with setpoints below the 50 W the firmware acts on: the battery stays at rest, and
    its status shows the draw."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0)], **QUICK)
    sim.set_load_w(25.0)
    sim.set_pv_w(0.0)
    u = sim.unit(1)
    # The meter runs on real time and the loop on test time: without this wait the first cycles read the
    # simulation's initial 300 W load, discharge, and the meter's catching up then looks like export.
    wait_until(lambda: abs((sim.meter_reading_w() or 0.0) - (25.0 + u.standby_w)) < 20, 5, "the meter shows 25 W")
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1]), clock)
    run_until(loop, clock, lambda: u.resting and battery_doc(loop, 1)["power_w"] is not None, 30, "at rest")
    for _ in range(30):
        loop.cycle()
        clock.advance(1.0)
        assert u.discharge_power_w == 0 and u.charge_power_w == 0 and u.resting
    assert battery_doc(loop, 1)["power_w"] == pytest.approx(-u.standby_w, abs=1)
    assert sim.true_grid_power_w() == pytest.approx(25.0 + u.standby_w, abs=1)


@pytest.mark.slow
def test_eeprom_limit_below_the_maximum_is_used_and_explained_instead_of_pausing(rig: Rig, caplog) -> None:
    """44003 (max discharge power, EEPROM) set low by the app, a reset or another tool clamps every forced
    discharge: the law gives the battery only that much (the other takes the rest) instead of pausing it as
    "delivers nothing", and the note and the log name the register and the fix."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0, max_discharge_power_w=300), UnitSpec(2, soc_pct=60.0)],
                         **QUICK)
    sim.set_load_w(2000.0)
    clock = fake_clock()
    with caplog.at_level("WARNING"):
        loop = rig.loop(fault_config(sim, [1, 2]), clock)
        run_until(loop, clock, lambda: abs(sim.true_grid_power_w() - 20.0) < 60 and discharging(sim.unit(1)), 40,
                  "regulated with battery 1 at its limit", step_s=1.0)
    assert "44003" in caplog.text
    for _ in range(40):  # and it stays that way: no pause, never more than 300 W asked of it
        loop.cycle()
        clock.advance(1.0)
        assert sim.unit(1).discharge_power_w <= 300
    assert sim.unit(1).power_w > 250 and 1 not in loop.controller.limits_w(1)
    note = battery_doc(loop, 1)["note"]
    assert "44003" in note and "300" in note, note


def test_venus_e_800_w_app_setting_is_learned_and_explained(rig: Rig, caplog) -> None:
    """A Venus E delivers at most 800 W until 2500 W is chosen in the Marstek app, and no register shows it:
    the plateau is learned as the battery's limit (the other takes the rest) and explained in the note and
    the log."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0, app_limit_w=800), UnitSpec(2, soc_pct=60.0)], **QUICK)
    sim.set_load_w(3000.0)
    clock = fake_clock()
    with caplog.at_level("INFO"):
        loop = rig.loop(fault_config(sim, [1, 2]), clock)
        key = loop.unit(1).key
        run_until(loop, clock, lambda: key in loop.controller.limits_w(1)
                  and abs(sim.true_grid_power_w() - 20.0) < 60, 60, "plateau learned, regulated", step_s=1.0)
    assert loop.controller.limits_w(1)[key] == pytest.approx(800, abs=40)
    assert sim.unit(1).read_registers(44003, 1) == [2500]  # not visible in the registers
    assert sim.unit(1).power_w == pytest.approx(800, abs=40) and sim.unit(2).power_w > 1900
    assert loop.last_decision is not None and loop.last_decision.battery_notes[key].code == "note_app_limit"
    assert "800" in battery_doc(loop, 1)["note"] and "2500" in battery_doc(loop, 1)["note"]
    assert "2500 W" in caplog.text  # logged once when the note appeared


@pytest.mark.parametrize("register_set", ["v2", "v3"])
def test_limit_registers_reading_zero_mean_unknown_and_the_battery_is_used(rig: Rig, register_set: str) -> None:
    """44002/44003 read 0 (a Venus D v150 does while charging at 1.3 kW; a v2 unit in the field did too): that
    is "unknown", not a 0 W limit. The battery is commanded both ways and regulates."""
    sim = rig.simulation(units=[UnitSpec(1, register_set, soc_pct=50.0, limits_read_zero=True)], **QUICK)
    assert sim.unit(1).read_registers(44002, 2) == [0, 0]
    sim.set_load_w(900.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1], register_set=register_set), clock)
    run_until(loop, clock, lambda: discharging(sim.unit(1)) and abs(sim.true_grid_power_w() - 20.0) < 60, 40,
              "discharging into the load", step_s=1.0)
    reading = loop.unit(1).reading
    assert reading is not None and reading.max_charge_w == reading.max_discharge_w == 2500  # the model's limit
    sim.set_pv_w(2000.0)
    run_until(loop, clock, lambda: sim.unit(1).force_mode == 1 and sim.unit(1).power_w < -900, 40,
              "charging from the surplus", step_s=1.0)
    assert "44002" not in battery_doc(loop, 1)["note"] and "44003" not in battery_doc(loop, 1)["note"]


def test_eeprom_charge_limit_zero_on_v2_is_tried_and_learned_as_delivering_nothing(rig: Rig) -> None:
    """evcc's "hold" writes 44002 <- 0. A 0 there is not trusted (see above): the battery is asked to charge,
    delivers nothing, is paused for that (the law learned it) and the other battery takes the surplus."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=40.0, max_charge_power_w=0), UnitSpec(2, soc_pct=40.0)],
                         **QUICK)
    sim.set_load_w(300.0)
    sim.set_pv_w(1500.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1, 2]), clock)
    key = loop.unit(1).key
    run_until(loop, clock, lambda: loop.controller.limits_w(-1).get(key) == 0.0
              and sim.unit(2).force_mode == 1 and sim.unit(2).power_w < -900, 60,
              "battery 1 paused for delivering nothing, battery 2 takes the surplus", step_s=1.0)
    assert (42010, 1) in sim.unit(1).write_log  # it was asked to charge
    assert "delivers nothing" in battery_doc(loop, 1)["note"]


@pytest.mark.slow
@pytest.mark.parametrize("on_exit", ["stop", "release"])
def test_leaving_control_stops_or_hands_the_battery_back(rig: Rig, on_exit: str) -> None:
    """battery.on_exit: "stop" (default) leaves force mode 0 with RS485 control on (the battery idles until it
    reboots); "release" writes 43000 <- 1 and then 42000 <- 0x55BB, as evcc's "normal" does: a battery paired
    with a meter of its own in the Marstek app then regulates the house by itself (anti-feed)."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0, own_meter=True)], **QUICK)
    sim.set_load_w(900.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1], on_exit=on_exit), clock)
    run_until(loop, clock, lambda: discharging(sim.unit(1)), 30, "discharging")
    stop = threading.Event()
    stop.set()
    loop.run(stop)  # the thread's exit path: stop, then (maybe) release
    u = sim.unit(1)
    assert stopped(u)
    if on_exit == "stop":
        assert u.rs485_control and (43000, 1) not in u.write_log
        started_s = sim.now_s
        wait_until(lambda: sim.now_s > started_s + 3 * OWN_PERIOD_S, 30, "three periods of its own loop")
        assert u.resting  # under RS485 control its own meter is not used: it idles
        assert sim.true_grid_power_w() == pytest.approx(900.0 + u.standby_w, abs=1.0)
    else:
        assert not u.rs485_control and u.work_mode == 1
        assert u.write_log[-2:] == [(43000, 1), (42000, 0x55BB)]
        wait_until(lambda: u.power_w > 800 and abs(sim.true_grid_power_w()) < 50, 30,
                   "the released battery regulates the house on its own meter")


def test_on_exit_is_checked_in_the_config() -> None:
    shelly = {"ip": "192.168.1.100"}
    assert parse_config({"shelly": shelly, "battery": {"ip": "192.168.1.5"}}).battery.on_exit == "stop"
    with pytest.raises(ConfigError, match=r"battery\.on_exit"):
        parse_config({"shelly": shelly, "battery": {"ip": "192.168.1.5", "on_exit": "idle"}})


@pytest.mark.slow
@pytest.mark.parametrize(("firmware", "limit_w"), [(147, 1200), (150, 1500)])
def test_venus_a_is_capped_at_its_model_limit(rig: Rig, firmware: int, limit_w: int) -> None:
    """A Venus A (device name VNSA in 31000) delivers 1200 W, 1500 W from EMS firmware 148 on: read once at the
    start, it caps the battery's setpoints so that the other battery takes the rest at once."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=60.0, model="VNSA-0", firmware=firmware),
                                UnitSpec(2, soc_pct=60.0)], lan=False, **QUICK)
    sim.set_load_w(3400.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1, 2]), clock)
    run_until(loop, clock, lambda: abs(sim.true_grid_power_w() - 20.0) < 60, 40, "regulated", step_s=1.0)
    for _ in range(10):
        loop.cycle()
        clock.advance(1.0)
        assert 0 < sim.unit(1).discharge_power_w <= limit_w
    assert sim.unit(1).power_w == pytest.approx(limit_w, abs=60)
    assert str(limit_w) in battery_doc(loop, 1)["note"]


@pytest.mark.slow
@pytest.mark.parametrize("deaf", [False, True])
def test_idle_runaway_is_rewritten_then_reconnected(rig: Rig, deaf: bool) -> None:
    """Commanded stop, yet the unit runs its own logic (Omnibattery #434/#145): after 15 s all four control
    registers are written again; if the writes are ignored on the live connection (``deaf``), a hard reconnect
    follows 15 s later. The log and the battery's note say so."""
    sim = rig.simulation(units=[UnitSpec(1, soc_pct=25.0)], **QUICK)
    sim.set_load_w(700.0)
    clock = fake_clock()
    loop = rig.loop(fault_config(sim, [1], min_soc_for_discharge=30), clock)  # the law may not discharge
    run_until(loop, clock, lambda: loop.last_decision is not None and stopped(sim.unit(1))
              and sim.unit(1).rs485_control, 20, "commanded stop")
    sim.unit(1).slip_out(400.0, deaf=deaf)
    opened = sum(1 for kind, _ in sim.gateway.connections_log if kind == "open")
    run_until(loop, clock, lambda: sim.unit(1).power_w > 350, 10, "running on its own")
    start_s = clock()
    writes = len(sim.unit(1).write_log)
    run_until(loop, clock, lambda: len(sim.unit(1).write_log) >= writes + 4, 30, "all four written", step_s=1.0)
    assert clock() - start_s >= 15.0
    assert {a for a, _ in sim.unit(1).write_log[writes:]} == {42000, 42010, 42020, 42021}
    assert battery_doc(loop, 1)["note"].startswith(("folgt dem Stopp nicht", "does not follow the stop"))
    run_until(loop, clock, lambda: abs(sim.unit(1).power_w) < 20, 40, "back under control", step_s=1.0)
    reconnected = sum(1 for kind, _ in sim.gateway.connections_log if kind == "open") > opened
    assert reconnected == deaf
    run_until(loop, clock, lambda: not battery_doc(loop, 1)["note"].startswith(("folgt", "does not")), 10,
              "note cleared", step_s=1.0)
