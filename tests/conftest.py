"""Shared fixtures: a fake clock, a free port, a config pointing at the simulator, a running main.py.

The implementations live in ``tests/helpers.py`` so that tests can also call them directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests import helpers


@pytest.fixture
def fake_clock() -> helpers.FakeClock:
    """Monotonic time the test advances by hand."""
    return helpers.FakeClock()


@pytest.fixture
def port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return helpers.free_port()


@pytest.fixture
def sim_config() -> Callable[..., Any]:
    """``sim_config(sim, ids, **sections)``: a validated Config pointing at a started simulation."""
    return helpers.sim_config


@pytest.fixture
def run_main() -> Callable[..., Any]:
    """``with run_main(config_path) as proc``: main.py as its own process, stopped with SIGTERM afterwards."""
    return helpers.running_main
