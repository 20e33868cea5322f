"""The native runner (cpp/runner): ctest on a release build and on an AddressSanitizer +
UBSan build, the `classify` example's error codes on bad files and on every case of the
shared table of reader cases (tests/reader_cases.json, which the Python readers follow
too), and parity with `AdaptiveModel` on OpenVINO: same predictions, exit states,
confidences and budget exits on every sample of the shipped bundles, with a plan, with
plain thresholds and with a budget; of a gate plan made by the planner; of a plan whose
hop overhead counts against a budget; of a branches bundle (its last branch alone, a
cascade plan and scheduler plans); and of a BERT-style bundle with two int64 inputs read
from an .npz. A plan's runtime block sets the runner's threads unless `--threads`
overrides it. Both builds are made once per session (about a minute each on 2 cores)."""

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.data.mnist1d import mnist1d_splits
from edgeadapt.exporters.variants import export_variants
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.plan import BudgetRow, Estimator, Plan, load_plan, plan_to_doc, save_plan
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.planning.planner import Outcomes
from tests import plans
from tests.device_inputs import edited_multiexit
from tests.multi_input import token_batch, transformer_bundle
from tests.plans import runner_plan, scheduler_plan
from tests.reader_cases import Case, bundle_of, cases, make, make_inputs, source_of
from tests.tiny import UNLISTED
from tests.variants import rounded_variant

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "edgeadapt" / "demo" / "bundles"
MULTIEXIT = BUNDLES / "mnist1d-multiexit"
FAMILY = BUNDLES / "mnist1d-family"
CMAKE = shutil.which("cmake")
CTEST = shutil.which("ctest")
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
GENERATOR = ["-G", "Ninja"] if shutil.which("ninja") else []
TARGETS = ["test_runner", "fuzz_readers", "classify", "c_abi"]
OV = {"threads": 1}
# TBB inside OpenVINO dlopens with RTLD_DEEPBIND unless told it runs under sanitizers.
SANITIZER_ENV = {"TBB_ENABLE_SANITIZERS": "1", "UBSAN_OPTIONS": "halt_on_error=1"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        None in (CMAKE, CTEST, CXX), reason="needs cmake, ctest and a C++ compiler on PATH"
    ),
]


def _openvino_cmake_dir() -> str:
    ov = pytest.importorskip("openvino", reason="needs the openvino package (C++ API + CMake)")
    path = Path(ov.utils.get_cmake_path())
    if not (path / "OpenVINOConfig.cmake").is_file():
        pytest.skip(f"the openvino package has no OpenVINOConfig.cmake under {path}")
    return str(path)


