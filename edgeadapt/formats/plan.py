"""The plan file (``plan.json``, format ``edgeadapt-plan`` version 2): what runs on a device.

A plan names the states kept from a bundle, the exit thresholds of the policy and the
AdaInf budget table, plus the figures that justify them. A runner (Python
`AdaptiveModel` or the native C++ runner) needs only the first block below; the rest is
the record of how well the plan did and is shown by reports.

```
{
  "format": "edgeadapt-plan", "version": 1 | 2,
  "bundle": {"manifest_sha256": "<64 hex>", "kind": "early-exit" | "ensemble" | "branches",
             "states": ["exit0", ...]},           # every state of the bundle, in order
  "measure": "maxprob" | "margin" | "entropy",   # as edgeadapt.kernel_ref computes it
  "states": [0, 2, 5],                           # kept states: increasing bundle indices
  "state_names": ["exit0", "exit2", "exit5"],    # = bundle.states[i] for each kept i
  "thresholds": [0.93, 0.88],                    # one per kept state but the last
  "cost_ms": [0.11, 0.35, 0.80],                 # cost of exiting at each kept state
  "budget": [{"budget_ms": 0.11, "state": 0, "accuracy": 0.61}, ...],
  "policy": {"kind": "threshold"}                # version 2 only (optional; a version 1
          | {"kind": "gate",                     #   file is a threshold plan)
             "gates": [{"weights": [w0, ..., w4], "bias": b}, ...]}
          | {"kind": "agreement"}
          | {"kind": "scheduler",                # branches bundles: the content-aware
             "first": 1,                         # the kept position that always runs
             "features": ["maxprob", "margin", "entropy"],   # of its logits
             "estimators": [{"weights": [w0, w1, w2], "bias": b}, ...]},
  ---- the record ----
  "reference": {"state": 5, "accuracy": 0.93, "max_drop": 0.005},
  "calibration": {"n", "accuracy", "reference_accuracy", "drop", "cost_ms"},
  "heldout": {"n", "accuracy", "reference_accuracy", "drop", "cost_ms",
              "drop_bound", "delta"},
  "oracle": {"r_oracle", "a_oracle", "r_n", "a_n"},
  "gap_closure": 0.71 | null,
  "search": {"method": "exhaustive", "max_states": 4, "subsets_evaluated": 12},
  "promise": {"kind": "net" | "loss", "max_drop", "delta", "n", "tested", "passed",
              "p_value", "losses", "gains", "required_n", "holds", "method",
              "assumption", "path"},                # risk-controlled plans
  "static": {"cost_ms": 0.74},                   # optional: the measured whole model
  "fallback": "no plan of several states ...",   # optional: why only the static model
  "cost_stat": "p90",                            # optional (default p50): cost percentile
  "hop_overhead_ms": 0.006,                      # optional: the cascade's own cost per hop
  "branches": {"run": "cascade" | "table",       # optional, branches plans: what runs
               "asked": "auto" | "cascade" | "table", "why": "...",
               "table": {"states": [0, 2, 3], "accuracy", "cost_ms"},
               "cascade": {"policy", "states": [0, 3], "accuracy", "cost_ms"}},
  "runtime": {"runtime": "onnxruntime", "preset": null, "precision": "as-exported",
              "threads": 1, "options": {}}        # optional: what the costs were measured
}                                                 #   under (edgeadapt.formats.presets.RuntimeConfig)
```

``runtime`` is the profile's runtime configuration, copied into plans made from it, so
a runner runs the plan under the settings its costs were measured with (unless told
otherwise); plans without it (older ones, or made from bare costs) leave it to the
runner. Both versions accept it.

Policy ``gate`` (`edgeadapt.planning.gates`): one learned gate per kept state but the last, its
weights over the features of `edgeadapt.kernel_ref.GATE_FEATURES`; the thresholds then
apply to the gates' scores (in [0, 1]) and `measure` names only the confidence reported
at the last state. Policy ``agreement``: the thresholds apply to the share of the
earlier kept states whose prediction agrees with the state's own
(`edgeadapt.kernel_ref.agreement_shares`, in [0, 1]); `measure` again names only the
confidence reported at the last state; a state that never exits (it only votes) has the
threshold ``AGREEMENT_NEVER`` (2). Version 1 files (no ``policy``) read as the
threshold policy; a reader of version 2 that runs neither gates nor agreement refuses
such a plan by its ``policy.kind``.

Policy ``scheduler`` (`edgeadapt.planning.scheduler`, branches bundles only): the kept
branch at position ``first`` (default 0) always runs; one logistic estimator per kept
branch from it on but the last reads its logits' ``features``
(`edgeadapt.kernel_ref.SCHEDULER_FEATURES`, in that order) and estimates "that branch
answers without a loss"; the thresholds of those positions apply to those estimates (in
[0, 1]; ``SCHEDULER_NEVER`` (2): never picked by its estimate; the positions before
``first`` hold 2, unused) and the scheduler answers with the first branch, or runs the
cheapest later kept branch whose estimate clears its threshold and whose tracked cost
fits what is left of the budget, else the most accurate one that fits
(`edgeadapt.kernel_ref.scheduler_choice`). Under a budget that cannot pay the first
branch followed by the budget table's pick, that pick runs alone
(`edgeadapt.kernel_ref.table_first`); the kept branches before ``first`` serve only
there. ``cost_ms`` holds each kept branch's own cost.

``promise`` (risk-controlled plans) records what was promised and the evidence:
``kind`` ``net`` bounds the accuracy drop (losses minus gains against the reference
state), ``loss`` the losses alone; ``gains`` counts the tested samples the plan gets
right and the reference wrong; ``path`` names the path the test walked. Runners ignore
the block; files without ``kind`` (older ones) promised the losses alone.

``hop_overhead_ms`` is what `AdaptiveModel.predict` itself adds per hop on the device
(the profile's `edgeadapt.formats.profile.Overhead`): a plan of several states has it counted in
its expected costs (``calibration``/``heldout`` ``cost_ms``, one per hop run, beside
the steps' ``cost_ms``) and is kept only if that still beats the static model. Plans
without it (older ones, or made from costs with no measured overhead) count none.

``static`` is the measured whole model (the unsplit network, from the profile), the
baseline a plan must beat to be worth deploying; plans made from a profile without it
omit the key. ``cost_ms`` of ``heldout`` against it and against ``oracle.r_n`` (the
sum of the steps) are the plan's two savings.

``branches`` (plans of a ``branches`` bundle made since it was added) says how the plan
runs without a budget and why: ``run`` ``table`` runs the most accurate kept branch alone
(AdaInf's budget table; the thresholds are placeholders), ``cascade`` walks the kept
branches in turn as an ensemble's members (each from the input; a sample pays every
branch run, so ``cost_ms`` is cumulative) under the plan's policy; ``asked`` is what the
planner was asked for (``edgeadapt plan --branches``), ``why`` one line on the choice,
and ``table`` / ``cascade`` each option's kept states and held-out accuracy and expected
cost (``cascade`` absent when none was made). The kept option's ``states`` are the
plan's. A branches plan without the block (older ones) runs the table, or under the
agreement policy the cascade. Either way a budget runs the table's pick. A reader that
predates the block runs a cascade plan as the table: its most accurate branch alone,
which keeps the promise at the table's cost.

Confidences are higher when surer: maxprob and margin lie in [0, 1], entropy is the
negative entropy in [-log C, 0]; thresholds must lie in the measure's range.

The policy: for each sample run the kept states in order and exit at the first one whose
confidence is ``>= threshold`` (compared in float32 or float64 alike: thresholds are
confidences seen in calibration); the last kept state always answers. Budget table: with
a budget of B ms, run the state of the last row whose ``budget_ms <= B`` (rows rise in
cost and in accuracy); below the first row, run the first row's state.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.identity import BundleIdentity, check_identity, read_identity
from edgeadapt.formats.jsonio import MAX_MS, Fields, check_value, read_json, write_json
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.kernel_ref import GATE_FEATURES, MEASURES, SCHEDULER_FEATURES, SCHEDULER_NEVER

if TYPE_CHECKING:
    from edgeadapt.formats.bundle import Bundle

FORMAT = "edgeadapt-plan"
# Threshold plans are still written as version 1 (no policy block), so every version 1
# reader keeps running them; only gate and agreement plans need version 2, which such a
# reader refuses by its version rather than misreading their thresholds as confidences
# (and a version 2 reader that runs only some kinds refuses the others by policy.kind).
VERSION = 2
VERSIONS = (1, 2)  # files of every listed version read
POLICY_KINDS = ("threshold", "gate", "agreement", "scheduler")
# Confidence range of each of the kernel's MEASURES (lowest, highest); thresholds are
# checked against it.
MEASURE_RANGES: dict[str, tuple[float | None, float]] = {
    "maxprob": (0.0, 1.0),
    "margin": (0.0, 1.0),
    "entropy": (None, 0.0),
}
KINDS = ("early-exit", "ensemble", "branches")
#: The threshold an agreement plan writes for a kept state that never exits (it still
#: votes: later states count its prediction). Shares are at most 1.
AGREEMENT_NEVER = 2.0
SEARCH_METHODS = ("exhaustive",)
#: Profile percentiles a plan's costs may be taken at (``cost_stat``, default p50).
COST_STATS = ("p50", "p90", "p99")
#: The quantile each of them is: what a policy seeded with such costs keeps tracking.
COST_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


#: How a promise is tested: learn then test, the p-value of each test.
METHODS = {
    "binomial": "learn-then-test, fixed-sequence, binomial p-value on the losses",
    "berger-boos": "learn-then-test, fixed-sequence, Berger-Boos p-value on losses minus gains",
}
#: What plans that do not say (older ones) were tested with.
METHOD = "learn-then-test, fixed-sequence, binomial p-value"
ASSUMPTION = "the testing split and new data are exchangeable (drawn from one distribution)"
#: What a promise bounds (`edgeadapt.planning.paths.PROMISES`): ``net`` the accuracy drop
#: (losses minus gains against the reference), ``loss`` the losses alone.
PROMISE_KINDS = ("net", "loss")
#: The paths a promise's test may walk (`edgeadapt.planning.paths`), in the order ties go.
PROMISE_PATHS = ("frontier", "shared")


@dataclass(frozen=True)
class _Logistic:
    """A weight per feature (the class's `FEATURES`, in that order) and a bias."""

    FEATURES: ClassVar[tuple[str, ...]] = ()
    weights: tuple[float, ...]
    bias: float

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.FEATURES):
            raise InputError(
                f"expected {len(self.FEATURES)} weights ({', '.join(self.FEATURES)}), "
                f"got {len(self.weights)}",
                field="weights",
            )
        if not np.isfinite([*self.weights, self.bias]).all():
            raise InputError("weights and bias must be finite", field="weights")

    def to_json(self) -> dict[str, list[float] | float]:
        return {"weights": [float(w) for w in self.weights], "bias": float(self.bias)}


