"""Model inputs read a batch at a time, from arrays in memory or from an .npy/.npz file.

`open_inputs` checks a file against a bundle's inputs from the arrays' ``.npy`` headers
alone (present, readable, dtype, rank, shape after the batch axis, the same number of
rows in every array) and `Inputs.batches` then reads `size` rows of each array at a time
into fresh arrays, so that memory holds one batch and not the file, whatever its size.
`array_inputs` does the same for arrays in memory (sliced, not read).

Every batch is checked by `edgeadapt.data.inputs.check_batch`, with errors naming the
file (or ``input``), the array and the absolute row. Data is read as the model's dtype
where no value changes meaning (`check_batch` with ``cast``): a float array of another
width is read as the input's float type (float64 data, numpy's default, as float32),
an integer array as the input's integer type where every value fits; ids never become
floats nor floats ids. `Inputs.casts` says which arrays were read so, for a note.

An npz holds one array per model input, named as the input (a one-input bundle also
accepts ``x``); an ``.npy`` holds the one input of a one-input bundle.
"""

from __future__ import annotations

import os
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.data.inputs import X_KEY, check_batch, kinds_for
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import InputSpec
from edgeadapt.formats.evaluation import check_classes
from edgeadapt.formats.npzio import (
    READ_ERRORS,
    ArraySpec,
    NpyHeader,
    NpyRows,
    array_file_kind,
    load_npz,
    npz_member_header,
    npz_member_name,
    read_npy_header,
)

__all__ = [
    "Inputs",
    "array_inputs",
    "check_labels",
    "check_range",
    "check_size",
    "open_inputs",
    "read_batch",
    "read_labelled",
    "read_labels",
]


