"""Choose a device's plan: the states to keep, their thresholds, and the budget table.

`make_plan` works on two splits of an evaluation (per-sample correctness and confidence,
or prediction for the agreement policy, of every state: `edgeadapt.planning.outcomes`) and
the per-state costs measured on the device:

1. Reference: the best single state on the calibration split, or the state
   `PlanOptions.reference` names (its accuracy minus `max_drop` is the accuracy every
   candidate must keep on that split). Naming it holds plans over different state sets
   to the same reference, e.g. a mixed-precision plan and an fp32-only one to the fp32
   last exit.
2. Subsets: **every** subset of at most `max_states` states is a candidate (not only those
   holding the last state: the constraint decides); `edgeadapt.planning.search.search_subsets`
   finds the cheapest whose calibrated thresholds keep the target, pruned by a lower
   bound on the expected cost (exact, as far as the calibrator is). Ties go to fewer
   states.
3. States whose calibrated threshold never fires are dropped from the winner (their
   outcomes are unchanged; an ensemble no longer pays for them).
4. Thresholds (``calibration="risk"``, the default): the subset's thresholds are
   chosen by Learn then Test (`edgeadapt.planning.risk`): the calibration split chooses a
   path (per-exit frontier or one shared threshold) and a test, the path learned there
   is tested in order on the held-out split, so that P(drop on new data > max_drop)
   <= delta, the drop the `promise` names (``net``: losses minus gains; ``loss``:
   losses). An agreement plan's subset is searched at several shares of max_drop
   (`SEARCH_LEVELS`) and the calibration split picks the one it predicts cheapest once
   tested. When nothing can be promised (too few held-out samples, or no point passes)
   the plan keeps the reference state alone: the static model.
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

Branch bundles (``kind="branches"``, AdaInf's execution branches) get two plans
(`edgeadapt.planning.branches`): the budget table (the device's Pareto set of branches,
measured cost against calibration accuracy; without a budget the most accurate branch
answers alone, with one the table picks the branch; thresholds are placeholders) and a
cascade under the policy, planned as an ensemble's (steps 2 to 5: each branch runs from
the input, and a sample pays every branch run). ``PlanOptions.branches`` keeps the one
asked for, by default (``auto``) the one cheaper at the promise on the held-out split;
the plan records both and why (`Plan.branches`).
Under the scheduler policy (`edgeadapt.planning.scheduler`) one kept branch (chosen on
the calibration split) always runs and learned estimators over its outputs pick the
branch that answers, risk-controlled; the Pareto set and its budget table stay for
budgets.

Costs (`state_costs_ms`, one per bundle state): for ``kind="early-exit"`` the cascade
cost of state i (steps 0..i), which is also what a sample exiting at i pays in any kept
subset (steps are fused: skipped states' steps still run); for ``kind="ensemble"`` each
model's own cost, and a sample exiting at the j-th kept state pays the sum over kept
states up to j; for an early-exit bundle of several chains (precision variants, its
`chains`) each state's chain's cost up to it, and a sample pays the chain rule
(`edgeadapt.formats.chains`): each chain's deepest kept state so far, so a plan may mix
chains. The oracle and the budget table use the state's own cost (a budget route of
several chains, its chain rule).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle, as_bundle
from edgeadapt.formats.chains import Chains, Layout
from edgeadapt.formats.evaluation import CONF_KEYS, Evaluation, check_evaluation, load_evaluation
from edgeadapt.formats.plan import (
    AGREEMENT_NEVER,
    COST_STATS,
    KINDS,
    MEASURE_RANGES,
    SCHEDULER_NEVER,
    BranchOption,
    BudgetRow,
    Estimator,
    Gate,
    Plan,
    Promise,
    SplitFigures,
    save_plan,
)
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.formats.profile import Profile, check_profile, load_profile, state_costs, static_cost
from edgeadapt.kernel_ref import MEASURES
from edgeadapt.oracle.equations import exact_oracle
from edgeadapt.planning.branches import check_branch_choice, keep_cheaper
from edgeadapt.planning.calibrate import NEVER, CascadeResult, calibrate, exit_states, simulate
from edgeadapt.planning.gates import fit_gates, policy_confidences
from edgeadapt.planning.outcomes import POLICIES, Outcomes
from edgeadapt.planning.paths import check_promise, shared_path
from edgeadapt.planning.risk import MARGIN, Choice, RiskControlled, choose, risk_control
from edgeadapt.planning.scheduler import exit_costs as scheduler_costs
from edgeadapt.planning.scheduler import policy_scores, schedule, simulate_scheduler
from edgeadapt.planning.search import CalibratedSubset, Scores, search_subsets, subset_costs
from edgeadapt.planning.stats import drop_upper_bound

if TYPE_CHECKING:
    import os

CALIBRATIONS = ("risk", "empirical")
#: Shares of max_drop the subset search runs at for a risk-controlled agreement plan.
#: The test passes a drop below max_drop, and an agreement path has few points (the
#: shares take few values), so a subset chosen to spend all of max_drop on the
#: calibration split may promise nothing where one chosen for part of it would; the
#: learning split chooses (`edgeadapt.planning.risk.choose`). Confidence and gate paths
#: move in small steps, and search at max_drop alone.
SEARCH_LEVELS = (1.0, 0.75, 0.5, 0.25)
_TOL = 1e-9


@dataclass(frozen=True)
class PlanOptions:
    """What a user chooses when planning (the options of ``edgeadapt plan``; the module
    docstring says what each does): at most `max_states` kept states, an accuracy drop of
    at most `max_drop` promised with probability 1 - `delta` (`promise`: ``net`` or
    ``loss``) under `calibration` (``risk`` or ``empirical``), the `policy` (`POLICIES`)
    on the confidence `measure` (None: the splits' own, else maxprob), the split of
    an evaluation into calibration and held-out parts (`heldout` share, `seed`), and for
    a branches bundle whether to keep its cascade or its budget table (`branches`:
    ``auto``, ``cascade`` or ``table``, `edgeadapt.planning.branches`), and the
    `reference` state the promise is held against, by name (None: the most accurate
    state on the calibration split)."""

    max_states: int = 4
    max_drop: float = 0.005
    delta: float = 0.05
    measure: str | None = None
    calibration: str = "risk"
    policy: str = "threshold"
    promise: str = "net"
    heldout: float = 0.5
    seed: int = 0
    branches: str = "auto"
    reference: str | None = None


@dataclass(frozen=True)
class PlanCosts:
    """What the planner takes from the device: each state's cost (`state_ms`, at batch 1
    and the percentile `stat`), the measured whole model's (`static_ms`, None when not
    timed), the order the steps were timed in, the runtime configuration they were
    measured under and the cascade's own cost per hop (`hop_overhead_ms`, None: not
    measured). `profile_costs` reads them from a profile."""

    state_ms: tuple[float, ...]
    static_ms: float | None = None
    order: str = "chain"
    stat: str = "p50"
    runtime: RuntimeConfig | None = None
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


def _as_costs(costs: PlanCosts | Sequence[float] | np.ndarray) -> PlanCosts:
    """`costs` as a `PlanCosts` record (bare per-state costs: nothing else known)."""
    return costs if isinstance(costs, PlanCosts) else PlanCosts(tuple(costs))


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


def exit_costs(
    state_costs: np.ndarray, states: Sequence[int], kind: Layout, hop_ms: float | None = None
) -> np.ndarray:
    """What a sample exiting at each kept state pays (`edgeadapt.planning.search.subset_costs`)
    plus, for a cascade of several states, `hop_ms` per hop run to reach it."""
    return _add_hops(subset_costs(state_costs, states, kind), hop_ms, kind)


def _add_hops(cost: np.ndarray, hop_ms: float | None, kind: Layout) -> np.ndarray:
    if not hop_ms or len(cost) < 2 or kind == "branches":
        return cost
    return cost + hop_ms * np.arange(1, len(cost) + 1)


def _search(
    calib: Outcomes,
    costs: np.ndarray,
    kind: Layout,
    max_states: int,
    max_drop: float,
    reference_accuracy: float,
    hop_ms: float | None,
    scores: Scores,
    last: int | None = None,
) -> CalibratedSubset:
    """`search_subsets` on the `scores` of each subset; with a per-hop overhead, the
    cheapest of its best subsets of at most 1, 2, ... `max_states` states once the hops
    are counted (a cascade of more states pays more hops), ties to fewer states."""
    sizes = range(1, max_states + 1) if hop_ms and kind != "branches" else (max_states,)
    best: tuple[float, CalibratedSubset] | None = None
    evaluated = 0
    for m in sizes:
        choice = search_subsets(
            scores,
            calib.correct,
            costs,
            kind=kind,
            max_states=m,
            max_drop=max_drop,
            reference_accuracy=reference_accuracy,
            last=last,
        )
        evaluated += choice.evaluated
        cols = list(choice.states)
        cost = simulate(
            scores(choice.states),
            calib.correct[:, cols],
            exit_costs(costs, choice.states, kind, hop_ms),
            choice.calibration.thresholds,
        ).expected_cost
        if best is None or cost < best[0] - _TOL * max(1.0, abs(best[0])):
            best = (cost, choice)
    assert best is not None
    return replace(best[1], evaluated=evaluated)


def _measure(calib: Outcomes, heldout: Outcomes, options: PlanOptions | None) -> str:
    """The one measure of both splits and the caller's choice."""
    measure = None if options is None else options.measure
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
    options: PlanOptions,
) -> None:
    """Refuse what `make_plan` cannot plan: a policy the splits cannot support, splits,
    costs or a bundle identity that do not fit together, and bad `options` (its measure
    resolved)."""
    measure = options.measure or "maxprob"
    _check_policy(calib, heldout, kind, options.policy, measure)
    _check_splits(calib, heldout, costs, manifest_sha256, kind, measure)
    _check_choices(options)


