"""Evaluation shards as Ray tasks (``evaluate --ray [ADDRESS]``; the ``ray`` extra).

`run_ray` connects to the cluster at an address (``host:port``, ``ray://host:port`` or
``auto``; a ``host:port`` that does not answer within `CONNECT_TIMEOUT` seconds is an
error naming it) or, for `LOCAL`, starts a local one of as many CPUs as shards; a
connection the caller has made already (``ray.init`` before) is used as it is and left
open. The bundle is shipped by content: its manifest and files are put in the object
store once, and each Ray worker process writes them to a folder of its own once (removed
when the process exits), checks
the manifest's sha256 against the run's and loads the bundle with every file verified
(`edgeadapt.measure.shards.load_checked`). The data is read by the workers from its
path (a shared one on a cluster: the same path on every node).

Each shard is one task of one CPU (`evaluate_shard`); Ray runs a task whose worker died
once more (``max_retries=1``), and a task that raises an unexpected error once more too;
a shard that fails both times is an error naming its samples. An edgeadapt error (bad
data) is the run's as it is. The results are joined in shard order.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from edgeadapt.errors import EdgeadaptError, InputError, MissingExtraError
from edgeadapt.formats.bundle import MANIFEST, Bundle
from edgeadapt.measure.shards import ShardJob, evaluate_shard, load_checked
from edgeadapt.measure.states import StateResults
from edgeadapt.workers import Done, ShardError

__all__ = ["CONNECT_TIMEOUT", "LOCAL", "bundle_files", "check_address", "ray_cluster", "run_ray"]

#: The address that starts a local Ray cluster (``--ray`` without an address).
LOCAL = "local"
#: Seconds a ``host:port`` address has to answer.
CONNECT_TIMEOUT = 10.0

#: Bundles this worker process has written and loaded, by manifest sha256.
_LOADED: dict[str, Bundle] = {}


def _ray() -> Any:
    """The ray module; a clear error naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise MissingExtraError("ray", "ray", "--ray (evaluation on a Ray cluster)") from None
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
    """`address` checked as `run_ray` takes it (see the module docstring)."""
    _host_port(address)
    return address


def bundle_files(bundle: Bundle) -> dict[str, bytes]:
    """The bundle's manifest and every file it lists, by relative path, as bytes."""
    names = [MANIFEST, *bundle.files]
    return {name: (bundle.path / name).read_bytes() for name in names}


def _materialize(files: dict[str, bytes], manifest: str) -> Bundle:
    """The bundle shipped as `files`, written to a folder of this process and loaded
    verified (once per process and manifest sha256)."""
    if manifest in _LOADED:
        return _LOADED[manifest]
    got = hashlib.sha256(files[MANIFEST]).hexdigest()
    if got != manifest:
        raise InputError(
            f"the shipped bundle's manifest sha256 is {got[:12]}..., the run's {manifest[:12]}...",
            source=MANIFEST,
        )
    root = Path(tempfile.mkdtemp(prefix="edgeadapt-bundle-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for name, data in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise InputError("not a path inside the bundle", source=name)
        path = root.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    _LOADED[manifest] = load_checked(str(root), manifest)
    return _LOADED[manifest]


def _task(shipped: list[Any], job: ShardJob) -> tuple[str, Any]:
    """One shard in a Ray worker: ``("done", StateResults)`` or ``("error",
    EdgeadaptError)`` (returned, so that Ray retries only other errors). `shipped`
    holds the object reference of `bundle_files` (in a list: fetched only when this
    process has not loaded the bundle yet)."""
    try:
        if job.manifest not in _LOADED:
            _materialize(_ray().get(shipped[0]), job.manifest)
        return "done", evaluate_shard(job, _LOADED[job.manifest])
    except EdgeadaptError as e:
        return "error", e


@contextlib.contextmanager
def ray_cluster(address: str, workers: int | None) -> Iterator[int]:
    """Connected to the Ray cluster at `address` (or a local one of `workers` CPUs, this
    machine's when None) while the block runs, unless connected already (then left
    open); yields the cluster's CPUs."""
    ray = _ray()
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


def run_ray(
    jobs: Sequence[ShardJob], bundle: Bundle, progress: Done | None = None
) -> list[StateResults]:
    """The `StateResults` of each of `jobs`, in order, each a Ray task on the cluster
    connected to (`ray_cluster`; see the module docstring)."""
    ray = _ray()
    shipped = [ray.put(bundle_files(bundle))]
    task = ray.remote(num_cpus=1, max_retries=1, retry_exceptions=True)(_task)
    refs = [task.remote(shipped, job) for job in jobs]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[StateResults | None] = [None] * len(jobs)
    waiting = list(refs)
    try:
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            i = index[ready[0]]
            try:
                kind, value = ray.get(ready[0])
            except Exception as e:  # the task failed on both tries (died or raised)
                text = str(e).strip()
                first = text.splitlines()[0] if text else type(e).__name__
                raise ShardError(
                    f"{jobs[i].describe()} failed 2 times on Ray ({type(e).__name__}: "
                    f"{first}); nothing was written"
                ) from None
            if kind == "error":
                raise value
            results[i] = value
            if progress is not None:
                progress(sum(j.stop - j.start for j, r in zip(jobs, results, strict=True) if r))
    finally:
        for ref in waiting:  # the run failed: the other shards are not needed
            ray.cancel(ref, force=True)
    return [r for r in results if r is not None]
