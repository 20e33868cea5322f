"""`AdaptiveModel`: run a bundle's states as a batched cascade under the decision kernel.

The cascade walks the kept states in order (all of the bundle's, or a plan's). Before
each kept state after the first, the policy checks that its predicted cost fits what is
left of the budget; then the steps that produce the state's logits run on the rows still
active, the kernel decides which rows exit, and only the rows that continue go on
(compaction): early-exit bundles carry the activation rows ``act[continue_idx]`` along
the chain, ensemble members re-read the input rows ``x[rows]``. For an early-exit plan
that skips states, the skipped states' steps still run (they produce the activation)
but do not decide. A row whose logits hold NaN never exits early; at the last state it
gets ``pred = -1`` and ``conf = NaN``.

Budget (``predict(x, budget_ms=B)``): the first kept state always runs (there is no
answer before it), so a budget below its cost returns the first exit. When the next
state is predicted not to fit, every remaining row exits with its answer at the last
completed kept state (``budget_exit`` marks them). Predicted costs come from
`step_costs_ms`, a profile or the plan, and measured ones are folded in (EWMA).

    >>> m = AdaptiveModel.load("bundle/", thresholds=0.9)
    >>> out = m.predict(x)            # x: float32 [B, *input shape]
    >>> out.pred, out.exit_state, out.conf, out.latency_ms["total"]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

import numpy as np

from edgeadapt.bundle import Bundle, load_bundle
from edgeadapt.errors import InputError
from edgeadapt.kernel import MEASURES, Policy, decide_buffers, decide_into
from edgeadapt.plan import Plan, load_plan
from edgeadapt.profile import Profile, check_profile, load_profile
from edgeadapt.runtimes import Session, get_runtime


@dataclass(frozen=True)
class Prediction:
    """Per-sample results of one `predict` call.

    `exit_state` is the bundle state index that answered; `budget_exit` marks rows sent
    out by the budget. `latency_ms` holds ``total`` (the whole call), ``steps`` (each
    step's backend time, in the order run) and ``rows`` (how many rows each step ran on).
    """

    pred: np.ndarray
    exit_state: np.ndarray
    conf: np.ndarray
    budget_exit: np.ndarray
    latency_ms: dict[str, Any]


@dataclass(frozen=True)
class _Stage:
    """One kept state: the bundle steps it runs (the segment since the previous kept
    state) and the state it decides for."""

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
    profile: Profile | str | os.PathLike[str] | None,
) -> list[float] | None:
    """Per-step predicted latency from explicit costs or a profile (batch 1, p50)."""
    if step_costs_ms is not None and profile is not None:
        raise InputError("give step_costs_ms or a profile, not both", source="step_costs_ms")
    if profile is not None:
        if not isinstance(profile, Profile):
            profile = load_profile(profile, bundle)
        check_profile(profile, bundle)
        return [s.get("p50") for s in profile.step_stats(1)]
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


def _check_plan(plan: Plan, bundle: Bundle, source: str) -> None:
    if plan.manifest_sha256 != bundle.manifest_sha256:
        raise InputError(
            f"was made for another bundle (manifest sha256 {plan.manifest_sha256[:12]}..., "
            f"{bundle.path} has {bundle.manifest_sha256[:12]}...)",
            source=source,
            field="$.bundle.manifest_sha256",
        )
    if len(plan.bundle_states) != len(bundle.states):
        raise InputError(
            f"names {len(plan.bundle_states)} states, the bundle has {len(bundle.states)}",
            source=source,
            field="$.bundle.states",
        )


class AdaptiveModel:
    """A bundle loaded into a runtime with its policy; `predict` runs the cascade."""

    def __init__(
        self,
        bundle: Bundle,
        sessions: Sequence[Session],
        stages: Sequence[_Stage],
        policy: Policy,
        costs_known: bool,
    ) -> None:
        self.bundle = bundle
        self.sessions = tuple(sessions)
        self.stages = tuple(stages)
        self.policy = policy
        self.costs_known = costs_known
        self._buffers = decide_buffers(1)
        # fixed per stage: the threshold and the logits name (read once, off the hot path)
        self._thresholds = [policy.threshold(j) for j in range(len(self.stages))]
        self._logits = [bundle.steps[st.steps[-1]].logits for st in self.stages]
        self._measure = policy.measure

    @classmethod
    def load(
        cls,
        bundle: Bundle | str | os.PathLike[str],
        runtime: str = "onnxruntime",
        *,
        thresholds: float | Sequence[float] | None = None,
        measure: str | None = None,
        plan: Plan | str | os.PathLike[str] | None = None,
        profile: Profile | str | os.PathLike[str] | None = None,
        step_costs_ms: Sequence[float] | None = None,
        runtime_options: dict[str, Any] | None = None,
    ) -> AdaptiveModel:
        """Load `bundle` into `runtime` under `thresholds` (one for every exit, or one per
        state but the last) or a `plan` (its states, thresholds, measure and costs).

        `measure` defaults to the plan's, else ``maxprob``. Step costs for the budget
        come from `step_costs_ms` (one per bundle step), else a `profile` (batch 1, p50),
        else the plan; without any, `predict` refuses a budget.
        """
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        n = len(bundle.states)
        plan_source = "plan"
        if plan is not None and not isinstance(plan, Plan):
            plan_source = str(plan)
            plan = load_plan(plan)
        if plan is not None:
            if thresholds is not None:
                raise InputError("give thresholds or a plan, not both", source="thresholds")
            _check_plan(plan, bundle, plan_source)
            if measure is not None and measure != plan.measure:
                raise InputError(
                    f"the plan was made for measure {plan.measure!r}, got {measure!r}",
                    source="measure",
                )
            kept, kept_thresholds, measure = plan.states, plan.thresholds, plan.measure
        else:
            if thresholds is None:
                raise InputError("give thresholds or a plan", source="thresholds")
            kept, kept_thresholds = tuple(range(n)), _thresholds(thresholds, n - 1)
            measure = "maxprob" if measure is None else measure
        if measure not in MEASURES:
            raise InputError(
                f"must be one of {', '.join(MEASURES)}, got {measure!r}", source="measure"
            )

        if bundle.kind == "early-exit":
            starts = [0, *(s + 1 for s in kept[:-1])]
            stages = [_Stage(s, tuple(range(a, s + 1))) for a, s in zip(starts, kept, strict=True)]
        else:
            stages = [_Stage(s, (s,)) for s in kept]

        per_step = _step_costs(bundle, step_costs_ms, profile)
        if per_step is not None:
            stage_costs = [sum(per_step[i] for i in st.steps) for st in stages]
        elif plan is not None:
            stage_costs = list(np.diff(plan.cost_ms, prepend=0.0).clip(min=0.0))
        else:
            stage_costs = [0.0] * len(stages)
        policy = Policy(kept_thresholds, stage_costs, measure=measure, cumulative=True)

        rt = get_runtime(runtime, **(runtime_options or {}))
        needed = sorted({i for st in stages for i in st.steps})
        sessions: list[Any] = [None] * len(bundle.steps)
        try:
            for i in needed:
                sessions[i] = rt.load(bundle.steps[i].path)
        except BaseException:
            for s in sessions:
                if s is not None:
                    s.close()
            raise
        known = per_step is not None or plan is not None
        return cls(bundle, sessions, stages, policy, known)

    def close(self) -> None:
        """Release every step's session."""
        for s in self.sessions:
            if s is not None:
                s.close()

    def __enter__(self) -> AdaptiveModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_input(self, x: Any) -> np.ndarray:
        """Validate `x` against the bundle input (dtype, rank, shape, non-empty, finite)."""
        spec = self.bundle.input
        if not isinstance(x, np.ndarray):
            raise InputError(f"expected a numpy array, got {type(x).__name__}", source="input")
        if x.dtype != np.dtype(spec.dtype):
            raise InputError(
                f"expected dtype {spec.dtype}, got {x.dtype} (convert explicitly, e.g. "
                f"x.astype(np.{spec.dtype}))",
                source="input",
            )
        want = tuple(spec.shape[1:])
        if x.ndim != len(spec.shape) or x.shape[1:] != want:
            shape = ", ".join(str(d) for d in ("B", *want))
            raise InputError(f"expected shape [{shape}], got {list(x.shape)}", source="input")
        if x.shape[0] == 0:
            raise InputError("empty batch (0 rows)", source="input")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1))
            raise InputError(
                f"holds NaN or infinity in {bad.size} row(s), first row {int(bad[0])}",
                source="input",
            )
        return np.ascontiguousarray(x)

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

    def predict(self, x: np.ndarray, budget_ms: float | None = None) -> Prediction:
        """Run the cascade on `x` (the bundle's input dtype, shape [B, *input shape])."""
        x = self.check_input(x)
        budget = self._check_budget(budget_ms)
        start = perf_counter_ns()
        b = x.shape[0]
        if self._buffers[0].shape[0] < b:
            self._buffers = decide_buffers(b)
        pbuf, cbuf, mbuf, kbuf = self._buffers
        pred = np.full(b, -1, dtype=np.int64)
        conf = np.full(b, np.nan, dtype=np.float32)
        exit_state = np.full(b, -1, dtype=np.int64)
        budget_exit = np.zeros(b, dtype=np.bool_)
        step_ms: list[float] = []
        step_rows: list[int] = []

        bundle, policy, last = self.bundle, self.policy, len(self.stages) - 1
        input_name = bundle.input.name
        rows: np.ndarray | None = None  # original indices of the active rows; None: all
        prev: dict[str, np.ndarray] = {}  # the last step's outputs, already compacted
        best_pred = best_conf = np.empty(0)
        for pos, stage in enumerate(self.stages):
            if budget is not None and pos > 0:
                elapsed = (perf_counter_ns() - start) / 1e6
                if not policy.fits(pos, elapsed, budget):
                    done = slice(None) if rows is None else rows
                    pred[done], conf[done] = best_pred, best_conf
                    exit_state[done] = self.stages[pos - 1].state
                    budget_exit[done] = True
                    break
            t0 = perf_counter_ns()
            for i in stage.steps:
                step = bundle.steps[i]
                session = self.sessions[i]
                feeds = {
                    name: (x if rows is None else x[rows]) if name == input_name else prev[name]
                    for name in step.inputs
                }
                prev = session.run(feeds, check=False)
                step_ms.append(session.last_run_ns / 1e6)
                step_rows.append(b if rows is None else rows.size)
            policy.observe(pos, (perf_counter_ns() - t0) / 1e6)
            logits = np.ascontiguousarray(prev[self._logits[pos]])
            n = logits.shape[0]
            k = decide_into(logits, self._thresholds[pos], pbuf, cbuf, mbuf, kbuf, self._measure)
            p, c = pbuf[:n], cbuf[:n]
            if pos == last or k == 0:  # every active row answers here
                dst: Any = slice(None) if rows is None else rows
                pred[dst], conf[dst], exit_state[dst] = p, c, stage.state
                break
            if k < n:
                out_idx = np.flatnonzero(mbuf[:n])
                dst = out_idx if rows is None else rows[out_idx]
                pred[dst], conf[dst], exit_state[dst] = p[out_idx], c[out_idx], stage.state
                keep = kbuf[:k].copy()
                rows = keep if rows is None else rows[keep]
                wanted = bundle.steps[self.stages[pos + 1].steps[0]].inputs
                prev = {name: prev[name][keep] for name in wanted if name != input_name}
                if budget is not None:
                    best_pred, best_conf = p[keep], c[keep]
            elif budget is not None:
                best_pred, best_conf = p.copy(), c.copy()
        total = (perf_counter_ns() - start) / 1e6
        return Prediction(
            pred=pred,
            exit_state=exit_state,
            conf=conf,
            budget_exit=budget_exit,
            latency_ms={"total": total, "steps": step_ms, "rows": step_rows},
        )
