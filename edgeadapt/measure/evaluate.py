"""The evaluator: every state of a bundle on every sample of a labelled set.

Runs the bundle batch by batch on a runtime (early-exit: step i reads the activation of
step i-1 and any model inputs it needs, so one pass yields every state; ensemble: each
member reads the model inputs) and
records per sample and state the predicted class (argmax of the logits) and the
confidence in every measure the decision kernel supports (maxprob, margin, negative
entropy), computed by the kernel itself (`edgeadapt.kernel`, float32, specified by
`edgeadapt.kernel_ref`), so a plan calibrated on these confidences exits exactly the
rows `AdaptiveModel` exits on the same logits. The result is an `Evaluation`.

`evaluate_to_file` is `edgeadapt evaluate`: it runs under the runtime configuration of
the bundle's profile on this device (the one its costs were measured under) unless told
otherwise, and saves the evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.data.inputs import X_KEY, check_batch, read_labelled
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle
from edgeadapt.formats.evaluation import CONF_KEYS, Evaluation
from edgeadapt.formats.identity import BundleIdentity
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.formats.stepcheck import check_step

__all__ = ["EvaluateRun", "evaluate_bundle", "evaluate_to_file", "load_dataset"]

Progress = Callable[[int, int], None]


Inputs = np.ndarray | Mapping[str, np.ndarray]


def _check_data(
    bundle: Bundle, x: Inputs, y: np.ndarray, source: str | os.PathLike[str] | None
) -> dict[str, np.ndarray]:
    """The model inputs as ``{name: array}`` (widths cast where no value changes) and the
    labels checked against them; errors name `source` and the array."""
    inputs = check_batch(bundle.inputs, x, source=source, array_field=X_KEY, cast=True)
    n = next(iter(inputs.values())).shape[0]
    if y.ndim != 1 or y.shape[0] != n or y.dtype.kind not in "iu":
        raise InputError(
            f"expected integer labels [{n}], got {y.dtype} {y.shape}",
            source=source,
            field="y",
        )
    if y.min() < 0 or y.max() >= bundle.num_classes:
        raise InputError(
            f"labels must lie in 0..{bundle.num_classes - 1}, got {y.min()}..{y.max()}",
            source=source,
            field="y",
        )
    return inputs


def load_dataset(path: str | os.PathLike[str], bundle: Bundle) -> tuple[Inputs, np.ndarray]:
    """A labelled set for `bundle` from an npz: one array ``[N, *input shape]`` per model
    input, named as the input (a one-input bundle may name it ``x``), and integer ``y``
    ``[N]``; errors name the file and the array. A one-input bundle's inputs come back as
    the bare array, a multi-input bundle's as ``{name: array}``."""
    inputs, y = read_labelled(path, bundle.inputs)
    _check_data(bundle, inputs, y, path)
    if len(bundle.inputs) == 1:
        return inputs[bundle.inputs[0].name], y
    return inputs, y


def evaluate_bundle(
    bundle: Bundle,
    x: Inputs,
    y: np.ndarray,
    runtime: str | RuntimeConfig = "onnxruntime",
    batch: int = 256,
    threads: int | None = None,
    progress: Progress | None = None,
    source: str | None = None,
) -> Evaluation:
    """Run every state of `bundle` on `x` in batches of `batch`; `y` are the labels.

    `x` is one array for a one-input bundle, else ``{input name: array}`` holding every
    model input with the same number of rows; each step is fed the inputs it reads.
    `progress(done, total)` is called after each batch with the samples done so far.
    `source` names the data file in errors about `x` and `y`. `runtime` is a runtime
    name (its own defaults, `threads` if given) or a `RuntimeConfig` (`threads`, if
    given, replaces its threads).
    """
    from edgeadapt.kernel import confidence

    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise InputError(f"must be a positive integer, got {batch!r}", source="batch")
    y = np.asarray(y)
    inputs = _check_data(bundle, x, y, source)
    if isinstance(runtime, RuntimeConfig):
        config = runtime if threads is None else replace(runtime, threads=threads)
    else:
        config = RuntimeConfig(runtime, threads=threads)
    rt = config.make()
    n, s = y.shape[0], len(bundle.steps)
    pred = np.empty((n, s), dtype=np.int64)
    confs = {key: np.empty((n, s), dtype=np.float32) for key in CONF_KEYS.values()}
    sessions = [rt.load(step.path) for step in bundle.steps]
    try:
        for lo in range(0, n, int(batch)):
            hi = min(lo + int(batch), n)
            tensors = {name: np.ascontiguousarray(a[lo:hi]) for name, a in inputs.items()}
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
        num_classes=bundle.num_classes,
        bundle=BundleIdentity.of(bundle),
    )


@dataclass(frozen=True)
class EvaluateRun:
    """An evaluation made and saved (`evaluate_to_file`), the runtime configuration it
    ran under, and a line saying how that differs from the profile's (None: it does not,
    or there was no profile)."""

    evaluation: Evaluation
    path: Path
    runtime: RuntimeConfig
    runtime_note: str | None = None

    @property
    def oracle_accuracy(self) -> float:
        """The share of samples some state gets right."""
        return float(self.evaluation.correct.any(axis=1).mean())

    def to_json(self) -> dict[str, Any]:
        ev = self.evaluation
        return {
            "path": str(self.path),
            "samples": int(ev.labels.shape[0]),
            "states": list(ev.names),
            "accuracy": [float(a) for a in ev.accuracies],
            "oracle_accuracy": self.oracle_accuracy,
        }


def evaluate_to_file(
    bundle: Bundle | str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    profile: str | os.PathLike[str] | None = None,
    runtime: str | None = None,
    threads: int | None = None,
    batch: int = 256,
    progress: Progress | None = None,
) -> EvaluateRun:
    """`edgeadapt evaluate`: every state of `bundle` on the labelled npz `data`, saved
    to `output` (default ``BUNDLE/evaluation.npz``).

    The runtime configuration is the `profile`'s (default: this device's profile of the
    bundle, `edgeadapt.formats.profile.find_profile`, when there is one) unless `runtime` or
    `threads` override it, and then `EvaluateRun.runtime_note` says so; without a
    profile, `runtime` (default onnxruntime) with its own defaults.
    """
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.evaluation import save_evaluation
    from edgeadapt.formats.presets import inherit_runtime
    from edgeadapt.formats.profile import find_profile, load_profile

    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    found = find_profile(loaded, profile)
    recorded = None if found is None else load_profile(found, loaded).runtime_config
    choice = inherit_runtime(recorded, runtime=runtime, threads=threads, what="profile")
    x, y = load_dataset(data, loaded)
    ev = evaluate_bundle(
        loaded, x, y, runtime=choice.config, batch=batch, progress=progress, source=str(data)
    )
    path = Path(output) if output is not None else loaded.path / "evaluation.npz"
    save_evaluation(path, ev)
    return EvaluateRun(ev, path, choice.config, choice.note)
