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
skips it. The whole model and the steps are timed in the same window, in interleaved
rounds (A/B, as `bench/cascade.py` compares them): each round gives the chain (or each
step) a block of about `BLOCK_SECONDS` of calls, then the whole model one, call after
call as it runs deployed, the order rotating, so a busy neighbour or a clock change hits
both alike; each round also gives one ratio of the full path to the whole model, and the
profile keeps their median and spread (``full_over_whole``).

The profile holds, per batch size and step, p50/p90/p99/mean/std/n in ms, the same for
the whole model, the full path over the whole model, the device fingerprint with temperatures and clocks before and after,
a noise flag, and the sha256 of the bundle's manifest, so it is refused for any other
bundle.

The profile it writes is `edgeadapt.formats.profile`.
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import edgeadapt.runtimes as runtimes
from edgeadapt.data.inputs import random_batch
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle, as_bundle
from edgeadapt.formats.chains import Layout, chain_starts, layout
from edgeadapt.formats.device import clock_state, fingerprint, load_average, temperatures
from edgeadapt.formats.presets import Preset, RuntimeConfig, load_preset
from edgeadapt.formats.profile import (
    DEFAULT_ORDER,
    MIN_SAMPLES,
    ORDERS,
    Profile,
    Ratio,
    StepStats,
    default_profile_path,
    save_profile,
    state_costs,
)
from edgeadapt.measure.overhead import measure_overhead
from edgeadapt.measure.whole import WholeModel, load_whole, prepare_whole, whole_run

__all__ = ["ProfileRun", "profile_bundle", "profile_calls", "profile_to_file"]

#: A step whose p90 exceeds its p50 by this factor marks the profile noisy.
SPREAD_LIMIT = 1.5
#: A clock that moved by more than this share between start and end marks it noisy.
CLOCK_LIMIT = 0.10
#: Under a time budget, warm-up stops after this share of the budget (or `warmup` calls).
WARMUP_SHARE = 0.2
#: The steps and the whole model take turns in blocks of about this many seconds each.
BLOCK_SECONDS = 0.01
#: At most this many timed iterations per block.
MAX_BLOCK = 50

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


@dataclass(frozen=True)
class _Stop:
    """When the timed rounds end: after `iters` timed iterations of every unit, or with
    `iters` None once `seconds` have passed and every unit has MIN_SAMPLES; with
    `budget`, `seconds` count from the first warm-up call, warm-up included, and warm-up
    stops after WARMUP_SHARE of them."""

    iters: int | None
    seconds: float
    budget: bool


@dataclass(frozen=True)
class _Timed:
    """What `_time_rounds` measured: every run's samples (ns, the units' runs in order)
    and each round's median per run (``rounds x runs``, ns)."""

    samples: list[np.ndarray]
    rounds: np.ndarray


def _block_size(iteration_ns: float | None) -> int:
    """Timed iterations per block: about BLOCK_SECONDS of the slowest unit's, 1 to
    MAX_BLOCK (1 before an iteration has been timed)."""
    if iteration_ns is None or iteration_ns <= 0:
        return 1
    return max(1, min(MAX_BLOCK, math.ceil(BLOCK_SECONDS * 1e9 / iteration_ns)))


def _iterate(runs: Sequence[Callable[[], Any]], count: int) -> list[list[int]]:
    """Call `runs` in turn `count` times; each run's call times (ns)."""
    clock = time.perf_counter_ns
    got: list[list[int]] = [[] for _ in runs]
    for _ in range(count):
        for run, out in zip(runs, got, strict=True):
            t0 = clock()
            run()
            out.append(clock() - t0)
    return got


def _warm_up(
    units: Sequence[Sequence[Callable[[], Any]]], warmup: int, stop: _Stop, start: int
) -> float | None:
    """Up to `warmup` rounds of one untimed iteration per unit (within `WARMUP_SHARE` of
    a budget, see `_Stop`); the slowest unit's time in the last one (None without)."""
    clock = time.perf_counter_ns
    warm_until = start + int(WARMUP_SHARE * stop.seconds * 1e9)
    slowest: float | None = None
    for k in range(warmup):
        if stop.budget and k > 0 and clock() >= warm_until:
            break
        slowest = max(sum(sum(calls) for calls in _iterate(runs, 1)) for runs in units)
    return slowest


