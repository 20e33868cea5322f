"""The profiler: what every step of a bundle costs on this device, and the profile format.

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

File format (JSON, ``format: edgeadapt-profile``, ``version: 1``)::

    {"bundle": {"manifest_sha256", "kind", "states": [names]},
     "device": fingerprint (see edgeadapt.device), "measured_at": ISO time,
     "settings": {"runtime", "preset", "threads", "options", "warmup", "iters",
                  "min_seconds", "seconds_per_state", "seed", "order",
                  "runtime_config": see edgeadapt.presets.RuntimeConfig,
                  "cascade_overhead": {"hop_ms", "call_ms", "hops"}},
     "before"/"after": {"temperatures", "clock", "load": [1, 5, 15 min load averages]},
     "noise": {"noisy", "reasons"},
     "whole_model": {"origin": "composed" | "file", "path": str | null,
                     "sha256": of the ONNX timed, "state": last state's name},
     "batches": [{"batch": 1, "steps": [{"p50_ms", "p90_ms", "p99_ms", "mean_ms",
                                          "std_ms", "min_ms", "n"}, ...],
                  "whole": {same keys as a step}}, ...]}

``whole_model`` and each batch's ``whole`` are optional (profiles written before the
whole model was timed, or with ``whole=False``, lack them); a missing ``settings.order``
reads as ``step``; ``settings.cascade_overhead`` (`edgeadapt.cascade.Overhead`, what
`AdaptiveModel.predict` costs beside the runtime calls, for the planner) is absent in
older profiles and for branches bundles (then plans count no overhead); a missing
``settings.runtime_config`` is derived from ``runtime``,
``preset``, ``threads`` and ``options`` (which then hold the precision, as a backend
takes it).

`state_costs` turns a profile into the `R_i` of each state (the cascade sum for
early-exit bundles, the member's own cost for ensembles); `static_cost` gives the
measured whole model's; `flops_costs` gives the device-independent view from the
manifest.
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeadapt.bundle import Bundle
from edgeadapt.device import clock_state, device_id, fingerprint, load_average, temperatures
from edgeadapt.errors import InputError
from edgeadapt.jsonio import MAX_MS, Fields, read_json, write_json
from edgeadapt.presets import Preset, RuntimeConfig, load_preset
from edgeadapt.whole import WholeModel, load_whole, prepare_whole, whole_run

if TYPE_CHECKING:
    from edgeadapt.cascade import Overhead

__all__ = [
    "MIN_SAMPLES",
    "DeviceMismatchWarning",
    "Profile",
    "ProfileRun",
    "StepStats",
    "default_profile_path",
    "find_profile",
    "flops_costs",
    "load_profile",
    "profile_bundle",
    "profile_calls",
    "profile_to_file",
    "save_profile",
    "state_costs",
    "static_cost",
]

FORMAT = "edgeadapt-profile"
VERSION = 1
#: Fewer timed calls than this per step give percentiles too rough to plan on.
MIN_SAMPLES = 10
#: A step whose p90 exceeds its p50 by this factor marks the profile noisy.
SPREAD_LIMIT = 1.5
#: A clock that moved by more than this share between start and end marks it noisy.
CLOCK_LIMIT = 0.10
STATS = ("p50", "p90", "p99", "mean", "std", "min")
VIEWS = ("cascade", "step")
#: How the profiler calls the steps: each alone, repeatedly, or all in turn.
ORDERS = ("step", "chain")
#: The order the profiler uses unless told otherwise: the one the cascade pays.
DEFAULT_ORDER = "chain"
#: Where the timed whole model came from (see edgeadapt.whole).
WHOLE_ORIGINS = ("composed", "file")
#: Under a time budget, warm-up stops after this share of the budget (or `warmup` calls).
WARMUP_SHARE = 0.2

Progress = Callable[[int, int], None]


class DeviceMismatchWarning(UserWarning):
    """A profile measured on another device was loaded here."""


@dataclass(frozen=True)
class StepStats:
    """Timing statistics of one step at one batch size, in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    n: int

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray) -> StepStats:
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        # rounded to the nanosecond, the timer's resolution, so a saved profile reads back equal
        values = (p50, p90, p99, ms.mean(), ms.std(), ms.min())
        return cls(**{k: round(float(v), 6) for k, v in zip(STATS, values, strict=True)}, n=ms.size)

    def to_json(self) -> dict[str, Any]:
        return {f"{k}_ms": getattr(self, k) for k in STATS} | {"n": self.n}

    def get(self, stat: str) -> float:
        if stat not in STATS:
            raise InputError(f"must be one of {', '.join(STATS)}, got {stat!r}", source="stat")
        return float(getattr(self, stat))