def _check_policy(calib: Outcomes, heldout: Outcomes, kind: str, policy: str, measure: str) -> None:
    """The `policy` is known, fits the bundle `kind`, and both splits hold what it reads."""
    if policy not in POLICIES:
        raise InputError(f"must be one of {list(POLICIES)}, got {policy!r}", field="policy")
    if policy == "scheduler" and kind != "branches":
        raise InputError(
            f"the scheduler policy picks the branch of a branches bundle; this bundle is {kind}",
            field="policy",
        )
    splits = (("calibration", calib), ("heldout", heldout))
    for name, split in splits:
        if policy == "agreement" and split.pred is None:
            raise InputError(
                f"the agreement policy reads each state's predictions; the {name} split has none",
                field="pred",
            )
        if policy != "agreement" and split.conf is None:
            raise InputError(
                f"the {policy} policy thresholds {measure} confidences; the {name} split has "
                "none (imported predictions: plan them with --policy agreement, or write "
                "the evaluation with edgeadapt evaluate, which stores every measure)",
                field=CONF_KEYS[measure],
            )
    for name, split in splits if policy in ("gate", "scheduler") else ():
        if split.gate_inputs is None:
            raise InputError(
                f"the {name} split lacks what gates read (the argmax and the maxprob, "
                "margin and entropy confidences); write the evaluation again with "
                "edgeadapt evaluate, which stores every measure",
                field="gate_inputs",
            )


