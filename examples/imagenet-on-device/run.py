"""The paper's adaptive-oracle analysis of 15 ImageNet models, on this device's latency.

    python examples/imagenet-on-device/run.py --out DIR [--seconds-per-state 6]

Builds the 15 timm architectures whose real per-sample predictions on the 50,000
ImageNet validation images ship in examples/imagenet-val-predictions, with random
weights (latency does not depend on the weights' values), exports each to ONNX at the
input size its predictions were made with, makes one family bundle (`edgeadapt export
family`), profiles it (`edgeadapt profile --seconds-per-state`), attaches the real
predictions (`edgeadapt import-predictions`), and runs `bound`, `subset` and `report`
on measured milliseconds. It prints the models with GMACs and measured ms side by
side, the Pareto envelope in each cost, the exact oracle and the best 2/3/4-subsets in
each cost view, and where the choice of models differs.

Cost views:
- ``gmacs``: the GMACs of each model's timm card (the paper's cost);
- ``ms-direct``: measured p50 ms of the model alone (the oracle runs only the model it
  picks, the paper's view);
- ``ms-cascade``: the oracle tries models cheapest first and pays every model it ran
  (what a deployed cascade without an oracle pays at best).

Everything is written under DIR (ONNX files, bundle, profile, evaluation, tables, the
report); a second run reuses the ONNX files and the bundle, and profiles again.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PREDICTIONS = HERE.parent / "imagenet-val-predictions" / "predictions.npz"
CARDS = HERE.parent / "imagenet-val-predictions" / "gmacs.csv"
#: Subset sizes the summary shows.
KS = (2, 3, 4)
#: The preset profiled on: one ONNX Runtime thread, the latency setting, and the one
#: least disturbed by other work on a small shared machine.
DEVICE = "x86-ort-1t"
OPSET = 17

Log = Callable[[str], None]


@dataclass(frozen=True)
class Member:
    """One architecture: its name (the predictions' column), module and input size.

    `size` is the side of the square image the predictions were made at; a member
    whose size differs from the family bundle's shared input resizes it in its graph.
    """

    name: str
    module: Any  # torch.nn.Module
    size: int


# ------------------------------------------------------------------ the CLI, in process


def edgeadapt(args: Sequence[str], log: Log, *, as_json: bool = False) -> Any:
    """Run one `edgeadapt` command in this process, echoing it first; with `as_json`,
    add ``--json`` and return the parsed output."""
    from edgeadapt.cli import cli

    argv = [str(a) for a in args] + (["--json"] if as_json else [])
    log("$ edgeadapt " + " ".join(shlex.quote(a) for a in argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if as_json else contextlib.nullcontext():
        # not standalone: click returns the exit code of a command that failed
        code = cli.main(args=argv, prog_name="edgeadapt", standalone_mode=False)
    if code:
        raise SystemExit(f"edgeadapt {argv[0]} failed (exit code {code})")
    return json.loads(out.getvalue()) if as_json else None


# ------------------------------------------------------------------ export


def export_onnx(member: Member, bundle_size: int, path: Path) -> None:
    """Trace `member` to ONNX with a dynamic batch axis, input ``[batch, 3, S, S]``.

    A member whose predictions were made at another size than the bundle's input gets
    a bilinear resize in front, so its network runs at its own size (the resize costs a
    fraction of a millisecond beside the network).
    """
    import torch

    class Resized(torch.nn.Module):
        def __init__(self, model: torch.nn.Module, size: int) -> None:
            super().__init__()
            self.model, self.size = model, size

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False
            )
            return self.model(x)

    module = member.module.eval()
    if member.size != bundle_size:
        module = Resized(module, member.size).eval()
    x = torch.zeros(1, 3, bundle_size, bundle_size)
    tmp = path.with_suffix(".onnx.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # timm's shape asserts are Python checks on static sizes: traced as constants,
        # which is right for a fixed input size (only the batch axis is dynamic).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the TorchScript exporter (dynamo=False) is deprecated but fast and needs no
        # onnxscript; edgeadapt's own torch exporter uses it too
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (x,),
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    os.replace(tmp, path)


# ------------------------------------------------------------------ the oracle on subsets


def _rows(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, counts = np.unique(correct, axis=0, return_counts=True)
    return rows, counts.astype(np.float64)


def oracle_cost(
    rows: np.ndarray, weights: np.ndarray, costs: np.ndarray, states: Sequence[int], cascade: bool
) -> tuple[float, float]:
    """(A_oracle, R_oracle) of the subset `states` (sorted cheapest first) by the exact
    oracle (eq. 4/5): per sample the cheapest correct state, the cheapest state when
    none is; with `cascade` the sample also pays every cheaper state of the subset."""
    sub = rows[:, list(states)]
    own = costs[list(states)]
    paid_upto = np.cumsum(own) if cascade else own
    hit = sub.any(axis=1)
    first = np.where(hit, np.argmax(sub, axis=1), 0)
    paid = paid_upto[first]
    n = weights.sum()
    return float(weights @ hit) / n, float(weights @ paid) / n


def best_subsets(
    correct: np.ndarray, costs: Sequence[float], ks: Sequence[int], cascade: bool, keep: int
) -> dict[int, tuple[tuple[int, ...], float, float]]:
    """For each k: the k-subset containing state `keep` (the most accurate model, so
    the oracle is never less accurate than it) with the least exact-oracle cost, by
    exhaustive search. Returns {k: (states, A_oracle, R_oracle)}; `costs` are each
    model's own cost and the subset is tried cheapest first."""
    cost = np.asarray(costs, dtype=np.float64)
    rows, weights = _rows(correct)
    others = [i for i in range(cost.size) if i != keep]
    out = {}
    for k in ks:
        best: tuple[tuple[int, ...], float, float] | None = None
        for extra in itertools.combinations(others, k - 1):
            states = tuple(sorted((*extra, keep), key=lambda i: (cost[i], i)))
            a, r = oracle_cost(rows, weights, cost, states, cascade)
            if best is None or r < best[2]:
                best = (states, a, r)
        assert best is not None
        out[k] = best
    return out


# ------------------------------------------------------------------ tables


def write_table(
    path: Path, names: Sequence[str], costs: Sequence[float], accs: Sequence[float]
) -> None:
    """A state table (name,cost,accuracy) for `bound --table` / `subset --table`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "cost", "accuracy"])
    for n, c, a in zip(names, costs, accs, strict=True):
        w.writerow([n, f"{c:.6g}", f"{a:.6f}"])
    from edgeadapt.formats.atomic import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue().encode())


def read_card_gmacs(path: Path = CARDS) -> dict[str, float]:
    """The published GMACs per image of each model (its timm card), by name."""
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return {r["name"]: float(r["cost"]) for r in csv.DictReader(lines)}


def _fmt_set(names: Sequence[str]) -> str:
    return ", ".join(names)


def _subset_row(k: int, view: str, choice: dict[str, Any]) -> list[str]:
    """One row of the best-k-subsets tables: k, cost view, R_oracle, A_oracle %, models."""
    r, a = choice["r_oracle"], choice["a_oracle"]
    return [str(k), view, f"{r:.4g}", f"{100 * a:.2f}", _fmt_set(choice["states"])]


# ------------------------------------------------------------------ the pipeline


def _profile(bundle_dir: Path, device: str, seconds: float, path: Path, log: Log) -> None:
    edgeadapt(
        [
            "profile",
            bundle_dir,
            "--device",
            device,
            "--seconds-per-state",
            seconds,
            "-o",
            path,
        ],
        log,
    )


def run_pipeline(
    members: Sequence[Member],
    predictions: Path,
    out: Path,
    card_gmacs: dict[str, float],
    *,
    device: str = DEVICE,
    seconds_per_state: float = 6.0,
    ks: Sequence[int] = KS,
    log: Log = print,
    report: bool = True,
    reuse_profile: bool = False,
) -> dict[str, Any]:
    """Export, bundle, profile, attach predictions, bound/subset/report; returns the
    summary (also written to OUT/summary.json) and logs the tables."""
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.evaluation import load_evaluation
    from edgeadapt.formats.profile import load_profile, state_costs

    t0 = time.monotonic()
    stage = _stager(t0, log)
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir = _family_bundle(members, out, stage, log)
    bundle = load_bundle(bundle_dir)
    states = [s.name for s in bundle.states]

    profile_path = out / "profile.json"
    if reuse_profile and profile_path.is_file():
        stage(3, f"profile: {profile_path} exists, kept (--reuse-profile)")
    else:
        stage(3, f"profile on preset {device}, {seconds_per_state:g} s per state")
        _profile(bundle_dir, device, seconds_per_state, profile_path, log)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prof = load_profile(profile_path, bundle)

    stage(4, "attach the real predictions")
    evaluation_path = out / "evaluation.npz"
    attach = ["import-predictions", predictions, "-o", evaluation_path]
    edgeadapt([*attach, "--states", ",".join(states), "--bundle", bundle_dir], log)
    ev = load_evaluation(evaluation_path)

    stage(5, "bound and subset in each cost view")
    gmacs = [card_gmacs[s] for s in states]
    ks = [k for k in ks if k <= len(states)]
    files = (bundle_dir, profile_path, evaluation_path)
    views = _views(out, files, states, (gmacs, state_costs(prof, bundle)), ev, ks, log)

    report_path = _report(files, out, stage, log) if report else None
    summary = {
        "format": "edgeadapt-imagenet-on-device",
        "version": 1,
        "states": _state_rows(members, bundle, prof, gmacs, [float(a) for a in ev.accuracies]),
        "profile": _profile_record(prof, profile_path),
        "views": views,
        "report": None if report_path is None else str(report_path),
        "seconds": round(time.monotonic() - t0, 1),
    }
    return _write_summary(summary, out, ks, log)


def _stager(t0: float, log: Log) -> Callable[[int, str], None]:
    """`stage(k, text)`: log the start of stage k of 6, with the seconds since `t0`."""

    def stage(k: int, text: str) -> None:
        log(f"\n[{k}/6 {time.monotonic() - t0:6.0f} s] {text}")

    return stage


def _report(
    files: tuple[Path, Path, Path], out: Path, stage: Callable[[int, str], None], log: Log
) -> Path:
    """Stage 6: `edgeadapt report` on the bundle, profile and evaluation `files`."""
    bundle_dir, profile_path, evaluation_path = files
    stage(6, "report")
    report_path = out / "report" / "report.html"
    given = ["--profile", profile_path, "--evaluation", evaluation_path, "-o", report_path]
    edgeadapt(["report", bundle_dir, *given], log)
    return report_path


def _write_summary(
    summary: dict[str, Any], out: Path, ks: Sequence[int], log: Log
) -> dict[str, Any]:
    """`summary` written to OUT/summary.json, plotted (when matplotlib is there) and
    logged as the tables; returned with the plot's path."""
    from edgeadapt.formats.jsonio import write_json

    write_json(out / "summary.json", summary)
    figure = plot_views(summary, out / "accuracy-vs-cost.png")
    if figure is not None:
        summary["plot"] = str(figure)
    for line in summary_text(summary, ks).splitlines():
        log(line)
    return summary


def _family_bundle(
    members: Sequence[Member], out: Path, stage: Callable[[int, str], None], log: Log
) -> Path:
    """Stages 1 and 2: every member exported to ONNX, then one family bundle of them
    (kept when already there); its folder."""
    onnx_dir = out / "onnx"
    onnx_dir.mkdir(exist_ok=True)
    bundle_size = min(m.size for m in members)
    stage(1, f"export {len(members)} models to ONNX (random weights, input 3x{bundle_size}^2)")
    paths = _export_members(members, bundle_size, onnx_dir, log)
    bundle_dir = out / "bundle"
    stage(2, "one family bundle, every member parity-checked on ORT (minutes; silent until done)")
    if (bundle_dir / "manifest.json").is_file():
        log(f"  {bundle_dir} exists, kept")
    else:
        args: list[Any] = ["export", "family", *paths, "-o", bundle_dir]
        for m in members:
            args += ["--name", m.name]
        edgeadapt(args, log)
    return bundle_dir


def _export_members(
    members: Sequence[Member], bundle_size: int, onnx_dir: Path, log: Log
) -> list[Path]:
    """Each member exported to ONNX at `bundle_size` (a file already there is kept)."""
    paths = []
    for i, m in enumerate(members, 1):
        path = onnx_dir / f"{m.name}.onnx"
        if path.is_file():
            log(f"  {i:2d}/{len(members)} {m.name}: {path} exists, kept")
        else:
            t = time.monotonic()
            export_onnx(m, bundle_size, path)
            params = sum(p.numel() for p in m.module.parameters()) / 1e6
            log(
                f"  {i:2d}/{len(members)} {m.name} at {m.size}x{m.size}: {params:.1f} M params, "
                f"{time.monotonic() - t:.1f} s"
            )
        paths.append(path)
    return paths


def _views(
    out: Path,
    files: tuple[Path, Path, Path],
    states: list[str],
    view_costs: tuple[list[float], list[float]],
    ev: Any,
    ks: Sequence[int],
    log: Log,
) -> dict[str, Any]:
    """Bound and subsets in each cost view (card GMACs, measured ms, ms along the
    chain), from the tables written under `out` and the bundle's own `files` (bundle,
    profile, evaluation)."""
    bundle_dir, profile_path, evaluation_path = files
    gmacs, ms = view_costs
    accs = [float(a) for a in ev.accuracies]
    ms_order = sorted(range(len(states)), key=lambda i: (ms[i], i))
    cumulative = np.empty(len(states))
    cumulative[ms_order] = np.cumsum([ms[i] for i in ms_order])
    tables = {
        "gmacs": (gmacs, "GMACs"),
        "ms-direct": (ms, "ms"),
        "ms-cascade": (list(cumulative), "ms"),
    }
    views: dict[str, Any] = {}
    for view, (costs, unit) in tables.items():
        table = out / f"{view}.csv"
        write_table(table, states, costs, accs)
        bound = edgeadapt(
            ["bound", "--table", table, "--evaluation", evaluation_path, "--envelope"],
            log,
            as_json=True,
        )
        views[view] = {"unit": unit, "table": str(table), "bound": bound}
        if view != "ms-cascade":  # cumulative costs hold only for the whole chain
            views[view]["subset_accuracy_first"] = edgeadapt(
                ["subset", "--table", table, "--evaluation", evaluation_path], log, as_json=True
            )
            views[view]["subset_alpha1_envelope"] = edgeadapt(
                ["subset", "--table", table, "--envelope"], log, as_json=True
            )
    # the bundle's own view: measured ms from the profile, states as the bundle has them
    views["ms-direct"]["bound_bundle"] = edgeadapt(
        [
            "bound",
            bundle_dir,
            "--profile",
            profile_path,
            "--evaluation",
            evaluation_path,
            "--envelope",
        ],
        log,
        as_json=True,
    )
    own = {"gmacs": gmacs, "ms-direct": ms, "ms-cascade": ms}
    _keep_top(views, own, states, np.asarray(ev.correct, dtype=bool), ks)
    return views


def _keep_top(
    views: dict[str, Any],
    own: dict[str, list[float]],
    states: list[str],
    correct: np.ndarray,
    ks: Sequence[int],
) -> None:
    """Each view's best k-subsets keeping the most accurate model, on its `own` costs."""
    top = int(np.argmax(correct.mean(axis=0)))
    for view, costs in own.items():
        chosen = best_subsets(correct, costs, ks, view == "ms-cascade", top)
        views[view]["subset_keep_top"] = {
            str(k): {"states": [states[i] for i in s], "a_oracle": a, "r_oracle": r}
            for k, (s, a, r) in chosen.items()
        }


def _state_rows(
    members: Sequence[Member],
    bundle: Any,
    prof: Any,
    gmacs: list[float],
    accs: list[float],
) -> list[dict[str, Any]]:
    """The summary's row per model: its input, GMACs (card and counted), size, costs
    and accuracy."""
    from edgeadapt.formats.profile import state_costs

    ms, p90 = state_costs(prof, bundle), state_costs(prof, bundle, stat="p90")
    counted = [s.macs / 1e9 for s in bundle.states]
    return [
        {
            "name": s.name,
            "input": next(m.size for m in members if m.name == s.name),
            "card_gmacs": gmacs[i],
            "counted_gmacs": counted[i],
            "params_m": s.params / 1e6,
            # nodes whose shapes inference left unknown count zero (see edgeadapt.graph.flops)
            "counted_complete": not bundle.steps[i].unknown_ops,
            "p50_ms": ms[i],
            "p90_ms": p90[i],
            "accuracy": accs[i],
        }
        for i, s in enumerate(bundle.states)
    ]


def _profile_record(prof: Any, path: Path) -> dict[str, Any]:
    """What the summary says of the profile: where, on what, how noisy."""
    return {
        "path": str(path),
        "device": prof.device_id,
        "cpu": prof.device.get("cpu"),
        "preset": prof.settings.get("preset"),
        "seconds_per_state": prof.settings.get("seconds_per_state"),
        "load_before": prof.before.get("load"),
        "load_after": prof.after.get("load"),
        "noisy": prof.noisy,
        "noise_reasons": list(prof.noise_reasons),
    }


# ------------------------------------------------------------------ the printout


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [headers, *rows]
    )


