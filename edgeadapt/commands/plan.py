"""`edgeadapt plan`: pick states and calibrate thresholds for one device (a thin layer
over `edgeadapt.planning.planner.make_plan`)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeadapt.commands.options import (
    bundle_argument,
    echo_json,
    file_option,
    integer,
    json_option,
    number,
    output_option,
    seed_option,
)
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.plan import BRANCH_CHOICES, COST_STATS, PROMISE_KINDS
from edgeadapt.kernel_ref import MEASURES
from edgeadapt.oracle.bound import r_n_chain, r_n_what
from edgeadapt.planning.planner import (
    CALIBRATIONS,
    POLICIES,
    PlanOptions,
    PlanSummary,
    plan_to_file,
)
from edgeadapt.render import pct, saving, static_verdict, thresholds_text


@click.command("plan")
@bundle_argument()
@file_option(
    "--profile", "Profile of this bundle on the target device (edgeadapt profile).", required=True
)
@file_option(
    "--evaluation",
    "Per-sample results of every state (edgeadapt evaluate; predictions alone, from "
    "edgeadapt import-predictions, for the agreement policy).",
    required=True,
)
@click.option(
    "--max-states",
    type=integer(1),
    default=4,
    show_default=True,
    help="Most states the plan may keep.",
)
@click.option(
    "--max-drop",
    type=number(0, 1),
    default=0.005,
    show_default=True,
    help="Accuracy drop allowed against the best single state (0.005 = 0.5 points).",
)
@click.option(
    "--heldout",
    type=number(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Share of the evaluation kept out of calibration to report on.",
)
@seed_option("Seed of the split.")
@click.option(
    "--measure",
    type=click.Choice(MEASURES),
    default="maxprob",
    show_default=True,
    help="Confidence measure the policy thresholds (the evaluation must hold it).",
)
@click.option(
    "--delta",
    type=number(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="The promise (drop <= --max-drop on new data) holds with probability 1 - delta.",
)
@click.option(
    "--promise",
    type=click.Choice(PROMISE_KINDS),
    default="net",
    show_default=True,
    help="What --max-drop bounds on new data: net, the accuracy drop against the best "
    "single state (errors the plan adds minus errors it fixes); loss, the errors it adds "
    "alone (inputs the best state gets right and the plan wrong), a stricter promise.",
)
@click.option(
    "--cost-percentile",
    "cost_stat",
    type=click.Choice(COST_STATS),
    default="p50",
    show_default=True,
    help="Profile percentile the plan's costs and budget table use: p90 or p99 leave "
    "room for slow calls, so budgets are missed less often.",
)
@click.option(
    "--calibration",
    type=click.Choice(CALIBRATIONS),
    default="risk",
    show_default=True,
    help="risk: Learn-then-Test thresholds with a promise on new data (the static model "
    "when none can be made); empirical: meet --max-drop on the calibration split only.",
)
@click.option(
    "--policy",
    type=click.Choice(POLICIES),
    default="threshold",
    show_default=True,
    help="threshold: exit where a state's confidence passes its threshold (per-exit "
    "thresholds or one shared threshold, whichever the calibration split predicts "
    "cheaper); gate: a small learned model per kept state (its max-prob, margin, entropy, "
    "agreement with the earlier exits, the previous gate's score) fitted on the "
    "calibration split, its scores thresholded by the same calibration; agreement: exit "
    "when enough of the states run so far predict the same class (how many is "
    "calibrated), planned from predictions alone; scheduler (branches bundles only): "
    "one branch (chosen on the calibration split) always runs and a small learned model "
    "per deeper branch reads its max-prob, margin and entropy to pick the branch that "
    "answers (AdaInf's content-aware scheduler), within what is left of a budget. Gate, agreement and "
    "scheduler plans are plan format version 2; agreement and scheduler plans run in "
    "AdaptiveModel's Python loop.",
)
@click.option(
    "--branches",
    "branch_run",
    type=click.Choice(BRANCH_CHOICES),
    default="auto",
    show_default=True,
    help="For a branches bundle: cascade (the cheapest kept branch first, --policy decides "
    "whether to run a deeper one, each from the input), table (AdaInf's budget table: "
    "the most accurate branch alone without a budget), or auto: both are planned and the "
    "one cheaper at the promise on the held-out split is kept; the plan records both "
    "and why. Either way a budget runs the plan's table. Other bundles ignore it.",
)
@click.option(
    "--reference",
    metavar="STATE",
    default=None,
    help="The state the promise is held against, by name (e.g. exit3@fp32 in a bundle "
    "of several precisions); default: the most accurate state on the calibration split.",
)
@output_option("Where to write plan.json (default: BUNDLE/plan.json).")
@json_option("Print the plan's figures as JSON.")
def plan_cmd(
    bundle: Path,
    profile: Path,
    evaluation: Path,
    max_states: int,
    max_drop: float,
    heldout: float,
    seed: int,
    measure: str,
    delta: float,
    promise: str,
    calibration: str,
    policy: str,
    cost_stat: str,
    branch_run: str,
    reference: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Choose the states to keep on this device and calibrate their exit thresholds.

    States are chosen on a calibration split to minimise the expected cost (the
    profile's p50 at batch 1). With --calibration risk (the default) the thresholds
    are then tested on the held-out split so that, with probability >= 1 - delta, the
    drop on new data drawn like it is at most --max-drop (Learn then Test; --promise
    says which drop); when the data cannot support that, the plan keeps the static
    model and says how many samples it would need. The calibration split alone picks
    which thresholds to test (per-exit, or one shared) and how; the held-out split
    tests only that choice. The figures are reported on the held-out split with
    the oracle gap closure (R_N - R_policy) / (R_N - R_oracle). --measure picks the
    confidences (maxprob, margin or negative entropy, as the decision kernel computes
    them) from the evaluation; the plan records it and AdaptiveModel runs it.

    The expected cost is stated against two baselines: R_N (for an early-exit bundle the
    sum of the steps, every state run in turn; of the last chain alone for a bundle of
    several chains) and the measured static model (the whole
    model timed in the profile), the plain network the plan must beat to be worth
    deploying. Plan on a profile taken in chain order (the profiler's default): the
    costs the cascade pays.
    """
    b = load_bundle(bundle)
    summary = plan_to_file(
        b,
        profile=profile,
        evaluation=evaluation,
        output=output,
        cost_stat=cost_stat,
        options=PlanOptions(
            heldout=heldout,
            seed=seed,
            measure=measure,
            max_states=max_states,
            max_drop=max_drop,
            delta=delta,
            promise=promise,
            calibration=calibration,
            policy=policy,
            branches=branch_run,
            reference=reference,
        ),
    )
    if as_json:
        echo_json(summary.to_json())
    else:
        click.echo(plan_text(summary, r_n_chain(b)))


