"""TensorRT runtime: the parts that need no GPU run everywhere (missing extra, engine cache
file format); building and running engines needs tensorrt, cuda-python and a GPU and
skips with the reason otherwise."""

from __future__ import annotations

import ctypes
import logging
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.errors import InputError, MissingExtraError
from edgeadapt.runtimes import available_runtimes, get_runtime
from edgeadapt.runtimes.tensorrt import _MAGIC, _pack, _unpack

REASON = available_runtimes()["tensorrt"]
needs_gpu = pytest.mark.skipif(REASON is not None, reason=f"tensorrt cannot run here: {REASON}")
FEAT, CLASSES = 16, 10
W = np.random.default_rng(0).standard_normal((FEAT, CLASSES)).astype(np.float32)


def test_missing_tensorrt_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'edgeadapt\[tensorrt\]'") as info:
        get_runtime("tensorrt")
    assert info.value.package == "tensorrt"


def test_unavailable_reason_is_reported() -> None:
    assert REASON is None or ("tensorrt" in REASON or "cuda" in REASON or "GPU" in REASON)


def test_engine_file_header_round_trip() -> None:
    key = {"tensorrt": "10.3.0", "gpu": "NVIDIA H100", "step_sha256": "ab" * 32}
    assert _unpack(_pack(key, b"\x00engine")) == (key, b"\x00engine")


@pytest.mark.parametrize(
    "data",
    [b"", b"plan bytes from trtexec", _MAGIC, _MAGIC + b"\x05\x00\x00\x00{oops", _MAGIC + b"\x02"],
)
def test_foreign_engine_files_are_not_ours(data: bytes) -> None:
    assert _unpack(data) is None


@pytest.fixture
def step(tmp_path: Path) -> Path:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes,
        "step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEAT])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(W, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "step.onnx"
    onnx.save(model, path)
    return path


@needs_gpu
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-4), ("fp16", 5e-2)])
def test_build_run_and_cache(step: Path, tmp_path: Path, precision: str, tol: float) -> None:
    runtime = get_runtime("tensorrt", precision=precision, max_batch=8, cache_dir=tmp_path / "c")
    for rows in (1, 5, 8, 2):
        x = np.random.default_rng(rows).standard_normal((rows, FEAT)).astype(np.float32)
        with runtime.load(step) as session:
            out = session.run({"x": x})["logits"]
            assert session.engine_source == ("built" if rows == 1 else "cache")
        np.testing.assert_allclose(out, x @ W, rtol=tol, atol=tol)
    assert runtime.describe()["precision"] == precision


@needs_gpu
def test_outputs_kept_between_calls_and_batch_limit(step: Path, tmp_path: Path) -> None:
    runtime = get_runtime("tensorrt", max_batch=4, cache_dir=tmp_path)
    with runtime.load(step) as session:
        a = session.run({"x": np.ones((3, FEAT), np.float32)})["logits"]
        b = session.run({"x": np.zeros((1, FEAT), np.float32)}, check=False)["logits"]
        np.testing.assert_allclose(a, np.ones((3, FEAT), np.float32) @ W, rtol=1e-4, atol=1e-4)
        assert b.shape == (1, CLASSES)
        with pytest.raises(InputError, match="exceeds the engine's max_batch 4"):
            session.run({"x": np.ones((5, FEAT), np.float32)})


@needs_gpu
@pytest.mark.parametrize("tamper", ["key", "garbage"])
def test_engine_built_elsewhere_is_rebuilt(
    step: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, tamper: str
) -> None:
    runtime = get_runtime("tensorrt", max_batch=2, cache_dir=tmp_path)
    runtime.load(step).close()
    engine_file = runtime.engine_path(step)  # type: ignore[attr-defined]
    if tamper == "key":
        unpacked = _unpack(engine_file.read_bytes())
        assert unpacked is not None
        key, blob = unpacked
        engine_file.write_bytes(_pack({**key, "gpu": "Jetson Orin", "tensorrt": "8.6.1"}, blob))
    else:
        engine_file.write_bytes(b"an engine from trtexec")
    with caplog.at_level(logging.WARNING), runtime.load(step) as session:
        assert session.engine_source == "rebuilt"
        assert session.run({"x": np.ones((2, FEAT), np.float32)})["logits"].shape == (2, CLASSES)
    assert "rebuilding the TensorRT engine" in caplog.text
    assert ("built elsewhere" in caplog.text) == (tamper == "key")