def _time_rounds(
    units: Sequence[Sequence[Callable[[], Any]]],
    warmup: int,
    stop: _Stop,
    tick: Callable[[float], None] = lambda share: None,
) -> _Timed:
    """Time every run of `units` in interleaved rounds, so that whatever else the machine
    does in that window hits every unit alike (A/B in one window).

    One iteration of a unit calls its runs in turn (the chain of steps, one step, or the
    whole model) and times each call. Warm-up: up to `warmup` rounds of one untimed
    iteration per unit (see `_Stop` for a budget). Then each round gives every unit in
    turn, the order rotating, a block of the same number of timed iterations, about
    BLOCK_SECONDS of the slowest unit's; with several units, a block of more than one
    starts with one untimed iteration (it refills the caches the other units used, which
    a model deployed alone, called after itself, does not pay). `tick(share)` reports the
    share of the timing done after each round.
    """
    clock = time.perf_counter_ns
    start = clock()
    slowest = _warm_up(units, warmup, stop, start)
    samples: list[list[int]] = [[] for runs in units for _ in runs]
    first = np.cumsum([0, *(len(runs) for runs in units)])
    rounds: list[list[float]] = []
    timed = 0
    begin = clock()
    deadline = (start if stop.budget else begin) + int(stop.seconds * 1e9)
    while (
        timed < stop.iters
        if stop.iters is not None
        else (timed < MIN_SAMPLES or clock() < deadline)
    ):
        block = _block_size(slowest)
        if stop.iters is not None:
            block = min(block, stop.iters - timed)
        medians = [0.0] * len(samples)
        slowest = 0.0
        shift = len(rounds) % len(units)
        for u in [*range(shift, len(units)), *range(shift)]:
            runs, at = units[u], int(first[u])
            if len(units) > 1 and block > 1:
                _iterate(runs, 1)
            for j, out in enumerate(_iterate(runs, block)):
                samples[at + j].extend(out)
                medians[at + j] = float(np.median(out))
            slowest = max(slowest, sum(medians[at : at + len(runs)]))
        timed += block
        rounds.append(medians)
        if stop.iters is not None:
            tick(timed / stop.iters)
        else:
            tick(min(1.0, (clock() - begin) / max(1, deadline - begin)))
    tick(1.0)
    return _Timed(
        [np.asarray(s, dtype=np.int64) for s in samples],
        np.asarray(rounds, dtype=np.float64).reshape(len(rounds), len(samples)),
    )


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


def _whole_noise(whole: dict[int, StepStats], ratios: dict[int, Ratio]) -> list[str]:
    """The whole model's spread, and the spread of the full path over it across rounds."""
    reasons = [
        f"whole model at batch {batch}: p90/p50 = {s.p90 / s.p50:.2f} > {SPREAD_LIMIT}"
        for batch, s in whole.items()
        if s.p50 > 0 and s.p90 / s.p50 > SPREAD_LIMIT
    ]
    return reasons + [
        f"full path / whole model at batch {batch} varied {r.p10:.2f}-{r.p90:.2f}x over "
        f"{r.rounds} rounds (p90/p10 > {SPREAD_LIMIT})"
        for batch, r in ratios.items()
        if r.p90 / r.p10 > SPREAD_LIMIT
    ]


def _snapshot() -> dict[str, Any]:
    return {"temperatures": temperatures(), "clock": clock_state(), "load": load_average()}


@dataclass(frozen=True)
class TimingOptions:
    """How `profile_bundle` measures (module docstring): at each of the `batches`,
    each step gets `warmup` untimed calls, then `iters` timed calls (at least
    MIN_SAMPLES), or with ``iters=None`` as many as fit in `min_seconds` per step (at
    least MIN_SAMPLES); with `seconds_per_state`, a time budget per step instead, warm-up
    included (`_Stop`; `iters` must then be None). `order` is ``chain`` (the steps
    called in turn) or ``step`` (each step timed alone, repeatedly); `seed` draws the
    random inputs. `whole` is True (time `exporters.compose.whole_model` of the bundle),
    a path to the original ONNX model, or False (no whole model). With `overhead`, last,
    `edgeadapt.measure.overhead.measure_overhead` times what `AdaptiveModel.predict`
    itself costs on this device (``settings.cascade_overhead``, which the planner counts
    per hop)."""

    batches: Sequence[int] = (1,)
    warmup: int = 20
    iters: int | None = None
    min_seconds: float = 0.5
    seconds_per_state: float | None = None
    order: str = DEFAULT_ORDER
    seed: int = 0
    whole: bool | str | os.PathLike[str] = True
    overhead: bool = True


