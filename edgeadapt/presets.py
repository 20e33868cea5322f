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
leaves threads to the runtime (TensorRT has none). `resolve_runtime` merges a preset
with explicit choices, which win.

**Reference profiles** (``profiles/reference/*.json``) are profiles of the shipped demo
bundle measured on the machine named in their fingerprint; `reference_profiles` lists
them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeadapt.errors import InputError
from edgeadapt.jsonio import Fields, read_json

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "AS_EXPORTED",
    "Preset",
    "load_preset",
    "preset_names",
    "reference_profiles",
    "resolve_runtime",
]

FORMAT = "edgeadapt-device-preset"
VERSION = 1
#: The precision of a runtime that runs the exported model's own dtypes.
AS_EXPORTED = "as-exported"
#: Runtimes with a `threads` option; without a preset they are profiled on 1 thread.
THREADED_RUNTIMES = ("onnxruntime", "openvino")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


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
    from edgeadapt.runtimes import runtime_names

    f = Fields(doc, source=source)
    name = f.get("name", str)
    if not _NAME.fullmatch(name):
        f.fail(f"must be lowercase letters, digits, '.', '_' or '-', got {name!r}", "name")
    runtime = f.get("runtime", str)
    if runtime not in runtime_names():
        f.fail(
            f"unknown runtime {runtime!r}; choose one of {', '.join(runtime_names())}", "runtime"
        )
    precision = f.get("precision", str)
    if not precision:
        f.fail("must not be empty", "precision")
    threads = f.get(
        "threads",
        (int, type(None)),
        check=lambda v: None if v is None or v >= 1 else "must be >= 1",
    )
    options = f.get("options", dict, {})
    for key, value in options.items():
        if key in ("threads", "precision"):
            f.fail(f"set {key!r} at the top level, not in options", "options")
        problem = _scalar(value)
        if problem:
            f.fail(problem, f"options.{key}")
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


def resolve_runtime(
    preset: Preset | None,
    *,
    runtime: str | None = None,
    threads: int | None = None,
    precision: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The runtime name and its options: explicit arguments over the preset's values.

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
    if threads is not None:
        merged["threads"] = threads
    if precision is None and preset is not None:
        precision = preset.precision
    if precision is not None and precision != AS_EXPORTED:
        merged["precision"] = precision
    return name, merged


def reference_profiles() -> list[Path]:
    """Paths of the shipped reference profiles (``profiles/reference/*.json``), sorted."""
    folder = _shipped("reference")
    if not folder.is_dir():
        return []
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json"))
