"""Real architectures: what the split costs against the whole model, and what exporting costs.

For ResNet-18, MobileNet-V3-small, EfficientNet-B0, ViT-Ti/16 and a small BERT
(`edgeadapt.zoo`: torchvision/timm/Hugging Face layouts, random weights, BatchNorm
re-estimated; latency does not depend on the weights):

- export: `edgeadapt export onnx` with the zoo's cuts and trained heads on a synthetic
  calibration set, run as a child process; its wall time and peak RSS (`os.wait4`).
- full path against whole model: `AdaptiveModel.predict` with every threshold above 1
  (maxprob never reaches it, so every step runs: input check, decisions and bookkeeping
  included) against one call of the original ONNX model (the torch export the bundle was
  cut from), same runtime and options, on ONNX Runtime with 1 and 2 threads and OpenVINO,
  at batch 1 and 8.

A third figure, the bundle's steps called bare in turn, splits a miss in two: the split
itself (steps/whole: the exit heads, one runtime call per step, fusion lost at the cuts)
and the cascade around the steps (full/steps: input check, decisions, bookkeeping).
The three are timed in blocks whose order rotates every round (first call of each block
not counted) so that the load other processes put on the machine hits them alike; each
round gives one ratio of block medians, and the figure is the median ratio.
Targets: full path <= 1.05x the whole model for the CNNs at 1 thread, <= 1.10x at 2
threads, <= 1.15x for the transformers; each row says hit or miss.

    python bench/models.py [--models resnet18,bert_small] [--rounds 9] [--calls 20] [--json F]
    python bench/models.py --quick        # reduced graphs, few rounds: checks it runs

Prints what it measured on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import numpy as np

from edgeadapt import zoo
from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.runtimes import available_runtimes, get_runtime

#: (label, runtime, threads) of the settings compared.
SETTINGS = (
    ("ort-1t", "onnxruntime", 1),
    ("ort-2t", "onnxruntime", 2),
    ("openvino-1t", "openvino", 1),
)
BATCHES = (1, 8)
NEVER = 2.0  # a maxprob threshold no row reaches: the full path


def target(family: str, threads: int) -> float:
    """The ratio the full path must stay under."""
    if family == "transformer":
        return 1.15
    return 1.05 if threads == 1 else 1.10


#: Runs the CLI in a child and writes the child's own peak RSS (VmHWM: the high-water
#: mark of the process image after exec; the rusage of a forked child also counts the
#: parent's image it started as, torch included).
_CHILD = """
import sys
from pathlib import Path
from edgeadapt.cli import main
code = 0
try:
    main(sys.argv[2:])
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 1
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
Path(sys.argv[1]).write_text(hwm[0].split()[1] if hwm else "0")
sys.exit(code)
"""


def export_child(
    source: Path, cuts: list[str], calib: Path, pool: str, out: Path
) -> dict[str, Any]:
    """Run `edgeadapt export onnx` in a child process: wall seconds, peak RSS, error."""
    source, calib, out = source.resolve(), calib.resolve(), out.resolve()
    args = ["export", "onnx", str(source)]
    for c in cuts:
        args += ["--cut", c]
    args += ["--calibration", str(calib), "--pool", pool, "-o", str(out), "--force", "--json"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    hwm = out.with_name(out.name + ".hwm")
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(hwm), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        check=False,
        # `-c` puts the current folder first on sys.path: run from a source checkout the
        # child would import its `edgeadapt/` instead of the installed package
        cwd=out.parent,
    )
    seconds = time.perf_counter() - t0
    kb = int(hwm.read_text() or 0) if hwm.exists() else 0
    err = done.stderr.strip().splitlines()
    return {
        "seconds": seconds,
        "peak_rss_mb": kb / 1024,
        "error": None if done.returncode == 0 else (err or ["failed"])[-1],
    }


def alternate(fns: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, Any]:
    """Median ms of each callable, timed in blocks of `calls` calls whose order rotates
    every round (the first call of each block is not counted), and the median per-round
    ratios of `full` and `steps` to `whole` (the first entry)."""
    names = list(fns)
    blocks: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            times = []
            for _ in range(calls + 1):
                t0 = perf_counter_ns()
                fn()
                times.append((perf_counter_ns() - t0) / 1e6)
            blocks[name].append(float(np.median(times[1:])))
    base = np.asarray(blocks[names[0]])
    ratios = np.asarray(blocks["full"]) / base
    out: dict[str, Any] = {f"{n}_ms": float(np.median(v)) for n, v in blocks.items()}
    out["ratio"] = float(np.median(ratios))
    out["ratio_range"] = [float(ratios.min()), float(ratios.max())]
    # What the full path pays beyond the whole model, split in two: the steps called
    # bare (lost fusion across the cuts, the exit heads, one call per step) and the
    # cascade around them (input check, decisions, bookkeeping).
    out["steps_ratio"] = float(np.median(np.asarray(blocks["steps"]) / base))
    out["cascade_ratio"] = float(
        np.median(np.asarray(blocks["full"]) / np.asarray(blocks["steps"]))
    )
    return out


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    m = zoo.get(name, tiny=args.quick)
    row: dict[str, Any] = {"model": m.name, "description": m.description, "family": m.family}
    source = zoo.export(m, zoo.build(m), work / f"{m.name}.onnx")
    calib = zoo.random_inputs(m, args.calibration, seed=1)
    zoo.write_data(work / f"{m.name}-calib.npz", calib, zoo.teacher_labels(source, calib))
    bundle = work / f"{m.name}-bundle"
    cuts = zoo.cut_tensors(source, m.cuts)
    row["export"] = export_child(source, cuts, work / f"{m.name}-calib.npz", m.pool, bundle)
    row["export"]["calibration_samples"] = args.calibration
    if row["export"]["error"] is not None:
        row["error"] = f"export failed: {row['export']['error']}"
        return row
    row["settings"] = []
    try:
        time_settings(m, source, bundle, args, row["settings"])
    except Exception as e:  # report this model's failure and go on with the others
        row["error"] = f"timing failed: {type(e).__name__}: {e}"
    return row


def chain(model: AdaptiveModel, data: dict[str, np.ndarray]) -> None:
    """The bundle's steps called bare in turn, each fed what its manifest lists."""
    env = dict(data)
    for step, session in zip(model.bundle.steps, model.sessions, strict=True):
        env.update(session.run({n: env[n] for n in step.inputs}, check=False))