def _check_timing(
    timing: TimingOptions, threads: int | None
) -> tuple[list[int], int | None, TimingOptions]:
    """Refuse bad batch sizes, thread counts and timing arguments; return the batch
    sizes, the thread count and the checked timing."""
    batches, iters, min_seconds = timing.batches, timing.iters, timing.min_seconds
    batch_list = [_positive(b, "batch") for b in batches]
    if not batch_list or len(set(batch_list)) != len(batch_list):
        raise InputError(f"need distinct batch sizes, got {list(batches)}", source="batch")
    if threads is not None:
        threads = _positive(threads, "threads")
    warmup = _positive(timing.warmup, "warmup", minimum=0)
    if iters is not None:
        iters = _positive(iters, "iters", minimum=MIN_SAMPLES)
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, (int, float)):
        raise InputError(f"must be a number, got {min_seconds!r}", source="min_seconds")
    if not (min_seconds > 0 and np.isfinite(min_seconds)):
        raise InputError(f"must be a positive number, got {min_seconds!r}", source="min_seconds")
    if timing.order not in ORDERS:
        raise InputError(
            f"must be one of {', '.join(ORDERS)}, got {timing.order!r}", source="order"
        )
    seconds_per_state = timing.seconds_per_state
    if seconds_per_state is not None:
        seconds_per_state = _budget(seconds_per_state, iters)
    checked = replace(
        timing,
        batches=tuple(batch_list),
        warmup=warmup,
        iters=iters,
        seconds_per_state=seconds_per_state,
    )
    return batch_list, threads, checked


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
    try:
        return runtimes.get_runtime(config.runtime, **config.backend_options())
    except InputError as e:
        if chosen is None:
            raise
        raise InputError(
            f"preset {chosen.name!r} does not fit runtime {config.runtime!r}: {e}",
            source=chosen.source,
            field="$.options",
        ) from None


class _Progress:
    """Reports ``(done, total)`` to `progress` as the timing advances: `done` counts the
    (batch, step) and (batch, whole model) timings finished, and the finished share of
    the batch being timed (its units are timed together, in rounds)."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def batch(self, k: int, per_batch: int) -> Callable[[float], None]:
        """The `tick(share)` of the `k`-th batch, whose timing counts `per_batch`."""

        def tick(share: float) -> None:
            done = k * per_batch + min(per_batch, int(share * per_batch))
            if done > self.done:
                self.done = done
                if self.progress is not None:
                    self.progress(done, self.total)

        return tick


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


def _units(runs: Sequence[Callable[[], Any]], order: str) -> list[list[Callable[[], Any]]]:
    """The steps as units of `_time_rounds`: one chain called in turn, or each alone."""
    return [list(runs)] if order == "chain" else [[run] for run in runs]


def _stop(timing: TimingOptions, units: int) -> _Stop:
    """How long `units` are timed: `iters` iterations each, `min_seconds` per unit's run
    after warm-up, or `seconds_per_state` per run, warm-up included."""
    if timing.seconds_per_state is not None:
        return _Stop(None, timing.seconds_per_state * units, budget=True)
    return _Stop(timing.iters, timing.min_seconds * units, budget=False)


def _full_over_whole(how: Layout, rounds: np.ndarray) -> Ratio:
    """Each round's full path (the last state's chain of steps under `how`, a bundle's
    kind or chains: all steps of a one-chain early-exit bundle, an ensemble's last
    member: `state_costs`' R_N) over its whole model (the last column)."""
    steps, whole = rounds[:, :-1], rounds[:, -1]
    chains = how if isinstance(how, tuple) else layout(how, steps.shape[1])
    full = steps[:, chain_starts(chains)[-1] :].sum(axis=1)
    return Ratio.from_rounds(full / np.maximum(whole, 1.0))


