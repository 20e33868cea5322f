"""Adaptive-oracle bounds (Hor et al. 2024, `papers/adaptive-inference-theoretical-limits.md`).

A state space is a list of states with a cost ``R_i`` and an accuracy ``A_i``; the oracle
sends every input to the cheapest state that classifies it correctly. This module holds
the paper's equations as plain functions over arrays in cost order:

- `exact_oracle` (eq. 4/5) and `alphas` from a per-sample correctness matrix;
- `bound_constant_alpha` (eq. 8), `bound_alpha1` (eq. 9), `continuous_bound` (eq. 13);
- `smallest_state_test` (appendix A.2.3, with ``R_2``), `gains` (dR, R_ratio, dA);
- `state_space` / `pareto_envelope`: input checks, and the envelope offered when the
  accuracies break the paper's assumption ``A_1 <= ... <= A_N``;
- `bound_summary`: every bound of one state space, as a `BoundSummary` (its
  `to_json()` is what `edgeadapt bound --json` prints).

Costs are in any unit (GFLOPs, ms); only their ratios and differences matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgeadapt.errors import InputError

__all__ = [
    "Bound",
    "BoundSummary",
    "ExactFigures",
    "Gains",
    "OraclePoint",
    "OracleResult",
    "SmallestStateTest",
    "StateRow",
    "StateSpace",
    "alphas",
    "bound_alpha1",
    "bound_constant_alpha",
    "bound_summary",
    "continuous_bound",
    "exact_oracle",
    "gains",
    "pareto_envelope",
    "smallest_state_test",
    "state_space",
]


@dataclass(frozen=True)
class StateSpace:
    """Validated states in cost order (ties keep the input order)."""

    names: tuple[str, ...]
    costs: np.ndarray
    accuracies: np.ndarray
    order: np.ndarray  # position of each state in the caller's input

    def __len__(self) -> int:
        return len(self.names)

    def is_monotone(self) -> bool:
        """True when accuracies never decrease with cost (the paper's eq. 3)."""
        return bool(np.all(np.diff(self.accuracies) >= 0))

    def take(self, rows: Sequence[int] | np.ndarray) -> StateSpace:
        """The states at `rows` (positions in this space, kept in cost order)."""
        rows = np.sort(np.asarray(rows, dtype=np.intp))
        return StateSpace(
            tuple(self.names[i] for i in rows),
            self.costs[rows],
            self.accuracies[rows],
            self.order[rows],
        )


@dataclass(frozen=True)
class Bound:
    """An oracle operating point: expected cost and accuracy."""

    r_oracle: float
    a_oracle: float


@dataclass(frozen=True)
class Gains:
    """The paper's opportunity figures against always running the costliest state."""

    delta_r: float  # R_N - R_oracle
    r_ratio: float  # R_N / R_oracle (inf when R_oracle is 0)
    delta_a: float  # A_oracle - A_N


@dataclass(frozen=True)
class OracleResult:
    """Exact oracle (eq. 4/5) on per-sample correctness, states in cost order.

    `alphas[j]` is alpha of the (j+2)-th cheapest state, NaN where that state is never
    wrong (the conditional probability is undefined). `first_share[i]` is the share of
    samples whose cheapest correct state is i; `none_share` those no state gets right
    (the oracle sends them to state 1).
    """

    r_oracle: float
    a_oracle: float
    accuracies: np.ndarray
    alphas: np.ndarray
    first_share: np.ndarray
    none_share: float
    order: np.ndarray  # cost order: column order[i] of the input is the i-th cheapest

    @property
    def alpha_min(self) -> float | None:
        """Smallest defined alpha_i (the paper's optimistic constant alpha), or None."""
        defined = self.alphas[np.isfinite(self.alphas)]
        return float(defined.min()) if defined.size else None


@dataclass(frozen=True)
class SmallestStateTest:
    """Appendix A.2.3: is state 1 worth its cost against a free random guess?

    With ``R'`` the alpha = 1 bound when state 1 is replaced by a random guess (cost 0,
    accuracy 1/C), ``R_oracle - R' = R_1 (1 - A_N + A_1) - R_2 (A_1 - 1/C)``; state 1
    pays off when that is negative, i.e. ``R_1 < threshold``.
    """

    classes: int
    r_1: float
    r_2: float
    threshold: float
    passes: bool
    margin: float  # R_oracle - R'_oracle (negative: state 1 pays off)
    state: str | None = None  # state 1's name, when known

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "state": self.state,
            "r_1": self.r_1,
            "r_2": self.r_2,
            "threshold": self.threshold,
            "passes": self.passes,
        }