def check_range(start: Any, stop: Any, rows: int) -> tuple[int, int]:
    """(`start`, `stop`) as rows to read, ``0 <= start < stop <= rows`` (`stop` None:
    `rows`); else an error naming ``start`` or ``stop``."""
    stop = rows if stop is None else stop
    for name, v in (("start", start), ("stop", stop)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= rows:
            raise InputError(f"must be an integer row in 0..{rows}, got {v!r}", source=name)
    if start >= stop:
        raise InputError(f"must be below stop ({stop}), got {start}", source="start")
    return int(start), int(stop)


def check_size(size: Any) -> int:
    """`size` (rows a batch) as a positive int; else an error naming ``batch``."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise InputError(f"must be a positive integer, got {size!r}", source="batch")
    return int(size)


class Inputs(ABC):
    """Model inputs for the `specs` of a bundle, `rows` samples, read a batch at a time.

    `source` names them in errors (the file, or ``input``); `casts` has a line for each
    array read as another dtype than it holds (``"d.npz: x: float64 read as float32,
    the model's input dtype"``). `rows` is None while the count is unknown (a loader
    script's, until it has been read through: `edgeadapt.data.sources`). `kind` says
    what the data is (``npz``, ``npy``, ``arrays``, ``script``, ``images``), for
    `record`."""

    kind = "arrays"
    #: Whether a range of rows can be read alone (`batches` from `start` to `stop`), so
    #: that workers can each read a shard of the data; a loader script cannot.
    shardable = True

    def __init__(
        self,
        specs: Sequence[InputSpec],
        rows: int | None,
        source: str | Path,
        casts: Sequence[str],
    ) -> None:
        self.specs = tuple(specs)
        self.rows = rows
        self.source = source
        self.casts = tuple(casts)

    @abstractmethod
    def batches(
        self, size: int, *, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(first row, ``{input name: array}``) for consecutive batches of at most
        `size` rows, each checked (`check_batch`, errors naming the absolute row); from
        row `start` to `stop` (None: the end) when given (`check_range`), as a shard
        of the data is read."""

    def labelled(
        self, size: int, num_classes: int, *, of: str = "", start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
        """(first row, ``{input name: array}``, integer labels) for consecutive batches
        of at most `size` rows (from `start` to `stop`, as `batches`); labels are class
        indices ``0..num_classes-1`` (`of` says where the class count comes from),
        errors naming the sample."""
        y = self.labels(num_classes, of)
        for lo, feeds in self.batches(size, start=start, stop=stop):
            yield lo, feeds, y[lo : lo + next(iter(feeds.values())).shape[0]]

    def record(self) -> dict[str, Any]:
        """What data this is, for the files made from it: ``kind``, ``path`` and
        ``samples`` (None while unknown), plus what each kind adds."""
        return {"kind": self.kind, "path": str(self.source), "samples": self.rows}

    def labels(self, num_classes: int, of: str = "") -> np.ndarray:
        """Every label at once, checked, for data that holds them apart from the samples
        (an npz's ``y``, images' classes); a loader script's come with its batches."""
        raise InputError("holds no labels", source=self.source)


class _RowInputs(Inputs):
    """Inputs whose rows are read by range (arrays in memory, .npy/.npz files)."""

    def batches(
        self, size: int, *, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        size = check_size(size)
        assert self.rows is not None  # arrays and files know their rows
        start, stop = check_range(start, stop, self.rows)
        with self._reader(start) as read:
            for lo in range(start, stop, size):
                raw = read(lo, min(lo + size, stop))
                yield lo, check_batch(self.specs, raw, source=self.source, cast=True, first_row=lo)

    @abstractmethod
    def _reader(self, start: int) -> Any:
        """A context manager giving ``read(lo, hi) -> {name: array}``, called for
        consecutive row ranges from `start` on."""


class _ArrayInputs(_RowInputs):
    def __init__(self, specs: Sequence[InputSpec], arrays: dict[str, np.ndarray], source: str):
        rows = next(iter(arrays.values())).shape[0]
        dtypes = {s.name: arrays[s.name].dtype for s in specs}
        super().__init__(specs, rows, source, _casts(specs, dtypes, {}, source))
        self._arrays = arrays

    def _reader(self, start: int) -> Any:
        arrays = self._arrays
        return nullcontext(lambda lo, hi: {k: a[lo:hi] for k, a in arrays.items()})


def _casts(
    specs: Sequence[InputSpec],
    dtypes: Mapping[str, np.dtype[Any]],
    keys: Mapping[str, str],
    source: str | Path,
) -> list[str]:
    """``"SOURCE: KEY: DTYPE read as DTYPE"`` for each input whose data has another dtype."""
    return [
        f"{source}: {keys.get(s.name) or s.name}: {dtypes[s.name]} read as "
        f"{np.dtype(s.dtype)}, the model's input dtype"
        for s in specs
        if dtypes[s.name] != np.dtype(s.dtype)
    ]


def array_inputs(
    specs: Sequence[InputSpec], x: Any, *, source: str = "input", array_field: str | None = None
) -> Inputs:
    """`x` (``{name: array}`` holding every input, or one array for a one-input bundle;
    arrays or memory maps) as `Inputs`. Names, dtypes, shapes and row counts are checked
    now (on the first row), values batch by batch; `array_field` names a bare array."""
    if not isinstance(x, Mapping):
        if len(specs) == 1 and isinstance(x, np.ndarray):
            x = {specs[0].name: x}
        else:  # check_batch words the refusal
            check_batch(specs, x, source=source, array_field=array_field, cast=True)
    for name, a in x.items():
        if isinstance(a, np.ndarray) and (a.ndim == 0 or a.shape[0] == 0):
            field = name if len(specs) > 1 or array_field is None else array_field
            raise InputError(f"empty batch (shape {list(a.shape)})", source=source, field=field)
    first = {k: a[:1] if isinstance(a, np.ndarray) else a for k, a in x.items()}
    field = array_field if len(specs) == 1 else None
    check_batch(specs, first, source=source, array_field=field, cast=True)
    arrays = {s.name: x[s.name] for s in specs}
    rows = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(rows.values())) > 1:
        (name, n), *others = rows.items()
        bad = next((k, m) for k, m in others if m != n)
        raise InputError(
            f"has {bad[1]} rows, {name!r} has {n}: every input needs the same batch size",
            source=source,
            field=bad[0],
        )
    return _ArrayInputs(specs, arrays, source)


# ------------------------------------------------------------------ files


@dataclass(frozen=True)
class _Member:
    spec: InputSpec
    key: str  # the array's name in the npz; "" for an .npy
    header: NpyHeader


class _FileInputs(_RowInputs):
    def __init__(self, path: Path, npz: bool, members: Sequence[_Member], rows: int) -> None:
        specs = [m.spec for m in members]
        dtypes = {m.spec.name: m.header.dtype for m in members}
        casts = _casts(specs, dtypes, {m.spec.name: m.key for m in members}, path)
        super().__init__(specs, rows, path, casts)
        self.path = path
        self.kind = "npz" if npz else "npy"
        self._npz = npz
        self._members = tuple(members)

    def labels(self, num_classes: int, of: str = "") -> np.ndarray:
        assert self.rows is not None
        return read_labels(self.path, self.rows, num_classes, of=of)

    def _reader(self, start: int) -> Any:
        return _FileReader(self.path, self._npz, self._members, start)


class _FileReader:
    """Open streams over each array's data from row `start`; read(lo, hi) the rows in
    order."""

    def __init__(self, path: Path, npz: bool, members: Sequence[_Member], start: int) -> None:
        self._path, self._npz, self._members = path, npz, members
        self._start = start
        self._stack = ExitStack()

    def __enter__(self) -> Any:
        try:
            rows = {}
            if self._npz:
                zf = self._stack.enter_context(zipfile.ZipFile(self._path))
                for m in self._members:
                    f = self._stack.enter_context(zf.open(npz_member_name(zf, m.key)))
                    f.read(m.header.offset)
                    rows[m.spec.name] = NpyRows(f, m.header, source=self._path, field=m.key)
            else:
                (m,) = self._members
                f = self._stack.enter_context(self._path.open("rb"))
                f.seek(m.header.offset)
                rows[m.spec.name] = NpyRows(f, m.header, source=self._path)
            for r in rows.values():
                r.skip(self._start)
        except READ_ERRORS as e:
            self._stack.close()
            if isinstance(e, InputError):
                raise
            kind = ".npz" if self._npz else ".npy"
            raise InputError(f"not a readable {kind} file ({e})", source=self._path) from None
        except BaseException:
            self._stack.close()
            raise
        return lambda lo, hi: {name: r.read(hi - lo) for name, r in rows.items()}

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _npz_keys(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except READ_ERRORS as e:
        raise InputError(f"not a readable .npz file ({e})", source=path) from None
    return [n.removesuffix(".npy") for n in names]


def _keys_for(specs: Sequence[InputSpec], keys: Sequence[str], path: Path) -> dict[str, str]:
    """The npz key holding each input (its name, or ``x`` for a one-input bundle)."""
    present = set(keys)
    if len(specs) == 1:
        name = specs[0].name
        if name != X_KEY and name in present and X_KEY in present:
            raise InputError(
                f"holds both {X_KEY!r} and {name!r}; keep one array for the input", source=path
            )
        key_of = {name: name if name in present else X_KEY}
    else:
        key_of = {s.name: s.name for s in specs}
    missing = [key for key in key_of.values() if key not in present]
    if missing:
        if len(specs) == 1:
            what = f"missing array {X_KEY!r} (or {specs[0].name!r}, the input's name)"
        else:
            names = ", ".join(s.name for s in specs)
            what = f"missing array(s) {missing} for the model's inputs ({names})"
            if X_KEY in present:
                what += (
                    f"; a model with several inputs reads one array per input, named as "
                    f"the input, not {X_KEY!r}"
                )
        raise InputError(f"{what} (has: {sorted(present)})", source=path, field=missing[0])
    return key_of


def _check_header(spec: InputSpec, h: NpyHeader, path: Path, key: str | None) -> None:
    """What the header alone tells against the input's spec: dtype kind, rank, shape
    after the batch axis, at least one row."""
    want = ArraySpec(kinds_for(np.dtype(spec.dtype)), len(spec.shape))
    if h.dtype.kind not in want.kinds:
        raise InputError(
            f"dtype {h.dtype} not accepted for input {spec.name!r} ({spec.dtype}; "
            f"want kind {'/'.join(want.kinds)})",
            source=path,
            field=key,
        )
    if len(h.shape) != want.ndim:
        raise InputError(
            f"expected {want.ndim} dimensions, got shape {h.shape}", source=path, field=key
        )
    tail = tuple(int(d) for d in spec.shape[1:])
    if h.shape[1:] != tail:
        dims = ", ".join(str(d) for d in ("B", *tail))
        raise InputError(f"expected shape [{dims}], got {list(h.shape)}", source=path, field=key)
    if h.shape[0] == 0:
        raise InputError("empty batch (0 rows)", source=path, field=key)


def open_inputs(path: str | os.PathLike[str], specs: Sequence[InputSpec]) -> Inputs:
    """The model inputs in the .npz or .npy at `path` (see the module docstring),
    checked from the arrays' headers; no sample data is read until `Inputs.batches`."""
    path, kind = array_file_kind(path)
    if kind == "other":
        raise InputError(
            "not a readable .npy or .npz file (no array or zip archive header)", source=path
        )
    members: list[_Member] = []
    if kind == "npy":
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise InputError(
                f"the bundle has {len(specs)} inputs ({names}): give an .npz holding "
                "one array per input, named as the input",
                source=path,
            )
        try:
            with path.open("rb") as f:
                header = read_npy_header(f, path.stat().st_size, source=path)
        except OSError as e:
            raise InputError(f"cannot read: {e}", source=path) from None
        _check_header(specs[0], header, path, None)
        members.append(_Member(specs[0], "", header))
    else:
        key_of = _keys_for(specs, _npz_keys(path), path)
        try:
            with zipfile.ZipFile(path) as zf:
                for spec in specs:
                    key = key_of[spec.name]
                    header = npz_member_header(zf, key, path)
                    _check_header(spec, header, path, key)
                    members.append(_Member(spec, key, header))
        except READ_ERRORS as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"not a readable .npz file ({e})", source=path) from None
    first = members[0]
    for m in members[1:]:
        if m.header.shape[0] != first.header.shape[0]:
            raise InputError(
                f"has {m.header.shape[0]} rows, {first.spec.name!r} has "
                f"{first.header.shape[0]}: every input needs the same batch size",
                source=path,
                field=m.key,
            )
    return _FileInputs(path, kind == "npz", members, first.header.shape[0])


def check_labels(
    y: np.ndarray, rows: int, num_classes: int, source: str | os.PathLike[str], of: str = ""
) -> np.ndarray:
    """`y` checked as labels of `rows` samples: integers ``[rows]``, each a class index
    ``0..num_classes-1`` (`check_classes`; `of` says where the class count comes from);
    errors name `source` and ``y``."""
    if y.ndim != 1 or y.shape[0] != rows or y.dtype.kind not in "iu":
        raise InputError(
            f"expected integer labels [{rows}], got {y.dtype} {y.shape}", source=source, field="y"
        )
    check_classes(y, num_classes, source=source, field="y", of=of)
    return y


def read_labels(
    path: str | os.PathLike[str], rows: int, num_classes: int, *, of: str = ""
) -> np.ndarray:
    """The integer labels ``y`` of the npz at `path`, checked (`check_labels`) against
    its `rows` samples and the `num_classes` classes."""
    y = load_npz(path, {"y": ArraySpec("iu", 1)})["y"]
    return check_labels(y, rows, num_classes, path, of)


def read_batch(path: str | os.PathLike[str], specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """Every row of the model inputs in the .npz or .npy at `path` as one checked batch
    (for sets that fit in memory; `open_inputs` reads any size a batch at a time)."""
    inputs = open_inputs(path, specs)
    assert inputs.rows is not None  # a file knows its rows
    ((_, batch),) = inputs.batches(inputs.rows)
    return batch


def read_labelled(
    path: str | os.PathLike[str], specs: Sequence[InputSpec], num_classes: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`read_batch` plus the file's integer labels ``y`` (`read_labels`)."""
    batch = read_batch(path, specs)
    return batch, read_labels(path, next(iter(batch.values())).shape[0], num_classes)
