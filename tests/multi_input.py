"""A small BERT-style classifier as a multi-input early-exit bundle, built with onnx.helper.

Two model inputs, int64 ``input_ids`` and ``attention_mask`` ``[batch, T]``; step 0
embeds the tokens (a Gather from a ``[VOCAB, H]`` table plus position embeddings) and
runs one encoder layer; each later step runs one more layer on the previous activation
``h{i}`` ``[batch, T, H]``, reading ``attention_mask`` again when its attention is masked.
Every step has a head on token 0 (the [CLS] position). Masked positions get a large
negative attention bias, so tokens under a zero mask do not change any logit: the tests
use that to prove each step really reads its rows of the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.formats.bundle import Bundle, InputSpec, Step, write_bundle

OPSET = 17
VOCAB = 11
TOKENS = 6
HIDDEN = 8
NUM_CLASSES = 3
INPUTS = (
    InputSpec("input_ids", ("batch", TOKENS), "int64"),
    InputSpec("attention_mask", ("batch", TOKENS), "int64"),
)


class _Weights:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.inits: list[onnx.TensorProto] = []

    def add(self, name: str, *shape: int, scale: float = 0.5) -> str:
        arr = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name


def _layer(w: _Weights, tag: str, h: str, masked: bool, out: str) -> list[onnx.NodeProto]:
    """One encoder layer (single-head attention, masked or not, then a ReLU FFN), each
    half with a residual and LayerNormalization."""
    n = helper.make_node
    nodes = [
        n("MatMul", [h, w.add(f"{tag}.wq", HIDDEN, HIDDEN)], [f"{tag}_q"]),
        n("MatMul", [h, w.add(f"{tag}.wk", HIDDEN, HIDDEN)], [f"{tag}_k"]),
        n("MatMul", [h, w.add(f"{tag}.wv", HIDDEN, HIDDEN)], [f"{tag}_v"]),
        n("Transpose", [f"{tag}_k"], [f"{tag}_kt"], perm=[0, 2, 1]),
        n("MatMul", [f"{tag}_q", f"{tag}_kt"], [f"{tag}_qk"]),
        n(
            "Mul",
            [f"{tag}_qk", w.const(f"{tag}.scale", np.array(HIDDEN**-0.5, np.float32))],
            [f"{tag}_scores"],
        ),
    ]
    scores = f"{tag}_scores"
    if masked:
        nodes += [
            n("Cast", ["attention_mask"], [f"{tag}_m"], to=TensorProto.FLOAT),
            n("Unsqueeze", [f"{tag}_m", w.const(f"{tag}.axis", np.array([1]))], [f"{tag}_m3"]),
            n(
                "Sub",
                [w.const(f"{tag}.one", np.array(1.0, np.float32)), f"{tag}_m3"],
                [f"{tag}_off"],
            ),
            n(
                "Mul",
                [f"{tag}_off", w.const(f"{tag}.neg", np.array(-1e4, np.float32))],
                [f"{tag}_bias"],
            ),
            n("Add", [scores, f"{tag}_bias"], [f"{tag}_masked"]),
        ]
        scores = f"{tag}_masked"
    gamma = w.const(f"{tag}.gamma", np.ones(HIDDEN, np.float32))
    beta = w.const(f"{tag}.beta", np.zeros(HIDDEN, np.float32))
    nodes += [
        n("Softmax", [scores], [f"{tag}_p"], axis=-1),
        n("MatMul", [f"{tag}_p", f"{tag}_v"], [f"{tag}_ctx"]),
        n("MatMul", [f"{tag}_ctx", w.add(f"{tag}.wo", HIDDEN, HIDDEN)], [f"{tag}_att"]),
        n("Add", [h, f"{tag}_att"], [f"{tag}_r1"]),
        n("LayerNormalization", [f"{tag}_r1", gamma, beta], [f"{tag}_n1"], axis=-1),
        n("MatMul", [f"{tag}_n1", w.add(f"{tag}.w1", HIDDEN, 2 * HIDDEN)], [f"{tag}_f1"]),
        n("Relu", [f"{tag}_f1"], [f"{tag}_f1r"]),
        n("MatMul", [f"{tag}_f1r", w.add(f"{tag}.w2", 2 * HIDDEN, HIDDEN)], [f"{tag}_f2"]),
        n("Add", [f"{tag}_n1", f"{tag}_f2"], [f"{tag}_r2"]),
        n("LayerNormalization", [f"{tag}_r2", gamma, beta], [out], axis=-1),
    ]
    return nodes


def _head(w: _Weights, tag: str, h: str, out: str) -> list[onnx.NodeProto]:
    """Logits from token 0's hidden state."""
    n = helper.make_node
    return [
        n("Gather", [h, w.const(f"{tag}.cls", np.array(0))], [f"{tag}_cls"], axis=1),
        n(
            "Gemm",
            [f"{tag}_cls", w.add(f"{tag}.w", NUM_CLASSES, HIDDEN), w.add(f"{tag}.b", NUM_CLASSES)],
            [out],
            transB=1,
        ),
    ]


def _tensor(name: str, elem: int, *dims: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["batch", *dims])


