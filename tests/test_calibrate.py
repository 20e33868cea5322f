"""Cascade threshold policy: simulation, calibration against brute force, sweeps."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeadapt.errors import InputError
from edgeadapt.planning.calibrate import (
    NEVER,
    calibrate,
    exit_states,
    required_correct,
    simulate,
    sweep,
)
from tests.synthetic import nested_outcomes

cases = st.tuples(st.integers(1, 60), st.integers(1, 5), st.integers(0, 2**31))


def brute_force_cost(conf, correct, cost, need):
    """Cheapest expected cost over every combination of distinct-confidence thresholds."""
    n, s = conf.shape
    grids = [np.append(np.unique(conf[:, i]), NEVER) for i in range(s - 1)]
    best = np.inf
    for t in itertools.product(*grids):
        run = simulate(conf, correct, cost, np.array(t))
        if round(run.accuracy * n) >= need:
            best = min(best, run.expected_cost)
    return best


@given(cases)
def test_thresholds_above_one_take_the_last_state(case):
    conf, correct, cost = nested_outcomes(*case)
    run = simulate(conf, correct, cost, np.full(case[1] - 1, 1.5))
    assert run.accuracy == correct[:, -1].mean()
    assert run.expected_cost == pytest.approx(cost[-1])
    assert (run.exit_state == case[1] - 1).all()


@given(cases)
def test_thresholds_at_zero_take_the_first_state(case):
    conf, correct, cost = nested_outcomes(*case)
    run = simulate(conf, correct, cost, np.zeros(case[1] - 1))
    assert run.accuracy == correct[:, 0].mean()
    assert run.expected_cost == pytest.approx(cost[0])


@given(cases, st.data())
def test_simulate_matches_a_plain_loop(case, data):
    conf, correct, cost = nested_outcomes(*case)
    t = np.array(data.draw(st.lists(st.floats(0, 1), min_size=case[1] - 1, max_size=case[1] - 1)))
    run = simulate(conf, correct, cost, t)
    for j in range(case[0]):
        want = next((i for i in range(case[1] - 1) if conf[j, i] >= t[i]), case[1] - 1)
        assert run.exit_state[j] == want
    rows = np.arange(case[0])
    assert run.accuracy == pytest.approx(correct[rows, run.exit_state].mean())
    assert run.expected_cost == pytest.approx(cost[run.exit_state].mean())


@given(cases, st.sampled_from([0.0, 0.01, 0.05, 0.2]))
def test_calibration_meets_the_drop_on_its_split(case, max_drop):
    conf, correct, cost = nested_outcomes(*case)
    cal = calibrate(conf, correct, cost, max_drop=max_drop)
    assert cal.feasible  # the best state is the last one here, so never exiting is feasible
    assert cal.drop <= max_drop + 1e-12
    run = simulate(conf, correct, cost, cal.thresholds)
    assert run.accuracy == pytest.approx(cal.accuracy)
    assert run.expected_cost == pytest.approx(cal.expected_cost)
    assert cal.expected_cost <= cost[-1] + 1e-12


@given(st.integers(1, 40), st.integers(0, 2**31), st.sampled_from([0.0, 0.05, 0.2]))
def test_two_states_are_exact(n, seed, max_drop):
    conf, correct, cost = nested_outcomes(n, 2, seed)
    cal = calibrate(conf, correct, cost, max_drop=max_drop)
    need = required_correct(correct.mean(axis=0).max(), n, max_drop)
    assert cal.exact
    assert cal.expected_cost == pytest.approx(brute_force_cost(conf, correct, cost, need))


@pytest.mark.parametrize(("s", "n"), [(3, 16), (4, 9)])
@pytest.mark.parametrize("seed", range(8))
def test_more_states_match_brute_force_on_small_splits(s, n, seed):
    conf, correct, cost = nested_outcomes(n, s, seed)
    cal = calibrate(conf, correct, cost, max_drop=0.1)
    need = required_correct(correct.mean(axis=0).max(), n, 0.1)
    assert cal.expected_cost == pytest.approx(brute_force_cost(conf, correct, cost, need))


@given(st.integers(20, 80), st.integers(3, 4), st.integers(0, 2**31))
def test_no_single_threshold_move_helps(n, s, seed):
    conf, correct, cost = nested_outcomes(n, s, seed)
    cal = calibrate(conf, correct, cost, max_drop=0.02)
    need = required_correct(correct.mean(axis=0).max(), n, 0.02)
    for i in range(s - 1):
        for value in np.append(np.unique(conf[:, i]), NEVER):
            t = cal.thresholds.copy()
            t[i] = value
            run = simulate(conf, correct, cost, t)
            if round(run.accuracy * n) >= need:
                assert run.expected_cost >= cal.expected_cost - 1e-9


def test_thresholds_are_confidences_seen():
    conf, correct, cost = nested_outcomes(300, 4, 7)
    cal = calibrate(conf, correct, cost, max_drop=0.02)
    for i, t in enumerate(cal.thresholds):
        assert t == NEVER or t in conf[:, i]
        # float32 and float64 comparisons agree, as the C++ runner needs
        assert ((conf[:, i] >= np.float32(t)) == (conf[:, i].astype(np.float64) >= t)).all()


def test_infeasible_reference_is_reported():
    conf, correct, cost = nested_outcomes(50, 3, 1)
    cal = calibrate(conf, correct, cost, max_drop=0.0, reference_accuracy=1.0)
    assert not cal.feasible
    assert cal.accuracy == correct[:, -1].mean()  # the most accurate the policy can be here


def test_single_state():
    conf, correct, cost = nested_outcomes(30, 1, 3)
    cal = calibrate(conf, correct, cost, max_drop=0.0)
    assert cal.thresholds.shape == (0,)
    assert cal.expected_cost == pytest.approx(cost[0])


def test_sweep_follows_simulate():
    conf, correct, cost = nested_outcomes(200, 4, 2)
    curve = sweep(conf, correct, cost)
    assert curve.levels[-1] == NEVER
    assert curve.accuracy[-1] == correct[:, -1].mean()
    for level, acc, c in zip(curve.levels, curve.accuracy, curve.expected_cost, strict=True):
        run = simulate(conf, correct, cost, np.full(3, level))
        assert (run.accuracy, run.expected_cost) == pytest.approx((acc, c))


def test_exit_states_single_state():
    assert exit_states(np.zeros((3, 1), np.float32), np.zeros(0)).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c, k, r, t: (c[:, :2], k, r, t), "correct"),
        (lambda c, k, r, t: (np.where(c > 0.5, np.nan, c), k, r, t), "finite"),
        (lambda c, k, r, t: (c, k.astype(int), r, t), "bool"),
        (lambda c, k, r, t: (c, k, -r, t), "cost"),
        (lambda c, k, r, t: (c, k, r[:2], t), "cost"),
        (lambda c, k, r, t: (c.astype(int), k, r, t), "floats"),
        (lambda c, k, r, t: (c, k, r, t[:1]), "thresholds"),
        (lambda c, k, r, t: (c, k, r, np.array([np.nan, 0.5])), "NaN"),
        (lambda c, k, r, t: (c[:0], k[:0], r, t), "non-empty"),
    ],
)
def test_bad_inputs(change, match):
    conf, correct, cost = nested_outcomes(10, 3, 0)
    args = change(conf, correct, cost, np.array([0.5, 0.5]))
    with pytest.raises(InputError, match=match):
        simulate(*args)


def test_bad_max_drop():
    conf, correct, cost = nested_outcomes(10, 3, 0)
    with pytest.raises(InputError, match="max_drop"):
        calibrate(conf, correct, cost, max_drop=1.5)
