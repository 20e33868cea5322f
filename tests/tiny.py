"""Tiny two-step early-exit bundles, sound or with one deliberately bad step output,
for the fault tests of the Python cascade, the evaluator and the native runner.

Input ``x`` float32 ``[batch, 4]``, 3 classes. Step 0 outputs the activation ``a0``
(Relu of x) and the logits ``l0``; step 1 reads ``a0`` and outputs ``l1``. A `bad`
variant changes what step 0 computes while its declared outputs stay ``[batch, ...]``
float32, as a hand-edited or miscompiled graph would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.formats.bundle import Bundle, InputSpec, Step, write_bundle

FEATURES = 4
CLASSES = 3
SPEC = InputSpec("x", ("batch", FEATURES))

#: the step-0 faults `tiny_bundle` can build
BAD = ("act-one-row", "logits-one-row", "logits-float64", "logits-int64", "logits-rank3")


def _w(name: str, *shape: int, seed: int) -> TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _step0(bad: str | None, features: int) -> Step:
    nodes = [
        helper.make_node("Relu", ["x"], ["a0_full"]),
        helper.make_node("Gemm", ["x", "w0"], ["l0_full"], transB=1),
    ]
    inits = [_w("w0", CLASSES, features, seed=0)]
    if bad in ("act-one-row", "logits-one-row"):
        inits.append(numpy_helper.from_array(np.array([0]), "first"))
    a0, l0 = "a0_full", "l0_full"
    if bad == "act-one-row":  # a fixed batch of 1: row 0 only
        nodes.append(helper.make_node("Gather", ["a0_full", "first"], ["a0_one"], axis=0))
        a0 = "a0_one"
    elif bad == "logits-one-row":
        nodes.append(helper.make_node("Gather", ["l0_full", "first"], ["l0_one"], axis=0))
        l0 = "l0_one"
    elif bad in ("logits-float64", "logits-int64"):
        to = TensorProto.DOUBLE if bad == "logits-float64" else TensorProto.INT64
        nodes.append(helper.make_node("Cast", ["l0_full"], ["l0_cast"], to=to))
        l0 = "l0_cast"
    elif bad == "logits-rank3":
        nodes.append(helper.make_node("Unsqueeze", ["l0_full", "axis1"], ["l0_r3"]))
        inits.append(numpy_helper.from_array(np.array([1]), "axis1"))
        l0 = "l0_r3"
    nodes += [
        helper.make_node("Identity", [a0], ["a0"]),
        helper.make_node("Identity", [l0], ["l0"]),
    ]
    ltype = {"logits-float64": TensorProto.DOUBLE, "logits-int64": TensorProto.INT64}
    graph = helper.make_graph(
        nodes,
        "step0",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("a0", TensorProto.FLOAT, ["batch", features]),
            helper.make_tensor_value_info(
                "l0", ltype.get(bad or "", TensorProto.FLOAT), ["batch", CLASSES]
            ),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Step(model, logits="l0", activation="a0")


def _step1(features: int) -> Step:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a0", "w1"], ["l1"], transB=1)],
        "step1",
        [helper.make_tensor_value_info("a0", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("l1", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[_w("w1", CLASSES, features, seed=1)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Step(model, logits="l1")


def _rehash(bundle_dir: Path, index: int, data: bytes) -> None:
    """Replace step `index`'s file with `data` and update its hashes in the manifest."""
    import hashlib
    import json

    rel = f"step{index}.onnx"
    (bundle_dir / rel).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    manifest = bundle_dir / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["files"][rel] = doc["states"][index]["sha256"] = digest
    manifest.write_text(json.dumps(doc, indent=2))


def tiny_bundle(out: Path, bad: str | None = None, features: int = FEATURES) -> Bundle:
    """Write the tiny bundle to `out`; `features` widens the input (a large input in few
    rows). With fault `bad` (one of `BAD`) step 0 is swapped for the faulty graph after
    writing, hashes kept consistent, and the bundle is returned unverified (verification
    refuses the faults it can see in the graph; the runtime checks catch the rest)."""
    from edgeadapt.formats.bundle import load_bundle

    if bad is not None and bad not in BAD:
        raise ValueError(f"bad must be one of {BAD}, got {bad!r}")
    b = write_bundle(
        out,
        kind="early-exit",
        input=InputSpec("x", ("batch", features)),
        num_classes=CLASSES,
        steps=[_step0(None, features), _step1(features)],
        state_names=["early", "final"],
        producer={"exporter": "tests.tiny"},
    )
    if bad is None:
        return b
    _rehash(b.path, 0, _step0(bad, features).model.SerializeToString())
    return load_bundle(b.path, verify=False)


def tiny_inputs(rows: int, seed: int = 0, features: int = FEATURES) -> np.ndarray:
    """`rows` random float32 inputs for the tiny bundle."""
    return np.random.default_rng(seed).standard_normal((rows, features)).astype(np.float32)


#: the places `with_unlisted_data` can point a tensor at a file the manifest does not list
UNLISTED = ("initializer", "sparse-initializer", "constant-sparse-value", "constant-tensors")


def _external(t: TensorProto, location: str) -> None:
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.ClearField("int64_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", location


def with_unlisted_data(bundle_dir: Path, where: str) -> Path:
    """Point one tensor of step 1 at external data in ``evil.bin`` (present in the bundle
    but not listed in the manifest), then rehash step 1 so every listed hash holds."""
    import onnx

    path = bundle_dir / "step1.onnx"
    model = onnx.load(str(path))
    g = model.graph
    (bundle_dir / "evil.bin").write_bytes(np.zeros(64, np.float32).tobytes())
    values = numpy_helper.from_array(np.ones(2, np.float32), "sv")
    indices = numpy_helper.from_array(np.array([0, 1], np.int64), "si")
    if where == "initializer":
        _external(g.initializer[0], "evil.bin")
    elif where == "sparse-initializer":
        _external(values, "evil.bin")
        g.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    elif where == "constant-sparse-value":
        _external(values, "evil.bin")
        sparse = helper.make_sparse_tensor(values, indices, [4])
        g.node.append(helper.make_node("Constant", [], ["unused"], sparse_value=sparse))
    elif where == "constant-tensors":  # a TENSORS attribute, on a node of another domain
        _external(values, "evil.bin")
        node = helper.make_node("Custom", [], ["unused2"], domain="test.unused")
        node.attribute.append(helper.make_attribute("ts", [values]))
        g.node.append(node)
    else:
        raise ValueError(f"where must be one of {UNLISTED}, got {where!r}")
    _rehash(bundle_dir, 1, model.SerializeToString())
    return bundle_dir
