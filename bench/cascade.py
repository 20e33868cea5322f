"""Cascade cost: the whole model, the full path through `AdaptiveModel`, the steps alone.

For two early-exit bundles, the shipped MNIST-1D demo network and a ResNet-18-sized CNN
with random weights (4 exits, after each residual layer; latency does not depend on the
weights), on ONNX Runtime CPU and OpenVINO CPU with 1 thread each, at batch 1:

- whole model: the backbone plus the last head only (`exporters.compose.whole_model`),
  one bare session call;
- full path: `AdaptiveModel.predict` with every threshold above 1, so every step runs
  (input check, decisions and bookkeeping included): at batch 1 the one native call of
  `edgeadapt.kernel.CascadeCall`;
- loop: the same `predict` with the native cascade turned off, the Python loop that
  runs every other batch size and gate plans;
- steps alone: the sum of the steps' own latencies, each a bare session call.

Every figure is the wall time of the public call (`perf_counter_ns` around it); the
overhead columns are the full path (and the loop) minus the steps alone, per step. The
last column is the full path's own time per step measured inside each call (its wall
time less the runtime calls it reports, median), which the steps' noise under load
does not enter: the figure to compare across builds on a busy machine.

The four are measured in interleaved rounds (their order rotating) so that the load
other processes put on the machine hits all of them alike; each round runs one of them a
few times in a row, as an application would, and the first call of each run, made with
the caches the others left, is not counted; each figure is a median.
Targets: full path <= 1.05x the whole model on the heavy model; cascade overhead (full
path minus steps alone) <= max(10 %, 3 us per step) on both.

Then batch 64 on the demo bundle with the first threshold at the median first-exit
confidence (about half the rows exit there): each step's time and rows against the same
step with all 64 rows, interleaved the same way. Last, the first `predict` after `load`
with and without `warmup`. Prints what it measured on this machine.

    python bench/cascade.py [--rounds 200] [--heavy-rounds 15] [--size 224] [--no-heavy]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns

import numpy as np
import onnx

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.exporters.compose import whole_model
from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.kernel import confidence
from edgeadapt.runtimes import get_runtime

DEMO = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
RUNTIMES = {"onnxruntime": {"threads": 1}, "openvino": {"threads": 1}}
WARMUP = 10


def resnet18_bundle(out_dir: Path, size: int) -> Bundle:
    """A ResNet-18 (ImageNet layout: 7x7 stem, 4 layers of 2 basic blocks, 1000 classes)
    with random weights, exported as an early-exit bundle with an exit after each layer
    (global average pool + linear head) through the project's torch exporter."""
    import torch
    from torch import nn

    from edgeadapt._zoo_torch import BasicBlock as Block
    from edgeadapt.exporters.torch import TorchExportOptions, export_torch

    def layer(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        return nn.Sequential(Block(c_in, c_out, stride), Block(c_out, c_out, 1))

    torch.manual_seed(0)
    stem = nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
    )
    stages = [
        nn.Sequential(stem, layer(64, 64, 1)),
        layer(64, 128, 2),
        layer(128, 256, 2),
        layer(256, 512, 2),
    ]
    heads = [
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000))
        for c in (64, 128, 256, 512)
    ]
    example = torch.randn(1, 3, size, size)
    return export_torch(stages, heads, example, out_dir, options=TorchExportOptions(force=True))


def _rounds(fns: dict[str, Callable[[], float]], rounds: int, block: int) -> dict[str, float]:
    """Median of each function's figure (ns) over `rounds` interleaved rounds of `block`
    calls each, the first call of each block left out (it runs with caches the other
    functions left behind); the order within a round rotates."""
    names = list(fns)
    got: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + WARMUP):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            values = [fn() for _ in range(block)]
            if r >= WARMUP:
                got[name].extend(values[1:])
    return {n: float(np.median(v)) for n, v in got.items()}