# ---------------------------------------------------------------- input checks


def state_space(
    names: Sequence[str],
    costs: Sequence[float] | np.ndarray,
    accuracies: Sequence[float] | np.ndarray,
    *,
    source: str | None = None,
) -> StateSpace:
    """Check states (at least one, unique names, finite costs >= 0, accuracies in [0, 1])
    and return them sorted by cost. Errors name `source` and the offending state."""
    names = tuple(str(n) for n in names)
    cost = np.asarray(costs, dtype=np.float64).reshape(-1)
    acc = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    if not names:
        raise InputError("no states: need at least one", source=source)
    if not len(names) == cost.size == acc.size:
        raise InputError(
            f"{len(names)} names, {cost.size} costs and {acc.size} accuracies differ in length",
            source=source,
        )
    seen: set[str] = set()
    for name, c, a in zip(names, cost, acc, strict=True):
        if not name:
            raise InputError("empty state name", source=source)
        if name in seen:
            raise InputError("duplicate state name", source=source, field=f"state {name!r}")
        seen.add(name)
        if not math.isfinite(c) or c < 0:
            raise InputError(
                f"cost must be finite and >= 0, got {c}", source=source, field=f"state {name!r}"
            )
        if not math.isfinite(a) or not 0.0 <= a <= 1.0:
            raise InputError(
                f"accuracy must be in [0, 1], got {a}", source=source, field=f"state {name!r}"
            )
    order = np.argsort(cost, kind="stable")
    return StateSpace(tuple(names[i] for i in order), cost[order], acc[order], order)


def pareto_envelope(space: StateSpace) -> tuple[StateSpace, list[str]]:
    """Drop the states less accurate than some cheaper (or equally costly) state.

    Returns the envelope (accuracies non-decreasing with cost) and the dropped names.
    Among equal costs the most accurate state is kept.
    """
    rank = np.lexsort((-space.accuracies, space.costs))
    keep: list[int] = []
    best = -1.0
    for i in rank:
        if space.accuracies[i] >= best:
            keep.append(int(i))
            best = float(space.accuracies[i])
    kept = set(keep)
    dropped = [space.names[i] for i in range(len(space)) if i not in kept]
    return space.take(keep), dropped


def require_monotone(space: StateSpace, *, source: str | None = None) -> None:
    """Raise when accuracies decrease with cost, naming the dominated states."""
    if space.is_monotone():
        return
    _, dropped = pareto_envelope(space)
    raise InputError(
        "accuracies decrease with cost, which breaks the paper's assumption "
        f"A_1 <= ... <= A_N; dominated states: {', '.join(dropped)} "
        "(use the Pareto envelope: --envelope / envelope=True)",
        source=source,
    )


def _cost_acc(costs: Any, accuracies: Any) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(costs, dtype=np.float64).reshape(-1)
    a = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    if r.size == 0 or r.size != a.size:
        raise InputError(f"need one cost per accuracy (got {r.size} and {a.size})")
    if np.any(np.diff(r) < 0):
        raise InputError("costs must be in non-decreasing order (see state_space)")
    return r, a


# ------------------------------------------------------------ analytic bounds


