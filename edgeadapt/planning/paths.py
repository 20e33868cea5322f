"""The threshold paths a risk-controlled plan tests, learned on its learning split.

A path is a list of threshold vectors (``[S-1]`` each, ``inf``: never exit there) that
starts at "never exit early" (the last state alone) and moves toward cheaper exits in
small steps; `edgeadapt.planning.risk` tests it in order on the testing split and keeps
the cheapest point before the first one that fails. A path is only as good as the point
where its test stops, so the step size and direction matter more than its end.

- `frontier_path` (per-exit thresholds): the cost/drop frontier of this split. For a
  multiplier ``lam`` (ms per sample lost) coordinate descent minimises ``cost + lam *
  drop`` (exact line searches, `edgeadapt.planning.calibrate`), warm-started as lam
  falls; the distinct optima are vertices of the frontier's lower convex hull, each
  the cheapest thresholds for the drop it reaches here. Between two vertices the path
  moves each exit's count of passing samples linearly (`BETWEEN` steps), so the test
  meets small steps everywhere.
- `shared_path` (one threshold for every exit): falls through shares of the pooled
  scores down to the lowest threshold whose drop here is at most `max_drop`. Natural
  for scores that estimate one probability at every exit (learned gates), and robust
  where per-exit thresholds fit the split's noise.

The drop counted here is the promise's (`PROMISES`): ``net`` counts losses minus
gains against the reference state, ``loss`` the losses only.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.plan import PROMISE_KINDS, PROMISE_PATHS
from edgeadapt.planning.calibrate import NEVER, Search, exit_states

#: What a promise bounds: ``net`` (losses minus gains: the accuracy drop) or ``loss``
#: (losses alone: new errors against the reference).
PROMISES = PROMISE_KINDS
#: The path kinds, in the order ties are broken.
PATH_KINDS = PROMISE_PATHS
#: Frontier points inserted between two vertices of the frontier.
BETWEEN = 8
#: Multipliers the frontier is traced at, from "no loss is worth any saving" down.
LAMBDA_STEPS = 60
#: How far past `max_drop` (here) the frontier goes, so the test, not this split, ends it.
REACH = 2.0
#: Steps of the shared path from "never exit early" to its end.
PATH_POINTS = 100
#: Shared-threshold candidates (quantiles of the learning split's scores) that
#: `shared_path` scans for its end point.
SHARED_GRID = 400


def check_promise(promise: str) -> str:
    """`promise` when it is one of `PROMISES`, else an error naming the field."""
    if promise not in PROMISES:
        raise InputError(f"must be one of {list(PROMISES)}, got {promise!r}", field="promise")
    return promise


def drop_counts(reference_correct: np.ndarray, policy_correct: np.ndarray) -> tuple[int, int]:
    """(losses, gains): samples the reference gets right and the policy wrong, and the
    other way round."""
    ref = np.asarray(reference_correct, dtype=bool)
    pol = np.asarray(policy_correct, dtype=bool)
    return int(np.count_nonzero(ref & ~pol)), int(np.count_nonzero(~ref & pol))


def dropped(losses: int, gains: int, promise: str) -> int:
    """The samples a promise counts as dropped: losses minus gains (net), or losses."""
    return losses - gains if promise == "net" else losses


def _kept(correct: np.ndarray, reference_correct: np.ndarray, promise: str) -> np.ndarray:
    """Per sample and state, what the promise counts as kept: right (net), or not a
    loss (loss: right, or the reference is wrong too)."""
    if promise == "net":
        return correct
    return correct | ~np.asarray(reference_correct, dtype=bool)[:, None]


def _unseen(path: list[np.ndarray], t: np.ndarray, recent: int = 4) -> bool:
    return not any(np.array_equal(t, p) for p in path[-recent:])


def frontier_path(
    conf: np.ndarray,
    correct: np.ndarray,
    cost: np.ndarray,
    reference_correct: np.ndarray,
    *,
    max_drop: float,
    promise: str = "net",
    between: int = BETWEEN,
) -> list[np.ndarray]:
    """Per-exit thresholds along this split's cost/drop frontier (module docstring),
    from "never exit early" to ``REACH * max_drop`` of drop here."""
    n, s = conf.shape
    never = np.full(s - 1, NEVER)
    if s == 1:
        return [never]
    kept = _kept(correct, reference_correct, promise)
    search = Search(conf, kept, np.asarray(cost, dtype=np.float64))
    # the split's count kept by the reference state: dropped = start - kept by the policy
    start = int(np.count_nonzero(reference_correct)) if promise == "net" else n
    limit = REACH * max_drop * n
    spread = float(np.ptp(cost)) or 1.0
    vertices, t = [never], never.copy()
    # from one sample dropped outweighing a saving on every sample, down
    for lam in np.geomspace(spread * n, spread * 1e-3, LAMBDA_STEPS):
        t = search.descend(t, 0, float(lam))
        if start - search.totals(t)[1] > limit:
            break
        if _unseen(vertices, t):
            vertices.append(t.copy())
    return _interpolate(conf, vertices, between)


def _interpolate(conf: np.ndarray, vertices: list[np.ndarray], between: int) -> list[np.ndarray]:
    """`between` steps from each vertex to the next, each exit's count of passing
    samples moving linearly; thresholds are confidences of the split."""
    ranked = -np.sort(-conf[:, :-1], axis=0)
    exits = range(conf.shape[1] - 1)

    def passing(t: np.ndarray) -> np.ndarray:
        return np.array([np.count_nonzero(conf[:, i] >= t[i]) for i in exits])

    path = [vertices[0]]
    for a, b in itertools.pairwise(vertices):
        ca, cb = passing(a), passing(b)
        for k in range(1, between + 1):
            counts = np.rint(ca + (cb - ca) * k / between).astype(int)
            t = np.array([ranked[m - 1, i] if m else NEVER for i, m in enumerate(counts)])
            if _unseen(path, t):
                path.append(t)
    return path


def shared_path(
    conf: np.ndarray,
    correct: np.ndarray,
    reference_correct: np.ndarray,
    *,
    max_drop: float,
    promise: str = "net",
    points: int = PATH_POINTS,
    grid: int = SHARED_GRID,
) -> list[np.ndarray]:
    """One threshold for every exit (module docstring): `points` shared thresholds,
    evenly spaced in the share of scores they pass, from "never exit early" down to the
    lowest of `grid` whose drop here is at most `max_drop` (found by bisection: the drop
    rises as the threshold falls). Repeated points are dropped."""
    n, s = conf.shape
    never = np.full(s - 1, NEVER)
    if s == 1:
        return [never]
    ref = np.asarray(reference_correct, dtype=bool)
    pooled = np.sort(conf[:, :-1].ravel())[::-1]
    rows = np.arange(n)
    levels = [
        float(pooled[min(pooled.size, math.ceil(k * pooled.size / grid)) - 1])
        for k in range(1, grid + 1)
    ]

    def within(k: int) -> bool:
        state = exit_states(conf, np.full(s - 1, levels[k - 1]))
        return dropped(*drop_counts(ref, correct[rows, state]), promise) <= max_drop * n

    end, hi = 0, grid  # levels 1..end are within max_drop; the first beyond is in (end, hi]
    while end < hi:
        mid = (end + hi + 1) // 2
        if within(mid):
            end = mid
        else:
            hi = mid - 1
    path = [never]
    for i in range(1, points + 1):
        k = math.ceil(end * i / points)
        if k == 0:
            continue
        t = np.full(s - 1, levels[k - 1])
        if _unseen(path, t):
            path.append(t)
    return path


def learned_path(
    kind: str,
    conf: np.ndarray,
    correct: np.ndarray,
    cost: np.ndarray,
    reference_correct: np.ndarray,
    *,
    max_drop: float,
    promise: str,
) -> list[np.ndarray]:
    """The path of `kind` (`PATH_KINDS`) learned on this split."""
    if kind == "frontier":
        return frontier_path(
            conf, correct, cost, reference_correct, max_drop=max_drop, promise=promise
        )
    if kind == "shared":
        return shared_path(conf, correct, reference_correct, max_drop=max_drop, promise=promise)
    raise InputError(f"must be one of {list(PATH_KINDS)}, got {kind!r}", field="path")
