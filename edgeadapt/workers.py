"""Jobs run in worker processes on this machine, in order: `run_processes` starts at
most `workers` spawned processes at a time, each running a module-level work function
on one picklable `Job` and sending its progress and then its result back. A worker
that dies (killed, out of memory) or fails with an unexpected error is started again
once on its job; a job that fails twice is a `ShardError` naming it (`Job.where`). An
edgeadapt error (bad input: it names the file and sample) is raised as it is. Workers
still running when the run fails are killed.

`edgeadapt evaluate --workers` runs shards of its data here
(`edgeadapt.measure.shards`), `edgeadapt export branches --workers` its candidate
branches (`edgeadapt.exporters.branches`).
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.presets import MAX_WORKERS

__all__ = ["TRIES", "Done", "Job", "ShardError", "check_workers", "run_processes"]

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


def check_workers(workers: Any) -> int:
    """`workers` as an int in ``1..MAX_WORKERS``; else an error naming ``workers``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise InputError(
            f"must be an integer in 1..{MAX_WORKERS}, got {workers!r}", source="workers"
        )
    return workers


def _portable(e: EdgeadaptError) -> EdgeadaptError:
    """`e` if it survives pickling (to cross to the parent), else its message."""
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        return EdgeadaptError(str(e))
    return e


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
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


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