# --- the TensorRT session and engine cache against a stand-in for tensorrt + CUDA -----
# Host memory plays device memory, so the data path (shapes, addresses, copies, sizes)
# and the cache/rebuild logic run here; the real API is exercised by the GPU tests above.


class _FakeContext:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        self.shapes[name] = tuple(shape)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["x"] if name == "x" else (self.shapes["x"][0], CLASSES)

    def execute_async_v3(self, stream: int) -> bool:
        rows = self.shapes["x"][0]
        x = np.ctypeslib.as_array(
            (ctypes.c_float * (rows * FEAT)).from_address(self.addresses["x"])
        ).reshape(rows, FEAT)
        out = np.ctypeslib.as_array(
            (ctypes.c_float * (rows * CLASSES)).from_address(self.addresses["logits"])
        ).reshape(rows, CLASSES)
        out[...] = x @ W
        return True


class _FakeEngine:
    num_io_tensors = 2

    def get_tensor_name(self, i: int) -> str:
        return ("x", "logits")[i]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, FEAT) if name == "x" else (-1, CLASSES)

    def get_tensor_dtype(self, name: str) -> str:
        return "float"

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name == "x" else "out"

    def create_execution_context(self) -> _FakeContext:
        return _FakeContext()


def _fake_tensorrt(builds: list[dict]) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0"  # type: ignore[attr-defined]
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in")  # type: ignore[attr-defined]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")  # type: ignore[attr-defined]
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", TF32="tf32")  # type: ignore[attr-defined]
    trt.nptype = lambda dtype: np.float32  # type: ignore[attr-defined]

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes) -> _FakeEngine | None:
            return _FakeEngine() if blob.startswith(b"ENGINE") else None

    class Builder:
        def __init__(self, logger: object) -> None:
            self.record: dict = {"flags": set(), "cleared": set(), "profile": {}}
            builds.append(self.record)

        def create_network(self, flags: int) -> types.SimpleNamespace:
            x = types.SimpleNamespace(name="x", shape=(-1, FEAT))
            return types.SimpleNamespace(num_inputs=1, get_input=lambda i: x)

        def create_builder_config(self) -> types.SimpleNamespace:
            r = self.record
            return types.SimpleNamespace(
                set_memory_pool_limit=lambda pool, size: r.update(workspace=size),
                set_flag=r["flags"].add,
                clear_flag=r["cleared"].add,
                add_optimization_profile=lambda p: r.update(profiles=1),
            )

        def create_optimization_profile(self) -> types.SimpleNamespace:
            profile = self.record["profile"]
            return types.SimpleNamespace(
                set_shape=lambda name, lo, opt, hi: profile.update({name: (lo, opt, hi)})
            )

        def build_serialized_network(self, network: object, config: object) -> bytes:
            return b"ENGINE-" + ",".join(sorted(self.record["flags"])).encode()

    class OnnxParser:
        def __init__(self, network: object, logger: object) -> None:
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            return Path(path).read_bytes()[:4] != b"junk"

    trt.Runtime, trt.Builder, trt.OnnxParser = Runtime, Builder, OnnxParser  # type: ignore[attr-defined]
    return trt


def _fake_cudart() -> types.ModuleType:
    cudart = types.ModuleType("cuda.bindings.runtime")
    ok = "cudaSuccess"
    memory: dict[int, np.ndarray] = {}

    def malloc(nbytes: int) -> tuple:
        buf = np.zeros(nbytes, np.uint8)
        memory[buf.ctypes.data] = buf
        return ok, buf.ctypes.data

    def memcpy(dst: int, src: int, count: int, kind: str, stream: int) -> tuple:
        ctypes.memmove(dst, src, count)
        return (ok,)

    cudart.memory = memory  # type: ignore[attr-defined]
    cudart.cudaError_t = types.SimpleNamespace(cudaSuccess=ok)  # type: ignore[attr-defined]
    cudart.cudaMemcpyKind = types.SimpleNamespace(  # type: ignore[attr-defined]
        cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h"
    )
    cudart.cudaGetErrorString = lambda err: (ok, b"fake error")  # type: ignore[attr-defined]
    cudart.cudaGetDeviceCount = lambda: (ok, 1)  # type: ignore[attr-defined]
    cudart.cudaSetDevice = lambda gpu: (ok,)  # type: ignore[attr-defined]
    cudart.cudaGetDeviceProperties = lambda gpu: (  # type: ignore[attr-defined]
        ok,
        types.SimpleNamespace(name=b"Fake GPU\0\0\0", major=8, minor=7),
    )
    cudart.cudaStreamCreate = lambda: (ok, 7)  # type: ignore[attr-defined]
    cudart.cudaStreamSynchronize = lambda stream: (ok,)  # type: ignore[attr-defined]
    cudart.cudaStreamDestroy = lambda stream: (ok,)  # type: ignore[attr-defined]
    cudart.cudaMalloc = malloc  # type: ignore[attr-defined]
    cudart.cudaFree = lambda ptr: (memory.pop(ptr, None), (ok,))[1]  # type: ignore[attr-defined]
    cudart.cudaMemcpyAsync = memcpy  # type: ignore[attr-defined]
    return cudart


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict], types.ModuleType]:
    builds: list[dict] = []
    cudart = _fake_cudart()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(builds))
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", types.ModuleType("cuda.bindings"))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return builds, cudart