@dataclass(frozen=True)
class Gate(_Logistic):
    """One gate: a weight per feature (`GATE_FEATURES` order) and a bias."""

    FEATURES: ClassVar[tuple[str, ...]] = tuple(GATE_FEATURES)


@dataclass(frozen=True)
class Estimator(_Logistic):
    """One of a scheduler's estimators: a weight per feature (`SCHEDULER_FEATURES`
    order) and a bias."""

    FEATURES: ClassVar[tuple[str, ...]] = tuple(SCHEDULER_FEATURES)


@dataclass(frozen=True)
class Promise:
    """What a risk-controlled plan promises, and the evidence for it.

    P(drop on new data > `max_drop`) <= `delta`, the drop taken against the reference
    state, under `assumption`; `kind` ``net`` bounds the accuracy drop (losses minus
    gains), ``loss`` the losses alone (new errors: samples the reference gets right and
    the plan wrong). `n` samples were tested; `tested` path points were tested in
    order, `passed` of them rejected their null (0: nothing could be promised, the
    static model is kept); `p_value` is the chosen point's (or the first failed
    point's, when none passed); `losses` and `gains` count its samples where the
    reference is right and the policy wrong, and the other way round. `path` names the
    path tested (`edgeadapt.planning.paths.PATH_KINDS`), chosen on the learning split.
    """

    max_drop: float
    delta: float
    n: int
    tested: int
    passed: int
    p_value: float
    losses: int
    required_n: int
    method: str = METHOD
    assumption: str = ASSUMPTION
    kind: str = "loss"
    gains: int | None = None
    path: str | None = None

    @property
    def holds(self) -> bool:
        return self.passed > 0

    @property
    def bounds(self) -> str:
        """What is bounded, in words."""
        if self.kind == "net":
            return "accuracy drop"
        return "new errors (right by the reference, wrong by the plan)"

    def describe(self) -> str:
        """One line for people: what is promised, or why nothing could be."""
        if self.holds:
            return (
                f"promise: {self.bounds} <= {self.max_drop:.2%} on new data with probability "
                f">= {1 - self.delta:.0%} (Learn then Test on {self.n} held-out samples, "
                f"p = {self.p_value:.3g}; assumes {self.assumption})"
            )
        if self.n < self.required_n:
            return (
                f"no promise: {self.n} held-out samples cannot show {self.bounds} <= "
                f"{self.max_drop:.2%} at probability {1 - self.delta:.0%}; it needs at least "
                f"{self.required_n}. The plan keeps the static model."
            )
        return (
            f"no promise: no cheaper thresholds passed the test on {self.n} held-out samples "
            f"(p = {self.p_value:.3g} > delta = {self.delta}). The plan keeps the static model."
        )

    def to_json(self) -> dict[str, float | int | str | bool | None]:
        doc: dict[str, float | int | str | bool | None] = {
            "kind": self.kind,
            "max_drop": self.max_drop,
            "delta": self.delta,
            "n": self.n,
            "tested": self.tested,
            "passed": self.passed,
            "p_value": self.p_value,
            "losses": self.losses,
            "required_n": self.required_n,
            "holds": self.holds,
            "method": self.method,
            "assumption": self.assumption,
        }
        if self.gains is not None:
            doc["gains"] = self.gains
        if self.path is not None:
            doc["path"] = self.path
        return doc


