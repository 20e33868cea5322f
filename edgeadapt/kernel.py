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
- ``Policy(thresholds, hop_costs_ms, *, ewma=0.2, measure="maxprob", accuracies=None,
  cumulative=True, quantile=None)`` over the kept states: per-state thresholds (one per
  state but the last) and a cost table per hop that follows the measured costs (their
  EWMA mean, or with ``quantile=q`` their q-quantile: a plan made on p90 costs keeps
  tracking a p90) (hop i: the bundle steps that take the cascade
  from kept state i - 1 to kept state i), ``next(...) -> Action``, ``fits(next_hop,
  ...)``, ``observe(hop, ms)``, ``decay(hop)`` (for a hop skipped for the budget: back
  toward its initial cost), ``predicted_ms(hop)``, ``state_ms(state)`` and the AdaInf
  lookup table ``lookup(budget_ms) -> state | None``. The keywords ``step_costs_ms``,
  ``step`` and ``next_step`` still work, with a DeprecationWarning.
- Learned exit gates (`edgeadapt.planning.gates`; numerics in `edgeadapt.kernel_ref.gate_score`):
  ``Gate(weights, bias)``; ``gate_decide(logits, gate, threshold, history, previous)``
  at position ``history.shape[1]`` -> ``(pred, score, exit_mask, continue_idx,
  history, previous)`` of the rows that continue; ``gate_decide_into(...)`` the same
  into caller-owned arrays, compacting the running features in place; `GateRun`, the
  per-call state a cascade keeps to run a gate plan one kept state at a time.
- The content-aware scheduler of a branches plan (`edgeadapt.planning.scheduler`;
  numerics and rule in `edgeadapt.kernel_ref.scheduler_scores` and `scheduler_choice`):
  ``Estimator(weights, bias)``; ``schedule(logits, estimators, thresholds, costs_ms,
  available_ms=inf) -> (pred, scores, choice)`` on the first kept branch's logits,
  ``choice`` the kept position that answers.
- ``all_finite(x) -> bool``: whether a C-contiguous native float16/32/64 array holds no
  NaN or infinity (an exact bit test on the exponent bits).
- ``OneCall(run, input, dtype, shape, logits, classes, measure, *, policy, hop, state,
  result)``: a hop that answers alone (a one-state plan) as one call: ``one(x)`` accepts
  a plain C-contiguous batch of the input's dtype and shape with no NaN or infinity,
  calls ``run({input: x})``, answers every row, records the run's cost in ``policy`` and
  returns a ``result`` instance (`edgeadapt.cascade.model.Prediction`); None for a batch it
  cannot vouch for, ``(outputs, run_ns, elapsed_ns)`` for logits it cannot read in place.
