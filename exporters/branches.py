"""Branch exporter: one ONNX model -> execution branches that skip residual blocks.

AdaInf's execution branches: the same network with some residual blocks bypassed, each
branch a point of accuracy against cost. A *residual block* is an ``Add`` whose one
input is the block's input ``x`` and whose other is a body computed from ``x``
(``y = x + f(x)``); bypassing it replaces ``y`` by ``x``. A block is skippable only when
``x`` and ``y`` have the same shape (blocks that change shape, such as the first block
of a ResNet layer with its projection shortcut, never are) and the body's tensors feed nothing
but the body and its ``Add``.

`find_blocks` lists the skippable blocks (by the name of their ``Add`` node; users may
name a subset). `export_branches` enumerates skip sets: all ``2^k`` for ``k <= 10``
blocks, else the greedy path (repeatedly drop the block whose removal costs least
calibration accuracy per saved FLOP) plus a seeded random sample. Every candidate branch
is run on the labelled calibration data; the branches on the accuracy/FLOPs Pareto
front (at most `max_branches`, spread along it), and always the unmodified model as the
last, become the states of a bundle of kind ``branches``, each one step (one ONNX file).
Their weights are shared on disk: one ``weights.bin`` holds every large initializer once and each branch references it as
ONNX external data, so a bundle of eight branches costs about one model.

With ``workers`` above 1 the candidates are scored in worker processes
(`edgeadapt.workers.run_processes`): the skip sets of each round (all of them, a
greedy step's trials, the random sample) are dealt among the workers, each of which
loads the source (checked against its sha256) and opens the calibration data itself.
On Ray (`ray`) nothing is read from a path on the cluster: the driver puts the model (as
it loaded it, its external weights inline) and the calibration batches (read once, any
source, a loader script included; memory holds the whole set) in Ray's object store
once, and each worker process fetches both once and checks their sha256 before scoring.
An accuracy is a count of right answers over the samples, so the bundle is the same,
byte for byte, as one process writes.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeadapt.data.memory import BatchChoice, choose_batch, sample_bytes
from edgeadapt.data.sources import DataSpec
from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph
from edgeadapt.exporters._calib import Calibration, open_calibration
from edgeadapt.formats.bundle import Bundle, write_bundle
from edgeadapt.formats.digest import file_sha256
from edgeadapt.graph import deps as graphdeps
from edgeadapt.graph.flops import count_flops
from edgeadapt.raytasks import check_address, ray_cluster, ray_module, run_ray_jobs
from edgeadapt.workers import check_workers, run_processes

#: Up to this many skippable blocks every subset is a candidate branch.
EXHAUSTIVE_BLOCKS = 10
#: Random skip sets tried beside the greedy path when there are more blocks.
SAMPLED_BRANCHES = 64
WEIGHTS_FILE = "weights.bin"


@dataclass(frozen=True)
class Block:
    """A skippable residual block: `add` is the name of its Add node, `input` the tensor
    the block reads (and the bypass forwards), `output` the Add's output, `nodes` the
    indices of the body's nodes in the source graph."""

    add: str
    input: str
    output: str
    nodes: frozenset[int]


@dataclass(frozen=True)
class Branch:
    """One candidate: the blocks it skips, FLOPs per sample, accuracy."""

    skipped: tuple[str, ...]
    flops: int
    accuracy: float


#: ``score(skip sets)``: the branch of each, in order.
Score = Callable[[Sequence[tuple[str, ...]]], list[Branch]]
#: A calibration batch: feeds by input name, labels.
LabelledBatch = tuple[dict[str, np.ndarray], np.ndarray]


def _shape(infos: dict[str, onnx.ValueInfoProto], name: str) -> tuple[int | str, ...] | None:
    vi = infos.get(name)
    if vi is None or not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim)


