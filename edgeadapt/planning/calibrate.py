"""Exit thresholds for a cascade of states: simulate a policy, calibrate it, sweep it.

The policy: run the states in order and exit at the first state ``i`` (all but the last)
whose confidence is ``>= t_i``; a sample that never exits takes the last state. A state's
``cost`` is what a sample pays when it exits there (the cascade cost of states 0..i).
``inf`` as a threshold means "never exit here".

Calibration minimises the expected cost on a calibration split subject to
``accuracy >= reference - max_drop`` (counted in whole samples). The reference is the
best single state's accuracy on the same split unless the caller names another figure
(the planner passes the best state of the whole bundle: the drop is "against the best
single state").

How it searches, and what is exact:

- One threshold (two states) is solved exactly: every cut between distinct confidences
  of the first state is scored at once from sorted cumulative sums.
- Scores with few distinct values (agreement shares) are solved exactly too: every
  combination of each exit's distinct values and "never" is scored, up to `GRID_LIMIT`.
- With more thresholds the same exact search moves one threshold at a time (the others
  fixed: a sample that does not exit at state i has an outcome fixed by the later
  thresholds, so the line search is exact over all cuts). Coordinate descent alone
  spends the whole error budget on the first state it visits, so it runs along a
  Lagrangian path first: for a multiplier ``lam`` (ms per error) it minimises
  ``cost + lam * errors``, bisecting ``lam`` down to the cheapest point that meets the
  constraint; the best feasible points, and the all-"never exit" start, are then
  polished by constrained coordinate descent, and the best of them by pair moves (one
  threshold set to each of 33 confidence quantiles, another re-fitted exactly). The
  answer is a local optimum (no single threshold, nor such a pair, can move to lower
  the cost without breaking the constraint), not a proven global one; tests check it
  equals brute force over all thresholds on small splits.

Thresholds are always actual confidence values of the split (the lowest confidence that
exits), so ``conf >= t`` gives the same answer in float32 and float64 (C++ runner parity).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edgeadapt.errors import InputError

NEVER = math.inf
_LAMBDA_STEPS = 24
_MAX_SWEEPS = 50
_POLISHED = 3
_PAIR_GRID = 33  # confidence quantiles tried per threshold in pair moves
#: Most threshold vectors `calibrate` tries one by one when the scores take few values.
GRID_LIMIT = 256


class CascadeResult(NamedTuple):
    """Outcome of a simulated cascade: accuracy, mean cost, and the exit state per sample."""

    accuracy: float
    expected_cost: float
    exit_state: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """Calibrated thresholds (``[S-1]``, ``inf`` = never exit) and their figures on the split."""

    thresholds: np.ndarray
    accuracy: float
    expected_cost: float
    reference_accuracy: float
    drop: float
    feasible: bool
    exact: bool


@dataclass(frozen=True)
class Sweep:
    """Accuracy and expected cost of the policy with one shared threshold per level."""

    levels: np.ndarray
    accuracy: np.ndarray
    expected_cost: np.ndarray


def _checked(
    conf: np.ndarray, correct: np.ndarray, cost: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conf = np.asarray(conf)
    correct = np.asarray(correct)
    cost = np.asarray(cost, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] == 0 or conf.shape[1] == 0:
        raise InputError(f"expected a non-empty [N, S] array, got shape {conf.shape}", field="conf")
    if conf.dtype.kind != "f":
        raise InputError(f"expected floats, got {conf.dtype}", field="conf")
    if not np.isfinite(conf).all():
        raise InputError("confidences must be finite", field="conf")
    if correct.shape != conf.shape or correct.dtype != np.bool_:
        raise InputError(f"expected a bool array of shape {conf.shape}", field="correct")
    if cost.shape != (conf.shape[1],):
        raise InputError(f"expected shape ({conf.shape[1]},), got {cost.shape}", field="cost")
    if not (np.isfinite(cost).all() and (cost >= 0).all()):
        raise InputError("costs must be finite and >= 0", field="cost")
    return conf, correct, cost


def _checked_thresholds(thresholds: np.ndarray, states: int) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (states - 1,):
        raise InputError(
            f"expected {states - 1} thresholds, got shape {t.shape}", field="thresholds"
        )
    if np.isnan(t).any():
        raise InputError("thresholds must not be NaN", field="thresholds")
    return t


def exit_states(conf: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Index of the state each sample exits at (``[N]`` int64)."""
    n, s = conf.shape
    if s == 1:
        return np.zeros(n, dtype=np.int64)
    hit = conf[:, :-1] >= thresholds
    return np.where(hit.any(axis=1), hit.argmax(axis=1), s - 1).astype(np.int64)


