"""MQTT for Home Assistant and friends: availability, the state topic, the mode command, discovery.

``MqttBridge`` runs in its own thread and never touches the hardware or the control thread's objects:
it reads the snapshots the control thread publishes to the ``StatusStore`` and hands mode commands to
the control thread through the ``CommandQueue`` (from a small worker thread, so that a slow control
cycle never holds up the state topic). paho-mqtt's network thread (``loop_start``) connects, keeps the
connection and reconnects by itself; a broker that is down at start or goes away never slows the control,
which does not know MQTT exists.

Topics (``p`` = ``mqtt.topic_prefix``, interfaces.md "MQTT and Home Assistant"):
- ``p/availability``: ``online`` (retained) while running, ``offline`` on a clean shutdown and as the will;
- ``p/state``: JSON, not retained, at least every ``STATE_EVERY_S`` and within ``POLL_S`` of a change;
- ``p/mode/set``: ``auto`` | ``normal`` | ``hold`` | ``charge`` | ``off`` or the JSON body of POST /api/mode;
- ``p/plan/set``: ``ON`` | ``OFF``, the plan switch (only with a plan; ``StatusStore.set_plan_enabled``);
- ``<discovery_prefix>/<component>/<node>/<object>/config``: Home Assistant discovery (retained),
  published again after every (re)connect. Batteries are named by their ``uid`` (config_loader.UnitConfig.uid),
  never by their address, so a new gateway address keeps the entities. After every connect the bridge
  subscribes to ``<discovery_prefix>/+/<node>/+/config`` and to ``p/discovery_sync``, publishes a token on the
  latter and, when it comes back (the broker has sent every retained config by then), clears each config it did
  not publish itself (empty retained payload): batteries no longer configured, entities of older versions.

With a tariff (``import_price_ct`` given) the state carries ``import_price_ct_per_kwh`` (the current slot;
null when unknown) and ``energy_today`` carries ``cost_eur``, ``feed_in_revenue_eur``, ``saved_eur`` and
``day_start``; Home Assistant gets a price sensor (``ct/kWh``, no device class: ``monetary`` takes only a
currency unit) and today's cost, feed-in revenue and saving (``monetary``, ``EUR``, ``state_class: total``
with ``last_reset`` at local midnight, the only state class Home Assistant accepts for ``monetary``).

With a plan (``StatusStore.plan_enabled`` not None) the state carries ``plan``: ``enabled`` (the switch),
``mode`` and ``reason`` (what the plan says now, ``planning.plan_mode.plan_now``) and ``next_charge_start``
(ISO 8601 with offset, null when no charge is planned); Home Assistant gets a ``switch`` for it and sensors for
the mode (``enum``), the reason (text) and the next charge window (``timestamp``).

The broker password goes to paho only; it is never logged.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from config_loader import BatteryConfig, MqttConfig, unit_uid
from control import modes
from control.commands import SetMode
from control.i18n import Msg
from control.status_store import BatteryStatus, CommandError, CommandQueue, StatusSnapshot, StatusStore
from planning.plan_mode import iso_time, plan_now

log = logging.getLogger("marstek")

STATE_EVERY_S = 5.0  # the state topic at least this often
POLL_S = 0.25  # how often the store is looked at (a grid change is published within this + one cycle)
KEEPALIVE_S = 30
RECONNECT_DELAY_S = (1, 30)  # paho's back-off between reconnect attempts, min..max
COMMAND_TIMEOUT_S = 10.0
SWEEP_TIMEOUT_S = 10.0  # without the sync token back by then, stale discovery is cleared from what arrived
SHUTDOWN_PUBLISH_S = 2.0
CONTROL_STATES = ("active", "setup", "stopped", "error")
MODE_OPTIONS = ("auto", "hold", "charge", "off")
PLAN_MODE_OPTIONS = ("auto", "hold", "charge")
STATE_TEXT_MAX = 255  # Home Assistant refuses a longer sensor state
DEVICE_NAME = "Marstek PV-Akku Steuerung"


def make_client(cfg: MqttConfig, client_id: str) -> paho.Client:
    """A paho client (callback API 2) with the section's credentials and a reconnect back-off."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    client.reconnect_delay_set(*RECONNECT_DELAY_S)
    return client


