"""The grid meter on an MQTT topic (``energy_meter.type: "mqtt"``, section ``mqtt_meter``).

For a Home Assistant sensor sent out by its MQTT statestream, a Tasmota SML reader (``tele/<dev>/SENSOR``,
``power_path`` e.g. ``"SML.Power_curr"``), an ESPHome meter or any OBIS reader that publishes the grid
power: + import, - export, W. The driver subscribes with its own paho client (its own network thread,
client id ``<mqtt.client_id>-meter``) and ``read`` returns the newest value with its receive time on the
control loop's clock. A value older than ``max_age_seconds``, or none at all, is a failed read
(``MqttMeterError``), never 0 W; like an HTTP meter's answer, a read waits up to ``timeout_seconds``
for a fresh value before it fails.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

from config_loader import MqttConfig, MqttMeterConfig
from control.devices import GridReading, MeterError
from control.i18n import Msg
from integrations.mqtt_bridge import KEEPALIVE_S, broker_name, make_client


class MqttMeterError(MeterError):
    """No grid power from the MQTT topic: none received yet, too old, or an unusable payload."""


def power_from_payload(payload: bytes | bytearray, power_path: str | None) -> float:
    """The grid power in a payload: a bare number (``power_path`` None) or a number at a dotted path."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if power_path is None:
        try:
            value: Any = float(text)
        except ValueError:
            raise ValueError(f"not a number: {text[:40]!r}") from None
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"not JSON: {text[:40]!r}") from None
        for part in power_path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise ValueError(f"no field {power_path!r}")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{power_path} is not a number: {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


class MqttMeter:
    """GridMeter on an MQTT topic (see the module doc)."""

    name = "mqtt"

    def __init__(
        self,
        broker: MqttConfig,
        cfg: MqttMeterConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        client: paho.Client | None = None,
    ) -> None:
        self.broker = broker
        self.cfg = cfg
        self.clock = clock
        self._lock = threading.Lock()
        self._latest: GridReading | None = None
        self._bad = ""  # why the newest message was unusable
        self._arrived = threading.Event()
        self._connected = threading.Event()
        self.client = client or make_client(broker, f"{broker.client_id}-meter")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_args: self._connected.clear()
        self.client.connect_async(broker.host, broker.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    @classmethod
    def from_config(cls, broker: MqttConfig, cfg: MqttMeterConfig, clock: Callable[[], float]) -> MqttMeter:
        return cls(broker=broker, cfg=cfg, clock=clock)

    def _on_connect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.cfg.topic, qos=0)  # again after every reconnect
            self._connected.set()

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            power_w = power_from_payload(message.payload, self.cfg.power_path)
        except ValueError as exc:
            with self._lock:
                self._bad = str(exc)
            return
        with self._lock:
            self._latest, self._bad = GridReading(power_w, self.clock()), ""
        self._arrived.set()

    def _fresh(self) -> GridReading | None:
        with self._lock:
            latest = self._latest
        if latest is None or self.clock() - latest.received_at_s > self.cfg.max_age_seconds:
            return None
        return latest

    def read(self) -> GridReading:
        """The newest grid power (+ import, - export, W) with its receive time, or MqttMeterError."""
        reading = self._fresh()
        if reading is None:
            self._arrived.clear()
            self._arrived.wait(self.cfg.timeout_seconds)
            reading = self._fresh()
        if reading is not None:
            return reading
        with self._lock:
            latest, bad = self._latest, self._bad
        topic = self.cfg.topic
        if not self._connected.is_set():
            raise MqttMeterError(Msg("mqtt_meter_no_broker", topic=topic, broker=broker_name(self.broker)))
        if bad:
            raise MqttMeterError(Msg("mqtt_meter_bad_payload", topic=topic, error=bad))
        if latest is None:
            raise MqttMeterError(Msg("mqtt_meter_no_value", topic=topic))
        raise MqttMeterError(Msg("mqtt_meter_too_old", topic=topic, age=self.clock() - latest.received_at_s,
                                 limit=self.cfg.max_age_seconds))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
