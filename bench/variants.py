"""Plans over exit x precision against exits alone (fp32) and int8 alone, on one device.

The demo's mnist1d-resnet bundle (4 exits, fp32) gets an int8 twin: every step quantized
with ONNX Runtime's static quantization (QDQ, per-channel weights, calibrated on
`--quant-samples` MNIST-1D calibration samples fed through the fp32 steps before it).
`edgeadapt export variants` combines int8 then fp32 into one bundle of two chains
(8 states); it is evaluated on `--samples` fresh MNIST-1D samples and profiled here
(chain order, batch 1, whole model timed alongside). Printed: each state's p50 cost and
accuracy, the exact oracle on all 8 states and on each chain alone, and the risk-controlled
plan (threshold policy, net promise at `--max-drop`, delta 0.05) made on the same
evaluation and profile over all 8 states, over the fp32 exits only and over the int8
exits only (the same split, the same promise; each subset's columns only).

    python bench/variants.py [--samples 10000] [--quant-samples 512] [--max-drop 0.005]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgeadapt.data.mnist1d import mnist1d_calibration, mnist1d_splits
from edgeadapt.demo.train import DEFAULT_OUT as BUNDLES
from edgeadapt.exporters.variants import export_variants
from edgeadapt.formats.bundle import Bundle, Step, load_bundle, write_bundle
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.oracle.equations import exact_oracle
from edgeadapt.planning.outcomes import Outcomes
from edgeadapt.planning.planner import PlanOptions, make_plan, profile_costs
from edgeadapt.runtimes import from_config


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def int8_bundle(source: Bundle, x: np.ndarray, out: Path, work: Path) -> Bundle:
    """`source` with every step statically quantized (QDQ, int8, per-channel), each step
    calibrated on its own inputs as the fp32 steps before it produce them from `x`."""
    rt = from_config(RuntimeConfig("onnxruntime", threads=1))
    tensors = {source.inputs[0].name: x}
    steps = []
    for i, st in enumerate(source.steps):
        feeds = [{n: tensors[n][k : k + 32] for n in st.inputs} for k in range(0, len(x), 32)]
        q = work / f"q{i}.onnx"
        quantize_static(
            str(st.path),
            str(q),
            _Feeds(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        session = rt.load(st.path)
        tensors.update(session.run({n: tensors[n] for n in st.inputs}))
        session.close()
        steps.append(Step(onnx.load(str(q)), st.logits, st.activation))
    return write_bundle(
        out,
        kind="early-exit",
        inputs=source.inputs,
        num_classes=source.num_classes,
        steps=steps,
        state_names=[s.name for s in source.states],
        producer={"exporter": "bench/variants.py", "source_sha256": source.manifest_sha256},
        extra={"precision": "int8"},
    )


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--quant-samples", type=int, default=512)
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    args = ap.parse_args()

    fp32 = load_bundle(BUNDLES / "mnist1d-resnet")
    splits = mnist1d_splits()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        int8 = int8_bundle(fp32, splits.calibration.x[: args.quant_samples], work / "int8", work)
        both = export_variants([int8, fp32], work / "both", names=["int8", "fp32"])
        data = mnist1d_calibration(args.samples)
        ev = evaluate_bundle(both, {"x": data.x}, data.y, batch=256)
        timing = TimingOptions(min_seconds=args.min_seconds)
        profile = profile_bundle(both, "onnxruntime", timing)
        costs = profile_costs(profile, both)
        state_ms = np.asarray(costs.state_ms)
        acc = ev.correct.mean(axis=0)
        print(f"{'state':<12} {'p50 ms':>8} {'accuracy':>9}")
        for s, c, a in zip(both.states, state_ms, acc, strict=True):
            print(f"{s.name:<12} {c:8.4f} {100 * a:8.2f}%")
        print(f"whole model (fp32) {costs.static_ms:.4f} ms")
        outcomes = Outcomes.from_evaluation(ev, "maxprob")
        calib, held = outcomes.split(heldout=0.5, seed=0)
        options = PlanOptions(max_drop=args.max_drop)
        n = len(fp32.states)
        for label, cols in (
            ("exit x precision", list(range(2 * n))),
            ("fp32 exits", list(range(n, 2 * n))),
            ("int8 exits", list(range(n))),
        ):
            oracle = exact_oracle(ev.correct[:, cols], state_ms[cols])
            chains = tuple(both.chains[c] for c in cols)
            plan = make_plan(
                _columns(calib, cols),
                _columns(held, cols),
                replace(costs, state_ms=tuple(state_ms[cols])),
                manifest_sha256=both.manifest_sha256,
                options=options,
                chains=chains,
            )
            h = plan.heldout
            print(
                f"{label:<17} oracle {oracle.r_oracle:.4f} ms at {100 * oracle.a_oracle:.2f}% | "
                f"plan {', '.join(plan.state_names)}: {h.cost_ms:.4f} ms, "
                f"{100 * h.accuracy:.2f}% (drop {100 * h.drop:+.2f}% vs "
                f"{plan.bundle_states[plan.reference_state]})"
            )


if __name__ == "__main__":
    main()
