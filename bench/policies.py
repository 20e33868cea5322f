"""Exit policies side by side: ours and published early-exit rules, tuned on the same samples.

Every policy is tuned on the same calibration samples (`--calibration-samples`, default
10,000 fresh MNIST-1D samples) and scored on a disjoint pool of the rest (20,000), over
`--redraws` random redraws of which samples calibrate; costs are each state's profile p50
(measured here at the start, `edgeadapt.measure.profiler.profile_bundle`, or
`--profile`) plus the cascade's measured per-hop cost. Printed per policy: the mean oracle
gap closure ``(R_N - R_policy) / (R_N - R_oracle)`` on the scoring pool, and how often
its drop there exceeds `--max-drop` (net: the reference state's accuracy minus the
policy's; for the loss-promise plan, its losses).

Ours (`edgeadapt.planning.planner.make_plan`, Learn then Test, delta 0.05):

- ``plan`` (the default: thresholds, per-exit frontier or one shared threshold as the
  calibration half predicts, net-drop promise) and ``plan --promise loss``;
- ``gate`` (learned exit gates) and ``agreement`` (exit when the states run so far agree).

Published rules, re-implemented on every state of the bundle:

- ``CALM-style``: one shared max-prob threshold with the same Learn-then-Test control
  (the shared path alone, net promise; Schuster et al. 2022 calibrate one threshold);
- ``BranchyNet``: one shared entropy threshold (Teerapittayanon et al. 2016), ``SDN``: one
  shared max-prob threshold (Kaya et al. 2019), ``greedy per-exit``: each exit in turn
  takes the lowest threshold that keeps the drop within max_drop; all three tuned
  empirically (the drop met on the calibration samples, no promise);
- ``PABEE``: exit once the prediction has not changed for `patience` exits (Zhou et al.
  2020), the smallest patience meeting max_drop on the calibration samples.

    python bench/policies.py [--model multiexit|resnet] [--redraws 60] [--max-drop 0.005]
                             [--calibration-samples 10000] [--pool 30000] [--profile PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeadapt.data.mnist1d import CALIBRATION_SEED, mnist1d_calibration, mnist1d_splits
from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.chains import Layout
from edgeadapt.formats.profile import Profile, load_profile, state_costs
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.oracle.equations import exact_oracle
from edgeadapt.planning.calibrate import NEVER, calibrate, exit_states
from edgeadapt.planning.gates import fit_gates
from edgeadapt.planning.planner import (
    Outcomes,
    PlanCosts,
    PlanOptions,
    exit_costs,
    gap_closure,
    make_plan,
    simulate_plan,
)
from edgeadapt.planning.risk import risk_control
from edgeadapt.planning.stats import binom_cdf

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
#: A generation of its own: no sample of it trained or calibrated the shipped bundles.
POOL_SEED = CALIBRATION_SEED + 1
DELTA = 0.05

#: A policy tuned on (calibration outcomes, costs, max_drop): per scoring sample, the
#: kept state it exits at (indices into all states), as a function of the outcomes.
Tuned = Callable[[Outcomes], np.ndarray]


def _costs(bundle: Bundle, profile: Profile) -> tuple[np.ndarray, float]:
    """Each state's p50 (ms) and the cascade's per-hop cost (0 when not measured)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a profile from another machine
        costs = np.asarray(state_costs(profile, bundle))
    overhead = profile.cascade_overhead
    return costs, 0.0 if overhead is None else overhead.hop_ms


def _empirical_shared(scores: np.ndarray, ok: Callable[[np.ndarray], bool]) -> np.ndarray:
    """The lowest shared threshold (a score of the split) whose exits pass `ok`."""
    s = scores.shape[1]
    best = np.full(s - 1, NEVER)
    for tau in np.unique(scores[:, :-1])[::-1]:
        t = np.full(s - 1, tau)
        if not ok(exit_states(scores, t)):
            break
        best = t
    return best


def _greedy(conf: np.ndarray, ok: Callable[[np.ndarray], bool]) -> np.ndarray:
    """Each exit in turn takes the lowest threshold that keeps `ok` (later ones never)."""
    s = conf.shape[1]
    t = np.full(s - 1, NEVER)
    for i in range(s - 1):
        for tau in np.unique(conf[:, i])[::-1]:
            trial = t.copy()
            trial[i] = tau
            if not ok(exit_states(conf, trial)):
                break
            t = trial
    return t


def _pabee_states(pred: np.ndarray, patience: int) -> np.ndarray:
    """PABEE's exit per sample: the first exit whose prediction has held for
    `patience` exits in a row (the last state otherwise)."""
    n, s = pred.shape
    state = np.full(n, s - 1)
    run = np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    for i in range(1, s - 1):
        run = np.where(pred[:, i] == pred[:, i - 1], run + 1, 0)
        hit = ~done & (run >= patience)
        state[hit], done = i, done | hit
    return state


