"""Work on a Ray cluster (``--ray [ADDRESS]``; the ``ray`` extra), for every command
that scales out: `evaluate`'s shards (`edgeadapt.measure.raywork`), `export onnx`'s
calibration batches and `export branches`' candidates (`edgeadapt.exporters`).

`ray_cluster` connects to the cluster at an address (``host:port``, ``ray://host:port``
or ``auto``; a ``host:port`` that does not answer within `CONNECT_TIMEOUT` seconds is an
error naming it) or, for `LOCAL`, starts a local one; a connection the caller has made
already (``ray.init`` before) is used as it is and left open.

- `run_ray_jobs`: each of a list of `Job` s as one task of one CPU, as
  `edgeadapt.workers.run_processes` runs them in processes;
- `deal_ray`: items dealt in order to actors that each set up once (load a model) and
  then work item after item, as `edgeadapt.workers.deal_processes` deals them.

Ray runs a task whose worker died once more, and a task that raises an unexpected error
once more too; one that fails both times is a `ShardError` naming it. An edgeadapt error
(bad input) is returned by the task and raised as it is. Files a worker needs are
shipped by content (`write_files`: written once per process to a folder of its own,
removed when the process exits) and checked by their sha256 by the caller.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from edgeadapt.errors import EdgeadaptError, InputError, MissingExtraError
from edgeadapt.workers import PER_WORKER, TRIES, Job, ShardError

__all__ = [
    "CONNECT_TIMEOUT",
    "LOCAL",
    "check_address",
    "deal_ray",
    "ray_cluster",
    "ray_module",
    "run_ray_jobs",
    "write_files",
]

#: The address that starts a local Ray cluster (``--ray`` without an address).
LOCAL = "local"
#: Seconds a ``host:port`` address has to answer.
CONNECT_TIMEOUT = 10.0

S = TypeVar("S")
W = TypeVar("W")
I = TypeVar("I")  # noqa: E741
R = TypeVar("R")
J = TypeVar("J", bound=Job)


def ray_module() -> Any:
    """The ray module; a clear error naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise MissingExtraError("ray", "ray", "--ray (work on a Ray cluster)") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``host:port`` or ``ray://host:port`` address; None for `LOCAL`
    and ``auto``; else an error naming ``ray``."""
    if address in (LOCAL, "auto"):
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
        raise InputError(
            f"expected HOST:PORT, ray://HOST:PORT, auto or nothing (a local cluster), "
            f"got {address!r}",
            source="ray",
        )
    return host.strip("[]"), int(port)


def check_address(address: str) -> str:
    """`address` checked as `ray_cluster` takes it (see the module docstring)."""
    _host_port(address)
    return address


@contextlib.contextmanager
def ray_cluster(address: str, workers: int | None) -> Iterator[int]:
    """Connected to the Ray cluster at `address` (or a local one of `workers` CPUs, this
    machine's when None) while the block runs, unless connected already (then left
    open); yields the cluster's CPUs."""
    ray = ray_module()
    connected = False
    if not ray.is_initialized():
        _connect(ray, address, workers or os.cpu_count() or 1)
        connected = True
    try:
        yield max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if connected:
            ray.shutdown()