def _check_splits(
    calib: Outcomes,
    heldout: Outcomes,
    costs: np.ndarray,
    manifest_sha256: str,
    kind: str,
    measure: str,
) -> None:
    """Both splits of the same states, one finite cost per state, a bundle identity and
    kind, and confidences within the `measure`'s range."""
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
        if split.conf is None:
            continue
        if (low is not None and split.conf.min() < low) or split.conf.max() > high:
            raise InputError(
                f"confidences span [{split.conf.min()}, {split.conf.max()}], outside the "
                f"{measure} range [{low if low is not None else '-inf'}, {high}]",
                field=name,
            )


def _check_choices(options: PlanOptions) -> None:
    """The number of states, the drop, its confidence and the calibration are valid."""
    max_drop, calibration = options.max_drop, options.calibration
    if options.max_states < 1:
        raise InputError(f"must be >= 1, got {options.max_states}", field="max_states")
    if not 0.0 <= max_drop <= 1.0:
        raise InputError(f"must be in [0, 1], got {max_drop}", field="max_drop")
    if not 0.0 < options.delta < 1.0:
        raise InputError(f"must be in (0, 1), got {options.delta}", field="delta")
    check_branch_choice(options.branches)
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
    """The kept states so far, their thresholds (one per state but the last), the policy
    (`POLICIES`) and its gates (None unless gates), the promise tested on them and why
    the plan fell back to the static model (None: it did not)."""

    states: tuple[int, ...]
    thresholds: np.ndarray
    gates: tuple[Gate, ...] | None
    promise: Promise | None
    fallback: str | None
    policy: str = "threshold"
    scheduler: tuple[Estimator, ...] | None = None
    scheduler_first: int = 0

    def scores(self, split: Outcomes) -> np.ndarray:
        """What the policy thresholds on `split` at the kept states."""
        if self.scheduler is not None:
            return policy_scores(self.scheduler, split, self.states, self.scheduler_first)
        return split.scores(self.states, self.policy, self.gates)


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
    """`chosen` without the states whose threshold can never fire (they only cost).

    Gates and agreement read every earlier kept state, so such a state cannot be dropped
    on its own: a gate plan keeps all of them or only the last (`_gated_states` leaves
    all firing or none), an agreement plan keeps them all while any state fires."""
    fires = np.append(np.isfinite(chosen.thresholds), True)
    if chosen.policy != "threshold" and not fires.all():
        keep_all = chosen.policy == "agreement" and fires[:-1].any()
        fires[:] = keep_all
        fires[-1] = True
    states = tuple(s for s, keep in zip(chosen.states, fires, strict=True) if keep)
    gates = None if chosen.gates is None else chosen.gates[: len(states) - 1]
    return replace(chosen, states=states, thresholds=chosen.thresholds[fires[:-1]], gates=gates)


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
    return _Chosen(states, np.full(len(states) - 1, NEVER), None, None, None, chosen.policy)


