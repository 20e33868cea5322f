"""Cascades over execution branches against the budget table, measured on this device.

The demo's residual multi-exit CNN (`mnist1d-resnet`, 128 channels, trained on MNIST-1D)
as one plain network (`exporters.compose.whole_model`: every step chained, the last head
only) is cut into execution branches (`export branches`, scored on 1000 calibration
samples), profiled (ONNX Runtime, 1 thread, batch 1, pinned to one core), evaluated on
MNIST-1D's calibration split and planned (`plan_bundle`: half to calibrate, half to test
the promise) for each policy twice: `--branches table` (the Pareto branches; without a
budget the most accurate alone) and `--branches cascade` (cheapest kept branch first,
the policy decides whether to run a deeper one; each from the input), at the same
promise. Then both plans run the test split one sample at a time in `AdaptiveModel`
(the cascade at batch 1 through the native engine), in alternating rounds, timing
each call's wall time; the accuracy is on those test samples, which no plan saw.

    python bench/branches_cascade.py [--samples 2500] [--max-drop 0.005]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from time import perf_counter_ns

import numpy as np
import onnx

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.data.mnist1d import DEFAULT_SEED, mnist1d_splits
from edgeadapt.exporters.branches import export_branches
from edgeadapt.exporters.compose import whole_model
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.plan import Plan
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.planning.planner import PlanOptions, plan_bundle, profile_costs

_ROUND = 100  # samples per round before the other plan's turn
RESNET = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-resnet"


def _measure(models: dict[str, AdaptiveModel], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each model's wall time (ms) and answer per sample, in alternating rounds."""
    out = {k: np.empty((2, len(x))) for k in models}
    for start in range(0, len(x), _ROUND):
        for name, m in models.items():
            for i in range(start, min(start + _ROUND, len(x))):
                t = perf_counter_ns()
                p = m.predict(x[i : i + 1])
                out[name][0, i] = (perf_counter_ns() - t) / 1e6
                out[name][1, i] = p.pred[0]
    return out


def _row(label: str, plan: Plan, wall: np.ndarray, pred: np.ndarray, y: np.ndarray) -> str:
    names = ", ".join(plan.state_names)
    return (
        f"  {label:<8} {plan.heldout.cost_ms:9.4f} {100 * plan.heldout.accuracy:8.2f}% "
        f"{wall.mean():9.4f} {np.percentile(wall, 50):8.4f} {np.percentile(wall, 90):8.4f} "
        f"{100 * (pred == y).mean():8.2f}%  {names}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2500, help="test samples run per plan")
    ap.add_argument("--max-drop", type=float, default=0.005, help="the promised accuracy drop")
    args = ap.parse_args()
    try:
        core: int | None = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        core = None
    tmp = Path(tempfile.mkdtemp(prefix="edgeadapt-bcascade-"))
    onnx.save(whole_model(load_bundle(RESNET)), tmp / "net.onnx")
    splits = mnist1d_splits(DEFAULT_SEED)
    cal = splits.calibration
    np.savez(tmp / "calib.npz", x=cal.x[:1000], y=cal.y[:1000])
    bundle = export_branches(tmp / "net.onnx", tmp / "bundle", calibration=tmp / "calib.npz")
    profile = profile_bundle(bundle, threads=1, timing=TimingOptions(warmup=20, iters=200))
    evaluation = evaluate_bundle(bundle, cal.x, cal.y, threads=1)
    costs = profile_costs(profile, bundle)
    acc = (evaluation.pred == cal.y[:, None]).mean(axis=0)
    print(
        f"mnist1d-resnet as one network: {bundle.extra['branches']['enumeration']}; "
        f"{len(bundle.states)} branches; onnxruntime 1 thread, batch 1, core {core}; "
        f"hop overhead {costs.hop_overhead_ms:.4f} ms; static {costs.static_ms:.4f} ms"
    )
    for s, a, ms in zip(bundle.states, acc, costs.state_ms, strict=True):
        print(f"  {s.name:<16} {s.flops / 1e6:6.2f} MFLOPs  p50 {ms:.4f} ms  acc {100 * a:.2f}%")
    x, y = splits.test.x[: args.samples], splits.test.y[: args.samples]
    print(
        f"promise: net drop <= {100 * args.max_drop:.2f} points at 95%; planned on "
        f"{len(cal.y)} calibration samples (half to test the promise), run on {len(y)} test samples"
    )
    print(
        f"  {'plan':<8} {'plan ms':>9} {'plan acc':>9} {'mean ms':>9} {'p50 ms':>8} "
        f"{'p90 ms':>8} {'test acc':>9}  branches"
    )
    for policy in ("threshold", "gate", "agreement"):
        options = PlanOptions(max_drop=args.max_drop, policy=policy)
        plans = {
            run: plan_bundle(bundle, evaluation, costs, replace(options, branches=run))
            for run in ("table", "cascade")
        }
        auto = plan_bundle(bundle, evaluation, costs, options)
        models = {
            k: AdaptiveModel.load(bundle, plan=p, runtime_options={"threads": 1}, warmup=20)
            for k, p in plans.items()
        }
        got = _measure(models, x)
        for m in models.values():
            m.close()
        print(f"{policy}: auto keeps the {auto.branches.run if auto.branches else '?'}")
        for k, p in plans.items():
            print(_row(k, p, got[k][0], got[k][1], y))


if __name__ == "__main__":
    main()
