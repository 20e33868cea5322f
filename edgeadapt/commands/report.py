"""`edgeadapt report`: the device report as self-contained HTML plus PNGs (a thin layer
over `edgeadapt.report.write_report`)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeadapt.errors import InputError

_FILE = click.Path(dir_okay=False, path_type=Path)


def _default(path: Path | None, default: Path, option: str, how: str) -> Path:
    """`path`, else `default` when it exists, else a clear error naming `option`."""
    if path is not None:
        return path
    if default.is_file():
        return default
    raise InputError(f"not given and {default} does not exist; {how}", source=option)


@click.command("report")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--profile",
    "profile_path",
    type=_FILE,
    default=None,
    help="Profile of the bundle on this device [BUNDLE/profiles/<device>.json].",
)
@click.option(
    "--evaluation",
    "evaluation_path",
    type=_FILE,
    default=None,
    help="Per-sample results of every state [BUNDLE/evaluation.npz].",
)
@click.option(
    "--plan",
    "plan_path",
    type=_FILE,
    default=None,
    help="Plan to show against the oracle [BUNDLE/plan.json when it exists].",
)
@click.option(
    "-o", "--output", "out", type=_FILE, required=True, help="HTML file; PNGs go next to it."
)
@click.option("--json", "as_json", is_flag=True, help="Print the paths and headline figures.")
def report_cmd(
    bundle: Path,
    profile_path: Path | None,
    evaluation_path: Path | None,
    plan_path: Path | None,
    out: Path,
    as_json: bool,
) -> None:
    """Write the report of BUNDLE on this device: accuracy vs measured cost with the oracle
    bounds, the policy sweep and the plan (paper Fig. 3/4), alpha_i per state (Fig. 2) and
    R_ratio vs number of states (Fig. 6), in one HTML file readable without a server."""
    from edgeadapt.bundle import load_bundle
    from edgeadapt.jsonio import dumps
    from edgeadapt.profile import default_profile_path
    from edgeadapt.report import render_report, report_data

    loaded = load_bundle(bundle)
    profile = _default(
        profile_path,
        default_profile_path(loaded),
        "--profile",
        f"run edgeadapt profile {bundle}",
    )
    evaluation = _default(
        evaluation_path,
        loaded.path / "evaluation.npz",
        "--evaluation",
        f"run edgeadapt evaluate {bundle} --data D.npz",
    )
    default_plan = loaded.path / "plan.json"
    plan = plan_path if plan_path is not None or not default_plan.is_file() else default_plan
    data = report_data(loaded, profile=profile, evaluation=evaluation, plan=plan)
    paths = render_report(data, out)
    bound = data.bound
    summary = {
        "html": str(paths[-1]),
        "images": [str(p) for p in paths[:-1]],
        "profile": str(profile),
        "evaluation": str(evaluation),
        "plan": None if plan is None else str(plan),
        "exact": bound["exact"],
        "r_n": bound["r_n"],
        "static": bound["static"],
        "alpha_min": bound["alpha_min"],
        "policy": None
        if data.plan is None
        else {
            "accuracy": data.plan.heldout.accuracy,
            "cost": data.plan.heldout.cost_ms,
            "gap_closure": data.plan.gap_closure,
            "static_ms": data.plan.static_ms,
            "beats_static": data.plan.beats_static,
        },
    }
    if as_json:
        click.echo(dumps(summary), nl=False)
        return
    ex = bound["exact"]
    ratio = "-" if ex["r_ratio"] is None else f"{ex['r_ratio']:.2f}x"
    static = bound["static"]
    against_static = (
        "no static model measured"
        if static is None
        else f"static model {static['cost_ms']:.4f} ms, R_ratio "
        + ("-" if static["r_ratio"] is None else f"{static['r_ratio']:.2f}x")
    )
    click.echo(
        f"exact oracle: {ex['r_oracle']:.4f} ms at {ex['a_oracle']:.2%} "
        f"(R_N, {bound['r_n_what']}, {bound['r_n']:.4f} ms, R_ratio {ratio}; {against_static})"
    )
    if data.plan is not None:
        gap = data.plan.gap_closure
        click.echo(
            f"plan {plan}: {data.plan.heldout.cost_ms:.4f} ms at "
            f"{data.plan.heldout.accuracy:.2%} held-out, oracle gap closure "
            + ("n/a" if gap is None else f"{gap:.1%}")
            + (
                ""
                if data.plan.beats_static is None
                else f"; {'beats' if data.plan.beats_static else 'does NOT beat'} the static model"
            )
        )
    for path in paths:
        click.echo(f"wrote {path}")


COMMANDS = [report_cmd]
