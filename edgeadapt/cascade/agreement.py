"""The agreement policy along one cascade call: exit when the states run so far agree.

At kept state j the policy compares the state's prediction with those of the kept states
before it (`edgeadapt.kernel_ref.agreement_shares`, the readable specification) and
exits the rows whose share of agreeing states reaches the state's threshold; the last
kept state always answers. `AgreementRun` keeps each active row's earlier predictions
and offers the interface of `edgeadapt.kernel.GateRun`, so `AdaptiveModel.predict`'s
loop calls it where a threshold cascade calls `decide_into`:

    run = AgreementRun(len(plan.states), plan.measure)   # once, at load
    run.start(batch)                    # at the start of each predict call
    k = run.decide_into(logits, threshold, pred, conf, exit_mask, continue_idx)

called once per kept state in order on the logits of the rows still active (in the
order ``continue_idx`` left them). ``conf`` is the agreement share at the states that
decide and the `measure` confidence at the last one. It runs in Python around the
kernel's `decide_into`; the native batch-1 cascade declines such plans.
"""

from __future__ import annotations

import math

import numpy as np

from edgeadapt.kernel import decide_into
from edgeadapt.kernel_ref import MEASURES, agreement


class AgreementRun:
    """An agreement plan's decisions along one cascade call, one kept state at a time."""

    def __init__(self, states: int, measure: str = "maxprob", batch: int = 1) -> None:
        if states < 1:
            raise ValueError(f"a plan keeps at least one state, got {states}")
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
        self.states = states
        self.measure = measure
        self._history = np.zeros((0, max(1, states - 1)), dtype=np.int64)
        self._position = 0
        self.start(batch)

    def start(self, batch: int) -> None:
        """Begin a call on `batch` rows (grows the buffer when needed)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if self._history.shape[0] < batch:
            self._history = np.zeros((batch, self._history.shape[1]), dtype=np.int64)
        self._position = 0

    def decide_into(
        self,
        logits: np.ndarray,
        threshold: float,
        pred: np.ndarray,
        conf: np.ndarray,
        exit_mask: np.ndarray,
        continue_idx: np.ndarray,
    ) -> int:
        """Decide the active rows at the next kept state; returns K, the rows that continue."""
        j = self._position
        if j >= self.states:
            raise ValueError(f"the plan has {self.states} kept states; call start() first")
        self._position = j + 1
        if j == self.states - 1:
            return decide_into(logits, threshold, pred, conf, exit_mask, continue_idx, self.measure)
        n = logits.shape[0]
        decide_into(logits, math.inf, pred, conf, exit_mask, continue_idx, self.measure)
        p = pred[:n]
        history = self._history[:n, :j]
        share = np.where(p >= 0, agreement(p, history), 0.0).astype(np.float32)
        conf[:n] = share
        exit_mask[:n] = share.astype(np.float64) >= threshold
        keep = np.flatnonzero(~exit_mask[:n])
        k = keep.size
        continue_idx[:k] = keep
        self._history[:k, :j] = history[keep]
        self._history[:k, j] = p[keep]
        return k
