"""Driver interfaces shared by the control thread, the drivers and the simulator.

Sign conventions (everywhere in this project):
- grid power: + import from the grid (Bezug), - export (Einspeisung), W
- battery power and setpoints: + discharging into the house, - charging, W
- state of charge: percent 0..100

Only ``main.py`` builds concrete drivers; everything else sees these protocols.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol


class MeterError(Exception):
    """A grid meter read failed (timeout, HTTP error, bad body, missing or invalid field).

    Each meter driver raises its own subclass; a failed read is never turned into 0 W.
    """


class BatteryError(Exception):
    """A Modbus exchange with one battery failed (no answer, exception response, bad data)."""


class BatteryUnreachable(BatteryError):
    """The battery's gateway does not take connections (a network reset, a restart, unplugged).

    outage_s: how long it has been unreachable, s (the v3 firmware's periodic network reset lasts 2-5 s).
    """

    def __init__(self, message: str, outage_s: float) -> None:
        super().__init__(message)
        self.outage_s = outage_s


@dataclass(frozen=True)
class GridReading:
    """One grid meter sample.

    grid_power_w: + import, - export, W.
    received_at_s: monotonic time (time.monotonic()) when the answer arrived.
    sample_age_s: how old the device says the value was when it answered (EcoTracker ``agePower``), s;
        None when the device does not say.
    """

    grid_power_w: float
    received_at_s: float
    sample_age_s: float | None = None

    @property
    def sampled_at_s(self) -> float:
        """When the value was measured, as far as known: the receive time minus the device's sample age."""
        return self.received_at_s - (self.sample_age_s or 0.0)


class GridMeter(Protocol):
    """A grid meter polled over HTTP by the control thread only."""

    name: str  # "shelly" | "ecotracker" | "homewizard" | "http_json" (shown as meter_type in /api/status)

    def read(self) -> GridReading:
        """Return the current grid power (+ import, - export, W) or raise a MeterError."""
        ...

    def close(self) -> None:
        """Release the HTTP session."""
        ...


class InvertedMeter:
    """``energy_meter.invert``: a meter whose clamp is mounted the wrong way round; every reading is negated
    here, before anything else sees it. Everything else (name, model, describe()) is the wrapped driver's."""

    inverted = True

    def __init__(self, meter: GridMeter) -> None:
        self.meter = meter
        self.name = meter.name

    def read(self) -> GridReading:
        reading = self.meter.read()
        return replace(reading, grid_power_w=-reading.grid_power_w + 0.0)  # + 0.0: no "-0.0 W"

    def close(self) -> None:
        self.meter.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.meter, name)


def describe_meter(meter: GridMeter) -> dict[str, Any]:
    """What a meter driver says about itself (type, model, kind, profile, channels, inverted); every key present."""
    describe = getattr(meter, "describe", None)
    info: dict[str, Any] = describe() if callable(describe) else {}
    out: dict[str, Any] = {"type": meter.name, "model": None, "kind": None, "profile": None, "channels": []}
    out.update(info)
    out["inverted"] = bool(getattr(meter, "inverted", False))
    return out


@dataclass(frozen=True)
class BatteryReading:
    """What one battery reports over Modbus.

    soc_pct: 0..100 %. ac_power_w: + discharging, - charging, W.
    rs485_control: True when register 42000 reads 0x55AA.
    force_mode: 0 stop, 1 charge, 2 discharge (register 42010).
    charge_power_w / discharge_power_w: registers 42020 / 42021, W, always >= 0.
    max_charge_w / max_discharge_w: the firmware's own power limits (EEPROM registers 44002 / 44003, capped
    at the model's limit), W, >= 0; None = unknown (not read yet, not readable, or not trustworthy).
    """

    unit_id: int
    soc_pct: float
    ac_power_w: float
    rs485_control: bool
    force_mode: int
    charge_power_w: int
    discharge_power_w: int
    max_charge_w: int | None = None
    max_discharge_w: int | None = None
    runaway: bool = False  # commanded stop, yet it charges/discharges on its own (being handled)


class BatteryBus(Protocol):
    """All batteries behind one Modbus TCP gateway; used by one thread only (its owner: the control thread or the
    gateway's worker), except ``abort``, ``resume`` and ``connection_closed`` (the watchdog's emergency stop)."""

    writes_total: int  # register writes so far (for the quality figures)
    # Called by the owner thread after every request frame, answered or not (the fleet's straggler watch: a
    # gateway whose frames keep ending is working, one silent for longer than a frame takes is stuck). None: off.
    frame_ended: Callable[[], None] | None

    def read(self, unit_id: int) -> BatteryReading:
        """Read SoC, AC power and the control registers of one unit, or raise BatteryError."""
        ...

    def write_setpoint(self, unit_id: int, setpoint_w: float, reading: BatteryReading | None) -> int:
        """Command a power: + discharge, - charge, 0 stop (W). Returns the number of register writes.

        ``reading`` is the latest read-back; registers that already hold the wanted value
        are not written again, and RS485 control is re-asserted when it shows off.
        """
        ...

    def stop(self, unit_id: int) -> None:
        """Force mode stop and both power registers 0; raise BatteryError on failure."""
        ...

    def release(self, unit_id: int) -> None:
        """Hand the unit back to its own logic (work mode auto, RS485 control off); raise BatteryError."""
        ...

    def probe(self, unit_id: int) -> tuple[str, float]:
        """Model name and SoC (%) of the unit answering on ``unit_id``, or raise BatteryError."""
        ...

    def read_own_id(self, unit_id: int) -> int:
        """The Modbus ID (register 41100) the unit answering on ``unit_id`` says it has, or raise BatteryError."""
        ...

    def read_device_name(self, unit_id: int) -> str:
        """The unit's model name (register 31000..), or raise BatteryError."""
        ...

    def set_unit_id(self, new_id: int, *, current_id: int = 1) -> None:
        """Re-address the single unit answering on ``current_id`` to ``new_id``."""
        ...

    def forget(self, unit_id: int) -> None:
        """Drop what is cached about a unit (after re-addressing or setup mode)."""
        ...

    def answer_timeout(self, timeout_s: float) -> AbstractContextManager[None]:
        """Inside the block wait at most ``timeout_s`` for an answer (quick scans)."""
        ...

    def close(self) -> None:
        """Close the Modbus connection."""
        ...

    def abort(self) -> bool:
        """Abort the connection hard (TCP RST). Callable from any thread, also while the owner thread is blocked
        in a frame (that frame then fails at once); no new connection until ``resume()``. True if one was open."""
        ...

    def resume(self) -> None:
        """Connections allowed again after ``abort()``, the reconnect gap counted from now. Any thread."""
        ...

    def connection_closed(self) -> None:
        """Another client's connection to this gateway was closed just now: the next connect keeps the
        gateway's reconnect gap (a v3 LAN port frees its one slot only about a second later). Any thread."""
        ...
