"""Device presets and reference profiles: the device data shipped under ``profiles/``.

A **preset** names how to profile one kind of device: the runtime, its precision, its
threads and the runtime's other options (``edgeadapt profile --device x86-ort-1t``). The
shipped presets live in ``profiles/presets/<name>.json`` (installed as
``edgeadapt.profiles``); a path to a JSON file of the same format works as well.

Preset format (JSON, ``format: edgeadapt-device-preset``, ``version: 1``)::

    {"name": "x86-ort-1t", "description": "...", "runtime": "onnxruntime",
     "precision": "as-exported" | "fp32" | "fp16" | ..., "threads": 1 | null,
     "options": {runtime option: JSON scalar}}

``precision: as-exported`` runs the model's own dtypes (ONNX Runtime has no precision
option); any other value is passed as the runtime's ``precision``. ``threads: null``
leaves threads to the runtime (TensorRT has none); a thread count is 1..`MAX_THREADS`
(1024, what the native runner allows) wherever it is given: a preset, a profile, a plan,
`RuntimeConfig`, a runtime or the CLI (`check_threads`).

A **runtime configuration** (`RuntimeConfig`) is what a preset resolves to: the runtime,
the preset it came from, the precision, the threads and the other options. A profile
records the one it was measured under (``settings.runtime_config``), a plan made from
the profile copies it (plan.json ``runtime``), and evaluate and run use the recorded one
unless told otherwise (`inherit_runtime`). JSON form::

    {"runtime": "onnxruntime", "preset": "x86-ort-1t" | null, "precision": "as-exported",
     "threads": 1 | null, "options": {runtime option: JSON scalar}}

`RuntimeConfig.resolve` merges a preset with explicit choices, which win.

**Reference profiles** (``profiles/reference/*.json``) are profiles of the shipped demo
bundle measured on the machine named in their fingerprint; `reference_profiles` lists
them.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeadapt.errors import InputError
from edgeadapt.formats.jsonio import Fields, read_json

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "AS_EXPORTED",
    "MAX_THREADS",
    "MAX_WORKERS",
    "Preset",
    "RuntimeChoice",
    "RuntimeConfig",
    "check_threads",
    "inherit_runtime",
    "load_preset",
    "preset_names",
    "reference_profiles",
]

FORMAT = "edgeadapt-device-preset"
VERSION = 1
#: The precision of a runtime that runs the exported model's own dtypes.
AS_EXPORTED = "as-exported"
#: The runtimes a file may name (`edgeadapt.runtimes` builds each one).
RUNTIME_NAMES = ("onnxruntime", "openvino", "tensorrt")
#: Runtimes with a `threads` option; without a preset they are profiled on 1 thread.
THREADED_RUNTIMES = ("onnxruntime", "openvino")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
#: The most threads a runtime is given: past it thread creation fails (and ONNX Runtime
#: then hangs) long before a machine has that many cores; the native runner caps the same.
MAX_THREADS = 1024
#: The most worker processes (or Ray tasks) a run is split into.
MAX_WORKERS = 256


def _threads_problem(value: Any) -> str | None:
    """Why `value` is not a thread count (None: it is one, or it is None)."""
    if value is None:
        return None
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not whole or not 1 <= value <= MAX_THREADS:
        return f"must be an integer in 1..{MAX_THREADS}, got {value!r}"
    return None


def check_threads(
    value: Any, source: str | os.PathLike[str] = "threads", field: str | None = None
) -> int | None:
    """`value` as a thread count (1..`MAX_THREADS`) or None (the runtime's own choice);
    anything else is an `InputError` naming `source` (and `field`)."""
    problem = _threads_problem(value)
    if problem is not None:
        raise InputError(problem, source=source, field=field)
    return None if value is None else int(value)


@dataclass(frozen=True)
class Preset:
    """One device preset (see the module docstring); `source` is the file it came from."""

    name: str
    description: str
    runtime: str
    precision: str
    threads: int | None
    options: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


def _shipped(kind: str) -> Traversable:
    return resources.files("edgeadapt.profiles").joinpath(kind)


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    folder = _shipped("presets")
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def _scalar(value: Any) -> str | None:
    ok = value is None or isinstance(value, (bool, int, float, str))
    return None if ok else f"must be a JSON scalar, got {type(value).__name__}"


def _parse(doc: dict[str, Any], source: str) -> Preset:
    f = Fields(doc, source=source)
    name = f.get("name", str)
    if not _NAME.fullmatch(name):
        f.fail(f"must be lowercase letters, digits, '.', '_' or '-', got {name!r}", "name")
    runtime = f.get("runtime", str)
    if runtime not in RUNTIME_NAMES:
        f.fail(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIME_NAMES)}", "runtime")
    precision = f.get("precision", str)
    if not precision:
        f.fail("must not be empty", "precision")
    threads = f.get("threads", (int, type(None)), check=_threads_problem)
    options = _options(f)
    return Preset(
        name=name,
        description=f.get("description", str, ""),
        runtime=runtime,
        precision=precision,
        threads=threads,
        options=dict(options),
        source=source,
    )


def load_preset(preset: str | os.PathLike[str]) -> Preset:
    """A shipped preset by name, or a preset file by path; validated on read.

    Errors name the file and the JSON path; an unknown name lists the shipped ones.
    """
    text = os.fspath(preset)
    if isinstance(preset, os.PathLike) or text.endswith(".json") or os.sep in text:
        path = Path(text)
        return _parse(read_json(path, fmt=FORMAT, versions=[VERSION]), str(path))
    names = preset_names()
    if text not in names:
        raise InputError(
            f"unknown device preset {text!r}; shipped presets: {', '.join(names)} "
            "(or give a path to a preset .json)",
            source="device",
        )
    with resources.as_file(_shipped("presets").joinpath(f"{text}.json")) as path:
        return _parse(read_json(path, fmt=FORMAT, versions=[VERSION]), str(path))


@dataclass(frozen=True)
class RuntimeConfig:
    """How a runtime is set up: which one, from which preset, its precision, threads
    and other options (the JSON form is in the module docstring).

    ``threads=None`` leaves threads to the runtime; ``precision="as-exported"`` runs the
    model's own dtypes. `backend_options` is what `edgeadapt.runtimes.get_runtime` takes.
    """

    runtime: str = "onnxruntime"
    preset: str | None = None
    precision: str = AS_EXPORTED
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_threads(self.threads)

    def backend_options(self) -> dict[str, Any]:
        """The keyword options of ``get_runtime(self.runtime, **options)``."""
        out = dict(self.options)
        if self.threads is not None:
            out["threads"] = self.threads
        if self.precision != AS_EXPORTED:
            out["precision"] = self.precision
        return out

    def describe(self) -> str:
        """One line for people: ``onnxruntime, 2 threads, as-exported (preset x86-ort-2t)``."""
        threads = "the runtime's threads" if self.threads is None else f"{self.threads} thread"
        threads += "s" if self.threads not in (None, 1) else ""
        extra = "".join(f", {k}={v}" for k, v in sorted(self.options.items()))
        via = "" if self.preset is None else f" (preset {self.preset})"
        return f"{self.runtime}, {threads}, {self.precision}{extra}{via}"

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "preset": self.preset,
            "precision": self.precision,
            "threads": self.threads,
            "options": dict(self.options),
        }

    @classmethod
    def from_json(cls, doc: Any, source: str | os.PathLike[str], path: str = "$") -> RuntimeConfig:
        """Validate a JSON runtime configuration; errors name `source` and the JSON path."""
        f = Fields(doc, source=source, path=path)
        runtime = f.get("runtime", str)
        if runtime not in RUNTIME_NAMES:
            f.fail(
                f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIME_NAMES)}",
                "runtime",
            )
        preset = f.get("preset", (str, type(None)))
        precision = f.get("precision", str, check=lambda v: None if v else "must not be empty")
        threads = f.get("threads", (int, type(None)), check=_threads_problem)
        return cls(runtime, preset, precision, threads, _options(f))

    @classmethod
    def from_backend_options(cls, runtime: str, options: Mapping[str, Any] | None) -> RuntimeConfig:
        """The configuration of ``get_runtime(runtime, **options)`` (no preset)."""
        rest = dict(options or {})
        threads = rest.pop("threads", None)
        precision = rest.pop("precision", AS_EXPORTED)
        return cls(runtime, None, precision, threads, rest)

    @classmethod
    def resolve(
        cls,
        preset: Preset | None,
        *,
        runtime: str | None = None,
        threads: int | None = None,
        precision: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> RuntimeConfig:
        """Explicit arguments over the preset's values.

        Without a preset the runtime defaults to ``onnxruntime`` and threaded runtimes to 1
        thread. A `runtime` other than the preset's is refused (its options would not fit).
        """
        if preset is not None and runtime is not None and runtime != preset.runtime:
            raise InputError(
                f"preset {preset.name!r} is for runtime {preset.runtime!r}, not {runtime!r}; "
                "drop the preset or the runtime",
                source=preset.source,
                field="$.runtime",
            )
        name = runtime or (preset.runtime if preset is not None else "onnxruntime")
        merged: dict[str, Any] = dict(preset.options) if preset is not None else {}
        merged.update(options or {})
        if threads is None:
            if preset is not None:
                threads = preset.threads
            elif name in THREADED_RUNTIMES:
                threads = 1
        # an explicit option dict may carry threads or precision as a backend takes them
        given_threads = merged.pop("threads", None)
        threads = given_threads if threads is None else threads
        given_precision = merged.pop("precision", None)
        if precision is None and preset is not None:
            precision = preset.precision
        if given_precision is not None and precision in (None, AS_EXPORTED):
            precision = given_precision
        return cls(
            name,
            None if preset is None else preset.name,
            precision or AS_EXPORTED,
            threads,
            merged,
        )


def _options(f: Fields) -> dict[str, Any]:
    options = f.get("options", dict, {})
    for key, value in options.items():
        if key in ("threads", "precision"):
            f.fail(f"set {key!r} at the top level, not in options", "options")
        problem = _scalar(value)
        if problem:
            f.fail(problem, f"options.{key}")
    return dict(options)


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime configuration to run under and, when it differs from the recorded one
    (the plan's or the profile's) because the caller overrode it, a line saying so."""

    config: RuntimeConfig
    note: str | None = None


def inherit_runtime(
    recorded: RuntimeConfig | None,
    *,
    runtime: str | RuntimeConfig | None = None,
    threads: int | None = None,
    preset: Preset | str | os.PathLike[str] | None = None,
    what: str = "plan",
) -> RuntimeChoice:
    """The configuration to run under: `recorded` (what `what` was measured with) unless
    `runtime`, `threads` or `preset` say otherwise, and then a note naming both.

    Without a recorded configuration the defaults are the runtime's own (`runtime` or
    onnxruntime, `threads` if given), as before configurations were recorded. A `runtime`
    other than the recorded one starts from that runtime's defaults (the recorded options
    belong to another backend); a `preset` replaces the recorded configuration.
    """
    check_threads(threads)
    if isinstance(runtime, RuntimeConfig):
        config = runtime if threads is None else replace(runtime, threads=threads)
    elif preset is not None:
        chosen = preset if isinstance(preset, Preset) else load_preset(preset)
        config = RuntimeConfig.resolve(chosen, runtime=runtime, threads=threads)
    elif recorded is not None and (runtime is None or runtime == recorded.runtime):
        config = recorded if threads is None else replace(recorded, threads=threads)
    else:
        config = RuntimeConfig(runtime or "onnxruntime", threads=threads)
    if recorded is None:
        return RuntimeChoice(config)
    if (config.runtime, config.backend_options()) == (recorded.runtime, recorded.backend_options()):
        return RuntimeChoice(recorded)  # the same backend settings, whatever named them
    changed = [
        f"{key} {_shown(getattr(config, key))} ({what}: {_shown(getattr(recorded, key))})"
        for key in ("runtime", "preset", "precision", "threads", "options")
        if getattr(config, key) != getattr(recorded, key)
    ]
    return RuntimeChoice(
        config,
        f"runtime settings differ from the {what}'s: {', '.join(changed)}; "
        f"the {what}'s costs were measured under its own",
    )


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in sorted(value.items())) + "}"
    return "none" if value is None else str(value)


def reference_profiles() -> list[Path]:
    """Paths of the shipped reference profiles (``profiles/reference/*.json``), sorted."""
    folder = _shipped("reference")
    if not folder.is_dir():
        return []
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json"))
