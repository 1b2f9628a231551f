"""MQTT against a real broker: Debian's mosquitto, started here on a free loopback port with a generated
config. Discovery, the state topic, mode commands, the last will, broker loss and return, the MQTT meter.

Without /usr/sbin/mosquitto these tests are skipped (apt-get install mosquitto), except under CI=true,
where a missing broker is a failure.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from config_loader import MqttConfig, MqttMeterConfig, parse_config
from control import i18n
from control.status_store import BatteryStatus, CommandQueue, StatusSnapshot, StatusStore
from integrations.diagnostics import program_version
from integrations.mqtt_bridge import MqttBridge, gateway_of
from meters.mqtt_meter import MqttMeter, MqttMeterError, power_from_payload
from simulator.world import Simulation, UnitSpec
from tests.helpers import free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TARGET_W = 20.0

if not Path(MOSQUITTO).exists():
    reason = "mosquitto is missing (apt-get install mosquitto); the MQTT tests need a real broker"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


# ---------------------------------------------------------------------------- the broker
class Broker:
    """mosquitto on 127.0.0.1:<port> with a generated config; stop() and start() keep the port."""

    def __init__(self, directory: Path, port: int | None = None, users: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.users = users or {}
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr"]
        if os.geteuid() == 0:
            lines.append("user root")  # do not drop to the mosquitto user (the files are in a temp dir)
        if self.users:
            password_file = self.dir / "passwords"
            password_file.write_text("", encoding="utf-8")
            for user, password in self.users.items():
                subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b",
                                str(password_file), user, password], check=True, capture_output=True)
            password_file.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        self.config = self.dir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.log = self.dir / "mosquitto.log"

    def start(self) -> Broker:
        log = self.log.open("a", encoding="utf-8")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        log.close()

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text(encoding="utf-8")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_until(listening, 10, f"mosquitto listening on {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "mosquitto").start()
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Received:
    topic: str
    payload: str
    retain: bool
    at_s: float


@dataclass
class Listener:
    """A paho client that records every message under ``topics`` (and resubscribes after a reconnect)."""

    port: int
    topics: tuple[str, ...] = ("#",)
    username: str | None = None
    password: str | None = None
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-listener-{id(self)}")
        if self.username:
            self.client.username_pw_set(self.username, self.password)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_a: self.connected.clear()
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        wait_until(self.connected.is_set, 10, "the test listener connected")

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            for topic in self.topics:
                client.subscribe(topic, qos=1)
            self.connected.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload.decode(), bool(msg.retain), time.monotonic()))

    def on(self, topic: str, since_s: float = 0.0) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic and m.at_s >= since_s]

    def latest(self, topic: str) -> Received | None:
        found = self.on(topic)
        return found[-1] if found else None

    def under(self, prefix: str, since_s: float = 0.0) -> dict[str, Received]:
        with self._lock:
            return {m.topic: m for m in self.messages if m.topic.startswith(prefix) and m.at_s >= since_s}

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def listening(port: int, *topics: str, **auth: Any) -> Iterator[Listener]:
    listener = Listener(port, topics or ("#",), **auth)
    try:
        yield listener
    finally:
        listener.close()


def mqtt_cfg(port: int, **changes: Any) -> MqttConfig:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "client_id": "marstek-test"}
    values.update(changes)
    return MqttConfig(**values)


def snapshot(grid_w: float | None, **changes: Any) -> StatusSnapshot:
    batteries = (BatteryStatus(1, True, 55.0, 400, 398.0, "discharge"), BatteryStatus(2, False, None, 0, None, "idle"))
    values: dict[str, Any] = {"grid_power_w": grid_w, "grid_power_avg_w": grid_w, "meter_type": "shelly",
                              "meter_ok": grid_w is not None, "control_state": "active", "batteries": batteries}
    values.update(changes)
    return StatusSnapshot(**values)


@contextlib.contextmanager
def running_bridge(cfg: MqttConfig, store: StatusStore, commands: CommandQueue | None = None) -> Iterator[MqttBridge]:
    bridge = MqttBridge(cfg, store, commands or CommandQueue(), gateway="192.168.1.200:502",
                        max_charge_power_w=lambda: 5000, sw_version="3.1")
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield bridge
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the MQTT bridge did not stop"


# ---------------------------------------------------------------------------- the bridge in-process
def test_discovery_has_unique_ids_device_classes_and_the_device_block(broker):
    store = StatusStore()
    store.publish(snapshot(120.0))
    with listening(broker.port, "homeassistant/#", "marstek/#") as listener, running_bridge(mqtt_cfg(broker.port),
                                                                                            store):
        wait_until(lambda: len(listener.under("homeassistant/")) >= 12, 10, "12 discovery messages")
        configs = {topic: json.loads(m.payload) for topic, m in listener.under("homeassistant/").items()}
        with listening(broker.port, "homeassistant/#") as late:  # retained: a late subscriber gets them all
            wait_until(lambda: len(late.under("homeassistant/")) >= 12, 5, "the retained discovery")
            assert all(m.retain for m in late.under("homeassistant/").values())
        ids = [c["unique_id"] for c in configs.values()]
        assert len(ids) == len(set(ids)) == 12
        key = "battery_akku_1"  # the uid, not the address
        grid = configs["homeassistant/sensor/marstek-test/grid_power/config"]
        assert (grid["device_class"], grid["unit_of_measurement"], grid["state_class"]) == ("power", "W", "measurement")
        soc = configs[f"homeassistant/sensor/marstek-test/{key}_soc/config"]
        assert (soc["device_class"], soc["unit_of_measurement"], soc["state_class"]) == ("battery", "%", "measurement")
        assert '"akku_1"' in soc["value_template"] and soc["name"] == "Akku 1 Ladestand"
        assert soc["unique_id"] == "marstek-test_battery_akku_1_soc"
        for obj in ("power", "setpoint"):
            c = configs[f"homeassistant/sensor/marstek-test/{key}_{obj}/config"]
            assert (c["device_class"], c["unit_of_measurement"]) == ("power", "W")
        online = configs[f"homeassistant/binary_sensor/marstek-test/{key}_online/config"]
        assert online["device_class"] == "connectivity"
        state = configs["homeassistant/sensor/marstek-test/control_state/config"]
        assert state["device_class"] == "enum" and state["options"] == ["active", "setup", "stopped", "error"]
        select = configs["homeassistant/select/marstek-test/operating_mode/config"]
        assert select["command_topic"] == "marstek/mode/set"
        assert select["options"] == ["auto", "hold", "charge", "off"]
        for c in configs.values():
            assert c["availability_topic"] == "marstek/availability" and c["state_topic"] == "marstek/state"
            assert set(c["device"]) == {"identifiers", "name", "manufacturer", "model", "sw_version"}
            assert c["device"]["sw_version"] == "3.1"
        online_msg = listener.latest("marstek/availability")
        assert online_msg is not None and online_msg.payload == "online"
        with listening(broker.port, "marstek/availability") as late:
            wait_until(lambda: late.latest("marstek/availability"), 5, "the retained availability")
            assert late.latest("marstek/availability").retain  # type: ignore[union-attr]
    # A clean shutdown says offline (retained).
    with listening(broker.port, "marstek/availability") as late:
        wait_until(lambda: late.latest("marstek/availability"), 5, "the retained availability")
        assert late.latest("marstek/availability").payload == "offline"  # type: ignore[union-attr]


def retained_under(port: int, prefix: str) -> dict[str, Any]:
    """Every retained message under ``prefix`` now: a fresh subscriber, then a marker published after its
    subscription comes back behind all retained ones."""
    with listening(port, f"{prefix}#") as late:
        marker = f"{prefix}zz_marker/{time.monotonic_ns()}"
        late.publish(marker, "end")
        wait_until(lambda: late.on(marker), 5, "the marker behind the retained messages")
        return {t: json.loads(m.payload) for t, m in late.under(prefix).items() if t != marker and m.retain}


def test_three_starts_with_new_gateway_addresses_leave_one_set_of_entities(broker):
    # An entity of an older version (its unique_id held the gateway's address) is still retained.
    legacy = "homeassistant/sensor/marstek-test/battery_192_168_1_200_502_1_soc/config"
    with listening(broker.port, "none") as old:
        old.publish(legacy, json.dumps({"name": "Akku 1 Ladestand", "unique_id": "marstek-test_battery_192_1"}),
                    retain=True)
        old.publish("homeassistant/sensor/other-node/grid_power/config", json.dumps({"name": "x"}), retain=True)
    batteries_per_start = [("akku_1", "garage"), ("akku_1",), ("akku_1",)]
    for n, uids in enumerate(batteries_per_start):
        gateway = f"10.0.{n}.7:502"  # a new DHCP address at every start
        store = StatusStore()
        store.publish(snapshot(100.0, batteries=tuple(
            BatteryStatus(i + 1, True, 61.900000000000006, 0, 0.0, "idle", key=f"{gateway}/{i + 1}", uid=uid,
                          name=uid.title()) for i, uid in enumerate(uids))))
        with running_bridge(mqtt_cfg(broker.port), store) as bridge:
            wait_until(lambda b=bridge: b.sweeps_done >= 1, 15, "the stale discovery swept")
        configs = retained_under(broker.port, "homeassistant/")
        ours = {t: c for t, c in configs.items() if "/marstek-test/" in t}
        assert len(ours) == 4 + 4 * len(uids), sorted(ours)
        assert legacy not in configs
        assert "homeassistant/sensor/other-node/grid_power/config" in configs, "another node's entities stay"
        assert {c["unique_id"] for c in ours.values() if "battery" in c["unique_id"]} == {
            f"marstek-test_battery_{u}_{obj}" for u in uids for obj in ("soc", "power", "setpoint", "online")}
        assert not any("10_0_" in t for t in ours), "no address in any id"


def test_soc_is_published_rounded_to_a_tenth(broker):
    store = StatusStore()
    store.publish(snapshot(100.0, batteries=(BatteryStatus(1, True, 61.900000000000006, 0, 0.0, "idle"),)))
    with listening(broker.port, "marstek/state") as listener, running_bridge(mqtt_cfg(broker.port), store):
        wait_until(lambda: listener.on("marstek/state"), 10, "a first state")
        raw = listener.latest("marstek/state").payload  # type: ignore[union-attr]
        assert '"soc_pct": 61.9,' in raw and json.loads(raw)["batteries"][0]["uid"] == "akku_1"


@pytest.mark.slow
def test_state_flows_within_2_s_of_a_grid_change_and_at_least_every_5_s(broker):
    store = StatusStore()
    store.publish(snapshot(100.0, operating_mode={"mode": "hold", "power_w": None, "until": None, "source": "api"}))
    with listening(broker.port, "marstek/state") as listener, running_bridge(mqtt_cfg(broker.port), store):
        wait_until(lambda: listener.on("marstek/state"), 10, "a first state")
        doc = json.loads(listener.latest("marstek/state").payload)  # type: ignore[union-attr]
        assert doc["grid_power_w"] == 100.0 and doc["control_state"] == "active" and doc["meter_ok"] is True
        assert doc["operating_mode"] == "hold"
        assert doc["batteries"][0] == {"uid": "akku_1", "key": "192.168.1.200:502/1", "name": "Akku 1", "id": 1,
                                       "soc_pct": 55.0, "power_w": 398.0, "setpoint_w": 400, "online": True}
        assert doc["batteries"][1]["online"] is False and doc["batteries"][1]["soc_pct"] is None
        assert not listener.latest("marstek/state").retain  # type: ignore[union-attr]
        changed_s = time.monotonic()
        store.publish(snapshot(-345.0))
        wait_until(lambda: any(json.loads(m.payload)["grid_power_w"] == -345.0
                               for m in listener.on("marstek/state", changed_s)), 2.0, "the new grid power within 2 s")
        # Nothing changes: still a state at least every 5 s.
        quiet_s = time.monotonic()
        wait_until(lambda: len(listener.on("marstek/state", quiet_s)) >= 2, 11, "two states in ~10 s")
        stamps = [m.at_s for m in listener.on("marstek/state", quiet_s)]
        assert all(b - a <= 5.5 for a, b in itertools.pairwise(stamps))


def test_a_broker_with_a_password(tmp_path, caplog):
    broker = Broker(tmp_path / "secured", users={"marstek": "s3cret!"}).start()
    caplog.set_level(logging.DEBUG)
    try:
        store = StatusStore()
        store.publish(snapshot(10.0))
        with listening(broker.port, "marstek/#", username="marstek", password="s3cret!") as listener, \
                running_bridge(mqtt_cfg(broker.port, username="marstek", password="s3cret!"), store):
            wait_until(lambda: listener.on("marstek/state"), 10, "state through the password-protected broker")
        assert "s3cret!" not in repr(mqtt_cfg(broker.port, username="marstek", password="s3cret!"))
        assert "MQTT connected to 127.0.0.1" in caplog.text and "s3cret!" not in caplog.text
        # A wrong password: the bridge says so (without the password) and keeps trying.
        with running_bridge(mqtt_cfg(broker.port, username="marstek", password="wrong-pw"), store):
            wait_until(lambda: "MQTT: cannot connect" in caplog.text, 10, "the refused login is logged")
        assert "wrong-pw" not in caplog.text
    finally:
        broker.stop()


# ---------------------------------------------------------------------------- the MQTT meter
def test_power_from_payload_bare_number_and_dotted_path():
    assert power_from_payload(b" -123.5 ", None) == -123.5
    assert power_from_payload(b'{"SML": {"Power_curr": 456}}', "SML.Power_curr") == 456.0
    assert power_from_payload(b'{"a": ["7", 8]}', "a.0") == 7.0
    for payload, path in ((b"unknown", None), (b"{}", "x"), (b'{"x": true}', "x"), (b"nan", None),
                          (b'{"x": "abc"}', "x"), (b"\xff", None), (b"[1", "x")):
        with pytest.raises(ValueError):
            power_from_payload(payload, path)


def test_mqtt_meter_never_turns_a_missing_or_old_value_into_0_w(broker):
    now = [1000.0]
    section = MqttMeterConfig(topic="house/grid", power_path="power", max_age_seconds=10, timeout_seconds=0.3)
    meter = MqttMeter(mqtt_cfg(broker.port), section, clock=lambda: now[0])
    try:
        with pytest.raises(MqttMeterError, match="no reading received on house/grid"):
            meter.read()
        with listening(broker.port, "none") as pub:
            pub.publish("house/grid", '{"power": 742}')
            reading = wait_until(lambda: _try_read(meter), 5, "the meter has the value")
            assert reading.grid_power_w == 742.0 and reading.received_at_s == 1000.0  # type: ignore[union-attr]
            now[0] += 11  # older than max_age_seconds
            with pytest.raises(MqttMeterError, match="11 s old"):
                meter.read()
            pub.publish("house/grid", '{"power": "broken"}')
            wait_until(lambda: _raises_with(meter, "unusable"), 5, "an unusable payload is a failed read")
    finally:
        meter.close()


def test_mqtt_meter_without_a_broker_says_so(tmp_path):
    meter = MqttMeter(mqtt_cfg(free_port()), MqttMeterConfig(topic="house/grid", timeout_seconds=0.2))
    try:
        with pytest.raises(MqttMeterError, match=r"not connected to the MQTT broker 127\.0\.0\.1"):
            meter.read()
    finally:
        meter.close()


def _try_read(meter: MqttMeter) -> Any:
    try:
        return meter.read()
    except MqttMeterError:
        return None


def _raises_with(meter: MqttMeter, words: str) -> bool:
    try:
        meter.read()
    except MqttMeterError as exc:
        return words in str(exc)
    return False


# ---------------------------------------------------------------------------- main.py as a subprocess
def write_config(path: Path, sim: Simulation, web_port: int, mqtt_port: int, **sections: Any) -> Path:
    cfg: dict[str, Any] = {
        "version": "3.1",
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1, "max_failures_before_stop": 2},
        "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": [1, 2], "timeout_seconds": 1},
        "control": {"poll_interval_seconds": 1, "soc_update_interval_seconds": 5},
        "web": {"host": "127.0.0.1", "port": web_port, "language": "en"},  # the events' texts below are English
        "logging": {"level": "INFO", "file": str(path.parent / "logs" / "marstek.log")},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": "marstek-e2e"},
    }
    cfg.update(sections)
    parse_config(cfg)  # the test's own config must be valid
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


@contextlib.contextmanager
def running_main(config_path: Path) -> Iterator[subprocess.Popen]:
    output = (config_path.parent / "main-output.txt").open("w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--config", str(config_path)],
                            cwd=str(config_path.parent), stdout=output, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc)
        output.close()


def api(port: int, path: str = "/api/status") -> dict[str, Any]:
    try:
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=2).json()
    except requests.RequestException:
        return {}


@pytest.fixture
def sim() -> Iterator[Simulation]:
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)]) as s:
        s.set_load_w(900.0)
        s.set_pv_w(0.0)
        yield s


def discharging(sim: Simulation) -> bool:
    return any(sim.unit(i).commanded_w > 0 for i in (1, 2))


@pytest.mark.slow
def test_main_with_mqtt_commands_hold_and_the_last_will_on_kill(broker, sim, tmp_path):
    web_port = free_port()
    config = write_config(tmp_path / "config.json", sim, web_port, broker.port)
    with listening(broker.port, "none") as stale:  # a retained command from long ago: must not apply at start
        stale.publish("marstek/mode/set", "off", retain=True)
    with listening(broker.port, "homeassistant/#", "marstek/#") as listener, running_main(config) as proc:
        wait_until(lambda: api(web_port).get("control_state") == "active", 20, "control active")
        wait_until(lambda: any("retained message ignored" in e["message"] for e in api(web_port).get("events", [])),
                   10, "the retained command is ignored")
        listener.publish("marstek/mode/set", "", retain=True)  # clear it (an empty payload is ignored too)
        assert api(web_port, "/api/mode")["mode"] == "auto"
        wait_until(lambda: listener.latest("marstek/availability") and
                   listener.latest("marstek/availability").payload == "online", 10, "online")  # type: ignore[union-attr]
        wait_until(lambda: len(listener.under("homeassistant/")) >= 12, 10, "discovery for two batteries")
        device = json.loads(next(iter(listener.under("homeassistant/").values())).payload)["device"]
        assert device["sw_version"] == program_version() != "3.1", "the program's version, not the config's text"
        wait_until(lambda: discharging(sim), 20, "the batteries discharge into the 900 W load")

        # ~6 KB of nested brackets: json raises RecursionError in paho's thread; logged, and the bridge goes on.
        listener.publish("marstek/mode/set", '{"mode": ' + "[" * 3000 + "]" * 3000 + "}")
        wait_until(lambda: any("RecursionError" in e["message"] or "nested" in e["message"]
                               for e in api(web_port).get("events", [])), 5, "the nested payload logged")
        listener.publish("marstek/mode/set", "hold")
        wait_until(lambda: not discharging(sim), 4, "hold from MQTT: no discharge (one cycle is 1 s)")
        mode = api(web_port, "/api/mode")
        assert mode["mode"] == "hold" and mode["source"] == "mqtt"
        wait_until(lambda: any(json.loads(m.payload)["operating_mode"] == "hold" for m in listener.on("marstek/state")),
                   5, "the state topic shows hold")

        listener.publish("marstek/mode/set", "turbo")  # invalid: logged and ignored
        listener.publish("marstek/mode/set", '{"mode": "charge", "power_w": 5}')
        wait_until(lambda: sum("mode/set" in e["message"] for e in api(web_port).get("events", [])) >= 3, 5,
                   "the invalid payloads (and the stale retained one) logged")
        assert api(web_port, "/api/mode")["mode"] == "hold"

        listener.publish("marstek/mode/set", '{"mode": "charge", "power_w": 1000, "minutes": 5}')
        wait_until(lambda: api(web_port, "/api/mode").get("power_w") == 1000, 5, "charge 1000 W from MQTT")
        wait_until(lambda: sum(sim.unit(i).commanded_w for i in (1, 2)) == -1000, 5, "charging at 1000 W")
        listener.publish("marstek/mode/set", "normal")
        wait_until(lambda: api(web_port, "/api/mode").get("mode") == "auto", 5, "normal = auto")

        killed_s = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: any(m.payload == "offline" for m in listener.on("marstek/availability", killed_s)), 10,
                   "the broker sends the last will: offline")


@pytest.mark.slow
def test_broker_down_at_start_lost_and_back_never_stops_the_control(broker, sim, tmp_path):
    broker.stop()  # down at start
    web_port = free_port()
    config = write_config(tmp_path / "config.json", sim, web_port, broker.port)
    with running_main(config):
        wait_until(lambda: api(web_port).get("control_state") == "active", 20, "control active without a broker")
        wait_until(lambda: discharging(sim), 20, "regulating without a broker")

        broker.start()
        with listening(broker.port, "homeassistant/#", "marstek/#") as listener:
            wait_until(lambda: len(listener.under("homeassistant/")) >= 12, 20, "discovery once the broker is up")
            broker.stop()  # the broker goes away
            first = api(web_port)["updated_at"]
            wait_until(lambda: api(web_port).get("updated_at") not in (None, first), 5, "the control keeps cycling")
            sim.set_load_w(2000.0)
            wait_until(lambda: sum(sim.unit(i).commanded_w for i in (1, 2)) > 1500, 20,
                       "a load step is followed while the broker is down")
            assert api(web_port)["control_state"] == "active"
            back_s = time.monotonic()
            broker.start()
            wait_until(lambda: len(listener.under("homeassistant/", back_s)) >= 12, 40,
                       "discovery published again after the broker returned")
            wait_until(lambda: listener.on("marstek/state", back_s), 10, "state flows again")
            assert listener.latest("marstek/availability").payload == "online"  # type: ignore[union-attr]


@pytest.mark.slow
def test_the_mqtt_meter_regulates_a_load_step(broker, sim, tmp_path):
    web_port = free_port()
    config = write_config(tmp_path / "config.json", sim, web_port, broker.port,
                          energy_meter={"type": "mqtt"},
                          mqtt_meter={"topic": "house/grid/SENSOR", "power_path": "SML.Power_curr",
                                      "max_age_seconds": 5, "timeout_seconds": 1})
    stop = threading.Event()
    with listening(broker.port, "none") as publisher:
        def feed() -> None:  # a Tasmota SML reader: the simulator's meter reading, twice a second
            while not stop.wait(0.5):
                value = sim.meter_reading_w()
                if value is not None:
                    publisher.client.publish("house/grid/SENSOR", json.dumps({"SML": {"Power_curr": value}}))
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            sim.set_load_w(300.0)
            with running_main(config):
                wait_until(lambda: api(web_port).get("meter_type") == "mqtt" and api(web_port).get("meter_ok"), 20,
                           "the MQTT meter delivers")
                wait_until(lambda: abs(sim.true_grid_power_w() - TARGET_W) < 50, 40, "300 W load covered")
                sim.set_load_w(1100.0)
                wait_until(lambda: abs(sim.true_grid_power_w() - TARGET_W) < 50
                           and sum(sim.unit(i).power_w for i in (1, 2)) > 1000, 40, "800 W step settled")
                stop.set()  # the meter goes silent: its values age, the batteries stop (never 0 W)
                wait_until(lambda: not api(web_port).get("meter_ok", True), 15, "silent topic: meter failed")
                wait_until(lambda: all(sim.unit(i).commanded_w == 0 for i in (1, 2)), 20, "batteries stopped")
        finally:
            stop.set()
            feeder.join(5)


def test_energy_today_from_the_history_is_published_and_discovered() -> None:
    """With the history, the state carries today's energy and Home Assistant gets four energy sensors."""
    day = {"date": "2026-12-01", "import_wh": 1234.56, "export_wh": 78.9, "charge_wh": 2000.0, "discharge_wh": 1500.04}
    bridge = MqttBridge(mqtt_cfg(1883), StatusStore(), CommandQueue(), gateway="192.168.1.200:502",
                        max_charge_power_w=lambda: 5000, energy_today=lambda: day)
    state = bridge.state_document(snapshot(100.0))
    assert state["energy_today"] == {"import_wh": 1234.6, "export_wh": 78.9, "charge_wh": 2000.0,
                                     "discharge_wh": 1500.0}
    configs = [c for topic, c in bridge.discovery(snapshot(100.0)).items() if "/energy_today_" in topic]
    assert len(configs) == 4
    assert all(c["device_class"] == "energy" and c["unit_of_measurement"] == "Wh"
               and c["state_class"] == "total_increasing" for c in configs)
    assert {c["unique_id"] for c in configs} == {f"{bridge.node}_energy_today_{k}"
                                                 for k in ("import", "export", "charge", "discharge")}

    def busy() -> dict:
        raise RuntimeError("history database not readable")

    without = MqttBridge(mqtt_cfg(1883), StatusStore(), CommandQueue(), gateway="192.168.1.200:502",
                         max_charge_power_w=lambda: 5000, energy_today=busy)
    assert "energy_today" not in without.state_document(snapshot(100.0))  # a busy database skips it once
    none = MqttBridge(mqtt_cfg(1883), StatusStore(), CommandQueue(), gateway="192.168.1.200:502",
                      max_charge_power_w=lambda: 5000)
    assert not [t for t in none.discovery(snapshot(100.0)) if "energy_today" in t]


