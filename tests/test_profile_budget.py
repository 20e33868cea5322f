"""The profiler's time budget per state (`seconds_per_state`, `profile --seconds-per-state`)
and its noise flag on the few samples a budget gives slow models."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgeadapt.measure.profiler as profile_mod
from edgeadapt.cli import cli
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.profile import MIN_SAMPLES, StepStats, load_profile
from edgeadapt.measure.profiler import TimingOptions, profile_bundle

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"


@pytest.fixture(scope="module")
def multiexit():
    return load_bundle(BUNDLES / "mnist1d-multiexit")


class FakeClock:
    """A nanosecond clock that moves only when a fake step runs (`cost_ms` per call)."""

    def __init__(self, monkeypatch):
        self.now = 0
        self.calls = 0
        monkeypatch.setattr(profile_mod.time, "perf_counter_ns", lambda: self.now)

    def step(self, cost_ms):
        def run():
            self.now += int(cost_ms * 1e6)
            self.calls += 1

        return run


def _budget(runs, warmup, seconds):
    """`_time_rounds` of one unit (`runs` called in turn) under a budget of `seconds` per run."""
    stop = profile_mod._Stop(None, seconds * len(runs), budget=True)
    return profile_mod._time_rounds([runs], warmup, stop).samples


def test_budget_bounds_warmup_and_timing(monkeypatch):
    clock = FakeClock(monkeypatch)
    # 10 ms calls, 1 s budget: warm-up stops after a fifth of it (20 calls, not 100)
    (samples,) = _budget([clock.step(10)], warmup=100, seconds=1.0)
    warm = clock.calls - samples.size
    assert warm == 20
    assert samples.size == 80  # the rest of the budget
    assert clock.now == pytest.approx(1e9, abs=10e6)
    assert np.all(samples == 10_000_000)


def test_budget_keeps_the_floor_of_samples_for_slow_calls(monkeypatch):
    clock = FakeClock(monkeypatch)
    # 600 ms calls, 2 s budget: one warm-up call, then MIN_SAMPLES timed calls (overrun)
    (samples,) = _budget([clock.step(600)], warmup=20, seconds=2.0)
    assert clock.calls - samples.size == 1
    assert samples.size == MIN_SAMPLES


def test_budget_without_warmup_times_from_the_first_call(monkeypatch):
    clock = FakeClock(monkeypatch)
    (samples,) = _budget([clock.step(50)], warmup=0, seconds=1.0)
    assert clock.calls == samples.size == 20


def test_chain_budget_gives_every_step_the_same_rounds(monkeypatch):
    clock = FakeClock(monkeypatch)
    runs = [clock.step(10), clock.step(30)]
    samples = _budget(runs, warmup=0, seconds=0.5)
    # 1 s for the chain (0.5 s per step), 40 ms a round
    assert [s.size for s in samples] == [25, 25]
    assert samples[0][0] == 10_000_000
    assert samples[1][0] == 30_000_000


def test_profile_bundle_with_a_budget(multiexit):
    p = profile_bundle(multiexit, timing=TimingOptions(warmup=2, seconds_per_state=0.02))
    assert p.settings["seconds_per_state"] == 0.02
    assert p.settings["iters"] is None
    assert p.settings["min_seconds"] is None
    assert all(s.n >= MIN_SAMPLES for s in p.step_stats(1))


def test_profile_bundle_chain_order_with_a_budget(multiexit):
    p = profile_bundle(
        multiexit, timing=TimingOptions(warmup=1, seconds_per_state=0.01, order="chain")
    )
    counts = {s.n for s in p.step_stats(1)}
    assert len(counts) == 1  # one call of every step per round
    assert counts.pop() >= MIN_SAMPLES


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seconds_per_state": 0.0},
        {"seconds_per_state": -1.0},
        {"seconds_per_state": float("nan")},
        {"seconds_per_state": float("inf")},
        {"seconds_per_state": True},
        {"seconds_per_state": "1"},
        {"seconds_per_state": 1.0, "iters": MIN_SAMPLES},
    ],
)
def test_bad_budgets_are_refused(multiexit, kwargs):
    with pytest.raises(InputError, match="seconds_per_state"):
        profile_bundle(multiexit, timing=TimingOptions(**kwargs))


def test_cli_seconds_per_state(tmp_path):
    bundle_dir = Path(
        shutil.copytree(
            BUNDLES / "mnist1d-multiexit",
            tmp_path / "b",
            ignore=shutil.ignore_patterns("profiles", "*.npz"),
        )
    )
    out = tmp_path / "p.json"
    args = ["profile", str(bundle_dir), "--seconds-per-state", "0.02", "-o", str(out), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["settings"]["seconds_per_state"] == 0.02
    prof = load_profile(out, load_bundle(bundle_dir))
    assert all(s.n >= MIN_SAMPLES for s in prof.step_stats(1))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seconds-per-state", "1", "--iters", "10"], "only one of --iters, --seconds"),
        (["--seconds-per-state", "1", "--min-seconds", "1"], "only one of --min-seconds, --sec"),
        (["--seconds-per-state", "0"], "--seconds-per-state"),
    ],
)
def test_cli_refuses_bad_budgets(args, message):
    result = CliRunner().invoke(cli, ["profile", str(BUNDLES / "mnist1d-multiexit"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def _stats(ms):
    return StepStats.from_ns(np.asarray(ms, dtype=np.float64) * 1e6)


def test_noise_flag_on_the_few_samples_of_a_budget():
    """Ten calls of a 600 ms model: one slow call (a neighbour's burst) is no spread,
    three of ten at twice the time are."""
    same = {"clock": {"governor": "performance", "cur_mhz": 2000.0}}
    one_outlier = _stats([600] * 9 + [1400])
    assert profile_mod._noise({1: (one_outlier,)}, same, same) == []
    three_slow = _stats([600] * 7 + [1200] * 3)
    reasons = profile_mod._noise({1: (three_slow,)}, same, same)
    assert len(reasons) == 1
    assert "p90/p50 = 2.00" in reasons[0]


def test_the_whole_model_gets_the_same_budget_as_a_state(multiexit, monkeypatch):
    import edgeadapt.measure.profiler as profile

    calls = []
    real = profile._time_rounds

    def rounds(units, warmup, stop, tick):
        calls.append(([len(u) for u in units], stop))
        return real(units, warmup, stop, tick)

    monkeypatch.setattr(profile, "_time_rounds", rounds)
    p = profile_bundle(
        multiexit, timing=TimingOptions(warmup=1, seconds_per_state=0.01, order="chain")
    )
    # the chain of four steps and the whole model in the same rounds, 0.01 s per run
    steps = len(multiexit.steps)
    assert calls == [([steps, 1], profile._Stop(None, 0.01 * (steps + 1), budget=True))]
    assert p.whole_stats(1).n == p.step_stats(1)[0].n >= MIN_SAMPLES
