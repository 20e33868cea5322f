"""`edgeadapt export onnx|family|torch|branches|quantize|variants` (model -> bundle).

The `export` group holds `onnx` and `family` from here and the subcommands of
`export_torch`, `export_branches`, `export_quantize` and `export_variants`, added below by name.

The exporters and `edgeadapt.data` modules are imported in the commands: at the top they
would add about 30 ms to `edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgeadapt.commands.bundles import export_options, show_written
from edgeadapt.commands.export_branches import export_branches_cmd
from edgeadapt.commands.export_quantize import export_quantize_cmd
from edgeadapt.commands.export_torch import export_torch_cmd
from edgeadapt.commands.export_variants import export_variants_cmd
from edgeadapt.commands.group import CommandGroup
from edgeadapt.commands.options import (
    INPUT_FILE,
    batch_option,
    data_option,
    echo_note,
    memory_option,
    ray_option,
    recipe_options,
    workers_option,
)
from edgeadapt.commands.progress import progress_ticker

if TYPE_CHECKING:
    from edgeadapt.data.images import Recipe


@click.group(cls=CommandGroup)
def export() -> None:
    """Export a model into a bundle of states (per-exit ONNX steps + manifest)."""


def _heads(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``--head CUT=OUTPUT`` (repeated) as ``{cut: output}``, each cut once."""
    heads: dict[str, str] = {}
    for v in values:
        cut, sep, out = v.partition("=")
        if not sep or not cut or not out:
            raise click.BadParameter(f"expected CUT=OUTPUT, got {v!r}")
        if cut in heads:
            raise click.BadParameter(f"{cut!r} is given twice")
        heads[cut] = out
    return heads


@export.command("onnx")
@click.argument("model", type=INPUT_FILE)
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
    callback=_heads,
    metavar="CUT=OUTPUT",
    help="Use the existing tensor OUTPUT as the exit logits at CUT (repeat).",
)
@click.option(
    "--logits",
    default=None,
    metavar="TENSOR",
    help="The final logits (default: the one graph output that is not a head).",
)
@data_option(
    "--calibration",
    "npz to train linear heads for cuts without --head: one array per model input, "
    "named as the input (or x for a one-input model), plus labels y.",
)
@recipe_options()
@click.option(
    "--pool",
    type=click.Choice(["auto", "gap", "gap_last", "flatten", "cls", "mean"]),
    default="auto",
    show_default=True,
    help="Trained heads' features: gap (mean over the spatial axes of [B,C,...]), gap_last "
    "(mean over the spatial axes of a channels-last [B,...,C]: a Swin's [B,H,W,C], an NHWC "
    "model's), flatten, cls (token 0 of [B,T,H]), mean (mean over the tokens, the unmasked "
    "ones when the model has a mask input). auto: mean for token sequences, else flatten "
    "small activations and pool large ones, with gap_last where the ops reading the cut "
    "show it channels-last (a LayerNorm or linear layer over the last axis, a transpose "
    "to channels-first), else gap.",
)
@click.option(
    "--mask",
    default=None,
    metavar="INPUT",
    help="The model input that masks tokens for --pool mean (default: the one integer "
    "input whose name contains 'mask').",
)
@batch_option("Calibration samples per forward pass.", flag="--batch-size", param="batch_size")
@memory_option()
@click.option(
    "--shared-weights",
    is_flag=True,
    help="Store every weight once, in one external-data file (weights.data) all steps "
    "read, instead of a copy in each step that reads it.",
)
@workers_option(
    "Worker processes (with --ray, Ray actors) running the calibration forward pass, "
    "each loading MODEL once; the batches are dealt to them and their features added up "
    "in order here, so the bundle is the same as one process writes. Any --calibration "
    "source, a loader script included. [1; with --ray the cluster's CPUs]"
)
@ray_option(
    "Run the calibration forward pass on Ray actors on the cluster at ADDRESS (HOST:PORT, "
    "ray://HOST:PORT or auto), or alone on a local cluster; the model is shipped by "
    "content. Needs the ray extra."
)
@export_options(parity=True)
def export_onnx_cmd(
    model: Path,
    cuts: tuple[str, ...],
    heads: dict[str, str],
    logits: str | None,
    calibration: Path | str | None,
    recipe: Recipe | None,
    pool: str,
    mask: str | None,
    batch_size: int | None,
    memory: int | None,
    shared_weights: bool,
    workers: int | None,
    ray: str | None,
    parity_rtol: float,
    parity_atol: float,
    output: Path,
    force: bool,
    as_json: bool,
) -> None:
    """Split the ONNX classifier MODEL at --cut tensors into an early-exit bundle.

    Each step after the first reads the previous activation plus the model inputs it
    needs (a transformer's attention_mask); what it needs from before its cut and can
    compute again (masks, position ids, shapes, weights read on both sides) is copied
    into it, and a cut that an activation skips past is refused. `edgeadapt inspect
    MODEL --cuts` lists the valid cuts. Cuts without --head get a linear head fitted
    on --calibration, streamed in batches of --batch-size (else of the most --memory
    holds, said in a note); the command prints each head's training and held-out
    accuracy and warns when they differ a lot. With --workers N (or --ray) the
    calibration batches run in N processes (or Ray actors); a worker that dies is
    started again and its batch run again once, and nothing is written when a batch
    fails twice.

    \b
    edgeadapt export onnx resnet18.onnx --cut /layer1/layer1.1/relu_1/Relu_output_0 \\
        --cut /layer2/layer2.1/relu_1/Relu_output_0 --calibration calib.npz -o bundle/
    """
    from edgeadapt.data.memory import BatchChoice
    from edgeadapt.data.sources import DataSpec
    from edgeadapt.exporters.onnx import export_onnx

    with contextlib.ExitStack() as stack:
        tick = progress_ticker(stack, "exporting")

        def progress(label: str, done: int, total: int) -> None:
            tick(done, total)

        bundle = export_onnx(
            model,
            output,
            cuts=cuts,
            heads=heads,
            logits=logits,
            calibration=None if calibration is None else DataSpec(calibration, recipe),
            pool=pool,
            mask=mask,
            batch_size=batch_size,
            memory=memory,
            parity_rtol=parity_rtol,
            parity_atol=parity_atol,
            shared_weights=shared_weights,
            force=force,
            progress=progress,
            workers=workers,
            ray=ray,
        )
    if "calibration_batch" in bundle.extra and not as_json:
        echo_note(BatchChoice.from_json(bundle.extra["calibration_batch"]).note)
    show_written(bundle, output, as_json)


@export.command("family")
@click.argument(
    "model_paths",
    metavar="MODELS...",
    nargs=-1,
    required=True,
    type=INPUT_FILE,
)
@click.option(
    "--name",
    "names",
    multiple=True,
    help="State name for each model, in the order given (default: file stems).",
)
@export_options()
def export_family_cmd(
    model_paths: tuple[Path, ...],
    output: Path,
    names: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Write independent classifiers MODELS as an ensemble bundle, states ordered by FLOPs.

    Every member outputs [batch, classes] logits with the same class count and reads
    model inputs of the same names, shapes and dtypes (a member may read a subset, e.g.
    input_ids without attention_mask); a one-input member may name its input differently.
    """
    from edgeadapt.exporters.family import export_family

    bundle = export_family(model_paths, output, names=names or None, force=force)
    show_written(bundle, output, as_json)


export.add_command(export_torch_cmd)
export.add_command(export_branches_cmd)
export.add_command(export_quantize_cmd)
export.add_command(export_variants_cmd)

COMMANDS = [export]
