"""Every battery of the household: one Modbus gateway per host:port, the gateways served in parallel.

A ``Fleet`` holds one ``BatteryBus`` (``battery_client.MarstekGateway``) per gateway, each with its own
connection, pacing and back-off, and one worker thread per gateway: that thread is the only one that
touches its gateway's client (pymodbus stays synchronous). The control thread owns the fleet and hands
each gateway its part of a cycle's reads, writes or stops at the same moment ("a round"), then collects
the results. It never waits for a gateway that is stuck: a gateway whose frames stop ending for longer than
one of its frames usually takes (plus ``GRACE_S``), when the others are done, is left to finish on its own;
its units count as not answering in this cycle, and a gateway still busy with an old job is skipped. The
watch is per frame, not per round, because a round's length depends on the frames it carries (SoC and
register checks every 30 s, the RS485 re-assert every 25 s, the limits once) while a frame's does not: a
healthy gateway on a periodic long round keeps finishing frames, a dead one goes silent at its first. With
a single gateway nobody can be delayed, so the round waits for it (its own timeouts bound the wait).

Batteries are named by key ``"<host>:<port>/<id>"`` (``config_loader.UnitConfig.key``). ``threaded=False``
runs every job in the caller's thread, one gateway after the other (the benchmark's simulated clock).

Signs: battery power and setpoints + discharge / - charge (W).
"""

from __future__ import annotations

import functools
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from battery_client import MarstekGateway, tcp_client_factory
from config_loader import BatteryConfig, Config, UnitConfig
from control.devices import BatteryBus, BatteryError, BatteryReading
from control.i18n import Msg

log = logging.getLogger("marstek")

T = TypeVar("T")

# Beyond a gateway's usual frame time (pacing included) before the others stop waiting for it: a busy machine may
# hold a thread back this long. A dead gateway costs the others about its frame time + this minus their own
# round, which must stay below 0.5 s (benchmark "fleet-2v3-gateway-dies").
GRACE_S = 0.35
FRAMES_KEPT = 64  # a gateway's usual frame time: the longest of its recent frames in rounds that ended in time
CLOSE_WAIT_S = 1.0
# The most a stop (or release) round waits unless told otherwise; the one home of the shutdown budget
# (Fleet.stop_all, ControlLoop.stop_all, main.py).
SHUTDOWN_BUDGET_S = 6.0

BusFactory = Callable[[UnitConfig, float], BatteryBus]  # (first unit of the gateway, answer timeout) -> bus


Settled = Callable[[float], float]  # a job's end (s) -> when the fleet stopped waiting for it (its end or earlier)


class RoundRunner(Protocol):
    """Runs a round's gateway jobs on simulated time as if in parallel (the benchmark's single thread).

    Each job starts at the same simulated moment on its gateway's own clock (``now``); after all ran, each
    job's ``Settled`` says when the fleet stopped waiting for it. ``run`` leaves the world at the latest of
    those (with one job: at its end) and returns per gateway when its job ended and whether the round took
    its answers (ended by then). ``busy`` says a gateway is still inside an earlier job at the current moment.
    """

    def run(self, jobs: Sequence[tuple[str, Callable[[], None], Settled]]) -> dict[str, tuple[float, bool]]: ...

    def busy(self, gateway: str) -> bool: ...

    def now(self, gateway: str) -> float:
        """The gateway's own simulated time (s)."""
        ...


@dataclass
class GatewayTiming:
    """One gateway in one round, on the fleet's wait clock (s). ``done_s`` None: cut off or skipped."""

    started_s: float
    done_s: float | None = None
    skipped: bool = False


@dataclass
class RoundTiming:
    """When a round (``phase``: "read", "write", "stop") started and ended, and per gateway."""

    phase: str
    started_s: float
    finished_s: float = 0.0
    gateways: dict[str, GatewayTiming] = field(default_factory=dict)


