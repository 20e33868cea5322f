"""The Runtime/Session interface every backend implements.

A `Runtime` holds a backend's options (device, threads, precision) and loads one step's
ONNX file into a `Session`; a `Session` runs that step on named numpy arrays. Input checks
against the step's own metadata live here, once, with a switch (`check=False`) to skip
them on the hot path; backends override only `_run` and `_close`.

Contract the cascade and the profiler rely on:
- the batch axis (axis 0) may change from call to call (compacted subsets of rows);
- `run` returns fresh numpy arrays the caller owns: safe to keep after the next call and
  to feed, as they are, into the next step's session (no copy on the way in);
- `last_run_ns` is the backend call alone, timed with `time.perf_counter_ns`.

NaN policy: sessions hand NaN and infinity to the backend like any other value, and
what comes out is the backend's business (ONNX Runtime propagates NaN through Relu,
OpenVINO's Relu maps it to 0), so callers that must not act on NaN input validate it:
with `check_finite=True`, checked calls reject inputs that hold NaN or infinity.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from types import ModuleType, TracebackType
from typing import Any, ClassVar

import numpy as np

from edgeadapt.errors import EdgeadaptError, InputError, MissingExtraError


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a step: its name, shape (`None` for a dynamic axis) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[Any]

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def import_backend(package: str, *, extra: str | None, feature: str) -> ModuleType:
    """Import a backend's package on first use; a missing one names what to install."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        if extra is None:
            raise EdgeadaptError(
                f"{feature} needs the '{package}' package, a core dependency of edgeadapt: "
                f"pip install {package}"
            ) from e
        raise MissingExtraError(package.split(".")[0], extra, feature) from e


