"""The parallel test run: pyproject's workers and marker, and the scheduler that keeps shared fixtures on one worker."""

from __future__ import annotations

import re
from pathlib import Path

from tests import conftest

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_runs_workers_and_registers_the_slow_marker() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^addopts = ".*-n \d+.*"$', pyproject, re.MULTILINE)
    assert re.search(r'^markers = \[\n    "slow: ', pyproject, re.MULTILINE)
    assert "pytest-xdist" in (ROOT / "requirements-dev.txt").read_text(encoding="utf-8")


def test_each_one_worker_file_is_one_work_unit_and_every_other_test_its_own() -> None:
    scheduler = object.__new__(conftest.FileGroupScheduling)  # _split_scope reads no state
    for path in conftest.ONE_WORKER_FILES:
        assert (ROOT / path).is_file(), path
        assert scheduler._split_scope(f"{path}::test_a") == scheduler._split_scope(f"{path}::test_b[x]") == path
    other = "tests/test_config.py::test_something[1]"
    assert scheduler._split_scope(other) == other