def _run(cmd: list, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def _build(build: Path, *options: str) -> Path:
    """Configure and build the runner's test targets; skip when a dependency is absent."""
    done = _run(
        [
            CMAKE,
            "-S",
            ROOT / "cpp" / "runner",
            "-B",
            build,
            *GENERATOR,
            "-DOpenVINO_DIR=" + _openvino_cmake_dir(),
            *options,
        ]
    )
    if done.returncode != 0:
        missing = [ln for ln in done.stderr.splitlines() if "edgeadapt-runner: missing" in ln]
        if missing:
            pytest.skip(missing[0].strip())
        pytest.fail(f"cmake configure failed:\n{done.stdout}\n{done.stderr}")
    if "edgeadapt-runner: backends:" not in done.stdout or "openvino" not in done.stdout:
        pytest.skip("the runner was configured without its OpenVINO backend")
    done = _run([CMAKE, "--build", build, "--parallel", "2", "--target", *TARGETS])
    assert done.returncode == 0, f"build failed:\n{done.stdout}\n{done.stderr}"
    return build


@pytest.fixture(scope="session")
def native(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("native") / "build", "-DCMAKE_BUILD_TYPE=Release")


@pytest.fixture(scope="session")
def native_asan(tmp_path_factory) -> Path:
    return _build(
        tmp_path_factory.mktemp("native-asan") / "build",
        "-DCMAKE_BUILD_TYPE=Debug",
        "-DEDGEADAPT_RUNNER_SANITIZE=ON",
    )


def _ctest(build: Path) -> str:
    done = _run([CTEST, "--test-dir", build, "--output-on-failure"], env=SANITIZER_ENV)
    assert done.returncode == 0, f"ctest failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_ctest_passes(native):
    assert "100% tests passed, 0 tests failed out of 3" in _ctest(native)


def test_ctest_passes_under_address_and_ub_sanitizers(native_asan):
    out = _ctest(native_asan)
    assert "100% tests passed, 0 tests failed out of 3" in out


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """300 MNIST-1D test samples and 60 random ones, as a .npy file."""
    x = mnist1d_splits(n_train=10, n_calibration=10, n_test=300).test.x
    noise = np.random.default_rng(0).standard_normal((60, *x.shape[1:])).astype(np.float32)
    path = tmp_path_factory.mktemp("inputs") / "x.npy"
    np.save(path, np.concatenate([x, noise]))
    return path


def _plan(path: Path, states, thresholds, measure, cost_ms) -> Plan:
    """A plan whose budget table has a row per kept state, each more accurate."""
    table = [
        BudgetRow(budget_ms=c, state=s, accuracy=0.5 + 0.1 * j)
        for j, (s, c) in enumerate(zip(states, cost_ms, strict=True))
    ]
    return runner_plan(load_bundle(path), states, thresholds, cost_ms, measure=measure, table=table)


# (bundle, how the policy is given, budget_ms); plans skip states and use each measure
CASES = {
    "early-exit-plan": (MULTIEXIT, ("plan", [0, 2, 3], [0.9, 0.8], "maxprob"), None),
    "early-exit-plan-skips-first": (MULTIEXIT, ("plan", [1, 3], [0.6], "margin"), None),
    "early-exit-thresholds": (MULTIEXIT, ("thresholds", 0.95, "maxprob"), None),
    "early-exit-entropy": (MULTIEXIT, ("thresholds", [-0.5, -0.3, -0.1], "entropy"), None),
    "ensemble-plan": (FAMILY, ("plan", [0, 2], [0.85], "maxprob"), None),
    "ensemble-thresholds": (FAMILY, ("thresholds", 0.7, "margin"), None),
    "early-exit-budget-too-small": (MULTIEXIT, ("plan", [0, 2, 3], [0.9, 0.8], "maxprob"), 1e-6),
    "early-exit-budget-ample": (MULTIEXIT, ("plan", [0, 2, 3], [0.9, 0.8], "maxprob"), 1e6),
    # the table picks kept state 1 (cost 0.2 <= 0.25): the cascade stops there
    "early-exit-budget-table": (MULTIEXIT, ("plan", [0, 2, 3], [0.9, 0.8], "maxprob"), 250.0),
    # each member alone costs 100: the table picks the most accurate, run alone
    "ensemble-budget-table": (FAMILY, ("plan", [0, 1, 2], [0.9, 0.9], "margin"), 250.0),
    "ensemble-budget-too-small": (FAMILY, ("plan", [0, 1, 2], [0.9, 0.9], "margin"), 1e-6),
}


def _python(bundle: Path, policy: tuple, budget, x: np.ndarray, batch: int, plan: Path | None):
    kind = policy[0]
    kwargs = {"plan": plan} if kind == "plan" else {"thresholds": policy[1], "measure": policy[2]}
    with AdaptiveModel.load(bundle, "openvino", runtime_options=OV, **kwargs) as m:
        outs = [m.predict(x[i : i + batch], budget_ms=budget) for i in range(0, len(x), batch)]
    return {
        k: np.concatenate([getattr(o, k) for o in outs])
        for k in ("pred", "exit_state", "conf", "budget_exit")
    }


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_native_matches_adaptive_model_on_every_sample(native, inputs, tmp_path, case):
    bundle, policy, budget = CASES[case]
    x = np.load(inputs)
    batch = 64
    cmd: list = [native / "examples" / "classify", bundle, inputs, "--threads", "1"]
    cmd += ["--batch", str(batch), "--json", tmp_path / "out.json", "--quiet"]
    plan_path = None
    if policy[0] == "plan":
        _, states, thresholds, measure = policy
        plan_path = tmp_path / "plan.json"
        # table cases: costs far above the steps' real ones, so the table decides
        scale = 1000.0 if "table" in case else 1.0
        costs = [0.1 * scale * (j + 1) for j in range(len(states))]
        save_plan(plan_path, _plan(bundle, states, thresholds, measure, costs))
        cmd += ["--plan", plan_path]
    else:
        _, thresholds, measure = policy
        values = thresholds if isinstance(thresholds, list) else [thresholds]
        cmd += ["--thresholds", ",".join(map(str, values)), "--measure", measure]
    if budget is not None:
        cmd += ["--budget-ms", str(budget)]
    done = _run(cmd)
    assert done.returncode == 0, done.stderr
    native_out = json.loads((tmp_path / "out.json").read_text())
    want = _python(bundle, policy, budget, x, batch, plan_path)

    np.testing.assert_array_equal(native_out["exit_state"], want["exit_state"])
    np.testing.assert_array_equal(native_out["pred"], want["pred"])
    np.testing.assert_array_equal(native_out["budget_exit"], want["budget_exit"])
    conf = np.array([np.nan if c is None else c for c in native_out["conf"]], dtype=np.float32)
    np.testing.assert_array_equal(conf, want["conf"])  # bit for bit (NaN where NaN)
    exits = np.unique(want["exit_state"])
    if budget == 1e-6:  # only the first kept state ever fits
        assert (want["budget_exit"][want["exit_state"] == policy[1][0]]).any()
        assert exits.tolist() == [policy[1][0]]
    elif case == "early-exit-budget-table":
        # the first batch runs the cascade up to kept state 1 (bundle state 2) only; the
        # measured costs (far below the plan's) then let later batches go further
        assert set(want["exit_state"][:batch].tolist()) <= {0, 2}
        assert len(exits) > 1
    elif case == "ensemble-budget-table":
        assert (want["exit_state"][:batch] == 2).all()  # the most accurate member, alone
    else:
        assert len(exits) > 1, "the case should exit at several states"
        assert not want["budget_exit"].any()


@pytest.mark.parametrize("budget", [None, 1e-6, 1e6])
def test_native_runs_a_bundle_of_two_chains_as_adaptive_model(native, inputs, tmp_path, budget):
    """A version 3 bundle (an fp16-rounded chain, then the fp32 one) under a plan that
    mixes them: each chain's first kept state starts from the model inputs."""
    twin = rounded_variant(MULTIEXIT, tmp_path / "fp16r")
    both = export_variants([twin.path, MULTIEXIT], tmp_path / "both")
    plan_path = tmp_path / "plan.json"
    # fp16r exits 0 and 1, then the fp32 last exit (chain rule costs: 0.1, 0.2, 0.2 + 0.4)
    save_plan(plan_path, _plan(both.path, [0, 1, 7], [0.9, 0.8], "maxprob", [0.1, 0.2, 0.6]))
    args = ["--threads", "1", "--batch", "64", "--plan", plan_path]
    if budget is not None:
        args += ["--budget-ms", str(budget)]
    native_out = _classify(native, both.path, inputs, tmp_path / "out.json", *args)
    with AdaptiveModel.load(both.path, "openvino", runtime_options=OV, plan=plan_path) as m:
        assert [h.steps for h in m.hops] == [(0,), (1,), (4, 5, 6, 7)]
        want = _python_rows(m, np.load(inputs), 64, budget)
    _assert_same(native_out, want)
    if budget is None:
        assert set(want["exit_state"].tolist()) == {0, 1, 7}


def _classify(native: Path, bundle: Path, data: Path, out: Path, *args) -> dict:
    done = _run([native / "examples" / "classify", bundle, data, "--json", out, "--quiet", *args])
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    doc["stderr"] = done.stderr
    return doc


def _assert_same(native_out: dict, want: dict) -> None:
    """Every sample: same exit state, prediction, budget exit and float32 confidence."""
    np.testing.assert_array_equal(native_out["exit_state"], want["exit_state"])
    np.testing.assert_array_equal(native_out["pred"], want["pred"])
    np.testing.assert_array_equal(native_out["budget_exit"], want["budget_exit"])
    conf = np.array([np.nan if c is None else c for c in native_out["conf"]], dtype=np.float32)
    np.testing.assert_array_equal(conf, want["conf"])  # bit for bit (NaN where NaN)


def _python_rows(model: AdaptiveModel, x, batch: int, budget=None) -> dict:
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    outs = []
    for i in range(0, n, batch):
        part = (
            {k: v[i : i + batch] for k, v in x.items()} if isinstance(x, dict) else x[i : i + batch]
        )
        outs.append(model.predict(part, budget_ms=budget))
    return {
        k: np.concatenate([getattr(o, k) for o in outs])
        for k in ("pred", "exit_state", "conf", "budget_exit")
    }


# --------------------------------------------------------------------------- gate plans


@pytest.fixture(scope="module")
def gate_plan(tmp_path_factory) -> Path:
    """A gate plan (format version 2) the planner made for the demo bundle from its
    evaluation on 600 MNIST-1D calibration samples, with a budget table row per kept
    state."""
    bundle = load_bundle(MULTIEXIT)
    split = mnist1d_splits(n_train=10, n_calibration=600, n_test=10).calibration
    ev = evaluate_bundle(bundle, split.x, split.y, runtime="onnxruntime", threads=1)
    plan = plans.gate_plan(bundle, Outcomes.from_evaluation(ev))
    assert len(plan.states) >= 2
    path = tmp_path_factory.mktemp("gate") / "plan.json"
    save_plan(path, plan)
    assert json.loads(path.read_text())["version"] == 2
    return path


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("budget", [None, 1e-6, 1e6])
def test_native_runs_a_gate_plan_as_adaptive_model_does(
    native, inputs, gate_plan, tmp_path, batch, budget
):
    x = np.load(inputs)
    args = ["--plan", gate_plan, "--threads", "1", "--batch", str(batch)]
    if budget is not None:
        args += ["--budget-ms", str(budget)]
    got = _classify(native, MULTIEXIT, inputs, tmp_path / "out.json", *args)
    assert got["policy"] == "gate"
    with AdaptiveModel.load(MULTIEXIT, "openvino", plan=gate_plan, runtime_options=OV) as m:
        assert m.gates is not None
        want = _python_rows(m, x, batch, budget)
    _assert_same(got, want)
    plan = load_plan(gate_plan)
    if budget == 1e-6:  # the budget table's first row: the first kept state, alone
        assert set(want["exit_state"].tolist()) == {plan.states[0]}
    else:
        assert len(np.unique(want["exit_state"])) > 1, (
            "the gates should exit rows at several states"
        )
    if budget != 1e-6:  # a row leaves early when its gate's score reaches the threshold
        early = want["exit_state"] == plan.states[0]
        assert early.any()
        assert (want["conf"][early] >= plan.thresholds[0]).all()


def test_native_refuses_a_gate_plan_with_a_missing_gate(native, inputs, gate_plan, tmp_path):
    doc = json.loads(gate_plan.read_text())
    doc["policy"]["gates"].pop()
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps(doc))
    done = _run([native / "examples" / "classify", MULTIEXIT, inputs, "--plan", bad, "--quiet"])
    assert done.returncode == 2, done.stderr
    assert str(bad) in done.stderr
    assert "$.policy.gates" in done.stderr


