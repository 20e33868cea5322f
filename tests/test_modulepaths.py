"""edgeadapt.graph.modulepaths: the module of a node from TorchScript names or dynamo metadata."""

import onnx
import pytest

from edgeadapt.graph.modulepaths import NAME_SCOPES, module_path


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("/layer2/layer2.1/relu_1/Relu", "layer2.1.relu_1"),
        ("/features/features.3/block/block.0/block.0.0/Conv", "features.3.block.0.0"),
        (
            "/bert/encoder/layer.1/output/LayerNorm/LayerNormalization",
            "bert.encoder.layer.1.output.LayerNorm",
        ),
        ("/model/features/features.3/Add", "model.features.3"),
        ("/Flatten", None),
        ("Identity_12", None),
    ],
)
def test_torchscript_names(name, module):
    assert module_path(onnx.helper.make_node("Relu", ["x"], ["y"], name=name)) == module


@pytest.mark.parametrize(
    ("scopes", "module"),
    [
        ("['', 'bert', 'bert.encoder.layer.1', 'add_216']", "bert.encoder.layer.1"),
        ("['', 'add_5']", None),
        ("not a list", None),
    ],
)
def test_dynamo_name_scopes_win_over_the_name(scopes, module):
    node = onnx.helper.make_node("Add", ["a", "b"], ["c"], name="/looks/like/torchscript/Add")
    onnx.helper.set_metadata_props(node, {NAME_SCOPES: scopes})
    assert module_path(node) == module
