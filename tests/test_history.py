"""The SQLite history (history.py) on real files: restart, damaged and unwritable files, a full and a slow
disk, downsampling and retention, the energy per day, and /api/history + /api/energy in front of it."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import main
from config_loader import load_config
from control.control_loop import ControlLoop
from control.status_store import CommandQueue, HistorySample, StatusSnapshot, StatusStore, StoreLogHandler
from integrations import history as history_mod
from integrations.history import GAP_S, RAW_KEEP_S, History, energy_between, local_day
from simulator.world import Simulation, UnitSpec
from tests.helpers import wait_until
from tests.test_web import web_cfg
from web_server import create_app


def series(start_t: float, n: int, grid_w: float, battery_w: float, soc_pct: float = 50.0) -> list[HistorySample]:
    """``n`` samples one second apart with constant powers."""
    return [HistorySample(start_t + i, grid_w, battery_w, soc_pct) for i in range(n)]


def day_start(t: float) -> float:
    """Local midnight of the day of ``t``, epoch seconds."""
    d = datetime.datetime.fromtimestamp(t)
    return datetime.datetime(d.year, d.month, d.day).timestamp()


def today_row(h: History) -> dict[str, Any]:
    return h.energy_days(1)[0]


@contextlib.contextmanager
def writer(h: History, store: StatusStore) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=h.run, args=(stop,), name="test-history", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "history thread did not stop"


# ---------------------------------------------------------------------------- energy
def test_energy_between_two_samples_splits_import_export_and_charge_discharge() -> None:
    e = energy_between(HistorySample(0, 3600.0, -1800.0, 50), HistorySample(1, 3600.0, -1800.0, 50))
    assert e.import_wh == pytest.approx(1.0) and e.export_wh == 0
    assert e.charge_wh == pytest.approx(0.5) and e.discharge_wh == 0
    assert e.stored_surplus_wh == 0  # charging while importing: from the grid, not from PV
    # A zero crossing: +3600 -> -3600 W over 2 s is 0.5 Wh import and 0.5 Wh export.
    e = energy_between(HistorySample(0, 3600.0, 0.0, 50), HistorySample(2, -3600.0, 0.0, 50))
    assert e.import_wh == pytest.approx(0.5) and e.export_wh == pytest.approx(0.5)


def test_energy_saved_counts_discharge_that_covered_the_house_and_charge_from_surplus() -> None:
    # Discharging 1000 W while 200 W go to the grid: 800 W covered house load.
    e = energy_between(HistorySample(0, -200.0, 1000.0, 50), HistorySample(3.6, -200.0, 1000.0, 50))
    assert e.discharge_wh == pytest.approx(1.0) and e.avoided_import_wh == pytest.approx(0.8)
    # Charging 1000 W while importing 300 W: 700 W came from PV surplus.
    e = energy_between(HistorySample(0, 300.0, -1000.0, 50), HistorySample(3.6, 300.0, -1000.0, 50))
    assert e.charge_wh == pytest.approx(1.0) and e.stored_surplus_wh == pytest.approx(0.7)


def test_gaps_and_unknown_values_are_not_counted() -> None:
    gap = energy_between(HistorySample(0, 1000.0, 1000.0, 50), HistorySample(GAP_S + 1, 1000.0, 1000.0, 50))
    assert gap.import_wh == gap.discharge_wh == 0
    unknown = energy_between(HistorySample(0, None, 1000.0, 50), HistorySample(1, 1000.0, None, 50))
    assert unknown.import_wh == unknown.discharge_wh == 0


def test_energy_is_counted_per_local_day(tmp_path: Path) -> None:
    midnight = day_start(time.time())
    h = History(tmp_path / "h.sqlite3", clock=lambda: midnight + 60)
    # 10 s before midnight and 10 s after: the sample pair across midnight is not split, each day gets its own.
    h.add(series(midnight - 10, 10, 3600.0, 0.0) + series(midnight, 11, 7200.0, 0.0))
    days = h.energy_days(2)
    assert [d["date"] for d in days] == [local_day(midnight - 10), local_day(midnight)]
    assert days[0]["import_wh"] == pytest.approx(9.0)
    assert days[1]["import_wh"] == pytest.approx(20.0)


# ---------------------------------------------------------------------------- restart
def test_restart_keeps_history_and_energy(tmp_path: Path) -> None:
    path = tmp_path / "data" / "history.sqlite3"
    start = time.time() - 300
    store = StatusStore()
    h1 = History(path, 30, store)
    with writer(h1, store):
        for s in series(start, 200, 3600.0, -1800.0):  # 199 one-second steps: 199 Wh import
            store.publish(StatusSnapshot(), s)
        wait_until(lambda: len(h1.samples(0)) == 200, 5, "the writer stored the 200 samples")
        before = today_row(h1) if local_day(start) == local_day(time.time()) else None

    # A new program: a fresh store (nothing in memory), a new History and app on the same file.
    store2 = StatusStore()
    h2 = History(path, 30, store2)
    client = create_app(store2, CommandQueue(), web_cfg(), history=h2).test_client()
    doc = client.get(f"/api/history?since={start - 1}").get_json()
    assert doc["t"] == [s.t for s in series(start, 200, 0, 0)]
    assert set(doc["grid_w"]) == {3600.0} and set(doc["battery_w"]) == {-1800.0} and set(doc["soc_pct"]) == {50.0}
    energy = client.get("/api/energy?days=2").get_json()["days"]
    assert energy[-1]["date"] == local_day(time.time())
    total_import = sum(d["import_wh"] for d in energy)
    assert total_import == pytest.approx(199.0)  # 199 one-second steps at 3600 W
    assert sum(d["charge_wh"] for d in energy) == pytest.approx(99.5)
    if before is not None:
        assert energy[-1] == before

    # Samples of the new run follow; the default answer (the last day) has both runs, without duplicates.
    with writer(h2, store2):
        now = time.time()
        for s in series(now - 5, 5, 100.0, 0.0):
            store2.publish(StatusSnapshot(), s)
        doc = client.get("/api/history").get_json()
        assert len(doc["t"]) == 205 and doc["t"] == sorted(set(doc["t"]))


def test_history_answers_as_before_without_a_database() -> None:
    store = StatusStore()
    for s in series(time.time() - 3, 3, 10.0, 20.0):
        store.publish(StatusSnapshot(), s)
    client = create_app(store, CommandQueue(), web_cfg()).test_client()
    assert len(client.get("/api/history").get_json()["t"]) == 3
    assert client.get("/api/energy").status_code == 503


# ---------------------------------------------------------------------------- damaged and unwritable files
def test_a_corrupt_database_is_moved_aside_and_a_new_one_works(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "history.sqlite3"
    garbage = b"this is not an SQLite database\x00" * 100
    path.write_bytes(garbage)
    store = StatusStore()
    with caplog.at_level(logging.WARNING, logger="marstek"):
        h = History(path, 30, store)
    moved = list(tmp_path.glob("history.sqlite3.broken-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == garbage, "the damaged file is kept beside, renamed"
    status = store.status_json("en")
    assert any("moved aside" in w and str(moved[0]) in w for w in status["warnings"]), status["warnings"]
    assert any("moved aside" in r.getMessage() for r in caplog.records)
    assert not h.in_memory
    h.add(series(time.time() - 10, 10, 500.0, 0.0))
    h.close()
    assert len(History(path).samples(0)) == 10, "the new file keeps what is written to it"


def test_a_file_damaged_while_running_is_moved_aside_and_writing_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    store = StatusStore()
    h = History(path, 30, store)
    now = time.time()
    h.add(series(now - 60, 30, 3600.0, 0.0))
    # Another program (or a bad SD card) overwrites the file's header.
    h.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as f:
        f.write(b"\xff" * 100)
    h.conn.execute("PRAGMA cache_size=0")  # no cached pages: the next access reads the damaged header
    h.add(series(now - 30, 30, 3600.0, 0.0))  # fails: the file is moved aside
    h.add(series(now, 5, 3600.0, 0.0))  # goes to the new file
    assert list(tmp_path.glob("history.sqlite3.broken-*")), "the damaged file is moved aside"
    assert any("moved aside" in w for w in store.status_json("en")["warnings"])
    assert [s.t for s in h.samples(now - 1)] == [now + i for i in range(5)]
    assert today_row(h)["import_wh"] == pytest.approx(64.0) or local_day(now - 60) != local_day(now), (
        "today's energy is kept in memory across the new file (64 one-second steps at 3600 W)"
    )


def test_a_location_that_cannot_hold_a_file_runs_in_memory_and_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the folder should be", encoding="utf-8")
    store = StatusStore()
    h = History(blocker / "history.sqlite3", 30, store)
    assert h.in_memory
    errors = store.status_json("en")["errors"]
    assert any("kept in memory only" in e for e in errors), errors
    h.add(series(time.time() - 10, 10, 3600.0, 0.0))
    assert len(h.samples(0)) == 10 and today_row(h)["import_wh"] > 0, "history and energy work for this run"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_a_read_only_directory_runs_in_memory(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        store = StatusStore()
        h = History(folder / "history.sqlite3", 30, store)
        assert h.in_memory
        assert any("kept in memory only" in e for e in store.status_json("en")["errors"])
    finally:
        folder.chmod(0o700)


def test_an_existing_file_in_a_read_only_directory_is_reported_not_lost(tmp_path: Path) -> None:
    """Also as root: the file itself read-only (chmod is ignored for root, so make the database refuse writes)."""
    path = tmp_path / "history.sqlite3"
    h = History(path)
    h.add(series(time.time() - 20, 10, 100.0, 0.0))
    h.close()
    store = StatusStore()

    def read_only(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA query_only=ON")  # every write fails with "attempt to write a readonly database"

    h2 = History(path, 30, store, on_connect=read_only)
    # Opening creates the tables: refused, so the file is moved aside and the new one is refused too.
    assert h2.in_memory
    assert list(tmp_path.glob("history.sqlite3.broken-*")), "the old file is kept beside"
    assert any("kept in memory only" in e for e in store.status_json("en")["errors"])


def test_a_full_disk_is_reported_and_writing_resumes_when_there_is_room(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    store = StatusStore()
    h = History(path, 30, store)
    pages = h.conn.execute("PRAGMA page_count").fetchone()[0]
    h.conn.execute(f"PRAGMA max_page_count={pages + 2}")  # a disk with room for two more pages
    start = time.time() - 2000
    for n in range(0, 1800, 300):
        h.add(series(start + n, 300, 3600.0, 0.0))
    errors = store.status_json("en")["errors"]
    assert any("disk full" in e for e in errors), errors
    assert not list(tmp_path.glob("*.broken-*")), "a full disk is not a damaged file"
    if local_day(start) == local_day(time.time()):
        assert today_row(h)["import_wh"] == pytest.approx(1799.0), "energy keeps counting in memory"
    h.conn.execute("PRAGMA max_page_count=1000000")  # room again
    h.add(series(start + 1800, 10, 3600.0, 0.0))
    assert not any("disk full" in e for e in store.status_json("en")["errors"]), "the error clears"
    h.close()
    stored = History(path).energy_days(2)
    assert sum(d["import_wh"] for d in stored) == pytest.approx(1809.0), "the day's total reaches the file"


# ---------------------------------------------------------------------------- downsampling, retention
def test_old_samples_become_minute_means_and_go_after_the_retention(tmp_path: Path) -> None:
    now = time.time()
    h = History(tmp_path / "h.sqlite3", retention_days=3, clock=lambda: now)
    old = now - RAW_KEEP_S - 3600  # older than the full-resolution window
    minute = old - old % 60
    h.add([HistorySample(minute + i, 100.0 + i, -10.0, 40.0) for i in range(60)])
    h.add([HistorySample(now - 4 * 86400 + i, 1.0, 1.0, 1.0) for i in range(10)])  # beyond the retention
    h.add(series(now - 5, 5, 7.0, 7.0))
    h.add([HistorySample(minute - 4 * 86400, 1.0, 1.0, 1.0)])  # out of order: skipped, never counted twice
    h.prune()
    rows = h.samples(now - 5 * 86400)
    assert [s.t for s in rows[:1]] == [minute + 30], "one mean per minute, stamped in its middle"
    assert rows[0].grid_w == pytest.approx(129.5) and rows[0].battery_w == -10.0
    assert [s.t for s in rows[1:]] == [now - 5 + i for i in range(5)], "recent samples at full resolution"
    stepped = h.samples(now - 5 * 86400, step_s=3600)
    assert len(stepped) == 2 and all(s.t % 3600 == 1800 for s in stepped)


@pytest.mark.slow
def test_disk_use_stays_bounded(tmp_path: Path) -> None:
    """A day at one sample per second stays in the raw table; pruned days take about 1440 rows each."""
    now = time.time()
    path = tmp_path / "h.sqlite3"
    h = History(path, retention_days=30, clock=lambda: now)
    start = now - 86400
    for n in range(0, 86400, 3600):
        h.add([HistorySample(start + n + i, 300.0 + i % 7, -200.0, 55.5) for i in range(3600)])
    h.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw_day_bytes = h.disk_bytes()
    assert raw_day_bytes < 6_000_000, f"{raw_day_bytes} bytes for a day of raw samples"
    # Two days later the day is one-minute means: a small fraction of it.
    h.clock = lambda: now + 2 * 86400
    h.prune()
    assert h.conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 0
    assert 1439 <= h.conn.execute("SELECT COUNT(*) FROM samples_1m").fetchone()[0] <= 1441


# ---------------------------------------------------------------------------- HTTP
def test_energy_endpoint_validates_days_and_returns_the_contract_shape(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite3")
    h.add(series(time.time() - 100, 50, -600.0, 1200.0))
    client = create_app(StatusStore(), CommandQueue(), web_cfg(), history=h).test_client()
    for bad in ("0", "367", "abc", "-1", "7.5", ""):
        resp = client.get(f"/api/energy?days={bad}")
        assert resp.status_code == 400 and "days" in resp.get_json()["error"], bad
    days = client.get("/api/energy").get_json()["days"]
    assert len(days) == 7 and days[-1]["date"] == local_day(time.time())
    assert [d["date"] for d in days] == sorted(d["date"] for d in days)
    for d in days:
        assert {"date", "import_wh", "export_wh", "charge_wh", "discharge_wh"} <= set(d)
    assert len(client.get("/api/energy?days=366").get_json()["days"]) == 366
    assert days[-1]["export_wh"] > 0 and days[-1]["discharge_wh"] > 0


def test_history_endpoint_validates_since_and_step(tmp_path: Path) -> None:
    client = create_app(StatusStore(), CommandQueue(), web_cfg(), history=History(tmp_path / "h.sqlite3")).test_client()
    for query in ("since=abc", "since=nan", "since=inf", "step=0", "step=abc", "step=100000"):
        resp = client.get(f"/api/history?{query}")
        assert resp.status_code == 400 and "error" in resp.get_json(), query


# ---------------------------------------------------------------------------- a slow disk
@contextlib.contextmanager
def live_loop(tmp_path: Path, store: StatusStore) -> Iterator[ControlLoop]:
    with Simulation(units=[UnitSpec(1, soc_pct=50.0)]) as sim:
        sim.set_load_w(500.0)
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps({
            "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1},
            "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": [1], "timeout_seconds": 1},
            "control": {"poll_interval_seconds": 0.5},
            "logging": {"file": str(tmp_path / "marstek.log")},
        }), encoding="utf-8")
        cfg = load_config(config_path)
        commands = CommandQueue()
        loop = ControlLoop(cfg, main.build_meter(cfg), main.build_bus(cfg), store, commands)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,), name="test-control", daemon=True)
        thread.start()
        try:
            yield loop
        finally:
            stop.set()
            commands.wakeup.set()
            thread.join(timeout=15)
            assert not thread.is_alive()


@pytest.mark.slow
def test_a_write_that_blocks_does_not_delay_the_control_cycle(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_disk(conn: sqlite3.Connection) -> None:
        def block() -> int:
            entered.set()
            release.wait(30)  # the disk hangs until the test lets it go
            return 0

        conn.create_function("block_write", 0, block)

    store = StatusStore()
    events = StoreLogHandler(store)
    logging.getLogger().addHandler(events)
    h = History(tmp_path / "h.sqlite3", 30, store, on_connect=slow_disk)
    # Every sample insert now calls block_write() inside SQLite, with the database lock held.
    h.conn.execute("CREATE TEMP TRIGGER hang BEFORE INSERT ON samples BEGIN SELECT block_write(); END")
    client = create_app(store, CommandQueue(), web_cfg(), history=h).test_client()
    try:
        with live_loop(tmp_path, store) as loop, writer(h, store):
            assert entered.wait(10), "the history writer reached the hanging disk"
            cycles, started = loop.cycles_total, time.monotonic()
            gaps: list[float] = []
            last_beat = loop.heartbeat_s

            def cycles_go_on() -> bool:
                nonlocal last_beat
                beat = loop.heartbeat_s
                if beat != last_beat:
                    gaps.append(beat - last_beat)
                    last_beat = beat
                return loop.cycles_total >= cycles + 6

            wait_until(cycles_go_on, 10, "control cycles while the disk hangs", interval_s=0.01)
            assert time.monotonic() - started < 5, "six 0.5 s cycles took far too long"
            assert max(gaps) < 1.5, f"a cycle waited on the disk: heartbeat gaps {gaps}"
            assert store.latest().control_state == "active"
            # The web thread still answers: /api/status at once, /api/history from memory after its timeout.
            assert client.get("/api/status").status_code == 200
            t0 = time.monotonic()
            resp = client.get(f"/api/history?since={time.time() - 3600}")
            assert resp.status_code == 200 and len(resp.get_json()["t"]) > 0
            assert time.monotonic() - t0 < history_mod.READ_TIMEOUT_S + 2
            assert client.get("/api/energy").status_code == 503
            release.set()
            wait_until(lambda: len(h.samples(0)) > 6, 10, "the writer catches up when the disk answers again")
    finally:
        release.set()
        logging.getLogger().removeHandler(events)


# ---------------------------------------------------------------------------- clock steps (injected clocks)
class Clocks:
    """A wall clock and a monotonic clock the test moves: ``advance`` is time passing, ``step`` the wall
    clock being set (NTP, a Pi without RTC)."""

    def __init__(self, wall_s: float) -> None:
        self.wall_s, self.mono_s = wall_s, 1000.0

    def advance(self, seconds: float) -> None:
        self.wall_s += seconds
        self.mono_s += seconds

    def step(self, seconds: float) -> None:
        self.wall_s += seconds

    def history(self, path: Path, retention_days: int = 30) -> History:
        return History(path, retention_days, clock=lambda: self.wall_s, monotonic=lambda: self.mono_s)


def test_a_stored_future_sample_never_stops_new_samples_or_energy(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="marstek")
    noon = day_start(time.time()) + 12 * 3600
    clocks = Clocks(noon + 3 * 3600)  # the clock was 3 h ahead when this sample was written
    path = tmp_path / "h.sqlite3"
    h = clocks.history(path)
    h.add([HistorySample(clocks.wall_s, 10.0, 0.0, 50.0)])
    h.close()

    clocks.step(-3 * 3600)  # NTP set it right; the program starts again
    h2 = clocks.history(path)
    assert "in the future" in caplog.text
    h2.add(series(noon, 61, 3600.0, -1800.0))  # one minute at 3600 W import, 1800 W charge
    clocks.advance(61)
    assert len(h2.samples(noon - 1, noon + 61)) == 61, "new samples are stored although a newer one exists"
    row = today_row(h2)
    assert row["import_wh"] == pytest.approx(60.0) and row["charge_wh"] == pytest.approx(30.0)


def test_a_backward_step_while_running_keeps_recording_without_counting_twice(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="marstek")
    noon = day_start(time.time()) + 12 * 3600
    clocks = Clocks(noon)
    h = clocks.history(tmp_path / "h.sqlite3")
    h.add(series(noon, 31, 3600.0, 0.0))  # 30 s: 30 Wh
    clocks.advance(31)
    clocks.step(-600)  # the clock goes back 10 minutes
    clocks.advance(1)
    h.add(series(clocks.wall_s, 31, 3600.0, 0.0))  # 30 more seconds of real time: 30 Wh more, not 40 or 0
    assert "clock stepped by -600 s" in caplog.text
    assert len(h.samples(noon - 700, noon + 100)) == 62
    assert today_row(h)["import_wh"] == pytest.approx(60.0)


def test_a_forward_step_beyond_the_retention_never_wipes_the_history(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="marstek")
    noon = day_start(time.time()) + 12 * 3600
    clocks = Clocks(noon)
    h = clocks.history(tmp_path / "h.sqlite3", retention_days=3)
    h.add(series(noon, 10, 100.0, 0.0))
    clocks.advance(10)
    clocks.step(40 * 86400)  # a wrong clock 40 days ahead (the retention is 3 days)
    clocks.advance(1)
    h.add(series(clocks.wall_s, 10, 200.0, 0.0))
    h.prune()
    assert "clock stepped by +40.0 d" in caplog.text
    before = h.samples(0, noon + 3600)
    # Kept (as a one-minute mean: downsampling follows the wall clock, it costs resolution, never data).
    assert len(before) == 1 and before[0].grid_w == 100.0, "the samples from before the step are kept"
    assert len(h.samples(noon + 3600)) == 10
    assert h.energy_days(1)[0]["date"] == local_day(clocks.wall_s)
    assert h.conn.execute("SELECT COUNT(*) FROM energy WHERE day = ?", (local_day(noon),)).fetchone()[0] == 1

    # Real time passing still applies the retention: 4 days later the samples from before the step are gone.
    for _ in range(4):
        clocks.advance(86400)
        h.add(series(clocks.wall_s, 1, 0.0, 0.0))
    h.prune()
    assert all(s.t > noon + 86400 for s in h.samples(0))


def test_a_restart_with_the_clock_far_ahead_keeps_the_newest_retention_days(tmp_path: Path) -> None:
    noon = day_start(time.time()) + 12 * 3600
    clocks = Clocks(noon)
    path = tmp_path / "h.sqlite3"
    h = clocks.history(path, retention_days=3)
    h.add([HistorySample(noon - 5 * 86400, 1.0, 1.0, 1.0)])  # beyond the retention from the newest sample
    h.add(series(noon - 10, 10, 100.0, 0.0))
    h.close()
    clocks.step(50 * 86400)  # started again with a clock 50 days ahead (or after 50 days off)
    h2 = clocks.history(path, retention_days=3)
    h2.add(series(clocks.wall_s, 5, 100.0, 0.0))
    h2.prune()
    kept = h2.samples(0, noon + 1)
    assert [s.grid_w for s in kept] == [100.0], "the newest stored minute is kept (as its mean)"
    assert len(h2.samples(noon + 1)) == 5
    assert h2.samples(0, noon - 86400) == [], "what lay beyond the retention from the newest sample is gone"
