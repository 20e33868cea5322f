"""The policy subset the planner keeps: the cheapest subset of states whose calibrated
thresholds meet an accuracy target.

`search_subsets`: the cheapest subset of at most
`max_states` states whose calibrated thresholds meet an accuracy target. Every subset is
a candidate; they are visited in the order of a lower bound on the expected cost any
thresholds could reach (each sample pays at least the first state's cost; the `need`
correct samples pay at least their cheapest correct state), subsets whose oracle
accuracy misses the target are dropped, and the search stops once the bound exceeds the
cheapest calibrated cost found. Candidates are screened with single-move calibration;
the cheapest few are calibrated fully (`edgeadapt.planning.calibrate`). Ties go to fewer states.
The scores thresholded are each state's confidences, or a policy's scores of a subset
(`Scores`: the agreement of the states run so far depends on which ones run).
`subset_costs` is what a sample exiting at each kept state pays.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeadapt.formats.chains import Layout, kept_costs
from edgeadapt.planning.calibrate import Calibration, calibrate, required_correct

__all__ = ["CalibratedSubset", "search_subsets", "subset_costs"]

_FINALISTS = 3  # screened subsets that get the full (pair-move) calibration
_TOL = 1e-9

#: A policy's scores of the states of a subset, ``[N, len(states)]``.
Scores = Callable[[tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class CalibratedSubset:
    """The policy subset a search keeps (bundle state indices), its calibration, and how
    many subsets were calibrated to find it."""

    states: tuple[int, ...]
    calibration: Calibration
    evaluated: int


def subset_costs(state_costs: np.ndarray, states: Sequence[int], kind: Layout) -> np.ndarray:
    """What a sample exiting at each kept state pays (`edgeadapt.formats.chains.kept_costs`,
    the chain rule): an early-exit state's own cost (it already holds steps 0..i), for
    an ensemble the sum of the kept members' costs up to it, for a bundle of several
    chains (`kind` its chains) the deepest kept state's cost of each chain run so far."""
    return kept_costs(state_costs, states, kind)


def _calibrate(
    scores: Scores,
    correct: np.ndarray,
    state_costs: np.ndarray,
    states: tuple[int, ...],
    kind: Layout,
    max_drop: float,
    reference_accuracy: float,
    polish: bool,
) -> Calibration:
    cols = list(states)
    return calibrate(
        scores(states),
        correct[:, cols],
        subset_costs(state_costs, states, kind),
        max_drop=max_drop,
        reference_accuracy=reference_accuracy,
        polish=polish,
    )


def search_subsets(
    conf: np.ndarray | Scores,
    correct: np.ndarray,
    state_costs: np.ndarray,
    *,
    kind: Layout,
    max_states: int,
    max_drop: float,
    reference_accuracy: float,
    last: int | None = None,
) -> CalibratedSubset:
    """The cheapest calibrated subset of at most `max_states` states meeting the target
    (module docstring), on a calibration split's confidences ``[N, S]`` (or the `Scores`
    of each subset) and correctness ``[N, S]``; with `last`, only subsets ending at that
    state (the others' before it, then it)."""
    scores = conf if callable(conf) else (lambda states: conf[:, list(states)])
    n, n_states = correct.shape
    need = required_correct(reference_accuracy, n, max_drop)
    bounds = []
    pool = range(n_states) if last is None else range(last)
    tail = () if last is None else (last,)
    for k in range(1, min(max_states, n_states) + 1):
        for head in itertools.combinations(pool, k - len(tail)):
            states = (*head, *tail)
            sub = correct[:, states]
            if np.count_nonzero(sub.any(axis=1)) < need:
                continue  # even the oracle on these states misses the target
            costs = subset_costs(state_costs, states, kind)
            cheapest = np.where(sub, costs, np.inf).min(axis=1)
            paid = np.partition(cheapest, need - 1)[:need].sum() if need else 0.0
            bound = (paid + (n - need) * costs[0]) / n
            bounds.append((bound, k, states))
    bounds.sort()

    screened: list[tuple[float, int, tuple[int, ...]]] = []
    best = math.inf
    evaluated = 0
    args = (kind, max_drop, reference_accuracy)
    for bound, k, states in bounds:
        if bound > best + _TOL:
            break
        evaluated += 1
        cal = _calibrate(scores, correct, state_costs, states, *args, False)
        if cal.feasible:
            screened.append((cal.expected_cost, k, states))
            best = min(best, cal.expected_cost)
    screened.sort()
    finalists = []
    for _, _, states in screened[:_FINALISTS]:
        cal = _calibrate(scores, correct, state_costs, states, *args, True)
        finalists.append((round(cal.expected_cost / _TOL) * _TOL, len(states), states, cal))
    _, _, states, cal = min(finalists, key=lambda f: f[:3])
    return CalibratedSubset(states=states, calibration=cal, evaluated=evaluated)
