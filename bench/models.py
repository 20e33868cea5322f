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

The two are timed in alternating blocks (order swapped every round, first call of each
block not counted) so that the load other processes put on the machine hits both alike;
each round gives one ratio of block medians, and the figure is the median ratio.
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
from edgeadapt.cascade import AdaptiveModel
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
    )
    seconds = time.perf_counter() - t0
    kb = int(hwm.read_text() or 0) if hwm.exists() else 0
    err = done.stderr.strip().splitlines()
    return {
        "seconds": seconds,
        "peak_rss_mb": kb / 1024,
        "error": None if done.returncode == 0 else (err or ["failed"])[-1],
    }


def alternate(
    a: Callable[[], object], b: Callable[[], object], rounds: int, calls: int
) -> dict[str, Any]:
    """Median ms of `a` and `b` and the median per-round ratio b/a, timed in alternating
    blocks of `calls` calls (the first call of each block is not counted)."""
    ta: list[float] = []
    tb: list[float] = []
    ratios: list[float] = []
    for r in range(rounds):
        meds = {}
        for name, fn in (("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a)):
            times = []
            for _ in range(calls + 1):
                t0 = perf_counter_ns()
                fn()
                times.append((perf_counter_ns() - t0) / 1e6)
            meds[name] = float(np.median(times[1:]))
        ta.append(meds["a"])
        tb.append(meds["b"])
        ratios.append(meds["b"] / meds["a"])
    return {
        "whole_ms": float(np.median(ta)),
        "full_ms": float(np.median(tb)),
        "ratio": float(np.median(ratios)),
        "ratio_range": [float(min(ratios)), float(max(ratios))],
    }


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
    reasons = available_runtimes()
    row["settings"] = []
    for label, runtime, threads in SETTINGS:
        if label not in args.settings:
            continue
        if reasons.get(runtime) is not None:
            row["settings"].append({"setting": label, "skipped": reasons[runtime]})
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
                    lambda d=data, w=whole: w.run(d, check=False),
                    lambda f=feeds, c=full: c.predict(f),
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
                row["settings"].append(res)
    return row


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nfull path (AdaptiveModel, no early exit) / whole model (original ONNX); "
        f"{args.rounds} alternating rounds of {args.calls} calls, median ratio"
    )
    head = f"{'model':<20}{'setting':<13}{'batch':>5}{'whole ms':>10}{'full ms':>10}{'ratio':>8}  {'range':<13}{'target':>7}  result"
    print(head)
    for row in rows:
        if "error" in row:
            print(f"{row['model']:<20}{row['error']}")
            continue
        for s in row["settings"]:
            if "skipped" in s:
                print(f"{row['model']:<20}{s['setting']:<13}skipped: {s['skipped']}")
                continue
            lo, hi = s["ratio_range"]
            print(
                f"{row['model']:<20}{s['setting']:<13}{s['batch']:>5}{s['whole_ms']:>10.3f}"
                f"{s['full_ms']:>10.3f}{s['ratio']:>7.3f}x  {lo:.2f}-{hi:.2f}x{'':<3}"
                f"{s['target']:>6.2f}x  {'hit' if s['hit'] else 'MISS'}"
            )
    print(
        f"\nexport (edgeadapt export onnx, child process, {args.calibration} calibration samples)"
    )
    print(f"{'model':<20}{'seconds':>9}{'peak RSS MB':>13}")
    for row in rows:
        e = row["export"]
        status = "" if e["error"] is None else f"  failed: {e['error']}"
        print(f"{row['model']:<20}{e['seconds']:>9.1f}{e['peak_rss_mb']:>13.0f}{status}")


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
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"{name}: exporting and timing ...", flush=True)
            rows.append(bench_model(name, args, Path(tmp)))
    print_table(rows, args)
    if args.json is not None:
        doc = {"format": "edgeadapt-bench-models", "version": 1, "quick": args.quick, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