def find_blocks(model: onnx.ModelProto) -> list[Block]:
    """The skippable residual blocks of a shape-inferred model, in graph order.

    For an ``Add(x, b)`` the body is every node on a path from ``x`` to ``b``; tensors
    the body reads that do not depend on ``x`` (an attention mask, constants) stay when
    the block is bypassed. Unnamed Add nodes are not considered (name them first:
    `name_nodes`)."""
    g = model.graph
    infos = _graph.value_infos(model)
    consumers: dict[str, set[int]] = {}
    for i, node in enumerate(g.node):
        for name in graphdeps.node_inputs(node):
            consumers.setdefault(name, set()).add(i)
    producer = {o: k for k, n in enumerate(g.node) for o in n.output if o}
    outputs = {o.name for o in g.output}
    blocks: list[Block] = []
    taken: set[int] = set()
    for i, node in enumerate(g.node):
        if node.op_type != "Add" or len(node.input) != 2 or not node.name:
            continue
        for skip, body_out in (tuple(node.input), tuple(node.input)[::-1]):
            body = graphdeps.ancestors(model, [body_out], stop=[skip])
            body &= _descendants(model, skip, consumers)
            if producer.get(body_out) not in body:
                continue  # b does not depend on x: not a residual of x
            internal = {o for k in body for o in g.node[k].output if o}
            leaks = any(o in outputs or consumers.get(o, set()) - body - {i} for o in internal)
            shape = _shape(infos, skip)
            if leaks or shape is None or shape != _shape(infos, node.output[0]) or body & taken:
                continue
            blocks.append(Block(node.name, skip, node.output[0], frozenset(body)))
            taken |= body | {i}
            break
    return blocks


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a name, ``<op>_<index>``, so blocks can be named."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _descendants(model: onnx.ModelProto, name: str, consumers: dict[str, set[int]]) -> set[int]:
    seen: set[int] = set()
    stack = list(consumers.get(name, ()))
    while stack:
        k = stack.pop()
        if k in seen:
            continue
        seen.add(k)
        for o in model.graph.node[k].output:
            stack.extend(consumers.get(o, ()))
    return seen