def baselines(
    calib: Outcomes, evaluation: dict, rows: np.ndarray, reference: int, max_drop: float
) -> dict[str, Tuned]:
    """The published rules tuned on the calibration rows `rows` of `evaluation`."""
    correct = calib.correct
    n = calib.n
    ref = correct[:, reference]

    def ok(state: np.ndarray) -> bool:
        return float(ref.mean() - correct[np.arange(n), state].mean()) <= max_drop

    entropy = evaluation["entropy"][rows]
    maxprob = evaluation["maxprob"][rows]
    pred = evaluation["pred"][rows]
    t_entropy = _empirical_shared(entropy, ok)
    t_maxprob = _empirical_shared(maxprob, ok)
    t_greedy = _greedy(maxprob, ok)
    patience = next(
        (p for p in range(1, pred.shape[1] - 1) if ok(_pabee_states(pred, p))), pred.shape[1]
    )
    return {
        "BranchyNet (shared entropy)": lambda o: exit_states(o.gate_inputs.entropy, t_entropy),
        "SDN (shared max-prob)": lambda o: exit_states(o.gate_inputs.maxprob, t_maxprob),
        "greedy per-exit": lambda o: exit_states(o.gate_inputs.maxprob, t_greedy),
        "PABEE (patience)": lambda o: _pabee_states(o.pred, patience),
    }


def calm(
    calib: Outcomes, held: Outcomes, cost: np.ndarray, reference: int, max_drop: float
) -> Tuned:
    """One shared max-prob threshold, Learn then Test (the shared path alone)."""
    got = risk_control(
        (calib.conf, calib.correct, calib.correct[:, reference]),
        (held.conf, held.correct, held.correct[:, reference]),
        cost,
        max_drop=max_drop,
        delta=DELTA,
        promise="net",
        kinds=("shared",),
    )
    return lambda o: exit_states(o.conf, got.thresholds)


def _figures(
    score: Outcomes,
    reference: int,
    costs: np.ndarray,
    state: np.ndarray,
    kept: tuple[int, ...],
    pay: np.ndarray,
) -> tuple[float, float, float]:
    """A policy's gap closure, net drop and loss rate on the scoring samples, each
    sample exiting at kept state `state` and paying `pay` there."""
    right = score.correct[np.arange(score.n), np.asarray(kept)[state]]
    ref = score.correct[:, reference]
    r_oracle = exact_oracle(score.correct, costs).r_oracle
    gap = gap_closure(float(costs[-1]), float(pay[state].mean()), r_oracle) or 0.0
    return gap, float(ref.mean() - right.mean()), float(np.mean(ref & ~right))


def redraw(
    r: int,
    pool: Outcomes,
    evaluation: dict,
    costs: np.ndarray,
    hop: float,
    bundle: Bundle,
    args: argparse.Namespace,
) -> dict[str, tuple[float, float, float]]:
    """Every policy tuned on redraw `r`'s calibration samples, scored on the rest."""
    order = np.random.default_rng(r).permutation(pool.n)
    rows = np.sort(order[: args.calibration_samples])
    score = pool.take(np.sort(order[args.calibration_samples :]))
    cal = pool.take(rows)
    calib, held = cal.split(0.5, seed=r)
    reference = int(np.argmax(cal.correct.mean(axis=0)))
    every = tuple(range(len(costs)))
    cost = exit_costs(costs, every, bundle.cost_layout, hop)
    out = {}
    for name, options in (
        ("plan (default: threshold, net promise)", {}),
        ("plan --promise loss", {"promise": "loss"}),
        ("plan --policy gate", {"policy": "gate"}),
        ("plan --policy agreement", {"policy": "agreement"}),
    ):
        plan = make_plan(
            calib,
            held,
            PlanCosts(costs, hop_overhead_ms=hop),
            manifest_sha256=bundle.manifest_sha256,
            kind=bundle.kind,
            options=PlanOptions(max_drop=args.max_drop, delta=DELTA, **options),
            chains=bundle.chains,
        )
        pay = exit_costs(costs, plan.states, bundle.cost_layout, plan.hop_overhead_ms)
        state = simulate_plan(plan, score).exit_state
        out[name] = _figures(score, reference, costs, state, plan.states, pay)
    rule = calm(calib, held, cost, reference, args.max_drop)
    out["CALM-style (shared max-prob, Learn then Test)"] = _figures(
        score, reference, costs, rule(score), every, cost
    )
    for name, rule in baselines(cal, evaluation, rows, reference, args.max_drop).items():
        out[name + ", empirical"] = _figures(score, reference, costs, rule(score), every, cost)
    return out