def _scheduler_variant(branches: Path, variant: str) -> Plan:
    """A scheduler plan for `branches` (kept branches 0, 1, 2 at 0.1, 0.5 and 2 ms, a
    budget table row each): the planner's; one by hand whose estimators read maxprob and
    margin, so each of the three branches answers some rows; or one whose first
    scheduled branch is the second (the first serves only the budget table)."""
    plan = scheduler_plan(branches, 200)[3]
    assert plan.policy == "scheduler"
    assert plan.states == (0, 1, 2)
    if variant == "by-hand":
        estimators = (Estimator((1.0, 0.0, 0.0), 0.0), Estimator((0.0, 1.0, 0.0), 0.0))
        return dataclasses.replace(plan, thresholds=(0.6, 0.52), scheduler=estimators)
    if variant == "from-second":
        estimators = (Estimator((0.0, 1.0, 0.0), 0.0),)
        return dataclasses.replace(
            plan, thresholds=(2.0, 0.55), scheduler=estimators, scheduler_first=1
        )
    return plan


@pytest.mark.parametrize(
    ("variant", "batch"), [("planned", 1), ("planned", 64), ("by-hand", 32), ("from-second", 64)]
)
@pytest.mark.parametrize("budget", [None, 1e-6, 1e6])
def test_native_runs_a_scheduler_plan_as_adaptive_model_does(
    native, inputs, branches, tmp_path, variant, batch, budget
):
    """The first scheduled branch runs on every row, the kernel picks each row's branch
    from its logits and the branches picked run on their rows, in both runners: the same
    answers per sample without a budget and with an ample one; under a budget too small
    for the first branch and the table's pick, the table's pick (nothing fits: the first
    kept branch) answers alone."""
    plan = _scheduler_variant(branches, variant)
    path = tmp_path / "plan.json"
    save_plan(path, plan)
    args = ["--plan", path, "--threads", "1", "--batch", str(batch)]
    if budget is not None:
        args += ["--budget-ms", str(budget)]
    got = _classify(native, branches, inputs, tmp_path / "o.json", *args)
    assert got["policy"] == "scheduler"
    with AdaptiveModel.load(branches, "openvino", plan=path, runtime_options=OV) as m:
        assert m.scheduler is not None
        want = _python_rows(m, np.load(inputs), batch, budget)
    _assert_same(got, want)
    assert not want["budget_exit"].any()
    calls = got["latency_ms"]["calls"]
    if budget == 1e-6:
        assert (want["exit_state"] == 0).all()
        assert all(c["step_index"] == [0] for c in calls)
        return
    first = plan.states[plan.scheduler_first]
    assert all(c["step_index"][0] == first and c["step_rows"][0] == c["rows"] for c in calls)
    # each row the first branch does not answer pays one more branch, run once per call
    later = sum(sum(c["step_rows"][1:]) for c in calls)
    assert later == int((want["exit_state"] != first).sum())
    assert all(len(set(c["step_index"])) == len(c["step_index"]) for c in calls)
    states = set(want["exit_state"].tolist())
    assert states <= set(plan.states[plan.scheduler_first :])
    assert len(states) == (3 if variant == "by-hand" else 2), states