def positive_int(value: Any, option: str) -> int:
    """Validate an integer option such as a thread count (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"must be a positive integer, got {value!r}", source=option)
    return int(value)


def choice(value: Any, option: str, allowed: Sequence[str]) -> str:
    """Validate a string option against its allowed values."""
    if value not in allowed:
        raise InputError(f"must be one of {', '.join(allowed)}; got {value!r}", source=option)
    return str(value)


class Session(ABC):
    """One loaded step. Use as a context manager, or call `close()`."""

    backend: ClassVar[str]

    def __init__(
        self,
        path: Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        check_finite: bool = False,
    ) -> None:
        self.path = path
        self.inputs: tuple[TensorSpec, ...] = tuple(inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(outputs)
        self.input_names: tuple[str, ...] = tuple(s.name for s in self.inputs)
        self.output_names: tuple[str, ...] = tuple(s.name for s in self.outputs)
        self.check_finite = check_finite
        self.last_run_ns = 0
        self.closed = False
        self._input_set = frozenset(self.input_names)
        # (name, dtype, rank, size of axis 0 or None, sizes of the other axes): the cheap
        # test `check` tries first; specs with a dynamic axis beyond 0 always take the
        # complete one.
        self._quick = tuple(
            (s.name, s.dtype, len(s.shape), s.shape[0], s.shape[1:])
            for s in self.inputs
            if s.shape and None not in s.shape[1:]
        )
        self._quick_complete = len(self._quick) == len(self.inputs)

    @property
    def dynamic_batch(self) -> bool:
        """Whether axis 0 of every input and output is dynamic (rows can be compacted)."""
        return all(s.shape and s.shape[0] is None for s in (*self.inputs, *self.outputs))

    def run(self, feeds: Mapping[str, np.ndarray], *, check: bool = True) -> dict[str, np.ndarray]:
        """Run the step; returns `{output name: array}` in `outputs` order, owned by the caller.

        With `check=False` the input checks are skipped (the hot path of a cascade whose
        inputs are the previous step's outputs); the backend's own errors still surface as
        `EdgeadaptError`.
        """
        if self.closed:
            raise EdgeadaptError(f"{self.path}: session is closed")
        if check:
            self.check(feeds)
        try:
            start = perf_counter_ns()
            out = self._run(feeds)
            self.last_run_ns = perf_counter_ns() - start
        except EdgeadaptError:
            raise
        except Exception as e:
            raise self.run_error(e) from e
        return out

    @property
    def unchecked_run(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """The backend's call behind `run`, with no check, timing or error wording: for
        a caller that does those itself in native code (`edgeadapt.kernel.OneCall`),
        words a failure with `run_error` and never calls it once the session is closed."""
        return self._run

    def run_error(self, e: Exception) -> EdgeadaptError:
        """The error `run` raises from `e`, an error of the backend's call that is not an
        `EdgeadaptError` (those pass through as they are)."""
        return EdgeadaptError(f"{self.path}: {self.backend} failed to run: {e}")

    def check(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Check names, array type, dtype, rank, fixed dimensions, non-empty batch, finiteness.

        A cheap test that accepts the common case (a dict of plain arrays whose only
        dynamic axis is the batch) runs first; anything it cannot vouch for goes through
        the complete check, which also words the error.
        """
        if (
            self._quick_complete
            and not self.check_finite
            and type(feeds) is dict
            and feeds.keys() == self._input_set
        ):
            for name, dtype, rank, rows, rest in self._quick:
                a = feeds[name]
                if (
                    type(a) is not np.ndarray
                    or a.dtype != dtype
                    or a.ndim != rank
                    or 0 in a.shape
                    or a.shape[1:] != rest
                    or (rows is not None and a.shape[0] != rows)
                ):
                    break
            else:
                return
        self._check_all(feeds)

    def _check_all(self, feeds: Mapping[str, np.ndarray]) -> None:
        if not isinstance(feeds, Mapping):
            raise InputError(
                f"feeds must map input names to arrays, got {type(feeds).__name__}",
                source=self.path,
            )
        unexpected = [name for name in feeds if name not in self.input_names]
        missing = [name for name in self.input_names if name not in feeds]
        if unexpected or missing:
            raise InputError(
                f"inputs do not match the step: missing {missing}, unexpected {unexpected}; "
                f"expected {', '.join(map(str, self.inputs))}",
                source=self.path,
            )
        for spec in self.inputs:
            self._check_one(spec, feeds[spec.name])

    def _check_one(self, spec: TensorSpec, array: Any) -> None:
        field = f"input {spec.name!r}"
        if not isinstance(array, np.ndarray):
            raise InputError(
                f"expected a numpy array, got {type(array).__name__}", source=self.path, field=field
            )
        if array.dtype != spec.dtype:
            raise InputError(
                f"expected dtype {spec.dtype}, got {array.dtype}", source=self.path, field=field
            )
        if array.ndim != len(spec.shape):
            raise InputError(
                f"expected rank {len(spec.shape)} ({spec}), got shape {array.shape}",
                source=self.path,
                field=field,
            )
        for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
            if want is not None and got != want:
                raise InputError(
                    f"expected size {want} on axis {axis} ({spec}), got shape {array.shape}",
                    source=self.path,
                    field=field,
                )
        if array.size == 0:
            raise InputError(
                f"empty batch: shape {array.shape} has no elements", source=self.path, field=field
            )
        if self.check_finite and array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise InputError(
                "contains NaN or infinity (check_finite is on)", source=self.path, field=field
            )

    def close(self) -> None:
        """Release the backend's resources; further runs are refused."""
        if not self.closed:
            self.closed = True
            self._close()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = "; ".join(map(str, self.inputs))
        outs = "; ".join(map(str, self.outputs))
        return f"<{type(self).__name__} {self.path.name} ({ins}) -> ({outs})>"

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Backend call: feeds are checked (or trusted); return caller-owned arrays."""

    @abstractmethod
    def _close(self) -> None:
        """Free the backend's resources (called once)."""


class Runtime(ABC):
    """A backend with its options; `load` turns one step's ONNX file into a `Session`."""

    name: ClassVar[str]

    def __init__(self, *, check_finite: bool = False) -> None:
        if not isinstance(check_finite, bool):
            raise InputError(f"must be true or false, got {check_finite!r}", source="check_finite")
        self.check_finite = check_finite

    def load(self, onnx_path: str | os.PathLike[str]) -> Session:
        """Load a step; a missing or unreadable file is an `InputError` naming it."""
        path = Path(onnx_path)
        if not path.is_file():
            raise InputError("no such ONNX file", source=path)
        try:
            return self._load(path)
        except EdgeadaptError:
            raise
        except Exception as e:
            raise InputError(f"{self.name} cannot load this step: {e}", source=path) from e

    @abstractmethod
    def _load(self, path: Path) -> Session:
        """Backend-specific loading."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Backend name, version, device, device_name, threads and precision (a profile's
        device fingerprint), plus backend-specific settings; JSON-serialisable."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
