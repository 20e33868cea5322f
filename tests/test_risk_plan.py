"""The planner's promise over resamples: `make_plan` end to end (subset search, gates
fitted on the calibration split, the path learned there and tested on the held-out
split), for every policy and promise, on data it never saw.

As in `tests/test_risk.py`, each resample draws its calibration and held-out splits
i.i.d. from a finite pool, so the pool is the distribution and a plan's true drop (its
reference state's accuracy over the pool minus the policy's) is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeadapt.planning.planner import Outcomes, PlanOptions, make_plan, simulate_plan
from edgeadapt.planning.stats import binom_sf
from tests.synthetic import gate_evaluation, gate_logits

RESAMPLES = 200
SHA = "0" * 64


def _violation_limit(trials: int, delta: float) -> int:
    """Most violations a correct promise shows in `trials` with probability >= 0.999."""
    k = 0
    while binom_sf(k + 1, trials, delta) > 1e-3:
        k += 1
    return k


@pytest.fixture(scope="module")
def pool() -> Outcomes:
    labels, logits = gate_logits(20_000, 3, 6, 11)
    return Outcomes.from_evaluation(gate_evaluation(labels, logits))


def _true_drop(plan, pool: Outcomes, promise: str) -> float:
    """The promise's drop over the whole pool: net, or the losses alone."""
    run = simulate_plan(plan, pool)
    ref = pool.correct[:, plan.reference_state]
    if promise == "loss":
        cols = np.asarray(plan.states)[run.exit_state]
        return float(np.mean(ref & ~pool.correct[np.arange(pool.n), cols]))
    return float(ref.mean() - run.accuracy)


def _plan(calib, held, costs, **options):
    return make_plan(calib, held, costs, manifest_sha256=SHA, options=PlanOptions(**options))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "promise"),
    # (the loss promise over resamples: tests/test_risk.py)
    [("gate", "net"), ("threshold", "net"), ("agreement", "net")],
)
def test_plan_promise_holds_over_resamples(pool, policy, promise):
    max_drop, delta = 0.02, 0.1
    rng = np.random.default_rng(3)
    drops, saved = [], []
    for _ in range(RESAMPLES):
        calib = pool.take(rng.integers(0, pool.n, 1000))
        held = pool.take(rng.integers(0, pool.n, 1500))
        plan = _plan(
            calib,
            held,
            [1.0, 2.0, 3.0],
            max_drop=max_drop,
            delta=delta,
            policy=policy,
            promise=promise,
        )
        assert plan.promise is not None
        assert plan.promise.kind == promise
        drops.append(_true_drop(plan, pool, promise))
        saved.append(simulate_plan(plan, pool).expected_cost < 3.0 - 1e-9)
    assert np.count_nonzero(np.array(drops) > max_drop) <= _violation_limit(RESAMPLES, delta)
    # not vacuous: nearly every resample keeps a plan that saves
    assert np.mean(saved) > 0.9


def test_risk_plan_ends_at_the_reference_state(pool):
    """A subset that ends before the reference state (as accurate on the calibration
    split, so the empirical search keeps it) starts the tested path with its losses;
    the risk-controlled plan ends at the reference instead, so its first point passes."""
    calib, held = pool.take(np.arange(4000)), pool.take(np.arange(4000, 8000))
    acc = calib.correct.mean(axis=0)
    # a max_drop wide enough that the empirical search may stop before the last state
    max_drop = float(acc[2] - acc[1]) + 0.01
    empirical = _plan(calib, held, [1.0, 2.0, 30.0], max_drop=max_drop, calibration="empirical")
    assert empirical.states[-1] != empirical.reference_state
    for policy in ("threshold", "gate"):
        plan = _plan(calib, held, [1.0, 2.0, 30.0], max_drop=max_drop, policy=policy)
        assert plan.promise is not None
        assert plan.promise.holds
        assert plan.reference_state == 2
        assert plan.states[-1] == plan.reference_state