@pytest.mark.parametrize(("battery", "gateway"), [
    ({"units": [{"ip": "192.168.1.50", "name": "Keller"}, {"ip": "192.168.1.51:503", "name": "Garage"}]},
     "192.168.1.50:502"),
    ({"ip": "192.168.1.200", "port": 503, "akku_ids": [1, 2]}, "192.168.1.200:503"),
    ({"ip": "fe80::1", "akku_ids": [1]}, "[fe80::1]:502"),
])
def test_the_bridge_gateway_comes_from_the_units_in_either_form(battery: dict[str, Any], gateway: str) -> None:
    """``gateway_of`` as main.py's start_mqtt uses it: in the ``battery.units`` form (``battery.ip`` is "") the
    gateway is the first unit's, so a battery status without a key gets a real address, never ":502"."""
    cfg = parse_config({"shelly": {"ip": "192.168.1.100"}, "battery": battery, "mqtt": {"host": "127.0.0.1"}})
    assert cfg.mqtt is not None
    assert gateway_of(cfg.battery) == gateway
    bridge = MqttBridge(cfg.mqtt, StatusStore(), CommandQueue(), gateway=gateway_of(cfg.battery),
                        max_charge_power_w=lambda: 5000)
    state = bridge.state_document(snapshot(100.0))
    assert [b["key"] for b in state["batteries"]] == [f"{gateway}/1", f"{gateway}/2"]


