"""A promised cascade of the 15 ImageNet models: real predictions, measured milliseconds.

    python examples/imagenet-on-device/cascade.py [--summary measured/summary.json]
                          [--max-drop 0.005 0.01] [--seeds 3] [--promise net|loss]

The shipped predictions have no confidences, so no confidence threshold can be planned;
the agreement policy needs none: run cheap models first and answer when they agree,
else run a larger one (`edgeadapt plan --policy agreement`). The models are ordered
cheapest first by their measured p50 (`measured/summary.json`, written by `run.py`: ONNX
Runtime, 1 thread, on the device described there), each cascade step paying the models
run so far. Each plan is made as `edgeadapt plan` makes it: the 50,000 validation images
cut in a calibration half (subsets, agreement thresholds, the path and test to use) and
a held-out half (Learn then Test), with the net-drop promise against the most accurate
model, swin_base_patch4_window7_224 (accuracy drop <= max_drop on new images drawn alike,
with probability >= 95%). The figures are the held-out half's; `--seeds` cuts the images
again to show their spread.

The plans are not written to disk: a family bundle runs its members in its own order,
and `run.py`'s bundle lists them in another; export the family cheapest first
(`edgeadapt export family` in this order) to deploy one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.formats.evaluation import Evaluation, from_predictions_npz
from edgeadapt.planning.planner import Outcomes, PlanOptions, make_plan

HERE = Path(__file__).resolve().parent
PREDICTIONS = HERE.parent / "imagenet-val-predictions" / "predictions.npz"
SUMMARY = HERE / "measured" / "summary.json"
#: Most models a cascade keeps: four find the same cascades on these predictions and
#: take about ten times as long to search.
MAX_STATES = 3


def measured_ms(summary: Path) -> dict[str, float]:
    """Each model's measured p50 (ms) from a `run.py` summary."""
    doc = json.loads(summary.read_text(encoding="utf-8"))
    return {s["name"]: float(s["p50_ms"]) for s in doc["states"]}


def plan_cascades(
    evaluation: Evaluation,
    ms: dict[str, float],
    *,
    max_drops: Sequence[float] = (0.005, 0.01),
    seeds: Sequence[int] = (0,),
    max_states: int = MAX_STATES,
    delta: float = 0.05,
    promise: str = "net",
) -> dict[str, Any]:
    """Agreement plans of the models in `evaluation`, ordered cheapest first by `ms`, at
    each max drop and split seed; their held-out figures against the most accurate
    model run alone."""
    names = sorted(evaluation.names, key=lambda n: (ms[n], n))
    outcomes = Outcomes.from_evaluation(evaluation.select(names))
    cost = np.array([ms[n] for n in names])
    # a stand-in identity: the plans are reported, not written for a bundle
    sha = hashlib.sha256("\n".join(names).encode()).hexdigest()
    plans = []
    for max_drop in max_drops:
        for seed in seeds:
            calib, held = outcomes.split(0.5, seed=seed)
            plan = make_plan(
                calib,
                held,
                cost,
                manifest_sha256=sha,
                kind="ensemble",
                options=PlanOptions(
                    policy="agreement",
                    max_states=max_states,
                    max_drop=max_drop,
                    delta=delta,
                    promise=promise,
                ),
            )
            top = float(cost[plan.reference_state])
            p = plan.promise
            plans.append(
                {
                    "max_drop": max_drop,
                    "seed": seed,
                    "states": list(plan.state_names),
                    "thresholds": list(plan.thresholds),
                    "reference": names[plan.reference_state],
                    "reference_ms": top,
                    "cost_ms": plan.heldout.cost_ms,
                    "speedup": top / plan.heldout.cost_ms,
                    "drop": plan.heldout.drop,
                    "losses": None if p is None else p.losses,
                    "gains": None if p is None else p.gains,
                    "test": None if p is None else p.method,
                    "statement": plan.statement,
                }
            )
    return {"order": names, "ms": [float(c) for c in cost], "promise": promise, "plans": plans}


def cascade_text(result: dict[str, Any]) -> str:
    """The plans as a table, one row per max drop and seed."""
    lines = [
        f"agreement cascades, {result['promise']} drop promised at 95% (held-out halves):",
        f"{'max drop':>8} {'seed':>4} {'speedup':>7} {'ms':>7} {'drop':>7}  models (exit when they agree)",
    ]
    for p in result["plans"]:
        lines.append(
            f"{p['max_drop']:>8.3%} {p['seed']:>4} {p['speedup']:>6.2f}x {p['cost_ms']:>7.1f} "
            f"{p['drop']:>+7.2%}  {', '.join(p['states'])} (thresholds {p['thresholds']})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", type=Path, default=SUMMARY, help="run.py's summary.json.")
    parser.add_argument("--predictions", type=Path, default=PREDICTIONS)
    parser.add_argument("--max-drop", type=float, nargs="+", default=[0.005, 0.01])
    parser.add_argument("--seeds", type=int, default=1, help="held-out cuts per max drop")
    parser.add_argument("--promise", choices=["net", "loss"], default="net")
    parser.add_argument("--out", type=Path, help="Write the plans' figures as JSON here.")
    args = parser.parse_args(argv)
    result = plan_cascades(
        from_predictions_npz(args.predictions),
        measured_ms(args.summary),
        max_drops=args.max_drop,
        seeds=range(args.seeds),
        promise=args.promise,
    )
    print(cascade_text(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