def time_settings(
    m: zoo.ZooModel, source: Path, bundle: Path, args: argparse.Namespace, out: list[dict[str, Any]]
) -> None:
    """Append one result per (setting, batch) to `out`."""
    reasons = available_runtimes()
    for label, runtime, threads in SETTINGS:
        if label not in args.settings:
            continue
        if reasons.get(runtime) is not None:
            out.append({"setting": label, "skipped": reasons[runtime]})
            continue
        options = {"threads": threads}
        whole = get_runtime(runtime, **options).load(source)
        try:
            full = AdaptiveModel.load(
                bundle, runtime, thresholds=NEVER, runtime_options=options, warmup=2
            )
        except Exception:
            whole.close()
            raise
        with whole, full:
            for batch in args.batches:
                data = zoo.random_inputs(m, batch, seed=100 + batch)
                feeds: Any = data if len(m.inputs) > 1 else data[m.inputs[0].name]
                for _ in range(3):  # warm both at this batch size
                    whole.run(data, check=False)
                    full.predict(feeds)
                res = alternate(
                    {
                        "whole": lambda d=data, w=whole: w.run(d, check=False),
                        "full": lambda f=feeds, c=full: c.predict(f),
                        "steps": lambda d=data, c=full: chain(c, d),
                    },
                    args.rounds,
                    args.calls,
                )
                limit = target(m.family, threads)
                res |= {
                    "setting": label,
                    "batch": batch,
                    "target": limit,
                    "hit": res["ratio"] <= limit,
                }
                out.append(res)


