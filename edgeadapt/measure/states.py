"""Every state of a bundle on labelled batches, kept per sample: the loop `evaluate`
runs in one process and each of its workers runs on a shard (`edgeadapt.measure.shards`,
`edgeadapt.measure.raywork`), or batch by batch when batches are dealt (`StateRunner`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeadapt.formats.bundle import Bundle
from edgeadapt.formats.evaluation import CONF_KEYS, Evaluation
from edgeadapt.formats.identity import BundleIdentity
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.formats.stepcheck import check_step
from edgeadapt.kernel import confidence
from edgeadapt.runtimes import from_config

__all__ = ["StateResults", "StateRunner", "run_states"]


@dataclass(frozen=True)
class StateResults:
    """Per-sample results of every state on consecutive samples: `labels` ``[n]``,
    `pred` ``[n, S]`` and the confidences `confs` (``{conf key: [n, S]}``,
    `CONF_KEYS`); what a worker sends back for its shard of the data."""

    labels: np.ndarray
    pred: np.ndarray
    confs: dict[str, np.ndarray]

    @classmethod
    def join(cls, parts: Sequence[StateResults]) -> StateResults:
        """`parts` (consecutive runs of samples) as one, in order."""
        return cls(
            np.concatenate([p.labels for p in parts]).astype(np.int64),
            np.concatenate([p.pred for p in parts]),
            {key: np.concatenate([p.confs[key] for p in parts]) for key in CONF_KEYS.values()},
        )

    def evaluation(self, bundle: Bundle) -> Evaluation:
        """These results as `bundle`'s evaluation."""
        return Evaluation(
            self.labels,
            self.pred,
            np.array([st.name for st in bundle.states], dtype=str),
            self.confs["conf"],
            conf_margin=self.confs["conf_margin"],
            conf_entropy=self.confs["conf_entropy"],
            num_classes=bundle.num_classes,
            bundle=BundleIdentity.of(bundle),
        )


class StateRunner:
    """Every state of `bundle` under `config`, its sessions loaded once, run on one
    labelled batch at a time (`run`); `close` ends the sessions."""

    def __init__(self, bundle: Bundle, config: RuntimeConfig) -> None:
        self.bundle = bundle
        self._needed = _last_reads(bundle)
        rt = from_config(config)
        self._sessions = [rt.load(step.path) for step in bundle.steps]

    def run(self, tensors: dict[str, np.ndarray], y: np.ndarray) -> StateResults:
        """Every state on one batch (feeds `tensors`, which it uses up; labels `y`)."""
        bundle, s = self.bundle, len(self.bundle.steps)
        b = next(iter(tensors.values())).shape[0]
        pred = np.empty((b, s), dtype=np.int64)
        confs = {key: np.empty((b, s), dtype=np.float32) for key in CONF_KEYS.values()}
        for i, (step, session) in enumerate(zip(bundle.steps, self._sessions, strict=True)):
            out = session.run({k: tensors[k] for k in step.inputs})
            tensors.update(check_step(out, b, step.logits, bundle.num_classes, step.path))
            logits = np.ascontiguousarray(tensors.pop(step.logits))
            pred[:, i] = logits.argmax(axis=1)
            for measure, key in CONF_KEYS.items():
                confs[key][:, i] = confidence(logits, measure)
            for name in [k for k in tensors if self._needed.get(k, -1) <= i]:
                del tensors[name]  # no later step reads it: its memory goes now
        return StateResults(y, pred, confs)

    def close(self) -> None:
        for session in self._sessions:
            session.close()


def run_states(
    bundle: Bundle,
    batches: Iterable[tuple[int, dict[str, np.ndarray], np.ndarray]],
    config: RuntimeConfig,
    progress: Callable[[int], None] | None = None,
) -> StateResults:
    """Every state of `bundle` on each labelled batch of `batches` (first row, feeds,
    labels), under `config`; `progress(done)` after each batch with the rows done after
    it (the batch's first row plus its size)."""
    runner = StateRunner(bundle, config)
    parts: list[StateResults] = []
    try:
        for lo, tensors, y in batches:
            parts.append(runner.run(tensors, y))
            if progress is not None:
                progress(lo + len(y))
    finally:
        runner.close()
    return StateResults.join(parts)


def _last_reads(bundle: Bundle) -> dict[str, int]:
    """For each tensor a step reads, the index of the last step that reads it."""
    last: dict[str, int] = {}
    for i, step in enumerate(bundle.steps):
        for name in step.inputs:
            last[name] = i
    return last
