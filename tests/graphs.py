"""Test graphs shaped like real models: a residual CNN with BatchNorm (the zoo's
ResNet basic blocks), a small transformer encoder classifier with an attention mask and a [CLS] token (all
torch.nn, exported with torch's legacy or dynamo ONNX exporter), and small onnx.helper
graphs for the exporters' refusals.

Weights are seeded random; BatchNorm statistics are re-estimated on random batches
(`settle_batchnorm`) so activations and logits are not ~0 and parity means something.
torch is imported inside the builders: tests that use them skip without it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
#: Transformer test models: vocabulary, sequence length, width, heads, classes.
VOCAB, TOKENS, HIDDEN, HEADS, TEXT_CLASSES = 50, 12, 32, 4, 5


def _torch() -> Any:
    import torch

    return torch


def settle_batchnorm(model: Any, example: Any, batches: int = 4) -> Any:
    """Re-estimate every BatchNorm's running statistics on random batches shaped like
    `example`, then return the model in eval mode."""
    torch = _torch()
    model.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn((16, *example.shape[1:]), generator=gen))
    return model.eval()


def residual_cnn(num_classes: int = 10, width: int = 8) -> Any:
    """A small ResNet: stem conv-BN-ReLU, three residual blocks (the 2nd and 3rd with a
    strided 1x1 downsample), global average pool, linear. Input ``[B, 3, 16, 16]``."""
    torch = _torch()
    nn = torch.nn
    from edgeadapt._zoo_torch import BasicBlock

    torch.manual_seed(0)

    class Net(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
            self.layer1 = BasicBlock(width, width, 1)
            self.layer2 = BasicBlock(width, 2 * width, 2)
            self.layer3 = BasicBlock(2 * width, 4 * width, 2)
            self.fc = nn.Linear(4 * width, num_classes)

        def forward(self, x: Any) -> Any:
            x = self.layer3(self.layer2(self.layer1(self.stem(x))))
            return self.fc(x.mean(dim=(2, 3)))

    return settle_batchnorm(Net(), torch.zeros(1, 3, 16, 16))


def text_encoder(num_classes: int = TEXT_CLASSES, layers: int = 2) -> Any:
    """A BERT-style classifier: token + position embeddings with a learned [CLS] token
    prepended, `layers` post-LayerNorm encoder layers (multi-head attention written out:
    MatMul QK^T, masked Softmax, MatMul V; GELU feed-forward), logits from the [CLS]
    token. ``forward(input_ids [B, T] int64, attention_mask [B, T] int64)``; hidden
    states are ``[B, T + 1, HIDDEN]``."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(0)

    class Layer(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
            self.out = nn.Linear(HIDDEN, HIDDEN)
            self.ln1 = nn.LayerNorm(HIDDEN)
            self.ff1 = nn.Linear(HIDDEN, 2 * HIDDEN)
            self.ff2 = nn.Linear(2 * HIDDEN, HIDDEN)
            self.ln2 = nn.LayerNorm(HIDDEN)

        def forward(self, h: Any, bias: Any) -> Any:
            b, t, _ = h.shape
            qkv = self.qkv(h).reshape(b, t, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            scores = q @ k.transpose(-1, -2) / (HIDDEN // HEADS) ** 0.5 + bias
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, HIDDEN)
            h = self.ln1(h + self.out(ctx))
            return self.ln2(h + self.ff2(nn.functional.gelu(self.ff1(h))))

    class Encoder(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, HIDDEN)
            self.pos = nn.Parameter(torch.randn(1, TOKENS + 1, HIDDEN) * 0.5)
            self.cls = nn.Parameter(torch.randn(1, 1, HIDDEN))
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.head = nn.Linear(HIDDEN, num_classes)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            h = self.embed(input_ids)
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos
            keep = torch.cat([torch.ones_like(attention_mask[:, :1]), attention_mask], dim=1)
            bias = (1.0 - keep[:, None, None, :].to(h.dtype)) * -10000.0
            for layer in self.layers:
                h = layer(h, bias)
            return self.head(h[:, 0])

    return Encoder().eval()


def text_inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 ``[batch, TOKENS]``; each mask keeps a random
    prefix of at least one token."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (batch, TOKENS)).astype(np.int64)
    keep = rng.integers(1, TOKENS + 1, batch)
    mask = (np.arange(TOKENS)[None, :] < keep[:, None]).astype(np.int64)
    return ids, mask


def export_legacy(
    module: Any, args: tuple[Any, ...], names: list[str], path: Path, dynamic: bool = True
) -> Path:
    """torch.onnx.export with the TorchScript exporter; output ``logits``; batch axis
    dynamic unless `dynamic` is false (then the graph is fixed to the example's batch)."""
    torch = _torch()
    axes = {n: {0: "batch"} for n in [*names, "logits"]} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
        )
    return path


def export_dynamo(module: Any, args: tuple[Any, ...], names: list[str], path: Path) -> Path:
    """torch.onnx.export with the dynamo exporter, batch axis dynamic; output ``logits``."""
    torch = _torch()
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = tuple({0: batch} for _ in args)
    buf = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import contextlib

        with contextlib.redirect_stdout(buf):
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                opset_version=18,
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=shapes,
                verbose=False,
            )
    program.save(str(path))
    return path