def _split_figures(
    split: Outcomes,
    chosen: _Chosen,
    *,
    costs: np.ndarray,
    kind: Layout,
    reference: int,
    hop_ms: float | None,
) -> tuple[SplitFigures, np.ndarray]:
    """The policy of `chosen` simulated on `split`: its figures and which rows it gets
    right."""
    cols = list(chosen.states)
    if chosen.scheduler is None:
        paid = exit_costs(costs, chosen.states, kind, hop_ms)
    else:  # the first branch, then the one picked
        paid = scheduler_costs(costs, chosen.states, hop_ms, chosen.scheduler_first)
    run = simulate(chosen.scores(split), split.correct[:, cols], paid, chosen.thresholds)
    policy_correct = split.correct[np.arange(split.n), np.asarray(cols)[run.exit_state]]
    ref = float(split.correct[:, reference].mean())
    figures = SplitFigures(split.n, run.accuracy, ref, ref - run.accuracy, run.expected_cost)
    return figures, policy_correct


@dataclass(frozen=True)
class _Setting:
    """What every step of `make_plan` reads: the costs, the layout whose cost rule they
    follow (the bundle kind; a bundle of several chains: its chains), the reference state,
    the drop and its confidence, the promise and the per-hop cost."""

    costs: np.ndarray
    kind: Layout
    reference: int
    max_drop: float
    delta: float
    promise: str
    hop_ms: float | None


def _candidates(
    calib: Outcomes,
    setting: _Setting,
    *,
    max_states: int,
    policy: str,
    calibration: str,
) -> tuple[list[_Chosen], int]:
    """The subsets worth testing, with their thresholds (placeholders for risk control)
    and gates, and how many subsets were calibrated to find them: the cheapest subset
    at max_drop, and for a risk-controlled agreement plan at each of `SEARCH_LEVELS` of it."""
    reference_accuracy = float(calib.correct[:, setting.reference].mean())
    search_policy = "agreement" if policy == "agreement" else "threshold"

    def scores(states: tuple[int, ...]) -> np.ndarray:
        return calib.scores(states, search_policy)

    risk = calibration == "risk"
    levels = SEARCH_LEVELS if risk and policy == "agreement" else (1.0,)
    # An agreement plan under risk control ends at the reference (`_ending_at_reference`):
    # its states' shares depend on which ones run, so the search sees that ending.
    last = setting.reference if len(levels) > 1 else None
    out: list[_Chosen] = []
    evaluated = 0
    for level in levels:
        found = _search(
            calib,
            setting.costs,
            setting.kind,
            max_states,
            setting.max_drop * level,
            reference_accuracy,
            setting.hop_ms,
            scores,
            last,
        )
        evaluated += found.evaluated
        chosen = _Chosen(found.states, found.calibration.thresholds, None, None, None, policy)
        if risk:
            chosen = _ending_at_reference(chosen, setting.reference)
        if policy == "gate":
            kept, gated, gate_thresholds = _gated_states(calib, chosen.states, setting, calibration)
            chosen = _Chosen(kept, gate_thresholds, gated, None, None, policy)
        if all(c.states != chosen.states for c in out):
            out.append(chosen)
    return out, evaluated


def _risk_controlled(
    calib: Outcomes, heldout: Outcomes, candidates: Sequence[_Chosen], setting: _Setting
) -> _Chosen:
    """Learn then Test over the `candidates`: each one's path and test are chosen on
    `calib` (`edgeadapt.planning.risk.choose`), the candidate predicted cheapest (an
    earlier one unless a later one predicts `MARGIN` less) is tested on `heldout`; its
    promise, or the static model when nothing passed."""
    ref = setting.reference
    best: tuple[_Chosen, Choice, np.ndarray] | None = None
    for cand in candidates:
        cost = exit_costs(setting.costs, cand.states, setting.kind, setting.hop_ms)
        learn = (cand.scores(calib), calib.correct[:, list(cand.states)], calib.correct[:, ref])
        choice = choose(
            learn,
            cost,
            max_drop=setting.max_drop,
            delta=setting.delta,
            promise=setting.promise,
            n_test=heldout.n,
        )
        if best is None or choice.predicted_cost < best[1].predicted_cost * (1.0 - MARGIN):
            best = (cand, choice, cost)
    assert best is not None
    cand, choice, cost = best
    cols = list(cand.states)
    controlled: RiskControlled = risk_control(
        (cand.scores(calib), calib.correct[:, cols], calib.correct[:, ref]),
        (cand.scores(heldout), heldout.correct[:, cols], heldout.correct[:, ref]),
        cost,
        max_drop=setting.max_drop,
        delta=setting.delta,
        promise=setting.promise,
        choice=choice,
    )
    tested = controlled.promise
    if tested.holds:
        return replace(cand, thresholds=controlled.thresholds, promise=tested)
    no_gates = None if cand.gates is None else ()
    return _Chosen((ref,), np.empty(0), no_gates, tested, tested.describe(), cand.policy)


