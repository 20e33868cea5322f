"""`edgeadapt profile` and `edgeadapt evaluate`: the on-device measurement CLI.

Thin: parse options, call `edgeadapt.profile` / `edgeadapt.evaluate`, show a progress
bar on stderr, print an aligned table or (``--json``) one JSON object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeadapt.commands.progress import progress_bar
from edgeadapt.errors import InputError

_DIR = click.Path(file_okay=False, exists=True, path_type=Path)
_FILE = click.Path(dir_okay=False, path_type=Path)


#: the largest batch `profile` times (one zero-filled input of it is allocated per size)
MAX_PROFILE_BATCH = 65_536


def _batches(value: str) -> list[int]:
    """Parse ``1,8`` into distinct positive batch sizes."""
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise InputError(
            f"expected comma-separated integers, got {value!r}", source="--batch"
        ) from None
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise InputError(f"expected distinct positive integers, got {value!r}", source="--batch")
    if max(sizes) > MAX_PROFILE_BATCH:
        raise InputError(
            f"batch sizes must be at most {MAX_PROFILE_BATCH}, got {max(sizes)}", source="--batch"
        )
    return sizes


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in lines
    )


def _emit_json(obj: dict[str, Any]) -> None:
    from edgeadapt.jsonio import dumps

    click.echo(dumps(obj), nl=False)


def _list_presets(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """`--device list`: print the shipped presets and stop."""
    if value == "list" and not ctx.resilient_parsing:
        from edgeadapt.presets import load_preset, preset_names

        presets = [load_preset(name) for name in preset_names()]
        width = max((len(p.description) for p in presets), default=0)
        rows = [
            [
                p.name,
                p.runtime,
                p.precision,
                "runtime's" if p.threads is None else str(p.threads),
                p.description.ljust(width),
            ]
            for p in presets
        ]
        headers = ["preset", "runtime", "precision", "threads", "description".ljust(width)]
        click.echo("\n".join(line.rstrip() for line in _table(headers, rows).splitlines()))
        ctx.exit(0)
    return value


def _device_help() -> str:
    from edgeadapt.presets import preset_names

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
        name
        for name, value in (
            ("--iters", iters),
            ("--min-seconds", min_seconds),
            ("--seconds-per-state", seconds_per_state),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise InputError(f"give only one of {', '.join(given)}", source=given[0])


@click.command("profile")
@click.argument("bundle_dir", metavar="BUNDLE", type=_DIR)
@click.option("--device", "device", is_eager=True, callback=_list_presets, help=_device_help())
@click.option("--runtime", default=None, help="Backend to time [the preset's, else onnxruntime].")
@click.option("--batch", "batch", default="1", show_default=True, help="Batch sizes, e.g. 1,8.")
@click.option(
    "--threads",
    type=click.IntRange(min=1, max=1024),
    default=None,
    help="Backend threads, 1..1024 [the preset's, else 1].",
)
@click.option("--precision", default=None, help="Runtime precision, e.g. fp16 [the preset's].")
@click.option(
    "--warmup",
    type=click.IntRange(min=0, max=100_000),
    default=20,
    show_default=True,
    help="Untimed calls per step.",
)
@click.option(
    "--iters",
    type=click.IntRange(min=1, max=1_000_000),
    default=None,
    help="Timed calls per step (fixed count).",
)
@click.option(
    "--min-seconds",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=None,
    help="Time each step for at least this long, up to 3600 s (default 0.5 s without --iters).",
)
@click.option(
    "--seconds-per-state",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
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
@click.option(
    "--whole",
    "whole_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The original (unsplit) ONNX model to time as the static baseline "
    "[the bundle's steps composed back into one graph, backbone and last head].",
)
@click.option(
    "--no-whole",
    is_flag=True,
    help="Do not time the whole model (bound and plan then "
    "compare against the sum of the steps only).",
)
@click.option(
    "-o",
    "--output",
    type=_FILE,
    help="Profile file [BUNDLE/profiles/<device>.json, <device>-<preset>.json with --device].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the profile as one JSON object.")
def profile_cmd(
    bundle_dir: Path,
    device: str | None,
    runtime: str | None,
    batch: str,
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
    or the original model given with --whole.
    """
    from edgeadapt.bundle import load_bundle
    from edgeadapt.presets import load_preset
    from edgeadapt.profile import (
        MIN_SAMPLES,
        default_profile_path,
        profile_bundle,
        profile_calls,
        save_profile,
        state_costs,
    )

    _check_timing(iters, min_seconds, seconds_per_state)
    if iters is not None and iters < MIN_SAMPLES:
        raise InputError(f"must be >= {MIN_SAMPLES}, got {iters}", source="--iters")
    if no_whole and whole_path is not None:
        raise InputError("give --whole or --no-whole, not both", source="--whole")
    batches = _batches(batch)
    preset = None if device is None else load_preset(device)
    bundle = load_bundle(bundle_dir)
    whole: bool | Path = False if no_whole else (whole_path or True)
    total = profile_calls(bundle, batches, whole is not False)
    with progress_bar("profiling", total, show=not as_json) as progress:
        prof = profile_bundle(
            bundle,
            runtime=runtime,
            batches=batches,
            threads=threads,
            warmup=warmup,
            iters=iters,
            min_seconds=0.5 if min_seconds is None else min_seconds,
            progress=progress,
            preset=preset,
            precision=precision,
            order=order,
            whole=whole,
            seconds_per_state=seconds_per_state,
        )
    if output is None:
        output = default_profile_path(bundle, None if preset is None else preset.name)
    save_profile(output, prof)
    if as_json:
        _emit_json({**prof.to_json(), "path": str(output)})
        return
    rt = prof.device.get("runtime", {})
    via = "" if preset is None else f" (preset {preset.name})"
    click.echo(
        f"device {prof.device_id}: {prof.device['cpu']}, {rt.get('backend')} "
        f"{rt.get('version')}, threads {rt.get('threads')}, precision {rt.get('precision')}{via}"
    )
    rows = []
    for b in prof.batches:
        costs = state_costs(prof, bundle, batch=b)
        for i, s in enumerate(prof.step_stats(b)):
            rows.append(
                [
                    prof.states[i],
                    str(b),
                    *(f"{v:.4f}" for v in (s.p50, s.p90, s.p99, s.mean, s.std)),
                    str(s.n),
                    f"{costs[i]:.4f}",
                ]
            )
        w = prof.whole_stats(b)
        if w is not None:
            stats = (w.p50, w.p90, w.p99, w.mean, w.std)
            rows.append(["whole model", str(b), *(f"{v:.4f}" for v in stats), str(w.n), "-"])
    headers = ["state", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "n", "R_i ms"]
    click.echo(f"steps timed in {prof.order} order")
    click.echo(_table(headers, rows))
    if prof.whole_model is not None:
        wm = prof.whole_model
        what = "composed from the bundle" if wm["origin"] == "composed" else wm["path"]
        click.echo(
            f"whole model (static baseline): {what}, sha256 {wm['sha256'][:12]}...; "
            f"full path R_N / whole = "
            + ", ".join(
                f"{state_costs(prof, bundle, batch=b)[-1] / prof.whole[b].p50:.2f}x at batch {b}"
                for b in prof.batches
                if prof.whole[b].p50 > 0
            )
        )
    if prof.noisy:
        click.echo("noisy: " + "; ".join(prof.noise_reasons))
    click.echo(f"wrote {output}")


