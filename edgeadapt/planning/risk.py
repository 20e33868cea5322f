"""Risk-controlled exit thresholds (Learn then Test): a drop promise that holds on new data.

Thresholds calibrated to meet an accuracy drop *on the calibration split* overshoot it on
fresh data about half the time: the split's own noise is spent as if it were signal.
Learn then Test (Angelopoulos, Bates, Candes, Jordan and Lei, 2021) turns the choice
into multiple testing, so that

    P( drop on new data > max_drop ) <= delta

where the drop is taken against the reference state, on the distribution the data are
drawn from, and the probability is over the draw of the testing split. It assumes the
testing split and the new data are exchangeable (drawn alike, in any order); nothing
about the model or the confidences. The drop is the promise's (`PROMISES`): ``net``,
the accuracy drop (losses minus gains), or ``loss``, the losses alone.

How:

1. *Learn* (on a split the test never sees): candidate paths of threshold vectors from
   "never exit early" toward cheaper exits (`edgeadapt.planning.paths`: the per-exit
   frontier, one shared threshold) and the tests that can be run on them
   (`edgeadapt.planning.pvalues`: the binomial test of the losses; for the net promise
   also the Berger-Boos test of losses minus gains). `choose` scores every pair by
   cross-fitting on the learning split alone: each path is learned on all but one fold
   and walked on that fold, its counts scaled to the testing split's size (the first
   failure found by bisection: a prediction), and the pair whose walk stops at the
   cheapest point is chosen.
2. *Test* (on the testing split): the chosen path, learned on the whole learning split,
   is walked in order; each point's null "its drop exceeds max_drop" gets the chosen
   test's p-value, and fixed-sequence testing stops at the first point it cannot
   reject at level delta. Every rejected point controls the family-wise error at delta,
   so the cheapest of them is returned.

Only the chosen pair is tested, once: the choice reads the learning split only, so the
promise is as valid as a single path's. When the testing split is too small for even
zero losses to reject (``(1 - max_drop)^n > delta``), no threshold set can be promised
and the caller keeps the static model; `required_samples` says how many samples it
would need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.plan import METHODS, Promise
from edgeadapt.planning.calibrate import NEVER, exit_states
from edgeadapt.planning.paths import (
    PATH_KINDS,
    PROMISES,
    check_promise,
    drop_counts,
    learned_path,
)
from edgeadapt.planning.pvalues import loss_p_value, net_p_value

#: The tests each promise may be tested with (`edgeadapt.planning.pvalues`): the
#: binomial test of the losses bounds the net drop too.
TESTS = {"net": ("binomial", "berger-boos"), "loss": ("binomial",)}
#: Folds of the learning split `choose` cross-fits on.
FOLDS = 2
#: How much cheaper (relative) a later pair's predicted cost must be to be chosen over
#: an earlier one (`PATH_KINDS` order within each test, the binomial test first): where
#: the pairs are alike, the cross-fitted walks' noise decides nothing.
MARGIN = 0.01

#: One split as the risk control reads it: the policy's scores and each kept state's
#: correctness ``[N, S]`` (cost order, the last state always answers), and the
#: reference state's correctness ``[N]``.
Split = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class RiskControlled:
    """The thresholds chosen (``[S-1]``, all ``inf`` when nothing passed) and the promise."""

    thresholds: np.ndarray
    promise: Promise


@dataclass(frozen=True)
class Choice:
    """The path and test `choose` picked, and the mean cost its cross-fitted walks
    stopped at (ms per sample, on the learning split)."""

    path: str
    test: str
    predicted_cost: float


def required_samples(max_drop: float, delta: float) -> int:
    """Fewest testing samples for which zero losses reject "drop > max_drop" at delta:
    the least n with ``(1 - max_drop)^n <= delta``."""
    _check_level(max_drop, delta)
    return max(1, math.ceil(math.log(delta) / math.log1p(-max_drop) - 1e-12))


def p_value(test: str, losses: int, gains: int, n: int, max_drop: float, delta: float) -> float:
    """The p-value of "drop > max_drop" by `test` (`TESTS`) after `losses` and `gains`
    in `n` samples."""
    if test == "binomial":
        return loss_p_value(losses, n, max_drop)
    if test == "berger-boos":
        return net_p_value(losses, gains, n, max_drop, delta)
    raise InputError(f"must be one of {sorted(METHODS)}, got {test!r}", field="test")


def _walk(
    path: Sequence[np.ndarray],
    split: Split,
    cost: np.ndarray,
    reject: Callable[[int, int], tuple[bool, float]],
) -> tuple[np.ndarray | None, int, int, tuple[float, int, int]]:
    """Walk `path` in order on `split` until `reject(losses, gains)` fails: the cheapest
    rejected point (None: none), how many points were tested and passed, and the
    (p-value, losses, gains) of that point, or of the first failure when none passed."""
    conf, correct, ref = split
    rows = np.arange(conf.shape[0])
    chosen: tuple[float, np.ndarray, tuple[float, int, int]] | None = None
    first = (1.0, 0, 0)
    tested = passed = 0
    for t in path:
        state = exit_states(conf, t)
        losses, gains = drop_counts(ref, correct[rows, state])
        ok, p = reject(losses, gains)
        tested += 1
        if not ok:
            if chosen is None:
                first = (p, losses, gains)
            break
        passed += 1
        mean_cost = float(cost[state].mean())
        if chosen is None or mean_cost < chosen[0]:
            chosen = (mean_cost, t, (p, losses, gains))
    if chosen is None:
        return None, tested, passed, first
    return chosen[1], tested, passed, chosen[2]


def fixed_sequence(
    path: Sequence[np.ndarray],
    conf: np.ndarray,
    correct: np.ndarray,
    cost: np.ndarray,
    reference_correct: np.ndarray,
    *,
    max_drop: float,
    delta: float,
    promise: str = "net",
    test: str = "binomial",
    path_kind: str | None = None,
) -> RiskControlled:
    """Test the path's points in order on the testing split with `test`; return the
    cheapest point (by its mean cost here) among those rejected before the first
    failure."""
    _check_level(max_drop, delta)
    check_promise(promise)
    if test not in TESTS[promise]:
        raise InputError(
            f"the {promise} promise is tested with {list(TESTS[promise])}, got {test!r}",
            field="test",
        )
    n, s = conf.shape
    ref = np.asarray(reference_correct, dtype=bool)
    if ref.shape != (n,):
        raise InputError(f"expected shape ({n},), got {ref.shape}", field="reference_correct")

    def reject(losses: int, gains: int) -> tuple[bool, float]:
        p = p_value(test, losses, gains, n, max_drop, delta)
        return p <= delta, p

    best, tested, passed, (p, losses, gains) = _walk(path, (conf, correct, ref), cost, reject)
    promised = Promise(
        max_drop=max_drop,
        delta=delta,
        n=n,
        tested=tested,
        passed=passed,
        p_value=p,
        losses=losses,
        required_n=required_samples(max_drop, delta),
        method=METHODS[test],
        kind=promise,
        gains=gains,
        path=path_kind,
    )
    thresholds = np.full(s - 1, NEVER) if best is None else best
    return RiskControlled(thresholds=np.asarray(thresholds, dtype=np.float64), promise=promised)


def _folds(n: int, folds: int) -> list[np.ndarray]:
    """`folds` disjoint row sets covering a split of `n` rows (a fixed shuffle)."""
    order = np.random.default_rng(0).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def _point_figures(
    path: Sequence[np.ndarray], split: Split, cost: np.ndarray
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Each path point's (losses, gains) and mean cost on `split`."""
    conf, correct, ref = split
    rows = np.arange(conf.shape[0])
    counts, costs = [], np.empty(len(path))
    for i, t in enumerate(path):
        state = exit_states(conf, t)
        counts.append(drop_counts(ref, correct[rows, state]))
        costs[i] = cost[state].mean()
    return counts, costs


