"""The commands the web and MQTT threads hand to the control thread, one frozen dataclass each.

``CommandQueue.submit`` takes a ``Command``; ``ControlLoop.handle_command`` dispatches on it with ``match``.
A misspelt field is a ``TypeError`` at construction and a mypy error before that; a command the control loop
does not handle is a mypy error in its ``match`` (the default case takes only what cannot happen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from control.modes import ModeRequest


@dataclass(frozen=True)
class SetMode:
    """Set the operating mode (validated already); ``source`` is "dashboard", "api" or "mqtt"."""

    request: ModeRequest
    source: str


@dataclass(frozen=True)
class EnterSetup:
    """Stop the control and every battery so that the setup page may re-address them."""


@dataclass(frozen=True)
class ExitSetup:
    """Leave setup mode; the control resumes."""


@dataclass(frozen=True)
class Scan:
    """Which unit IDs ``first_id..last_id`` answer behind ``gateway`` ("<host>:<port>"; None: the first one)."""

    first_id: int = 1
    last_id: int = 10
    gateway: str | None = None


@dataclass(frozen=True)
class SetId:
    """Re-address the single unit on ID 1 behind ``gateway`` (None: the first one) to ``new_id``."""

    new_id: int
    gateway: str | None = None


@dataclass(frozen=True)
class AddToConfig:
    """Add unit ``battery_id`` behind ``gateway`` (None: the first one) to the config file."""

    battery_id: int
    gateway: str | None = None


Command: TypeAlias = SetMode | EnterSetup | ExitSetup | Scan | SetId | AddToConfig
SETUP_REQUESTS = (EnterSetup, Scan, SetId, AddToConfig)  # each keeps setup mode alive