def make_plan(
    calib: Outcomes,
    heldout: Outcomes,
    costs: PlanCosts | Sequence[float] | np.ndarray,
    *,
    manifest_sha256: str,
    kind: str = "early-exit",
    options: PlanOptions | None = None,
    chains: Chains | None = None,
) -> Plan:
    """Pick states, calibrate thresholds on `calib`, report on `heldout` (module docstring),
    as `options` say (`PlanOptions`, default its defaults), on the device's `costs` (a
    `PlanCosts`, or bare per-state costs in ms).

    `costs.hop_overhead_ms` is the cascade's own cost per hop on the device (module
    docstring: per-hop overhead); None counts none. `costs.static_ms` is the measured
    whole model's cost, recorded as the plan's static baseline; the plan also records
    `costs.stat` and `costs.runtime`.

    `options.policy` ``"gate"`` fits a learned gate per kept state but the last on
    `calib` (`edgeadapt.planning.gates`) and thresholds the gates' scores instead of the
    confidences; the splits need every measure's confidences (`Outcomes.gate_inputs`).
    ``"agreement"`` thresholds the share of the earlier kept states that agree with
    each state's prediction (`edgeadapt.kernel_ref.agreement_shares`): it reads
    predictions only, so imported predictions can be planned. `options.promise` (risk
    control) is what the plan bounds: ``net``, the accuracy drop (losses minus gains
    against the reference state), or ``loss``, the losses alone. `options.measure`
    names the confidence measure of the splits (the plan records it); it defaults to
    the splits' own (`Outcomes.measure`), else maxprob, and must agree with it.
    `chains` (an early-exit bundle of several chains: `Bundle.chains`) makes each
    subset pay the chain rule (`edgeadapt.formats.chains`), so a plan may mix chains.
    """
    device = _as_costs(costs)
    options = replace(options or PlanOptions(), measure=_measure(calib, heldout, options))
    state_ms = np.asarray(device.state_ms, dtype=np.float64)
    if device.stat not in COST_STATS:
        raise InputError(
            f"must be one of {list(COST_STATS)}, got {device.stat!r}", field="cost_stat"
        )
    _check_args(calib, heldout, state_ms, manifest_sha256, kind, options)
    hop_ms = _check_costs(device.static_ms, device.hop_overhead_ms)
    reference = _reference(calib, options.reference)
    paid: Layout = kind
    if chains is not None and kind == "early-exit" and len(set(chains)) > 1:
        paid = _checked_chains(chains, len(state_ms))
    promise = check_promise(options.promise)
    setting = _Setting(state_ms, paid, reference, options.max_drop, options.delta, promise, hop_ms)
    if kind == "branches" and options.policy != "scheduler":
        return _branches_plan((calib, heldout), setting, options, device, manifest_sha256)
    chosen, evaluated = _choose(calib, heldout, setting, options)
    return _plan_record(
        (calib, heldout), chosen, evaluated, (manifest_sha256, kind), options, device, setting
    )


def _reference(calib: Outcomes, name: str | None) -> int:
    """The reference state: the one named `name`, else the most accurate on `calib`."""
    if name is None:
        return int(np.argmax(calib.correct.mean(axis=0)))
    if name not in calib.names:
        raise InputError(
            f"no state named {name!r}; the states are {list(calib.names)}", field="reference"
        )
    return calib.names.index(name)


def _checked_chains(chains: Chains, n_states: int) -> Chains:
    """`chains`, one per state, each chain's states contiguous."""
    chains = tuple(int(c) for c in chains)
    if len(chains) != n_states or any(
        c in chains[:i] and chains[i - 1] != c for i, c in enumerate(chains)
    ):
        raise InputError(
            f"need one chain per state ({n_states}), each chain contiguous; got {chains}",
            field="chains",
        )
    return chains


def _choose(
    calib: Outcomes, heldout: Outcomes, setting: _Setting, options: PlanOptions
) -> tuple[_Chosen, int]:
    """The kept states, their thresholds, gates and promise (steps 2 to 4 of the module
    docstring), and how many subsets were calibrated to find them."""
    policy, calibration = options.policy, options.calibration
    if policy == "scheduler":
        return _scheduled(calib, heldout, setting, calibration), 0
    candidates, evaluated = _candidates(
        calib, setting, max_states=options.max_states, policy=policy, calibration=calibration
    )
    if calibration == "risk":
        chosen = _firing(_risk_controlled(calib, heldout, candidates, setting))
    else:
        chosen = _firing(candidates[0])
    return chosen, evaluated


