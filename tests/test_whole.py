"""The whole model a profile times: a user's ONNX is checked against the bundle, and each
refusal names the file and the tensor."""

from pathlib import Path

import numpy as np
import pytest

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.profile import MIN_SAMPLES
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.measure.whole import load_whole, prepare_whole, whole_run
from edgeadapt.runtimes import get_runtime

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"


@pytest.fixture(scope="module")
def multiexit():
    return load_bundle(BUNDLES / "mnist1d-multiexit")


def _model(tmp_path, in_name="x", in_type="float", in_shape=("B", 1, 40), outputs=(("l", 10),)):
    """Input -> Cast to float -> Flatten -> the first k columns, as each named output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    types = {"float": TensorProto.FLOAT, "double": TensorProto.DOUBLE}
    nodes = [
        helper.make_node("Cast", [in_name], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["f"], ["flat"]),
    ]
    for k, (name, width) in enumerate(outputs):
        consts = {f"start{k}": 0, f"end{k}": width, f"axis{k}": 1}
        nodes += [
            helper.make_node("Constant", [], [c], value=numpy_helper.from_array(np.array([v])))
            for c, v in consts.items()
        ]
        nodes.append(helper.make_node("Slice", ["flat", *consts], [name]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(in_name, types[in_type], list(in_shape))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", w]) for n, w in outputs],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_name": "image"}, r"reads \['image'\], the bundle's model inputs are \['x'\]"),
        ({"in_type": "double"}, "does not fit the bundle's x: float32"),
        ({"in_shape": ("B", 2, 40)}, r"does not fit the bundle's x: \[batch, 1, 40\]"),
        ({"outputs": (("l", 7),)}, r"is not \[batch, 10\] logits"),
        ({"outputs": (("a", 10), ("b", 10))}, "expected the last state's logits 'logits3'"),
    ],
)
def test_a_whole_model_that_does_not_fit_names_the_file(multiexit, tmp_path, kwargs, match):
    path = _model(tmp_path, **kwargs)
    with pytest.raises(InputError, match=match) as e:
        profile_bundle(multiexit, timing=TimingOptions(warmup=0, iters=MIN_SAMPLES, whole=path))
    assert e.value.source == str(path)
    assert str(path) in str(e.value)


def test_a_whole_model_that_fits_is_timed(multiexit, tmp_path):
    """The checks accept any model with the bundle's input and [batch, classes] logits."""
    p = profile_bundle(
        multiexit, timing=TimingOptions(warmup=0, iters=MIN_SAMPLES, whole=_model(tmp_path))
    )
    assert p.whole_model["origin"] == "file"


def test_a_whole_model_that_is_not_onnx_names_the_file(multiexit, tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot load the whole model") as e:
        profile_bundle(multiexit, timing=TimingOptions(warmup=0, iters=MIN_SAMPLES, whole=path))
    assert str(path) in str(e.value)
    with pytest.raises(InputError, match=r"absent\.onnx: file not found"):
        profile_bundle(
            multiexit,
            timing=TimingOptions(warmup=0, iters=MIN_SAMPLES, whole=tmp_path / "absent.onnx"),
        )


def test_a_whole_model_that_is_a_fifo_is_refused_before_it_is_opened(multiexit, tmp_path):
    """Opening (or hashing) a FIFO blocks until a writer comes."""
    import os

    os.mkfifo(tmp_path / "model.onnx")
    with pytest.raises(InputError, match=r"model\.onnx: not a regular file"):
        profile_bundle(
            multiexit,
            timing=TimingOptions(warmup=0, iters=MIN_SAMPLES, whole=tmp_path / "model.onnx"),
        )


def test_a_fitting_model_runs_at_any_batch(multiexit, tmp_path):
    whole = prepare_whole(multiexit, _model(tmp_path), tmp_path)
    load_whole(get_runtime("onnxruntime", threads=1), multiexit, whole)
    try:
        assert whole.logits == "l"
        for batch in (1, 5):
            x = np.zeros((batch, 1, 40), np.float32)
            assert whole_run(whole, {"x": x}, batch)()["l"].shape == (batch, 10)
    finally:
        whole.session.close()


def test_a_model_fixed_at_batch_one_is_refused_at_another_batch(multiexit, tmp_path):
    path = _model(tmp_path, in_shape=(1, 1, 40))
    with pytest.raises(InputError, match="whole model fails at batch 2") as e:
        profile_bundle(
            multiexit, timing=TimingOptions(warmup=0, iters=MIN_SAMPLES, whole=path, batches=(1, 2))
        )
    assert e.value.source == str(path)


def test_a_branches_bundle_is_timed_against_its_source_model(tmp_path):
    """For execution branches the static model is the original network: composed, the
    last (full) branch; or the source ONNX itself with ``whole=PATH``."""
    import onnx

    from edgeadapt.exporters.branches import export_branches
    from tests.test_export_branches import L, residual_cnn

    source = tmp_path / "rescnn.onnx"
    onnx.save(residual_cnn(), source)
    x = np.random.default_rng(1).standard_normal((60, 1, L)).astype(np.float32)
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, x=x, y=np.zeros(60, np.int64))
    bundle = export_branches(source, tmp_path / "b", calibration=calibration, max_branches=2)
    composed = profile_bundle(bundle, timing=TimingOptions(warmup=0, iters=MIN_SAMPLES))
    assert composed.whole_model["origin"] == "composed"
    assert composed.whole_model["state"] == bundle.states[-1].name
    given = profile_bundle(bundle, timing=TimingOptions(warmup=0, iters=MIN_SAMPLES, whole=source))
    assert given.whole_model["path"] == str(source)
    assert given.whole_stats(1).p50 > 0
