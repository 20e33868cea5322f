"""The profile's comparison with the static model, quiet and beside a busy neighbour.

For each shipped demo bundle (ONNX Runtime CPU, 1 thread, batch 1), `profile_bundle` is
run `--repeats` times in each of three conditions: quiet; beside a neighbour spinning on
the very core the benchmark is pinned to (`spin.hog`: it takes about half of it) for the
whole profile; and with that neighbour arriving half-way through the profile. Each
profile is taken two ways: as the profiler times it, the whole model in the same
interleaved rounds as the steps (``interleaved``), and as it timed them before, the
steps first and the whole model after them, each unit in a window of its own
(``apart``, the same timing code called once per unit). Printed per profile: R_N over
the whole model from the p50s the planner reads, the interleaved rounds' median and
10th-90th percentile of that ratio, and the verdict of the plan made on it from the
demo's calibration evaluation (the default `edgeadapt.planning.planner.PlanOptions`): the kept states
and whether it beats the static model. Target: the interleaved verdicts identical in
every condition.

    python bench/profile_load.py [--repeats 3] [--min-seconds 0.5] [--bundle NAME ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

import edgeadapt.measure.profiler as profiler
from edgeadapt.data.mnist1d import calibration_samples, mnist1d_splits
from edgeadapt.demo.pipeline import BUNDLES
from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.evaluation import Evaluation
from edgeadapt.formats.profile import Profile
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.planning.planner import plan_bundle, profile_costs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spin import hog  # a script beside this one

ROOT = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
CONDITIONS = ("quiet", "spinning", "arriving")
REAL_ROUNDS = profiler._time_rounds


def _apart(units, warmup, stop, tick):
    """`_time_rounds` as the profiler timed before: each unit in a window of its own, one
    after the other, with its runs' share of the time (one 'round' of the units' medians,
    for the ratio's shape)."""
    runs = sum(len(unit) for unit in units)
    parts = [
        REAL_ROUNDS(
            [unit], warmup, profiler._Stop(stop.iters, stop.seconds * len(unit) / runs, stop.budget)
        )
        for unit in units
    ]
    samples = [s for part in parts for s in part.samples]
    medians = np.asarray([[float(np.median(s)) for s in samples]])
    tick(1.0)
    return profiler._Timed(samples, medians)


@contextmanager
def neighbour(condition: str, core: int | None, after_s: float) -> Iterator[None]:
    """No neighbour, one spinning on `core` throughout, or one arriving after `after_s`."""
    if condition == "quiet":
        yield
        return
    if condition == "spinning":
        with hog(core, 120.0):
            yield
        return
    arrived = threading.Event()
    done = threading.Event()

    def arrive() -> None:
        if not done.wait(after_s):
            with hog(core, 120.0):
                arrived.set()
                done.wait()

    thread = threading.Thread(target=arrive)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def verdict(bundle: Bundle, profile: Profile, evaluation: Evaluation) -> str:
    """The plan `edgeadapt plan` makes on this profile: its states and its verdict."""
    costs = profile_costs(profile, bundle)
    plan = plan_bundle(bundle, evaluation, replace(costs, runtime=None))
    said = (
        "is the static model"
        if plan.keeps_static
        else ("beats it" if plan.beats_static else "does NOT beat it")
    )
    return f"{'+'.join(plan.state_names)}: {said}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="profiles per condition and way")
    ap.add_argument("--min-seconds", type=float, default=0.5, help="profiler time per step")
    ap.add_argument("--bundle", nargs="+", default=list(BUNDLES), help="shipped bundle names")
    args = ap.parse_args()
    try:  # pin to one core so that the neighbour competes for exactly that core
        core: int | None = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        core = None
    calib = calibration_samples(mnist1d_splits())
    print(f"pinned to core {core}; ONNX Runtime 1 thread, batch 1, min_seconds {args.min_seconds}")
    print(
        f"{'bundle':<18} {'way':<11} {'neighbour':<9} {'R_N/whole p50s':>14} "
        f"{'per round median [p10-p90]':>27}  plan"
    )
    for name in args.bundle:
        bundle = load_bundle(ROOT / name)
        evaluation = evaluate_bundle(bundle, calib.x, calib.y, threads=1)
        units = len(bundle.steps) + 1
        verdicts: dict[str, set[str]] = {"interleaved": set(), "apart": set()}
        for way in verdicts:
            profiler._time_rounds = REAL_ROUNDS if way == "interleaved" else _apart
            for condition in CONDITIONS:
                for _ in range(args.repeats):
                    with neighbour(condition, core, args.min_seconds * units / 2):
                        prof = profiler.profile_bundle(
                            bundle, timing=profiler.TimingOptions(min_seconds=args.min_seconds)
                        )
                    full = profile_costs(prof, bundle).state_ms[-1]
                    p50 = full / prof.whole_stats(1).p50
                    r = prof.full_over_whole[1]
                    rounds = (
                        f"{r.median:.2f}x [{r.p10:.2f}-{r.p90:.2f}] x{r.rounds}"
                        if way == "interleaved"
                        else "-"
                    )
                    said = verdict(bundle, prof, evaluation)
                    verdicts[way].add(said)
                    print(f"{name:<18} {way:<11} {condition:<9} {p50:13.2f}x {rounds:>27}  {said}")
        profiler._time_rounds = REAL_ROUNDS
        for way, seen in verdicts.items():
            target = ("met" if len(seen) == 1 else "MISSED") if way == "interleaved" else "-"
            print(f"{name}: {way}: {len(seen)} distinct verdict(s) (target: {target})")


if __name__ == "__main__":
    main()
