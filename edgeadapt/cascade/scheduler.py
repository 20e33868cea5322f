"""A scheduler plan along one `AdaptiveModel.predict` call (branches bundles).

The first kept branch runs on every row; the kernel's `edgeadapt.kernel.schedule` reads
its logits and picks, per row, the kept branch that answers (the rule of
`edgeadapt.kernel_ref.scheduler_choice`, on the policy's tracked costs and what is left
of the budget once the first branch ran); then each other picked branch runs once, from
the input, on the rows that picked it. Rows answered by the first branch pay nothing
more. A row the budget moved off the branch it would have picked without one is marked
``budget_exit``. Its answers are what `edgeadapt.planning.scheduler.simulate_scheduler`
computes from an evaluation of the same inputs (given the same costs and budget).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeadapt.formats.plan import Plan
from edgeadapt.formats.stepcheck import check_logits, check_rows
from edgeadapt.kernel import Estimator, Policy, decide, schedule

if TYPE_CHECKING:
    from edgeadapt.runtimes import Session


class SchedulerRun:
    """A scheduler plan's estimators and thresholds, ready for the kernel."""

    def __init__(self, plan: Plan) -> None:
        if plan.scheduler is None:
            raise ValueError(f"a {plan.policy} plan has no scheduler")
        self.estimators = [Estimator(list(e.weights), e.bias) for e in plan.scheduler]
        self.first = plan.scheduler_first
        self.thresholds = list(plan.thresholds[self.first :])
        self.measure = plan.measure

    def run(
        self,
        route: Sequence[Any],
        inputs: Mapping[str, np.ndarray],
        policy: Policy,
        num_classes: int,
        budget: tuple[float, float] | None,
        start: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[float], list[int]]:
        """(pred, conf, exit_state, budget_exit, step_ms, step_rows) of the batch
        `inputs` over the kept branches' resolved hops `route` (one call each) from the
        plan's first scheduled position on.
        `budget`: the budget and the per-hop overhead (None: no budget); `start` the
        call's start (ns) the budget counts from."""
        n = next(iter(inputs.values())).shape[0]
        route = route[self.first :]
        logits, ms = _run(route[0], inputs, n, num_classes)
        policy.observe(route[0].slot, ms)
        steps, rows_run = [ms], [n]
        pred, conf = _answer(logits, self.measure)
        costs = [policy.predicted_ms(hop.slot) for hop in route]
        choice, budget_exit = self._choose(logits, costs, budget, start)
        for j in range(1, len(route)):
            rows = np.flatnonzero(choice == j)
            if rows.size == 0:
                continue
            x = {name: a[rows] for name, a in inputs.items()}
            out, ms = _run(route[j], x, rows.size, num_classes)
            policy.observe(route[j].slot, ms)
            steps.append(ms)
            rows_run.append(int(rows.size))
            pred[rows], conf[rows] = _answer(out, self.measure)
        exit_state = np.asarray([hop.state for hop in route], dtype=np.int64)[choice]
        return pred, conf, exit_state, budget_exit, steps, rows_run

    def _choose(
        self,
        logits: np.ndarray,
        costs: list[float],
        budget: tuple[float, float] | None,
        start: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each row's kept position, and whether the budget moved it."""
        est, t = self.estimators, self.thresholds
        free = schedule(logits, est, t, costs, math.inf)[2]
        if budget is None:
            return free, np.zeros(free.shape[0], dtype=np.bool_)
        spent = (perf_counter_ns() - start) / 1e6 + budget[1]
        choice = schedule(logits, est, t, costs, budget[0] - spent)[2]
        return choice, choice != free


def _run(
    hop: Any, inputs: Mapping[str, np.ndarray], n: int, num_classes: int
) -> tuple[np.ndarray, float]:
    """One branch's call on `inputs` (`n` rows): its checked, contiguous logits and ms."""
    ((session, feeds),) = hop.calls
    session_: Session = session
    out = session_.run({name: inputs[name] for name, _ in feeds}, check=False)
    check_rows(out, n, session_.path)
    logits = out[hop.logits]
    check_logits(logits, n, num_classes, session_.path, hop.logits)
    return np.ascontiguousarray(logits), session_.last_run_ns / 1e6


def _answer(logits: np.ndarray, measure: str) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's (pred, conf) of every row of `logits`."""
    pred, conf = decide(logits, math.inf, measure)[:2]
    return pred, conf
