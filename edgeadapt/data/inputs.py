"""A bundle's model inputs as data: check a batch against the `InputSpec`s, make one for
timing (`edgeadapt.data.batches` reads them from files).

A batch is a mapping ``{input name: array}`` holding every model input with the same
number of rows; a one-input bundle also takes the bare array. Arrays are checked against
their spec (dtype, shape after the batch axis, non-empty, finite floats). With
``cast=True`` (data read by `run`, `evaluate` and export calibration, from files or
arrays) a float array may change float width and an integer array integer width where
every value fits, but integer token ids never become floats and floats never become
ids; without it (`AdaptiveModel.predict`) the dtype must be the input's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle, InputSpec
from edgeadapt.kernel import all_finite

__all__ = [
    "X_KEY",
    "BatchCheck",
    "check_batch",
    "is_mask",
    "kinds_for",
    "out_of_range",
    "random_batch",
    "token_ranges",
    "warmup_batch",
]

#: The npz key a one-input bundle's data may use instead of the input's name.
X_KEY = "x"


def out_of_range(x: np.ndarray, dtype: np.dtype[Any]) -> tuple[int, int] | None:
    """The (min, max) of the integers `x` when they do not all fit integer `dtype`;
    None when they do (or `x` is empty)."""
    if not x.size:
        return None
    info = np.iinfo(dtype)
    lo, hi = int(x.min()), int(x.max())
    return (lo, hi) if lo < info.min or hi > info.max else None


def kinds_for(dtype: np.dtype[Any]) -> str:
    """The dtype kinds of data that may be read as an input of `dtype`."""
    return {"f": "f", "b": "b"}.get(dtype.kind, "iu")


def _names(specs: Sequence[InputSpec]) -> str:
    return ", ".join(s.name for s in specs)


def check_batch(
    specs: Sequence[InputSpec],
    x: Any,
    *,
    source: str | os.PathLike[str] | None = "input",
    array_field: str | None = None,
    cast: bool = False,
    first_row: int = 0,
) -> dict[str, np.ndarray]:
    """`x` (a mapping of every input, or one array for a one-input bundle) checked
    against `specs`, as ``{name: C-contiguous aligned array}`` in spec order.

    Errors are `InputError`s naming `source` and the input (`array_field` names a bare
    array) and rows counted from `first_row` (the batch's place in a larger set); with
    `cast`, widths change where no value changes (see the module docstring).
    """
    if isinstance(x, Mapping):
        missing = [s.name for s in specs if s.name not in x]
        unexpected = [str(k) for k in x if all(k != s.name for s in specs)]
        if missing or unexpected:
            raise InputError(
                f"the inputs do not match the bundle's ({_names(specs)}): "
                f"missing {missing}, unexpected {unexpected}",
                source=source,
            )
        items: list[tuple[InputSpec, Any, str | None]] = [(s, x[s.name], s.name) for s in specs]
    elif len(specs) == 1:
        items = [(specs[0], x, array_field)]
    else:
        raise InputError(
            f"the bundle has {len(specs)} inputs ({_names(specs)}): pass a mapping "
            f"{{name: array}} holding each, not {type(x).__name__}",
            source=source,
        )
    out: dict[str, np.ndarray] = {}
    rows: tuple[str, int] | None = None
    for spec, array, field in items:
        array = _check_one(spec, array, source, field, cast, first_row)
        if rows is None:
            rows = (spec.name, array.shape[0])
        elif array.shape[0] != rows[1]:
            raise InputError(
                f"has {array.shape[0]} rows, {rows[0]!r} has {rows[1]}: every input "
                "needs the same batch size",
                source=source,
                field=field,
            )
        out[spec.name] = array
    return out


def _check_one(
    spec: InputSpec, x: Any, source: Any, field: str | None, cast: bool, first_row: int
) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise InputError(
            f"expected a numpy array, got {type(x).__name__}", source=source, field=field
        )
    want = np.dtype(spec.dtype)
    if x.dtype != want:
        if not cast or x.dtype.kind not in kinds_for(want):
            raise InputError(
                f"expected dtype {want}, got {x.dtype} (convert explicitly, e.g. "
                f"x.astype(np.{want}))",
                source=source,
                field=field,
            )
        if want.kind in "iu":
            beyond = out_of_range(x, want)
            if beyond is not None:
                raise InputError(
                    f"values {beyond[0]}..{beyond[1]} do not fit the input's dtype {want}",
                    source=source,
                    field=field,
                )
        with np.errstate(over="ignore"):  # past float32's range: inf, refused below
            x = x.astype(want)
    shape = tuple(int(d) for d in spec.shape[1:])
    if x.ndim != len(spec.shape) or x.shape[1:] != shape:
        dims = ", ".join(str(d) for d in ("B", *shape))
        raise InputError(
            f"expected shape [{dims}], got {list(x.shape)}", source=source, field=field
        )
    if x.shape[0] == 0:
        raise InputError("empty batch (0 rows)", source=source, field=field)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1))
        raise InputError(
            f"holds NaN or infinity in {bad.size} row(s), first row {first_row + int(bad[0])}",
            source=source,
            field=field,
        )
    return np.require(x, requirements=("C", "A"))  # the kernel reads aligned C-order data


def _finite_test(dtype: np.dtype[Any]) -> Callable[[np.ndarray], bool]:
    """An exact test that a C-contiguous array of the native float `dtype` holds no NaN
    or infinity: the kernel's bit test (`edgeadapt.kernel.all_finite`) for float16, 32
    and 64, which costs a fraction of numpy's reduction on a small batch; numpy's for any
    other float."""
    if dtype.itemsize in (2, 4, 8):
        return all_finite
    return lambda x: bool(np.isfinite(x).all())


class BatchCheck:
    """`check_batch` for one fixed list of specs (a loaded model's inputs), with a quick
    acceptance first: what can be worked out per spec (dtype, shape after the batch
    axis, rank, how to test finiteness) is worked out once, so a plain C-contiguous
    array of the right dtype and shape with no NaN or infinity costs a few attribute
    tests and one native bit test (`_finite_test`). Anything the quick test cannot vouch for
    (a wrong dtype, a view, unaligned data, NaN) takes `check_batch`, which also words the error: the
    errors are `check_batch`'s, word for word.
    """

    def __init__(self, specs: Sequence[InputSpec], source: str = "input") -> None:
        self.specs = tuple(specs)
        self.source = source
        quick = []
        for s in self.specs:
            dtype = np.dtype(s.dtype)
            finite = _finite_test(dtype) if dtype.kind == "f" else None
            quick.append((s.name, dtype, tuple(int(d) for d in s.shape[1:]), len(s.shape), finite))
        self._quick = tuple(quick)
        #: The one input's (name, dtype, shape after the batch axis, rank, finiteness
        #: test or None for a non-float input), else None.
        self.single = self._quick[0] if len(self._quick) == 1 else None

    def array(self, x: Any) -> np.ndarray | None:
        """`x` itself when the quick test accepts it as the one input's batch, else None
        (then `__call__` decides, and words any error)."""
        single = self.single
        if single is None or type(x) is not np.ndarray:
            return None
        _, dtype, shape, rank, finite = single
        if (
            x.dtype is dtype
            and x.ndim == rank
            and x.shape[1:] == shape
            and x.shape[0] > 0
            and x.flags.c_contiguous
            and x.flags.aligned
            and (finite is None or finite(x))
        ):
            return x
        return None

    def __call__(self, x: Any) -> dict[str, np.ndarray]:
        """`x` checked as `check_batch` does, as ``{name: array}``."""
        if type(x) is np.ndarray:
            a = self.array(x)
            if a is not None:
                return {self._quick[0][0]: a}
        elif type(x) is dict and len(x) == len(self._quick):
            rows = -1
            for name, dtype, shape, rank, finite in self._quick:
                a = x.get(name)
                if (
                    type(a) is not np.ndarray
                    or a.dtype is not dtype
                    or a.shape[1:] != shape
                    or a.ndim != rank
                    or not a.flags.c_contiguous
                    or not a.flags.aligned
                    or (rows != -1 and a.shape[0] != rows)
                    or (finite is not None and not finite(a))
                ):
                    break
                rows = a.shape[0]
            else:
                if rows > 0:
                    return x
        return check_batch(self.specs, x, source=self.source)


# ------------------------------------------------------------------ synthetic batches


def is_mask(name: str) -> bool:
    """Whether an input is named as an attention/padding mask (fed all ones: every token
    counts, which is the cost a real, unpadded input pays)."""
    return "mask" in name.lower()


def token_ranges(bundle: Bundle) -> dict[str, int]:
    """For each integer model input that directly indexes a constant table (a ``Gather``
    whose data is an initializer, as an embedding does), the table's size along the
    gathered axis: the ids that input may hold are ``0..size-1``."""
    ints = {s.name for s in bundle.inputs if np.dtype(s.dtype).kind in "iu"}
    sizes: dict[str, int] = {}
    for step in bundle.steps:
        if not ints & set(step.inputs):
            continue
        try:
            graph = onnx.load(str(step.path), load_external_data=False).graph
        except Exception as e:  # protobuf DecodeError, unreadable file
            raise InputError(f"not a readable ONNX model ({e})", source=step.path) from None
        tables = {t.name: tuple(t.dims) for t in graph.initializer}
        for node in graph.node:
            if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in ints:
                continue
            dims = tables.get(node.input[0])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if dims and -len(dims) <= axis < len(dims) and dims[axis] > 0:
                name = node.input[1]
                sizes[name] = min(sizes.get(name, dims[axis]), int(dims[axis]))
    return sizes


def random_batch(bundle: Bundle, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random batch of every model input: floats standard normal; integer ids in the
    range `token_ranges` finds (else 0..1); masks all ones; other booleans random."""
    ranges: dict[str, int] | None = None
    out: dict[str, np.ndarray] = {}
    for spec in bundle.inputs:
        shape = (batch, *(int(d) for d in spec.shape[1:]))
        dtype = np.dtype(spec.dtype)
        if is_mask(spec.name):
            out[spec.name] = np.ones(shape, dtype=dtype)
        elif dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.random(shape) < 0.5
        else:
            if ranges is None:
                ranges = token_ranges(bundle)
            high = min(ranges.get(spec.name, 2), int(np.iinfo(dtype).max) + 1)
            out[spec.name] = rng.integers(0, high, size=shape).astype(dtype)
    return out


def warmup_batch(bundle: Bundle, batch: int = 1) -> dict[str, np.ndarray]:
    """A batch that is valid for any model without reading its graphs: zeros (id 0 is in
    every table), masks all ones."""
    out = {}
    for spec in bundle.inputs:
        shape = (batch, *(int(d) for d in spec.shape[1:]))
        fill = 1 if is_mask(spec.name) else 0
        out[spec.name] = np.full(shape, fill, dtype=np.dtype(spec.dtype))
    return out
