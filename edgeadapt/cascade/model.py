"""`AdaptiveModel`: run a bundle's states as a batched cascade under the decision kernel.

The cascade walks the kept states in order (all of the bundle's, or a plan's), one hop
each: a hop is the run of bundle steps that reaches a kept state from the previous one.
Before each hop after the first, the policy checks that its predicted cost fits what is
left of the budget; then the hop's steps run on the rows still active, the kernel
decides on the kept state's logits which rows exit, and only the rows that continue go on
(compaction): early-exit bundles carry the activation rows ``act[continue_idx]`` along
the chain, and every model input a later step reads (ensemble members' inputs, a
transformer's ``attention_mask``) is gathered to the surviving rows ``x[rows]``. For an early-exit plan
that skips states, the skipped states' steps still run (they produce the activation)
but do not decide. In a bundle of several chains (precision variants) a hop runs its
chain's steps after that chain's previous kept state, so a chain's first kept state
starts from the model inputs. A row whose logits hold NaN never exits early; at the
last state it gets ``pred = -1`` and ``conf = NaN``.

Budget (``predict(x, budget_ms=B)``): with a plan, its budget table first picks the
target, the most accurate kept state whose predicted cost fits B (the kernel's
`Policy.lookup`, on the EWMA-corrected costs, so a budget that contention has made
tight picks a cheaper state). An early-exit plan then runs the cascade up to that
state, which always answers; an ensemble or branches plan runs that one member alone
(AdaInf's direct selection of a branch). When nothing fits, or without a plan, the
cascade walks every kept state. A branches plan that runs its budget table
(`Plan.walks` false) runs its most accurate branch alone without a budget; a branches
cascade plan walks its branches as an ensemble's members. Either way the first state of the route always runs (there is no answer
before it); when the next one is predicted not to fit what is left, every remaining row
exits with its answer at the last completed state (``budget_exit`` marks them).
Predicted hop costs come from `step_costs_ms` (one per bundle step, summed over each
hop's steps), a profile (at the plan's cost percentile) or the plan, and measured ones
are folded in: costs from a profile or a plan keep tracking their percentile of the
measured costs (a p90 plan stays a p90 plan, and one preempted call moves it one bounded
step), costs given as numbers their EWMA mean.

    >>> m = AdaptiveModel.load("bundle/", thresholds=0.9)
    >>> out = m.predict(x)            # x: float32 [B, *input shape]
    >>> out = m.predict({"input_ids": ids, "attention_mask": mask})  # several inputs
    >>> out.pred, out.exit_state, out.conf, out.latency_ms["total"]
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import Any, NamedTuple, cast

import numpy as np
import onnx

from edgeadapt.cascade.agreement import AgreementRun
from edgeadapt.cascade.scheduler import SchedulerRun
from edgeadapt.data.inputs import BatchCheck, warmup_batch
from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.bundle import Bundle, as_bundle
from edgeadapt.formats.plan import COST_QUANTILES, Plan, check_plan, load_plan
from edgeadapt.formats.presets import RuntimeChoice, RuntimeConfig, inherit_runtime
from edgeadapt.formats.profile import Profile, check_profile, load_profile
from edgeadapt.formats.stepcheck import check_logits, check_rows, check_step
from edgeadapt.kernel import (
    MEASURES,
    CascadeCall,
    GateRun,
    OneCall,
    Policy,
    decide_buffers,
    decide_into,
)
from edgeadapt.kernel_ref import table_first
from edgeadapt.runtimes import Session, from_config


@dataclass(frozen=True)
class Prediction:
    """Per-sample results of one `predict` call.

    `exit_state` is the bundle state index that answered; `budget_exit` marks rows sent
    out by the budget. `latency_ms` holds ``total`` (the whole call), ``steps`` (each
    step's backend time, in the order run) and ``rows`` (how many rows each step ran on).

    When one kept state answers alone (a one-state plan, a branch), every row has the
    same `exit_state` and no `budget_exit`: those two are then read-only arrays shared
    by the calls of one batch size (copy them to change them); `pred` and `conf` are
    always the caller's own.
    """

    pred: np.ndarray
    exit_state: np.ndarray
    conf: np.ndarray
    budget_exit: np.ndarray
    latency_ms: dict[str, Any]


_new = object.__new__


def _prediction(
    pred: np.ndarray,
    exit_state: np.ndarray,
    conf: np.ndarray,
    budget_exit: np.ndarray,
    latency_ms: dict[str, Any],
) -> Prediction:
    """A `Prediction`, its fields written straight into the instance dict: what the
    frozen dataclass's `__init__` does, without one `object.__setattr__` call per field
    (half a microsecond of a batch-1 call)."""
    p = _new(Prediction)
    d = p.__dict__
    d["pred"], d["exit_state"], d["conf"] = pred, exit_state, conf
    d["budget_exit"], d["latency_ms"] = budget_exit, latency_ms
    return p


#: Placeholders for the one-state path's cached arrays before its first call.
_EMPTY_I64 = np.empty(0, dtype=np.int64)
_EMPTY_BOOL = np.empty(0, dtype=np.bool_)


@dataclass(frozen=True)
class _Hop:
    """A hop: one kept state and the run of bundle steps that reaches it (those since the
    previous kept state; one member for an ensemble or branches bundle)."""

    state: int
    steps: tuple[int, ...]


def _thresholds(value: float | Sequence[float], count: int) -> tuple[float, ...]:
    """One threshold for every exit, or exactly one per state but the last; no NaN."""
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        values = [float(value)] * count
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = list(value)
        if len(values) != count:
            raise InputError(
                f"expected one value or {count} (one per state but the last), got {len(values)}",
                source="thresholds",
            )
    else:
        raise InputError(
            f"must be a number or a list of numbers, got {value!r}", source="thresholds"
        )
    out = []
    for j, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise InputError(f"must be a number, got {v!r}", source="thresholds", field=f"[{j}]")
        if math.isnan(v):
            raise InputError("must not be NaN", source="thresholds", field=f"[{j}]")
        out.append(float(v))
    return tuple(out)


def _step_costs(
    bundle: Bundle,
    step_costs_ms: Sequence[float] | None,
    profile: Profile | None,
    stat: str = "p50",
) -> list[float] | None:
    """Per-step predicted latency from explicit costs or a profile (batch 1, `stat`)."""
    if step_costs_ms is not None and profile is not None:
        raise InputError("give step_costs_ms or a profile, not both", source="step_costs_ms")
    if profile is not None:
        check_profile(profile, bundle)
        return [s.get(stat) for s in profile.step_stats(1)]
    if step_costs_ms is None:
        return None
    costs = list(step_costs_ms)
    if len(costs) != len(bundle.steps):
        raise InputError(
            f"expected {len(bundle.steps)} values (one per step), got {len(costs)}",
            source="step_costs_ms",
        )
    for j, c in enumerate(costs):
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (0 <= c < math.inf):
            raise InputError(
                f"must be a finite number >= 0, got {c!r}", source="step_costs_ms", field=f"[{j}]"
            )
    return [float(c) for c in costs]


_Feeds = tuple[tuple[str, bool], ...]


class _ResolvedHop(NamedTuple):
    """A hop as `predict` walks it, resolved once at load so the hot path only unpacks
    tuples: `slot` is its position among the kept states (the policy's hop index),
    the `calls` are each step's session and feeds (``(name, True)`` for
    a model input, else an output of the step before); `carried` are the activations
    the next kept state reads and `refeed` the model inputs any later kept state reads
    (what compaction must gather: a later state may be reached without another
    compaction, when no row exits in between)."""

    state: int
    slot: int
    threshold: float
    logits: str
    calls: tuple[tuple[Session, _Feeds], ...]
    carried: tuple[str, ...]
    refeed: tuple[str, ...]


def _route(
    bundle: Bundle, sessions: Sequence[Session], hops: Sequence[_Hop], policy: Policy
) -> list[_ResolvedHop]:
    names = bundle.input_names
    resolved = []
    for pos, hop in enumerate(hops):
        calls = tuple(
            (sessions[i], tuple((n, n in names) for n in bundle.steps[i].inputs)) for i in hop.steps
        )
        following = bundle.steps[hops[pos + 1].steps[0]].inputs if pos + 1 < len(hops) else ()
        carried = tuple(n for n in following if n not in names)
        later = {n for h in hops[pos + 1 :] for i in h.steps for n in bundle.steps[i].inputs}
        refeed = tuple(n for n in names if n in later)
        logits = bundle.steps[hop.steps[-1]].logits
        resolved.append(
            _ResolvedHop(hop.state, pos, policy.threshold(pos), logits, calls, carried, refeed)
        )
    return resolved


def _static_session(rt: Any, bundle: Bundle, hops: Sequence[_Hop]) -> Session | None:
    """For a plan that keeps one state of an early-exit bundle, that state as one plain
    model (`exporters.compose.whole_model`: its steps merged, the other heads pruned), so
    the deployment costs what the static model does; None otherwise, or when the steps
    cannot be merged (then they run one by one)."""
    if bundle.kind != "early-exit" or len(hops) != 1 or len(hops[0].steps) == 1:
        return None
    from edgeadapt.exporters.compose import whole_model  # not a floor below cascade

    try:
        model = whole_model(bundle, hops[0].state)
    except InputError:
        return None
    with tempfile.TemporaryDirectory(prefix="edgeadapt-static-") as tmp:
        path = Path(tmp) / "static.onnx"
        onnx.save_model(model, str(path))
        session: Session = rt.load(path)
    return session


def _budget_routes(
    bundle: Bundle, route: Sequence[_ResolvedHop]
) -> tuple[tuple[_ResolvedHop, ...], ...]:
    """The route `predict` walks for each target slot a budget table picks: the cascade
    up to it (early-exit), or the target alone (ensemble, branches)."""
    if bundle.kind == "early-exit":
        return tuple(tuple(route[: t + 1]) for t in range(len(route)))
    return tuple((hop,) for hop in route)


def _checked_plan(
    plan: Plan | str | os.PathLike[str] | None,
    bundle: Bundle,
    thresholds: float | Sequence[float] | None,
    measure: str | None,
) -> Plan | None:
    """`plan` read (from a path) and checked against `bundle` and the caller's other
    choices (no thresholds beside it, the plan's own measure); None without one."""
    if plan is None:
        return None
    source = "plan"
    if not isinstance(plan, Plan):
        source = str(plan)
        plan = load_plan(plan)
    if thresholds is not None:
        raise InputError("give thresholds or a plan, not both", source="thresholds")
    check_plan(plan, bundle, source, policies=("threshold", "gate", "agreement", "scheduler"))
    if measure is not None and measure != plan.measure:
        raise InputError(
            f"the plan was made for measure {plan.measure!r}, got {measure!r}", source="measure"
        )
    return plan


def _kept_states(
    bundle: Bundle,
    plan: Plan | None,
    thresholds: float | Sequence[float] | None,
    measure: str | None,
) -> tuple[tuple[int, ...], tuple[float, ...], str]:
    """The kept states, their thresholds and the measure: the plan's, or every state of
    the bundle under `thresholds` and `measure` (default maxprob)."""
    if plan is not None:
        kept, kept_thresholds, measure = plan.states, plan.thresholds, plan.measure
    else:
        if thresholds is None:
            raise InputError("give thresholds or a plan", source="thresholds")
        n = len(bundle.states)
        kept, kept_thresholds = tuple(range(n)), _thresholds(thresholds, n - 1)
        measure = "maxprob" if measure is None else measure
    if measure not in MEASURES:
        raise InputError(f"must be one of {', '.join(MEASURES)}, got {measure!r}", source="measure")
    return kept, kept_thresholds, measure


def _hops(bundle: Bundle, kept: Sequence[int]) -> list[_Hop]:
    """The hops reaching the `kept` states: the steps of its chain since the previous
    kept state of that chain (`edgeadapt.formats.chains`: for an early-exit bundle of one
    chain, the steps since the previous kept state; a bundle of several chains starts
    each chain from the model inputs; an ensemble member or branch, a chain of its own,
    runs alone)."""
    chains, hops = bundle.chains, []
    for j, s in enumerate(kept):
        before = kept[j - 1] if j else None
        if before is not None and chains[before] == chains[s]:
            hops.append(_Hop(s, tuple(range(before + 1, s + 1))))
        else:
            hops.append(_Hop(s, bundle.state_steps(s)))
    return hops


def _policy(
    bundle: Bundle,
    plan: Plan | None,
    hops: Sequence[_Hop],
    decisions: tuple[tuple[float, ...], str],
    step_costs_ms: Sequence[float] | None,
    profile: Profile | None,
    stat: str,
) -> tuple[Policy, bool]:
    """The kernel's policy over the `hops` (`decisions`: their thresholds and measure)
    and whether its costs are known: from `step_costs_ms`, else the `profile` at the
    percentile `stat`, else the plan. Costs at a profile percentile (the plan's, or
    a profile's p50) keep tracking that percentile of the measured costs; costs given
    as numbers, their mean."""
    per_step = _step_costs(bundle, step_costs_ms, profile, stat)
    seeded = step_costs_ms is None and (profile is not None or plan is not None)
    policy = Policy(
        decisions[0],
        _hop_costs(bundle, plan, hops, per_step),
        measure=decisions[1],
        accuracies=_budget_accuracies(plan, hops),
        cumulative=bundle.kind == "early-exit",
        quantile=COST_QUANTILES[stat] if seeded else None,
    )
    return policy, per_step is not None or plan is not None


def _cost_stat(cost_stat: str | None, plan: Plan | None) -> str:
    """The percentile the costs are read at: the caller's, else the plan's, else p50."""
    if cost_stat is not None and cost_stat not in COST_QUANTILES:
        raise InputError(
            f"must be one of {', '.join(COST_QUANTILES)}, got {cost_stat!r}", source="cost_stat"
        )
    return cost_stat or (plan.cost_stat if plan is not None else "p50")


def _hop_costs(
    bundle: Bundle, plan: Plan | None, hops: Sequence[_Hop], per_step: Sequence[float] | None
) -> list[float]:
    """Each hop's predicted cost: its steps' costs, else the plan's (a branch's own, a
    cascade's increments), else zeros (no budget then)."""
    if per_step is not None:
        return [sum(per_step[i] for i in hop.steps) for hop in hops]
    if plan is not None and not plan.walks:
        return list(plan.cost_ms)  # each branch's own cost
    if plan is not None:
        return list(np.diff(plan.cost_ms, prepend=0.0).clip(min=0.0))
    return [0.0] * len(hops)


def _budget_accuracies(plan: Plan | None, hops: Sequence[_Hop]) -> list[float] | None:
    """Each kept state's accuracy from the plan's budget table; None without one. Kept
    states without a row are dominated: never the most accurate that fits."""
    if plan is None or not plan.budget:
        return None
    table = {row.state: row.accuracy for row in plan.budget}
    return [table.get(hop.state, 0.0) for hop in hops]


def _runtime_choice(
    plan: Plan | None,
    runtime: str | RuntimeConfig | None,
    runtime_options: Mapping[str, Any] | None,
    threads: int | None,
) -> RuntimeChoice:
    """The runtime configuration the steps run under: the plan's, unless the caller's
    `runtime`, `runtime_options` or `threads` say otherwise (`inherit_runtime`)."""
    recorded = plan.runtime if plan is not None else None
    if runtime_options is not None:
        if isinstance(runtime, RuntimeConfig):
            raise InputError(
                "give a RuntimeConfig or runtime_options, not both", source="runtime_options"
            )
        name = runtime or (recorded.runtime if recorded is not None else "onnxruntime")
        runtime = RuntimeConfig.from_backend_options(name, runtime_options)
    return inherit_runtime(recorded, runtime=runtime, threads=threads)


def _hop_overhead(plan: Plan | None, profile: Profile | None) -> float:
    """The cascade's own cost per hop: the plan's, else the profile's measured one, else 0."""
    overhead = plan.hop_overhead_ms if plan is not None else None
    if overhead is None and profile is not None:
        measured = profile.cascade_overhead
        overhead = measured.hop_ms if measured is not None else None
    return overhead or 0.0


class AdaptiveModel:
    """A bundle loaded into a runtime with its policy; `predict` runs the cascade."""

    def __init__(
        self,
        bundle: Bundle,
        sessions: Sequence[Session],
        hops: Sequence[_Hop],
        policy: Policy,
        costs_known: bool,
        static: Session | None = None,
        hop_overhead_ms: float = 0.0,
        gates: GateRun | None = None,
        walks: bool | None = None,
    ) -> None:
        self.bundle = bundle
        #: Whether a call without a budget walks the kept states (a cascade) rather than
        #: run the last alone (a branches plan's budget table; `Plan.walks`). None: every
        #: kind but branches walks.
        self.walks = bundle.kind != "branches" if walks is None else walks
        self.sessions = tuple(sessions)
        #: The kept states' hops, in order (the policy's hop i reaches kept state i).
        self.hops = tuple(hops)
        self.policy = policy
        self.costs_known = costs_known
        #: The whole model a one-state early-exit plan runs instead of its steps.
        self.static = static
        self._gates = gates
        #: An agreement plan's decisions (`edgeadapt.cascade.agreement.AgreementRun`), else None.
        self.agreement: AgreementRun | None = None
        #: A scheduler plan's run (`edgeadapt.cascade.scheduler.SchedulerRun`), else None.
        self.scheduler: SchedulerRun | None = None
        #: The runtime configuration the steps run under, and why it differs from the
        #: plan's when the caller overrode it (see `load`).
        self.runtime: RuntimeConfig | None = None
        self.runtime_note: str | None = None
        self._buffers = decide_buffers(1)
        if static is not None:
            feeds = tuple((name, True) for name in static.input_names)
            logits = bundle.steps[hops[0].state].logits
            hop = _ResolvedHop(
                hops[0].state, 0, policy.threshold(0), logits, ((static, feeds),), (), ()
            )
            self._route: tuple[_ResolvedHop, ...] = (hop,)
        else:
            self._route = tuple(_route(bundle, self.sessions, self.hops, policy))
        # With a budget table (the policy knows each kept state's accuracy), a budget
        # picks one of these routes; without one it walks the whole route.
        self._targets = (
            _budget_routes(bundle, self._route) if policy.accuracies is not None else None
        )
        self._measure = policy.measure
        # What each hop adds beyond its runtime calls (the kernel, compaction, the result),
        # as the plan's profile measured it: a hop fits a budget only with it included.
        self._hop_overhead_ms = hop_overhead_ms
        self._check = BatchCheck(bundle.inputs, source="input")
        # The one hop a call without a budget runs alone, as one native call (input check,
        # run, answer, cost, result) when it is one call fed the bundle's one input.
        single = self._check.single
        self._one = self._one_call(single[:3]) if single is not None else None
        # A cascade of several hops fed the bundle's one input, at batch 1, as one native
        # call: the cascade engine walks the route (budget checks, runs, output checks,
        # costs, decisions, result); None otherwise. It hands back anything it cannot
        # vouch for, and the Python loop of `predict` runs that batch.
        self._cascade: CascadeCall | None = None
        if len(self._route) > 1 and single is not None:
            self._cascade = self._native_cascade(single[:3])
        # read-only exit_state / budget_exit of the last batch size the fast path saw:
        self._constant: tuple[int, np.ndarray, np.ndarray] = (0, _EMPTY_I64, _EMPTY_BOOL)

    @property
    def gates(self) -> GateRun | None:
        """A gate plan's learned exit gates (`edgeadapt.kernel.GateRun`), else None."""
        return self._gates

    def _one_call(self, single: tuple[Any, ...]) -> tuple[OneCall, Session] | None:
        """The hop that answers alone (`_alone`) as one `OneCall` and its session, when it
        is one call fed the bundle's one input (`single`: its name, dtype and shape);
        else None."""
        alone = self._alone()
        if alone is None or len(alone.calls) != 1:
            return None
        ((session, feeds),) = alone.calls
        name, dtype, shape = single
        if feeds != ((name, True),):
            return None
        one = OneCall(
            session.unchecked_run,
            name,
            dtype,
            shape,
            alone.logits,
            self.bundle.num_classes,
            self.policy.measure,
            policy=self.policy,
            hop=alone.slot,
            state=alone.state,
            result=Prediction,
        )
        return one, session

    def _native_cascade(self, single: tuple[Any, ...]) -> CascadeCall | None:
        """The batch-1 cascade of this model's route as a `CascadeCall`, or None when the
        policy's costs are not cumulative exactly along an early-exit bundle (the budget
        routes the engine derives from the policy would then differ from the loop's)."""
        bundle, policy = self.bundle, self.policy
        if policy.cumulative != (bundle.kind == "early-exit"):
            return None
        route = [
            (
                hop.state,
                hop.logits,
                [(s, f, i) for (s, f), i in zip(hop.calls, h.steps, strict=True)],
            )
            for hop, h in zip(self._route, self.hops, strict=True)
        ]
        name, dtype, shape = single
        return CascadeCall(
            route,
            name,
            dtype,
            shape,
            bundle.num_classes,
            policy=policy,
            result=Prediction,
            hop_overhead_ms=self._hop_overhead_ms,
            costs_known=self.costs_known,
            last_alone=not self.walks,
            gates=None if self._gates is None else self._gates.gates,
        )

    def _alone(self) -> _ResolvedHop | None:
        """The hop that answers alone without a budget: a route of one, or a branches
        plan's most accurate branch (it does not walk); None when the cascade walks
        several."""
        route = self._route
        if len(route) == 1 or not self.walks:
            return route[-1]
        return None

    @classmethod
    def load(
        cls,
        bundle: Bundle | str | os.PathLike[str],
        runtime: str | RuntimeConfig | None = None,
        *,
        thresholds: float | Sequence[float] | None = None,
        measure: str | None = None,
        plan: Plan | str | os.PathLike[str] | None = None,
        profile: Profile | str | os.PathLike[str] | None = None,
        step_costs_ms: Sequence[float] | None = None,
        cost_stat: str | None = None,
        runtime_options: Mapping[str, Any] | None = None,
        threads: int | None = None,
        warmup: int = 0,
    ) -> AdaptiveModel:
        """Load `bundle` into `runtime` under `thresholds` (one for every exit, or one per
        state but the last) or a `plan` (its states, thresholds, measure and costs).

        `measure` defaults to the plan's, else ``maxprob``. Step costs for the budget
        come from `step_costs_ms` (one per bundle step), else a `profile` (batch 1, at
        the percentile `cost_stat`: p50, p90 or p99, default the plan's, else p50), else
        the plan; without any, `predict` refuses a budget. Costs from a profile or a plan
        keep tracking their percentile of the measured costs; `step_costs_ms`, their
        mean. Each hop's share of the cascade's own overhead (the plan's
        ``hop_overhead_ms``, else the profile's measured one) counts against a budget.
        `warmup` runs `warm_up(warmup)` before returning, so the first `predict` is not
        a cold one.

        The steps run under the plan's runtime configuration (`Plan.runtime`, what its
        costs were measured under) unless `runtime` (a name or a `RuntimeConfig`),
        `runtime_options` (the backend's keyword options for `runtime`) or `threads` say
        otherwise; then `runtime_note` says what differs (`edgeadapt.formats.presets.
        inherit_runtime`). Without a recorded configuration: `runtime` (default
        onnxruntime) with the runtime's own defaults. `runtime` holds what ran.
        """
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise InputError(f"must be an integer >= 0, got {warmup!r}", source="warmup")
        bundle = as_bundle(bundle)
        plan = _checked_plan(plan, bundle, thresholds, measure)
        kept, kept_thresholds, measure = _kept_states(bundle, plan, thresholds, measure)
        hops = _hops(bundle, kept)
        stat = _cost_stat(cost_stat, plan)
        if profile is not None and not isinstance(profile, Profile):
            profile = load_profile(profile, bundle)
        policy, known = _policy(
            bundle, plan, hops, (kept_thresholds, measure), step_costs_ms, profile, stat
        )
        choice = _runtime_choice(plan, runtime, runtime_options, threads)
        static, sessions = _open_route(from_config(choice.config), bundle, hops)
        gates = None if plan is None or plan.gates is None else GateRun(plan.gates, plan.measure)
        overhead = _hop_overhead(plan, profile)
        walks = None if plan is None else plan.walks
        model = cls(bundle, sessions, hops, policy, known, static, overhead, gates, walks)
        model._deploy(plan, choice, warmup)
        return model

    def _deploy(self, plan: Plan | None, choice: RuntimeChoice, warmup: int) -> None:
        """What `load` sets after the model is built: an agreement plan's run (the Python
        loop walks its route, a branches plan's too: not one branch alone), the runtime
        configuration and its note; then `warmup` rounds (the sessions are closed if
        they fail)."""
        if plan is not None and plan.agreement:
            self.agreement = AgreementRun(len(plan.states), plan.measure)
            self._one = self._cascade = None
        if plan is not None and plan.scheduler is not None and len(plan.states) > 1:
            self.scheduler = SchedulerRun(plan)  # the Python loop runs it, at any batch
            self._one = self._cascade = None
        self.runtime, self.runtime_note = choice.config, choice.note
        try:
            self.warm_up(warmup)
        except BaseException:
            self.close()
            raise

    @classmethod
    def alone(cls, bundle: Bundle, config: RuntimeConfig, state: int) -> AdaptiveModel:
        """`state` of `bundle` as a one-state plan deploys it (the merged static model for
        an early-exit bundle, else the member alone), with no costs known."""
        hops = [_Hop(state, bundle.state_steps(state))]
        policy = Policy((), [0.0], measure="maxprob", cumulative=bundle.kind == "early-exit")
        static, sessions = _open_route(from_config(config), bundle, hops)
        return cls(bundle, sessions, hops, policy, False, static)

    def warm_up(self, rounds: int = 1) -> None:
        """Run every loaded step `rounds` times on a batch-1 input (zeros, masks all ones:
        `edgeadapt.data.inputs.warmup_batch`; activations chained along an early-exit bundle)
        and the kernel on its logits, so that the
        backends' first-call costs (allocations, kernel selection, caches) are paid here
        rather than by the first `predict`. The policy's learned costs are left alone."""
        if rounds < 1:
            return
        bundle = self.bundle
        batch = warmup_batch(bundle)
        pbuf, cbuf, mbuf, kbuf = self._buffers
        for _ in range(rounds):
            if self.static is not None:
                out = self.static.run({n: batch[n] for n in self.static.input_names}, check=False)
                logits = np.ascontiguousarray(out[self._route[0].logits])
                decide_into(logits, 2.0, pbuf[:1], cbuf[:1], mbuf[:1], kbuf[:1], self._measure)
                continue
            env = dict(batch)
            for step, session in zip(bundle.steps, self.sessions, strict=True):
                if session is None:  # a plan's ensemble member that is never run
                    continue
                out = session.run({name: env[name] for name in step.inputs}, check=False)
                check_step(out, 1, step.logits, bundle.num_classes, session.path)
                if bundle.kind == "early-exit":
                    env.update(out)
                logits = np.ascontiguousarray(out[step.logits])
                decide_into(logits, 2.0, pbuf[:1], cbuf[:1], mbuf[:1], kbuf[:1], self._measure)

    def close(self) -> None:
        """Release every step's session."""
        self._one = self._cascade = None  # a closed session is never called natively
        for s in (*self.sessions, self.static):
            if s is not None:
                s.close()

    def __enter__(self) -> AdaptiveModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_inputs(self, x: Any) -> dict[str, np.ndarray]:
        """Validate a batch against the bundle's inputs and return it as ``{name: array}``.

        `x` is a mapping holding every model input (each with its dtype, shape
        ``[B, *input shape]`` and the same ``B``), or for a one-input bundle the bare array.
        Nothing is converted: int64 token ids stay int64, and a wrong dtype is an error.
        Quick acceptance first (`edgeadapt.data.inputs.BatchCheck`: plain C-contiguous arrays
        of the right dtype and shape with no NaN or infinity); anything it cannot vouch
        for takes the complete check (`edgeadapt.data.inputs.check_batch`), which also words
        the error.
        """
        return self._check(x)

    def check_input(self, x: Any) -> np.ndarray:
        """`check_inputs` for a one-input bundle's bare array: the validated array."""
        return self.check_inputs(x)[self.bundle.input.name]

    def _predict_one(self, inputs: dict[str, np.ndarray], hop: _ResolvedHop) -> Prediction:
        """One kept state alone, `hop` (a plan of one state, whose budget cannot change
        what runs, or a branch): its one call (the whole model, for a one-state
        early-exit plan) and the kernel's answer, nothing else."""
        start = perf_counter_ns()
        ((session, feeds),) = hop.calls
        out = session.run({name: inputs[name] for name, _ in feeds}, check=False)
        return self._answer(start, session.last_run_ns, out, hop.logits, hop.slot, hop.state)

    def _answer(
        self,
        start: int,
        run_ns: int,
        out: Mapping[str, np.ndarray],
        logits_name: str,
        slot: int,
        state: int,
    ) -> Prediction:
        """The `Prediction` of a hop that answered alone with `out` in `run_ns`: the
        kernel's answer for every row (threshold -inf: everyone exits) into the caller's
        `pred` and `conf`; the every-row-alike `exit_state` and `budget_exit` are shared
        read-only arrays."""
        logits = out[logits_name]
        b = logits.shape[0]
        buffers = self._buffers
        if buffers[0].shape[0] < b:
            self._buffers = buffers = decide_buffers(b)
        pred = np.empty(b, dtype=np.int64)
        conf = np.empty(b, dtype=np.float32)
        try:
            decide_into(logits, -math.inf, pred, conf, buffers[2], buffers[3], self._measure)
        except TypeError:  # not C-contiguous: the kernel reads logits in place
            logits = np.ascontiguousarray(logits)
            decide_into(logits, -math.inf, pred, conf, buffers[2], buffers[3], self._measure)
        run_ms = run_ns / 1e6
        self.policy.observe(slot, run_ms)
        constant = self._constant
        if constant[0] != b:
            exit_state = np.full(b, state, dtype=np.int64)
            budget_exit = np.zeros(b, dtype=np.bool_)
            exit_state.flags.writeable = budget_exit.flags.writeable = False
            self._constant = constant = (b, exit_state, budget_exit)
        latency = {"total": (perf_counter_ns() - start) / 1e6, "steps": [run_ms], "rows": [b]}
        return _prediction(pred, constant[1], conf, constant[2], latency)

    def _check_budget(self, budget_ms: Any) -> float | None:
        if budget_ms is None:
            return None
        if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float, np.floating)):
            raise InputError(f"must be a number of ms, got {budget_ms!r}", source="budget_ms")
        if not (0 < budget_ms < math.inf):
            raise InputError(f"must be a finite number > 0, got {budget_ms}", source="budget_ms")
        if not self.costs_known:
            raise InputError(
                "a budget needs predicted step costs: load with step_costs_ms, a profile or a plan",
                source="budget_ms",
            )
        return float(budget_ms)

    def predict(
        self, x: np.ndarray | Mapping[str, np.ndarray], budget_ms: float | None = None
    ) -> Prediction:
        """Run the cascade on the batch `x`: for a one-input bundle an array of the input's
        dtype and shape ``[B, *input shape]``, else a mapping ``{input name: array}`` of
        every model input (see `check_inputs`). Each step is fed the model inputs and
        activations its manifest entry lists, on the rows still active.

        Hot path: until some row exits, the kernel writes every row's answer straight
        into the returned `pred` and `conf`, so a batch where nobody exits early (always
        the case at batch 1) never gathers or scatters; after the first early exit the
        surviving rows are compacted and their answers scattered back. When one hop
        answers alone (a one-state plan, a branches plan without a budget) and `x` is
        the one input's array, one native call (`edgeadapt.kernel.OneCall`) accepts the
        batch, runs the hop and answers every row. A cascade of several hops fed a
        one-input bundle's array runs a batch of one row as one native call too
        (`edgeadapt.kernel.CascadeCall`, threshold and gate plans: the cascade engine the
        native runner runs): the same answers, costs and budget exits as the loop, which
        runs every other batch.
        """
        native = self._predict_native(x, budget_ms)
        if native is not None:
            return native
        return self._predict_loop(x, budget_ms)

    def _predict_native(
        self, x: np.ndarray | Mapping[str, np.ndarray], budget_ms: float | None
    ) -> Prediction | None:
        """The batch answered by one native call (`OneCall` for a hop that answers alone,
        `CascadeCall` for a cascade at batch 1), or None where the loop must run it (and
        word any error)."""
        one = self._one
        if one is not None and budget_ms is None:
            try:
                got = one[0](x)
            except EdgeadaptError:
                raise
            except Exception as e:
                raise one[1].run_error(e) from e
            if type(got) is Prediction:
                return got
            if got is not None:  # logits the kernel cannot read in place
                out, run_ns, elapsed_ns = cast(tuple[Mapping[str, np.ndarray], int, int], got)
                hop = self._route[-1]
                start = perf_counter_ns() - elapsed_ns
                return self._answer(start, run_ns, out, hop.logits, hop.slot, hop.state)
            # else the complete check below accepts the batch or words the error
        cascade = self._cascade
        if cascade is not None:
            try:
                native = cascade(x, budget_ms)
            except EdgeadaptError:
                raise
            except Exception as e:
                failed = cascade.failed
                if failed is None:
                    raise
                raise failed.run_error(e) from e
            if native is not None:
                return cast(Prediction, native)
        return None

    def _predict_loop(
        self, x: np.ndarray | Mapping[str, np.ndarray], budget_ms: float | None
    ) -> Prediction:
        """The cascade in Python, any batch: the readable reference the native calls
        follow (see `predict`): check the batch and the budget, pick the route, walk it."""
        start = perf_counter_ns()  # a budget is for the whole call, the input check included
        inputs = self.check_inputs(x)
        budget = None if budget_ms is None else self._check_budget(budget_ms)
        if self.scheduler is not None:
            return self._predict_scheduled(inputs, budget, start)
        walks = self.walks
        if len(self._route) == 1 or (budget is None and not walks):
            return self._predict_one(inputs, self._route[-1])
        b = next(iter(inputs.values())).shape[0]
        if self._buffers[0].shape[0] < b:
            self._buffers = decide_buffers(b)
        route = self._route_for(budget, walks)
        # Gates (and the agreement policy) read every earlier kept state: they decide only on
        # a route that starts at the first kept state (a member picked alone answers plainly).
        gates = (self._gates or self.agreement) if route[0].slot == 0 else None
        if gates is not None:
            gates.start(b)
        answers = (
            np.empty(b, dtype=np.int64),  # pred
            np.empty(b, dtype=np.float32),  # conf
            np.empty(b, dtype=np.int64),  # exit_state
            np.zeros(b, dtype=np.bool_),  # budget_exit
        )
        step_ms: list[float] = []
        step_rows: list[int] = []
        self._walk(route, inputs, budget, gates, answers, (step_ms, step_rows), start)
        pred, conf, exit_state, budget_exit = answers
        total = (perf_counter_ns() - start) / 1e6
        latency = {"total": total, "steps": step_ms, "rows": step_rows}
        return _prediction(pred, exit_state, conf, budget_exit, latency)

    def _predict_scheduled(
        self, inputs: dict[str, np.ndarray], budget: float | None, start: int
    ) -> Prediction:
        """A scheduler plan's call: the first branch, the kernel's choice, the branches
        picked (`edgeadapt.cascade.scheduler`)."""
        assert self.scheduler is not None
        if budget is not None:  # the budget table's pick alone, when the scheduler cannot beat it
            slot = self.policy.lookup(budget) or 0
            costs = [self.policy.predicted_ms(j) for j in range(len(self._route))]
            if table_first(costs, self.scheduler.first, slot, budget, self._hop_overhead_ms):
                return self._predict_one(inputs, self._route[slot])
        limit = None if budget is None else (budget, self._hop_overhead_ms)
        pred, conf, exit_state, budget_exit, step_ms, step_rows = self.scheduler.run(
            self._route, inputs, self.policy, self.bundle.num_classes, limit, start
        )
        total = (perf_counter_ns() - start) / 1e6
        latency = {"total": total, "steps": step_ms, "rows": step_rows}
        return _prediction(pred, exit_state, conf, budget_exit, latency)

    def _walk(
        self,
        route: Sequence[_ResolvedHop],
        inputs: dict[str, np.ndarray],
        budget: float | None,
        gates: GateRun | AgreementRun | None,
        answers: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        steps: tuple[list[float], list[int]],
        start: int,
    ) -> None:
        """Walk `route` hop by hop, writing each row's answer into `answers` (pred, conf,
        exit_state, budget_exit) and each step's time and rows into `steps`. Until some row
        exits the kernel writes straight into pred and conf; after, the survivors are
        compacted (`rows`: their original indices) and their answers scattered back."""
        pred, conf, exit_state, budget_exit = answers
        step_ms, step_rows = steps
        pbuf, cbuf, mbuf, kbuf = self._buffers
        policy, measure, num_classes = self.policy, self._measure, self.bundle.num_classes
        last = len(route) - 1
        rows: np.ndarray | None = None  # None while every row is active
        xs, n = inputs, len(pred)  # the model inputs' rows of the active rows, and how many
        out_p, out_c = pred, conf  # where the kernel writes the active rows' answers
        prev: dict[str, np.ndarray] = {}
        for pos, (state, slot, threshold, logits_name, calls, carried, refeed) in enumerate(route):
            if pos and budget is not None:
                spent = (perf_counter_ns() - start) / 1e6 + self._hop_overhead_ms
                if not policy.fits(slot, spent, budget):
                    self._budget_stop(slot, route[pos - 1].state, rows, exit_state, budget_exit)
                    break
            t0 = perf_counter_ns()
            for session, feeds in calls:
                if len(feeds) == 1:  # a dict display: cheaper than the comprehension
                    ((name, is_input),) = feeds
                    prev = session.run({name: xs[name] if is_input else prev[name]}, check=False)
                else:
                    prev = session.run(
                        {name: xs[name] if is_input else prev[name] for name, is_input in feeds},
                        check=False,
                    )
                check_rows(prev, n, session.path)
                step_ms.append(session.last_run_ns / 1e6)
                step_rows.append(n)
            policy.observe(slot, (perf_counter_ns() - t0) / 1e6)
            logits = prev[logits_name]
            check_logits(logits, n, num_classes, calls[-1][0].path, logits_name)
            if gates is not None:
                logits = np.ascontiguousarray(logits)
                k = gates.decide_into(logits, threshold, out_p, out_c, mbuf, kbuf)
            else:
                try:
                    k = decide_into(logits, threshold, out_p, out_c, mbuf, kbuf, measure)
                except TypeError:  # not C-contiguous: the kernel reads logits in place
                    logits = np.ascontiguousarray(logits)
                    k = decide_into(logits, threshold, out_p, out_c, mbuf, kbuf, measure)
            if rows is None:
                if pos == last or k == 0:  # every row answers here
                    exit_state.fill(state)
                    break
                if k == n:
                    continue
                exit_state[mbuf[:n]] = state
                rows = keep = kbuf[:k].copy()
                out_p, out_c = pbuf, cbuf
            else:
                p, c = pbuf[:n], cbuf[:n]
                if pos == last or k == 0:
                    pred[rows], conf[rows], exit_state[rows] = p, c, state
                    break
                if k == n:
                    if budget is not None:  # the survivors' answers, for a budget exit
                        pred[rows], conf[rows] = p, c
                    continue
                gone = mbuf[:n]
                dst = rows[gone]
                pred[dst], conf[dst], exit_state[dst] = p[gone], c[gone], state
                keep = kbuf[:k]
                rows = rows[keep]
                if budget is not None:
                    pred[rows], conf[rows] = p[keep], c[keep]
            n = k
            if refeed:
                xs = {name: inputs[name][rows] for name in refeed}
            prev = {name: prev[name][keep] for name in carried}

    def _budget_stop(
        self,
        slot: int,
        state: int,
        rows: np.ndarray | None,
        exit_state: np.ndarray,
        budget_exit: np.ndarray,
    ) -> None:
        """The budget leaves no room for hop `slot`: the active `rows` (every row when
        None) exit with their answers at `state`, the last completed one."""
        self.policy.decay(slot)  # skipped, so unmeasured: drift back toward the prior
        done: Any = slice(None) if rows is None else rows
        exit_state[done] = state
        budget_exit[done] = True

    def _route_for(self, budget: float | None, walks: bool) -> tuple[_ResolvedHop, ...]:
        """The hops a call walks: with a budget and a budget table, the route to the most
        accurate state whose tracked cost fits (all of it when none fits: the first state,
        then out); without, every kept state, or for a branches bundle that does not walk
        its branches the most accurate one alone."""
        route = self._route
        if budget is not None and self._targets is not None:
            target = self.policy.lookup(budget)
            if target is not None:
                return self._targets[target]
        elif not walks:
            return route[-1:]
        return route


def _open_route(rt: Any, bundle: Bundle, hops: Sequence[_Hop]) -> tuple[Session | None, list[Any]]:
    """The sessions the `hops` run: a one-state early-exit plan's merged static model
    (`_static_session`) and no step, else one session per step the hops name."""
    static = _static_session(rt, bundle, hops)
    needed = [] if static is not None else sorted({i for hop in hops for i in hop.steps})
    return static, _open_sessions(rt, bundle, needed)


def _open_sessions(rt: Any, bundle: Bundle, steps: Sequence[int]) -> list[Any]:
    """One session per bundle step, loaded for the `steps` named and None for the rest;
    if one fails to load, the ones already loaded are closed."""
    sessions: list[Any] = [None] * len(bundle.steps)
    try:
        for i in steps:
            sessions[i] = rt.load(bundle.steps[i].path)
    except BaseException:
        for s in sessions:
            if s is not None:
                s.close()
        raise
    return sessions
