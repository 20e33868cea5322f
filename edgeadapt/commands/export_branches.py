"""`edgeadapt export branches MODEL.onnx --calibration C.npz -o BUNDLE` (one ONNX model ->
execution branches that skip residual blocks; see `edgeadapt.exporters.branches`), a
subcommand of `export` (added there).

`edgeadapt.exporters.branches` and the `edgeadapt.data` modules are imported in the command:
at the top they would add about 15 ms to `edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgeadapt.commands.bundles import export_options, show_written
from edgeadapt.commands.options import (
    INPUT_FILE,
    batch_option,
    data_option,
    echo_note,
    integer,
    memory_option,
    ray_option,
    recipe_options,
    seed_option,
    workers_option,
)
from edgeadapt.commands.progress import progress_ticker

if TYPE_CHECKING:
    from edgeadapt.data.images import Recipe


@click.command("branches")
@click.argument("model", type=INPUT_FILE)
@data_option(
    "--calibration",
    "npz with x (inputs) and y (labels): every candidate branch is scored on it.",
    required=True,
)
@recipe_options()
@batch_option("Calibration samples per forward pass.")
@memory_option()
@click.option(
    "--block",
    "blocks",
    multiple=True,
    metavar="ADD_NODE",
    help="Name of the Add node of a residual block that may be skipped (repeat; "
    "default: every skippable block).",
)
@click.option(
    "--max-branches",
    type=integer(2),
    default=8,
    show_default=True,
    help="Most branches kept (spread along the accuracy/FLOPs Pareto front).",
)
@seed_option("Seed of the sampled skip sets.")
@workers_option(
    "Worker processes (with --ray, Ray tasks) scoring the candidate branches, each "
    "process loading MODEL and reading --calibration itself (not a loader script); the "
    "bundle is the same as one process writes. [1; with --ray the cluster's CPUs]"
)
@ray_option(
    "Score the candidates as tasks on the Ray cluster at ADDRESS (HOST:PORT, "
    "ray://HOST:PORT or auto), or alone on a local cluster; MODEL and the calibration "
    "batches (read once here, any source; memory holds the set) are shipped to it by "
    "content, no node reads their paths. Needs the ray extra."
)
@export_options()
def export_branches_cmd(
    model: Path,
    calibration: Path | str,
    recipe: Recipe | None,
    blocks: tuple[str, ...],
    max_branches: int,
    seed: int,
    batch: int | None,
    memory: int | None,
    workers: int | None,
    ray: str | None,
    output: Path,
    force: bool,
    as_json: bool,
) -> None:
    """Write execution branches of the ONNX classifier MODEL as a `branches` bundle.

    A branch is MODEL with some residual blocks bypassed (y = x + f(x) becomes y = x;
    blocks that change shape are never skipped). With up to 10 skippable blocks every
    subset is scored on --calibration, else the greedy path (drop the block costing the
    least accuracy per saved FLOP) and 64 seeded random subsets; the Pareto-optimal
    branches become the bundle's states, sharing one weights file. Then profile,
    evaluate, bound and plan the bundle as any other. With --workers N the candidates
    of each round are scored in N processes (with --ray, Ray tasks); a worker that dies
    is started again once, and nothing is written when its candidates fail twice.
    """
    from edgeadapt.data.memory import BatchChoice
    from edgeadapt.data.sources import DataSpec
    from edgeadapt.exporters.branches import export_branches

    with contextlib.ExitStack() as stack:
        bundle = export_branches(
            model,
            output,
            calibration=DataSpec(calibration, recipe),
            blocks=blocks or None,
            max_branches=max_branches,
            seed=seed,
            force=force,
            progress=progress_ticker(stack, "scoring branches"),
            batch=batch,
            memory=memory,
            workers=workers,
            ray=ray,
        )
    if not as_json:  # the manifest's extra records it
        echo_note(BatchChoice.from_json(bundle.extra["branches"]["batch"]).note)
    show_written(bundle, output, as_json)
