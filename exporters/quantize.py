"""Precision variants of a bundle: every step at int8, fp16 or bf16, same structure and I/O.

`quantize_bundle` writes a new bundle of the source's kind (early-exit, ensemble or
branches), state names, step inputs and outputs (float32 I/O), so every command that reads
a bundle reads it unchanged; a state of it is the source's state at another precision.

- **int8**: ONNX Runtime's static quantization (``quantize_static``, QDQ format, which
  OpenVINO and TensorRT also read), calibrated on the user's data. Step i of an
  early-exit bundle is calibrated on the activations the float32 steps 0..i-1 produce on
  the calibration samples (recomputed a batch at a time, so nothing is held whole); an
  ensemble member or branch on the model inputs. Weights are int8, per output channel of
  Conv, Gemm and MatMul by default (`QuantizeOptions.per_channel`); activations uint8
  with a zero point (ORT's U8S8 kernels, the fast ones on x86: `bench/quantize.py`) or,
  with ``activations="int8"``, int8 symmetric (what TensorRT reads).
- **fp16**: ``onnxruntime.transformers.float16.convert_float_to_float16`` with the I/O
  kept float32; **bf16**: the same graph with its float16 tensors stored as bfloat16.

Calibration minimums (samples used to calibrate, the held-out share not counted): MinMax
100, as the range of n exchangeable samples is exceeded by a new sample with
probability at most 1/(n+1), under 1% at 100; Entropy and Percentile 1,000, as they fit
a histogram's tail (ORT's Percentile clips the top 0.001% of values), which needs ten
times as many. fp16 and bf16 calibrate nothing.

Every variant is then loaded and run on the chosen runtime; one that the runtime cannot
load or run is refused naming the runtime, the op and the precision, and nothing is
written. Parity is measured on the held-out share of the calibration data (its last
rows): each state's accuracy at both precisions and its agreement with the float32 state
(the share of samples where both predict the same class). The manifest's
``extra["precision"]`` records the precision, the method, the source bundle's manifest
sha256 and the parity (`docs/formats.md`).

With ``with_source`` an early-exit source and its variant are written as one bundle of
two chains by `edgeadapt.exporters.variants.export_variants` (the variant first, the
source last as the reference), so a plan may mix the precisions in one step.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeadapt.data.sources import DataSpec
from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.exporters import _graph
from edgeadapt.exporters._calib import Calibration, open_calibration
from edgeadapt.exporters.variants import export_variants
from edgeadapt.formats.bundle import (
    INDEPENDENT_KINDS,
    Bundle,
    Step,
    StepInfo,
    as_bundle,
    write_bundle,
)
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.graph import deps as graphdeps
from edgeadapt.graph.flops import count_flops
from edgeadapt.runtimes import Session, from_config

PRECISIONS = ("int8", "fp16", "bf16")
METHODS = ("minmax", "entropy", "percentile")
#: Samples each calibration method needs (see the module docstring).
MIN_CALIBRATION = {"minmax": 100, "entropy": 1000, "percentile": 1000}
ACTIVATIONS = ("uint8", "int8")
#: Ops whose weights are quantized per output channel when `per_channel` is on.
PER_CHANNEL_OPS = ("Conv", "Gemm", "MatMul")

Feeds = dict[str, np.ndarray]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class QuantizeOptions:
    """How `quantize_bundle` makes the variant: `precision` (int8, fp16, bf16); for int8
    the calibration `method` (minmax, entropy, percentile), `per_channel` weights and the
    `activations` type (uint8 asymmetric or int8 symmetric); `heldout`, the share of the
    calibration rows (its last ones) kept out of calibration to measure parity; `batch`,
    rows per forward pass; `runtime`, where the variant must load and run."""

    precision: str = "int8"
    method: str = "minmax"
    per_channel: bool = True
    activations: str = "uint8"
    heldout: float = 0.2
    batch: int = 64
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(threads=1))

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("precision", self.precision, PRECISIONS),
            ("method", self.method, METHODS),
            ("activations", self.activations, ACTIVATIONS),
        ):
            if value not in allowed:
                raise InputError(f"must be one of {', '.join(allowed)}, got {value!r}", source=name)
        if not isinstance(self.heldout, float | int) or not 0 < self.heldout < 1:
            raise InputError(f"must be in (0, 1), got {self.heldout!r}", source="heldout")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise InputError(f"must be a positive integer, got {self.batch!r}", source="batch")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"precision": self.precision}
        if self.precision == "int8":
            doc |= {
                "method": self.method,
                "per_channel": self.per_channel,
                "per_channel_ops": list(PER_CHANNEL_OPS) if self.per_channel else [],
                "weights": "int8",
                "activations": self.activations,
                "format": "QDQ",
            }
        return doc | {"runtime": self.runtime.to_json()}


@dataclass(frozen=True)
class _Split:
    """The calibration rows: [0, fit) calibrate, [fit, n) measure parity."""

    calib: Calibration
    fit: int
    n: int

    def rows(self, lo: int, hi: int, size: int) -> Iterator[tuple[Feeds, np.ndarray]]:
        """(feeds, labels) of rows [lo, hi) in batches of at most `size`, streamed (a
        loader script cannot seek, so every source is read from its first row)."""
        start = 0
        for feeds, y in self.calib.batches(size):
            stop = start + len(y)
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                yield (
                    {k: v[a - start : b - start] for k, v in feeds.items()},
                    y[a - start : b - start],
                )
            if stop >= hi:
                return
            start = stop


def _split(calib: Calibration, options: QuantizeOptions) -> _Split:
    """Cut the rows into calibration and held-out shares; too few for the method is
    refused with the count it needs."""
    n = calib.n
    held = max(1, round(n * options.heldout))
    if options.precision == "int8":
        need = MIN_CALIBRATION[options.method]
        if n - held < need:
            total = need + max(1, round(need * options.heldout / (1 - options.heldout)))
            raise InputError(
                f"{options.method} calibration needs at least {need} samples to calibrate "
                f"plus {options.heldout:.0%} held out for parity: {total} in all, got {n}",
                source=calib.inputs.source,
            )
    return _Split(calib, n - held, n)


def _feeds(step: StepInfo, model_feeds: Feeds, activation: np.ndarray | None) -> Feeds:
    """What `step` reads: the previous activation (if any) and the model inputs it names."""
    return {n: v for n in step.inputs if (v := model_feeds.get(n, activation)) is not None}


class _Chain:
    """Float32 ONNX Runtime sessions of the source steps, to compute step inputs."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.sessions: list[Any] = []

    def step_inputs(self, i: int, model_feeds: Feeds) -> Feeds:
        """Step i's inputs for one batch: the float32 chain 0..i-1 run for an early-exit
        step, the model inputs for an independent one."""
        steps = self.bundle.steps
        if self.bundle.kind in INDEPENDENT_KINDS or i == 0:
            return _feeds(steps[i], model_feeds, None)
        while len(self.sessions) < i:
            k = len(self.sessions)
            self.sessions.append(_graph.session(onnx.load(str(steps[k].path))))
        act: np.ndarray | None = None
        for k in range(i):
            act = self.sessions[k].run([steps[k].activation], _feeds(steps[k], model_feeds, act))[0]
        return _feeds(steps[i], model_feeds, act)


