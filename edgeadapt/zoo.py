"""Standard architectures with random weights, for the examples, the benchmark and tests.

On an ordinary machine a user takes these from torchvision, timm or transformers; here
they are written in plain torch.nn (`edgeadapt._zoo_torch`) with the same layer
structure, so the exported graphs have the same operators and cost. Weights are random
and BatchNorm statistics are re-estimated on random data before export, so activations
stay normalised as in a trained network; accuracy on any data is meaningless, latency
and graph structure are not.

Each `ZooModel` names its inputs, the modules after which a state ends (`cuts`, module
paths as in the original library: ``layer2``, ``features.3``, ``blocks.5``,
``encoder.layer.1``) and the pooling its trained exit heads use. `tiny=True` gives a
reduced version of the same graph (few channels, small inputs) that tests export in
about a second.

    m = zoo.get("resnet18")
    net = zoo.build(m)                       # torch module, BatchNorm re-estimated
    zoo.export(m, net, "resnet18.onnx")      # ONNX, dynamic batch axis, output "logits"
    cuts = zoo.cut_tensors("resnet18.onnx", m.cuts)

torch is imported only by `build` and `export`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from edgeadapt.errors import EdgeadaptError, InputError, MissingExtraError
from edgeadapt.graph.modulepaths import module_path

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "LOGITS",
    "ZooInput",
    "ZooModel",
    "build",
    "cut_tensors",
    "export",
    "get",
    "names",
    "random_inputs",
    "teacher_labels",
    "torch_export",
    "write_data",
]

#: Name of every zoo model's output in its ONNX export.
LOGITS = "logits"
#: The [CLS] token id of the synthetic token inputs (BERT's is 101; any id works).
CLS_ID = 1


@dataclass(frozen=True)
class ZooInput:
    """One model input: name, per-sample shape, dtype and what it holds (``image``,
    ``tokens`` below `vocab`, or ``mask``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    vocab: int = 0


@dataclass(frozen=True)
class ZooModel:
    """One architecture: how to build it and where the exporter cuts it."""

    name: str
    description: str
    family: str  # "cnn" or "transformer"
    inputs: tuple[ZooInput, ...]
    num_classes: int
    cuts: tuple[str, ...]
    pool: str  # the --pool of its trained heads
    factory: Callable[[], nn.Module] = field(repr=False, compare=False)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]


def _torch_zoo() -> Any:
    try:
        from edgeadapt import _zoo_torch
    except ImportError as e:
        raise MissingExtraError("torch", "torch", "building the zoo's models") from e
    return _zoo_torch


def _image(size: int) -> tuple[ZooInput, ...]:
    return (ZooInput("x", (3, size, size), "float32", "image"),)


def _tokens(length: int, vocab: int) -> tuple[ZooInput, ...]:
    return (
        ZooInput("input_ids", (length,), "int64", "tokens", vocab),
        ZooInput("attention_mask", (length,), "int64", "mask"),
    )


def _resnet(tiny: bool) -> ZooModel:
    layers, width, size, classes = (
        ((1, 1, 1, 1), 8, 32, 10) if tiny else ((2, 2, 2, 2), 64, 224, 1000)
    )
    return ZooModel(
        "resnet18",
        "ResNet-18 (torchvision layout: 7x7 stem, 4 layers of 2 basic blocks)",
        "cnn",
        _image(size),
        classes,
        ("layer1", "layer2", "layer3"),
        "gap",
        lambda: _torch_zoo().ResNet(layers, width, classes),
    )