def summary_text(summary: dict[str, Any], ks: Sequence[int] = KS) -> str:
    """The tables run.py prints at the end."""
    views = summary["views"]
    top = max(summary["states"], key=lambda s: s["accuracy"])
    alone = {"gmacs": top["card_gmacs"], "ms-direct": top["p50_ms"], "ms-cascade": top["p50_ms"]}
    parts = [
        _models_text(summary),
        _envelope_text(views),
        _oracle_text(views, top["name"], alone),
        *_subsets_text(views, ks, alone),
        _differs_text(views, ks),
    ]
    if summary.get("report"):
        parts.append(f"report: {summary['report']}")
    if summary.get("plot"):
        parts.append(f"plot: {summary['plot']}")
    return "\n\n".join(parts)


def _models_text(summary: dict[str, Any]) -> str:
    """The profile's conditions and the models, cheapest measured first."""
    st = sorted(summary["states"], key=lambda s: s["p50_ms"])
    rows = [
        [
            s["name"],
            str(s["input"]),
            f"{s['card_gmacs']:.2f}",
            f"{s['counted_gmacs']:.2f}" + ("" if s["counted_complete"] else "*"),
            f"{s['p50_ms']:.2f}",
            f"{s['p90_ms']:.2f}",
            f"{s['p50_ms'] / s['card_gmacs']:.1f}",
            f"{100 * s['accuracy']:.2f}",
        ]
        for s in st
    ]
    p = summary["profile"]
    head = [
        f"profile: {p['cpu']}, preset {p['preset']}, {p['seconds_per_state']} s per state; "
        f"load average before {p['load_before']}, after {p['load_after']}"
        + ("; flagged NOISY: " + "; ".join(p["noise_reasons"]) if p["noisy"] else "; not noisy"),
        "",
        "models, cheapest measured first (GMACs: timm card / counted in the ONNX graph)",
        _table(
            ["model", "input", "GMACs", "counted", "p50 ms", "p90 ms", "ms/GMAC", "top-1 %"],
            rows,
        ),
    ]
    if not all(s["counted_complete"] for s in st):
        head.append(
            "* the graph count is incomplete: shape inference left some nodes without "
            "shapes, and they count zero (the manifest lists them as unknown_ops)"
        )
    twins: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for s in st:
        twins.setdefault((s["counted_gmacs"], s["params_m"]), []).append(s)
    pairs = [g for g in twins.values() if len(g) > 1]
    if pairs:
        head.append(
            "same architecture, other weights (the spread is this machine's noise): "
            + "; ".join(
                " vs ".join(f"{s['name']} {s['p50_ms']:.2f} ms" for s in g)
                + f" ({max(s['p50_ms'] for s in g) / min(s['p50_ms'] for s in g):.2f}x)"
                for g in pairs
            )
        )
    return "\n".join(head)