- ``CascadeCall(route, input, dtype, shape, classes, *, policy, result, hop_overhead_ms,
  costs_known, last_alone, gates=None)``: a cascade of several hops at batch 1 as one
  call, run by the cascade engine of the kernel library (``cpp/include/edgeadapt/
  cascade.hpp``, which the native runner runs too): ``cascade(x, budget_ms=None)``
  accepts one row as `OneCall` accepts a batch and walks `route` (the kept states'
  hops, each ``(state, logits, calls)`` with ``calls`` its ``(session, feeds, step)``:
  ``session.unchecked_run`` is called with the feeds, each ``(name, is_input)``) with
  the budget checks, route choice (with a budget and the policy's accuracies, the
  target `Policy.lookup` picks: the hops up to it when the policy is cumulative, else
  it alone; with `last_alone`, no budget table's pick, the last hop alone), runs,
  output checks, costs and decisions of `edgeadapt.cascade.model.AdaptiveModel.predict`'s
  loop, thresholds or a gate plan's `gates` (one `Gate` per kept state but the last),
  and returns a ``result`` instance; None for a row, a budget or an output it cannot
  vouch for (then the loop runs the batch and words any error). An error of a
  session's call propagates; ``failed`` names the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

import edgeadapt._kernel as _kernel
from edgeadapt._kernel import (
    Action,
    CascadeCall,
    Estimator,
    Gate,
    OneCall,
    Policy,
    all_finite,
    confidence,
    decide,
    decide_into,
    gate_decide,
    gate_decide_into,
    schedule,
    version,
)
from edgeadapt.errors import EdgeadaptError
from edgeadapt.kernel_ref import MEASURES

__all__ = [
    "MEASURES",
    "Action",
    "CascadeCall",
    "Estimator",
    "Gate",
    "GateRun",
    "OneCall",
    "Policy",
    "all_finite",
    "cmake_dir",
    "confidence",
    "decide",
    "decide_buffers",
    "decide_into",
    "gate_decide",
    "gate_decide_into",
    "schedule",
    "version",
]


def cmake_dir() -> Path:
    """Directory holding edgeadaptConfig.cmake (pass it as -Dedgeadapt_DIR=...), so a
    native application can `find_package(edgeadapt)` the installed kernel.

    The wheel installs include/, lib/ and share/cmake/edgeadapt/ next to the compiled
    module, so the module's location finds them in regular and editable installs alike.
    """
    path = Path(_kernel.__file__).resolve().parent / "share" / "cmake" / "edgeadapt"
    if not (path / "edgeadaptConfig.cmake").is_file():
        raise EdgeadaptError(f"no edgeadaptConfig.cmake under {path}: reinstall edgeadapt")
    return path


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


class _GateLike(Protocol):
    @property
    def weights(self) -> Sequence[float]: ...
    @property
    def bias(self) -> float: ...


class GateRun:
    """A gate plan's decisions along one cascade call, one kept state at a time.

    It holds the running per-row features the gates read (each active row's argmax at
    the earlier kept states and the previous gate's score), compacted by the kernel as
    rows exit, so a caller handles only its own activations. Use it where the threshold
    cascade calls `decide_into`:

        run = GateRun(plan.gates, plan.measure)   # once, at load
        run.start(batch)               # at the start of each predict call
        k = run.decide_into(logits, threshold, pred, conf, exit_mask, continue_idx)

    called once per kept state in order on the logits of the rows still active (in the
    order ``continue_idx`` left them); outputs as `decide_into`, with the gate's score as
    ``conf``. At the last kept state every row answers: it gives the `measure`
    confidence and ``continue_idx`` as `decide_into` with `threshold` would.
    """

    def __init__(
        self, gates: Sequence[Gate | _GateLike], measure: str = "maxprob", batch: int = 1
    ) -> None:
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
        # A plan's gates (edgeadapt.formats.plan.Gate) are taken as they are: weights and bias.
        self.gates = tuple(
            g if isinstance(g, Gate) else Gate(list(g.weights), float(g.bias)) for g in gates
        )
        self.measure = measure
        self._history = np.zeros((0, max(1, len(self.gates))), dtype=np.int64)
        self._previous = np.zeros(0, dtype=np.float32)
        self._position = 0
        self.start(batch)

    @property
    def position(self) -> int:
        """The kept state the next `decide_into` decides for."""
        return self._position

    def start(self, batch: int) -> None:
        """Begin a call on `batch` rows (grows the buffers when needed)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if self._previous.shape[0] < batch:
            self._history = np.zeros((batch, self._history.shape[1]), dtype=np.int64)
            self._previous = np.zeros(batch, dtype=np.float32)
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
        pos = self._position
        if pos > len(self.gates):
            raise ValueError(f"the plan has {len(self.gates) + 1} kept states; call start() first")
        if pos == len(self.gates):
            k = decide_into(logits, threshold, pred, conf, exit_mask, continue_idx, self.measure)
        else:
            k = gate_decide_into(
                logits,
                self.gates[pos],
                threshold,
                pos,
                self._history,
                self._previous,
                pred,
                conf,
                exit_mask,
                continue_idx,
            )
        self._position = pos + 1
        return k