def broker_name(cfg: MqttConfig) -> str:
    return f"{cfg.host}:{cfg.port}"


def object_id(text: str) -> str:
    """``text`` as a discovery node/object id (Home Assistant allows [a-zA-Z0-9_-])."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text)


class MqttBridge:
    """Publishes the status to MQTT and takes mode commands from it (one thread, see the module doc)."""

    def __init__(
        self,
        cfg: MqttConfig,
        store: StatusStore,
        commands: CommandQueue,
        *,
        gateway: str,
        max_charge_power_w: Callable[[], int],
        sw_version: str = "",
        client: paho.Client | None = None,
        energy_today: Callable[[], Mapping[str, Any]] | None = None,
        import_price_ct: Callable[[], float | None] | None = None,
    ) -> None:
        self.cfg = cfg
        # The current slot's import price, ct/kWh (None: unknown); the callable itself None: no tariff.
        self.import_price_ct = import_price_ct
        # Today's energy from the history (import_wh, export_wh, charge_wh, discharge_wh); None: no history.
        self.energy_today = energy_today
        self.store = store
        self.commands = commands
        self.gateway = gateway  # "<host>:<port>" of the batteries' Modbus gateway (battery keys)
        self.max_charge_power_w = max_charge_power_w
        self.sw_version = sw_version or "dev"
        self.node = object_id(cfg.client_id)
        prefix = cfg.topic_prefix
        self.availability_topic = f"{prefix}/availability"
        self.state_topic = f"{prefix}/state"
        self.command_topic = f"{prefix}/mode/set"
        self.plan_topic = f"{prefix}/plan/set"
        self.sync_topic = f"{prefix}/discovery_sync"
        self.discovery_filter = f"{cfg.discovery_prefix}/+/{self.node}/+/config"
        self.client = client or make_client(cfg, cfg.client_id)
        self.client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        # Every callback guarded: an exception escaping into paho's network thread ends that thread, and then
        # every later command would be ignored while ``online`` is still published.
        self.client.on_connect = _guarded("on_connect", self._on_connect)
        self.client.on_disconnect = _guarded("on_disconnect", self._on_disconnect)
        self.client.on_connect_fail = _guarded("on_connect_fail", self._on_connect_fail)
        self.client.on_message = _guarded("on_message", self._on_message)
        self.client.suppress_exceptions = True  # a second net: paho logs instead of re-raising
        self._pending: queue.Queue[modes.ModeRequest] = queue.Queue(maxsize=16)
        self._connected = threading.Event()
        self._discovery_due = threading.Event()
        self._discovered_keys: tuple[str, ...] = ()
        self._published_topics: set[str] = set()  # the discovery configs of this run (bridge thread)
        # The sweep of stale discovery: topics seen retained since the connect (paho's thread adds, the bridge
        # thread reads under the lock), the token that says "all retained ones are in", when the sweep began.
        self._sweep_lock = threading.Lock()
        self._seen_discovery: set[str] = set()
        self._sync_token = ""
        self._synced = threading.Event()
        self._sweep_since_s: float | None = None
        self._last_state: tuple[Any, ...] | None = None
        self._last_state_s = 0.0
        self._connect_failed_logged = False
        self.discovery_published = 0  # how often the whole discovery went out (tests, diagnostics)
        self.sweeps_done = 0  # how often stale discovery was looked for after a connect (tests)

    # ------------------------------------------------------------------ the thread
    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set; then say ``offline`` and disconnect."""
        worker = threading.Thread(target=self._command_worker, args=(stop,), name="mqtt-commands", daemon=True)
        worker.start()
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()  # paho's own network thread: connects, reconnects, delivers messages
        try:
            while not stop.wait(POLL_S):
                try:
                    self.tick(time.monotonic())
                except Exception:  # a bug here must not end the bridge (nor touch the control)
                    log.exception(Msg("mqtt_publish_failed"))
        finally:
            self._shutdown()
            worker.join(timeout=COMMAND_TIMEOUT_S + 1)

    def tick(self, now_s: float) -> None:
        """Publish the discovery when due and the state when it changed or is old (bridge thread)."""
        if not self._connected.is_set():
            return
        snap = self.store.latest()
        keys = tuple(self.battery_uid(b) for b in snap.batteries)
        if self._discovery_due.is_set() or keys != self._discovered_keys:
            self._discovery_due.clear()
            self.publish_discovery(snap)
        self._sweep(now_s)
        state = self.state_document(snap)
        signature = (state["grid_power_w"], state["control_state"], state["operating_mode"], state["meter_ok"],
                     tuple((b["online"], b["setpoint_w"]) for b in state["batteries"]), state.get("plan"))
        if signature != self._last_state or now_s - self._last_state_s >= STATE_EVERY_S:
            self.client.publish(self.state_topic, json.dumps(state, ensure_ascii=False), qos=0, retain=False)
            self._last_state, self._last_state_s = signature, now_s

    def _shutdown(self) -> None:
        if self._connected.is_set():
            info = self.client.publish(self.availability_topic, "offline", qos=1, retain=True)
            # The connection may go away meanwhile: then the will says it.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=SHUTDOWN_PUBLISH_S)
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------------ paho callbacks (paho's thread)
    def _on_connect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._log_connect_failure(str(reason))
            return
        self._connect_failed_logged = False
        log.info("%s", Msg("mqtt_connected", broker=broker_name(self.cfg)))
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        client.subscribe(self.command_topic, qos=1)
        client.subscribe(self.plan_topic, qos=1)
        token = f"{time.time_ns():x}-{id(self):x}"
        with self._sweep_lock:
            self._seen_discovery.clear()
            self._sync_token = token
            self._synced.clear()
            self._sweep_since_s = None
        # In this order on one connection: the broker sends the retained configs before it echoes the token.
        client.subscribe(self.discovery_filter, qos=1)
        client.subscribe(self.sync_topic, qos=1)
        client.publish(self.sync_topic, token, qos=1, retain=False)
        self._last_state = None  # a fresh state at once
        self._discovery_due.set()
        self._connected.set()

    def _on_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and reason.value != 0:
            log.warning("%s", Msg("mqtt_disconnected", broker=broker_name(self.cfg), error=str(reason)))

    def _on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        self._log_connect_failure("no answer")

    def _log_connect_failure(self, error: str) -> None:
        if not self._connect_failed_logged:  # once per outage, not every retry
            self._connect_failed_logged = True
            log.warning("%s", Msg("mqtt_connect_failed", broker=broker_name(self.cfg), error=error))

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        if message.topic == self.sync_topic:
            with self._sweep_lock:
                if message.payload.decode("utf-8", "replace") == self._sync_token:
                    self._synced.set()
            return
        if message.topic.startswith(f"{self.cfg.discovery_prefix}/") and message.topic.endswith("/config"):
            with self._sweep_lock:
                if message.payload:
                    self._seen_discovery.add(message.topic)
                else:
                    self._seen_discovery.discard(message.topic)
            return
        if message.topic not in (self.command_topic, self.plan_topic):
            return
        if message.retain:
            # A retained command would be applied again after every reconnect, overriding a newer choice
            # from the dashboard or an expiry; the mode is kept across restarts by the program itself.
            log.warning("%s", Msg("mqtt_retained_ignored", topic=message.topic))
            return
        if message.topic == self.plan_topic:
            self._switch_plan(message.payload)
            return
        try:
            request = modes.parse_payload(message.payload, self.max_charge_power_w())
        except modes.ModeError as exc:
            log.warning("%s", Msg("mqtt_bad_payload", topic=message.topic, error=str(exc)))
            return
        try:
            self._pending.put_nowait(request)
        except queue.Full:
            log.warning("%s", Msg("mqtt_command_failed", topic=message.topic, error="busy"))

    def _switch_plan(self, payload: bytes | bytearray) -> None:
        """``ON`` / ``OFF`` on ``p/plan/set`` (paho's thread: the switch never waits on the control or the disk)."""
        text = payload.decode("utf-8", "replace").strip().upper()
        if text not in ("ON", "OFF"):
            log.warning("%s", Msg("mqtt_bad_payload", topic=self.plan_topic, error=Msg("plan_switch_payload")))
            return
        if not self.store.set_plan_enabled(text == "ON", "mqtt"):
            log.warning("%s", Msg("mqtt_command_failed", topic=self.plan_topic, error=Msg("plan_not_configured")))
            return
        self._last_state = None  # show the switch at once

    def _command_worker(self, stop: threading.Event) -> None:
        """Hands MQTT mode commands to the control thread (and waits for it) off paho's thread."""
        while not stop.is_set():
            try:
                request = self._pending.get(timeout=POLL_S)
            except queue.Empty:
                continue
            try:
                self.commands.submit(SetMode(request=request, source="mqtt"), timeout_s=COMMAND_TIMEOUT_S)
            except CommandError as exc:
                log.warning("%s", Msg("mqtt_command_failed", topic=self.command_topic, error=str(exc)))
            except Exception as exc:  # a bug must not end the worker: later commands still count
                log.exception("%s", Msg("mqtt_command_failed", topic=self.command_topic, error=type(exc).__name__))
            self._last_state = None  # show the new mode at once

    def _sweep(self, now_s: float) -> None:
        """Clear the retained discovery configs of this node that this run did not publish (bridge thread)."""
        with self._sweep_lock:
            if not self._sync_token:
                return  # done for this connection (or not connected yet)
            if self._sweep_since_s is None:
                self._sweep_since_s = now_s
            if not self._synced.is_set() and now_s - self._sweep_since_s < SWEEP_TIMEOUT_S:
                return
            stale = sorted(self._seen_discovery - self._published_topics)
            self._sync_token = ""
        for topic in stale:
            self.client.publish(topic, b"", qos=1, retain=True)
        if stale:
            log.info("%s", Msg("mqtt_discovery_removed", count=len(stale)))
        # Our own configs would come back on every publish; the filter was only needed for the sweep.
        self.client.unsubscribe([self.discovery_filter, self.sync_topic])
        self.sweeps_done += 1

    # ------------------------------------------------------------------ documents
    def battery_key(self, b: BatteryStatus) -> str:
        """``"<host>:<port>/<id>"`` (the battery's ``key`` in /api/status when it has one)."""
        return str(getattr(b, "key", "") or f"{self.gateway}/{b.id}")

    def battery_uid(self, b: BatteryStatus) -> str:
        """The battery's stable ``uid`` (no address in it): the status's ``uid``, else the slug of its name."""
        return str(getattr(b, "uid", "") or unit_uid(self.battery_name(b), b.id))

    @staticmethod
    def battery_name(b: BatteryStatus) -> str:
        return str(getattr(b, "name", "") or f"Akku {b.id}")

    def state_document(self, snap: StatusSnapshot) -> dict[str, Any]:
        """The JSON of ``<prefix>/state``."""
        mode = snap.operating_mode
        return {
            "grid_power_w": snap.grid_power_w,
            "grid_power_avg_w": snap.grid_power_avg_w,
            "meter_ok": snap.meter_ok,
            "control_state": snap.control_state,
            "operating_mode": mode.get("mode", "auto"),
            "operating_mode_until": mode.get("until"),
            "operating_mode_power_w": mode.get("power_w"),
            "status": snap.status,
            "reason": str(snap.reason),
            "batteries": [
                {"uid": self.battery_uid(b), "key": self.battery_key(b), "name": self.battery_name(b), "id": b.id,
                 "soc_pct": round(b.soc_pct, 1) if b.soc_pct is not None else None,
                 "power_w": b.power_w, "setpoint_w": b.setpoint_w, "online": b.online}
                for b in snap.batteries
            ],
            "updated_at": snap.updated_at,
            **self._energy_document(),
            **self._price_document(),
            **self._plan_document(),
        }

    def _plan_document(self) -> dict[str, Any]:
        """``plan`` for the state document when this program has a plan."""
        enabled = self.store.plan_enabled()
        if enabled is None:
            return {}
        now = plan_now(self.store.plan(), datetime.datetime.now(datetime.timezone.utc))
        return {"plan": {"enabled": enabled, "mode": now.mode, "power_w": now.power_w,
                         "reason": str(now.reason)[:STATE_TEXT_MAX],
                         "next_charge_start": iso_time(now.next_charge_start)}}

    def _price_document(self) -> dict[str, Any]:
        if self.import_price_ct is None:
            return {}
        try:
            price = self.import_price_ct()
        except Exception:  # a lookup bug must not stop the state topic: the price is unknown this time
            log.exception(Msg("price_lookup_failed"))
            price = None
        return {"import_price_ct_per_kwh": round(price, 3) if price is not None else None}

    def _energy_document(self) -> dict[str, Any]:
        """``energy_today`` for the state document, when the history has it (a busy database: left out)."""
        if self.energy_today is None:
            return {}
        try:
            day = self.energy_today()
        except Exception:  # the history thread owns the database; a busy read only skips this field once
            return {}
        doc: dict[str, Any] = {k: round(float(day[k]), 1) for k in ENERGY_KEYS if k in day}
        if self.import_price_ct is not None:
            for k in MONEY_KEYS:
                doc[k] = round(float(day[k]), 3) if day.get(k) is not None else None
            doc["day_start"] = _day_start(day.get("date"))
        return {"energy_today": doc}

    def device(self) -> dict[str, Any]:
        return {"identifiers": [self.node], "name": DEVICE_NAME, "manufacturer": "Marstek PV-Akku Steuerung",
                "model": "Nulleinspeisung für Marstek Venus / Duravolt", "sw_version": self.sw_version}

    def discovery(self, snap: StatusSnapshot) -> dict[str, dict[str, Any]]:
        """Every discovery config message: topic -> payload."""
        common = {"availability_topic": self.availability_topic, "payload_available": "online",
                  "payload_not_available": "offline", "device": self.device(), "state_topic": self.state_topic}
        power = {"device_class": "power", "unit_of_measurement": "W", "state_class": "measurement"}
        entities: list[tuple[str, str, dict[str, Any]]] = [
            ("sensor", "grid_power", {"name": "Netzleistung", "value_template": "{{ value_json.grid_power_w }}",
                                      **power}),
            ("sensor", "control_state", {"name": "Regelung", "device_class": "enum", "options": list(CONTROL_STATES),
                                         "value_template": "{{ value_json.control_state }}"}),
            ("binary_sensor", "meter_ok", {"name": "Zähler", "device_class": "connectivity",
                                           "value_template": "{{ 'ON' if value_json.meter_ok else 'OFF' }}"}),
            ("select", "operating_mode", {"name": "Betriebsart", "options": list(MODE_OPTIONS),
                                          "command_topic": self.command_topic,
                                          "value_template": "{{ value_json.operating_mode }}"}),
        ]
        if self.energy_today is not None:
            energy = {"device_class": "energy", "unit_of_measurement": "Wh", "state_class": "total_increasing"}
            for field, label in ENERGY_KEYS.items():
                entities.append(("sensor", f"energy_today_{field.removesuffix('_wh')}", {
                    "name": label, **energy,
                    "value_template": f"{{{{ value_json.energy_today.{field} if value_json.energy_today is defined "
                                      "else None }}"}))
        if self.import_price_ct is not None:
            entities.append(("sensor", "import_price", {
                "name": "Strompreis", "unit_of_measurement": "ct/kWh", "state_class": "measurement",
                "icon": "mdi:cash", "value_template": "{{ value_json.import_price_ct_per_kwh }}"}))
            if self.energy_today is not None:
                defined = "value_json.energy_today is defined"
                for field, label in MONEY_KEYS.items():
                    entities.append(("sensor", f"{field.removesuffix('_eur')}_today", {
                        "name": label, "device_class": "monetary", "unit_of_measurement": "EUR",
                        "state_class": "total",
                        "value_template": f"{{{{ value_json.energy_today.{field} if {defined} else None }}}}",
                        "last_reset_value_template": f"{{{{ value_json.energy_today.day_start if {defined} "
                                                     "else None }}"}))
        if self.store.plan_enabled() is not None:
            entities += self._plan_entities()
        for b in snap.batteries:
            uid = self.battery_uid(b)
            name = self.battery_name(b)
            pick = f"{{% set b = value_json.batteries | selectattr('uid', 'equalto', {json.dumps(uid)}) | first %}}"
            oid = "battery_" + object_id(uid)
            entities += [
                ("sensor", f"{oid}_soc", {"name": f"{name} Ladestand", "device_class": "battery",
                                          "unit_of_measurement": "%", "state_class": "measurement",
                                          "value_template": pick + "{{ b.soc_pct if b is defined else None }}"}),
                ("sensor", f"{oid}_power", {"name": f"{name} Leistung", **power,
                                            "value_template": pick + "{{ b.power_w if b is defined else None }}"}),
                ("sensor", f"{oid}_setpoint", {
                    "name": f"{name} Sollwert", **power,
                    "value_template": pick + "{{ b.setpoint_w if b is defined else None }}"}),
                ("binary_sensor", f"{oid}_online", {
                    "name": f"{name} online", "device_class": "connectivity",
                    "value_template": pick + "{{ 'ON' if b is defined and b.online else 'OFF' }}"}),
            ]
        return {
            f"{self.cfg.discovery_prefix}/{component}/{self.node}/{obj}/config": {
                **config, "unique_id": f"{self.node}_{obj}", **common}
            for component, obj, config in entities
        }

    def _plan_entities(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The plan switch and what the plan says now (only with a plan)."""
        defined = "value_json.plan is defined"
        return [
            ("switch", "plan_enabled", {
                "name": "Plan nach Strompreis", "command_topic": self.plan_topic, "payload_on": "ON",
                "payload_off": "OFF", "icon": "mdi:calendar-clock",
                "value_template": f"{{{{ ('ON' if value_json.plan.enabled else 'OFF') if {defined} else None }}}}"}),
            ("sensor", "plan_mode", {
                "name": "Plan Betriebsart", "device_class": "enum", "options": list(PLAN_MODE_OPTIONS),
                "value_template": f"{{{{ value_json.plan.mode if {defined} else None }}}}"}),
            ("sensor", "plan_reason", {
                "name": "Plan Begründung", "icon": "mdi:text-box-outline",
                "value_template": f"{{{{ value_json.plan.reason if {defined} else None }}}}"}),
            ("sensor", "plan_next_charge", {
                "name": "Plan nächstes Laden", "device_class": "timestamp",
                "value_template": f"{{{{ value_json.plan.next_charge_start if {defined} "
                                  "and value_json.plan.next_charge_start else None }}"}),
        ]

    def publish_discovery(self, snap: StatusSnapshot) -> None:
        configs = self.discovery(snap)
        for topic in sorted(self._published_topics - set(configs)):  # a battery removed while running
            self.client.publish(topic, b"", qos=1, retain=True)
        for topic, payload in configs.items():
            self.client.publish(topic, json.dumps(payload, ensure_ascii=False), qos=1, retain=True)
        self._published_topics = set(configs)
        self._discovered_keys = tuple(self.battery_uid(b) for b in snap.batteries)
        self.discovery_published += 1


ENERGY_KEYS = {"import_wh": "Netzbezug heute", "export_wh": "Einspeisung heute", "charge_wh": "Geladen heute",
               "discharge_wh": "Entladen heute"}


MONEY_KEYS = {"cost_eur": "Stromkosten heute", "feed_in_revenue_eur": "Einspeisevergütung heute",
              "saved_eur": "Ersparnis heute"}


def _day_start(date: Any) -> str | None:
    """Local midnight of ``"YYYY-MM-DD"`` as ISO 8601 with its offset (Home Assistant's ``last_reset``)."""
    try:
        day = datetime.date.fromisoformat(str(date))
    except ValueError:
        return None
    return datetime.datetime(day.year, day.month, day.day).astimezone().isoformat()


def _guarded(name: str, callback: Callable[..., None]) -> Callable[..., None]:
    """``callback`` that logs any exception (e.g. RecursionError from a deeply nested payload) instead of
    letting it reach paho's network thread."""

    def guarded(*args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:
            log.error("%s", Msg("mqtt_callback_failed", callback=name, error=f"{type(exc).__name__}: {exc}"[:200]))

    return guarded


def start_bridge(bridge: MqttBridge, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=bridge.run, args=(stop,), name="mqtt", daemon=True)
    thread.start()
    return thread


def gateway_of(battery: BatteryConfig) -> str:
    """``"<host>:<port>"`` of the first battery's gateway (IPv6 in brackets), for either form of the
    battery section (``battery.ip`` is "" in the ``battery.units`` form); keys a battery status without its own
    ``key`` (``MqttBridge.battery_key``)."""
    return battery.units[0].gateway