def _envelope_text(views: dict[str, Any]) -> str:
    """Which models each cost view's Pareto envelope keeps, and where they differ."""
    lines = ["Pareto envelope (each model on it is more accurate than every cheaper one):"]
    for view in ("gmacs", "ms-direct"):
        b = views[view]["bound"]
        dropped = set(b.get("dominated", []))
        envelope = [s["name"] for s in b["states"] if s["name"] not in dropped]
        lines.append(f"  {view:10s} {len(envelope):2d} models: {_fmt_set(envelope)}")
    env = {
        v: {s["name"] for s in views[v]["bound"]["states"]}
        - set(views[v]["bound"].get("dominated", []))
        for v in ("gmacs", "ms-direct")
    }
    only_g, only_m = env["gmacs"] - env["ms-direct"], env["ms-direct"] - env["gmacs"]
    lines.append(
        "  differs: "
        + (
            f"only on GMACs' {_fmt_set(sorted(only_g)) or '-'}; only on ms' {_fmt_set(sorted(only_m)) or '-'}"
            if only_g or only_m
            else "no, the same models"
        )
    )
    return "\n".join(lines)


def _oracle_text(views: dict[str, Any], top: str, alone: dict[str, float]) -> str:
    """The exact oracle over all models in each cost view."""
    orows = []
    for view in ("gmacs", "ms-direct", "ms-cascade"):
        e, b = views[view]["bound"]["exact"], views[view]["bound"]
        orows.append(
            [
                view,
                views[view]["unit"],
                f"{e['r_oracle']:.4g}",
                f"{100 * e['a_oracle']:.2f}",
                f"{b['r_n']:.4g}",
                f"{100 * b['a_n']:.2f}",
                f"{e['r_ratio']:.2f}x",
                f"{alone[view] / e['r_oracle']:.2f}x",
            ]
        )
    return (
        "exact oracle over all models (eq. 4/5), baseline S_N = the most accurate model "
        f"({top}); in the cascade view R_N is the chain up to it, 'vs S_N alone' "
        "compares with running only S_N\n"
        + _table(
            ["view", "unit", "R_oracle", "A_oracle %", "R_N", "A_N %", "R_ratio", "vs S_N alone"],
            orows,
        )
    )


