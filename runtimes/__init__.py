"""Runtimes: one small session class per backend behind one interface
(installed as `edgeadapt.runtimes`). Backends import their packages lazily.

    from edgeadapt.runtimes import get_runtime
    with get_runtime("onnxruntime", threads=1).load("step0.onnx") as step:
        out = step.run({"x": x})          # {output name: array}, caller-owned

Importing this package never imports onnxruntime, openvino or tensorrt: a backend's
package is imported when `get_runtime` builds it, and a missing one raises
`MissingExtraError` naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Any

from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.presets import RuntimeConfig

from .base import Runtime, Session, TensorSpec

__all__ = [
    "Runtime",
    "Session",
    "TensorSpec",
    "available_runtimes",
    "from_config",
    "get_runtime",
    "runtime_names",
]

# name -> (module, class, packages it needs, extra that installs them)
_BACKENDS: dict[str, tuple[str, str, tuple[str, ...], str | None]] = {
    "onnxruntime": ("onnxruntime", "OnnxRuntime", ("onnxruntime",), None),
    "openvino": ("openvino", "OpenVinoRuntime", ("openvino",), "openvino"),
    "tensorrt": ("tensorrt", "TensorRtRuntime", ("tensorrt", "cuda"), "tensorrt"),
}


def runtime_names() -> tuple[str, ...]:
    """Every backend name `get_runtime` knows, installed or not: the names a file may
    give (`edgeadapt.formats.presets.RUNTIME_NAMES`, tested equal)."""
    return tuple(_BACKENDS)


def _runtime_class(name: str) -> type[Runtime]:
    if name not in _BACKENDS:
        raise InputError(
            f"unknown runtime {name!r}; choose one of {', '.join(_BACKENDS)}", source="runtime"
        )
    module, cls, _, _ = _BACKENDS[name]
    found: type[Runtime] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return found


def get_runtime(name: str, **options: Any) -> Runtime:
    """Build backend `name` with its options (see each backend's class for them).

    Unknown names and options are `InputError`s listing the valid ones; a missing backend
    package is a `MissingExtraError` naming the extra to install.
    """
    cls = _runtime_class(name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError:
        valid = [p for p in inspect.signature(cls).parameters if p != "self"]
        raise InputError(
            f"unknown option(s) {sorted(options)} for runtime {name!r}; valid: {', '.join(valid)}",
            source="runtime",
        ) from None
    return cls(**options)


def from_config(config: RuntimeConfig) -> Runtime:
    """The runtime a configuration (of a preset, a profile or a plan) describes."""
    return get_runtime(config.runtime, **config.backend_options())


def _missing_reason(name: str) -> str | None:
    _, _, packages, extra = _BACKENDS[name]
    for package in packages:
        if importlib.util.find_spec(package) is None:
            install = f"pip install 'edgeadapt[{extra}]'" if extra else f"pip install {package}"
            return f"the '{package}' package is not installed: {install}"
    if name == "tensorrt":
        from .tensorrt import gpu_missing_reason  # backends load when used

        return gpu_missing_reason()
    return None


def available_runtimes() -> dict[str, str | None]:
    """`{name: None}` for each usable backend, `{name: reason}` for the others.

    Checks that packages are installed without importing them (and, for TensorRT, asks
    CUDA for a GPU); a backend can still fail later on a device it cannot open.
    """
    reasons: dict[str, str | None] = {}
    for name in _BACKENDS:
        try:
            reasons[name] = _missing_reason(name)
        except (ImportError, EdgeadaptError) as e:
            reasons[name] = str(e)
    return reasons