@dataclass(frozen=True)
class BudgetRow:
    """With a budget of at least `budget_ms`, run bundle state `state` (accuracy seen)."""

    budget_ms: float
    state: int
    accuracy: float


#: How a branches plan runs without a budget (`BranchesChoice.run`), and what a user may
#: ask the planner for (``auto``: the cheaper of the two at the promise).
BRANCH_RUNS = ("cascade", "table")
BRANCH_CHOICES = ("auto", *BRANCH_RUNS)


@dataclass(frozen=True)
class BranchOption:
    """One way to run a branches bundle without a budget: its `policy` (``table``, or the
    cascade's policy), kept `states`, and held-out accuracy and expected cost."""

    policy: str
    states: tuple[int, ...]
    accuracy: float
    cost_ms: float

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {} if self.policy == "table" else {"policy": self.policy}
        return {
            **doc,
            "states": list(self.states),
            "accuracy": self.accuracy,
            "cost_ms": self.cost_ms,
        }


@dataclass(frozen=True)
class BranchesChoice:
    """What a branches plan runs without a budget (`run`: ``cascade`` or ``table``), what
    was `asked` (`BRANCH_CHOICES`), `why`, and the figures of both options (`cascade`
    None when none was made)."""

    run: str
    asked: str
    why: str
    table: BranchOption
    cascade: BranchOption | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {"run": self.run, "asked": self.asked, "why": self.why, "table": self.table.to_json()}
        if self.cascade is not None:
            doc["cascade"] = self.cascade.to_json()
        return doc


