"""The calibration forward pass of `export onnx`, in one process or scaled out
(``--workers N`` processes, ``--ray [ADDRESS]`` actors), the heads bit-identical.

The heads are fitted from float64 sums over the calibration batches, and float
addition depends on its order: sums made per shard and added afterwards differ from one
process's in the last bits. So the workers add nothing up. The parent reads the
calibration set a batch at a time as one process does (any source, a loader script
included) and deals the batches to the workers (`edgeadapt.workers.deal_processes`,
`edgeadapt.raytasks.deal_ray`); each worker loads the model once and returns, per batch
and cut, the pooled features and their magnitudes (`pooled`, the very function one
process calls); the parent folds them into the heads' statistics in batch order. Every
sum, the held-out split and the parity batch are then those of one process, by
construction.

What is held at a time is bounded by the dealing window (4 batches a worker): the
batches dealt and not yet folded, and each one's features (``batch x features x 16``
bytes a cut).

Numpy's BLAS runs with one thread throughout the pass (`one_blas_thread`, in the parent
and in every worker): a worker is one core's job, and the parent's folds (a small
``X^T X`` a batch) with the default thread pool leave its threads spinning on the cores
the workers need (2 workers ran 1.12x one process here before, 1.59x with one BLAS thread).
One process does the same, so the sums are the same in every mode.

The model a worker loads is the parent's prepared reference graph (every cut an output,
the weights in its external-data file): from the parent's work folder for processes,
shipped by content to Ray; each file's sha256 is checked before the session is made.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph
from edgeadapt.exporters._calib import Calibration
from edgeadapt.exporters.heads import features, magnitudes
from edgeadapt.formats.digest import file_sha256
from edgeadapt.raytasks import check_address, deal_ray, ray_cluster, write_files
from edgeadapt.workers import check_workers, deal_processes

__all__ = [
    "Batch",
    "HeadInputs",
    "Scale",
    "Setup",
    "check_scale",
    "forward",
    "one_blas_thread",
    "pooled",
]

#: Per batch and cut: (features [b, d], magnitudes [b, d]), float64.
Pooled = list[tuple[np.ndarray, np.ndarray]]
Feeds = dict[str, np.ndarray]


def one_blas_thread() -> threadpool_limits:
    """numpy's BLAS at one thread until the context exits (module docstring)."""
    return threadpool_limits(limits=1, user_api="blas")


@dataclass(frozen=True)
class HeadInputs:
    """What each trained head reads at its cut: pooling, mask input and prefix tokens."""

    mask_name: str | None
    pools: dict[str, str]
    masks: dict[str, str]
    prefixes: dict[str, int]


def run_error(e: Exception, source: Path | str, what: str) -> InputError:
    """ONNX Runtime's failure to run `what`, named with the source model."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputError(f"ONNX Runtime cannot run {what}: {text}", source=source)


def pooled(
    sess: Any, feeds: Feeds, cuts: Sequence[str], hi: HeadInputs, source: Path | str
) -> Pooled:
    """The model (session `sess`, every cut an output) on one batch: each cut's pooled
    features and magnitudes, as the heads' fit takes them."""
    try:
        acts = sess.run(list(cuts), feeds)
    except Exception as e:  # onnxruntime raises its own exception types
        raise run_error(e, source, "the model on the calibration set") from None
    out = []
    for cut, act in zip(cuts, acts, strict=True):
        mask = feeds[hi.masks[cut]] if cut in hi.masks else None
        args = (act, hi.pools[cut], mask, hi.prefixes.get(cut, 0))
        out.append((features(*args), magnitudes(*args)))
    return out


@dataclass(frozen=True)
class Setup:
    """What a worker sets up from: the reference graph `model` among `files` (name ->
    sha256) in `folder` (processes) or `shipped` by content (Ray), the cuts and how
    their heads pool; `source` names the user's model in messages."""

    source: str
    folder: str
    files: dict[str, str]
    model: str
    cuts: tuple[str, ...]
    heads: HeadInputs
    shipped: dict[str, bytes] | None = None