@dataclass(frozen=True)
class Profile:
    """A measured cost table of one bundle on one device/backend (see the module docstring)."""

    manifest_sha256: str
    kind: str
    states: tuple[str, ...]
    device: dict[str, Any]
    measured_at: str
    settings: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    noisy: bool
    noise_reasons: tuple[str, ...]
    steps: dict[int, tuple[StepStats, ...]]
    source: str | None = None
    #: The whole model's timing per batch (empty when it was not timed).
    whole: dict[int, StepStats] = field(default_factory=dict)
    #: Where the timed whole model came from: origin, path, sha256, state (or None).
    whole_model: dict[str, Any] | None = None

    @property
    def order(self) -> str:
        """How the steps were called: ``chain`` or ``step`` (older profiles: ``step``)."""
        return str(self.settings.get("order", "step"))

    @property
    def cascade_overhead(self) -> Overhead | None:
        """What `AdaptiveModel.predict` costs beside the runtime calls on this device
        (`edgeadapt.cascade.Overhead`); None for an older profile or a branches bundle."""
        return _cascade_overhead(self.settings, self.source or "profile")

    @property
    def runtime_config(self) -> RuntimeConfig:
        """The runtime configuration the steps were timed under."""
        return _runtime_config(self.settings, self.source or "profile")

    @property
    def device_id(self) -> str:
        return str(self.device.get("device_id", "unknown"))

    @property
    def batches(self) -> tuple[int, ...]:
        return tuple(sorted(self.steps))

    def step_stats(self, batch: int = 1) -> tuple[StepStats, ...]:
        """The statistics of every step at `batch` (an `InputError` if it was not measured)."""
        if batch not in self.steps:
            raise InputError(
                f"batch {batch} was not profiled (has {list(self.batches)})",
                source=self.source,
                field="batches",
            )
        return self.steps[batch]

    def whole_stats(self, batch: int = 1) -> StepStats | None:
        """The whole model's statistics at `batch`, None when it was not timed."""
        self.step_stats(batch)
        return self.whole.get(batch)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "bundle": {
                "manifest_sha256": self.manifest_sha256,
                "kind": self.kind,
                "states": list(self.states),
            },
            "device": self.device,
            "measured_at": self.measured_at,
            "settings": self.settings,
            "before": self.before,
            "after": self.after,
            "noise": {"noisy": self.noisy, "reasons": list(self.noise_reasons)},
            "batches": [self._batch_json(b) for b in self.batches],
        }
        if self.whole_model is not None:
            doc["whole_model"] = dict(self.whole_model)
        return doc

    def _batch_json(self, batch: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"batch": batch, "steps": [s.to_json() for s in self.steps[batch]]}
        if batch in self.whole:
            entry["whole"] = self.whole[batch].to_json()
        return entry