@dataclass(frozen=True)
class SplitFigures:
    """The policy on one split, against the reference state on the same split."""

    n: int
    accuracy: float
    reference_accuracy: float
    drop: float
    cost_ms: float


@dataclass(frozen=True)
class Plan:
    """One device's plan; see the module docstring for the file it is saved as."""

    manifest_sha256: str
    kind: str
    bundle_states: tuple[str, ...]
    measure: str
    states: tuple[int, ...]
    thresholds: tuple[float, ...]
    cost_ms: tuple[float, ...]
    budget: tuple[BudgetRow, ...]
    reference_state: int
    max_drop: float
    calibration: SplitFigures
    heldout: SplitFigures
    drop_bound: float
    delta: float
    r_oracle: float
    a_oracle: float
    r_n: float
    a_n: float
    gap_closure: float | None
    search_method: str
    max_states: int
    subsets_evaluated: int
    #: The measured whole model's cost (ms), None when the profile did not time it.
    static_ms: float | None = None
    promise: Promise | None = None
    #: Why the plan keeps the static model alone, when it does for a reason.
    fallback: str | None = None
    #: The profile percentile the costs (and so the budget table) are taken at.
    cost_stat: str = "p50"
    gates: tuple[Gate, ...] | None = None  # None: the threshold or agreement policy
    #: The runtime configuration the costs were measured under (None: not recorded).
    runtime: RuntimeConfig | None = None
    #: The cascade's own cost per hop counted in the expected costs (None: none counted).
    hop_overhead_ms: float | None = None
    #: True for the agreement policy (thresholds on agreement shares; no gates).
    agreement: bool = False
    #: The scheduler's estimators, one per kept branch from `scheduler_first` on but the
    #: last (None: not the scheduler policy).
    scheduler: tuple[Estimator, ...] | None = None
    #: The kept position of the branch a scheduler plan always runs.
    scheduler_first: int = 0

    #: A branches plan's choice between the cascade and the budget table (None: other
    #: kinds, and branches plans made before it).
    branches: BranchesChoice | None = None

    @property
    def walks(self) -> bool:
        """Whether a runner walks the kept states in turn without a budget (a cascade):
        always, but for a branches plan that runs the budget table (its most accurate
        branch alone); an older branches plan (no `branches` record) walks under the
        agreement policy only."""
        if self.kind != "branches":
            return True
        if self.branches is None:
            return self.agreement
        return self.branches.run == "cascade"

    @property
    def cost_kind(self) -> str:
        """The kind whose cost rule `cost_ms` follows: a branches cascade pays as an
        ensemble does (each branch from the input, every branch run paid)."""
        return "ensemble" if self.kind == "branches" and self.walks else self.kind

    @property
    def policy(self) -> str:
        """The policy kind: ``threshold``, ``gate``, ``agreement`` or ``scheduler``."""
        if self.scheduler is not None:
            return "scheduler"
        if self.agreement:
            return "agreement"
        return "threshold" if self.gates is None else "gate"

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the kept states."""
        return tuple(self.bundle_states[i] for i in self.states)

    def summary(self) -> dict[str, Any]:
        """The figures `edgeadapt plan --json` prints (held-out operating point)."""
        return {
            "states": list(self.state_names),
            "thresholds": list(self.thresholds),
            "measure": self.measure,
            "accuracy": self.heldout.accuracy,
            "cost": self.heldout.cost_ms,
            "drop": self.heldout.drop,
            "drop_bound": self.drop_bound,
            "delta": self.delta,
            "max_drop": self.max_drop,
            "reference": self.bundle_states[self.reference_state],
            "oracle": {"r_oracle": self.r_oracle, "a_oracle": self.a_oracle},
            "r_n": self.r_n,
            "gap_closure": self.gap_closure,
            "static_ms": self.static_ms,
            "hop_overhead_ms": self.hop_overhead_ms,
            "saving_vs_r_n": _saving(self.heldout.cost_ms, self.r_n),
            "saving_vs_static": self.saving_vs_static,
            "beats_static": self.beats_static,
            "keeps_static": self.keeps_static,
            "promise": None if self.promise is None else self.promise.to_json(),
            "fallback": self.fallback,
            "policy": _policy_doc(self),
            "statement": self.statement,
            **({} if self.branches is None else {"branches": self.branches.to_json()}),
        }

    @property
    def statement(self) -> str:
        """What the plan promises, or why it keeps the static model, in one line."""
        if self.fallback is not None:
            return self.fallback
        if self.promise is not None:
            return self.promise.describe()
        return (
            f"no promise (empirical calibration); Clopper-Pearson drop bound "
            f"{self.drop_bound:.2%} at probability {1 - self.delta:.0%} on the held-out split"
        )

    @property
    def keeps_static(self) -> bool:
        """Whether the plan is the static model itself: one kept state, the last (the one
        the measured whole model stands for), deployed as one plain model."""
        return self.states == (len(self.bundle_states) - 1,)

    @property
    def saving_vs_static(self) -> float | None:
        """The share of the measured static model's cost the held-out expected cost saves
        (None without one; 0 for a plan that is the static model)."""
        if self.keeps_static and self.static_ms is not None:
            return 0.0
        return _saving(self.heldout.cost_ms, self.static_ms)

    @property
    def beats_static(self) -> bool | None:
        """Whether the held-out expected cost is below the measured static model's (None
        without one; never for a plan that is the static model)."""
        if self.static_ms is None:
            return None
        return not self.keeps_static and self.heldout.cost_ms < self.static_ms


def _saving(cost: float, baseline: float | None) -> float | None:
    """The share of `baseline` a cost of `cost` saves (negative: it costs more)."""
    return None if baseline is None or baseline <= 0 else 1.0 - cost / baseline


def _figures_doc(f: SplitFigures) -> dict[str, Any]:
    return {
        "n": f.n,
        "accuracy": f.accuracy,
        "reference_accuracy": f.reference_accuracy,
        "drop": f.drop,
        "cost_ms": f.cost_ms,
    }


def _policy_doc(plan: Plan) -> dict[str, Any]:
    if plan.scheduler is not None:
        return {
            "kind": "scheduler",
            "first": plan.scheduler_first,
            "features": list(SCHEDULER_FEATURES),
            "estimators": [e.to_json() for e in plan.scheduler],
        }
    if plan.gates is None:
        return {"kind": plan.policy}
    return {"kind": "gate", "gates": [g.to_json() for g in plan.gates]}


L = TypeVar("L", Gate, Estimator)


def _logistic(f: Fields, cls: type[L]) -> L:
    """A gate or an estimator block: one weight per feature of `cls` and a bias."""
    return cls(
        weights=_numbers(f, "weights", len(cls.FEATURES), minimum=None), bias=f.number("bias")
    )


def _estimators(f: Fields, n_states: int) -> tuple[int, tuple[Estimator, ...]]:
    """A scheduler block's ``first`` kept position, its ``features`` (exactly
    `SCHEDULER_FEATURES`) and one estimator per kept state from ``first`` on but the
    last."""
    first = _int(f, "first", minimum=0, maximum=n_states - 1) if "first" in f.obj else 0
    features = f.get("features", list)
    if features != list(SCHEDULER_FEATURES):
        f.fail(f"must be {list(SCHEDULER_FEATURES)}, got {features!r}", "features")
    out = [_logistic(e, Estimator) for e in f.items("estimators")]
    if len(out) != n_states - 1 - first:
        f.fail(
            f"expected {n_states - 1 - first} estimators (one per kept branch from "
            "position first on but the last)",
            "estimators",
        )
    return first, tuple(out)


def _policy(
    f: Fields, n_states: int
) -> tuple[str, tuple[Gate, ...] | tuple[Estimator, ...] | None, int]:
    """The ``policy`` block: its kind, and for a gate plan one gate per kept state but
    the last, for a scheduler plan its estimators (None otherwise), and a scheduler
    plan's first position (0 otherwise)."""
    kind = f.get("kind", str, check=_one_of(POLICY_KINDS))
    if kind == "scheduler":
        first, estimators = _estimators(f, n_states)
        return kind, estimators, first
    if kind != "gate":
        return kind, None, 0
    gates = [_logistic(g, Gate) for g in f.items("gates")]
    if len(gates) != n_states - 1:
        f.fail(f"expected {n_states - 1} gates (one per kept state but the last)", "gates")
    return kind, tuple(gates), 0