def bound_alpha1(costs: Any, accuracies: Any) -> Bound:
    """Conservative bound, eq. 9: ``R = R_1 + sum_{i>=2} (R_i - R_1)(A_i - A_{i-1})``,
    ``A = A_N``. States in cost order, accuracies non-decreasing."""
    r, a = _cost_acc(costs, accuracies)
    r_oracle = r[0] + float(np.sum((r[1:] - r[0]) * np.diff(a)))
    return Bound(float(r_oracle), float(a[-1]))


def bound_constant_alpha(costs: Any, accuracies: Any, alpha: float) -> Bound:
    """Constant-alpha bound, eq. 8 (alpha in [0, 1]); alpha = 1 gives eq. 9.

    ``R = R_1 + (R_2-R_1)(1-A_1) + alpha [sum_{i=3..N} (R_i-R_{i-1})(1-A_{i-1})
    - (R_N-R_1)(1-A_N)]``, ``A = 1 - alpha (1 - A_N)``. One state: ``(R_1, A_1)``.
    """
    if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}", field="alpha")
    r, a = _cost_acc(costs, accuracies)
    if r.size == 1:
        return Bound(float(r[0]), float(a[0]))
    err = 1.0 - a
    inner = float(np.sum((r[2:] - r[1:-1]) * err[1:-1])) - (r[-1] - r[0]) * err[-1]
    r_oracle = r[0] + (r[1] - r[0]) * err[0] + alpha * inner
    return Bound(float(r_oracle), float(1.0 - alpha * err[-1]))


def continuous_bound(costs: Any, accuracies: Any) -> Bound:
    """Continuous-state bound, eq. 13: ``R = R_1 + A_h (R_h - R_1) - int A(R) dR`` with
    ``A(R)`` the piecewise-linear curve through the states (trapezoid rule, exact)."""
    r, a = _cost_acc(costs, accuracies)
    integral = float(np.sum(np.diff(r) * (a[1:] + a[:-1]) / 2.0))
    return Bound(float(r[0] + a[-1] * (r[-1] - r[0]) - integral), float(a[-1]))


def smallest_state_test(costs: Any, accuracies: Any, classes: int) -> SmallestStateTest:
    """Appendix A.2.3 with ``R_2`` (the main text's eq. 11 prints ``R_N``; the derivation
    is the authority): state 1 pays off iff ``R_1 < (A_1 - 1/C) / (1 - A_N + A_1) R_2``."""
    if int(classes) != classes or classes < 2:
        raise InputError(f"need an integer number of classes >= 2, got {classes}", field="classes")
    r, a = _cost_acc(costs, accuracies)
    if r.size < 2:
        raise InputError("the smallest-state test needs at least two states")
    chance = 1.0 / classes
    threshold = (a[0] - chance) / (1.0 - a[-1] + a[0]) * r[1]
    margin = r[0] * (1.0 - a[-1] + a[0]) - r[1] * (a[0] - chance)
    return SmallestStateTest(
        int(classes), float(r[0]), float(r[1]), float(threshold), bool(margin < 0), float(margin)
    )


def gains(r_n: float, a_n: float, bound: Bound) -> Gains:
    """dR = R_N - R_oracle, R_ratio = R_N / R_oracle, dA = A_oracle - A_N."""
    ratio = r_n / bound.r_oracle if bound.r_oracle > 0 else math.inf
    return Gains(r_n - bound.r_oracle, ratio, bound.a_oracle - a_n)


# ------------------------------------------------------------- exact oracle


def _correctness(correct: Any, n_states: int | None = None) -> np.ndarray:
    c = np.asarray(correct)
    if c.dtype != np.bool_ or c.ndim != 2:
        raise InputError(f"expected a bool [samples, states] matrix, got {c.dtype} {c.shape}")
    if c.shape[0] == 0 or c.shape[1] == 0:
        raise InputError(f"need at least one sample and one state, got shape {c.shape}")
    if n_states is not None and c.shape[1] != n_states:
        raise InputError(f"correctness has {c.shape[1]} states, costs have {n_states}")
    return c