# ------------------------------------------------------------------- the engine's rules


@pytest.mark.parametrize("overhead", [None, 4999.95])
def test_native_counts_a_plans_hop_overhead_against_the_budget(native, inputs, tmp_path, overhead):
    """Hops of 0.1 ms fit a 5000 ms budget, unless the plan's overhead per hop (the
    cascade's own cost) leaves no room for them: then every row exits at the first."""
    plan = _plan(MULTIEXIT, [0, 2, 3], [1.0, 1.0], "maxprob", [0.1, 0.2, 0.3])
    path = tmp_path / "plan.json"
    save_plan(path, dataclasses.replace(plan, hop_overhead_ms=overhead))
    args = ["--plan", path, "--threads", "1", "--batch", "16", "--budget-ms", "5000"]
    got = _classify(native, MULTIEXIT, inputs, tmp_path / "o.json", *args)
    with AdaptiveModel.load(MULTIEXIT, "openvino", plan=path, runtime_options=OV) as m:
        want = _python_rows(m, np.load(inputs), 16, 5000.0)
    _assert_same(got, want)
    if overhead is None:
        assert not want["budget_exit"].any()
        assert (want["exit_state"] > 0).any()
    else:
        assert (want["exit_state"] == 0).all()
        assert want["budget_exit"].any()


@pytest.fixture(scope="module")
def branches(tmp_path_factory) -> Path:
    """The shipped family bundle declared as execution branches."""
    d = tmp_path_factory.mktemp("branches") / "bundle"
    shutil.copytree(FAMILY, d)
    manifest = d / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"kind": "ensemble"', '"kind": "branches"'))
    assert load_bundle(d).kind == "branches"
    return d


@pytest.mark.parametrize("budget", [None, 100.0])
def test_native_runs_a_branches_bundles_last_branch_alone_as_adaptive_model_does(
    native, inputs, branches, tmp_path, budget
):
    """Without a budget table, with or without a budget, the most accurate branch (the
    last) answers alone."""
    args = ["--thresholds", "1,1", "--step-costs-ms", "1,1,1", "--threads", "1", "--batch", "32"]
    if budget is not None:
        args += ["--budget-ms", str(budget)]
    got = _classify(native, branches, inputs, tmp_path / "o.json", *args)
    with AdaptiveModel.load(
        branches, "openvino", thresholds=1.0, step_costs_ms=[1.0] * 3, runtime_options=OV
    ) as m:
        want = _python_rows(m, np.load(inputs), 32, budget)
    _assert_same(got, want)
    assert (want["exit_state"] == 2).all()
    assert got["latency_ms"]["calls"][0]["step_index"] == [2]


@pytest.mark.parametrize("budget", [None, 1000.0])
def test_native_runs_a_branches_cascade_plan_as_adaptive_model_does(
    native, inputs, branches, tmp_path, budget
):
    """A branches plan that keeps its cascade walks the branches in turn (each from the
    input, costs cumulative) in both runners; with a budget the plan's table picks one
    branch alone."""
    from edgeadapt.formats.plan import BranchesChoice, BranchOption

    bundle = load_bundle(branches)
    rows = (BudgetRow(0.5, 0, 0.3), BudgetRow(1.0, 1, 0.6), BudgetRow(2.0, 2, 0.9))
    plan = runner_plan(bundle, (0, 1, 2), (0.6, 0.6), (0.5, 1.5, 3.5), table=rows)
    cascade = BranchOption("threshold", (0, 1, 2), 0.9, 1.0)
    choice = BranchesChoice(
        "cascade", "cascade", "asked", BranchOption("table", (2,), 0.9, 2.0), cascade
    )
    plan = dataclasses.replace(plan, branches=choice)
    save_plan(tmp_path / "plan.json", plan)
    args = ["--plan", tmp_path / "plan.json", "--threads", "1", "--batch", "16"]
    if budget is not None:
        args += ["--budget-ms", str(budget)]
    got = _classify(native, branches, inputs, tmp_path / "o.json", *args)
    with AdaptiveModel.load(branches, "openvino", plan=plan, runtime_options=OV) as m:
        want = _python_rows(m, np.load(inputs), 16, budget)
    _assert_same(got, want)
    if budget is None:
        assert len(np.unique(want["exit_state"])) > 1  # rows exit at different branches
    else:
        assert (want["exit_state"] == 2).all()  # the table's most accurate row fits


