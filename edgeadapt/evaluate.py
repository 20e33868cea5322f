"""The evaluator: every state of a bundle on every sample of a labelled set.

Runs the bundle batch by batch on a runtime (early-exit: step i reads the activation of
step i-1, so one pass yields every state; ensemble: each member reads the input) and
records per sample and state the predicted class (argmax of the logits) and the
confidence in every measure the decision kernel supports (maxprob, margin, negative
entropy), computed by the kernel itself (`edgeadapt.kernel`, float32, specified by
`edgeadapt.kernel_ref`), so a plan calibrated on these confidences exits exactly the
rows `AdaptiveModel` exits on the same logits. The result is an `Evaluation`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeadapt.bundle import Bundle
from edgeadapt.errors import InputError
from edgeadapt.evaluation import CONF_KEYS, Evaluation
from edgeadapt.npzio import ArraySpec, load_npz
from edgeadapt.stepcheck import check_step

__all__ = ["evaluate_bundle", "load_dataset"]

Progress = Callable[[int, int], None]


def _check_inputs(bundle: Bundle, x: np.ndarray, y: np.ndarray, source: str | None) -> None:
    want = tuple(int(d) for d in bundle.input.shape[1:])
    if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
        raise InputError(
            f"expected shape [N, {', '.join(map(str, want))}] (the bundle's input), got {x.shape}",
            source=source,
            field="x",
        )
    if x.shape[0] == 0:
        raise InputError("no samples", source=source, field="x")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
        raise InputError(
            f"expected integer labels [{x.shape[0]}], got {y.dtype} {y.shape}",
            source=source,
            field="y",
        )
    if y.min() < 0 or y.max() >= bundle.num_classes:
        raise InputError(
            f"labels must lie in 0..{bundle.num_classes - 1}, got {y.min()}..{y.max()}",
            source=source,
            field="y",
        )
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InputError("contains NaN or infinity", source=source, field="x")


def load_dataset(path: str | os.PathLike[str], bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """A labelled set for `bundle` from an npz: ``x`` float ``[N, *input shape]`` and ``y``
    integer ``[N]``; errors name the file and the key."""
    arrays = load_npz(path, {"x": ArraySpec("f", len(bundle.input.shape)), "y": ArraySpec("iu", 1)})
    _check_inputs(bundle, arrays["x"], arrays["y"], str(path))
    return arrays["x"], arrays["y"]


def evaluate_bundle(
    bundle: Bundle,
    x: np.ndarray,
    y: np.ndarray,
    runtime: str = "onnxruntime",
    batch: int = 256,
    threads: int | None = None,
    progress: Progress | None = None,
    source: str | None = None,
) -> Evaluation:
    """Run every state of `bundle` on `x` in batches of `batch`; `y` are the labels.

    `progress(done, total)` is called after each batch with the samples done so far.
    `source` names the data file in errors about `x` and `y`.
    """
    from edgeadapt.kernel import confidence
    from edgeadapt.runtimes import get_runtime

    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise InputError(f"must be a positive integer, got {batch!r}", source="batch")
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind in "fiu":  # cast first: float64 data can overflow float32 to infinity
        with np.errstate(over="ignore"):
            x = x.astype(np.dtype(bundle.input.dtype), copy=False)
    _check_inputs(bundle, x, y, source)
    options: dict[str, Any] = {} if threads is None else {"threads": threads}
    rt = get_runtime(runtime, **options)
    n, s = x.shape[0], len(bundle.steps)
    pred = np.empty((n, s), dtype=np.int64)
    confs = {key: np.empty((n, s), dtype=np.float32) for key in CONF_KEYS.values()}
    sessions = [rt.load(step.path) for step in bundle.steps]
    try:
        for lo in range(0, n, int(batch)):
            hi = min(lo + int(batch), n)
            tensors: dict[str, np.ndarray] = {bundle.input.name: np.ascontiguousarray(x[lo:hi])}
            for i, (step, session) in enumerate(zip(bundle.steps, sessions, strict=True)):
                out = session.run({k: tensors[k] for k in step.inputs})
                tensors.update(check_step(out, hi - lo, step.logits, bundle.num_classes, step.path))
                logits = np.ascontiguousarray(tensors[step.logits])
                pred[lo:hi, i] = logits.argmax(axis=1)
                for measure, key in CONF_KEYS.items():
                    confs[key][lo:hi, i] = confidence(logits, measure)
            if progress is not None:
                progress(hi, n)
    finally:
        for session in sessions:
            session.close()
    names = np.array([st.name for st in bundle.states], dtype=str)
    return Evaluation(
        y.astype(np.int64),
        pred,
        names,
        confs["conf"],
        conf_margin=confs["conf_margin"],
        conf_entropy=confs["conf_entropy"],
    )