def _predicted_stop(
    counts: Sequence[tuple[int, int]],
    costs: np.ndarray,
    reject: Callable[[int, int], tuple[bool, float]],
) -> float:
    """The mean cost a walk of these points would keep: the cheapest point before the
    first one `reject` fails, that point found by bisection (a prediction: it takes
    the points' drops to rise along the path), the first point's when none passes."""
    lo, hi = 0, len(counts)  # points [0, lo) pass; the first failure is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if reject(*counts[mid])[0]:
            lo = mid + 1
        else:
            hi = mid
    return float(costs[: max(lo, 1)].min())


def _scaled_test(
    test: str, scale: float, n_test: int, max_drop: float, delta: float
) -> Callable[[int, int], tuple[bool, float]]:
    """`test` at level `delta` of counts scaled by `scale` to a split of `n_test` samples."""

    def reject(losses: int, gains: int) -> tuple[bool, float]:
        p = p_value(test, round(losses * scale), round(gains * scale), n_test, max_drop, delta)
        return p <= delta, p

    return reject


def choose(
    learn: Split,
    cost: np.ndarray,
    *,
    max_drop: float,
    delta: float,
    promise: str,
    n_test: int,
    kinds: Sequence[str] = PATH_KINDS,
    folds: int = FOLDS,
) -> Choice:
    """The path kind and test the learning split predicts stop cheapest on a testing
    split of `n_test` samples (module docstring); a pair later in the order (the
    binomial test first, `kinds` in order) must predict a cost `MARGIN` lower to be
    chosen. Reads `learn` only."""
    conf, correct, ref = learn
    tests = TESTS[check_promise(promise)]
    if len(kinds) * len(tests) == 1:
        return Choice(kinds[0], tests[0], math.nan)
    n = conf.shape[0]
    parts = _folds(n, folds) if n >= 2 * folds else [np.arange(n)]
    totals = {(k, t): 0.0 for k in kinds for t in tests}
    for held in parts:
        fit = np.setdiff1d(np.arange(n), held) if len(parts) > 1 else held
        fold = (conf[held], correct[held], ref[held])
        scale = n_test / held.size
        for kind in kinds:
            path = learned_path(
                kind,
                conf[fit],
                correct[fit],
                cost,
                ref[fit],
                max_drop=max_drop,
                promise=promise,
            )
            counts, costs = _point_figures(path, fold, cost)
            for test in tests:
                reject = _scaled_test(test, scale, n_test, max_drop, delta)
                totals[kind, test] += _predicted_stop(counts, costs, reject) / len(parts)
    chosen = (kinds[0], tests[0])
    for pair in ((k, t) for t in tests for k in kinds):
        if totals[pair] < totals[chosen] * (1.0 - MARGIN):
            chosen = pair
    return Choice(chosen[0], chosen[1], totals[chosen])


