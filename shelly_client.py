"""Grid meter driver for the Shelly energy meters: Pro 3EM, 3EM-63 Gen3, Pro EM-50, EM Gen3,
EM Mini Gen4, Gen1 3EM and Gen1 EM.

The first read asks ``GET /shelly`` (never password protected) which device answers, by its
``model`` / ``app`` (Gen2+) or ``type`` (Gen1, no ``gen`` key); an unknown Gen2+ model is
identified by the components ``Shelly.GetStatus`` lists (``em:0`` or ``em1:<n>``):

- Pro 3EM / 3EM-63 in the triphase profile (or without a ``profile`` key): ``EM.GetStatus?id=0``
  → ``total_act_power``; ``shelly.channels`` is ignored;
- the monophase profile of those and the EM1 meters (Pro EM-50, EM Gen3, EM Mini Gen4): the sum of
  ``act_power`` of ``EM1.GetStatus?id=<n>`` over ``shelly.channels``; default every channel of a
  three-channel meter, only channel 0 of a two-channel one (its second clamp usually measures a PV
  string or a wallbox, not the grid);
- Gen1 3EM / Gen1 EM: ``GET /status`` → ``total_power`` (3EM, all channels) or the sum of
  ``emeters[<n>].power`` over the channels (default: all of a 3EM, channel 0 of an EM),
  HTTP Basic auth with ``shelly.user`` (default ``admin``).

An RPC answer with code -105 ("Argument 'id', value 2 not found!") means that channel is absent.
Gen2+ passwords use digest auth (SHA-256, user ``admin``). Every failure raises ShellyError;
a missing or invalid value is never turned into 0 W. Sign: + import, - export (the Shelly's own).

The helpers ``get_json_object`` and ``power_field`` are shared with the other HTTP meter drivers.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from requests.auth import AuthBase, HTTPBasicAuth, HTTPDigestAuth

from control.devices import GridReading, MeterError

if TYPE_CHECKING:
    from config_loader import ShellyConfig

MAX_ABS_POWER_W = 100_000.0  # beyond any house connection: a garbled value, not a reading
MAX_CONNECT_TIMEOUT_S = 1.0  # a LAN device that takes longer to accept a connection is down
AUTH_BACKOFF_S = 2.5  # firmware 2.x blocks new nonces for 2 s after a 429
SHELLY_USER = "admin"  # fixed by the firmware for Gen2+; the Gen1 default
EM1_CHANNEL_IDS = (0, 1, 2)
RPC_NOT_FOUND = -105  # "Argument 'id', value N not found!": that component instance does not exist


@dataclass(frozen=True)
class ShellyModel:
    """What the driver knows about one Shelly energy meter model."""

    name: str  # shown by --check and the dashboard, e.g. "Shelly Pro EM-50"
    channels: int  # EM1 channels (Gen2+) or emeters (Gen1)
    three_phase: bool  # has the triphase profile (EM component) / a total_power

    @property
    def default_channels(self) -> tuple[int, ...]:
        """Every channel of a three-channel meter, only channel 0 of a one- or two-channel one."""
        return tuple(range(self.channels)) if self.channels >= 3 else (0,)


# Gen2+ by ``app`` (and by ``model`` prefix for firmware that names the app differently).
GEN2_MODELS: dict[str, ShellyModel] = {
    "Pro3EM": ShellyModel("Shelly Pro 3EM", 3, True),
    "S3EMG3": ShellyModel("Shelly 3EM-63 Gen3", 3, True),
    "ProEM": ShellyModel("Shelly Pro EM-50", 2, False),
    "EMG3": ShellyModel("Shelly EM Gen3", 2, False),
    "MiniEMG4": ShellyModel("Shelly EM Mini Gen4", 1, False),
}
GEN2_MODEL_PREFIXES = (("SPEM-003", "Pro3EM"), ("S3EM-003", "S3EMG3"), ("SPEM-002", "ProEM"),
                       ("S3EM-002", "EMG3"), ("S4EM-001PX", "MiniEMG4"))
# Gen1 by ``type``.
GEN1_MODELS: dict[str, ShellyModel] = {
    "SHEM-3": ShellyModel("Shelly 3EM (Gen1)", 3, True),
    "SHEM": ShellyModel("Shelly EM (Gen1)", 2, False),
}


class ShellyError(MeterError):
    """A Shelly read failed; the message names the device and what went wrong."""


def url_host(host: str) -> str:
    """Host as it goes into a URL (IPv6 addresses need brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """Every exception wrapped inside ``exc`` (requests → urllib3 → socket), outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.append(current)
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo.extend(x for x in linked if isinstance(x, BaseException))
    return seen


def _connection_problem(exc: requests.ConnectionError) -> str:
    """A short reason instead of urllib3's nested exception text."""
    for cause in _exception_chain(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (wrong address or port, or the device is off?)"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by the device"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
    return "cannot connect (network unreachable or the device is off?)"


def _rpc_error_code(body: bytes) -> int | None:
    """The ``code`` of a Shelly RPC error body, or None."""
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return None
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _reject_constant(name: str) -> float:
    """JSON has no NaN/Infinity; Python's parser accepts them unless told otherwise."""
    raise ValueError(f"contains {name}")


def get_json_object(
    session: requests.Session,
    url: str,
    *,
    timeout_s: float,
    error: Callable[[str], MeterError],
    what: str,
    auth: AuthBase | None = None,
    allow_404: bool = False,
    allow_rpc_absent: bool = False,
    status_advice: Callable[[int], str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[dict[str, Any] | None, float]:
    """GET ``url`` and return (JSON object, receive time on ``clock``).

    Every failure is raised as ``error(message)``; with ``allow_404`` a 404 returns (None, time), with
    ``allow_rpc_absent`` so does a Shelly RPC error -105 (that component instance does not exist).
    ``what`` names the request in messages, e.g. "EM.GetStatus"; ``status_advice`` may add a
    hint to the message of an HTTP error status.
    """
    try:
        response = session.get(url, timeout=(min(MAX_CONNECT_TIMEOUT_S, timeout_s), timeout_s), auth=auth)
        received_at_s = clock()
        body = response.content
    except requests.Timeout:
        raise error(f"no answer to {what} within {timeout_s:g} s") from None
    except requests.ConnectionError as exc:
        raise error(f"{what}: {_connection_problem(exc)}") from None
    except requests.RequestException as exc:
        raise error(f"{what} failed: {type(exc).__name__}: {exc}") from None
    if allow_404 and response.status_code == 404:
        return None, received_at_s
    if allow_rpc_absent and not 200 <= response.status_code < 300 and _rpc_error_code(body) == RPC_NOT_FOUND:
        return None, received_at_s
    if not 200 <= response.status_code < 300:
        message = f"{what}: HTTP {response.status_code} {response.reason or ''}".rstrip()
        advice = status_advice(response.status_code) if status_advice else None
        raise error(f"{message}: {advice}" if advice else message)
    try:
        data = json.loads(body.decode("utf-8-sig"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        snippet = body[:60].decode("utf-8", "replace")
        raise error(f"{what} answer is not JSON ({exc}): {snippet!r}") from None
    if not isinstance(data, dict):
        raise error(f"{what} answer is not a JSON object: {type(data).__name__}")
    return data, received_at_s


def power_field(data: dict[str, Any], field: str, *, error: Callable[[str], MeterError], what: str) -> float:
    """A finite, plausible power in W from ``data[field]``; anything else raises ``error``."""
    if field not in data:
        raise error(f"field {field} missing in {what} answer")
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"field {field} in {what} answer is not a number: {json.dumps(value)[:40]}")
    if not math.isfinite(value):
        raise error(f"field {field} in {what} answer is {value}")
    if abs(value) > MAX_ABS_POWER_W:
        raise error(f"field {field} in {what} answer is implausible: {value} W")
    return float(value)


class ShellyClient:
    """Reads grid power (W, + import, - export) from one Shelly; used by one thread only."""

    name = "shelly"

    def __init__(
        self, host: str, port: int = 80, timeout_s: float = 5.0, password: str | None = None,
        clock: Callable[[], float] = time.monotonic, *, channels: Sequence[int] | None = None,
        user: str = SHELLY_USER,
    ) -> None:
        self.host = host
        self.clock = clock  # the control loop's clock: readings are stamped on it
        self.port = port
        self.timeout_s = timeout_s
        self._password = password
        self._user = user  # Gen1 Basic auth only; Gen2+ firmware fixes the digest user to "admin"
        self._configured_channels = tuple(channels) if channels else None
        self._model: ShellyModel | None = None
        self._model_name: str | None = None
        self._channels: tuple[int, ...] = ()
        self._profile: str | None = None
        self._base_url = f"http://{url_host(host)}:{port}"
        self._label = f"Shelly {host}" if port == 80 else f"Shelly {url_host(host)}:{port}"
        self._session = requests.Session()
        self._kind: str | None = None  # "gen1" | "monophase" | "triphase", None until detected
        self._auth: AuthBase | None = None
        self._em1_channels: tuple[int, ...] | None = None  # channels that answered the first EM1 read
        self._backoff_until_s = 0.0

    @classmethod
    def from_config(cls, cfg: ShellyConfig, clock: Callable[[], float] = time.monotonic) -> ShellyClient:
        """Build a client from the ``shelly`` config section."""
        return cls(host=cfg.host, port=cfg.port, timeout_s=cfg.timeout_seconds, password=cfg.password, clock=clock,
                   channels=cfg.channels, user=cfg.user)

    @property
    def kind(self) -> str | None:
        """The detected device kind: "gen1", "monophase", "triphase"; None before the first good detection."""
        return self._kind

    @property
    def model(self) -> str | None:
        """The detected model, e.g. "Shelly Pro EM-50"; None before the first good detection."""
        return self._model_name

    @property
    def profile(self) -> str | None:
        """The device's profile ("triphase" / "monophase") where it has one, else None."""
        return self._profile

    @property
    def channels(self) -> tuple[int, ...]:
        """The channels summed to the grid power; () when the device's total is used (triphase)."""
        return self._channels

    def describe(self) -> dict[str, Any]:
        """Identification for --check, the dashboard and diagnostics (after the first read)."""
        fields = {"triphase": "total_act_power", "monophase": "act_power", "gen1": "power"}
        return {"type": self.name, "model": self._model_name, "kind": self._kind, "profile": self._profile,
                "channels": list(self._channels), "channel_count": self._model.channels if self._model else None,
                "field": fields.get(self._kind or ""),
                "configured_channels": self._configured_channels is not None}

    def _error(self, message: str) -> ShellyError:
        return ShellyError(f"{self._label}: {message}")

    def _get(
        self, path: str, what: str, *, auth: bool = True, allow_404: bool = False, allow_absent: bool = False
    ) -> tuple[dict[str, Any] | None, float]:
        return get_json_object(
            self._session,
            self._base_url + path,
            timeout_s=self.timeout_s,
            error=self._error,
            what=what,
            auth=self._auth if auth else None,
            allow_404=allow_404,
            allow_rpc_absent=allow_absent,
            status_advice=self._status_advice,
            clock=self.clock,
        )

    def read(self) -> GridReading:
        """Return the current grid power or raise ShellyError."""
        if self.clock() < self._backoff_until_s:
            raise self._error("too many auth attempts, backing off")
        if self._kind is None:
            self._detect()
        if self._kind == "gen1":
            return self._read_gen1()
        if self._kind == "monophase":
            return self._read_em1()
        return self._read_em()

    def close(self) -> None:
        """Release the HTTP session."""
        self._session.close()

    # ------------------------------------------------------------------ detection

    def _detect(self) -> None:
        info, _ = self._get("/shelly", "/shelly", auth=False)
        assert info is not None
        gen = info.get("gen")
        profile = info.get("profile") if isinstance(info.get("profile"), str) else None
        if gen is None:
            kind = "gen1"
            device_type = str(info.get("type") or "")
            model = GEN1_MODELS.get(device_type) or ShellyModel(f"Shelly {device_type or 'Gen1'}", 3, True)
        elif isinstance(gen, bool) or not isinstance(gen, int):
            raise self._error(f"/shelly answer has an unexpected gen value: {json.dumps(gen)[:40]}")
        else:
            if self._password and self._auth is None:
                self._auth = HTTPDigestAuth(SHELLY_USER, self._password)  # Shelly.GetStatus may need it
            kind, model = self._detect_gen2(info, profile)
        if self._password:
            # Gen2+ firmware only accepts digest auth (user admin); Gen1 only Basic (its configurable user).
            self._auth = HTTPBasicAuth(self._user, self._password) if kind == "gen1" else HTTPDigestAuth(
                SHELLY_USER, self._password)
        if kind == "triphase":
            channels: tuple[int, ...] = ()
        elif self._configured_channels is not None:
            missing = [c for c in self._configured_channels if c >= model.channels]
            if missing:
                raise self._error(
                    f"shelly.channels names channel {missing[0]}, but a {model.name} has channels "
                    f"0..{model.channels - 1}")
            channels = self._configured_channels
        else:
            channels = model.default_channels
        self._kind, self._model, self._model_name = kind, model, model.name
        self._profile = profile if kind != "gen1" and model.three_phase else None
        self._channels = channels
        self._em1_channels = None

    def _detect_gen2(self, info: dict[str, Any], profile: str | None) -> tuple[str, ShellyModel]:
        """(kind, model) of a Gen2+ device from its app / model, else from its component list."""
        app = str(info.get("app") or "")
        model_code = str(info.get("model") or "")
        known = GEN2_MODELS.get(app) or next(
            (GEN2_MODELS[a] for prefix, a in GEN2_MODEL_PREFIXES if model_code.startswith(prefix)), None)
        if known is not None:
            if known.three_phase and profile != "monophase":
                return "triphase", known
            return "monophase", known
        # Unknown model: the components it lists say how it measures.
        status, _ = self._get("/rpc/Shelly.GetStatus", "Shelly.GetStatus")
        assert status is not None
        name = f"Shelly {model_code or app or 'Gen' + str(info.get('gen'))}"
        if "em:0" in status and profile != "monophase":
            return "triphase", ShellyModel(name, 3, True)
        em1 = sorted(int(key[4:]) for key in status if key.startswith("em1:") and key[4:].isdigit())
        if em1:
            return "monophase", ShellyModel(name, max(em1) + 1, "em:0" in status)
        raise self._error(f"{name} lists no EM or EM1 component in Shelly.GetStatus: not an energy meter")

    def _status_advice(self, status: int) -> str | None:
        """Advice for HTTP errors the user can act on; also reacts to them."""
        if status == 401:
            if self._password:
                return "the password is wrong (shelly.password)"
            return "the Shelly needs a password: set shelly.password"
        if status == 429:
            self._backoff_until_s = self.clock() + AUTH_BACKOFF_S
            return "too many auth attempts, backing off"
        if status == 404:
            self._kind = None  # the profile may have changed (EM <-> EM1): detect again next time
        return None

    # ------------------------------------------------------------------ device kinds

    def _read_em(self) -> GridReading:
        what = "EM.GetStatus"
        data, received_at_s = self._get("/rpc/EM.GetStatus?id=0", what)
        assert data is not None
        power_w = power_field(data, "total_act_power", error=self._error, what=what)
        return GridReading(grid_power_w=power_w, received_at_s=received_at_s)

    def _read_em1(self) -> GridReading:
        configured = self._configured_channels is not None
        channels = self._em1_channels if self._em1_channels is not None else self._channels or EM1_CHANNEL_IDS
        first = self._em1_channels is None
        total_w = 0.0
        answered: list[int] = []
        earliest_s: float | None = None
        for channel in channels:
            what = f"EM1.GetStatus?id={channel}"
            # A default channel that is absent (-105, or 404 from old firmware) is skipped on the first read.
            data, received_at_s = self._get(f"/rpc/{what}", what, allow_404=first and not configured,
                                            allow_absent=True)
            if data is None:
                if configured or not first:
                    self._kind = None
                    raise self._error(f"channel {channel} does not exist on this device (RPC -105); "
                                      f"check shelly.channels")
                continue
            total_w += power_field(data, "act_power", error=self._error, what=what)
            answered.append(channel)
            earliest_s = received_at_s if earliest_s is None else earliest_s
        if not answered or earliest_s is None:
            self._kind = None
            raise self._error(f"no EM1 channel answered (EM1.GetStatus?id={','.join(map(str, channels))})")
        self._check_sum(total_w, "EM1 channels")
        self._em1_channels = tuple(answered)
        self._channels = tuple(answered)
        # The oldest answer dates the sum: the reading is only as fresh as its oldest part.
        return GridReading(grid_power_w=total_w, received_at_s=earliest_s)

    def _check_sum(self, total_w: float, what: str) -> None:
        """Each part may look sane while the sum is absurd."""
        if abs(total_w) > MAX_ABS_POWER_W:
            raise self._error(f"sum of the {what} is implausible: {total_w:g} W")

    def _read_gen1(self) -> GridReading:
        what = "/status"
        data, received_at_s = self._get("/status", what)
        assert data is not None
        emeters = data.get("emeters")
        if emeters is not None and not isinstance(emeters, list):
            raise self._error(f"emeters in {what} answer is not a list")
        emeters = emeters or []
        all_channels = self._model is None or (
            self._model.three_phase and self._channels == tuple(range(self._model.channels)))
        wanted = range(len(emeters)) if all_channels else self._channels
        for index in wanted:
            if index >= len(emeters):
                raise self._error(f"emeters[{index}] missing in {what} answer (shelly.channels)")
            emeter = emeters[index]
            if not isinstance(emeter, dict):
                raise self._error(f"emeters[{index}] in {what} answer is not an object")
            if emeter.get("is_valid") is False:
                raise self._error(f"emeters[{index}] reports is_valid: false (measurement invalid)")
        if all_channels and ("total_power" in data or not emeters):
            power_w = power_field(data, "total_power", error=self._error, what=what)
        else:
            power_w = sum(
                power_field(emeters[index], "power", error=self._error, what=f"{what} emeters[{index}]")
                for index in wanted
            )
            self._check_sum(power_w, "emeters")
        return GridReading(grid_power_w=power_w, received_at_s=received_at_s)
