"""TensorRT backend (TensorRT 10 Python API + cuda-python): one engine per step.

Each step's engine is built from its ONNX file with `OnnxParser`/`Builder` (fp32 or fp16),
with one optimisation profile whose batch axis runs from 1 to `max_batch` (tuned for
`opt_batch`), so a cascade can run compacted subsets of rows. Engines are cached on disk
under `cache_dir`: the file name comes from the step's sha256, precision and batch range,
and a header inside the file records the TensorRT version, GPU name, compute capability
and step sha256. An engine built elsewhere (another TensorRT or GPU: key mismatch, or
deserialisation fails) is rebuilt with a logged warning instead of failing.

Device buffers for every input and output are allocated once, at `max_batch` rows, and
kept between calls; a call copies the inputs in, runs on a private CUDA stream and copies
the outputs back into fresh numpy arrays the caller owns.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
from onnx.helper import tensor_dtype_to_np_dtype

from edgeadapt.data.inputs import out_of_range
from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.atomic import atomic_write_bytes
from edgeadapt.formats.digest import file_sha256

from .base import Runtime, Session, TensorSpec, choice, import_backend, positive_int

log = logging.getLogger(__name__)

_MAGIC = b"EDGEADAPT-TRT-ENGINE\n"
_FEATURE = "the tensorrt runtime"


def _import_cudart() -> ModuleType:
    """cuda-python's runtime API: `cuda.bindings.runtime` (>= 12.6) or `cuda.cudart`."""
    try:
        return import_backend("cuda.bindings.runtime", extra="tensorrt", feature=_FEATURE)
    except ImportError:
        return import_backend("cuda.cudart", extra="tensorrt", feature=_FEATURE)


def _cuda(cudart: ModuleType, result: Any) -> Any:
    """Unpack a cuda-python `(error, value...)` tuple, raising on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        raise EdgeadaptError(f"CUDA error: {text.decode() if isinstance(text, bytes) else text}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_missing_reason() -> str | None:
    """Why TensorRT cannot run here (no cuda-python, no driver, no GPU), or None."""
    try:
        cudart = _import_cudart()
    except ImportError as e:
        return str(e)
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        return "no CUDA GPU found (TensorRT needs an NVIDIA GPU and driver)"
    return None


def _onnx_input_dtypes(path: Path) -> dict[str, np.dtype[Any]]:
    """The element type each graph input of the ONNX file declares."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        v.name: np.dtype(tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
        for v in graph.input
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type
    }


def narrowed(array: np.ndarray, dtype: np.dtype[Any], path: Path, name: str) -> np.ndarray:
    """`array` (integers) as the narrower integer `dtype` an engine holds; a value that
    does not fit is an `InputError` rather than a silent wrap-around."""
    beyond = out_of_range(array, dtype)
    if beyond is not None:
        raise InputError(
            f"values {beyond[0]}..{beyond[1]} do not fit the engine's {dtype} input",
            source=path,
            field=f"input {name!r}",
        )
    return np.ascontiguousarray(array, dtype=dtype)


def _pack(key: dict[str, Any], engine: bytes) -> bytes:
    header = json.dumps(key, sort_keys=True).encode()
    return _MAGIC + struct.pack("<I", len(header)) + header + engine


