"""`edgeadapt profile`: time every step of a bundle on this device (`edgeadapt.measure.profiler`).

Parse the options, call `edgeadapt.measure.profiler.profile_to_file`, show a progress bar on
stderr, print a table or (``--json``) one JSON object. ``--device list`` prints the
shipped presets.

`edgeadapt.measure.profiler` is imported in the command: at the top it would add about
15 ms to `edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgeadapt.commands.options import (
    bundle_argument,
    echo_json,
    file_option,
    integer,
    json_option,
    number,
    output_option,
    runtime_option,
    threads_option,
)
from edgeadapt.commands.progress import progress_on_first_call
from edgeadapt.errors import InputError
from edgeadapt.formats.presets import load_preset, preset_names
from edgeadapt.render import table

if TYPE_CHECKING:
    from edgeadapt.formats.profile import Ratio

#: the largest batch `profile` times (one zero-filled input of it is allocated per size)
MAX_PROFILE_BATCH = 65_536


def _spread(r: Ratio | None) -> str:
    """How the full path over the whole model varied over the interleaved rounds."""
    return "" if r is None else f" (per round {r.p10:.2f}-{r.p90:.2f}x, {r.rounds} rounds)"


def _batches(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    """Parse ``--batch 1,8`` into distinct batch sizes in 1..`MAX_PROFILE_BATCH`."""
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise click.BadParameter(f"expected distinct positive integers, got {value!r}")
    if max(sizes) > MAX_PROFILE_BATCH:
        raise click.BadParameter(
            f"batch sizes must be at most {MAX_PROFILE_BATCH}, got {max(sizes)}"
        )
    return sizes


def _device(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """`--device list`: print the shipped presets and stop; any other value must name a
    shipped preset or a readable preset file."""
    if value is None or ctx.resilient_parsing:
        return value
    if value != "list":
        try:
            load_preset(value)
        except InputError as e:
            raise click.BadParameter(str(e)) from None
        return value
    rows = [
        [
            p.name,
            p.runtime,
            p.precision,
            "runtime's" if p.threads is None else str(p.threads),
            p.description,
        ]
        for p in (load_preset(name) for name in preset_names())
    ]
    headers = ["preset", "runtime", "precision", "threads", "description"]
    click.echo(table(headers, rows, left=(0, 4)))
    raise click.exceptions.Exit(0)


def _device_help() -> str:
    names = ", ".join(preset_names()) or "none shipped"
    return (
        f"Device preset (runtime, precision, threads, options): {names}; or a preset .json; "
        "'list' shows them. Explicit --runtime/--threads/--precision override it."
    )


def _check_timing(
    iters: int | None, min_seconds: float | None, seconds_per_state: float | None
) -> None:
    """At most one of the three ways to decide how long each step is timed."""
    given = [
        (name, flag)
        for name, flag, value in (
            ("iters", "--iters", iters),
            ("min_seconds", "--min-seconds", min_seconds),
            ("seconds_per_state", "--seconds-per-state", seconds_per_state),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise InputError(
            f"give only one of {', '.join(flag for _, flag in given)}", source=given[0][0]
        )


@click.command("profile")
@bundle_argument("bundle_dir")
@click.option("--device", "device", is_eager=True, callback=_device, help=_device_help())
@runtime_option(
    None, "Backend to time: onnxruntime, openvino or tensorrt [the preset's, else onnxruntime]."
)
@click.option(
    "--batch",
    "batch",
    default="1",
    show_default=True,
    callback=_batches,
    help=f"Batch sizes, e.g. 1,8 (each 1..{MAX_PROFILE_BATCH}).",
)
@threads_option(help="Backend threads [the preset's, else 1].")
@click.option("--precision", default=None, help="Runtime precision, e.g. fp16 [the preset's].")
@click.option(
    "--warmup",
    type=integer(0, 100_000),
    default=20,
    show_default=True,
    help="Untimed calls per step.",
)
@click.option(
    "--iters",
    type=integer(1, 1_000_000),
    help="Timed calls per step (fixed count, at least 10).",
)
@click.option(
    "--min-seconds",
    type=number(0, 3600, min_open=True),
    help="Time each step for at least this long, up to 3600 s (default 0.5 s without --iters).",
)
@click.option(
    "--seconds-per-state",
    type=number(0, 3600, min_open=True),
    help="Time budget per state, warm-up included (warm-up stops after a fifth of it or "
    "--warmup calls): for models of tenths of a second per call, where a fixed --iters "
    "costs minutes. At least 10 timed calls are taken even when they overrun it.",
)
@click.option(
    "--order",
    type=click.Choice(["chain", "step"]),
    default="chain",
    show_default=True,
    help="chain: call the steps in turn, as a cascade does, so each also pays the cache "
    "refills after the others (the costs the planner should use); step: time each step "
    "alone, repeatedly (as benchmark_app).",
)
@file_option(
    "--whole",
    "The original (unsplit) ONNX model to time as the static baseline "
    "[the bundle's steps composed back into one graph, backbone and last head].",
    param="whole_path",
)
@click.option(
    "--no-whole",
    is_flag=True,
    help="Do not time the whole model (bound and plan then "
    "compare against the sum of the steps only).",
)
@output_option(
    "Profile file [BUNDLE/profiles/<device>.json, <device>-<preset>.json with --device]."
)
@json_option("Print the profile as one JSON object.")
def profile_cmd(
    bundle_dir: Path,
    device: str | None,
    runtime: str | None,
    batch: list[int],
    threads: int | None,
    precision: str | None,
    warmup: int,
    iters: int | None,
    min_seconds: float | None,
    seconds_per_state: float | None,
    order: str,
    whole_path: Path | None,
    no_whole: bool,
    output: Path | None,
    as_json: bool,
) -> None:
    """Time every step of BUNDLE on this device and write its profile (R_i table).

    The whole model (the static baseline a user would otherwise deploy) is timed too,
    under the same runtime settings: the bundle's steps composed back into one graph,
    or the original model given with --whole. The profile records the runtime
    settings; evaluate and run use them unless told otherwise.
    """
    from edgeadapt.measure.profiler import TimingOptions, profile_to_file

    _check_timing(iters, min_seconds, seconds_per_state)
    if no_whole and whole_path is not None:
        raise InputError("give --whole or --no-whole, not both", source="whole_path")
    with progress_on_first_call("profiling", show=not as_json) as progress:
        done = profile_to_file(
            bundle_dir,
            output=output,
            device=device,
            runtime=runtime,
            threads=threads,
            precision=precision,
            progress=progress,
            timing=TimingOptions(
                batches=batch,
                warmup=warmup,
                iters=iters,
                min_seconds=0.5 if min_seconds is None else min_seconds,
                seconds_per_state=seconds_per_state,
                order=order,
                whole=False if no_whole else (whole_path or True),
            ),
        )
    if as_json:
        echo_json(done.to_json())
        return
    prof = done.profile
    rt = prof.device.get("runtime", {})
    via = "" if prof.runtime_config.preset is None else f" (preset {prof.runtime_config.preset})"
    click.echo(
        f"device {prof.device_id}: {prof.device['cpu']}, {rt.get('backend')} "
        f"{rt.get('version')}, threads {rt.get('threads')}, precision {rt.get('precision')}{via}"
    )
    rows = []
    for b in prof.batches:
        costs = done.state_costs[b]
        for i, s in enumerate(prof.step_stats(b)):
            stats = (s.p50, s.p90, s.p99, s.mean, s.std)
            rows.append([prof.states[i], b, *(f"{v:.4f}" for v in stats), s.n, f"{costs[i]:.4f}"])
        w = prof.whole_stats(b)
        if w is not None:
            stats = (w.p50, w.p90, w.p99, w.mean, w.std)
            rows.append(["whole model", b, *(f"{v:.4f}" for v in stats), w.n, "-"])
    headers = ["state", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "n", "R_i ms"]
    click.echo(f"steps timed in {prof.order} order")
    click.echo(table(headers, rows))
    if prof.whole_model is not None:
        wm = prof.whole_model
        what = "composed from the bundle" if wm["origin"] == "composed" else wm["path"]
        click.echo(
            f"whole model (static baseline): {what}, sha256 {wm['sha256'][:12]}...; "
            f"full path R_N / whole = "
            + ", ".join(
                f"{done.state_costs[b][-1] / prof.whole[b].p50:.2f}x at batch {b}"
                + _spread(prof.full_over_whole.get(b))
                for b in prof.batches
                if prof.whole[b].p50 > 0
            )
        )
    if prof.noisy:
        click.echo("noisy: " + "; ".join(prof.noise_reasons))
    click.echo(f"wrote {done.path}")


COMMANDS = [profile_cmd]
