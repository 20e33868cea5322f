"""AdaInf's content-aware scheduler for branches bundles: the branch to run, per input.

A branches plan's budget table picks one branch by the budget alone. The scheduler
looks at the input first, through one kept branch's own answer (the plan's *first*,
chosen on the calibration split: the cheapest branch may be too weak to tell anything):
that branch always runs, and its logits' `SCHEDULER_FEATURES` (max-prob, margin,
negative entropy, as the decision kernel computes them) feed one logistic estimator per
kept branch from it on but the last, fitted on the calibration split to estimate
"answering with that branch is not a loss" (it is right, or the reference branch is
wrong too: the target the promise bounds, as for the gates of
`edgeadapt.planning.gates`). The scheduler then

- answers with the first branch when its own estimate clears its threshold;
- else runs the cheapest later kept branch whose estimate clears its threshold and
  whose tracked cost fits what is left of the budget;
- else the most accurate kept branch that fits (the last one without a budget);

(`edgeadapt.kernel_ref.scheduler_choice`, which the C++ kernel matches). Without a
budget that is the threshold policy on the estimates, with a sample paying the first
branch plus the branch it picks (`exit_costs`), so the thresholds are chosen by the
same Learn then Test as every other policy (`edgeadapt.planning.risk.risk_control`:
the path and test chosen on the calibration split, tested on the held-out split) and
the plan promises drop <= max_drop with probability >= 1 - delta on new data (without a
budget; under a budget the choice is the budget's, as the budget table's is). The plan
keeps the whole Pareto set and its budget table: under a budget that cannot pay the
first branch followed by the branch the table picks, that branch runs alone
(`edgeadapt.kernel_ref.table_first`): every choice the scheduler has there is a less
accurate branch. When nothing passes, or the scheduler costs the calibration split at
least the reference branch alone, the plan keeps the reference branch alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.plan import BudgetRow, Estimator, Plan, Promise
from edgeadapt.kernel_ref import (
    SCHEDULER_FEATURES,
    estimates,
    lookup,
    scheduler_choice,
    table_first,
)
from edgeadapt.planning.calibrate import CascadeResult, calibrate, simulate
from edgeadapt.planning.gates import fit_logistic
from edgeadapt.planning.outcomes import Outcomes
from edgeadapt.planning.risk import MARGIN, choose, risk_control


@dataclass(frozen=True)
class Scheduled:
    """The kept branches (bundle indices, by rising cost), the kept position of the one
    that always runs (`first`), the estimators (one per kept branch from it on but the
    last), the thresholds (one per kept branch but the last; ``inf``: never picked by
    its estimate, as the positions before `first` are), the promise tested on them
    (None: empirical) and why the plan keeps the reference branch alone (None: it does
    not)."""

    states: tuple[int, ...]
    first: int
    estimators: tuple[Estimator, ...]
    thresholds: np.ndarray
    promise: Promise | None
    fallback: str | None


def exit_costs(
    state_costs: np.ndarray, states: Sequence[int], hop_ms: float | None = None, first: int = 0
) -> np.ndarray:
    """What a sample answered by each kept branch pays: the branch at kept position
    `first` alone, or it and then a later one (each from the input); a branch before
    `first` (the budget table's pick under a small budget) alone; with a per-hop
    overhead, one per branch run."""
    own = np.asarray(state_costs, dtype=np.float64)[list(states)]
    pos = np.arange(len(own))
    cost = own + np.where(pos > first, own[first], 0.0)
    if hop_ms and len(own) > 1:
        cost = cost + hop_ms * np.where(pos > first, 2.0, 1.0)
    return cost


def features(split: Outcomes, first: int) -> np.ndarray:
    """The scheduler's float32 features ``[N, 3]`` at bundle state `first`."""
    inputs = split.gate_inputs
    if inputs is None:
        raise InputError(
            "the scheduler reads the first branch's maxprob, margin and entropy; these "
            "outcomes lack them (write the evaluation with edgeadapt evaluate)",
            field="gate_inputs",
        )
    return np.stack([getattr(inputs, name)[:, first] for name in SCHEDULER_FEATURES], axis=1)


def fit_estimators(
    x: np.ndarray, correct: np.ndarray, reference_correct: np.ndarray
) -> tuple[Estimator, ...]:
    """One estimator per kept branch but the last, fitted on the features `x` ``[N, 3]``
    to predict ``correct[:, j] | ~reference_correct`` (`correct` bool ``[N, m]``)."""
    ref = np.asarray(reference_correct, dtype=bool)
    out = []
    for j in range(correct.shape[1] - 1):
        w, b = fit_logistic(x, correct[:, j] | ~ref)
        out.append(Estimator(weights=tuple(float(v) for v in w), bias=b))
    return tuple(out)


def policy_scores(
    estimators: Sequence[Estimator], split: Outcomes, states: Sequence[int], first: int = 0
) -> np.ndarray:
    """``[N, m]``: the estimators' scores at the kept `states` from position `first` on,
    zeros before it (never picked there: their thresholds never clear) and in the last
    column (the last kept branch answers when no estimate clears), what the threshold
    machinery reads."""
    n = split.n
    out = np.zeros((n, len(states)), dtype=np.float32)
    if estimators:
        out[:, first:-1] = estimates(
            features(split, states[first]),
            [e.weights for e in estimators],
            [e.bias for e in estimators],
        )
    return out


def _alone(reference: int, promise: Promise | None, why: str) -> Scheduled:
    return Scheduled((reference,), 0, (), np.empty(0), promise, why)


def _first_branch(
    calib: Outcomes,
    kept: tuple[int, ...],
    state_costs: np.ndarray,
    hop_ms: float | None,
    *,
    max_drop: float,
    delta: float,
    promise: str,
    calibration: str,
    n_test: int,
) -> int:
    """The kept position of the first branch the calibration split predicts cheapest:
    each branch cheaper than the reference is tried as the one that always runs (the
    cheapest may be too weak to tell anything about a sample), its estimators fitted and
    its thresholds' cost predicted on `calib` alone (`risk.choose`'s cross-fitted
    prediction, or the empirical thresholds' cost); an earlier start is kept unless a
    later one predicts `MARGIN` less. Reads `calib` only, so the held-out test stays one
    test."""
    ref = calib.correct[:, kept[-1]]
    best: tuple[float, int] | None = None
    for i in range(len(kept) - 1):
        sub = kept[i:]
        cols = list(sub)
        est = fit_estimators(features(calib, sub[0]), calib.correct[:, cols], ref)
        conf = policy_scores(est, calib, sub)
        cost = exit_costs(state_costs, sub, hop_ms)
        if calibration == "risk":
            predicted = choose(
                (conf, calib.correct[:, cols], ref),
                cost,
                max_drop=max_drop,
                delta=delta,
                promise=promise,
                n_test=n_test,
            ).predicted_cost
        else:
            predicted = calibrate(
                conf, calib.correct[:, cols], cost, max_drop=max_drop, reference_accuracy=ref.mean()
            ).expected_cost
        if best is None or predicted < best[0] * (1.0 - MARGIN):
            best = (predicted, i)
    assert best is not None
    return best[1]


def schedule(
    calib: Outcomes,
    heldout: Outcomes,
    states: Sequence[int],
    state_costs: np.ndarray,
    reference: int,
    *,
    max_drop: float,
    delta: float,
    promise: str,
    calibration: str,
    hop_ms: float | None = None,
) -> Scheduled:
    """Fit the scheduler over the kept branches `states` on `calib` and choose its
    thresholds (module docstring): by Learn then Test with `heldout` as the testing
    split (``calibration="risk"``), or the cheapest meeting max_drop on `calib`
    (``"empirical"``). The kept branches end at the `reference` one; the scheduler
    starts at the one `_first_branch` picks, the cheaper ones stay for the budget
    table."""
    kept = (*(s for s in states if state_costs[s] < state_costs[reference]), reference)
    if len(kept) == 1:
        return Scheduled(kept, 0, (), np.empty(0), None, None)
    first = _first_branch(
        calib,
        kept,
        state_costs,
        hop_ms,
        max_drop=max_drop,
        delta=delta,
        promise=promise,
        calibration=calibration,
        n_test=heldout.n,
    )
    sub = kept[first:]
    cols = list(sub)
    ref_c, ref_h = calib.correct[:, reference], heldout.correct[:, reference]
    estimators = fit_estimators(features(calib, sub[0]), calib.correct[:, cols], ref_c)
    cost = exit_costs(state_costs, sub, hop_ms)
    conf_c = policy_scores(estimators, calib, sub)
    tested: Promise | None = None
    if calibration == "risk":
        controlled = risk_control(
            (conf_c, calib.correct[:, cols], ref_c),
            (policy_scores(estimators, heldout, sub), heldout.correct[:, cols], ref_h),
            cost,
            max_drop=max_drop,
            delta=delta,
            promise=promise,
        )
        tested, thresholds = controlled.promise, controlled.thresholds
        if not tested.holds:
            return _alone(reference, tested, tested.describe())
    else:
        thresholds = calibrate(
            conf_c,
            calib.correct[:, cols],
            cost,
            max_drop=max_drop,
            reference_accuracy=float(ref_c.mean()),
        ).thresholds
    spent = simulate(conf_c, calib.correct[:, cols], cost, thresholds).expected_cost
    alone = float(state_costs[reference])
    if spent >= alone:
        why = (
            f"the scheduler costs {spent:.4g} ms per sample on the calibration split, no "
            f"less than the reference branch alone ({alone:.4g} ms); the plan keeps it alone"
        )
        return _alone(reference, tested, why)
    every = np.concatenate([np.full(first, math.inf), np.asarray(thresholds, dtype=np.float64)])
    return Scheduled(kept, first, estimators, every, tested, None)


def simulate_scheduler(
    plan: Plan, split: Outcomes, budget_ms: float | None = None
) -> CascadeResult:
    """A scheduler `plan` run on `split` (outcomes of every bundle state, in bundle order)
    on the plan's costs: accuracy, mean cost and the kept position answering each
    sample. With `budget_ms`, as `AdaptiveModel` runs it: the budget table's pick alone
    when the budget cannot pay the first branch followed by that pick
    (`edgeadapt.kernel_ref.table_first`), else the scheduler, the budget left once the
    first branch ran (and the hop overheads) bounding the second branch."""
    if plan.scheduler is None:
        raise InputError(f"a {plan.policy} plan has no scheduler", field="policy")
    states, first = plan.states, plan.scheduler_first
    cols = list(states)
    rows = np.arange(split.n)
    hop = plan.hop_overhead_ms or 0.0
    available = math.inf
    if budget_ms is not None:
        slot = states.index(budget_state(plan.budget, budget_ms))
        if table_first(plan.cost_ms, first, slot, budget_ms, hop):
            return CascadeResult(
                accuracy=float(split.correct[:, states[slot]].mean()),
                expected_cost=float(plan.cost_ms[slot] + (hop if len(states) > 1 else 0.0)),
                exit_state=np.full(split.n, slot, dtype=np.int64),
            )
        available = budget_ms - plan.cost_ms[first] - 2.0 * hop
    cost = exit_costs(np.asarray(plan.cost_ms), range(len(states)), plan.hop_overhead_ms, first)
    scores = policy_scores(plan.scheduler, split, states, first)[:, first:-1]
    choice = first + scheduler_choice(
        scores, plan.thresholds[first:], plan.cost_ms[first:], available
    )
    return CascadeResult(
        accuracy=float(split.correct[:, cols][rows, choice].mean()),
        expected_cost=float(cost[choice].mean()),
        exit_state=choice,
    )


def budget_state(budget: Sequence[BudgetRow], budget_ms: float) -> int:
    """Bundle state to run under `budget_ms`: the kernel's lookup over the table's rows
    (`edgeadapt.kernel_ref.lookup`), the first row's state below every row."""
    row = lookup([r.budget_ms for r in budget], [r.accuracy for r in budget], budget_ms)
    return budget[0].state if row is None else budget[row].state


@dataclass(frozen=True)
class BudgetPoint:
    """At a budget of `budget_ms`: the budget table's branch (bundle index), its accuracy
    and cost, and the scheduler's accuracy and mean cost, on one split."""

    budget_ms: float
    table_state: int
    table_accuracy: float
    table_cost_ms: float
    scheduler_accuracy: float
    scheduler_cost_ms: float


def budgets(plan: Plan, table: Sequence[BudgetRow] | None = None) -> tuple[float, ...]:
    """The budgets worth comparing at: each row's of the budget `table` (default the
    plan's own), and each the scheduler needs to afford a kept branch after the first
    (ms, rising)."""
    hop, first = 2.0 * (plan.hop_overhead_ms or 0.0), plan.scheduler_first
    rows = {r.budget_ms for r in (plan.budget if table is None else table)}
    pairs = {plan.cost_ms[first] + c + hop for c in plan.cost_ms[first + 1 :]}
    return tuple(sorted(rows | pairs))


def budget_comparison(
    plan: Plan,
    split: Outcomes,
    at: Sequence[float] | None = None,
    table: Sequence[BudgetRow] | None = None,
) -> tuple[BudgetPoint, ...]:
    """The scheduler `plan` against a budget table (AdaInf's choice by the budget alone:
    `table`, default the plan's own over its kept branches; a branches plan of the
    threshold policy holds every Pareto branch's) on `split`, at the budgets `at`
    (default `budgets`): accuracy and mean cost (a row's cost is its budget)."""
    rows = plan.budget if table is None else tuple(table)
    out = []
    for b in budgets(plan, rows) if at is None else at:
        state = budget_state(rows, b)
        run = simulate_scheduler(plan, split, b)
        out.append(
            BudgetPoint(
                budget_ms=float(b),
                table_state=state,
                table_accuracy=float(split.correct[:, state].mean()),
                table_cost_ms=float(next(r.budget_ms for r in rows if r.state == state)),
                scheduler_accuracy=run.accuracy,
                scheduler_cost_ms=run.expected_cost,
            )
        )
    return tuple(out)


__all__ = [
    "BudgetPoint",
    "Scheduled",
    "budget_comparison",
    "budget_state",
    "budgets",
    "exit_costs",
    "features",
    "fit_estimators",
    "policy_scores",
    "schedule",
    "simulate_scheduler",
]