def test_session_data_path_with_stand_in(fake_gpu: tuple, step: Path, tmp_path: Path) -> None:
    builds, cudart = fake_gpu
    runtime = get_runtime("tensorrt", max_batch=8, opt_batch=2, cache_dir=tmp_path)
    assert runtime.describe()["device_name"] == "Fake GPU"
    with runtime.load(step) as session:
        assert session.engine_source == "built"  # type: ignore[attr-defined]
        assert [str(s) for s in session.inputs] == ["x: float32[?, 16]"]
        assert len(cudart.memory) == 2  # one buffer per tensor, sized for max_batch
        kept = []
        for rows in (1, 8, 3):
            x = np.random.default_rng(rows).standard_normal((rows, FEAT)).astype(np.float32)
            out = session.run({"x": x})["logits"]
            np.testing.assert_allclose(out, x @ W, rtol=1e-5, atol=1e-5)
            kept.append((out, x @ W))
        for out, want in kept:  # earlier outputs are not overwritten
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
        with pytest.raises(InputError, match="exceeds the engine's max_batch 8"):
            session.run({"x": np.ones((9, FEAT), np.float32)}, check=False)
    assert not cudart.memory  # freed on close
    (record,) = builds
    assert record["profile"] == {"x": ((1, FEAT), (2, FEAT), (8, FEAT))}
    assert record["cleared"] == {"tf32"}
    assert record["flags"] == set()


def test_cache_hit_and_rebuild_with_stand_in(
    fake_gpu: tuple, step: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    builds, _ = fake_gpu
    fp16 = get_runtime("tensorrt", precision="fp16", cache_dir=tmp_path)
    fp16.load(step).close()
    assert builds[-1]["flags"] == {"fp16"}
    with fp16.load(step) as session:
        assert session.engine_source == "cache"  # type: ignore[attr-defined]
    assert len(builds) == 1
    engine_file = fp16.engine_path(step)  # type: ignore[attr-defined]
    unpacked = _unpack(engine_file.read_bytes())
    assert unpacked is not None
    key, blob = unpacked
    assert key["gpu"] == "Fake GPU"
    assert key["tensorrt"] == "10.99.0"
    engine_file.write_bytes(_pack({**key, "gpu": "Jetson Orin"}, blob))
    with caplog.at_level(logging.WARNING), fp16.load(step) as session:
        assert session.engine_source == "rebuilt"  # type: ignore[attr-defined]
    assert "built elsewhere ({'gpu': 'Jetson Orin'})" in caplog.text
    engine_file.write_bytes(_pack(key, b"not an engine"))  # right key, undeserialisable
    with fp16.load(step) as session:
        assert session.engine_source == "rebuilt"  # type: ignore[attr-defined]
    assert "could not deserialise it" in caplog.text
    assert len(builds) == 3


def test_unparsable_step_with_stand_in(fake_gpu: tuple, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk")
    with pytest.raises(InputError, match=r"junk\.onnx: TensorRT cannot parse this step"):
        get_runtime("tensorrt", cache_dir=tmp_path).load(junk)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"precision": "int8"}, "precision"),
        ({"max_batch": 0}, "max_batch"),
        ({"opt_batch": 9, "max_batch": 8}, "opt_batch"),
        ({"gpu": -1}, "gpu"),
    ],
)
def test_bad_options_with_stand_in(fake_gpu: tuple, options: dict, field: str) -> None:
    with pytest.raises(InputError, match=rf"^{field}: "):
        get_runtime("tensorrt", **options)
