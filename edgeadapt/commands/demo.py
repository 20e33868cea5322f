"""`edgeadapt demo`: the main job on MNIST-1D, end to end (a thin layer over
`edgeadapt.demo.run_demo` that shows progress on stderr and prints the summary)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import click

from edgeadapt.commands.oracle import _emit_json, _num, _pct, _ratio, _render
from edgeadapt.commands.progress import progress_bar


def _bound_rows(bounds: dict[str, Any]) -> list[list[str]]:
    """The oracle bounds the demo shows, headline (exact) first."""
    rows: list[tuple[str, dict[str, Any] | None]] = [
        ("exact oracle (eq. 4/5)", bounds.get("exact")),
        ("alpha=1 (eq. 9)", bounds["alpha1"]),
    ]
    if bounds.get("alpha_min") is not None:
        rows.append((f"alpha_min={bounds['alpha_min']:.3f} (eq. 8)", bounds["constant_alpha_min"]))
    rows.append(("continuous (eq. 13)", bounds["continuous"]))
    return [
        [label, _num(p["r_oracle"]), _pct(p.get("a_oracle")), _ratio(p.get("r_ratio"))]
        for label, p in rows
        if p is not None
    ]


def _saving(share: float | None) -> str:
    if share is None:
        return "n/a"
    return f"saves {share:.1%}" if share >= 0 else f"costs {-share:.1%} more"


def render_bundle(b: dict[str, Any]) -> str:
    """The summary of one bundle from `BundleResult.to_json()`."""
    states = b["states"]
    lines = [f"== {b['bundle']}: {b['kind']}, {len(states)} states =="]
    lines.append(
        _render(
            ["state", "test accuracy", "p50 ms", "R_i ms"],
            [
                [s["name"], _pct(s["test_accuracy"]), f"{s['p50_ms']:.4f}", f"{s['cost_ms']:.4f}"]
                for s in states
            ],
        )
    )
    bounds = b["bound"]
    static = bounds.get("static")
    whole = "backbone and last head" if b["kind"] == "early-exit" else "the last member"
    if static is not None:
        lines.append(
            f"static model (the whole model: {whole}, profiled the same way): "
            f"{static['cost_ms']:.4f} ms; the full path R_N costs "
            f"{_ratio(static['full_path_ratio'])} that"
        )
    lines.append("")
    lines.append(
        "oracle bounds (calibration split; R_i measured here with the steps called in turn, "
        "cascade cost: steps 0..i; "
        f"baseline R_N = {bounds['r_n']:.4f} ms, {bounds['r_n_what']}, {bounds['baseline']}):"
    )
    lines.append(_render(["bound", "R_oracle ms", "A_oracle", "R_ratio"], _bound_rows(bounds)))
    if static is not None:
        lines.append(
            f"exact oracle against the static model ({static['cost_ms']:.4f} ms): R_ratio "
            f"{_ratio(static['r_ratio'])}"
        )
    if bounds.get("dominated"):
        lines.append(
            "(analytic bounds on the Pareto envelope, without the dominated "
            + ", ".join(bounds["dominated"])
            + ")"
        )
    plan = b["plan"]
    lines.append("")
    lines.append(
        f"plan: keep {', '.join(plan['states'])}; thresholds ({plan['measure']}) "
        + (", ".join(f"{t:.4f}" for t in plan["thresholds"]) or "none")
    )
    gap = plan["gap_closure"]
    lines.append(
        f"  held-out calibration half: accuracy {_pct(plan['accuracy'])}, drop "
        f"{_pct(plan['drop'], signed=True)} vs {plan['reference']}; expected "
        f"{plan['cost']:.4f} ms; oracle gap closure {'n/a' if gap is None else f'{gap:.1%}'}"
    )
    lines.append(f"  {plan['statement']}")
    gated = b.get("gate_plan")
    if gated is not None:
        ggap = gated["gap_closure"]
        lines.append(
            f"  with learned exit gates instead (plan --policy gate): keep "
            f"{', '.join(gated['states'])}; held-out accuracy {_pct(gated['accuracy'])}, "
            f"expected {gated['cost']:.4f} ms, oracle gap closure "
            f"{'n/a' if ggap is None else f'{ggap:.1%}'}"
        )
    lines.append(
        f"  expected cost against R_N, {bounds['r_n_what']} ({plan['r_n']:.4f} ms): "
        f"{_saving(plan['saving_vs_r_n'])}; against the static model "
        + (
            "(not measured)"
            if plan.get("static_ms") is None
            else f"({plan['static_ms']:.4f} ms): {_saving(plan['saving_vs_static'])}"
            + ("" if plan["beats_static"] else " (the plan does NOT beat the static model)")
        )
    )
    r = b["run"]
    reference = plan["reference"]
    lines.append("")
    lines.append(f"run on the test split ({r['samples']} samples, batch 1, measured here):")
    lines.append(
        _render(
            ["", "accuracy", "mean ms", "p50 ms"],
            [
                [
                    f"static {reference}",
                    _pct(r["static_accuracy"]),
                    f"{r['static_mean_ms']:.4f}",
                    f"{r['static_p50_ms']:.4f}",
                ],
                [
                    "adaptive (plan)",
                    _pct(r["accuracy"]),
                    f"{r['mean_ms']:.4f}",
                    f"{r['p50_ms']:.4f}",
                ],
            ],
        )
    )
    exits = ", ".join(f"{s['name']} {n}" for s, n in zip(states, r["exits"], strict=True))
    lines.append(
        f"  speedup {r['speedup']:.2f}x measured ({r['predicted_speedup']:.2f}x predicted by the profile) at "
        f"an accuracy drop of {100 * r['drop']:.2f} points; exits: {exits}"
    )
    if len(plan["states"]) == 1:
        lines.append(
            "  (one state kept: AdaptiveModel deploys that state as one plain model, the "
            "static model itself, so the difference is its own per-call cost)"
        )
    rgap = r["gap_closure"]
    lines.append(
        f"  oracle gap closure on the test split: {'n/a' if rgap is None else f'{rgap:.1%}'} "
        f"(expected cost {r['expected_cost_ms']:.4f} ms from the profile; oracle "
        f"{r['oracle']['r_oracle']:.4f} ms at {_pct(r['oracle']['a_oracle'])})"
    )
    lines.append(f"report: {b['report']}")
    return "\n".join(lines)


def render(result: dict[str, Any]) -> str:
    """The whole summary from `DemoResult.to_json()`."""
    dev = result["device"]
    rt = dev.get("runtime", {})
    head = (
        f"edgeadapt demo on {dev['id']}: {dev.get('cpu')}, {rt.get('backend')} "
        f"{rt.get('version')}, {result['threads']} thread(s)"
    )
    parts = [head, *(render_bundle(b) for b in result["bundles"])]
    first = result["bundles"][0]
    work = first["work"]
    parts.append(
        "same figures from the separate commands:\n"
        f"  edgeadapt bound {first['path']} --profile {work}/profile.json "
        f"--evaluation {work}/evaluation-calibration.npz --envelope\n"
        f"  edgeadapt plan {first['path']} --profile {work}/profile.json "
        f"--evaluation {work}/evaluation-calibration.npz -o {work}/plan-again.json\n"
        f"done in {result['seconds']:.0f} s; files under {result['out']}"
    )
    return "\n\n".join(parts)


class _CliUI:
    """Progress on stderr: log lines and click progress bars."""

    def __init__(self, show: bool) -> None:
        self.show = show

    def log(self, message: str) -> None:
        if self.show:
            click.echo(message, err=True)

    def bar(self, label: str, total: int) -> AbstractContextManager[Callable[[int, int], None]]:
        return progress_bar(f"  {label}", total, self.show)


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("edgeadapt-demo"),
    show_default=True,
    help="Directory for the data, profiles, evaluations, plans and reports.",
)
@click.option("--runtime", default="onnxruntime", show_default=True, help="Backend to run on.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=None,
    help="Run the plan on only the first N test samples (default: all 2,500).",
)
@click.option(
    "--min-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=0.5,
    show_default=True,
    help="How long the profiler times each step.",
)
@click.option("--retrain", is_flag=True, help="Retrain the demo models from the seed (torch).")
@click.option("--force", is_flag=True, help="Rebuild every artefact instead of reusing it.")
@click.option("--json", "as_json", is_flag=True, help="Print every figure as one JSON object.")
def demo_cmd(
    out: Path,
    runtime: str,
    threads: int,
    samples: int | None,
    min_seconds: float,
    retrain: bool,
    force: bool,
    as_json: bool,
) -> None:
    """The main job on MNIST-1D: profile, evaluate, bound, plan, run and report.

    Uses the two bundles shipped in the package (a 4-exit 1D CNN and a family of
    logistic regression, MLP and CNN), generates MNIST-1D locally, measures every state
    on this device, computes the adaptive-oracle bounds, plans states and thresholds,
    runs the plan on the test split next to the static model, and writes report.html.
    Re-running reuses what is already built (--force rebuilds).
    """
    from edgeadapt.demo import run_demo

    result = run_demo(
        out,
        runtime=runtime,
        threads=threads,
        retrain=retrain,
        force=force,
        samples=samples,
        min_seconds=min_seconds,
        ui=_CliUI(show=not as_json),
    )
    if as_json:
        _emit_json(result.to_json())
    else:
        click.echo(render(result.to_json()))


COMMANDS = [demo_cmd]