def test_three_program_starts_on_new_gateway_addresses_give_one_set_of_entities(broker, tmp_path):
    """main.py three times, each time against a simulator on a new port (a new gateway address, as a
    DHCP change or every demo start gives): Home Assistant keeps one set of entities."""
    node = "homeassistant/"
    sets = []
    for n in range(3):
        with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)]) as sim:
            web_port = free_port()
            folder = tmp_path / f"start{n}"
            folder.mkdir()
            config = write_config(folder / "config.json", sim, web_port, broker.port)
            with running_main(config):
                wait_until(lambda p=web_port: api(p).get("control_state") == "active", 20,
                           "control active")
                wait_until(lambda: sum("_battery_" in c.get("unique_id", "")
                                       for c in retained_under(broker.port, node).values()) >= 8, 15,
                           "the batteries' discovery")
                gateway_port = str(sim.modbus_port)
            configs = retained_under(broker.port, node)
            sets.append(sorted(configs))
            assert not any(gateway_port in t or gateway_port in c["unique_id"] for t, c in configs.items())
            assert {c["unique_id"] for c in configs.values() if "_battery_" in c["unique_id"]} == {
                f"marstek-e2e_battery_{u}_{obj}" for u in ("akku_1", "akku_2")
                for obj in ("soc", "power", "setpoint", "online")}
    assert sets[0] == sets[1] == sets[2], "one set of entities across three starts"


