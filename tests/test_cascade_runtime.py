"""`AdaptiveModel.load` runs a plan under the runtime configuration it was measured with,
unless the caller overrides it, and then says what differs."""

from dataclasses import replace
from pathlib import Path

import pytest

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.plan import save_plan
from edgeadapt.formats.presets import RuntimeConfig
from tests.plans import runner_plan

MULTIEXIT = (
    Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
)
TWO = RuntimeConfig("onnxruntime", None, "as-exported", 2, {"spin": False})


def _threads(model):
    """The intra-op threads of the ONNX Runtime sessions behind the model's steps."""
    return {
        s._session.get_session_options().intra_op_num_threads
        for s in model.sessions
        if s is not None
    }


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(MULTIEXIT)


@pytest.fixture
def plan_file(bundle, tmp_path):
    path = tmp_path / "plan.json"
    save_plan(path, replace(runner_plan(bundle, [1, 3], [0.9], [1.0, 2.0]), runtime=TWO))
    return path


def test_a_plan_made_under_two_threads_runs_with_two(bundle, plan_file):
    with AdaptiveModel.load(bundle, plan=plan_file) as m:
        assert m.runtime == TWO
        assert m.runtime_note is None
        assert _threads(m) == {2}


def test_an_override_runs_and_says_so(bundle, plan_file):
    with AdaptiveModel.load(bundle, plan=plan_file, threads=1) as m:
        assert _threads(m) == {1}
        assert m.runtime == replace(TWO, threads=1)
        assert m.runtime_note is not None
        assert "threads 1 (plan: 2)" in m.runtime_note
    with AdaptiveModel.load(bundle, plan=plan_file, runtime_options={"threads": 1}) as m:
        assert _threads(m) == {1}
        assert m.runtime_note is not None
    # the plan's own settings, given again, are no override
    with AdaptiveModel.load(bundle, plan=plan_file, runtime=TWO.runtime, threads=2) as m:
        assert m.runtime_note is None


def test_an_old_plan_without_the_block_runs_as_before(bundle, tmp_path):
    path = tmp_path / "old.json"
    save_plan(path, runner_plan(bundle, [1, 3], [0.9], [1.0, 2.0]))
    with AdaptiveModel.load(bundle, plan=path) as m:
        assert m.runtime == RuntimeConfig("onnxruntime")  # the runtime's own defaults
        assert m.runtime_note is None
    with AdaptiveModel.load(bundle, thresholds=0.5, threads=2) as m:
        assert _threads(m) == {2}
        assert m.runtime_note is None


def test_a_config_and_backend_options_together_are_refused(bundle):
    with pytest.raises(InputError, match="not both") as e:
        AdaptiveModel.load(bundle, TWO, thresholds=0.5, runtime_options={"threads": 1})
    assert e.value.source == "runtime_options"


def test_a_plan_made_from_a_profile_carries_its_settings_to_the_runner(bundle, tmp_path):
    """profile (2 threads) -> plan -> run: the runner takes the profile's settings."""
    import numpy as np

    from edgeadapt.measure.evaluate import evaluate_bundle
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle
    from edgeadapt.planning.planner import PlanCosts, PlanOptions, plan_bundle, profile_costs

    prof = profile_bundle(bundle, threads=2, timing=TimingOptions(warmup=0, iters=10, whole=False))
    x = np.random.default_rng(0).normal(size=(400, 1, 40)).astype(np.float32)
    first = evaluate_bundle(bundle, x, np.zeros(400, np.int64))
    evaluation = evaluate_bundle(bundle, x, first.pred[:, -1].astype(np.int64))
    costs = profile_costs(prof, bundle)
    assert costs.runtime == prof.runtime_config
    plan = plan_bundle(
        bundle,
        evaluation,
        PlanCosts(costs.state_ms, runtime=costs.runtime),
        options=PlanOptions(max_drop=0.05),
    )
    assert plan.runtime == prof.runtime_config
    path = tmp_path / "plan.json"
    save_plan(path, plan)
    with AdaptiveModel.load(bundle, plan=path) as m:
        assert m.runtime == prof.runtime_config
        assert _threads(m) == {2}
