"""Data as users hold it, behind one interface: `open_source` gives `Inputs` for

- an ``.npz``/``.npy`` of ready arrays (`edgeadapt.data.batches.open_inputs`);
- a data loader script, ``FILE.py:FUNCTION`` (Polygraphy's convention; a bare
  ``FILE.py`` means ``load_data``): the function, called with no arguments, yields
  batches, each ``{input name: array}`` with a leading batch axis (a one-input bundle
  may yield the bare array), or ``(feeds, labels)`` with integer labels ``[rows]``
  (needed by ``evaluate`` and export calibration; ``run`` ignores them);
- a folder of images in class subfolders, or a CSV of ``path,label`` lines, decoded
  with a preprocessing `Recipe` (`edgeadapt.data.images`).

`open_source` tells them apart so: an existing folder is images; ``FILE.py`` or
``FILE.py:FUNCTION`` a loader script; a ``.csv`` file an image list; any other file is
read as an ``.npy``/``.npz`` (told by its first bytes).

Every source is read a batch at a time: memory holds a batch, never the data set. A
script's batches are checked as they come (names, shapes, dtypes and labels, errors
naming the script and the batch index; data cast as files are, `check_batch`) and cut or
joined into batches of the size asked for, so results do not depend on how the script
batches. An exception the script raises is the user's: `UserCodeError` carries its
traceback (from the script's frames on) and a line naming the script.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.data.batches import Inputs, check_size, open_inputs
from edgeadapt.data.images import Recipe, open_images
from edgeadapt.data.inputs import check_batch
from edgeadapt.errors import InputError, UserCodeError
from edgeadapt.formats.bundle import InputSpec
from edgeadapt.formats.jsonio import check_regular
from edgeadapt.formats.npzio import array_file_kind

__all__ = [
    "DEFAULT_FUNCTION",
    "DataSpec",
    "ScriptInputs",
    "check_source",
    "count_rows",
    "open_source",
    "script_spec",
]

#: The function a bare ``FILE.py`` names.
DEFAULT_FUNCTION = "load_data"

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class DataSpec:
    """Where data is (a file, a folder or ``FILE.py[:FUNCTION]``) and, for images, the
    preprocessing `recipe` (None: `edgeadapt.data.images.Recipe`'s defaults)."""

    location: str | os.PathLike[str]
    recipe: Recipe | None = None

    def __str__(self) -> str:
        return os.fspath(self.location)

    @classmethod
    def absolute(cls, data: str | os.PathLike[str] | DataSpec) -> DataSpec:
        """`data` as a spec whose location is an absolute path: what a worker process,
        which may run in another folder, opens."""
        spec = data if isinstance(data, DataSpec) else cls(data)
        return replace(spec, location=os.path.abspath(spec.location))


def script_spec(location: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """(script, function) when `location` names a loader script (``FILE.py`` or
    ``FILE.py:FUNCTION``, a path that is not an existing folder); else None."""
    text = os.fspath(location)
    if os.path.isdir(text):
        return None
    if text.endswith(".py"):
        return Path(text), DEFAULT_FUNCTION
    where, sep, name = text.rpartition(":")
    if sep and where.endswith(".py") and not os.path.exists(text):
        return Path(where), name
    return None


def check_source(location: str | os.PathLike[str]) -> str | Path:
    """`location` checked to exist as the CLI reads it: a folder, a loader script (its
    file regular, its function an identifier) or a regular file; errors name it."""
    script = script_spec(location)
    if script is not None:
        path, name = script
        if not name.isidentifier():
            raise InputError(
                f"expected FILE.py:FUNCTION, {name!r} is not a Python name", source=location
            )
        check_regular(path)
        return os.fspath(location)
    if os.path.isdir(location):
        return Path(location)
    return check_regular(location)


def open_source(data: str | os.PathLike[str] | DataSpec, specs: Sequence[InputSpec]) -> Inputs:
    """The model inputs `specs` from `data` (see the module docstring), checked as far
    as can be done before reading samples: a file's array headers, a folder's listing, a
    script's import. A recipe is for images only."""
    recipe = data.recipe if isinstance(data, DataSpec) else None
    location = data.location if isinstance(data, DataSpec) else data
    script = script_spec(location)
    if os.path.isdir(location) or (script is None and Path(location).suffix.lower() == ".csv"):
        check_source(location)
        return open_images(Path(location), specs, recipe)
    if recipe is not None:
        raise InputError(
            f"a preprocessing recipe applies to image folders and CSV lists, not {location}",
            source="recipe",
        )
    if script is not None:
        check_source(location)
        return ScriptInputs(specs, *script)
    path, kind = array_file_kind(location)
    if kind == "other":
        raise InputError(
            "not a readable .npy or .npz file (no array or zip archive header); data may "
            "also be a folder of images, a CSV of path,label lines or a loader script "
            "FILE.py[:FUNCTION]",
            source=path,
        )
    return open_inputs(path, specs)


# ------------------------------------------------------------------ loader scripts


def _user_error(e: BaseException, script: Path, what: str) -> UserCodeError:
    """`e`, raised by the user's `script`, as a `UserCodeError`: its traceback from the
    script's first frame on (the whole of it when no frame is the script's)."""
    target = os.path.realpath(script)
    tb = e.__traceback__
    while tb is not None and os.path.realpath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    shown = "".join(traceback.format_exception(type(e), e, tb or e.__traceback__))
    message = f"{what}: {type(e).__name__}: {e} (the traceback above is the script's)"
    return UserCodeError(message, shown)


def _load_function(script: Path, name: str, where: str) -> Callable[[], Any]:
    """Import `script` from its path (as a module of its own) and return its `name`."""
    name_in_modules = f"edgeadapt_data_{script.stem}"
    spec = importlib.util.spec_from_file_location(name_in_modules, script)
    if spec is None or spec.loader is None:
        raise InputError("not a loadable Python file", source=script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name_in_modules] = module  # as an import would (dataclasses look it up)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # whatever the user's module raises on import
        del sys.modules[name_in_modules]
        raise _user_error(e, script, f"{where} failed to import") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise InputError(f"{script} has no function {name!r}", source=where)
    return function


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])