@pytest.mark.slow
def test_prices_and_money_reach_home_assistant_prometheus_and_the_api(broker, sim, tmp_path):
    """main.py with a fixed tariff (no network): the current price, today's cost and saving as Home Assistant
    entities over a real mosquitto, in the state topic, in /metrics and in /api/energy."""
    from prometheus_client.parser import text_string_to_metric_families

    web_port = free_port()
    tariff = {"type": "fixed", "fixed_ct_per_kwh": 32.5, "feed_in_ct_per_kwh": 8.1}
    config = write_config(tmp_path / "config.json", sim, web_port, broker.port, tariff=tariff)
    with listening(broker.port, "homeassistant/#", "marstek/#") as listener, running_main(config):
        wait_until(lambda: discharging(sim), 30, "the batteries discharge into the 900 W load")

        def state() -> dict[str, Any]:
            found = listener.latest("marstek/state")
            return json.loads(found.payload) if found else {}

        wait_until(lambda: ((state().get("energy_today") or {}).get("saved_eur") or 0) > 0, 20,
                   "a saving counted today")
        doc = state()
        assert doc["import_price_ct_per_kwh"] == 32.5
        today = doc["energy_today"]
        assert isinstance(today["cost_eur"], float) and isinstance(today["feed_in_revenue_eur"], float)
        midnight = datetime.datetime.fromisoformat(today["day_start"])  # last_reset: local midnight with offset
        assert midnight.tzinfo is not None and (midnight.hour, midnight.minute) == (0, 0)
        configs = {t: json.loads(m.payload) for t, m in listener.under("homeassistant/").items() if m.payload}
        price = configs["homeassistant/sensor/marstek-e2e/import_price/config"]
        assert price["unit_of_measurement"] == "ct/kWh" and "device_class" not in price
        assert price["state_class"] == "measurement"
        for obj in ("cost_today", "saved_today", "feed_in_revenue_today"):
            c = configs[f"homeassistant/sensor/marstek-e2e/{obj}/config"]
            assert (c["device_class"], c["unit_of_measurement"], c["state_class"]) == ("monetary", "EUR", "total")
            assert "day_start" in c["last_reset_value_template"] and c["unique_id"] == f"marstek-e2e_{obj}"

        day = api(web_port, "/api/energy?days=1")["days"][-1]
        assert day["saved_eur"] > 0 and day["unpriced_wh"] >= 0 and day["cost_eur"] >= 0
        body = requests.get(f"http://127.0.0.1:{web_port}/metrics", timeout=5).text
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["marstek_import_price_ct_per_kwh"].samples[0].value == 32.5
        assert families["marstek_saved_eur"].type == "counter"
        assert families["marstek_saved_eur"].samples[0].value > 0