def _reader(split: _Split, chain: _Chain, i: int, size: int) -> Any:
    """An ORT CalibrationDataReader over step i's inputs on the calibration rows."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = (
                chain.step_inputs(i, feeds) for feeds, _ in split.rows(0, split.fit, size)
            )

        def get_next(self) -> Feeds | None:
            return next(self.batches, None)

    return Reader()


def _int8(src: Path, out: Path, reader: Any, options: QuantizeOptions) -> None:
    from onnxruntime.quantization import CalibrationMethod

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[options.method]
    # ORT logs a hint to pre-process on the root logger for every model; measured on the
    # demo bundle, pre-processing changed neither accuracy nor speed (docs/benchmarks.md)
    logging.disable(logging.WARNING)
    try:
        _quantize_static(src, out, reader, options, method)
    finally:
        logging.disable(logging.NOTSET)


def _quantize_static(
    src: Path, out: Path, reader: Any, options: QuantizeOptions, method: Any
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        src,
        out,
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=options.per_channel,
        activation_type=QuantType.QUInt8 if options.activations == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        extra_options={"ActivationSymmetric": options.activations == "int8"},
    )


def _topological(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its main graph's nodes in topological order (the float16 converter
    appends the casts of the kept float32 inputs last, which the ONNX checker refuses)."""
    nodes = list(model.graph.node)
    ready = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    ready.add("")
    order: list[onnx.NodeProto] = []
    while nodes:
        rest = [n for n in nodes if not set(graphdeps.node_inputs(n)) <= ready]
        done = [n for n in nodes if set(graphdeps.node_inputs(n)) <= ready]
        if not done:  # a cycle, or an input nothing produces: leave it to the checker
            order += rest
            break
        order += done
        ready.update(o for n in done for o in n.output)
        nodes = rest
    del model.graph.node[:]
    model.graph.node.extend(order)
    return model


