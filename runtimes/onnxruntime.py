"""ONNX Runtime backend: CPU by default, CUDA or TensorRT execution providers when present.

Fast path (`fast=True`, the default), chosen per call by the size of the outputs, both
halves measured by `bench/runtimes.py` on a 2-core CPU:
- small outputs (up to `COPY_BYTES` in all): IOBinding with the outputs bound once; ORT
  allocates them and `copy_outputs_to_cpu` copies them into caller-owned arrays. At batch 1
  this is the cheapest call (about 3 us under `InferenceSession.run`). Per call it uses
  the compiled binding and `_sess.run_with_iobinding` behind the public wrappers, whose
  Python checks concern only WebGPU graph capture.
- larger outputs: the session's compiled `_sess.run`, skipping `InferenceSession.run`'s
  per-call Python validation (our checks in `Session.run` replace it); its outputs are
  numpy arrays wrapping ORT's own buffers, with no copy. IOBinding would copy them
  (+110 us for a 2 MB activation).
The plain path (`fast=False`) is `InferenceSession.run`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.errors import EdgeadaptError
from edgeadapt.formats.device import cpu_model
from edgeadapt.formats.presets import check_threads

from .base import Runtime, Session, TensorSpec, choice, import_backend

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

_OPTIMIZATION = ("disable", "basic", "extended", "all")

# Outputs up to this many bytes per call go through IOBinding (copied once), larger ones
# through the zero-copy compiled run.
COPY_BYTES = 16 * 1024


def _spec(arg: Any, path: Path) -> TensorSpec:
    dtype = _DTYPES.get(arg.type)
    if dtype is None:
        raise ValueError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(dtype))


class OnnxRuntimeSession(Session):
    """A step loaded into an `onnxruntime.InferenceSession`."""

    backend = "onnxruntime"

    def __init__(self, session: Any, path: Path, *, fast: bool, check_finite: bool) -> None:
        super().__init__(
            path,
            [_spec(a, path) for a in session.get_inputs()],
            [_spec(a, path) for a in session.get_outputs()],
            check_finite=check_finite,
        )
        self._session = session
        self._names = list(self.output_names)
        self._one_out = self._names[0] if len(self._names) == 1 else None
        # `_sess` is the compiled session behind the public wrapper (see module docstring).
        self._call = session._sess.run if fast else session.run
        self._binding: Any = None
        self._row_bytes = 0
        if fast and self.dynamic_batch and all(None not in s.shape[1:] for s in self.outputs):
            self._row_bytes = sum(
                math.prod(d for d in s.shape[1:] if d is not None) * s.dtype.itemsize
                for s in self.outputs
            )
            # the compiled binding per call, the public `IOBinding` to rebind outputs
            self._io = session.io_binding()
            self._binding = self._io._iobinding
            self._first = self.input_names[0]
        self._run_bound = session._sess.run_with_iobinding
        self._bound_rows = -1
        self._bound: Mapping[str, np.ndarray] = {}

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self._binding
        if binding is not None:
            rows = feeds[self._first].shape[0]
            if rows * self._row_bytes <= COPY_BYTES:
                if rows != self._bound_rows:
                    # ORT keeps the outputs it allocated bound; a new batch needs fresh ones
                    self._io.clear_binding_outputs()
                    for name in self._names:
                        self._io.bind_output(name)
                    self._bound_rows = rows
                for name in self.input_names:
                    binding.bind_input(name, feeds[name])
                self._bound = feeds  # ORT reads the arrays' memory: keep them alive
                self._run_bound(binding, None)
                outs = binding.copy_outputs_to_cpu()
            else:
                outs = self._call(self._names, feeds, None)
        else:
            outs = self._call(self._names, feeds, None)
        # ORT returns exactly the outputs asked for, in order: one output (a plain
        # model's logits) is a dict display, cheaper than zipping
        if self._one_out is not None:
            return {self._one_out: outs[0]}
        return dict(zip(self._names, outs, strict=True))

    def _close(self) -> None:
        del self._call, self._session, self._binding, self._run_bound, self._bound
        self.__dict__.pop("_io", None)


class OnnxRuntime(Runtime):
    """ONNX Runtime with explicit threads, spin behaviour and graph optimisation level.

    `threads=None` keeps ORT's default (one per physical core). `spin=False`, the default,
    stops idle worker threads from busy-waiting (``session.intra_op.allow_spinning`` and
    ``inter_op`` "0"): every session has its own pool, so a cascade's sessions would
    otherwise spin on the cores the next step needs (a ResNet-18's four steps at 2
    threads cost ~3x the whole model with spinning, ~1.05x without); `spin=True` trades
    that for a slightly faster wake-up when one session runs alone. `device` is `cpu`, `cuda` or `tensorrt` (execution providers of onnxruntime-gpu).
    """

    name = "onnxruntime"

    def __init__(
        self,
        *,
        device: str = "cpu",
        threads: int | None = None,
        spin: bool = False,
        optimization: str = "all",
        fast: bool = True,
        check_finite: bool = False,
    ) -> None:
        super().__init__(check_finite=check_finite)
        self.device = choice(device, "device", tuple(_PROVIDERS))
        self.threads = check_threads(threads)
        self.spin = bool(spin)
        self.optimization = choice(optimization, "optimization", _OPTIMIZATION)
        self.fast = bool(fast)
        self._ort = import_backend("onnxruntime", extra=None, feature="the onnxruntime runtime")
        wanted = _PROVIDERS[self.device][0]
        if wanted not in self._ort.get_available_providers():
            raise EdgeadaptError(
                f"device {self.device!r} needs onnxruntime's {wanted}, which this build lacks "
                f"(it has {', '.join(self._ort.get_available_providers())}): "
                "install onnxruntime-gpu on a machine with CUDA"
            )

    def _options(self) -> Any:
        ort = self._ort
        so = ort.SessionOptions()
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        flag = "1" if self.spin else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", flag)
        so.add_session_config_entry("session.inter_op.allow_spinning", flag)
        return so

    def _load(self, path: Path) -> OnnxRuntimeSession:
        providers = _PROVIDERS[self.device]
        session = self._ort.InferenceSession(str(path), self._options(), providers=providers)
        used = session.get_providers()
        if used[0] != providers[0]:
            raise RuntimeError(f"{providers[0]} failed to initialise (ORT fell back to {used})")
        return OnnxRuntimeSession(session, path, fast=self.fast, check_finite=self.check_finite)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "version": self._ort.__version__,
            "device": self.device,
            "device_name": cpu_model() if self.device == "cpu" else self.device,
            "threads": self.threads if self.threads is not None else "default",
            "precision": "as-exported",
            "spin": self.spin,
            "optimization": self.optimization,
            "providers": _PROVIDERS[self.device],
        }
