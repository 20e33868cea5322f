"""Synthetic per-sample outcomes for the calibration and planner tests: nested
correctness (a state is right wherever a cheaper one is) with confidences that rise with
the margin between a state's skill and a sample's difficulty, and rising cascade costs."""

from __future__ import annotations

import numpy as np


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
