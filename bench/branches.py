"""AdaInf execution branches on this device: accuracy and measured latency of every
branch, the Pareto set the plan keeps, and a budget sweep with and without a
CPU-hogging neighbour (deadline-miss rate and accuracy per budget).

A residual 1D CNN (stem, four identity residual blocks, pooling, linear) is trained here
on MNIST-1D (seed 42, about 20 s), exported to ONNX, and `edgeadapt export branches`
scores all 16 skip sets of its four blocks on the calibration split. The branches on the
accuracy/FLOPs front become a `branches` bundle; it is profiled (ONNX Runtime, 1 thread,
batch 1), evaluated, and planned (`plan_bundle`, kind branches) so that its budget
table maps a budget to the most accurate branch that fits. Then `predict(x,
budget_ms=B)` runs the test split one sample at a time for budgets between the
branches' costs: the table picks a branch by the EWMA-corrected costs, so under
contention (a neighbour spinning on the same core, `deadline.py`'s) it moves to shallower
branches. A call misses when its wall time exceeds B. Needs the torch extra.

With ``--model resnet18`` the network is `edgeadapt.zoo`'s ResNet-18 (torchvision's
layers, random weights, BatchNorm statistics re-estimated) at 224 px: its five identity
blocks (a stage's first block changes shape and is never skipped) give 32 skip sets,
scored against the full model's own top-1 class on random images, so the accuracies
read as agreement with the full model (the weights are random; costs do not depend on
them). Needs the torch extra; a few minutes on 2 cores.

    python bench/branches.py [--samples 1000] [--percentile p90] [--model resnet18]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import numpy as np

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.data.mnist1d import DEFAULT_SEED, mnist1d_splits
from edgeadapt.exporters.branches import export_branches
from edgeadapt.formats.bundle import Bundle
from edgeadapt.formats.plan import Plan
from edgeadapt.formats.profile import Profile
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.planning.planner import PlanCosts, plan_bundle, profile_costs


def _hog():  # deadline.py's neighbour; bench/ is not a package
    spec = importlib.util.spec_from_file_location(
        "deadline", Path(__file__).with_name("deadline.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.hog


def resnet18_data(tmp: Path, n_calib: int, n_test: int) -> Any:
    """zoo's ResNet-18 exported to tmp/net.onnx, and random images labelled by it."""
    from types import SimpleNamespace

    from edgeadapt import zoo

    spec = zoo.get("resnet18")
    zoo.export(spec, zoo.build(spec), tmp / "net.onnx")
    split = {}
    for name, n, seed in (("calibration", n_calib, 1), ("test", n_test, 2)):
        x = zoo.random_inputs(spec, n, seed=seed)[spec.input_names[0]]
        y = zoo.teacher_labels(tmp / "net.onnx", {spec.input_names[0]: x})
        split[name] = SimpleNamespace(x=x, y=y)
    return SimpleNamespace(**split)


