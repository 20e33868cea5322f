"""Learn then Test: the drop promise is checked over many resamples of data it never saw.

Each resample draws a learning and a testing split i.i.d. (with replacement) from a
finite pool, so the pool *is* the distribution: a plan's true drop is its drop over the
whole pool, computed exactly. The promise P(true drop > eps) <= delta must hold over the
resamples (up to binomial slack on the violation count), for the net drop (losses minus
gains) and for the losses alone; the old empirical calibration, run on the same draws,
is shown to break it.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeadapt.errors import InputError
from edgeadapt.planning.calibrate import NEVER, calibrate, exit_states
from edgeadapt.planning.paths import frontier_path, shared_path
from edgeadapt.planning.pvalues import loss_p_value
from edgeadapt.planning.risk import (
    choose,
    fixed_sequence,
    required_samples,
    risk_control,
)
from edgeadapt.planning.stats import binom_cdf, binom_sf

RESAMPLES = 200


def _synthetic_pool(m: int = 40_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three states of rising accuracy whose confidences track correctness, noisily (each
    state's own noise: a cheaper state is sometimes right where the last is wrong)."""
    rng = np.random.default_rng(seed)
    hardness = rng.uniform(size=m)
    skill = np.array([0.55, 0.78, 0.9])
    correct = hardness[:, None] + 0.08 * rng.standard_normal((m, 3)) < skill
    logit = 6.0 * (skill - hardness[:, None]) + 1.2 * rng.standard_normal((m, 3))
    conf = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return conf, correct


def _mnist1d_pool() -> tuple[np.ndarray, np.ndarray]:
    """Every state of the shipped multi-exit bundle on 5,000 MNIST-1D samples."""
    pytest.importorskip("mnist1d", reason="the MNIST-1D pool needs the mnist1d package")
    from edgeadapt.data.mnist1d import mnist1d_splits
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.measure.evaluate import evaluate_bundle

    root = resources.files("edgeadapt") / "demo" / "bundles" / "mnist1d-multiexit"
    bundle = load_bundle(str(root))
    splits = mnist1d_splits(n_train=10, n_calibration=2500, n_test=2500)
    x = np.concatenate([splits.calibration.x, splits.test.x])
    y = np.concatenate([splits.calibration.y, splits.test.y])
    ev = evaluate_bundle(bundle, x, y)
    return ev.conf.astype(np.float32), ev.pred == y[:, None]


def _true_drop(conf, correct, thresholds, promise) -> float:
    """The promise's drop over the whole pool: the reference (last state) against the
    policy, net (accuracy difference) or its losses alone."""
    state = exit_states(conf, thresholds)
    policy = correct[np.arange(len(state)), state]
    if promise == "loss":
        return float(np.mean(correct[:, -1] & ~policy))
    return float(correct[:, -1].mean() - policy.mean())


def _violation_limit(trials: int, delta: float) -> int:
    """Most violations a correct promise shows in `trials` with probability >= 0.999."""
    k = 0
    while binom_sf(k + 1, trials, delta) > 1e-3:
        k += 1
    return k


def _resample_trial(pool, rng, n_learn, n_test, max_drop, delta, promise, kinds):
    conf, correct = pool
    cost = np.array([1.0, 2.0, 3.0, 4.0])[: conf.shape[1]]
    learn = rng.integers(0, len(conf), n_learn)
    test = rng.integers(0, len(conf), n_test)
    chosen = risk_control(
        (conf[learn], correct[learn], correct[learn, -1]),
        (conf[test], correct[test], correct[test, -1]),
        cost,
        max_drop=max_drop,
        delta=delta,
        promise=promise,
        kinds=kinds,
    )
    both = np.concatenate([learn, test])
    # the empirical calibration spends max_drop of the promise's drop on these samples
    kept = correct[both] | ~correct[both, -1:] if promise == "loss" else correct[both]
    empirical = calibrate(
        conf[both],
        kept,
        cost,
        max_drop=max_drop,
        reference_accuracy=1.0 if promise == "loss" else float(correct[both, -1].mean()),
        polish=False,
    )
    return (
        _true_drop(conf, correct, chosen.thresholds, promise),
        _true_drop(conf, correct, empirical.thresholds, promise),
        chosen,
        float(cost[exit_states(conf, chosen.thresholds)].mean()),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pool_name", "n_learn", "n_test", "max_drop", "delta", "promise", "kinds"),
    [
        ("synthetic", 800, 1200, 0.02, 0.1, "net", ("frontier", "shared")),
        ("synthetic", 800, 1200, 0.02, 0.1, "loss", ("frontier", "shared")),
        ("mnist1d", 1000, 1500, 0.01, 0.1, "net", ("frontier", "shared")),
    ],
)
def test_promise_holds_over_resamples_and_empirical_calibration_breaks_it(
    pool_name, n_learn, n_test, max_drop, delta, promise, kinds
):
    pool = _synthetic_pool() if pool_name == "synthetic" else _mnist1d_pool()
    rng = np.random.default_rng(7)
    trials = [
        _resample_trial(pool, rng, n_learn, n_test, max_drop, delta, promise, kinds)
        for _ in range(RESAMPLES)
    ]
    promised = np.array([t[0] for t in trials])
    empirical = np.array([t[1] for t in trials])
    limit = _violation_limit(RESAMPLES, delta)
    assert np.count_nonzero(promised > max_drop) <= limit
    # Calibrating to the empirical drop spends the split's noise: it overshoots often.
    assert np.count_nonzero(empirical > max_drop) > limit
    # The promise is not vacuous: most resamples keep thresholds that save cost.
    full_cost = float(pool[0].shape[1])
    saving = np.array([t[3] < full_cost - 1e-9 for t in trials])
    assert saving.mean() > 0.9
    assert all(t[2].promise.holds == (t[2].promise.passed > 0) for t in trials)
    assert {t[2].promise.kind for t in trials} == {promise}


