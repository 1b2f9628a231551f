"""Grid meter drivers for the HomeWizard P1 meter (local API v1) and for any meter answering JSON over HTTP.

- ``HomeWizardClient``: ``GET /api`` identifies the device once (``product_type`` ``"HWE-P1"``), then
  ``GET /api/v1/data`` → ``active_power_w`` (W, + import, - export). The local API must be switched on in
  the HomeWizard app; without it the device answers 403.
- ``HttpJsonClient``: ``GET <url>`` (optional HTTP Basic auth) → the number at a dotted ``power_path``
  (keys, or list indices as digits), e.g. ``StatusSNS.SML.Power_curr`` of a Tasmota SML reader's
  ``Status 10``, ``power`` of a home-made meter, ``Body.Data.PowerReal_P_Sum`` of a Fronius meter.
  A number sent as text ("-422.5") is accepted; anything else is an error.

Each raises its own ``MeterError`` subclass; a failed read is never turned into 0 W.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests
from requests.auth import HTTPBasicAuth

from control.devices import GridReading, MeterError
from shelly_client import MAX_ABS_POWER_W, get_json_object, power_field, url_host

if TYPE_CHECKING:
    from config_loader import HomeWizardConfig, HttpJsonConfig

HOMEWIZARD_DATA_PATH = "/api/v1/data"
HOMEWIZARD_P1 = "HWE-P1"


class HomeWizardError(MeterError):
    """A HomeWizard read failed; the message names the device and what went wrong."""


class HttpJsonError(MeterError):
    """A JSON meter read failed; the message names the URL and what went wrong."""


class HomeWizardClient:
    """Reads grid power (W, + import, - export) from a HomeWizard P1 meter; used by one thread only."""

    name = "homewizard"

    def __init__(self, host: str, port: int = 80, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.clock = clock  # the control loop's clock: readings are stamped on it
        self._base_url = f"http://{url_host(host)}:{port}"
        self._label = f"HomeWizard {host}" if port == 80 else f"HomeWizard {url_host(host)}:{port}"
        self._session = requests.Session()
        self._model: str | None = None

    @classmethod
    def from_config(cls, cfg: HomeWizardConfig, clock: Callable[[], float] = time.monotonic) -> HomeWizardClient:
        """Build a client from the ``homewizard`` config section."""
        return cls(host=cfg.host, port=cfg.port, timeout_s=cfg.timeout_seconds, clock=clock)

    @property
    def model(self) -> str | None:
        """e.g. "HomeWizard P1 meter (HWE-P1)"; None before the first good read."""
        return self._model

    def describe(self) -> dict[str, Any]:
        """Identification for --check, the dashboard and diagnostics."""
        return {"type": self.name, "model": self._model, "kind": None, "profile": None, "channels": [],
                "field": "active_power_w"}

    def _error(self, message: str) -> HomeWizardError:
        return HomeWizardError(f"{self._label}: {message}")

    @staticmethod
    def _advice(status: int) -> str | None:
        if status == 403:
            return "switch on the local API in the HomeWizard app (Settings > Meters > Local API)"
        return None

    def _get(self, path: str) -> tuple[dict[str, Any], float]:
        data, received_at_s = get_json_object(self._session, self._base_url + path, timeout_s=self.timeout_s,
                                              error=self._error, what=path, status_advice=self._advice,
                                              clock=self.clock)
        assert data is not None
        return data, received_at_s

    def _identify(self) -> None:
        info, _ = self._get("/api")
        product_type = info.get("product_type")
        if not isinstance(product_type, str):
            raise self._error("/api answer has no product_type: not a HomeWizard device?")
        if info.get("api_version") not in (None, "v1"):
            raise self._error(f"/api reports api_version {json.dumps(info.get('api_version'))[:20]}, expected v1")
        name = info.get("product_name") if isinstance(info.get("product_name"), str) else "HomeWizard"
        self._model = f"HomeWizard {name} ({product_type})" if not str(name).startswith("HomeWizard") else (
            f"{name} ({product_type})")

    def read(self) -> GridReading:
        """Return the current grid power or raise HomeWizardError."""
        if self._model is None:
            self._identify()
        data, received_at_s = self._get(HOMEWIZARD_DATA_PATH)
        power_w = power_field(data, "active_power_w", error=self._error, what=HOMEWIZARD_DATA_PATH)
        return GridReading(grid_power_w=power_w, received_at_s=received_at_s)

    def close(self) -> None:
        """Release the HTTP session."""
        self._session.close()


def value_at(data: Any, path: str) -> Any:
    """The value at a dotted path (keys, or digits for list indices); KeyError naming the first missing part."""
    current = data
    walked: list[str] = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise KeyError(".".join(walked))
    return current


class HttpJsonClient:
    """Reads grid power (W, + import, - export) from any HTTP JSON answer; used by one thread only."""

    name = "http_json"

    def __init__(self, url: str, power_path: str, timeout_s: float = 5.0, username: str | None = None,
                 password: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.power_path = power_path
        self.timeout_s = timeout_s
        self.clock = clock
        self._auth = HTTPBasicAuth(username or "", password or "") if password is not None or username else None
        self._session = requests.Session()
        self._label = f"JSON meter {url}"

    @classmethod
    def from_config(cls, cfg: HttpJsonConfig, clock: Callable[[], float] = time.monotonic) -> HttpJsonClient:
        """Build a client from the ``http_json`` config section."""
        return cls(url=cfg.url, power_path=cfg.power_path, timeout_s=cfg.timeout_seconds, username=cfg.username,
                   password=cfg.password, clock=clock)

    @property
    def model(self) -> str:
        return f"JSON {self.power_path}"

    def describe(self) -> dict[str, Any]:
        """Identification for --check, the dashboard and diagnostics."""
        return {"type": self.name, "model": self.model, "kind": None, "profile": None, "channels": [],
                "field": self.power_path}

    def _error(self, message: str) -> HttpJsonError:
        return HttpJsonError(f"{self._label}: {message}")

    @staticmethod
    def _advice(status: int) -> str | None:
        if status == 401:
            return "the meter needs a user name and password: set http_json.username / http_json.password"
        return None

    def read(self) -> GridReading:
        """Return the current grid power or raise HttpJsonError."""
        what = "the answer"
        data, received_at_s = get_json_object(self._session, self.url, timeout_s=self.timeout_s, error=self._error,
                                              what="GET", auth=self._auth, status_advice=self._advice,
                                              clock=self.clock)
        try:
            value = value_at(data, self.power_path)
        except KeyError as exc:
            raise self._error(f"field {exc.args[0]} missing in {what} (http_json.power_path "
                              f"{self.power_path!r})") from None
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise self._error(f"field {self.power_path} in {what} is not a number: "
                                  f"{json.dumps(value)[:40]}") from None
            if not math.isfinite(value):
                raise self._error(f"field {self.power_path} in {what} is {value}")
        power_w = power_field({self.power_path: value}, self.power_path, error=self._error, what=what)
        assert abs(power_w) <= MAX_ABS_POWER_W
        return GridReading(grid_power_w=power_w, received_at_s=received_at_s)

    def close(self) -> None:
        """Release the HTTP session."""
        self._session.close()
