"""What the export commands share, and `edgeadapt inspect BUNDLE`.

The export commands (``export onnx|family|torch|branches``) take the same bundle options
(``-o/--output``, ``--force``, ``--parity-rtol``/``--parity-atol``) and show the bundle
they wrote as `inspect` shows one: a table of states, the trained heads, warnings, or
with ``--json`` the `bundle_summary` document.

`edgeadapt.exporters.cutpoints` is imported where it is used: at the top it would add
about 5 ms to `edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgeadapt.commands.options import (
    BUNDLE_OR_MODEL,
    echo_json,
    json_option,
    number,
    output_option,
)
from edgeadapt.formats.bundle import BundleError, load_bundle, verify_bundle
from edgeadapt.render import table

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "bundle_output_option",
    "bundle_summary",
    "echo_summary",
    "export_options",
    "force_option",
    "parity_atol_option",
    "parity_rtol_option",
    "show_written",
    "summary_json_option",
]

force_option = click.option(
    "--force", is_flag=True, help="Replace a different bundle already in the output directory."
)
parity_rtol_option = click.option(
    "--parity-rtol",
    type=number(0),
    default=1e-3,
    show_default=True,
    help="Parity check: relative tolerance, times the largest |value| of each compared "
    "tensor (so near-zero logits get the scale of the others).",
)
parity_atol_option = click.option(
    "--parity-atol",
    type=number(0),
    default=1e-5,
    show_default=True,
    help="Parity check: the smallest absolute tolerance.",
)


def bundle_output_option() -> Callable[[F], F]:
    """``-o/--output DIR``: the bundle directory an export command writes (required)."""
    return output_option("Bundle directory to write.", dir_okay=True, required=True)


def summary_json_option() -> Callable[[F], F]:
    """``--json``: print the written bundle's `bundle_summary` instead of a table."""
    return json_option("Print the bundle summary as JSON.")


def export_options(*, parity: bool = False) -> Callable[[F], F]:
    """The options every export command ends with, in this order: (with `parity`)
    ``--parity-rtol`` and ``--parity-atol``, then ``-o/--output DIR``, ``--force`` and
    ``--json``."""
    decorators = [parity_rtol_option, parity_atol_option] if parity else []
    decorators += [bundle_output_option(), force_option, summary_json_option()]

    def apply(f: F) -> F:
        for decorate in reversed(decorators):
            f = decorate(f)
        return f

    return apply


def bundle_summary(bundle: Any, problem: str | None = None) -> dict[str, Any]:
    """The `inspect --json` document of a loaded bundle (`problem`: why verification
    failed, or None)."""
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
                **({"chain": bundle.chain_names[i]} if bundle.chain_names else {}),
            }
            for i, s in enumerate(bundle.states)
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


def echo_summary(summary: dict[str, Any]) -> None:
    """Print the bundle summary as strict JSON (`echo_json`)."""
    echo_json(summary, what="the bundle summary")


def _states_table(summary: dict[str, Any]) -> None:
    rows = [
        (s["name"], f"{s['flops']:,}", f"{s['params']:,}", " ".join(s["files"]))
        for s in summary["states"]
    ]
    text = table(("state", "flops", "params", "files"), rows, left=(0, 3))
    click.echo("\n".join(f"  {line}" for line in text.splitlines()))


def _unknown_ops(summary: dict[str, Any]) -> None:
    """Warn (on stderr) about steps whose FLOPs miss ops the counter cannot count."""
    for s in summary["steps"]:
        if s["unknown_ops"]:
            click.echo(
                f"warning: {s['file']}: FLOPs leave out ops the counter cannot count: "
                f"{', '.join(s['unknown_ops'])}",
                err=True,
            )


def show_written(bundle: Any, output: Path, as_json: bool) -> None:
    """Show the bundle an export command wrote to `output`: its warnings (stderr), then
    the summary as JSON, or a line, the states table, the trained heads' accuracies and
    the ops the FLOPs leave out."""
    summary = bundle_summary(bundle)
    for note in bundle.extra.get("warnings", []):
        click.echo(f"warning: {note}", err=True)
    if as_json:
        echo_summary(summary)
        return
    click.echo(f"wrote {output} ({summary['kind']}, {len(summary['states'])} states)")
    _states_table(summary)
    for h in bundle.extra.get("heads", []):
        if h.get("kind") == "trained-linear":
            click.echo(
                f"  head at {h['cut']}: {h['pool']} pooling, {h['features']} features, "
                f"accuracy {h['train_accuracy']:.3f} training / {h['heldout_accuracy']:.3f} "
                f"held-out ({h['heldout_samples']} samples)"
            )
    _unknown_ops(summary)


def _show_cuts(model: Path, as_json: bool) -> None:
    """Print the valid cut points of an ONNX model (`find_cuts`) as a table or JSON."""
    from edgeadapt.exporters.cutpoints import find_cuts

    cuts = find_cuts(model)
    if as_json:
        echo_json({"model": str(model), "cuts": [c.to_json() for c in cuts]}, what="the cuts")
        return
    click.echo(
        f"{model}: {len(cuts)} valid cut points (one activation crosses; give each as "
        "--cut to export onnx)"
    )
    rows = [
        (
            f"{100 * c.flops_share:.1f}%",
            c.module or "-",
            c.op_type,
            "x".join(map(str, c.shape)),
            c.tensor,
        )
        for c in cuts
    ]
    text = table(("flops before", "module", "op", "shape", "tensor"), rows, left=(1, 2, 3, 4))
    click.echo("\n".join(f"  {line}" for line in text.splitlines()))


@click.command("inspect")
@click.argument("bundle", type=BUNDLE_OR_MODEL, metavar="BUNDLE|MODEL")
@click.option(
    "--cuts",
    "cuts",
    is_flag=True,
    help="BUNDLE is an ONNX model: list the tensors it can be cut at (one activation "
    "crosses, no skip connection), with the share of the FLOPs before each and the "
    "module the exporter recorded.",
)
@json_option("Print a JSON document instead of a table.")
def inspect_cmd(bundle: Path, cuts: bool, as_json: bool) -> None:
    """Show a bundle's states, files, FLOPs and parameters, and verify its files.

    With --cuts, list the valid cut points of an ONNX model instead.
    Exits 1 when the bundle loads but fails verification (altered files).
    """
    if cuts:
        _show_cuts(bundle, as_json)
        return
    loaded = load_bundle(bundle, verify=False)
    problem = None
    try:
        loaded = verify_bundle(loaded)
    except BundleError as e:
        problem = str(e)
    summary = bundle_summary(loaded, problem)
    if as_json:
        echo_summary(summary)
    else:
        click.echo(f"{summary['path']}: {summary['kind']} bundle, {summary['num_classes']} classes")
        for spec in summary["inputs"]:
            click.echo(f"  input {spec['name']} {spec['shape']} {spec['dtype']}")
        _states_table(summary)
        for s in summary["steps"]:
            click.echo(
                f"  {s['file']}: stage {s['stage_flops']:,} + head {s['head_flops']:,} FLOPs"
            )
        click.echo("  verified: yes" if problem is None else f"  verified: NO ({problem})")
        _unknown_ops(summary)
    if problem is not None:
        raise SystemExit(1)


COMMANDS = [inspect_cmd]