def skip_blocks(model: onnx.ModelProto, blocks: Sequence[Block]) -> onnx.ModelProto:
    """A copy of `model` with each block's output replaced by its input, the dead body
    pruned (onnx's Extractor keeps only what the outputs still need)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rename = {b.output: b.input for b in blocks}
    for node in out.graph.node:
        for k, x in enumerate(node.input):
            while x in rename:
                x = rename[x]
            node.input[k] = x
    graph_outputs = [o.name for o in out.graph.output]
    if any(o in rename for o in graph_outputs):
        raise InputError("a residual block that produces a model output cannot be skipped")
    inputs = [i.name for i in _graph.graph_inputs(out)]
    del out.graph.value_info[:]
    pruned = onnx.utils.Extractor(out).extract_model(inputs, graph_outputs)
    pruned.graph.name = model.graph.name
    return pruned


def _accuracy(
    model: onnx.ModelProto, batches: Callable[[], Iterable[LabelledBatch]], n: int
) -> float:
    """The share of the `n` calibration samples (``batches()``) `model` classifies right."""
    sess = _graph.session(model)
    outputs = [model.graph.output[0].name]
    right = 0
    for feeds, y in batches():
        right += int(np.sum(np.argmax(sess.run(outputs, feeds)[0], axis=1) == y))
    return right / n


def _skip_sets(blocks: Sequence[Block], score: Score, seed: int) -> tuple[list[Branch], str]:
    """Every skip set for few blocks; else the greedy path and a seeded sample. Each
    call of `score` is a round of independent candidates."""
    names = [b.add for b in blocks]
    if len(names) <= EXHAUSTIVE_BLOCKS:
        sets = [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
        return score(sets), f"all {len(sets)} subsets of {len(names)} blocks"
    seen: dict[tuple[str, ...], Branch] = {(): score([()])[0]}
    current: tuple[str, ...] = ()
    while len(current) < len(names):
        # each step's trials skip one block more than any earlier: none was seen
        keys = [tuple(sorted((*current, n))) for n in names if n not in current]
        trials = score(keys)
        seen.update(zip(keys, trials, strict=True))
        base = seen[current]

        def price(b: Branch, base: Branch = base) -> float:
            saved = max(base.flops - b.flops, 1)
            return (base.accuracy - b.accuracy) / saved

        current = min(trials, key=price).skipped
    rng = np.random.default_rng(seed)
    picks: dict[tuple[str, ...], None] = {}
    for _ in range(SAMPLED_BRANCHES):
        pick = tuple(sorted(n for n in names if rng.random() < 0.5))
        if pick not in seen:
            picks[pick] = None
    seen.update(zip(picks, score(list(picks)), strict=True))
    return list(seen.values()), (
        f"the greedy path and {SAMPLED_BRANCHES} seeded random subsets of {len(names)} blocks "
        f"({len(seen)} distinct branches)"
    )


def pareto(branches: Sequence[Branch], max_branches: int) -> list[Branch]:
    """Branches no other is both cheaper (or as cheap) and more accurate than, cheapest
    first; at most `max_branches`, spread evenly along the front (its ends kept)."""
    front: list[Branch] = []
    for b in sorted(branches, key=lambda b: (b.flops, -b.accuracy)):
        if not front or b.accuracy > front[-1].accuracy:
            front.append(b)
    if len(front) > max_branches:
        keep = np.unique(np.round(np.linspace(0, len(front) - 1, max_branches)).astype(int))
        front = [front[k] for k in keep]
    return front


def _chosen_blocks(
    model: onnx.ModelProto, blocks: Sequence[str] | None, path: Path | str
) -> list[Block]:
    """The residual blocks a branch may skip: those named in `blocks` (each checked to be
    a skippable block), or every skippable one."""
    found = find_blocks(model)
    if blocks is not None:
        by_name = {b.add: b for b in found}
        adds = {n.name for n in model.graph.node if n.op_type == "Add"}
        for name in blocks:
            if name not in by_name:
                why = (
                    "is an Add but not a skippable residual block (its body leaks, or it "
                    "changes shape)"
                    if name in adds
                    else f"is not an Add node of {path}"
                )
                raise InputError(f"{name!r} {why}", source="blocks")
        found = [by_name[n] for n in dict.fromkeys(blocks)]
    if not found:
        raise InputError(
            "found no skippable residual block (an Add of a tensor and a body computed "
            "from it, with matching shapes)",
            source=path,
        )
    return found


def _branch_model(
    model: onnx.ModelProto, found: Sequence[Block], skipped: Sequence[str], path: Path | str
) -> onnx.ModelProto:
    """`model` with the blocks named in `skipped` bypassed, shapes inferred."""
    by_add = {b.add: b for b in found}
    return _graph.infer(skip_blocks(model, [by_add[n] for n in skipped]), path)


def _scorer(
    model: onnx.ModelProto,
    found: Sequence[Block],
    batches: Callable[[], Iterable[LabelledBatch]],
    n: int,
    path: Path | str,
    progress: Callable[[int], None] | None,
) -> Score:
    """A function that builds the branch of each skip set given and scores its FLOPs
    and accuracy on the `n` calibration samples of ``batches()``, telling `progress`
    the count of candidates scored so far."""
    done = 0

    def score(sets: Sequence[tuple[str, ...]]) -> list[Branch]:
        nonlocal done
        branches = []
        for skipped in sets:
            branch_model = _branch_model(model, found, skipped, path)
            branches.append(
                Branch(
                    skipped=skipped,
                    flops=count_flops(branch_model).flops,
                    accuracy=_accuracy(branch_model, batches, n),
                )
            )
            done += 1
            if progress is not None:
                progress(done)
        return branches

    return score


@dataclass(frozen=True)
class _Shipped:
    """The inputs of the candidates on Ray, each put in the object store once: the
    prepared source serialized (`model`, its sha256 `model_sha256`) and the calibration
    batches (`data`, their digest `data_sha256`, `_batches_sha256`)."""

    model: Any
    model_sha256: str
    data: Any
    data_sha256: str


@dataclass(frozen=True)
class _ScoreJob:
    """Skip sets scored in a worker: the source at `source` (its sha256 must be
    `sha256`), its blocks `blocks`, the calibration set `calibration` (`samples`
    samples, `classes` classes), `batch` samples a call; with `shipped` (Ray) the
    model and the batches come from the object store instead, `source` and
    `calibration` only name them in messages."""

    source: str
    sha256: str
    blocks: tuple[str, ...]
    calibration: DataSpec
    samples: int
    classes: int
    batch: int
    sets: tuple[tuple[str, ...], ...]
    shipped: _Shipped | None = None

    def where(self, done: int) -> str:
        """The skip set being scored after `done` were."""
        return f"scoring the branch that skips {list(self.sets[min(done, len(self.sets) - 1)])}"


def _prepared(path: Path) -> onnx.ModelProto:
    """The source model as it is scored: a dynamic batch axis, every node named."""
    model = _graph.with_dynamic_batch(_graph.load_source(path), path)
    name_nodes(model)
    return model


def _batches_sha256(batches: Sequence[LabelledBatch]) -> str:
    """The sha256 over every array of `batches` in order (input names, dtypes, shapes
    and bytes), as the driver ships them and a worker checks them."""
    h = hashlib.sha256()
    for feeds, y in batches:
        for name, a in [*sorted(feeds.items()), ("", y)]:
            h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
            h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


#: The shipped inputs a Ray worker process has fetched and checked, by their sha256s:
#: (model, its blocks, the calibration batches); one export's at a time.
_LOADED: dict[tuple[str, str], tuple[onnx.ModelProto, list[Block], list[LabelledBatch]]] = {}


def _unshipped(
    job: _ScoreJob, shipped: _Shipped
) -> tuple[onnx.ModelProto, list[Block], list[LabelledBatch]]:
    """The model, its blocks and the batches `shipped` holds: fetched from Ray's object
    store and checked against their sha256 once per worker process."""
    key = (shipped.model_sha256, shipped.data_sha256)
    if key not in _LOADED:
        ray = ray_module()
        blob = ray.get(shipped.model)
        if hashlib.sha256(blob).hexdigest() != shipped.model_sha256:
            raise InputError(
                "the model shipped to a Ray worker is not the export's (sha256 differs)",
                source=job.source,
            )
        batches = ray.get(shipped.data)
        if _batches_sha256(batches) != shipped.data_sha256:
            raise InputError(
                "the calibration batches shipped to a Ray worker are not the export's "
                "(sha256 differs)",
                source=str(job.calibration),
            )
        model = onnx.load_from_string(blob)
        _LOADED.clear()
        _LOADED[key] = (model, _chosen_blocks(model, job.blocks, job.source), batches)
    return _LOADED[key]


def _score_job(job: _ScoreJob, progress: Callable[[int], None]) -> list[Branch]:
    """A `_ScoreJob`'s work in its worker process or Ray task."""
    if job.shipped is not None:
        model, found, held = _unshipped(job, job.shipped)
        score = _scorer(model, found, lambda: held, job.samples, job.source, progress)
        return score(job.sets)
    path = Path(job.source)
    if file_sha256(path) != job.sha256:
        raise InputError("the model changed since the export started", source=path)
    model = _prepared(path)
    found = _chosen_blocks(model, job.blocks, path)
    calib = open_calibration(job.calibration, [_graph.input_spec(model, path)], job.classes)
    if calib.n != job.samples:
        raise InputError(
            f"holds {calib.n} samples, {job.samples} when the export started: the data changed",
            source=str(job.calibration),
        )
    score = _scorer(model, found, lambda: calib.batches(job.batch), calib.n, path, progress)
    return score(job.sets)


