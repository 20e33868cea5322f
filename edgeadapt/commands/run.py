"""`edgeadapt run`: run a bundle's adaptive cascade on inputs from an .npz or .npy file.

Parse the options, call `edgeadapt.cascade.run.run_to_file`, print per-sample results (a table,
or ``--json``) or write them to an .npz (``-o``).

`edgeadapt.cascade.run` and `edgeadapt.data.sources` are imported in the command: at the
top they would add about 20 ms to `edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

import math
import sys
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
    number,
    output_option,
    recipe_options,
    runtime_option,
    threads_option,
)
from edgeadapt.commands.progress import progress_on_first_call
from edgeadapt.errors import InputError
from edgeadapt.formats.jsonio import MAX_MS
from edgeadapt.formats.plan import COST_STATS
from edgeadapt.kernel_ref import MEASURES

if TYPE_CHECKING:
    from edgeadapt.data.images import Recipe


def _thresholds(
    ctx: click.Context, param: click.Parameter, text: str | None
) -> float | list[float] | None:
    """``T`` (one for every exit) or ``T1,T2,...`` (one per state but the last), each a
    finite number."""
    if text is None:
        return None
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise click.BadParameter(
                f"expected a number or comma-separated numbers, got {text!r}"
            ) from None
        if not math.isfinite(value):
            raise click.BadParameter(f"thresholds must be finite numbers, got {text!r}")
        values.append(value)
    return values[0] if len(values) == 1 else values


@click.command("run")
@bundle_argument()
@data_option(
    "--input",
    "Inputs: an .npz with one array per model input, named as the input (x for a "
    "one-input bundle also works), or an .npy array for a one-input bundle.",
    param="input_path",
    required=True,
)
@recipe_options()
@runtime_option(
    None,
    "Backend: onnxruntime, openvino or tensorrt [the plan's, else onnxruntime]. "
    "Differing from the plan's is reported on stderr.",
)
@threads_option(help="Threads the runtime may use [the plan's, else the runtime's].")
@click.option(
    "--thresholds",
    callback=_thresholds,
    help="T (every exit) or T1,T2,... (one per state but the last).",
)
@file_option(
    "--plan",
    "Plan file (states, thresholds and the runtime settings it was measured under).",
    param="plan_path",
)
@file_option("--profile", "Profile (step costs for a budget).", param="profile_path")
@click.option(
    "--cost-percentile",
    "cost_stat",
    type=click.Choice(COST_STATS),
    help="Profile percentile a budget's costs are taken at, and tracked at as calls are "
    "measured [the plan's, else p50].",
)
@click.option(
    "--measure",
    type=click.Choice(MEASURES),
    help="Confidence measure: maxprob, margin or entropy [the plan's, else maxprob].",
)
@click.option("--budget-ms", type=number(0, MAX_MS), help="Latency budget per batch, in ms.")
@batch_option("Rows per predict call: memory is bounded by it, not by the input's size.")
@memory_option()
@click.option("--quiet", is_flag=True, help="No progress bar (shown on a terminal's stderr).")
@json_option()
@output_option("Write pred/exit_state/conf/budget_exit to this .npz.")
def run_command(
    bundle: Path,
    input_path: Path | str,
    recipe: Recipe | None,
    runtime: str | None,
    threads: int | None,
    thresholds: float | list[float] | None,
    plan_path: Path | None,
    profile_path: Path | None,
    cost_stat: str | None,
    measure: str | None,
    budget_ms: float | None,
    batch: int | None,
    memory: int | None,
    quiet: bool,
    as_json: bool,
    output: Path | None,
) -> None:
    """Run BUNDLE's cascade on the samples in --input and print or save the results.

    With --plan it runs under the runtime settings the plan's costs were measured with
    unless --runtime or --threads say otherwise. The input is read a batch at a time;
    the batch, unless given, is the most --memory holds, and a note on stderr says which
    it is.
    """
    from edgeadapt.cascade.run import run_to_file
    from edgeadapt.data.sources import DataSpec

    if (thresholds is None) == (plan_path is None):
        raise InputError("give exactly one of --thresholds and --plan", source="thresholds")
    show = not (quiet or as_json) and sys.stderr.isatty()  # a bar is for a person watching
    with progress_on_first_call("running", show=show) as progress:
        res = run_to_file(
            bundle,
            DataSpec(input_path, recipe),
            thresholds=thresholds,
            plan=plan_path,
            profile=profile_path,
            cost_stat=cost_stat,
            measure=measure,
            runtime=runtime,
            threads=threads,
            budget_ms=budget_ms,
            batch=batch,
            memory=memory,
            output=output,
            progress=progress,
        )
    echo_note(res.runtime_note if as_json else res.notes)  # JSON holds the rest
    if as_json:
        echo_json(res.to_json())
        return
    if output is None:
        click.echo("sample  pred  exit   conf")
        for i in range(res.pred.size):
            flag = "  (budget)" if res.budget_exit[i] else ""
            name = res.state_names[res.exit_state[i]]
            click.echo(f"{i:6d}  {res.pred[i]:4d}  {name:<5}  {res.conf[i]:.4f}{flag}")
    exits = ", ".join(f"{name} {count}" for name, count in res.exits.items())
    latency = res.latency_ms
    click.echo(
        f"{res.pred.size} samples in {latency['total']:.3f} ms ({latency['batches']} batch(es)); "
        f"exits: {exits}"
    )


COMMANDS = [run_command]
