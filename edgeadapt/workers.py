"""Jobs run in worker processes on this machine, in order: `run_processes` starts at
most `workers` spawned processes at a time, each running a module-level work function
on one picklable `Job` and sending its progress and then its result back. A worker
that dies (killed, out of memory) or fails with an unexpected error is started again
once on its job; a job that fails twice is a `ShardError` naming it (`Job.where`). An
edgeadapt error (bad input: it names the file and sample) is raised as it is. Workers
still running when the run fails are killed.

`deal_processes` keeps `workers` processes that each set up once (load a model) and
deals them items one after another (a batch of data), yielding the results in the
items' order; at most `PER_WORKER` items wait at a worker and a window of twice that
many per worker bounds what is held (the items dealt and the results that came before
the one next in order). A worker that dies is replaced; the item it was working on is
run again once, and failing twice it is a `ShardError` naming it.

`edgeadapt evaluate --workers` runs shards of its data here
(`edgeadapt.measure.shards`; a loader script's batches dealt), `edgeadapt export
branches --workers` its candidate branches (`edgeadapt.exporters.branches`),
`edgeadapt export onnx --workers` its calibration batches, dealt
(`edgeadapt.exporters._calibwork`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import queue
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.presets import MAX_WORKERS

__all__ = [
    "PER_WORKER",
    "TRIES",
    "Done",
    "Job",
    "ShardError",
    "check_workers",
    "deal_processes",
    "run_processes",
]

#: Times a shard is run before its failure is the run's (the first try and one retry).
TRIES = 2
#: Items dealt to a worker at a time (`deal_processes`): the one it works on and the
#: next, so that it never waits for the parent.
PER_WORKER = 2

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
S = TypeVar("S")
W = TypeVar("W")
I = TypeVar("I")  # noqa: E741


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


@contextlib.contextmanager
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
        why, shown = _failure(run.process.exitcode, run.failure)
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
                except (EOFError, OSError):  # the worker has exited (perhaps mid-message)
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


def _failure(code: int | None, failure: str | None) -> tuple[str, str]:
    """Why a worker's job failed (its exit code, or the last line of the traceback it
    sent), and what to show after the message (that traceback on a line of its own, or
    nothing)."""
    if failure is None:
        return _exit_reason(code), ""
    return f"its worker raised {failure.splitlines()[-1]}", f"\n{failure}"


# ------------------------------------------------------------------ dealt items


def _dealt_main(
    init: Callable[[S], W],
    work: Callable[[W, I], R],
    setup: S,
    tasks: Connection,
    results: Connection,
) -> None:
    """A dealt worker process: set up once (then ``("ready", -1, None)``), then work
    each ``(index, item)`` received until None, sending ``("start", index, None)`` and
    ``("done", index, result)``; ``("error", index, EdgeadaptError)`` or ``("failed",
    index, traceback)`` end it. A thread receives the items, so that the parent's
    sending never waits on this process's sending."""
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def receive() -> None:
        try:
            while (msg := tasks.recv()) is not None:
                inbox.put(msg)
        except EOFError:
            pass
        inbox.put(None)

    threading.Thread(target=receive, daemon=True).start()
    state: Any = None
    index = -1
    try:
        state = init(setup)
        results.send(("ready", -1, None))
        while (msg := inbox.get()) is not None:
            index, item = msg
            results.send(("start", index, None))
            results.send(("done", index, work(state, item)))
    except EdgeadaptError as e:
        results.send(("error", index, _portable(e)))
    except Exception:  # anything else may pass: the item is tried again
        results.send(("failed", index, traceback.format_exc(limit=-3).strip()))
    finally:
        results.close()


@dataclass
class _Dealt:
    process: Any  # multiprocessing's SpawnProcess
    tasks: Connection
    items: deque[int]  # the indices dealt to it and not done, in order
    ready: bool = False  # set up
    started: int | None = None  # the index at work
    failure: str | None = None


