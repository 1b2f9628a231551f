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
runs every job in the caller's thread, one gateway after the other (tests, a bare bus handed to the control).
How a round's jobs run and when the fleet stops waiting is a ``RoundExecutor``; the product's is
``ThreadedRounds`` (the benchmark brings its own, on simulated time).

Signs: battery power and setpoints + discharge / - charge (W).
"""

from __future__ import annotations

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


class RoundExecutor(Protocol):
    """How a fleet runs a round's gateway jobs "at the same moment" and decides when it stops waiting.

    The fleet hands each gateway's part to ``start`` (in the order of the gateways), then calls ``finish``,
    which returns once the round is over: every answer it takes goes through ``Round.keep``, and each
    gateway whose job ended in time through ``Round.ended_in_time``. The product's is ``ThreadedRounds``.
    """

    def frame_clock(self, gateway: str) -> Callable[[], float]:
        """The clock (s) on which ``gateway``'s frames end (its worker's frame times)."""
        ...

    def busy(self, worker: GatewayWorker) -> bool:
        """``worker`` is still inside an earlier job (the round skips it)."""
        ...

    def start(self, rnd: Round, part: RoundPart) -> None:
        """One gateway's part of ``rnd`` begins (or is queued to begin with the others in ``finish``)."""
        ...

    def finish(self, rnd: Round) -> None:
        """Returns when the fleet stops waiting for ``rnd``'s parts (gateways not done by then are cut off)."""
        ...

    def call(self, worker: GatewayWorker, job: Callable[[BatteryBus], T], alive: Callable[[], None],
             poll_s: float) -> T:
        """Run one job on ``worker``'s bus and wait for it, calling ``alive`` while waiting."""
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


class GatewayWorker:
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


@dataclass(frozen=True)
class Answer:
    """What a gateway's job posts: a unit's result (``key``: the unit), its end or a bug (``key``: the gateway)."""

    gateway: str
    key: str
    value: Any


@dataclass
class RoundPart:
    """One gateway's part of a round: ``job`` on ``worker``'s bus; the others wait ``allowance_s`` (s) for
    its next frame to end (inf: waited for to the end)."""

    worker: GatewayWorker
    job: Callable[[BatteryBus], None]
    allowance_s: float

    @property
    def name(self) -> str:
        return self.worker.name


@dataclass
class Round:
    """One round handed to a ``RoundExecutor``: its parts, the answers the jobs post and the results taken."""

    timing: RoundTiming
    budget_s: float | None
    parts: list[RoundPart] = field(default_factory=list)
    answers: queue.SimpleQueue[Answer] = field(default_factory=queue.SimpleQueue)
    results: dict[str, Any] = field(default_factory=dict)

    def keep(self, answer: Answer, take: bool = True) -> bool:
        """One posted answer: a unit's result is kept (unless not ``take``: an executor that drops a late gateway's
        answers); True when it is the gateway's end. A job's bug is raised here, in the control thread."""
        if isinstance(answer.value, _Bug):
            raise answer.value.error
        if answer.value is _DONE:
            return True
        if take:
            self.results[answer.key] = answer.value
        return False

    def ended_in_time(self, part: RoundPart, done_s: float) -> None:
        """``part``'s job ended in time, at ``done_s``: its frame times are usual ones."""
        part.worker.learn()
        self.timing.gateways[part.name].done_s = done_s


class ThreadedRounds:
    """The product's ``RoundExecutor``: each gateway's job on its worker's thread (or, not threaded, at once in
    the caller's), the answers taken as they come on ``wait_clock``, until every gateway is done or (several
    gateways) every one still working has had no frame end for longer than its allowance, or the budget ends."""

    def __init__(self, wait_clock: Callable[[], float] = time.monotonic) -> None:
        self._wait_clock = wait_clock

    def frame_clock(self, gateway: str) -> Callable[[], float]:
        return self._wait_clock

    def busy(self, worker: GatewayWorker) -> bool:
        return worker.busy

    def start(self, rnd: Round, part: RoundPart) -> None:
        part.worker.begin(rnd.timing.gateways[part.name].started_s)
        part.worker.submit(part.job)

    def finish(self, rnd: Round) -> None:
        pending = {part.name: part for part in rnd.parts}
        several = len(pending) > 1
        end_s = None if rnd.budget_s is None else rnd.timing.started_s + rnd.budget_s

        def until_s() -> float | None:
            last_s = max(p.worker.mark_s + p.allowance_s for p in pending.values()) if several else None
            if last_s == float("inf"):
                last_s = None
            if end_s is not None:
                last_s = end_s if last_s is None else min(last_s, end_s)
            return last_s

        while pending:
            wait_until_s = until_s()
            try:
                if wait_until_s is None:
                    answer = rnd.answers.get()
                else:
                    answer = rnd.answers.get(timeout=max(0.0, wait_until_s - self._wait_clock()))
            except queue.Empty:
                again_s = until_s()  # a frame that ended meanwhile moves it on
                if again_s is None or again_s > self._wait_clock():
                    continue
                return  # the rest finish on their own; their answers go nowhere
            if rnd.keep(answer):
                done_s = self._wait_clock()
                part = pending.pop(answer.gateway, None)
                if part is not None:  # in time: its frames were usual ones
                    rnd.ended_in_time(part, done_s)
                else:
                    rnd.timing.gateways[answer.gateway].done_s = done_s

    def call(self, worker: GatewayWorker, job: Callable[[BatteryBus], T], alive: Callable[[], None],
             poll_s: float) -> T:
        future = worker.submit(job)
        while True:
            alive()
            try:
                return future.result(timeout=poll_s)
            except TimeoutError:
                continue