def _steps_alone(model: AdaptiveModel, x: np.ndarray) -> Callable[[], float]:
    """The sum of the steps' own latencies: each bare session call timed on its own, in a
    loop over the sessions (same inputs, no decisions)."""
    bundle = model.bundle
    calls = [
        (session, tuple((n, n == bundle.input.name) for n in step.inputs))
        for step, session in zip(bundle.steps, model.sessions, strict=True)
    ]

    def run() -> float:
        prev: dict[str, np.ndarray] = {}
        total = 0
        for session, names in calls:
            feeds = {n: x if is_input else prev[n] for n, is_input in names}
            t = perf_counter_ns()
            prev = session.run(feeds, check=False)
            total += perf_counter_ns() - t
        return total

    return run


def _timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        t = perf_counter_ns()
        fn()
        return perf_counter_ns() - t

    return run


def _full_path(model: AdaptiveModel, x: np.ndarray, own: list[int]) -> Callable[[], float]:
    """`model.predict(x)` timed; its own time (the wall time less the runtime calls the
    call reports in ``latency_ms["steps"]``, so the steps' latency and its noise drop
    out) is appended to `own`."""

    def run() -> float:
        t = perf_counter_ns()
        out = model.predict(x)
        wall = perf_counter_ns() - t
        own.append(wall - round(1e6 * sum(out.latency_ms["steps"])))
        return wall

    return run


def batch1_table(label: str, bundle: Bundle, whole_path: Path, rounds: int, block: int) -> None:
    rng = np.random.default_rng(0)
    shape = tuple(int(d) for d in bundle.input.shape[1:])
    x = rng.standard_normal((1, *shape)).astype(bundle.input.dtype)
    n = len(bundle.steps)
    print(
        f"\n{label}: {n} steps, batch 1, 1 thread, median over {rounds} interleaved "
        f"rounds of {block} calls"
    )
    print(
        f"{'runtime':<12} {'whole us':>10} {'full path us':>13} {'steps alone us':>15} "
        f"{'full/whole':>11} {'overhead':>9} {'/step us':>9} {'target':>7} "
        f"{'loop us':>9} {'loop /step us':>14} {'own /step us':>13}"
    )
    for runtime, opts in RUNTIMES.items():
        rt = get_runtime(runtime, **opts)
        with (
            AdaptiveModel.load(bundle, runtime, thresholds=2.0, runtime_options=opts) as m,
            AdaptiveModel.load(bundle, runtime, thresholds=2.0, runtime_options=opts) as loop,
            rt.load(whole_path) as whole,
        ):
            loop._cascade = None  # the Python loop, as every other batch size runs
            own: list[int] = []
            med = _rounds(
                {
                    "whole": _timed(lambda: whole.run({bundle.input.name: x}, check=False)),
                    "full": _full_path(m, x, own),
                    "loop": _timed(lambda: loop.predict(x)),
                    "steps": _steps_alone(m, x),
                },
                rounds,
                block,
            )
        w, f, s, lp = (med[k] / 1e3 for k in ("whole", "full", "steps", "loop"))
        over = f - s
        allowed = max(0.10 * s, 3.0 * n)
        print(
            f"{runtime:<12} {w:10.1f} {f:13.1f} {s:15.1f} {f / w:10.3f}x "
            f"{100 * over / s:8.1f}% {over / n:9.1f} {'met' if over <= allowed else 'MISSED':>7} "
            f"{lp:9.1f} {(lp - s) / n:14.1f} {np.median(own) / 1e3 / n:13.2f}"
        )


