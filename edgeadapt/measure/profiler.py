"""The profiler: what every step of a bundle costs on this device.

`profile_bundle` loads each step in the chosen runtime, feeds it the real activation of
the previous step (computed once from random model inputs of the bundle's shapes and
dtypes, token ids within their embedding table and masks all ones, so
input generation stays outside the timed loop), warms it up, then times each call with
`time.perf_counter_ns` (a fixed number of iterations, until `min_seconds` have
passed, or within a time budget per state, warm-up included: `seconds_per_state`, for
models whose calls take tenths of a second, where a fixed count costs minutes). With
``order="chain"`` (the default) the steps are called in turn, every step once per
round, as a cascade that runs every state calls them: each then also pays for refilling
the caches after the steps before it, which a step timed alone (``order="step"``, what
`benchmark_app` measures) does not, and which is what the planner should be fed.

Beside the steps it times the **whole model** under the same runtime settings: the
unsplit network a user would otherwise deploy, the static baseline every saving is held
to. By default that is `edgeadapt.exporters.compose.whole_model` (the backbone and the
last head only, or an ensemble's last member); ``whole=PATH`` times the user's original
ONNX instead (checked against the bundle's inputs and last logits); ``whole=False``
skips it. The whole model is timed alone, call after call, as it runs deployed (under
`seconds_per_state`, with the same budget as a state).

The profile holds, per batch size and step, p50/p90/p99/mean/std/n in ms, the same for
the whole model, the device fingerprint with temperatures and clocks before and after,
a noise flag, and the sha256 of the bundle's manifest, so it is refused for any other
bundle.

The profile it writes is `edgeadapt.formats.profile`.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.device import clock_state, fingerprint, load_average, temperatures
from edgeadapt.formats.presets import Preset, RuntimeConfig, load_preset
from edgeadapt.formats.profile import (
    DEFAULT_ORDER,
    MIN_SAMPLES,
    ORDERS,
    Profile,
    StepStats,
    default_profile_path,
    save_profile,
    state_costs,
)
from edgeadapt.measure.whole import WholeModel, load_whole, prepare_whole, whole_run

__all__ = ["ProfileRun", "profile_bundle", "profile_calls", "profile_to_file"]

#: A step whose p90 exceeds its p50 by this factor marks the profile noisy.
SPREAD_LIMIT = 1.5
#: A clock that moved by more than this share between start and end marks it noisy.
CLOCK_LIMIT = 0.10
#: Under a time budget, warm-up stops after this share of the budget (or `warmup` calls).
WARMUP_SHARE = 0.2

Progress = Callable[[int, int], None]


def _positive(value: Any, option: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"must be an integer >= {minimum}, got {value!r}", source=option)
    return int(value)


def _budget(seconds: Any, iters: int | None) -> float:
    """Validate a per-state time budget (exclusive with a fixed iteration count)."""
    if iters is not None:
        raise InputError("give iters or seconds_per_state, not both", source="seconds_per_state")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise InputError(f"must be a number, got {seconds!r}", source="seconds_per_state")
    if not (seconds > 0 and np.isfinite(seconds)):
        raise InputError(f"must be a positive number, got {seconds!r}", source="seconds_per_state")
    return float(seconds)


def _random_inputs(bundle: Bundle, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every model input, random with its dtype (`edgeadapt.data.inputs.random_batch`: token
    ids within the embedding table, masks all ones), made once outside the timed loop."""
    from edgeadapt.data.inputs import random_batch

    return random_batch(bundle, batch, rng)


def _time_step(
    run: Callable[[], Any], warmup: int, iters: int | None, min_seconds: float
) -> np.ndarray:
    """Warm up, then time `run` per call: `iters` calls, or until `min_seconds` have passed
    (and at least MIN_SAMPLES calls)."""
    for _ in range(warmup):
        run()
    clock = time.perf_counter_ns
    if iters is not None:
        out = np.empty(iters, dtype=np.int64)
        for k in range(iters):
            t0 = clock()
            run()
            out[k] = clock() - t0
        return out
    samples: list[int] = []
    deadline = clock() + int(min_seconds * 1e9)
    while len(samples) < MIN_SAMPLES or clock() < deadline:
        t0 = clock()
        run()
        samples.append(clock() - t0)
    return np.asarray(samples, dtype=np.int64)


