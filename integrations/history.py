"""The history that survives a restart: chart samples and daily energy in SQLite.

``History`` is the only writer of the database. Its thread (``run``) takes the samples the control
thread published to the status store (``StatusStore.take_samples``, a bounded queue) once a second and
writes them; the control thread never waits on the disk or on the database. The web thread reads
through the same object (``samples``, ``energy_days``); a reader waits at most ``READ_TIMEOUT_S`` for a
writer that hangs on a slow disk, then gets ``HistoryBusy``.

Storage: every sample for the last ``RAW_KEEP_S`` (the 24 h chart at full resolution), one-minute means
for older samples until ``retention_days``, and one row of energy counters per local day (kept for at
least ``ENERGY_KEEP_DAYS``). Energy is integrated here from consecutive samples (trapezoids; gaps longer
than ``GAP_S``, e.g. while the program was not running, are not counted). Today's counters live in
memory and are written with every batch, so a failing disk never loses them during a run.

Time: samples carry wall-clock time, which can step (a Pi without RTC, NTP correcting it). A sample
is never refused because a stored one is newer (energy is only integrated between samples in order), and
the retention never reaches further back than ``retention_days`` before an "effective now" that advances
with the monotonic clock from the newest sample stored at start (or the wall clock, whichever is earlier):
a forward step of the wall clock larger than the retention therefore cannot wipe the history. A step is
detected (wall time against monotonic time between two batches) and logged.

A damaged or unwritable database file is moved aside (renamed with a timestamp) and a fresh one is
started; if no file can be written at all (read-only directory) the history runs in memory. Both are
reported in /api/status and the log. A full disk is reported and retried with every batch.

Money (only with a ``tariff``): ``price_at(t)`` (``prices_from``: a lookup over the fetcher's latest
price slots; it never waits for the network) gives the price in force at epoch ``t``. For every pair of
consecutive samples (at most ``GAP_S`` apart) the history values the measured grid flows at the price
of the slot their middle falls in, and the same segment as it would have been without the battery: the
house's net demand is grid + battery power (the battery's discharge would have been imported, its charge
exported), so ``import' = max(0, grid + battery)`` and ``export' = max(0, -(grid + battery))``. Charging
from PV at noon and discharging at night are thus valued at their own slot's prices. Per day it keeps
the import cost, the feed-in revenue, the net cost without the battery (``saved = that - actual net
cost``) and ``unpriced_wh`` (energy of segments with no known price: never valued at 0). The slots used
are stored in the ``prices`` table; running totals for Prometheus (``money_totals``) in ``money_totals``.

Signs: grid + import / - export; battery + discharge / - charge (W).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from control import i18n
from control.status_store import HistorySample, StatusStore

log = logging.getLogger("marstek")

MEMORY = ":memory:"
WRITE_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 600.0
RAW_KEEP_S = 26 * 3600  # full resolution for the 24 h chart (plus a margin)
MINUTE_S = 60
GAP_S = 15.0  # samples further apart are a gap: not integrated
ENERGY_KEEP_DAYS = 366  # one small row per day; /api/energy may ask for up to 366 days
READ_TIMEOUT_S = 2.0
CLOCK_STEP_S = 60.0  # wall and monotonic time disagreeing by more than this between two batches: a step
SCHEMA_VERSION = 2  # 2: money columns in ``energy``, the ``prices`` and ``money_totals`` tables

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (t REAL PRIMARY KEY, grid_w REAL, battery_w REAL, soc_pct REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples_1m (t REAL PRIMARY KEY, grid_w REAL, battery_w REAL, soc_pct REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS energy (
    day TEXT PRIMARY KEY, import_wh REAL NOT NULL, export_wh REAL NOT NULL, charge_wh REAL NOT NULL,
    discharge_wh REAL NOT NULL, avoided_import_wh REAL NOT NULL, stored_surplus_wh REAL NOT NULL,
    cost_ct REAL, feed_in_revenue_ct REAL, baseline_ct REAL, unpriced_wh REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prices (
    start REAL PRIMARY KEY, end REAL NOT NULL, import_ct_per_kwh REAL NOT NULL, feed_in_ct_per_kwh REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS money_totals (name TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID;
"""
MONEY_COLUMNS = ("cost_ct", "feed_in_revenue_ct", "baseline_ct", "unpriced_wh")  # added to ``energy`` in version 2