# ------------------------------------------------------------------- several inputs


@pytest.fixture(scope="module")
def transformer(tmp_path_factory) -> tuple[Path, Path]:
    """A BERT-style bundle (int64 input_ids and attention_mask; the middle step does not
    read the mask, the last reads it again) and 200 token rows as an .npz."""
    d = tmp_path_factory.mktemp("transformer")
    bundle = transformer_bundle(d / "bundle", masked=(True, False, True))
    assert [list(s.inputs) for s in bundle.steps] == [
        ["input_ids", "attention_mask"],
        ["h1"],
        ["h2", "attention_mask"],
    ]
    np.savez(d / "tokens.npz", **token_batch(200, seed=3))
    return bundle.path, d / "tokens.npz"


@pytest.mark.parametrize("batch", [1, 64])
def test_native_runs_a_two_input_bundle_as_adaptive_model_does(
    native, transformer, tmp_path, batch
):
    bundle, data = transformer
    x = dict(np.load(data))
    got = _classify(
        native,
        bundle,
        data,
        tmp_path / "o.json",
        "--thresholds",
        "0.6",
        "--threads",
        "1",
        "--batch",
        str(batch),
    )
    with AdaptiveModel.load(bundle, "openvino", thresholds=0.6, runtime_options=OV) as m:
        want = _python_rows(m, x, batch)
    _assert_same(got, want)
    counts = np.bincount(want["exit_state"], minlength=3)
    assert (counts > 0).all(), f"every state should answer some rows: {counts}"


def test_native_two_input_bundle_under_a_budget_table(native, transformer, tmp_path):
    bundle, data = transformer
    x = dict(np.load(data))
    plan = tmp_path / "plan.json"
    # the table picks kept state 1 under 250 ms (costs far above the steps' real ones)
    save_plan(plan, _plan(bundle, [0, 1, 2], [0.6, 0.6], "maxprob", [100.0, 200.0, 300.0]))
    args = ["--plan", plan, "--threads", "1", "--batch", "50", "--budget-ms", "250"]
    got = _classify(native, bundle, data, tmp_path / "o.json", *args)
    with AdaptiveModel.load(bundle, "openvino", plan=plan, runtime_options=OV) as m:
        want = _python_rows(m, x, 50, 250.0)
    _assert_same(got, want)
    assert set(want["exit_state"][:50].tolist()) <= {0, 1}


@pytest.fixture(scope="module")
def exported_text(tmp_path_factory) -> tuple[Path, Path]:
    """A torch BERT-style encoder (graphs.text_encoder: [CLS] token, 2 masked layers)
    exported to ONNX and cut after its first layer by `exporters.onnx.export_onnx` with a
    trained head pooling the unmasked tokens; 150 token rows as an .npz."""
    torch = pytest.importorskip("torch", reason="the encoder is exported from torch")
    from exporters.onnx import export_onnx
    from tests import graphs

    d = tmp_path_factory.mktemp("exported")
    names = ["input_ids", "attention_mask"]
    ids, mask = graphs.text_inputs(4)
    args = (torch.from_numpy(ids), torch.from_numpy(mask))
    source = graphs.export_legacy(graphs.text_encoder(), args, names, d / "text.onnx")
    ids, mask = graphs.text_inputs(200, seed=1)
    y = np.random.default_rng(0).integers(0, graphs.TEXT_CLASSES, 200)
    np.savez(d / "calib.npz", input_ids=ids, attention_mask=mask, y=y)
    cut = graphs.tensor_names(source, "LayerNormalization")[1]  # after layer 1
    bundle = export_onnx(source, d / "bundle", cuts=[cut], calibration=d / "calib.npz", pool="mean")
    assert [list(s.inputs) for s in bundle.steps] == [names, [cut, "attention_mask"]]
    ids, mask = graphs.text_inputs(150, seed=7)
    np.savez(d / "tokens.npz", input_ids=ids, attention_mask=mask)
    return bundle.path, d / "tokens.npz"


def test_native_runs_a_cut_exported_text_encoder_as_adaptive_model_does(
    native, exported_text, tmp_path
):
    bundle, data = exported_text
    x = dict(np.load(data))
    # a threshold between the first exit's confidences, so rows leave at both states
    with AdaptiveModel.load(bundle, "openvino", thresholds=0.0, runtime_options=OV) as m:
        first = m.predict(x).conf
    threshold = float(np.median(first))
    with AdaptiveModel.load(bundle, "openvino", thresholds=threshold, runtime_options=OV) as m:
        want = _python_rows(m, x, 40)
    got = _classify(
        native,
        bundle,
        data,
        tmp_path / "o.json",
        "--thresholds",
        repr(threshold),
        "--threads",
        "1",
        "--batch",
        "40",
    )
    _assert_same(got, want)
    assert 0 < np.count_nonzero(want["exit_state"] == 0) < len(want["exit_state"])


def _bad_tokens(tmp_path: Path, kind: str) -> Path:
    x = token_batch(8)
    path = tmp_path / f"{kind}.npz"
    if kind == "missing-mask":
        np.savez(path, input_ids=x["input_ids"])
    elif kind == "float-ids":
        np.savez(
            path, input_ids=x["input_ids"].astype(np.float32), attention_mask=x["attention_mask"]
        )
    elif kind == "rows-differ":
        np.savez(path, input_ids=x["input_ids"], attention_mask=x["attention_mask"][:5])
    elif kind == "compressed":
        np.savez_compressed(path, **x)
    elif kind == "bare-npy":
        path = tmp_path / "ids.npy"
        np.save(path, x["input_ids"])
    return path


