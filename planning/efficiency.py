"""The battery's measured AC↔DC efficiency curve (marstek-modbus.md §11, MVEM, external AC clamp).

One home for the fact: the planner (``planning/planner.py``) and the simulator (``sim_physics.py``) both
use this curve. Entries are (AC power W, efficiency); charge and discharge are measured separately.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

EFFICIENCY_DISCHARGE: tuple[tuple[float, float], ...] = (
    (125.0, 0.738),
    (250.0, 0.856),
    (500.0, 0.898),
    (1000.0, 0.912),
    (2500.0, 0.893),
)
EFFICIENCY_CHARGE: tuple[tuple[float, float], ...] = (
    (125.0, 0.772),
    (250.0, 0.885),
    (500.0, 0.938),
    (1000.0, 0.955),
    (2500.0, 0.944),
)


def efficiency(power_w: float, table: Sequence[tuple[float, float]]) -> float:
    """Efficiency at |power_w| by linear interpolation in ``table``; flat outside the table."""
    p = abs(power_w)
    if p <= table[0][0]:
        return table[0][1]
    for (p0, e0), (p1, e1) in itertools.pairwise(table):
        if p <= p1:
            return e0 + (e1 - e0) * (p - p0) / (p1 - p0)
    return table[-1][1]
