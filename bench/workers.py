"""`edgeadapt evaluate` in one process against `--workers 2` (and `--ray` with 2 tasks),
on the compute-bound demo bundle (`mnist1d-resnet`) and MNIST-1D samples.

Each configuration is the whole command, run as a child process (start-up, the workers'
spawn and bundle loads, the file written: what a user waits for), in interleaved rounds;
the median wall time of each is printed with its speed-up over one worker at one
thread, and every evaluation file is checked to hold the same arrays as the first.

- ``1 worker, 1 thread``: the baseline (`--threads 1`);
- ``1 worker, 2 threads``: one process, the runtime's own two threads (`--threads 2`);
- ``2 workers``: `--workers 2 --threads 2` (one runtime thread each);
- ``ray, 2 tasks``: `--ray --workers 2 --threads 2`, a local Ray cluster of 2 CPUs started
  by the command (only with ``--ray``; needs the ray extra).

    python bench/workers.py [--samples 20000] [--rounds 3] [--ray]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeadapt.data.mnist1d import mnist1d_calibration
from edgeadapt.formats.evaluation import load_evaluation

BUNDLE = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-resnet"
KEYS = ("labels", "pred", "conf", "conf_margin", "conf_entropy")


def _configs(ray: bool) -> dict[str, list[str]]:
    configs = {
        "1 worker, 1 thread": ["--threads", "1"],
        "1 worker, 2 threads": ["--threads", "2"],
        "2 workers, 1 thread each": ["--threads", "2", "--workers", "2"],
    }
    if ray:
        configs["ray, 2 tasks, 1 thread each"] = ["--threads", "2", "--workers", "2", "--ray"]
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ray", action="store_true", help="also run --ray (needs the ray extra)")
    args = parser.parse_args()

    configs = _configs(args.ray)
    times: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mnist1d.npz"
        split = mnist1d_calibration(args.samples)
        np.savez(data, x=split.x, y=split.y)
        reference = None
        for _ in range(args.rounds):
            for i, (name, extra) in enumerate(configs.items()):
                out = Path(tmp) / f"ev{i}.npz"
                command = [
                    sys.executable, "-m", "edgeadapt", "evaluate", str(BUNDLE),
                    "--data", str(data), "--batch", str(args.batch), "-o", str(out),
                    "--json", *extra,
                ]  # fmt: skip
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True)
                times[name].append(time.perf_counter() - start)
                if done.returncode:
                    sys.exit(f"{name}: exit {done.returncode}\n{done.stderr}")
                ev = load_evaluation(out)
                if reference is None:
                    reference = ev
                for key in KEYS:
                    if not np.array_equal(getattr(ev, key), getattr(reference, key)):
                        sys.exit(f"{name}: {key} differs from the one-worker evaluation")

    base = statistics.median(times["1 worker, 1 thread"])
    print(
        f"evaluate {BUNDLE.name}, {args.samples} MNIST-1D samples, batch {args.batch}, "
        f"median of {args.rounds} interleaved rounds (whole command):"
    )
    for name, ts in times.items():
        t = statistics.median(ts)
        print(
            f"  {name:30s} {t:7.2f} s  {base / t:5.2f}x   (runs: {', '.join(f'{v:.2f}' for v in ts)})"
        )
    print("every evaluation file holds the same arrays")


if __name__ == "__main__":
    main()