class HistoryBusy(Exception):
    """The database is held by a write that takes too long (slow disk); try again later."""


@dataclass
class DayEnergy:
    """Energy of one local day, Wh. ``avoided_import_wh``: battery discharge that covered house load
    (not exported); ``stored_surplus_wh``: battery charge that came from PV surplus (not imported)."""

    import_wh: float = 0.0
    export_wh: float = 0.0
    charge_wh: float = 0.0
    discharge_wh: float = 0.0
    avoided_import_wh: float = 0.0
    stored_surplus_wh: float = 0.0

    def add(self, other: DayEnergy) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, float]:
        return {f.name: round(getattr(self, f.name), 3) for f in fields(self)}


ENERGY_FIELDS = tuple(f.name for f in fields(DayEnergy))


@dataclass
class DayMoney:
    """Money of one local day, in euro cents, and the energy no price was known for.

    ``cost_ct``: imported kWh x import price; ``feed_in_revenue_ct``: exported kWh x feed-in price;
    ``baseline_ct``: the net cost (import cost - feed-in revenue) of the same segments without the battery;
    ``unpriced_wh``: grid energy (import + export, measured or without the battery, the larger) of segments
    without a known price, and of segments whose battery power was unknown."""

    cost_ct: float = 0.0
    feed_in_revenue_ct: float = 0.0
    baseline_ct: float = 0.0
    unpriced_wh: float = 0.0

    def add(self, other: DayMoney) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def saved_ct(self) -> float:
        """What the battery saved: the net cost without it minus the actual net cost."""
        return self.baseline_ct - (self.cost_ct - self.feed_in_revenue_ct)

    def as_api(self) -> dict[str, float]:
        """The /api/energy money keys (euro, rounded to 0.1 ct; Wh to 1 mWh)."""
        return {"cost_eur": round(self.cost_ct / 100, 4),
                "feed_in_revenue_eur": round(self.feed_in_revenue_ct / 100, 4),
                "saved_eur": round(self.saved_ct / 100, 4), "unpriced_wh": round(self.unpriced_wh, 3)}


NO_MONEY = {"cost_eur": None, "feed_in_revenue_eur": None, "saved_eur": None, "unpriced_wh": None}
# Running totals since the database was created (Prometheus counters): the positive and negative parts
# of every segment's import cost and saving are kept apart, so each total only ever grows.
MONEY_TOTALS = ("cost_ct", "cost_negative_ct", "saved_ct", "saved_negative_ct")


@dataclass(frozen=True)
class SlotPrice:
    """The price in force in one slot: epoch seconds [start_s, end_s), ct/kWh (VAT included; may be negative)."""

    start_s: float
    end_s: float
    import_ct_per_kwh: float
    feed_in_ct_per_kwh: float


PriceAt = Callable[[float], "SlotPrice | None"]


def prices_from(current: Callable[[], Any]) -> PriceAt:
    """A price-at-time lookup over the latest price state: ``current()`` returns the fetcher's
    ``FetchState`` of price slots (``Fetcher.prices``) or None; it must never wait for the network.
    Returns None for a time no slot covers (no prices yet, or they ran out)."""
    cache: list[Any] = [None, [], []]  # the slots tuple looked at last, its starts (epoch s), its SlotPrices

    def price_at(t: float) -> SlotPrice | None:
        state = current()
        slots = getattr(state, "slots", None) or ()
        if slots is not cache[0]:
            prices = [SlotPrice(s.start.timestamp(), s.end.timestamp(), float(s.import_ct_per_kwh),
                                float(s.feed_in_ct_per_kwh)) for s in slots]
            prices.sort(key=lambda p: p.start_s)
            cache[:] = [slots, [p.start_s for p in prices], prices]
        i = bisect.bisect_right(cache[1], t) - 1
        if i < 0:
            return None
        found: SlotPrice = cache[2][i]
        if not (t < found.end_s and math.isfinite(found.import_ct_per_kwh + found.feed_in_ct_per_kwh)):
            return None
        return found

    return price_at


