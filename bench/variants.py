"""Plans over exit x precision against fp32 exits alone and int8 exits alone, on one device.

Each early-exit bundle gets its int8 twin the way a user makes it: `quantize_bundle` with
its defaults (ONNX Runtime static quantization, QDQ, per-channel int8 weights, uint8
activations, MinMax calibration, the last 20% of the calibration rows held out for
parity) and ``with_source=True`` (`export quantize --with-source`), which combines the
int8 chain (first) and the fp32 source (last, the reference) through `export variants`.
The combined bundle is evaluated, profiled here (ONNX Runtime CPU, 1 thread, batch 1,
chain order, p50, the cascade's per-hop overhead counted) and planned (threshold policy,
net promise at `--max-drop` with delta 0.05, Learn then Test on a 50/50 split of the
evaluation) three ways on the same samples, split and profile:

- exit x precision: every state, the promise held against the fp32 last exit;
- fp32 exits: the fp32 chain's states only, held against the same fp32 last exit;
- int8 exits: the int8 chain's states only, held against the int8 last exit (the fp32
  reference is not among its states); its drop against the fp32 last exit is printed too.

The exact oracle is over the same columns. Two bundles:

(a) the shipped demo mnist1d-resnet (4 exits, trained on MNIST-1D): calibration 500 rows
    of the MNIST-1D calibration split, evaluation `--samples` fresh MNIST-1D samples
    (real accuracy);
(b) ResNet-18 at 224 px (`edgeadapt.zoo`'s ResNet-18 written in torch, random weights,
    BatchNorm statistics re-estimated on random inputs), exported to ONNX and cut by
    `export onnx` after layer2 and layer3, linear heads trained on `--r18-calib` random
    images labelled by the fp32 model's own top-1 class: accuracy there is agreement with
    the full fp32 model. Its int8 calibration uses 125 of those rows (100 calibrate, 25
    measure parity), its evaluation `--r18-samples` other random images.

    python bench/variants.py [--samples 10000] [--r18-samples 1000] [--skip-resnet18]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeadapt.data.mnist1d import mnist1d_calibration, mnist1d_splits
from edgeadapt.demo.train import DEFAULT_OUT as BUNDLES
from edgeadapt.exporters.onnx import export_onnx
from edgeadapt.exporters.quantize import quantize_bundle
from edgeadapt.formats.bundle import Bundle
from edgeadapt.formats.npzio import save_npz
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.oracle.equations import exact_oracle
from edgeadapt.planning.outcomes import Outcomes
from edgeadapt.planning.planner import PlanOptions, make_plan, profile_costs


def _columns(o: Outcomes, cols: list[int]) -> Outcomes:
    """`o` on the states `cols` only (a subset's plan on the same samples)."""
    gi = None if o.gate_inputs is None else o.gate_inputs.select(cols)
    return replace(
        o,
        names=tuple(o.names[c] for c in cols),
        correct=o.correct[:, cols],
        conf=None if o.conf is None else o.conf[:, cols],
        gate_inputs=gi,
        pred=None if o.pred is None else o.pred[:, cols],
    )


def _load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def measure(
    label: str, both: Bundle, x: np.ndarray, y: np.ndarray, max_drop: float, timing: TimingOptions
) -> None:
    """Evaluate, profile and plan the combined bundle `both` (int8 chain, then fp32)."""
    print(f"\n== {label}: {len(y)} evaluation samples, max drop {max_drop:.2%} ({_load()})")
    ev = evaluate_bundle(both, {"x": x}, y, batch=64, threads=1)
    costs = profile_costs(profile_bundle(both, "onnxruntime", timing, threads=1), both)
    state_ms = np.asarray(costs.state_ms)
    acc = ev.correct.mean(axis=0)
    n = len(both.states) // 2
    print(f"{'exit':<8} {'int8 ms':>8} {'fp32 ms':>8} {'ratio':>6} {'int8 acc':>9} {'fp32 acc':>9}")
    for i in range(n):
        name = both.states[i].name.split("@")[0]
        q, f = i, n + i
        print(
            f"{name:<8} {state_ms[q]:8.4f} {state_ms[f]:8.4f} {state_ms[f] / state_ms[q]:5.2f}x "
            f"{acc[q]:9.2%} {acc[f]:9.2%}"
        )
    hop = costs.hop_overhead_ms or 0.0
    print(f"whole model (fp32) {costs.static_ms:.4f} ms; cascade overhead {hop:.4f} ms per hop")
    outcomes = Outcomes.from_evaluation(ev, "maxprob")
    calib, held = outcomes.split(heldout=0.5, seed=0)
    names = [s.name for s in both.states]
    fp32_ref = names[-1]
    ref_acc = float(held.correct[:, -1].mean())
    for what, cols, reference in (
        ("exit x precision", list(range(2 * n)), fp32_ref),
        ("fp32 exits", list(range(n, 2 * n)), fp32_ref),
        ("int8 exits", list(range(n)), names[n - 1]),
    ):
        oracle = exact_oracle(ev.correct[:, cols], state_ms[cols])
        plan = make_plan(
            _columns(calib, cols),
            _columns(held, cols),
            replace(costs, state_ms=tuple(state_ms[cols])),
            manifest_sha256=both.manifest_sha256,
            options=PlanOptions(max_drop=max_drop, reference=reference),
            chains=tuple(both.chains[c] for c in cols),
        )
        h = plan.heldout
        print(
            f"{what:<17} oracle {oracle.r_oracle:.4f} ms at {oracle.a_oracle:.2%} | plan "
            f"{', '.join(plan.state_names)}: {h.cost_ms:.4f} ms, {h.accuracy:.2%} "
            f"(drop {h.drop:+.2%} vs {plan.bundle_states[plan.reference_state]}; "
            f"{ref_acc - h.accuracy:+.2%} vs {fp32_ref})"
        )
    print(f"({_load()})")


def mnist1d(work: Path, samples: int) -> tuple[Bundle, np.ndarray, np.ndarray]:
    splits = mnist1d_splits()
    save_npz(work / "calib.npz", x=splits.calibration.x[:500], y=splits.calibration.y[:500])
    both = quantize_bundle(
        BUNDLES / "mnist1d-resnet", work / "m1d", work / "calib.npz", with_source=True
    )
    data = mnist1d_calibration(samples)
    return both, data.x, data.y


def resnet18(work: Path, calib: int, samples: int) -> tuple[Bundle, np.ndarray, np.ndarray]:
    from edgeadapt import zoo

    spec = zoo.get("resnet18")
    onnx_path = zoo.export(spec, zoo.build(spec), work / "r18.onnx")
    x = zoo.random_inputs(spec, calib + samples, seed=1)["x"]
    y = zoo.teacher_labels(onnx_path, {"x": x})
    print(f"ResNet-18 teacher labels: {len(np.unique(y))} distinct classes in {len(y)} images")
    zoo.write_data(work / "r18-calib.npz", {"x": x[:calib]}, y[:calib])
    cuts = zoo.cut_tensors(onnx_path, ("layer2", "layer3"))
    fp32 = export_onnx(onnx_path, work / "r18-fp32", cuts=cuts, calibration=work / "r18-calib.npz")
    zoo.write_data(work / "r18-q.npz", {"x": x[:125]}, y[:125])
    both = quantize_bundle(fp32, work / "r18", work / "r18-q.npz", with_source=True)
    return both, x[calib:], y[calib:]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--r18-calib", type=int, default=600)
    ap.add_argument("--r18-samples", type=int, default=1000)
    ap.add_argument("--r18-max-drop", type=float, default=0.02)
    ap.add_argument("--skip-resnet18", action="store_true")
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        both, x, y = mnist1d(work, args.samples)
        measure("mnist1d-resnet", both, x, y, args.max_drop, TimingOptions(min_seconds=0.5))
        if not args.skip_resnet18:
            both, x, y = resnet18(work, args.r18_calib, args.r18_samples)
            timing = TimingOptions(warmup=5, min_seconds=1.0)
            measure("ResNet-18 224 px", both, x, y, args.r18_max_drop, timing)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
