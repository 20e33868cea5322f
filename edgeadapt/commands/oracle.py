"""`edgeadapt bound`, `edgeadapt subset`, `edgeadapt import-predictions`: the oracle CLI.

Thin: parse options, call `edgeadapt.oracle.bound` / `edgeadapt.oracle.subset` /
`edgeadapt.formats.evaluation`, print an aligned table (`edgeadapt.render`) or (``--json``) one
JSON object.

`edgeadapt.oracle.subset` is imported in `subset`: at the top it would add about 3 ms to
`edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeadapt.commands.options import (
    BUNDLE_DIR,
    INPUT_FILE,
    bundle_argument,
    echo_json,
    file_option,
    integer,
    json_option,
    number,
    output_option,
)
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.evaluation import import_predictions, save_evaluation
from edgeadapt.oracle.bound import (
    VIEWS_CAPTION,
    BundleBound,
    CostView,
    bundle_bound_defaults,
    oracle_cells,
    table_bound,
    view_cells,
)
from edgeadapt.render import num, pct, ratio, table

if TYPE_CHECKING:
    from edgeadapt.oracle.equations import BoundSummary
    from edgeadapt.oracle.subset import SubsetAnalysis


# -------------------------------------------------------------------- bound


def bound_text(summary: BoundSummary, ignored: tuple[str, ...] = ()) -> str:
    """The states, every bound and the smallest-state test of `summary`, as text."""
    alphas = None if summary.exact is None else summary.exact.alphas
    state_rows = []
    for i, s in enumerate(summary.states):
        row = [s.name, num(s.cost), pct(s.accuracy, 2)]
        if alphas is not None:
            row.append("-" if i == 0 else num(alphas[i - 1], 3))
        state_rows.append(row)
    headers = ["state", "cost", "accuracy"] + (["alpha_i"] if alphas is not None else [])
    parts = [table(headers, state_rows)]
    if summary.dominated:
        parts.append("Pareto envelope: the analytic bounds drop " + ", ".join(summary.dominated))
    if ignored:
        parts.append("table rows not in the evaluation (ignored): " + ", ".join(ignored))
    rows = [
        [("* " if headline else "  ") + label, *oracle_cells(p)]
        for label, p, headline in summary.points()
    ]
    parts.append(
        table(["bound", "R_oracle", "A_oracle", "dR", "R_ratio", "dA"], rows)
        + f"\n(* = headline, method {summary.method}; baseline R_N = {num(summary.r_n)}, "
        f"A_N = {pct(summary.a_n, 2)} ({summary.baseline}), R_1 = {num(summary.r_1)})"
    )
    test = summary.smallest_state
    if test is not None:
        verdict = "pays off" if test.passes else "does NOT pay off"
        parts.append(
            f"smallest-state test (C={test.classes}): {test.state} {verdict}: "
            f"R_1 = {num(test.r_1)} {'<' if test.passes else '>='} "
            f"{num(test.threshold)} = (A_1 - 1/C) / (1 - A_N + A_1) * R_2"
        )
    return "\n\n".join(parts)


def _bundle_header(bound: BundleBound) -> str:
    """Where `bound BUNDLE`'s costs and accuracies come from."""
    lines = [
        f"bundle {bound.bundle_path} ({bound.kind}, {len(bound.states)} states)",
        f"costs: {bound.unit}, {bound.origin}",
    ]
    p = bound.profile
    if p is not None:
        noisy = " (flagged noisy)" if p.noisy else ""
        lines.append(
            f"profile {p.path}: device {p.device_id}, {p.runtime}, "
            f"{p.threads} thread(s), measured {p.measured_at}{noisy}"
        )
    lines.append(f"evaluation {bound.evaluation_path}: {bound.samples} samples")
    return "\n".join(lines)