TOKENS_BAD = {
    "missing-mask": (6, ["missing-mask.npz", "attention_mask", "missing array"]),
    "float-ids": (6, ["float-ids.npz: input_ids", "expected dtype int64, got float32"]),
    "rows-differ": (6, ["attention_mask", "has 5 rows", "same number of rows"]),
    "compressed": (2, ["compressed.npz", "savez_compressed"]),
    "bare-npy": (6, ["ids.npy", "2 inputs", ".npz"]),
}


@pytest.mark.parametrize("build", ["native", "native_asan"])
@pytest.mark.parametrize("kind", TOKENS_BAD, ids=list(TOKENS_BAD))
def test_classify_refuses_bad_token_files(request, transformer, tmp_path, build, kind):
    code, parts = TOKENS_BAD[kind]
    exe = request.getfixturevalue(build) / "examples" / "classify"
    done = _run(
        [exe, transformer[0], _bad_tokens(tmp_path, kind), "--thresholds", "0.6", "--quiet"],
        env=SANITIZER_ENV,
    )
    assert done.returncode == code, done.stderr
    assert all(p in done.stderr for p in parts), done.stderr
    assert "ERROR: AddressSanitizer" not in done.stderr


# ------------------------------------------------------------------- runtime block


def _with_runtime(tmp_path: Path, block: dict | None) -> Path:
    path = tmp_path / "plan.json"
    doc = plan_to_doc(_plan(MULTIEXIT, [0, 3], [0.9], "maxprob", [0.1, 0.2]))
    if block is not None:
        doc["runtime"] = block
    path.write_text(json.dumps(doc))
    return path


ORT_2T = {
    "runtime": "onnxruntime",
    "preset": "x86-ort-2t",
    "precision": "as-exported",
    "threads": 2,
    "options": {"device": "cpu", "spin": False, "optimization": "all"},
}


def test_classify_takes_threads_from_the_plans_runtime_block(native, inputs, tmp_path):
    plain = _classify(
        native, MULTIEXIT, inputs, tmp_path / "a.json", "--plan", _with_runtime(tmp_path, None)
    )
    assert plain["threads"] == 0
    assert "note" not in plain["stderr"]
    ort = _classify(
        native, MULTIEXIT, inputs, tmp_path / "b.json", "--plan", _with_runtime(tmp_path, ORT_2T)
    )
    assert ort["threads"] == 2
    assert "measured on onnxruntime" in ort["stderr"]
    assert "spin=false" in ort["stderr"]
    ov = {
        "runtime": "openvino",
        "preset": None,
        "precision": "fp32",
        "threads": 1,
        "options": {"hint": "LATENCY", "fast": True},
    }
    got = _classify(
        native, MULTIEXIT, inputs, tmp_path / "c.json", "--plan", _with_runtime(tmp_path, ov)
    )
    assert got["threads"] == 1
    assert "Python runtime reads" in got["stderr"]
    assert got["pred"] == plain["pred"]  # same model, same answers


def test_a_plan_measured_on_openvino_runs_under_its_settings_in_both_runners(
    native, inputs, tmp_path
):
    """A plan saved by the Python side with an OpenVINO runtime configuration: classify
    and AdaptiveModel (no runtime given) both run it with its 1 thread and hint, and
    agree on every row."""
    from edgeadapt.formats.presets import RuntimeConfig

    config = RuntimeConfig("openvino", None, "as-exported", 1, {"hint": "LATENCY"})
    plan = dataclasses.replace(
        _plan(MULTIEXIT, [0, 2, 3], [0.9, 0.8], "maxprob", [0.1, 0.2, 0.3]), runtime=config
    )
    path = tmp_path / "plan.json"
    save_plan(path, plan)
    assert json.loads(path.read_text())["runtime"]["threads"] == 1
    got = _classify(native, MULTIEXIT, inputs, tmp_path / "o.json", "--plan", path, "--batch", "64")
    assert got["threads"] == 1
    assert "note" not in got["stderr"]
    with AdaptiveModel.load(MULTIEXIT, plan=path) as m:
        assert m.runtime == config
        want = _python_rows(m, np.load(inputs), 64)
    _assert_same(got, want)


def test_classify_threads_option_overrides_the_plan_and_says_so(native, inputs, tmp_path):
    got = _classify(
        native,
        MULTIEXIT,
        inputs,
        tmp_path / "o.json",
        "--plan",
        _with_runtime(tmp_path, ORT_2T),
        "--threads",
        "1",
    )
    assert got["threads"] == 1
    assert "the given threads (1) override the plan's runtime setting (2 threads)" in got["stderr"]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"options": {"allow_magic": True}}, "$.runtime.options.allow_magic"),
        ({"threads": 0}, "$.runtime.threads"),
        ({"runtime": "tvm"}, "$.runtime.runtime"),
        ({"options": {"spin": [1]}}, "$.runtime.options.spin"),
    ],
)
def test_classify_refuses_a_bad_runtime_block_naming_the_field(
    native, inputs, tmp_path, edit, field
):
    plan = _with_runtime(tmp_path, {**ORT_2T, **edit})
    done = _run([native / "examples" / "classify", MULTIEXIT, inputs, "--plan", plan, "--quiet"])
    assert done.returncode == 2, done.stderr
    assert str(plan) in done.stderr, done.stderr
    assert field in done.stderr, done.stderr


# --------------------------------------------------------------------------- bad files


def _tampered(tmp_path: Path) -> Path:
    d = tmp_path / "tampered"
    shutil.copytree(MULTIEXIT, d)
    with (d / "step2.onnx").open("ab") as f:
        f.write(b"\0")
    return d