def ceiling(
    pool: Outcomes, costs: np.ndarray, hop: float, layout: Layout, max_drop: float, n_test: int
) -> str:
    """What limits the promise: per-exit thresholds and gates fitted on the whole pool and
    scored on it (in-sample: optimistic) at the loss rate the binomial test on `n_test`
    held-out samples can pass at the most."""
    passing = [k for k in range(n_test + 1) if binom_cdf(k, n_test, max_drop) <= DELTA]
    if not passing:
        return f"no loss rate passes a {n_test}-sample test at {max_drop:.2%}: no ceiling"
    passable = max(passing) / n_test
    every = tuple(range(len(costs)))
    cost = exit_costs(costs, every, layout, hop)
    ref = pool.correct[:, int(np.argmax(pool.correct.mean(axis=0)))]
    kept = pool.correct | ~ref[:, None]
    r_oracle = exact_oracle(pool.correct, costs).r_oracle
    gaps = []
    for scores in (
        pool.conf,
        pool.scores(every, "gate", fit_gates(pool.gate_inputs, pool.correct, ref)),
    ):
        t = calibrate(scores, kept, cost, max_drop=passable, reference_accuracy=1.0).thresholds
        gaps.append(
            gap_closure(float(costs[-1]), float(cost[exit_states(scores, t)].mean()), r_oracle)
        )
    return (
        f"in-sample ceiling at the loss rate a {n_test}-sample test passes ({passable:.2%}), "
        f"fitted and scored on the whole pool: per-exit thresholds {gaps[0]:.3f}, gates {gaps[1]:.3f}"
    )


def evaluate_pool(bundle: Bundle, n: int) -> dict:
    """Every state on `n` fresh MNIST-1D samples: labels, predictions, each measure."""
    data = mnist1d_calibration(n, seed=POOL_SEED)
    ev = evaluate_bundle(bundle, data.x, data.y, threads=1)
    return {
        "labels": ev.labels,
        "pred": ev.pred,
        "maxprob": ev.conf,
        "margin": ev.conf_margin,
        "entropy": ev.conf_entropy,
        "outcomes": Outcomes.from_evaluation(ev),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["multiexit", "resnet"], default="multiexit")
    ap.add_argument("--redraws", type=int, default=60)
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--calibration-samples", type=int, default=10_000)
    ap.add_argument("--pool", type=int, default=30_000, help="fresh samples, calibration included")
    ap.add_argument("--profile", type=Path, help="state costs from this profile (default: measure)")
    args = ap.parse_args()
    if args.pool <= args.calibration_samples:
        sys.exit("--pool must exceed --calibration-samples")

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgeadapt-policies-") as tmp:
        if args.model == "resnet":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from gates import resnet_bundle

            bundle, _ = resnet_bundle(mnist1d_splits(), Path(tmp))
        else:
            bundle = load_bundle(BUNDLE)
        profile = (
            load_profile(args.profile, bundle)
            if args.profile
            else profile_bundle(bundle, timing=TimingOptions(min_seconds=1.0))
        )
        costs, hop = _costs(bundle, profile)
        evaluation = evaluate_pool(bundle, args.pool)
    pool: Outcomes = evaluation["outcomes"]
    print(
        f"{bundle.path.name}: {args.calibration_samples} calibration samples, "
        f"{args.pool - args.calibration_samples} scoring samples, {args.redraws} redraws, "
        f"max drop {args.max_drop:.2%}"
    )
    print(f"state accuracy (pool): {np.round(pool.correct.mean(axis=0), 4).tolist()}")
    print(f"state cost ms (p50): {np.round(costs, 4).tolist()}, per hop {hop:.4f} ms")

    results: dict[str, list[tuple[float, float, float]]] = {}
    for r in range(args.redraws):
        for name, figures in redraw(r, pool, evaluation, costs, hop, bundle, args).items():
            results.setdefault(name, []).append(figures)
        print(
            f"  redraw {r + 1}/{args.redraws} done ({time.monotonic() - start:.0f} s)", flush=True
        )

    print(f"\n{'policy':<48} {'gap closure':>11} {'violations':>10} {'mean drop':>9}")
    for name, values in results.items():
        a = np.asarray(values)
        bound = a[:, 2] if "loss" in name else a[:, 1]
        print(
            f"{name:<48} {a[:, 0].mean():>11.3f} {np.mean(bound > args.max_drop):>10.0%} "
            f"{a[:, 1].mean():>+9.2%}"
        )
    print(
        ceiling(pool, costs, hop, bundle.cost_layout, args.max_drop, args.calibration_samples // 2)
    )
    print(f"({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
