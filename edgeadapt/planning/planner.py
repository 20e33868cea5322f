"""Choose a device's plan: the states to keep, their thresholds, and the budget table.

`make_plan` works on two splits of an evaluation (per-sample correctness and confidence
of every state) and the per-state costs measured on the device:

1. Reference: the best single state on the calibration split (its accuracy minus
   `max_drop` is the accuracy every candidate must keep on that split).
2. Subsets: **every** subset of at most `max_states` states is a candidate (not only those
   holding the last state: the constraint decides); `edgeadapt.planning.search.search_subsets`
   finds the cheapest whose calibrated thresholds keep the target, pruned by a lower
   bound on the expected cost (exact, as far as the calibrator is). Ties go to fewer
   states.
3. States whose calibrated threshold never fires are dropped from the winner (their
   outcomes are unchanged; an ensemble no longer pays for them).
4. Thresholds (``calibration="risk"``, the default): the subset's thresholds are
   chosen by Learn then Test (`edgeadapt.planning.risk`): a path learned on the calibration
   split, tested in order on the held-out split, so that P(drop on new data >
   max_drop) <= delta. When nothing can be promised (too few held-out samples, or no
   point passes) the plan keeps the reference state alone: the static model.
   ``calibration="empirical"`` keeps the thresholds that meet max_drop on the
   calibration split, with no promise.
5. The held-out split gives the figures the plan reports: accuracy, drop against the
   same reference state, a bound on the drop at confidence 1 - delta (the promised
   max_drop for risk-controlled plans; a Clopper-Pearson bound for empirical ones),
   the expected cost, the exact oracle over all states, and the oracle gap closure
   ``(R_N - R_policy) / (R_N - R_oracle)``; with the measured whole model's cost
   (`static_ms`), the plan also records it, so its expected cost is held to the static
   model a user would otherwise deploy as well as to R_N (`Plan.beats_static`).

Per-hop overhead (`hop_overhead_ms`, the profile's `edgeadapt.formats.profile.Overhead`): what
`AdaptiveModel.predict` itself adds per hop of a cascade on the device, beside the
runtime calls. A plan of several states has it added to each kept state's exit cost
(``(j + 1) * hop_overhead_ms`` at the j-th kept state: one per hop run), so its expected
cost is what the cascade pays; the subset search compares its best subset of each size
on that cost, and a plan that then does not beat the static model keeps the static
model (``fallback`` says why). A plan of one state deploys one plain model, whose call
overhead the static model pays too: none is added. Without an overhead (``None``: an
older profile, or bare costs) nothing is added, as before; the plan records what it
counted (`Plan.hop_overhead_ms`). The oracle pays none (it is a bound on what the
states can do), so the gap closure then also charges the policy its overhead.

The costs should be the ones the cascade pays: a profile taken in ``chain`` order (the
profiler's default). `profile_costs` reads both baselines from a profile and says when
its step costs were timed each step alone.

Branch bundles (``kind="branches"``, AdaInf's execution branches) are not cascaded: the
plan keeps the device's Pareto set of branches (measured cost against calibration
accuracy) and its budget table; without a budget the most accurate branch answers alone,
with one the table picks the branch (their thresholds are unused placeholders).

Costs (`state_costs_ms`, one per bundle state): for ``kind="early-exit"`` the cascade
cost of state i (steps 0..i), which is also what a sample exiting at i pays in any kept
subset (steps are fused: skipped states' steps still run); for ``kind="ensemble"`` each
model's own cost, and a sample exiting at the j-th kept state pays the sum over kept
states up to j. The oracle and the budget table use the state's own cost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.evaluation import CONF_KEYS, check_evaluation
from edgeadapt.formats.plan import (
    COST_STATS,
    KINDS,
    MEASURE_RANGES,
    BudgetRow,
    Gate,
    Plan,
    Promise,
    SplitFigures,
)
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.kernel_ref import MEASURES, lookup
from edgeadapt.oracle.equations import exact_oracle
from edgeadapt.planning.calibrate import NEVER, CascadeResult, calibrate, exit_states, simulate
from edgeadapt.planning.gates import GateInputs, fit_gates, policy_confidences
from edgeadapt.planning.risk import RiskControlled, risk_control, shared_path
from edgeadapt.planning.search import CalibratedSubset, search_subsets, subset_costs
from edgeadapt.planning.stats import drop_upper_bound

if TYPE_CHECKING:
    import os

    from edgeadapt.formats.bundle import Bundle
    from edgeadapt.formats.evaluation import Evaluation
    from edgeadapt.formats.profile import Profile

CALIBRATIONS = ("risk", "empirical")
POLICIES = ("threshold", "gate")
_TOL = 1e-9


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
    ``[N, S]``, states named in bundle (cost) order; `measure` names the confidences
    (None: not said, maxprob by default); `gate_inputs`, what learned gates read (every
    measure and the argmax), when known."""

    names: tuple[str, ...]
    correct: np.ndarray
    conf: np.ndarray
    measure: str | None = None
    gate_inputs: GateInputs | None = None

    def __post_init__(self) -> None:
        n_states = len(self.names)
        if n_states == 0 or len(set(self.names)) != n_states:
            raise InputError("state names must be a non-empty list of unique names", field="states")
        if self.correct.dtype != np.bool_ or self.correct.ndim != 2:
            raise InputError("expected a bool [N, S] array", field="correct")
        if self.correct.shape[1] != n_states or self.correct.shape[0] == 0:
            raise InputError(
                f"expected shape [N>0, {n_states}], got {self.correct.shape}", field="correct"
            )
        if self.conf.shape != self.correct.shape or self.conf.dtype.kind != "f":
            raise InputError(f"expected a float array of shape {self.correct.shape}", field="conf")
        if not np.isfinite(self.conf).all():
            raise InputError("confidences must be finite", field="conf")
        if self.measure is not None and self.measure not in MEASURES:
            raise InputError(
                f"must be one of {list(MEASURES)}, got {self.measure!r}", field="measure"
            )
        if self.gate_inputs is not None and self.gate_inputs.pred.shape != self.correct.shape:
            raise InputError(
                f"expected gate inputs of shape {self.correct.shape}", field="gate_inputs"
            )

    @classmethod
    def from_evaluation(cls, evaluation: EvaluationLike, measure: str = "maxprob") -> Outcomes:
        """Correctness (``pred == labels``) and the `measure` confidences of an evaluation
        (``conf``, ``conf_margin`` or ``conf_entropy``, see `edgeadapt.formats.evaluation`)."""
        if measure not in CONF_KEYS:
            raise InputError(f"must be one of {list(CONF_KEYS)}, got {measure!r}", field="measure")
        key = CONF_KEYS[measure]
        conf = getattr(evaluation, key, None)
        if conf is None:
            raise InputError(
                f"planning on {measure} needs {measure} confidences; this evaluation has "
                "none (write it again with edgeadapt evaluate, which stores every measure)",
                source=getattr(evaluation, "source", None),
                field=key,
            )
        confs = [getattr(evaluation, CONF_KEYS[m], None) for m in MEASURES]
        gate_inputs = (
            None
            if any(c is None for c in confs)
            else GateInputs(np.asarray(evaluation.pred), *(np.asarray(c) for c in confs))
        )
        return cls(
            names=tuple(str(s) for s in evaluation.states),
            correct=np.asarray(evaluation.pred) == np.asarray(evaluation.labels)[:, None],
            conf=np.asarray(conf, dtype=np.float32),
            measure=measure,
            gate_inputs=gate_inputs,
        )

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.correct.shape[0])

    def take(self, rows: np.ndarray) -> Outcomes:
        """The samples at `rows`."""
        gates = None if self.gate_inputs is None else self.gate_inputs.take(rows)
        return Outcomes(self.names, self.correct[rows], self.conf[rows], self.measure, gates)

    def split(self, heldout: float = 0.5, seed: int = 0) -> tuple[Outcomes, Outcomes]:
        """A random (calibration, held-out) split; `heldout` is the held-out share."""
        if not 0.0 < heldout < 1.0:
            raise InputError(f"must be in (0, 1), got {heldout}", field="heldout")
        rows = np.random.default_rng(seed).permutation(self.n)
        cut = self.n - round(heldout * self.n)
        if cut < 1 or cut >= self.n:
            raise InputError(f"{self.n} samples are too few to split", field="heldout")
        return self.take(np.sort(rows[:cut])), self.take(np.sort(rows[cut:]))