def _escaping(tmp_path: Path) -> Path:
    d = tmp_path / "escaping"
    shutil.copytree(MULTIEXIT, d)
    manifest = d / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"step3.onnx": "', '"../step3.onnx": "'))
    return d


def _nan_plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    save_plan(path, _plan(MULTIEXIT, [0, 3], [0.9], "maxprob", [0.1, 0.2]))
    path.write_text(path.read_text().replace("0.9", "NaN", 1))
    return path


BAD = {
    # name: (bundle maker, plan maker, exit code, message parts)
    "missing-bundle": (lambda t: t / "nowhere", None, 1, ["nowhere", "no such bundle"]),
    "tampered-step": (_tampered, None, 3, ["step2.onnx", "sha256 mismatch"]),
    "path-escape": (_escaping, None, 4, ["$.files.../step3.onnx", "leaves the bundle"]),
    "nan-threshold-plan": (lambda t: MULTIEXIT, _nan_plan, 2, ["plan.json", "invalid JSON"]),
}


@pytest.mark.parametrize("build", ["native", "native_asan"])
@pytest.mark.parametrize("bad", BAD, ids=list(BAD))
def test_classify_reports_bad_files_with_a_code(request, inputs, tmp_path, build, bad):
    make_bundle, make_plan, code, parts = BAD[bad]
    exe = request.getfixturevalue(build) / "examples" / "classify"
    cmd: list = [exe, make_bundle(tmp_path), inputs, "--quiet", "--threads", "1"]
    cmd += ["--plan", make_plan(tmp_path)] if make_plan else ["--thresholds", "0.9"]
    done = _run(cmd, env=SANITIZER_ENV)
    assert done.returncode == code, done.stderr
    assert all(p in done.stderr for p in parts), done.stderr
    assert "ERROR: AddressSanitizer" not in done.stderr
    assert "runtime error" not in done.stderr


def test_classify_under_sanitizers_matches_the_release_build(native, native_asan, inputs, tmp_path):
    out = {}
    for name, build in (("release", native), ("asan", native_asan)):
        path = tmp_path / f"{name}.json"
        cmd: list = [build / "examples" / "classify", MULTIEXIT, inputs, "--thresholds", "0.9"]
        done = _run(
            [*cmd, "--batch", "50", "--threads", "1", "--json", path, "--quiet"], env=SANITIZER_ENV
        )
        assert done.returncode == 0, done.stderr
        out[name] = json.loads(path.read_text())
    assert out["asan"]["pred"] == out["release"]["pred"]
    assert out["asan"]["exit_state"] == out["release"]["exit_state"]


# --------------------------------------------------------------------------- hardening


def _symlinked_manifest(tmp_path: Path) -> Path:
    d = tmp_path / "linked"
    shutil.copytree(MULTIEXIT, d)
    outside = tmp_path / "outside.json"
    (d / "manifest.json").rename(outside)
    (d / "manifest.json").symlink_to(outside)
    return d


def _fifo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


def _tiny(tmp_path: Path, bad: str | None = None) -> Path:
    from tests.tiny import tiny_bundle

    return tiny_bundle(tmp_path / f"tiny-{bad}", bad).path


def _tiny_inputs(tmp_path: Path) -> Path:
    from tests.tiny import tiny_inputs

    path = tmp_path / "tiny.npy"
    np.save(path, tiny_inputs(64))
    return path


# name: (bundle maker, input maker (None: the MNIST-1D inputs), extra args, code, parts)
HARD = {
    "act-one-row": (
        lambda t: _tiny(t, "act-one-row"),
        _tiny_inputs,
        [],
        7,
        ["output 'a0'", "row(s)"],
    ),
    "logits-one-row": (lambda t: _tiny(t, "logits-one-row"), _tiny_inputs, [], 7, ["output 'l0'"]),
    "logits-rank3": (lambda t: _tiny(t, "logits-rank3"), _tiny_inputs, [], 7, ["rank 3"]),
    "logits-float64": (lambda t: _tiny(t, "logits-float64"), _tiny_inputs, [], 2, ["float32"]),
    "bom-manifest": (
        lambda t: edited_multiexit(t, lambda b: b"\xef\xbb\xbf" + b),
        None,
        [],
        2,
        ["byte order mark"],
    ),
    "duplicate-key": (
        lambda t: edited_multiexit(
            t, lambda b: b.replace(b'"kind":', b'"kind": "ensemble", "kind":', 1)
        ),
        None,
        [],
        2,
        ["duplicate key 'kind'"],
    ),
    "deep-nesting": (
        lambda t: edited_multiexit(
            t,
            lambda b: b.replace(
                b'"extra": {', b'"deep": ' + b"[" * 5000 + b"]" * 5000 + b', "extra": {', 1
            ),
        ),
        None,
        [],
        2,
        ["nested deeper than 256"],
    ),
    "huge-number": (
        lambda t: edited_multiexit(
            t, lambda b: b.replace(b'"num_classes": 10', b'"num_classes": 1e400', 1)
        ),
        None,
        [],
        2,
        ["invalid JSON"],
    ),
    "producer-not-object": (
        lambda t: edited_multiexit(
            t, lambda b: b.replace(b'"producer": {', b'"producer": 3, "was": {', 1)
        ),
        None,
        [],
        2,
        ["$.producer", "expected an object"],
    ),
    "symlinked-manifest": (_symlinked_manifest, None, [], 4, ["manifest.json", "symlink"]),
    "ansi-state-name": (
        lambda t: edited_multiexit(t, lambda b: b.replace(b'"exit0"', b'"exit0\\u001b[31m"', 1)),
        None,
        [],
        2,
        ["$.states[0].name", "control characters"],
    ),
    "huge-row": (
        lambda t: edited_multiexit(t, lambda b: b.replace(b"40\n", b"1000000000000\n", 1)),
        None,
        [],
        2,
        ["$.input.shape", "exceeds 2147483647"],
    ),
    "fifo-input": (lambda t: MULTIEXIT, lambda t: _fifo(t, "x.npy"), [], 1, ["not a regular file"]),
    "fifo-plan": (lambda t: MULTIEXIT, None, ["--plan", "FIFO"], 1, ["not a regular file"]),
    "warmup-1e30": (lambda t: MULTIEXIT, None, ["--warmup", "1e30"], 64, ["--warmup"]),
    "batch-1e30": (lambda t: MULTIEXIT, None, ["--batch", "1e30"], 64, ["--batch"]),
    "threads-1e10": (lambda t: MULTIEXIT, None, ["--threads", "1e10"], 64, ["--threads"]),
    "thresholds-trailing-comma": (
        lambda t: MULTIEXIT,
        None,
        ["--thresholds", "0.5,"],
        64,
        ["--thresholds", "0.5,"],
    ),
    "budget-past-double": (
        lambda t: MULTIEXIT,
        None,
        ["--budget-ms", "1e309"],
        64,
        ["--budget-ms"],
    ),
    "budget-infinite": (lambda t: MULTIEXIT, None, ["--budget-ms", "inf"], 64, ["--budget-ms"]),
    "budget-nan": (lambda t: MULTIEXIT, None, ["--budget-ms", "nan"], 64, ["--budget-ms"]),
}


