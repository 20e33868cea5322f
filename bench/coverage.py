"""Coverage of `edgeadapt export onnx` over the real model zoos, exported as users do.

Every torchvision classification builder (but the two largest, vit_h_14 and
regnet_y_128gf) at 64 px (the graph is the same as at 224; ViTs built for that size,
maxvit_t, alexnet and the VGGs at 224, inception_v3 at 160), and 18 Hugging Face
architectures from small ``*Config``s (random weights, BatchNorm statistics re-estimated):
each is exported with torch's TorchScript exporter (``--dynamo`` for the dynamo one),
cut at 2-3 cuts chosen by one generic rule (the valid cuts that `find_cuts` lists nearest
30%, 55% and 80% of the model's FLOPs), and split by ``edgeadapt export onnx`` with trained
heads in a child process that reports its own peak RSS (``VmHWM``); the heads learn the
source model's own answers on 48 calibration inputs (each head's pooling, feature count
and held-out accuracy are printed under its model). A model counts as
covered when the export succeeds and the chained steps give the source's logits (max abs
error and argmax agreement on 8 inputs the export never saw).

    python bench/coverage.py                       # both zoos, TorchScript
    python bench/coverage.py --zoo hf --dynamo     # Hugging Face only, dynamo exporter
    python bench/coverage.py --models resnet50,hf_bert --json out.json

Needs torch 2.14.1 + torchvision 0.29.1 + transformers (the real-library venv); heavy on
2 cores (about an hour for both zoos): run it niced, in the background.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt import zoo
from edgeadapt.exporters.cutpoints import find_cuts
from edgeadapt.formats.npzio import save_npz

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CLASSES = 10
TOKENS = 32
TARGETS = (0.30, 0.55, 0.80)
LARGEST = ("vit_h_14", "regnet_y_128gf")
#: Architectures whose builders fix the input size, or need a larger one.
#: alexnet's and the VGGs' adaptive pooling to 6x6 / 7x7 exports only from a feature
#: map whose size it divides, as at 224.
FIXED_SIZE = {
    "maxvit_t": 224,
    "inception_v3": 160,
    "alexnet": 224,
    **{f"vgg{d}{bn}": 224 for d in (11, 13, 16, 19) for bn in ("", "_bn")},
}
#: Builders with training-only auxiliary heads: left out, as users exporting for
#: inference do (the BatchNorm re-estimation runs in training mode, where inception_v3's
#: head needs 299 px).
AUXILIARY = ("googlenet", "inception_v3")
#: Small configs of 18 Hugging Face architectures: (auto class, model type, overrides).
_TEXT = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_position_embeddings": 128,
}
_VIT = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "image_size": 32,
    "patch_size": 8,
}
HF: dict[str, tuple[str, str, dict[str, Any]]] = {
    "hf_bert": ("text", "bert", _TEXT),
    "hf_distilbert": (
        "text",
        "distilbert",
        {"dim": 64, "n_layers": 4, "n_heads": 4, "hidden_dim": 128, "vocab_size": 1000},
    ),
    "hf_roberta": ("text", "roberta", _TEXT),
    "hf_xlm_roberta": ("text", "xlm-roberta", _TEXT),
    "hf_electra": ("text", "electra", {**_TEXT, "embedding_size": 32}),
    "hf_deberta_v2": ("text", "deberta-v2", _TEXT),
    "hf_deberta": ("text", "deberta", _TEXT),
    "hf_mobilebert": (
        "text",
        "mobilebert",
        {
            **_TEXT,
            "embedding_size": 32,
            "intra_bottleneck_size": 32,
            "true_hidden_size": 32,
            "num_feedforward_networks": 2,
        },
    ),
    "hf_albert": ("text", "albert", {**_TEXT, "embedding_size": 32}),
    "hf_mpnet": ("text", "mpnet", _TEXT),
    "hf_vit": ("image", "vit", _VIT),
    # the auto class maps these to two heads: name the one to build
    "hf_deit": ("image", "deit", {**_VIT, "architectures": ["DeiTForImageClassification"]}),
    "hf_beit": ("image", "beit", {**_VIT, "use_relative_position_bias": True}),
    "hf_swin": (
        "image",
        "swin",
        {"embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [2, 4, 8, 16]},
    ),
    "hf_levit": (
        "image",
        "levit",
        {"image_size": 64, "architectures": ["LevitForImageClassification"]},
    ),
    "hf_efficientnet": (
        "image",
        "efficientnet",
        {"image_size": 64, "width_coefficient": 1.0, "depth_coefficient": 1.0, "hidden_dim": 1280},
    ),
    "hf_convnext": (
        "image",
        "convnext",
        {"image_size": 64, "hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 2, 1]},
    ),
    "hf_resnet": (
        "image",
        "resnet",
        {"embedding_size": 16, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1]},
    ),
}


def _torchvision_models(size: int) -> dict[str, Callable[[], tuple[Any, str, int]]]:
    """Every torchvision classification builder but `LARGEST`, at `size` px (ViTs take
    the size as ``image_size``; `FIXED_SIZE` for the rest)."""
    import torchvision

    def make(name: str) -> tuple[Any, str, int]:
        px = FIXED_SIZE.get(name, size)
        extra: dict[str, Any] = {"image_size": px} if name.startswith("vit_") else {}
        if name in AUXILIARY:
            extra["aux_logits"] = False
        net = torchvision.models.get_model(name, num_classes=CLASSES, **extra)
        return net, "image", px

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    return {n: (lambda n=n: make(n)) for n in names if n not in LARGEST}


def _hf_model(name: str) -> tuple[Any, str, int]:
    import transformers as t

    kind, model_type, over = HF[name]
    config = t.AutoConfig.for_model(model_type, num_labels=CLASSES, **over)
    auto = (
        t.AutoModelForSequenceClassification
        if kind == "text"
        else t.AutoModelForImageClassification
    )
    size = int(getattr(config, "image_size", 64) or 64)
    return auto.from_config(config), kind, size


def _inputs(kind: str, size: int, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "text":
        keep = rng.integers(8, TOKENS + 1, n)
        mask = (np.arange(TOKENS)[None, :] < keep[:, None]).astype(np.int64)
        return {"input_ids": rng.integers(5, 1000, (n, TOKENS)) * mask, "attention_mask": mask}
    return {"x": rng.standard_normal((n, 3, size, size)).astype(np.float32)}


def _settle(net: Any, kind: str, size: int) -> Any:
    import torch

    if kind == "image" and any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()
    ):
        net.train()
        with torch.no_grad():
            for seed in range(2):
                net(torch.from_numpy(_inputs(kind, size, 8, seed)["x"]))
    return net.eval()


def _pick(path: Path) -> list[str]:
    """The generic rule: the valid cuts nearest 30%, 55% and 80% of the FLOPs."""
    cuts = [c for c in find_cuts(path) if 0.05 < c.flops_share < 0.95]
    picked: list[str] = []
    for target in TARGETS:
        if cuts:
            best = min(cuts, key=lambda c: abs(c.flops_share - target))
            if best.tensor not in picked:
                picked.append(best.tensor)
    order = {c.tensor: i for i, c in enumerate(cuts)}
    return sorted(picked, key=order.__getitem__)


#: Runs the edgeadapt CLI and prints the process's own peak RSS (VmHWM, which exec resets,
#: unlike the rusage of a child forked from this large process).
_CHILD = """
import atexit, sys
from edgeadapt.cli import main
def peak():
    hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")]
    print("peak_kb", hwm[0], file=sys.stderr)
