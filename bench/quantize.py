"""Precision variants (`edgeadapt export quantize`): int8 and fp16 step costs against fp32,
and their accuracy, on ONNX Runtime's CPU provider with 1 thread.

Two bundles: (a) the shipped demo `mnist1d-resnet` (four exits of a residual 1D CNN
trained on MNIST-1D), calibrated on 400 rows of its calibration split, scored on 1,000
test samples; (b) ResNet-18 (`edgeadapt.zoo`'s torchvision layers, random weights,
BatchNorm statistics re-estimated) at 224 px as a one-state bundle, calibrated on 125
random images and scored by agreement with the float32 model's own top-1 class on 200
others (its weights are random: costs do not depend on them).

Variants: int8 as `export quantize` writes it by default (uint8 activations with a zero
point, per-channel int8 weights), int8 per-tensor, int8 with symmetric int8 activations
(what TensorRT reads), fp16. Every step of every variant is timed in the same process,
rounds interleaved so background load hits every row alike, each step fed the float32
activations of the steps before it; the ratio is fp32's median over the variant's, per
step and summed over the chain (the last state's cost). Needs the torch extra for (b).

    python bench/quantize.py [--rounds 7] [--skip-resnet18]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from edgeadapt.data.mnist1d import mnist1d_splits
from edgeadapt.exporters._graph import input_spec
from edgeadapt.exporters.quantize import QuantizeOptions, quantize_bundle
from edgeadapt.formats.bundle import Bundle, Step, load_bundle, write_bundle
from edgeadapt.formats.npzio import save_npz
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.runtimes import get_runtime

DEMO = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-resnet"
VARIANTS = {
    "int8": QuantizeOptions(),
    "int8 per-tensor": QuantizeOptions(per_channel=False),
    "int8 s8 act": QuantizeOptions(activations="int8"),
    "fp16": QuantizeOptions(precision="fp16"),
}


def make_variants(src: Bundle, calib: Path, tmp: Path) -> dict[str, Bundle]:
    out = {"fp32": src}
    for name, options in VARIANTS.items():
        out[name] = quantize_bundle(src, tmp / name.replace(" ", "-"), calib, options)
    return out


def step_inputs(src: Bundle, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Each step's float32 inputs on `x` (the activations of the float32 chain)."""
    feeds, act = [], None
    runtime = get_runtime("onnxruntime", threads=1)
    for step in src.steps:
        feed = {n: (x if n in src.input_names else act) for n in step.inputs}
        feeds.append(feed)
        with runtime.load(step.path) as s:
            act = s.run(feed).get(step.activation) if step.activation else None
    return feeds


Costs = dict[tuple[str, int], float]


def time_steps(bundles: dict[str, Bundle], x: np.ndarray, calls: int, rounds: int) -> Costs:
    """Median ms per call of every (variant, step), rounds interleaving all of them."""
    src = bundles["fp32"]
    feeds = step_inputs(src, x)
    runtime = get_runtime("onnxruntime", threads=1)
    sessions = {
        (v, i): runtime.load(s.path) for v, b in bundles.items() for i, s in enumerate(b.steps)
    }
    times: dict[tuple[str, int], list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for (v, i), sess in sessions.items():
            run, feed = sess.run, feeds[i]
            run(feed)
            t = perf_counter_ns()
            for _ in range(calls):
                run(feed)
            times[v, i].append((perf_counter_ns() - t) / calls / 1e6)
    for sess in sessions.values():
        sess.close()
    return {k: float(np.median(t)) for k, t in times.items()}


def report_costs(title: str, bundles: dict[str, Bundle], costs: Costs) -> None:
    n = len(bundles["fp32"].steps)
    print(f"\n{title}: median ms per call (ratio fp32 / variant)")
    head = "".join(f"{'step' + str(i):>18}" for i in range(n)) + f"{'chain':>18}"
    print(f"{'variant':<16}{head}")
    base = [costs["fp32", i] for i in range(n)]
    for v in bundles:
        mine = [costs[v, i] for i in range(n)]
        cells = [f"{m:9.3f} ({b / m:4.2f}x)" for m, b in zip(mine, base, strict=True)]
        cells.append(f"{sum(mine):9.3f} ({sum(base) / sum(mine):4.2f}x)")
        print(f"{v:<16}" + "".join(f"{c:>18}" for c in cells))


def report_accuracy(bundles: dict[str, Bundle], x: np.ndarray, y: np.ndarray) -> None:
    ev = {v: evaluate_bundle(b, x, y, threads=1) for v, b in bundles.items()}
    ref = ev["fp32"].pred
    print(f"\naccuracy per state on {len(y)} samples (agreement with the fp32 state)")
    for v, e in ev.items():
        agree = (e.pred == ref).mean(axis=0)
        cells = [f"{a:.4f} ({g:.4f})" for a, g in zip(e.accuracies, agree, strict=True)]
        print(f"{v:<16}" + "  ".join(cells))


def resnet18_bundle(tmp: Path, n: int) -> tuple[Bundle, Path, np.ndarray, np.ndarray]:
    """zoo's ResNet-18 as a one-state bundle, `n` calibration images labelled by it, and
    200 test images with its labels."""
    import onnx

    from edgeadapt import zoo

    spec = zoo.get("resnet18")
    zoo.export(spec, zoo.build(spec), tmp / "net.onnx")
    name = spec.input_names[0]
    model = onnx.load(str(tmp / "net.onnx"))
    logits = model.graph.output[0].name
    bundle = write_bundle(
        tmp / "r18",
        kind="early-exit",
        input=input_spec(model, tmp / "net.onnx"),
        num_classes=1000,
        steps=[Step(model, logits)],
        producer={"exporter": "bench/quantize.py", "source_sha256": ""},
    )
    x = zoo.random_inputs(spec, n + 200, seed=1)[name]
    y = zoo.teacher_labels(tmp / "net.onnx", {name: x})
    save_npz(tmp / "r18.npz", **{name: x[:n], "y": y[:n]})
    return bundle, tmp / "r18.npz", x[n:], y[n:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--skip-resnet18", action="store_true")
    args = parser.parse_args()
    splits = mnist1d_splits()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        save_npz(tmp / "calib.npz", x=splits.calibration.x[:400], y=splits.calibration.y[:400])
        bundles = make_variants(load_bundle(DEMO), tmp / "calib.npz", tmp)
        test = splits.test
        for batch, calls in ((1, 200), (32, 20)):
            costs = time_steps(bundles, test.x[:batch], calls, args.rounds)
            report_costs(f"mnist1d-resnet, batch {batch}", bundles, costs)
        report_accuracy(bundles, test.x[:1000], test.y[:1000])
        if args.skip_resnet18:
            return
        src, calib, x, y = resnet18_bundle(tmp, 125)
        r18 = make_variants(src, calib, tmp / "r18v")
        for batch, calls in ((1, 5), (16, 1)):
            costs = time_steps(r18, x[:batch], calls, args.rounds)
            report_costs(f"ResNet-18 224 px, batch {batch}", r18, costs)
        report_accuracy(r18, x, y)


if __name__ == "__main__":
    main()
