"""Run a cascade over an input of any size in bounded batches, with memory kept flat.

`edgeadapt run` reads its input a batch at a time (`edgeadapt.data.batches`) and hands
the cascade `batch` rows at a time, the batch chosen from a memory budget unless given
(`edgeadapt.data.memory`): each batch is read, checked and predicted, and only the
per-sample answers (a few bytes a row) are kept, so the memory a run needs is set by
the batch and not by the file's size. Errors about the data name the absolute row.

`run_to_file` is `edgeadapt run`: the input file read (`read_input`), the cascade loaded
(under the plan's runtime configuration unless told otherwise) and run batch by batch,
the answers saved when asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.data.batches import Inputs, array_inputs
from edgeadapt.data.budget import MAX_BATCH
from edgeadapt.data.memory import BatchChoice, bundle_sample_bytes, choose_batch, run_notes
from edgeadapt.data.sources import DataSpec, open_source, script_spec
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.npzio import save_npz

if TYPE_CHECKING:
    from edgeadapt.formats.presets import RuntimeConfig

__all__ = [
    "MAX_BATCH",
    "RunResult",
    "predict_batches",
    "read_input",
    "run_to_file",
]

Progress = Callable[[int, int | None], None]


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
    x: np.ndarray | Mapping[str, np.ndarray] | Inputs,
    batch: int | None = None,
    budget_ms: float | None = None,
    *,
    memory: int | str | None = None,
    progress: Progress | None = None,
    source: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Predict every row of `x` (``{input name: array}``, or one array for a one-input
    bundle; arrays or read-only memory maps; or `Inputs` read from a file) `batch` rows
    at a time, else as many as `memory` holds (`edgeadapt.data.memory.choose_batch`);
    returns ``{pred, exit_state, conf, budget_exit}`` over all rows and the merged latency
    (``batches`` counts the calls). Each batch is checked and read as the model's dtypes
    (`edgeadapt.data.batches`). `progress(done, total)` follows each batch; `source` names
    the data in errors."""
    size = choose_batch(lambda: bundle_sample_bytes(model.bundle), batch=batch, memory=memory)
    if isinstance(x, Inputs):
        inputs = x
    else:
        where = "input" if source is None else str(source)
        inputs = array_inputs(model.bundle.inputs, x, source=where)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("pred", "exit_state", "conf", "budget_exit")
    }
    latencies = []
    for lo, chunk in inputs.batches(size.batch):
        p = model.predict(chunk, budget_ms)
        for key, kept in parts.items():
            kept.append(getattr(p, key))
        latencies.append(p.latency_ms)
        if progress is not None:
            progress(lo + p.pred.shape[0], inputs.rows)
    dtypes: dict[str, Any] = {
        "pred": np.int64,
        "exit_state": np.int64,
        "conf": np.float32,
        "budget_exit": np.bool_,
    }
    out: dict[str, np.ndarray] = {
        key: np.concatenate(kept).astype(dtypes[key], copy=False) for key, kept in parts.items()
    }
    return out, _merge(latencies)


def read_input(path: str | os.PathLike[str] | DataSpec, bundle: Bundle) -> Inputs:
    """The model inputs in `path`: an .npz with one array per input, named as the input
    (a one-input bundle may name it ``x``), for a one-input bundle an .npy array, a
    loader script or images (`edgeadapt.data.sources.open_source`); checked as far as
    can be done before reading and read a batch at a time by `predict_batches`."""
    location = path.location if isinstance(path, DataSpec) else path
    if not os.path.exists(location) and script_spec(location) is None:
        raise InputError("no such file", source=location)
    return open_source(path, bundle.inputs)


@dataclass(frozen=True)
class RunResult:
    """What `run_to_file` computed: per sample the prediction, the state it exited at, its
    confidence and whether the budget cut it short; the merged latency; the names of
    the bundle's states; the runtime configuration the steps ran under and, when it
    differs from the plan's because the caller overrode it, a line saying so; the batch
    and why; the input arrays read as another dtype than they hold."""

    pred: np.ndarray
    exit_state: np.ndarray
    conf: np.ndarray
    budget_exit: np.ndarray
    latency_ms: dict[str, Any]
    state_names: tuple[str, ...]
    runtime: RuntimeConfig | None = None
    runtime_note: str | None = None
    batch: BatchChoice | None = None
    casts: tuple[str, ...] = ()

    @property
    def notes(self) -> list[str]:
        """The lines to show beside the result (`run_notes`)."""
        return run_notes(self.runtime_note, self.batch, self.casts)

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
            "batch": None if self.batch is None else self.batch.to_json(),
            "casts": list(self.casts),
        }


def run_to_file(
    bundle: Bundle | str | os.PathLike[str],
    input_path: str | os.PathLike[str] | DataSpec,
    *,
    thresholds: float | Sequence[float] | None = None,
    plan: str | os.PathLike[str] | None = None,
    profile: str | os.PathLike[str] | None = None,
    cost_stat: str | None = None,
    measure: str | None = None,
    runtime: str | None = None,
    threads: int | None = None,
    budget_ms: float | None = None,
    batch: int | None = None,
    memory: int | str | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """`edgeadapt run`: the cascade of `bundle` (`AdaptiveModel.load` with `thresholds`
    or a `plan`, and its runtime settings; a budget's costs from the plan or `profile` at
    `cost_stat`) on the inputs in `input_path`, read and run `batch` rows at a time, else
    as many as `memory` holds (`RunResult.batch` says which); with `output`,
    ``pred``/``exit_state``/``conf``/``budget_exit`` are also saved there as an .npz."""
    loaded = load_bundle(bundle) if isinstance(bundle, (str, os.PathLike)) else bundle
    inputs = read_input(input_path, loaded)
    size = choose_batch(lambda: bundle_sample_bytes(loaded), batch=batch, memory=memory)
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
        res, latency = predict_batches(model, inputs, size.batch, budget_ms, progress=progress)
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
        size,
        inputs.casts,
    )
