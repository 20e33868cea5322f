"""Trained linear exit heads: pooled activations -> standardised ridge-regression logits.

A head is fitted from the activations at a cut, which the exporter streams through in
batches: each batch is pooled to a feature vector per sample and folded into float64
sufficient statistics (sums, ``X^T X``, per-class sums), so memory stays bounded by the
feature count, not by the calibration set. A held-out part of the calibration samples
(kept as features) chooses the ridge strength and a softmax temperature, and gives the
head's held-out accuracy next to its training accuracy.

Pooling: ``gap`` averages the axes after axis 1 of a channels-first ``[B, C, ...]``
activation (a CNN's), ``gap_last`` the axes between the batch and the last axis of a
channels-last ``[B, ..., C]`` one (a Swin's ``[B, H, W, C]`` between stages, a
ConvNeXt block's channels-last segment, a TF-converted NHWC model's); `channels_last`
tells them apart from the ops that read the activation.

The head is built as a small ONNX graph (pooling, then ``(features - mean) * scale``,
then Gemm) and appended to the step under a name prefix (`onnx.compose.add_prefix`). The
standardisation stays a separate affine op instead of being folded into the weights: a
feature with a tiny spread would otherwise get a huge weight, and float32 inference
would drift from the float64 fit. No feature's spread counts as smaller than float32 can
resolve it: a small share of the magnitude of the values it is pooled from (a mean over
channels that cancel, as a Swin's after LayerNorm, is float32 rounding noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from edgeadapt.formats.bundle import BATCH

#: With ``pool="auto"``, per-channel activations with at most this many values per
#: sample are flattened (keeping position information); larger ones are average-pooled.
#: The fit costs O(features^3) (an eigendecomposition: ~2 s at 2048 on one core, ~30 s
#: at 4096), so flattening stays at moderate sizes.
FLATTEN_MAX_FEATURES = 2048
POOLS = ("auto", "gap", "gap_last", "flatten", "cls", "mean")
#: Pools for token sequences ``[batch, tokens, hidden]``.
TOKEN_POOLS = ("cls", "mean")
#: Ridge strengths tried (relative to the unit variance of standardised features).
RIDGE_GRID = tuple(float(v) for v in np.logspace(-4, 3, 15))
#: Share of the calibration samples held out to choose the ridge strength.
HELDOUT_FRACTION = 0.2
#: At most this many samples are held out (kept as features); the rest train.
MAX_HELDOUT = 5000
#: Training accuracy is measured on at most this many training samples (kept as features).
MAX_TRAIN_KEPT = 4096
#: Training accuracy above held-out accuracy by more than this is reported as overfitting.
OVERFIT_GAP = 0.15


@dataclass(frozen=True)
class LinearHead:
    """A trained head: ``logits = ((features(act) - mean) * scale) @ weight + bias``."""

    pool: str  # "gap", "gap_last", "flatten", "cls" or "mean"
    mean: np.ndarray  # [features], float32
    scale: np.ndarray  # [features], float32
    weight: np.ndarray  # [features, classes], float32
    bias: np.ndarray  # [classes], float32
    train_accuracy: float
    heldout_accuracy: float
    train_samples: int
    heldout_samples: int
    ridge: float
    temperature: float
    mask: str | None = None  # the graph input masking tokens for pool "mean"
    prefix: int = 0  # tokens before the masked ones ([CLS] prepended), always counted

    @property
    def overfit(self) -> bool:
        return self.train_accuracy - self.heldout_accuracy > OVERFIT_GAP

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """float64 logits of feature rows, as the ONNX head computes them."""
        z = (feats.astype(np.float64) - self.mean) * self.scale
        return z @ self.weight.astype(np.float64) + self.bias


def is_token_sequence(tail: tuple[int, ...], input_rank: int, integer_input: bool) -> bool:
    """Whether an activation of per-sample shape `tail` is ``[tokens, hidden]``: a rank-3
    activation of a token-id model, or one whose rank differs from a float input's (a
    ViT's ``[B, T, H]`` from ``[B, C, H, W]`` images); a CNN keeps its input's rank."""
    if len(tail) != 2:
        return False
    return integer_input or input_rank != 3


#: Ops that keep an activation's axes where they are (elementwise, padding, slicing,
#: concatenation): `channels_last` looks past them for an op that tells the layout.
_SAME_AXES = frozenset(
    [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Neg",
        "Abs",
        "Sqrt",
        "Exp",
        "Erf",
        "Tanh",
        "Sigmoid",
        "Relu",
        "LeakyRelu",
        "Elu",
        "Selu",
        "Gelu",
        "HardSigmoid",
        "HardSwish",
        "Softplus",
        "Clip",
        "Where",
        "Max",
        "Min",
        "Identity",
        "Cast",
        "Dropout",
        "Pad",
        "Slice",
        "Concat",
    ]
)
#: Ops that read axis 1 as the channels.
_CHANNELS_FIRST_OPS = frozenset(
    [
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "AveragePool",
        "MaxPool",
        "LpPool",
        "LRN",
    ]
)
#: How many ops past the cut `channels_last` looks: a Swin's patch merging reads the
#: stage's output through a Pad, two Slices and a Concat before its LayerNorm.
LAYOUT_HOPS = 8


def channels_last(model: onnx.ModelProto, tensor: str, rank: int) -> bool:
    """Whether the activation `tensor` (of `rank` axes, the batch included) holds its
    channels on its last axis, told by the ops that read it, directly or past up to
    `LAYOUT_HOPS` ops that keep its axes (`_SAME_AXES`): channels-last when one of them
    is a LayerNormalization or ReduceMean over the last axis alone, a MatMul by a 2-D
    weight (a linear layer, which contracts the last axis), or a Transpose that moves
    the last axis to axis 1; and none reads axis 1 as channels (a Conv, BatchNorm or
    pooling: `_CHANNELS_FIRST_OPS`). Otherwise channels-first (today's rule). A Gemm
    reads only 2-D activations, where pooling does not apply."""
    if rank < 3:
        return False
    g = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in set(node.input):
            consumers.setdefault(name, []).append(node)
    consts = _constants(g)
    last, first = False, False
    frontier, seen = [tensor], {tensor}
    for _ in range(LAYOUT_HOPS):
        nxt = []
        for name in frontier:
            for node in consumers.get(name, []):
                op = node.op_type
                if op in _CHANNELS_FIRST_OPS:
                    first = True
                elif _reads_last_axis(node, name, rank, consts):
                    last = True
                elif op in _SAME_AXES:
                    nxt += [o for o in node.output if o and o not in seen]
                    seen.update(node.output)
        frontier = nxt
    return last and not first


def _constants(g: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The graph's constant tensors: initializers and Constant nodes' values (a
    Transpose, Cast or Identity of one keeps its rank, and counts as one too)."""
    consts = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
        elif node.op_type in ("Transpose", "Cast", "Identity") and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def _axes(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> list[int] | None:
    """A reduction's axes: its attribute (before opset 18) or its constant second input
    (from 18 on); None when absent or not constant."""
    for a in node.attribute:
        if a.name == "axes":
            return list(a.ints)
    if len(node.input) > 1 and node.input[1] in consts:
        t = consts[node.input[1]]
        if t.data_location != onnx.TensorProto.EXTERNAL:
            return [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
    return None


def _reads_last_axis(
    node: onnx.NodeProto, name: str, rank: int, consts: dict[str, onnx.TensorProto]
) -> bool:
    """Whether `node` reads its input `name` (of `rank` axes) as channels-last."""
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op == "LayerNormalization":
        return node.input[0] == name and int(attrs.get("axis", -1)) % rank == rank - 1
    if op == "ReduceMean":
        axes = _axes(node, consts)
        return axes is not None and [a % rank for a in axes] == [rank - 1]
    if op == "MatMul":
        return (
            node.input[0] == name
            and node.input[1] in consts
            and len(consts[node.input[1]].dims) == 2
        )
    if op == "Transpose":
        perm = list(attrs.get("perm", []))
        return len(perm) == rank and perm[0] == 0 and perm[1] == rank - 1
    return False


def choose_pool(
    tail: tuple[int, ...], pool: str, *, tokens: bool = False, channels_last: bool = False
) -> str:
    """The pooling for an activation of per-sample shape `tail` (``tokens``: it is a
    ``[tokens, hidden]`` sequence, pooled by ``auto`` as a mean over tokens;
    ``channels_last``: its last axis holds the channels, so ``auto`` averages the others
    with ``gap_last`` where it would use ``gap``)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if pool in TOKEN_POOLS:
        if len(tail) != 2:
            raise ValueError(
                f"pool {pool!r} needs a [batch, tokens, hidden] activation, got per-sample "
                f"shape {list(tail)}"
            )
        return pool
    if len(tail) < 2:
        return "flatten"
    if pool == "auto":
        if tokens:
            return "mean"
        if int(np.prod(tail)) <= FLATTEN_MAX_FEATURES:
            return "flatten"
        return "gap_last" if channels_last else "gap"
    return pool


def magnitudes(
    act: np.ndarray, pool: str, mask: np.ndarray | None = None, prefix: int = 0
) -> np.ndarray:
    """The pooling of ``|act|``: per feature, the typical magnitude of the values it is
    pooled from, to which the float32 rounding of the ONNX head's pooling is relative."""
    return features(np.abs(np.asarray(act, dtype=np.float64)), pool, mask, prefix)


def features(
    act: np.ndarray, pool: str, mask: np.ndarray | None = None, prefix: int = 0
) -> np.ndarray:
    """The head's input features (float64), computed as the ONNX head computes them.

    For ``mean`` with a `mask` ``[B, T - prefix]``, the first `prefix` tokens (a
    prepended [CLS]) always count."""
    act = np.asarray(act, dtype=np.float64)
    if pool == "cls":
        return act[:, 0, :]
    if pool == "mean":
        if mask is None:
            return act.mean(axis=1)
        m = np.asarray(mask, dtype=np.float64).reshape(len(act), -1)
        m = np.concatenate([np.ones((len(act), prefix)), m], axis=1).reshape(len(act), 1, -1)
        total = (m @ act).reshape(len(act), -1)
        count = np.maximum(m.sum(axis=2), 1.0)
        return total / count
    if act.ndim > 2 and pool == "gap":
        act = act.mean(axis=tuple(range(2, act.ndim)))
    if act.ndim > 2 and pool == "gap_last":
        act = act.mean(axis=tuple(range(1, act.ndim - 1)))
    return act.reshape(len(act), -1)


class HeadFitter:
    """Accumulates one cut's features batch by batch; `fit` returns the trained head.

    `heldout` marks, per calibration sample (in stream order), the samples held out.
    """

    def __init__(self, num_classes: int, pool: str, heldout: np.ndarray) -> None:
        self.num_classes = num_classes
        self.pool = pool
        self.heldout = np.asarray(heldout, dtype=bool)
        self._n = 0
        self._sum: np.ndarray | None = None
        self._gram: np.ndarray | None = None
        self._class_sum: np.ndarray | None = None
        self._magnitude: np.ndarray | None = None
        self._counts = np.zeros(num_classes, dtype=np.int64)
        self._held_x: list[np.ndarray] = []
        self._held_y: list[np.ndarray] = []
        self._kept_x: list[np.ndarray] = []
        self._kept_y: list[np.ndarray] = []
        self._kept = 0
        self._seen = 0

    def add(self, feats: np.ndarray, y: np.ndarray, magnitude: np.ndarray | None = None) -> None:
        """Fold the next batch (features `feats` [b, d], labels `y` [b]) in; `magnitude`
        [b, d]: `magnitudes` of the activation (default ``|feats|``, right for
        ``flatten``), which bounds how small a spread float32 resolves."""
        feats = np.asarray(feats, dtype=np.float64)
        mag = np.abs(feats) if magnitude is None else np.asarray(magnitude, dtype=np.float64)
        if mag.shape != feats.shape:
            raise ValueError(f"magnitude shape {mag.shape} differs from features {feats.shape}")
        if self._magnitude is None:
            self._magnitude = np.zeros(feats.shape[1])
        self._magnitude += mag.sum(axis=0)
        held = self.heldout[self._seen : self._seen + len(feats)]
        self._seen += len(feats)
        if held.any():
            self._held_x.append(feats[held].astype(np.float32))
            self._held_y.append(y[held])
        x, yt = feats[~held], y[~held]
        if not len(x):
            return
        if self._sum is None:
            d = x.shape[1]
            self._sum = np.zeros(d)
            self._gram = np.zeros((d, d))
            self._class_sum = np.zeros((d, self.num_classes))
        assert self._gram is not None
        assert self._class_sum is not None
        self._n += len(x)
        self._sum += x.sum(axis=0)
        self._gram += x.T @ x
        onehot = np.zeros((len(x), self.num_classes))
        onehot[np.arange(len(x)), yt] = 1.0
        self._class_sum += x.T @ onehot
        self._counts += np.bincount(yt, minlength=self.num_classes)
        room = MAX_TRAIN_KEPT - self._kept
        if room > 0:
            self._kept_x.append(x[:room].astype(np.float32))
            self._kept_y.append(yt[:room])
            self._kept += min(room, len(x))

    def fit(self) -> LinearHead:
        """Choose the ridge strength on the held-out samples, refit on all samples,
        fit a softmax temperature on the held-out predictions."""
        if self._sum is None or not self._held_x:
            raise ValueError("a head needs training and held-out samples")
        assert self._gram is not None
        assert self._class_sum is not None
        hx = np.concatenate(self._held_x).astype(np.float64)
        hy = np.concatenate(self._held_y)
        n, s, g, cs, counts = self._n, self._sum, self._gram, self._class_sum, self._counts
        assert self._magnitude is not None
        mag = self._magnitude / self._seen
        mean, scale, corr, target, prior = _standardised(n, s, g, cs, counts, mag)
        vals, vecs = np.linalg.eigh(corr)
        vals = np.clip(vals, 0.0, None)
        p = ((hx - mean) * scale) @ vecs
        q = vecs.T @ target
        scores = []
        for lam in RIDGE_GRID:
            pred = (p / (vals + lam)) @ q + prior
            scores.append(float(np.mean(pred.argmax(axis=1) == hy)))
        best = max(scores)
        # Among equally accurate strengths, the strongest: the least overfitted.
        k = max(i for i, sc in enumerate(scores) if sc == best)
        lam = RIDGE_GRID[k]
        temperature = _temperature((p / (vals + lam)) @ q + prior, hy)
        # Refit on every sample with the chosen strength.
        onehot = np.zeros((len(hx), self.num_classes))
        onehot[np.arange(len(hx)), hy] = 1.0
        n_all = n + len(hx)
        counts_all = counts + np.bincount(hy, minlength=self.num_classes)
        mean, scale, corr, target, prior = _standardised(
            n_all, s + hx.sum(axis=0), g + hx.T @ hx, cs + hx.T @ onehot, counts_all, mag
        )
        w = np.linalg.solve(corr + lam * np.eye(len(corr)), target)
        weight = (temperature * w).astype(np.float32)
        bias = (temperature * prior).astype(np.float32)
        mean32, scale32 = mean.astype(np.float32), scale.astype(np.float32)
        head = LinearHead(
            self.pool,
            mean32,
            scale32,
            weight,
            bias,
            train_accuracy=0.0,
            heldout_accuracy=best,
            train_samples=n,
            heldout_samples=len(hx),
            ridge=lam,
            temperature=temperature,
        )
        kx, ky = np.concatenate(self._kept_x), np.concatenate(self._kept_y)
        train_acc = float(np.mean(head.predict(kx).argmax(axis=1) == ky))
        return LinearHead(**{**head.__dict__, "train_accuracy": train_acc})


def _standardised(
    n: int,
    s: np.ndarray,
    gram: np.ndarray,
    class_sum: np.ndarray,
    counts: np.ndarray,
    magnitude: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From sufficient statistics: (mean, scale, the standardised covariance (the
    features' correlation matrix), standardised class cross-covariance, class priors);
    `magnitude`: the mean `magnitudes` of each feature."""
    mean = s / n
    cov = gram / n - np.outer(mean, mean)
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    # A feature that barely varies would get a huge scale; clamp its spread to a small
    # share of the typical one so standardised values stay O(1), and to 1e-4 of the
    # magnitude of the values it is pooled from (at least its own): the ONNX head pools
    # and standardises in float32 (7 digits; a mean of n values rounds to about
    # sqrt(n) eps32 of their magnitude), so a spread below that would standardise
    # rounding errors into the logits.
    floor = max(1e-3 * float(np.sqrt(np.mean(sd**2))), 1e-12)
    resolution = 1e-4 * np.maximum(magnitude, np.abs(mean))
    scale = 1.0 / np.maximum(sd, np.maximum(floor, resolution))
    corr = cov * np.outer(scale, scale)
    prior = counts / n
    target = (class_sum / n - np.outer(mean, prior)) * scale[:, None]
    return mean, scale, (corr + corr.T) / 2, target, prior


def _temperature(pred: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature (a scale on the ridge outputs) with the least held-out
    negative log-likelihood, so exit confidences are probabilities, not raw scores."""
    best, best_nll = 1.0, math.inf
    for t in np.logspace(-1, 3, 81):
        z = t * pred
        z -= z.max(axis=1, keepdims=True)
        nll = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def heldout_mask(n: int, seed: int = 0) -> np.ndarray:
    """Which of `n` calibration samples are held out: a seeded random share."""
    if n < 2:
        raise ValueError("need at least 2 samples to hold some out")
    k = min(max(1, round(HELDOUT_FRACTION * n)), MAX_HELDOUT, n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[:k]] = True
    return mask


def train_linear_head(
    act: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    pool: str,
    *,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> LinearHead:
    """Fit a head on activations held in memory (the exporter streams `HeadFitter`)."""
    fitter = HeadFitter(num_classes, pool, heldout_mask(len(act), seed))
    fitter.add(
        features(act, pool, mask), np.asarray(y, dtype=np.int64), magnitudes(act, pool, mask)
    )
    return fitter.fit()


def overfit_message(head: LinearHead, where: str) -> str | None:
    """A warning text when `head` is overfitted (training accuracy well above held-out)."""
    if not head.overfit:
        return None
    return (
        f"the trained head at {where!r} may be overfitted: training accuracy "
        f"{head.train_accuracy:.3f} vs held-out {head.heldout_accuracy:.3f} "
        f"({head.train_samples} training, {head.heldout_samples} held-out samples); "
        "give more calibration samples or use a pooled head (pool)"
    )


def _pooling(
    head: LinearHead,
    act_shape: Sequence[int | str],
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    inputs: list[onnx.ValueInfoProto],
) -> str:
    """Append the nodes, initializers and inputs of the head's pooling (``cls``, a mean
    over tokens with or without a mask, ``gap``, ``gap_last``) to `nodes`, `inits` and
    `inputs`; the name of the pooled tensor (``act`` itself without pooling)."""
    rank = len(act_shape)
    src = "act"
    if head.pool == "cls":
        inits.append(numpy_helper.from_array(np.array(0, np.int64), "first"))
        nodes.append(helper.make_node("Gather", [src, "first"], ["pooled"], axis=1))
        src = "pooled"
    elif head.pool == "mean" and head.mask is None:
        # Mean over tokens as a global average pool over [batch, hidden, tokens]:
        # opset-independent (ReduceMean's axes moved from attribute to input).
        nodes.append(helper.make_node("Transpose", [src], ["tokens_last"], perm=[0, 2, 1]))
        nodes.append(helper.make_node("GlobalAveragePool", ["tokens_last"], ["pooled"]))
        src = "pooled"
    elif head.pool == "mean":
        tokens = act_shape[1]
        inputs.append(
            helper.make_tensor_value_info(
                "mask", onnx.TensorProto.INT64, [BATCH, int(tokens) - head.prefix]
            )
        )
        inits += [
            numpy_helper.from_array(np.array([0, head.prefix, 0, 0], np.int64), "prefix_pads"),
            numpy_helper.from_array(np.array([0, 1, -1], np.int64), "row_shape"),
            numpy_helper.from_array(np.ones((int(tokens), 1), np.float32), "ones"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ]
        nodes += [
            helper.make_node("Cast", ["mask"], ["mask_f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Pad", ["mask_f", "prefix_pads", "one"], ["mask_full"]),
            helper.make_node("Reshape", ["mask_full", "row_shape"], ["mask_row"]),
            helper.make_node("MatMul", ["mask_row", src], ["masked_sum"]),
            helper.make_node("MatMul", ["mask_row", "ones"], ["mask_count"]),
            helper.make_node("Max", ["mask_count", "one"], ["mask_count1"]),
            helper.make_node("Div", ["masked_sum", "mask_count1"], ["pooled"]),
        ]
        src = "pooled"
    elif rank > 2 and head.pool == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", [src], ["pooled"]))
        src = "pooled"
    elif rank > 2 and head.pool == "gap_last":
        # [B, ..., C] -> [B, C, ...], then a global average pool: opset-independent, as
        # the mean over tokens above
        perm = [0, rank - 1, *range(1, rank - 1)]
        nodes.append(helper.make_node("Transpose", [src], ["channels_first"], perm=perm))
        nodes.append(helper.make_node("GlobalAveragePool", ["channels_first"], ["pooled"]))
        src = "pooled"
    return src


def head_graph(
    head: LinearHead,
    act_shape: Sequence[int | str],
    opset: Sequence[onnx.OperatorSetIdProto],
    ir_version: int,
) -> onnx.ModelProto:
    """The head as its own model: input ``act`` of shape `act_shape` (and ``mask``
    ``[batch, tokens]`` for a masked mean), output ``logits``."""
    nodes: list[onnx.NodeProto] = []
    inits = [
        numpy_helper.from_array(head.mean, "mean"),
        numpy_helper.from_array(head.scale, "scale"),
        numpy_helper.from_array(head.weight, "weight"),
        numpy_helper.from_array(head.bias, "bias"),
    ]
    inputs = [helper.make_tensor_value_info("act", onnx.TensorProto.FLOAT, list(act_shape))]
    src = _pooling(head, act_shape, nodes, inits, inputs)
    nodes += [
        helper.make_node("Flatten", [src], ["features"], axis=1),
        helper.make_node("Sub", ["features", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "scale"], ["standardised"]),
        helper.make_node("Gemm", ["standardised", "weight", "bias"], ["logits"]),
    ]
    classes = head.weight.shape[1]
    graph = helper.make_graph(
        nodes,
        "exit_head",
        inputs,
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [BATCH, classes])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=list(opset), ir_version=ir_version)


def attach_head(
    stage: onnx.ModelProto, cut: str, head: LinearHead, prefix: str
) -> tuple[onnx.ModelProto, str]:
    """Append `head` to the stage's output `cut`; return the step and its logits name.

    The head's names get `prefix` so they cannot collide with the stage's; the step
    keeps `cut` as an output for the next step. A masked-mean head reads the stage's
    input `head.mask`, which the stage must list among its inputs.
    """
    out = next(o for o in stage.graph.output if o.name == cut)
    shape: list[int | str] = [
        int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or f"d{k}")
        for k, d in enumerate(out.type.tensor_type.shape.dim)
    ]
    shape[0] = BATCH
    ai_onnx = [o for o in stage.opset_import if o.domain in ("", "ai.onnx")]
    graph = compose.add_prefix(head_graph(head, shape, ai_onnx, stage.ir_version), prefix)
    rename = {f"{prefix}act": cut}
    if head.mask is not None:
        if head.mask not in {i.name for i in stage.graph.input}:
            raise ValueError(f"the stage does not read the mask input {head.mask!r}")
        rename[f"{prefix}mask"] = head.mask
    step = onnx.ModelProto()
    step.CopyFrom(stage)
    for node in graph.graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = rename.get(name, name)
    step.graph.node.extend(graph.graph.node)
    step.graph.initializer.extend(graph.graph.initializer)
    step.graph.output.extend(graph.graph.output)
    return step, f"{prefix}logits"
