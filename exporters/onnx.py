"""ONNX splitter: any ONNX classifier cut at chosen tensors -> an early-exit bundle.

Step i is the subgraph from cut i-1 (the model inputs for i = 0) to cut i plus exit
head i; the last step ends at the model's logits. A step after the first reads the
previous step's activation plus every model input it still needs (a transformer's
``attention_mask``); nodes that depend only on model inputs or constants (mask
preprocessing, shape arithmetic, a scalar Constant shared by every layer) are
recomputed inside each step that needs them, while a tensor computed from an earlier
activation, or a large constant, crossing a cut is refused.

Each head is either an existing tensor of the graph (the model's own exit output,
``heads={cut: output}``) or a linear head trained on the activations at the cut from a
calibration set, streamed through the model in batches. Subgraphs are taken with
`onnx.utils.Extractor` after shape inference; every cut is checked up front (exists,
lies in the main graph, has a static per-sample shape, separates the graph), and the
chained steps must reproduce the original outputs before anything is written.
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

from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph
from edgeadapt.exporters._calib import Calibration, open_calibration
from edgeadapt.exporters.heads import (
    POOLS,
    TOKEN_POOLS,
    HeadFitter,
    LinearHead,
    attach_head,
    choose_pool,
    features,
    heldout_mask,
    is_token_sequence,
    overfit_message,
)
from edgeadapt.formats.bundle import Bundle, InputSpec, Step, write_bundle
from edgeadapt.formats.digest import file_sha256
from edgeadapt.graph import deps as graphdeps

#: progress(label, done, total): called as the export advances (for a progress bar).
Progress = Callable[[str, int, int], None]
#: Constant tensors up to this size are copied into every step that reads them.
MAX_SHARED_BYTES = 1024
DEFAULT_BATCH_SIZE = 32
_ITEMSIZE = {1: 4, 10: 2, 11: 8, 7: 8, 6: 4, 3: 1, 2: 1, 9: 1, 16: 2}


@dataclass(frozen=True)
class _Plan:
    """Where one step starts and ends in the source graph."""

    inputs: list[str]
    activation: str | None
    head: str | None  # an existing tensor used as this step's exit (own head)
    nodes: set[int]


def _check_cut(model: onnx.ModelProto, name: str, source: Path, param: str) -> None:
    """A cut (or head output) must be a tensor computed in the main graph; errors name
    the parameter `param` that gave it (cuts, heads, logits)."""
    produced = {o for n in model.graph.node for o in n.output if o}
    if name in produced:
        return
    bodies = graphdeps.body_tensors(model)
    if name in bodies:
        raise InputError(
            f"{name!r} is defined inside the body of {bodies[name]}; cuts must be tensors "
            "of the main graph, not of If/Loop/Scan bodies",
            source=param,
        )
    if name in {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}:
        raise InputError(
            f"{name!r} is a graph input or a weight of {source}; cut at a tensor the graph "
            "computes",
            source=param,
        )
    close = difflib.get_close_matches(name, sorted(produced), n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    raise InputError(f"no tensor named {name!r} in {source}{hint}", source=param)


def _final_logits(
    model: onnx.ModelProto, heads: Mapping[str, str], logits: str | None, source: Path
) -> str:
    outputs = [o.name for o in model.graph.output]
    if logits is not None:
        _check_cut(model, logits, source, "logits")
        return logits
    rest = [o for o in outputs if o not in set(heads.values())]
    if len(rest) != 1:
        raise InputError(
            f"cannot tell which output is the final logits among {rest} in {source}; name it",
            source="logits",
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


def _dependence(model: onnx.ModelProto, data: set[str], aux: set[str]) -> tuple[set[int], set[int]]:
    """(nodes whose values depend on the `data` inputs, nodes that depend on no input).

    Shape and Size read only a tensor's shape, so they end value dependence: shape
    arithmetic and `aux` inputs (an attention mask) may be recomputed in a later step."""
    valued, touched = set(data), set(data) | set(aux)
    by_value: set[int] = set()
    constant: set[int] = set()
    for i, node in enumerate(model.graph.node):  # nodes are topologically sorted
        reads = graphdeps.node_inputs(node)
        outs = [o for o in node.output if o]
        if any(x in valued for x in reads) and node.op_type not in ("Shape", "Size"):
            by_value.add(i)
            valued.update(outs)
        if any(x in touched for x in reads):
            touched.update(outs)
        else:
            constant.add(i)
    return by_value, constant


def _nbytes(model: onnx.ModelProto, name: str) -> int | None:
    """Bytes of a tensor with a fully static shape, else None."""
    vi = _graph.value_infos(model).get(name)
    if vi is None or not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    if not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
        return None
    return int(np.prod([d.dim_value for d in tt.shape.dim], dtype=np.int64)) * _ITEMSIZE.get(
        tt.elem_type, 8
    )


def _check_order(
    model: onnx.ModelProto,
    producer: Mapping[str, int],
    prev: str,
    first: str,
    model_inputs: Sequence[str],
    param: str,
) -> None:
    """The tensor `first` of a step must be computed from the previous cut `prev`."""
    if producer[prev] in graphdeps.ancestors(model, [first], stop=model_inputs):
        return
    before = graphdeps.ancestors(model, [prev], stop=model_inputs)
    order = "comes before" if producer[first] in before else "does not depend on"
    raise InputError(
        f"{first!r} {order} the previous cut {prev!r}: cuts must be given in "
        "order from input to output, each depending on the one before",
        source=param,
    )


def _check_crossing(
    model: onnx.ModelProto,
    k: int,
    by_value: set[int],
    constants: set[int],
    prev: str | None,
    i: int,
    wanted: list[str],
) -> None:
    """Node `k`, computed before the cut `prev`, is also needed by step `i`: refuse it
    unless it is a small constant that can be copied into the step."""
    node = model.graph.node[k]
    what = f"{node.op_type} node {node.name or node.output[0]!r}"
    if k in by_value:
        raise InputError(
            f"cut {prev!r} does not separate the graph: step {i} ({wanted}) would need "
            f"{what}, which lies before it (a skip connection crosses the cut?)",
            source="cuts",
        )
    if k in constants:
        for o in (o for o in node.output if o):
            size = _nbytes(model, o)
            if size is None or size > MAX_SHARED_BYTES:
                how = "of unknown size" if size is None else f"{size} bytes"
                raise InputError(
                    f"cut {prev!r} does not separate the graph: step {i} needs the "
                    f"constant {o!r} ({what}, {how}) computed before the cut; only "
                    f"constants up to {MAX_SHARED_BYTES} bytes are copied into each "
                    "step",
                    source="cuts",
                )


def _plan(
    model: onnx.ModelProto,
    specs: Sequence[InputSpec],
    cuts: Sequence[str],
    heads: Mapping[str, str],
    logits: str,
    mask: str | None,
    head_masks: Mapping[str, str],
    source: Path,
) -> list[_Plan]:
    """Node sets of every step, checking that each cut separates the graph."""
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output if o}
    model_inputs = [s.name for s in specs]
    data = {n for n in model_inputs if n != mask}
    by_value, constants = _dependence(model, data, {mask} if mask else set())
    plans: list[_Plan] = []
    taken: set[int] = set()
    boundary = list(model_inputs)
    ends = [*cuts, None]
    for i, cut in enumerate(ends):
        wanted = [n for n in (cut, heads.get(cut) if cut else logits) if n]
        param = "cuts" if cut else "logits"
        prev = boundary[-1] if i > 0 else None
        if prev is not None:
            _check_order(model, producer, prev, wanted[0], model_inputs, param)
        nodes = graphdeps.ancestors(model, wanted, stop=boundary)
        for k in sorted(nodes & taken):
            _check_crossing(model, k, by_value, constants, prev, i, wanted)
        if not nodes:
            raise InputError(
                f"step {i} would be an empty graph ({wanted} is {prev!r})",
                source=param,
            )
        reads = {x for k in nodes for x in graphdeps.node_inputs(model.graph.node[k])}
        if cut in head_masks:
            reads.add(head_masks[cut])
        inputs = [prev] if prev is not None else []
        inputs += [n for n in model_inputs if n in reads and n not in inputs]
        plans.append(_Plan(inputs, cut, heads.get(cut) if cut else None, nodes))
        taken |= nodes
        if cut:
            boundary.append(cut)
    _check_shared_initializers(model, plans, cuts, source)
    return plans


def _check_shared_initializers(
    model: onnx.ModelProto, plans: Sequence[_Plan], cuts: Sequence[str], source: Path
) -> None:
    """A weight read on both sides of a cut would be stored twice: allowed when small."""
    sizes = {t.name: t for t in model.graph.initializer}
    first_step: dict[str, int] = {}
    for i, plan in enumerate(plans):
        names = {x for k in plan.nodes for x in graphdeps.node_inputs(model.graph.node[k])}
        for name in sorted(names & sizes.keys()):
            if name in first_step and first_step[name] != i:
                t = sizes[name]
                nbytes = int(np.prod(t.dims, dtype=np.int64)) * _ITEMSIZE.get(t.data_type, 8)
                if nbytes > MAX_SHARED_BYTES:
                    raise InputError(
                        f"the weight {name!r} ({nbytes} bytes) is read by steps "
                        f"{first_step[name]} and {i}: cut {cuts[i - 1]!r} does not separate "
                        f"the graph; only tensors up to {MAX_SHARED_BYTES} bytes are copied "
                        "into each step",
                        source="cuts",
                    )
            first_step.setdefault(name, i)


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


def _run_error(e: Exception, source: Path, what: str, batch: bool = False) -> InputError:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not batch:
        return InputError(f"ONNX Runtime cannot run {what}: {text}", source=source)
    return InputError(
        f"this model cannot run at another batch size: ONNX Runtime fails on {what} at "
        f"batch 2 ({text}); its graph probably fixes the batch, e.g. a Reshape to a "
        "constant shape: export it with a dynamic batch axis",
        source=source,
    )


def _check_batch(
    model: onnx.ModelProto, specs: Sequence[InputSpec], final: str, source: Path
) -> None:
    """The whole model must run at batch 2 and return logits for 2 samples."""
    feeds = _graph.example_feeds(model, specs, batches=(2,))[0]
    try:
        got = _graph.session(model).run([final], feeds)[0]
    except Exception as e:  # onnxruntime raises its own exception types
        raise _run_error(e, source, "the model", batch=True) from None
    if got.shape[:1] != (2,):
        raise InputError(
            f"this model cannot run at another batch size: for a batch of 2 its logits "
            f"{final!r} have shape {list(got.shape)} (the graph fixes the batch size); export "
            "it with a dynamic batch axis",
            source=source,
        )


def _parity(
    reference: onnx.ModelProto,
    steps: list[Step],
    checks: list[list[tuple[str, str | LinearHead]]],
    feeds: list[dict[str, np.ndarray]],
    source: Path,
    rtol: float,
    atol: float,
) -> float:
    """Run the chained steps against the source model; return the worst abs error.

    `checks[i]` pairs each output of step i with the source tensor it must equal, or
    with the trained head whose float64 prediction from the step's activation it must
    equal. The tolerance scales with the compared tensor's magnitude (`_graph.tolerance`).
    """
    ref_names = sorted({t for c in checks for _, t in c if isinstance(t, str)})
    try:
        ref_sess = _graph.session(_graph.with_outputs(reference, ref_names))
        sessions = [_graph.session(s.model) for s in steps]
        outs = []
        for feed in feeds:
            ref = dict(zip(ref_names, ref_sess.run(ref_names, feed), strict=True))
            env = dict(feed)
            for step, sess in zip(steps, sessions, strict=True):
                names = [o.name for o in step.model.graph.output]
                step_feeds = {n.name: env[n.name] for n in sess.get_inputs()}
                env.update(zip(names, sess.run(names, step_feeds), strict=True))
            outs.append((feed, ref, env))
    except Exception as e:  # onnxruntime raises its own exception types
        raise _run_error(e, source, "the model or its steps") from None
    worst = 0.0
    for feed, ref, env in outs:
        batch = len(next(iter(feed.values())))
        for i, step in enumerate(steps):
            for out, want in checks[i]:
                if isinstance(want, LinearHead):
                    assert step.activation is not None
                    mask = feed[want.mask] if want.mask else None
                    feats = features(env[step.activation], want.pool, mask, want.prefix)
                    target = want.predict(feats)
                    label = f"trained head of step {i}"
                else:
                    target, label = ref[want], f"source tensor {want!r}"
                err, ok = _graph.worst_error(env[out], target, rtol, atol)
                if not ok:
                    tol = _graph.tolerance(target, rtol, atol)
                    raise InputError(
                        f"parity check failed: step {i} output {out!r} differs from the {label} "
                        f"(max abs error {err:.3g}, batch {batch}; tolerance {tol:.3g} = "
                        f"max(atol {atol:g}, rtol {rtol:g} x max |value| "
                        f"{float(np.max(np.abs(target))):.3g}); raise parity_rtol/parity_atol "
                        "to accept it)",
                        source=source,
                    )
                worst = max(worst, err)
    return worst


def _mask_input(specs: Sequence[InputSpec], mask: str | None, source: Path) -> str | None:
    """The graph input that masks tokens: `mask`, else the one 2-D integer/bool input
    whose name contains ``mask``."""
    names = {s.name: s for s in specs}
    if mask is not None:
        if mask not in names:
            raise InputError(
                f"{mask!r} is not an input of {source} (inputs: {sorted(names)})",
                source="mask",
            )
        return mask
    found = [
        s.name
        for s in specs
        if "mask" in s.name.lower() and len(s.shape) == 2 and np.dtype(s.dtype).kind != "f"
    ]
    return found[0] if len(found) == 1 else None


def _train_heads(
    model: onnx.ModelProto,
    calib: Calibration,
    cuts: Sequence[str],
    hi: _HeadInputs,
    num_classes: int,
    batch_size: int,
    seed: int,
    source: Path,
    tick: Callable[[str], None],
) -> tuple[dict[str, LinearHead], list[dict[str, np.ndarray]]]:
    """Stream the calibration set through the model in batches, fold each cut's features
    into its head's statistics, fit the heads; also return a first batch of up to 64
    samples for the parity check."""
    pools, masks, prefixes = hi.pools, hi.masks, hi.prefixes
    held = heldout_mask(calib.n, seed)
    fitters = {c: HeadFitter(num_classes, pools[c], held) for c in cuts}
    sess = _graph.session(_graph.with_outputs(model, list(cuts)))
    sample: list[dict[str, np.ndarray]] = []
    for feeds, y in calib.batches(batch_size):
        try:
            acts = sess.run(list(cuts), feeds)
        except Exception as e:  # onnxruntime raises its own exception types
            raise _run_error(e, source, "the model on the calibration set") from None
        for cut, act in zip(cuts, acts, strict=True):
            mask = feeds[masks[cut]] if cut in masks else None
            fitters[cut].add(features(act, pools[cut], mask, prefixes.get(cut, 0)), y)
        if not sample:
            sample.append({k: v[:64] for k, v in feeds.items()})
        tick("calibration forward pass")
    heads = {}
    for cut in cuts:
        head = fitters[cut].fit()
        fields = {"mask": masks.get(cut), "prefix": prefixes.get(cut, 0)}
        heads[cut] = LinearHead(**{**head.__dict__, **fields})
        tick(f"trained head at {cut}")
    return heads, sample


def _check_args(
    cuts: list[str],
    heads: Mapping[str, str],
    pool: str,
    batch_size: int,
    parity_rtol: float,
    parity_atol: float,
) -> None:
    """Refuse bad arguments before the model is read."""
    if not cuts:
        raise InputError("give at least one cut", source="cuts")
    if len(set(cuts)) != len(cuts):
        raise InputError(f"a tensor is repeated: {cuts}", source="cuts")
    if pool not in POOLS:
        raise InputError(f"must be one of {POOLS}, got {pool!r}", source="pool")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"must be a positive integer, got {batch_size!r}", source="batch_size")
    for name, v in (("parity_rtol", parity_rtol), ("parity_atol", parity_atol)):
        if not (isinstance(v, int | float) and np.isfinite(v) and v >= 0):
            raise InputError(f"must be a finite number >= 0, got {v!r}", source=name)
    for cut in heads:
        if cut not in cuts:
            raise InputError(
                f"head given for {cut!r}, which is not one of the cuts", source="heads"
            )


def _check_exits(
    model: onnx.ModelProto,
    cuts: list[str],
    heads: Mapping[str, str],
    logits: str | None,
    source: Path,
) -> tuple[str, int]:
    """Check every cut and own head against the graph; return the final logits and the
    class count every exit must share."""
    for cut in cuts:
        _check_cut(model, cut, source, "cuts")
    for out in heads.values():
        _check_cut(model, out, source, "heads")
    final = _final_logits(model, heads, logits, source)
    if final in cuts:
        raise InputError(f"{final!r} is the final logits; cut before it", source="cuts")
    num_classes = _classes(model, final, source, "the final logits")
    for cut, out in heads.items():
        if _classes(model, out, source, f"head output of {cut!r}") != num_classes:
            raise InputError(
                f"head {out!r} has a different class count than {final!r} in {source}",
                source="heads",
            )
    return final, num_classes


def _cut_tails(model: onnx.ModelProto, cuts: list[str], source: Path) -> dict[str, tuple[int, ...]]:
    """The static per-sample shape of each cut's tensor."""
    infos = _graph.value_infos(model)
    tails = {}
    for cut in cuts:
        tail = _graph.static_tail(infos.get(cut))
        if tail is None:
            raise InputError(
                f"cut {cut!r} has no shape information (or a dynamic axis after the batch "
                f"axis) after shape inference of {source}; cut at a tensor with a known shape",
                source="cuts",
            )
        tails[cut] = tail
    return tails


