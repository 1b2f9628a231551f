"""quality.py: the metric building blocks and the live QualityTracker (pure, time passed in)."""

from __future__ import annotations

import datetime
import math

import pytest

from control.quality import CrossingCounter, QualityTracker, battery_export_w

DAY = datetime.date(2026, 6, 1)


@pytest.mark.parametrize(
    ("grid_w", "battery_w", "expected"),
    [
        (-300.0, 500.0, 300.0),  # battery 500 W, export 300 W: all of the export came from it
        (-300.0, 100.0, 100.0),  # only 100 W of the 300 W export are the battery's
        (200.0, 500.0, 0.0),  # import: nothing exported
        (-300.0, -400.0, 0.0),  # charging: PV exports, not the battery
    ],
)
def test_battery_export(grid_w, battery_w, expected):
    assert battery_export_w(grid_w, battery_w) == expected


def test_crossings_need_the_whole_hysteresis_band():
    c = CrossingCounter(20.0)
    for e in [0, 25, 10, -15, 19, 30]:  # never below -20: no crossing
        c.add(e)
    assert c.count == 0
    assert c.add(-21.0)
    assert not c.add(-50.0)
    assert c.add(21.0)
    assert c.count == 2


def feed(q: QualityTracker, seconds: int, grid_w: float, target_w: float = 0.0, *, t0: float = 0.0,
         writes_per_s: float = 0.0, battery_w: float | None = None, day: datetime.date = DAY) -> float:
    for k in range(seconds + 1):
        q.add(t0 + k, grid_w, target_w, int(writes_per_s * k), day, battery_w)
    return t0 + seconds


def test_energies_integrate_import_export_and_battery_export():
    q = QualityTracker()
    t = feed(q, 3600, 100.0)
    t = feed(q, 1800, -200.0, t0=t + 1, battery_w=50.0)
    f = q.figures()
    assert f["import_wh_today"] == pytest.approx(100.0, abs=0.2)
    assert f["export_wh_today"] == pytest.approx(100.0, abs=0.2)
    assert f["battery_export_wh_today"] == pytest.approx(25.0, abs=0.1)


def test_energies_reset_when_the_date_changes():
    q = QualityTracker()
    t = feed(q, 600, 100.0)
    feed(q, 600, 100.0, t0=t + 1, day=DAY + datetime.timedelta(days=1))
    assert q.figures()["import_wh_today"] == pytest.approx(100.0 * 600 / 3600, abs=0.1)


def test_rms_covers_the_last_ten_minutes_only():
    q = QualityTracker()
    t = feed(q, 1200, 100.0, target_w=20.0)  # 80 W error
    feed(q, 700, 30.0, target_w=20.0, t0=t + 1)  # then 10 W error for more than 10 min
    assert q.figures()["rms_error_w"] == pytest.approx(10.0, abs=0.5)


def test_time_in_band_and_crossings():
    q = QualityTracker()
    for k in range(3601):  # error alternates +30 / -30 W every 10 s: outside the band, 359 crossings
        e = 30.0 if (k // 10) % 2 == 0 else -30.0
        q.add(float(k), 20.0 + e, 20.0, 0, DAY)
    f = q.figures()
    assert f["time_in_band_pct"] == pytest.approx(0.0)
    assert f["band_crossings_per_h"] == pytest.approx(359, rel=0.02)


def test_writes_per_hour():
    q = QualityTracker()
    feed(q, 1800, 20.0, target_w=20.0, writes_per_s=0.25)
    f = q.figures()
    assert f["writes_per_h"] == pytest.approx(900, rel=0.01)
    assert f["time_in_band_pct"] == 100.0


def test_a_meter_gap_is_not_integrated_and_failures_are_skipped():
    q = QualityTracker()
    q.add(0.0, 1000.0, 0.0, 0, DAY)
    q.add(3600.0, 1000.0, 0.0, 0, DAY)  # an hour without samples: not counted
    q.add(3601.0, None, None, 0, DAY)  # meter failure
    q.add(3602.0, float("nan"), 0.0, 0, DAY)
    assert q.figures()["import_wh_today"] == pytest.approx(1000.0 / 3600.0, abs=0.05)


def test_no_data_gives_none_not_zero():
    f = QualityTracker().figures()
    assert f["rms_error_w"] is None
    assert f["writes_per_h"] is None
    assert f["band_crossings_per_h"] is None
    assert f["time_in_band_pct"] is None
    assert f["import_wh_today"] == 0.0


def test_memory_stays_bounded_over_a_long_run():
    q = QualityTracker()
    for k in range(3 * 86400 // 2):  # three days at a 2 s cycle
        q.add(2.0 * k, 20.0 + 30.0 * math.sin(k / 7.0), 20.0, k, DAY)
    assert len(q._bins) <= QualityTracker.RATE_WINDOW_S / QualityTracker.BIN_S + 3
    assert len(q._writes) <= QualityTracker.RATE_WINDOW_S / QualityTracker.BIN_S + 3