def plan_to_doc(plan: Plan) -> dict[str, Any]:
    """The JSON document of a plan (see the module docstring)."""
    heldout = _figures_doc(plan.heldout)
    heldout.update(drop_bound=plan.drop_bound, delta=plan.delta)
    promise = {} if plan.promise is None else {"promise": plan.promise.to_json()}
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": 1 if plan.policy == "threshold" else VERSION,
        "bundle": {
            "manifest_sha256": plan.manifest_sha256,
            "kind": plan.kind,
            "states": list(plan.bundle_states),
        },
        "measure": plan.measure,
        "states": list(plan.states),
        "state_names": list(plan.state_names),
        "thresholds": list(plan.thresholds),
        "cost_ms": list(plan.cost_ms),
        "budget": [
            {"budget_ms": r.budget_ms, "state": r.state, "accuracy": r.accuracy}
            for r in plan.budget
        ],
        **({} if plan.policy == "threshold" else {"policy": _policy_doc(plan)}),
        "reference": {
            "state": plan.reference_state,
            "accuracy": plan.calibration.reference_accuracy,
            "max_drop": plan.max_drop,
        },
        "calibration": _figures_doc(plan.calibration),
        "heldout": heldout,
        "oracle": {
            "r_oracle": plan.r_oracle,
            "a_oracle": plan.a_oracle,
            "r_n": plan.r_n,
            "a_n": plan.a_n,
        },
        "gap_closure": plan.gap_closure,
        "search": {
            "method": plan.search_method,
            "max_states": plan.max_states,
            "subsets_evaluated": plan.subsets_evaluated,
        },
        **promise,
    }
    if plan.static_ms is not None:
        doc["static"] = {"cost_ms": plan.static_ms}
    if plan.fallback is not None:
        doc["fallback"] = plan.fallback
    if plan.cost_stat != "p50":
        doc["cost_stat"] = plan.cost_stat
    if plan.runtime is not None:
        doc["runtime"] = plan.runtime.to_json()
    if plan.hop_overhead_ms is not None:
        doc["hop_overhead_ms"] = plan.hop_overhead_ms
    if plan.branches is not None:
        doc["branches"] = plan.branches.to_json()
    return doc


