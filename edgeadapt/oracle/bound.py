"""The oracle bound of one bundle on one device, or of a state table: what `edgeadapt bound`
computes.

`bundle_bound` joins a bundle, its profile (what each state costs on the device) and an
evaluation (which samples each state gets right) and hands them to the oracle engine
(`edgeadapt.oracle.equations.bound_summary`); `bundle_bound_defaults` first finds the profile and
the cost unit as `edgeadapt bound BUNDLE` does; `table_bound` bounds a state table. State costs are the profile's cascade costs in ms
(steps 0..i: what a sequential run pays) or the manifest's FLOPs. Next to the headline,
``views`` holds the exact oracle on the FLOPs views, the cascade one and the paper's
*direct* one (stages 0..i plus head i only), so the gap between what the paper's view
promises and what the device pays is visible. `load_inputs` is the shared, checked
loading step (the report uses it too).

Two baselines: ``r_n`` is the sum of the steps (the full path, every state run in turn,
what the paper's gains are against; in a bundle of several chains, the steps of its
state's chain alone, `r_n_chain`), and ``static`` the measured whole model from the
profile (the unsplit network a user would otherwise deploy; `static_baseline`). A
saving against R_N that does not hold against the static model is no saving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle, as_bundle
from edgeadapt.formats.evaluation import Evaluation, check_evaluation, load_evaluation
from edgeadapt.formats.profile import (
    Profile,
    check_profile,
    default_profile_path,
    flops_costs,
    load_profile,
    state_costs,
    static_cost,
)
from edgeadapt.formats.statetable import table_states
from edgeadapt.oracle.equations import BoundSummary, OraclePoint, bound_summary
from edgeadapt.render import num, pct, ratio

__all__ = [
    "COSTS",
    "R_N_WHAT",
    "VIEWS_CAPTION",
    "BundleBound",
    "CostView",
    "Inputs",
    "ProfileSource",
    "StaticBaseline",
    "TableBound",
    "bundle_bound",
    "bundle_bound_defaults",
    "load_inputs",
    "oracle_cells",
    "r_n_chain",
    "r_n_what",
    "static_baseline",
    "table_bound",
    "view_cells",
]

#: Cost units: measured ms from a profile, or FLOPs from the manifest.
COSTS = ("ms", "flops")
#: Profile statistic and batch size the state costs are taken from (as `edgeadapt plan`).
STAT = "p50"
BATCH = 1
#: What R_N is, per bundle kind (for labels): what running the costliest state pays.
R_N_WHAT = {
    "early-exit": "the sum of the steps",
    "ensemble": "the last member alone",
    "branches": "the last branch alone",
}

PathLike = str | os.PathLike[str]


def r_n_what(kind: str, chain: str | None = None) -> str:
    """What R_N is for a bundle of `kind` (`R_N_WHAT`), for labels; `chain` names the
    chain of R_N's state in a bundle of several chains (`r_n_chain`), where R_N is the
    sum of that chain's steps alone."""
    if chain is not None:
        return f"the sum of chain {chain}'s steps"
    return R_N_WHAT.get(kind, "the costliest state")


def r_n_chain(bundle: Bundle, state: str | None = None) -> str | None:
    """The chain of `bundle`'s state named `state` (default its last, whose cost is a
    plan's R_N) in a bundle of several chains; None for one chain."""
    if not bundle.chain_names:
        return None
    if state is None:
        return bundle.chain_names[-1]
    names = [s.name for s in bundle.states]
    return bundle.chain_names[names.index(state)]


#: What the cost views are, in words (the caption of every table of them).
VIEWS_CAPTION = (
    "exact oracle per cost view (cascade: steps 0..i, what a sequential run pays; "
    "direct: stages 0..i + head i, the paper's view)"
)


def oracle_cells(p: OraclePoint) -> list[str]:
    """An oracle point's table cells, as `bound` and the report show them: R_oracle,
    A_oracle, dR, R_ratio, dA."""
    return [
        num(p.r_oracle),
        pct(p.a_oracle, 2),
        num(p.delta_r),
        ratio(p.r_ratio),
        pct(p.delta_a, 2, signed=True),
    ]


def view_cells(views: dict[str, CostView]) -> list[list[str]]:
    """One row of cells per cost view: name, unit (FLOPs shown as MFLOPs), R_oracle, R_N,
    R_ratio (`edgeadapt.render` formats)."""
    rows = []
    for name, v in views.items():
        scale, unit = (1e6, "MFLOPs") if v.unit == "flops" else (1.0, v.unit)
        rows.append([name, unit, num(v.r_oracle / scale), num(v.r_n / scale), ratio(v.r_ratio)])
    return rows


