"""`edgeadapt report`: the device report as self-contained HTML plus PNGs (a thin layer
over `edgeadapt.report.report_to_file`).

`edgeadapt.report` is imported in the command: at the top it would add about 5 ms to
`edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgeadapt.commands.options import (
    bundle_argument,
    echo_json,
    file_option,
    json_option,
    output_option,
)
from edgeadapt.render import pct, ratio, static_verdict, table


@click.command("report")
@bundle_argument()
@file_option("--profile", "Profile of the bundle on this device [BUNDLE/profiles/<device>.json].")
@file_option("--evaluation", "Per-sample results of every state [BUNDLE/evaluation.npz].")
@file_option(
    "--plan",
    "Plan of any policy to show against the oracle [BUNDLE/plan.json when it exists].",
)
@output_option("HTML file; PNGs go next to it.", required=True)
@json_option("Print the paths and headline figures.")
def report_cmd(
    bundle: Path,
    profile: Path | None,
    evaluation: Path | None,
    plan: Path | None,
    output: Path,
    as_json: bool,
) -> None:
    """Write the report of BUNDLE on this device: accuracy vs measured cost with the oracle
    bounds, the policy sweep and the plan (paper Fig. 3/4), alpha_i per state (Fig. 2) and
    R_ratio vs number of states (Fig. 6), in one HTML file readable without a server.
    The plan (threshold, gate, agreement or scheduler policy) is also run on the whole
    evaluation as the planner simulates it. Every policy (confidence thresholds, learned
    exit gates, agreement; the scheduler for a branches bundle) is planned from the same
    profile and evaluation and shown side by side."""
    from edgeadapt.report import POLICY_HEADERS, policy_rows, report_to_file

    written = report_to_file(
        bundle, profile=profile, evaluation=evaluation, plan=plan, output=output
    )
    if as_json:
        echo_json(written.to_json())
        return
    data = written.data
    summary, static = data.bound.summary, data.bound.static
    assert summary.exact is not None  # the report bounds per-sample results
    ex = summary.exact.point
    against_static = (
        "no static model measured"
        if static is None
        else f"static model {static.cost_ms:.4f} ms, R_ratio {ratio(static.r_ratio)}"
    )
    click.echo(
        f"exact oracle: {ex.r_oracle:.4f} ms at {pct(ex.a_oracle, 2)} "
        f"(R_N, {data.bound.r_n_what}, {summary.r_n:.4f} ms, R_ratio {ratio(ex.r_ratio)}; "
        f"{against_static})"
    )
    chosen = data.plan
    if chosen is not None:
        gap = chosen.gap_closure
        click.echo(
            f"plan {written.plan} ({chosen.policy} policy): {chosen.heldout.cost_ms:.4f} ms at "
            f"{pct(chosen.heldout.accuracy, 2)} held-out, oracle gap closure "
            + ("n/a" if gap is None else pct(gap))
            + (
                ""
                if chosen.static_ms is None
                else f"; {static_verdict(chosen, 'the static model')}"
            )
        )
    if data.policies:
        click.echo("every policy planned from this profile and evaluation:")
        rows = policy_rows(data.policies)
        if rows:
            click.echo(table(POLICY_HEADERS, rows, left=(0, 1, 5)))
        for p in data.policies:
            if p.plan is None:
                click.echo(f"{p.policy}: not planned: {p.reason}")
    for path in written.paths:
        click.echo(f"wrote {path}")


COMMANDS = [report_cmd]
