"""Run a cascade over an input of any size in bounded batches, with memory kept flat.

`edgeadapt run` reads its input memory-mapped and hands the cascade `batch` rows at a
time: each batch is copied out of the map, checked and predicted, and only the
per-sample answers (a few bytes a row) are kept, so the memory a run needs is set by
`batch` and not by the file's size. Errors about the data name the absolute row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeadapt.errors import InputError

if TYPE_CHECKING:
    from edgeadapt.cascade import AdaptiveModel

__all__ = ["DEFAULT_BATCH", "MAX_BATCH", "predict_batches"]

#: rows per predict call when the caller does not say
DEFAULT_BATCH = 256
#: the largest batch accepted: beyond it one call's activations alone can exhaust memory
MAX_BATCH = 1 << 20

Progress = Callable[[int, int], None]


def _merge(latencies: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the per-batch latency dicts (steps aligned by run order)."""
    width = max(len(d["steps"]) for d in latencies)
    steps = [0.0] * width
    rows = [0] * width
    for d in latencies:
        for j, (ms, n) in enumerate(zip(d["steps"], d["rows"], strict=True)):
            steps[j] += ms
            rows[j] += n
    return {
        "total": sum(d["total"] for d in latencies),
        "steps": steps,
        "rows": rows,
        "batches": len(latencies),
    }


def predict_batches(
    model: AdaptiveModel,
    x: np.ndarray | Mapping[str, np.ndarray],
    batch: int = DEFAULT_BATCH,
    budget_ms: float | None = None,
    *,
    progress: Progress | None = None,
    source: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Predict every row of `x` (``{input name: array}``, or one array for a one-input
    bundle; arrays or read-only memory maps) `batch` rows at a time; returns ``{pred,
    exit_state, conf, budget_exit}`` over all rows and the merged latency (``batches``
    counts the calls). `progress(done, total)` follows each batch; `source` names the
    data in errors."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)):
        raise InputError(f"must be an integer, got {batch!r}", source="batch")
    if not 1 <= batch <= MAX_BATCH:
        raise InputError(f"must lie in 1..{MAX_BATCH}, got {batch}", source="batch")
    where = "input" if source is None else str(source)
    arrays = dict(x) if isinstance(x, Mapping) else {model.bundle.input.name: x}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise InputError(
                f"expected a numpy array, got {type(a).__name__}", source=where, field=name
            )
        if a.ndim == 0 or a.shape[0] == 0:
            raise InputError(f"empty batch (shape {list(a.shape)})", source=where, field=name)
    total = int(next(iter(arrays.values())).shape[0])
    for name, a in arrays.items():
        if a.shape[0] != total:
            raise InputError(
                f"has {a.shape[0]} rows, another input {total}: every input needs the same rows",
                source=where,
                field=name,
            )
    try:  # names, dtypes and shapes once, on one row, before any work
        model.check_inputs({k: np.ascontiguousarray(a[:1]) for k, a in arrays.items()})
    except InputError as e:
        raise InputError(str(e).removeprefix("input: "), source=where) from None
    out: dict[str, np.ndarray] = {
        "pred": np.empty(total, dtype=np.int64),
        "exit_state": np.empty(total, dtype=np.int64),
        "conf": np.empty(total, dtype=np.float32),
        "budget_exit": np.empty(total, dtype=np.bool_),
    }
    latencies = []
    for lo in range(0, total, int(batch)):
        hi = min(lo + int(batch), total)
        chunk = {k: np.ascontiguousarray(a[lo:hi]) for k, a in arrays.items()}
        for name, c in chunk.items():
            if c.dtype.kind == "f":
                bad = ~np.isfinite(c.reshape(hi - lo, -1)).all(axis=1)
                if bad.any():
                    first = lo + int(np.flatnonzero(bad)[0])
                    field = name if len(chunk) > 1 else None
                    raise InputError(
                        f"holds NaN or infinity, first in row {first}", source=where, field=field
                    )
        p = model.predict(chunk, budget_ms)
        for key in out:
            out[key][lo:hi] = getattr(p, key)
        latencies.append(p.latency_ms)
        if progress is not None:
            progress(hi, total)
    return out, _merge(latencies)