def _first_correct(c: np.ndarray) -> np.ndarray:
    """Per sample, the first correct column, or the column count when none is."""
    first = np.argmax(c, axis=1)
    first[~c[np.arange(c.shape[0]), first]] = c.shape[1]
    return first


def exact_oracle(correct: Any, costs: Any) -> OracleResult:
    """Eq. 4/5 on a bool ``[samples, states]`` matrix (columns in any order, `costs` per
    column): each sample pays its cheapest correct state, state 1 when none is correct.

    Vectorised: one `argmax` finds every sample's first correct state in cost order, and
    its histogram gives ``P(e_i)`` and so every ``alpha_i``.
    """
    cost = np.asarray(costs, dtype=np.float64).reshape(-1)
    c = _correctness(correct, cost.size)
    if not np.all(np.isfinite(cost)) or np.any(cost < 0):
        raise InputError("costs must be finite and >= 0")
    order = np.argsort(cost, kind="stable")
    if np.any(order != np.arange(cost.size)):
        c = c[:, order]
    cost = cost[order]
    n, s = c.shape
    hist = np.bincount(_first_correct(c), minlength=s + 1)
    counts = c.sum(axis=0)
    r_oracle = (float(hist[:s] @ cost) + float(hist[s]) * cost[0]) / n
    return OracleResult(
        r_oracle=r_oracle,
        a_oracle=1.0 - hist[s] / n,
        accuracies=counts / n,
        alphas=_alphas_from(hist, counts, n),
        first_share=hist[:s] / n,
        none_share=float(hist[s] / n),
        order=order,
    )


def _alphas_from(hist: np.ndarray, correct_counts: np.ndarray, n: int) -> np.ndarray:
    s = correct_counts.size
    all_wrong = n - np.cumsum(hist[:s])  # e_i: states 1..i all wrong
    wrong = n - correct_counts
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(wrong[1:] > 0, all_wrong[1:] / wrong[1:], np.nan)
    return out.astype(np.float64)


def alphas(correct: Any) -> np.ndarray:
    """``alpha_i = P(states 1..i-1 all wrong | state i wrong)`` for i = 2..S, columns
    already in cost order; NaN where state i is never wrong."""
    c = _correctness(correct)
    hist = np.bincount(_first_correct(c), minlength=c.shape[1] + 1)
    return _alphas_from(hist, c.sum(axis=0), c.shape[0])


# ------------------------------------------------------------------ summary


@dataclass(frozen=True)
class OraclePoint:
    """An oracle operating point with its gains against the baseline ``S_N``
    (`r_ratio` None when ``R_oracle`` is 0)."""

    r_oracle: float
    a_oracle: float
    delta_r: float
    r_ratio: float | None
    delta_a: float

    @classmethod
    def against(cls, bound: Bound, r_n: float, a_n: float) -> OraclePoint:
        """`bound` with its gains against a baseline costing `r_n` at accuracy `a_n`."""
        g = gains(r_n, a_n, bound)
        ratio = g.r_ratio if math.isfinite(g.r_ratio) else None
        return cls(bound.r_oracle, bound.a_oracle, g.delta_r, ratio, g.delta_a)

    def to_json(self) -> dict[str, float | None]:
        return {
            "r_oracle": self.r_oracle,
            "a_oracle": self.a_oracle,
            "delta_r": self.delta_r,
            "r_ratio": self.r_ratio,
            "delta_a": self.delta_a,
        }


@dataclass(frozen=True)
class StateRow:
    """One state of a summary, in cost order."""

    name: str
    cost: float
    accuracy: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "cost": self.cost, "accuracy": self.accuracy}


@dataclass(frozen=True)
class ExactFigures:
    """What per-sample results add to a summary: the exact oracle, every alpha_i (None
    where undefined), and eq. 8 at the smallest alpha (None without one)."""

    point: OraclePoint
    alphas: tuple[float | None, ...]
    alpha_min: float | None
    constant_alpha_min: OraclePoint | None