@click.command("evaluate")
@click.argument("bundle_dir", metavar="BUNDLE", type=_DIR)
@click.option(
    "--data",
    "data",
    type=_FILE,
    required=True,
    help="npz with one array per model input, named as the input (or x for a one-input "
    "bundle), and integer labels y.",
)
@click.option("--runtime", default="onnxruntime", show_default=True, help="Backend to run.")
@click.option(
    "--batch",
    type=click.IntRange(min=1, max=1 << 20),
    default=256,
    show_default=True,
    help="Samples per call.",
)
@click.option("-o", "--output", type=_FILE, help="Evaluation file [BUNDLE/evaluation.npz].")
@click.option("--json", "as_json", is_flag=True, help="Print the accuracies as one JSON object.")
def evaluate_cmd(
    bundle_dir: Path,
    data: Path,
    runtime: str,
    batch: int,
    output: Path | None,
    as_json: bool,
) -> None:
    """Run every state of BUNDLE on a labelled set and write the evaluation (.npz)."""
    from edgeadapt.bundle import load_bundle
    from edgeadapt.evaluate import evaluate_bundle, load_dataset
    from edgeadapt.evaluation import save_evaluation

    bundle = load_bundle(bundle_dir)
    x, y = load_dataset(data, bundle)
    with progress_bar("evaluating", int(y.shape[0]), show=not as_json) as progress:
        ev = evaluate_bundle(
            bundle, x, y, runtime=runtime, batch=batch, progress=progress, source=str(data)
        )
    path = output if output is not None else bundle.path / "evaluation.npz"
    save_evaluation(path, ev)
    accs = [float(a) for a in ev.accuracies]
    oracle = float(ev.correct.any(axis=1).mean())
    if as_json:
        _emit_json(
            {
                "path": str(path),
                "samples": int(ev.labels.shape[0]),
                "states": list(ev.names),
                "accuracy": accs,
                "oracle_accuracy": oracle,
            }
        )
        return
    rows = [[n, f"{100 * a:.2f}%"] for n, a in zip(ev.names, accs, strict=True)]
    click.echo(_table(["state", "accuracy"], rows))
    click.echo(f"{ev.labels.shape[0]} samples; any state correct: {100 * oracle:.2f}%")
    click.echo(f"wrote {path}")


COMMANDS = [profile_cmd, evaluate_cmd]