def plan_text(summary: PlanSummary, chain: str | None = None) -> str:
    """The plan's figures as `edgeadapt plan` prints them; `chain` names the chain of
    the bundle's last state, whose cost is R_N, in a bundle of several chains."""
    plan = summary.plan
    held = plan.heldout
    lines = [
        f"states: {', '.join(plan.state_names)}",
        f"policy: {plan.policy}",
        thresholds_text(plan),
        f"held-out: accuracy {pct(held.accuracy, 2)}, drop {pct(held.drop, 2, signed=True)} "
        f"against {plan.bundle_states[plan.reference_state]}",
        plan.statement,
        f"expected cost {held.cost_ms:.4f} ms; oracle {plan.r_oracle:.4f} ms "
        f"at {pct(plan.a_oracle, 2)}",
        f"  vs R_N, {r_n_what(plan.kind, chain)}: {plan.r_n:.4f} ms ({saving(summary.saving_vs_r_n)})",
    ]
    if plan.static_ms is None:
        lines.append("  vs the static model: not measured (profile without the whole model)")
    elif plan.keeps_static:
        lines.append(
            f"  vs the static model, the measured whole model: {plan.static_ms:.4f} ms; the "
            "plan is the static model (one state, deployed as one plain model)"
        )
    else:
        lines.append(
            f"  vs the static model, the measured whole model: {plan.static_ms:.4f} ms "
            f"({saving(summary.saving_vs_static)}; the plan {static_verdict(plan)})"
        )
    if summary.costs is not None and summary.costs.note is not None:
        lines.append(f"note: {summary.costs.note}")
    gap = plan.gap_closure
    lines.append(
        "oracle gap closure: " + ("n/a (the oracle saves nothing)" if gap is None else pct(gap))
    )
    if plan.branches is not None:
        lines.append(f"branches: {plan.branches.why}")
    if summary.path is not None:
        lines.append(f"wrote {summary.path}")
    return "\n".join(lines)


COMMANDS = [plan_cmd]
