"""Evaluation scaled out: the data cut into shards, each run by a worker, the results
joined in order.

`plan_shards` cuts the samples into contiguous shards of whole batches (one per
worker), so each batch is the one a single process would run and the joined results
are bit-identical to its. A worker gets a `ShardJob`: where the bundle is and its
manifest sha256 (it loads and verifies the bundle, and refuses one whose manifest
differs), the data (`DataSpec`; it opens it itself and streams its rows `start` to
`stop`, so memory holds a batch), the runtime configuration and the batch.

- `run_local`: worker processes on this machine (``spawn``), at most `workers` at a
  time, each sending its progress after every batch and then its `StateResults`. A
  worker that dies (killed, out of memory) or fails with an unexpected error is
  started again once on its shard; a shard that fails twice is an error naming its
  samples. An edgeadapt error (bad data: it names the file and sample) is raised as
  it is. Workers still running when the run fails are killed. `run_processes` is the
  same for any `Job` and work function (`edgeadapt.exporters.branches` scores skip
  sets in it).
- `run_ray`: the shards as Ray tasks (`edgeadapt.measure.raywork`).

The threads of the runtime are split: each of `workers` workers gets ``threads //
workers`` (at least 1) of the run's threads (unset: the CPUs here), `worker_config`.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edgeadapt.data.sources import DataSpec, open_source
from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.presets import (
    MAX_THREADS,
    MAX_WORKERS,
    THREADED_RUNTIMES,
    RuntimeConfig,
)
from edgeadapt.measure.states import StateResults, run_states

__all__ = [
    "Job",
    "ShardError",
    "ShardJob",
    "check_workers",
    "evaluate_shard",
    "plan_shards",
    "run_local",
    "run_processes",
    "worker_config",
]

#: Times a shard is run before its failure is the run's (the first try and one retry).
TRIES = 2

#: ``progress(done)``: samples done so far over every shard.
Done = Callable[[int], None]


class ShardError(EdgeadaptError):
    """A shard of the data (a `Job`) failed on every try (its worker died, or raised)."""


class Job(Protocol):
    """What a worker process runs: picklable, and named for messages."""

    def where(self, done: int) -> str:
        """The part of the job at work after `done` units of progress (``samples
        0..99``), for messages."""
        ...


J = TypeVar("J", bound=Job)
R = TypeVar("R")


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


def check_workers(workers: Any) -> int:
    """`workers` as an int in ``1..MAX_WORKERS``; else an error naming ``workers``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise InputError(
            f"must be an integer in 1..{MAX_WORKERS}, got {workers!r}", source="workers"
        )
    return workers


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


def _portable(e: EdgeadaptError) -> EdgeadaptError:
    """`e` if it survives pickling (to cross to the parent), else its message."""
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        return EdgeadaptError(str(e))
    return e


def _evaluate_job(job: ShardJob, progress: Callable[[int], None]) -> StateResults:
    """A shard's work in its worker: load and check the bundle, evaluate the shard."""
    return evaluate_shard(job, load_checked(job.bundle, job.manifest), progress)


def _process_main(work: Callable[[J, Callable[[int], None]], R], job: J, conn: Connection) -> None:
    """A worker process: run `work` on `job`, sending ``("progress", done)`` as it
    reports it, then ``("done", result)``, ``("error", EdgeadaptError)`` or
    ``("failed", traceback)``."""
    try:
        result = work(job, lambda done: conn.send(("progress", done)))
        conn.send(("done", result))
    except EdgeadaptError as e:
        conn.send(("error", _portable(e)))
    except Exception:  # anything else may pass: the shard is tried again
        conn.send(("failed", traceback.format_exc(limit=-3).strip()))
    finally:
        conn.close()


@dataclass
class _Running:
    index: int
    job: Any  # a Job
    process: Any  # multiprocessing's SpawnProcess
    result: Any = None  # the job's result, None until it comes
    failure: str | None = None


#: The folder this `edgeadapt` was imported from.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@contextmanager
def _this_package_first() -> Iterator[None]:
    """Spawned workers take the parent's ``sys.path`` (a ``''`` as the parent's start
    folder): with this package's folder first they import the package the parent runs,
    never another ``edgeadapt/`` a folder on the path holds (a source checkout)."""
    saved = sys.path[:]
    sys.path.insert(0, _PACKAGE_ROOT)
    try:
        yield
    finally:
        sys.path[:] = saved


def run_local(
    jobs: Sequence[ShardJob], workers: int, progress: Done | None = None
) -> tuple[list[StateResults], list[str]]:
    """The `StateResults` of each of `jobs`, in order, each run in a worker process of
    its own, at most `workers` at a time (see the module docstring), and a line for
    each shard tried again (its samples and why)."""
    return run_processes(jobs, workers, _evaluate_job, progress)


def run_processes(
    jobs: Sequence[J],
    workers: int,
    work: Callable[[J, Callable[[int], None]], R],
    progress: Done | None = None,
) -> tuple[list[R], list[str]]:
    """``work(job, progress)`` for each of `jobs`, in order, each in a worker process
    of its own (`work` a module-level function, so the process can import it), at most
    `workers` at a time, `progress` told the sum of what the jobs report; and a line for
    each job tried again (`Job.where` and why). A job that fails twice is a
    `ShardError` naming `Job.where`, an `EdgeadaptError` in a worker raised as it is."""
    ctx = multiprocessing.get_context("spawn")
    waiting = deque(range(len(jobs)))
    tries = [0] * len(jobs)
    done = [0] * len(jobs)
    results: list[R | None] = [None] * len(jobs)
    running: dict[Connection, _Running] = {}
    retried: list[str] = []

    def start(i: int) -> None:
        parent, child = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_process_main, args=(work, jobs[i], child), daemon=True)
        with _this_package_first():
            process.start()
        child.close()  # the worker holds the other end: its exit closes the pipe
        tries[i] += 1
        running[parent] = _Running(i, jobs[i], process)

    def ended(conn: Connection, run: _Running) -> None:
        del running[conn]
        conn.close()
        run.process.join()
        if run.result is not None:
            results[run.index] = run.result
            return
        if run.failure is None:
            why, shown = _exit_reason(run.process.exitcode), ""
        else:
            why, shown = f"its worker raised {run.failure.splitlines()[-1]}", f"\n{run.failure}"
        where = run.job.where(done[run.index])
        if tries[run.index] >= TRIES:
            raise ShardError(
                f"{where} failed {tries[run.index]} times ({why}); nothing was written{shown}"
            )
        retried.append(f"{where} ({why})")
        done[run.index] = 0
        waiting.appendleft(run.index)

    try:
        while waiting or running:
            while waiting and len(running) < workers:
                start(waiting.popleft())
            for conn in wait(list(running)):
                assert isinstance(conn, Connection)
                run = running[conn]
                try:
                    kind, value = conn.recv()
                except EOFError:  # the worker has exited, its messages all read
                    ended(conn, run)
                    continue
                if kind == "progress":
                    done[run.index] = value
                    if progress is not None:
                        progress(sum(done))
                elif kind == "done":
                    run.result = value
                elif kind == "error":
                    raise value
                else:
                    run.failure = value
    finally:
        for run in running.values():
            run.process.kill()
            run.process.join()
    return [r for r in results if r is not None], retried


def _exit_reason(code: int | None) -> str:
    """Why a worker process ended without a result, from its exit code."""
    if code is not None and code < 0:
        return f"its worker was killed by signal {-code}"
    return f"its worker exited with code {code}"
