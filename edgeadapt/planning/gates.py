"""Learned exit gates: a tiny logistic model per kept state deciding whether to exit.

A threshold on one exit's max-prob ignores what the earlier exits said. A gate at kept
state j (every kept state but the last) reads the features of every exit seen so far,

- this exit's max-prob, margin and negative entropy (as the decision kernel computes them),
- the agreement of this exit's argmax with the earlier kept exits (the share of them
  that agree; 0 at the first),
- the previous gate's score (0 at the first),

and scores ``sigmoid(w . f + b)`` (numerics: `edgeadapt.kernel_ref.gate_score`, which the
C++ kernel matches). It is fitted on the calibration split to predict "exiting here is
not a loss": this state is right, or the reference state (the one the accuracy drop is
measured against) is wrong too. That target is what the risk control bounds, so a gate
also learns to let go of the samples no state gets right.

The scores then stand in for the confidences the threshold policy compares: the same
risk control (`edgeadapt.planning.risk.risk_control`, fixed-sequence tested on the held-out split)
picks the gate thresholds, and the promise is unchanged (it needs nothing of the
confidences). Every gate estimates the same probability, so one shared threshold
(`edgeadapt.planning.paths.shared_path`) is natural; the calibration split chooses between
it and per-gate thresholds (`edgeadapt.planning.risk.choose`). Fitting is plain Newton /
IRLS in float64 with an L2 penalty on the weights (not the bias), a few steps: five
features leave nothing to tune.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.plan import Gate
from edgeadapt.kernel_ref import MEASURES, agreement, gate_score

#: L2 penalty on the weights, in units of the summed log-loss (a prior worth ~1 sample).
L2 = 1.0
NEWTON_STEPS = 25


@dataclass(frozen=True)
class GateInputs:
    """What the gates read of each sample at each state, ``[N, S]``: `pred` int64
    (argmax) and the float32 `maxprob`, `margin` and `entropy` confidences."""

    pred: np.ndarray
    maxprob: np.ndarray
    margin: np.ndarray
    entropy: np.ndarray

    def __post_init__(self) -> None:
        pred = np.asarray(self.pred)
        if pred.ndim != 2 or pred.dtype.kind not in "iu":
            raise InputError(f"expected an integer [N, S] array, got {pred.shape}", field="pred")
        object.__setattr__(self, "pred", pred.astype(np.int64, copy=False))
        for name in MEASURES:
            values = np.asarray(getattr(self, name))
            if values.shape != pred.shape or values.dtype.kind != "f":
                raise InputError(f"expected a float array of shape {pred.shape}", field=name)
            if not np.isfinite(values).all():
                raise InputError("confidences must be finite", field=name)
            object.__setattr__(self, name, values.astype(np.float32, copy=False))

    def take(self, rows: np.ndarray) -> GateInputs:
        """The samples at `rows`."""
        return GateInputs(
            self.pred[rows], self.maxprob[rows], self.margin[rows], self.entropy[rows]
        )

    def select(self, cols: Sequence[int]) -> GateInputs:
        """The states at `cols`, in that order."""
        c = list(cols)
        return GateInputs(
            self.pred[:, c], self.maxprob[:, c], self.margin[:, c], self.entropy[:, c]
        )


def features(
    inputs: GateInputs, j: int, previous: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The gate features at state column j (`GATE_FEATURES` order), given the previous
    gate's float32 scores (ignored at j == 0)."""
    n = inputs.pred.shape[0]
    prev = np.asarray(previous, dtype=np.float32) if j else np.zeros(n, dtype=np.float32)
    return (
        inputs.maxprob[:, j],
        inputs.margin[:, j],
        inputs.entropy[:, j],
        agreement(inputs.pred[:, j], inputs.pred[:, :j]),
        prev,
    )


def scores(gates: Sequence[Gate], inputs: GateInputs) -> np.ndarray:
    """Every gate's float32 score per sample, ``[N, len(gates)]``, as the kernel
    computes them along the cascade (gate j reads gate j - 1's score)."""
    if len(gates) > inputs.pred.shape[1] - 1:
        raise InputError(
            f"{len(gates)} gates need at least {len(gates) + 1} states, got {inputs.pred.shape[1]}",
            field="gates",
        )
    n = inputs.pred.shape[0]
    out = np.empty((n, len(gates)), dtype=np.float32)
    prev = np.zeros(n, dtype=np.float32)
    for j, g in enumerate(gates):
        prev = gate_score(*features(inputs, j, prev), g.weights, g.bias)
        out[:, j] = prev
    return out


def policy_confidences(gates: Sequence[Gate], inputs: GateInputs) -> np.ndarray:
    """``[N, S]`` confidences for the threshold machinery: the gate scores of the S - 1
    gated states and a last column of zeros (the last state always answers)."""
    s = scores(gates, inputs)
    return np.concatenate([s, np.zeros((s.shape[0], 1), dtype=np.float32)], axis=1)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float = L2, steps: int = NEWTON_STEPS
) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (IRLS), float64.

    Minimises ``sum log-loss + l2 / 2 * |w|^2`` (the bias unpenalised); returns
    ``(w, b)``. The penalty keeps the Hessian positive definite, so a separable or
    one-class target still gives finite weights.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    a = np.concatenate([x, np.ones((n, 1))], axis=1)
    penalty = np.full(d + 1, float(l2))
    penalty[-1] = 1e-9  # the bias: unpenalised, but the system stays solvable
    theta = np.zeros(d + 1)
    for _ in range(steps):
        z = np.clip(a @ theta, -30.0, 30.0)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = a.T @ (p - y) + penalty * theta
        hess = (a * (p * (1.0 - p))[:, None]).T @ a + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if np.abs(step).max() < 1e-10:
            break
    return theta[:-1], float(theta[-1])


def fit_gates(
    inputs: GateInputs,
    correct: np.ndarray,
    reference_correct: np.ndarray,
    *,
    l2: float = L2,
    steps: int = NEWTON_STEPS,
) -> tuple[Gate, ...]:
    """One gate per state but the last, fitted in order on this split (gate j is fitted
    on the scores gate j - 1 gives here, as it will see them at run time).

    `correct` bool ``[N, S]`` is each state's correctness, `reference_correct` ``[N]``
    the reference state's: the target is ``correct[:, j] | ~reference_correct``.
    """
    correct = np.asarray(correct, dtype=bool)
    ref = np.asarray(reference_correct, dtype=bool)
    n, s = inputs.pred.shape
    if correct.shape != (n, s):
        raise InputError(f"expected shape ({n}, {s}), got {correct.shape}", field="correct")
    if ref.shape != (n,):
        raise InputError(f"expected shape ({n},), got {ref.shape}", field="reference_correct")
    gates: list[Gate] = []
    prev = np.zeros(n, dtype=np.float32)
    for j in range(s - 1):
        feats = features(inputs, j, prev)
        w, b = fit_logistic(
            np.stack([np.asarray(f, dtype=np.float64) for f in feats], axis=1),
            correct[:, j] | ~ref,
            l2=l2,
            steps=steps,
        )
        gate = Gate(weights=tuple(float(v) for v in w), bias=b)
        gates.append(gate)
        prev = gate_score(*feats, gate.weights, gate.bias)
    return tuple(gates)