def _connect(ray: Any, address: str, cpus: int) -> None:
    where = _host_port(address)
    if where is not None:
        try:
            socket.create_connection(where, timeout=CONNECT_TIMEOUT).close()
        except OSError as e:
            raise EdgeadaptError(
                f"the Ray cluster at {address} does not answer within {CONNECT_TIMEOUT:g} s "
                f"({e.strerror or e})"
            ) from None
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR"}
    try:
        if address == LOCAL:
            ray.init(num_cpus=cpus, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EdgeadaptError(f"cannot connect to the Ray cluster at {address}: {e}") from None


def write_files(files: dict[str, bytes], prefix: str) -> Path:
    """`files` (by relative path) written to a new folder of this process, removed when
    it exits; every name must be a path inside that folder."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for name, data in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise InputError("not a path inside the shipped folder", source=name)
        path = root.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _failed(what: str, e: Exception) -> ShardError:
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return ShardError(
        f"{what} failed {TRIES} times on Ray ({type(e).__name__}: {first}); nothing was written"
    )


def _job_task(work: Callable[[Any, Callable[[int], None]], Any], job: Any) -> tuple[str, Any]:
    """One job in a Ray worker: ``("done", result)`` or ``("error", EdgeadaptError)``
    (returned, so that Ray retries only other errors)."""
    try:
        return "done", work(job, lambda done: None)
    except EdgeadaptError as e:
        return "error", e


def run_ray_jobs(
    jobs: Sequence[J],
    work: Callable[[J, Callable[[int], None]], R],
    progress: Callable[[int], None] | None = None,
) -> list[R]:
    """``work(job, progress)`` for each of `jobs` (`work` a module-level function), each
    a Ray task of one CPU on the cluster connected to, results in order; `progress`
    told the index of each job done."""
    ray = ray_module()
    task = ray.remote(num_cpus=1, max_retries=TRIES - 1, retry_exceptions=True)(_job_task)
    refs = [task.remote(work, job) for job in jobs]
    index = {ref: i for i, ref in enumerate(refs)}
    results: dict[int, R] = {}
    waiting = list(refs)
    try:
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            i = index[ready[0]]
            try:
                kind, value = ray.get(ready[0])
            except Exception as e:  # the task failed on both tries (died or raised)
                raise _failed(jobs[i].where(0), e) from None
            if kind == "error":
                raise value
            results[i] = value
            if progress is not None:
                progress(i)
    finally:
        for ref in waiting:  # the run failed: the other jobs are not needed
            ray.cancel(ref, force=True)
    return [results[i] for i in range(len(jobs))]


class _Dealer:
    """A Ray actor that sets up once (``init(setup)``, on its first item, so that an
    edgeadapt error there is returned as any other) and then works item after item.
    The setup comes as an object reference in a list: fetched only to set up."""

    def __init__(self) -> None:
        self._state: Any = None

    def run(
        self,
        init: Callable[[Any], Any],
        shipped: list[Any],
        work: Callable[[Any, Any], Any],
        item: Any,
    ) -> tuple[str, Any]:
        try:
            if self._state is None:
                self._state = init(ray_module().get(shipped[0]))
            return "done", work(self._state, item)
        except EdgeadaptError as e:
            return "error", e


def deal_ray(
    setup: S,
    items: Iterable[I],
    workers: int,
    init: Callable[[S], W],
    work: Callable[[W, I], R],
    where: Callable[[I], str],
) -> Iterator[R]:
    """``work(state, item)`` for each of `items`, yielded in order, on `workers` Ray
    actors of one CPU that each set up once (``state = init(setup)``); as
    `edgeadapt.workers.deal_processes` (the same window bounds what is held), an actor
    that dies started again once and its items run again once."""
    ray = ray_module()
    dealer = ray.remote(num_cpus=1, max_restarts=TRIES - 1, max_task_retries=TRIES - 1)(_Dealer)
    shipped = [ray.put(setup)]
    actors = [dealer.remote() for _ in range(workers)]
    load = [0] * workers
    running: dict[Any, tuple[int, int]] = {}  # object ref -> (item index, actor)
    dealt: dict[int, I] = {}
    held: dict[int, R] = {}
    window = 2 * PER_WORKER * workers
    source = iter(items)
    exhausted, taken, out = False, 0, 0
    try:
        while True:
            while not exhausted and taken < out + window and min(load) < PER_WORKER:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                k = load.index(min(load))
                call = actors[k].run.options(retry_exceptions=True)
                running[call.remote(init, shipped, work, item)] = (taken, k)
                dealt[taken] = item
                load[k] += 1
                taken += 1
            while out in held:
                yield held.pop(out)
                out += 1
            if not running:
                if exhausted:
                    return
                continue
            ready, _ = ray.wait(list(running), num_returns=1)
            i, k = running.pop(ready[0])
            load[k] -= 1
            try:
                kind, value = ray.get(ready[0])
            except Exception as e:  # the actor died twice, or the item raised twice
                raise _failed(where(dealt[i]), e) from None
            if kind == "error":
                raise value
            del dealt[i]
            held[i] = value
    finally:  # killing an actor fails its running and pending calls (Ray refuses
        # force-cancelling an actor's calls, which would hide the error being raised)
        for actor in actors:
            ray.kill(actor)