# ------------------------------------------------------------------ measuring


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
    """Every model input, random with its dtype (`edgeadapt.inputs.random_batch`: token
    ids within the embedding table, masks all ones), made once outside the timed loop."""
    from edgeadapt.inputs import random_batch

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
    come from `preset` (a `Preset` or a preset name or file, see `edgeadapt.presets`),
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
    With `overhead`, last, `edgeadapt.cascade.measure_overhead` times what
    `AdaptiveModel.predict` itself costs on this device (a fraction of a second at batch
    1; ``settings.cascade_overhead``, which the planner counts per hop).
    """
    from edgeadapt.cascade import measure_overhead  # the cascade reads profiles

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
    from edgeadapt.bundle import load_bundle

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


# ------------------------------------------------------------------ costs


def state_costs(
    profile: Profile, bundle: Bundle, batch: int = 1, stat: str = "p50", view: str = "cascade"
) -> list[float]:
    """`R_i` of each state in ms: ``cascade`` (the default) is what a sequential run pays,
    steps 0..i for early-exit bundles and the member alone for ensembles; ``step`` is each
    step alone."""
    check_profile(profile, bundle)
    if view not in VIEWS:
        raise InputError(f"must be one of {', '.join(VIEWS)}, got {view!r}", source="view")
    per_step = [s.get(stat) for s in profile.step_stats(batch)]
    if view == "step" or bundle.kind != "early-exit":
        return per_step
    return [float(x) for x in np.cumsum(per_step)]


def static_cost(
    profile: Profile, bundle: Bundle, batch: int = 1, stat: str = "p50"
) -> float | None:
    """What the measured whole model (the static baseline) costs in ms; None when the
    profile did not time it."""
    check_profile(profile, bundle)
    stats = profile.whole_stats(batch)
    return None if stats is None else stats.get(stat)


def flops_costs(bundle: Bundle, view: str = "cascade") -> list[float]:
    """Device-independent state costs from the manifest's FLOPs: ``cascade`` (steps 0..i)
    or the paper's ``direct`` view (stages 0..i plus head i only); ensembles: own FLOPs."""
    if view not in ("cascade", "direct"):
        raise InputError(f"must be cascade or direct, got {view!r}", source="view")
    if bundle.kind != "early-exit" or view == "cascade":
        return [float(f) for f in bundle.flops]
    stages = np.cumsum(bundle.stage_flops)
    return [float(stages[i] + s.head_flops) for i, s in enumerate(bundle.steps)]


# ------------------------------------------------------------------ the file


def default_profile_path(bundle: Bundle, preset: str | None = None) -> Path:
    """``BUNDLE/profiles/<device-id>.json``, or ``<device-id>-<preset>.json`` for a preset
    (so profiles of one device on several presets sit side by side)."""
    name = device_id() if preset is None else f"{device_id()}-{preset}"
    return bundle.path / "profiles" / f"{name}.json"


def find_profile(
    bundle: Bundle, path: str | os.PathLike[str] | None = None, preset: str | None = None
) -> Path | None:
    """The profile to use for `bundle`: `path` when given, else this device's default
    (`default_profile_path`) when it exists, else None."""
    if path is not None:
        return Path(path)
    default = default_profile_path(bundle, preset)
    return default if default.is_file() else None


def save_profile(path: str | os.PathLike[str], profile: Profile) -> None:
    """Write a profile atomically."""
    write_json(path, profile.to_json())


def check_profile(profile: Profile, bundle: Bundle) -> None:
    """Refuse a profile measured for another bundle (manifest sha256 or step count differ)."""
    if profile.manifest_sha256 != bundle.manifest_sha256:
        raise InputError(
            f"was measured for another bundle (manifest sha256 {profile.manifest_sha256[:12]}..., "
            f"{bundle.path} has {bundle.manifest_sha256[:12]}...); profile this bundle again",
            source=profile.source,
            field="$.bundle.manifest_sha256",
        )
    if len(profile.states) != len(bundle.steps):
        raise InputError(
            f"has {len(profile.states)} states, the bundle {len(bundle.steps)}",
            source=profile.source,
            field="$.bundle.states",
        )


def _stats(f: Fields) -> StepStats:
    values = {k: f.number(f"{k}_ms", minimum=0.0, maximum=MAX_MS) for k in STATS}
    n = f.get("n", int)
    if n < MIN_SAMPLES:
        f.fail(f"too few samples: {n} < {MIN_SAMPLES}; profile again with more --iters", "n")
    return StepStats(n=n, **values)