def _subsets_text(views: dict[str, Any], ks: Sequence[int], alone: dict[str, float]) -> list[str]:
    """The best k-subsets in each view: keeping the top model, by accuracy first, and on
    the Pareto envelope (alpha = 1)."""
    parts = []
    srows = []
    for k in ks:
        for view in ("gmacs", "ms-direct", "ms-cascade"):
            c = views[view]["subset_keep_top"][str(k)]
            srows.append(
                [
                    str(k),
                    view,
                    f"{c['r_oracle']:.4g}",
                    f"{100 * c['a_oracle']:.2f}",
                    f"{alone[view] / c['r_oracle']:.2f}x",
                    _fmt_set(c["states"]),
                ]
            )
    parts.append(
        "best k-subsets keeping the most accurate model: least exact-oracle cost\n"
        + _table(["k", "view", "R_oracle", "A_oracle %", "vs S_N alone", "models"], srows)
    )
    arows = []
    for k in ks:
        for view in ("gmacs", "ms-direct"):
            e = next(c for c in views[view]["subset_accuracy_first"]["curve"] if c["k"] == k)
            arows.append(_subset_row(k, view, e))
    parts.append(
        "best k-subsets by `edgeadapt subset --evaluation` (highest oracle accuracy, ties by cost)\n"
        + _table(["k", "view", "R_oracle", "A_oracle %", "models"], arows)
    )
    erows = []
    for k in ks:
        for view in ("gmacs", "ms-direct"):
            curve = views[view]["subset_alpha1_envelope"]["curve"]
            e = next((c for c in curve if c["k"] == k), None)
            if e is not None:
                erows.append(_subset_row(k, view, e))
    parts.append(
        "best k-subsets by `edgeadapt subset --envelope` (alpha = 1, eq. 9, on each cost's "
        "Pareto envelope; keeps its top model)\n"
        + _table(["k", "view", "R_oracle", "A_oracle %", "models"], erows)
    )
    return parts