def _to_bfloat16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float16 `model` with every float16 tensor, value type and Cast stored as bfloat16."""
    import ml_dtypes

    fp16, bf16 = onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16

    def tensor(t: onnx.TensorProto) -> None:
        if t.data_type == fp16:
            values = onnx.numpy_helper.to_array(t).astype(np.float32).astype(ml_dtypes.bfloat16)
            t.CopyFrom(onnx.numpy_helper.from_array(values, t.name))

    def graph(g: onnx.GraphProto) -> None:
        for t in g.initializer:
            tensor(t)
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.type.tensor_type.elem_type == fp16:
                vi.type.tensor_type.elem_type = bf16
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    tensor(a.t)
                elif a.type == onnx.AttributeProto.GRAPH:
                    graph(a.g)
                elif node.op_type == "Cast" and a.name == "to" and a.i == fp16:
                    a.i = bf16

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph(out.graph)
    return out


def _convert(
    i: int, step: StepInfo, work: Path, split: _Split, chain: _Chain, options: QuantizeOptions
) -> Path:
    """Write step i at `options.precision` to `work` and return its path."""
    model = onnx.load(str(step.path))  # with its external data
    src, out = work / f"src{i}.onnx", work / f"q{i}.onnx"
    if options.precision == "int8":
        onnx.save_model(model, str(src))
        try:
            _int8(src, out, _reader(split, chain, i, options.batch), options)
        except EdgeadaptError:
            raise
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"int8 quantization failed: {e}", source=step.path) from None
        return out
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = _topological(convert_float_to_float16(model, keep_io_types=True))
    onnx.save_model(half if options.precision == "fp16" else _to_bfloat16(half), str(out))
    return out


#: ORT's words for an op it has no kernel for, and for an op type it cannot take.
_NO_KERNEL = re.compile(r"implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_BAD_TYPE = re.compile(r"of operator \((\w+)\) in node \(([^)]*)\)")


def _refusal(e: Exception, step: StepInfo, model: Path, options: QuantizeOptions) -> InputError:
    """The error for a variant the runtime cannot load or run: runtime, op, precision."""
    text = re.sub(r"Load model from \S+ failed:", "", getattr(e, "message", str(e)))
    kernel, typed = _NO_KERNEL.search(text), _BAD_TYPE.search(text)
    if kernel:
        op = f"{kernel.group(1)} (opset {kernel.group(2)}, node {kernel.group(3)!r})"
    elif typed:
        op = f"{typed.group(1)} (node {typed.group(2)!r})"
    else:
        ops = sorted({n.op_type for n in onnx.load(str(model)).graph.node})
        op = f"one of its ops ({', '.join(ops)})"
    return InputError(
        f"{options.runtime.runtime} cannot run {op} at {options.precision}; nothing written "
        f"({text.splitlines()[0] if text else type(e).__name__})",
        source=step.path,
    )


def _sessions(
    paths: Sequence[Path], steps: Sequence[StepInfo], options: QuantizeOptions, refuse: bool
) -> list[Session]:
    runtime = from_config(options.runtime)
    out = []
    for path, step in zip(paths, steps, strict=True):
        try:
            out.append(runtime.load(path))
        except EdgeadaptError as e:
            if not refuse:
                raise
            raise _refusal(e, step, path, options) from None
    return out


def _predict(
    bundle: Bundle,
    sessions: Sequence[Session],
    feeds: Feeds,
    refuse: Callable[[int, Exception], Exception] | None,
) -> list[np.ndarray]:
    """Each state's predicted class on one batch."""
    preds: list[np.ndarray] = []
    act: np.ndarray | None = None
    for i, (step, sess) in enumerate(zip(bundle.steps, sessions, strict=True)):
        try:
            out = sess.run(_feeds(step, feeds, act))
        except EdgeadaptError as e:
            if refuse is None:
                raise
            raise refuse(i, e) from None
        preds.append(np.asarray(out[step.logits]).argmax(axis=1))
        act = out.get(step.activation) if step.activation else None
    return preds


def _parity(
    bundle: Bundle, paths: Sequence[Path], split: _Split, options: QuantizeOptions
) -> dict[str, Any]:
    """Run the variant and the source on the held-out rows: accuracy and agreement per state."""
    steps = bundle.steps
    ours = _sessions(paths, steps, options, refuse=True)
    theirs = _sessions([s.path for s in steps], steps, options, refuse=False)

    def refuse(i: int, e: Exception) -> Exception:
        return _refusal(e, steps[i], paths[i], options)

    count = len(steps)
    right, right32, same = np.zeros(count), np.zeros(count), np.zeros(count)
    try:
        for feeds, y in split.rows(split.fit, split.n, options.batch):
            got = _predict(bundle, ours, feeds, refuse)
            want = _predict(bundle, theirs, feeds, None)
            for k in range(count):
                right[k] += int((got[k] == y).sum())
                right32[k] += int((want[k] == y).sum())
                same[k] += int((got[k] == want[k]).sum())
    finally:
        for s in [*ours, *theirs]:
            s.close()
    n = split.n - split.fit
    return {
        "samples": n,
        "rows": [split.fit, split.n],
        "states": [
            {
                "name": st.name,
                "accuracy": right[k] / n,
                "fp32_accuracy": right32[k] / n,
                "agreement": same[k] / n,
            }
            for k, st in enumerate(bundle.states)
        ],
    }


