"""Calibration sets read from an ``.npz`` in batches, never whole.

A calibration npz holds one array per graph input, named as the input, plus ``y`` (the
labels); a single-input model also accepts its array as ``x``. Arrays are checked from
their ``.npy`` headers up front (present, dtype kind, per-sample shape, sample count),
then streamed row by row from the zip member, so a set of 2,000 images at 224 px does
not have to fit in memory next to the activations. Values are checked (finite) per batch.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import InputSpec
from edgeadapt.formats.evaluation import check_classes
from edgeadapt.formats.npzio import ArraySpec, load_npz


@dataclass(frozen=True)
class _Member:
    key: str
    spec: InputSpec
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool


def _header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def _kinds(spec: InputSpec) -> str:
    kind = np.dtype(spec.dtype).kind
    return "fiu" if kind == "f" else "iub"


@dataclass(frozen=True)
class Calibration:
    """A validated calibration npz: `n` samples of every input in `specs`, labels `y`."""

    path: Path
    members: tuple[_Member, ...]
    y: np.ndarray
    n: int

    @property
    def names(self) -> list[str]:
        return [m.spec.name for m in self.members]

    def batches(self, size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """(feeds by input name, labels) for consecutive batches of at most `size`."""
        with ExitStack() as stack:
            zf = stack.enter_context(zipfile.ZipFile(self.path))
            streams: list[IO[bytes] | np.ndarray] = []
            for m in self.members:
                if m.fortran:  # column-major data cannot be read row by row
                    with np.load(self.path, allow_pickle=False) as npz:
                        streams.append(npz[m.key])
                    continue
                f = stack.enter_context(zf.open(f"{m.key}.npy"))
                _header(f)
                streams.append(f)
            for start in range(0, self.n, size):
                count = min(size, self.n - start)
                feeds = {}
                for m, stream in zip(self.members, streams, strict=True):
                    if isinstance(stream, np.ndarray):
                        arr = stream[start : start + count]
                    else:
                        row = m.dtype.itemsize * int(np.prod(m.shape[1:], dtype=np.int64))
                        buf = stream.read(row * count)
                        if len(buf) != row * count:
                            raise InputError(
                                f"truncated: ends before sample {start + count}",
                                source=self.path,
                                field=m.key,
                            )
                        arr = np.frombuffer(buf, dtype=m.dtype).reshape(count, *m.shape[1:])
                    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                        raise InputError(
                            "contains NaN or infinite values", source=self.path, field=m.key
                        )
                    feeds[m.spec.name] = arr.astype(m.spec.dtype, copy=False)
                yield feeds, self.y[start : start + count]


def open_calibration(
    path: str | os.PathLike[str], specs: Sequence[InputSpec], num_classes: int
) -> Calibration:
    """Check the npz at `path` against the model inputs `specs` (without reading the
    sample data); errors name the file and the array."""
    path = Path(path)
    y = load_npz(path, {"y": ArraySpec("iu", 1)})["y"].astype(np.int64)
    try:
        with zipfile.ZipFile(path) as zf:
            present = {n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")}
            members = []
            for spec in specs:
                keys = [spec.name] + (["x"] if len(specs) == 1 else [])
                key = next((k for k in keys if k in present), None)
                if key is None:
                    want = " or ".join(repr(k) for k in keys)
                    raise InputError(
                        f"missing array {want} for model input {spec.name!r} "
                        f"(has: {sorted(present)})",
                        source=path,
                        field=spec.name,
                    )
                with zf.open(f"{key}.npy") as f:
                    shape, fortran, dtype = _header(f)
                members.append(_Member(key, spec, tuple(shape), dtype, fortran))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"not a readable .npz file ({e})", source=path) from None
    for m in members:
        want = tuple(int(d) for d in m.spec.shape[1:])
        if m.dtype.hasobject or m.dtype.kind not in _kinds(m.spec):
            raise InputError(
                f"dtype {m.dtype} not accepted for input {m.spec.name!r} ({m.spec.dtype})",
                source=path,
                field=m.key,
            )
        if len(m.shape) != len(m.spec.shape) or tuple(m.shape[1:]) != want:
            raise InputError(
                f"per-sample shape {tuple(m.shape[1:])} does not match the model's {want}",
                source=path,
                field=m.key,
            )
        if m.shape[0] != len(y):
            raise InputError(
                f"{m.shape[0]} samples in {m.key} but {len(y)} labels", source=path, field="y"
            )
    if len(y) < 2:
        raise InputError("needs at least 2 samples", source=path, field="y")
    check_classes(y, num_classes, source=path, field="y", of="the model's logits")
    return Calibration(path, tuple(members), y, len(y))
