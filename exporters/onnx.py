"""ONNX splitter: any ONNX classifier cut at chosen tensors -> an early-exit bundle.

Step i is the subgraph from cut i-1 (the model input for i = 0) to cut i plus exit
head i; the last step ends at the model's logits. Each head is either an existing
tensor of the graph (the model's own exit output, ``heads={cut: output}``) or a linear
head trained on the activations at the cut from a calibration set. Subgraphs are taken
with `onnx.utils.Extractor` after shape inference; every cut is checked up front
(exists, lies in the main graph, has a static per-sample shape, separates the graph),
and the chained steps must reproduce the original outputs before anything is written.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx.utils import Extractor

from edgeadapt.bundle import Bundle, InputSpec, Step, write_bundle
from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph
from edgeadapt.exporters.heads import (
    POOLS,
    LinearHead,
    attach_head,
    choose_pool,
    features,
    train_linear_head,
)
from edgeadapt.npzio import ArraySpec, load_npz

#: progress(label, done, total): called as the export advances (for a progress bar).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class _Plan:
    """Where one step starts and ends in the source graph."""

    inputs: list[str]
    activation: str | None
    head: str | None  # an existing tensor used as this step's exit (own head)
    nodes: set[int]


def _check_cut(model: onnx.ModelProto, name: str, source: Path, flag: str) -> None:
    """A cut (or head output) must be a tensor computed in the main graph."""
    produced = {o for n in model.graph.node for o in n.output if o}
    if name in produced:
        return
    bodies = _graph.body_tensors(model)
    if name in bodies:
        raise InputError(
            f"{name!r} is defined inside the body of {bodies[name]}; cuts must be tensors "
            "of the main graph, not of If/Loop/Scan bodies",
            source=source,
            field=flag,
        )
    if name in {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}:
        raise InputError(
            f"{name!r} is a graph input or a weight; cut at a tensor the graph computes",
            source=source,
            field=flag,
        )
    close = difflib.get_close_matches(name, sorted(produced), n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    raise InputError(f"no tensor named {name!r} in the model{hint}", source=source, field=flag)


def _final_logits(
    model: onnx.ModelProto, heads: Mapping[str, str], logits: str | None, source: Path
) -> str:
    outputs = [o.name for o in model.graph.output]
    if logits is not None:
        _check_cut(model, logits, source, "--logits")
        return logits
    rest = [o for o in outputs if o not in set(heads.values())]
    if len(rest) != 1:
        raise InputError(
            f"cannot tell which output is the final logits among {rest}; name it with --logits",
            source=source,
        )
    return rest[0]


def _classes(model: onnx.ModelProto, name: str, source: Path, what: str) -> int:
    tail = _graph.static_tail(_graph.value_infos(model).get(name))
    if tail is None or len(tail) != 1:
        raise InputError(
            f"{what} {name!r} must have shape [batch, classes] with a static class count, "
            f"got per-sample shape {tail}",
            source=source,
        )
    return tail[0]


def _plan(
    model: onnx.ModelProto,
    spec: InputSpec,
    cuts: Sequence[str],
    heads: Mapping[str, str],
    logits: str,
    source: Path,
) -> list[_Plan]:
    """Node sets of every step, checking that each cut separates the graph."""
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output if o}
    plans: list[_Plan] = []
    taken: set[int] = set()
    boundary = [spec.name]
    ends = [*cuts, None]
    for i, cut in enumerate(ends):
        wanted = [n for n in (cut, heads.get(cut) if cut else logits) if n]
        prev = boundary[-1]
        if i > 0 and producer[prev] not in _graph.ancestors(model, [wanted[0]], stop=[spec.name]):
            before = _graph.ancestors(model, [prev], stop=[spec.name])
            order = "comes before" if producer[wanted[0]] in before else "does not depend on"
            raise InputError(
                f"{wanted[0]!r} {order} the previous cut {prev!r}: cuts must be given in "
                "order from input to output, each depending on the one before",
                source=source,
                field=f"--cut {cut}" if cut else "--logits",
            )
        nodes = _graph.ancestors(model, wanted, stop=boundary)
        overlap = nodes & taken
        if overlap:
            first = model.graph.node[min(overlap)]
            raise InputError(
                f"cut {prev!r} does not separate the graph: step {i} ({wanted}) would need "
                f"{first.op_type} node {first.name or first.output[0]!r}, which lies before it "
                "(a skip connection crosses the cut?)",
                source=source,
                field=f"--cut {prev}",
            )
        if not nodes:
            raise InputError(
                f"step {i} would be an empty graph ({wanted} is {prev!r})", source=source
            )
        reads = {x for k in nodes for x in _graph.node_inputs(model.graph.node[k])}
        inputs = [prev] if i > 0 else []
        if spec.name in reads and spec.name not in inputs:
            inputs.append(spec.name)
        plans.append(_Plan(inputs, cut, heads.get(cut) if cut else None, nodes))
        taken |= nodes
        if cut:
            boundary.append(cut)
    return plans


def _extract(
    model: onnx.ModelProto, plan: _Plan, outputs: list[str], index: int, source: Path
) -> onnx.ModelProto:
    extractor = Extractor(model)
    step = extractor.extract_model(plan.inputs, outputs)
    if len(step.graph.node) != len(plan.nodes):
        raise InputError(
            f"step {index} contains a control-flow node whose body reads tensors the "
            "Extractor does not follow; cut after that node instead",
            source=source,
        )
    try:
        onnx.checker.check_model(step, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise InputError(f"step {index} is not a valid ONNX graph: {e}", source=source) from None
    return step


def _load_calibration(
    path: str | os.PathLike[str], spec: InputSpec, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    data = load_npz(path, {"x": ArraySpec("fiu", len(spec.shape)), "y": ArraySpec("iu", 1)})
    x, y = data["x"], data["y"].astype(np.int64)
    want = tuple(spec.shape[1:])
    if tuple(x.shape[1:]) != want:
        raise InputError(
            f"per-sample shape {x.shape[1:]} does not match the model's {want}",
            source=path,
            field="x",
        )
    if len(x) != len(y):
        raise InputError(f"{len(x)} samples in x but {len(y)} labels", source=path, field="y")
    if len(x) < 2:
        raise InputError("needs at least 2 samples", source=path, field="x")
    if y.min() < 0 or y.max() >= num_classes:
        raise InputError(f"labels must lie in [0, {num_classes})", source=path, field="y")
    if not np.all(np.isfinite(x)):
        raise InputError("contains NaN or infinite values", source=path, field="x")
    return x.astype(spec.dtype), y


def _parity(
    reference: onnx.ModelProto,
    spec: InputSpec,
    steps: list[Step],
    checks: list[list[tuple[str, str | LinearHead]]],
    inputs: list[np.ndarray],
    source: Path,
) -> float:
    """Run the chained steps against the source model; return the worst abs error.

    `checks[i]` pairs each output of step i with the source tensor it must equal, or
    with the trained head whose numpy prediction from the step's activation it must equal.
    """
    ref_names = sorted({t for c in checks for _, t in c if isinstance(t, str)})
    try:
        ref_sess = _graph.session(_graph.with_outputs(reference, ref_names))
        sessions = [_graph.session(s.model) for s in steps]
        outs = []
        for x in inputs:
            ref = dict(zip(ref_names, ref_sess.run(ref_names, {spec.name: x}), strict=True))
            env = {spec.name: x}
            for step, sess in zip(steps, sessions, strict=True):
                names = [o.name for o in step.model.graph.output]
                feeds = {n.name: env[n.name] for n in sess.get_inputs()}
                env.update(zip(names, sess.run(names, feeds), strict=True))
            outs.append((x, ref, env))
    except Exception as e:  # onnxruntime raises its own exception types
        raise InputError(
            f"ONNX Runtime cannot run the model or its steps with a dynamic batch axis: {e}",
            source=source,
        ) from None
    worst = 0.0
    for x, ref, env in outs:
        for i, step in enumerate(steps):
            for out, want in checks[i]:
                if isinstance(want, LinearHead):
                    act = env[step.activation] if step.activation else None
                    target = features(act, want.pool) @ want.weight + want.bias
                    label = f"trained head of step {i}"
                else:
                    target, label = ref[want], f"source tensor {want!r}"
                err, ok = _graph.worst_error(env[out], target)
                if not ok:
                    raise InputError(
                        f"parity check failed: step {i} output {out!r} differs from the {label} "
                        f"(max abs error {err:.3g}, batch {len(x)}; tolerance rtol "
                        f"{_graph.RTOL}, atol {_graph.ATOL})",
                        source=source,
                    )
                worst = max(worst, err)
    return worst


def export_onnx(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    cuts: Sequence[str],
    heads: Mapping[str, str] | None = None,
    logits: str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    pool: str = "auto",
    force: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
) -> Bundle:
    """Split the classifier at `model_path` at `cuts` into an early-exit bundle.

    `heads` maps a cut to an existing tensor that is that exit's logits; cuts without
    one get a trained linear head (``pool`` ``auto``/``gap``/``flatten``) fitted on the
    `calibration` npz (``x``, ``y``). `logits` names the final output (default: the one
    graph output that is not a head). Parity of the chained steps with the source model
    is checked on random inputs of batch 1 and 7 (and calibration samples) first.
    """
    source = Path(model_path)
    heads = dict(heads or {})
    cuts = list(cuts)
    if not cuts:
        raise InputError("give at least one --cut", source=source)
    if len(set(cuts)) != len(cuts):
        raise InputError(f"cuts repeat a tensor: {cuts}", source=source, field="--cut")
    if pool not in POOLS:
        raise InputError(f"must be one of {POOLS}, got {pool!r}", field="--pool")
    for cut in heads:
        if cut not in cuts:
            raise InputError(
                f"head given for {cut!r}, which is not a --cut", source=source, field="--head"
            )
    raw = _graph.load_source(source)
    model = _graph.with_dynamic_batch(raw, source)
    spec = _graph.input_spec(model, source)
    for cut in cuts:
        _check_cut(model, cut, source, f"--cut {cut}")
    for cut, out in heads.items():
        _check_cut(model, out, source, f"--head {cut}={out}")
    final = _final_logits(model, heads, logits, source)
    if final in cuts:
        raise InputError(
            f"{final!r} is the final logits; cut before it", source=source, field="--cut"
        )
    num_classes = _classes(model, final, source, "the final logits")
    for cut, out in heads.items():
        if _classes(model, out, source, f"head output of {cut!r}") != num_classes:
            raise InputError(
                f"head {out!r} has a different class count than {final!r}", source=source
            )
    infos = _graph.value_infos(model)
    tails = {}
    for cut in cuts:
        tail = _graph.static_tail(infos.get(cut))
        if tail is None:
            raise InputError(
                f"cut {cut!r} has no shape information (or a dynamic axis after the batch "
                "axis) after shape inference; cut at a tensor with a known shape",
                source=source,
                field=f"--cut {cut}",
            )
        tails[cut] = tail
    untrained = [c for c in cuts if c not in heads]
    if untrained and calibration is None:
        raise InputError(
            f"cuts {untrained} have no exit head: map each to an existing output with "
            "--head CUT=OUTPUT, or give --calibration calib.npz to train linear heads",
            source=source,
        )
    plans = _plan(model, spec, cuts, heads, final, source)
    total = len(plans) + len(untrained) + 1
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(label, done, total)

    trained: dict[str, LinearHead] = {}
    calib_x: np.ndarray | None = None
    if untrained:
        assert calibration is not None
        calib_x, calib_y = _load_calibration(calibration, spec, num_classes)
        sess = _graph.session(_graph.with_outputs(model, untrained))
        acts = _graph.run_batched(sess, spec.name, calib_x, untrained)
        for cut, act in zip(untrained, acts, strict=True):
            trained[cut] = train_linear_head(
                act, calib_y, num_classes, choose_pool(tails[cut], pool)
            )
            tick(f"trained head at {cut}")

    steps: list[Step] = []
    checks: list[list[tuple[str, str | LinearHead]]] = []
    for i, plan in enumerate(plans):
        if plan.activation is None:
            step_model = _extract(model, plan, [final], i, source)
            steps.append(Step(step_model, logits=final))
            checks.append([(final, final)])
        elif plan.head is not None:
            step_model = _extract(model, plan, [plan.activation, plan.head], i, source)
            steps.append(Step(step_model, plan.head, plan.activation, head_input=plan.activation))
            checks.append([(plan.activation, plan.activation), (plan.head, plan.head)])
        else:
            stage = _extract(model, plan, [plan.activation], i, source)
            head = trained[plan.activation]
            step_model, head_logits = attach_head(stage, plan.activation, head, f"exit{i}/")
            steps.append(Step(step_model, head_logits, plan.activation, head_input=plan.activation))
            checks.append([(plan.activation, plan.activation), (head_logits, head)])
        tick(f"extracted step {i}")

    inputs = _graph.example_inputs(spec, seed)
    if calib_x is not None:
        inputs.append(calib_x[:64])
    worst = _parity(model, spec, steps, checks, inputs, source)
    tick("checked parity")
    head_info: list[dict[str, Any]] = []
    for cut in cuts:
        if cut in heads:
            head_info.append({"cut": cut, "kind": "own", "output": heads[cut]})
        else:
            h = trained[cut]
            head_info.append(
                {
                    "cut": cut,
                    "kind": "trained-linear",
                    "pool": h.pool,
                    "features": int(h.weight.shape[0]),
                    "calibration_accuracy": round(h.train_accuracy, 6),
                }
            )
    return write_bundle(
        out_dir,
        kind="early-exit",
        input=spec,
        num_classes=num_classes,
        steps=steps,
        state_names=[f"exit{i}" for i in range(len(cuts))] + ["final"],
        producer={
            "exporter": "edgeadapt.exporters.onnx",
            "source": source.name,
            "source_sha256": _graph.file_sha256(source),
        },
        extra={
            "cuts": cuts,
            "logits": final,
            "heads": head_info,
            "parity": {"max_abs_error": worst, "rtol": _graph.RTOL, "atol": _graph.ATOL},
        },
        force=force,
    )