@dataclass(frozen=True)
class _HeadInputs:
    """What each trained head reads at its cut: pooling, mask input and prefix tokens."""

    mask_name: str | None
    pools: dict[str, str]
    masks: dict[str, str]
    prefixes: dict[str, int]


def _head_inputs(
    specs: Sequence[InputSpec],
    untrained: list[str],
    tails: Mapping[str, tuple[int, ...]],
    pool: str,
    mask: str | None,
    source: Path,
) -> _HeadInputs:
    """Choose each trained head's pooling and, for ``mean`` over tokens, the mask input
    and how many tokens the model prepends to it."""
    mask_name = _mask_input(specs, mask, source)
    integer_input = any(np.dtype(s.dtype).kind != "f" for s in specs)
    pools: dict[str, str] = {}
    masks: dict[str, str] = {}
    prefixes: dict[str, int] = {}
    for cut in untrained:
        tokens = is_token_sequence(tails[cut], len(specs[0].shape), integer_input)
        try:
            pools[cut] = choose_pool(tails[cut], pool, tokens=tokens)
        except ValueError as e:
            raise InputError(f"cut {cut!r}: {e}", source="pool") from None
        if pools[cut] == "mean" and mask_name is not None:
            mask_spec = next(s for s in specs if s.name == mask_name)
            extra_tokens = tails[cut][0] - int(mask_spec.shape[1])
            if len(mask_spec.shape) != 2 or not 0 <= extra_tokens <= 2:
                raise InputError(
                    f"mask input {mask_name!r} has per-sample shape {list(mask_spec.shape[1:])}"
                    f" but cut {cut!r} has {tails[cut][0]} tokens (up to 2 prepended tokens "
                    "such as [CLS] are allowed)",
                    source="mask",
                )
            masks[cut] = mask_name
            prefixes[cut] = extra_tokens
    if pool in TOKEN_POOLS and not untrained:
        raise InputError(f"{pool!r} applies to trained heads; no cut has one", source="pool")
    return _HeadInputs(mask_name, pools, masks, prefixes)