def _branches_plan(
    splits: tuple[Outcomes, Outcomes],
    setting: _Setting,
    options: PlanOptions,
    device: PlanCosts,
    manifest_sha256: str,
) -> Plan:
    """A branches bundle's plan (`edgeadapt.planning.branches`): its budget table (the
    Pareto set; the most accurate branch alone without a budget) and its cascade under
    `options.policy` (planned as an ensemble's: each branch from the input), both
    figured on the held-out split; the one `options.branches` asks for kept, recording
    both and why."""
    calib, heldout = splits
    kept = pareto_states(setting.costs, calib.correct.mean(axis=0))
    table = _Chosen(kept, np.full(len(kept) - 1, math.inf), None, None, None)
    table_held, _ = _split_figures(
        heldout,
        table,
        costs=setting.costs,
        kind="branches",
        reference=setting.reference,
        hop_ms=None,
    )
    flow = replace(setting, kind="ensemble")  # a sample pays every branch it runs
    cascade, evaluated = _choose(calib, heldout, flow, options)
    cascade, cascade_held, _, _ = _settled(calib, heldout, cascade, flow, device.static_ms)
    choice = keep_cheaper(
        options.branches,
        BranchOption("table", kept, table_held.accuracy, table_held.cost_ms),
        BranchOption(options.policy, cascade.states, cascade_held.accuracy, cascade_held.cost_ms),
        calib.names,
        cascade.fallback,
    )
    identity = (manifest_sha256, "branches")
    if choice.run == "cascade":
        plan = _plan_record(splits, cascade, evaluated, identity, options, device, flow)
    else:
        table_options = replace(options, policy="threshold")  # the table has no policy
        plan = _plan_record(splits, table, evaluated, identity, table_options, device, setting)
    return replace(plan, branches=choice)


def _settled(
    calib: Outcomes,
    heldout: Outcomes,
    chosen: _Chosen,
    setting: _Setting,
    static_ms: float | None,
) -> tuple[_Chosen, SplitFigures, np.ndarray, SplitFigures]:
    """`chosen`, or the static model when a cascade does not beat the measured one on
    `heldout` (step 5 of the module docstring), with its held-out figures, the held-out
    rows it gets right and its calibration figures."""
    figures = partial(
        _split_figures,
        costs=setting.costs,
        kind=setting.kind,
        reference=setting.reference,
        hop_ms=setting.hop_ms,
    )
    held, held_correct = figures(heldout, chosen)
    # (a branch table without a budget runs its last branch alone: no cascade to refuse)
    if (
        _decides(setting, chosen)
        and static_ms is not None
        and len(chosen.states) > 1
        and held.cost_ms >= static_ms
    ):
        hop_ms = setting.hop_ms
        counted = f" (the cascade's own {hop_ms:.4g} ms per hop included)" if hop_ms else ""
        why = (
            f"no plan of several states beats the measured static model: expected "
            f"{held.cost_ms:.4g} ms{counted} against {static_ms:.4g} ms; the plan "
            "keeps the static model"
        )
        no_gates = None if chosen.gates is None else ()
        reference = (setting.reference,)
        chosen = _Chosen(reference, np.empty(0), no_gates, chosen.promise, why, chosen.policy)
        if chosen.policy == "scheduler":
            chosen = replace(chosen, scheduler=())
        held, held_correct = figures(heldout, chosen)
    return chosen, held, held_correct, figures(calib, chosen)[0]


def _decides(setting: _Setting, chosen: _Chosen) -> bool:
    """Whether the plan decides per sample without a budget (a cascade, or the
    scheduler): all but a branches bundle's budget table, whose last branch answers."""
    return setting.kind != "branches" or chosen.scheduler is not None


def _plan_record(
    splits: tuple[Outcomes, Outcomes],
    chosen: _Chosen,
    evaluated: int,
    identity: tuple[str, str],
    options: PlanOptions,
    device: PlanCosts,
    setting: _Setting,
) -> Plan:
    """The `Plan` of `chosen` (its figures on both `splits`, the static fallback, the
    budget table and the oracle) for the bundle `identity` (manifest sha256, kind)."""
    calib, heldout = splits
    chosen, held, held_correct, calib_figures = _settled(
        calib, heldout, chosen, setting, device.static_ms
    )
    measure, policy, costs, reference = (
        options.measure or "maxprob",
        options.policy,
        setting.costs,
        setting.reference,
    )
    states, tested, fallback = chosen.states, chosen.promise, chosen.fallback
    oracle = exact_oracle(heldout.correct, costs)
    r_n = float(costs[-1])
    return Plan(
        manifest_sha256=identity[0],
        kind=identity[1],
        bundle_states=calib.names,
        measure=measure,
        states=states,
        thresholds=_written(chosen.thresholds, measure, policy, _decides(setting, chosen)),
        cost_ms=tuple(float(c) for c in subset_costs(costs, states, setting.kind)),
        budget=budget_table(_route_costs(setting, states), calib.correct.mean(axis=0), states),
        reference_state=reference,
        max_drop=options.max_drop,
        calibration=calib_figures,
        heldout=held,
        drop_bound=_drop_bound(heldout, reference, held_correct, options.delta, tested, fallback),
        delta=options.delta,
        r_oracle=oracle.r_oracle,
        a_oracle=oracle.a_oracle,
        r_n=r_n,
        a_n=float(heldout.correct[:, -1].mean()),
        gap_closure=gap_closure(r_n, held.cost_ms, oracle.r_oracle),
        search_method="exhaustive",
        max_states=options.max_states,
        subsets_evaluated=evaluated,
        promise=tested,
        static_ms=None if device.static_ms is None else float(device.static_ms),
        fallback=fallback,
        gates=chosen.gates,
        cost_stat=device.stat,
        runtime=device.runtime,
        hop_overhead_ms=setting.hop_ms,
        agreement=policy == "agreement",
        scheduler=chosen.scheduler,
        scheduler_first=chosen.scheduler_first,
    )