def _differs_text(views: dict[str, Any], ks: Sequence[int]) -> str:
    """Where the subsets chosen differ between cost views."""
    diffs = []
    for k in ks:
        picks = {v: views[v]["subset_keep_top"][str(k)]["states"] for v in views}
        if len({tuple(sorted(p)) for p in picks.values()}) > 1:
            diffs.append(f"  k={k}: " + "; ".join(f"{v}: {_fmt_set(p)}" for v, p in picks.items()))
        acc = {
            v: views[v]["subset_accuracy_first"]["curve"][k - 1]["states"]
            for v in ("gmacs", "ms-direct")
        }
        if len({tuple(sorted(p)) for p in acc.values()}) > 1:
            diffs.append(
                f"  k={k} (accuracy first): "
                + "; ".join(f"{v}: {_fmt_set(p)}" for v, p in acc.items())
            )
    for k in ks:
        env = {}
        for v in ("gmacs", "ms-direct"):
            curve = views[v]["subset_alpha1_envelope"]["curve"]
            env[v] = next((c["states"] for c in curve if c["k"] == k), None)
        if None not in env.values() and len({tuple(sorted(p)) for p in env.values()}) > 1:
            diffs.append(
                f"  k={k} (alpha=1, envelope): "
                + "; ".join(f"{v}: {_fmt_set(p)}" for v, p in env.items())
            )
    return "where the choice differs between cost views:\n" + (
        "\n".join(diffs) if diffs else "  nowhere: every view picks the same models"
    )