@dataclass(frozen=True)
class CostView:
    """The exact oracle on one view of the state costs (`BoundSummary`'s headline)."""

    unit: str
    costs: tuple[float, ...]
    method: str
    r_oracle: float
    a_oracle: float
    delta_r: float
    r_ratio: float | None
    delta_a: float
    r_n: float
    baseline: str

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "costs": list(self.costs),
            "method": self.method,
            "r_oracle": self.r_oracle,
            "a_oracle": self.a_oracle,
            "delta_r": self.delta_r,
            "r_ratio": self.r_ratio,
            "delta_a": self.delta_a,
            "r_n": self.r_n,
            "baseline": self.baseline,
        }


@dataclass(frozen=True)
class StaticBaseline:
    """The measured whole model as a baseline: its cost (p50 at batch 1, ms), where it
    came from, and the oracle's saving against it next to R_N's."""

    what: str
    cost_ms: float
    origin: str | None
    path: str | None
    sha256: str | None
    state: str | None
    delta_r: float
    r_ratio: float | None
    full_path_ratio: float | None  # R_N / the static model's cost

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "cost_ms": self.cost_ms,
            "origin": self.origin,
            "path": self.path,
            "sha256": self.sha256,
            "state": self.state,
            "delta_r": self.delta_r,
            "r_ratio": self.r_ratio,
            "full_path_ratio": self.full_path_ratio,
        }


@dataclass(frozen=True)
class ProfileSource:
    """Where a bound's measured costs come from."""

    path: str | None
    device_id: str
    measured_at: str
    runtime: Any
    threads: Any
    noisy: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "device_id": self.device_id,
            "measured_at": self.measured_at,
            "runtime": self.runtime,
            "threads": self.threads,
            "noisy": self.noisy,
        }


@dataclass(frozen=True)
class BundleBound:
    """Every oracle bound of a bundle on its measured or FLOPs costs (`bundle_bound`).

    `summary` is `edgeadapt.oracle.equations.bound_summary`'s; `views` the exact oracle on
    ``cascade_ms`` (with a profile), ``cascade_flops`` and ``direct_flops``; `static` the
    headline oracle against the measured whole model (None with FLOPs costs or a
    profile without it).
    """

    summary: BoundSummary
    bundle_path: str
    kind: str
    states: tuple[str, ...]  # bundle order
    unit: str
    origin: str  # where the costs come from, in words
    profile: ProfileSource | None
    evaluation_path: str | None
    samples: int
    views: dict[str, CostView]
    static: StaticBaseline | None
    #: The chain of R_N's state (`summary.baseline`) in a bundle of several chains.
    r_n_chain: str | None = None

    @property
    def r_n_what(self) -> str:
        """What R_N is for this bundle (its kind, or R_N's chain)."""
        return r_n_what(self.kind, self.r_n_chain)

    def baselines(self) -> list[tuple[str, float, float, float | None]]:
        """(label, cost, dR, R_ratio) of the headline oracle against each baseline: R_N
        (for an early-exit bundle the sum of the steps) and the measured static model."""
        s = self.summary
        r_ratio = s.r_n / s.r_oracle if s.r_oracle > 0 else None
        rows = [(f"R_N: {self.r_n_what} ({s.baseline})", s.r_n, s.r_n - s.r_oracle, r_ratio)]
        if self.static is not None:
            st = self.static
            label = f"static: measured whole model ({st.origin})"
            rows.append((label, st.cost_ms, st.delta_r, st.r_ratio))
        return rows

    def to_json(self) -> dict[str, Any]:
        out = self.summary.to_json()
        out["bundle"] = {"path": self.bundle_path, "kind": self.kind, "states": list(self.states)}
        out["cost"] = {"unit": self.unit, "origin": self.origin}
        if self.profile is not None:
            out["profile"] = self.profile.to_json()
        out["evaluation"] = {"path": self.evaluation_path, "samples": self.samples}
        out["views"] = {name: v.to_json() for name, v in self.views.items()}
        out["r_n_what"] = self.r_n_what
        out["static"] = None if self.static is None else self.static.to_json()
        return out