def _unpack(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """Key and engine bytes of a cache file, or None when it is not one of ours."""
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
        return None
    (size,) = struct.unpack_from("<I", data, len(_MAGIC))
    start = len(_MAGIC) + 4
    try:
        key = json.loads(data[start : start + size])
    except ValueError:
        return None
    return (key, data[start + size :]) if isinstance(key, dict) else None


class TensorRtSession(Session):
    """A step's engine with its execution context, CUDA stream and device buffers."""

    backend = "tensorrt"

    def __init__(
        self,
        engine: Any,
        path: Path,
        *,
        trt: ModuleType,
        cudart: ModuleType,
        keep_alive: Any,
        max_batch: int,
        source: str,
        check_finite: bool,
    ) -> None:
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        declared = _onnx_input_dtypes(path)
        # inputs the engine holds narrower than the ONNX graph declares (int64 ids that a
        # parser before TensorRT 10 turned into int32): fed as declared, narrowed per call
        self._narrow: dict[str, np.dtype[Any]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(name))
            spec = TensorSpec(name, shape, np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
            if None in shape[1:]:
                raise ValueError(f"tensor {name!r} has a dynamic axis beyond the batch: {spec}")
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            want = declared.get(name)
            if is_input and want == np.int64 and spec.dtype == np.int32:
                self._narrow[name] = spec.dtype
                spec = TensorSpec(name, shape, want)
            (inputs if is_input else outputs).append(spec)
        super().__init__(path, inputs, outputs, check_finite=check_finite)
        self.engine_source = source
        self.max_batch = max_batch
        self._cudart = cudart
        self._keep_alive = keep_alive  # the trt.Runtime must outlive its engines
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EdgeadaptError(f"{path}: TensorRT could not create an execution context")
        self._stream = _cuda(cudart, cudart.cudaStreamCreate())
        self._buffers: dict[str, int] = {}
        for spec in (*self.inputs, *self.outputs):
            rows = max_batch if spec.shape and spec.shape[0] is None else 1
            fixed = [d for d in spec.shape if d is not None]
            itemsize = self._narrow.get(spec.name, spec.dtype).itemsize
            nbytes = rows * int(np.prod(fixed, dtype=np.int64)) * itemsize
            ptr = _cuda(cudart, cudart.cudaMalloc(max(nbytes, 1)))
            self._buffers[spec.name] = int(ptr)
            self._context.set_tensor_address(spec.name, int(ptr))
        self._h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._dynamic = {s.name: s.shape[0] is None for s in self.inputs}

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, context, stream = self._cudart, self._context, self._stream
        staged = []
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name])
            if name in self._narrow:
                array = narrowed(array, self._narrow[name], self.path, name)
            if self._dynamic[name] and array.shape[0] > self.max_batch:
                raise InputError(
                    f"batch of {array.shape[0]} rows exceeds the engine's max_batch "
                    f"{self.max_batch} (set max_batch on the tensorrt runtime)",
                    source=self.path,
                    field=f"input {name!r}",
                )
            context.set_input_shape(name, array.shape)
            _cuda(
                cudart,
                cudart.cudaMemcpyAsync(
                    self._buffers[name], array.ctypes.data, array.nbytes, self._h2d, stream
                ),
            )
            staged.append(array)
        if not context.execute_async_v3(int(stream)):
            raise EdgeadaptError(f"{self.path}: TensorRT execution failed (see its log)")
        out = {}
        for spec in self.outputs:
            host = np.empty(tuple(context.get_tensor_shape(spec.name)), spec.dtype)
            _cuda(
                cudart,
                cudart.cudaMemcpyAsync(
                    host.ctypes.data, self._buffers[spec.name], host.nbytes, self._d2h, stream
                ),
            )
            out[spec.name] = host
        _cuda(cudart, cudart.cudaStreamSynchronize(stream))
        return out

    def _close(self) -> None:
        for ptr in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._cudart.cudaStreamDestroy(self._stream)
        self._buffers.clear()
        del self._context, self._engine, self._keep_alive


