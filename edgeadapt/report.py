"""The device report: one self-contained HTML page (and its PNGs) of policy vs oracle.

`write_report` joins a bundle, its profile on the device and an evaluation (checked by
`edgeadapt.oracle.bound.load_inputs`), and optionally the plan made from them (of any
policy: its point on the whole evaluation is its own policy run as
`edgeadapt.planning.planner.simulate_plan` runs it), and draws:

- accuracy vs measured cost of every state with the alpha = 1 and constant-alpha
  (alpha_min) bounds and the shaded opportunity area between the states and the
  optimistic bound (paper Fig. 3/4), the exact oracle, the threshold policy swept with
  one shared threshold over the evaluation (`edgeadapt.planning.calibrate.sweep`), and the
  plan's held-out operating point;
- alpha_i per state (Fig. 2);
- the best k-subset's exact-oracle R_ratio for k = 1..N (Fig. 6, `edgeadapt.oracle.subset`).

Next to the plan it shows every policy (the confidence thresholds, the learned exit
gates and the agreement of the states run so far), planned from the same profile and
evaluation with the plan's options
(`edgeadapt.planning.planner.compare_policies`): held-out accuracy, expected cost and oracle gap
closure side by side, or why a policy cannot be planned (an evaluation without every
measure's confidences has no gate policy). For a branches bundle it also shows, per
policy, the cascade over the branches against the budget table at the promise (held-out
accuracy and expected cost of each, and which the plan keeps:
`edgeadapt.planning.branches`).

The HTML names the bundle by its manifest sha256 (its identity, which the profile, the
evaluation and the plan are checked against) and embeds the PNGs as base64 data URIs
(readable without a server) next to tables
of the states, the bounds, the subset curve and the plan, each saving stated against both
baselines (R_N, for an early-exit bundle the sum of the steps, of R_N's chain alone for a
bundle of several chains, and the measured static model, the whole model
from the profile, drawn as a vertical line when there is one); every file is written
atomically. matplotlib (the ``plot`` extra) is imported only here, through its
object-oriented API with the Agg canvas, so no global backend state is touched.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.errors import InputError, MissingExtraError
from edgeadapt.formats.atomic import atomic_write_many
from edgeadapt.formats.bundle import Bundle, as_bundle
from edgeadapt.formats.evaluation import CONF_KEYS, Evaluation, check_evaluation
from edgeadapt.formats.plan import Plan, check_plan, load_plan
from edgeadapt.formats.profile import Profile, default_profile_path
from edgeadapt.oracle.bound import (
    VIEWS_CAPTION,
    BundleBound,
    Inputs,
    bundle_bound,
    load_inputs,
    oracle_cells,
    r_n_chain,
    r_n_what,
    view_cells,
)
from edgeadapt.oracle.equations import ExactFigures, OraclePoint
from edgeadapt.oracle.subset import SubsetChoice, subset_curve_exact
from edgeadapt.planning.calibrate import Sweep, sweep
from edgeadapt.planning.outcomes import POLICIES
from edgeadapt.planning.planner import (
    Outcomes,
    PlanOptions,
    PolicyOutcome,
    compare_policies,
    plan_options,
    profile_costs,
    simulate_plan,
)
from edgeadapt.planning.scheduler import BudgetPoint, budget_comparison
from edgeadapt.planning.search import subset_costs
from edgeadapt.render import num, pct, ratio, saving, static_verdict, thresholds_text

__all__ = [
    "BRANCH_HEADERS",
    "FIGURES",
    "POLICY_HEADERS",
    "ReportData",
    "ReportFiles",
    "branch_rows",
    "policy_rows",
    "render_report",
    "report_data",
    "report_to_file",
    "write_report",
]

PathLike = str | os.PathLike[str]

#: Figure key -> (PNG name suffix, caption).
FIGURES = {
    "accuracy-cost": (
        "accuracy-cost",
        "Accuracy vs measured cost: states, oracle bounds, policy sweep and plan (paper Fig. 3/4)",
    ),
    "alphas": ("alphas", "alpha_i per state (paper Fig. 2)"),
    "rratio": ("rratio", "R_ratio of the best k-subset vs number of states k (paper Fig. 6)"),
}


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, computed once (costs in ms)."""

    inputs: Inputs
    bound: BundleBound
    curve: list[SubsetChoice]
    sweep: Sweep | None  # None: the evaluation has no confidences
    sweep_states: tuple[int, ...]  # bundle states the sweep runs
    plan: Plan | None
    #: The plan's policy run on the whole evaluation (`_plan_here`): (accuracy, cost), or
    #: None without a plan or when the evaluation lacks what its policy reads.
    plan_here: tuple[float, float] | None
    measure: str  # confidence measure of the sweep: the plan's, else maxprob
    #: Every policy planned from this profile and evaluation (`compare_policies`).
    policies: tuple[PolicyOutcome, ...] = ()
    #: A branches bundle's scheduler plan against its budget table at budgets, on the
    #: held-out split (`edgeadapt.planning.scheduler.budget_comparison`); () otherwise.
    scheduler: tuple[BudgetPoint, ...] = ()