def _rebatch(
    parts: Iterable[tuple[Feeds, np.ndarray | None]], size: int
) -> Iterator[tuple[Feeds, np.ndarray | None]]:
    """`parts` (batches of any row counts) cut or joined into batches of `size` rows
    (the last may be smaller); memory holds at most `size` rows plus one part."""
    held: list[tuple[Feeds, np.ndarray | None]] = []
    count = 0
    for feeds, y in parts:
        held.append((feeds, y))
        count += _rows(feeds)
        if count < size:
            continue
        joined, labels = _join(held)
        lo = 0
        while count - lo >= size:
            yield _cut(joined, labels, lo, lo + size)
            lo += size
        held = [_cut(joined, labels, lo, count)] if lo < count else []
        count -= lo
    if held:
        yield _join(held)


def _join(held: Sequence[tuple[Feeds, np.ndarray | None]]) -> tuple[Feeds, np.ndarray | None]:
    if len(held) == 1:
        return held[0]
    feeds = {k: np.concatenate([f[k] for f, _ in held]) for k in held[0][0]}
    ys = [y for _, y in held]
    return feeds, None if any(y is None for y in ys) else np.concatenate(ys)  # type: ignore[arg-type]


def _cut(feeds: Feeds, y: np.ndarray | None, lo: int, hi: int) -> tuple[Feeds, np.ndarray | None]:
    return {k: a[lo:hi] for k, a in feeds.items()}, None if y is None else y[lo:hi]