def _ship(model: onnx.ModelProto, calib: Calibration, batch: int) -> _Shipped:
    """`model` and the calibration batches (read once, `batch` samples each, as one
    process reads them) put in the object store of the Ray cluster connected to."""
    ray = ray_module()
    blob = model.SerializeToString()
    batches = list(calib.batches(batch))
    return _Shipped(
        ray.put(blob),
        hashlib.sha256(blob).hexdigest(),
        ray.put(batches),
        _batches_sha256(batches),
    )


def _pooled(
    base: _ScoreJob, workers: int, progress: Callable[[int], None] | None, ray: bool = False
) -> Score:
    """A `Score` that deals each round's skip sets in turn among `workers` processes
    (a process each; cheap and dear candidates spread alike), or Ray tasks with `ray`,
    and joins them in order."""
    done = 0

    def score(sets: Sequence[tuple[str, ...]]) -> list[Branch]:
        nonlocal done
        count = min(workers, len(sets))
        jobs = [replace(base, sets=tuple(sets[i::count])) for i in range(count)]
        start = done

        def tick(now: int) -> None:
            if progress is not None:
                progress(start + now)

        if ray:
            finished: list[int] = []

            def ended(i: int) -> None:
                finished.append(len(jobs[i].sets))
                tick(sum(finished))

            parts = run_ray_jobs(jobs, _score_job, ended)
        else:
            parts, _ = run_processes(jobs, count, _score_job, tick)
        branches: list[Branch] = [parts[i % count][i // count] for i in range(len(sets))]
        done += len(sets)
        return branches

    return score


def export_branches(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    calibration: str | os.PathLike[str] | DataSpec,
    blocks: Sequence[str] | None = None,
    max_branches: int = 8,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    batch: int | None = None,
    memory: int | str | None = None,
    workers: int | None = None,
    ray: str | None = None,
) -> Bundle:
    """Write the Pareto-optimal execution branches of the ONNX classifier `source`.

    `calibration` is an npz with ``x`` (inputs; or the array named as the model's input)
    and ``y`` (labels), or any labelled source of `edgeadapt.data.sources.open_source`,
    that every candidate branch is scored on, streamed `batch` samples
    at a time, else as many as `memory` holds (`edgeadapt.data.memory.choose_batch`; the
    manifest's ``extra["branches"]["batch"]`` says which); `blocks` names the Add nodes
    of the residual blocks that may be skipped (default: every skippable one).
    `progress(done, total)` is called as candidate branches are scored. `workers`
    above 1 scores them in that many worker processes, each reading the model and the
    data from their paths (not a loader script); `ray` (a cluster's address, or
    ``"local"``: `edgeadapt.raytasks`) as that many Ray tasks instead (default: the
    cluster's CPUs), the model and the calibration batches shipped by content (read
    once here, any source; memory holds the whole set). The bundle is the same, byte
    for byte.
    """
    path = Path(source)
    if isinstance(max_branches, bool) or not isinstance(max_branches, int) or max_branches < 2:
        raise InputError(f"must be an integer >= 2, got {max_branches!r}", source="max_branches")
    if workers is not None:
        check_workers(workers)
    if ray is not None:
        check_address(ray)
    sha256 = file_sha256(path)
    model = _prepared(path)
    spec = _graph.input_spec(model, path)
    if len(model.graph.output) != 1:
        raise InputError("the model must have one output (its logits)", source=path)
    tail = _graph.static_tail(model.graph.output[0])
    if tail is None or len(tail) != 1:
        raise InputError(f"the output must be [batch, classes], got {tail}", source=path)
    found = _chosen_blocks(model, blocks, path)
    calib = open_calibration(calibration, [spec], tail[0])
    size = choose_batch(lambda: sample_bytes([model]), batch=batch, memory=memory)
    total = 2 ** len(found) if len(found) <= EXHAUSTIVE_BLOCKS else None

    def tick(done: int) -> None:
        if progress is not None:
            progress(done, total or done)

    if ray is None and workers in (None, 1):
        score = _scorer(model, found, lambda: calib.batches(size.batch), calib.n, path, tick)
        candidates, enumeration = _skip_sets(found, score, seed)
    else:
        if ray is None and not calib.inputs.shardable:
            raise InputError(
                "workers each read the calibration set from its path; a loader script "
                "cannot be: score it with one worker or on Ray (--ray, which ships the "
                "batches), or save its samples as an .npz",
                source="workers",
            )
        job = _ScoreJob(
            str(path.resolve()),
            sha256,
            tuple(b.add for b in found),
            DataSpec.absolute(calibration),
            calib.n,
            tail[0],
            size.batch,
            (),
        )
        with ray_cluster(ray, workers) if ray is not None else nullcontext(workers) as count:
            if ray is not None:
                job = replace(job, shipped=_ship(model, calib, size.batch))
            score = _pooled(job, workers or count, tick, ray=ray is not None)
            candidates, enumeration = _skip_sets(found, score, seed)
    full = next(b for b in candidates if not b.skipped)
    front = pareto(candidates, max_branches)
    if front[-1] is not full:  # keep the unmodified model as the last state, always
        front = [*front[: max_branches - 1], full]
    order = {b.add: k for k, b in enumerate(found)}
    names = [_branch_name(b, order) for b in front]
    return write_bundle(
        out_dir,
        kind="branches",
        input=spec,
        num_classes=tail[0],
        models=[_branch_model(model, found, b.skipped, path) for b in front],
        state_names=names,
        shared_weights=WEIGHTS_FILE,
        producer={
            "exporter": "edgeadapt.exporters.branches",
            "source": path.name,
            "source_sha256": sha256,
        },
        extra={"branches": _record(found, enumeration, len(candidates), calib.n, size, front)},
        force=force,
    )


def _record(
    found: Sequence[Block],
    enumeration: str,
    candidates: int,
    samples: int,
    size: BatchChoice,
    front: Sequence[Branch],
) -> dict[str, Any]:
    """The manifest's ``extra.branches``: the blocks, how the skip sets were enumerated
    and scored (on how many samples, in what batches), and each kept branch."""
    return {
        "blocks": [b.add for b in found],
        "enumeration": enumeration,
        "candidates": candidates,
        "calibration_samples": samples,
        "batch": size.to_json(),
        "states": [{"skipped": list(b.skipped), "calibration_accuracy": b.accuracy} for b in front],
    }


def _branch_name(branch: Branch, order: dict[str, int]) -> str:
    """``full``, or ``skip-2-5``: the 1-based indices of the skipped blocks."""
    if not branch.skipped:
        return "full"
    return "skip-" + "-".join(str(order[n] + 1) for n in sorted(branch.skipped, key=order.get))
