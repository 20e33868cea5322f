"""The profiler under load: the steps and the whole model timed in interleaved rounds, the
ratio of the full path to the whole model with its spread, and the plan's verdict against
the static model, the same quiet and beside a busy neighbour."""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import edgeadapt.measure.profiler as profiler
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.profile import MIN_SAMPLES, Ratio, StepStats
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.planning.planner import Outcomes, PlanCosts, make_plan, profile_costs
from tests.scripts import script_module

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"


class LoadedClock:
    """A nanosecond clock that moves only when a fake run is called: `cost_ms` per call,
    `factor` times that once `arrives_s` seconds have passed (a neighbour arriving)."""

    def __init__(self, monkeypatch, arrives_s, factor):
        self.now = 0
        self.arrives = int(arrives_s * 1e9)
        self.factor = factor
        monkeypatch.setattr(profiler.time, "perf_counter_ns", lambda: self.now)

    def run(self, cost_ms):
        def call():
            loaded = self.now >= self.arrives
            self.now += int(cost_ms * 1e6 * (self.factor if loaded else 1))

        return call


def _p50_ratio(samples):
    """The full path's p50 cost (the sum of the steps') over the whole model's."""
    stats = [StepStats.from_ns(s) for s in samples]
    return sum(s.p50 for s in stats[:-1]) / stats[-1].p50


def test_a_neighbour_arriving_mid_profile_hits_steps_and_whole_model_alike(monkeypatch):
    """Three 0.1 ms steps and a 0.27 ms whole model (1.11x), a neighbour that slows every
    call 3x arriving half-way: timed apart, the whole model after the steps, the profile
    would read 0.37x (the steps quiet, the whole model loaded); interleaved it reads 1.11x
    in every round and in the p50s."""
    clock = LoadedClock(monkeypatch, arrives_s=0.2, factor=3.0)
    chain = [clock.run(0.1) for _ in range(3)]
    whole = [clock.run(0.27)]
    stop = profiler._Stop(None, 0.1 * 4, budget=False)  # 0.1 s per run: 0.4 s in all
    timed = profiler._time_rounds([chain, whole], warmup=2, stop=stop)
    ratio = profiler._full_over_whole("early-exit", timed.rounds)
    assert ratio.rounds > 10
    assert ratio.median == pytest.approx(0.3 / 0.27, rel=1e-3)
    assert _p50_ratio(timed.samples) == pytest.approx(0.3 / 0.27, rel=0.02)
    assert clock.now > clock.arrives  # the neighbour did arrive while the profile ran

    clock.now = 0  # the same, the steps timed first and the whole model after them
    steps = profiler._time_rounds([chain], 2, profiler._Stop(None, 0.3, budget=False))
    alone = profiler._time_rounds([whole], 2, profiler._Stop(None, 0.1, budget=False))
    apart = _p50_ratio([*steps.samples, *alone.samples])
    assert apart == pytest.approx(0.3 / 0.81, rel=0.02)


def test_rounds_alternate_units_in_blocks_and_refill_between_them(monkeypatch):
    clock = LoadedClock(monkeypatch, arrives_s=1e9, factor=1.0)
    log = []

    def unit(name, cost_ms):
        run = clock.run(cost_ms)
        return lambda: (log.append(name), run())

    monkeypatch.setattr(profiler, "BLOCK_SECONDS", 0.003)  # 3 iterations of a 1 ms unit
    units = [[unit("a", 0.5), unit("b", 0.5)], [unit("w", 0.8)]]
    timed = profiler._time_rounds(units, warmup=1, stop=profiler._Stop(12, 0.0, budget=False))
    assert [s.size for s in timed.samples] == [12, 12, 12]
    assert timed.rounds.shape == (4, 3)
    warm = ["a", "b", "w"]
    # a block: one untimed iteration, then three timed ones; who goes first alternates
    chain_block = ["a", "b"] * 4
    whole_block = ["w"] * 4
    one = chain_block + whole_block
    other = whole_block + chain_block
    assert log == warm + one + other + one + other