def _route_costs(setting: _Setting, states: Sequence[int]) -> np.ndarray:
    """Each state's cost as a budget route to it pays: its own, but for a kept state of
    a bundle of several chains the cascade up to it (the chain rule)."""
    if isinstance(setting.kind, str):
        return setting.costs
    out = setting.costs.copy()
    out[list(states)] = subset_costs(setting.costs, states, setting.kind)
    return out


def _written(
    thresholds: np.ndarray, measure: str, policy: str, cascaded: bool
) -> tuple[float, ...]:
    """The thresholds as the plan file holds them: a branches plan never exits on
    confidence (placeholders), an agreement plan writes `AGREEMENT_NEVER` for a voter
    that never exits."""
    if not cascaded:
        return tuple(float(MEASURE_RANGES[measure][1]) for _ in thresholds)
    if policy == "scheduler":
        return tuple(SCHEDULER_NEVER if math.isinf(t) else float(t) for t in thresholds)
    if policy == "agreement":
        return tuple(AGREEMENT_NEVER if math.isinf(t) else float(t) for t in thresholds)
    return tuple(float(t) for t in thresholds)


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


def _gated_states(
    calib: Outcomes, states: tuple[int, ...], setting: _Setting, calibration: str
) -> tuple[tuple[int, ...], tuple[Gate, ...], np.ndarray]:
    """Gates for the kept `states`, fitted on `calib`, and their calibration-split
    thresholds (the empirical ones, or the end of the shared-threshold path for risk
    control: gate scores all estimate one probability, so one threshold serves every
    gate, `edgeadapt.planning.paths.shared_path`).

    A state whose gate never fires there is dropped and the gates are fitted again on
    the rest (its features would otherwise still feed the later gates), until every
    gate fires or none does. Only the calibration split is read, so the held-out test
    stays a single test.
    """
    ref = calib.correct[:, setting.reference]
    while True:
        cols = list(states)
        assert calib.gate_inputs is not None  # checked by _check_args
        inputs = calib.gate_inputs.select(cols)
        correct = calib.correct[:, cols]
        gates = fit_gates(inputs, correct, ref)
        conf = policy_confidences(gates, inputs)
        cost = exit_costs(setting.costs, states, setting.kind, setting.hop_ms)
        if calibration == "risk":
            t = shared_path(conf, correct, ref, max_drop=setting.max_drop, promise=setting.promise)[
                -1
            ]
        else:
            t = calibrate(
                conf, correct, cost, max_drop=setting.max_drop, reference_accuracy=float(ref.mean())
            ).thresholds
        exits = np.bincount(exit_states(conf, t), minlength=len(states))[:-1]
        fires = np.isfinite(t) & (exits > 0)
        if fires.all() or not fires.any():
            return states, gates, np.where(fires, t, NEVER)
        states = tuple(s for s, f in zip(states, [*fires, True], strict=True) if f)


def _scheduled(calib: Outcomes, heldout: Outcomes, setting: _Setting, calibration: str) -> _Chosen:
    """The content-aware scheduler over the device's Pareto set of branches
    (`edgeadapt.planning.scheduler.schedule`)."""
    kept = pareto_states(setting.costs, calib.correct.mean(axis=0))
    s = schedule(
        calib,
        heldout,
        kept,
        setting.costs,
        setting.reference,
        max_drop=setting.max_drop,
        delta=setting.delta,
        promise=setting.promise,
        calibration=calibration,
        hop_ms=setting.hop_ms,
    )
    return _Chosen(
        s.states, s.thresholds, None, s.promise, s.fallback, "scheduler", s.estimators, s.first
    )


