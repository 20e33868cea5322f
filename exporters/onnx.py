"""ONNX splitter: any ONNX classifier cut at chosen tensors -> an early-exit bundle.

Step i is the subgraph from cut i-1 (the model inputs for i = 0) to cut i plus exit
head i; the last step ends at the model's logits. A step after the first reads the
previous step's activation plus every model input it still needs (a transformer's
``attention_mask``). What a step needs from before its cut and can compute again (masks,
position ids, shape arithmetic, the shape of an earlier activation, weights read on both
sides) is copied into it; an activation that skips past a cut is refused, naming it, the
node that makes it and the node after the cut that reads it (`exporters._split`).

Each head is either an existing tensor of the graph (the model's own exit output,
``heads={cut: output}``) or a linear head trained on the activations at the cut from a
calibration set, streamed through the model in batches. The source's weights are moved to
an external-data file in a temporary directory first, so the graph in memory, its shape
inference and the step graphs stay small, and the ONNX Runtime sessions (one over the
whole model, then one step at a time) read the weights from there. Shapes come from
onnx's inference, else ONNX Runtime's symbolic inference, else a probe run. Every cut is
checked up front (exists, lies in the main graph, has a static per-sample shape,
separates the graph), and the chained steps must reproduce the original outputs before
anything is written.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeadapt.data.memory import choose_batch, sample_bytes
from edgeadapt.data.sources import DataSpec
from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph, _split
from edgeadapt.exporters._calib import Calibration, open_calibration
from edgeadapt.exporters._calibwork import (
    HeadInputs,
    Scale,
    check_scale,
    forward,
    one_blas_thread,
    run_error,
)
from edgeadapt.exporters.heads import (
    POOLS,
    TOKEN_POOLS,
    HeadFitter,
    LinearHead,
    attach_head,
    channels_last,
    choose_pool,
    features,
    heldout_mask,
    is_token_sequence,
    overfit_message,
)
from edgeadapt.formats.bundle import Bundle, InputSpec, Step, write_bundle
from edgeadapt.formats.digest import file_sha256
from edgeadapt.graph import deps as graphdeps
from edgeadapt.graph.shapes import Dims

#: progress(label, done, total): called as the export advances (for a progress bar).
Progress = Callable[[str, int, int], None]
#: The whole model with every cut an output, in the work folder (calibration workers
#: load it from there).
REFERENCE = "reference.onnx"
#: The external-data file that holds every weight once with ``shared_weights``.
SHARED_WEIGHTS_FILE = "weights.data"


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


def _classes(dims: Mapping[str, Dims], name: str, source: Path, what: str) -> int:
    d = dims.get(name)
    if d is None or len(d) != 2 or not isinstance(d[1], int):
        shown = None if d is None else [str(x) for x in d]
        raise InputError(
            f"{what} {name!r} must have shape [batch, classes] with a static class count, "
            f"got {shown}",
            source=source,
        )
    return d[1]


def _run_error(e: Exception, source: Path, what: str, batch: bool = False) -> InputError:
    if not batch:
        return run_error(e, source, what)
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputError(
        f"this model cannot run at another batch size: ONNX Runtime fails on {what} at "
        f"batch 2 ({text}); its graph probably fixes the batch, e.g. a Reshape to a "
        "constant shape: export it with a dynamic batch axis",
        source=source,
    )


def _check_batch(
    ref: Any, model: onnx.ModelProto, specs: Sequence[InputSpec], final: str, source: Path
) -> None:
    """The whole model (session `ref`) must run at batch 2 and return logits for 2
    samples."""
    feeds = _graph.example_feeds(model, specs, batches=(2,))[0]
    try:
        got = ref.run([final], feeds)[0]
    except Exception as e:  # onnxruntime raises its own exception types
        raise _run_error(e, source, "the model", batch=True) from None
    if got.shape[:1] != (2,):
        raise InputError(
            f"this model cannot run at another batch size: for a batch of 2 its logits "
            f"{final!r} have shape {list(got.shape)} (the graph fixes the batch size); export "
            "it with a dynamic batch axis",
            source=source,
        )


@dataclass
class _Parity:
    """The chained steps checked against the source model on `feeds` as each step is
    built (one step's session at a time): `refs` holds the source's tensors per feed,
    `envs` what the steps have computed so far; `worst` is the largest error seen."""

    feeds: list[dict[str, np.ndarray]]
    refs: list[dict[str, np.ndarray]]
    rtol: float
    atol: float
    source: Path
    envs: list[dict[str, np.ndarray]] = field(default_factory=list)
    worst: float = 0.0

    def check(
        self, i: int, step: Step, sess: Any, checks: list[tuple[str, str | LinearHead]]
    ) -> None:
        """Run step `i` on every feed and compare `checks`: each output of the step with
        the source tensor it must equal, or with the trained head whose float64 prediction
        from the step's activation it must equal (`_graph.tolerance` scales the bound)."""
        if not self.envs:
            self.envs = [dict(f) for f in self.feeds]
        names = [o.name for o in sess.get_outputs()]
        try:
            for env in self.envs:
                feeds = {n.name: env[n.name] for n in sess.get_inputs()}
                env.update(zip(names, sess.run(names, feeds), strict=True))
        except Exception as e:  # onnxruntime raises its own exception types
            raise _run_error(e, self.source, f"step {i}") from None
        for feed, ref, env in zip(self.feeds, self.refs, self.envs, strict=True):
            for out, want in checks:
                if isinstance(want, LinearHead):
                    assert step.activation is not None
                    mask = feed[want.mask] if want.mask else None
                    feats = features(env[step.activation], want.pool, mask, want.prefix)
                    target, label = want.predict(feats), f"trained head of step {i}"
                else:
                    target, label = ref[want], f"source tensor {want!r}"
                self._compare(i, out, env[out], target, label, len(next(iter(feed.values()))))

    def _compare(
        self, i: int, out: str, got: np.ndarray, target: np.ndarray, label: str, batch: int
    ) -> None:
        rtol, atol = self.rtol, self.atol
        err, ok = _graph.worst_error(got, target, rtol, atol)
        if not ok:
            tol = _graph.tolerance(target, rtol, atol)
            raise InputError(
                f"parity check failed: step {i} output {out!r} differs from the {label} "
                f"(max abs error {err:.3g}, batch {batch}; tolerance {tol:.3g} = "
                f"max(atol {atol:g}, rtol {rtol:g} x max |value| "
                f"{float(np.max(np.abs(target))):.3g}); raise parity_rtol/parity_atol "
                "to accept it)",
                source=self.source,
            )
        self.worst = max(self.worst, err)


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
    ref: Any,
    calib: Calibration,
    cuts: Sequence[str],
    hi: HeadInputs,
    num_classes: int,
    opts: _Options,
    src: _Source,
    tick: Callable[[str], None],
) -> tuple[dict[str, LinearHead], list[dict[str, np.ndarray]]]:
    """Stream the calibration set through the model (session `ref`, or workers as
    `opts.scale` says: `exporters._calibwork`) in batches, fold each cut's features into
    its head's statistics in batch order, fit the heads; also return up to 64 samples
    (half a batch at most) of the first batch for the parity check."""
    held = heldout_mask(calib.n, opts.seed)
    fitters = {c: HeadFitter(num_classes, hi.pools[c], held) for c in cuts}
    sample: list[dict[str, np.ndarray]] = []
    at = src.work / REFERENCE
    passes = forward(ref, at, calib, opts.batch_size, cuts, hi, src.path, opts.scale)
    with one_blas_thread():  # in every mode, so that the sums are the same
        for feeds, y, pooled in passes:
            for cut, (feats, mag) in zip(cuts, pooled, strict=True):
                fitters[cut].add(feats, y, mag)
            if not sample:
                # the parity check runs the source and every step (each its own session)
                # on these rows at once: half a batch keeps the two within the memory budget
                rows = min(64, max(1, opts.batch_size // 2))
                sample.append({k: v[:rows] for k, v in feeds.items()})
            tick("calibration forward pass")
    heads = {}
    for cut in cuts:
        head = fitters[cut].fit()
        fields = {"mask": hi.masks.get(cut), "prefix": hi.prefixes.get(cut, 0)}
        heads[cut] = LinearHead(**{**head.__dict__, **fields})
        tick(f"trained head at {cut}")
    return heads, sample


def _check_args(
    cuts: list[str],
    heads: Mapping[str, str],
    pool: str,
    batch_size: int | None,
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
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
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
) -> str:
    """Check every cut and own head against the graph; return the final logits."""
    for cut in cuts:
        _check_cut(model, cut, source, "cuts")
    for out in heads.values():
        _check_cut(model, out, source, "heads")
    final = _final_logits(model, heads, logits, source)
    if final in cuts:
        raise InputError(f"{final!r} is the final logits; cut before it", source="cuts")
    return final


def _class_count(
    dims: Mapping[str, Dims], heads: Mapping[str, str], final: str, source: Path
) -> int:
    """The class count every exit shares: the final logits' and each own head's."""
    num_classes = _classes(dims, final, source, "the final logits")
    for cut, out in heads.items():
        if _classes(dims, out, source, f"head output of {cut!r}") != num_classes:
            raise InputError(
                f"head {out!r} has a different class count than {final!r} in {source}",
                source="heads",
            )
    return num_classes


def _cut_tails(
    dims: Mapping[str, Dims], cuts: list[str], source: Path
) -> dict[str, tuple[int, ...]]:
    """The static per-sample shape of each cut's tensor."""
    tails = {}
    for cut in cuts:
        d = dims.get(cut)
        tail = d[1:] if d else None
        if tail is None or not tail or not all(isinstance(x, int) for x in tail):
            raise InputError(
                f"cut {cut!r} has no shape information (or a dynamic axis after the batch "
                f"axis) after shape inference of {source} (onnx's, ONNX Runtime's symbolic "
                "one, and a probe run); cut at a tensor with a known shape",
                source="cuts",
            )
        tails[cut] = tuple(int(x) for x in tail)
    return tails


def _check_shape_reads(
    g: _split.Graph, plans: Sequence[_split.StepPlan], dims: Mapping[str, Dims], cuts: list[str]
) -> None:
    """Every activation a later step reads the shape of must have a known shape."""
    for p in plans:
        for k, read in p.shape_reads.items():
            if read not in dims:
                raise InputError(
                    f"cut {cuts[p.index - 1]!r}: step {p.index} reads the shape of the "
                    f"activation {read!r} (made by {g.describe(g.producer[read])}) from "
                    f"before the cut in {g.describe(k)}, and that shape is not known after "
                    "shape inference and a probe run; cut elsewhere",
                    source="cuts",
                )


def _head_inputs(
    model: onnx.ModelProto,
    specs: Sequence[InputSpec],
    untrained: list[str],
    tails: Mapping[str, tuple[int, ...]],
    pool: str,
    mask: str | None,
    source: Path,
) -> HeadInputs:
    """Choose each trained head's pooling (``auto`` tells a channels-last activation
    from the ops of `model` that read it: `heads.channels_last`) and, for ``mean`` over
    tokens, the mask input and how many tokens the model prepends to it."""
    mask_name = _mask_input(specs, mask, source)
    integer_input = any(np.dtype(s.dtype).kind != "f" for s in specs)
    pools: dict[str, str] = {}
    masks: dict[str, str] = {}
    prefixes: dict[str, int] = {}
    for cut in untrained:
        tokens = is_token_sequence(tails[cut], len(specs[0].shape), integer_input)
        last = pool == "auto" and not tokens and channels_last(model, cut, len(tails[cut]) + 1)
        try:
            pools[cut] = choose_pool(tails[cut], pool, tokens=tokens, channels_last=last)
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
    return HeadInputs(mask_name, pools, masks, prefixes)


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
    src: _Source,
    plans: Sequence[_split.StepPlan],
    trained: Mapping[str, LinearHead],
    parity: _Parity,
    tick: Callable[[str], None],
) -> list[Step]:
    """Build each planned step (attaching its trained head, if any), check it with the
    ONNX checker and against the source (`parity`), and return the steps with their
    weights loaded from the work directory."""
    g, final, dims, work = src.graph, src.final, src.dims, src.work
    paths: list[Path] = []
    steps: list[Step] = []
    for plan in plans:
        i, cut = plan.index, plan.activation
        checks: list[tuple[str, str | LinearHead]]
        if cut is None:
            model = _split.build_step(g, plan, [final], dims)
            step = Step(model, logits=final)
            checks = [(final, final)]
        elif plan.head is not None:
            model = _split.build_step(g, plan, [cut, plan.head], dims)
            step = Step(model, plan.head, cut, head_input=cut)
            checks = [(cut, cut), (plan.head, plan.head)]
        else:
            stage = _split.build_step(g, plan, [cut], dims)
            model, head_logits = attach_head(stage, cut, trained[cut], f"exit{i}/")
            step = Step(model, head_logits, cut, head_input=cut)
            checks = [(cut, cut), (head_logits, trained[cut])]
        path = work / f"step{i}.onnx"
        path.write_bytes(model.SerializeToString())
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise InputError(
                f"step {i} is not a valid ONNX graph: {e}", source=parity.source
            ) from None
        sess = _graph.session(model, at=path)
        parity.check(i, step, sess, checks)
        del sess
        paths.append(path)
        steps.append(step)
        tick(f"extracted step {i}")
    return [
        Step(onnx.load(str(p)), s.logits, s.activation, s.head_input)
        for p, s in zip(paths, steps, strict=True)
    ]


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
    calibration: str | os.PathLike[str] | DataSpec | None = None,
    pool: str = "auto",
    mask: str | None = None,
    batch_size: int | None = None,
    memory: int | str | None = None,
    parity_rtol: float = _graph.RTOL,
    parity_atol: float = _graph.ATOL,
    shared_weights: bool = False,
    force: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    workers: int | None = None,
    ray: str | None = None,
) -> Bundle:
    """Split the classifier at `model_path` at `cuts` into an early-exit bundle.

    `heads` maps a cut to an existing tensor that is that exit's logits; cuts without
    one get a trained linear head fitted on the `calibration` set (an npz with one array per
    model input, named as the input, or ``x`` for a one-input model, and labels ``y``; or
    any labelled source of `edgeadapt.data.sources.open_source`), streamed in
    batches of `batch_size`, else of as many samples as `memory` holds
    (`edgeadapt.data.memory.choose_batch`; the manifest's ``extra["calibration_batch"]``
    says which). `pool` chooses the head's features: ``gap`` (mean over the
    spatial axes of ``[B, C, ...]``), ``gap_last`` (mean over the spatial axes of a
    channels-last ``[B, ..., C]``), ``flatten``, ``cls`` (token 0 of ``[B, T, H]``),
    ``mean`` (mean over the tokens, over the unmasked ones when the model has a mask
    input: `mask`, default the one integer ``*mask*`` input) or ``auto`` (``mean`` for
    token sequences, else flatten small activations and pool large ones: ``gap_last``
    where the ops reading the cut show it channels-last (`heads.channels_last`), else
    ``gap``). `logits` names the final output (default: the one graph output that is
    not a head).

    What a later step needs from before its cut (masks, position ids, shape arithmetic,
    weights read on both sides) is copied into it; an activation that skips past a cut is
    refused (`exporters._split`). The manifest's ``extra["weights"]`` gives the weight
    bytes and how many of them are copies; `shared_weights` stores each weight once, in
    one external-data file (``weights.data``) that every step reads.

    Parity of the chained steps with the source model is checked on random inputs of
    batch 1 and 7 (and calibration samples); the tolerance is ``max(parity_atol,
    parity_rtol * max |value|)`` per compared tensor. Trained heads whose training
    accuracy exceeds their held-out accuracy by more than `heads.OVERFIT_GAP` are
    reported in the manifest's ``extra["warnings"]`` (the CLI prints them).

    `workers` above 1 runs the calibration forward pass in that many worker processes;
    `ray` (a cluster's address, or ``"local"``: `edgeadapt.raytasks`) on Ray actors
    instead, `workers` of them (default: the cluster's CPUs). The batches are dealt to
    them and their features folded in order, so the bundle is the same, byte for byte
    (`exporters._calibwork`); nothing is written when a batch fails twice.
    """
    source = Path(model_path)
    scale = check_scale(Scale(workers, ray))
    heads = dict(heads or {})
    cuts = list(cuts)
    _check_args(cuts, heads, pool, batch_size, parity_rtol, parity_atol)
    with tempfile.TemporaryDirectory(prefix="edgeadapt-split-") as tmp:
        work = Path(tmp)
        model = _graph.load_external(source, work)
        model = _graph.with_dynamic_batch(model, source, single=False)
        specs = _graph.input_specs(model, source)
        final = _check_exits(model, cuts, heads, logits, source)
        untrained = [c for c in cuts if c not in heads]
        if untrained and calibration is None:
            raise _no_calibration(untrained)
        mask_name = _mask_input(specs, mask, source)
        data = [s.name for s in specs if np.dtype(s.dtype).kind == "f" and s.name != mask_name]
        outs = [*cuts, *heads.values(), final]
        dims = _graph.resolve_dims(model, outs, specs, work)
        num_classes = _class_count(dims, heads, final, source)
        tails = _cut_tails(dims, cuts, source)
        g = _split.Graph(model, data)
        plans = _split.plan(g, cuts, heads, final)
        reads = sorted({r for p in plans for r in p.shape_reads.values()} - set(dims))
        if reads:
            dims = {**dims, **_graph.resolve_dims(model, reads, specs, work)}
        _check_shape_reads(g, plans, dims, cuts)
        hi = _head_inputs(model, specs, untrained, tails, pool, mask_name, source)
        for p in plans:
            if p.activation in hi.masks and hi.masks[p.activation] not in p.inputs:
                p.inputs.append(hi.masks[p.activation])
        src = _Source(source, work, model, g, specs, final, outs, dims)
        size = choose_batch(
            lambda: sample_bytes([model], keep=untrained),
            batch=batch_size,
            memory=memory,
            source="batch_size",
        )
        opts = _Options(calibration, untrained, size.batch, seed, parity_rtol, parity_atol, scale)
        steps, trained, worst = _split_steps(src, plans, hi, num_classes, opts, progress)
        extra = _manifest_extra(cuts, heads, trained, final, worst, parity_rtol, parity_atol)
        if untrained:
            extra["calibration_batch"] = size.to_json()
        total, dup = _split.duplicated_bytes([s.model for s in steps])
        extra["weights"] = {"bytes": total, "duplicated_bytes": dup, "shared_file": shared_weights}
        return _write_split(
            out_dir, source, specs, num_classes, steps, extra, force, shared_weights
        )


