"""Cascade overhead: the full path through `AdaptiveModel` against the steps' own latencies.

For the shipped demo bundle, at batch 1 on ONNX Runtime CPU (1 thread) and OpenVINO CPU
(1 thread): the median time of `predict` with every threshold above 1 (every step runs),
against the median sum of the steps' own backend times in a bare hand loop over the
sessions (same inputs, no decisions). Then at batch 64 with the first threshold set to the
median first-exit confidence (about half the rows exit there): each step's time and rows
against the full path's. Prints what it measured on this machine.

    python bench/cascade.py [--iters 300]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from edgeadapt.bundle import load_bundle
from edgeadapt.cascade import AdaptiveModel
from edgeadapt.kernel import confidence

BUNDLE = (
    Path(__file__).resolve().parents[1] / "edgeadapt" / "data" / "bundles" / "mnist1d-multiexit"
)
RUNTIMES = {"onnxruntime": {"threads": 1}, "openvino": {"threads": 1}}


def _interleaved(model: AdaptiveModel, x: np.ndarray, iters: int) -> tuple[float, float, float]:
    """Median us of the full path through `predict`, of the steps' backend times inside
    it, and of the sum of the steps' own backend times in a bare hand loop over the
    sessions (same inputs, no decisions), measured in alternation so that all see the
    same machine load."""
    bundle = model.bundle
    full = np.empty(iters + 20)
    alone = np.empty(iters + 20)
    inside = np.empty(iters + 20)
    for it in range(iters + 20):
        t = perf_counter_ns()
        out = model.predict(x)
        full[it] = perf_counter_ns() - t
        inside[it] = 1e6 * sum(out.latency_ms["steps"])
        prev: dict[str, np.ndarray] = {}
        total = 0
        for step, session in zip(bundle.steps, model.sessions, strict=True):
            feeds = {n: x if n == bundle.input.name else prev[n] for n in step.inputs}
            prev = session.run(feeds, check=False)
            total += session.last_run_ns
        alone[it] = total
    return tuple(float(np.median(a[20:])) / 1e3 for a in (full, inside, alone))  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=1000)
    args = ap.parse_args()
    bundle = load_bundle(BUNDLE)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 1, 40)).astype(np.float32)
    x64 = rng.standard_normal((64, 1, 40)).astype(np.float32)
    n = len(bundle.steps)
    print(f"bundle {BUNDLE.name}: {n} steps, batch 1, median of {args.iters} calls")
    print(
        f"{'runtime':<12} {'full path us':>13} {'steps inside':>13} {'steps alone':>12} "
        f"{'overhead':>9} {'/step':>8}"
    )
    for runtime, opts in RUNTIMES.items():
        with AdaptiveModel.load(bundle, runtime, thresholds=2.0, runtime_options=opts) as m:
            full, inside, alone = _interleaved(m, x1, args.iters)
        over = full - alone
        print(
            f"{runtime:<12} {full:13.1f} {inside:13.1f} {alone:12.1f} "
            f"{100 * over / alone:8.1f}% {over / n:6.1f}us"
        )

    print("\nbatch 64, about half the rows exit at the first exit (onnxruntime, 1 thread)")
    with AdaptiveModel.load(bundle, thresholds=2.0, runtime_options=RUNTIMES["onnxruntime"]) as m:
        full_steps = np.zeros(n)
        for _ in range(args.iters // 10):
            full_steps += m.predict(x64).latency_ms["steps"]
        first = m.sessions[0].run({bundle.input.name: x64})[bundle.steps[0].logits]
    t0 = float(np.median(confidence(first)))
    thresholds = [t0] + [2.0] * (n - 2)
    with AdaptiveModel.load(
        bundle, thresholds=thresholds, runtime_options=RUNTIMES["onnxruntime"]
    ) as m:
        half_steps = np.zeros(n)
        for _ in range(args.iters // 10):
            out = m.predict(x64)
            half_steps += out.latency_ms["steps"]
        rows = out.latency_ms["rows"]
    print(f"{'step':<6} {'rows':>5} {'us (half exit)':>15} {'us (all 64)':>12} {'ratio':>7}")
    for j in range(n):
        k = args.iters // 10
        a, b = 1e3 * half_steps[j] / k, 1e3 * full_steps[j] / k
        print(f"{j:<6} {rows[j]:5d} {a:15.1f} {b:12.1f} {a / b:7.2f}")


if __name__ == "__main__":
    main()
