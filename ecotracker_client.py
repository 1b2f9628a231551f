"""Grid meter driver for the everHome EcoTracker (local API ``GET http://<ip>/v1/json``).

The device answers a tab-indented JSON object; ``power`` is the grid power in W, + import
(Bezug), - export (Einspeisung). ``powerAvg`` is a one-minute mean and is never used for
control; phase and tariff keys are optional. ``agePower`` (ms since the meter's last telegram) dates
the sample (``GridReading.sample_age_s``). No authentication.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests

from control.devices import GridReading, MeterError
from shelly_client import get_json_object, power_field, url_host

if TYPE_CHECKING:
    from config_loader import EcoTrackerConfig

ECOTRACKER_PATH = "/v1/json"


MAX_SAMPLE_AGE_S = 60.0  # an agePower beyond this is not trusted for dating the sample


def _sample_age_s(data: dict[str, Any]) -> float | None:
    """``agePower`` (ms since the last meter telegram, undocumented) as seconds; None when absent or odd."""
    age_ms = data.get("agePower")
    if isinstance(age_ms, bool) or not isinstance(age_ms, (int, float)) or not math.isfinite(age_ms):
        return None
    age_s = float(age_ms) / 1000.0
    return age_s if 0.0 <= age_s <= MAX_SAMPLE_AGE_S else None


class EcoTrackerError(MeterError):
    """An EcoTracker read failed; the message names the device and what went wrong."""


class EcoTrackerClient:
    """Reads grid power (W, + import, - export) from one EcoTracker; used by one thread only."""

    name = "ecotracker"

    def __init__(self, host: str, port: int = 80, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.clock = clock  # the control loop's clock: readings are stamped on it
        self.port = port
        self.timeout_s = timeout_s
        self._url = f"http://{url_host(host)}:{port}{ECOTRACKER_PATH}"
        self._label = f"EcoTracker {host}" if port == 80 else f"EcoTracker {url_host(host)}:{port}"
        self._session = requests.Session()

    @classmethod
    def from_config(cls, cfg: EcoTrackerConfig, clock: Callable[[], float] = time.monotonic) -> EcoTrackerClient:
        """Build a client from the ``ecotracker`` config section."""
        return cls(host=cfg.host, port=cfg.port, timeout_s=cfg.timeout_seconds, clock=clock)

    def describe(self) -> dict[str, Any]:
        """Identification for --check, the dashboard and diagnostics."""
        return {"type": self.name, "model": "everHome EcoTracker", "kind": None, "profile": None, "channels": [],
                "field": "power"}

    def _error(self, message: str) -> EcoTrackerError:
        return EcoTrackerError(f"{self._label}: {message}")

    def read(self) -> GridReading:
        """Return the current grid power or raise EcoTrackerError."""
        data, received_at_s = get_json_object(
            self._session, self._url, timeout_s=self.timeout_s, error=self._error, what=ECOTRACKER_PATH,
            clock=self.clock,
        )
        assert data is not None
        power_w = power_field(data, "power", error=self._error, what=ECOTRACKER_PATH)
        return GridReading(grid_power_w=power_w, received_at_s=received_at_s, sample_age_s=_sample_age_s(data))

    def close(self) -> None:
        """Release the HTTP session."""
        self._session.close()