def pareto_states(state_costs: np.ndarray, accuracy: np.ndarray) -> tuple[int, ...]:
    """States no other is both as cheap and more accurate than, by rising cost."""
    kept: list[int] = []
    for s in sorted(range(len(accuracy)), key=lambda s: (state_costs[s], -accuracy[s])):
        if not kept or accuracy[s] > accuracy[kept[-1]]:
            kept.append(s)
    return tuple(sorted(kept))


def gap_closure(r_n: float, r_policy: float, r_oracle: float) -> float | None:
    """Share of the oracle's cost saving the policy achieves; None when the oracle saves
    nothing (R_N == R_oracle)."""
    gap = r_n - r_oracle
    return None if gap <= _TOL * max(1.0, abs(r_n)) else (r_n - r_policy) / gap


def budget_table(
    state_costs: np.ndarray, accuracy: np.ndarray, states: Sequence[int]
) -> tuple[BudgetRow, ...]:
    """AdaInf lookup table over the kept states: by rising cost, each row the most
    accurate state whose own cost fits the budget (dominated states get no row)."""
    rows: list[BudgetRow] = []
    for s in sorted(states, key=lambda s: (state_costs[s], -accuracy[s])):
        if rows and accuracy[s] <= rows[-1].accuracy:
            continue
        row = BudgetRow(budget_ms=float(state_costs[s]), state=int(s), accuracy=float(accuracy[s]))
        if rows and row.budget_ms <= rows[-1].budget_ms:
            rows[-1] = row  # same cost, more accurate
        else:
            rows.append(row)
    return tuple(rows)


