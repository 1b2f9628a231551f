"""The sign check on its own: fed with made-up cycles (time, grid, measured battery power, command)."""

from __future__ import annotations

import random

from meters.sign_check import SignCheck


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
    tripped, battery_w = False, 0.0
    for t in range(30):  # the law of steps(), with the probe's command while it runs
        law_w = min(1440.0, 480.0 * (1 + t // 2))
        probe_w = check.probe_w(float(t), law_w)
        command_w = law_w if probe_w is None else probe_w
        if check.observe(float(t), house(500.0, battery_w, -1.0) + t * 1e-3, battery_w, command_w):
            tripped = True
            break
        battery_w = command_w
    assert tripped and check.probes == 1
    assert check.wrong >= SignCheck.NEEDED and check.last_ratio is not None and check.last_ratio > 0
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


def _one_wrong_way_then_quiet(check: SignCheck, command_w: float = 480.0) -> None:
    """A wrong-way looking observation (the grid jumped with a load or PV change during a discharge step),
    then a quiet sample with the battery where it was sent."""
    run(check, [(0.0, 500.0, 0.0, command_w), (1.0, 500.0 + 2 * command_w, command_w, command_w),
                (2.0, 501.0 + 2 * command_w, command_w, command_w)])
    assert check.wrong == 1 and not check.tripped


def test_one_wrong_way_observation_asks_for_a_probe_that_a_right_meter_clears() -> None:
    check = SignCheck()
    _one_wrong_way_then_quiet(check)
    assert check.probe_w(3.0, 480.0) == 0.0  # half of 480 W would be too small to judge: all the way to 0
    assert not check.observe(3.0, 1461.0, 480.0, 0.0)
    assert check.probe_w(4.0, 480.0) == 0.0 and check.probing  # held until its observation closes
    assert not check.observe(4.0, 1941.0, 0.0, 0.0)  # less discharge, more import: the sign is right
    assert check.wrong == 0 and check.probe_w(5.0, 480.0) is None and not check.probing
    assert check.probes == 1 and not check.tripped


def test_a_reversed_meter_answers_the_probe_the_wrong_way_and_trips() -> None:
    check = SignCheck()
    _one_wrong_way_then_quiet(check, 1000.0)
    assert check.probe_w(3.0, 1000.0) == 500.0  # half the command: still a step worth judging
    check.observe(3.0, 2501.0, 1000.0, 500.0)
    assert check.probe_w(4.0, 1000.0) == 500.0
    assert check.observe(4.0, 2001.0, 500.0, 500.0)  # the grid fell with the battery's discharge
    assert check.tripped and check.wrong == SignCheck.NEEDED


def test_a_probe_catches_a_reversed_meter_with_the_batteries_already_at_their_limit() -> None:
    """The first wrong-way step drove the battery to its limit: the law makes no further step, only the
    probe does. Without it, the check would never see a second observation."""
    probed, unprobed = SignCheck(), SignCheck()
    for check, use_probe in ((probed, True), (unprobed, False)):
        battery_w = 0.0
        for t in range(60):
            grid_w = -(500.0 - battery_w)  # reversed: the meter shows minus the true grid power
            law_w = 2500.0  # clipped at the battery's limit, every cycle the same
            probe_w = check.probe_w(float(t), law_w) if use_probe else None
            command_w = law_w if probe_w is None else probe_w
            if check.observe(float(t), grid_w, battery_w, command_w):
                break
            battery_w = command_w  # follows within a cycle
    assert probed.tripped and probed.probes == 1
    assert not unprobed.tripped and unprobed.wrong == 1


def test_no_probe_while_the_batteries_still_move_or_for_a_small_command() -> None:
    check = SignCheck()
    run(check, [(0.0, 500.0, 0.0, 480.0), (1.0, 1460.0, 480.0, 480.0)])
    assert check.wrong == 1
    run(check, [(2.0, 1461.0, 480.0, 700.0)])  # a new step of the law: not quiet
    assert check.probe_w(3.0, 700.0) is None
    small = SignCheck()
    run(small, [(0.0, 500.0, 0.0, 300.0), (1.0, 1100.0, 300.0, 290.0), (2.0, 1101.0, 290.0, 290.0)])
    assert small.wrong == 1 and small.probe_w(3.0, 290.0) is None  # 290 W: too little to judge (and to matter)


def test_a_probe_only_ever_asks_for_less_power_in_the_direction_the_law_wants() -> None:
    check = SignCheck()
    _one_wrong_way_then_quiet(check, 1000.0)
    assert check.probe_w(3.0, -400.0) is None  # the law turns to charging: its own step is observed instead
    assert check.probe_w(3.0, 300.0) is None  # the law wants less than the probe would: no probe needed
    assert check.probe_w(3.0, 1000.0) == 500.0
    check.observe(3.0, 2501.0, 1000.0, 500.0)
    assert check.probe_w(4.0, 0.0) is None and not check.probing  # the law stops (or the mode is off): it ends


def _late_sample_chase(check: SignCheck, timed: bool) -> None:
    """The issue-18 demo under CPU load, with a right meter: the meter's answers carry samples taken before
    the batteries' last move. The law jumps by 1000 W of discharge; the next sample, taken before the
    batteries moved, still shows the old import, the law (misled) steps back by 400 W, and the sample after
    that shows the grid after both moves: the grid fell while the battery power fell, wrong-way if the stale
    baseline is paired with the battery power read after the jump. Twice in a row."""
    load_w = 2000.0
    cycles = [(-1.0, load_w, -1.5, 0.0, 0.0)]  # (now, grid sample, its earliest instant, battery read, command)
    for t, base_w in ((0.0, 0.0), (10.0, 600.0)):
        cycles += [
            (t, load_w - base_w + 2.0, t - 0.5, base_w, base_w + 1000.0),  # the law's jump
            (t + 1.0, load_w - base_w + 3.0, t - 0.5, base_w + 1000.0, base_w + 600.0),  # stale: steps back
            (t + 2.0, load_w - base_w - 600.0, t + 1.5, base_w + 600.0, base_w + 600.0),  # after the moves
            (t + 3.0, load_w - base_w - 600.0 + 1.0, t + 2.5, base_w + 600.0, base_w + 600.0),
        ]
    for now_s, grid_w, from_s, battery_w, command_w in cycles:
        if timed:
            check.observe(now_s, grid_w, battery_w, command_w, sample_from_s=from_s, battery_read_s=now_s)
        else:
            check.observe(now_s, grid_w, battery_w, command_w)


def test_a_late_sample_is_not_paired_with_the_battery_power_read_after_a_move() -> None:
    untimed, timed = SignCheck(), SignCheck()
    _late_sample_chase(untimed, timed=False)
    assert untimed.wrong == 2  # paired by cycle, the stale baseline looks like a reversed meter twice
    _late_sample_chase(timed, timed=True)
    assert not timed.tripped and timed.wrong == 0


def test_a_reversed_meter_is_still_detected_with_late_samples() -> None:
    """Every sample taken up to 1.5 s before it is read: the check waits for samples after the moves and still
    trips (the law's steps, then its probe)."""
    check = SignCheck()
    battery_w, history = 0.0, [(0.0, 0.0)]
    for i in range(200):
        t = i * 0.5
        sampled_s = t - 1.5
        battery_then_w = [w for s, w in history if s <= sampled_s][-1] if history[0][0] <= sampled_s else 0.0
        grid_w = -(500.0 - battery_then_w) + (i % 3)  # reversed: the meter shows minus the true grid power
        law_w = max(-2500.0, min(2500.0, battery_w + grid_w - 20.0))  # a law chasing the reversed meter
        probe_w = check.probe_w(t, law_w)
        command_w = law_w if probe_w is None else probe_w
        if check.observe(t, grid_w, battery_w, command_w, sample_from_s=sampled_s - 0.5, battery_read_s=t):
            break
        battery_w = command_w  # follows within a cycle
        history.append((t + 0.25, battery_w))
    assert check.tripped, (check.wrong, check.right, check.probes)


def test_wrong_way_steps_of_the_law_alone_do_not_trip() -> None:
    """Samples staler than any time stamp shows make two of the law's steps look wrong-way: no trip; only a
    probe's answer can trip, and a right meter answers it the right way."""
    check = SignCheck()
    run(check, [(0.0, 500.0, 0.0, 480.0), (1.0, 1460.0, 480.0, 480.0), (2.0, 1461.0, 480.0, 960.0),
                (3.0, 2421.0, 960.0, 960.0)])
    assert check.wrong == 2 and not check.tripped
    assert check.probe_w(4.0, 960.0) == 480.0
    assert not check.observe(4.0, 2422.0, 960.0, 480.0)
    assert not check.observe(5.0, 2902.0, 480.0, 480.0)  # less discharge, more import: right
    assert check.wrong == 0 and not check.tripped