@dataclass(frozen=True)
class Batch:
    """A calibration batch dealt to a worker: its first sample's index and its feeds."""

    first: int
    feeds: Feeds

    def where(self) -> str:
        """``calibration samples 64..127``, for messages."""
        rows = len(next(iter(self.feeds.values())))
        return f"calibration samples {self.first}..{self.first + rows - 1}"


@dataclass(frozen=True)
class _Worker:
    sess: Any
    setup: Setup


def _init(setup: Setup) -> _Worker:
    """A worker's set-up: the model's files checked against their sha256, its session;
    numpy's BLAS at one thread for the worker's life (module docstring)."""
    one_blas_thread()
    folder = Path(setup.folder)
    if setup.shipped is not None:
        folder = write_files(setup.shipped, "edgeadapt-calibration-")
    for name, sha256 in setup.files.items():
        if file_sha256(folder / name) != sha256:
            raise InputError(
                "the model a calibration worker loads is not the export's (sha256 differs)",
                source=setup.source,
            )
    try:
        sess = _graph.open_session(str(folder / setup.model))
    except Exception as e:  # onnxruntime raises its own exception types
        raise run_error(e, setup.source, "the model in a calibration worker") from None
    return _Worker(sess, setup)


def _work(worker: _Worker, batch: Batch) -> Pooled:
    setup = worker.setup
    return pooled(worker.sess, batch.feeds, setup.cuts, setup.heads, setup.source)


@dataclass(frozen=True)
class Scale:
    """How the forward pass runs: `workers` processes, or with `ray` (an address, or
    ``local``) that many Ray actors (None: the cluster's CPUs)."""

    workers: int | None = None
    ray: str | None = None

    @property
    def single(self) -> bool:
        return self.ray is None and self.workers in (None, 1)


def forward(
    sess: Any,
    at: Path,
    calib: Calibration,
    batch: int,
    cuts: Sequence[str],
    hi: HeadInputs,
    source: Path,
    scale: Scale,
) -> Iterator[tuple[Feeds, np.ndarray, Pooled]]:
    """(feeds, labels, each cut's pooled features) for each calibration batch in order:
    from `sess` (the reference graph saved at `at`, its weights beside it) here, or from
    workers (see the module docstring)."""
    if scale.single:
        for feeds, y in calib.batches(batch):
            yield feeds, y, pooled(sess, feeds, cuts, hi, source)
        return
    files = [p.name for p in (at, at.parent / _graph.WEIGHTS_FILE) if p.is_file()]
    setup = Setup(
        str(source),
        str(at.parent),
        {name: file_sha256(at.parent / name) for name in files},
        at.name,
        tuple(cuts),
        hi,
    )
    pending: deque[tuple[Feeds, np.ndarray]] = deque()

    def items() -> Iterator[Batch]:
        first = 0
        for feeds, y in calib.batches(batch):
            pending.append((feeds, y))
            yield Batch(first, feeds)
            first += len(y)

    for result in _dealt(setup, items(), scale):
        feeds, y = pending.popleft()
        yield feeds, y, result


def _dealt(setup: Setup, items: Iterator[Batch], scale: Scale) -> Iterator[Pooled]:
    if scale.ray is None:
        assert scale.workers is not None
        yield from deal_processes(setup, items, scale.workers, _init, _work, Batch.where)
        return
    shipped = {name: (Path(setup.folder) / name).read_bytes() for name in setup.files}
    with ray_cluster(scale.ray, scale.workers) as cpus:
        count = scale.workers or cpus
        ship = replace(setup, folder="", shipped=shipped)
        yield from deal_ray(ship, items, count, _init, _work, Batch.where)


def check_scale(scale: Scale) -> Scale:
    """`scale` with its worker count and Ray address checked."""
    if scale.workers is not None:
        check_workers(scale.workers)
    if scale.ray is not None:
        check_address(scale.ray)
    return scale
