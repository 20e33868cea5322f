"""`edgeadapt evaluate` in one process against `--workers 2` (and `--ray` with 2 tasks),
on the compute-bound demo bundle (`mnist1d-resnet`) and MNIST-1D samples.

Each configuration is the whole command, run as a child process (start-up, the workers'
spawn and bundle loads, the file written: what a user waits for), in interleaved rounds;
the median wall time of each is printed with its speed-up over one worker at one
thread and the CPU time its processes took (on a shared machine the CPU time shows
whether the workers did the same work as one process and only waited for cores), and
every evaluation file is checked to hold the same arrays as the first. Before and after,
the cores the machine gives (`_capacity`) bound what two workers can gain.

- ``1 worker, 1 thread``: the baseline (`--threads 1`);
- ``1 worker, 2 threads``: one process, the runtime's own two threads (`--threads 2`);
- ``2 workers``: `--workers 2 --threads 2` (one runtime thread each);
- ``ray, 2 tasks``: `--ray --workers 2 --threads 2`, a local Ray cluster of 2 CPUs started
  by the command (only with ``--ray``; needs the ray extra).

    python bench/workers.py [--samples 20000] [--rounds 3] [--ray]

With ``--export`` it times `edgeadapt export onnx --calibration` instead: a ResNet-18
(random weights, 64 px inputs: a compute-bound model) cut after layer2 and layer3, its
two heads trained on `--samples` random labelled images at batch 32, in one process
against `--workers 2` (and `--ray --workers 2`), every bundle checked to be the same
bytes as the first:

    python bench/workers.py --export [--samples 1000] [--rounds 3] [--ray]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
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


def _spin(n: int = 20_000_000) -> None:
    total = 0
    for i in range(n):
        total += i


def _capacity() -> float:
    """How many cores this machine gives now: the throughput of two spinning processes
    over one's (2.0 on two idle cores; other work on a shared machine lowers it)."""
    ctx = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    _spin()
    one = time.perf_counter() - start
    spinners = [ctx.Process(target=_spin) for _ in range(2)]
    start = time.perf_counter()
    for p in spinners:
        p.start()
    for p in spinners:
        p.join()
    return 2 * one / (time.perf_counter() - start)


def _children_cpu() -> float:
    """User and system CPU seconds of the finished child processes so far (a command's
    workers included; a Ray cluster's own processes are not its children)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ray", action="store_true", help="also run --ray (needs the ray extra)")
    parser.add_argument("--export", action="store_true", help="time export onnx's calibration")
    args = parser.parse_args()
    if args.export:
        export_main(args.samples or 1000, args.rounds, args.ray)
        return
    args.samples = args.samples or 20_000

    configs = _configs(args.ray)
    capacity = [_capacity()]
    times: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
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
                before = _children_cpu()
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(_children_cpu() - before)
                if done.returncode:
                    sys.exit(f"{name}: exit {done.returncode}\n{done.stderr}")
                ev = load_evaluation(out)
                if reference is None:
                    reference = ev
                for key in KEYS:
                    if not np.array_equal(getattr(ev, key), getattr(reference, key)):
                        sys.exit(f"{name}: {key} differs from the one-worker evaluation")

    capacity.append(_capacity())
    base = statistics.median(times["1 worker, 1 thread"])
    print(
        f"evaluate {BUNDLE.name}, {args.samples} MNIST-1D samples, batch {args.batch}, "
        f"median of {args.rounds} interleaved rounds (whole command):"
    )
    for name, ts in times.items():
        t = statistics.median(ts)
        runs = ", ".join(f"{v:.2f}" for v in ts)
        print(
            f"  {name:30s} {t:6.2f} s  {base / t:5.2f}x  CPU {statistics.median(cpu[name]):6.2f} s"
            f"   (runs: {runs})"
        )
    print("every evaluation file holds the same arrays")
    print(
        "cores this machine gave (2 spinning processes' throughput over 1's), before and "
        f"after: {capacity[0]:.2f}, {capacity[1]:.2f}"
    )


#: The cuts of the ResNet-18 `export_main` splits: the outputs of layer2 and layer3.
CUTS = ["/layer2/layer2.1/relu_1/Relu_output_0", "/layer3/layer3.1/relu_1/Relu_output_0"]


def _resnet18(path: Path) -> None:
    """A ResNet-18 with random weights and 10 classes, input ``[batch, 3, 64, 64]``."""
    import torch

    from edgeadapt._zoo_torch import ResNet

    torch.manual_seed(0)
    model = ResNet(num_classes=10).eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 64, 64),),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def export_main(samples: int, rounds: int, ray: bool) -> None:
    """`edgeadapt export onnx` of a ResNet-18 with 1 worker against 2 (see the module
    docstring), in interleaved rounds."""
    configs = {"1 process": [], "2 workers": ["--workers", "2"]}
    if ray:
        configs["ray, 2 actors"] = ["--ray", "--workers", "2"]
    capacity = [_capacity()]
    times: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        model, data = Path(tmp) / "resnet18.onnx", Path(tmp) / "calib.npz"
        _resnet18(model)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((samples, 3, 64, 64)).astype(np.float32)
        np.savez(data, x=x, y=rng.integers(0, 10, samples))
        reference = None
        for _ in range(rounds):
            for i, (name, extra) in enumerate(configs.items()):
                out = Path(tmp) / f"b{i}"
                cuts = [a for c in CUTS for a in ("--cut", c)]
                command = [
                    sys.executable, "-m", "edgeadapt", "export", "onnx", str(model), *cuts,
                    "--calibration", str(data), "--batch-size", "32", "-o", str(out),
                    "--force", "--json", *extra,
                ]  # fmt: skip
                before = _children_cpu()
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(_children_cpu() - before)
                if done.returncode:
                    sys.exit(f"{name}: exit {done.returncode}\n{done.stderr}")
                files = _files(out)
                if reference is None:
                    reference = files
                if files != reference:
                    sys.exit(f"{name}: the bundle differs from the first one's")
    capacity.append(_capacity())
    base = statistics.median(times["1 process"])
    print(
        f"export onnx resnet18 (64 px, 2 trained heads), {samples} calibration samples, "
        f"batch 32, median of {rounds} interleaved rounds (whole command):"
    )
    for name, ts in times.items():
        t = statistics.median(ts)
        runs = ", ".join(f"{v:.2f}" for v in ts)
        print(
            f"  {name:16s} {t:6.2f} s  {base / t:5.2f}x  CPU {statistics.median(cpu[name]):6.2f} s"
            f"   (runs: {runs})"
        )
    print("every bundle is the same bytes")
    print(
        "cores this machine gave (2 spinning processes' throughput over 1's), before and "
        f"after: {capacity[0]:.2f}, {capacity[1]:.2f}"
    )


if __name__ == "__main__":
    main()