def budget_state(budget: Sequence[BudgetRow], budget_ms: float) -> int:
    """Bundle state to run under `budget_ms`: the kernel's lookup over the table's rows
    (`edgeadapt.kernel_ref.lookup`), the first row's state below every row."""
    row = lookup([r.budget_ms for r in budget], [r.accuracy for r in budget], budget_ms)
    return budget[0].state if row is None else budget[row].state


def exit_costs(
    state_costs: np.ndarray, states: Sequence[int], kind: str, hop_ms: float | None = None
) -> np.ndarray:
    """What a sample exiting at each kept state pays (`edgeadapt.planning.search.subset_costs`)
    plus, for a cascade of several states, `hop_ms` per hop run to reach it."""
    return _add_hops(subset_costs(state_costs, states, kind), hop_ms, kind)


def _add_hops(cost: np.ndarray, hop_ms: float | None, kind: str) -> np.ndarray:
    if not hop_ms or len(cost) < 2 or kind == "branches":
        return cost
    return cost + hop_ms * np.arange(1, len(cost) + 1)


def _search(
    calib: Outcomes,
    costs: np.ndarray,
    kind: str,
    max_states: int,
    max_drop: float,
    reference_accuracy: float,
    hop_ms: float | None,
) -> CalibratedSubset:
    """`search_subsets`; with a per-hop overhead, the cheapest of its best subsets of at
    most 1, 2, ... `max_states` states once the hops are counted (a cascade of more states
    pays more hops), ties to fewer states."""
    sizes = range(1, max_states + 1) if hop_ms and kind != "branches" else (max_states,)
    best: tuple[float, CalibratedSubset] | None = None
    evaluated = 0
    for m in sizes:
        choice = search_subsets(
            calib.conf,
            calib.correct,
            costs,
            kind=kind,
            max_states=m,
            max_drop=max_drop,
            reference_accuracy=reference_accuracy,
        )
        evaluated += choice.evaluated
        cols = list(choice.states)
        cost = simulate(
            calib.conf[:, cols],
            calib.correct[:, cols],
            exit_costs(costs, choice.states, kind, hop_ms),
            choice.calibration.thresholds,
        ).expected_cost
        if best is None or cost < best[0] - _TOL * max(1.0, abs(best[0])):
            best = (cost, choice)
    assert best is not None
    return replace(best[1], evaluated=evaluated)


def _measure(calib: Outcomes, heldout: Outcomes, measure: str | None) -> str:
    """The one measure of both splits and the caller's choice."""
    said = {m for m in (calib.measure, heldout.measure, measure) if m is not None}
    if len(said) > 1:
        raise InputError(
            f"confidences of different measures: calibration {calib.measure}, held-out "
            f"{heldout.measure}, asked {measure}",
            field="measure",
        )
    return said.pop() if said else "maxprob"


