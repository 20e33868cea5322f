"""Which torch module an exported ONNX node came from.

torch's TorchScript exporter (``dynamo=False``) names each node after its module scope:
``/layer2/layer2.1/relu_1/Relu`` is in module ``layer2.1.relu_1``. Each level is the
attribute name, and an index joins its container's label (``features.3``); a container
that is iterated rather than called (a ModuleList) has no level of its own
(``/encoder/layer.1/`` is ``encoder.layer.1``). The dynamo exporter names nodes after the
traced code (``node_add_216``) and records the module path in the node's
``pkg.torch.onnx.name_scopes`` metadata: ``['', 'bert', ..., 'bert.encoder.layer.1',
'add_216']``.
"""

from __future__ import annotations

import ast

import onnx

__all__ = ["NAME_SCOPES", "module_path"]

#: The dynamo exporter's node metadata key holding the module path, outermost first.
NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def _from_scopes(text: str) -> str | None:
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or len(scopes) < 2:
        return None
    module = scopes[-2]  # the last entry names the traced operation itself
    return module if isinstance(module, str) and module else None


def _from_name(name: str) -> str | None:
    parts = name.split("/")
    if not name.startswith("/") or len(parts) < 3:
        return None
    labels: list[str] = []
    for label in parts[1:-1]:
        if labels and label.startswith(labels[-1] + "."):
            labels[-1] = label  # ``features`` then ``features.3``: one level, indexed
        else:
            labels.append(label)
    return ".".join(labels) or None


def module_path(node: onnx.NodeProto) -> str | None:
    """The dotted path of the module that `node` belongs to, from the dynamo exporter's
    metadata or the TorchScript exporter's node name; None when neither records one."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            return _from_scopes(prop.value)
    return _from_name(node.name)