def _numbers(
    f: Fields, key: str, length: int, *, minimum: float | None, maximum: float | None = None
) -> tuple[float, ...]:
    """A list of `length` finite numbers within [minimum, maximum] (None: unbounded)."""
    values = f.get(key, list)
    if len(values) != length:
        f.fail(f"expected {length} numbers, got {len(values)}", key)

    def check(v: float) -> str | None:
        low_ok = minimum is None or v >= minimum
        if math.isfinite(v) and low_ok and (maximum is None or v <= maximum):
            return None
        limits = [f">= {minimum}"] * (minimum is not None) + [f"<= {maximum}"] * (
            maximum is not None
        )
        return f"must be finite and {' and '.join(limits)}, got {v}"

    return tuple(
        float(check_value(v, (int, float), f.source, f"{f.path}.{key}[{j}]", check))
        for j, v in enumerate(values)
    )


def _int(f: Fields, key: str, *, minimum: int, maximum: int | None = None) -> int:
    def check(v: int) -> str | None:
        if v < minimum or (maximum is not None and v > maximum):
            return f"must be in [{minimum}, {maximum if maximum is not None else 'inf'}], got {v}"
        return None

    return int(f.get(key, int, check=check))


def _figures(f: Fields) -> SplitFigures:
    return SplitFigures(
        n=_int(f, "n", minimum=1),
        accuracy=f.number("accuracy", minimum=0.0, maximum=1.0),
        reference_accuracy=f.number("reference_accuracy", minimum=0.0, maximum=1.0),
        drop=f.number("drop", minimum=-1.0, maximum=1.0),
        cost_ms=f.number("cost_ms", minimum=0.0, maximum=MAX_MS),
    )


def _one_of(choices: tuple[str, ...]) -> Any:
    return lambda v: None if v in choices else f"must be one of {list(choices)}, got {v!r}"


def _bundle_fields(f: Fields) -> tuple[str, str, list[str]]:
    """``$.bundle``: the manifest's sha256, the bundle kind and its state names."""
    bundle = f.child("bundle")
    identity = read_identity(bundle)
    kind = bundle.get("kind", str, check=_one_of(KINDS))
    return identity.manifest_sha256, kind, list(identity.states)


def _kept_states(f: Fields, names: list[str]) -> list[int]:
    """``$.states``: strictly increasing indices into the bundle's states, named in
    ``$.state_names``."""
    states = f.get("states", list)
    if not states:
        f.fail("must keep at least one state", "states")
    for j, s in enumerate(states):
        check_value(s, int, f.source, f"$.states[{j}]")
        if not 0 <= s < len(names):
            f.fail(f"state index {s} is out of range for a bundle of {len(names)} states", "states")
        if j and s <= states[j - 1]:
            f.fail("state indices must be strictly increasing", "states")
    kept_names = f.get("state_names", list)
    if kept_names != [names[s] for s in states]:
        f.fail(f"must be {[names[s] for s in states]} (bundle.states at $.states)", "state_names")
    return states