@pytest.mark.parametrize("build", ["native", "native_asan"])
@pytest.mark.parametrize("case", HARD, ids=list(HARD))
def test_classify_refuses_hard_cases_cleanly(request, inputs, tmp_path, build, case):
    make_bundle, make_inputs, extra, code, parts = HARD[case]
    exe = request.getfixturevalue(build) / "examples" / "classify"
    data = inputs if make_inputs is None else make_inputs(tmp_path)
    extra = [str(_fifo(tmp_path, "plan.json")) if a == "FIFO" else a for a in extra]
    policy = [] if "--plan" in extra or "--thresholds" in extra else ["--thresholds", "0.6"]
    cmd: list = [exe, make_bundle(tmp_path), data, "--quiet", *policy, *extra]
    if "--threads" not in extra:
        cmd += ["--threads", "1"]
    done = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,  # a FIFO opened before the check would block here
        env={**os.environ, **SANITIZER_ENV},
    )
    assert done.returncode == code, done.stderr
    assert all(p in done.stderr for p in parts), done.stderr
    assert "ERROR: AddressSanitizer" not in done.stderr
    assert "runtime error" not in done.stderr


@pytest.mark.parametrize("build", ["native", "native_asan"])
@pytest.mark.parametrize("where", UNLISTED)
def test_classify_refuses_external_data_the_manifest_does_not_list(request, tmp_path, build, where):
    from tests.tiny import with_unlisted_data

    exe = request.getfixturevalue(build) / "examples" / "classify"
    d = with_unlisted_data(_tiny(tmp_path), where)
    done = _run(
        [exe, d, _tiny_inputs(tmp_path), "--thresholds", "0.6", "--quiet"], env=SANITIZER_ENV
    )
    assert done.returncode == 3, done.stderr
    assert "references external data 'evil.bin'" in done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_classify_reports_output_it_cannot_write(native, tmp_path):
    exe = native / "examples" / "classify"
    args = [exe, _tiny(tmp_path), _tiny_inputs(tmp_path), "--thresholds", "0.6"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [str(a) for a in args], stdout=full, stderr=subprocess.PIPE, text=True, check=False
        )
    assert done.returncode == 1, done.stderr
    assert "stdout: cannot write (No space left on device)" in done.stderr


def test_classify_json_leaves_no_temp_file(native, tmp_path):
    exe = native / "examples" / "classify"
    out = tmp_path / "out" / "o.json"
    out.parent.mkdir()
    args = [exe, _tiny(tmp_path), _tiny_inputs(tmp_path), "--thresholds", "0.6", "--quiet"]
    done = _run([*args, "--json", out])
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.parent.iterdir()] == ["o.json"]
    missing = _run([*args, "--json", tmp_path / "nowhere" / "o.json"])
    assert missing.returncode == 1
    assert "cannot write" in missing.stderr
    assert not (tmp_path / "nowhere").exists()


# --------------------------------------------------------------------------- shared table


def _table_params() -> list:
    return [
        pytest.param(c, id=f"{c.kind}-{c.id}", marks=pytest.mark.xfail(reason=c.pending["native"]))
        if "native" in c.pending
        else pytest.param(c, id=f"{c.kind}-{c.id}")
        for kind in ("manifest", "plan", "inputs")
        for c in cases(kind)
    ]


@pytest.mark.parametrize("case", _table_params())
def test_classify_follows_the_shared_table_of_reader_cases(native, tmp_path, case: Case):
    made = make(case, tmp_path)
    rows = make_inputs(cases("inputs")[0], tmp_path)  # four plain float32 rows
    exe = native / "examples" / "classify"
    if case.kind == "manifest":
        cmd: list = [exe, made, rows, "--thresholds", "0.5"]
    elif case.kind == "plan":
        cmd = [exe, bundle_of(case, tmp_path), rows, "--plan", made]
    else:
        cmd = [exe, MULTIEXIT, made, "--thresholds", "0.5"]
    done = _run([*cmd, "--threads", "1", "--quiet"])
    if not case.refused:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == case.code, done.stderr
    assert str(source_of(case, made)) in done.stderr, done.stderr
    for part in (case.field, case.words):
        if part is not None:
            assert part in done.stderr, done.stderr
