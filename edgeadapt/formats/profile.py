"""The profile format: the measured cost table of one bundle on one device.

A profile holds, per batch size and step, p50/p90/p99/mean/std/n in ms, the same for
the whole model (the static baseline), the device fingerprint with temperatures and
clocks before and after, a noise flag, and the sha256 of the bundle's manifest, so it is
refused for any other bundle. The profiler that measures it is
`edgeadapt.measure.profiler`.

File format (JSON, ``format: edgeadapt-profile``, ``version: 1``)::

    {"bundle": {"manifest_sha256", "kind", "states": [names]},
     "device": fingerprint (see edgeadapt.formats.device), "measured_at": ISO time,
     "settings": {"runtime", "preset", "threads", "options", "warmup", "iters",
                  "min_seconds", "seconds_per_state", "seed", "order",
                  "runtime_config": see edgeadapt.formats.presets.RuntimeConfig,
                  "cascade_overhead": {"hop_ms", "call_ms", "hops"}},
     "before"/"after": {"temperatures", "clock", "load": [1, 5, 15 min load averages]},
     "noise": {"noisy", "reasons"},
     "whole_model": {"origin": "composed" | "file", "path": str | null,
                     "sha256": of the ONNX timed, "state": last state's name},
     "batches": [{"batch": 1, "steps": [{"p50_ms", "p90_ms", "p99_ms", "mean_ms",
                                          "std_ms", "min_ms", "n"}, ...],
                  "whole": {same keys as a step},
                  "full_over_whole": {"median", "p10", "p90", "rounds"}}, ...]}

``whole_model`` and each batch's ``whole`` are optional (profiles written before the
whole model was timed, or with ``whole=False``, lack them). ``full_over_whole``
(`Ratio`) is the full path's cost over the whole model's, per round of the interleaved
timing: its median and spread; it is optional, written only beside ``whole`` (profiles
that timed the whole model in a window of its own lack it). A missing ``settings.order``
reads as ``step``; ``settings.cascade_overhead`` (`Overhead`, what
`AdaptiveModel.predict` costs beside the runtime calls, for the planner) is absent in
older profiles, a branches bundle's made before its branches could be cascaded
included (then plans count no overhead); a missing
``settings.runtime_config`` is derived from ``runtime``,
``preset``, ``threads`` and ``options`` (which then hold the precision, as a backend
takes it).

`state_costs` turns a profile into the `R_i` of each state (the cascade sum for
early-exit bundles, the member's own cost for ensembles); `static_cost` gives the
measured whole model's; `flops_costs` gives the device-independent view from the
manifest.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle
from edgeadapt.formats.chains import chain_costs
from edgeadapt.formats.device import device_id
from edgeadapt.formats.identity import BundleIdentity, check_identity, read_identity
from edgeadapt.formats.jsonio import MAX_MS, Fields, read_json, write_json
from edgeadapt.formats.presets import RuntimeConfig, check_threads

__all__ = [
    "MIN_SAMPLES",
    "DeviceMismatchWarning",
    "Overhead",
    "Profile",
    "Ratio",
    "StepStats",
    "check_profile",
    "default_profile_path",
    "find_profile",
    "flops_costs",
    "load_profile",
    "save_profile",
    "state_costs",
    "static_cost",
]

FORMAT = "edgeadapt-profile"
VERSION = 1
#: Fewer timed calls than this per step give percentiles too rough to plan on.
MIN_SAMPLES = 10
STATS = ("p50", "p90", "p99", "mean", "std", "min")
VIEWS = ("cascade", "step")
#: How the profiler calls the steps: each alone, repeatedly, or all in turn.
ORDERS = ("step", "chain")
#: The order the profiler uses unless told otherwise: the one the cascade pays.
DEFAULT_ORDER = "chain"
#: Where the timed whole model came from (see edgeadapt.measure.whole).
WHOLE_ORIGINS = ("composed", "file")


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
class Ratio:
    """The full path's cost over the whole model's at one batch size: each interleaved
    round of the profiler (the steps and the whole model timed in the same window) gives
    one ratio; `median`, `p10` and `p90` are taken over the `rounds` of them."""

    median: float
    p10: float
    p90: float
    rounds: int

    @classmethod
    def from_rounds(cls, ratios: np.ndarray) -> Ratio:
        """The median and spread of per-round ratios (at least one)."""
        p10, median, p90 = np.percentile(np.asarray(ratios, dtype=np.float64), [10, 50, 90])
        return cls(round(float(median), 6), round(float(p10), 6), round(float(p90), 6), len(ratios))

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "p10": self.p10, "p90": self.p90, "rounds": self.rounds}


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
    #: The full path over the whole model per batch, from interleaved rounds (empty when
    #: the whole model was not timed, or timed in a window of its own).
    full_over_whole: dict[int, Ratio] = field(default_factory=dict)

    @property
    def identity(self) -> BundleIdentity:
        """The identity of the bundle it was measured for."""
        return BundleIdentity(self.manifest_sha256, self.states)

    @property
    def order(self) -> str:
        """How the steps were called: ``chain`` or ``step`` (older profiles: ``step``)."""
        return str(self.settings.get("order", "step"))

    @property
    def cascade_overhead(self) -> Overhead | None:
        """What `AdaptiveModel.predict` costs beside the runtime calls on this device
        (`edgeadapt.formats.profile.Overhead`); None for an older profile (a branches bundle's
        made before its branches could be cascaded included)."""
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
        if batch in self.full_over_whole:
            entry["full_over_whole"] = self.full_over_whole[batch].to_json()
        return entry


@dataclass(frozen=True)
class Overhead:
    """What `AdaptiveModel.predict` itself costs on a device, beside the runtime calls.

    `call_ms` is one call's own cost when one kept state answers alone (the fast path:
    input check, the kernel's answer, the `Prediction`), which the static model
    deployed through `AdaptiveModel` pays too; `hop_ms` what each hop of a cascade adds
    on top of that (feeding a session call, the checks of its outputs, the kernel, the
    bookkeeping), measured over `hops` hops at batch 1, where the cascade is one native
    call (`edgeadapt.kernel.CascadeCall`; a larger batch also pays compaction). The planner
    charges a plan `hop_ms` per hop run (`edgeadapt.planning.planner.make_plan`); `call_ms`
    cancels out against the static model's.
    """

    hop_ms: float
    call_ms: float
    hops: int

    def to_json(self) -> dict[str, Any]:
        return {"hop_ms": self.hop_ms, "call_ms": self.call_ms, "hops": self.hops}

    @classmethod
    def from_json(cls, doc: Any, source: str | os.PathLike[str], field: str) -> Overhead:
        """Read `to_json`'s form; errors name `source` and `field`."""
        if not isinstance(doc, dict) or set(doc) != {"hop_ms", "call_ms", "hops"}:
            raise InputError(
                "expected an object with hop_ms, call_ms and hops", source=source, field=field
            )
        for key in ("hop_ms", "call_ms"):
            v = doc[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise InputError(
                    f"must be a finite number >= 0, got {v!r}",
                    source=source,
                    field=f"{field}.{key}",
                )
        hops = doc["hops"]
        if isinstance(hops, bool) or not isinstance(hops, int) or hops < 1:
            raise InputError(
                f"must be an integer >= 1, got {hops!r}", source=source, field=f"{field}.hops"
            )
        return cls(float(doc["hop_ms"]), float(doc["call_ms"]), hops)


# ------------------------------------------------------------------ costs


def state_costs(
    profile: Profile, bundle: Bundle, batch: int = 1, stat: str = "p50", view: str = "cascade"
) -> list[float]:
    """`R_i` of each state in ms: ``cascade`` (the default) is what a sequential run pays,
    its chain's steps up to it (steps 0..i for a one-chain early-exit bundle, the member
    alone for ensembles: `edgeadapt.formats.chains.chain_costs`); ``step`` is each step
    alone."""
    check_profile(profile, bundle)
    if view not in VIEWS:
        raise InputError(f"must be one of {', '.join(VIEWS)}, got {view!r}", source="view")
    per_step = [s.get(stat) for s in profile.step_stats(batch)]
    if view == "step":
        return per_step
    return [float(x) for x in chain_costs(per_step, bundle.chains)]


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
    stages = chain_costs(bundle.stage_flops, bundle.chains)
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
    """Refuse a profile measured for another bundle (`check_identity`)."""
    check_identity(
        profile.identity,
        bundle,
        source=profile.source,
        redo="profile this bundle again",
    )


def _stats(f: Fields) -> StepStats:
    values = {k: f.number(f"{k}_ms", minimum=0.0, maximum=MAX_MS) for k in STATS}
    n = f.get("n", int)
    if n < MIN_SAMPLES:
        f.fail(f"too few samples: {n} < {MIN_SAMPLES}; profile again with more --iters", "n")
    return StepStats(n=n, **values)


def _ratio(f: Fields) -> Ratio:
    positive = {"minimum": 0.0, "maximum": MAX_MS}
    p10, median, p90 = (f.number(k, **positive) for k in ("p10", "median", "p90"))
    if not 0 < p10 <= median <= p90:
        f.fail(f"needs 0 < p10 <= median <= p90, got {p10}, {median}, {p90}", "median")
    rounds = f.get("rounds", int, check=lambda v: None if v >= 1 else "must be >= 1")
    return Ratio(median, p10, p90, rounds)


def _parse(doc: dict[str, Any], source: str) -> Profile:
    f = Fields(doc, source=source)
    b = f.child("bundle")
    identity = read_identity(b)
    sha, states = identity.manifest_sha256, list(identity.states)
    kind = b.get("kind", str)
    device = f.get("device", dict)
    steps: dict[int, tuple[StepStats, ...]] = {}
    whole: dict[int, StepStats] = {}
    ratios: dict[int, Ratio] = {}
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
        if "full_over_whole" in e.obj:
            if batch not in whole:
                e.fail("comes only with the whole model's timing", "full_over_whole")
            ratios[batch] = _ratio(e.child("full_over_whole"))
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
        full_over_whole=ratios,
    )


def _cascade_overhead(settings: Mapping[str, Any], source: str) -> Overhead | None:
    """`settings.cascade_overhead`, None when the profile did not measure it."""
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
    check_threads(options.get("threads"), source, "$.settings.threads")
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