class _Worker:
    """One gateway's bus and the single thread that uses it (or the caller's thread when not threaded).

    The bus tells it when each frame ends (``frame_ended``, on the thread that runs the job); it keeps, on
    ``clock``, when the current round's job began and its last frame ended, and the times between them.
    """

    def __init__(self, name: str, bus: BatteryBus, timeout_s: float, *, threaded: bool,
                 clock: Callable[[], float]) -> None:
        self.name, self.bus, self.timeout_s = name, bus, timeout_s
        self.frames_s: deque[float] = deque(maxlen=FRAMES_KEPT)
        self.units = 0
        self._clock = clock
        self.started_s = self.mark_s = 0.0  # the current round's job: began, its last frame ended
        self.gaps_s: list[float] = []  # the current round's frame times so far (pacing and connecting included)
        bus.frame_ended = self._frame_ended
        self._jobs: queue.SimpleQueue[tuple[Callable[[BatteryBus], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._current: Future[Any] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name=f"gateway {name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job(self.bus))
                except BaseException as exc:  # handed to whoever waits for it
                    future.set_exception(exc)

    def submit(self, job: Callable[[BatteryBus], T]) -> Future[T]:
        future: Future[T] = Future()
        self._current = future
        if self._thread is None:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(job(self.bus))
            except BaseException as exc:
                future.set_exception(exc)
        else:
            self._jobs.put((job, future))
        return future

    @property
    def busy(self) -> bool:
        """Still working on an earlier job (a stuck or slow gateway)."""
        return self._current is not None and not self._current.done()

    def begin(self, at_s: float | None = None) -> None:
        """A round's job begins (now, or at ``at_s`` on the clock): its frame times start afresh. Only while
        the worker is idle (a busy gateway is skipped), so the worker thread is not writing them."""
        self.started_s = self.mark_s = self._clock() if at_s is None else at_s
        self.gaps_s = []

    def _frame_ended(self) -> None:
        now_s = self._clock()
        self.gaps_s.append(now_s - self.mark_s)
        self.mark_s = now_s

    def learn(self) -> None:
        """The round's job ended in time: its frame times are usual ones."""
        self.frames_s.extend(self.gaps_s)

    def frame_s(self) -> float:
        """How long one frame usually takes here (s, pacing included); with no history, connecting and an
        answer, each up to the timeout."""
        return max(self.frames_s) if self.frames_s else 2.0 * self.timeout_s

    def settled_s(self, end_s: float, allowance_s: float) -> float:
        """When the fleet stopped waiting for the round's job that ended at ``end_s``: its end, or
        ``allowance_s`` after the last frame that ended before a longer silence."""
        t_s = self.started_s
        for gap_s in (*self.gaps_s, end_s - self.mark_s):
            if gap_s > allowance_s:
                return t_s + allowance_s
            t_s += gap_s
        return end_s

    def stop_thread(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)


_DONE = object()


class Fleet:
    """All batteries, by key; the gateways served in parallel. Owned by the control thread."""

    def __init__(self, units: Iterable[UnitConfig], make_bus: BusFactory, *, timeout_s: float = 3.0,
                 threaded: bool = True, wait_clock: Callable[[], float] = time.monotonic,
                 runner: RoundRunner | None = None) -> None:
        self._make_bus, self.timeout_s, self.threaded = make_bus, timeout_s, threaded and runner is None
        self._wait_clock = wait_clock  # threaded: also the clock of the frames' ends
        self._runner = runner
        self.units: dict[str, UnitConfig] = {}
        self._workers: dict[str, _Worker] = {}
        self.last_rounds: dict[str, RoundTiming] = {}
        for unit in units:
            self.add_unit(unit)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg: Config, *, timeout_s: float | None = None, threaded: bool = True,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep,
                    on_quirk: Callable[[str], None] | None = None) -> Fleet:
        """One ``MarstekGateway`` per gateway of ``battery.units``; ``timeout_s`` overrides the config's;
        ``on_quirk`` is handed to every gateway (``MarstekGateway``: the device quirks it meets)."""
        b = cfg.battery
        answer_s = b.timeout_seconds if timeout_s is None else timeout_s

        def make(unit: UnitConfig, answer_timeout_s: float) -> BatteryBus:
            return gateway_bus(b, unit, answer_timeout_s, cfg.control.soc_update_interval_seconds,
                               clock=clock, sleep=sleep, on_quirk=on_quirk)

        return cls(b.units, make, timeout_s=answer_s, threaded=threaded)

    @classmethod
    def around(cls, bus: BatteryBus, units: Sequence[UnitConfig]) -> Fleet:
        """A fleet of one gateway around a ready bus (tests, benchmark, soak): jobs run in the caller's thread."""
        return cls(units, lambda _unit, _timeout_s: bus, threaded=False)

    def add_unit(self, unit: UnitConfig) -> None:
        """Take a unit into the fleet (a new gateway gets its bus and worker); a known key is left as is."""
        if unit.key in self.units:
            return
        self.units[unit.key] = unit
        worker = self._workers.get(unit.gateway)
        if worker is None:
            runner = self._runner
            clock = self._wait_clock if runner is None else functools.partial(runner.now, unit.gateway)
            worker = _Worker(unit.gateway, self._make_bus(unit, self.timeout_s), self.timeout_s,
                             threaded=self.threaded, clock=clock)
            self._workers[unit.gateway] = worker
        worker.units += 1

    @property
    def gateways(self) -> list[str]:
        """Every gateway ``"<host>:<port>"``, in the order of the units."""
        return list(self._workers)

    def usual_frame_s(self, gateway: str) -> float:
        """How long one frame of ``gateway`` usually takes (s, pacing included): in a round with other gateways
        they wait this + ``GRACE_S`` for its next frame to end before they leave it behind."""
        return self._workers[gateway].frame_s()

    def bus(self, gateway: str) -> BatteryBus:
        """The bus of one gateway (for code that runs on that gateway's worker through ``call``)."""
        return self._workers[gateway].bus

    @property
    def writes_total(self) -> int:
        """Register writes so far, all gateways (the quality figures)."""
        return sum(int(w.bus.writes_total) for w in self._workers.values())

    # ------------------------------------------------------------------ rounds
    def read_all(self, keys: Iterable[str] | None = None) -> dict[str, BatteryReading | BatteryError]:
        """Read every unit (or ``keys``), all gateways at once; a unit without an answer gets its BatteryError."""
        jobs = {key: _read_job(self.units[key].unit_id) for key in (self.units if keys is None else keys)}
        return self._round("read", jobs)

    def write_all(self, commands: Mapping[str, tuple[float, BatteryReading | None]]
                  ) -> dict[str, int | BatteryError]:
        """Write each unit's setpoint (+ discharge, - charge, W); every gateway starts at the same moment."""
        jobs = {key: _write_job(self.units[key].unit_id, setpoint_w, reading)
                for key, (setpoint_w, reading) in commands.items()}
        return self._round("write", jobs)

    def stop_all(self, keys: Iterable[str] | None = None,
                 budget_s: float = SHUTDOWN_BUDGET_S) -> dict[str, BatteryError | None]:
        """Force mode stop and both setpoints 0 on every unit; waits at most ``budget_s`` (queued behind a busy job)."""
        jobs = {key: _stop_job(self.units[key].unit_id) for key in (self.units if keys is None else keys)}
        results = self._round("stop", jobs, budget_s=budget_s)
        return {key: (r if isinstance(r, BatteryError) else None) for key, r in results.items()}

    def release_all(self, keys: Iterable[str] | None = None,
                    budget_s: float = SHUTDOWN_BUDGET_S) -> dict[str, BatteryError | None]:
        """battery.on_exit "release": hand every unit back to its own logic (after ``stop_all``)."""
        jobs = {key: _release_job(self.units[key].unit_id) for key in (self.units if keys is None else keys)}
        results = self._round("release", jobs, budget_s=budget_s)
        return {key: (r if isinstance(r, BatteryError) else None) for key, r in results.items()}

    def _round(self, phase: str, jobs: Mapping[str, Callable[[BatteryBus], T]], *, budget_s: float | None = None
               ) -> dict[str, T | BatteryError]:
        by_gateway: dict[str, list[tuple[str, Callable[[BatteryBus], T]]]] = {}
        for key, job in jobs.items():
            by_gateway.setdefault(self.units[key].gateway, []).append((key, job))
        started_s = self._wait_clock()
        timing = RoundTiming(phase, started_s)
        self.last_rounds[phase] = timing
        results: dict[str, T | BatteryError] = {}
        answers: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        pending: dict[str, float] = {}  # gateway -> how long the others wait for its next frame to end
        simulated: list[tuple[str, Callable[[], None], Settled]] = []
        for name, items in by_gateway.items():
            worker = self._workers[name]
            timing.gateways[name] = GatewayTiming(self._wait_clock())
            busy = self._runner.busy(name) if self._runner is not None else worker.busy
            if busy and phase != "stop":
                timing.gateways[name].skipped = True
                for key, _job in items:
                    results[key] = BatteryError(Msg("gateway_busy", gateway=name))
                continue
            # A stop waits for everyone (up to the budget); reads and writes not for a straggler.
            pending[name] = float("inf") if phase == "stop" else worker.frame_s() + GRACE_S
            part = _gateway_job(name, items, answers)
            if self._runner is not None:
                simulated.append((name, functools.partial(_begun, worker, part),
                                  functools.partial(worker.settled_s, allowance_s=pending[name])))
            else:
                worker.begin(timing.gateways[name].started_s)
                worker.submit(part)
        allowances = dict(pending)  # _collect takes the gateways out as they are done
        if self._runner is not None:
            self._simulated_round(simulated, answers, results, timing)
        else:
            self._collect(pending, answers, results, timing, budget_s)
        for key in jobs:
            if key not in results:
                gateway = self.units[key].gateway
                allowance_s = allowances.get(gateway, float("inf"))
                results[key] = BatteryError(Msg("gateway_too_slow", gateway=gateway) if allowance_s == float("inf")
                                            else Msg("gateway_silent", gateway=gateway,
                                                     silent_ms=round(allowance_s * 1000)))
        timing.finished_s = self._wait_clock()
        return results

    def _collect(self, pending: dict[str, float], answers: queue.SimpleQueue[tuple[str, Any]],
                 results: dict[str, Any], timing: RoundTiming, budget_s: float | None) -> None:
        """Take answers until every gateway is done, or (several gateways) every one still working has had no
        frame end for longer than its allowance (``pending``: gateway -> allowance, s)."""
        several = len(pending) > 1
        end_s = None if budget_s is None else timing.started_s + budget_s

        def until_s() -> float | None:
            last_s = max(self._workers[n].mark_s + allowance_s for n, allowance_s in pending.items()) \
                if several else None
            if last_s == float("inf"):
                last_s = None
            if end_s is not None:
                last_s = end_s if last_s is None else min(last_s, end_s)
            return last_s

        while pending:
            wait_until_s = until_s()
            try:
                if wait_until_s is None:
                    key, value = answers.get()
                else:
                    key, value = answers.get(timeout=max(0.0, wait_until_s - self._wait_clock()))
            except queue.Empty:
                again_s = until_s()  # a frame that ended meanwhile moves it on
                if again_s is None or again_s > self._wait_clock():
                    continue
                return  # the rest finish on their own; their answers go nowhere
            if value is _DONE:
                done_s = self._wait_clock()
                if pending.pop(key, None) is not None:  # in time: its frames were usual ones
                    self._workers[key].learn()
                timing.gateways[key].done_s = done_s
            elif isinstance(value, _Bug):
                raise value.error
            else:
                results[key] = value

    def _simulated_round(self, jobs: Sequence[tuple[str, Callable[[], None], Settled]],
                         answers: queue.SimpleQueue[tuple[str, Any]], results: dict[str, Any],
                         timing: RoundTiming) -> None:
        """The round on the runner's simulated time: answers of a gateway that was not in time are dropped."""
        assert self._runner is not None
        ended = self._runner.run(jobs)
        taken = {name for name, (_end_s, in_time) in ended.items() if in_time}
        while not answers.empty():
            key, value = answers.get()
            if isinstance(value, _Bug):
                raise value.error
            if value is not _DONE and self.units[key].gateway in taken:
                results[key] = value
        for name in taken:
            self._workers[name].learn()
            timing.gateways[name].done_s = ended[name][0]

    # ------------------------------------------------------------------ one gateway (setup, --check)
    def call(self, gateway: str, job: Callable[[BatteryBus], T], alive: Callable[[], None] = lambda: None,
             *, poll_s: float = 0.5) -> T:
        """Run ``job(bus)`` on ``gateway``'s worker and wait for it, calling ``alive`` while waiting."""
        if self._runner is not None:
            box: list[T] = []
            self._runner.run([(gateway, lambda: box.append(job(self._workers[gateway].bus)), lambda end_s: end_s)])
            return box[0]
        future = self._workers[gateway].submit(job)
        while True:
            alive()
            try:
                return future.result(timeout=poll_s)
            except TimeoutError:
                continue

    def forget(self, key: str) -> None:
        """Drop what the gateway caches about a unit (after setup mode)."""
        unit = self.units[key]
        self.call(unit.gateway, lambda bus: bus.forget(unit.unit_id))

    def abort(self) -> list[str]:
        """Abort every gateway's connection hard (TCP RST) and open no new one until ``resume()``; returns the
        gateways that had a connection open.

        Called from another thread than the control thread (the watchdog, the shutdown) while a worker may be
        stuck inside a frame: each bus's ``abort`` touches only its socket, because the worker still owns the
        bus's state and is not to be waited for (the stuck frame fails at once and the worker finds the hold).
        """
        return [name for name, worker in self._workers.items() if worker.bus.abort()]

    def resume(self) -> None:
        """New connections allowed again after ``abort()`` (each gateway keeps its reconnect gap from now)."""
        for worker in self._workers.values():
            worker.bus.resume()

    def connection_closed(self, gateways: Iterable[str] | None = None) -> None:
        """Another fleet's connections to ``gateways`` (default: all) closed just now: the first connect to each
        keeps its reconnect gap (a v3 LAN port frees its one client slot only about a second later)."""
        for name in self._workers if gateways is None else gateways:
            worker = self._workers.get(name)
            if worker is not None:
                worker.bus.connection_closed()

    def close(self) -> None:
        """Close every connection; a gateway stuck in a frame is closed from here to free its socket."""
        for worker in self._workers.values():
            if worker.busy:
                worker.bus.close()  # the stuck frame fails at once; its thread is a daemon
            else:
                future = worker.submit(lambda bus: bus.close())
                try:
                    future.result(timeout=CLOSE_WAIT_S)
                except TimeoutError:
                    worker.bus.close()
            worker.stop_thread()


@dataclass
class _Bug:
    """A job raised something that is not a BatteryError: a bug, re-raised in the control thread."""

    error: BaseException


def _gateway_job(name: str, items: Sequence[tuple[str, Callable[[BatteryBus], Any]]],
                 answers: queue.SimpleQueue[tuple[str, Any]]) -> Callable[[BatteryBus], None]:
    """One gateway's part of a round: its units one after the other, each answer posted as it comes."""

    def run(bus: BatteryBus) -> None:
        try:
            for key, job in items:
                try:
                    answers.put((key, job(bus)))
                except BatteryError as exc:
                    answers.put((key, exc))
        except Exception as exc:
            answers.put((name, _Bug(exc)))
        finally:
            answers.put((name, _DONE))

    return run


def _begun(worker: _Worker, part: Callable[[BatteryBus], None]) -> None:
    """A simulated round's gateway job: its frame times counted from its own start."""
    worker.begin()
    part(worker.bus)


def _read_job(unit_id: int) -> Callable[[BatteryBus], BatteryReading]:
    return lambda bus: bus.read(unit_id)


def _write_job(unit_id: int, setpoint_w: float, reading: BatteryReading | None) -> Callable[[BatteryBus], int]:
    return lambda bus: bus.write_setpoint(unit_id, setpoint_w, reading)


def _release_job(unit_id: int) -> Callable[[BatteryBus], None]:
    def job(bus: BatteryBus) -> None:
        bus.release(unit_id)

    return job


def _stop_job(unit_id: int) -> Callable[[BatteryBus], None]:
    return lambda bus: bus.stop(unit_id)


_DEFAULT_NAME = re.compile(r"Akku (\d+)")


def unit_name(unit: UnitConfig) -> Msg | str:
    """A unit's name for messages: the default name "Akku <n>" reads "Battery <n>" in English."""
    default = _DEFAULT_NAME.fullmatch(unit.name)
    return Msg("unit_default_name", n=int(default.group(1))) if default else unit.name


def gateway_bus(b: BatteryConfig, unit: UnitConfig, timeout_s: float, soc_interval_s: float, *,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep,
                on_quirk: Callable[[str], None] | None = None) -> MarstekGateway:
    """The ``MarstekGateway`` of ``unit``'s gateway (its register set, framer; the strongest unit's limit);
    ``on_quirk`` gets the quirks it meets."""
    same = [u for u in b.units if u.gateway == unit.gateway] or [unit]
    return MarstekGateway(
        unit.host,
        unit.port,
        register_set=unit.register_set,
        timeout_s=timeout_s,
        pacing_s=None if b.pacing_ms is None else b.pacing_ms / 1000.0,  # None: the register set's default
        max_power_w=max(u.max_power_per_battery for u in same),
        soc_interval_s=soc_interval_s,
        clock=clock,
        sleep=sleep,
        client_factory=tcp_client_factory(unit.host, unit.port, unit.framer),
        on_quirk=on_quirk,
    )
