"""Shared fixtures: English backend messages, a fake clock, a free port, a config pointing at the simulator,
a running main.py, a two-battery simulation and the control-loop rig of the fault tests.

The implementations live in ``tests/helpers.py`` so that tests can also call them directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from control import i18n
from simulator.world import Simulation, UnitSpec
from tests import helpers
from tests.loop_rig import Rig

# The recorded-answer server and HTTP session fixtures of the price and forecast tests.
pytest_plugins = ("tests.recorded_server",)

try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # without pytest-xdist the tests run in one process
    LoadScopeScheduling = None

# Files whose tests share a module-scoped fixture that is expensive or carries state from test to test: one
# xdist worker runs each of them, in order, so that the fixture is built once (the quick benchmark takes over a
# minute of CPU; the install tests share one real venv; the fuzz file's last test checks what the fuzzing left).
ONE_WORKER_FILES = ("tests/test_benchmark.py", "tests/test_install.py", "tests/test_fuzz.py")


if LoadScopeScheduling is not None:
    class FileGroupScheduling(LoadScopeScheduling):
        """xdist's ``load`` distribution test by test, except that each file of ``ONE_WORKER_FILES`` goes to
        one worker as a whole (those go out first: the largest work units first)."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in ONE_WORKER_FILES else nodeid

    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
        """``-n N`` (pyproject's addopts) distributes with ``FileGroupScheduling`` unless ``--dist`` says otherwise.

        (xdist's own ``--dist loadgroup`` with ``@pytest.mark.xdist_group`` does not group on pytest 9.2.)"""
        if config.getvalue("dist") == "load":
            return FileGroupScheduling(config, log)
        return None


@pytest.fixture(autouse=True)
def english_backend_messages() -> Iterator[None]:
    """In-process tests read the backend messages in English; the product's default is German (set from
    ``web.language`` by main.py; tests/test_i18n.py checks the default in a fresh process)."""
    before = i18n.language()
    i18n.set_language("en")
    try:
        yield
    finally:
        i18n.set_language(before)


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


@pytest.fixture
def sim() -> Iterator[Simulation]:
    """A started simulation with two batteries (SoC 50 % and 60 %) and a 300 W house load (test files may
    define their own ``sim``)."""
    with Simulation(units=[UnitSpec(1, soc_pct=50.0), UnitSpec(2, soc_pct=60.0)], meter_noise_w=5.0) as s:
        s.set_load_w(300.0)
        yield s


@pytest.fixture
def rig() -> Iterator[Rig]:
    """Simulations and real control loops on test time (tests/loop_rig.py), cleaned up in the right order."""
    r = Rig()
    try:
        yield r
    finally:
        r.close()
