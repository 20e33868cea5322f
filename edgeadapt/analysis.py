"""The oracle bound of one bundle on one device: measured state costs meet per-sample results.

`bundle_bound` joins a bundle, its profile (what each state costs on the device) and an
evaluation (which samples each state gets right) and hands them to the oracle engine
(`edgeadapt.oracle.bound_summary`). State costs are the profile's cascade costs in ms
(steps 0..i: what a sequential run pays) or the manifest's FLOPs. Next to the headline,
``views`` holds the exact oracle on the FLOPs views, the cascade one and the paper's
*direct* one (stages 0..i plus head i only), so the gap between what the paper's view
promises and what the device pays is visible. `load_inputs` is the shared, checked
loading step (the report uses it too).

Two baselines: ``r_n`` is the sum of the steps (the full path, every state run in turn,
what the paper's gains are against), and ``static`` the measured whole model from the
profile (the unsplit network a user would otherwise deploy; `static_baseline`). A
saving against R_N that does not hold against the static model is no saving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeadapt.bundle import Bundle, load_bundle
from edgeadapt.errors import InputError
from edgeadapt.evaluation import Evaluation, load_evaluation
from edgeadapt.oracle import bound_summary
from edgeadapt.profile import (
    Profile,
    check_profile,
    flops_costs,
    load_profile,
    state_costs,
    static_cost,
)

__all__ = ["COSTS", "R_N_WHAT", "Inputs", "bundle_bound", "load_inputs", "static_baseline"]

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


def _bundle(bundle: Bundle | PathLike) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


def _profile(profile: Profile | PathLike, bundle: Bundle) -> Profile:
    if isinstance(profile, Profile):
        check_profile(profile, bundle)
        return profile
    return load_profile(profile, bundle)


def _evaluation(evaluation: Evaluation | PathLike, bundle: Bundle) -> Evaluation:
    """The evaluation with its columns in bundle order; refused when its states differ."""
    ev = evaluation if isinstance(evaluation, Evaluation) else load_evaluation(evaluation)
    names = [s.name for s in bundle.states]
    missing = [n for n in names if n not in ev.names]
    extra = [n for n in ev.names if n not in names]
    if missing or extra:
        parts = [f"missing {', '.join(missing)}"] * bool(missing)
        parts += [f"not in the bundle: {', '.join(extra)}"] * bool(extra)
        raise InputError(
            f"states differ from the bundle {bundle.path} ({'; '.join(parts)}; "
            f"the bundle has {', '.join(names)}); evaluate this bundle again",
            source=ev.source,
            field="states",
        )
    labels = ev.labels
    if labels.min() < 0 or labels.max() >= bundle.num_classes:
        raise InputError(
            f"labels span [{labels.min()}, {labels.max()}], outside the bundle's "
            f"{bundle.num_classes} classes",
            source=ev.source,
            field="labels",
        )
    return ev.select(names)


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
    b = _bundle(bundle)
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


def _view(
    inputs: Inputs, costs: np.ndarray, unit: str, envelope: bool, source: str
) -> dict[str, Any]:
    """The exact oracle (headline of `bound_summary`) on one cost view."""
    s = bound_summary(
        inputs.names, costs, correct=inputs.evaluation.correct, envelope=envelope, source=source
    )
    keys = ("method", "r_oracle", "a_oracle", "delta_r", "r_ratio", "delta_a", "r_n", "baseline")
    return {"unit": unit, "costs": [float(c) for c in costs]} | {k: s[k] for k in keys}


def static_baseline(
    profile: Profile | None, bundle: Bundle, r_n: float, r_oracle: float
) -> dict[str, Any] | None:
    """The measured whole model as a baseline: its cost (p50 at batch 1, ms), where it
    came from, and the oracle's saving against it next to R_N's; None when the profile
    did not time it."""
    if profile is None:
        return None
    cost = static_cost(profile, bundle, batch=BATCH, stat=STAT)
    if cost is None:
        return None
    wm = profile.whole_model or {}
    return {
        "what": "measured whole model (static, unsplit), "
        + ("composed from the bundle" if wm.get("origin") == "composed" else str(wm.get("path"))),
        "cost_ms": cost,
        "origin": wm.get("origin"),
        "path": wm.get("path"),
        "sha256": wm.get("sha256"),
        "state": wm.get("state"),
        "delta_r": cost - r_oracle,
        "r_ratio": cost / r_oracle if r_oracle > 0 else None,
        "full_path_ratio": r_n / cost if cost > 0 else None,
    }


def bundle_bound(
    bundle: Bundle | PathLike,
    *,
    profile: Profile | PathLike | None = None,
    evaluation: Evaluation | PathLike | None = None,
    cost: str = "ms",
    alpha: float | None = None,
    classes: int | None = None,
    envelope: bool = False,
) -> dict[str, Any]:
    """Every oracle bound of `bundle` on its measured (``ms``) or FLOPs state costs.

    The dict is `edgeadapt.oracle.bound_summary`'s (exact oracle under ``exact``, the
    alphas, eq. 8/9/13, the smallest-state test with `classes`, default the bundle's
    class count) plus ``bundle``, ``cost`` (unit and origin), ``profile`` and
    ``evaluation`` (where the figures come from), ``views``: the exact oracle on
    ``cascade_ms`` (with a profile), ``cascade_flops`` and ``direct_flops``, and
    ``static``: the headline oracle against the measured whole model (`static_baseline`;
    None with FLOPs costs or a profile without it), and ``r_n_what``: what R_N is for this
    bundle's kind (`R_N_WHAT`), for labels. Bundle, profile and evaluation may be
    loaded objects or paths.
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
    views: dict[str, Any] = {}
    if inputs.profile is not None:
        ms = np.asarray(state_costs(inputs.profile, b, batch=BATCH, stat=STAT))
        views["cascade_ms"] = _view(inputs, ms, "ms", envelope, source)
    for view in ("cascade", "direct"):
        flops = np.asarray(flops_costs(b, view), dtype=np.float64)
        views[f"{view}_flops"] = _view(inputs, flops, "flops", envelope, source)
    origin = (
        f"profile {STAT} at batch {BATCH}, cascade (steps 0..i)"
        if inputs.unit == "ms"
        else "manifest FLOPs, cascade (steps 0..i)"
    )
    summary["bundle"] = {"path": str(b.path), "kind": b.kind, "states": list(inputs.names)}
    summary["cost"] = {"unit": inputs.unit, "origin": origin}
    if inputs.profile is not None:
        p = inputs.profile
        summary["profile"] = {
            "path": p.source,
            "device_id": p.device_id,
            "measured_at": p.measured_at,
            "runtime": p.settings.get("runtime"),
            "threads": p.settings.get("threads"),
            "noisy": p.noisy,
        }
    summary["evaluation"] = {"path": ev.source, "samples": int(ev.labels.size)}
    summary["views"] = views
    summary["r_n_what"] = R_N_WHAT.get(b.kind, "the costliest state")
    summary["static"] = (
        static_baseline(inputs.profile, b, float(summary["r_n"]), float(summary["r_oracle"]))
        if inputs.unit == "ms"
        else None
    )
    return summary