def _budget_rows(f: Fields, states: list[int]) -> list[BudgetRow]:
    """``$.budget``: rows of strictly increasing budgets, each naming a kept state."""
    budget = []
    for row in f.items("budget"):
        state = row.get(
            "state",
            int,
            check=lambda v: None if v in states else f"state {v} is not kept ($.states)",
        )
        budget.append(
            BudgetRow(
                budget_ms=row.number("budget_ms", minimum=0.0, maximum=MAX_MS),
                state=state,
                accuracy=row.number("accuracy", minimum=0.0, maximum=1.0),
            )
        )
    if not budget:
        f.fail("must hold at least one row", "budget")
    for j in range(1, len(budget)):
        if budget[j].budget_ms <= budget[j - 1].budget_ms:
            f.fail("budget_ms must be strictly increasing", f"budget[{j}]")
    return budget


def _heldout_fields(f: Fields) -> dict[str, Any]:
    """``$.heldout``: the held-out figures and the drop bound at confidence `delta`."""
    return {
        "heldout": _figures(f),
        "drop_bound": f.number("drop_bound", minimum=0.0, maximum=1.0),
        "delta": f.get(
            "delta", float, check=lambda v: None if 0.0 < v < 1.0 else "must be in (0, 1)"
        ),
    }


def _oracle_fields(f: Fields) -> dict[str, Any]:
    """``$.oracle``: the oracle's and the last state's cost and accuracy."""
    return {
        "r_oracle": f.number("r_oracle", minimum=0.0),
        "a_oracle": f.number("a_oracle", minimum=0.0, maximum=1.0),
        "r_n": f.number("r_n", minimum=0.0),
        "a_n": f.number("a_n", minimum=0.0, maximum=1.0),
    }


def _search_fields(f: Fields) -> dict[str, Any]:
    """``$.search``: how the kept states were chosen."""
    return {
        "search_method": f.get("method", str, check=_one_of(SEARCH_METHODS)),
        "max_states": _int(f, "max_states", minimum=1),
        "subsets_evaluated": _int(f, "subsets_evaluated", minimum=0),
    }


def _branch_option(f: Fields, names: list[str], policy: str) -> BranchOption:
    """``$.branches.table`` or ``$.branches.cascade``: kept states and held-out figures."""
    states = f.get("states", list)
    if not states:
        f.fail("must keep at least one state", "states")
    for j, s in enumerate(states):
        check_value(s, int, f.source, f"{f.path}.states[{j}]")
        if not 0 <= s < len(names) or (j and s <= states[j - 1]):
            f.fail(f"must be increasing state indices below {len(names)}", "states")
    return BranchOption(
        policy=policy,
        states=tuple(states),
        accuracy=f.number("accuracy", minimum=0.0, maximum=1.0),
        cost_ms=f.number("cost_ms", minimum=0.0, maximum=MAX_MS),
    )


def _branches(f: Fields, kind: str, names: list[str], states: list[int]) -> BranchesChoice:
    """``$.branches``: a branches plan's run, the choice asked, why, and both options."""
    if kind != "branches":
        f.fail(f"only a branches plan has this block, this plan's bundle is {kind}")
    run = f.get("run", str, check=_one_of(BRANCH_RUNS))
    asked = f.get("asked", str, check=_one_of(BRANCH_CHOICES))
    if asked != "auto" and asked != run:
        f.fail(f"runs the {run}, but the {asked} was asked for", "run")
    table = _branch_option(f.child("table"), names, "table")
    cascade = None
    if "cascade" in f.obj:
        c = f.child("cascade")
        cascade = _branch_option(c, names, c.get("policy", str, check=_one_of(POLICY_KINDS)))
    kept = table if run == "table" else cascade
    if kept is None:
        f.fail("runs the cascade, but records none", "cascade")
    elif list(kept.states) != states:
        f.fail(f"the {run} the plan runs keeps {list(kept.states)}, $.states {states}", run)
    return BranchesChoice(run, asked, f.get("why", str), table, cascade)


