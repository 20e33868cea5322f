"""`edgeadapt export quantize BUNDLE --calibration DATA -o OUT` (a bundle -> the same bundle
at int8, fp16 or bf16; see `edgeadapt.exporters.quantize`), a subcommand of `export`
(added there).

`edgeadapt.exporters.quantize` and the `edgeadapt.data` modules are imported in the command:
at the top they would slow `edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeadapt.commands.bundles import bundle_summary, export_options, show_written
from edgeadapt.commands.options import (
    batch_option,
    bundle_argument,
    data_option,
    echo_json,
    number,
    recipe_options,
    runtime_option,
    threads_option,
)
from edgeadapt.commands.progress import progress_ticker
from edgeadapt.render import table

if TYPE_CHECKING:
    from edgeadapt.data.images import Recipe


def _show_parity(precision: dict[str, Any]) -> None:
    parity = precision["parity"]
    rows = [
        (
            s["name"],
            f"{s['fp32_accuracy']:.4f}",
            f"{s['accuracy']:.4f}",
            f"{s['agreement']:.4f}",
        )
        for s in parity["states"]
    ]
    click.echo(
        f"  parity on {parity['samples']} held-out samples "
        f"({precision['precision']} against float32, same state):"
    )
    text = table(("state", "fp32 accuracy", "accuracy", "agreement"), rows)
    click.echo("\n".join(f"  {line}" for line in text.splitlines()))


@click.command("quantize")
@bundle_argument()
@data_option(
    "--calibration",
    "Labelled data (npz with x and y): the first rows calibrate int8 ranges, the last "
    "--heldout share measures each state's accuracy and agreement with float32.",
    required=True,
)
@recipe_options()
@click.option(
    "--precision",
    type=click.Choice(["int8", "fp16", "bf16"]),
    default="int8",
    show_default=True,
    help="int8: ONNX Runtime static quantization (QDQ); fp16/bf16: float16 or bfloat16 "
    "weights and compute, float32 I/O.",
)
@click.option(
    "--method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
    help="int8 calibration method; it needs at least 100 (minmax) or 1000 (entropy, "
    "percentile) calibration samples besides the held-out share.",
)
@click.option(
    "--per-channel/--per-tensor",
    default=True,
    show_default=True,
    help="int8 weights of Conv, Gemm and MatMul with a scale per output channel, or one "
    "per tensor.",
)
@click.option(
    "--activations",
    type=click.Choice(["uint8", "int8"]),
    default="uint8",
    show_default=True,
    help="int8 activations: uint8 with a zero point (ONNX Runtime's fast x86 kernels) or "
    "int8 symmetric (what TensorRT reads).",
)
@click.option(
    "--heldout",
    type=number(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of the calibration rows (the last ones) kept out of calibration to measure parity.",
)
@click.option(
    "--with-source",
    is_flag=True,
    help="Write OUT as the bundle export variants makes of the variant and BUNDLE (an "
    "early-exit bundle): states EXIT@PRECISION, then EXIT@fp32 (the reference, last), "
    "so one plan may mix the precisions.",
)
@batch_option("Calibration samples per forward pass [64].")
@runtime_option(help="Backend the variant must load and run on (else it is refused).")
@threads_option(1)
@export_options()
def export_quantize_cmd(
    bundle: Path,
    calibration: Path | str,
    recipe: Recipe | None,
    precision: str,
    method: str,
    per_channel: bool,
    activations: str,
    heldout: float,
    with_source: bool,
    batch: int | None,
    runtime: str,
    threads: int,
    output: Path,
    force: bool,
    as_json: bool,
) -> None:
    """Write BUNDLE with every step at --precision as a new bundle of the same kind.

    States, step inputs and outputs (float32) are the source's, so evaluate, profile,
    plan, run, report and bound read the new bundle as any other. The variant must load
    and run on --runtime: an op it cannot run at that precision is refused by name and
    nothing is written. The command prints each state's accuracy and agreement with the
    float32 state on the held-out rows; the manifest's extra.precision records them with
    the source bundle's manifest sha256.

    With --with-source (early-exit bundles only) OUT holds both precisions as one
    bundle of two chains, written by the same code as export variants VARIANT BUNDLE;
    the variant's record is then in extra.chains[0].precision.

    \b
    edgeadapt export quantize bundle/ --calibration calib.npz -o bundle-int8/
    edgeadapt export quantize bundle/ --calibration calib.npz --with-source -o both/
    """
    from edgeadapt.data.sources import DataSpec
    from edgeadapt.exporters.quantize import QuantizeOptions, quantize_bundle
    from edgeadapt.formats.presets import RuntimeConfig

    options = QuantizeOptions(
        precision=precision,
        method=method,
        per_channel=per_channel,
        activations=activations,
        heldout=heldout,
        batch=batch or 64,
        runtime=RuntimeConfig(runtime=runtime, threads=threads),
    )
    with contextlib.ExitStack() as stack:
        tick = progress_ticker(stack, "quantizing")
        written = quantize_bundle(
            bundle,
            output,
            DataSpec(calibration, recipe),
            options,
            force=force,
            progress=lambda label, done, total: tick(done, total),
            with_source=with_source,
        )
    record = written.extra["chains"][0]["precision"] if with_source else written.extra["precision"]
    if as_json:
        echo_json({**bundle_summary(written), "precision": record}, what="the bundle summary")
        return
    show_written(written, output, as_json)
    _show_parity(record)
