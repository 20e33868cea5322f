"""Synthetic per-sample outcomes for the calibration and planner tests: nested
correctness (a state is right wherever a cheaper one is) with confidences that rise with
the margin between a state's skill and a sample's difficulty, and rising cascade costs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeadapt.formats.evaluation import Evaluation


def nested_outcomes(
    n: int, s: int, seed: int, noise: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence ``[n, s]`` float32, correct ``[n, s]`` bool, cascade cost ``[s]``)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    skill = np.sort(rng.uniform(0.2, 1.0, s))
    correct = difficulty[:, None] < skill[None, :]
    logit = 4 * (skill[None, :] - difficulty[:, None]) + noise * rng.normal(size=(n, s))
    conf = (1 / (1 + np.exp(-logit))).astype(np.float32)
    cost = np.cumsum(rng.uniform(0.1, 1.0, s))
    return conf, correct, cost


def gate_logits(n: int, s: int, c: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and the float32 logits ``[n, c]`` of s states that grow surer (and more
    often right) along the cascade."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    out = []
    for j in range(s):
        x = rng.standard_normal((n, c)).astype(np.float32)
        strength = rng.random(n) * (1.0 + 2.0 * j)
        x[np.arange(n), labels] += strength.astype(np.float32) * 2.0
        out.append(x)
    return labels, out


def gate_evaluation(
    labels: np.ndarray, logits: list[np.ndarray], names: Sequence[str] | None = None
) -> Evaluation:
    """An evaluation of those states (named `names`, else s0, s1, ...) with every
    measure's confidences (what gates read), computed by the decision kernel."""
    from edgeadapt import kernel
    from edgeadapt.kernel_ref import predict_confidence

    preds, confs = [], {m: [] for m in ("maxprob", "margin", "entropy")}
    for x in logits:
        preds.append(predict_confidence(x)[0])
        for m in confs:
            confs[m].append(kernel.confidence(x, m))
    return Evaluation(
        labels,
        np.stack(preds, axis=1),
        np.array(names if names is not None else [f"s{j}" for j in range(len(logits))]),
        np.stack(confs["maxprob"], axis=1),
        conf_margin=np.stack(confs["margin"], axis=1),
        conf_entropy=np.stack(confs["entropy"], axis=1),
    )