def batch64_table(rounds: int) -> None:
    bundle = load_bundle(DEMO)
    n = len(bundle.steps)
    x = np.random.default_rng(1).standard_normal((64, 1, 40)).astype(np.float32)
    print(
        f"\n{DEMO.name}: batch 64, about half the rows exit at the first exit; per step, "
        f"median of {rounds} interleaved rounds"
    )
    print(
        f"{'runtime':<12} {'step':>4} {'rows':>5} {'us (half exit)':>15} {'us (all 64)':>12} "
        f"{'ratio':>6}"
    )
    for runtime, opts in RUNTIMES.items():
        with AdaptiveModel.load(bundle, runtime, thresholds=2.0, runtime_options=opts) as full:
            first = full.sessions[0].run({bundle.input.name: x})[bundle.steps[0].logits]
            half_at = float(np.median(confidence(first)))
            with AdaptiveModel.load(
                bundle, runtime, thresholds=[half_at] + [2.0] * (n - 2), runtime_options=opts
            ) as half:
                rows = half.predict(x).latency_ms["rows"]
                got: dict[str, list[list[float]]] = {"half": [], "full": []}
                for r in range(rounds + WARMUP):
                    order = (("half", half), ("full", full))
                    for name, m in order if r % 2 else order[::-1]:
                        steps = m.predict(x).latency_ms["steps"]
                        if r >= WARMUP:
                            got[name].append(steps)
        h = 1e3 * np.median(np.array(got["half"]), axis=0)
        f = 1e3 * np.median(np.array(got["full"]), axis=0)
        for j in range(n):
            print(f"{runtime:<12} {j:4d} {rows[j]:5d} {h[j]:15.1f} {f[j]:12.1f} {h[j] / f[j]:6.2f}")


def first_call_table(loads: int, warmup: int = 3) -> None:
    """The first `predict` after `load`, without and with a warm-up, alternating loads."""
    bundle = load_bundle(DEMO)
    x = np.random.default_rng(2).standard_normal((1, 1, 40)).astype(np.float32)
    print(
        f"\n{DEMO.name}: first predict after load, batch 1, median of {loads} loads each "
        f"(warm-up: {warmup} rounds); a later call for scale"
    )
    print(f"{'runtime':<12} {'cold ms':>8} {'warmed-up ms':>13} {'10th call ms':>13}")
    for runtime, opts in RUNTIMES.items():
        got: dict[int, list[float]] = {0: [], warmup: []}
        later = []
        for _ in range(loads):
            for w in (0, warmup):
                with AdaptiveModel.load(
                    bundle, runtime, thresholds=2.0, runtime_options=opts, warmup=w
                ) as m:
                    t = perf_counter_ns()
                    m.predict(x)
                    got[w].append((perf_counter_ns() - t) / 1e6)
                    if w == 0:
                        for _ in range(9):
                            t = perf_counter_ns()
                            m.predict(x)
                        later.append((perf_counter_ns() - t) / 1e6)
        print(
            f"{runtime:<12} {np.median(got[0]):8.3f} {np.median(got[warmup]):13.3f} "
            f"{np.median(later):13.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200, help="rounds for the demo bundle")
    ap.add_argument("--heavy-rounds", type=int, default=15, help="rounds for the heavy model")
    ap.add_argument("--size", type=int, default=224, help="heavy model input side (pixels)")
    ap.add_argument("--no-heavy", action="store_true", help="skip the ResNet-18-sized model")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = [(f"{DEMO.name} (demo)", load_bundle(DEMO), args.rounds, 10)]
        if not args.no_heavy:
            t = perf_counter_ns()
            heavy = resnet18_bundle(Path(tmp) / "resnet18", args.size)
            print(
                f"built resnet18 bundle (3x{args.size}x{args.size}) in {(perf_counter_ns() - t) / 1e9:.0f} s"
            )
            label = f"resnet18-random 3x{args.size}x{args.size}"
            models.append((label, heavy, args.heavy_rounds, 4))
        for k, (label, bundle, rounds, block) in enumerate(models):
            path = Path(tmp) / f"whole{k}.onnx"
            onnx.save(whole_model(bundle), path)
            batch1_table(label, bundle, path, rounds, block)
    batch64_table(max(20, args.rounds // 2))
    first_call_table(loads=9)


if __name__ == "__main__":
    main()