def _check_args(
    calib: Outcomes,
    heldout: Outcomes,
    costs: np.ndarray,
    manifest_sha256: str,
    kind: str,
    max_states: int,
    max_drop: float,
    measure: str,
    delta: float,
    calibration: str,
    policy: str,
) -> None:
    if policy not in POLICIES:
        raise InputError(f"must be one of {list(POLICIES)}, got {policy!r}", field="policy")
    if policy == "gate" and kind == "branches":
        raise InputError(
            "branches are picked by budget, not cascaded: there is nothing for gates to "
            "decide; plan them with the threshold policy",
            field="policy",
        )
    if policy == "gate":
        for name, split in (("calibration", calib), ("heldout", heldout)):
            if split.gate_inputs is None:
                raise InputError(
                    f"the {name} split lacks what gates read (the argmax and the maxprob, "
                    "margin and entropy confidences); write the evaluation again with "
                    "edgeadapt evaluate, which stores every measure",
                    field="gate_inputs",
                )
    if heldout.names != calib.names:
        raise InputError(
            f"states {heldout.names} differ from the calibration split's {calib.names}",
            field="heldout",
        )
    if costs.shape != (len(calib.names),):
        raise InputError(
            f"expected {len(calib.names)} costs (one per state), got shape {costs.shape}",
            field="state_costs_ms",
        )
    if not (np.isfinite(costs).all() and (costs >= 0).all()):
        raise InputError("costs must be finite and >= 0", field="state_costs_ms")
    if not re.fullmatch(r"[0-9a-f]{64}", manifest_sha256):
        raise InputError("must be 64 lowercase hex digits", field="manifest_sha256")
    if kind not in KINDS:
        raise InputError(f"must be one of {list(KINDS)}, got {kind!r}", field="kind")
    if measure not in MEASURES:
        raise InputError(f"must be one of {list(MEASURES)}, got {measure!r}", field="measure")
    low, high = MEASURE_RANGES[measure]
    for name, split in (("calibration", calib), ("heldout", heldout)):
        if (low is not None and split.conf.min() < low) or split.conf.max() > high:
            raise InputError(
                f"confidences span [{split.conf.min()}, {split.conf.max()}], outside the "
                f"{measure} range [{low if low is not None else '-inf'}, {high}]",
                field=name,
            )
    if max_states < 1:
        raise InputError(f"must be >= 1, got {max_states}", field="max_states")
    if not 0.0 <= max_drop <= 1.0:
        raise InputError(f"must be in [0, 1], got {max_drop}", field="max_drop")
    if not 0.0 < delta < 1.0:
        raise InputError(f"must be in (0, 1), got {delta}", field="delta")
    if calibration not in CALIBRATIONS:
        raise InputError(
            f"must be one of {list(CALIBRATIONS)}, got {calibration!r}", field="calibration"
        )
    if calibration == "risk" and not 0.0 < max_drop < 1.0:
        raise InputError(
            f"a risk-controlled plan needs max_drop in (0, 1), got {max_drop}; "
            "use calibration='empirical' for a zero-drop plan",
            field="max_drop",
        )


@dataclass(frozen=True)
class _Chosen:
    """The kept states so far, their thresholds (one per state but the last), their gates
    (None: the threshold policy), the promise tested on them and why the plan fell back
    to the static model (None: it did not)."""

    states: tuple[int, ...]
    thresholds: np.ndarray
    gates: tuple[Gate, ...] | None
    promise: Promise | None
    fallback: str | None


def _check_costs(static_ms: float | None, hop_overhead_ms: float | None) -> float | None:
    """Refuse a bad static cost or per-hop overhead; the overhead as a float (or None)."""
    if static_ms is not None and not (math.isfinite(static_ms) and static_ms >= 0):
        raise InputError(f"must be finite and >= 0, got {static_ms}", field="static_ms")
    if hop_overhead_ms is not None and (
        isinstance(hop_overhead_ms, bool)
        or not isinstance(hop_overhead_ms, (int, float))
        or not (math.isfinite(hop_overhead_ms) and hop_overhead_ms >= 0)
    ):
        raise InputError(
            f"must be a finite number >= 0, got {hop_overhead_ms!r}", field="hop_overhead_ms"
        )
    return None if hop_overhead_ms is None else float(hop_overhead_ms)


def _firing(chosen: _Chosen) -> _Chosen:
    """`chosen` without the states whose threshold can never fire (they only cost)."""
    fires = np.append(np.isfinite(chosen.thresholds), True)
    if chosen.gates is not None and not fires.all():
        # Gates are fitted on the features of every kept state, so a gated state cannot
        # be dropped on its own; `_gated_states` leaves all firing or none.
        fires[:] = False
        fires[-1] = True
    states = tuple(s for s, keep in zip(chosen.states, fires, strict=True) if keep)
    gates = None if chosen.gates is None else chosen.gates[: len(states) - 1]
    return _Chosen(states, chosen.thresholds[fires[:-1]], gates, chosen.promise, chosen.fallback)


def _ending_at_reference(chosen: _Chosen, reference: int) -> _Chosen:
    """`chosen`'s states before the reference state, then the reference state itself.

    Risk control tests a path that starts at "never exit early": the last kept state
    alone. Ending at the reference, that start loses nothing against it, so the first
    test passes on any data; a subset ending at a cheaper state that was merely as
    accurate on the calibration split starts with that state's losses, and one
    failing start keeps the static model. Cheaper endings stay reachable: the path
    learns to exit there. (The thresholds are placeholders: risk control chooses them.)
    """
    if chosen.states[-1] == reference:
        return chosen
    states = (*(s for s in chosen.states if s < reference), reference)
    return _Chosen(states, np.full(len(states) - 1, NEVER), None, None, None)