atexit.register(peak)
sys.argv = ["edgeadapt", *sys.argv[1:]]
main()
"""


def _split(path: Path, cuts: list[str], calib: Path, out: Path) -> dict[str, Any]:
    """``edgeadapt export onnx`` in a child process: rc, seconds, peak RSS, error line."""
    cmd = [sys.executable, "-c", _CHILD, "export", "onnx", str(path)]
    for c in cuts:
        cmd += ["--cut", c]
    cmd += ["--calibration", str(calib), "--batch-size", "16", "-o", str(out), "--json"]
    start = time.perf_counter()
    # '-c' puts the cwd first on sys.path: run beside the model, never in a source checkout
    proc = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=path.parent
    )
    seconds = time.perf_counter() - start
    rc, stderr = proc.returncode, proc.stderr
    peaks = [int(line.split()[1]) for line in stderr.splitlines() if line.startswith("peak_kb ")]
    peak = peaks[-1] / 1024 if peaks else float("nan")
    err = [line for line in stderr.splitlines() if line.startswith("error:")]
    return {
        "rc": rc,
        "seconds": seconds,
        "peak_rss_mb": peak,
        "error": err[-1][7:] if err else (None if rc == 0 else stderr[-300:]),
    }


def _chain(bundle_dir: Path, path: Path, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max abs error relative to the largest logit (at least 1), argmax agreement) of
    the bundle's last exit against the source."""
    import onnxruntime as ort

    from edgeadapt.formats.bundle import load_bundle

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["logits"], feeds
    )[0]
    bundle = load_bundle(bundle_dir)
    env = dict(feeds)
    for step in bundle.steps:
        sess = ort.InferenceSession(str(step.path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        env.update(
            zip(
                names,
                sess.run(names, {i.name: env[i.name] for i in sess.get_inputs()}),
                strict=True,
            )
        )
    got = env[bundle.steps[-1].logits]
    err = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
    return err, float(np.mean(got.argmax(1) == want.argmax(1)))


def _heads(bundle_dir: Path) -> list[dict[str, Any]]:
    """Each trained head's pooling, feature count and held-out accuracy (on the source
    model's own answers) from the bundle's manifest."""
    from edgeadapt.formats.bundle import load_bundle

    keep = ("pool", "features", "heldout_accuracy")
    heads = load_bundle(bundle_dir).extra.get("heads", [])
    return [{k: h[k] for k in keep} for h in heads if h.get("kind") == "trained-linear"]


def run_one(
    name: str, build: Callable[[], tuple[Any, str, int]], dynamo: bool, work: Path
) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "exporter": "dynamo" if dynamo else "torchscript"}
    try:
        import torch

        torch.manual_seed(0)
        net, kind, size = build()
        net = _settle(net, kind, size)
        path = work / "model.onnx"
        zoo.torch_export(net, _inputs(kind, size, 2, 1), path, dynamo=dynamo)
        del net
        gc.collect()
        cuts = _pick(path)
        row["cuts"] = cuts
        if len(cuts) < 2:
            raise RuntimeError(f"only {len(cuts)} valid cut(s) between 5% and 95% of the FLOPs")
        calib = work / "calib.npz"
        inputs = _inputs(kind, size, 48, 2)
        save_npz(calib, **inputs, y=zoo.teacher_labels(path, inputs))  # the model's own answers
        out = work / "bundle"
        row.update(_split(path, cuts, calib, out))
        if row["rc"] == 0:
            row["heads"] = _heads(out)
            err, agree = _chain(out, path, _inputs(kind, size, 8, 3))
            row["max_abs_error"], row["argmax_agreement"] = err, agree
            row["covered"] = agree == 1.0 and err < 1e-3
    except Exception as e:  # a model that cannot be built or exported by torch is a row too
        row["error"] = (
            f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        )
    row.setdefault("covered", False)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """The coverage table as docs/benchmarks.md shows it."""
    lines = [
        "| model | cuts | export s | export peak RSS MB | max error | result |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        result = "ok" if r["covered"] else str(r.get("error") or "differs")[:120].replace("|", "/")
        err = r.get("max_abs_error")
        lines.append(
            f"| {r['model']} | {len(r.get('cuts', []))} | {r.get('seconds', 0):.1f} | "
            f"{r.get('peak_rss_mb', 0):.0f} | {'-' if err is None else f'{err:.1e}'} | {result} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", choices=("all", "torchvision", "hf"), default="all")
    ap.add_argument("--models", help="comma-separated names (torchvision builders, hf_*)")
    ap.add_argument("--dynamo", action="store_true", help="export with the dynamo exporter")
    ap.add_argument("--size", type=int, default=64, help="torchvision input size (px)")
    ap.add_argument("--json", type=Path, help="write the rows here as they finish")
    ap.add_argument("--markdown", type=Path, help="write the table for docs/benchmarks.md here")
    args = ap.parse_args(argv)
    todo: dict[str, Callable[[], tuple[Any, str, int]]] = {}
    if args.zoo in ("all", "hf"):
        todo.update({n: (lambda n=n: _hf_model(n)) for n in HF})
    if args.zoo in ("all", "torchvision"):
        todo.update(_torchvision_models(args.size))
    if args.models:
        wanted = args.models.split(",")
        todo = {n: b for n, b in todo.items() if n in wanted}
    rows = []
    for name, build in todo.items():
        with tempfile.TemporaryDirectory(prefix="edgeadapt-coverage-") as tmp:
            row = run_one(name, build, args.dynamo, Path(tmp))
        rows.append(row)
        status = "ok" if row["covered"] else f"FAILED {row.get('error')}"
        print(
            f"{name:28s} {row.get('seconds', 0):6.1f}s {row.get('peak_rss_mb', 0):7.0f} MB "
            f"{row.get('max_abs_error', float('nan')):.1e} {status}",
            flush=True,
        )
        for h in row.get("heads", []):
            print(
                f"    head: pool {h['pool']}, {h['features']} features, "
                f"held-out accuracy {h['heldout_accuracy']:.3f}",
                flush=True,
            )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    for label, hf in (("torchvision", False), ("Hugging Face", True)):
        mine = [r for r in rows if r["model"].startswith("hf_") == hf]
        if mine:
            print(f"{label}: {sum(r['covered'] for r in mine)} of {len(mine)} export and match")
    if args.markdown:
        args.markdown.write_text(markdown(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