def tensor_names(path: Path, op_type: str) -> list[str]:
    """The first outputs of the nodes of `op_type` in the ONNX file, in graph order."""
    model = onnx.load(str(path))
    return [n.output[0] for n in model.graph.node if n.op_type == op_type]


# --- onnx.helper graphs ------------------------------------------------------------------


def _model(nodes: list, inputs: list, outputs: list, inits: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def shared_constant_chain(
    width: int = 16, layers: int = 3, vector: bool = False
) -> onnx.ModelProto:
    """``x [B, width]`` -> `layers` x (Gemm, Mul by one shared Constant, Relu) -> logits
    ``[B, 10]``: the Constant (a scalar, or `vector`: ``width`` floats) is read by every
    layer, as a torch export's shared ``/Constant``; cuts at ``relu{i}``."""
    rng = np.random.default_rng(0)
    inits, nodes = (
        [],
        [
            helper.make_node(
                "Constant",
                [],
                ["shared"],
                value=numpy_helper.from_array(
                    np.full((width,) if vector else (), 0.5, np.float32), "shared"
                ),
            )
        ],
    )
    src = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("Gemm", [src, f"w{i}"], [f"g{i}"]),
            helper.make_node("Mul", [f"g{i}", "shared"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"relu{i}"]),
        ]
        src = f"relu{i}"
    inits.append(numpy_helper.from_array(rng.standard_normal((width, 10)).astype(np.float32), "fc"))
    nodes.append(helper.make_node("Gemm", [src, "fc"], ["logits"]))
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )


def fixed_batch_reshape(batch: int = 1) -> onnx.ModelProto:
    """``x [batch, 4, 5]`` -> Relu -> Reshape to the constant ``[batch, 20]`` -> Gemm:
    a graph that cannot run at another batch size (cut at ``r``)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([batch, 20], np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((20, 10)).astype(np.float32), "fc"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )


def run_chain(bundle: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every state's logits, running the bundle's step files on ONNX Runtime in chain
    order (each step reads what its manifest entry lists: activations and model inputs)."""
    import onnxruntime as ort

    env = dict(feeds)
    logits = []
    for step in bundle.steps:
        sess = ort.InferenceSession(str(step.path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == list(step.inputs)
        names = [o.name for o in sess.get_outputs()]
        out = dict(zip(names, sess.run(names, {n: env[n] for n in step.inputs}), strict=True))
        if bundle.kind == "early-exit":
            env.update(out)
        logits.append(out[step.logits])
    return logits


def run_model(path: Path, feeds: dict[str, np.ndarray], output: str = "logits") -> np.ndarray:
    """One output of the ONNX model at `path` on ONNX Runtime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([output], feeds)[0]


def cnn_stages(net: Any) -> tuple[list[Any], list[Any]]:
    """`residual_cnn` as stages (stem + layer1, layer2, layer3) and exit heads (random
    pooled linear heads, then the network's own pool + fc): the full path is `net`."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(1)

    class Pool(nn.Module):  # type: ignore[misc]
        def __init__(self, fc: Any) -> None:
            super().__init__()
            self.fc = fc

        def forward(self, x: Any) -> Any:
            return self.fc(x.mean(dim=(2, 3)))

    width = net.stem[0].out_channels
    stages = [nn.Sequential(net.stem, net.layer1), net.layer2, net.layer3]
    heads = [Pool(nn.Linear(width, 10)), Pool(nn.Linear(2 * width, 10)), Pool(net.fc)]
    return stages, heads


def text_stages(net: Any) -> tuple[list[Any], list[Any]]:
    """`text_encoder` as stages (embeddings + layer 0, layer 1) that take the attention
    mask, and heads on the [CLS] token (a random one, then the encoder's own)."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(2)

    def bias(attention_mask: Any, dtype: Any) -> Any:
        keep = torch.cat([torch.ones_like(attention_mask[:, :1]), attention_mask], dim=1)
        return (1.0 - keep[:, None, None, :].to(dtype)) * -10000.0

    class First(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            h = self.net.embed(input_ids)
            h = torch.cat([self.net.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.net.pos
            return self.net.layers[0](h, bias(attention_mask, h.dtype))

    class Later(nn.Module):  # type: ignore[misc]
        def __init__(self, layer: Any) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, h: Any, attention_mask: Any) -> Any:
            return self.layer(h, bias(attention_mask, h.dtype))

    class Cls(nn.Module):  # type: ignore[misc]
        def __init__(self, fc: Any) -> None:
            super().__init__()
            self.fc = fc

        def forward(self, h: Any) -> Any:
            return self.fc(h[:, 0])

    stages = [First(), *[Later(layer) for layer in net.layers[1:]]]
    heads = [Cls(nn.Linear(HIDDEN, TEXT_CLASSES)) for _ in net.layers[1:]] + [Cls(net.head)]
    return stages, heads