def _parse(doc: dict[str, Any], source: str) -> Profile:
    f = Fields(doc, source=source)
    b = f.child("bundle")
    sha = b.get("manifest_sha256", str)
    kind = b.get("kind", str)
    states = b.get("states", list)
    if not states or not all(isinstance(s, str) for s in states):
        b.fail("expected a non-empty list of state names", "states")
    device = f.get("device", dict)
    steps: dict[int, tuple[StepStats, ...]] = {}
    whole: dict[int, StepStats] = {}
    entries = f.items("batches")
    if not entries:
        f.fail("no batch sizes measured", "batches")
    for e in entries:
        batch = e.get("batch", int, check=lambda v: None if v >= 1 else "must be >= 1")
        if batch in steps:
            e.fail(f"batch {batch} listed twice", "batch")
        stats = e.items("steps")
        if len(stats) != len(states):
            e.fail(f"has {len(stats)} steps, the bundle {len(states)}", "steps")
        steps[batch] = tuple(_stats(s) for s in stats)
        if "whole" in e.obj:
            whole[batch] = _stats(e.child("whole"))
    whole_model = _whole_provenance(f) if "whole_model" in f.obj else None
    if (whole_model is None) != (not whole):
        f.fail("whole_model and each batch's whole timing come together", "whole_model")
    if whole and set(whole) != set(steps):
        f.fail(
            f"the whole model was timed at batches {sorted(whole)}, steps at {sorted(steps)}",
            "batches",
        )
    settings = f.get("settings", dict)
    _runtime_config(settings, source)  # refused on read, not when first used
    _cascade_overhead(settings, source)
    noise = f.child("noise")
    reasons = noise.get("reasons", list)
    return Profile(
        manifest_sha256=sha,
        kind=kind,
        states=tuple(states),
        device=device,
        measured_at=f.get("measured_at", str),
        settings=settings,
        before=f.get("before", dict),
        after=f.get("after", dict),
        noisy=noise.get("noisy", bool),
        noise_reasons=tuple(str(r) for r in reasons),
        steps=steps,
        source=source,
        whole=whole,
        whole_model=whole_model,
    )


def _cascade_overhead(settings: Mapping[str, Any], source: str) -> Overhead | None:
    """`settings.cascade_overhead`, None when the profile did not measure it."""
    from edgeadapt.cascade import Overhead  # the cascade reads profiles

    if "cascade_overhead" not in settings:
        return None
    return Overhead.from_json(settings["cascade_overhead"], source, "$.settings.cascade_overhead")


def _runtime_config(settings: Mapping[str, Any], source: str) -> RuntimeConfig:
    """`settings.runtime_config`, or for a profile written before it was recorded, the
    configuration its ``runtime``/``preset``/``threads``/``options`` describe."""
    if "runtime_config" in settings:
        return RuntimeConfig.from_json(
            settings["runtime_config"], source, "$.settings.runtime_config"
        )
    f = Fields(dict(settings), source=source, path="$.settings")
    runtime = f.get("runtime", str, "onnxruntime")
    threads = f.get("threads", (int, type(None)), None)
    options = dict(f.get("options", dict, {}))
    if threads is not None:
        options["threads"] = threads
    derived = RuntimeConfig.from_backend_options(runtime, options)
    doc = {**derived.to_json(), "preset": f.get("preset", (str, type(None)), None)}
    return RuntimeConfig.from_json(doc, source, "$.settings")


def _whole_provenance(f: Fields) -> dict[str, Any]:
    w = f.child("whole_model")
    origin = w.get(
        "origin",
        str,
        check=lambda v: None if v in WHOLE_ORIGINS else f"must be one of {list(WHOLE_ORIGINS)}",
    )
    sha = w.get(
        "sha256",
        str,
        check=lambda v: None if re.fullmatch(r"[0-9a-f]{64}", v) else "must be 64 hex digits",
    )
    path = w.get("path", (str, type(None)))
    return {"origin": origin, "path": path, "sha256": sha, "state": w.get("state", str)}


def load_profile(
    path: str | os.PathLike[str], bundle: Bundle | None = None, *, check_device: bool = True
) -> Profile:
    """Read and validate a profile; with `bundle`, refuse one measured for another bundle.

    Steps with fewer than MIN_SAMPLES timed calls are refused. A profile from another
    device is accepted with a `DeviceMismatchWarning` naming both devices.
    """
    profile = _parse(read_json(path, fmt=FORMAT, versions=[VERSION]), str(path))
    if bundle is not None:
        check_profile(profile, bundle)
    here = device_id()
    if check_device and profile.device_id != here:
        warnings.warn(
            f"{path}: profile measured on device {profile.device_id!r} "
            f"({profile.device.get('cpu', '?')}), this device is {here!r}; "
            "its costs may not hold here",
            DeviceMismatchWarning,
            stacklevel=2,
        )
    return profile
