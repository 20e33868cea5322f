"""The decision kernel from Python: confidence, batch exit decisions, the budget policy.

A thin, typed face over the compiled `edgeadapt._kernel` (the header-only C++ kernel in
`cpp/include/edgeadapt/kernel.hpp`); `edgeadapt.kernel_ref` is the numpy specification
it is tested against.

Logits are float32 [batch, classes], C-contiguous: they are read in place (zero-copy).
Another dtype or layout is a TypeError naming the one explicit conversion to make
(``np.ascontiguousarray(x, dtype=np.float32)``); wrong rank, an empty batch, fewer than
2 classes, a NaN threshold or a negative/NaN budget are ValueErrors. The GIL is released
while a batch is processed.

- ``confidence(logits, measure="maxprob") -> float32[B]``; measures: ``maxprob``,
  ``margin`` (top-1 minus top-2 probability) and ``entropy`` (negative entropy, so
  higher = more confident). A row holding NaN or Inf gets NaN.
- ``decide(logits, threshold, measure="maxprob") -> (pred, conf, exit_mask,
  continue_idx)``: int64[B] argmax (first on ties; -1 for a NaN/Inf row), float32[B],
  bool[B] (conf >= threshold; a NaN row never exits), int64[K] rows that continue.
- ``decide_into(logits, threshold, pred, conf, exit_mask, continue_idx,
  measure="maxprob") -> K``: the same into caller-owned arrays (see `decide_buffers`),
  for the cascade's hot path; ``continue_idx[:K]`` holds the rows that continue.
- ``Policy(thresholds, step_costs_ms, *, ewma=0.2, measure="maxprob", accuracies=None,
  cumulative=True)``: per-state thresholds (one per state but the last), an EWMA cost
  table per step, ``next(...) -> Action``, ``fits(...)``, ``observe(...)``,
  ``decay(step)`` (for a step skipped for the budget: back toward its initial cost),
  ``predicted_ms(step)``, ``state_ms(state)`` and the AdaInf lookup table
  ``lookup(budget_ms) -> state | None``.
"""

from __future__ import annotations

import numpy as np

from edgeadapt._kernel import Action, Policy, confidence, decide, decide_into, version

MEASURES = ("maxprob", "margin", "entropy")

__all__ = [
    "MEASURES",
    "Action",
    "Policy",
    "confidence",
    "decide",
    "decide_buffers",
    "decide_into",
    "version",
]


def decide_buffers(batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Output arrays for `decide_into` with room for `batch` rows: allocate once, reuse."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return (
        np.empty(batch, dtype=np.int64),
        np.empty(batch, dtype=np.float32),
        np.empty(batch, dtype=np.bool_),
        np.empty(batch, dtype=np.int64),
    )