@dataclass(frozen=True)
class BoundSummary:
    """Every bound of one state space (what `edgeadapt bound --json` prints).

    `headline` is the point `method` names (``exact``, ``alpha=1`` or
    ``constant-alpha``, then `alpha` is set); `dominated` is None unless the analytic
    bounds were computed on the Pareto envelope; `exact` is None without per-sample
    results; `smallest_state` None without a class count (or with one state).
    """

    states: tuple[StateRow, ...]
    method: str
    r_1: float
    baseline: str
    r_n: float
    a_n: float
    alpha1: OraclePoint
    continuous: OraclePoint
    headline: OraclePoint
    dominated: tuple[str, ...] | None = None
    exact: ExactFigures | None = None
    alpha: float | None = None
    smallest_state: SmallestStateTest | None = None

    @property
    def r_oracle(self) -> float:
        """The headline R_oracle."""
        return self.headline.r_oracle

    @property
    def names(self) -> tuple[str, ...]:
        """State names in cost order."""
        return tuple(s.name for s in self.states)

    @property
    def optimistic(self) -> OraclePoint:
        """The most optimistic analytic bound: eq. 8 at alpha_min, else alpha = 1."""
        if self.exact is not None and self.exact.constant_alpha_min is not None:
            return self.exact.constant_alpha_min
        return self.alpha1

    def points(self) -> list[tuple[str, OraclePoint, bool]]:
        """(label, point, is the headline) of every bound, in the order every view
        shows them: exact oracle, alpha = 1, the constant alpha asked, alpha_min, continuous."""
        rows = []
        if self.exact is not None:
            rows.append(("exact oracle (eq. 4/5)", self.exact.point, self.method == "exact"))
        rows.append(("alpha=1 (eq. 9)", self.alpha1, self.method == "alpha=1"))
        if self.alpha is not None:
            rows.append((f"alpha={self.alpha:g} (eq. 8)", self.headline, True))
        if self.exact is not None and self.exact.constant_alpha_min is not None:
            label = f"alpha_min={self.exact.alpha_min:.3f} (eq. 8)"
            rows.append((label, self.exact.constant_alpha_min, False))
        rows.append(("continuous (eq. 13)", self.continuous, False))
        return rows

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "states": [s.to_json() for s in self.states],
            "method": self.method,
            "r_1": self.r_1,
            "baseline": self.baseline,
            "r_n": self.r_n,
            "a_n": self.a_n,
            "alpha1": self.alpha1.to_json(),
            "continuous": self.continuous.to_json(),
        }
        if self.dominated is not None:
            out["dominated"] = list(self.dominated)
        if self.exact is not None:
            out["alphas"] = list(self.exact.alphas)
            out["alpha_min"] = self.exact.alpha_min
            out["exact"] = self.exact.point.to_json()
            if self.exact.constant_alpha_min is not None:
                out["constant_alpha_min"] = self.exact.constant_alpha_min.to_json()
        if self.alpha is not None:
            out["alpha"] = self.alpha
        out.update(self.headline.to_json())
        if self.smallest_state is not None:
            out["smallest_state"] = self.smallest_state.to_json()
        return out