@dataclass(frozen=True)
class _Source:
    """The source model as the split reads it: the graph (its weights in `work`), its
    inputs, its final logits, the tensors the steps output and the shapes found."""

    path: Path
    work: Path
    model: onnx.ModelProto
    graph: _split.Graph
    specs: list[InputSpec]
    final: str
    outs: list[str]
    dims: dict[str, Dims]


@dataclass(frozen=True)
class _Options:
    """What the calibration pass and the parity check are run with."""

    calibration: str | os.PathLike[str] | DataSpec | None
    untrained: list[str]
    batch_size: int
    seed: int
    rtol: float
    atol: float
    scale: Scale


def _split_steps(
    src: _Source,
    plans: Sequence[_split.StepPlan],
    hi: HeadInputs,
    num_classes: int,
    opts: _Options,
    progress: Progress | None,
) -> tuple[list[Step], dict[str, LinearHead], float]:
    """One session over the whole model checks the batch axis, streams the calibration
    set for the heads and computes the reference tensors; then the steps are built and
    checked one at a time. Returns the steps, the trained heads and the worst parity
    error."""
    model, specs, source = src.model, src.specs, src.path
    ref = _graph.session(_graph.with_outputs(model, src.outs), at=src.work / REFERENCE)
    _check_batch(ref, model, specs, src.final, source)
    calib = (
        open_calibration(opts.calibration, specs, num_classes)
        if opts.untrained and opts.calibration is not None
        else None
    )
    n_batches = -(-calib.n // opts.batch_size) if calib is not None else 0
    tick = _ticker(progress, n_batches + len(opts.untrained) + len(plans) + 1)
    trained: dict[str, LinearHead] = {}
    sample: list[dict[str, np.ndarray]] = []
    if calib is not None:
        trained, sample = _train_heads(ref, calib, opts.untrained, hi, num_classes, opts, src, tick)
    feeds = _graph.example_feeds(model, specs, opts.seed) + sample
    names = sorted(set(src.outs))
    try:
        refs = [dict(zip(names, ref.run(names, f), strict=True)) for f in feeds]
    except Exception as e:  # onnxruntime raises its own exception types
        raise _run_error(e, source, "the model") from None
    del ref
    parity = _Parity(feeds, refs, opts.rtol, opts.atol, source)
    steps = _build_steps(src, plans, trained, parity, tick)
    tick("checked parity")
    return steps, trained, parity.worst


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
    shared_weights: bool = False,
) -> Bundle:
    """Write the steps as an early-exit bundle that names its source model (with
    `shared_weights`, every weight once in ``weights.data``)."""
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
        shared_weights=SHARED_WEIGHTS_FILE if shared_weights else None,
        force=force,
    )
