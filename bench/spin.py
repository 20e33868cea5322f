"""Idle ONNX Runtime workers: full path against the whole model, spinning or not.

(`hog`, a busy neighbour spinning on one core, is shared with `deadline.py` and the
profiler's tests under load.)

Every ONNX Runtime session owns its own intra-op thread pool. With spinning on, the
workers of a step that just finished keep busy-waiting on the cores the next step's
workers need, so a cascade of several sessions can cost far more than the one session
of the whole model. This benchmark measures, for a ResNet-18-sized early-exit bundle
with random weights (`bench/cascade.py`'s builder: 4 exits, one after each residual
layer), at batch 1 on the `x86-ort-2t` preset (2 threads, or `--threads`), with
`spin` off (the runtime's default) and on:

- whole model: the backbone and the last head only (`exporters.compose.whole_model`),
  one bare session call;
- full path: `AdaptiveModel.predict` with every threshold above 1, so every step runs;
- the profiler's view: `edgeadapt profile` in chain order (the default), R_N against
  its own whole-model row.

Each setting runs in a fresh process, so the workers of one setting never load the
cores while the other is timed; within a process the full path and the whole model are
timed in interleaved rounds (`bench/cascade.py`'s `_rounds`), each figure a median.
Target: full path within 1.10x the whole model with spinning off. Prints what it
measured on this machine.

    python bench/spin.py [--rounds 10] [--threads 2] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
TARGET = 1.10
SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@contextmanager
def hog(core: int | None, seconds: float, nice: int = 0) -> Iterator[None]:
    """A busy neighbour: a process spinning on `core` (any core when None) for at most
    `seconds` (it ends by itself if its caller dies), at niceness `nice` (19: a
    background job the OS runs only when nothing else wants the core)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SPIN, str(seconds)],
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )
    try:
        if core is not None:
            os.sched_setaffinity(proc.pid, {core})
        time.sleep(0.2)  # let it start spinning
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def measure(bundle_dir: Path, whole_path: Path, spin: bool, threads: int, rounds: int) -> dict:
    """One setting, in this process: full path, whole model and the profiler's figures."""
    sys.path.insert(0, str(HERE))
    from cascade import _rounds, _timed

    from edgeadapt.cascade.model import AdaptiveModel
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.presets import RuntimeConfig, load_preset
    from edgeadapt.formats.profile import state_costs, static_cost
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle
    from edgeadapt.runtimes import get_runtime

    bundle = load_bundle(bundle_dir)
    preset = load_preset("x86-ort-2t")
    config = RuntimeConfig.resolve(preset, threads=threads, options={"spin": spin})
    options = config.backend_options()
    shape = (1, *(int(d) for d in bundle.input.shape[1:]))
    x = np.random.default_rng(0).standard_normal(shape).astype(bundle.input.dtype)
    with (
        AdaptiveModel.load(bundle, thresholds=2.0, runtime_options=options) as model,
        get_runtime("onnxruntime", **options).load(whole_path) as whole,
    ):
        med = _rounds(
            {
                "whole": _timed(lambda: whole.run({bundle.input.name: x}, check=False)),
                "full": _timed(lambda: model.predict(x)),
            },
            rounds,
            4,
        )
    prof = profile_bundle(
        bundle,
        preset=preset,
        threads=threads,
        options={"spin": spin},
        timing=TimingOptions(min_seconds=0.5),
    )
    return {
        "whole_ms": med["whole"] / 1e6,
        "full_ms": med["full"] / 1e6,
        "profile_r_n_ms": state_costs(prof, bundle)[-1],
        "profile_whole_ms": static_cost(prof, bundle),
        "noisy": prof.noisy,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds per setting")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads")
    ap.add_argument("--size", type=int, default=224, help="input side (pixels)")
    ap.add_argument("--child", nargs=3, metavar=("BUNDLE", "WHOLE", "SPIN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        bundle_dir, whole_path, spin = args.child
        got = measure(Path(bundle_dir), Path(whole_path), spin == "1", args.threads, args.rounds)
        print(json.dumps(got))
        return

    sys.path.insert(0, str(HERE))
    from cascade import resnet18_bundle

    from edgeadapt.exporters.compose import whole_model

    with tempfile.TemporaryDirectory() as tmp:
        bundle = resnet18_bundle(Path(tmp) / "resnet18", args.size)
        whole_path = Path(tmp) / "whole.onnx"
        onnx.save(whole_model(bundle), whole_path)
        print(
            f"resnet18-random 3x{args.size}x{args.size}, {len(bundle.steps)} steps, batch 1, "
            f"onnxruntime {args.threads} threads; median of {args.rounds} interleaved rounds"
        )
        print(
            f"{'spin':<5} {'whole ms':>9} {'full path ms':>13} {'full/whole':>11} "
            f"{'profile R_N/whole':>18} {'target':>7}"
        )
        for spin in ("0", "1"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--rounds",
                    str(args.rounds),
                    "--threads",
                    str(args.threads),
                    "--child",
                    str(bundle.path),
                    str(whole_path),
                    spin,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            ratio = r["full_ms"] / r["whole_ms"]
            prof = r["profile_r_n_ms"] / r["profile_whole_ms"]
            verdict = ("met" if ratio <= TARGET else "MISSED") if spin == "0" else "-"
            noisy = " (profile noisy)" if r["noisy"] else ""
            print(
                f"{'on' if spin == '1' else 'off':<5} {r['whole_ms']:9.2f} {r['full_ms']:13.2f} "
                f"{ratio:10.3f}x {prof:17.3f}x {verdict:>7}{noisy}"
            )


if __name__ == "__main__":
    main()
