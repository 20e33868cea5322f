"""`edgeadapt run`: run a bundle's adaptive cascade on inputs from an .npz or .npy file.

Thin: parse options, call `edgeadapt.cascade.AdaptiveModel`, print per-sample results
(a table, or ``--json``) or write them to an .npz (``-o``).
"""

from __future__ import annotations

import sys
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
    (a one-input bundle may name it ``x``), or for a one-input bundle an .npy array,
    memory-mapped (it is checked and copied a batch at a time by `predict_batches`)."""
    import zipfile

    import numpy as np

    from edgeadapt.inputs import read_batch
    from edgeadapt.jsonio import check_regular

    if not path.exists():
        raise InputError("no such file", source=path)
    check_regular(path)  # before opening: a FIFO would block
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
        x = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise InputError(f"not a readable .npy array: {e}", source=path) from None
    if not isinstance(x, np.ndarray):
        raise InputError("expected one .npy array, got an .npz archive", source=path)
    return {bundle.input.name: x}


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
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Rows per predict call: memory is bounded by it, not by the input's size.",
)
@click.option("--quiet", is_flag=True, help="No progress bar (shown on a terminal's stderr).")
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
    batch: int,
    quiet: bool,
    as_json: bool,
    output: Path | None,
) -> None:
    """Run BUNDLE's cascade on the samples in --input and print or save the results."""
    import numpy as np

    from edgeadapt.batches import predict_batches
    from edgeadapt.bundle import load_bundle
    from edgeadapt.cascade import AdaptiveModel
    from edgeadapt.commands.progress import progress_bar
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
    n = int(next(iter(loaded.values())).shape[0])
    show = not (quiet or as_json) and sys.stderr.isatty()  # a bar is for a person watching
    with model, progress_bar("running", n, show=show) as progress:
        res, latency = predict_batches(
            model, loaded, batch, budget_ms, progress=progress, source=input_path
        )
    pred, exit_state, conf, budget_exit = (
        res[k] for k in ("pred", "exit_state", "conf", "budget_exit")
    )
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
