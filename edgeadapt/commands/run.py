"""`edgeadapt run`: run a bundle's adaptive cascade on inputs from an .npz or .npy file.

Thin: parse options, call `edgeadapt.cascade.AdaptiveModel`, print per-sample results
(a table, or ``--json``) or write them to an .npz (``-o``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeadapt.errors import InputError

_FILE = click.Path(dir_okay=False, path_type=Path)


def _parse_thresholds(text: str) -> float | list[float]:
    """``T`` (one for every exit) or ``T1,T2,...`` (one per state but the last)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(
            f"expected a number or comma-separated numbers, got {text!r}", source="--thresholds"
        ) from None
    return values[0] if len(values) == 1 else values


def _load_input(path: Path, bundle: Any) -> dict[str, Any]:
    """The model inputs in `path`: an .npz with one array per input, named as the input
    (a one-input bundle may name it ``x``), or for a one-input bundle an .npy array."""
    import zipfile

    import numpy as np

    from edgeadapt.inputs import check_batch, read_batch

    if not path.is_file():
        raise InputError("no such file", source=path)
    if zipfile.is_zipfile(path):
        return read_batch(path, bundle.inputs)
    if len(bundle.inputs) != 1:
        names = ", ".join(bundle.input_names)
        raise InputError(
            f"the bundle has {len(bundle.inputs)} inputs ({names}): give an .npz holding "
            "one array per input, named as the input",
            source=path,
        )
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"not a readable .npy array: {e}", source=path) from None
    return check_batch(bundle.inputs, x, source=path)


def _merge(latencies: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the per-batch latency dicts (steps aligned by run order)."""
    width = max(len(d["steps"]) for d in latencies)
    steps = [0.0] * width
    rows = [0] * width
    for d in latencies:
        for j, (ms, n) in enumerate(zip(d["steps"], d["rows"], strict=True)):
            steps[j] += ms
            rows[j] += n
    return {
        "total": sum(d["total"] for d in latencies),
        "steps": steps,
        "rows": rows,
        "batches": len(latencies),
    }


@click.command("run")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--input",
    "input_path",
    type=_FILE,
    required=True,
    help="Inputs: an .npz with one array per model input, named as the input (x for a "
    "one-input bundle also works), or an .npy array for a one-input bundle.",
)
@click.option("--runtime", default="onnxruntime", show_default=True, help="Backend name.")
@click.option("--thresholds", help="T (every exit) or T1,T2,... (one per state but the last).")
@click.option("--plan", "plan_path", type=_FILE, help="Plan file (states and thresholds).")
@click.option("--profile", "profile_path", type=_FILE, help="Profile (step costs for a budget).")
@click.option("--measure", help="Confidence measure: maxprob, margin or entropy.")
@click.option("--budget-ms", type=float, help="Latency budget per batch, in ms.")
@click.option("--batch", type=click.IntRange(min=1), help="Rows per predict call (default all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-o", "--output", type=_FILE, help="Write pred/exit_state/conf to this .npz.")
def run_command(
    bundle: Path,
    input_path: Path,
    runtime: str,
    thresholds: str | None,
    plan_path: Path | None,
    profile_path: Path | None,
    measure: str | None,
    budget_ms: float | None,
    batch: int | None,
    as_json: bool,
    output: Path | None,
) -> None:
    """Run BUNDLE's cascade on the samples in --input and print or save the results."""
    import numpy as np

    from edgeadapt.bundle import load_bundle
    from edgeadapt.cascade import AdaptiveModel
    from edgeadapt.jsonio import dumps
    from edgeadapt.npzio import save_npz

    if (thresholds is None) == (plan_path is None):
        raise InputError("give exactly one of --thresholds and --plan", source="--thresholds")
    b = load_bundle(bundle)
    loaded = _load_input(input_path, b)
    model = AdaptiveModel.load(
        b,
        runtime,
        thresholds=None if thresholds is None else _parse_thresholds(thresholds),
        measure=measure,
        plan=plan_path,
        profile=profile_path,
    )
    with model:
        inputs = model.check_inputs(loaded)
        n = next(iter(inputs.values())).shape[0]
        size = batch or n
        parts = [
            model.predict({k: a[i : i + size] for k, a in inputs.items()}, budget_ms)
            for i in range(0, n, size)
        ]
    pred = np.concatenate([p.pred for p in parts])
    exit_state = np.concatenate([p.exit_state for p in parts])
    conf = np.concatenate([p.conf for p in parts])
    budget_exit = np.concatenate([p.budget_exit for p in parts])
    latency = _merge([p.latency_ms for p in parts])
    if output is not None:
        save_npz(output, pred=pred, exit_state=exit_state, conf=conf, budget_exit=budget_exit)
    if as_json:
        doc = {
            "pred": pred.tolist(),
            "exit_state": exit_state.tolist(),
            "conf": [None if c != c else float(c) for c in conf.tolist()],
            "budget_exit": budget_exit.tolist(),
            "latency_ms": latency,
        }
        click.echo(dumps(doc), nl=False)
        return
    if output is None:
        names = [s.name for s in b.states]
        click.echo("sample  pred  exit   conf")
        for i in range(pred.size):
            flag = "  (budget)" if budget_exit[i] else ""
            click.echo(f"{i:6d}  {pred[i]:4d}  {names[exit_state[i]]:<5}  {conf[i]:.4f}{flag}")
    counts = np.bincount(exit_state, minlength=len(b.states))
    exits = ", ".join(f"{s.name} {int(c)}" for s, c in zip(b.states, counts, strict=True))
    click.echo(
        f"{pred.size} samples in {latency['total']:.3f} ms ({latency['batches']} batch(es)); "
        f"exits: {exits}"
    )


COMMANDS = [run_command]