def test_one_unit_takes_no_refill_calls(monkeypatch):
    clock = LoadedClock(monkeypatch, arrives_s=1e9, factor=1.0)
    calls = []
    run = clock.run(1.0)
    timed = profiler._time_rounds(
        [[lambda: (calls.append(1), run())]], 0, profiler._Stop(MIN_SAMPLES, 0.0, budget=False)
    )
    assert len(calls) == timed.samples[0].size == MIN_SAMPLES


@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=50))
def test_ratio_spread_is_ordered_and_counts_rounds(values):
    r = Ratio.from_rounds(np.asarray(values))
    assert r.p10 <= r.median <= r.p90
    assert min(values) - 1e-6 <= r.p10  # (rounded to 6 decimals, as saved)
    assert r.p90 <= max(values) + 1e-6
    assert r.rounds == len(values)


def test_ensemble_ratio_is_the_last_member_over_the_whole_model():
    rounds = np.array([[1.0, 2.0, 4.0, 4.0], [1.0, 2.0, 6.0, 3.0]])
    assert profiler._full_over_whole("ensemble", rounds).median == pytest.approx(1.5)
    assert profiler._full_over_whole("early-exit", rounds).median == pytest.approx(
        (7 / 4 + 9 / 3) / 2
    )


# ------------------------------------------------------------------ beside a busy neighbour


def _outcomes(n, seed, exit0_right):
    """Four states; state 0 right (and confident) on `exit0_right` of the samples, the
    last state on all of them, the middle ones in between; confidences that tell state
    0's right answers from its wrong ones."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < exit0_right
    correct = np.ones((n, 4), dtype=bool)
    correct[:, 0] = easy
    correct[:, 1] = easy & (rng.random(n) < 0.6)
    correct[:, 2] = easy & (rng.random(n) < 0.8)
    conf = np.full((n, 4), 0.5, dtype=np.float32)
    conf[:, 0] = np.where(easy, 0.95, 0.2) + rng.uniform(-0.02, 0.02, n)
    return Outcomes(("exit0", "exit1", "exit2", "exit3"), correct, conf.astype(np.float32))


def _verdicts(profile, bundle):
    """A plan that exits nearly every input at state 0 (it beats the static model ~3x),
    and one whose data support no promise (it keeps the static model): each plan's
    states and its verdict against the static model."""
    costs = profile_costs(profile, bundle)
    out = []
    for n, exit0_right in ((4000, 0.995), (40, 0.5)):
        plan = make_plan(
            _outcomes(n, 1, exit0_right),
            _outcomes(n, 2, exit0_right),
            PlanCosts(
                costs.state_ms, static_ms=costs.static_ms, hop_overhead_ms=costs.hop_overhead_ms
            ),
            manifest_sha256=bundle.manifest_sha256,
        )
        out.append((plan.state_names, plan.beats_static, plan.keeps_static))
    return out


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_the_plans_verdict_is_the_same_beside_a_busy_neighbour():
    """The shipped multi-exit bundle profiled quiet and with a process spinning on the
    very core the profiler runs on (it gets about half of it): the plans' verdicts are
    the same."""
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    quiet = profile_bundle(bundle, timing=TimingOptions(min_seconds=0.1))
    mask = os.sched_getaffinity(0)
    core = min(mask)
    with script_module("bench/spin.py", "bench_spin") as spin:
        try:
            os.sched_setaffinity(0, {core})
            with spin.hog(core, seconds=60.0):
                loaded = profile_bundle(bundle, timing=TimingOptions(min_seconds=0.1))
        finally:
            os.sched_setaffinity(0, mask)
    assert (
        _verdicts(quiet, bundle)
        == _verdicts(loaded, bundle)
        == [
            (("exit0", "exit3"), True, False),
            (("exit3",), False, True),
        ]
    )
    assert loaded.full_over_whole[1].rounds >= 1
