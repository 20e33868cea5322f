"""`edgeadapt demo`: the main job on MNIST-1D, end to end (a thin layer over
`edgeadapt.demo.run_demo` that shows progress on stderr and prints the summary).

`edgeadapt.demo` is imported in the command: at the top it would add about 45 ms to
`edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgeadapt.commands.options import (
    echo_json,
    integer,
    json_option,
    number,
    output_option,
    runtime_option,
    threads_option,
)
from edgeadapt.commands.progress import progress_bar
from edgeadapt.render import num, pct, ratio, saving, table, thresholds_text

if TYPE_CHECKING:
    from edgeadapt.demo import BundleResult, DemoResult
    from edgeadapt.oracle.equations import BoundSummary


def _bound_rows(summary: BoundSummary) -> list[list[str]]:
    """The oracle bounds the demo shows, labelled as `edgeadapt bound` labels them."""
    return [
        [label, num(p.r_oracle), pct(p.a_oracle, 2), ratio(p.r_ratio)]
        for label, p, _ in summary.points()
    ]


def _states_lines(b: BundleResult) -> list[str]:
    """The heading and the per-state table."""
    return [
        f"== {b.name}: {b.bundle.kind}, {len(b.state_names)} states ==",
        table(
            ["state", "test accuracy", "p50 ms", "R_i ms"],
            [
                [n, pct(a, 2), f"{p:.4f}", f"{c:.4f}"]
                for n, a, p, c in zip(
                    b.state_names, b.test_accuracy, b.p50_ms, b.cost_ms, strict=True
                )
            ],
        ),
    ]


def _bound_lines(b: BundleResult) -> list[str]:
    """The static model and the oracle bounds."""
    lines: list[str] = []
    bounds = b.bounds.summary
    static = b.bounds.static
    whole = "backbone and last head" if b.bundle.kind == "early-exit" else "the last member"
    if static is not None:
        spread = b.full_over_whole
        rounds = (
            ""
            if spread is None
            else f"; timed in the same rounds, all the steps cost {ratio(spread.p10)}-"
            f"{ratio(spread.p90)} the whole model ({spread.rounds} rounds, 10th-90th "
            "percentile)"
        )
        lines.append(
            f"static model (the whole model: {whole}, profiled the same way): "
            f"{static.cost_ms:.4f} ms; the full path R_N costs "
            f"{ratio(static.full_path_ratio)} that{rounds}"
        )
    lines.append("")
    lines.append(
        "oracle bounds (calibration split; R_i measured here with the steps called in turn, "
        "cascade cost: steps 0..i; "
        f"baseline R_N = {bounds.r_n:.4f} ms, {b.bounds.r_n_what}, {bounds.baseline}):"
    )
    lines.append(table(["bound", "R_oracle ms", "A_oracle", "R_ratio"], _bound_rows(bounds)))
    if static is not None:
        lines.append(
            f"exact oracle against the static model ({static.cost_ms:.4f} ms): R_ratio "
            f"{ratio(static.r_ratio)}"
        )
    if bounds.dominated:
        lines.append(
            "(analytic bounds on the Pareto envelope, without the dominated "
            + ", ".join(bounds.dominated)
            + ")"
        )
    return lines


def _plan_lines(b: BundleResult) -> list[str]:
    """The plan, its held-out figures and its saving."""
    plan = b.plan.plan
    held = plan.heldout
    reference = plan.bundle_states[plan.reference_state]
    lines = [""]
    lines.append(f"plan: keep {', '.join(plan.state_names)}; {thresholds_text(plan)}")
    gap = plan.gap_closure
    lines.append(
        f"  held-out calibration half: accuracy {pct(held.accuracy, 2)}, drop "
        f"{pct(held.drop, 2, signed=True)} vs {reference}; expected "
        f"{held.cost_ms:.4f} ms; oracle gap closure {'n/a' if gap is None else pct(gap)}"
    )
    lines.append(f"  {plan.statement}")
    if b.gate_plan is not None:
        gated = b.gate_plan.plan
        ggap = gated.gap_closure
        lines.append(
            f"  with learned exit gates instead (plan --policy gate): keep "
            f"{', '.join(gated.state_names)}; held-out accuracy {pct(gated.heldout.accuracy, 2)}, "
            f"expected {gated.heldout.cost_ms:.4f} ms, oracle gap closure "
            f"{'n/a' if ggap is None else pct(ggap)}"
        )
    if plan.static_ms is None:
        against_static = "(not measured)"
    elif plan.keeps_static:
        against_static = f"({plan.static_ms:.4f} ms): the plan is the static model"
    else:
        against_static = f"({plan.static_ms:.4f} ms): {saving(b.plan.saving_vs_static)}" + (
            "" if plan.beats_static else " (the plan does NOT beat the static model)"
        )
    lines.append(
        f"  expected cost against R_N, {b.bounds.r_n_what} ({plan.r_n:.4f} ms): "
        f"{saving(b.plan.saving_vs_r_n)}; against the static model {against_static}"
    )
    return lines


def _run_lines(b: BundleResult) -> list[str]:
    """The run of the plan on the test split against the static model."""
    plan = b.plan.plan
    reference = plan.bundle_states[plan.reference_state]
    r = b.run
    lines = ["", f"run on the test split ({r.samples} samples, batch 1, measured here):"]
    lines.append(
        table(
            ["", "accuracy", "mean ms", "p50 ms"],
            [
                [
                    f"static {reference}",
                    pct(r.static_accuracy, 2),
                    f"{r.static_mean_ms:.4f}",
                    f"{r.static_p50_ms:.4f}",
                ],
                ["adaptive (plan)", pct(r.accuracy, 2), f"{r.mean_ms:.4f}", f"{r.p50_ms:.4f}"],
            ],
        )
    )
    exits = ", ".join(f"{s} {n}" for s, n in zip(b.state_names, r.exits, strict=True))
    lines.append(
        f"  speedup {ratio(r.speedup)} measured ({ratio(r.predicted_speedup)} predicted by the "
        f"profile) at an accuracy drop of {100 * r.drop:.2f} points; exits: {exits}"
    )
    if len(plan.states) == 1:
        lines.append(
            "  (one state kept: AdaptiveModel deploys that state as one plain model, the "
            "static model itself, so the difference is its own per-call cost)"
        )
    rgap = r.gap_closure
    lines.append(
        f"  oracle gap closure on the test split: {'n/a' if rgap is None else pct(rgap)} "
        f"(expected cost {r.expected_cost_ms:.4f} ms from the profile; oracle "
        f"{r.oracle_r:.4f} ms at {pct(r.oracle_a, 2)})"
    )
    return lines


def render_bundle(b: BundleResult) -> str:
    """The summary of one bundle."""
    lines = [*_states_lines(b), *_bound_lines(b), *_plan_lines(b), *_run_lines(b)]
    lines.append(f"report: {b.report}")
    return "\n".join(lines)


def heading(result: DemoResult) -> str:
    """The first line of the summary: the device and the runtime."""
    dev = result.device
    rt = dev.get("runtime", {})
    return (
        f"edgeadapt demo on {dev['id']}: {dev.get('cpu')}, {rt.get('backend')} "
        f"{rt.get('version')}, {result.threads} thread(s)"
    )


def render(result: DemoResult) -> str:
    """The whole summary of a demo run."""
    parts = [heading(result), *(render_bundle(b) for b in result.bundles)]
    first = result.bundles[0]
    work = first.work
    parts.append(
        "same figures from the separate commands:\n"
        f"  edgeadapt bound {first.bundle.path} --profile {work}/profile.json "
        f"--evaluation {work}/evaluation-calibration.npz --envelope\n"
        f"  edgeadapt plan {first.bundle.path} --profile {work}/profile.json "
        f"--evaluation {work}/evaluation-calibration.npz -o {work}/plan-again.json\n"
        f"done in {result.seconds:.0f} s; files under {result.out}"
    )
    return "\n\n".join(parts)


class CliUI:
    """Progress on stderr: log lines and click progress bars."""

    def __init__(self, show: bool) -> None:
        self.show = show

    def log(self, message: str) -> None:
        if self.show:
            click.echo(message, err=True)

    def bar(self, label: str, total: int) -> AbstractContextManager[Callable[[int, int], None]]:
        return progress_bar(f"  {label}", total, self.show)


@click.command("demo")
@output_option(
    "Directory for the data, profiles, evaluations, plans and reports.",
    dir_okay=True,
    default=Path("edgeadapt-demo"),
    old_spelling="--out",
)
@runtime_option()
@threads_option(default=1)
@click.option(
    "--samples",
    type=integer(1),
    help="Run the plan on only the first N test samples (default: all 2,500).",
)
@click.option(
    "--min-seconds",
    type=number(0, 3600, min_open=True),
    default=0.5,
    show_default=True,
    help="How long the profiler times each step.",
)
@click.option("--retrain", is_flag=True, help="Retrain the demo models from the seed (torch).")
@click.option("--force", is_flag=True, help="Rebuild every artefact instead of reusing it.")
@json_option("Print every figure as one JSON object.")
def demo_cmd(
    output: Path,
    runtime: str,
    threads: int,
    samples: int | None,
    min_seconds: float,
    retrain: bool,
    force: bool,
    as_json: bool,
) -> None:
    """The main job on MNIST-1D: profile, evaluate, bound, plan, run and report.

    Uses two bundles shipped in the package (a residual 1D CNN with an exit after each
    block, and a family of logistic regression, MLP and CNN), generates MNIST-1D locally,
    measures every state on this device, computes the adaptive-oracle bounds, plans
    states and thresholds, runs the plan on the test split next to the static model, and
    writes report.html. Re-running reuses what is already built (--force rebuilds).
    """
    from edgeadapt.demo import run_demo

    result = run_demo(
        output,
        runtime=runtime,
        threads=threads,
        retrain=retrain,
        force=force,
        samples=samples,
        min_seconds=min_seconds,
        ui=CliUI(show=not as_json),
    )
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(render(result))


COMMANDS = [demo_cmd]
