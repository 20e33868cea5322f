"""Subsets of states for the oracle: the best k (paper section 4.2.1) and the curve.

Oracle subsets: the best subset of k states, exact, and the R_ratio-vs-k curve, with two
objectives:

- **alpha = 1** (eq. 9, from costs and accuracies only): the least ``R_oracle`` among
  subsets of k states that keep the top state, so ``A_oracle = A_N``. Writing eq. 9 for
  a subset ``f = j_1 < ... < j_k = N`` as ``R_f (1 - A_N + A_f) + sum_m R_{j_m}
  (A_{j_m} - A_{j_{m-1}})`` makes it a shortest path with exactly k nodes through
  states in cost order: a dynamic program, O(N^3) for every k at once.
- **exact** (eq. 4/5, from a correctness matrix): the highest ``A_oracle`` among subsets
  of k states, ties broken by the least ``R_oracle``. With ``G(Q)`` the number of
  samples that every state of Q gets wrong (a subset-sum transform of the histogram of
  per-sample correctness patterns, O(S 2^S)), a subset's oracle is eq. 5 over the
  prefixes of the subset, and adding its costliest state h to the rest T' gives
  ``n R(T) = n R(T') + (R_h - R_low(T')) (G(T') - G(T))``. So every subset of every size
  is scored exactly in O(S 2^S) — up to `MAX_TABLE_STATES` states. Above that, k-subsets
  are enumerated exactly while there are at most `MAX_ENUMERATED` of them; beyond, a
  greedy + swap local search answers, labelled ``heuristic``.

``R_ratio = R_N / R_oracle`` with ``R_N`` the baseline's cost: by default the costliest
state given; pass `r_n` to measure against another baseline (the CLI uses the most
accurate state). `subset_analysis` is what ``edgeadapt subset`` prints: the curve on a
state table, the baseline and the states it leaves out.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.statetable import table_states
from edgeadapt.oracle.equations import pareto_envelope, require_monotone, state_space

__all__ = [
    "MAX_ENUMERATED",
    "MAX_TABLE_STATES",
    "SubsetAnalysis",
    "SubsetChoice",
    "best_subset_alpha1",
    "best_subset_exact",
    "subset_analysis",
    "subset_curve_alpha1",
    "subset_curve_exact",
    "table_subsets",
]

MAX_TABLE_STATES = 20  # 2^20 subsets scored at once (~40 MB of tables)
MAX_ENUMERATED = 50_000  # k-subsets scored one by one above MAX_TABLE_STATES
_TOL = 1e-9


@dataclass(frozen=True)
class SubsetChoice:
    """The best subset of one size: state positions (cost order) and its oracle point.

    `method` is ``alpha=1`` (DP, exact), ``exact`` (exhaustive, exact) or ``heuristic``
    (local search; not guaranteed optimal).
    """

    states: tuple[int, ...]
    r_oracle: float
    a_oracle: float
    r_ratio: float
    method: str

    @property
    def k(self) -> int:
        """Subset size."""
        return len(self.states)

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        """The entry ``edgeadapt subset --json`` prints, states named by `names`."""
        return {
            "k": self.k,
            "states": [names[i] for i in self.states],
            "r_oracle": self.r_oracle,
            "a_oracle": self.a_oracle,
            "r_ratio": self.r_ratio if math.isfinite(self.r_ratio) else None,
            "method": self.method,
        }

    def relabel(self, order: Sequence[int] | np.ndarray) -> SubsetChoice:
        """The same choice with state positions mapped through `order` (cost order back
        to the caller's order, say)."""
        return SubsetChoice(
            tuple(int(order[i]) for i in self.states),
            self.r_oracle,
            self.a_oracle,
            self.r_ratio,
            self.method,
        )


def _check_k(k: int, n: int) -> None:
    if int(k) != k or not 1 <= k <= n:
        raise InputError(f"k must be an integer in 1..{n} (the number of states), got {k}")


def _ratio(r_n: float, r: float) -> float:
    return float(r_n / r) if r > 0 else math.inf


def _sorted_costs(costs: Any) -> np.ndarray:
    r = np.asarray(costs, dtype=np.float64).reshape(-1)
    if r.size == 0 or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise InputError("costs must be finite, >= 0, and at least one")
    if np.any(np.diff(r) < 0):
        raise InputError("costs must be in non-decreasing order")
    return r


# ---------------------------------------------------------------- alpha = 1 DP


def subset_curve_alpha1(
    costs: Any, accuracies: Any, r_n: float | None = None
) -> list[SubsetChoice]:
    """Best alpha = 1 subset for every k = 1..N (index k-1), states in cost order with
    non-decreasing accuracies; each keeps state N."""
    r = _sorted_costs(costs)
    base = float(r[-1]) if r_n is None else r_n
    a = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    if a.size != r.size:
        raise InputError(f"{r.size} costs but {a.size} accuracies")
    if np.any(np.diff(a) < 0):
        raise InputError("accuracies must not decrease with cost (use the Pareto envelope)")
    n = r.size
    edge = r[None, :] * (a[None, :] - a[:, None])  # edge[p, q]: R_q (A_q - A_p)
    edge[np.tril_indices(n)] = np.inf  # only p < q
    best = r * (1.0 - a[-1] + a)  # paths of one node, starting at f
    parents: list[np.ndarray] = []
    out: list[SubsetChoice] = []
    for k in range(1, n + 1):
        if k > 1:
            total = best[:, None] + edge
            parent = np.argmin(total, axis=0)
            best = total[parent, np.arange(n)]
            parents.append(parent)
        path = [n - 1]
        for parent in reversed(parents):
            path.append(int(parent[path[-1]]))
        value = float(best[n - 1])
        out.append(
            SubsetChoice(tuple(reversed(path)), value, float(a[-1]), _ratio(base, value), "alpha=1")
        )
    return out


def best_subset_alpha1(
    costs: Any, accuracies: Any, k: int, r_n: float | None = None
) -> SubsetChoice:
    """Least alpha = 1 ``R_oracle`` (eq. 9) over k-subsets that keep the top state."""
    _check_k(k, np.asarray(costs).size)
    return subset_curve_alpha1(costs, accuracies, r_n)[k - 1]


# ----------------------------------------------------------- exact (table)


def _patterns(correct: np.ndarray) -> np.ndarray:
    """Per sample, its correctness as an integer: bit i set when state i is correct."""
    packed = np.packbits(correct, axis=1, bitorder="little").astype(np.int64)
    codes = np.zeros(correct.shape[0], dtype=np.int64)
    for j in range(packed.shape[1]):
        codes |= packed[:, j] << (8 * j)
    return codes


def _tables(correct: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every subset mask Q: G[Q] (samples all of Q gets wrong) and R[Q] (its oracle
    cost, eq. 4/5). Bit i of Q is the i-th cheapest state."""
    n, s = correct.shape
    size = 1 << s
    table = np.bincount(_patterns(correct), minlength=size).astype(np.int64)
    for i in range(s):  # subset sums: table[P] = samples whose correct set lies in P
        view = table.reshape(-1, 2, 1 << i)
        view[:, 1, :] += view[:, 0, :]
    wrong_all = table[::-1].copy()  # G[Q] = samples correct only outside Q
    r = np.zeros(size, dtype=np.float64)
    low = np.zeros(size, dtype=np.float64)
    for h in range(s):
        lo, hi = 1 << h, 1 << (h + 1)
        rest = np.arange(lo)
        r[lo:hi] = r[rest] + (cost[h] - low[rest]) * (wrong_all[rest] - wrong_all[lo:hi]) / n
        low[lo:hi] = low[rest]
        r[lo] = cost[h]
        low[lo] = cost[h]
    return wrong_all, r


def _bits(mask: int) -> tuple[int, ...]:
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


def _table_curve(
    correct: np.ndarray, cost: np.ndarray, ks: list[int], r_n: float
) -> list[SubsetChoice]:
    n, s = correct.shape
    wrong_all, r = _tables(correct, cost)
    size = 1 << s
    popcount = np.zeros(size, dtype=np.int8)
    for i in range(s):
        popcount.reshape(-1, 2, 1 << i)[:, 1, :] += 1
    out = []
    for k in ks:
        masks = np.flatnonzero(popcount == k)
        g = wrong_all[masks]
        tied = masks[g == g.min()]
        mask = int(tied[np.argmin(r[tied])])
        out.append(
            SubsetChoice(
                _bits(mask),
                float(r[mask]),
                1.0 - float(wrong_all[mask]) / n,
                _ratio(r_n, float(r[mask])),
                "exact",
            )
        )
    return out


# ----------------------------------------------- exact (enumerate) / heuristic


class _Scorer:
    """Scores one subset on the distinct correctness rows (weighted by their counts)."""

    def __init__(self, correct: np.ndarray, cost: np.ndarray) -> None:
        rows, counts = np.unique(correct, axis=0, return_counts=True)
        self.rows = rows
        self.weights = counts.astype(np.float64)
        self.n = float(correct.shape[0])
        self.cost = cost

    def __call__(self, states: tuple[int, ...]) -> tuple[float, float]:
        """(covered samples, R_oracle) of the states (sorted positions)."""
        sub = self.rows[:, list(states)]
        first = np.argmax(sub, axis=1)
        hit = sub[np.arange(sub.shape[0]), first]
        paid = np.where(hit, self.cost[list(states)][first], self.cost[states[0]])
        return float(self.weights @ hit), float(self.weights @ paid) / self.n


def _better(a: tuple[float, float], b: tuple[float, float] | None) -> bool:
    return b is None or a[0] > b[0] or (a[0] == b[0] and a[1] < b[1])


def _search(score: _Scorer, s: int, k: int) -> tuple[tuple[int, ...], tuple[float, float], str]:
    if math.comb(s, k) <= MAX_ENUMERATED:
        best: tuple[float, float] | None = None
        chosen: tuple[int, ...] = ()
        for states in itertools.combinations(range(s), k):
            value = score(states)
            if _better(value, best):
                best, chosen = value, states
        assert best is not None
        return chosen, best, "exact"
    current: tuple[int, ...] = ()
    for _ in range(k):  # greedy: add the state that helps most
        current = min(
            (tuple(sorted((*current, j))) for j in range(s) if j not in current),
            key=lambda t: (-score(t)[0], score(t)[1]),
        )
    value = score(current)
    improved = True
    while improved:  # swap search: replace one state while it helps
        improved = False
        for out_state, in_state in itertools.product(current, range(s)):
            if in_state in current:
                continue
            trial = tuple(sorted(j if j != out_state else in_state for j in current))
            trial_value = score(trial)
            if _better(trial_value, value):
                current, value, improved = trial, trial_value, True
                break
    return current, value, "heuristic"


# ------------------------------------------------------------------ public


def subset_curve_exact(
    correct: Any, costs: Any, ks: list[int] | None = None, r_n: float | None = None
) -> list[SubsetChoice]:
    """Best subsets for each k in `ks` (default 1..S) by the exact oracle: the highest
    ``A_oracle``, ties by the least ``R_oracle``. `correct` is bool ``[samples, S]`` with
    columns in cost order (`costs` non-decreasing)."""
    cost = _sorted_costs(costs)
    c = np.asarray(correct)
    if c.dtype != np.bool_ or c.ndim != 2 or c.shape[1] != cost.size or c.shape[0] == 0:
        raise InputError(
            f"expected a bool [samples>0, {cost.size}] correctness matrix, got {c.dtype} {c.shape}"
        )
    s = cost.size
    base = float(cost[-1]) if r_n is None else r_n
    for k in ks or ():
        _check_k(k, s)
    ks = list(range(1, s + 1)) if ks is None else [int(k) for k in ks]
    if s <= MAX_TABLE_STATES:
        return _table_curve(c, cost, ks, base)
    score = _Scorer(c, cost)
    out = []
    for k in ks:
        states, (covered, r_oracle), method = _search(score, s, k)
        out.append(
            SubsetChoice(states, r_oracle, covered / score.n, _ratio(base, r_oracle), method)
        )
    return out


def best_subset_exact(correct: Any, costs: Any, k: int, r_n: float | None = None) -> SubsetChoice:
    """Best k states by the exact oracle (see `subset_curve_exact`)."""
    return subset_curve_exact(correct, costs, [k], r_n)[0]


# --------------------------------------------------------- the subset analysis


@dataclass(frozen=True)
class SubsetAnalysis:
    """What ``edgeadapt subset`` prints: the best subset of each size asked (`choices`,
    positions into `names`, the states in cost order), against the baseline ``S_N``.

    `curve` says the whole curve k = 1..N was asked (else one k); `dominated` lists the
    states left out by the Pareto envelope, `ignored` the table rows the evaluation has
    no results for.
    """

    names: tuple[str, ...]
    choices: tuple[SubsetChoice, ...]
    baseline: str
    r_n: float
    curve: bool
    dominated: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def best(self) -> SubsetChoice:
        """The largest subset asked (the one of size k when one k was asked)."""
        return self.choices[-1]

    def to_json(self) -> dict[str, Any]:
        entries = [c.to_json(self.names) for c in self.choices]
        out: dict[str, Any] = {**entries[-1], "baseline": self.baseline, "r_n": self.r_n}
        if self.curve:
            out["curve"] = entries
        if self.dominated:
            out["dominated"] = list(self.dominated)
        if self.ignored:
            out["ignored"] = list(self.ignored)
        return out


def subset_analysis(
    names: Sequence[str],
    costs: Sequence[float] | np.ndarray,
    accuracies: Sequence[float] | np.ndarray,
    correct: np.ndarray | None = None,
    *,
    k: int | None = None,
    envelope: bool = False,
    source: str | None = None,
    ignored: Sequence[str] = (),
) -> SubsetAnalysis:
    """The best subset of size `k` (default: every size) of the states: by alpha = 1
    without `correct` (bool ``[samples, states]``, columns in the order of `names`), by
    the exact oracle with it. R_ratio is against the most accurate state (the costliest
    when accuracy rises with cost); `envelope` searches only the Pareto envelope."""
    space = state_space(names, costs, accuracies, source=source)
    front, _ = pareto_envelope(space)
    r_n, baseline = float(front.costs[-1]), front.names[-1]
    dominated: list[str] = []
    if envelope:
        space, dominated = pareto_envelope(space)
    elif correct is None:
        require_monotone(space, source=source)
    if k is not None and not 1 <= k <= len(space):
        raise InputError(f"must be in 1..{len(space)} (the number of states), got {k}", source="k")
    if correct is None:
        full = subset_curve_alpha1(space.costs, space.accuracies, r_n)
        curve = full if k is None else [full[k - 1]]
    else:
        ks = None if k is None else [k]
        curve = subset_curve_exact(correct[:, space.order], space.costs, ks, r_n)
    return SubsetAnalysis(
        space.names, tuple(curve), baseline, r_n, k is None, tuple(dominated), tuple(ignored)
    )


def table_subsets(
    table: str | os.PathLike[str],
    evaluation: str | os.PathLike[str] | None = None,
    *,
    k: int | None = None,
    envelope: bool = False,
) -> SubsetAnalysis:
    """`subset_analysis` of a state table (`edgeadapt.formats.statetable.table_states`): by the
    exact oracle when an evaluation gives per-sample results."""
    states = table_states(table, evaluation)
    return subset_analysis(
        states.names,
        states.costs,
        states.accuracies,
        states.correct,
        k=k,
        envelope=envelope,
        source=states.source,
        ignored=states.ignored,
    )
