"""`edgeadapt evaluate`: every state of a bundle on a labelled set (`edgeadapt.measure.evaluate`).

Parse the options, call `edgeadapt.measure.evaluate.evaluate_to_file`, show a progress bar on
stderr, print a table or (``--json``) one JSON object.

`edgeadapt.measure.evaluate` and `edgeadapt.data.sources` are imported in the command: at
the top they would add about 20 ms to `edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgeadapt.commands.options import (
    batch_option,
    bundle_argument,
    data_option,
    echo_json,
    echo_note,
    file_option,
    json_option,
    memory_option,
    output_option,
    ray_option,
    recipe_options,
    runtime_option,
    threads_option,
    workers_option,
)
from edgeadapt.commands.progress import progress_on_first_call
from edgeadapt.render import pct, table

if TYPE_CHECKING:
    from edgeadapt.data.images import Recipe


@click.command("evaluate")
@bundle_argument("bundle_dir")
@data_option(
    "--data",
    "npz with one array per model input, named as the input (or x for a one-input "
    "bundle), and integer labels y.",
    required=True,
)
@recipe_options()
@file_option(
    "--profile",
    "Profile whose runtime settings to run under [BUNDLE/profiles/<device>.json when it exists].",
    param="profile_path",
)
@runtime_option(
    None,
    "Backend: onnxruntime, openvino or tensorrt [the profile's, else onnxruntime]. "
    "Differing from the profile's is reported on stderr.",
)
@threads_option(help="Threads the runtime may use [the profile's, else the runtime's].")
@batch_option("Samples per call.")
@memory_option()
@workers_option(
    "Worker processes (with --ray, Ray tasks), each evaluating a contiguous shard of the "
    "data (whole batches) with the --threads budget split among them; the file is the "
    "same as one process writes. A loader script, which cannot be cut, is read here and "
    "its batches dealt to them. [1; with --ray the cluster's CPUs]"
)
@ray_option(
    "Run the shards as tasks on the Ray cluster at ADDRESS (HOST:PORT, ray://HOST:PORT or "
    "auto), or alone on a local cluster; the bundle is shipped to it, the data read from "
    "its path. Needs the ray extra."
)
@output_option("Evaluation file [BUNDLE/evaluation.npz].")
@json_option("Print the accuracies as one JSON object.")
def evaluate_cmd(
    bundle_dir: Path,
    data: Path | str,
    recipe: Recipe | None,
    profile_path: Path | None,
    runtime: str | None,
    threads: int | None,
    batch: int | None,
    memory: int | None,
    workers: int | None,
    ray: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Run every state of BUNDLE on a labelled set and write the evaluation (.npz).

    It runs under the runtime settings of the bundle's profile on this device (the ones
    its costs were measured under) unless --runtime or --threads say otherwise. The data
    is read a batch at a time; the batch, unless given, is the most --memory holds, and a
    note on stderr says which it is. With --workers N, N processes each load the bundle
    (checked against its manifest) and evaluate a shard of the data (a loader script's
    batches are dealt to them instead); a worker that dies is started again once on its
    shard, and nothing is written when a shard fails twice.
    """
    from edgeadapt.data.sources import DataSpec
    from edgeadapt.measure.evaluate import evaluate_to_file

    with progress_on_first_call("evaluating", show=not as_json) as progress:
        done = evaluate_to_file(
            bundle_dir,
            DataSpec(data, recipe),
            output=output,
            profile=profile_path,
            runtime=runtime,
            threads=threads,
            batch=batch,
            memory=memory,
            progress=progress,
            workers=workers,
            ray=ray,
        )
    # JSON holds the rest
    echo_note([n for n in (done.runtime_note, done.workers_note) if n] if as_json else done.notes)
    if as_json:
        echo_json(done.to_json())
        return
    ev = done.evaluation
    rows = [[n, pct(float(a), 2)] for n, a in zip(ev.names, ev.accuracies, strict=True)]
    click.echo(table(["state", "accuracy"], rows))
    click.echo(f"{ev.labels.shape[0]} samples; any state correct: {pct(done.oracle_accuracy, 2)}")
    click.echo(f"wrote {done.path}")


COMMANDS = [evaluate_cmd]
