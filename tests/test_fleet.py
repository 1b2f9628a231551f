"""Every household's fleet against the simulator's real Modbus servers on 127.0.0.1: a v3 household (two
units, two IPs), a mixed fleet (v2 RS485 gateway with two units + a v3 LAN unit of 800 W), the seed form,
a gateway that dies (the others keep regulating and their writes are not held up), Modbus RTU over TCP,
the status fields and the setup commands per gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config_loader import Config, parse_config
from control.commands import AddToConfig, EnterSetup, ExitSetup, Scan, SetId
from control.control_loop import ControlLoop
from control.fleet import GRACE_S, Fleet
from control.status_store import CommandError, CommandQueue, StatusStore
from main import build_meter
from simulator.world import Simulation, SimUnit, UnitSpec
from tests.helpers import FakeClock
from tests.loop_rig import QUICK, TARGET_W, discharging, run_until

DEAD_GATEWAY_TIMEOUT_S = 2.0  # long enough that waiting for it would show


class FleetRig:
    """Simulations and control loops on a fleet of real gateways (worker threads), cleaned up in order."""

    def __init__(self) -> None:
        self.sims: list[Simulation] = []
        self.loops: list[ControlLoop] = []

    def simulation(self, units: list[UnitSpec], gateways: list[list[UnitSpec]] = (), **kwargs: Any) -> Simulation:
        sim = Simulation(units=units, gateways=gateways, **{**QUICK, **kwargs}).start()
        self.sims.append(sim)
        return sim

    def loop(self, cfg: Config, clock: FakeClock, config_path: Path | None = None) -> ControlLoop:
        fleet = Fleet.from_config(cfg, clock=clock)
        loop = ControlLoop(cfg, build_meter(cfg, clock), fleet, StatusStore(), CommandQueue(), clock=clock,
                           config_path=config_path)
        self.loops.append(loop)
        return loop

    def close(self) -> None:
        for loop in self.loops:
            loop.stop_all("test end", budget_s=3.0)
            loop.bus.close()
            loop.meter.close()
        for sim in self.sims:
            sim.stop()


@pytest.fixture
def fleet_rig() -> Iterator[FleetRig]:
    rig = FleetRig()
    try:
        yield rig
    finally:
        rig.close()


def config_data(sim: Simulation, units: list[dict[str, Any]], **battery: Any) -> dict[str, Any]:
    return {
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 0.5, "max_failures_before_stop": 3},
        "battery": {"timeout_seconds": 0.5, "pacing_ms": 20, **battery, "units": units},
        "control": {"poll_interval_seconds": 1, "soc_update_interval_seconds": 5},
    }


def gw(sim: Simulation, index: int) -> str:
    return f"127.0.0.1:{sim.gateways[index].port}"


def v3_household(fleet_rig: FleetRig, **battery: Any) -> tuple[Simulation, Config]:
    sim = fleet_rig.simulation([UnitSpec(1, "v3", soc_pct=60.0)], gateways=[[UnitSpec(1, "v3", soc_pct=70.0)]])
    cfg = parse_config(config_data(sim, [{"ip": gw(sim, 0), "name": "Garage"}, {"ip": gw(sim, 1), "name": "Keller"}],
                                   register_set="v3", **battery))
    return sim, cfg


def test_a_v3_household_with_two_ips_regulates(fleet_rig: FleetRig, fake_clock: FakeClock) -> None:
    sim, cfg = v3_household(fleet_rig)
    sim.set_load_w(3600.0)  # more than one unit gives: both must work
    loop = fleet_rig.loop(cfg, fake_clock)
    assert loop.bus.gateways == [gw(sim, 0), gw(sim, 1)]
    run_until(loop, fake_clock, lambda: all(discharging(u) for u in sim.units), 30, "both discharging", step_s=1.0)
    run_until(loop, fake_clock, lambda: abs(sim.true_grid_power_w() - TARGET_W) < 60, 30, "grid at the target",
              step_s=1.0)
    doc = loop.store.status_json()
    by_name = {b["name"]: b for b in doc["batteries"]}
    assert set(by_name) == {"Garage", "Keller"}
    garage = by_name["Garage"]
    assert garage["key"] == f"{gw(sim, 0)}/1" and garage["gateway"] == gw(sim, 0) and garage["id"] == 1
    assert garage["register_set"] == "v3" and garage["max_power_w"] == 2500 and garage["online"] is True
    assert by_name["Keller"]["key"] == f"{gw(sim, 1)}/1"


def test_a_mixed_fleet_honours_each_units_own_maximum(fleet_rig: FleetRig, fake_clock: FakeClock) -> None:
    sim = fleet_rig.simulation([UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=50.0)],
                               gateways=[[UnitSpec(1, "v3", soc_pct=90.0)]])
    cfg = parse_config(config_data(sim, [
        {"ip": gw(sim, 0), "id": 1}, {"ip": gw(sim, 0), "id": 2},
        {"ip": gw(sim, 1), "register_set": "v3", "max_power_per_battery": 800, "name": "Venus A"}]))
    sim.set_load_w(4000.0)
    loop = fleet_rig.loop(cfg, fake_clock)
    v3 = sim.gateways[1].unit(1)
    run_until(loop, fake_clock, lambda: all(discharging(u) for u in sim.units), 30, "all three discharging",
              step_s=1.0)
    run_until(loop, fake_clock, lambda: abs(sim.true_grid_power_w() - TARGET_W) < 60, 30, "grid at the target",
              step_s=1.0)
    for _ in range(5):
        loop.cycle()
        fake_clock.advance(1.0)
        assert 0 < v3.discharge_power_w <= 800  # the fullest unit, but never above its own limit
    doc = {b["name"]: b for b in loop.store.status_json()["batteries"]}
    assert doc["Venus A"]["max_power_w"] == 800 and doc["Venus A"]["register_set"] == "v3"
    assert doc["Akku 1"]["register_set"] == "v2" and doc["Akku 1"]["gateway"] == gw(sim, 0)


def test_the_seed_form_regulates_through_the_fleet(fleet_rig: FleetRig, fake_clock: FakeClock) -> None:
    sim = fleet_rig.simulation([UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=70.0)])
    data = config_data(sim, [])
    del data["battery"]["units"]
    data["battery"].update(ip="127.0.0.1", port=sim.modbus_port, akku_ids=[1, 2])
    cfg = parse_config(data)
    sim.set_load_w(3400.0)
    loop = fleet_rig.loop(cfg, fake_clock)
    run_until(loop, fake_clock, lambda: all(discharging(u) for u in sim.units), 30, "both discharging", step_s=1.0)
    assert [b["key"] for b in loop.store.status_json()["batteries"]] == [f"127.0.0.1:{sim.modbus_port}/1",
                                                                        f"127.0.0.1:{sim.modbus_port}/2"]


@pytest.mark.slow
def test_a_dead_gateway_neither_stops_nor_delays_the_others(fleet_rig: FleetRig, fake_clock: FakeClock) -> None:
    sim, cfg = v3_household(fleet_rig, timeout_seconds=DEAD_GATEWAY_TIMEOUT_S)
    sim.set_load_w(1500.0)
    loop = fleet_rig.loop(cfg, fake_clock)
    garage, keller = sim.gateways[0].unit(1), sim.gateways[1].unit(1)
    run_until(loop, fake_clock, lambda: discharging(keller) or discharging(garage), 30, "regulating", step_s=1.0)

    keller.silent = True  # the second battery's LAN port stops answering: every frame times out
    usual_s = loop.bus.usual_frame_s(gw(sim, 1))
    delays_s = []
    for _ in range(12):
        loop.cycle()
        fake_clock.advance(1.0)
        reads, writes = loop.bus.last_rounds["read"], loop.bus.last_rounds["write"]
        healthy_done_s = reads.gateways[gw(sim, 0)].done_s
        assert healthy_done_s is not None
        delays_s.append(writes.started_s - healthy_done_s)
    assert not loop.unit(1, gw(sim, 1)).online
    assert loop.unit(1, gw(sim, 0)).online
    # Waiting for the dead one would cost DEAD_GATEWAY_TIMEOUT_S (2 s) per cycle; the healthy unit's writes start
    # at most the dead gateway's usual frame time + GRACE_S after its own reads (the simulated-clock benchmark
    # checks the < 0.5 s).
    assert max(delays_s) < min(usual_s + GRACE_S + 0.3, DEAD_GATEWAY_TIMEOUT_S / 2), delays_s
    sim.set_load_w(2200.0)
    run_until(loop, fake_clock, lambda: abs(sim.true_grid_power_w() - TARGET_W) < 60, 30,
              "the healthy battery regulates alone", step_s=1.0)
    assert any("Keller" in e for e in loop.store.status_json()["errors"])

    keller.silent = False
    fake_clock.advance(30.0)  # past the longest back-off
    run_until(loop, fake_clock, lambda: loop.unit(1, gw(sim, 1)).online, 30, "the second battery rejoins",
              step_s=1.0)


def test_the_periodic_long_rounds_of_a_healthy_fleet_are_never_cut_off(fleet_rig: FleetRig,
                                                                       fake_clock: FakeClock) -> None:
    """The demo's fleet at the real pacing (v2 50 ms, v3 150 ms): every 20 s a unit's read carries SoC, mode and
    setpoint checks (5 frames instead of 2), the next one the power limits, every 25 s a write re-asserts RS485
    control. Those rounds are long but healthy: no unit may count as not answering, no gateway as busy."""
    sim = fleet_rig.simulation([UnitSpec(1, soc_pct=55.0), UnitSpec(2, soc_pct=70.0)],
                               gateways=[[UnitSpec(1, "v3", soc_pct=62.0)]])
    data = config_data(sim, [{"ip": gw(sim, 0), "id": 1, "rs485_gateway": True},
                             {"ip": gw(sim, 0), "id": 2, "rs485_gateway": True},
                             {"ip": gw(sim, 1), "register_set": "v3"}], timeout_seconds=1)
    del data["battery"]["pacing_ms"]  # each register set's own pacing: the v3 rounds are the long ones
    data["control"]["soc_update_interval_seconds"] = 20  # far apart: a learned "usual round" forgets them
    sim.set_load_w(2500.0)
    loop = fleet_rig.loop(parse_config(data), fake_clock)
    run_until(loop, fake_clock, lambda: all(b.online for b in loop.batteries.values())
              and any(discharging(u) for u in sim.units), 30, "all online, regulating", step_s=1.0)
    problems = []
    for cycle in range(45):  # two SoC rounds, an RS485 re-assert
        loop.cycle()
        fake_clock.advance(1.0)
        for phase in ("read", "write"):
            late = [name for name, g in loop.bus.last_rounds[phase].gateways.items() if g.done_s is None]
            if late:
                problems.append((cycle, phase, late))
        problems += [(cycle, b.name, b.error) for b in loop.batteries.values() if not b.online]
    assert problems == []


def test_a_stopped_gateway_leaves_the_other_regulating(fleet_rig: FleetRig, fake_clock: FakeClock) -> None:
    sim, cfg = v3_household(fleet_rig)
    sim.set_load_w(1800.0)
    loop = fleet_rig.loop(cfg, fake_clock)
    run_until(loop, fake_clock, lambda: abs(sim.true_grid_power_w() - TARGET_W) < 60, 30, "regulating", step_s=1.0)
    sim.gateways[1].stop()  # the whole host is gone: connection refused
    run_until(loop, fake_clock, lambda: not loop.unit(1, gw(sim, 1)).online, 20, "second gateway offline",
              step_s=1.0)
    sim.set_load_w(1200.0)
    run_until(loop, fake_clock, lambda: abs(sim.true_grid_power_w() - TARGET_W) < 60, 30,
              "the first battery regulates alone", step_s=1.0)
    assert loop.unit(1, gw(sim, 0)).online


def test_modbus_rtu_over_tcp(fleet_rig: FleetRig, fake_clock: FakeClock) -> None:
    sim = fleet_rig.simulation([UnitSpec(1, soc_pct=50.0)])
    sim.add_gateway([UnitSpec(3, soc_pct=65.0)], framer="rtu")
    cfg = parse_config(config_data(sim, [{"ip": gw(sim, 0)}, {"ip": gw(sim, 1), "id": 3, "framer": "rtu"}]))
    sim.set_load_w(3400.0)
    loop = fleet_rig.loop(cfg, fake_clock)
    run_until(loop, fake_clock, lambda: all(discharging(u) for u in sim.units), 30, "both discharging", step_s=1.0)
    assert loop.unit(3).reading is not None and loop.unit(3).reading.soc_pct == pytest.approx(65.0, abs=1.0)


@pytest.mark.slow
def test_setup_scans_and_readdresses_per_gateway(fleet_rig: FleetRig, fake_clock: FakeClock, tmp_path: Path) -> None:
    sim = fleet_rig.simulation([UnitSpec(1, soc_pct=50.0)], gateways=[[UnitSpec(1, "v3", soc_pct=70.0)]])
    data = config_data(sim, [{"ip": gw(sim, 0)}, {"ip": gw(sim, 1), "register_set": "v3", "name": "LAN"}])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    cfg = parse_config(data)
    loop = fleet_rig.loop(cfg, fake_clock, config_path=path)
    loop.cycle()
    with pytest.raises(CommandError) as refused:
        loop.handle_command(Scan(gateway=gw(sim, 0)))
    assert refused.value.status == 409  # not in setup mode
    loop.handle_command(EnterSetup())

    # A new battery arrives on ID 1 behind the RS485 gateway; the old one is unplugged while it is re-addressed.
    original = sim.gateways[0].unit(1)
    original.silent = True
    new = sim.gateways[0].add_unit(SimUnit(UnitSpec(1, soc_pct=40.0), sim.plant_params, sim.now_s, sim.gateway.lock))
    first = loop.handle_command(Scan(first_id=1, last_id=3))  # default: the first gateway
    assert first["gateway"] == gw(sim, 0) and [f["id"] for f in first["found"]] == [1]
    lan = loop.handle_command(Scan(first_id=1, last_id=3, gateway=gw(sim, 1)))
    assert [f["id"] for f in lan["found"]] == [1] and "ID" in lan["note"]
    with pytest.raises(CommandError) as v3:
        loop.handle_command(SetId(new_id=2, gateway=gw(sim, 1)))
    assert v3.value.status == 409 and "v3" in str(v3.value.message)
    with pytest.raises(CommandError) as unknown:
        loop.handle_command(Scan(gateway="10.9.9.9:502"))
    assert unknown.value.status == 400

    result = loop.handle_command(SetId(new_id=2, gateway=gw(sim, 0)))
    assert result["verified"] and new.unit_id == 2 and result["gateway"] == gw(sim, 0)
    original.silent = False

    added = loop.handle_command(AddToConfig(battery_id=2, gateway=gw(sim, 0)))
    assert added["saved"] and f"{gw(sim, 0)}/2" in added["units"]
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["battery"]["units"][-1] == {"ip": gw(sim, 0), "id": 2}
    assert (tmp_path / "config.json.bak").exists()
    assert f"{gw(sim, 0)}/2" in loop.batteries  # the running control has it
    before = path.read_bytes()
    with pytest.raises(CommandError) as lan_id:  # a second ID on the v3 LAN port would be the same battery
        loop.handle_command(AddToConfig(battery_id=2, gateway=gw(sim, 1)))
    why = str(lan_id.value.message)
    assert lan_id.value.status == 409
    assert f"battery.units[3]: several unit IDs (1, 2) on the v3 host {gw(sim, 1)}" in why
    assert "answers on every unit ID" in why and "rs485_gateway: true" in why
    assert path.read_bytes() == before and f"{gw(sim, 1)}/2" not in loop.batteries
    loop.handle_command(ExitSetup())
    sim.set_load_w(5000.0)
    run_until(loop, fake_clock, lambda: all(discharging(u) for u in sim.units), 30, "all three discharging",
              step_s=1.0)

