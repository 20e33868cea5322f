"""Run a cascade over an input of any size in bounded batches, with memory kept flat.

`edgeadapt run` reads its input memory-mapped and hands the cascade `batch` rows at a
time: each batch is copied out of the map, checked and predicted, and only the
per-sample answers (a few bytes a row) are kept, so the memory a run needs is set by
`batch` and not by the file's size. Errors about the data name the absolute row.

`run_file` is `edgeadapt run`: the input file read (`read_input`), the cascade loaded
(under the plan's runtime configuration unless told otherwise) and run batch by batch,
the answers saved when asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeadapt.errors import InputError

if TYPE_CHECKING:
    from edgeadapt.cascade.model import AdaptiveModel
    from edgeadapt.formats.bundle import Bundle
    from edgeadapt.formats.presets import RuntimeConfig

__all__ = [
    "DEFAULT_BATCH",
    "MAX_BATCH",
    "RunResult",
    "predict_batches",
    "read_input",
    "run_file",
]

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


def read_input(path: str | os.PathLike[str], bundle: Bundle) -> dict[str, np.ndarray]:
    """The model inputs in `path`: an .npz with one array per input, named as the input
    (a one-input bundle may name it ``x``), or for a one-input bundle an .npy array,
    memory-mapped (it is checked and copied a batch at a time by `predict_batches`)."""
    import zipfile

    from edgeadapt.data.inputs import read_batch
    from edgeadapt.formats.jsonio import check_regular

    path = Path(path)
    if not path.exists():
        raise InputError("no such file", source=path)
    check_regular(path)  # before opening: a FIFO would block
    if zipfile.is_zipfile(path):
        return read_batch(path, bundle.inputs)
    if len(bundle.inputs) != 1:
        names = ", ".join(bundle.input_names)
        raise InputError(
            f"the bundle has {len(bundle.inputs)} inputs ({names}): give an .npz holding "
            "one array per input, named as the input",
            source=path,
        )
    try:
        x = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise InputError(f"not a readable .npy array: {e}", source=path) from None
    if not isinstance(x, np.ndarray):
        raise InputError("expected one .npy array, got an .npz archive", source=path)
    return {bundle.input.name: x}


@dataclass(frozen=True)
class RunResult:
    """What `run_file` computed: per sample the prediction, the state it exited at, its
    confidence and whether the budget cut it short; the merged latency; the names of
    the bundle's states; the runtime configuration the steps ran under and, when it
    differs from the plan's because the caller overrode it, a line saying so."""

    pred: np.ndarray
    exit_state: np.ndarray
    conf: np.ndarray
    budget_exit: np.ndarray
    latency_ms: dict[str, Any]
    state_names: tuple[str, ...]
    runtime: RuntimeConfig | None = None
    runtime_note: str | None = None

    @property
    def exits(self) -> dict[str, int]:
        """How many samples exited at each state of the bundle."""
        counts = np.bincount(self.exit_state, minlength=len(self.state_names))
        return {name: int(c) for name, c in zip(self.state_names, counts, strict=True)}

    def to_json(self) -> dict[str, Any]:
        """The per-sample answers and the latency (NaN confidences as null)."""
        return {
            "pred": self.pred.tolist(),
            "exit_state": self.exit_state.tolist(),
            "conf": [None if c != c else float(c) for c in self.conf.tolist()],
            "budget_exit": self.budget_exit.tolist(),
            "latency_ms": self.latency_ms,
        }


def run_file(
    bundle: Bundle | str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    *,
    thresholds: float | Sequence[float] | None = None,
    plan: str | os.PathLike[str] | None = None,
    profile: str | os.PathLike[str] | None = None,
    cost_stat: str | None = None,
    measure: str | None = None,
    runtime: str | None = None,
    threads: int | None = None,
    budget_ms: float | None = None,
    batch: int = DEFAULT_BATCH,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """`edgeadapt run`: the cascade of `bundle` (`AdaptiveModel.load` with `thresholds`
    or a `plan`, and its runtime settings; a budget's costs from the plan or `profile` at
    `cost_stat`) on the inputs in `input_path`, `batch` rows
    at a time; with `output`, ``pred``/``exit_state``/``conf``/``budget_exit`` are also
    saved there as an .npz."""
    from edgeadapt.cascade.model import AdaptiveModel
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.npzio import save_npz

    loaded = load_bundle(bundle) if isinstance(bundle, (str, os.PathLike)) else bundle
    arrays = read_input(input_path, loaded)
    model = AdaptiveModel.load(
        loaded,
        runtime,
        thresholds=thresholds,
        measure=measure,
        plan=plan,
        profile=profile,
        cost_stat=cost_stat,
        threads=threads,
    )
    with model:
        res, latency = predict_batches(
            model, arrays, batch, budget_ms, progress=progress, source=input_path
        )
    if output is not None:
        save_npz(output, **res)
    return RunResult(
        res["pred"],
        res["exit_state"],
        res["conf"],
        res["budget_exit"],
        latency,
        tuple(s.name for s in loaded.states),
        model.runtime,
        model.runtime_note,
    )