def _split_figures(
    split: Outcomes,
    chosen: _Chosen,
    *,
    costs: np.ndarray,
    kind: str,
    reference: int,
    hop_ms: float | None,
) -> tuple[SplitFigures, np.ndarray]:
    """The policy of `chosen` simulated on `split`: its figures and which rows it gets
    right."""
    cols = list(chosen.states)
    run = simulate(
        _policy_conf(split, cols, chosen.gates),
        split.correct[:, cols],
        exit_costs(costs, chosen.states, kind, hop_ms),
        chosen.thresholds,
    )
    policy_correct = split.correct[np.arange(split.n), np.asarray(cols)[run.exit_state]]
    ref = float(split.correct[:, reference].mean())
    figures = SplitFigures(split.n, run.accuracy, ref, ref - run.accuracy, run.expected_cost)
    return figures, policy_correct


def make_plan(
    calib: Outcomes,
    heldout: Outcomes,
    state_costs_ms: Sequence[float] | np.ndarray,
    *,
    manifest_sha256: str,
    kind: str = "early-exit",
    max_states: int = 4,
    max_drop: float = 0.005,
    measure: str | None = None,
    delta: float = 0.05,
    static_ms: float | None = None,
    calibration: str = "risk",
    policy: str = "threshold",
    cost_stat: str = "p50",
    runtime: RuntimeConfig | None = None,
    hop_overhead_ms: float | None = None,
) -> Plan:
    """Pick states, calibrate thresholds on `calib`, report on `heldout` (module docstring).

    `hop_overhead_ms` is the cascade's own cost per hop on the device (module docstring:
    per-hop overhead); None counts none.

    `static_ms` is the measured whole model's cost, recorded as the plan's static baseline.
    `policy` ``"gate"`` fits a learned gate per kept state but the last on `calib`
    (`edgeadapt.planning.gates`) and thresholds the gates' scores instead of the confidences;
    the splits need every measure's confidences (`Outcomes.gate_inputs`).

    `measure` names the confidence measure of the splits (the plan records it); it
    defaults to the splits' own (`Outcomes.measure`), else maxprob, and must agree
    with it.
    """
    costs = np.asarray(state_costs_ms, dtype=np.float64)
    measure = _measure(calib, heldout, measure)
    if cost_stat not in COST_STATS:
        raise InputError(f"must be one of {list(COST_STATS)}, got {cost_stat!r}", field="cost_stat")
    _check_args(
        calib,
        heldout,
        costs,
        manifest_sha256,
        kind,
        max_states,
        max_drop,
        measure,
        delta,
        calibration,
        policy,
    )
    hop_ms = _check_costs(static_ms, hop_overhead_ms)
    calib_acc = calib.correct.mean(axis=0)
    reference = int(np.argmax(calib_acc))
    choice = _search(calib, costs, kind, max_states, max_drop, float(calib_acc[reference]), hop_ms)
    chosen = _Chosen(choice.states, choice.calibration.thresholds, None, None, None)
    if calibration == "risk" and kind != "branches":
        chosen = _ending_at_reference(chosen, reference)
    if policy == "gate":
        kept, gated, gate_thresholds = _gated_states(
            calib, costs, chosen.states, kind, reference, max_drop, calibration, hop_ms
        )
        chosen = _Chosen(kept, gate_thresholds, gated, None, None)
    if kind == "branches":
        # AdaInf's branches are picked by budget, not cascaded: keep the device's Pareto
        # set; without a budget the most accurate (the reference) answers alone.
        kept = pareto_states(costs, calib_acc)
        chosen = _Chosen(kept, np.full(len(kept) - 1, math.inf), chosen.gates, None, None)
    elif calibration == "risk":
        controlled = _risk_controlled(
            calib,
            heldout,
            costs,
            chosen.states,
            kind,
            reference,
            max_drop,
            delta,
            chosen.gates,
            hop_ms,
        )
        tested = controlled.promise
        if tested.holds:
            chosen = _Chosen(chosen.states, controlled.thresholds, chosen.gates, tested, None)
        else:
            chosen = _Chosen((reference,), np.empty(0), chosen.gates, tested, tested.describe())
    if kind != "branches":
        chosen = _firing(chosen)
    figures = partial(_split_figures, costs=costs, kind=kind, reference=reference, hop_ms=hop_ms)
    held_figures, held_correct = figures(heldout, chosen)
    # (a branch plan without a budget runs its last branch alone: no cascade to refuse)
    if (
        kind != "branches"
        and static_ms is not None
        and len(chosen.states) > 1
        and held_figures.cost_ms >= static_ms
    ):
        counted = f" (the cascade's own {hop_ms:.4g} ms per hop included)" if hop_ms else ""
        why = (
            f"no plan of several states beats the measured static model: expected "
            f"{held_figures.cost_ms:.4g} ms{counted} against {static_ms:.4g} ms; the plan "
            "keeps the static model"
        )
        no_gates = None if chosen.gates is None else ()
        chosen = _Chosen((reference,), np.empty(0), no_gates, chosen.promise, why)
        held_figures, held_correct = figures(heldout, chosen)
    calib_figures, _ = figures(calib, chosen)
    states, thresholds, gates = chosen.states, chosen.thresholds, chosen.gates
    promise, fallback = chosen.promise, chosen.fallback
    cost_ms = subset_costs(costs, states, kind)
    oracle = exact_oracle(heldout.correct, costs)
    r_n = float(costs[-1])
    return Plan(
        manifest_sha256=manifest_sha256,
        kind=kind,
        bundle_states=calib.names,
        measure=measure,
        states=states,
        # branches plans never exit on confidence: their thresholds are placeholders
        thresholds=tuple(
            float(MEASURE_RANGES[measure][1]) if kind == "branches" else float(t)
            for t in thresholds
        ),
        cost_ms=tuple(float(c) for c in cost_ms),
        budget=budget_table(costs, calib_acc, states),
        reference_state=reference,
        max_drop=max_drop,
        calibration=calib_figures,
        heldout=held_figures,
        drop_bound=_drop_bound(heldout, reference, held_correct, delta, promise, fallback),
        delta=delta,
        r_oracle=oracle.r_oracle,
        a_oracle=oracle.a_oracle,
        r_n=r_n,
        a_n=float(heldout.correct[:, -1].mean()),
        gap_closure=gap_closure(r_n, held_figures.cost_ms, oracle.r_oracle),
        search_method="exhaustive",
        max_states=max_states,
        subsets_evaluated=choice.evaluated,
        promise=promise,
        static_ms=None if static_ms is None else float(static_ms),
        fallback=fallback,
        gates=gates,
        cost_stat=cost_stat,
        runtime=runtime,
        hop_overhead_ms=hop_ms,
    )