def _no_calibration(untrained: list[str]) -> InputError:
    """The error for cuts that need a trained head when no calibration set is given."""
    return InputError(
        f"cuts {untrained} have no exit head: map each to an existing output (heads) or "
        "give a calibration npz (calibration) to train linear heads",
        source="calibration",
    )


def _ticker(progress: Progress | None, total: int) -> Callable[[str], None]:
    """A callback that counts finished pieces of work and reports them to `progress`."""
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(label, done, total)

    return tick


def _build_steps(
    model: onnx.ModelProto,
    plans: Sequence[_Plan],
    final: str,
    trained: Mapping[str, LinearHead],
    source: Path,
    tick: Callable[[str], None],
) -> tuple[list[Step], list[list[tuple[str, str | LinearHead]]]]:
    """Extract each planned step (attaching its trained head, if any); also return, per
    step, the (step output, source tensor or head) pairs the parity check compares."""
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
    return steps, checks


def _head_records(
    cuts: Sequence[str], heads: Mapping[str, str], trained: Mapping[str, LinearHead]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The manifest's record of each exit head, and the overfitting warnings."""
    head_info: list[dict[str, Any]] = []
    notes: list[str] = []
    for cut in cuts:
        if cut in heads:
            head_info.append({"cut": cut, "kind": "own", "output": heads[cut]})
            continue
        h = trained[cut]
        head_info.append(
            {
                "cut": cut,
                "kind": "trained-linear",
                "pool": h.pool,
                "mask": h.mask,
                "mask_prefix_tokens": h.prefix,
                "features": int(h.weight.shape[0]),
                "train_accuracy": round(h.train_accuracy, 6),
                "heldout_accuracy": round(h.heldout_accuracy, 6),
                "train_samples": h.train_samples,
                "heldout_samples": h.heldout_samples,
                "ridge": h.ridge,
                "temperature": h.temperature,
            }
        )
        msg = overfit_message(h, cut)
        if msg:
            notes.append(msg)
    return head_info, notes


def export_onnx(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    cuts: Sequence[str],
    heads: Mapping[str, str] | None = None,
    logits: str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    pool: str = "auto",
    mask: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    parity_rtol: float = _graph.RTOL,
    parity_atol: float = _graph.ATOL,
    force: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
) -> Bundle:
    """Split the classifier at `model_path` at `cuts` into an early-exit bundle.

    `heads` maps a cut to an existing tensor that is that exit's logits; cuts without
    one get a trained linear head fitted on the `calibration` npz (one array per model
    input, named as the input, or ``x`` for a one-input model; labels ``y``), streamed in
    batches of `batch_size`. `pool` chooses the head's features: ``gap`` (mean over the
    spatial axes of ``[B, C, ...]``), ``flatten``, ``cls`` (token 0 of ``[B, T, H]``),
    ``mean`` (mean over the tokens, over the unmasked ones when the model has a mask
    input: `mask`, default the one integer ``*mask*`` input) or ``auto`` (``mean`` for
    token sequences, else flatten small activations and gap large ones). `logits` names
    the final output (default: the one graph output that is not a head).

    Parity of the chained steps with the source model is checked on random inputs of
    batch 1 and 7 (and calibration samples); the tolerance is ``max(parity_atol,
    parity_rtol * max |value|)`` per compared tensor. Trained heads whose training
    accuracy exceeds their held-out accuracy by more than `heads.OVERFIT_GAP` are
    reported in the manifest's ``extra["warnings"]`` (the CLI prints them).
    """
    source = Path(model_path)
    heads = dict(heads or {})
    cuts = list(cuts)
    _check_args(cuts, heads, pool, batch_size, parity_rtol, parity_atol)
    model = _graph.with_dynamic_batch(_graph.load_source(source), source, single=False)
    specs = _graph.input_specs(model, source)
    final, num_classes = _check_exits(model, cuts, heads, logits, source)
    tails = _cut_tails(model, cuts, source)
    untrained = [c for c in cuts if c not in heads]
    if untrained and calibration is None:
        raise _no_calibration(untrained)
    hi = _head_inputs(specs, untrained, tails, pool, mask, source)
    plans = _plan(model, specs, cuts, heads, final, hi.mask_name, hi.masks, source)
    _check_batch(model, specs, final, source)
    calib = open_calibration(calibration, specs, num_classes) if untrained else None
    n_batches = -(-calib.n // batch_size) if calib is not None else 0
    tick = _ticker(progress, n_batches + len(untrained) + len(plans) + 1)
    trained: dict[str, LinearHead] = {}
    sample: list[dict[str, np.ndarray]] = []
    if calib is not None:
        trained, sample = _train_heads(
            model, calib, untrained, hi, num_classes, batch_size, seed, source, tick
        )
    steps, checks = _build_steps(model, plans, final, trained, source, tick)
    feeds = _graph.example_feeds(model, specs, seed) + sample
    worst = _parity(model, steps, checks, feeds, source, parity_rtol, parity_atol)
    tick("checked parity")
    extra = _manifest_extra(cuts, heads, trained, final, worst, parity_rtol, parity_atol)
    return _write_split(out_dir, source, specs, num_classes, steps, extra, force)


def _manifest_extra(
    cuts: list[str],
    heads: Mapping[str, str],
    trained: Mapping[str, LinearHead],
    final: str,
    worst: float,
    rtol: float,
    atol: float,
) -> dict[str, Any]:
    """The manifest's ``extra``: the cuts, the heads, the parity check and any warnings."""
    head_info, notes = _head_records(cuts, heads, trained)
    extra: dict[str, Any] = {
        "cuts": cuts,
        "logits": final,
        "heads": head_info,
        "parity": {"max_abs_error": worst, "rtol": rtol, "atol": atol},
    }
    if notes:
        extra["warnings"] = notes
    return extra


def _write_split(
    out_dir: str | os.PathLike[str],
    source: Path,
    specs: Sequence[InputSpec],
    num_classes: int,
    steps: Sequence[Step],
    extra: dict[str, Any],
    force: bool,
) -> Bundle:
    """Write the steps as an early-exit bundle that names its source model."""
    return write_bundle(
        out_dir,
        kind="early-exit",
        inputs=specs,
        num_classes=num_classes,
        steps=steps,
        state_names=[f"exit{i}" for i in range(len(steps))],
        producer={
            "exporter": "edgeadapt.exporters.onnx",
            "source": source.name,
            "source_sha256": file_sha256(source),
        },
        extra=extra,
        force=force,
    )