class ScriptInputs(Inputs):
    """The batches a data loader script's function yields (see the module docstring).

    The script is imported now (an import that raises is the user's error); the function
    is called anew on each pass over the data. `rows` is known once a pass has ended, and
    a later pass must yield as many samples (export calibration reads the data twice)."""

    kind = "script"
    shardable = False

    def __init__(self, specs: Sequence[InputSpec], script: Path, function: str) -> None:
        super().__init__(specs, None, f"{script}:{function}", ())
        self.script = script
        self.function = function
        self._function = _load_function(script, function, str(self.source))

    def batches(
        self, size: int, *, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        self._refuse_range(start, stop)
        for lo, feeds, _ in self._stream(check_size(size), None, ""):
            yield lo, feeds

    def labelled(
        self, size: int, num_classes: int, *, of: str = "", start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
        self._refuse_range(start, stop)
        for lo, feeds, y in self._stream(check_size(size), num_classes, of):
            assert y is not None
            yield lo, feeds, y

    def _refuse_range(self, start: int, stop: int | None) -> None:
        """A script is read from its first sample to its last: refuse a range of rows."""
        if start != 0 or stop is not None:
            raise InputError(
                f"a loader script is read whole, from its first sample; rows {start}..{stop} "
                "cannot be read alone",
                source=self.source,
            )

    def count(self, num_classes: int | None = None, *, of: str = "") -> int:
        """Read the data through once (each batch checked, nothing kept) to learn `rows`."""
        for _ in self._yields(num_classes, of):
            pass
        assert self.rows is not None
        return self.rows

    def _stream(
        self, size: int, num_classes: int | None, of: str
    ) -> Iterator[tuple[int, Feeds, np.ndarray | None]]:
        lo = 0
        for feeds, y in _rebatch(self._yields(num_classes, of), size):
            n = _rows(feeds)  # before the consumer, which may empty `feeds`
            yield lo, feeds, y
            lo += n

    def _yields(
        self, num_classes: int | None, of: str
    ) -> Iterator[tuple[Feeds, np.ndarray | None]]:
        """Each batch the function yields, checked; `num_classes` None: labels unused."""
        source = str(self.source)
        try:
            made = self._function()
        except Exception as e:
            raise _user_error(e, self.script, f"{source} raised when called") from None
        try:
            batches = iter(made)
        except TypeError:
            raise InputError(
                f"returned {type(made).__name__}, not an iterable of batches", source=source
            ) from None
        first = 0
        index = 0
        while True:
            try:
                item = next(batches)
            except StopIteration:
                break
            except Exception as e:
                raise _user_error(e, self.script, f"{source} raised at batch {index}") from None
            where = f"{source}: batch {index}"
            feeds, y = self._unpack(item, where)
            checked = check_batch(self.specs, feeds, source=where, cast=True, first_row=first)
            self._note_casts(feeds, source)
            n = _rows(checked)
            if self.rows is not None and first + n > self.rows:
                raise self._changed(where, f"more than {self.rows}")
            labels = None
            if num_classes is not None:
                labels = _check_labels(y, n, num_classes, where, first, of)
            yield checked, labels
            first += n
            index += 1
        if first == 0:
            raise InputError("yielded no samples", source=source)
        if self.rows is not None and first != self.rows:
            raise self._changed(source, str(first))
        self.rows = first

    def _changed(self, where: str, got: str) -> InputError:
        return InputError(
            f"yielded {got} samples on this pass, {self.rows} on the one before: the data "
            "is read more than once, and must be the same each time",
            source=where,
        )

    def _unpack(self, item: Any, where: str) -> tuple[Any, Any]:
        if isinstance(item, tuple) and len(item) == 2:
            return item
        if isinstance(item, Mapping) or (len(self.specs) == 1 and isinstance(item, np.ndarray)):
            return item, None
        raise InputError(
            "expected a dict {input name: array} or a (feeds, labels) tuple, got "
            f"{type(item).__name__}",
            source=where,
        )

    def _note_casts(self, feeds: Any, source: str) -> None:
        """A note for each input yielded as another dtype than the model's (once)."""
        arrays = feeds if isinstance(feeds, Mapping) else {self.specs[0].name: feeds}
        for spec in self.specs:
            got = np.asarray(arrays[spec.name]).dtype
            line = (
                f"{source}: {spec.name}: {got} read as {np.dtype(spec.dtype)}, "
                "the model's input dtype"
            )
            if got != np.dtype(spec.dtype) and line not in self.casts:
                self.casts = (*self.casts, line)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "path": str(self.script), "function": self.function}


def _check_labels(
    y: Any, rows: int, num_classes: int, where: str, first: int, of: str
) -> np.ndarray:
    """The labels a script yielded with a batch of `rows` samples, checked as class
    indices; errors name the batch (`where`) and the sample (counted from the first)."""
    if y is None:
        raise InputError(
            "no labels: yield (feeds, labels) with integer labels [rows] for evaluate "
            "and calibration",
            source=where,
        )
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] != rows or labels.dtype.kind not in "iu":
        raise InputError(
            f"expected integer labels [{rows}], got {labels.dtype} {list(labels.shape)}",
            source=where,
            field="labels",
        )
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        whose = f" of {of}" if of else ""
        raise InputError(
            f"sample {first + i}: label {int(labels[i])} outside the {num_classes} classes"
            f"{whose} (0..{num_classes - 1})",
            source=where,
            field="labels",
        )
    return labels.astype(np.int64)


def count_rows(inputs: Inputs, num_classes: int | None = None, *, of: str = "") -> int:
    """`inputs.rows`, reading a loader script through once when it is not known yet."""
    if inputs.rows is not None:
        return inputs.rows
    if isinstance(inputs, ScriptInputs):
        return inputs.count(num_classes, of=of)
    raise AssertionError(f"{type(inputs).__name__} does not know its rows")