def local_day(t: float) -> str:
    """The local calendar day of epoch seconds ``t`` (YYYY-MM-DD)."""
    return datetime.datetime.fromtimestamp(t).date().isoformat()


def _areas(a: float, b: float, dt: float) -> tuple[float, float]:
    """Positive and negative area (W·s) of a linear segment from a to b over dt seconds."""
    if a >= 0 and b >= 0:
        return (a + b) / 2 * dt, 0.0
    if a <= 0 and b <= 0:
        return 0.0, (a + b) / 2 * dt
    hi, lo = max(a, b), min(a, b)
    share = hi / (hi - lo)  # part of dt above zero
    return hi * share * dt / 2, lo * (1 - share) * dt / 2


def energy_between(a: HistorySample, b: HistorySample) -> DayEnergy:
    """The energy from sample ``a`` to the next sample ``b`` (nothing across a gap or a missing value)."""
    e = DayEnergy()
    dt = b.t - a.t
    if not 0 < dt <= GAP_S:
        return e
    grid = a.grid_w is not None and b.grid_w is not None
    batt = a.battery_w is not None and b.battery_w is not None
    if grid:
        pos, neg = _areas(a.grid_w, b.grid_w, dt)  # type: ignore[arg-type]
        e.import_wh, e.export_wh = pos / 3600, -neg / 3600
    if batt:
        pos, neg = _areas(a.battery_w, b.battery_w, dt)  # type: ignore[arg-type]
        e.discharge_wh, e.charge_wh = pos / 3600, -neg / 3600
    if grid and batt:
        def avoided(s: HistorySample) -> float:  # discharge minus what went on to the grid
            return max(0.0, max(0.0, s.battery_w or 0.0) - max(0.0, -(s.grid_w or 0.0)))

        def stored(s: HistorySample) -> float:  # charge minus what came from the grid
            return max(0.0, max(0.0, -(s.battery_w or 0.0)) - max(0.0, s.grid_w or 0.0))

        e.avoided_import_wh = (avoided(a) + avoided(b)) / 2 * dt / 3600
        e.stored_surplus_wh = (stored(a) + stored(b)) / 2 * dt / 3600
    return e


def money_between(a: HistorySample, b: HistorySample, price: SlotPrice | None) -> DayMoney:
    """The money of the segment from ``a`` to ``b`` at ``price`` (None: unknown, counted as unpriced)."""
    m = DayMoney()
    dt = b.t - a.t
    if not 0 < dt <= GAP_S or a.grid_w is None or b.grid_w is None:
        return m
    pos, neg = _areas(a.grid_w, b.grid_w, dt)
    import_wh, export_wh = pos / 3600, -neg / 3600
    if a.battery_w is None or b.battery_w is None:  # no saving can be worked out: the grid flow stays unvalued
        m.unpriced_wh = import_wh + export_wh
        return m
    pos, neg = _areas(a.grid_w + a.battery_w, b.grid_w + b.battery_w, dt)  # the house without the battery
    without_import_wh, without_export_wh = pos / 3600, -neg / 3600
    if price is None:
        m.unpriced_wh = max(import_wh + export_wh, without_import_wh + without_export_wh)
        return m
    m.cost_ct = import_wh / 1000 * price.import_ct_per_kwh
    m.feed_in_revenue_ct = export_wh / 1000 * price.feed_in_ct_per_kwh
    m.baseline_ct = (without_import_wh / 1000 * price.import_ct_per_kwh
                     - without_export_wh / 1000 * price.feed_in_ct_per_kwh)
    return m