def test_too_few_testing_samples_promise_nothing_and_say_how_many_are_needed():
    conf, correct = _synthetic_pool(3000)
    need = required_samples(0.01, 0.05)
    assert need == 299  # (1 - 0.01)^n <= 0.05 first at n = 299
    assert (1 - 0.01) ** need <= 0.05 < (1 - 0.01) ** (need - 1)
    small = slice(0, need - 1)
    cost = np.array([1.0, 2.0, 3.0])
    got = risk_control(
        (conf, correct, correct[:, -1]),
        (conf[small], correct[small], correct[small, -1]),
        cost,
        max_drop=0.01,
        delta=0.05,
    )
    assert not got.promise.holds
    assert got.promise.required_n == need
    assert np.isinf(got.thresholds).all()  # the static model: never exit early


def test_fixed_sequence_stops_at_the_first_failure():
    n = 1000
    ref = np.ones(n, bool)
    conf = np.tile(np.linspace(0, 1, n, dtype=np.float32)[:, None], (1, 2))
    correct = np.ones((n, 2), bool)
    correct[:30, 0] = False  # exiting at state 0 below conf 0.03 loses 30 samples
    cost = np.array([1.0, 2.0])
    path = [np.array([NEVER]), np.array([0.5]), np.array([0.0]), np.array([0.6])]
    got = fixed_sequence(path, conf, correct, cost, ref, max_drop=0.01, delta=0.05)
    # inf and 0.5 pass (0 losses), 0.0 fails (30 losses > 1%), so 0.6 is never tested.
    assert got.promise.tested == 3
    assert got.promise.passed == 2
    assert got.thresholds.tolist() == [0.5]


def test_frontier_path_starts_at_the_static_model_and_gets_cheaper():
    conf, correct = _synthetic_pool(4000)
    cost = np.array([1.0, 2.0, 3.0])
    for promise in ("net", "loss"):
        path = frontier_path(conf, correct, cost, correct[:, -1], max_drop=0.03, promise=promise)
        assert np.isinf(path[0]).all()
        assert len(path) > 10
        costs = [cost[exit_states(conf, t)].mean() for t in path]
        assert costs[0] == 3.0
        assert costs[-1] < costs[0]
        # every threshold is a confidence of the split (or never), so float32 and
        # float64 comparisons agree
        for t in path[1:]:
            for i, v in enumerate(t):
                assert np.isinf(v) or v in conf[:, i]
        # it ends near twice max_drop of the promise's drop here, not far past it
        end = _true_drop(conf, correct, path[-1], promise)
        assert 0.03 < end <= 2 * 0.03 + 0.01


def test_shared_path_gives_every_exit_one_falling_threshold():
    conf, correct = _synthetic_pool(4000)
    cost = np.array([1.0, 2.0, 3.0])
    path = shared_path(conf, correct, correct[:, -1], max_drop=0.03, points=8, promise="loss")
    assert np.isinf(path[0]).all()
    assert 2 < len(path) <= 9
    levels = [float(t[0]) for t in path[1:]]
    assert all(np.all(t == t[0]) for t in path[1:])
    assert levels == sorted(levels, reverse=True)
    costs = [cost[exit_states(conf, t)].mean() for t in path]
    assert costs[-1] < costs[1] < costs[0] == 3.0
    state = exit_states(conf, path[-1])
    lost = correct[:, -1] & ~correct[np.arange(len(state)), state]
    assert lost.mean() <= 0.03
    net = shared_path(conf, correct, correct[:, -1], max_drop=0.03, points=8, promise="net")
    assert _true_drop(conf, correct, net[-1], "net") <= 0.03
    (alone,) = shared_path(conf[:, :1], correct[:, :1], correct[:, 0], max_drop=0.03)
    assert alone.size == 0


def test_choice_reads_the_learning_split_alone():
    """`choose` scores each path and test on the learning split alone: a loss promise
    is tested by the binomial test, and a larger testing split (more power) never
    predicts a costlier stop."""
    conf, correct = _synthetic_pool(6000)
    cost = np.array([1.0, 2.0, 3.0])
    learn = (conf, correct, correct[:, -1])
    got = choose(learn, cost, max_drop=0.02, delta=0.1, promise="loss", n_test=6000)
    assert got.path in ("frontier", "shared")
    assert got.test == "binomial"
    assert got.predicted_cost < 3.0
    net = choose(learn, cost, max_drop=0.02, delta=0.1, promise="net", n_test=6000)
    assert net.test in ("binomial", "berger-boos")
    # a larger testing split lets the walk go further: never a costlier prediction
    more = choose(learn, cost, max_drop=0.02, delta=0.1, promise="loss", n_test=60000)
    assert more.predicted_cost <= got.predicted_cost * 1.01


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    losses=st.integers(0, 400),
    eps=st.floats(0.001, 0.5),
)
def test_p_value_is_the_binomial_lower_tail_and_monotone(n, losses, eps):
    losses = min(losses, n)
    p = loss_p_value(losses, n, eps)
    assert p == pytest.approx(binom_cdf(losses, n, eps))
    if losses < n:
        assert loss_p_value(losses + 1, n, eps) >= p - 1e-12  # sums of pmf terms round differently
    assert loss_p_value(losses, n, min(0.9, eps * 1.5)) <= p + 1e-12


@pytest.mark.parametrize(("max_drop", "delta"), [(0.0, 0.1), (1.0, 0.1), (0.01, 0.0), (0.01, 1)])
def test_levels_out_of_range_are_refused(max_drop, delta):
    with pytest.raises(InputError):
        required_samples(max_drop, delta)