def render_ha(template: str, state: dict[str, Any]) -> str:
    """A value_template as Home Assistant renders it (Jinja2 with ``value_json``)."""
    import jinja2

    return jinja2.Environment().from_string(template).render(value_json=state).strip()


def test_the_plan_in_home_assistant_switch_mode_reason_and_next_charge_over_mosquitto(broker, caplog):
    """With a plan: a switch (command topic <prefix>/plan/set, ON/OFF) and the plan's mode, reason and next
    charge window (timestamp, ISO 8601 with offset); ON/OFF switch the store's plan switch, an unknown
    or retained payload is ignored; without a plan none of these entities exist."""
    from planning.model import Plan, PlannedSlot

    now = datetime.datetime.now(datetime.timezone.utc)
    q = datetime.timedelta(minutes=15)
    start = now - datetime.timedelta(minutes=5)

    def planned(at: datetime.datetime, mode: str, power_w: int | None) -> PlannedSlot:
        return PlannedSlot(at, at + q, 25.0, 7.9, mode, power_w, 50.0, None, 400.0,  # type: ignore[arg-type]
                           i18n.Msg("plan_hold_later", price=25.0, later=38.0))

    store = StatusStore()
    store.publish(snapshot(120.0))
    store.publish_plan(Plan(now, True, None, (planned(start, "hold", None), planned(start + q, "charge", 1500),
                                              planned(start + 2 * q, "charge", 1500)), 1.0, 1.2))
    store.init_plan_switch(True)
    with listening(broker.port, "nothing") as early:  # an old retained OFF: never applied at connect
        early.publish("marstek/plan/set", "OFF", retain=True)
    with caplog.at_level(logging.WARNING, logger="marstek"), listening(
            broker.port, "homeassistant/#", "marstek/#") as listener, running_bridge(mqtt_cfg(broker.port), store):
        prefix = "homeassistant/"
        wait_until(lambda: "marstek/plan/set: retained message ignored" in caplog.text, 10, "the retained OFF ignored")
        assert store.plan_enabled() is True
        wait_until(lambda: len(listener.under(prefix)) >= 16, 10, "12 + 4 discovery messages")
        configs = {t: json.loads(m.payload) for t, m in listener.under(prefix).items()}
        switch = configs["homeassistant/switch/marstek-test/plan_enabled/config"]
        assert switch["command_topic"] == "marstek/plan/set" and switch["state_topic"] == "marstek/state"
        assert (switch["payload_on"], switch["payload_off"]) == ("ON", "OFF")
        assert switch["unique_id"] == "marstek-test_plan_enabled"
        mode = configs["homeassistant/sensor/marstek-test/plan_mode/config"]
        assert mode["device_class"] == "enum" and mode["options"] == ["auto", "hold", "charge"]
        reason = configs["homeassistant/sensor/marstek-test/plan_reason/config"]
        nxt = configs["homeassistant/sensor/marstek-test/plan_next_charge/config"]
        assert nxt["device_class"] == "timestamp"

        def state() -> dict[str, Any]:
            found = listener.latest("marstek/state")
            return json.loads(found.payload) if found else {}

        wait_until(lambda: "plan" in state(), 10, "the plan in the state topic")
        doc = state()
        assert doc["plan"]["enabled"] is True and doc["plan"]["mode"] == "hold"
        assert doc["plan"]["reason"] == "holds the charge for later (now 25 ct, expected 38 ct)"
        when = datetime.datetime.fromisoformat(doc["plan"]["next_charge_start"])
        assert when.utcoffset() is not None and when == (start + q).replace(microsecond=0)
        # what Home Assistant shows, rendered from the discovery templates
        assert render_ha(switch["value_template"], doc) == "ON"
        assert render_ha(mode["value_template"], doc) == "hold"
        assert render_ha(reason["value_template"], doc).startswith("holds the charge")
        assert datetime.datetime.fromisoformat(render_ha(nxt["value_template"], doc)) == when
        none_planned = {**doc, "plan": {**doc["plan"], "next_charge_start": None}}
        assert render_ha(nxt["value_template"], none_planned) == "None"  # Home Assistant: unknown

        listener.publish("marstek/plan/set", "OFF")
        wait_until(lambda: store.plan_enabled() is False, 5, "the switch off")
        wait_until(lambda: state().get("plan", {}).get("enabled") is False, 5, "the state shows the switch off")
        assert render_ha(switch["value_template"], state()) == "OFF"
        listener.publish("marstek/plan/set", "maybe")
        wait_until(lambda: "marstek/plan/set: message ignored: expected ON or OFF" in caplog.text, 5,
                   "the unknown payload ignored")
        assert store.plan_enabled() is False
        listener.publish("marstek/plan/set", "on")
        wait_until(lambda: store.plan_enabled() is True, 5, "the switch on")
        listener.publish("marstek/plan/set", "", retain=True)  # the old retained OFF cleared

    without = StatusStore()
    without.publish(snapshot(120.0))
    bridge = MqttBridge(mqtt_cfg(broker.port), without, CommandQueue(), gateway="192.168.1.200:502",
                        max_charge_power_w=lambda: 5000)
    assert not [t for t in bridge.discovery(snapshot(120.0)) if "/plan_" in t]
    assert "plan" not in bridge.state_document(snapshot(120.0))
