"""Risk-controlled exit thresholds (Learn then Test): a drop promise that holds on new data.

Thresholds calibrated to meet an accuracy drop *on the calibration split* overshoot it on
fresh data about half the time: the split's own noise is spent as if it were signal.
Learn then Test (Angelopoulos, Bates, Candes, Jordan and Lei, 2021) turns the choice
into multiple testing, so that

    P( drop on new data > max_drop ) <= delta

where the drop is the reference (static) state's accuracy minus the policy's, both on the
distribution the data are drawn from, and the probability is over the draw of the
testing split. It assumes the testing split and the new data are exchangeable (drawn
alike, in any order); nothing about the model or the confidences.

How:

1. *Learn* (on a split the test never sees): a path of threshold vectors from the most
   cautious (never exit early: the last state alone) in small nested steps to the
   cheapest thresholds whose loss rate (below) on the learning split is at most
   max_drop (`learn_path`).
2. *Test* (on the testing split): for each point, the null hypothesis "its drop exceeds
   max_drop" gets a p-value; fixed-sequence testing walks the path in order at level
   delta and stops at the first point it cannot reject. Every rejected point controls
   the family-wise error at delta, so the cheapest of them is returned.

The p-value is exact and distribution-free: a sample where the reference is right and
the policy wrong is a loss, a binomial count with rate ``p_loss >= drop``; rejecting
``p_loss > max_drop`` (``P(Binomial(n, max_drop) <= losses)``) rejects ``drop >
max_drop``. When the testing split is too small for even zero losses to reject
(``(1 - max_drop)^n > delta``), no threshold set can be promised and the caller keeps
the static model; `required_samples` says how many samples it would need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.plan import Promise
from edgeadapt.planning.calibrate import NEVER, calibrate, exit_states
from edgeadapt.planning.stats import binom_cdf

#: Steps of the learned path from "never exit early" to its target. Fixed-sequence
#: testing pays nothing for a longer path (each point is tested at delta itself), so a
#: fine path only stops nearer the cheapest point the test can pass.
PATH_POINTS = 100


@dataclass(frozen=True)
class RiskControlled:
    """The thresholds chosen (``[S-1]``, all ``inf`` when nothing passed) and the promise."""

    thresholds: np.ndarray
    promise: Promise


def required_samples(max_drop: float, delta: float) -> int:
    """Fewest testing samples for which zero losses reject "drop > max_drop" at delta:
    the least n with ``(1 - max_drop)^n <= delta``."""
    _check_level(max_drop, delta)
    return max(1, math.ceil(math.log(delta) / math.log1p(-max_drop) - 1e-12))


def loss_p_value(losses: int, n: int, max_drop: float) -> float:
    """p-value of "drop > max_drop" after `losses` reference-right, policy-wrong samples
    of `n`: ``P(Binomial(n, max_drop) <= losses)``, exact."""
    return binom_cdf(losses, n, max_drop)


def learn_path(
    conf: np.ndarray,
    correct: np.ndarray,
    cost: np.ndarray,
    reference_correct: np.ndarray,
    *,
    max_drop: float,
    points: int = PATH_POINTS,
) -> list[np.ndarray]:
    """Threshold vectors from "never exit early" to a target point, learned on this split.

    The target is the cheapest thresholds whose loss rate (reference right, policy
    wrong: what the test bounds) is at most `max_drop` here (`edgeadapt.planning.calibrate`).
    Point k of `points` lets exit i take the ``k / points`` share of the samples the
    target exits there, most confident first, so the path grows from the static model
    in small, nested steps: fixed-sequence testing stops at the first step it cannot
    pass, and a path that jumped straight to the target would fail on noise alone.
    Repeated points are dropped.
    """
    s = conf.shape[1]
    never = np.full(s - 1, NEVER)
    # A sample where the reference is wrong cannot be a loss: count it as never wrong.
    not_lost = correct | ~np.asarray(reference_correct, dtype=bool)[:, None]
    target = calibrate(
        conf, not_lost, cost, max_drop=max_drop, reference_accuracy=1.0, polish=False
    ).thresholds
    ranked = -np.sort(-conf[:, :-1], axis=0)  # each exit's confidences, falling
    exits = [int(np.count_nonzero(conf[:, i] >= target[i])) for i in range(s - 1)]
    path = [never]
    for k in range(1, points + 1):
        t = never.copy()
        for i, m in enumerate(exits):
            take = math.ceil(m * k / points)
            if take:
                t[i] = ranked[take - 1, i]
        if not any(np.array_equal(t, p) for p in path):
            path.append(t)
    return path


#: Shared-threshold candidates (quantiles of the learning split's scores) that
#: `shared_path` scans for its end point.
SHARED_GRID = 400


def shared_path(
    conf: np.ndarray,
    correct: np.ndarray,
    reference_correct: np.ndarray,
    *,
    max_drop: float,
    points: int = PATH_POINTS,
    grid: int = SHARED_GRID,
) -> list[np.ndarray]:
    """Threshold vectors that give every exit one shared threshold, learned on this split.

    For scores that estimate the same probability at every exit (learned gates: the
    chance that exiting is not a loss), one threshold is the natural policy: exit
    wherever that chance is high enough. The path falls from "never exit early"
    through `points` shared thresholds, evenly spaced in the share of scores they pass,
    down to the lowest one whose loss rate here is still at most `max_drop` (the scan
    stops at the first that exceeds it). Repeated points are dropped.
    """
    n, s = conf.shape
    never = np.full(s - 1, NEVER)
    if s == 1:
        return [never]
    ref = np.asarray(reference_correct, dtype=bool)
    pooled = np.sort(conf[:, :-1].ravel())[::-1]
    rows = np.arange(n)
    end = 0
    levels = [
        float(pooled[min(pooled.size, math.ceil(k * pooled.size / grid)) - 1])
        for k in range(1, grid + 1)
    ]
    for k, tau in enumerate(levels, start=1):
        state = exit_states(conf, np.full(s - 1, tau))
        if np.count_nonzero(ref & ~correct[rows, state]) > max_drop * n:
            break
        end = k
    path = [never]
    for i in range(1, points + 1):
        k = math.ceil(end * i / points)
        if k == 0:
            continue
        t = np.full(s - 1, levels[k - 1])
        if not any(np.array_equal(t, p) for p in path):
            path.append(t)
    return path


def fixed_sequence(
    path: list[np.ndarray],
    conf: np.ndarray,
    correct: np.ndarray,
    cost: np.ndarray,
    reference_correct: np.ndarray,
    *,
    max_drop: float,
    delta: float,
) -> RiskControlled:
    """Test the path's points in order on the testing split; return the cheapest point
    (by its mean cost here) among those rejected before the first failure."""
    _check_level(max_drop, delta)
    n, s = conf.shape
    ref = np.asarray(reference_correct, dtype=bool)
    if ref.shape != (n,):
        raise InputError(f"expected shape ({n},), got {ref.shape}", field="reference_correct")
    rows = np.arange(n)
    chosen: tuple[float, np.ndarray, float, int] | None = None
    p_value, losses, tested, passed = 1.0, 0, 0, 0
    for t in path:
        state = exit_states(conf, t)
        lost = int(np.count_nonzero(ref & ~correct[rows, state]))
        p = loss_p_value(lost, n, max_drop)
        tested += 1
        if p > delta:
            if chosen is None:
                p_value, losses = p, lost
            break
        passed += 1
        mean_cost = float(cost[state].mean())
        if chosen is None or mean_cost < chosen[0]:
            chosen = (mean_cost, t, p, lost)
    if chosen is not None:
        _, thresholds, p_value, losses = chosen
    else:
        thresholds = np.full(s - 1, NEVER)
    promise = Promise(
        max_drop=max_drop,
        delta=delta,
        n=n,
        tested=tested,
        passed=passed,
        p_value=p_value,
        losses=losses,
        required_n=required_samples(max_drop, delta),
    )
    return RiskControlled(thresholds=np.asarray(thresholds, dtype=np.float64), promise=promise)


def risk_control(
    learn: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    cost: np.ndarray,
    *,
    max_drop: float,
    delta: float,
    points: int = PATH_POINTS,
    shared: bool = False,
) -> RiskControlled:
    """Learn a path on `learn`, test it on `test` (module docstring).

    Each split is ``(conf, correct, reference_correct)``: confidences and correctness
    ``[N, S]`` of the kept states in cost order (the last one always answers), and the
    reference state's correctness ``[N]``, the state the drop is measured against.
    `cost` is what exiting at each kept state pays. `shared` learns a `shared_path`
    (one threshold for every exit) instead of the per-exit `learn_path`.
    """
    conf_l, correct_l, ref_l = learn
    conf_t, correct_t, ref_t = test
    if shared:
        path = shared_path(conf_l, correct_l, ref_l, max_drop=max_drop, points=points)
    else:
        path = learn_path(conf_l, correct_l, cost, ref_l, max_drop=max_drop, points=points)
    return fixed_sequence(path, conf_t, correct_t, cost, ref_t, max_drop=max_drop, delta=delta)


def _check_level(max_drop: float, delta: float) -> None:
    if not 0.0 < max_drop < 1.0:
        raise InputError(f"must be in (0, 1) for a promise, got {max_drop}", field="max_drop")
    if not 0.0 < delta < 1.0:
        raise InputError(f"must be in (0, 1), got {delta}", field="delta")
