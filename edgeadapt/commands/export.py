"""`edgeadapt export onnx|family` (model -> bundle) and `edgeadapt inspect BUNDLE`.

Other exporters add a subcommand to the same group from their own module in
`edgeadapt.commands` (every module there is imported by the CLI):

    from edgeadapt.commands.export import export

    @export.command("torch")
    def export_torch(...): ...
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from edgeadapt.errors import InputError


@click.group()
def export() -> None:
    """Export a model into a bundle of states (per-exit ONNX steps + manifest)."""


output_option = click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Bundle directory to write.",
)
force_option = click.option(
    "--force", is_flag=True, help="Replace a different bundle already in the output directory."
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the bundle summary as JSON."
)


def _parse_heads(values: tuple[str, ...]) -> dict[str, str]:
    heads: dict[str, str] = {}
    for v in values:
        cut, sep, out = v.partition("=")
        if not sep or not cut or not out:
            raise InputError(f"expected CUT=OUTPUT, got {v!r}", field="--head")
        if cut in heads:
            raise InputError(f"{cut!r} is given twice", field="--head")
        heads[cut] = out
    return heads


def _report(bundle_path: Path, as_json: bool) -> None:
    from edgeadapt.bundle import load_bundle

    summary = bundle_summary(load_bundle(bundle_path))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"wrote {bundle_path} ({summary['kind']}, {len(summary['states'])} states)")
        _print_table(summary)


@export.command("onnx")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--cut",
    "cuts",
    multiple=True,
    required=True,
    metavar="TENSOR",
    help="Tensor after which a state ends (in order from input to output; repeat).",
)
@click.option(
    "--head",
    "heads",
    multiple=True,
    metavar="CUT=OUTPUT",
    help="Use the existing tensor OUTPUT as the exit logits at CUT (repeat).",
)
@click.option(
    "--logits",
    default=None,
    metavar="TENSOR",
    help="The final logits (default: the one graph output that is not a head).",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="npz with x and y to train linear heads for cuts without --head.",
)
@click.option(
    "--pool",
    type=click.Choice(["auto", "gap", "flatten"]),
    default="auto",
    show_default=True,
    help="Trained heads: global average pooling or flatten (auto: flatten small activations).",
)
@output_option
@force_option
@json_option
def export_onnx_cmd(
    model: Path,
    cuts: tuple[str, ...],
    heads: tuple[str, ...],
    logits: str | None,
    calibration: Path | None,
    pool: str,
    out: Path,
    force: bool,
    as_json: bool,
) -> None:
    """Split the ONNX classifier MODEL at --cut tensors into an early-exit bundle."""
    from edgeadapt.exporters.onnx import export_onnx

    with contextlib.ExitStack() as stack:
        bar: Any = None

        def progress(label: str, done: int, total: int) -> None:
            nonlocal bar
            if not sys.stderr.isatty():
                return
            if bar is None:
                bar = stack.enter_context(
                    click.progressbar(length=total, label="exporting", file=sys.stderr)
                )
            bar.update(1)

        export_onnx(
            model,
            out,
            cuts=cuts,
            heads=_parse_heads(heads),
            logits=logits,
            calibration=calibration,
            pool=pool,
            force=force,
            progress=progress,
        )
    _report(out, as_json)


@export.command("family")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@output_option
@click.option(
    "--name",
    "names",
    multiple=True,
    help="State name for each model, in the order given (default: file stems).",
)
@force_option
@json_option
def export_family_cmd(
    models: tuple[Path, ...], out: Path, names: tuple[str, ...], force: bool, as_json: bool
) -> None:
    """Write independent classifiers MODELS (same input and classes) as an ensemble bundle,
    states ordered by FLOPs."""
    from edgeadapt.exporters.family import export_family

    export_family(models, out, names=names or None, force=force)
    _report(out, as_json)


def bundle_summary(bundle: Any, problem: str | None = None) -> dict[str, Any]:
    """The `inspect --json` document of a loaded bundle."""
    return {
        "path": str(bundle.path),
        "kind": bundle.kind,
        "num_classes": bundle.num_classes,
        "inputs": [i.to_json() for i in bundle.inputs],
        **({"input": bundle.inputs[0].to_json()} if len(bundle.inputs) == 1 else {}),
        "states": [
            {
                "name": s.name,
                "files": list(s.files),
                "flops": s.flops,
                "macs": s.macs,
                "params": s.params,
            }
            for s in bundle.states
        ],
        "steps": [
            {
                "file": s.file,
                "flops": s.flops,
                "stage_flops": s.stage_flops,
                "head_flops": s.head_flops,
                "params": s.params,
                "unknown_ops": list(s.unknown_ops),
            }
            for s in bundle.steps
        ]
        if bundle.kind == "early-exit"
        else [],
        "producer": bundle.producer,
        "manifest_sha256": bundle.manifest_sha256,
        "verified": bundle.verified,
        "problem": problem,
    }


def _print_table(summary: dict[str, Any]) -> None:
    rows = [("state", "flops", "params", "files")]
    for s in summary["states"]:
        rows.append((s["name"], f"{s['flops']:,}", f"{s['params']:,}", " ".join(s["files"])))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for r in rows:
        click.echo(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")


@click.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a table.")
def inspect_cmd(bundle: Path, as_json: bool) -> None:
    """Show a bundle's states, files, FLOPs and parameters, and verify its files.

    Exits 1 when the bundle loads but fails verification (altered files).
    """
    from edgeadapt.bundle import BundleError, load_bundle, verify_bundle

    loaded = load_bundle(bundle, verify=False)
    problem = None
    try:
        loaded = verify_bundle(loaded)
    except BundleError as e:
        problem = str(e)
    summary = bundle_summary(loaded, problem)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{summary['path']}: {summary['kind']} bundle, {summary['num_classes']} classes")
        for spec in summary["inputs"]:
            click.echo(f"  input {spec['name']} {spec['shape']} {spec['dtype']}")
        _print_table(summary)
        for s in summary["steps"]:
            click.echo(
                f"  {s['file']}: stage {s['stage_flops']:,} + head {s['head_flops']:,} FLOPs"
            )
        click.echo("  verified: yes" if problem is None else f"  verified: NO ({problem})")
    if problem is not None:
        raise SystemExit(1)


COMMANDS = [export, inspect_cmd]