def _time_chain(
    runs: Sequence[Callable[[], Any]], warmup: int, iters: int | None, min_seconds: float
) -> list[np.ndarray]:
    """`_time_step` for the steps called in turn: `warmup` untimed rounds, then rounds of
    one timed call per step (`iters` rounds, or until every step had `min_seconds`)."""
    for _ in range(warmup):
        for run in runs:
            run()
    clock = time.perf_counter_ns
    samples: list[list[int]] = [[] for _ in runs]
    rounds = 0
    deadline = clock() + int(min_seconds * len(runs) * 1e9)
    while (rounds < iters) if iters is not None else (rounds < MIN_SAMPLES or clock() < deadline):
        for run, out in zip(runs, samples, strict=True):
            t0 = clock()
            run()
            out.append(clock() - t0)
        rounds += 1
    return [np.asarray(s, dtype=np.int64) for s in samples]


def _time_budget(
    runs: Sequence[Callable[[], Any]], warmup: int, seconds: float
) -> list[np.ndarray]:
    """Time `runs` (one step, or the steps of a chain called in turn) within `seconds`
    per run, warm-up included.

    Warm-up rounds stop after `warmup` rounds or WARMUP_SHARE of the budget, whichever
    comes first (at least one round when `warmup` > 0, so a first call's one-off costs
    stay out of the samples); timed rounds go on until the budget is spent, and at least
    MIN_SAMPLES of them are taken, so a call slower than the budget allows still gets
    usable percentiles (and overruns the budget: the floor wins).
    """
    clock = time.perf_counter_ns
    start = clock()
    budget_ns = int(seconds * len(runs) * 1e9)
    warm_until = start + int(WARMUP_SHARE * budget_ns)
    for k in range(warmup):
        if k > 0 and clock() >= warm_until:
            break
        for run in runs:
            run()
    deadline = start + budget_ns
    samples: list[list[int]] = [[] for _ in runs]
    while len(samples[0]) < MIN_SAMPLES or clock() < deadline:
        for run, out in zip(runs, samples, strict=True):
            t0 = clock()
            run()
            out.append(clock() - t0)
    return [np.asarray(s, dtype=np.int64) for s in samples]


def _noise(
    steps: dict[int, tuple[StepStats, ...]], before: dict[str, Any], after: dict[str, Any]
) -> list[str]:
    reasons = []
    for batch, stats in steps.items():
        for i, s in enumerate(stats):
            if s.p50 > 0 and s.p90 / s.p50 > SPREAD_LIMIT:
                reasons.append(
                    f"step {i} at batch {batch}: p90/p50 = {s.p90 / s.p50:.2f} > {SPREAD_LIMIT}"
                )
    c0, c1 = before["clock"], after["clock"]
    if c0.get("governor") != c1.get("governor"):
        reasons.append(f"governor changed: {c0.get('governor')} -> {c1.get('governor')}")
    f0, f1 = c0.get("cur_mhz"), c1.get("cur_mhz")
    if f0 and f1 and abs(f1 - f0) / f0 > CLOCK_LIMIT:
        reasons.append(f"clock moved: {f0:.0f} -> {f1:.0f} MHz")
    return reasons


def _whole_noise(whole: dict[int, StepStats]) -> list[str]:
    return [
        f"whole model at batch {batch}: p90/p50 = {s.p90 / s.p50:.2f} > {SPREAD_LIMIT}"
        for batch, s in whole.items()
        if s.p50 > 0 and s.p90 / s.p50 > SPREAD_LIMIT
    ]


def _snapshot() -> dict[str, Any]:
    return {"temperatures": temperatures(), "clock": clock_state(), "load": load_average()}


@dataclass(frozen=True)
class _Timing:
    """How each step is timed: the checked warm-up, count, duration and order."""

    warmup: int
    iters: int | None
    min_seconds: float
    seconds_per_state: float | None
    order: str


