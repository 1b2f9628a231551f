"""The sign check on its own: fed with made-up cycles (time, grid, measured battery power, command)."""

from __future__ import annotations

import random

from sign_check import SignCheck


def run(check: SignCheck, cycles: list[tuple[float, float | None, float | None, float]]) -> bool:
    return any([check.observe(*c) for c in cycles])


def house(load_w: float, battery_w: float, sign: float = 1.0) -> float:
    return sign * (load_w - battery_w)


def steps(sign: float, load_w: float = 500.0) -> list[tuple[float, float | None, float | None, float]]:
    """A law stepping 0 -> 480 -> 960 W of discharge; the battery follows one cycle later."""
    out: list[tuple[float, float | None, float | None, float]] = []
    t, battery_w = 0.0, 0.0
    for command_w in (480.0, 480.0, 960.0, 960.0, 1440.0, 1440.0):
        out.append((t, house(load_w, battery_w, sign) + t * 1e-3, battery_w, command_w))
        battery_w = command_w
        t += 1.0
    return out


def test_a_right_meter_confirms_and_never_trips() -> None:
    check = SignCheck()
    assert not run(check, steps(+1.0))
    assert check.right >= 2 and check.wrong == 0


def test_a_reversed_meter_trips_after_two_observations_and_stays_tripped() -> None:
    check = SignCheck()
    assert run(check, steps(-1.0))
    assert check.wrong == SignCheck.NEEDED and check.last_ratio is not None and check.last_ratio > 0
    assert check.observe(100.0, 300.0, 0.0, 0.0)  # latched
    check.reset()
    assert check.tripped


def test_a_right_way_observation_between_resets_the_count() -> None:
    check = SignCheck()
    # One wrong-way looking observation (a load jump of +1000 W during a 480 W discharge step) ...
    run(check, [(0.0, 500.0, 0.0, 480.0), (1.0, 1500.0 - 480.0 + 1000.0, 480.0, 480.0)])
    assert check.wrong == 1 and not check.tripped
    # ... then a right-way one: the count starts again.
    run(check, [(2.0, 1020.0, 480.0, 1000.0), (3.0, 500.0, 1000.0, 1000.0)])
    assert check.wrong == 0 and check.right == 1 and not check.tripped


def test_samples_before_the_battery_followed_are_not_judged() -> None:
    check = SignCheck()
    run(check, [(0.0, 500.0, 0.0, 480.0), (1.0, 501.0, 50.0, 480.0), (2.0, 502.0, 100.0, 480.0)])
    assert (check.wrong, check.right) == (0, 0)  # battery moved < half the step: still open
    run(check, [(3.0, 20.0, 480.0, 480.0)])
    assert check.right == 1


def test_small_steps_and_missing_readings_count_for_nothing() -> None:
    check = SignCheck()
    run(check, [(0.0, 500.0, 0.0, 100.0), (1.0, 600.0, 100.0, 100.0), (2.0, None, 100.0, 400.0),
                (3.0, 900.0, None, 400.0)])
    assert (check.wrong, check.right) == (0, 0)


def test_a_noisy_house_with_a_right_meter_does_not_trip() -> None:
    rng = random.Random(7)
    check = SignCheck()
    load_w, battery_w, command_w = 800.0, 0.0, 0.0
    for i in range(3000):
        if rng.random() < 0.05:
            load_w = max(0.0, load_w + rng.choice((-1, 1)) * rng.uniform(100, 2000))
        grid_w = load_w - battery_w + rng.gauss(0, 30)
        command_w = min(2500.0, max(-2500.0, grid_w + battery_w - 20.0)) if i % 2 == 0 else command_w
        assert not check.observe(float(i), grid_w, battery_w, command_w), i
        battery_w += 0.7 * (command_w - battery_w)


def test_wrong_way_observations_far_apart_are_not_one_runaway() -> None:
    check = SignCheck()
    # A wrong-way looking observation (a cloud passing during a 480 W step), and another one 5 minutes later.
    run(check, [(0.0, 500.0, 0.0, 480.0), (1.0, 1020.0 + 480.0, 480.0, 480.0)])
    assert check.wrong == 1
    run(check, [(300.0, 1500.0, 480.0, 0.0), (301.0, 1500.0 - 480.0, 0.0, 0.0)])  # grid falls with the battery
    assert check.wrong == 1 and check.last_ratio == 1.0 and not check.tripped  # a new run, not the second


def test_steps_below_the_minimum_open_no_observation() -> None:
    check = SignCheck()
    run(check, [(0.0, 500.0, 0.0, SignCheck.MIN_STEP_W - 1), (1.0, 800.0, 299.0, SignCheck.MIN_STEP_W - 1)])
    assert (check.wrong, check.right) == (0, 0)