def _plan(plan: Plan | PathLike, bundle: Bundle) -> Plan:
    source = None if isinstance(plan, Plan) else str(plan)
    loaded = plan if isinstance(plan, Plan) else load_plan(plan)
    check_plan(loaded, bundle, source, policies=POLICIES)  # the report runs every policy
    return loaded


def _plan_here(plan: Plan, evaluation: Evaluation) -> tuple[float, float] | None:
    """The plan's own policy (thresholds, gates, agreement or scheduler) run on the whole
    `evaluation` (checked, in bundle order) as `simulate_plan` runs it, which is what a
    runner reproduces row for row: (accuracy, expected cost in ms at the plan's own
    costs and per-hop overhead); None when the evaluation lacks what the policy reads
    (a threshold or gate plan on imported predictions)."""
    outcomes = Outcomes.from_evaluation(evaluation, plan.measure)
    if plan.policy in ("gate", "scheduler"):  # they read every measure's confidences
        lacking = outcomes.gate_inputs is None
    else:  # agreement reads the predictions alone
        lacking = plan.policy == "threshold" and outcomes.conf is None
    if lacking:
        return None
    run = simulate_plan(plan, outcomes)
    return run.accuracy, run.expected_cost


def report_data(
    bundle: Bundle | PathLike,
    *,
    profile: Profile | PathLike,
    evaluation: Evaluation | PathLike,
    plan: Plan | PathLike | None = None,
) -> ReportData:
    """Load, cross-check and compute the report's figures (no plotting)."""
    inputs = load_inputs(bundle, profile=profile, evaluation=evaluation, cost="ms")
    b, ev = inputs.bundle, inputs.evaluation
    # the envelope keeps the analytic bounds defined when a costlier state is less accurate
    bound = bundle_bound(b, profile=inputs.profile, evaluation=ev, cost="ms", envelope=True)
    correct = ev.correct
    order = np.argsort(inputs.costs, kind="stable")
    curve = [
        c.relabel(order)
        for c in subset_curve_exact(correct[:, order], inputs.costs[order], r_n=bound.summary.r_n)
    ]
    chosen = None if plan is None else _plan(plan, b)
    states = tuple(range(len(inputs.names))) if chosen is None else chosen.states
    cols = list(states)
    # a sweep of thresholds is a cascade: over branches each pays every branch it runs
    layout = "ensemble" if b.kind == "branches" else b.cost_layout
    pay = subset_costs(inputs.costs, states, layout)
    measure = "maxprob" if chosen is None else chosen.measure
    conf = getattr(ev, CONF_KEYS[measure])
    swept = None if conf is None else sweep(conf[:, cols], correct[:, cols], pay)
    here = None if chosen is None else _plan_here(chosen, ev)
    assert inputs.profile is not None  # cost="ms" needs one
    costs = profile_costs(inputs.profile, b, stat="p50" if chosen is None else chosen.cost_stat)
    # the plan's own options and per-hop overhead; without a plan, the defaults and none
    hop_ms = None if chosen is None else chosen.hop_overhead_ms
    costs = replace(costs, runtime=None, hop_overhead_ms=hop_ms)
    options = None if chosen is None else plan_options(chosen)
    policies = compare_policies(b, ev, costs, options)
    versus = _scheduler_versus_table(policies, check_evaluation(ev, b), options)
    return ReportData(inputs, bound, curve, swept, states, chosen, here, measure, policies, versus)


