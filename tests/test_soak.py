"""The soak run in a shortened form: 2 simulated hours with every kind of fault (full: python -m benchmark --soak)."""

from __future__ import annotations

import pytest

from benchmark.soak import FAULT_KINDS, GRACE_S, fault_schedule, report, run_soak
from control.status_store import EVENTS_KEPT, HistorySample, StatusSnapshot, StatusStore


@pytest.mark.slow
def test_two_hours_with_random_faults_keep_every_invariant():
    result = run_soak(hours=2.0, seed=1)
    assert result.violations(GRACE_S) == [], report(result, GRACE_S)
    assert all(result.faults[kind] >= 1 for kind in FAULT_KINDS), result.faults
    assert result.cycles > 6000
    assert result.buffer_sizes["events"] == EVENTS_KEPT  # full, and not one more


def test_fault_schedule_is_seeded_and_covers_each_kind_per_round():
    a, b = fault_schedule(3.0, 2, seed=5), fault_schedule(3.0, 2, seed=5)
    assert a == b
    assert {e.kind for e in a[:len(FAULT_KINDS)]} == set(FAULT_KINDS)
    assert all(e.end_s > e.start_s and e.unit_id in (1, 2) for e in a)


def test_store_buffers_are_bounded():
    store = StatusStore(events_kept=10, history_kept=50)
    for k in range(1000):
        store.add_event("INFO", f"event {k}")
        store.publish(StatusSnapshot(), HistorySample(float(k), 0.0, 0.0, 50.0))
    assert len(store.events()) == 10 and store.events()[-1].message == "event 999"
    assert len(store.history()) == 50 and store.history()[0].t == 950.0
