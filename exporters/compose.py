"""The whole model behind a bundle: its steps chained back into one ONNX graph.

For an early-exit bundle the whole model is the backbone plus the last head only: the
steps are merged in order with `onnx.compose.merge_models` (step i's activation output
feeds step i+1's input), then `onnx.utils.Extractor` keeps what the last state's logits
depend on, which prunes the intermediate heads. For an ensemble bundle it is the last
member as it is. Benchmarks run it as the baseline the cascade's full path is held to.

Each step after the first gets the prefix ``step{i}/`` on its internal names (they repeat
from step to step); the result keeps the bundle's input names and the last logits name.
A later step may read model inputs besides the activation (a transformer's
``attention_mask``): those edges are pointed back at the one graph input of that name.
Known limit (the Extractor's): it follows only a node's listed inputs, not the outer-scope
tensors a control-flow body (If, Loop, Scan) reads, so a step with such a body is refused
with a message rather than composed wrongly.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import compose
from onnx.utils import Extractor

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle
from edgeadapt.graph import deps as graphdeps


def _load(bundle: Bundle, i: int) -> onnx.ModelProto:
    step = bundle.steps[i]
    try:
        model = onnx.load(str(step.path))
    except Exception as e:  # protobuf DecodeError, missing external data files, ...
        raise InputError(f"not a readable ONNX model ({e})", source=step.path) from None
    for node in model.graph.node:
        if len(graphdeps.node_inputs(node)) > sum(1 for x in node.input if x):
            raise InputError(
                f"{node.op_type} node {node.name!r} has a body reading outer-scope tensors, "
                "which onnx.utils.Extractor does not follow: cannot compose the whole model",
                source=step.path,
            )
    # Initializers no node reads are dropped, as ONNX Runtime drops them when it loads the
    # step: the merge checks every tensor it keeps.
    read = {name for node in model.graph.node for name in graphdeps.node_inputs(node)}
    read |= {o.name for o in model.graph.output}
    unused = [t for t in model.graph.initializer if t.name not in read]
    for t in unused:
        model.graph.initializer.remove(t)
    return model


def _rename_output(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename the graph output `old` (produced in the main graph) to `new`."""
    for node in model.graph.node:
        for k, name in enumerate(node.output):
            if name == old:
                node.output[k] = new
    for vi in model.graph.output:
        if vi.name == old:
            vi.name = new


def _share_model_inputs(model: onnx.ModelProto, prefix: str, names: Sequence[str]) -> None:
    """Point the prefixed copies of model inputs (``step{i}/attention_mask``) that merging
    made back at the graph input of the plain name, adding it where no earlier step
    read it."""
    graph = model.graph
    renamed = {f"{prefix}{n}": n for n in names}
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    have = {vi.name for vi in graph.input}
    kept = []
    for vi in graph.input:
        plain = renamed.get(vi.name)
        if plain is None:
            kept.append(vi)
        elif plain not in have:
            vi.name = plain
            have.add(plain)
            kept.append(vi)
    del graph.input[:]
    graph.input.extend(kept)


def whole_model(bundle: Bundle, state: int | None = None) -> onnx.ModelProto:
    """The bundle's whole model: every step chained, only the last state's logits out.

    With `state`, the plain model of that state instead: steps 0..state chained with
    only its own head (an ensemble's member as it is; for a bundle of several chains,
    its chain's steps up to it)."""
    count = len(bundle.steps)
    if state is not None and not (0 <= state < count):
        raise InputError(f"must be a state index in [0, {count}), got {state}", source="state")
    last = count - 1 if state is None else state
    if bundle.kind != "early-exit":
        return _load(bundle, last)
    model_inputs = [spec.name for spec in bundle.inputs]
    first = bundle.state_steps(last)[0]
    merged = _load(bundle, first)
    for i in range(first + 1, last + 1):
        activation = bundle.steps[i - 1].activation
        step = bundle.steps[i]
        extra = [n for n in step.inputs if n != activation]
        if (
            activation is None
            or activation not in step.inputs
            or not set(extra) <= set(model_inputs)
        ):
            raise InputError(
                f"step {i} reads {list(step.inputs)}, not step {i - 1}'s activation "
                f"{activation!r} (and model inputs): not a chain",
                source=bundle.path,
                field=f"$.states[{i}].inputs",
            )
        produced = f"step{i - 1}/{activation}" if i > first + 1 else activation
        try:
            merged = compose.merge_models(
                merged, _load(bundle, i), io_map=[(produced, activation)], prefix2=f"step{i}/"
            )
        except Exception as e:  # mismatched opsets or IR versions, name clashes, ...
            raise InputError(
                f"cannot chain step {i} onto the steps before it: {e}", source=step.path
            ) from None
        _share_model_inputs(merged, f"step{i}/", extra)
    logits = (
        f"step{last}/{bundle.steps[last].logits}" if last > first else bundle.steps[last].logits
    )
    read = {vi.name for vi in merged.graph.input}
    whole = Extractor(merged).extract_model([n for n in model_inputs if n in read], [logits])
    _rename_output(whole, logits, bundle.steps[last].logits)
    opsets = {o.domain: o.version for o in whole.opset_import}  # merging repeats them
    del whole.opset_import[:]
    whole.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    try:
        onnx.checker.check_model(whole)
    except onnx.checker.ValidationError as e:
        raise InputError(f"the composed whole model is invalid: {e}", source=bundle.path) from None
    return whole