def _drop_bound(
    heldout: Outcomes,
    reference: int,
    policy_correct: np.ndarray,
    delta: float,
    promise: Promise | None,
    fallback: str | None,
) -> float:
    """The drop the plan is bounded by at confidence 1 - delta: 0 for the reference state
    alone, the promised max_drop for a risk-controlled plan, else Clopper-Pearson."""
    if fallback is not None:
        return 0.0
    if promise is not None:
        return promise.max_drop
    return drop_upper_bound(heldout.correct[:, reference], policy_correct, delta)


def _policy_conf(split: Outcomes, cols: list[int], gates: tuple[Gate, ...] | None) -> np.ndarray:
    """What the policy thresholds at the kept columns: the split's confidences, or the
    gates' scores (a last column of zeros: the last state always answers)."""
    if gates is None:
        return split.conf[:, cols]
    if split.gate_inputs is None:
        raise InputError("a gate policy needs every measure's confidences", field="gate_inputs")
    return policy_confidences(gates, split.gate_inputs.select(cols))


def _gated_states(
    calib: Outcomes,
    costs: np.ndarray,
    states: tuple[int, ...],
    kind: str,
    reference: int,
    max_drop: float,
    calibration: str,
    hop_ms: float | None = None,
) -> tuple[tuple[int, ...], tuple[Gate, ...], np.ndarray]:
    """Gates for the kept `states`, fitted on `calib`, and their calibration-split
    thresholds (the empirical ones, or the end of the shared-threshold path for risk
    control: gate scores all estimate one probability, so one threshold serves every
    gate, `edgeadapt.planning.risk.shared_path`).

    A state whose gate never fires there is dropped and the gates are fitted again on
    the rest (its features would otherwise still feed the later gates), until every
    gate fires or none does. Only the calibration split is read, so the held-out test
    stays a single test.
    """
    while True:
        cols = list(states)
        assert calib.gate_inputs is not None  # checked by _check_args
        inputs = calib.gate_inputs.select(cols)
        correct, ref = calib.correct[:, cols], calib.correct[:, reference]
        gates = fit_gates(inputs, correct, ref)
        conf = policy_confidences(gates, inputs)
        cost = exit_costs(costs, states, kind, hop_ms)
        if calibration == "risk":
            t = shared_path(conf, correct, ref, max_drop=max_drop)[-1]
        else:
            t = calibrate(
                conf, correct, cost, max_drop=max_drop, reference_accuracy=float(ref.mean())
            ).thresholds
        exits = np.bincount(exit_states(conf, t), minlength=len(states))[:-1]
        fires = np.isfinite(t) & (exits > 0)
        if fires.all() or not fires.any():
            return states, gates, np.where(fires, t, NEVER)
        states = tuple(s for s, f in zip(states, [*fires, True], strict=True) if f)