def plan_bundle(
    bundle: Bundle,
    evaluation: Evaluation,
    costs: PlanCosts | Sequence[float] | np.ndarray,
    options: PlanOptions | None = None,
) -> Plan:
    """The plan `edgeadapt plan` makes: `evaluation` (checked to be of `bundle`, its
    columns taken in the bundle's state order: `check_evaluation`) split into a
    calibration and a held-out part (`options.heldout`, `options.seed`), then
    `make_plan` on the device's `costs` (its measure defaults to maxprob)."""
    options = options or PlanOptions()
    measure = options.measure or "maxprob"
    key = CONF_KEYS.get(measure)
    if options.policy != "agreement" and key is not None and getattr(evaluation, key, None) is None:
        raise InputError(
            f"planning on {measure} needs {measure} confidences; this evaluation has none "
            "(imported predictions: plan them with --policy agreement; or write it again "
            "with edgeadapt evaluate, which stores every measure)",
            source=getattr(evaluation, "source", None),
            field=key,
        )
    outcomes = Outcomes.from_evaluation(check_evaluation(evaluation, bundle), measure)
    calib, held = outcomes.split(heldout=options.heldout, seed=options.seed)
    return make_plan(
        calib,
        held,
        costs,
        manifest_sha256=bundle.manifest_sha256,
        kind=bundle.kind,
        options=replace(options, measure=measure),
        chains=bundle.chains,
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
    if plan.scheduler is not None:
        return simulate_scheduler(plan, split)
    return simulate(
        split.scores(plan.states, plan.policy, plan.gates),
        split.correct[:, list(plan.states)],
        _add_hops(
            np.asarray(plan.cost_ms, dtype=np.float64),
            plan.hop_overhead_ms,
            plan.cost_kind,
        ),
        np.asarray(plan.thresholds, dtype=np.float64),
    )


def profile_costs(profile: Profile, bundle: Bundle, stat: str = "p50") -> PlanCosts:
    """The state costs and the static baseline of `profile` for `bundle` (checked), at
    batch 1 and the percentile `stat` (p50, p90 or p99: a plan made on p90 costs keeps
    budgets with fewer misses)."""
    if stat not in COST_STATS:
        raise InputError(f"must be one of {list(COST_STATS)}, got {stat!r}", field="cost_stat")
    overhead = profile.cascade_overhead
    return PlanCosts(
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
    costs: PlanCosts | None = None
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


def plan_to_file(
    bundle: Bundle | str | os.PathLike[str],
    *,
    profile: Profile | str | os.PathLike[str],
    evaluation: Evaluation | str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    options: PlanOptions | None = None,
    cost_stat: str = "p50",
    hop_overhead_ms: float | None = None,
) -> PlanSummary:
    """What ``edgeadapt plan`` does: plan `bundle` on the `profile`'s costs at `cost_stat`
    (`profile_costs`) and the `evaluation` as `options` say (`plan_bundle`), and save the
    plan to `output` (default ``BUNDLE/plan.json``). The per-hop overhead is the
    profile's (`Profile.cascade_overhead`) unless `hop_overhead_ms` is given."""
    b = as_bundle(bundle)
    if isinstance(profile, Profile):
        check_profile(profile, b)
        prof = profile
    else:
        prof = load_profile(profile, b)
    ev = evaluation if isinstance(evaluation, Evaluation) else load_evaluation(evaluation)
    costs = profile_costs(prof, b, stat=cost_stat)
    if hop_overhead_ms is not None:
        costs = replace(costs, hop_overhead_ms=hop_overhead_ms)
    plan = plan_bundle(b, ev, costs, options)
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


def plan_options(plan: Plan) -> PlanOptions:
    """The `PlanOptions` `plan` was made with, as far as the plan records them (the
    held-out share from its split sizes; the seed is not recorded: the default; a branches
    plan's choice as it was asked; its reference state, by name, so that a plan made
    against a named reference is made again against it). Its
    costs' percentile and per-hop overhead are `Plan.cost_stat` and
    `Plan.hop_overhead_ms`."""
    held, calib = plan.heldout.n, plan.calibration.n
    return PlanOptions(
        heldout=held / (held + calib),
        measure=plan.measure,
        max_states=plan.max_states,
        max_drop=plan.max_drop,
        delta=plan.delta,
        calibration="empirical" if plan.promise is None else "risk",
        promise="net" if plan.promise is None else plan.promise.kind,
        branches="auto" if plan.branches is None else plan.branches.asked,
        reference=plan.bundle_states[plan.reference_state],
    )


def compare_policies(
    bundle: Bundle,
    evaluation: Evaluation,
    costs: PlanCosts | Sequence[float] | np.ndarray,
    options: PlanOptions | None = None,
) -> tuple[PolicyOutcome, ...]:
    """Every policy (`POLICIES`) planned by `plan_bundle` from the same inputs and
    `options` (their policy replaced; the scheduler for branches bundles only), so they
    can be shown side by side; a policy the inputs cannot support (an evaluation without
    every measure's confidences has no gates) comes
    with the reason instead of a plan."""
    base = options or PlanOptions()
    out = []
    # the scheduler is a branches bundle's only: other kinds leave it out, no reason needed
    for policy in (p for p in POLICIES if p != "scheduler" or bundle.kind == "branches"):
        try:
            plan = plan_bundle(bundle, evaluation, costs, replace(base, policy=policy))
        except InputError as e:
            out.append(PolicyOutcome(policy, None, e.message))
        else:
            out.append(PolicyOutcome(policy, plan))
    return tuple(out)