def _head_input(step: StepInfo) -> str | None:
    """The tensor where the source step's head starts, so that the variant's FLOPs split
    the same way: for a step with an activation that is it; for a last step whose head
    the manifest counts apart, the tensor whose ancestors cost the source's stage FLOPs
    (only then is the source step's model read)."""
    if step.activation is not None or step.head_flops == 0:
        return None
    model = onnx.load(str(step.path))
    cost = count_flops(model)
    for node in model.graph.node:
        for name in node.output:
            if name and cost.subset(graphdeps.ancestors(model, [name]))[0] == step.stage_flops:
                return name
    return None


def quantize_bundle(
    bundle: Bundle | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    calibration: str | os.PathLike[str] | DataSpec,
    options: QuantizeOptions | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
    with_source: bool = False,
) -> Bundle:
    """Write `bundle` with every step at `options.precision` to `out_dir` (see the module
    docstring) and return the written bundle; `calibration` is labelled data as
    `edgeadapt.data.sources.open_source` reads it. Nothing is written when a step cannot
    be converted or the runtime cannot run it.

    `with_source` (an early-exit source only) writes instead the bundle `export variants`
    makes of the variant and the source: two chains, the variant's (named by its
    precision) first and the source's (``fp32``, the reference) last, with the variant's
    record in ``extra.chains[0].precision``."""
    options = options or QuantizeOptions()
    src = as_bundle(bundle)
    if "precision" in src.extra:
        raise InputError(
            f"is already a precision variant ({src.extra['precision'].get('precision')}); "
            "quantize its float32 source bundle instead",
            source=src.path / "manifest.json",
            field="$.extra.precision",
        )
    if src.chain_names:
        raise InputError(
            f"has several chains ({', '.join(dict.fromkeys(src.chain_names))}); quantize the one-chain "
            "bundle of one of them and combine the results with export variants",
            source=src.path / "manifest.json",
            field="$.version",
        )
    if with_source and src.kind != "early-exit":
        raise InputError(
            "a variant is combined with its source (--with-source) only for a one-chain "
            f"early-exit bundle (its exits at two precisions); this one has kind {src.kind}: "
            "write the variant alone and evaluate and profile the two bundles side by side",
            source=src.path / "manifest.json",
            field="$.kind",
        )
    split = _split(open_calibration(calibration, src.inputs, src.num_classes), options)
    if with_source:
        with tempfile.TemporaryDirectory(prefix="edgeadapt-quantize-") as tmp:
            variant = _write_variant(
                src, Path(tmp) / options.precision, split, options, tick=progress
            )
            return export_variants(
                [variant, src], out_dir, names=[options.precision, "fp32"], force=force
            )
    return _write_variant(src, out_dir, split, options, force=force, tick=progress)


def _write_variant(
    src: Bundle,
    out_dir: str | os.PathLike[str],
    split: _Split,
    options: QuantizeOptions,
    *,
    force: bool = False,
    tick: Progress | None = None,
) -> Bundle:
    """`quantize_bundle`'s variant of `src`, calibrated and checked on `split`."""
    chain = _Chain(src)
    tick = tick or (lambda label, done, total: None)
    with tempfile.TemporaryDirectory(prefix="edgeadapt-quantize-") as tmp:
        paths = []
        for i, step in enumerate(src.steps):
            tick(f"converting step {i}", i, len(src.steps) + 1)
            paths.append(_convert(i, step, Path(tmp), split, chain, options))
        tick("measuring parity", len(src.steps), len(src.steps) + 1)
        parity = _parity(src, paths, split, options)
        models = [onnx.load(str(p)) for p in paths]
    precision = {
        **options.to_json(),
        "source_manifest_sha256": src.manifest_sha256,
        "source": str(src.path),
        "calibration": {**split.calib.inputs.record(), "samples": split.n, "calibrated": split.fit},
        "parity": parity,
    }
    common: dict[str, Any] = {
        "kind": src.kind,
        "inputs": src.inputs,
        "num_classes": src.num_classes,
        "state_names": [s.name for s in src.states],
        "producer": {
            "exporter": "edgeadapt.exporters.quantize",
            "source_sha256": src.manifest_sha256,
        },
        "extra": {"precision": precision},
        "force": force,
    }
    if src.kind in INDEPENDENT_KINDS:
        return write_bundle(out_dir, models=models, **common)
    steps = [
        Step(m, s.logits, s.activation, _head_input(s))
        for m, s in zip(models, src.steps, strict=True)
    ]
    return write_bundle(out_dir, steps=steps, **common)