def _risk_controlled(
    calib: Outcomes,
    heldout: Outcomes,
    costs: np.ndarray,
    states: tuple[int, ...],
    kind: str,
    reference: int,
    max_drop: float,
    delta: float,
    gates: tuple[Gate, ...] | None = None,
    hop_ms: float | None = None,
) -> RiskControlled:
    """Learn-then-Test thresholds for the kept `states` (on the `gates`' scores when
    given): learned on `calib`, tested on `heldout`, drop against the `reference` state."""
    cols = list(states)
    return risk_control(
        (_policy_conf(calib, cols, gates), calib.correct[:, cols], calib.correct[:, reference]),
        (
            _policy_conf(heldout, cols, gates),
            heldout.correct[:, cols],
            heldout.correct[:, reference],
        ),
        exit_costs(costs, states, kind, hop_ms),
        max_drop=max_drop,
        delta=delta,
        shared=gates is not None,
    )


def plan_bundle(
    bundle: Bundle,
    evaluation: Evaluation,
    state_costs_ms: Sequence[float] | np.ndarray,
    *,
    heldout: float = 0.5,
    seed: int = 0,
    measure: str = "maxprob",
    max_states: int = 4,
    max_drop: float = 0.005,
    delta: float = 0.05,
    static_ms: float | None = None,
    calibration: str = "risk",
    policy: str = "threshold",
    cost_stat: str = "p50",
    runtime: RuntimeConfig | None = None,
    hop_overhead_ms: float | None = None,
) -> Plan:
    """The plan `edgeadapt plan` makes: `evaluation` (checked to be of `bundle`, its
    columns taken in the bundle's state order: `check_evaluation`) split into a
    calibration and a held-out part, then `make_plan`."""
    outcomes = Outcomes.from_evaluation(check_evaluation(evaluation, bundle), measure)
    calib, held = outcomes.split(heldout=heldout, seed=seed)
    return make_plan(
        calib,
        held,
        state_costs_ms,
        manifest_sha256=bundle.manifest_sha256,
        kind=bundle.kind,
        max_states=max_states,
        max_drop=max_drop,
        measure=measure,
        delta=delta,
        static_ms=static_ms,
        calibration=calibration,
        policy=policy,
        cost_stat=cost_stat,
        runtime=runtime,
        hop_overhead_ms=hop_overhead_ms,
    )


def simulate_plan(plan: Plan, split: Outcomes) -> CascadeResult:
    """The plan's policy run on `split` (outcomes of every bundle state, in bundle order,
    in the plan's measure): accuracy, expected cost, and the kept-state index each
    sample exits at. What the plan's figures are computed with, and what a runner must
    reproduce row for row; the expected cost counts the per-hop overhead the plan
    counted (`Plan.hop_overhead_ms`)."""
    if split.names != plan.bundle_states:
        raise InputError(
            f"states {split.names} differ from the plan's {plan.bundle_states}", field="states"
        )
    cols = list(plan.states)
    return simulate(
        _policy_conf(split, cols, plan.gates),
        split.correct[:, cols],
        _add_hops(np.asarray(plan.cost_ms, dtype=np.float64), plan.hop_overhead_ms, plan.kind),
        np.asarray(plan.thresholds, dtype=np.float64),
    )


@dataclass(frozen=True)
class ProfileCosts:
    """What the planner takes from a profile: each state's cost (p50 at batch 1, ms),
    the measured whole model's (None when not timed), and the order the steps were
    timed in."""

    state_ms: tuple[float, ...]
    static_ms: float | None
    order: str
    stat: str = "p50"
    #: The runtime configuration the profile was measured under (for the plan).
    runtime: RuntimeConfig | None = None
    #: The cascade's own cost per hop the profile measured (None: not measured).
    hop_overhead_ms: float | None = None

    @property
    def note(self) -> str | None:
        """A caveat to show the user, None when the costs are the cascade's."""
        if self.order == "chain":
            return None
        return (
            f"the profile timed each step alone ({self.order} order): the cascade pays "
            "more (cache refills between steps); profile with --order chain to plan on "
            "what it pays"
        )


def profile_costs(profile: Profile, bundle: Bundle, stat: str = "p50") -> ProfileCosts:
    """The state costs and the static baseline of `profile` for `bundle` (checked), at
    batch 1 and the percentile `stat` (p50, p90 or p99: a plan made on p90 costs keeps
    budgets with fewer misses)."""
    from edgeadapt.formats.profile import state_costs, static_cost

    if stat not in COST_STATS:
        raise InputError(f"must be one of {list(COST_STATS)}, got {stat!r}", field="cost_stat")
    overhead = profile.cascade_overhead
    return ProfileCosts(
        state_ms=tuple(state_costs(profile, bundle, stat=stat)),
        static_ms=static_cost(profile, bundle, stat=stat),
        order=profile.order,
        stat=stat,
        runtime=profile.runtime_config,
        hop_overhead_ms=None if overhead is None else overhead.hop_ms,
    )


