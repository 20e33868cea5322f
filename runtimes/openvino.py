"""OpenVINO backend: `Core.compile_model` with a latency hint and one reused infer request.

Fast path (`fast=True`, the default): a small input (up to `SHARE_BYTES`) is written into
the request's own input tensor (resize + one memcpy, ~2 us), a large one is wrapped
in an `ov.Tensor` sharing the numpy array's memory (no copy, but ~12 us to build and set
the tensor, measured on an x86 development VM). The request reuses its output memory on the next call, so
small outputs are copied once into arrays the caller owns; a large one (over
`SHARE_BYTES`, static beyond the batch axis) is written by OpenVINO straight into a fresh
array handed to the request as a shared output tensor, with no copy. The plain path (`fast=False`) is
`InferRequest.infer(feeds)` with OpenVINO's default copying of inputs and outputs;
`bench/runtimes.py` measures both.

Precision defaults to fp32 (`INFERENCE_PRECISION_HINT=f32`): on CPUs with bf16/AMX and on
GPUs OpenVINO otherwise lowers precision by itself, which breaks parity with ONNX Runtime.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from edgeadapt.errors import EdgeadaptError
from edgeadapt.formats.device import cpu_model
from edgeadapt.formats.presets import check_threads

from .base import Runtime, Session, TensorSpec, choice, import_backend

_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}

# Above this many bytes an input is shared with OpenVINO instead of copied into the
# request: a memcpy of 64 KiB costs about what building a shared tensor does.
SHARE_BYTES = 64 * 1024


def _onnx_io_names(path: Path) -> set[str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name for v in (*graph.input, *graph.output)}


def _specs(ports: Any, path: Path, io_names: list[set[str]]) -> list[TensorSpec]:
    """Port name (the ONNX tensor name, even where OpenVINO merged several), shape, dtype."""
    specs = []
    for port in ports:
        names = port.get_names()
        if len(names) == 1:
            (name,) = names
        else:
            if not io_names:
                io_names.append(_onnx_io_names(path))
            matched = sorted(names & io_names[0])
            if len(matched) != 1:
                raise ValueError(f"cannot tell which of {sorted(names)} is the ONNX tensor name")
            name = matched[0]
        pshape = port.get_partial_shape()
        if pshape.rank.is_dynamic:
            raise ValueError(f"tensor {name!r} has a dynamic rank")
        shape = tuple(d.get_length() if d.is_static else None for d in pshape)
        specs.append(TensorSpec(name, shape, np.dtype(port.get_element_type().to_dtype())))
    return specs


class OpenVinoSession(Session):
    """A step compiled by OpenVINO, with one infer request reused across calls."""

    backend = "openvino"

    def __init__(self, compiled: Any, path: Path, *, fast: bool, check_finite: bool) -> None:
        io_names: list[set[str]] = []
        super().__init__(
            path,
            _specs(compiled.inputs, path, io_names),
            _specs(compiled.outputs, path, io_names),
            check_finite=check_finite,
        )
        import openvino

        self._tensor = openvino.Tensor
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._in_ports = list(enumerate(self.input_names))
        # the request's own input tensors, and whether a shared tensor replaced each one
        self._own = [self._request.get_input_tensor(i) for i, _ in self._in_ports]
        self._shared = [False] * len(self._own)
        self._out = list(zip(self.output_names, compiled.outputs, strict=True))
        # outputs OpenVINO may write straight into a caller-owned array (static beyond the
        # batch axis): index, name, per-row shape, dtype and bytes, and the request's own
        # output tensor, put back when a later call copies (the array is the caller's)
        self._direct = [
            (i, s.name, s.shape[1:], s.dtype, s.dtype.itemsize * math.prod(s.shape[1:]))
            for i, s in enumerate(self.outputs)
            if self.dynamic_batch and None not in s.shape[1:]
        ]
        self._own_out = [self._request.get_output_tensor(i) for i, *_ in self._direct]
        self._out_shared = [False] * len(self._direct)
        self._run_impl = self._run_fast if fast else self._run_plain

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run_impl(feeds)

    def _run_fast(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._request
        for index, name in self._in_ports:
            array = feeds[name]
            if array.nbytes > SHARE_BYTES:
                array = np.ascontiguousarray(array)
                request.set_input_tensor(index, self._tensor(array, shared_memory=True))
                self._shared[index] = True
                continue
            own = self._own[index]
            if self._shared[index]:
                request.set_input_tensor(index, own)
                self._shared[index] = False
            own.shape = array.shape
            own.data[...] = array
        rows = feeds[self._in_ports[0][1]].shape[0]
        direct = {}
        for k, (index, name, rest, dtype, row_bytes) in enumerate(self._direct):
            if rows * row_bytes > SHARE_BYTES:  # written in place: no copy afterwards
                array = np.empty((rows, *rest), dtype=dtype)
                request.set_output_tensor(index, self._tensor(array, shared_memory=True))
                self._out_shared[k] = True
                direct[name] = array
            elif self._out_shared[k]:
                request.set_output_tensor(index, self._own_out[k])
                self._out_shared[k] = False
        request.infer()
        return {
            name: direct[name] if name in direct else request.get_tensor(port).data.copy()
            for name, port in self._out
        }

    def _run_plain(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._request.infer({index: feeds[name] for index, name in self._in_ports})
        return {name: result[port] for name, port in self._out}

    def _close(self) -> None:
        del self._request, self._compiled, self._run_impl, self._own, self._own_out


@functools.cache
def _core(ov: ModuleType) -> Any:
    """The process's one OpenVINO Core. Each Core's CPU plugin puts an alternate signal
    stack of its own on the thread that creates it and the previous one back when it
    goes; Cores freed out of order leave the thread on an unmapped stack, where the next
    signal (Ctrl-C, SIGTERM) crashes the process instead of stopping it cleanly."""
    return ov.Core()


class OpenVinoRuntime(Runtime):
    """OpenVINO on `CPU` (default) or `GPU`, tuned for latency.

    `threads` sets `INFERENCE_NUM_THREADS` on CPU (`None` keeps OpenVINO's choice);
    `hint` is the `PERFORMANCE_HINT` (`LATENCY` for one request at a time).
    """

    name = "openvino"

    def __init__(
        self,
        *,
        device: str = "CPU",
        threads: int | None = None,
        precision: str = "fp32",
        hint: str = "LATENCY",
        fast: bool = True,
        check_finite: bool = False,
    ) -> None:
        super().__init__(check_finite=check_finite)
        self.threads = check_threads(threads)
        self.precision = choice(precision, "precision", tuple(_PRECISION))
        self.hint = choice(hint, "hint", ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"))
        self.fast = bool(fast)
        self._ov = import_backend("openvino", extra="openvino", feature="the openvino runtime")
        self._core = _core(self._ov)
        available = self._core.available_devices
        if not isinstance(device, str) or not any(
            device in (d, d.split(".")[0]) for d in available
        ):
            raise EdgeadaptError(
                f"OpenVINO device {device!r} is not available here (found {', '.join(available)})"
            )
        self.device = device

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": self.hint,
            "INFERENCE_PRECISION_HINT": _PRECISION[self.precision],
        }
        if self.threads is not None and self.device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config

    def _load(self, path: Path) -> OpenVinoSession:
        compiled = self._core.compile_model(str(path), self.device, self._config())
        return OpenVinoSession(compiled, path, fast=self.fast, check_finite=self.check_finite)

    def describe(self) -> dict[str, Any]:
        try:
            device_name = str(self._core.get_property(self.device, "FULL_DEVICE_NAME"))
        except RuntimeError:
            device_name = cpu_model() if self.device.startswith("CPU") else self.device
        return {
            "backend": self.name,
            "version": self._ov.get_version(),
            "device": self.device,
            "device_name": device_name,
            "threads": self.threads if self.threads is not None else "default",
            "precision": self.precision,
            "hint": self.hint,
        }