def simulate(
    conf: np.ndarray, correct: np.ndarray, cost: np.ndarray, thresholds: np.ndarray
) -> CascadeResult:
    """Run the threshold policy on per-sample confidences and correctness (vectorised)."""
    conf, correct, cost = _checked(conf, correct, cost)
    t = _checked_thresholds(thresholds, conf.shape[1])
    state = exit_states(conf, t)
    rows = np.arange(conf.shape[0])
    return CascadeResult(
        accuracy=float(correct[rows, state].mean()),
        expected_cost=float(cost[state].mean()),
        exit_state=state,
    )


def sweep(
    conf: np.ndarray, correct: np.ndarray, cost: np.ndarray, levels: np.ndarray | None = None
) -> Sweep:
    """The policy with one threshold shared by all states, at each level (for plots).

    Default levels: 65 quantiles of the confidences of the states that can exit, plus
    ``inf`` (the last state alone), sorted so the curve runs from cheap to costly.
    """
    conf, correct, cost = _checked(conf, correct, cost)
    n, s = conf.shape
    if levels is None:
        pooled = conf[:, :-1].ravel() if s > 1 else conf.ravel()
        levels = np.append(np.unique(np.quantile(pooled, np.linspace(0, 1, 65))), NEVER)
    lv = np.asarray(levels, dtype=np.float64)
    if lv.ndim != 1 or lv.size == 0 or np.isnan(lv).any():
        raise InputError("expected a non-empty 1-d array without NaN", field="levels")
    acc = np.empty(lv.size)
    exp_cost = np.empty(lv.size)
    rows = np.arange(n)
    for j, level in enumerate(lv):
        state = exit_states(conf, np.full(s - 1, level))
        acc[j] = correct[rows, state].mean()
        exp_cost[j] = cost[state].mean()
    return Sweep(levels=lv, accuracy=acc, expected_cost=exp_cost)