def plot_views(summary: dict[str, Any], path: Path) -> Path | None:
    """Accuracy vs card GMACs and vs measured ms side by side, each cost's Pareto
    envelope drawn; None when matplotlib (the ``plot`` extra) is absent."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return None
    states = summary["states"]
    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, view, key, label in (
        (axes[0], "gmacs", "card_gmacs", "GMACs per image (timm card)"),
        (axes[1], "ms-direct", "p50_ms", "measured p50 ms per image (this device)"),
    ):
        dropped = set(summary["views"][view]["bound"].get("dominated", []))
        xs = [s[key] for s in states]
        ys = [100 * s["accuracy"] for s in states]
        ax.scatter(xs, ys, color="tab:blue")
        front = sorted((s[key], 100 * s["accuracy"]) for s in states if s["name"] not in dropped)
        ax.step(
            *zip(*front, strict=True), where="post", color="tab:orange", label="Pareto envelope"
        )
        for s in states:
            ax.annotate(
                s["name"],
                (s[key], 100 * s["accuracy"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        e = summary["views"][view]["bound"]["exact"]
        ax.scatter(
            [e["r_oracle"]],
            [100 * e["a_oracle"]],
            marker="*",
            s=150,
            color="tab:red",
            label="exact oracle, all 15",
        )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right")
    axes[0].set_ylabel("ImageNet val top-1 %")
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------ main


def timm_members(names: Sequence[str]) -> list[Member]:
    """The timm architectures with random weights, at each one's default input size:
    the size timm's `resolve_data_config` gives without --img-size, which is what the
    inference script that made the predictions used (224 for all but efficientnet_b4,
    320)."""
    from timm_cpu import import_timm

    timm = import_timm()
    members = []
    for name in names:
        model = timm.create_model(name, pretrained=False)
        _, h, w = model.pretrained_cfg["input_size"]
        if h != w:
            raise SystemExit(f"{name}: non-square input {h}x{w} is not supported here")
        members.append(Member(name, model, int(h)))
    return members


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Output directory.")
    parser.add_argument("--device", default=DEVICE, help=f"Preset to profile on [{DEVICE}].")
    parser.add_argument(
        "--seconds-per-state", type=float, default=6.0, help="Profiling budget per model [6]."
    )
    parser.add_argument(
        "--reuse-profile",
        action="store_true",
        help="Keep OUT/profile.json when it exists (analyse again without measuring).",
    )
    parser.add_argument(
        "--models", default=None, help="Comma-separated subset of the 15 models (default: all)."
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import torch

    torch.set_num_threads(1)
    with np.load(PREDICTIONS, allow_pickle=False) as z:
        names = [str(n) for n in z["models"]]
    if args.models:
        wanted = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown model(s): {', '.join(unknown)}")
        names = wanted
    print(f"building {len(names)} timm models with random weights", flush=True)
    members = timm_members(names)
    run_pipeline(
        members,
        PREDICTIONS,
        args.out,
        read_card_gmacs(),
        device=args.device,
        seconds_per_state=args.seconds_per_state,
        log=lambda s: print(s, flush=True),
        reuse_profile=args.reuse_profile,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