@dataclass(frozen=True)
class TableBound:
    """The bounds of a state table (`table_bound`), and the table rows the evaluation
    has no results for (left out)."""

    summary: BoundSummary
    ignored: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = self.summary.to_json()
        if self.ignored:
            out["ignored"] = list(self.ignored)
        return out


@dataclass(frozen=True)
class Inputs:
    """A bundle with its checked profile (or None) and evaluation, columns in bundle order."""

    bundle: Bundle
    profile: Profile | None
    evaluation: Evaluation
    costs: np.ndarray  # per state, in `unit`
    unit: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.bundle.states)


def _profile(profile: Profile | PathLike, bundle: Bundle) -> Profile:
    if isinstance(profile, Profile):
        check_profile(profile, bundle)
        return profile
    return load_profile(profile, bundle)


def _evaluation(evaluation: Evaluation | PathLike, bundle: Bundle) -> Evaluation:
    """The evaluation checked to be of `bundle`, columns in bundle order (`check_evaluation`)."""
    ev = evaluation if isinstance(evaluation, Evaluation) else load_evaluation(evaluation)
    return check_evaluation(ev, bundle)


def load_inputs(
    bundle: Bundle | PathLike,
    *,
    profile: Profile | PathLike | None,
    evaluation: Evaluation | PathLike | None,
    cost: str = "ms",
) -> Inputs:
    """Load and cross-check a bundle, profile and evaluation (objects or paths).

    ``cost="ms"`` takes each state's cascade cost (p50 at batch 1) from the profile and
    needs one; ``cost="flops"`` takes the manifest's FLOPs (a profile is still checked).
    """
    if cost not in COSTS:
        raise InputError(f"must be one of {', '.join(COSTS)}, got {cost!r}", source="cost")
    b = as_bundle(bundle)
    prof = None if profile is None else _profile(profile, b)
    if evaluation is None:
        raise InputError(
            "the oracle needs each state's per-sample results: give an evaluation "
            "(edgeadapt evaluate BUNDLE --data D.npz)",
            source="evaluation",
        )
    ev = _evaluation(evaluation, b)
    if cost == "ms":
        if prof is None:
            raise InputError(
                "cost 'ms' needs a profile of this bundle (edgeadapt profile BUNDLE), "
                "or use cost 'flops'",
                source="profile",
            )
        costs = state_costs(prof, b, batch=BATCH, stat=STAT)
    else:
        costs = flops_costs(b, "cascade")
    return Inputs(b, prof, ev, np.asarray(costs, dtype=np.float64), cost)


def _view(inputs: Inputs, costs: np.ndarray, unit: str, envelope: bool, source: str) -> CostView:
    """The exact oracle (headline of `bound_summary`) on one cost view."""
    s = bound_summary(
        inputs.names, costs, correct=inputs.evaluation.correct, envelope=envelope, source=source
    )
    h = s.headline
    return CostView(
        unit,
        tuple(float(c) for c in costs),
        s.method,
        h.r_oracle,
        h.a_oracle,
        h.delta_r,
        h.r_ratio,
        h.delta_a,
        s.r_n,
        s.baseline,
    )


def static_baseline(
    profile: Profile | None, bundle: Bundle, r_n: float, r_oracle: float
) -> StaticBaseline | None:
    """The measured whole model as a baseline (`StaticBaseline`); None when the profile
    did not time it."""
    if profile is None:
        return None
    cost = static_cost(profile, bundle, batch=BATCH, stat=STAT)
    if cost is None:
        return None
    wm = profile.whole_model or {}
    return StaticBaseline(
        what="measured whole model (static, unsplit), "
        + ("composed from the bundle" if wm.get("origin") == "composed" else str(wm.get("path"))),
        cost_ms=cost,
        origin=wm.get("origin"),
        path=wm.get("path"),
        sha256=wm.get("sha256"),
        state=wm.get("state"),
        delta_r=cost - r_oracle,
        r_ratio=cost / r_oracle if r_oracle > 0 else None,
        full_path_ratio=r_n / cost if cost > 0 else None,
    )