def _check_timing(
    batches: Sequence[int],
    threads: int | None,
    warmup: int,
    iters: int | None,
    min_seconds: float,
    order: str,
    seconds_per_state: float | None,
) -> tuple[list[int], int | None, _Timing]:
    """Refuse bad batch sizes, thread counts and timing arguments; return the batch
    sizes, the thread count and the timing."""
    batch_list = [_positive(b, "batch") for b in batches]
    if not batch_list or len(set(batch_list)) != len(batch_list):
        raise InputError(f"need distinct batch sizes, got {list(batches)}", source="batch")
    if threads is not None:
        threads = _positive(threads, "threads")
    warmup = _positive(warmup, "warmup", minimum=0)
    if iters is not None:
        iters = _positive(iters, "iters", minimum=MIN_SAMPLES)
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, (int, float)):
        raise InputError(f"must be a number, got {min_seconds!r}", source="min_seconds")
    if not (min_seconds > 0 and np.isfinite(min_seconds)):
        raise InputError(f"must be a positive number, got {min_seconds!r}", source="min_seconds")
    if order not in ORDERS:
        raise InputError(f"must be one of {', '.join(ORDERS)}, got {order!r}", source="order")
    if seconds_per_state is not None:
        seconds_per_state = _budget(seconds_per_state, iters)
    return batch_list, threads, _Timing(warmup, iters, min_seconds, seconds_per_state, order)


def _resolve_config(
    runtime: str | RuntimeConfig | None,
    chosen: Preset | None,
    threads: int | None,
    precision: str | None,
    options: Mapping[str, Any] | None,
) -> RuntimeConfig:
    """`runtime` itself when it is a RuntimeConfig (then nothing else may be given), else
    the preset overridden by the other arguments."""
    if isinstance(runtime, RuntimeConfig):
        given = [k for k, v in (("preset", chosen), ("threads", threads)) if v is not None]
        given += [k for k, v in (("precision", precision), ("options", options)) if v is not None]
        if given:
            raise InputError(
                f"give a RuntimeConfig or {', '.join(given)}, not both", source="runtime"
            )
        return runtime
    return RuntimeConfig.resolve(
        chosen, runtime=runtime, threads=threads, precision=precision, options=options
    )


def _open_runtime(config: RuntimeConfig, chosen: Preset | None) -> Any:
    """The runtime backend `config` names; an option it refuses is blamed on the preset
    that set it, when there is one."""
    from edgeadapt.runtimes import get_runtime

    try:
        return get_runtime(config.runtime, **config.backend_options())
    except InputError as e:
        if chosen is None:
            raise
        raise InputError(
            f"preset {chosen.name!r} does not fit runtime {config.runtime!r}: {e}",
            source=chosen.source,
            field="$.options",
        ) from None