def sweep(bundle, plan, profile, x, y, budget: float) -> dict[str, float]:
    with AdaptiveModel.load(
        bundle, plan=plan, profile=profile, runtime_options={"threads": 1}, warmup=5
    ) as m:
        lat = np.empty(len(x))
        pred = np.empty(len(x), dtype=np.int64)
        state = np.empty(len(x), dtype=np.int64)
        for i in range(len(x)):
            t = perf_counter_ns()
            out = m.predict(x[i : i + 1], budget_ms=budget)
            lat[i] = (perf_counter_ns() - t) / 1e6
            pred[i], state[i] = out.pred[0], out.exit_state[0]
    return {
        "miss": float((lat > budget).mean()),
        "acc": float((pred == y).mean()),
        "state": float(state.mean()),
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000, help="test samples per condition")
    ap.add_argument("--percentile", default="p90", help="cost percentile the plan uses")
    ap.add_argument("--model", choices=["rescnn", "resnet18"], default="rescnn", help="the network")
    ap.add_argument("--calibration", type=int, default=160, help="resnet18: calibration images")
    args = ap.parse_args()
    try:
        core: int | None = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        core = None

    tmp = Path(tempfile.mkdtemp(prefix="edgeadapt-branches-"))
    splits, title = _network(args, tmp)
    np.savez(tmp / "calib.npz", x=splits.calibration.x, y=splits.calibration.y)
    bundle = export_branches(tmp / "net.onnx", tmp / "bundle", calibration=tmp / "calib.npz")
    profile = profile_bundle(bundle, threads=1, timing=TimingOptions(warmup=20, iters=200))
    ev_cal = evaluate_bundle(bundle, splits.calibration.x, splits.calibration.y)
    ev_test = evaluate_bundle(bundle, splits.test.x, splits.test.y)
    costs = profile_costs(profile, bundle, stat=args.percentile)
    plan = plan_bundle(
        bundle, ev_cal, PlanCosts(costs.state_ms, static_ms=costs.static_ms, stat=args.percentile)
    )
    p50 = profile_costs(profile, bundle).state_ms
    test_acc = (ev_test.pred == splits.test.y[:, None]).mean(axis=0)
    info = bundle.extra["branches"]
    print(
        f"{title}: {info['enumeration']}; {len(bundle.states)} Pareto branches "
        f"kept (FLOPs vs calibration accuracy); onnxruntime 1 thread, batch 1, core {core}"
    )
    print(f"{'branch':<14} {'MFLOPs':>7} {'calib acc':>9} {'test acc':>8} {'p50 ms':>7}")
    for s, st, acc_t, ms in zip(bundle.states, info["states"], test_acc, p50, strict=True):
        print(
            f"{s.name:<14} {s.flops / 1e6:7.2f} {100 * st['calibration_accuracy']:8.2f}% "
            f"{100 * acc_t:7.2f}% {ms:7.4f}"
        )
    names = [s.name for s in bundle.states]
    print(
        f"budget table ({args.percentile} costs): "
        + ", ".join(f"{r.budget_ms:.3f} ms -> {names[r.state]}" for r in plan.budget)
    )
    _sweeps(bundle, plan, profile, splits.test, args.samples, core)


def _network(args: argparse.Namespace, tmp: Path) -> tuple[Any, str]:
    """The network of --model written to TMP/net.onnx, its data splits and its title."""
    if args.model == "resnet18":
        splits = resnet18_data(tmp, args.calibration, args.samples)
        return splits, "ResNet-18 (random weights, 224 px), 5 identity blocks"
    splits = mnist1d_splits(DEFAULT_SEED)
    from edgeadapt.demo.train import export_onnx_model, train_residual_cnn

    model = train_residual_cnn(splits.train)
    export_onnx_model(model, splits.train.x, tmp / "net.onnx")
    return splits, "residual CNN on MNIST-1D, 4 blocks"


def _sweeps(
    bundle: Bundle, plan: Plan, profile: Profile, test: Any, samples: int, core: int | None
) -> None:
    """Each budget (1.1x each budget-table row, and 3x the last) swept over the first
    `samples` test inputs, with and without a spinning neighbour on the core."""
    rows = [r.budget_ms for r in plan.budget]
    budgets = [1.1 * c for c in rows] + [3.0 * rows[-1]]
    print(
        f"{'budget ms':>9} {'neighbour':>9} {'miss %':>7} {'acc %':>6} {'mean branch':>11} "
        f"{'p50 ms':>7} {'p99 ms':>7}"
    )
    x, y = test.x[:samples], test.y[:samples]
    for budget in budgets:
        for hogged in (False, True):
            if hogged:
                with _hog()(core, 60.0 + 0.01 * len(x)):
                    r = sweep(bundle, plan, profile, x, y, budget)
            else:
                r = sweep(bundle, plan, profile, x, y, budget)
            print(
                f"{budget:9.3f} {'spinning' if hogged else 'none':>9} {100 * r['miss']:7.1f} "
                f"{100 * r['acc']:6.1f} {r['state']:11.2f} {r['p50']:7.3f} {r['p99']:7.3f}"
            )


if __name__ == "__main__":
    main()