def risk_control(
    learn: Split,
    test: Split,
    cost: np.ndarray,
    *,
    max_drop: float,
    delta: float,
    promise: str = "net",
    kinds: Sequence[str] = PATH_KINDS,
    choice: Choice | None = None,
) -> RiskControlled:
    """Choose a path and test on `learn` (unless `choice` says which: `choose` on the
    same split), learn that path on it, test it on `test` (module docstring).

    Each split is ``(conf, correct, reference_correct)``: the policy's scores and the
    correctness ``[N, S]`` of the kept states in cost order (the last one always
    answers), and the reference state's correctness ``[N]``, the state the drop is
    measured against. `cost` is what exiting at each kept state pays. `kinds` are the
    path kinds to choose from (`edgeadapt.planning.paths.PATH_KINDS`).
    """
    _check_level(max_drop, delta)
    if choice is None:
        n_test = test[0].shape[0]
        choice = choose(
            learn, cost, max_drop=max_drop, delta=delta, promise=promise, n_test=n_test, kinds=kinds
        )
    conf_l, correct_l, ref_l = learn
    path = learned_path(
        choice.path, conf_l, correct_l, cost, ref_l, max_drop=max_drop, promise=promise
    )
    conf_t, correct_t, ref_t = test
    return fixed_sequence(
        path,
        conf_t,
        correct_t,
        cost,
        ref_t,
        max_drop=max_drop,
        delta=delta,
        promise=promise,
        test=choice.test,
        path_kind=choice.path,
    )


def _check_level(max_drop: float, delta: float) -> None:
    if not 0.0 < max_drop < 1.0:
        raise InputError(f"must be in (0, 1) for a promise, got {max_drop}", field="max_drop")
    if not 0.0 < delta < 1.0:
        raise InputError(f"must be in (0, 1), got {delta}", field="delta")


__all__ = [
    "PROMISES",
    "TESTS",
    "Choice",
    "RiskControlled",
    "choose",
    "fixed_sequence",
    "p_value",
    "required_samples",
    "risk_control",
]
