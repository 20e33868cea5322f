"""Trained linear exit heads: pooled or flattened activations -> softmax regression.

A head is trained with numpy on the activations at a cut (computed with ONNX Runtime
from a calibration set), then built as a small ONNX graph (GlobalAveragePool or
Flatten, then Gemm) and composed into the step with `onnx.compose` under a name prefix,
so the step outputs both the activation and the head's logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from edgeadapt.bundle import BATCH

#: With ``pool="auto"``, activations with at most this many values per sample are
#: flattened (keeping position information); larger ones are globally average-pooled.
FLATTEN_MAX_FEATURES = 4096
POOLS = ("auto", "gap", "flatten")


@dataclass(frozen=True)
class LinearHead:
    """A trained head: ``logits = features(act) @ weight + bias``."""

    pool: str  # "gap" or "flatten"
    weight: np.ndarray  # [features, classes], float32
    bias: np.ndarray  # [classes], float32
    train_accuracy: float


def choose_pool(tail: tuple[int, ...], pool: str) -> str:
    """The pooling for an activation of per-sample shape `tail`."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if len(tail) < 2:
        return "flatten"
    if pool == "auto":
        return "flatten" if int(np.prod(tail)) <= FLATTEN_MAX_FEATURES else "gap"
    return pool


def features(act: np.ndarray, pool: str) -> np.ndarray:
    """The head's input features, computed exactly as the ONNX head computes them."""
    if act.ndim > 2 and pool == "gap":
        act = act.mean(axis=tuple(range(2, act.ndim)))
    return act.reshape(len(act), -1)


def train_linear_head(
    act: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    pool: str,
    *,
    l2: float = 1e-2,
    steps: int = 100,
    lr: float = 0.05,
) -> LinearHead:
    """Fit multinomial logistic regression (full-batch Adam, L2) on standardised features;
    the standardisation is folded into the returned weights."""
    x = features(act, pool).astype(np.float32)
    mu = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    sd = x.std(axis=0, dtype=np.float64).astype(np.float32) + np.float32(1e-6)
    z = (x - mu) / sd
    n, d = z.shape
    onehot = np.eye(num_classes, dtype=np.float32)[y]
    w = np.zeros((d, num_classes), dtype=np.float32)
    b = np.zeros(num_classes, dtype=np.float32)
    mw, vw, mb, vb = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
    beta1, beta2 = 0.9, 0.999
    for t in range(1, steps + 1):
        logits = z @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / n
        gw = z.T @ g + l2 * w
        gb = g.sum(axis=0)
        mw = beta1 * mw + (1 - beta1) * gw
        vw = beta2 * vw + (1 - beta2) * gw**2
        mb = beta1 * mb + (1 - beta1) * gb
        vb = beta2 * vb + (1 - beta2) * gb**2
        c1, c2 = 1 - beta1**t, 1 - beta2**t
        w -= lr * (mw / c1) / (np.sqrt(vw / c2) + 1e-8)
        b -= lr * (mb / c1) / (np.sqrt(vb / c2) + 1e-8)
    weight = w / sd[:, None]
    bias = b - (mu / sd) @ w
    acc = float(np.mean(np.argmax(x @ weight + bias, axis=1) == y))
    return LinearHead(pool, weight.astype(np.float32), bias.astype(np.float32), acc)


def head_graph(
    head: LinearHead, rank: int, opset: Sequence[onnx.OperatorSetIdProto], ir_version: int
) -> onnx.ModelProto:
    """The head as its own model: input ``act`` of rank `rank`, output ``logits``."""
    nodes = []
    src = "act"
    if rank > 2 and head.pool == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", [src], ["pooled"]))
        src = "pooled"
    nodes.append(helper.make_node("Flatten", [src], ["features"], axis=1))
    nodes.append(helper.make_node("Gemm", ["features", "weight", "bias"], ["logits"]))
    classes = head.weight.shape[1]
    graph = helper.make_graph(
        nodes,
        "exit_head",
        [
            helper.make_tensor_value_info(
                "act", onnx.TensorProto.FLOAT, [BATCH, *["d"] * (rank - 1)]
            )
        ],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [BATCH, classes])],
        initializer=[
            numpy_helper.from_array(head.weight, "weight"),
            numpy_helper.from_array(head.bias, "bias"),
        ],
    )
    return helper.make_model(graph, opset_imports=list(opset), ir_version=ir_version)


def attach_head(
    stage: onnx.ModelProto, cut: str, head: LinearHead, prefix: str
) -> tuple[onnx.ModelProto, str]:
    """Compose `head` onto the stage's output `cut`; return the step and its logits name.

    The head's names get `prefix` so they cannot collide with the stage's; the step
    keeps `cut` as an output for the next step.
    """
    rank = len(next(o for o in stage.graph.output if o.name == cut).type.tensor_type.shape.dim)
    ai_onnx = [o for o in stage.opset_import if o.domain in ("", "ai.onnx")]
    graph = head_graph(head, rank, ai_onnx, stage.ir_version)
    graph = compose.add_prefix(graph, prefix)
    logits = f"{prefix}logits"
    step = compose.merge_models(stage, graph, io_map=[(cut, f"{prefix}act")], outputs=[cut, logits])
    return step, logits
