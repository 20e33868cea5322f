"""Evaluation scaled out: the data cut into shards, each run by a worker, the results
joined in order.

`plan_shards` cuts the samples into contiguous shards of whole batches (one per
worker), so each batch is the one a single process would run and the joined results
are bit-identical to its. A worker gets a `ShardJob`: where the bundle is and its
manifest sha256 (it loads and verifies the bundle, and refuses one whose manifest
differs), the data (`DataSpec`; it opens it itself and streams its rows `start` to
`stop`, so memory holds a batch), the runtime configuration and the batch.

- `run_local`: worker processes on this machine (`edgeadapt.workers.run_processes`:
  at most `workers` at a time, each sending its progress after every batch and then
  its `StateResults`; a shard whose worker dies or fails unexpectedly is run again
  once, and one that fails twice is an error naming its samples).
- `run_ray`: the shards as Ray tasks (`edgeadapt.measure.raywork`).

Data that cannot be cut by sample (a loader script, read from its first sample) is
dealt instead (`deal_local`, `edgeadapt.measure.raywork.deal_ray_batches`): the parent
reads it a batch at a time and deals the batches (`LabelledBatch`) to workers that each
load the bundle once (`DealtSetup`) and return each batch's `StateResults`, joined in
order (`edgeadapt.workers.deal_processes`: a bounded window of batches).

The threads of the runtime are split: each of `workers` workers gets ``threads //
workers`` (at least 1) of the run's threads (unset: the CPUs here), `worker_config`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from edgeadapt.data.sources import DataSpec, open_source
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.presets import (
    MAX_THREADS,
    THREADED_RUNTIMES,
    RuntimeConfig,
)
from edgeadapt.measure.states import StateResults, StateRunner, run_states
from edgeadapt.workers import Done, Job, ShardError, check_workers, deal_processes, run_processes

__all__ = [
    "DealtSetup",
    "Job",
    "LabelledBatch",
    "ShardError",
    "ShardJob",
    "check_workers",
    "deal_local",
    "evaluate_shard",
    "plan_shards",
    "run_local",
    "run_processes",
    "worker_config",
]


@dataclass(frozen=True)
class ShardJob:
    """One shard: samples `start` to `stop` (exclusive) of `data`, evaluated on the
    bundle at `bundle` (a path the worker reads) whose manifest sha256 is `manifest`,
    under `config`, `batch` rows a call."""

    bundle: str
    manifest: str
    data: DataSpec
    config: RuntimeConfig
    batch: int
    start: int
    stop: int

    def describe(self) -> str:
        """``samples 0..99`` (inclusive, for messages)."""
        return f"samples {self.start}..{self.stop - 1}"

    def where(self, done: int) -> str:
        """The whole shard (`describe`): it is run again whole."""
        return self.describe()


def plan_shards(rows: int, batch: int, workers: int) -> list[tuple[int, int]]:
    """(start, stop) of contiguous shards of whole `batch`-row batches covering `rows`
    samples: `workers` shards (fewer when there are fewer batches) of as even a number
    of batches as can be."""
    batches = -(-rows // batch)
    count = min(workers, batches)
    each, extra = divmod(batches, count)
    shards, lo = [], 0
    for i in range(count):
        hi = min(rows, lo + (each + (i < extra)) * batch)
        shards.append((lo, hi))
        lo = hi
    return shards


def worker_config(config: RuntimeConfig, workers: int, cpus: int | None = None) -> RuntimeConfig:
    """`config` with its threads (unset: `cpus`, by default this machine's CPUs) split
    among `workers`, each at least 1; as it is for a runtime without threads (TensorRT)."""
    if config.runtime not in THREADED_RUNTIMES:
        return config
    budget = config.threads or cpus or os.cpu_count() or 1
    return replace(config, threads=min(MAX_THREADS, max(1, budget // workers)))


def load_checked(path: str, manifest: str) -> Bundle:
    """The bundle at `path`, its files verified against its manifest, whose manifest
    sha256 must be `manifest` (the one the run was started on)."""
    bundle = load_bundle(path)
    if bundle.manifest_sha256 != manifest:
        raise InputError(
            f"the bundle changed since the run started: manifest sha256 "
            f"{bundle.manifest_sha256[:12]}..., the run's {manifest[:12]}...",
            source=path,
        )
    return bundle


def evaluate_shard(
    job: ShardJob, bundle: Bundle, progress: Callable[[int], None] | None = None
) -> StateResults:
    """Every state of `bundle` (loaded for `job`) on the job's shard of the data,
    read a batch at a time; `progress(done)` with the rows of the shard done so far."""
    inputs = open_source(job.data, bundle.inputs)
    if inputs.rows is not None and inputs.rows < job.stop:
        raise InputError(
            f"holds {inputs.rows} samples, {job.stop} when the run started: the data changed",
            source=str(job.data),
        )
    batches = inputs.labelled(job.batch, bundle.num_classes, start=job.start, stop=job.stop)

    def tick(done: int) -> None:
        if progress is not None:
            progress(done - job.start)

    return run_states(bundle, batches, job.config, tick)


# ------------------------------------------------------------------ local processes


def _evaluate_job(job: ShardJob, progress: Callable[[int], None]) -> StateResults:
    """A shard's work in its worker: load and check the bundle, evaluate the shard."""
    return evaluate_shard(job, load_checked(job.bundle, job.manifest), progress)


def run_local(
    jobs: Sequence[ShardJob], workers: int, progress: Done | None = None
) -> tuple[list[StateResults], list[str]]:
    """The `StateResults` of each of `jobs`, in order, each run in a worker process of
    its own, at most `workers` at a time (see the module docstring), and a line for
    each shard tried again (its samples and why)."""
    return run_processes(jobs, workers, _evaluate_job, progress)


# ------------------------------------------------------------------ dealt batches


@dataclass(frozen=True)
class DealtSetup:
    """What a dealt worker sets up from: the bundle at `bundle` whose manifest sha256 is
    `manifest` (or, on Ray, its files `shipped` by content), run under `config`."""

    bundle: str
    manifest: str
    config: RuntimeConfig
    shipped: dict[str, bytes] | None = None


@dataclass(frozen=True)
class LabelledBatch:
    """A batch dealt to a worker: its first sample's index, its feeds and labels."""

    first: int
    feeds: dict[str, np.ndarray]
    labels: np.ndarray

    def where(self) -> str:
        """``samples 64..127``, for messages."""
        return f"samples {self.first}..{self.first + len(self.labels) - 1}"


def runner_at(setup: DealtSetup) -> StateRunner:
    """A dealt worker's set-up in a process: the bundle loaded and checked."""
    return StateRunner(load_checked(setup.bundle, setup.manifest), setup.config)


def run_batch(runner: StateRunner, batch: LabelledBatch) -> StateResults:
    """A dealt batch's work: every state on it."""
    return runner.run(dict(batch.feeds), batch.labels)


def dealt_batches(
    batches: Iterable[tuple[int, dict[str, np.ndarray], np.ndarray]],
) -> Iterator[LabelledBatch]:
    """`batches` as the items dealt."""
    for lo, feeds, y in batches:
        yield LabelledBatch(lo, feeds, y)


def joined(parts: Iterable[StateResults], progress: Callable[[int], None] | None) -> StateResults:
    """`parts` as they come, in order, joined; `progress` told the samples done."""
    done: list[StateResults] = []
    for part in parts:
        done.append(part)
        if progress is not None:
            progress(sum(len(p.labels) for p in done))
    return StateResults.join(done)


def deal_local(
    setup: DealtSetup,
    batches: Iterable[tuple[int, dict[str, np.ndarray], np.ndarray]],
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> StateResults:
    """Every state of the bundle of `setup` on `batches` (read here, a batch at a time),
    dealt to `workers` worker processes; the results joined in order."""
    items = dealt_batches(batches)
    parts = deal_processes(setup, items, workers, runner_at, run_batch, LabelledBatch.where)
    return joined(parts, progress)
