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
from pathlib import Path
from typing import Any

import click

from edgeadapt.commands.progress import progress_ticker
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
parity_rtol_option = click.option(
    "--parity-rtol",
    type=click.FloatRange(min=0),
    default=1e-3,
    show_default=True,
    help="Parity check: relative tolerance, times the largest |value| of each compared "
    "tensor (so near-zero logits get the scale of the others).",
)
parity_atol_option = click.option(
    "--parity-atol",
    type=click.FloatRange(min=0),
    default=1e-5,
    show_default=True,
    help="Parity check: the smallest absolute tolerance.",
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

    bundle = load_bundle(bundle_path)
    summary = bundle_summary(bundle)
    for note in bundle.extra.get("warnings", []):
        click.echo(f"warning: {note}", err=True)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {bundle_path} ({summary['kind']}, {len(summary['states'])} states)")
    _print_table(summary)
    for h in bundle.extra.get("heads", []):
        if h.get("kind") == "trained-linear":
            click.echo(
                f"  head at {h['cut']}: {h['pool']} pooling, {h['features']} features, "
                f"accuracy {h['train_accuracy']:.3f} training / {h['heldout_accuracy']:.3f} "
                f"held-out ({h['heldout_samples']} samples)"
            )
    _print_unknown_ops(summary)


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
    help="npz to train linear heads for cuts without --head: one array per model input, "
    "named as the input (or x for a one-input model), plus labels y.",
)
@click.option(
    "--pool",
    type=click.Choice(["auto", "gap", "flatten", "cls", "mean"]),
    default="auto",
    show_default=True,
    help="Trained heads' features: gap (mean over the spatial axes of [B,C,...]), flatten, "
    "cls (token 0 of [B,T,H]), mean (mean over the tokens, the unmasked ones when the model "
    "has a mask input). auto: mean for token sequences, else flatten small activations and "
    "gap large ones.",
)
@click.option(
    "--mask",
    default=None,
    metavar="INPUT",
    help="The model input that masks tokens for --pool mean (default: the one integer "
    "input whose name contains 'mask').",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Calibration samples per forward pass (peak memory grows with it).",
)
@parity_rtol_option
@parity_atol_option
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
    mask: str | None,
    batch_size: int,
    parity_rtol: float,
    parity_atol: float,
    out: Path,
    force: bool,
    as_json: bool,
) -> None:
    """Split the ONNX classifier MODEL at --cut tensors into an early-exit bundle.

    Each step after the first reads the previous activation plus the model inputs it
    needs (a transformer's attention_mask). Cuts without --head get a linear head fitted
    on --calibration, streamed in batches of --batch-size; the command prints each head's
    training and held-out accuracy and warns when they differ a lot.

    \b
    edgeadapt export onnx resnet18.onnx --cut /layer1/layer1.1/relu_1/Relu_output_0 \\
        --cut /layer2/layer2.1/relu_1/Relu_output_0 --calibration calib.npz -o bundle/
    """
    from edgeadapt.exporters.onnx import export_onnx

    with contextlib.ExitStack() as stack:
        tick = progress_ticker(stack, "exporting")

        def progress(label: str, done: int, total: int) -> None:
            tick(done, total)

        export_onnx(
            model,
            out,
            cuts=cuts,
            heads=_parse_heads(heads),
            logits=logits,
            calibration=calibration,
            pool=pool,
            mask=mask,
            batch_size=batch_size,
            parity_rtol=parity_rtol,
            parity_atol=parity_atol,
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


def _print_unknown_ops(summary: dict[str, Any]) -> None:
    """Warn (on stderr) about steps whose FLOPs miss ops the counter cannot count."""
    for s in summary["steps"]:
        if s["unknown_ops"]:
            click.echo(
                f"warning: {s['file']}: FLOPs leave out ops the counter cannot count: "
                f"{', '.join(s['unknown_ops'])}",
                err=True,
            )


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
        _print_unknown_ops(summary)
    if problem is not None:
        raise SystemExit(1)


COMMANDS = [export, inspect_cmd]