def _baselines_text(bound: BundleBound) -> str:
    """The headline oracle against both baselines: R_N (for an early-exit bundle the sum
    of the steps) and the measured static model (the whole model from the profile)."""
    rows = [[label, num(c), num(dr), ratio(rr)] for label, c, dr, rr in bound.baselines()]
    text = table(["baseline", f"cost ({bound.unit})", "dR", "R_ratio"], rows)
    head = f"savings of the {bound.summary.method} oracle against each baseline\n{text}\n"
    if bound.static is None:
        why = (
            "costs in FLOPs"
            if bound.unit == "flops"
            else "the profile did not time the whole model"
        )
        return head + f"(no static baseline: {why})"
    return head + f"(the full path costs {ratio(bound.static.full_path_ratio)} the static model)"


def _views_text(views: dict[str, CostView]) -> str:
    headers = ["view", "unit", "R_oracle", "R_N", "R_ratio"]
    return VIEWS_CAPTION + "\n" + table(headers, view_cells(views), left=(0, 1))


def _table_option(required: bool) -> Any:
    return file_option(
        "--table",
        "CSV with columns name,cost,accuracy (one row per state).",
        param="table_path",
        required=required,
    )


@click.command("bound")
@bundle_argument(required=False)
@_table_option(required=False)
@file_option(
    "--profile",
    "With BUNDLE: profile of the bundle on this device [BUNDLE/profiles/<device>.json].",
)
@click.option(
    "--cost",
    type=click.Choice(["ms", "flops"]),
    default=None,
    help="With BUNDLE: state costs in measured ms (default with a profile) or manifest FLOPs.",
)
@click.option(
    "--alpha",
    type=number(0, 1),
    help="Constant alpha in [0, 1] for eq. 8 (default: alpha = 1, eq. 9).",
)
@file_option("--evaluation", "Evaluation .npz: exact oracle and alphas from per-sample results.")
@click.option(
    "--classes",
    type=integer(2),
    help="Number of classes C: run the smallest-state test (BUNDLE: its class count).",
)
@click.option(
    "--envelope",
    is_flag=True,
    help="Compute the analytic bounds on the Pareto envelope (drop dominated states).",
)
@json_option()
def bound_command(
    bundle: Path | None,
    table_path: Path | None,
    profile: Path | None,
    cost: str | None,
    alpha: float | None,
    evaluation: Path | None,
    classes: int | None,
    envelope: bool,
    as_json: bool,
) -> None:
    """How much any adaptive policy could gain over always running the costliest state.

    Prints the adaptive oracle's expected cost R_oracle and accuracy A_oracle with the
    gains dR = R_N - R_oracle, R_ratio = R_N / R_oracle and dA = A_oracle - A_N
    (Hor et al. 2024). Give either --table (a CSV of states) or BUNDLE. With
    --evaluation the exact oracle and every alpha_i come from the per-sample results;
    the table supplies the costs by state name, a BUNDLE its profile's measured
    cascade costs (--cost ms) or its manifest's FLOPs (--cost flops).
    """
    if bundle is None and (profile is not None or cost is not None):
        raise InputError("--profile and --cost need BUNDLE, not --table", source="bound")
    options: dict[str, Any] = {"alpha": alpha, "classes": classes, "envelope": envelope}
    if table_path is not None and bundle is None:
        result = table_bound(table_path, evaluation, **options)
        if as_json:
            echo_json(result.to_json())
        else:
            click.echo(bound_text(result.summary, result.ignored))
    elif bundle is not None and table_path is None:
        bound = bundle_bound_defaults(
            bundle, profile=profile, evaluation=evaluation, cost=cost, **options
        )
        if as_json:
            echo_json(bound.to_json())
            return
        parts = [_bundle_header(bound), bound_text(bound.summary), _baselines_text(bound)]
        click.echo("\n\n".join([*parts, _views_text(bound.views)]))
    else:
        raise InputError("give exactly one of BUNDLE or --table", source="bound")


# ------------------------------------------------------------------- subset