class Search:
    """Exact one-threshold line searches over a fixed split (sums kept in whole samples)."""

    def __init__(self, conf: np.ndarray, correct: np.ndarray, cost: np.ndarray) -> None:
        self.conf = conf
        self.correct = correct.astype(np.int64)
        self.cost = cost
        self.n, self.s = conf.shape
        self.rows = np.arange(self.n)
        # Per state, samples by falling confidence: cuts are prefixes of these orders.
        self.order = np.argsort(-conf[:, :-1], axis=0, kind="stable")
        self.tol = 1e-9 * max(1.0, float(cost.max()) * self.n)

    def totals(self, t: np.ndarray) -> tuple[float, int]:
        state = exit_states(self.conf, t)
        return float(self.cost[state].sum()), int(self.correct[self.rows, state].sum())

    def key(self, t: np.ndarray, need: int) -> tuple[int, float, int]:
        """Sort key of the constrained problem: shortfall, then cost, then more correct."""
        total_cost, total_correct = self.totals(t)
        return max(0, need - total_correct), total_cost, -total_correct

    def improves(self, a: tuple[int, float, int], b: tuple[int, float, int]) -> bool:
        """Whether key a is better than key b (costs compared with a tolerance)."""
        if a[0] != b[0]:
            return a[0] < b[0]
        if abs(a[1] - b[1]) > self.tol:
            return a[1] < b[1]
        return a[2] < b[2]

    def _cuts(self, t: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """For every valid cut at state i: total cost, total correct count, and the
        threshold that makes it; plus the index of the cut t[i] makes now."""
        conf, cost, correct = self.conf, self.cost, self.correct
        later = np.full(self.n, self.s - 1)  # where a sample goes if it does not exit at i
        for k in range(self.s - 2, i, -1):
            later = np.where(conf[:, k] >= t[k], k, later)
        earlier = conf[:, :i] >= t[:i]
        reach = np.logical_not(earlier.any(axis=1))
        state = np.where(reach, later, earlier.argmax(axis=1)) if i else later
        base_cost = float(cost[state].sum())
        base_correct = int(correct[self.rows, state].sum())

        idx = self.order[:, i][reach[self.order[:, i]]]
        c = conf[idx, i]
        d_cost = np.concatenate(([0.0], np.cumsum(cost[i] - cost[later[idx]])))
        d_correct = np.concatenate(([0], np.cumsum(correct[idx, i] - correct[idx, later[idx]])))
        valid = np.ones(idx.size + 1, dtype=bool)
        valid[1:-1] = c[:-1] > c[1:]  # a cut never splits equal confidences
        cuts = np.flatnonzero(valid)
        thresholds = np.concatenate(([NEVER], c))[cuts]
        current = int(np.searchsorted(cuts, np.count_nonzero(c >= t[i])))
        return base_cost + d_cost[cuts], base_correct + d_correct[cuts], thresholds, current

    def line_search(
        self, t: np.ndarray, i: int, need: int, lam: float | None
    ) -> tuple[bool, tuple[int, float, int]]:
        """Move t[i] to its best cut (constrained if lam is None, else cost - lam * correct
        is minimised); return whether it moved and the constrained key of the result."""
        total_cost, total_correct, thresholds, now = self._cuts(t, i)
        short = np.maximum(0, need - total_correct)
        if lam is None:
            best = int(np.lexsort((-total_correct, total_cost, short))[0])
            better = self.improves(
                (int(short[best]), float(total_cost[best]), -int(total_correct[best])),
                (int(short[now]), float(total_cost[now]), -int(total_correct[now])),
            )
        else:
            score = total_cost - lam * total_correct
            best = int(np.argmin(score))
            better = bool(score[best] < score[now] - self.tol)
        pick = best if better else now
        t[i] = thresholds[pick]
        return better, (int(short[pick]), float(total_cost[pick]), -int(total_correct[pick]))

    def descend(self, t: np.ndarray, need: int, lam: float | None) -> np.ndarray:
        """Coordinate descent from t until no threshold moves (returns a new array)."""
        t = t.copy()
        for _ in range(_MAX_SWEEPS):
            moved = False
            for i in range(self.s - 1):
                moved |= self.line_search(t, i, need, lam)[0]
            if not moved:
                break
        return t

    def pair_polish(self, t: np.ndarray, need: int) -> np.ndarray:
        """Escape the local optima of single moves: set t[i] to each of a grid of
        confidence quantiles and re-fit t[j] exactly, for every pair (i, j); repeat
        (with single-move descent after each gain) until no pair move helps."""
        grids = [
            np.append(np.unique(np.quantile(self.conf[:, i], np.linspace(0, 1, _PAIR_GRID))), NEVER)
            for i in range(self.s - 1)
        ]
        best = self.key(t, need)
        for _ in range(_MAX_SWEEPS):
            start = best
            for i, j in itertools.permutations(range(self.s - 1), 2):
                for value in grids[i]:
                    trial = t.copy()
                    trial[i] = value
                    _, key = self.line_search(trial, j, need, None)
                    if self.improves(key, best):
                        t, best = trial, key
            if not self.improves(best, start):
                break
            t = self.descend(t, need, None)
            best = self.key(t, need)
        return t


def required_correct(reference_accuracy: float, n: int, max_drop: float) -> int:
    """Fewest correct samples of n whose accuracy drop from the reference is <= max_drop
    (1e-9 of slack absorbs the rounding of accuracies that are counts over n)."""
    return max(0, math.ceil(n * (reference_accuracy - max_drop) - 1e-9))


def calibrate(
    conf: np.ndarray,
    correct: np.ndarray,
    cost: np.ndarray,
    *,
    max_drop: float,
    reference_accuracy: float | None = None,
    polish: bool = True,
) -> Calibration:
    """Thresholds minimising expected cost with accuracy >= reference - max_drop.

    `reference_accuracy` defaults to the best single state's accuracy on this split.
    ``polish=False`` skips the pair moves (several times faster, for screening).
    When no thresholds meet the constraint, the most accurate ones found are returned
    with ``feasible=False``.
    """
    conf, correct, cost = _checked(conf, correct, cost)
    if not 0.0 <= max_drop <= 1.0:
        raise InputError(f"must be in [0, 1], got {max_drop}", field="max_drop")
    n, s = conf.shape
    if reference_accuracy is None:
        reference_accuracy = float(correct.mean(axis=0).max())
    elif not 0.0 <= reference_accuracy <= 1.0:
        raise InputError(f"must be in [0, 1], got {reference_accuracy}", field="reference_accuracy")
    need = required_correct(reference_accuracy, n, max_drop)
    grid = _grid(conf)
    if grid is not None:  # few distinct scores: every threshold vector is tried
        best_t, feasible = _grid_best(conf, correct, cost, grid, need)
    else:
        search = Search(conf, correct, cost)
        starts = [np.full(s - 1, NEVER)]
        if s > 2:
            starts += _lagrangian_path(search, need)
        best_t = min(
            (search.descend(t, need, None) for t in starts), key=lambda t: search.key(t, need)
        )
        if s > 2 and polish:
            best_t = search.pair_polish(best_t, need)
        feasible = search.key(best_t, need)[0] == 0
    result = simulate(conf, correct, cost, best_t)
    return Calibration(
        thresholds=best_t,
        accuracy=result.accuracy,
        expected_cost=result.expected_cost,
        reference_accuracy=reference_accuracy,
        drop=reference_accuracy - result.accuracy,
        feasible=feasible,
        exact=s <= 2 or grid is not None,
    )


def _grid(conf: np.ndarray) -> np.ndarray | None:
    """Every threshold vector that makes a different policy when the exits' scores take
    few distinct values (agreement shares: at most j + 1 at kept state j), ``[C, S-1]``:
    each exit's distinct scores and "never", all combinations; None when there are more
    than `GRID_LIMIT`."""
    levels = [np.append(np.unique(conf[:, i]), NEVER) for i in range(conf.shape[1] - 1)]
    if not levels or math.prod(len(v) for v in levels) > GRID_LIMIT:
        return None
    return np.array(list(itertools.product(*levels)), dtype=np.float64)


def _grid_best(
    conf: np.ndarray, correct: np.ndarray, cost: np.ndarray, grid: np.ndarray, need: int
) -> tuple[np.ndarray, bool]:
    """The best of the `grid`'s threshold vectors by the constrained key (shortfall, then
    cost, then more correct; the first on a tie), all scored at once, and whether it
    meets the target."""
    n, s = conf.shape
    hit = conf[None, :, :-1] >= grid[:, None, :]  # [C, N, S-1]
    state = np.where(hit.any(axis=2), hit.argmax(axis=2), s - 1)
    total_correct = correct[np.arange(n), state].sum(axis=1)
    total_cost = cost[state].sum(axis=1)
    short = np.maximum(0, need - total_correct)
    tol = 1e-9 * max(1.0, float(cost.max()) * n)
    best = int(np.lexsort((-total_correct, np.round(total_cost / tol), short))[0])
    return grid[best].copy(), bool(short[best] == 0)


def _lagrangian_path(search: Search, need: int) -> list[np.ndarray]:
    """The cheapest few feasible points of cost + lam * errors, lam bisected."""
    lo, hi = 0.0, 2.0 * float(search.cost.max() - search.cost.min()) + 1e-12
    t = np.full(search.s - 1, NEVER)
    feasible: list[tuple[float, np.ndarray]] = []
    for _ in range(_LAMBDA_STEPS):
        lam = 0.5 * (lo + hi)
        t = search.descend(t, need, lam)
        total_cost, total_correct = search.totals(t)
        if total_correct >= need:
            feasible.append((total_cost, t))
            hi = lam
        else:
            lo = lam
    feasible.sort(key=lambda item: item[0])
    return [t for _, t in feasible[:_POLISHED]]