def bundle_bound(
    bundle: Bundle | PathLike,
    *,
    profile: Profile | PathLike | None = None,
    evaluation: Evaluation | PathLike | None = None,
    cost: str = "ms",
    alpha: float | None = None,
    classes: int | None = None,
    envelope: bool = False,
) -> BundleBound:
    """Every oracle bound of `bundle` on its measured (``ms``) or FLOPs state costs
    (`BundleBound`): the exact oracle, the alphas, eq. 8/9/13, the smallest-state test
    with `classes` (default the bundle's class count), the cost views and the static
    baseline. Bundle, profile and evaluation may be loaded objects or paths.
    """
    inputs = load_inputs(bundle, profile=profile, evaluation=evaluation, cost=cost)
    b, ev = inputs.bundle, inputs.evaluation
    source = str(ev.source or b.path)
    summary = bound_summary(
        inputs.names,
        inputs.costs,
        correct=ev.correct,
        alpha=alpha,
        classes=b.num_classes if classes is None else classes,
        envelope=envelope,
        source=source,
    )
    views = _views(inputs, envelope, source)
    origin = (
        f"profile {STAT} at batch {BATCH}, cascade (steps 0..i)"
        if inputs.unit == "ms"
        else "manifest FLOPs, cascade (steps 0..i)"
    )
    p = inputs.profile
    return BundleBound(
        summary=summary,
        bundle_path=str(b.path),
        kind=b.kind,
        states=inputs.names,
        unit=inputs.unit,
        origin=origin,
        profile=None if p is None else _profile_source(p),
        evaluation_path=ev.source,
        samples=int(ev.labels.size),
        views=views,
        static=static_baseline(p, b, summary.r_n, summary.r_oracle)
        if inputs.unit == "ms"
        else None,
        r_n_chain=r_n_chain(b, summary.baseline),
    )


def _views(inputs: Inputs, envelope: bool, source: str) -> dict[str, CostView]:
    """The bound in each cost view: the profile's ms (when there is one), the cascade's
    and the direct FLOPs."""
    b = inputs.bundle
    views: dict[str, CostView] = {}
    if inputs.profile is not None:
        ms = np.asarray(state_costs(inputs.profile, b, batch=BATCH, stat=STAT))
        views["cascade_ms"] = _view(inputs, ms, "ms", envelope, source)
    for view in ("cascade", "direct"):
        flops = np.asarray(flops_costs(b, view), dtype=np.float64)
        views[f"{view}_flops"] = _view(inputs, flops, "flops", envelope, source)
    return views


def _profile_source(p: Profile) -> ProfileSource:
    """Where the profile's costs come from, as the bound reports it."""
    return ProfileSource(
        p.source,
        p.device_id,
        p.measured_at,
        p.settings.get("runtime"),
        p.settings.get("threads"),
        p.noisy,
    )


def bundle_bound_defaults(
    bundle: Bundle | PathLike,
    *,
    profile: PathLike | None = None,
    evaluation: PathLike | None = None,
    cost: str | None = None,
    alpha: float | None = None,
    classes: int | None = None,
    envelope: bool = False,
) -> BundleBound:
    """`bundle_bound` as ``edgeadapt bound BUNDLE`` runs it: the profile defaults to
    ``BUNDLE/profiles/<device>.json`` when that exists (unless ``cost="flops"``), the
    cost unit to ms with a profile and FLOPs without."""
    loaded = as_bundle(bundle)
    if cost is not None and cost not in COSTS:
        raise InputError(f"must be one of {', '.join(COSTS)}, got {cost!r}", source="cost")
    if profile is None and cost != "flops":
        default = default_profile_path(loaded)
        profile = default if default.is_file() else None
        if profile is None and cost == "ms":
            raise InputError(
                f"no profile given and none at {default}: run edgeadapt profile "
                f"{loaded.path} or give a profile (or cost flops)",
                source="cost",
            )
    if evaluation is None:
        raise InputError(
            f"bound {loaded.path} needs per-sample results: give an evaluation "
            f"(edgeadapt evaluate {loaded.path} --data D.npz)",
            source="evaluation",
        )
    return bundle_bound(
        loaded,
        profile=profile,
        evaluation=evaluation,
        cost=cost or ("flops" if profile is None else "ms"),
        alpha=alpha,
        classes=classes,
        envelope=envelope,
    )


def table_bound(
    table: PathLike,
    evaluation: PathLike | None = None,
    *,
    alpha: float | None = None,
    classes: int | None = None,
    envelope: bool = False,
) -> TableBound:
    """Every bound of a state table (`edgeadapt.formats.statetable`); with an evaluation, the
    exact oracle on its per-sample results and the table's costs by state name."""
    states = table_states(table, evaluation, classes)
    summary = bound_summary(
        states.names,
        states.costs,
        states.accuracies,
        correct=states.correct,
        alpha=alpha,
        classes=classes,
        envelope=envelope,
        source=states.source,
    )
    return TableBound(summary, states.ignored)