class TensorRtRuntime(Runtime):
    """TensorRT on CUDA GPU `gpu`, fp32 or fp16, engines cached under `cache_dir`
    (default `$EDGEADAPT_CACHE/tensorrt`, else `~/.cache/edgeadapt/tensorrt`)."""

    name = "tensorrt"

    def __init__(
        self,
        *,
        precision: str = "fp32",
        max_batch: int = 64,
        opt_batch: int = 1,
        cache_dir: str | os.PathLike[str] | None = None,
        gpu: int = 0,
        workspace_mb: int = 1024,
        check_finite: bool = False,
    ) -> None:
        super().__init__(check_finite=check_finite)
        self.precision = choice(precision, "precision", ("fp32", "fp16"))
        self.max_batch = positive_int(max_batch, "max_batch")
        self.opt_batch = positive_int(opt_batch, "opt_batch")
        if self.opt_batch > self.max_batch:
            raise InputError(f"must be at most max_batch ({self.max_batch})", source="opt_batch")
        self.workspace_mb = positive_int(workspace_mb, "workspace_mb")
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
            raise InputError(f"must be a GPU index >= 0, got {gpu!r}", source="gpu")
        self.gpu = gpu
        default_cache = Path(
            os.environ.get("EDGEADAPT_CACHE", Path.home() / ".cache" / "edgeadapt")
        )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache / "tensorrt"
        self._trt = import_backend("tensorrt", extra="tensorrt", feature=_FEATURE)
        self._cudart = _import_cudart()
        reason = gpu_missing_reason()
        if reason is not None:
            raise EdgeadaptError(f"the tensorrt runtime cannot run here: {reason}")
        _cuda(self._cudart, self._cudart.cudaSetDevice(gpu))
        props = _cuda(self._cudart, self._cudart.cudaGetDeviceProperties(gpu))
        name = props.name
        self.gpu_name = bytes(name).split(b"\0")[0].decode() if not isinstance(name, str) else name
        self.compute_capability = f"{props.major}.{props.minor}"
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        self._runtime = self._trt.Runtime(self._logger)

    def _key(self, sha256: str) -> dict[str, Any]:
        return {
            "tensorrt": self._trt.__version__,
            "gpu": self.gpu_name,
            "compute_capability": self.compute_capability,
            "step_sha256": sha256,
            "precision": self.precision,
            "opt_batch": self.opt_batch,
            "max_batch": self.max_batch,
        }

    def engine_path(self, onnx_path: str | os.PathLike[str]) -> Path:
        """Where the engine of this step is cached (the same name on every device)."""
        path = Path(onnx_path)
        sha = file_sha256(path)[:16]
        name = f"{path.stem}-{sha}-{self.precision}-b{self.opt_batch}-{self.max_batch}.engine"
        return self.cache_dir / name

    def _build(self, path: Path) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch always
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise InputError(f"TensorRT cannot parse this step: {errors}", source=path)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        # fp32 means fp32: TF32 (on by default on Ampere and later) would break parity.
        config.clear_flag(trt.BuilderFlag.TF32)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(tensor.shape)
            if any(d < 0 for d in shape[1:]):
                raise InputError(
                    f"input {tensor.name!r} has a dynamic axis beyond the batch {shape}; "
                    "TensorRT engines here only vary the batch",
                    source=path,
                )
            if shape and shape[0] < 0:
                rest = shape[1:]
                profile.set_shape(
                    tensor.name, (1, *rest), (self.opt_batch, *rest), (self.max_batch, *rest)
                )
                dynamic = True
        if dynamic:
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EdgeadaptError(f"{path}: TensorRT failed to build an engine (see its log)")
        return bytes(serialized)

    def _cached(self, engine_file: Path, key: dict[str, Any]) -> tuple[Any, str | None]:
        """The cached engine when it matches `key`; otherwise None and why it was refused."""
        if not engine_file.is_file():
            return None, None
        unpacked = _unpack(engine_file.read_bytes())
        if unpacked is None:
            return None, "it is not an edgeadapt engine file"
        found, blob = unpacked
        if found != key:
            diff = {k: found.get(k) for k in key if found.get(k) != key[k]}
            return None, f"it was built elsewhere ({diff})"
        engine = self._runtime.deserialize_cuda_engine(blob)
        if engine is None:
            return None, "TensorRT could not deserialise it"
        return engine, None

    def _load(self, path: Path) -> TensorRtSession:
        key = self._key(file_sha256(path))
        engine_file = self.engine_path(path)
        engine, refused = self._cached(engine_file, key)
        source = "cache"
        if engine is None:
            if refused is not None:
                log.warning(
                    "%s: rebuilding the TensorRT engine for %s on %s: %s",
                    engine_file,
                    path.name,
                    self.gpu_name,
                    refused,
                )
            blob = self._build(path)
            atomic_write_bytes(engine_file, _pack(key, blob))
            engine = self._runtime.deserialize_cuda_engine(blob)
            if engine is None:
                raise EdgeadaptError(f"{path}: TensorRT could not load the engine it just built")
            source = "rebuilt" if refused is not None else "built"
        return TensorRtSession(
            engine,
            path,
            trt=self._trt,
            cudart=self._cudart,
            keep_alive=self._runtime,
            max_batch=self.max_batch,
            source=source,
            check_finite=self.check_finite,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "version": self._trt.__version__,
            "device": f"cuda:{self.gpu}",
            "device_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "threads": 1,
            "precision": self.precision,
            "max_batch": self.max_batch,
            "opt_batch": self.opt_batch,
        }
