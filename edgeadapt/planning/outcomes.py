"""What the planner reads of an evaluation: per-sample outcomes of every state, and the
scores each exit policy thresholds.

`Outcomes` holds one split: correctness ``[N, S]``, the argmax ``[N, S]`` (what the
agreement policy reads), one measure's confidences (what the threshold policy reads;
None for predictions imported without logits) and, when known, what learned gates read.
`Outcomes.scores` gives the policy's scores at a subset of states: the confidences, the
gates' scores (`edgeadapt.planning.gates`) or the agreement shares
(`edgeadapt.kernel_ref.agreement_shares`), all thresholded by the same machinery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.evaluation import CONF_KEYS
from edgeadapt.formats.plan import Gate
from edgeadapt.kernel_ref import MEASURES, agreement_shares
from edgeadapt.planning.gates import GateInputs, policy_confidences

#: The exit policies a plan may use: a threshold on each state's confidence, on learned
#: gates' scores, or on the agreement of the states run so far; for branches bundles
#: also the content-aware scheduler (`edgeadapt.planning.scheduler`).
POLICIES = ("threshold", "gate", "agreement", "scheduler")


class EvaluationLike(Protocol):
    """What the planner reads from an evaluation (`edgeadapt.formats.evaluation`'s format)."""

    @property
    def labels(self) -> np.ndarray: ...
    @property
    def pred(self) -> np.ndarray: ...
    @property
    def conf(self) -> np.ndarray | None: ...
    @property
    def states(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Outcomes:
    """Per-sample results of every state on one split: `correct` bool and `conf` float32
    ``[N, S]`` (None: no confidences, as for imported predictions), states named in
    bundle (cost) order; `measure` names the confidences (None: not said, maxprob by
    default); `gate_inputs`, what learned gates read (every measure and the argmax), when
    known; `pred` int64 ``[N, S]``, each state's prediction (None: not known)."""

    names: tuple[str, ...]
    correct: np.ndarray
    conf: np.ndarray | None
    measure: str | None = None
    gate_inputs: GateInputs | None = None
    pred: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_states = len(self.names)
        shape = self.correct.shape
        if n_states == 0 or len(set(self.names)) != n_states:
            raise InputError("state names must be a non-empty list of unique names", field="states")
        if self.correct.dtype != np.bool_ or self.correct.ndim != 2:
            raise InputError("expected a bool [N, S] array", field="correct")
        if shape[1] != n_states or shape[0] == 0:
            raise InputError(f"expected shape [N>0, {n_states}], got {shape}", field="correct")
        if self.conf is not None:
            if self.conf.shape != shape or self.conf.dtype.kind != "f":
                raise InputError(f"expected a float array of shape {shape}", field="conf")
            if not np.isfinite(self.conf).all():
                raise InputError("confidences must be finite", field="conf")
        if self.measure is not None and self.measure not in MEASURES:
            raise InputError(
                f"must be one of {list(MEASURES)}, got {self.measure!r}", field="measure"
            )
        if self.gate_inputs is not None and self.gate_inputs.pred.shape != shape:
            raise InputError(f"expected gate inputs of shape {shape}", field="gate_inputs")
        if self.pred is not None and (self.pred.shape != shape or self.pred.dtype.kind not in "iu"):
            raise InputError(f"expected an integer array of shape {shape}", field="pred")

    @classmethod
    def from_evaluation(cls, evaluation: EvaluationLike, measure: str = "maxprob") -> Outcomes:
        """Correctness (``pred == labels``), the predictions and the `measure` confidences
        of an evaluation (``conf``, ``conf_margin`` or ``conf_entropy``, see
        `edgeadapt.formats.evaluation`; None when it has none)."""
        if measure not in CONF_KEYS:
            raise InputError(f"must be one of {list(CONF_KEYS)}, got {measure!r}", field="measure")
        conf = getattr(evaluation, CONF_KEYS[measure], None)
        confs = [getattr(evaluation, CONF_KEYS[m], None) for m in MEASURES]
        pred = np.asarray(evaluation.pred).astype(np.int64, copy=False)
        gate_inputs = (
            None
            if any(c is None for c in confs)
            else GateInputs(pred, *(np.asarray(c) for c in confs))
        )
        return cls(
            names=tuple(str(s) for s in evaluation.states),
            correct=pred == np.asarray(evaluation.labels)[:, None],
            conf=None if conf is None else np.asarray(conf, dtype=np.float32),
            measure=measure,
            gate_inputs=gate_inputs,
            pred=pred,
        )

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.correct.shape[0])

    def take(self, rows: np.ndarray) -> Outcomes:
        """The samples at `rows`."""
        return Outcomes(
            self.names,
            self.correct[rows],
            None if self.conf is None else self.conf[rows],
            self.measure,
            None if self.gate_inputs is None else self.gate_inputs.take(rows),
            None if self.pred is None else self.pred[rows],
        )

    def split(self, heldout: float = 0.5, seed: int = 0) -> tuple[Outcomes, Outcomes]:
        """A random (calibration, held-out) split; `heldout` is the held-out share."""
        if not 0.0 < heldout < 1.0:
            raise InputError(f"must be in (0, 1), got {heldout}", field="heldout")
        rows = np.random.default_rng(seed).permutation(self.n)
        cut = self.n - round(heldout * self.n)
        if cut < 1 or cut >= self.n:
            raise InputError(f"{self.n} samples are too few to split", field="heldout")
        return self.take(np.sort(rows[:cut])), self.take(np.sort(rows[cut:]))

    def scores(
        self, cols: Sequence[int], policy: str = "threshold", gates: Sequence[Gate] | None = None
    ) -> np.ndarray:
        """What `policy` thresholds at the states `cols` (in order), float32 ``[N, len(cols)]``:
        the confidences, the `gates`' scores (a last column of zeros: the last state
        always answers) or the agreement shares."""
        cols = list(cols)
        if policy == "agreement":
            if self.pred is None:
                raise InputError(
                    "the agreement policy needs each state's predictions", field="pred"
                )
            return agreement_shares(self.pred[:, cols])
        if policy == "gate":
            if self.gate_inputs is None or gates is None:
                raise InputError(
                    "a gate policy needs every measure's confidences", field="gate_inputs"
                )
            return policy_confidences(gates, self.gate_inputs.select(cols))
        if self.conf is None:
            raise InputError(
                f"the threshold policy needs {self.measure or 'maxprob'} confidences; these "
                "outcomes have none (imported predictions: plan them with the agreement "
                "policy, or write the evaluation with edgeadapt evaluate)",
                field=CONF_KEYS[self.measure or "maxprob"],
            )
        return self.conf[:, cols]