def deal_processes(
    setup: S,
    items: Iterable[I],
    workers: int,
    init: Callable[[S], W],
    work: Callable[[W, I], R],
    where: Callable[[I], str],
) -> Iterator[R]:
    """``work(state, item)`` for each of `items` (taken from it as the window allows),
    yielded in order, in `workers` spawned processes that each set up once (``state =
    init(setup)``; `init` and `work` module-level functions). See the module docstring:
    a dead worker is replaced and its item run again once; an item failing twice is a
    `ShardError` naming ``where(item)``, an `EdgeadaptError` in a worker raised as it is.
    Workers still running when it ends (or fails) are stopped."""
    ctx = multiprocessing.get_context("spawn")
    window = 2 * PER_WORKER * workers
    running: dict[Connection, _Dealt] = {}
    dealt: dict[int, I] = {}  # items sent and not yet done, to send again
    again: deque[int] = deque()  # items of dead workers, to deal first
    fails: dict[int, int] = {}
    held: dict[int, R] = {}
    source = iter(items)
    exhausted, taken, out = False, 0, 0

    def start() -> None:
        parent, child = ctx.Pipe(duplex=False)
        inbox, send = ctx.Pipe(duplex=False)
        args = (init, work, setup, inbox, child)
        process = ctx.Process(target=_dealt_main, args=args, daemon=True)
        with _this_package_first():
            process.start()
        child.close()  # the worker holds the other ends: its exit closes the pipe
        inbox.close()
        running[parent] = _Dealt(process, send, deque())

    def next_index() -> int | None:
        nonlocal exhausted, taken
        if again:
            return again.popleft()
        if exhausted or taken >= out + window:
            return None
        try:
            dealt[taken] = next(source)
        except StopIteration:
            exhausted = True
            return None
        taken += 1
        return taken - 1

    def deal() -> None:
        for worker in sorted(running.values(), key=lambda w: len(w.items)):
            while len(worker.items) < PER_WORKER and (i := next_index()) is not None:
                worker.items.append(i)  # sent or not, its death gives it back
                try:
                    worker.tasks.send((i, dealt[i]))
                except OSError:  # it died: its end of the results pipe tells why
                    break

    def ended(conn: Connection, worker: _Dealt) -> None:
        del running[conn]
        conn.close()
        worker.tasks.close()
        worker.process.join()
        again.extendleft(reversed(worker.items))
        # the item at work is charged (the first dealt, when it died setting up)
        i = worker.started if worker.ready else (worker.items[0] if worker.items else None)
        if i is None:
            return
        why, shown = _failure(worker.process.exitcode, worker.failure)
        fails[i] = fails.get(i, 0) + 1
        if fails[i] >= TRIES:
            raise ShardError(
                f"{where(dealt[i])} failed {fails[i]} times ({why}); nothing was written{shown}"
            )

    finished = False
    try:
        while True:
            wanted = len(again) + (0 if exhausted else window)
            while len(running) < min(workers, max(wanted, 1)) and (again or not exhausted):
                start()
            deal()
            while out in held:
                yield held.pop(out)
                out += 1
            if not any(w.items for w in running.values()):
                if exhausted and not again:
                    finished = True
                    return
                continue
            for conn in wait(list(running)):
                assert isinstance(conn, Connection)
                worker = running[conn]
                try:
                    kind, i, value = conn.recv()
                except (EOFError, OSError):  # the worker has exited (perhaps mid-message)
                    ended(conn, worker)
                    continue
                if kind == "ready":
                    worker.ready = True
                elif kind == "start":
                    worker.started = i
                elif kind == "done":
                    worker.items.popleft()
                    worker.started = None
                    del dealt[i]
                    held[i] = value
                elif kind == "error":
                    raise value
                else:
                    worker.failure = value
    finally:
        _stop(list(running.values()), finished)


def _stop(workers: Sequence[_Dealt], finished: bool) -> None:
    """End dealt workers: told there is no more work when the run `finished`, else
    killed."""
    for worker in workers:
        if finished:
            with contextlib.suppress(OSError):
                worker.tasks.send(None)
        else:
            worker.process.kill()
    for worker in workers:
        worker.process.join(timeout=10)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.tasks.close()
