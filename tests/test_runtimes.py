"""Runtimes: registry, lazy imports, input checks, and ONNX Runtime / OpenVINO sessions
on tiny onnx.helper-built steps (a dense step with two outputs, a head step, a 1D CNN)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.errors import EdgeadaptError, InputError, MissingExtraError
from edgeadapt.formats.presets import RUNTIME_NAMES
from edgeadapt.runtimes import available_runtimes, get_runtime, runtime_names
from tests.backends import CPU_RUNTIMES, NEEDS_OPENVINO

FEAT, HID, CLASSES = 16, 32, 10
CPU_BACKENDS = CPU_RUNTIMES


def _save(path: Path, nodes, inputs, outputs, inits) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _f32(name: str, *dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((FEAT, HID)).astype(np.float32)
W2 = RNG.standard_normal((HID, CLASSES)).astype(np.float32)
W3 = RNG.standard_normal((HID, CLASSES)).astype(np.float32)


@pytest.fixture(scope="module")
def steps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """step0: x[B,16] -> act[B,32], logits[B,10]; step1: act -> logits; cnn: x[B,1,40] -> logits."""
    d = tmp_path_factory.mktemp("steps")
    step0 = _save(
        d / "step0.onnx",
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["act"]),
            helper.make_node("MatMul", ["act", "w2"], ["logits"]),
        ],
        [_f32("x", "batch", FEAT)],
        [_f32("act", "batch", HID), _f32("logits", "batch", CLASSES)],
        [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")],
    )
    step1 = _save(
        d / "step1.onnx",
        [helper.make_node("MatMul", ["act", "w3"], ["logits"])],
        [_f32("act", "batch", HID)],
        [_f32("logits", "batch", CLASSES)],
        [numpy_helper.from_array(W3, "w3")],
    )
    rng = np.random.default_rng(1)
    conv_w = (rng.standard_normal((8, 1, 3)) * 0.5).astype(np.float32)
    fc_w = rng.standard_normal((CLASSES, 8)).astype(np.float32)
    cnn = _save(
        d / "cnn.onnx",
        [
            helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "fw"], ["logits"], transB=1),
        ],
        [_f32("x", "batch", 1, 40)],
        [_f32("logits", "batch", CLASSES)],
        [numpy_helper.from_array(conv_w, "cw"), numpy_helper.from_array(fc_w, "fw")],
    )
    return {"step0": step0, "step1": step1, "cnn": cnn}


def _reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    act = np.maximum(x @ W1, 0)
    return act, act @ W2


@pytest.fixture(params=CPU_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


# --- registry and lazy imports ------------------------------------------------------


def test_import_is_lazy(tmp_path) -> None:
    code = (
        "import sys, edgeadapt.runtimes as r; r.runtime_names(); "
        "print([m for m in ('onnxruntime', 'openvino', 'tensorrt') if m in sys.modules])"
    )
    # cwd away from the checkout, so the installed package (not the source tree) is imported
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "[]"


def test_registry_names_and_availability() -> None:
    assert runtime_names() == ("onnxruntime", "openvino", "tensorrt")
    assert runtime_names() == RUNTIME_NAMES  # the names a file may give
    reasons = available_runtimes()
    assert set(reasons) == set(runtime_names())
    assert reasons["onnxruntime"] is None
    assert all(r is None or (isinstance(r, str) and r) for r in reasons.values())


def test_unknown_runtime_name() -> None:
    with pytest.raises(InputError, match=r"unknown runtime 'tflite'.*onnxruntime, openvino"):
        get_runtime("tflite")


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(InputError, match=r"unknown option.*'thread'.*threads"):
        get_runtime("onnxruntime", thread=1)


@pytest.mark.parametrize(
    ("name", "package", "match"),
    [
        ("openvino", "openvino", r"pip install 'edgeadapt\[openvino\]'"),
        ("onnxruntime", "onnxruntime", r"core dependency.*pip install onnxruntime"),
    ],
)
def test_missing_backend_package_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, name: str, package: str, match: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(EdgeadaptError, match=match) as info:
        get_runtime(name)
    if name == "openvino":
        assert isinstance(info.value, MissingExtraError)
        assert info.value.extra == "openvino"


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("onnxruntime", {"threads": 0}, "threads"),
        ("onnxruntime", {"threads": True}, "threads"),
        ("onnxruntime", {"device": "tpu"}, "device"),
        ("onnxruntime", {"optimization": "max"}, "optimization"),
        ("onnxruntime", {"check_finite": "yes"}, "check_finite"),
        pytest.param(
            "openvino",
            {"precision": "int4"},
            "precision",
            marks=NEEDS_OPENVINO,
        ),
    ],
)
def test_bad_options(name: str, options: dict, field: str) -> None:
    with pytest.raises(InputError, match=rf"^{field}: "):
        get_runtime(name, **options)


def test_unavailable_device_is_a_clear_error() -> None:
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(EdgeadaptError, match=r"CUDAExecutionProvider.*onnxruntime-gpu"):
        get_runtime("onnxruntime", device="cuda")


# --- sessions -----------------------------------------------------------------------


def test_specs_and_describe(backend: str, steps: dict[str, Path]) -> None:
    runtime = get_runtime(backend, threads=1)
    with runtime.load(steps["step0"]) as step:
        assert [(s.name, s.shape, s.dtype) for s in step.inputs] == [
            ("x", (None, FEAT), np.dtype(np.float32))
        ]
        assert step.output_names == ("act", "logits")
        assert step.outputs[1].shape == (None, CLASSES)
        assert step.dynamic_batch
        assert "x: float32[?, 16]" in repr(step)
    info = runtime.describe()
    assert {"backend", "version", "device", "device_name", "threads", "precision"} <= set(info)
    assert info["backend"] == backend
    assert info["threads"] == 1
    json.dumps(info)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 64])
def test_run_matches_numpy_for_any_batch(
    backend: str, steps: dict[str, Path], fast: bool, rows: int
) -> None:
    x = np.random.default_rng(rows).standard_normal((rows, FEAT)).astype(np.float32)
    with get_runtime(backend, threads=1, fast=fast).load(steps["step0"]) as step:
        out = step.run({"x": x})
        assert list(out) == ["act", "logits"]
        act, logits = _reference(x)
        np.testing.assert_allclose(out["act"], act, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-4)
        assert step.last_run_ns > 0


def test_outputs_are_safe_to_keep(backend: str, steps: dict[str, Path]) -> None:
    rng = np.random.default_rng(2)
    x1, x2 = (rng.standard_normal((4, FEAT)).astype(np.float32) for _ in range(2))
    with get_runtime(backend).load(steps["step0"]) as step:
        first = step.run({"x": x1})
        kept = {k: v.copy() for k, v in first.items()}
        second = step.run({"x": x2}, check=False)
        for name in first:
            np.testing.assert_array_equal(first[name], kept[name])
            assert not np.shares_memory(first[name], second[name])


def test_chained_steps_on_compacted_rows(backend: str, steps: dict[str, Path]) -> None:
    """step0's activation feeds step1 as returned, and on a subset of its rows."""
    x = np.random.default_rng(3).standard_normal((8, FEAT)).astype(np.float32)
    runtime = get_runtime(backend, threads=1)
    with runtime.load(steps["step0"]) as s0, runtime.load(steps["step1"]) as s1:
        act = s0.run({"x": x})["act"]
        full = s1.run({"act": act}, check=False)["logits"]
        keep = np.array([1, 4, 6])
        subset = s1.run({"act": act[keep]}, check=False)["logits"]
    np.testing.assert_allclose(full, np.maximum(x @ W1, 0) @ W3, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(subset, full[keep], rtol=1e-6, atol=1e-5)


def test_large_and_small_batches_alternate(backend: str, steps: dict[str, Path]) -> None:
    """Crosses OpenVINO's switch between copying small inputs and sharing large ones."""
    rng = np.random.default_rng(6)
    with get_runtime(backend, threads=1).load(steps["step0"]) as step:
        for rows in (2, 3000, 1, 2500, 5):
            x = rng.standard_normal((rows, FEAT)).astype(np.float32)
            out = step.run({"x": x})
            np.testing.assert_allclose(out["logits"], _reference(x)[1], rtol=1e-5, atol=1e-4)


def test_non_contiguous_input(backend: str, steps: dict[str, Path]) -> None:
    x = np.random.default_rng(4).standard_normal((6, FEAT * 2)).astype(np.float32)[:, ::2]
    with get_runtime(backend).load(steps["step0"]) as step:
        out = step.run({"x": x})
    np.testing.assert_allclose(out["logits"], _reference(x)[1], rtol=1e-5, atol=1e-4)


BAD_FEEDS = [
    ({"y": np.zeros((1, FEAT), np.float32)}, r"missing \['x'\], unexpected \['y'\]"),
    ({}, r"missing \['x'\]"),
    (
        {"x": np.zeros((1, FEAT), np.float32), "z": np.zeros(1, np.float32)},
        r"unexpected \['z'\]",
    ),
    ({"x": np.zeros((1, FEAT), np.float64)}, r"input 'x': expected dtype float32, got float64"),
    ({"x": np.zeros((1, FEAT), np.int64)}, r"expected dtype float32, got int64"),
    ({"x": np.zeros(FEAT, np.float32)}, r"expected rank 2 .*got shape \(16,\)"),
    ({"x": np.zeros((1, 1, FEAT), np.float32)}, r"expected rank 2"),
    ({"x": np.zeros((2, FEAT - 1), np.float32)}, r"expected size 16 on axis 1"),
    ({"x": np.zeros((0, FEAT), np.float32)}, r"empty batch: shape \(0, 16\)"),
    ({"x": [[0.0] * FEAT]}, r"expected a numpy array, got list"),
]


@pytest.mark.parametrize(("feeds", "match"), BAD_FEEDS)
def test_bad_inputs_are_clear_errors(
    backend: str, steps: dict[str, Path], feeds: dict, match: str
) -> None:
    with get_runtime(backend).load(steps["step0"]) as step:
        with pytest.raises(InputError, match=match) as info:
            step.run(feeds)
        assert str(steps["step0"]) in str(info.value)


def test_feeds_must_be_a_mapping(backend: str, steps: dict[str, Path]) -> None:
    with (
        get_runtime(backend).load(steps["step0"]) as step,
        pytest.raises(InputError, match="feeds must map input names to arrays"),
    ):
        step.run([np.zeros((1, FEAT), np.float32)])  # type: ignore[arg-type]


def test_unchecked_bad_input_is_still_an_error_not_a_crash(
    backend: str, steps: dict[str, Path]
) -> None:
    with (
        get_runtime(backend).load(steps["step0"]) as step,
        pytest.raises(EdgeadaptError, match=f"{backend} failed to run"),
    ):
        step.run({"x": np.zeros((2, FEAT + 3), np.float32)}, check=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_passes_through_unless_check_finite(
    backend: str, steps: dict[str, Path], bad: float
) -> None:
    """No check by default: a MatMul step propagates the NaN/inf to the logits (what later
    ops do with it is the backend's business: OpenVINO's Relu maps NaN to 0)."""
    act = np.ones((2, HID), np.float32)
    act[1, 3] = bad
    with get_runtime(backend).load(steps["step1"]) as step:
        logits = step.run({"act": act})["logits"]
    assert np.isfinite(logits[0]).all()
    assert not np.isfinite(logits[1]).all()
    with get_runtime(backend, check_finite=True).load(steps["step1"]) as step:
        with pytest.raises(InputError, match="input 'act': contains NaN or infinity"):
            step.run({"act": act})
        assert np.isfinite(step.run({"act": act[:1]})["logits"]).all()
        assert not np.isfinite(step.run({"act": act}, check=False)["logits"][1]).all()


def test_closed_session_refuses_to_run(backend: str, steps: dict[str, Path]) -> None:
    with get_runtime(backend).load(steps["step1"]) as step:
        pass
    assert step.closed
    step.close()  # idempotent
    with pytest.raises(EdgeadaptError, match="session is closed"):
        step.run({"act": np.zeros((1, HID), np.float32)})


def test_load_missing_or_broken_file(backend: str, tmp_path: Path) -> None:
    runtime = get_runtime(backend)
    with pytest.raises(InputError, match="no such ONNX file"):
        runtime.load(tmp_path / "absent.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(InputError, match=rf"broken.onnx: {backend} cannot load this step"):
        runtime.load(broken)


# --- parity -------------------------------------------------------------------------


@pytest.mark.skipif(available_runtimes()["openvino"] is not None, reason="openvino missing")
@pytest.mark.parametrize("name", ["step0", "cnn"])
def test_onnxruntime_and_openvino_agree(steps: dict[str, Path], name: str) -> None:
    shape = (32, FEAT) if name == "step0" else (32, 1, 40)
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    with (
        get_runtime("onnxruntime", threads=1).load(steps[name]) as ort_step,
        get_runtime("openvino", threads=1).load(steps[name]) as ov_step,
    ):
        a, b = ort_step.run({"x": x}), ov_step.run({"x": x})
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(a["logits"].argmax(1), b["logits"].argmax(1))


# --- several inputs, integer inputs ---------------------------------------------------

VOCAB, TOKENS = 7, 5
TABLE = RNG.standard_normal((VOCAB, CLASSES)).astype(np.float32)


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ids int64 [B,5] and mask int64 [B,5] -> logits [B,10]: the masked sum of the ids'
    embedding rows, plus a float input x [B,10] added (three inputs, two dtypes)."""
    d = tmp_path_factory.mktemp("two")
    return _save(
        d / "masked.onnx",
        [
            helper.make_node("Gather", ["table", "ids"], ["e"]),
            helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
            helper.make_node("Mul", ["e", "m3"], ["em"]),
            helper.make_node("ReduceSum", ["em", "one"], ["s"], keepdims=0),
            helper.make_node("Add", ["s", "x"], ["logits"]),
        ],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", TOKENS]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", TOKENS]),
            _f32("x", "batch", CLASSES),
        ],
        [_f32("logits", "batch", CLASSES)],
        [
            numpy_helper.from_array(TABLE, "table"),
            numpy_helper.from_array(np.array([2], np.int64), "axis"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ],
    )


def _token_feeds(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "ids": rng.integers(0, VOCAB, (n, TOKENS)).astype(np.int64),
        "mask": (rng.random((n, TOKENS)) < 0.6).astype(np.int64),
        "x": rng.standard_normal((n, CLASSES)).astype(np.float32),
    }


def _masked_reference(f: dict[str, np.ndarray]) -> np.ndarray:
    return (TABLE[f["ids"]] * f["mask"][..., None]).sum(axis=1) + f["x"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_several_inputs_of_several_dtypes(backend: str, two_inputs: Path, fast: bool) -> None:
    """Every input is bound on each call, at batch sizes that take the copying and the
    zero-copy paths and change from call to call (IOBinding rebinding included)."""
    with get_runtime(backend, fast=fast).load(two_inputs) as step:
        assert [(s.name, s.dtype) for s in step.inputs] == [
            ("ids", np.dtype(np.int64)),
            ("mask", np.dtype(np.int64)),
            ("x", np.dtype(np.float32)),
        ]
        kept = []
        for n in (1, 3, 1, 900, 2):
            f = _token_feeds(n, seed=n)
            out = step.run(f)["logits"]
            np.testing.assert_allclose(out, _masked_reference(f), rtol=1e-5, atol=1e-5)
            kept.append((f, out))
        for f, out in kept:  # earlier outputs stayed the caller's
            np.testing.assert_allclose(out, _masked_reference(f), rtol=1e-5, atol=1e-5)


def test_integer_inputs_are_checked_not_cast(backend: str, two_inputs: Path) -> None:
    f = _token_feeds(2)
    with get_runtime(backend).load(two_inputs) as step:
        with pytest.raises(InputError, match=r"input 'ids': expected dtype int64, got float32"):
            step.run({**f, "ids": f["ids"].astype(np.float32)})
        with pytest.raises(InputError, match=r"input 'mask': expected dtype int64, got int32"):
            step.run({**f, "mask": f["mask"].astype(np.int32)})
        with pytest.raises(InputError, match=r"missing \['mask'\]"):
            step.run({"ids": f["ids"], "x": f["x"]})


def test_tensorrt_narrows_int64_ids_only_where_they_fit(tmp_path: Path) -> None:
    """An engine holding int32 where the graph says int64 gets the ids narrowed per call;
    a value past int32 is an error naming the input, not a wrap-around (no GPU needed)."""
    from edgeadapt.runtimes.tensorrt import narrowed

    ids = np.array([[0, 5, 2**31 - 1]], np.int64)
    out = narrowed(ids, np.dtype(np.int32), tmp_path / "s.onnx", "input_ids")
    assert out.dtype == np.int32
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, ids)
    with pytest.raises(InputError, match=r"input 'input_ids': values 1\.\.2147483648 do not fit"):
        narrowed(ids + 1, np.dtype(np.int32), tmp_path / "s.onnx", "input_ids")