def _mobilenet(tiny: bool) -> ZooModel:
    size, classes = (32, 10) if tiny else (224, 1000)

    def factory() -> nn.Module:
        t = _torch_zoo()
        config = t.MOBILENET_V3_SMALL
        if tiny:  # same block kinds (SE, hardswish, residuals), a quarter of the width
            config = tuple(
                t.BneckConfig(
                    max(8, c.c_in // 4),
                    c.kernel,
                    max(8, c.expanded // 4),
                    max(8, c.c_out // 4),
                    c.se,
                    c.hardswish,
                    c.stride,
                )
                for c in config[:6]
            )
        return t.MobileNetV3(config, 64 if tiny else 1024, classes)

    return ZooModel(
        "mobilenet_v3_small",
        "MobileNet-V3-small (torchvision layout: inverted residuals, SE, hardswish)",
        "cnn",
        _image(size),
        classes,
        ("features.3", "features.5") if tiny else ("features.3", "features.8"),
        "gap",
        factory,
    )


def _efficientnet(tiny: bool) -> ZooModel:
    size, classes = (32, 10) if tiny else (224, 1000)

    def factory() -> nn.Module:
        t = _torch_zoo()
        config = t.EFFICIENTNET_B0
        if tiny:
            config = tuple(
                t.MBConvConfig(
                    c.expand, c.kernel, c.stride, max(8, c.c_in // 4), max(8, c.c_out // 4), 1
                )
                for c in config[:5]
            )
        return t.EfficientNet(config, 64 if tiny else 1280, classes)

    return ZooModel(
        "efficientnet_b0",
        "EfficientNet-B0 (torchvision layout: MBConv stages with SE, SiLU)",
        "cnn",
        _image(size),
        classes,
        ("features.2", "features.4") if tiny else ("features.3", "features.5", "features.6"),
        "gap",
        factory,
    )


def _vit(tiny: bool) -> ZooModel:
    if tiny:
        size, patch, dim, depth, heads, classes = 32, 8, 32, 2, 2, 10
    else:  # ViT-Ti/16 (timm vit_tiny_patch16_224)
        size, patch, dim, depth, heads, classes = 224, 16, 192, 12, 3, 1000
    return ZooModel(
        "vit_tiny",
        f"ViT-Ti/{patch} at {size} px (timm layout: [CLS] token, pre-norm blocks)",
        "transformer",
        _image(size),
        classes,
        ("blocks.0",) if tiny else ("blocks.2", "blocks.5", "blocks.8"),
        "cls",
        lambda: _torch_zoo().ViT(size, patch, dim, depth, heads, 4.0, classes),
    )


def _bert(tiny: bool) -> ZooModel:
    length = 16 if tiny else 128

    def config() -> Any:
        t = _torch_zoo()
        if tiny:
            return t.BertConfig(100, 32, 2, 2, 64, length, num_labels=4)
        return t.BertConfig(8000, 256, 4, 4, 1024, length, num_labels=4)

    return ZooModel(
        "bert_small",
        "BERT-style classifier from a config (Hugging Face BertForSequenceClassification "
        f"layout, {'2 layers, hidden 32' if tiny else '4 layers, hidden 256, 4 heads'}, "
        f"sequence {length})",
        "transformer",
        _tokens(length, 100 if tiny else 8000),
        4,
        ("encoder.layer.0",) if tiny else ("encoder.layer.0", "encoder.layer.1", "encoder.layer.2"),
        "cls",
        lambda: _torch_zoo().BertClassifier(config()),
    )


_MODELS: dict[str, Callable[[bool], ZooModel]] = {
    "resnet18": _resnet,
    "mobilenet_v3_small": _mobilenet,
    "efficientnet_b0": _efficientnet,
    "vit_tiny": _vit,
    "bert_small": _bert,
}


def names() -> list[str]:
    """The zoo's model names."""
    return list(_MODELS)


def get(name: str, *, tiny: bool = False) -> ZooModel:
    """The zoo model `name` (full size, or its reduced version with `tiny`)."""
    try:
        return _MODELS[name](tiny)
    except KeyError:
        raise InputError(f"no zoo model {name!r}; one of {', '.join(_MODELS)}") from None


def random_inputs(model: ZooModel, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` synthetic samples for every input of `model`: standard-normal images (the
    scale of normalised ImageNet pixels); token ids starting with [CLS], each sequence
    padded after a random length of at least a quarter of the maximum, with its mask."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    lengths = None
    for spec in model.inputs:
        if spec.kind == "image":
            out[spec.name] = rng.standard_normal((n, *spec.shape), dtype=np.float32)
            continue
        t = spec.shape[0]
        if lengths is None:
            lengths = rng.integers(max(2, t // 4), t + 1, size=n)
        valid = np.arange(t)[None, :] < lengths[:, None]
        if spec.kind == "tokens":
            ids = rng.integers(CLS_ID + 1, spec.vocab, size=(n, t))
            ids[:, 0] = CLS_ID
            out[spec.name] = np.where(valid, ids, 0).astype(np.int64)
        else:
            out[spec.name] = valid.astype(np.int64)
    return out


def build(model: ZooModel, *, seed: int = 0, batches: int = 4, batch_size: int = 16) -> nn.Module:
    """`model` with random weights (seeded) and BatchNorm statistics re-estimated on
    `batches` random batches, in eval mode."""
    t = _torch_zoo()
    import torch

    torch.manual_seed(seed)
    net = model.factory()
    data = [random_inputs(model, batch_size, seed + 1 + k) for k in range(batches)]
    feeds = [tuple(torch.from_numpy(d[i.name]) for i in model.inputs) for d in data]
    return t.recalibrate_batchnorm(net, feeds)


def export(
    model: ZooModel, net: nn.Module, path: str | os.PathLike[str], *, opset: int = 17
) -> Path:
    """Export `net` to ONNX at `path` with torch's TorchScript exporter: inputs named as
    `model.inputs`, one output `logits`, a dynamic batch axis everywhere."""
    example = random_inputs(model, 2, seed=12345)
    return torch_export(net, {i.name: example[i.name] for i in model.inputs}, path, opset=opset)


def torch_export(
    net: nn.Module,
    example: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    dynamo: bool = False,
    opset: int | None = None,
) -> Path:
    """Export `net` as users do: inputs named as the keys of `example` (its arrays are the
    example batch), one output ``logits`` (a Hugging Face model's output object holds only
    its logits in eval mode without labels), a dynamic batch axis (``dynamic_axes`` for
    the TorchScript exporter, ``dynamic_shapes`` with `dynamo`). Written atomically."""
    import torch

    path = Path(path)
    names = list(example)
    args = tuple(torch.from_numpy(np.asarray(example[n])) for n in names)
    kw: dict[str, Any] = {"input_names": names, "output_names": [LOGITS], "dynamo": dynamo}
    if opset is not None:
        kw["opset_version"] = opset
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1024)
        kw["dynamic_shapes"] = tuple({0: batch} for _ in names)
    else:
        kw["dynamic_axes"] = {n: {0: "batch"} for n in (*names, LOGITS)}
        kw["do_constant_folding"] = True
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation in favour of dynamo; both
        # warn about traced control flow that the fixed example shapes settle.
        warnings.simplefilter("ignore")
        # not under no_grad: there torch's MultiheadAttention takes a fused fast path
        # (aten::_native_multi_head_attention) that the TorchScript exporter cannot export
        torch.onnx.export(net, args, str(tmp), **kw)
    if dynamo and tmp.with_name(tmp.name + ".data").exists():
        # dynamo writes large weights beside the model: load them back into one file
        onnx.save(onnx.load(str(tmp)), str(path))
        tmp.unlink()
        tmp.with_name(tmp.name + ".data").unlink()
    else:
        os.replace(tmp, path)
    return path


def _in_module(node: onnx.NodeProto, module: str) -> bool:
    path = module_path(node)
    return path is not None and (path == module or path.startswith(module + "."))


def cut_tensors(onnx_path: str | os.PathLike[str], modules: Sequence[str]) -> list[str]:
    """The output tensor of each module in `modules` in a torch export at `onnx_path`
    (TorchScript or dynamo, `edgeadapt.graph.modulepaths`): of the module's nodes, the last one
    whose output is read outside the module (modules run in order, so that is the
    module's result)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    graph_outputs = {o.name for o in model.graph.output}
    out = []
    for module in modules:
        inside = [n for n in model.graph.node if _in_module(n, module)]
        own = {o for n in inside for o in n.output}
        read_outside = graph_outputs | {
            x for n in model.graph.node if not _in_module(n, module) for x in n.input if x in own
        }
        results = [o for n in inside for o in n.output if o in read_outside]
        if not results:
            raise InputError(
                f"no node of module {module!r} whose output the rest of the graph reads "
                "(module paths come from TorchScript node names and dynamo's name_scopes "
                "metadata; `edgeadapt inspect MODEL --cuts` shows the ones recorded)",
                source=onnx_path,
            )
        out.append(results[-1])
    return out


def teacher_labels(onnx_path: str | os.PathLike[str], data: Mapping[str, np.ndarray]) -> np.ndarray:
    """The whole model's own top-1 class per sample (ONNX Runtime, batches of 64): labels
    that make an evaluation read as agreement with the whole model."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in data]
    if missing:
        raise EdgeadaptError(f"{onnx_path}: inputs {missing} are not in the data")
    n = len(data[names[0]])
    preds = []
    for a in range(0, n, 64):
        (logits,) = sess.run([LOGITS], {k: data[k][a : a + 64] for k in names})
        preds.append(np.argmax(logits, axis=1))
    return np.concatenate(preds).astype(np.int64)


def write_data(path: str | os.PathLike[str], data: Mapping[str, np.ndarray], y: np.ndarray) -> Path:
    """Write a data/calibration npz: one array per graph input, named as the input, plus
    `y` (a one-input image model's input is also stored as `x`, which every command
    reads). Atomic: a temp file in the same directory, then `os.replace`."""
    path = Path(path)
    arrays = dict(data)
    arrays["y"] = np.asarray(y, dtype=np.int64)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)
    return path
