"""`edgeadapt bound`, `edgeadapt subset`, `edgeadapt import-predictions`: the oracle CLI.

Thin: parse options, call `edgeadapt.oracle` / `edgeadapt.subset`, print an aligned
table or (``--json``) one JSON object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgeadapt.errors import InputError

_FILE = click.Path(dir_okay=False, path_type=Path)


# ------------------------------------------------------------------ helpers


def _render(
    headers: Sequence[str], rows: Sequence[Sequence[str]], left: tuple[int, ...] = (0,)
) -> str:
    """Columns padded to width; columns in `left` left-aligned, the rest right."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i in left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _num(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.1f}"


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.2f}%" if signed else f"{100 * x:.2f}%"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _emit_json(obj: dict[str, Any]) -> None:
    from edgeadapt.jsonio import dumps

    click.echo(dumps(obj), nl=False)


def _states_costs(
    table_path: Path, evaluation_path: Path | None
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """Names, costs, accuracies, correctness (or None) and ignored table rows."""
    from edgeadapt.evaluation import load_evaluation
    from edgeadapt.statetable import load_state_table

    table = load_state_table(table_path)
    if evaluation_path is None:
        return (
            list(table.names),
            np.array(table.costs),
            np.array(table.accuracies),
            None,
            [],
        )
    evaluation = load_evaluation(evaluation_path)
    cost_of = dict(zip(table.names, table.costs, strict=True))
    for name in evaluation.names:
        if name not in cost_of:
            raise InputError(
                f"state {name!r} is not in the table {table_path}",
                source=evaluation_path,
                field="states",
            )
    names = list(evaluation.names)
    ignored = [n for n in table.names if n not in set(names)]
    costs = np.array([cost_of[n] for n in names])
    correct = evaluation.correct
    return names, costs, correct.mean(axis=0), correct, ignored


# -------------------------------------------------------------------- bound


def _bound_text(summary: dict[str, Any], ignored: list[str]) -> str:
    alphas = summary.get("alphas")
    state_rows = []
    for i, s in enumerate(summary["states"]):
        row = [s["name"], _num(s["cost"]), _pct(s["accuracy"])]
        if alphas is not None:
            row.append("-" if i == 0 else _num(alphas[i - 1], 3))
        state_rows.append(row)
    headers = ["state", "cost", "accuracy"] + (["alpha_i"] if alphas is not None else [])
    parts = [_render(headers, state_rows)]
    if summary.get("dominated"):
        parts.append("Pareto envelope: the analytic bounds drop " + ", ".join(summary["dominated"]))
    if ignored:
        parts.append("table rows not in the evaluation (ignored): " + ", ".join(ignored))

    def point(label: str, p: dict[str, Any], mark: bool) -> list[str]:
        return [
            ("* " if mark else "  ") + label,
            _num(p["r_oracle"]),
            _pct(p.get("a_oracle")),
            _num(p.get("delta_r")),
            _ratio(p["r_ratio"]),
            _pct(p.get("delta_a"), signed=True) if p.get("delta_a") is not None else "-",
        ]

    method = summary["method"]
    rows = []
    if "exact" in summary:
        rows.append(point("exact oracle (eq. 4/5)", summary["exact"], method == "exact"))
    rows.append(point("alpha=1 (eq. 9)", summary["alpha1"], method == "alpha=1"))
    if method == "constant-alpha":
        rows.append(point(f"alpha={summary['alpha']:g} (eq. 8)", summary, True))
    if "constant_alpha_min" in summary:
        label = f"alpha_min={summary['alpha_min']:.3f} (eq. 8)"
        rows.append(point(label, summary["constant_alpha_min"], False))
    cont = summary["continuous"]
    rows.append(point("continuous (eq. 13)", cont, False))
    parts.append(
        _render(["bound", "R_oracle", "A_oracle", "dR", "R_ratio", "dA"], rows)
        + f"\n(* = headline, method {method}; baseline R_N = {_num(summary['r_n'])}, "
        f"A_N = {_pct(summary['a_n'])} ({summary['baseline']}), R_1 = {_num(summary['r_1'])})"
    )
    test = summary.get("smallest_state")
    if test:
        verdict = "pays off" if test["passes"] else "does NOT pay off"
        parts.append(
            f"smallest-state test (C={test['classes']}): {test['state']} {verdict}: "
            f"R_1 = {_num(test['r_1'])} {'<' if test['passes'] else '>='} "
            f"{_num(test['threshold'])} = (A_1 - 1/C) / (1 - A_N + A_1) * R_2"
        )
    return "\n\n".join(parts)


def _table_option(required: bool) -> Any:
    return click.option(
        "--table",
        "table_path",
        type=_FILE,
        required=required,
        help="CSV with columns name,cost,accuracy (one row per state).",
    )


def _bundle_header(summary: dict[str, Any]) -> str:
    """Where `bound BUNDLE`'s costs and accuracies come from."""
    b, cost, ev = summary["bundle"], summary["cost"], summary["evaluation"]
    lines = [
        f"bundle {b['path']} ({b['kind']}, {len(b['states'])} states)",
        f"costs: {cost['unit']}, {cost['origin']}",
    ]
    p = summary.get("profile")
    if p:
        noisy = " (flagged noisy)" if p["noisy"] else ""
        lines.append(
            f"profile {p['path']}: device {p['device_id']}, {p['runtime']}, "
            f"{p['threads']} thread(s), measured {p['measured_at']}{noisy}"
        )
    lines.append(f"evaluation {ev['path']}: {ev['samples']} samples")
    return "\n".join(lines)


def _baselines_text(summary: dict[str, Any]) -> str:
    """The headline oracle against both baselines: R_N (for an early-exit bundle the sum
    of the steps) and the measured static model (the whole model from the profile)."""
    r_oracle = summary["r_oracle"]
    unit = summary["cost"]["unit"]
    rows = [
        [
            f"R_N: {summary['r_n_what']} ({summary['baseline']})",
            _num(summary["r_n"]),
            _num(summary["r_n"] - r_oracle),
            _ratio(summary["r_n"] / r_oracle if r_oracle > 0 else None),
        ]
    ]
    static = summary.get("static")
    if static is not None:
        rows.append(
            [
                f"static: measured whole model ({static['origin']})",
                _num(static["cost_ms"]),
                _num(static["delta_r"]),
                _ratio(static["r_ratio"]),
            ]
        )
    table = _render(["baseline", f"cost ({unit})", "dR", "R_ratio"], rows)
    if static is None:
        why = "costs in FLOPs" if unit == "flops" else "the profile did not time the whole model"
        return f"savings of the {summary['method']} oracle against each baseline\n{table}\n(no static baseline: {why})"
    return (
        f"savings of the {summary['method']} oracle against each baseline\n{table}\n"
        f"(the full path costs {_ratio(static['full_path_ratio'])} the static model)"
    )


def _views_text(views: dict[str, Any]) -> str:
    rows = []
    for name, v in views.items():
        scale, unit = (1e6, "MFLOPs") if v["unit"] == "flops" else (1.0, v["unit"])
        r_oracle, r_n = _num(v["r_oracle"] / scale), _num(v["r_n"] / scale)
        rows.append([name, unit, r_oracle, r_n, _ratio(v["r_ratio"])])
    table = _render(["view", "unit", "R_oracle", "R_N", "R_ratio"], rows, left=(0, 1))
    return (
        "exact oracle per cost view (cascade: steps 0..i, what a sequential run pays; "
        "direct: stages 0..i + head i, the paper's view)\n" + table
    )


def _bound_bundle(
    bundle: Path,
    profile_path: Path | None,
    evaluation_path: Path | None,
    cost: str | None,
    **options: Any,
) -> dict[str, Any]:
    """`bound BUNDLE`: the profile defaults to BUNDLE/profiles/<device>.json when it
    exists; the cost unit to ms with a profile, FLOPs without."""
    from edgeadapt.analysis import bundle_bound
    from edgeadapt.bundle import load_bundle
    from edgeadapt.profile import default_profile_path

    loaded = load_bundle(bundle)
    if profile_path is None and cost != "flops":
        default = default_profile_path(loaded)
        profile_path = default if default.is_file() else None
        if profile_path is None and cost == "ms":
            raise InputError(
                f"no profile given and none at {default}: run edgeadapt profile {bundle} "
                "or pass --profile (or --cost flops)",
                source="--cost",
            )
    if cost is None:
        cost = "flops" if profile_path is None else "ms"
    if evaluation_path is None:
        raise InputError(
            f"bound {bundle} needs per-sample results: pass --evaluation "
            f"(edgeadapt evaluate {bundle} --data D.npz)",
            source="--evaluation",
        )
    return bundle_bound(
        loaded, profile=profile_path, evaluation=evaluation_path, cost=cost, **options
    )


@click.command("bound")
@click.argument(
    "bundle", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@_table_option(required=False)
@click.option(
    "--profile",
    "profile_path",
    type=_FILE,
    default=None,
    help="With BUNDLE: profile of the bundle on this device [BUNDLE/profiles/<device>.json].",
)
@click.option(
    "--cost",
    type=click.Choice(["ms", "flops"]),
    default=None,
    help="With BUNDLE: state costs in measured ms (default with a profile) or manifest FLOPs.",
)
@click.option(
    "--alpha",
    type=float,
    default=None,
    help="Constant alpha in [0, 1] for eq. 8 (default: alpha = 1, eq. 9).",
)
@click.option(
    "--evaluation",
    "evaluation_path",
    type=_FILE,
    default=None,
    help="Evaluation .npz: exact oracle and alphas from per-sample results.",
)
@click.option(
    "--classes",
    type=int,
    default=None,
    help="Number of classes C: run the smallest-state test (BUNDLE: its class count).",
)
@click.option(
    "--envelope",
    is_flag=True,
    help="Compute the analytic bounds on the Pareto envelope (drop dominated states).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bound_command(
    bundle: Path | None,
    table_path: Path | None,
    profile_path: Path | None,
    cost: str | None,
    alpha: float | None,
    evaluation_path: Path | None,
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
    from edgeadapt.oracle import bound_summary

    if bundle is None and (profile_path is not None or cost is not None):
        raise InputError("--profile and --cost need BUNDLE, not --table", source="bound")
    if alpha is not None and not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise InputError(f"must be in [0, 1], got {alpha}", source="--alpha")
    if classes is not None and classes < 2:
        raise InputError(f"must be >= 2, got {classes}", source="--classes")
    ignored: list[str] = []
    options: dict[str, Any] = {"alpha": alpha, "classes": classes, "envelope": envelope}
    if table_path is not None and bundle is None:
        names, costs, accs, correct, ignored = _states_costs(table_path, evaluation_path)
        source = str(evaluation_path or table_path)
        summary = bound_summary(names, costs, accs, correct=correct, source=source, **options)
    elif bundle is not None and table_path is None:
        summary = _bound_bundle(bundle, profile_path, evaluation_path, cost, **options)
    else:
        raise InputError("give exactly one of BUNDLE or --table", source="bound")
    if ignored:
        summary["ignored"] = ignored
    if as_json:
        _emit_json(summary)
    elif bundle is not None:
        parts = [_bundle_header(summary), _bound_text(summary, ignored), _baselines_text(summary)]
        click.echo("\n\n".join([*parts, _views_text(summary["views"])]))
    else:
        click.echo(_bound_text(summary, ignored))


# ------------------------------------------------------------------- subset


def _subset_entry(choice: Any, names: Sequence[str]) -> dict[str, Any]:
    return {
        "k": choice.k,
        "states": [names[i] for i in choice.states],
        "r_oracle": choice.r_oracle,
        "a_oracle": choice.a_oracle,
        "r_ratio": choice.r_ratio if math.isfinite(choice.r_ratio) else None,
        "method": choice.method,
    }


@click.command("subset")
@_table_option(required=True)
@click.option(
    "--k", "k", type=int, default=None, help="Subset size (default: the whole R_ratio-vs-k curve)."
)
@click.option(
    "--evaluation",
    "evaluation_path",
    type=_FILE,
    default=None,
    help="Evaluation .npz: search by the exact oracle instead of alpha = 1.",
)
@click.option("--envelope", is_flag=True, help="Search only the Pareto envelope.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def subset_command(
    table_path: Path,
    k: int | None,
    evaluation_path: Path | None,
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
    from edgeadapt.oracle import pareto_envelope, require_monotone, state_space
    from edgeadapt.subset import subset_curve_alpha1, subset_curve_exact

    names, costs, accs, correct, ignored = _states_costs(table_path, evaluation_path)
    source = str(evaluation_path or table_path)
    space = state_space(names, costs, accs, source=source)
    front, _ = pareto_envelope(space)
    r_n, baseline = float(front.costs[-1]), front.names[-1]
    dominated: list[str] = []
    if envelope:
        space, dominated = pareto_envelope(space)
    elif correct is None:
        require_monotone(space, source=source)
    if k is not None and not 1 <= k <= len(space):
        raise InputError(
            f"must be in 1..{len(space)} (the number of states), got {k}", source="--k"
        )
    ks = None if k is None else [k]
    if correct is None:
        full = subset_curve_alpha1(space.costs, space.accuracies, r_n)
        curve = full if k is None else [full[k - 1]]
    else:
        curve = subset_curve_exact(correct[:, space.order], space.costs, ks, r_n)
    entries = [_subset_entry(c, space.names) for c in curve]
    top = entries[-1]
    out: dict[str, Any] = {**top, "baseline": baseline, "r_n": r_n}
    if k is None:
        out["curve"] = entries
    if dominated:
        out["dominated"] = dominated
    if ignored:
        out["ignored"] = ignored
    if as_json:
        _emit_json(out)
        return
    rows = [
        [
            str(e["k"]),
            _num(e["r_oracle"]),
            _pct(e["a_oracle"]),
            _ratio(e["r_ratio"]),
            e["method"],
            ", ".join(e["states"]),
        ]
        for e in entries
    ]
    headers = ["k", "R_oracle", "A_oracle", "R_ratio", "search", "states (cost order)"]
    text = _render(headers, rows, left=(4, 5))
    notes = [f"(R_ratio against R_N = {_num(r_n)}, {baseline})"]
    if dominated:
        notes.append("Pareto envelope: dropped " + ", ".join(dominated))
    if ignored:
        notes.append("table rows not in the evaluation (ignored): " + ", ".join(ignored))
    if any(e["method"] == "heuristic" for e in entries):
        notes.append("heuristic: too many subsets to search exhaustively; not guaranteed best")
    click.echo(text + "\n" + "\n".join(notes))


# ------------------------------------------------------- import-predictions


@click.command("import-predictions")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "-o", "--out", "out_path", type=_FILE, required=True, help="Evaluation .npz to write."
)
@click.option(
    "--states", "keep", default=None, help="Comma-separated state names to keep, in this order."
)
def import_predictions_command(sources: tuple[str, ...], out_path: Path, keep: str | None) -> None:
    """Convert per-sample predictions into an evaluation .npz.

    SOURCES is either one .npz with `pred` [N, S], `labels` [N] and the names in
    `models` (e.g. examples/imagenet-val-predictions/predictions.npz), or one CSV per
    state with columns file,predicted,truth, given as PATH.csv (state named after the
    file) or NAME=PATH.csv.
    """
    from edgeadapt.evaluation import from_prediction_csvs, from_predictions_npz, save_evaluation

    if len(sources) == 1 and sources[0].lower().endswith(".npz"):
        evaluation = from_predictions_npz(sources[0])
    else:
        named: dict[str, str] = {}
        for item in sources:
            name, sep, path = item.partition("=")
            if not sep:
                name, path = Path(item).stem, item
            if not path.lower().endswith(".csv"):
                raise InputError("expected a .csv file (or a single .npz)", source=item)
            if name in named:
                raise InputError(f"state name {name!r} given twice", source=item)
            named[name] = path
        evaluation = from_prediction_csvs(named)
    if keep:
        evaluation = evaluation.select([s.strip() for s in keep.split(",") if s.strip()])
    save_evaluation(out_path, evaluation)
    accs = evaluation.accuracies
    rows = [[n, _pct(float(a))] for n, a in zip(evaluation.names, accs, strict=True)]
    click.echo(_render(["state", "accuracy"], rows))
    click.echo(f"wrote {out_path}: {evaluation.labels.size} samples x {len(rows)} states")


COMMANDS = [bound_command, subset_command, import_predictions_command]