def _scheduler_versus_table(
    policies: Sequence[PolicyOutcome], ev: Evaluation, options: PlanOptions | None
) -> tuple[BudgetPoint, ...]:
    """The scheduler plan among `policies` (a branches bundle's) against the budget
    table of the threshold policy's plan (every Pareto branch), on the held-out split
    they were planned with; () when there is no scheduler plan of several branches."""
    plans = {p.policy: p.plan for p in policies if p.plan is not None}
    plan, table = plans.get("scheduler"), plans.get("threshold")
    if plan is None or len(plan.states) < 2:
        return ()
    opts = options or PlanOptions()
    outcomes = Outcomes.from_evaluation(ev, plan.measure)
    held = outcomes.split(heldout=opts.heldout, seed=opts.seed)[1]
    return budget_comparison(plan, held, table=None if table is None else table.budget)


# ------------------------------------------------------------------ plots


def _figure(width: float = 7.5, height: float = 4.8) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingExtraError("matplotlib", "plot", "edgeadapt report") from e
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _frontier(r1: float, a1: float, point: OraclePoint, r_n: float) -> tuple[list, list]:
    """The bound's frontier: from state 1 to the bound point, then flat to R_N."""
    xs = [r1, point.r_oracle, max(r_n, point.r_oracle)]
    ys = [a1, point.a_oracle, point.a_oracle]
    return xs, [100 * y for y in ys]


def _draw_accuracy_cost(ax: Any, data: ReportData) -> list[float]:
    """Draw every series of Fig. 3/4 on `ax`; return the accuracies (%) of the top points."""
    bound = data.bound.summary
    exact = _exact(data)
    costs = np.array([s.cost for s in bound.states])
    accs = np.array([s.accuracy for s in bound.states]) * 100
    r1, a1, r_n = costs[0], accs[0] / 100, bound.r_n
    ox, oy = _frontier(r1, a1, bound.optimistic, r_n)
    area_x = [*costs, ox[2], ox[1], ox[0]]
    area_y = [*accs, oy[2], oy[1], oy[0]]
    ax.fill(area_x, area_y, color="tab:green", alpha=0.15, lw=0, label="opportunity area")
    _draw_states(ax, data.inputs.bundle, bound.names, costs, accs)
    for name, x, y in zip(bound.names, costs, accs, strict=True):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.plot(*_frontier(r1, a1, bound.alpha1, r_n), "-", color="tab:blue", label="alpha = 1 bound")
    if exact.constant_alpha_min is not None:
        label = f"constant-alpha bound (alpha_min = {exact.alpha_min:.2f})"
        ax.plot(ox, oy, "-", color="tab:green", label=label)
    ex = exact.point
    ax.plot(ex.r_oracle, 100 * ex.a_oracle, "*", ms=14, color="tab:red", label="exact oracle")
    static = data.bound.static
    if static is not None:
        ax.axvline(
            static.cost_ms,
            ls=":",
            color="black",
            label=f"static model (measured whole model, {static.cost_ms:.4g} ms)",
        )
    top = [100 * bound.a_n, 100 * ex.a_oracle, oy[1]]
    if data.sweep is not None:
        names = ", ".join(data.inputs.names[i] for i in data.sweep_states)
        ax.plot(
            data.sweep.expected_cost,
            100 * data.sweep.accuracy,
            ".-",
            color="tab:orange",
            ms=4,
            label=f"policy, one shared {data.measure} threshold swept\n({names})",
        )
    if data.plan is not None:
        held = data.plan.heldout
        ax.plot(
            held.cost_ms,
            100 * held.accuracy,
            "D",
            ms=9,
            color="tab:purple",
            label=f"plan (held-out, {held.n} samples)",
            zorder=5,
        )
        top.append(100 * held.accuracy)
    ax.grid(alpha=0.3)
    return top


