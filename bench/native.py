"""Native runner vs Python `AdaptiveModel`, both on OpenVINO CPU with 1 thread, at batch 1.

Builds `cpp/runner` (Release, the `bench_native` example) into `build/native` unless
`--build-dir` names another, then, for the shipped demo bundle with every threshold at 2
(above any confidence, so every step runs), measures in alternating rounds:

- Python: the median wall time of `AdaptiveModel.predict` on one sample, and of a bare
  hand loop over the same sessions (same input, no decisions);
- native: `bench_native`, the median time of `Runner::predict` on one sample and of a
  bare C++ loop over separately loaded sessions of the same steps.

Overhead = full path - steps alone, also per step (target for the native runner: at
most 2 us per step). Prints what it measured on this machine.

    python bench/native.py [--iters 1000] [--rounds 3] [--build-dir build/native]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.formats.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"


def build(build_dir: Path) -> Path:
    """Configure and build the `bench_native` example; return its path."""
    import openvino

    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for cmd in (
        ["cmake", "-S", str(ROOT / "cpp" / "runner"), "-B", str(build_dir), *generator,
         "-DCMAKE_BUILD_TYPE=Release", f"-DOpenVINO_DIR={openvino.utils.get_cmake_path()}"],
        ["cmake", "--build", str(build_dir), "--parallel", "2", "--target", "bench_native"],
    ):  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return build_dir / "examples" / "bench_native"


def python_round(model: AdaptiveModel, x: np.ndarray, iters: int) -> tuple[float, float]:
    """Median us of `predict` and of a bare loop over its sessions, alternating."""
    bundle = model.bundle
    full = np.empty(iters + 20)
    alone = np.empty(iters + 20)
    for it in range(iters + 20):
        t = perf_counter_ns()
        model.predict(x)
        full[it] = perf_counter_ns() - t
        t = perf_counter_ns()
        prev: dict[str, np.ndarray] = {}
        for step, session in zip(bundle.steps, model.sessions, strict=True):
            feeds = {n: x if n == bundle.input.name else prev[n] for n in step.inputs}
            prev = session.run(feeds, check=False)
        alone[it] = perf_counter_ns() - t
    return float(np.median(full[20:])) / 1e3, float(np.median(alone[20:])) / 1e3


def native_round(exe: Path, iters: int) -> tuple[float, float]:
    done = subprocess.run(
        [str(exe), str(BUNDLE), "--threads", "1", "--iters", str(iters)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(done.stdout)
    return out["full_us"], out["alone_us"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build-dir", type=Path, default=ROOT / "build" / "native")
    args = ap.parse_args()
    exe = build(args.build_dir)
    bundle = load_bundle(BUNDLE)
    steps = len(bundle.steps)
    x = np.random.default_rng(0).standard_normal((1, *bundle.input.shape[1:])).astype(np.float32)
    py, nat = [], []
    with AdaptiveModel.load(
        bundle, "openvino", thresholds=2.0, runtime_options={"threads": 1}
    ) as model:
        for _ in range(args.rounds):
            py.append(python_round(model, x, args.iters))
            nat.append(native_round(exe, args.iters))
    rows = {"Python AdaptiveModel": np.median(py, axis=0), "native Runner": np.median(nat, axis=0)}
    print(
        f"bundle {BUNDLE.name}: {steps} steps, batch 1, OpenVINO CPU 1 thread, "
        f"median of {args.iters} calls, median of {args.rounds} alternating rounds"
    )
    print(
        f"{'path':<22} {'per sample us':>14} {'steps alone us':>15} {'overhead us':>12} {'/step':>7}"
    )
    for name, (full, alone) in rows.items():
        over = full - alone
        print(f"{name:<22} {full:14.1f} {alone:15.1f} {over:12.1f} {over / steps:7.2f}")
    py_full, nat_full = rows["Python AdaptiveModel"][0], rows["native Runner"][0]
    nat_over = (rows["native Runner"][0] - rows["native Runner"][1]) / steps
    print(
        f"native per-sample time: {nat_full / py_full:.2f} of Python's "
        f"({py_full / nat_full:.2f}x faster); native overhead {nat_over:.2f} us per step "
        f"(target <= 2 us: {'met' if nat_over <= 2.0 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
