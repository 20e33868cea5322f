"""Deadline misses under a latency budget, with and without a CPU-hogging neighbour.

The shipped MNIST-1D demo bundle runs on ONNX Runtime CPU (1 thread) with one threshold
for every exit, its policy seeded by a profile measured at the start of the run (batch 1,
per step at each cost percentile asked for, p50, p90 and p99 by default: what `plan
--cost-percentile` plans with), which it keeps tracking in the costs it measures, and the
profile's per-hop cascade overhead counted against the budget. For a few budgets between the first
state's cost and the full path's (and one well above it), `predict(x, budget_ms=B)` runs
on MNIST-1D test samples one at a time (batch 1); a call misses its deadline when its
measured total latency (wall time around `predict`) exceeds B. Each condition gets a
freshly loaded, warmed-up model, so the policy starts from the same profile.

The neighbour is a subprocess that spins on the same core as the benchmark (both pinned
to it where the OS allows), started before and stopped after each hogged condition, and
bounded in time by its own deadline in case the benchmark dies; it runs once at the
benchmark's priority and once at niceness 19. Prints, per budget and
condition: miss rate; the share of calls the scheduler preempted (wall time more than
`PREEMPTED_MS` beyond the thread's CPU time: the neighbour ran in the middle of the call,
for a time slice of milliseconds that no choice of state can absorb) and the miss rate of
the calls it did not; accuracy, mean exit state, share of budget exits, p50/p99 latency
and, at the end, the policy's learned cost of the full path (the tracked percentile).

    python bench/deadline.py [--samples 1000] [--threshold 0.9] [--percentiles p50,p90]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from time import perf_counter_ns, thread_time_ns

import numpy as np

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.data.mnist1d import DEFAULT_SEED, mnist1d_splits
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.profile import Profile
from edgeadapt.measure.profiler import TimingOptions, profile_bundle

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spin import hog  # a script beside this one

DEMO = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
OPTIONS = {"threads": 1}
# Wall time beyond the thread's CPU time that marks a call as preempted (the scheduler
# ran the neighbour in its middle): far above the clock reads' own few microseconds.
PREEMPTED_MS = 0.05
# The conditions: no neighbour, one spinning at the benchmark's own priority, and one at
# niceness 19 (how a background job should be run beside a latency-bound one).
NEIGHBOURS = (("none", 0), ("spinning", 0), ("nice 19", 19))


def run_condition(
    profile: Profile, stat: str, x: np.ndarray, y: np.ndarray, threshold: float, budget: float
) -> dict[str, float]:
    with AdaptiveModel.load(
        DEMO,
        thresholds=threshold,
        profile=profile,
        cost_stat=stat,
        runtime_options=OPTIONS,
        warmup=5,
    ) as m:
        lat = np.empty(len(x))
        off_cpu = np.empty(len(x))
        pred = np.empty(len(x), dtype=np.int64)
        state = np.empty(len(x), dtype=np.int64)
        stopped = np.empty(len(x), dtype=np.bool_)
        for i in range(len(x)):
            row = x[i : i + 1]
            c = thread_time_ns()
            t = perf_counter_ns()
            out = m.predict(row, budget_ms=budget)
            wall = perf_counter_ns() - t
            off_cpu[i] = max(0, wall - (thread_time_ns() - c)) / 1e6
            lat[i] = wall / 1e6
            pred[i], state[i], stopped[i] = out.pred[0], out.exit_state[0], out.budget_exit[0]
        learned = float(sum(m.policy.costs_ms))
    miss = lat > budget
    # a call that lost the CPU for longer than its budget's slack missed whatever it ran
    preempted = off_cpu > PREEMPTED_MS
    return {
        "miss": float(miss.mean()),
        "preempted": float(preempted.mean()),
        "miss_running": float(miss[~preempted].mean()) if (~preempted).any() else 0.0,
        "acc": float((pred == y).mean()),
        "state": float(state.mean()),
        "budget_exit": float(stopped.mean()),
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "learned": learned,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000, help="test samples per condition")
    ap.add_argument("--threshold", type=float, default=0.9, help="exit threshold, every exit")
    ap.add_argument(
        "--percentiles", default="p50,p90,p99", help="cost percentiles the policy plans with"
    )
    args = ap.parse_args()
    stats = [s.strip() for s in args.percentiles.split(",") if s.strip()]

    try:  # pin to one core so that the neighbour competes for exactly that core
        core: int | None = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        core = None
    test = mnist1d_splits(DEFAULT_SEED).test
    x, y = test.x[: args.samples], test.y[: args.samples]
    bundle = load_bundle(DEMO)
    profile = profile_bundle(bundle, threads=1, timing=TimingOptions(iters=200, warmup=20))
    cum = np.cumsum([float(s.get("p50")) for s in profile.step_stats(1)])
    budgets = [1.25 * c for c in cum] + [3.0 * cum[-1]]
    print(
        f"{DEMO.name}, onnxruntime 1 thread, threshold {args.threshold} at every exit, "
        f"{len(x)} MNIST-1D test samples at batch 1 per condition; pinned to core {core}"
    )
    print("profiled state costs (ms, cumulative p50): " + ", ".join(f"{c:.3f}" for c in cum))
    print(
        f"{'budget ms':>9} {'costs':>5} {'neighbour':>9} {'miss %':>7} {'preempted %':>11} "
        f"{'miss % unpreempted':>18} {'acc %':>6} {'mean state':>10} {'budget exits %':>14} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'learned full ms':>15}"
    )
    seconds = 60.0 + 0.01 * len(x)  # far above one condition's run time
    for budget in budgets:
        for stat in stats:
            for neighbour, nice in NEIGHBOURS:
                if neighbour == "none":
                    r = run_condition(profile, stat, x, y, args.threshold, budget)
                else:
                    with hog(core, seconds, nice):
                        r = run_condition(profile, stat, x, y, args.threshold, budget)
                print(
                    f"{budget:9.3f} {stat:>5} {neighbour:>9} "
                    f"{100 * r['miss']:7.1f} {100 * r['preempted']:11.1f} "
                    f"{100 * r['miss_running']:18.1f} {100 * r['acc']:6.1f} {r['state']:10.2f} "
                    f"{100 * r['budget_exit']:14.1f} {r['p50']:7.3f} {r['p99']:7.3f} "
                    f"{r['learned']:15.3f}"
                )


if __name__ == "__main__":
    main()
