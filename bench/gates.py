"""Threshold policy against learned exit gates on the shipped MNIST-1D multi-exit bundle.

The bundle is evaluated on the calibration and test splits of `mnist1d_splits()` (its
training seed). Each plan is made as `edgeadapt plan` makes it: the calibration
evaluation cut into a calibration and a held-out half (`--seeds` cuts), thresholds
risk-controlled (Learn then Test) at `--max-drop` with `--delta`. Printed per plan: the
held-out gap closure ``(R_N - R_policy) / (R_N - R_oracle)`` and drop, and the same on
the test split, which neither the fit nor the test saw. Costs are a profile's p50 per
state (default: the shipped x86 onnxruntime reference profile); gap closure depends on
their ratios only.

    python bench/gates.py [--max-drop 0.005 0.01 0.02] [--seeds 5] [--profile PATH]
                          [--calibration risk|empirical]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from edgeadapt.bundle import load_bundle
from edgeadapt.datasets import mnist1d_splits
from edgeadapt.evaluate import evaluate_bundle
from edgeadapt.oracle import exact_oracle
from edgeadapt.planner import Outcomes, gap_closure, make_plan, simulate_plan
from edgeadapt.profile import load_profile, state_costs

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "edgeadapt" / "data" / "bundles" / "mnist1d-multiexit"
PROFILE = ROOT / "profiles" / "reference" / "mnist1d-multiexit-x86-ort-1t.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-drop", type=float, nargs="+", default=[0.005, 0.01, 0.02])
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, default=5, help="calibration/held-out cuts per setting")
    ap.add_argument("--profile", type=Path, default=PROFILE)
    ap.add_argument(
        "--calibration",
        choices=["risk", "empirical"],
        default="risk",
        help="empirical: thresholds meet max_drop on the calibration half only (no promise)",
    )
    args = ap.parse_args()

    bundle = load_bundle(BUNDLE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a reference profile from another machine
        costs = np.asarray(state_costs(load_profile(args.profile, bundle), bundle))
    splits = mnist1d_splits()
    evaluation = {
        name: Outcomes.from_evaluation(evaluate_bundle(bundle, split.x, split.y, threads=1))
        for name, split in (("calibration", splits.calibration), ("test", splits.test))
    }
    test = evaluation["test"]
    r_oracle_test = exact_oracle(test.correct, costs).r_oracle
    print(f"state accuracy (test): {np.round(test.correct.mean(axis=0), 4).tolist()}")
    print(f"state cost ms: {np.round(costs, 4).tolist()}")
    print(
        f"{'max_drop':>8} {'policy':>9} {'held-out gap':>12} {'drop':>7} "
        f"{'test gap':>8} {'drop':>7} {'promised':>8}"
    )
    for max_drop in args.max_drop:
        means: dict[str, list[tuple[float, float]]] = {"threshold": [], "gate": []}
        for seed in range(args.seeds):
            calib, held = evaluation["calibration"].split(heldout=0.5, seed=seed)
            for policy in ("threshold", "gate"):
                plan = make_plan(
                    calib,
                    held,
                    costs,
                    manifest_sha256=bundle.manifest_sha256,
                    kind=bundle.kind,
                    max_drop=max_drop,
                    delta=args.delta,
                    calibration=args.calibration,
                    policy=policy,
                )
                run = simulate_plan(plan, test)
                test_ref = float(test.correct[:, plan.reference_state].mean())
                test_gap = gap_closure(float(costs[-1]), run.expected_cost, r_oracle_test)
                held_gap = plan.gap_closure or 0.0
                means[policy].append((held_gap, test_gap or 0.0))
                promised = plan.promise is not None and plan.promise.holds
                print(
                    f"{max_drop:>8} {policy:>9} {held_gap:>12.3f} {plan.heldout.drop:>+7.4f} "
                    f"{test_gap or 0.0:>8.3f} {test_ref - run.accuracy:>+7.4f} "
                    f"{'yes' if promised else 'no':>8}"
                )
        for policy, values in means.items():
            held_mean, test_mean = np.mean(values, axis=0)
            print(
                f"{max_drop:>8} {policy:>9} mean over {args.seeds} cuts: held-out gap closure "
                f"{held_mean:.3f}, test {test_mean:.3f}"
            )


if __name__ == "__main__":
    main()