@dataclass(frozen=True)
class PlanSummary:
    """What ``edgeadapt plan`` prints: the plan's figures (`Plan.summary`), the order the
    profile timed the steps in (`costs`, None when not from a profile) and where the
    plan was written (None when not saved)."""

    plan: Plan
    costs: ProfileCosts | None = None
    path: str | None = None

    @property
    def saving_vs_r_n(self) -> float | None:
        """Share of R_N the held-out expected cost saves (negative: costs more)."""
        return self.plan.summary()["saving_vs_r_n"]

    @property
    def saving_vs_static(self) -> float | None:
        """Share of the static model's cost it saves (None when not measured)."""
        return self.plan.summary()["saving_vs_static"]

    def to_json(self) -> dict[str, Any]:
        out = self.plan.summary()
        if self.costs is not None:
            out["profile_order"] = self.costs.order
        if self.path is not None:
            out["path"] = self.path
        return out


def write_plan(
    bundle: Bundle | str | os.PathLike[str],
    *,
    profile: Profile | str | os.PathLike[str],
    evaluation: Evaluation | str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    cost_stat: str = "p50",
    **options: Any,
) -> PlanSummary:
    """What ``edgeadapt plan`` does: plan `bundle` on the `profile`'s costs at `cost_stat`
    and the `evaluation` (`plan_bundle`, which takes `options`), and save the plan to
    `output` (default ``BUNDLE/plan.json``). The per-hop overhead is the profile's
    (`Profile.cascade_overhead`) unless `options` hold ``hop_overhead_ms``."""
    from pathlib import Path

    from edgeadapt.formats.bundle import Bundle, load_bundle
    from edgeadapt.formats.evaluation import Evaluation, load_evaluation
    from edgeadapt.formats.plan import save_plan
    from edgeadapt.formats.profile import Profile, check_profile, load_profile

    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if isinstance(profile, Profile):
        check_profile(profile, b)
        prof = profile
    else:
        prof = load_profile(profile, b)
    ev = evaluation if isinstance(evaluation, Evaluation) else load_evaluation(evaluation)
    costs = profile_costs(prof, b, stat=cost_stat)
    options.setdefault("hop_overhead_ms", costs.hop_overhead_ms)
    plan = plan_bundle(
        b,
        ev,
        costs.state_ms,
        static_ms=costs.static_ms,
        cost_stat=cost_stat,
        runtime=costs.runtime,
        **options,
    )
    target = Path(output) if output is not None else b.path / "plan.json"
    save_plan(target, plan)
    return PlanSummary(plan, costs, str(target))


@dataclass(frozen=True)
class PolicyOutcome:
    """One policy planned for comparison: its plan, or why none could be made."""

    policy: str
    plan: Plan | None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.plan is None:
            return {"policy": self.policy, "plan": None, "reason": self.reason}
        p = self.plan
        return {
            "policy": self.policy,
            "states": list(p.state_names),
            "accuracy": p.heldout.accuracy,
            "cost": p.heldout.cost_ms,
            "gap_closure": p.gap_closure,
            "beats_static": p.beats_static,
            "statement": p.statement,
        }


def plan_options(plan: Plan) -> dict[str, Any]:
    """The `plan_bundle` options `plan` was made with, as far as the plan records them
    (the held-out share from its split sizes; the seed is not recorded: the default)."""
    held, calib = plan.heldout.n, plan.calibration.n
    return {
        "heldout": held / (held + calib),
        "measure": plan.measure,
        "max_states": plan.max_states,
        "max_drop": plan.max_drop,
        "delta": plan.delta,
        "calibration": "empirical" if plan.promise is None else "risk",
        "cost_stat": plan.cost_stat,
        "hop_overhead_ms": plan.hop_overhead_ms,
    }


def compare_policies(
    bundle: Bundle,
    evaluation: Evaluation,
    state_costs_ms: Sequence[float] | np.ndarray,
    **options: Any,
) -> tuple[PolicyOutcome, ...]:
    """Every policy (`POLICIES`) planned by `plan_bundle` from the same inputs and
    `options`, so they can be shown side by side; a policy the inputs cannot support
    (an evaluation without every measure's confidences has no gates; a branch bundle is
    not cascaded) comes with the reason instead of a plan."""
    out = []
    for policy in POLICIES:
        try:
            plan = plan_bundle(bundle, evaluation, state_costs_ms, policy=policy, **options)
        except InputError as e:
            out.append(PolicyOutcome(policy, None, e.message))
        else:
            out.append(PolicyOutcome(policy, plan))
    return tuple(out)