def _draw_states(
    ax: Any, bundle: Bundle, names: Sequence[str], costs: np.ndarray, accs: np.ndarray
) -> None:
    """The states' accuracy against measured cost (`names`, `costs` and `accs` in the
    bound's order): one line, or one per chain (a bundle of precision variants: every
    (exit, precision) state)."""
    if not bundle.chain_names:
        ax.plot(costs, accs, "o--", color="0.35", label="states (one state per input)", zorder=3)
        return
    chain_of = {s.name: c for s, c in zip(bundle.states, bundle.chains, strict=True)}
    chains = np.array([chain_of[n] for n in names])
    for c, name in enumerate(dict.fromkeys(bundle.chain_names)):
        at = chains == c
        marker = "os^vD<>p"[c % 8]
        ax.plot(costs[at], accs[at], f"{marker}--", label=f"states of chain {name}", zorder=3)


def _exact(data: ReportData) -> ExactFigures:
    """The exact oracle's figures (the report's evaluation always gives them)."""
    exact = data.bound.summary.exact
    assert exact is not None  # bound on per-sample results
    return exact


def plot_accuracy_cost(data: ReportData) -> bytes:
    """Fig. 3/4 on this device: the whole range, and a zoom on the most accurate points."""
    fig = _figure(12.0, 5.0)
    full, zoom = fig.subplots(1, 2, sharex=True)
    _draw_accuracy_cost(full, data)
    top = _draw_accuracy_cost(zoom, data)
    zoom.set_ylim(min(top) - 2.0, min(100.0, max(top) + 0.5))
    full.set_title("Accuracy vs measured cost on this device")
    zoom.set_title("Zoom on the top")
    for ax in (full, zoom):
        ax.set_xlabel(f"expected cost per sample (ms; {data.bound.origin})")
    full.set_ylabel("top-1 accuracy (%)")
    full.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_alphas(data: ReportData) -> bytes:
    """alpha_i = P(states 1..i-1 all wrong | state i wrong) for i >= 2 (Fig. 2)."""
    exact = _exact(data)
    names = list(data.bound.summary.names[1:])
    values = [np.nan if a is None else a for a in exact.alphas]
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.plot(range(len(names)), values, "o-", color="tab:blue", label="alpha_i (exact)")
    if exact.alpha_min is not None:
        ax.axhline(
            exact.alpha_min,
            ls="--",
            color="tab:green",
            label=f"alpha_min = {exact.alpha_min:.3f}",
        )
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("state i (cost order)")
    ax.set_ylabel("alpha_i = P(states before i all wrong | i wrong)")
    ax.set_title("alpha_i per state")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_rratio(data: ReportData) -> bytes:
    """Exact-oracle R_ratio of the best k-subset for k = 1..N (Fig. 6)."""
    ks = [c.k for c in data.curve]
    ratios = [c.r_ratio for c in data.curve]
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.plot(
        ks,
        ratios,
        "o-",
        color="tab:red",
        label="best k-subset (exact oracle), {bundle state indices}",
    )
    for c in data.curve:
        text = "{" + ",".join(str(i) for i in c.states) + "}"
        ax.annotate(text, (c.k, c.r_ratio), textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.set_xticks(ks)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("number of states k")
    ax.set_ylabel(f"R_ratio = R_N / R_oracle (x, R_N = {data.bound.summary.baseline})")
    ax.set_title("Efficiency gain vs number of states")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


# ------------------------------------------------------------------- HTML


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _states_table(data: ReportData) -> str:
    summary, b = data.bound.summary, data.inputs.bundle
    alphas = [None, *_exact(data).alphas]
    flops = {s.name: s.flops for s in b.states}
    rows = [
        [s.name, num(s.cost), f"{flops[s.name] / 1e6:.2f}", pct(s.accuracy, 2), num(a, 3)]
        for s, a in zip(summary.states, alphas, strict=True)
    ]
    headers = ["state", "cost (ms)", "MFLOPs (manifest)", "accuracy", "alpha_i"]
    agree = _agreement(data)
    if agree is not None:
        headers.append(f"agrees with @{b.chain_names[-1]}")
        for row, s in zip(rows, summary.states, strict=True):
            row.append(agree.get(s.name, "-"))
    return _table(headers, rows)


def _agreement(data: ReportData) -> dict[str, str] | None:
    """For a bundle of several chains, each state's agreement (share of samples with the
    same prediction) with the same exit of the last chain (the reference's, e.g. fp32):
    how far a precision variant drifts; None for one chain."""
    b, pred = data.inputs.bundle, data.inputs.evaluation.pred
    if not b.chain_names:
        return None
    col = {s.name: i for i, s in enumerate(b.states)}
    out = {}
    for i, (s, chain) in enumerate(zip(b.states, b.chain_names, strict=True)):
        twin = col.get(f"{s.name.removesuffix('@' + chain)}@{b.chain_names[-1]}")
        if twin is not None:
            out[s.name] = pct(float((pred[:, i] == pred[:, twin]).mean()), 2)
    return out


def _bounds_table(data: ReportData) -> str:
    bound = data.bound
    summary = bound.summary
    rows = [[label, *oracle_cells(p)] for label, p, _ in summary.points()]
    headers = ["bound", "R_oracle (ms)", "A_oracle", "dR (ms)", "R_ratio", "dA"]
    dominated = summary.dominated
    note = (
        "<p>Pareto envelope: the analytic bounds drop "
        + html.escape(", ".join(dominated))
        + " (less accurate than a cheaper state).</p>"
        if dominated
        else ""
    )
    return (
        _table(headers, rows)
        + note
        + f"<p>Baseline R_N = {num(summary.r_n)} ms, A_N = {pct(summary.a_n, 2)} "
        f"({html.escape(summary.baseline)}).</p>"
        + _baselines_table(bound)
        + f"<p>{html.escape(VIEWS_CAPTION[0].upper() + VIEWS_CAPTION[1:])}:</p>"
        + _table(["view", "unit", "R_oracle", "R_N", "R_ratio"], view_cells(bound.views))
    )


def _baselines_table(bound: BundleBound) -> str:
    """The headline oracle against R_N (`BundleBound.r_n_what`) and the static model."""
    rows = [[label, num(c), num(dr), ratio(rr)] for label, c, dr, rr in bound.baselines()]
    if bound.static is not None:
        note = f"The full path costs {ratio(bound.static.full_path_ratio)} the static model."
    else:
        note = "No static baseline: the profile did not time the whole model."
    table = _table(["baseline", "cost (ms)", "dR (ms)", "R_ratio"], rows)
    return (
        f"<p>Savings of the {html.escape(bound.summary.method)} oracle against each baseline:</p>"
        + table
        + f"<p>{note}</p>"
    )


def _curve_table(data: ReportData) -> str:
    names = data.inputs.names
    rows = [
        [
            str(c.k),
            ", ".join(names[i] for i in c.states),
            num(c.r_oracle),
            pct(c.a_oracle, 2),
            ratio(c.r_ratio),
        ]
        for c in data.curve
    ]
    return _table(["k", "states", "R_oracle (ms)", "A_oracle", "R_ratio"], rows)


def _versus(cost: float, baseline: float) -> str:
    if baseline <= 0:
        return f"{num(baseline)} ms"
    return f"{num(baseline)} ms ({saving(1.0 - cost / baseline)})"


def _plan_section(data: ReportData) -> str:
    plan = data.plan
    if plan is None:
        return "<p>No plan given (edgeadapt plan BUNDLE ...).</p>"
    held = plan.heldout
    gap = "n/a" if plan.gap_closure is None else pct(plan.gap_closure)
    rows = [
        ["states", ", ".join(plan.state_names)],
        thresholds_text(plan).split(": ", 1),
        ["held-out samples", str(held.n)],
        ["held-out accuracy", pct(held.accuracy, 2)],
        [
            "held-out drop",
            f"{100 * held.drop:+.2f} points vs {plan.bundle_states[plan.reference_state]} "
            f"(<= {100 * plan.drop_bound:.2f} with probability {pct(1 - plan.delta, 0)}; "
            f"max drop {100 * plan.max_drop:.2f})",
        ],
        ["expected cost (plan.json)", f"{num(held.cost_ms)} ms"],
        [
            f"vs R_N, {r_n_what(plan.kind, r_n_chain(data.inputs.bundle))}",
            _versus(held.cost_ms, plan.r_n),
        ],
        [
            "vs the static model (measured whole model)",
            "not measured"
            if plan.static_ms is None
            else f"{num(plan.static_ms)} ms (the plan is the static model)"
            if plan.keeps_static
            else _versus(held.cost_ms, plan.static_ms)
            + ("" if plan.beats_static else " (the plan does NOT beat it)"),
        ],
        ["oracle (plan.json)", f"{num(plan.r_oracle)} ms at {pct(plan.a_oracle, 2)}"],
        ["oracle gap closure", gap],
    ]
    n = data.inputs.evaluation.labels.size
    rows.append(
        [
            f"the plan's {plan.policy} policy on this evaluation (its own costs)",
            f"not run: the evaluation lacks what the {plan.policy} policy reads"
            if data.plan_here is None
            else f"{pct(data.plan_here[0], 2)} at {num(data.plan_here[1])} ms ({n} samples)",
        ]
    )
    return _table(["plan", "value"], rows)


def policy_rows(policies: Sequence[PolicyOutcome]) -> list[list[str]]:
    """One row per planned policy: kept states, held-out accuracy, expected cost (ms),
    oracle gap closure, against the static model (`POLICY_HEADERS`); the policies that
    could not be planned are left out (`PolicyOutcome.reason` says why)."""
    rows = []
    for p in policies:
        plan = p.plan
        if plan is None:
            continue
        static = "-" if plan.static_ms is None else static_verdict(plan, "").strip()
        rows.append(
            [
                p.policy,
                ", ".join(plan.state_names),
                pct(plan.heldout.accuracy, 2),
                num(plan.heldout.cost_ms),
                "n/a" if plan.gap_closure is None else pct(plan.gap_closure),
                static,
            ]
        )
    return rows


def branch_rows(policies: Sequence[PolicyOutcome]) -> list[list[str]]:
    """A branches bundle's plans, one row per planned policy: its cascade's kept
    branches, held-out accuracy and expected cost (ms), the budget table's (its most
    accurate branch alone without a budget), and which the plan keeps
    (`BRANCH_HEADERS`); plans without the choice (other kinds) are left out."""
    rows = []
    for p in policies:
        plan = p.plan
        if plan is None or plan.branches is None or plan.branches.cascade is None:
            continue
        names, choice = plan.bundle_states, plan.branches
        cascade, table = plan.branches.cascade, choice.table
        rows.append(
            [
                p.policy,
                ", ".join(names[s] for s in cascade.states),
                pct(cascade.accuracy, 2),
                num(cascade.cost_ms),
                pct(table.accuracy, 2),
                num(table.cost_ms),
                choice.run,
            ]
        )
    return rows


BRANCH_HEADERS = (
    "policy",
    "cascade: branches",
    "cascade: held-out accuracy",
    "cascade: expected cost (ms)",
    "table: held-out accuracy",
    "table: expected cost (ms)",
    "kept",
)


def _branches_section(data: ReportData) -> str:
    rows = branch_rows(data.policies)
    if data.inputs.bundle.kind != "branches" or not rows:
        return ""
    choice = None if data.plan is None else data.plan.branches
    why = (
        ""
        if choice is None
        else f"<p>The plan keeps the {choice.run}: {html.escape(choice.why)}.</p>"
    )
    return (
        "<h3>Branches: the cascade against the budget table</h3>"
        "<p>Each policy's cascade over the branches (cheapest first, each branch from the "
        "input, a sample paying every branch run) against the budget table (without a "
        "budget its most accurate branch alone), at the promise, on the held-out split "
        "(edgeadapt plan --branches auto|cascade|table):</p>" + _table(BRANCH_HEADERS, rows) + why
    )


POLICY_HEADERS = (
    "policy",
    "states",
    "held-out accuracy",
    "expected cost (ms)",
    "oracle gap closure",
    "static model",
)


def _policies_section(data: ReportData) -> str:
    if not data.policies:
        return ""
    rows = policy_rows(data.policies)
    missing = "".join(
        f"<p>{html.escape(p.policy)}: not planned: {html.escape(p.reason or '')}</p>"
        for p in data.policies
        if p.plan is None
    )
    return (
        "<p>Every policy planned from this profile and evaluation"
        + (" with the plan's options" if data.plan is not None else "")
        + " (edgeadapt plan --policy threshold|gate|agreement|scheduler):</p>"
        + (_table(POLICY_HEADERS, rows) if rows else "")
        + missing
    )


def _scheduler_section(data: ReportData) -> str:
    """The scheduler against the budget table's choice, at budgets (branches bundles)."""
    if not data.scheduler:
        return ""
    names = data.inputs.names
    rows = [
        [
            num(p.budget_ms),
            str(names[p.table_state]),
            pct(p.table_accuracy, 2),
            num(p.table_cost_ms),
            pct(p.scheduler_accuracy, 2),
            num(p.scheduler_cost_ms),
        ]
        for p in data.scheduler
    ]
    headers = (
        "budget (ms)",
        "budget table: branch",
        "accuracy",
        "cost (ms)",
        "scheduler: accuracy",
        "mean cost (ms)",
    )
    return (
        "<p>The content-aware scheduler (the first kept branch runs, its answer picks the "
        "branch) against the budget table's choice by the budget alone (AdaInf), on the "
        "held-out split, at budgets (plan costs):</p>" + _table(headers, rows)
    )


_STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
"""


def _html(data: ReportData, images: dict[str, bytes]) -> str:
    bound, b = data.bound, data.inputs.bundle
    prof = bound.profile
    assert prof is not None  # the report's costs are measured
    esc = html.escape
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    figures = "".join(
        f'<figure><img alt="{esc(FIGURES[key][1])}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        f"<figcaption>{esc(FIGURES[key][1])}</figcaption></figure>"
        for key, png in images.items()
    )
    noisy = " <strong>(profile flagged noisy)</strong>" if prof.noisy else ""
    sweep_note = (
        f"<p>The evaluation has no {data.measure} confidences: no policy sweep.</p>"
        if data.sweep is None
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>edgeadapt report: {esc(b.path.name)}</title><style>{_STYLE}</style></head>
<body>
<h1>edgeadapt report: {esc(b.path.name)}</h1>
<p>Bundle {esc(str(b.path))} ({esc(b.kind)}, {len(data.inputs.names)} states,
{b.num_classes} classes, manifest sha256 {esc(b.manifest_sha256)}). Costs: ms, {esc(bound.origin)}, from profile
{esc(prof.path or "(not saved)")} (device {esc(prof.device_id)}, {esc(str(prof.runtime))},
{esc(str(prof.threads))} thread(s), measured {esc(prof.measured_at)}){noisy}.
Accuracies: evaluation {esc(bound.evaluation_path or "(not saved)")} ({bound.samples} samples). Written {when}.</p>
<h2>States</h2>{_states_table(data)}
<h2>Oracle bounds</h2>{_bounds_table(data)}
<h2>Plan</h2>{_plan_section(data)}{_policies_section(data)}{_branches_section(data)}{_scheduler_section(data)}
<h2>Best k-subsets</h2>{_curve_table(data)}
<h2>Figures</h2>{sweep_note}{figures}
</body></html>
"""


def render_report(data: ReportData, out: PathLike) -> list[Path]:
    """Draw and write the report of `data` (see `write_report`)."""
    out = Path(out)
    images = {
        "accuracy-cost": plot_accuracy_cost(data),
        "alphas": plot_alphas(data),
        "rratio": plot_rratio(data),
    }
    files: dict[Path, bytes] = {
        out.with_name(f"{out.stem}-{FIGURES[key][0]}.png"): png for key, png in images.items()
    }
    files[out] = _html(data, images).encode("utf-8")  # last: it shows the PNGs
    atomic_write_many(files)  # one unit: all of them or, on a full disk, none
    return list(files)


def write_report(
    bundle: Bundle | PathLike,
    *,
    profile: Profile | PathLike,
    evaluation: Evaluation | PathLike,
    plan: Plan | PathLike | None = None,
    out: PathLike,
) -> list[Path]:
    """Write the HTML report to `out` and its PNGs next to it (``<stem>-accuracy-cost.png``,
    ``<stem>-alphas.png``, ``<stem>-rratio.png``); return every path written (HTML last).
    Bundle, profile, evaluation and plan may be loaded objects or paths."""
    data = report_data(bundle, profile=profile, evaluation=evaluation, plan=plan)
    return render_report(data, out)


@dataclass(frozen=True)
class ReportFiles:
    """A written report (`report_to_file`): what it was made from, the files written (HTML
    last) and its figures; `to_json()` is what ``edgeadapt report --json`` prints (the
    plan's ``policy``: its kind, held-out figures and, ``on_evaluation``, its point on
    the whole evaluation, `ReportData.plan_here`)."""

    data: ReportData
    paths: tuple[Path, ...]
    profile: Path
    evaluation: Path
    plan: Path | None

    def to_json(self) -> dict[str, Any]:
        summary = self.data.bound.summary
        exact = summary.exact
        plan, here = self.data.plan, self.data.plan_here
        static = self.data.bound.static
        return {
            "html": str(self.paths[-1]),
            "images": [str(p) for p in self.paths[:-1]],
            "profile": str(self.profile),
            "evaluation": str(self.evaluation),
            "plan": None if self.plan is None else str(self.plan),
            "exact": None if exact is None else exact.point.to_json(),
            "r_n": summary.r_n,
            "static": None if static is None else static.to_json(),
            "alpha_min": None if exact is None else exact.alpha_min,
            "policy": None
            if plan is None
            else {
                "kind": plan.policy,
                "accuracy": plan.heldout.accuracy,
                "cost": plan.heldout.cost_ms,
                "gap_closure": plan.gap_closure,
                "static_ms": plan.static_ms,
                "beats_static": plan.beats_static,
                "branches": None if plan.branches is None else plan.branches.to_json(),
                "on_evaluation": None if here is None else {"accuracy": here[0], "cost": here[1]},
            },
            "policies": [p.to_json() for p in self.data.policies],
        }


def _default(path: PathLike | None, default: Path, name: str, how: str) -> Path:
    """`path`, else `default` when it exists, else an error naming the parameter."""
    if path is not None:
        return Path(path)
    if default.is_file():
        return default
    raise InputError(f"not given and {default} does not exist; {how}", source=name)


def report_to_file(
    bundle: Bundle | PathLike,
    *,
    profile: PathLike | None = None,
    evaluation: PathLike | None = None,
    plan: PathLike | None = None,
    output: PathLike,
) -> ReportFiles:
    """What ``edgeadapt report`` does: `write_report` with the bundle's own files by
    default (the profile ``BUNDLE/profiles/<device>.json``, the evaluation
    ``BUNDLE/evaluation.npz``, the plan ``BUNDLE/plan.json`` when it exists)."""
    b = as_bundle(bundle)
    profile_path = _default(
        profile, default_profile_path(b), "profile", f"run edgeadapt profile {b.path}"
    )
    evaluation_path = _default(
        evaluation,
        b.path / "evaluation.npz",
        "evaluation",
        f"run edgeadapt evaluate {b.path} --data D.npz",
    )
    default_plan = b.path / "plan.json"
    plan_path = Path(plan) if plan is not None else default_plan if default_plan.is_file() else None
    data = report_data(b, profile=profile_path, evaluation=evaluation_path, plan=plan_path)
    paths = render_report(data, output)
    return ReportFiles(data, tuple(paths), profile_path, evaluation_path, plan_path)