class Fleet:
    """All batteries, by key; the gateways served in parallel. Owned by the control thread."""

    def __init__(self, units: Iterable[UnitConfig], make_bus: BusFactory, *, timeout_s: float = 3.0,
                 threaded: bool = True, wait_clock: Callable[[], float] = time.monotonic,
                 executor: RoundExecutor | None = None) -> None:
        """``executor`` runs the rounds (default ``ThreadedRounds`` on ``wait_clock``; give ``threaded=False`` with
        one that runs the jobs itself)."""
        self._make_bus, self.timeout_s, self.threaded = make_bus, timeout_s, threaded
        self._wait_clock = wait_clock
        self._executor: RoundExecutor = ThreadedRounds(wait_clock) if executor is None else executor
        self.units: dict[str, UnitConfig] = {}
        self._workers: dict[str, GatewayWorker] = {}
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
            worker = GatewayWorker(unit.gateway, self._make_bus(unit, self.timeout_s), self.timeout_s,
                                   threaded=self.threaded, clock=self._executor.frame_clock(unit.gateway))
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
        timing = RoundTiming(phase, self._wait_clock())
        self.last_rounds[phase] = timing
        rnd = Round(timing, budget_s)
        results: dict[str, T | BatteryError] = rnd.results
        for name, items in by_gateway.items():
            worker = self._workers[name]
            timing.gateways[name] = GatewayTiming(self._wait_clock())
            if self._executor.busy(worker) and phase != "stop":
                timing.gateways[name].skipped = True
                for key, _job in items:
                    results[key] = BatteryError(Msg("gateway_busy", gateway=name))
                continue
            # A stop waits for everyone (up to the budget); reads and writes not for a straggler.
            allowance_s = float("inf") if phase == "stop" else worker.frame_s() + GRACE_S
            part = RoundPart(worker, _gateway_job(name, items, rnd.answers), allowance_s)
            rnd.parts.append(part)
            self._executor.start(rnd, part)
        self._executor.finish(rnd)
        allowances = {part.name: part.allowance_s for part in rnd.parts}
        for key in jobs:
            if key not in results:
                gateway = self.units[key].gateway
                allowance_s = allowances.get(gateway, float("inf"))
                results[key] = BatteryError(Msg("gateway_too_slow", gateway=gateway) if allowance_s == float("inf")
                                            else Msg("gateway_silent", gateway=gateway,
                                                     silent_ms=round(allowance_s * 1000)))
        timing.finished_s = self._wait_clock()
        return results

    # ------------------------------------------------------------------ one gateway (setup, --check)
    def call(self, gateway: str, job: Callable[[BatteryBus], T], alive: Callable[[], None] = lambda: None,
             *, poll_s: float = 0.5) -> T:
        """Run ``job(bus)`` on ``gateway``'s worker and wait for it, calling ``alive`` while waiting."""
        return self._executor.call(self._workers[gateway], job, alive, poll_s)

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
                 answers: queue.SimpleQueue[Answer]) -> Callable[[BatteryBus], None]:
    """One gateway's part of a round: its units one after the other, each answer posted as it comes."""

    def run(bus: BatteryBus) -> None:
        try:
            for key, job in items:
                try:
                    answers.put(Answer(name, key, job(bus)))
                except BatteryError as exc:
                    answers.put(Answer(name, key, exc))
        except Exception as exc:
            answers.put(Answer(name, name, _Bug(exc)))
        finally:
            answers.put(Answer(name, name, _DONE))

    return run


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