def _subset_text(analysis: SubsetAnalysis) -> str:
    rows = [
        [
            str(c.k),
            num(c.r_oracle),
            pct(c.a_oracle, 2),
            ratio(c.r_ratio),
            c.method,
            ", ".join(analysis.names[i] for i in c.states),
        ]
        for c in analysis.choices
    ]
    headers = ["k", "R_oracle", "A_oracle", "R_ratio", "search", "states (cost order)"]
    notes = [f"(R_ratio against R_N = {num(analysis.r_n)}, {analysis.baseline})"]
    if analysis.dominated:
        notes.append("Pareto envelope: dropped " + ", ".join(analysis.dominated))
    if analysis.ignored:
        notes.append("table rows not in the evaluation (ignored): " + ", ".join(analysis.ignored))
    if any(c.method == "heuristic" for c in analysis.choices):
        notes.append("heuristic: too many subsets to search exhaustively; not guaranteed best")
    return table(headers, rows, left=(4, 5)) + "\n" + "\n".join(notes)


@click.command("subset")
@_table_option(required=True)
@click.option(
    "--k", "k", type=integer(1), help="Subset size (default: the whole R_ratio-vs-k curve)."
)
@file_option("--evaluation", "Evaluation .npz: search by the exact oracle instead of alpha = 1.")
@click.option("--envelope", is_flag=True, help="Search only the Pareto envelope.")
@json_option()
def subset_command(
    table_path: Path,
    k: int | None,
    evaluation: Path | None,
    envelope: bool,
    as_json: bool,
) -> None:
    """The best k states to ship, and the R_ratio-vs-k curve (paper section 4.2.1).

    Without --evaluation: the least alpha = 1 R_oracle (eq. 9) among k-subsets that keep
    the top state (exact dynamic program). With --evaluation: the highest exact-oracle
    accuracy among k-subsets, ties broken by the least R_oracle (exact search).
    R_ratio is against the baseline S_N: the table's most accurate state (the costliest
    when accuracy rises with cost).
    """
    from edgeadapt.oracle.subset import table_subsets

    analysis = table_subsets(table_path, evaluation, k=k, envelope=envelope)
    if as_json:
        echo_json(analysis.to_json())
    else:
        click.echo(_subset_text(analysis))


# ------------------------------------------------------- import-predictions


def _sources(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """Each source, ``PATH`` or ``NAME=PATH``, names a regular file."""
    for item in values:
        _, sep, path = item.partition("=")
        INPUT_FILE.convert(path if sep else item, param, ctx)
    return values


@click.command("import-predictions")
@click.argument("sources", nargs=-1, required=True, callback=_sources)
@output_option("Evaluation .npz to write.", required=True, old_spelling="--out")
@click.option(
    "--states", "keep", default=None, help="Comma-separated state names to keep, in this order."
)
@click.option(
    "--bundle",
    "bundle_path",
    type=BUNDLE_DIR,
    help="The bundle whose states these are: recorded, so that bound, plan and report "
    "check the evaluation is of it; its class count bounds labels and predictions.",
)
@click.option(
    "--classes",
    type=integer(2),
    help="Number of classes: labels and predictions must lie below it [with --bundle, "
    "the bundle's].",
)
def import_predictions_command(
    sources: tuple[str, ...],
    output: Path,
    keep: str | None,
    bundle_path: Path | None,
    classes: int | None,
) -> None:
    """Convert per-sample predictions into an evaluation .npz.

    SOURCES is either one .npz with `pred` [N, S], `labels` [N] and the names in
    `models` (e.g. examples/imagenet-val-predictions/predictions.npz), or one CSV per
    state with columns file,predicted,truth, given as PATH.csv (state named after the
    file) or NAME=PATH.csv. With --bundle the states must be the bundle's (select them
    with --states) and the evaluation records the bundle; without it, bundle commands
    read the evaluation with a note that it cannot be checked.
    """
    names = [s.strip() for s in keep.split(",") if s.strip()] if keep else None
    bundle = None if bundle_path is None else load_bundle(bundle_path)
    evaluation = import_predictions(sources, states=names, bundle=bundle, classes=classes)
    save_evaluation(output, evaluation)
    accs = evaluation.accuracies
    rows = [[n, pct(float(a), 2)] for n, a in zip(evaluation.names, accs, strict=True)]
    click.echo(table(["state", "accuracy"], rows))
    click.echo(f"wrote {output}: {evaluation.labels.size} samples x {len(rows)} states")


COMMANDS = [bound_command, subset_command, import_predictions_command]
