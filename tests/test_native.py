"""The native runner (cpp/runner): ctest on a release build and on an AddressSanitizer +
UBSan build, the `classify` example's error codes on bad files, and parity with
`AdaptiveModel` on OpenVINO: same predictions, exit states, confidences and budget exits
on every sample of the shipped bundles, with a plan, with plain thresholds and with a
budget. Both builds are made once per session (about a minute each on 2 cores)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.bundle import load_bundle
from edgeadapt.cascade import AdaptiveModel
from edgeadapt.datasets import mnist1d_splits
from edgeadapt.plan import BudgetRow, Plan, save_plan
from tests.plans import runner_plan
from tests.tiny import UNLISTED

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "edgeadapt" / "data" / "bundles"
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


def _manifest_edit(tmp_path: Path, edit) -> Path:
    d = tmp_path / "edited"
    shutil.copytree(MULTIEXIT, d)
    path = d / "manifest.json"
    path.write_bytes(edit(path.read_bytes()))
    return d


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
        lambda t: _manifest_edit(t, lambda b: b"\xef\xbb\xbf" + b),
        None,
        [],
        2,
        ["byte order mark"],
    ),
    "duplicate-key": (
        lambda t: _manifest_edit(
            t, lambda b: b.replace(b'"kind":', b'"kind": "ensemble", "kind":', 1)
        ),
        None,
        [],
        2,
        ["duplicate key 'kind'"],
    ),
    "deep-nesting": (
        lambda t: _manifest_edit(
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
        lambda t: _manifest_edit(
            t, lambda b: b.replace(b'"num_classes": 10', b'"num_classes": 1e400', 1)
        ),
        None,
        [],
        2,
        ["invalid JSON"],
    ),
    "producer-not-object": (
        lambda t: _manifest_edit(
            t, lambda b: b.replace(b'"producer": {', b'"producer": 3, "was": {', 1)
        ),
        None,
        [],
        2,
        ["$.producer", "expected an object"],
    ),
    "symlinked-manifest": (_symlinked_manifest, None, [], 4, ["manifest.json", "symlink"]),
    "ansi-state-name": (
        lambda t: _manifest_edit(t, lambda b: b.replace(b'"exit0"', b'"exit0\\u001b[31m"', 1)),
        None,
        [],
        2,
        ["$.states[0].name", "control characters"],
    ),
    "huge-row": (
        lambda t: _manifest_edit(t, lambda b: b.replace(b"40\n", b"1000000000000\n", 1)),
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
}


@pytest.mark.parametrize("build", ["native", "native_asan"])
@pytest.mark.parametrize("case", HARD, ids=list(HARD))
def test_classify_refuses_hard_cases_cleanly(request, inputs, tmp_path, build, case):
    make_bundle, make_inputs, extra, code, parts = HARD[case]
    exe = request.getfixturevalue(build) / "examples" / "classify"
    data = inputs if make_inputs is None else make_inputs(tmp_path)
    extra = [str(_fifo(tmp_path, "plan.json")) if a == "FIFO" else a for a in extra]
    policy = [] if "--plan" in extra else ["--thresholds", "0.6"]
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