def bucket_samples(samples: Sequence[HistorySample], step_s: int) -> list[HistorySample]:
    """Means of ``samples`` in buckets of ``step_s`` seconds (t = the bucket's middle), oldest first."""
    buckets: dict[int, list[HistorySample]] = {}
    for s in samples:
        buckets.setdefault(int(s.t // step_s), []).append(s)

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    return [HistorySample(n * step_s + step_s / 2, mean([s.grid_w for s in group]),
                          mean([s.battery_w for s in group]), mean([s.soc_pct for s in group]))
            for n, group in sorted(buckets.items())]


def _duration(seconds: float) -> str:
    """A signed duration for a log line: ``"-600 s"``, ``"+5.0 h"``, ``"+40.0 d"``."""
    if abs(seconds) < 3600:
        return f"{seconds:+.0f} s"
    if abs(seconds) < 2 * 86400:
        return f"{seconds / 3600:+.1f} h"
    return f"{seconds / 86400:+.1f} d"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class History:
    """The SQLite history: one writer thread (``run``), readers from the web thread."""

    def __init__(
        self,
        path: str | Path,
        retention_days: int = 30,
        store: StatusStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_connect: Callable[[sqlite3.Connection], None] | None = None,
        open_now: bool = True,
        price_at: PriceAt | None = None,
    ) -> None:
        """``on_connect`` runs on every new connection (tests use it to simulate a slow or full disk).
        ``open_now=False``: the file is opened by ``run`` in the history thread (a hanging disk then never
        delays the start of the control). ``price_at``: the price in force at an epoch time (``prices_from``),
        given only when a tariff is configured; None: no money is counted and /api/energy has no money keys."""
        self.price_at = price_at
        self.path = str(path)
        self.retention_days = retention_days
        self.store = store
        self.clock = clock
        self.monotonic = monotonic
        # (wall, monotonic) the retention's "effective now" advances from; set when the file is loaded.
        self._time_base: tuple[float, float] | None = None
        self._last_batch: tuple[float, float] | None = None  # (wall, monotonic) of the last add(): step check
        self.on_connect = on_connect
        self.in_memory = self.path == MEMORY
        self._db_lock = threading.Lock()  # the connection, shared by the writer and the readers
        self._energy_lock = threading.Lock()  # today's counters (never held during disk I/O)
        self._energy: dict[str, DayEnergy] = {}
        self._money: dict[str, DayMoney] = {}  # today's money (with a tariff, or as loaded from the file)
        self._totals: dict[str, float] | None = None  # MONEY_TOTALS, cents; None until the file is loaded
        self._prices_used: dict[float, SlotPrice] = {}  # slots priced since the last write
        self._prev: HistorySample | None = None
        self._last_prune_s = -math.inf
        self._full = False
        self._conn: sqlite3.Connection | None = None
        if open_now:
            self.open()

    def open(self) -> None:
        """Open (or recover) the database file; readers get ``HistoryBusy`` until it is open."""
        with self._db_lock:
            if self._conn is None:
                self._conn = self._open()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise HistoryBusy("history database not open yet")
        return self._conn

    # ------------------------------------------------------------------ opening, recovery
    def _connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=READ_TIMEOUT_S, isolation_level=None)
        try:
            if path != MEMORY:
                conn.execute("PRAGMA journal_mode=WAL")  # fewer fsyncs (SD cards) and no rewrite per batch
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA cache_size=-1024")  # 1 MB page cache: writes append, reads are rare
            if self.on_connect is not None and path != MEMORY:  # the hook simulates the disk, not memory
                self.on_connect(conn)
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else 'no answer'}")
            conn.executescript(SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(energy)")}
            for column in MONEY_COLUMNS:  # a version 1 file: the money columns are added (NULL: not known)
                if column not in have:
                    conn.execute(f"ALTER TABLE energy ADD COLUMN {column} REAL")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return conn
        except BaseException:
            conn.close()
            raise

    def _open(self) -> sqlite3.Connection:
        """The database at ``path``; a damaged one is moved aside; no usable file at all: memory."""
        if self.in_memory:
            return self._connect(MEMORY)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect(self.path)
        except (sqlite3.Error, OSError) as exc:
            conn = self._recover(exc)
        self._load(conn)
        return conn

    def _recover(self, exc: Exception) -> sqlite3.Connection:
        """Move the unusable file aside and start a fresh one; if that fails too, run in memory."""
        moved = self._move_aside()
        if moved is not None:
            try:
                conn = self._connect(self.path)
            except (sqlite3.Error, OSError) as again:
                exc = again
            else:
                message = i18n.Msg("history_moved_aside", path=self.path, error=str(exc), moved=moved)
                log.warning(message)
                self._report(message, error=False)
                return conn
        message = i18n.Msg("history_in_memory", path=self.path, error=str(exc))
        log.error(message)
        self._report(message, error=True)
        self.in_memory = True
        return self._connect(MEMORY)

    def _move_aside(self) -> str | None:
        """Rename the database (and its -wal/-shm/-journal files) with a timestamp; the new name or None."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = f"{self.path}.broken-{stamp}"
        try:
            if Path(self.path).exists():
                Path(self.path).rename(target)
            for suffix in ("-wal", "-shm", "-journal"):
                side = Path(self.path + suffix)
                if side.exists():
                    side.rename(target + suffix)
        except OSError:
            return None
        return target

    def _load(self, conn: sqlite3.Connection) -> None:
        """Today's counters and the newest sample from the file (a quick restart integrates across)."""
        today = local_day(self.clock())
        row = conn.execute(f"SELECT {', '.join(ENERGY_FIELDS + MONEY_COLUMNS)} FROM energy WHERE day = ?",
                           (today,)).fetchone()
        totals = dict.fromkeys(MONEY_TOTALS, 0.0)
        for name, value in conn.execute("SELECT name, value FROM money_totals"):
            if name in totals and value is not None and math.isfinite(value):
                totals[name] = float(value)
        with self._energy_lock:
            self._energy = {today: DayEnergy(*row[:len(ENERGY_FIELDS)])} if row else {}
            self._money = {}
            money = row[len(ENERGY_FIELDS):] if row else None
            if money is not None and None not in money:
                self._money[today] = DayMoney(*money)
            elif self.price_at is not None and row:  # counted earlier today without a tariff: not valued
                self._money[today] = DayMoney(unpriced_wh=row[0] + row[1])
            self._totals = totals
        last = conn.execute("SELECT t, grid_w, battery_w, soc_pct FROM samples ORDER BY t DESC LIMIT 1").fetchone()
        self._prev = HistorySample(*last) if last else None
        now_s, now_mono = self.clock(), self.monotonic()
        newest = max((r[0] for r in (last, conn.execute("SELECT MAX(t) FROM samples_1m").fetchone())
                      if r and r[0] is not None), default=None)
        if newest is not None and newest > now_s + CLOCK_STEP_S:
            log.warning(i18n.Msg("history_future_sample", ahead=_duration(newest - now_s)))
        self._time_base = (min(now_s, newest) if newest is not None else now_s, now_mono)

    def _report(self, message: str | None, *, error: bool) -> None:
        if self.store is not None:
            self.store.set_problem("history", message, error=error)

    # ------------------------------------------------------------------ the writer
    def run(self, stop: threading.Event) -> None:
        """The history thread: write the store's new samples every second until ``stop``."""
        if self.store is None:
            raise ValueError("History.run needs the status store")
        self.open()
        while not stop.wait(WRITE_INTERVAL_S):
            self.add(self.store.take_samples())
        self.add(self.store.take_samples())
        self.close()

    def add(self, samples: Sequence[HistorySample]) -> None:
        """Count the energy of ``samples`` and write them (the writer thread only)."""
        self._check_clock()
        rows = []
        touched: set[str] = set()
        prices: dict[float, SlotPrice] = {}
        with self._energy_lock:
            for s in samples:
                s = HistorySample(s.t, _finite(s.grid_w), _finite(s.battery_w), _finite(s.soc_pct))
                if not math.isfinite(s.t):
                    continue
                # A sample older than the previous one (the clock stepped back, or a stored sample lies in the
                # future) is kept; energy_between counts nothing across it (dt <= 0), so nothing counts twice.
                day = local_day(s.t)
                if self._prev is not None and local_day(self._prev.t) == day:
                    self._energy.setdefault(day, DayEnergy()).add(energy_between(self._prev, s))
                    if self.price_at is not None:
                        self._count_money(day, self._prev, s, prices)
                else:
                    self._energy.setdefault(day, DayEnergy())
                    if self.price_at is not None:
                        self._money.setdefault(day, DayMoney())
                touched.add(day)
                self._prev = s
                rows.append((s.t, s.grid_w, s.battery_w, s.soc_pct))
            energy_rows = [(day, *(getattr(self._energy[day], f) for f in ENERGY_FIELDS),
                            *self._money_row(day)) for day in touched]
            today = local_day(self.clock())
            for day in [d for d in self._energy if d < today and d not in touched]:
                del self._energy[day]  # written already; only today's figures are needed in memory
                self._money.pop(day, None)
            totals = dict(self._totals) if self._totals is not None else None
        if not rows:
            return
        self._prices_used.update(prices)
        self._write(rows, energy_rows, totals)

    def _count_money(self, day: str, a: HistorySample, b: HistorySample, used: dict[float, SlotPrice]) -> None:
        """Add the money of the segment a..b to ``day`` and to the running totals (energy lock held)."""
        assert self.price_at is not None
        try:
            price = self.price_at((a.t + b.t) / 2)
        except Exception:  # a broken lookup must not stop the history: the segment is counted as unpriced
            log.exception(i18n.Msg("price_lookup_failed"))
            price = None
        m = money_between(a, b, price)
        self._money.setdefault(day, DayMoney()).add(m)
        if price is not None:
            used[price.start_s] = price
            if self._totals is not None:
                cost, saved = m.cost_ct, m.saved_ct
                self._totals["cost_ct"] += max(cost, 0.0)
                self._totals["cost_negative_ct"] += max(-cost, 0.0)
                self._totals["saved_ct"] += max(saved, 0.0)
                self._totals["saved_negative_ct"] += max(-saved, 0.0)

    def _money_row(self, day: str) -> tuple[float | None, ...]:
        money = self._money.get(day)
        if money is None:
            return (None,) * len(MONEY_COLUMNS)
        return tuple(getattr(money, f) for f in MONEY_COLUMNS)

    def _check_clock(self) -> None:
        """Log a step of the wall clock: wall and monotonic time advanced differently since the last batch."""
        now = (self.clock(), self.monotonic())
        if self._last_batch is not None:
            step_s = (now[0] - self._last_batch[0]) - (now[1] - self._last_batch[1])
            if abs(step_s) > CLOCK_STEP_S:
                log.warning(i18n.Msg("history_clock_step", step=_duration(step_s)))
        self._last_batch = now

    def effective_now(self) -> float:
        """The wall clock, but never further ahead than the monotonic time since the file was loaded added to
        its newest sample (or the wall time then): the retention's reference (see the module doc)."""
        now_s = self.clock()
        if self._time_base is None:
            return now_s
        base_s, base_mono = self._time_base
        return min(now_s, base_s + max(0.0, self.monotonic() - base_mono))

    def _write(self, rows: list[tuple[Any, ...]], energy_rows: list[tuple[Any, ...]],
               totals: dict[str, float] | None = None) -> None:
        try:
            with self._db_lock:
                with self._transaction():
                    self.conn.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?)", rows)
                    columns = ("day", *ENERGY_FIELDS, *MONEY_COLUMNS)
                    self.conn.executemany(f"INSERT OR REPLACE INTO energy ({', '.join(columns)}) "
                                          f"VALUES ({', '.join('?' * len(columns))})", energy_rows)
                    if self._prices_used:
                        self.conn.executemany("INSERT OR REPLACE INTO prices VALUES (?, ?, ?, ?)", [
                            (p.start_s, p.end_s, p.import_ct_per_kwh, p.feed_in_ct_per_kwh)
                            for p in self._prices_used.values()])
                    if totals is not None and self.price_at is not None:
                        self.conn.executemany("INSERT OR REPLACE INTO money_totals VALUES (?, ?)",
                                              list(totals.items()))
                self._prices_used.clear()
                now_s = self.clock()
                if now_s - self._last_prune_s >= PRUNE_INTERVAL_S:
                    self._last_prune_s = now_s
                    self._prune(now_s)
        except sqlite3.OperationalError as exc:
            if "full" in str(exc).lower():
                self._disk_full(exc)
                return
            self._failed(exc)
            return
        except sqlite3.DatabaseError as exc:
            self._failed(exc)
            return
        if self._full:
            self._full = False
            log.info(i18n.Msg("history_ok_again", path=self.path))
            self._report(None, error=False)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _disk_full(self, exc: Exception) -> None:
        if not self._full:
            message = i18n.Msg("history_disk_full", path=self.path, error=str(exc))
            log.error(message)
            self._report(message, error=True)
        self._full = True

    def _failed(self, exc: Exception) -> None:
        """A write failed for another reason than a full disk: the file is damaged or unwritable."""
        with self._db_lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            if self.in_memory:  # nothing left to move aside
                self._conn = self._connect(MEMORY)
                return
            self._conn = self._recover(exc)

    def _prune(self, now_s: float) -> None:
        """Old raw samples become one-minute means; beyond the retention everything goes (lock held).

        Downsampling follows the wall clock ``now_s`` (it costs resolution, never data); the retention follows
        ``effective_now``, so a wall clock stepped far ahead never deletes the history."""
        keep_s = self.effective_now()
        cut = math.floor((now_s - RAW_KEEP_S) / MINUTE_S) * MINUTE_S  # whole minutes only
        with self._transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO samples_1m SELECT CAST(t / ?1 AS INTEGER) * ?1 + ?1 / 2.0, AVG(grid_w), "
                "AVG(battery_w), AVG(soc_pct) FROM samples WHERE t < ?2 GROUP BY CAST(t / ?1 AS INTEGER)",
                (MINUTE_S, cut),
            )
            self.conn.execute("DELETE FROM samples WHERE t < ?", (cut,))
            self.conn.execute("DELETE FROM samples_1m WHERE t < ?", (keep_s - self.retention_days * 86400,))
            self.conn.execute("DELETE FROM prices WHERE end < ?", (keep_s - self.retention_days * 86400,))
            oldest_day = local_day(keep_s - max(self.retention_days, ENERGY_KEEP_DAYS) * 86400)
            self.conn.execute("DELETE FROM energy WHERE day < ?", (oldest_day,))

    def prune(self) -> None:
        """Downsample and apply the retention now (the writer does it every ``PRUNE_INTERVAL_S``)."""
        with self._db_lock:
            self._last_prune_s = self.clock()
            self._prune(self._last_prune_s)

    def close(self) -> None:
        with self._db_lock, contextlib.suppress(sqlite3.Error):
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------------ readers (web thread)
    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if not self._db_lock.acquire(timeout=READ_TIMEOUT_S):
            raise HistoryBusy("history database busy (slow disk?), try again")
        try:
            yield self.conn
        finally:
            self._db_lock.release()

    def samples(self, since_t: float, until_t: float | None = None, step_s: int | None = None) -> list[HistorySample]:
        """Stored samples with since_t < t < until_t, oldest first: full resolution where kept, else
        one-minute means; ``step_s`` averages them into buckets of that many seconds."""
        until = math.inf if until_t is None else until_t
        try:
            with self._reading() as conn:
                raw_first = conn.execute("SELECT MIN(t) FROM samples").fetchone()[0]
                minute_until = min(until, raw_first) if raw_first is not None else until
                union = (
                    "SELECT t, grid_w, battery_w, soc_pct FROM samples_1m WHERE t > :since AND t < :minute_until "
                    "UNION ALL SELECT t, grid_w, battery_w, soc_pct FROM samples WHERE t > :since AND t < :until"
                )
                params: dict[str, Any] = {"since": since_t, "until": until, "minute_until": minute_until}
                if step_s is None:
                    rows = conn.execute(f"SELECT * FROM ({union}) ORDER BY t", params).fetchall()
                else:
                    params["step"] = step_s
                    rows = conn.execute(
                        "SELECT CAST(t / :step AS INTEGER) * :step + :step / 2.0 AS b, AVG(grid_w), AVG(battery_w), "
                        f"AVG(soc_pct) FROM ({union}) GROUP BY CAST(t / :step AS INTEGER) ORDER BY b", params
                    ).fetchall()
        except sqlite3.Error as exc:
            raise HistoryBusy(f"history database not readable: {exc}") from exc
        return [HistorySample(*row) for row in rows]

    def energy_days(self, days: int) -> list[dict[str, Any]]:
        """The last ``days`` local days (today included, oldest first), every day present (0 without data)."""
        today = datetime.date.fromtimestamp(self.clock())
        first = today - datetime.timedelta(days=days - 1)
        stored: dict[str, DayEnergy] = {}
        money: dict[str, DayMoney] = {}
        n_energy = len(ENERGY_FIELDS)
        try:
            with self._reading() as conn:
                for row in conn.execute(
                    f"SELECT day, {', '.join(ENERGY_FIELDS + MONEY_COLUMNS)} FROM energy WHERE day >= ? AND day <= ?",
                    (first.isoformat(), today.isoformat()),
                ):
                    stored[row[0]] = DayEnergy(*row[1:1 + n_energy])
                    if None not in row[1 + n_energy:]:
                        money[row[0]] = DayMoney(*row[1 + n_energy:])
        except sqlite3.Error as exc:
            raise HistoryBusy(f"history database not readable: {exc}") from exc
        with self._energy_lock:  # today's figures from memory: newer than the file, and there when it is not
            for day, e in self._energy.items():
                stored[day] = DayEnergy(**e.as_dict())
            for day, m in self._money.items():
                money[day] = DayMoney(m.cost_ct, m.feed_in_revenue_ct, m.baseline_ct, m.unpriced_wh)
        out = []
        for n in range(days):
            day = (first + datetime.timedelta(days=n)).isoformat()
            item: dict[str, Any] = {"date": day, **stored.get(day, DayEnergy()).as_dict()}
            if self.price_at is not None:  # with a tariff: the money keys, null for a day with no valued data
                item.update(money[day].as_api() if day in money else NO_MONEY)
            out.append(item)
        return out

    def money_totals(self) -> dict[str, float] | None:
        """Running money totals since the database began, euro, each only growing: ``cost_eur`` (import cost
        at positive prices), ``cost_negative_eur`` (credited for imports at negative prices), ``saved_eur`` /
        ``saved_negative_eur`` (the positive / negative parts of the saving, per segment). None without a
        tariff or before the file is loaded."""
        with self._energy_lock:
            if self.price_at is None or self._totals is None:
                return None
            return {name.removesuffix("_ct") + "_eur": round(value / 100, 6) for name, value in self._totals.items()}

    def disk_bytes(self) -> int:
        """Size of the database file and its WAL (0 in memory)."""
        if self.in_memory:
            return 0
        return sum(p.stat().st_size for p in (Path(self.path), Path(self.path + "-wal")) if p.exists())