def bound_summary(
    names: Sequence[str],
    costs: Sequence[float] | np.ndarray,
    accuracies: Sequence[float] | np.ndarray | None = None,
    *,
    correct: np.ndarray | None = None,
    alpha: float | None = None,
    classes: int | None = None,
    envelope: bool = False,
    source: str | None = None,
) -> BoundSummary:
    """Every bound of the states (see `BoundSummary`).

    `correct` (bool ``[samples, states]``, columns in the order of `names`) switches on
    the exact oracle; the accuracies then come from it. `method` names the headline
    figures: ``constant-alpha`` when `alpha` is given, else ``exact`` with `correct`,
    else ``alpha=1``. The paper's analytic bounds (eq. 8, 9, 13) need accuracies that do
    not decrease with cost; `envelope` computes them on the Pareto envelope instead
    (listed in ``dominated``). The exact oracle and the alphas always use every state.
    Gains are against the baseline ``S_N`` (named in ``baseline``): the top of the
    Pareto envelope, i.e. the most accurate state, which is the costliest one when
    accuracies rise with cost as the paper assumes.
    """
    if alpha is not None and not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise InputError(f"must be in [0, 1], got {alpha}", source="alpha")
    if classes is not None and classes < 2:
        raise InputError(f"must be >= 2, got {classes}", source="classes")
    c = None if correct is None else _correctness(correct, len(names))
    if c is not None:
        accuracies = c.mean(axis=0)
    elif accuracies is None:
        raise InputError("need accuracies or a correctness matrix")
    space = state_space(names, costs, accuracies, source=source)
    front, dominated = pareto_envelope(space)
    r_n, a_n = float(front.costs[-1]), float(front.accuracies[-1])
    analytic = front if envelope else space
    if not envelope:
        require_monotone(space, source=source)
    alpha1 = OraclePoint.against(bound_alpha1(analytic.costs, analytic.accuracies), r_n, a_n)
    exact = None if c is None else _exact_figures(c, costs, analytic, r_n, a_n)
    headline, method = _headline(alpha1, exact, analytic, alpha, (r_n, a_n))
    continuous = continuous_bound(analytic.costs, analytic.accuracies)
    test = _smallest_state(analytic, classes)
    return BoundSummary(
        states=_state_rows(space),
        method=method,
        r_1=float(space.costs[0]),
        baseline=front.names[-1],
        r_n=r_n,
        a_n=a_n,
        alpha1=alpha1,
        continuous=OraclePoint.against(continuous, r_n, a_n),
        headline=headline,
        dominated=tuple(dominated) if envelope else None,
        exact=exact,
        alpha=None if alpha is None else float(alpha),
        smallest_state=test,
    )


def _headline(
    alpha1: OraclePoint,
    exact: ExactFigures | None,
    analytic: StateSpace,
    alpha: float | None,
    baseline: tuple[float, float],
) -> tuple[OraclePoint, str]:
    """The headline bound and its method: constant alpha when `alpha` is given, else the
    exact oracle when computed, else alpha = 1."""
    if alpha is not None:
        at = bound_constant_alpha(analytic.costs, analytic.accuracies, alpha)
        return OraclePoint.against(at, *baseline), "constant-alpha"
    if exact is not None:
        return exact.point, "exact"
    return alpha1, "alpha=1"


def _exact_figures(
    correct: np.ndarray,
    costs: Sequence[float] | np.ndarray,
    analytic: StateSpace,
    r_n: float,
    a_n: float,
) -> ExactFigures:
    """The exact oracle of the correctness matrix, its alphas, and the constant-alpha
    bound at the smallest alpha that reaches it."""
    res = exact_oracle(correct, np.asarray(costs, dtype=np.float64))
    at_min = (
        None
        if res.alpha_min is None
        else OraclePoint.against(
            bound_constant_alpha(analytic.costs, analytic.accuracies, res.alpha_min), r_n, a_n
        )
    )
    return ExactFigures(
        OraclePoint.against(Bound(res.r_oracle, res.a_oracle), r_n, a_n),
        tuple(None if not math.isfinite(x) else float(x) for x in res.alphas),
        res.alpha_min,
        at_min,
    )


def _smallest_state(analytic: StateSpace, classes: int | None) -> SmallestStateTest | None:
    """The test that the cheapest state beats chance, when the class count is known."""
    if classes is None or len(analytic) < 2:
        return None
    return replace(
        smallest_state_test(analytic.costs, analytic.accuracies, classes),
        state=analytic.names[0],
    )


def _state_rows(space: StateSpace) -> tuple[StateRow, ...]:
    """One row (name, cost, accuracy) per state, in the order given."""
    return tuple(
        StateRow(n, float(r), float(a))
        for n, r, a in zip(space.names, space.costs, space.accuracies, strict=True)
    )