def step_models(masked: Sequence[bool] = (True, True, True), seed: int = 0) -> list[Step]:
    """One step per layer; `masked[i]` says whether layer i's attention reads the mask
    (step 0 always reads it: the embedding is its only other input)."""
    steps = []
    count = len(masked)
    for i, mask in enumerate(masked):
        w = _Weights(seed * 100 + i)
        nodes: list[onnx.NodeProto] = []
        last = i == count - 1
        inputs = []
        if i == 0:
            nodes += [
                helper.make_node("Gather", [w.add("tok", VOCAB, HIDDEN), "input_ids"], ["tok_e"]),
                helper.make_node("Add", ["tok_e", w.add("pos", TOKENS, HIDDEN)], ["h0"]),
            ]
            inputs.append(_tensor("input_ids", TensorProto.INT64, TOKENS))
            inputs.append(_tensor("attention_mask", TensorProto.INT64, TOKENS))
            h = "h0"
        else:
            h = f"h{i}"
            inputs.append(_tensor(h, TensorProto.FLOAT, TOKENS, HIDDEN))
            if mask:
                inputs.append(_tensor("attention_mask", TensorProto.INT64, TOKENS))
        act = f"h{i + 1}"
        nodes += _layer(w, f"l{i}", h, mask or i == 0, act)
        nodes += _head(w, f"exit{i}", act, f"logits{i}")
        outputs = [] if last else [_tensor(act, TensorProto.FLOAT, TOKENS, HIDDEN)]
        outputs.append(_tensor(f"logits{i}", TensorProto.FLOAT, NUM_CLASSES))
        graph = helper.make_graph(nodes, f"step{i}", inputs, outputs, initializer=w.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        steps.append(Step(model, f"logits{i}", activation=None if last else act, head_input=act))
    return steps


def transformer_bundle(
    out_dir: str | Path, masked: Sequence[bool] = (True, True, True), seed: int = 0
) -> Bundle:
    """Write the classifier as an early-exit bundle (one state per layer)."""
    return write_bundle(
        out_dir,
        kind="early-exit",
        inputs=list(INPUTS),
        num_classes=NUM_CLASSES,
        steps=step_models(masked, seed),
        producer={"exporter": "tests.multi_input", "source_sha256": "0" * 64},
    )


def token_batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` rows of token ids in 0..VOCAB-1 with a mask of 2..TOKENS leading ones per row;
    the ids under a zero mask are padding (random, so a step that ignored the mask would
    see them)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(n, TOKENS)).astype(np.int64)
    lengths = rng.integers(2, TOKENS + 1, size=n)
    mask = (np.arange(TOKENS)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def run_steps(bundle: Bundle, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every state's logits, running the bundle's step files by hand on ONNX Runtime with
    each step fed exactly the graph inputs it declares."""
    import onnxruntime as ort

    env = dict(feeds)
    logits = []
    for step in bundle.steps:
        sess = ort.InferenceSession(str(step.path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        out = dict(
            zip(
                names,
                sess.run(names, {i.name: env[i.name] for i in sess.get_inputs()}),
                strict=True,
            )
        )
        env.update(out)
        logits.append(out[step.logits])
    return logits


#: The inputs of `masked_steps`: float32 ``ids`` and ``mask`` ``[batch, 4]``.
MASKED_INPUTS = (InputSpec("ids", ("batch", 4)), InputSpec("mask", ("batch", 4)))


def masked_steps(first_reads_mask: bool = True, seed: int = 0) -> list[Step]:
    """Two toy steps over `MASKED_INPUTS`: step 0 computes ``act = ids * mask`` (or
    ``relu(ids)`` when not `first_reads_mask`) and ``logits0 = act @ w``; step 1 reads the
    activation and ``mask`` again, as a transformer's later layers read the attention
    mask, and gives ``logits1 = (act * mask) @ w``. ``w`` is ``[4, 10]``, seeded."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 10)).astype(np.float32), "w")

    def vi(name: str, width: int = 4) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])

    def model(
        nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str]
    ) -> onnx.ModelProto:
        outs = [vi(n, 10 if n.startswith("logits") else 4) for n in outputs]
        graph = helper.make_graph(nodes, outputs[-1], [vi(n) for n in inputs], outs, [w])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])

    first = ["ids", "mask"] if first_reads_mask else ["ids"]
    step0 = model(
        [
            helper.make_node("Mul" if first_reads_mask else "Relu", first, ["act"]),
            helper.make_node("MatMul", ["act", "w"], ["logits0"]),
        ],
        first,
        ["act", "logits0"],
    )
    step1 = model(
        [
            helper.make_node("Mul", ["act", "mask"], ["h"]),
            helper.make_node("MatMul", ["h", "w"], ["logits1"]),
        ],
        ["act", "mask"],
        ["logits1"],
    )
    return [Step(step0, "logits0", activation="act"), Step(step1, "logits1")]


def assert_median_threshold_split(
    bundle: Bundle, feeds: dict[str, np.ndarray], logits: Sequence[np.ndarray]
) -> None:
    """Run the two-state `bundle` with state 0's threshold at the median of its
    confidence on `feeds`: each row's answer is state 0's (`logits[0]`) where it passes
    and state 1's otherwise, and both states answer some rows."""
    from edgeadapt.cascade.model import AdaptiveModel
    from edgeadapt.kernel import confidence

    c0 = confidence(logits[0])
    t0 = float(np.median(c0))
    with AdaptiveModel.load(bundle, thresholds=t0) as m:
        out = m.predict(feeds)
    passes = c0 >= t0
    np.testing.assert_array_equal(
        out.pred, np.where(passes, logits[0].argmax(1), logits[1].argmax(1))
    )
    assert 0 < int(passes.sum()) < len(passes)