def _counter(progress: Progress | None, total: int) -> Callable[[int], None]:
    """A callback that adds finished calls to a count and reports it to `progress`."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    return advance


def _step_runs(
    bundle: Bundle, sessions: Sequence[Any], tensors: dict[str, np.ndarray]
) -> list[Callable[[], Any]]:
    """Run the chain once on `tensors` (adding each step's outputs to it, checked) and
    return one unchecked call per step on those real activations, for timing."""
    runs: list[Callable[[], Any]] = []
    for step, session in zip(bundle.steps, sessions, strict=True):
        feeds = {name: tensors[name] for name in step.inputs}
        tensors.update(session.run(feeds, check=True))
        runs.append(partial(session.run, feeds, check=False))
    return runs


def _time_runs(
    runs: Sequence[Callable[[], Any]], timing: _Timing, advance: Callable[[int], None]
) -> list[np.ndarray]:
    """Time the step calls of one batch as `timing` says: in turn (chain) or one by one,
    by count, duration or budget; report progress after each timed unit."""
    t = timing
    if t.seconds_per_state is not None and t.order == "chain":
        timed = _time_budget(runs, t.warmup, t.seconds_per_state)
        advance(len(runs))
        return timed
    if t.seconds_per_state is not None:
        timed = []
        for run in runs:
            timed.extend(_time_budget([run], t.warmup, t.seconds_per_state))
            advance(1)
        return timed
    if t.order == "chain":
        timed = _time_chain(runs, t.warmup, t.iters, t.min_seconds)
        advance(len(runs))
        return timed
    timed = []
    for run in runs:
        timed.append(_time_step(run, t.warmup, t.iters, t.min_seconds))
        advance(1)
    return timed


def _measure(
    bundle: Bundle,
    rt: Any,
    whole_model: WholeModel | None,
    batch_list: Sequence[int],
    timing: _Timing,
    rng: np.random.Generator,
    advance: Callable[[int], None],
) -> tuple[dict[int, tuple[StepStats, ...]], dict[int, StepStats]]:
    """Load every step (and the whole model) in `rt` and time them at each batch size;
    the sessions are closed however it ends."""
    sessions: list[Any] = []
    whole_times: dict[int, StepStats] = {}
    try:
        sessions.extend(rt.load(s.path) for s in bundle.steps)
        if whole_model is not None:
            load_whole(rt, bundle, whole_model)
        results: dict[int, tuple[StepStats, ...]] = {}
        for batch in batch_list:
            tensors: dict[str, np.ndarray] = _random_inputs(bundle, batch, rng)
            runs = _step_runs(bundle, sessions, tensors)
            timed = _time_runs(runs, timing, advance)
            results[batch] = tuple(StepStats.from_ns(t) for t in timed)
            if whole_model is not None:
                whole_times[batch] = _time_whole(
                    whole_model,
                    tensors,
                    batch,
                    timing.warmup,
                    timing.iters,
                    timing.min_seconds,
                    timing.seconds_per_state,
                )
                advance(1)
    finally:
        for session in sessions:
            session.close()
        if whole_model is not None and whole_model.session is not None:
            whole_model.session.close()
    return results, whole_times


def _whole_in_tmp(
    bundle: Bundle, whole: bool | str | os.PathLike[str]
) -> tuple[tempfile.TemporaryDirectory[str], WholeModel | None]:
    """The whole model to time (see `prepare_whole`), written into a temporary directory
    the caller cleans up."""
    tmp = tempfile.TemporaryDirectory(prefix="edgeadapt-whole-")
    try:
        return tmp, prepare_whole(bundle, whole, Path(tmp.name))
    except BaseException:
        tmp.cleanup()
        raise


def _settings(config: RuntimeConfig, timing: _Timing, seed: int) -> dict[str, Any]:
    """The profile's ``settings``: the runtime configuration and how it was timed."""
    runtime_options = config.backend_options()
    t = timing
    return {
        "runtime": config.runtime,
        "preset": config.preset,
        "threads": runtime_options.get("threads"),
        "options": {k: v for k, v in runtime_options.items() if k != "threads"},
        "warmup": t.warmup,
        "iters": t.iters,
        "min_seconds": (
            None if t.iters is not None or t.seconds_per_state is not None else float(t.min_seconds)
        ),
        "seconds_per_state": t.seconds_per_state,
        "seed": seed,
        "order": t.order,
        "runtime_config": config.to_json(),
    }


def profile_bundle(
    bundle: Bundle,
    runtime: str | RuntimeConfig | None = None,
    batches: Sequence[int] = (1,),
    threads: int | None = None,
    warmup: int = 20,
    iters: int | None = None,
    min_seconds: float = 0.5,
    progress: Progress | None = None,
    seed: int = 0,
    *,
    preset: Preset | str | None = None,
    precision: str | None = None,
    options: Mapping[str, Any] | None = None,
    order: str = DEFAULT_ORDER,
    whole: bool | str | os.PathLike[str] = True,
    seconds_per_state: float | None = None,
    overhead: bool = True,
) -> Profile:
    """Time every step of `bundle` at each batch size on a runtime.

    The runtime and its options are `runtime` when it is a `RuntimeConfig`; else they
    come from `preset` (a `Preset` or a preset name or file, see `edgeadapt.formats.presets`),
    overridden by `runtime`, `threads`, `precision` and `options`; with neither, ONNX
    Runtime on 1 thread. The profile records the configuration
    (`Profile.runtime_config`). Each step gets `warmup` untimed
    calls, then `iters` timed calls (at least MIN_SAMPLES), or with `iters=None` as
    many as fit in `min_seconds` (at least MIN_SAMPLES). `order` is ``chain`` (the steps
    called in turn, see the module docstring) or ``step`` (each step timed alone,
    repeatedly). With `seconds_per_state`, each step (each round of the chain: that many
    seconds per step) gets a time budget instead, warm-up included (see `_time_budget`);
    `iters` must then be None. `whole` is True (time `exporters.compose.whole_model` of
    the bundle), a path to the original ONNX model, or False (no whole model); it is
    timed the same way after the steps. `progress(done, total)` is called after each
    (batch, step) and after each batch's whole model (`profile_calls` gives the total).
    With `overhead`, last, `edgeadapt.measure.overhead.measure_overhead` times what
    `AdaptiveModel.predict` itself costs on this device (a fraction of a second at batch
    1; ``settings.cascade_overhead``, which the planner counts per hop).
    """
    from edgeadapt.measure.overhead import measure_overhead  # the cascade reads profiles

    batch_list, threads, timing = _check_timing(
        batches, threads, warmup, iters, min_seconds, order, seconds_per_state
    )
    chosen = load_preset(preset) if isinstance(preset, (str, os.PathLike)) else preset
    config = _resolve_config(runtime, chosen, threads, precision, options)
    rt = _open_runtime(config, chosen)
    rng = np.random.default_rng(seed)
    tmp, whole_model = _whole_in_tmp(bundle, whole)
    before = _snapshot()
    measured_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    advance = _counter(progress, profile_calls(bundle, batch_list, whole_model is not None))
    try:
        results, whole_times = _measure(bundle, rt, whole_model, batch_list, timing, rng, advance)
    finally:
        tmp.cleanup()
    measured = measure_overhead(bundle, config) if overhead else None
    after = _snapshot()
    reasons = _noise(results, before, after) + _whole_noise(whole_times)
    return Profile(
        manifest_sha256=bundle.manifest_sha256,
        kind=bundle.kind,
        states=tuple(s.name for s in bundle.states),
        device=fingerprint(rt.describe()),
        measured_at=measured_at,
        settings=_settings(config, timing, seed)
        | ({} if measured is None else {"cascade_overhead": measured.to_json()}),
        before=before,
        after=after,
        noisy=bool(reasons),
        noise_reasons=tuple(reasons),
        steps=results,
        whole=whole_times,
        whole_model=None if whole_model is None else whole_model.provenance,
    )


@dataclass(frozen=True)
class ProfileRun:
    """A profile measured and saved (`profile_to_file`): the profile, the file, and each
    profiled batch's state costs `R_i` (ms, p50, the cascade view)."""

    profile: Profile
    path: Path
    state_costs: dict[int, tuple[float, ...]]

    def to_json(self) -> dict[str, Any]:
        """The profile file's document plus where it was written."""
        return {**self.profile.to_json(), "path": str(self.path)}


def profile_to_file(
    bundle: Bundle | str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    device: Preset | str | os.PathLike[str] | None = None,
    runtime: str | None = None,
    batches: Sequence[int] = (1,),
    threads: int | None = None,
    precision: str | None = None,
    warmup: int = 20,
    iters: int | None = None,
    min_seconds: float = 0.5,
    seconds_per_state: float | None = None,
    order: str = DEFAULT_ORDER,
    whole: bool | str | os.PathLike[str] = True,
    progress: Progress | None = None,
) -> ProfileRun:
    """`edgeadapt profile`: `profile_bundle` under the `device` preset (a `Preset`, a
    shipped name or a preset file) and the explicit choices, saved to `output` (default
    `default_profile_path`, per preset)."""

    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    preset = load_preset(device) if isinstance(device, (str, os.PathLike)) else device
    prof = profile_bundle(
        loaded,
        runtime=runtime,
        batches=batches,
        threads=threads,
        warmup=warmup,
        iters=iters,
        min_seconds=min_seconds,
        progress=progress,
        preset=preset,
        precision=precision,
        order=order,
        whole=whole,
        seconds_per_state=seconds_per_state,
    )
    path = (
        Path(output)
        if output is not None
        else default_profile_path(loaded, None if preset is None else preset.name)
    )
    save_profile(path, prof)
    costs = {b: tuple(state_costs(prof, loaded, batch=b)) for b in prof.batches}
    return ProfileRun(prof, path, costs)


def profile_calls(bundle: Bundle, batches: Sequence[int], whole: bool = True) -> int:
    """How many `progress` calls `profile_bundle` makes: one per (batch, step), plus one
    per batch for the whole model."""
    return len(batches) * (len(bundle.steps) + bool(whole))


def _time_whole(
    whole: WholeModel,
    tensors: Mapping[str, np.ndarray],
    batch: int,
    warmup: int,
    iters: int | None,
    min_seconds: float,
    seconds_per_state: float | None,
) -> StepStats:
    """The whole model at `batch`, timed alone call after call (as it runs deployed),
    under the same budget as a state when there is one."""
    run = whole_run(whole, tensors, batch)
    if seconds_per_state is not None:
        return StepStats.from_ns(_time_budget([run], warmup, seconds_per_state)[0])
    return StepStats.from_ns(_time_step(run, warmup, iters, min_seconds))