def print_header(args: argparse.Namespace) -> None:
    print(
        f"full path (AdaptiveModel, no early exit) / whole model (original ONNX); "
        f"{args.rounds} rotating rounds of {args.calls} calls, median ratio; steps = the "
        "steps called bare, so ratio = steps/whole (split) x full/steps (cascade)"
    )
    print(
        f"{'model':<20}{'setting':<13}{'batch':>5}{'whole ms':>10}{'steps ms':>10}"
        f"{'full ms':>10}{'ratio':>8}  {'range':<12}{'split':>7}{'cascade':>9}{'target':>8}  result",
        flush=True,
    )


def print_row(row: dict[str, Any]) -> None:
    for s in row.get("settings", []):
        if "skipped" in s:
            print(f"{row['model']:<20}{s['setting']:<13}skipped: {s['skipped']}")
            continue
        lo, hi = s["ratio_range"]
        verdict = "hit" if s["hit"] else f"MISS ({limiter(s)})"
        print(
            f"{row['model']:<20}{s['setting']:<13}{s['batch']:>5}{s['whole_ms']:>10.3f}"
            f"{s['steps_ms']:>10.3f}{s['full_ms']:>10.3f}{s['ratio']:>7.3f}x  "
            f"{lo:.2f}-{hi:.2f}x{'':<2}{s['steps_ratio']:>6.3f}x{s['cascade_ratio']:>8.3f}x"
            f"{s['target']:>7.2f}x  {verdict}"
        )
    if "error" in row:
        print(f"{row['model']:<20}{row['error']}")
    sys.stdout.flush()


def print_exports(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nexport (edgeadapt export onnx, child process, {args.calibration} calibration samples)"
    )
    print(f"{'model':<20}{'seconds':>9}{'peak RSS MB':>13}")
    for row in rows:
        e = row["export"]
        status = "" if e["error"] is None else f"  failed: {e['error']}"
        print(f"{row['model']:<20}{e['seconds']:>9.1f}{e['peak_rss_mb']:>13.0f}{status}")


def limiter(s: dict[str, Any]) -> str:
    """Which part of the full path's excess over the whole model is larger."""
    split, cascade = s["steps_ratio"] - 1, s["cascade_ratio"] - 1
    if split >= cascade:
        return "mostly the split: heads, one call per step, fusion lost at the cuts"
    return "mostly the cascade's own per-step cost"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(zoo.names()), help="comma-separated zoo names")
    p.add_argument("--settings", default=",".join(s[0] for s in SETTINGS))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=9, help="alternating rounds per figure")
    p.add_argument("--calls", type=int, default=20, help="timed calls per block")
    p.add_argument("--calibration", type=int, default=512, help="calibration samples")
    p.add_argument("--quick", action="store_true", help="reduced graphs, 3 rounds of 5 calls")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.models = [x for x in args.models.split(",") if x]
    args.settings = [x for x in args.settings.split(",") if x]
    args.batches = [int(x) for x in args.batches.split(",") if x]
    if args.quick:
        args.rounds, args.calls, args.calibration = 3, 5, 64
    rows: list[dict[str, Any]] = []
    print_header(args)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(bench_model(name, args, Path(tmp)))
            print_row(rows[-1])
            if args.json is not None:  # after every model, so a cut-short run keeps its rows
                doc = {"format": "edgeadapt-bench-models", "version": 1, "quick": args.quick}
                tmp_json = args.json.with_name(args.json.name + ".tmp")
                tmp_json.write_text(json.dumps(doc | {"rows": rows}, indent=2) + "\n")
                os.replace(tmp_json, args.json)
    print_exports(rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