def _measure(
    bundle: Bundle,
    rt: Any,
    whole_model: WholeModel | None,
    batch_list: Sequence[int],
    timing: TimingOptions,
    rng: np.random.Generator,
    progress: _Progress,
) -> tuple[dict[int, tuple[StepStats, ...]], dict[int, StepStats], dict[int, Ratio]]:
    """Load every step (and the whole model) in `rt` and time them at each batch size,
    the whole model in the same rounds as the steps; the sessions are closed however it
    ends."""
    sessions: list[Any] = []
    results: dict[int, tuple[StepStats, ...]] = {}
    whole_times: dict[int, StepStats] = {}
    ratios: dict[int, Ratio] = {}
    per_batch = len(bundle.steps) + (whole_model is not None)
    try:
        sessions.extend(rt.load(s.path) for s in bundle.steps)
        if whole_model is not None:
            load_whole(rt, bundle, whole_model)
        for k, batch in enumerate(batch_list):
            # every model input, random with its dtype (token ids within the embedding
            # table, masks all ones), made once outside the timed loop
            tensors: dict[str, np.ndarray] = random_batch(bundle, batch, rng)
            units = _units(_step_runs(bundle, sessions, tensors), timing.order)
            if whole_model is not None:
                units.append([whole_run(whole_model, tensors, batch)])
            stop = _stop(timing, per_batch)
            timed = _time_rounds(units, timing.warmup, stop, progress.batch(k, per_batch))
            stats = [StepStats.from_ns(t) for t in timed.samples]
            results[batch] = tuple(stats[: len(bundle.steps)])
            if whole_model is not None:
                whole_times[batch] = stats[-1]
                ratios[batch] = _full_over_whole(bundle.cost_layout, timed.rounds)
    finally:
        for session in sessions:
            session.close()
        if whole_model is not None and whole_model.session is not None:
            whole_model.session.close()
    return results, whole_times, ratios


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


def _settings(config: RuntimeConfig, timing: TimingOptions) -> dict[str, Any]:
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
        "seed": timing.seed,
        "order": t.order,
        "runtime_config": config.to_json(),
    }


def profile_bundle(
    bundle: Bundle,
    runtime: str | RuntimeConfig | None = None,
    timing: TimingOptions | None = None,
    progress: Progress | None = None,
    *,
    threads: int | None = None,
    preset: Preset | str | None = None,
    precision: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Profile:
    """Time every step of `bundle` at each batch size on a runtime, as `timing` says
    (`TimingOptions`, default its defaults).

    The runtime and its options are `runtime` when it is a `RuntimeConfig`; else they
    come from `preset` (a `Preset` or a preset name or file, see `edgeadapt.formats.presets`),
    overridden by `runtime`, `threads`, `precision` and `options`; with neither, ONNX
    Runtime on 1 thread. The profile records the configuration
    (`Profile.runtime_config`). The whole model is timed in the same interleaved rounds
    as the steps (`_time_rounds`; `Profile.full_over_whole`). `progress(done, total)`
    counts the (batch, step) and (batch, whole model) timings done (`profile_calls`).
    """
    batch_list, threads, timing = _check_timing(timing or TimingOptions(), threads)
    chosen = load_preset(preset) if isinstance(preset, (str, os.PathLike)) else preset
    config = _resolve_config(runtime, chosen, threads, precision, options)
    rt = _open_runtime(config, chosen)
    tmp, whole_model = _whole_in_tmp(bundle, timing.whole)
    before = _snapshot()
    measured_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    counter = _Progress(progress, profile_calls(bundle, batch_list, whole_model is not None))
    try:
        rng = np.random.default_rng(timing.seed)
        results, whole_times, ratios = _measure(
            bundle, rt, whole_model, batch_list, timing, rng, counter
        )
    finally:
        tmp.cleanup()
    measured = measure_overhead(bundle, config) if timing.overhead else None
    after = _snapshot()
    reasons = _noise(results, before, after) + _whole_noise(whole_times, ratios)
    return Profile(
        manifest_sha256=bundle.manifest_sha256,
        kind=bundle.kind,
        states=tuple(s.name for s in bundle.states),
        device=fingerprint(rt.describe()),
        measured_at=measured_at,
        settings=_settings(config, timing)
        | ({} if measured is None else {"cascade_overhead": measured.to_json()}),
        before=before,
        after=after,
        noisy=bool(reasons),
        noise_reasons=tuple(reasons),
        steps=results,
        whole=whole_times,
        whole_model=None if whole_model is None else whole_model.provenance,
        full_over_whole=ratios,
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
    threads: int | None = None,
    precision: str | None = None,
    timing: TimingOptions | None = None,
    progress: Progress | None = None,
) -> ProfileRun:
    """`edgeadapt profile`: `profile_bundle` under the `device` preset (a `Preset`, a
    shipped name or a preset file), the explicit choices and the `timing`, saved to
    `output` (default `default_profile_path`, per preset)."""

    loaded = as_bundle(bundle)
    preset = load_preset(device) if isinstance(device, (str, os.PathLike)) else device
    prof = profile_bundle(
        loaded, runtime, timing, progress, threads=threads, preset=preset, precision=precision
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
