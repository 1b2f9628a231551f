"""Grid meter emulators on loopback HTTP: Shelly (every model of ``SHELLY_MODELS``), EcoTracker, HomeWizard P1
and a generic JSON meter (Tasmota SML ``Status 10``).

Each emulator is one HTTP server (``MeterEmulator`` subclass) that serves what its ``MeterSource`` shows:
``meter_snapshot()`` returns the visible reading (after the "frozen" / "absurd" faults), its age, the
energy counters and the active fault. The emulator turns that into the device's payloads and applies the
wire and payload faults itself ("timeout", "http500", "not_json", "missing_field", "non_numeric", "nan";
"refused" is ``refuse_connections()`` / ``accept_connections()``). A new device model is a new
``MeterEmulator`` subclass with its own request handler; it needs nothing else from the simulation.

Sign convention: grid power + import / − export, W.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import itertools
import json
import math
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qs, urlsplit

PAYLOAD_FAULTS = ("not_json", "missing_field", "non_numeric", "nan", "absurd", "frozen")
METER_FAULTS = (None, "timeout", "http500", *PAYLOAD_FAULTS, "refused")
SHELLY_PROFILES = ("triphase", "monophase", "gen1")
# Device models of the Shelly emulator: (id prefix, model code, gen, app, EM1 channels / Gen1 emeters, has profile).
# gen 0 = Gen1 (its /shelly has no "gen" key; "model code" is then its "type").
SHELLY_MODELS: dict[str, tuple[str, str, int, str, int, bool]] = {
    "pro3em": ("shellypro3em", "SPEM-003CEBEU", 2, "Pro3EM", 3, True),
    "3em63": ("shelly3em63g3", "S3EM-003CXCEU63", 3, "S3EMG3", 3, True),
    "proem50": ("shellyproem50", "SPEM-002CEBEU50", 2, "ProEM", 2, False),
    "emg3": ("shellyemg3", "S3EM-002CXCEU", 3, "EMG3", 2, False),
    "emmini4": ("shellyemminig4", "S4EM-001PXCEU16", 4, "MiniEMG4", 1, False),
    "gen1_3em": ("shellyem3", "SHEM-3", 0, "", 3, False),
    "gen1_em": ("shellyem", "SHEM", 0, "", 2, False),
}
SECOND_CHANNEL_W = -850.0  # what the non-grid clamp of a two-channel meter shows: a PV string feeding in
ABSURD_POWER_W = 150_000.0
_PHASE_SHARES = (0.40, 0.25, 0.35)  # how the total is split over the three phases / EM1 channels
_SHELLY_SERVER = "ShellyHTTP/1.0.0"
_SHELLY_OPEN_METHODS = ("/shelly", "Shelly.GetDeviceInfo")  # answered without auth
_SHELLY_KEYS_TRIPHASE = frozenset({"a_act_power", "b_act_power", "c_act_power", "total_act_power"})
_SHELLY_KEYS_MONOPHASE = frozenset({"act_power"})
_ECOTRACKER_404 = (
    "everHome Local API: <a href='/v1/json'>/v1/json</a><br>everHome Local API Documentation: "
    "<a href='https://everhome.cloud/en/developer/ecotracker'>Local-API Documentation</a><br>everHome Homepage: "
    "<a href='https://everhome.cloud'>everHome.cloud</a><br>everHome Cloud-APi: "
    "<a href='https://everhome.cloud/en/developer/api'>Cloud-API Documentation</a>"
)
_DIGEST_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]*))')
_NONCE_SLOTS = 32  # like the firmware's nonce ring


# ---------------------------------------------------------------------------------------------------------
# What the emulators serve
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterSnapshot:
    """One consistent view of the grid meter, as every emulator serves it."""

    grid_w: float  # visible reading (after "frozen" / "absurd"), W, + import
    sample_age_s: float  # wall-clock age of that sample, s
    avg_w: float  # mean of the last minute of samples, W
    import_wh: float  # energy counters, cumulative Wh
    export_wh: float
    fault: str | None  # active fault (``METER_FAULTS``)
    unixtime: int  # wall clock, s since the epoch
    uptime_s: float  # simulated time since the simulation was built, s


class MeterSource(Protocol):
    """Where a meter emulator gets its readings from (``simulator.Simulation`` is one)."""

    def meter_snapshot(self) -> MeterSnapshot:
        """The reading to serve now; thread-safe, cheap (called once or twice per request)."""
        ...


def _split_phases(total: float) -> tuple[float, float, float]:
    """Split a total over three phases (0.1 W steps) so that the phases add up to the total."""
    a = round(total * _PHASE_SHARES[0], 1)
    b = round(total * _PHASE_SHARES[1], 1)
    c = round(total - a - b, 1)
    return a, b, c


def _corrupt(obj: Any, keys: frozenset[str], fault: str | None) -> Any:
    """Apply a payload fault (missing_field / non_numeric / nan) to every power key in a nested payload."""
    if fault not in ("missing_field", "non_numeric", "nan"):
        return obj
    if isinstance(obj, list):
        return [_corrupt(x, keys, fault) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k in keys:
            if fault == "missing_field":
                continue
            out[k] = "abc" if fault == "non_numeric" else math.nan
        else:
            out[k] = _corrupt(v, keys, fault)
    return out


# ---------------------------------------------------------------------------------------------------------
# HTTP server and emulator base
# ---------------------------------------------------------------------------------------------------------


class _HttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers its open connections so ``close_all`` can cut them on stop."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], emulator: MeterEmulator
    ) -> None:
        self.emulator = emulator
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class MeterEmulator:
    """One meter device on loopback HTTP, serving ``source.meter_snapshot()``.

    ``start(host, port)`` (port 0 = ephemeral) binds and serves in a thread; the bound port is then in
    ``port``. ``stop()`` closes the port and cuts open connections and releases requests held by the
    "timeout" fault (they get no answer). ``refuse_connections()`` closes the port (fault "refused");
    ``accept_connections()`` listens on the same port again. Subclasses set ``handler_class`` (a
    ``MeterRequestHandler``) and ``thread_name``.
    """

    handler_class: ClassVar[type[MeterRequestHandler]]
    thread_name: ClassVar[str] = "sim-meter"

    def __init__(self, source: MeterSource, delay_s: float = 10.0) -> None:
        self.source = source
        self.delay_s = float(delay_s)  # how late the "timeout" fault answers, s
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._stopping = threading.Event()
        self._server_lock = threading.RLock()
        self._server: _HttpServer | None = None
        self._threads: list[threading.Thread] = []
        self._held = 0

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind ``host:port`` and serve in a thread; returns the bound port (OSError if it is taken)."""
        self._stopping.clear()
        self.host = host
        srv = _HttpServer((host, port), self.handler_class, self)
        self.port = srv.server_address[1]
        self._serve(srv)
        return self.port

    def stop(self) -> None:
        """Close the port, cut open connections, release held requests and join the server thread."""
        self._stopping.set()
        self.refuse_connections()
        with self._server_lock:
            threads, self._threads = self._threads, []
        for t in threads:
            t.join(timeout=5.0)

    def refuse_connections(self) -> None:
        """Stop listening: connections are refused and open ones cut; the port is kept for later."""
        with self._server_lock:
            srv, self._server = self._server, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
            srv.close_all()

    def accept_connections(self) -> None:
        """Listen again on the port closed by ``refuse_connections`` (no-op before start, after stop)."""
        with self._server_lock:  # bind under the lock: a concurrent stop() then closes the new server too
            if self.port is None or self._stopping.is_set() or self._server is not None:
                return
            self._serve(_HttpServer((self.host, self.port), self.handler_class, self))

    @property
    def requests_held(self) -> int:
        """Requests the "timeout" fault is holding right now (a client waiting for its answer)."""
        with self._server_lock:
            return self._held

    def hold_if_timeout(self) -> bool:
        """Fault "timeout": wait ``delay_s`` before the request is answered; True when stopping (send nothing)."""
        if self.source.meter_snapshot().fault != "timeout":
            return False
        with self._server_lock:
            self._held += 1
        try:
            return self._stopping.wait(self.delay_s)
        finally:
            with self._server_lock:
                self._held -= 1

    def _serve(self, srv: _HttpServer) -> None:
        t = threading.Thread(
            target=srv.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        with self._server_lock:
            self._server = srv
            self._threads = [*(old for old in self._threads if old.is_alive()), t]
            t.start()


class MeterRequestHandler(BaseHTTPRequestHandler):
    """Common parts of the meter emulators' request handlers."""

    protocol_version = "HTTP/1.1"
    server: _HttpServer
    timeout = 30  # idle keep-alive connections end after this (stop() cuts them earlier)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test and demo output quiet."""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None = "application/json",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        # send_response_only: no automatic Server / Date headers (the EcoTracker sends none).
        self.send_response_only(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _hang_if_timeout_fault(self) -> bool:
        """Fault "timeout": answer only after the emulator's delay; True when stopping (send nothing)."""
        if self.server.emulator.hold_if_timeout():
            self.close_connection = True
            return True
        return False


# ---------------------------------------------------------------------------------------------------------
# Shelly
# ---------------------------------------------------------------------------------------------------------


class _ShellyHandler(MeterRequestHandler):
    """HTTP side of ``ShellyEmulator``: Gen2 RPC over GET and POST, or Gen1 REST paths."""

    def do_GET(self) -> None:
        self._handle(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length) if length > 0 else b"")

    @property
    def _emulator(self) -> ShellyEmulator:
        emulator = self.server.emulator
        assert isinstance(emulator, ShellyEmulator)
        return emulator

    # -- responses ------------------------------------------------------------------------------------

    def _json(self, status: int, payload: Any, headers: Sequence[tuple[str, str]] = ()) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._send(status, body, "application/json", [("Server", _SHELLY_SERVER), *headers])

    def _not_found(self, method: str | None) -> None:
        if self._emulator.profile == "gen1":
            self._send(404, b"Not Found", "text/plain", [("Server", _SHELLY_SERVER)])
        else:
            self._json(404, {"code": 404, "message": f"No handler for {method or self.path}"})

    # -- auth -----------------------------------------------------------------------------------------

    def _authorized(self) -> bool:
        emu = self._emulator
        password = emu.password
        if not password:
            return True
        header = self.headers.get("Authorization", "")
        if emu.profile == "gen1":
            if header.startswith("Basic "):
                try:
                    user, _, pw = base64.b64decode(header[6:].strip()).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    user, pw = "", ""
                if user == emu.user and hmac.compare_digest(pw, password):
                    return True
            self._send(
                401,
                b"401 Unauthorized",
                "text/plain",
                [("Server", _SHELLY_SERVER), ("WWW-Authenticate", f'Basic realm="{emu.device_id}"')],
            )
            return False
        if header.startswith("Digest ") and emu.check_digest(self.command, header[7:]):
            return True
        challenge = f'Digest qop="auth", realm="{emu.device_id}", nonce="{emu.new_nonce()}", algorithm=SHA-256'
        self.send_response_only(401)
        self.send_header("WWW-Authenticate", challenge)
        self.send_header("Content-Length", "0")
        self.send_header("Server", _SHELLY_SERVER)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        return False

    # -- routing --------------------------------------------------------------------------------------

    def _handle(self, post_body: bytes | None) -> None:
        if self._hang_if_timeout_fault():
            return
        request = self._parse(post_body)
        if request is None:
            return
        method, params, rpc_id = request
        if method not in _SHELLY_OPEN_METHODS and not self._authorized():
            return
        self._respond(method, params, rpc_id, rpc_post=post_body is not None)

    def _parse(self, post_body: bytes | None) -> tuple[str, dict[str, Any], Any] | None:
        """(method or Gen1 path, params, RPC id) of the request; None when it has been answered already."""
        parts = urlsplit(self.path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        gen1 = self._emulator.profile == "gen1"
        if post_body is None:
            if path.startswith("/rpc/") and not gen1:
                return path[5:], query, None
            return path, query, None
        if gen1 or path != "/rpc":
            self._not_found(None)
            return None
        try:
            frame = json.loads(post_body or b"{}")
            return str(frame["method"]), frame.get("params") or {}, frame.get("id")
        except (ValueError, KeyError, TypeError, AttributeError):
            self._json(400, {"code": -103, "message": "Invalid request"})
            return None

    def _respond(self, method: str, params: dict[str, Any], rpc_id: Any, rpc_post: bool) -> None:
        """Answer an authorised request, with the active fault applied."""
        emu = self._emulator
        snap = emu.source.meter_snapshot()
        if snap.fault == "http500":
            if emu.profile == "gen1":
                self._send(500, b"Internal Server Error", "text/plain", [("Server", _SHELLY_SERVER)])
            else:
                self._json(500, {"code": -114, "message": "Internal error"})
            return
        if method == "/shelly" and not rpc_post:
            self._json(200, emu.device_info())
            return
        result = emu.result(method, params, snap)
        if result is None:
            self._not_found(method)
            return
        status, payload = result
        if status != 200:
            self._json(status, payload)
            return
        if snap.fault == "not_json":
            self._send(
                200,
                b"<html><body>Error: try again later</body></html>",
                "application/json",
                [("Server", _SHELLY_SERVER)],
            )
            return
        if rpc_post:
            payload = {"id": rpc_id, "src": emu.device_id, "result": payload}
        self._json(200, payload)


class ShellyEmulator(MeterEmulator):
    """A Shelly energy meter: ``model`` one of ``SHELLY_MODELS`` (default Pro 3EM; ``profile`` "gen1" means the
    Gen1 3EM). Gen2+ speak RPC; the Pro 3EM and 3EM-63 have a profile ("triphase": ``EM``, "monophase": ``EM1``),
    the Pro EM-50, EM Gen3 and EM Mini Gen4 have only ``EM1`` channels and no ``profile`` key in ``/shelly``; a
    missing EM1 instance answers RPC error -105. On a two-channel meter channel 1 is a PV string showing
    ``second_channel_w``. Gen1 (3EM, EM) speak REST (``/status``), Basic auth with ``user``.

    With a ``password`` every method but ``/shelly`` and ``Shelly.GetDeviceInfo`` needs auth: Gen2 RFC 7616
    SHA-256 digest (user admin, realm = device id, nonce ring of 32 with nc replay check), Gen1 basic auth.
    "timeout" and "http500" also hit ``/shelly``.
    """

    handler_class = _ShellyHandler
    thread_name = "sim-shelly"

    def __init__(
        self,
        source: MeterSource,
        profile: str = "triphase",
        password: str | None = None,
        seed: int = 1,
        delay_s: float = 10.0,
        model: str | None = None,
        second_channel_w: float = SECOND_CHANNEL_W,
        user: str = "admin",
    ) -> None:
        if profile not in SHELLY_PROFILES:
            raise ValueError(f"shelly_profile must be one of {SHELLY_PROFILES}")
        if model is None:
            model = "gen1_3em" if profile == "gen1" else "pro3em"
        if model not in SHELLY_MODELS:
            raise ValueError(f"shelly_model must be one of {tuple(SHELLY_MODELS)}")
        super().__init__(source, delay_s)
        self.model = model
        id_prefix, self.model_code, self.gen, self.app, self.channel_count, self.has_profile = SHELLY_MODELS[model]
        if self.gen == 0:
            profile = "gen1"
        elif not self.has_profile:
            profile = "monophase"  # EM1 components only
        elif profile == "gen1":
            raise ValueError(f"shelly_profile gen1 does not fit the Gen{self.gen} model {model}")
        self.profile = profile
        self.password = password
        self.user = user  # Gen1 login user (Gen2+ digest is always "admin")
        self.second_channel_w = float(second_channel_w)
        self.missing_channels: set[int] = set()  # EM1 instances that answer -105 (e.g. a deleted one)
        mac = f"{0xEC6260000000 + (seed * 0x9773D8) % 0xFFFFFF:012x}"
        self.mac = mac.upper()
        self.device_id = f"{id_prefix}-{mac}"
        self._nonce_lock = threading.Lock()
        self._nonces: dict[str, int] = {}  # nonce -> highest nc seen
        self._nonce_counter = itertools.count(1)

    # -- payloads -------------------------------------------------------------------------------------

    def device_info(self) -> dict[str, Any]:
        """The model's ``/shelly`` answer (Gen1: no ``gen``; Gen2+: ``profile`` only where the device has one)."""
        auth = bool(self.password)
        if self.profile == "gen1":
            return {
                "type": self.model_code,
                "mac": self.mac,
                "auth": auth,
                "fw": "20230913-114150/v1.14.0-gcb84623",
                "longid": 1,
                "num_outputs": 1,
                "num_meters": 0,
                "num_emeters": self.channel_count,
                "report_period": 1,
            }
        info: dict[str, Any] = {
            "name": None,
            "id": self.device_id,
            "mac": self.mac,
            "slot": 0,
            "model": self.model_code,
            "gen": self.gen,
            "fw_id": "20241011-114455/1.4.4-g6d2a586",
            "ver": "1.4.4",
            "app": self.app,
            "auth_en": auth,
            "auth_domain": self.device_id if auth else None,
        }
        if self.has_profile:
            info["profile"] = self.profile
        return info

    def channel_w(self, snap: MeterSnapshot, channel: int) -> float:
        """What one EM1 channel / Gen1 emeter shows: a share of the grid on a three-channel meter; on a
        one- or two-channel meter channel 0 is the grid and channel 1 a PV string (``second_channel_w``)."""
        if self.channel_count >= 3:
            return _split_phases(snap.grid_w)[channel]
        if channel == 0:
            return round(snap.grid_w, 1)
        return self.second_channel_w

    @staticmethod
    def _phase_fields(power: float, volts: float) -> dict[str, float]:
        aprt = round(abs(power) / 0.92 + 15.0, 1)
        return {
            "current": round(aprt / volts, 3),
            "voltage": volts,
            "act_power": power,
            "aprt_power": aprt,
            "pf": round(abs(power) / aprt, 2) if aprt else 0.0,
            "freq": 50.0,
        }

    def _em_status(self, snap: MeterSnapshot) -> dict[str, Any]:
        phases = _split_phases(snap.grid_w)
        em: dict[str, Any] = {"id": 0}
        total_current = 0.0
        total_aprt = 0.0
        for name, power, volts in zip("abc", phases, (231.4, 232.1, 230.6), strict=True):
            f = self._phase_fields(power, volts)
            total_current += f["current"]
            total_aprt += f["aprt_power"]
            for key, value in f.items():
                em[f"{name}_{key}"] = value
        em.update(
            {
                "n_current": None,
                "total_current": round(total_current, 3),
                "total_act_power": round(sum(phases), 3),
                "total_aprt_power": round(total_aprt, 3),
                "user_calibrated_phase": [],
            }
        )
        return em

    def _em1_status(self, snap: MeterSnapshot, channel: int) -> dict[str, Any]:
        power = self.channel_w(snap, channel)
        return {"id": channel, **self._phase_fields(power, (231.4, 232.1, 230.6)[channel]), "calibration": "factory"}

    @staticmethod
    def _emdata(snap: MeterSnapshot) -> dict[str, Any]:
        out: dict[str, Any] = {"id": 0}
        for name, share in zip("abc", _PHASE_SHARES, strict=True):
            out[f"{name}_total_act_energy"] = round(snap.import_wh * share, 2)
            out[f"{name}_total_act_ret_energy"] = round(snap.export_wh * share, 2)
        out["total_act"] = round(snap.import_wh, 2)
        out["total_act_ret"] = round(snap.export_wh, 2)
        return out

    def result(self, method: str, params: dict[str, Any], snap: MeterSnapshot) -> tuple[int, Any] | None:
        """(status, payload) for a Shelly method / Gen1 path, or None for "no such method"."""
        try:
            comp_id = int(params.get("id", 0))
        except (TypeError, ValueError):
            return 400, {"code": -103, "message": "Invalid argument 'id'"}
        if self.profile == "gen1":
            return self._gen1_result(method, snap)
        if method == "Shelly.GetDeviceInfo":
            return 200, self.device_info()
        if method == "Shelly.GetStatus":
            return 200, self._shelly_status(snap)
        if self.profile == "triphase" and method in ("EM.GetStatus", "EMData.GetStatus"):
            return self._em_result(method, comp_id, snap)
        if self.profile == "monophase" and method in ("EM1.GetStatus", "EM1Data.GetStatus"):
            return self._em1_result(method, comp_id, snap)
        return None

    def _em_result(self, method: str, comp_id: int, snap: MeterSnapshot) -> tuple[int, Any]:
        """Triphase ``EM.GetStatus`` / ``EMData.GetStatus`` (one component, id 0)."""
        if comp_id != 0:
            return 500, {"code": -105, "message": f"Argument 'id', value {comp_id} not found!"}
        if method == "EMData.GetStatus":
            return 200, self._emdata(snap)
        return 200, _corrupt(self._em_status(snap), _SHELLY_KEYS_TRIPHASE, snap.fault)

    def _em1_result(self, method: str, comp_id: int, snap: MeterSnapshot) -> tuple[int, Any]:
        """Monophase ``EM1.GetStatus`` / ``EM1Data.GetStatus`` (channels 0..2)."""
        if not 0 <= comp_id < self.channel_count or comp_id in self.missing_channels:
            return 500, {"code": -105, "message": f"Argument 'id', value {comp_id} not found!"}
        if method == "EM1Data.GetStatus":
            share = _PHASE_SHARES[comp_id] if self.channel_count >= 3 else (1.0 if comp_id == 0 else 0.0)
            return 200, {
                "id": comp_id,
                "total_act_energy": round(snap.import_wh * share, 2),
                "total_act_ret_energy": round(snap.export_wh * share, 2),
            }
        return 200, _corrupt(self._em1_status(snap, comp_id), _SHELLY_KEYS_MONOPHASE, snap.fault)

    def _shelly_status(self, snap: MeterSnapshot) -> dict[str, Any]:
        """Gen2 ``Shelly.GetStatus``: the meter components of the profile plus the system parts."""
        status: dict[str, Any] = {"ble": {}, "cloud": {"connected": False}}
        if self.profile == "triphase":
            status["em:0"] = _corrupt(self._em_status(snap), _SHELLY_KEYS_TRIPHASE, snap.fault)
            status["emdata:0"] = self._emdata(snap)
        else:
            for ch in sorted(set(range(self.channel_count)) - self.missing_channels):
                status[f"em1:{ch}"] = _corrupt(self._em1_status(snap, ch), _SHELLY_KEYS_MONOPHASE, snap.fault)
            for ch in range(self.channel_count):
                status[f"em1data:{ch}"] = {"id": ch, "total_act_energy": round(snap.import_wh, 2),
                                           "total_act_ret_energy": round(snap.export_wh, 2)}
            if self.model in ("proem50", "emg3"):  # the contactor output of the two-channel meters
                status["switch:0"] = {"id": 0, "source": "init", "output": False}
        status.update(
            {
                "eth": {"ip": None},
                "modbus": {},
                "mqtt": {"connected": False},
                "sys": {
                    "mac": self.mac,
                    "restart_required": False,
                    "time": time.strftime("%H:%M", time.localtime(snap.unixtime)),
                    "unixtime": snap.unixtime,
                    "uptime": int(snap.uptime_s),
                    "cfg_rev": 20,
                    "reset_reason": 3,
                },
                "temperature:0": {"id": 0, "tC": 39.1, "tF": 102.4},
                "wifi": {"sta_ip": self.host, "status": "got ip", "ssid": "sim", "rssi": -60},
                "ws": {"connected": False},
            }
        )
        return status

    def _gen1_result(self, path: str, snap: MeterSnapshot) -> tuple[int, Any] | None:
        keys = frozenset({"power", "total_power"})
        three = self.channel_count >= 3
        powers = [self.channel_w(snap, ch) for ch in range(self.channel_count)]
        emeters = []
        for ch, (power, volts) in enumerate(zip(powers, (240.24, 240.27, 240.31), strict=False)):
            share = _PHASE_SHARES[ch] if three else (1.0 if ch == 0 else 0.0)
            emeter: dict[str, Any] = {"power": power}
            if three:
                emeter.update({"pf": round(abs(power) / (abs(power) / 0.92 + 15.0), 2),
                               "current": round((abs(power) / 0.92 + 15.0) / volts, 2)})
            else:  # the Gen1 EM reports reactive power instead of current
                emeter["reactive"] = round(abs(power) * 0.2, 2)
                emeter["pf"] = round(abs(power) / (abs(power) / 0.92 + 15.0), 2)
            emeter.update({"voltage": volts, "is_valid": True, "total": round(snap.import_wh * share, 1),
                           "total_returned": round(snap.export_wh * share, 1)})
            emeters.append(emeter)
        if path == "/status":
            payload: dict[str, Any] = {
                "wifi_sta": {"connected": True, "ssid": "sim", "ip": self.host, "rssi": -52},
                "cloud": {"enabled": False, "connected": False},
                "mqtt": {"connected": False},
                "time": time.strftime("%H:%M", time.localtime(snap.unixtime)),
                "unixtime": snap.unixtime,
                "serial": 1081,
                "has_update": False,
                "mac": self.mac,
                "relays": [{"ison": True, "has_timer": False, "overpower": False, "is_valid": True, "source": "http"}],
                "emeters": emeters,
            }
            if three:  # only the 3EM sends a total (and the neutral line check)
                payload["total_power"] = round(sum(powers), 2)
                payload["emeter_n"] = {"current": 0.0, "ixsum": 1.72, "mismatch": False, "is_valid": False}
            payload["uptime"] = int(snap.uptime_s)
            return 200, _corrupt(payload, keys, snap.fault)
        if path.startswith("/emeter/") and path[8:].isdigit() and int(path[8:]) < self.channel_count:
            return 200, _corrupt(emeters[int(path[8:])], keys, snap.fault)
        return None

    # -- digest auth (Gen2) ---------------------------------------------------------------------------

    def new_nonce(self) -> str:
        with self._nonce_lock:
            nonce = f"{int(time.time())}{next(self._nonce_counter):04d}"
            self._nonces[nonce] = 0
            while len(self._nonces) > _NONCE_SLOTS:
                del self._nonces[next(iter(self._nonces))]
            return nonce

    def check_digest(self, http_method: str, header: str) -> bool:
        """Verify an RFC 7616 SHA-256 digest response (user admin, realm = device id, qop auth)."""
        p = {
            m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _DIGEST_PARAM.finditer(header)
        }
        nonce = p.get("nonce", "")
        try:
            nc = int(p.get("nc", ""), 16)
        except ValueError:
            return False
        if (
            p.get("username") != "admin"
            or p.get("realm") != self.device_id
            or p.get("qop") != "auth"
            or (p.get("algorithm") or "").upper() != "SHA-256"
            or not p.get("cnonce")
            or "uri" not in p
            or "response" not in p
        ):
            return False

        def sha(text: str) -> str:
            return hashlib.sha256(text.encode()).hexdigest()

        ha1 = sha(f"admin:{self.device_id}:{self.password}")
        ha2 = sha(f"{http_method}:{p['uri']}")
        expected = sha(f"{ha1}:{nonce}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
        if not hmac.compare_digest(expected, p["response"].lower()):
            return False
        with self._nonce_lock:
            last = self._nonces.get(nonce)
            if last is None or nc <= last:  # unknown / expired nonce or replayed nc
                return False
            self._nonces[nonce] = nc
        return True


# ---------------------------------------------------------------------------------------------------------
# EcoTracker
# ---------------------------------------------------------------------------------------------------------


class _EcoTrackerHandler(MeterRequestHandler):
    """HTTP side of ``EcoTrackerEmulator``."""

    def do_GET(self) -> None:
        emu = self.server.emulator
        assert isinstance(emu, EcoTrackerEmulator)
        if self._hang_if_timeout_fault():
            return
        if urlsplit(self.path).path != "/v1/json":
            self._send(404, _ECOTRACKER_404.encode(), "text/html")
            return
        snap = emu.source.meter_snapshot()
        if snap.fault == "http500":
            self._send(500, b"Internal Server Error", "text/html")
            return
        if snap.fault == "not_json":
            self._send(200, b"<html><body>503 Service Unavailable</body></html>", "application/json")
            return
        self._send(200, emu.body(snap), "application/json")


class EcoTrackerEmulator(MeterEmulator):
    """everHome EcoTracker: ``GET /v1/json`` with power, phases, average, sample age and energy counters."""

    handler_class = _EcoTrackerHandler
    thread_name = "sim-ecotracker"

    def body(self, snap: MeterSnapshot) -> bytes:
        phases = _split_phases(snap.grid_w)
        fields: dict[str, Any] = {
            "power": round(snap.grid_w),
            "powerAvg": round(snap.avg_w),
            "agePower": round(snap.sample_age_s * 1000.0),
            "powerPhase1": round(phases[0]),
            "powerPhase2": round(phases[1]),
            "powerPhase3": round(phases[2]),
            "energyCounterOut": round(snap.export_wh, 1),
            "energyCounterIn": round(snap.import_wh, 1),
        }
        keys = frozenset({"power", "powerPhase1", "powerPhase2", "powerPhase3"})
        fields = _corrupt(fields, keys, snap.fault)
        lines = [f"\t{json.dumps(k)}:\t{json.dumps(v)}" for k, v in fields.items()]
        return ("{\n" + ",\n".join(lines) + "\n}").encode()


# ---------------------------------------------------------------------------------------------------------
# HomeWizard P1 (local API v1)
# ---------------------------------------------------------------------------------------------------------

_HOMEWIZARD_KEYS = frozenset({"active_power_w", "active_power_l1_w", "active_power_l2_w", "active_power_l3_w"})


class _HomeWizardHandler(MeterRequestHandler):
    """HTTP side of ``HomeWizardEmulator``."""

    def do_GET(self) -> None:
        emu = self.server.emulator
        assert isinstance(emu, HomeWizardEmulator)
        if self._hang_if_timeout_fault():
            return
        path = urlsplit(self.path).path
        snap = emu.source.meter_snapshot()
        if snap.fault == "http500":
            self._send(500, b'{"error":{"id":500,"description":"Internal error"}}')
            return
        if path == "/api":
            self._send(200, json.dumps(emu.device_info()).encode())
            return
        if path != "/api/v1/data":
            self._send(404, b'{"error":{"id":404,"description":"Not found"}}')
            return
        if not emu.api_enabled:
            self._send(403, b'{"error":{"id":202,"description":"API not enabled"}}')
            return
        if snap.fault == "not_json":
            self._send(200, b"<html><body>Service Unavailable</body></html>")
            return
        self._send(200, json.dumps(_corrupt(emu.data(snap), _HOMEWIZARD_KEYS, snap.fault)).encode())


class HomeWizardEmulator(MeterEmulator):
    """HomeWizard Wi-Fi P1 meter (HWE-P1), local API v1: ``GET /api`` and ``GET /api/v1/data`` (the shape of
    home-assistant/core's homewizard fixtures). ``api_enabled = False`` answers 403 like a device whose local
    API is switched off in the app."""

    handler_class = _HomeWizardHandler
    thread_name = "sim-homewizard"

    def __init__(self, source: MeterSource, delay_s: float = 10.0) -> None:
        super().__init__(source, delay_s)
        self.api_enabled = True

    @staticmethod
    def device_info() -> dict[str, Any]:
        return {"product_name": "P1 meter", "product_type": "HWE-P1", "serial": "3c39e7aabbcc",
                "firmware_version": "4.19", "api_version": "v1"}

    @staticmethod
    def data(snap: MeterSnapshot) -> dict[str, Any]:
        phases = _split_phases(snap.grid_w)
        return {
            "wifi_ssid": "sim", "wifi_strength": 100, "smr_version": 50, "meter_model": "ISKRA  2M550T-101",
            "unique_id": "00112233445566778899AABBCCDDEEFF", "active_tariff": 2,
            "total_power_import_kwh": round(snap.import_wh / 1000.0, 3),
            "total_power_import_t1_kwh": round(snap.import_wh / 2000.0, 3),
            "total_power_import_t2_kwh": round(snap.import_wh / 2000.0, 3),
            "total_power_export_kwh": round(snap.export_wh / 1000.0, 3),
            "total_power_export_t1_kwh": round(snap.export_wh / 2000.0, 3),
            "total_power_export_t2_kwh": round(snap.export_wh / 2000.0, 3),
            "active_power_w": round(snap.grid_w, 3),
            "active_power_l1_w": phases[0], "active_power_l2_w": phases[1], "active_power_l3_w": phases[2],
            "active_voltage_l1_v": 230.111, "active_voltage_l2_v": 230.222, "active_voltage_l3_v": 230.333,
            "active_current_l1_a": round(phases[0] / 230.111, 3), "active_current_l2_a": round(phases[1] / 230.222, 3),
            "active_current_l3_a": round(phases[2] / 230.333, 3), "active_frequency_hz": 50.0,
            "voltage_sag_l1_count": 1, "voltage_sag_l2_count": 2, "voltage_sag_l3_count": 3,
            "voltage_swell_l1_count": 4, "voltage_swell_l2_count": 5, "voltage_swell_l3_count": 6,
            "any_power_fail_count": 4, "long_power_fail_count": 5,
            "active_power_average_w": round(snap.avg_w, 1),
            "total_gas_m3": 1122.333, "gas_timestamp": 210314112233,
        }


# ---------------------------------------------------------------------------------------------------------
# A JSON meter: Tasmota SML reader ("Status 10")
# ---------------------------------------------------------------------------------------------------------

_TASMOTA_KEYS = frozenset({"Power_curr"})


class _JsonMeterHandler(MeterRequestHandler):
    """HTTP side of ``JsonMeterEmulator``."""

    def do_GET(self) -> None:
        emu = self.server.emulator
        assert isinstance(emu, JsonMeterEmulator)
        if self._hang_if_timeout_fault():
            return
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if parts.path != "/cm":
            self._send(404, b"Not found", "text/html")
            return
        if not emu.authorized(self.headers.get("Authorization", ""), query):
            self._send(401, b'{"WARNING":"Need user=<username>&password=<password>"}',
                       headers=[("WWW-Authenticate", 'Basic realm="tasmota"')])
            return
        snap = emu.source.meter_snapshot()
        if snap.fault == "http500":
            self._send(500, b"Internal Server Error", "text/html")
            return
        if query.get("cmnd", "").replace("+", " ").strip().lower() != "status 10":
            self._send(200, b'{"Command":"Unknown"}')
            return
        if snap.fault == "not_json":
            self._send(200, b"<html><body>Tasmota busy</body></html>")
            return
        self._send(200, json.dumps(_corrupt(emu.status10(snap), _TASMOTA_KEYS, snap.fault)).encode())


class JsonMeterEmulator(MeterEmulator):
    """A Tasmota SML reading head (IR reader on the utility meter): ``GET /cm?cmnd=Status%2010`` answers
    ``{"StatusSNS": {"Time": ..., "SML": {"Total_in", "Total_out", "Power_curr", "Meter_number"}}}``.
    With a ``password`` it wants HTTP Basic auth or Tasmota's ``&user=&password=`` query."""

    handler_class = _JsonMeterHandler
    thread_name = "sim-jsonmeter"

    def __init__(self, source: MeterSource, delay_s: float = 10.0, user: str = "admin",
                 password: str | None = None) -> None:
        super().__init__(source, delay_s)
        self.user = user
        self.password = password

    def authorized(self, header: str, query: dict[str, str]) -> bool:
        if not self.password:
            return True
        if query.get("user") == self.user and hmac.compare_digest(query.get("password", ""), self.password):
            return True
        if header.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(header[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return user == self.user and hmac.compare_digest(pw, self.password)
        return False

    @staticmethod
    def status10(snap: MeterSnapshot) -> dict[str, Any]:
        return {"StatusSNS": {
            "Time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(snap.unixtime)),
            "SML": {"Total_in": round(snap.import_wh / 1000.0, 4), "Total_out": round(snap.export_wh / 1000.0, 4),
                    "Power_curr": round(snap.grid_w), "Meter_number": "0a01484c5902000a0b12"},
        }}