def plan_from_doc(doc: dict[str, Any], *, source: str | os.PathLike[str]) -> Plan:
    """Validate a parsed plan document; errors name `source` and the JSON path."""
    f = Fields(doc, source=source)
    sha, kind, names = _bundle_fields(f)
    states = _kept_states(f, names)
    measure = f.get("measure", str, check=_one_of(MEASURES))
    policy, blocks, first = (
        _policy(f.child("policy"), len(states)) if "policy" in f.obj else ("threshold", None, 0)
    )
    if policy == "scheduler" and kind != "branches":
        f.fail(f"the scheduler policy picks branches; this plan's bundle is {kind}", "policy")
    # gate scores lie in [0, 1], agreement shares too (AGREEMENT_NEVER above: never
    # exit), scheduler estimates too (SCHEDULER_NEVER above: never picked by its estimate)
    low, high = {
        "threshold": MEASURE_RANGES[measure],
        "gate": (0.0, 1.0),
        "scheduler": (0.0, SCHEDULER_NEVER),
    }.get(policy, (0.0, AGREEMENT_NEVER))
    thresholds = _numbers(f, "thresholds", len(states) - 1, minimum=low, maximum=high)
    cost_ms = _numbers(f, "cost_ms", len(states), minimum=0.0, maximum=MAX_MS)
    budget = _budget_rows(f, states)
    reference = f.child("reference")
    heldout_f = f.child("heldout")
    oracle = f.child("oracle")
    search = f.child("search")
    static = f.child("static").number("cost_ms", minimum=0.0) if "static" in f.obj else None
    gap = f.get("gap_closure", (int, float, type(None)))
    if gap is not None and not math.isfinite(gap):
        f.fail("must be a finite number or null", "gap_closure")
    return Plan(
        manifest_sha256=sha,
        kind=kind,
        bundle_states=tuple(names),
        measure=measure,
        states=tuple(states),
        thresholds=thresholds,
        cost_ms=cost_ms,
        budget=tuple(budget),
        reference_state=_int(reference, "state", minimum=0, maximum=len(names) - 1),
        max_drop=reference.number("max_drop", minimum=0.0, maximum=1.0),
        calibration=_figures(f.child("calibration")),
        **_heldout_fields(heldout_f),
        **_oracle_fields(oracle),
        gap_closure=None if gap is None else float(gap),
        **_search_fields(search),
        static_ms=static,
        promise=_promise(f.child("promise")) if "promise" in f.obj else None,
        fallback=f.get("fallback", str, None),
        gates=cast("tuple[Gate, ...]", blocks) if policy == "gate" else None,
        agreement=policy == "agreement",
        scheduler=cast("tuple[Estimator, ...]", blocks) if policy == "scheduler" else None,
        scheduler_first=first,
        cost_stat=f.get("cost_stat", str, "p50", check=_one_of(COST_STATS)),
        runtime=(
            RuntimeConfig.from_json(f.obj["runtime"], f.source, "$.runtime")
            if "runtime" in f.obj
            else None
        ),
        hop_overhead_ms=(
            f.number("hop_overhead_ms", minimum=0.0, maximum=MAX_MS)
            if "hop_overhead_ms" in f.obj
            else None
        ),
        branches=_branches(f.child("branches"), kind, names, states)
        if "branches" in f.obj
        else None,
    )


def _promise(f: Fields) -> Promise:
    level = {"check": lambda v: None if 0.0 < v < 1.0 else "must be in (0, 1)"}
    n = _int(f, "n", minimum=1)
    tested = _int(f, "tested", minimum=1)
    passed = _int(f, "passed", minimum=0, maximum=tested)
    promise = Promise(
        max_drop=f.get("max_drop", float, **level),
        delta=f.get("delta", float, **level),
        n=n,
        tested=tested,
        passed=passed,
        p_value=f.number("p_value", minimum=0.0, maximum=1.0),
        losses=_int(f, "losses", minimum=0, maximum=n),
        required_n=_int(f, "required_n", minimum=1),
        method=f.get("method", str),
        assumption=f.get("assumption", str),
        kind=f.get("kind", str, "loss", check=_one_of(PROMISE_KINDS)),
        gains=_int(f, "gains", minimum=0, maximum=n) if "gains" in f.obj else None,
        path=f.get("path", str, None, check=_one_of(PROMISE_PATHS)),
    )
    if promise.losses + (promise.gains or 0) > n:
        f.fail(f"losses and gains must sum to at most n = {n}", "gains")
    if f.get("holds", bool) != promise.holds:
        f.fail("must say whether any tested point passed (passed > 0)", "holds")
    return promise


def save_plan(path: str | os.PathLike[str], plan: Plan) -> None:
    """Validate `plan` as a reader would, then write it atomically."""
    doc = plan_to_doc(plan)
    plan_from_doc(doc, source=path)
    write_json(path, doc)


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and validate a plan file."""
    return plan_from_doc(read_json(path, fmt=FORMAT, versions=list(VERSIONS)), source=path)


def check_plan(
    plan: Plan,
    bundle: Bundle,
    source: str | os.PathLike[str] | None = None,
    *,
    policies: tuple[str, ...] = ("threshold",),
) -> None:
    """Refuse a plan made for another bundle (`check_identity`),
    or one whose policy the caller cannot run (`policies`: the kinds it runs; a runner
    that thresholds confidences must not read gate thresholds as such); `source` names
    the plan file in the error."""
    if plan.policy not in policies:
        raise InputError(
            f"uses the {plan.policy} policy; this runner runs {', '.join(policies)} plans only",
            source=source,
            field="$.policy.kind",
        )
    check_identity(
        BundleIdentity(plan.manifest_sha256, plan.bundle_states),
        bundle,
        source=source,
        redo="plan this bundle again",
    )
