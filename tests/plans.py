"""Plans for the cascade, `run`, gate and native-runner tests: `runner_plan` made by hand
(the runner block as asked, the record filler), `gate_plan` and `scheduler_plan` made by
the planner."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.evaluation import Evaluation
from edgeadapt.formats.plan import BudgetRow, Plan, SplitFigures
from edgeadapt.kernel_ref import predict_confidence
from edgeadapt.planning.planner import Outcomes, PlanOptions, make_plan
from edgeadapt.runtimes import get_runtime
from tests.synthetic import gate_evaluation


def runner_plan(
    bundle: Bundle,
    states: Sequence[int],
    thresholds: Sequence[float],
    cost_ms: Sequence[float],
    *,
    measure: str = "maxprob",
    budget: bool = True,
    table: Sequence[BudgetRow] | None = None,
    cost_stat: str = "p50",
) -> Plan:
    """A plan keeping `states` of `bundle`; `budget` adds a one-row budget table, or
    `table` the rows given."""
    fig = SplitFigures(n=10, accuracy=0.5, reference_accuracy=0.5, drop=0.0, cost_ms=1.0)
    rows = (BudgetRow(budget_ms=cost_ms[0], state=states[0], accuracy=0.5),) if budget else ()
    if table is not None:
        rows = tuple(table)
    return Plan(
        manifest_sha256=bundle.manifest_sha256,
        kind=bundle.kind,
        bundle_states=tuple(s.name for s in bundle.states),
        measure=measure,
        states=tuple(states),
        thresholds=tuple(thresholds),
        cost_ms=tuple(cost_ms),
        budget=rows,
        reference_state=states[-1],
        max_drop=0.01,
        calibration=fig,
        heldout=fig,
        drop_bound=0.01,
        delta=0.05,
        r_oracle=1.0,
        a_oracle=1.0,
        r_n=1.0,
        a_n=1.0,
        gap_closure=None,
        search_method="exhaustive",
        max_states=4,
        subsets_evaluated=1,
        cost_stat=cost_stat,
    )


def gate_plan(bundle: Bundle, outcomes: Outcomes) -> Plan:
    """The planner's gate plan for `bundle` (state costs 0.1 to 0.4 ms), calibrated
    empirically on half of `outcomes` (seed 1) to a drop of at most 0.05 and reported on
    the other half; it must have gates."""
    calib, held = outcomes.split(heldout=0.5, seed=1)
    plan = make_plan(
        calib,
        held,
        [0.1, 0.2, 0.3, 0.4],
        manifest_sha256=bundle.manifest_sha256,
        options=PlanOptions(max_drop=0.05, calibration="empirical", policy="gate"),
    )
    assert plan.gates
    return plan


def scheduler_plan(bundle_dir: Path, n: int) -> tuple[np.ndarray, Evaluation, Outcomes, Plan]:
    """A scheduler plan for a branches bundle of one input ``x`` [B, 1, 40] (the shipped
    family bundle declared as branches), made on its logits for `n` random inputs
    (seed 0) labelled by its last branch, on costs 0.1, 0.5 and 2 ms: (inputs,
    evaluation, outcomes, plan)."""
    bundle = load_bundle(bundle_dir)
    x = np.random.default_rng(0).normal(size=(n, 1, 40)).astype(np.float32)
    rt = get_runtime("onnxruntime", threads=1)
    logits = []
    for step in bundle.steps:
        s = rt.load(step.path)
        try:
            logits.append(np.ascontiguousarray(s.run({"x": x})[step.logits], dtype=np.float32))
        finally:
            s.close()
    labels = predict_confidence(logits[-1])[0]
    ev = gate_evaluation(labels, logits, [s.name for s in bundle.states])
    outcomes = Outcomes.from_evaluation(ev)
    calib, held = outcomes.split(0.5, 0)
    options = PlanOptions(policy="scheduler", calibration="empirical", max_drop=0.2)
    plan = make_plan(
        calib,
        held,
        [0.1, 0.5, 2.0],
        manifest_sha256=bundle.manifest_sha256,
        kind="branches",
        options=options,
    )
    return x, ev, outcomes, plan
