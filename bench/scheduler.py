"""AdaInf's content-aware scheduler against the budget table and the cascade over branches.

The shipped demo bundle mnist1d-resnet (a compute-bound residual 1D CNN trained on
MNIST-1D) is merged back into its whole model (`exporters.compose.whole_model`), and
`edgeadapt export branches` writes its Pareto execution branches, scored on the
MNIST-1D calibration split (seed 42). The bundle is profiled (ONNX Runtime, 1 thread,
batch 1, p50) and evaluated on the test split, and two plans are made from the same
evaluation and costs (`plan_bundle`: half calibration, half held out):

- the budget table alone (AdaInf: the most accurate branch whose cost fits the budget;
  `branches="table"`),
- the cascade over branches (threshold policy, `branches="cascade"`: the cheapest kept
  branch first, each deeper one from the input while the confidence is below its
  threshold; under a budget its own table picks among its kept branches),
- the scheduler (`--policy scheduler`: the cheapest kept branch runs, its answer picks
  the branch; risk-controlled, drop <= --max-drop w.p. >= 95%).

At each budget (10% above the table's rows and above what the scheduler needs to
afford each branch after the first, plus none) it prints the table's and the
scheduler's held-out accuracy and mean cost as simulated on the plan costs (the
cascade's without a budget), then all three as measured: `AdaptiveModel.predict` one held-out
sample at a time under that budget (accuracy, mean wall time per call, share of calls
over the budget). About a minute on 2 cores.

    python bench/scheduler.py [--max-drop 0.01] [--max-branches 8]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from time import perf_counter_ns

import numpy as np
import onnx

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.data.mnist1d import DEFAULT_SEED, mnist1d_splits
from edgeadapt.exporters.branches import export_branches
from edgeadapt.exporters.compose import whole_model
from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.plan import Plan
from edgeadapt.formats.profile import Profile
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.planning.outcomes import Outcomes
from edgeadapt.planning.planner import PlanOptions, plan_bundle, profile_costs, simulate_plan
from edgeadapt.planning.scheduler import budget_comparison, budgets, simulate_scheduler

DEMO = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-resnet"
HELDOUT, SEED = 0.5, 0  # plan_bundle's default split


def heldout_rows(n: int) -> np.ndarray:
    """The rows `Outcomes.split(HELDOUT, SEED)` holds out of `n` (its own rule)."""
    rows = np.random.default_rng(SEED).permutation(n)
    return np.sort(rows[n - round(HELDOUT * n) :])


def measured(
    bundle: Bundle, plan: Plan, profile: Profile, x: np.ndarray, y: np.ndarray, budget: float
) -> tuple[float, float, float]:
    """(accuracy, mean ms per call, share of calls over `budget`) of `plan` run one
    sample at a time (budget inf: no budget)."""
    b = None if math.isinf(budget) else budget
    lat = np.empty(len(x))
    pred = np.empty(len(x), dtype=np.int64)
    with AdaptiveModel.load(
        bundle, plan=plan, profile=profile, runtime_options={"threads": 1}, warmup=5
    ) as m:
        for i in range(len(x)):
            t = perf_counter_ns()
            out = m.predict(x[i : i + 1], budget_ms=b)
            lat[i] = (perf_counter_ns() - t) / 1e6
            pred[i] = out.pred[0]
    return float((pred == y).mean()), float(lat.mean()), float((lat > budget).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-drop", type=float, default=0.01, help="the scheduler's promise")
    ap.add_argument("--max-branches", type=int, default=8, help="branches the bundle keeps")
    args = ap.parse_args()
    try:
        core: int | None = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        core = None
    tmp = Path(tempfile.mkdtemp(prefix="edgeadapt-scheduler-"))
    onnx.save_model(whole_model(load_bundle(DEMO)), str(tmp / "net.onnx"))
    splits = mnist1d_splits(DEFAULT_SEED)
    np.savez(tmp / "calib.npz", x=splits.calibration.x, y=splits.calibration.y)
    bundle = export_branches(
        tmp / "net.onnx",
        tmp / "bundle",
        calibration=tmp / "calib.npz",
        max_branches=args.max_branches,
    )
    profile = profile_bundle(bundle, threads=1, timing=TimingOptions(warmup=20, iters=200))
    ev = evaluate_bundle(bundle, splits.test.x, splits.test.y)
    costs = profile_costs(profile, bundle)
    table = plan_bundle(bundle, ev, costs, PlanOptions(max_drop=args.max_drop, branches="table"))
    cascade = plan_bundle(
        bundle, ev, costs, PlanOptions(max_drop=args.max_drop, branches="cascade")
    )
    sched = plan_bundle(bundle, ev, costs, PlanOptions(policy="scheduler", max_drop=args.max_drop))
    held = Outcomes.from_evaluation(ev).split(HELDOUT, SEED)[1]
    names = [s.name for s in bundle.states]
    print(
        f"mnist1d-resnet whole model -> {len(bundle.states)} Pareto branches "
        f"({bundle.extra['branches']['enumeration']}); onnxruntime 1 thread, batch 1, "
        f"core {core}; {held.n} held-out samples"
    )
    for name, ms, acc in zip(names, costs.state_ms, held.correct.mean(axis=0), strict=True):
        print(f"  {name:<14} p50 {ms:.4f} ms  held-out acc {100 * acc:.2f}%")
    print(f"budget table: {[(round(r.budget_ms, 4), names[r.state]) for r in table.budget]}")
    print(f"scheduler: kept {list(sched.state_names)}; {sched.statement}")
    free_cascade = simulate_plan(cascade, held)
    print(
        f"cascade: kept {list(cascade.state_names)}; no budget: held-out acc "
        f"{100 * free_cascade.accuracy:.2f}% at {free_cascade.expected_cost:.4f} ms; "
        f"{cascade.statement}"
    )
    if sched.scheduler:
        free = simulate_scheduler(sched, held)
        share = np.bincount(free.exit_state, minlength=len(sched.states)) / held.n
        print(
            "  no budget: answered by "
            + ", ".join(
                f"{n} {100 * s:.1f}%" for n, s in zip(sched.state_names, share, strict=True)
            )
        )
    rows = heldout_rows(len(splits.test.y))
    x, y = splits.test.x[rows], splits.test.y[rows]
    print(
        f"{'budget ms':>9} | {'table acc':>9} {'cost':>7} | {'sched acc':>9} {'cost':>7} |"
        f" measured: {'table acc':>9} {'ms':>6} {'miss':>5} | {'sched acc':>9} {'ms':>6} {'miss':>5}"
        f" | {'casc acc':>9} {'ms':>6} {'miss':>5}"
    )
    # 10% above each budget that moves a choice: a budget exactly at a cost is a coin toss
    at = [1.1 * b for b in budgets(sched, table.budget)]
    points = budget_comparison(sched, held, at, table.budget)
    for p in (*points, *budget_comparison(sched, held, [math.inf], table.budget)):
        t_acc, t_ms, t_miss = measured(bundle, table, profile, x, y, p.budget_ms)
        s_acc, s_ms, s_miss = measured(bundle, sched, profile, x, y, p.budget_ms)
        c_acc, c_ms, c_miss = measured(bundle, cascade, profile, x, y, p.budget_ms)
        print(
            f"{p.budget_ms:9.4f} | {100 * p.table_accuracy:8.2f}% {p.table_cost_ms:7.4f} | "
            f"{100 * p.scheduler_accuracy:8.2f}% {p.scheduler_cost_ms:7.4f} |"
            f"           {100 * t_acc:8.2f}% {t_ms:6.4f} {100 * t_miss:4.1f}% |"
            f" {100 * s_acc:8.2f}% {s_ms:6.4f} {100 * s_miss:4.1f}%"
            f" | {100 * c_acc:8.2f}% {c_ms:6.4f} {100 * c_miss:4.1f}%"
        )


if __name__ == "__main__":
    main()
