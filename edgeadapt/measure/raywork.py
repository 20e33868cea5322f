"""Evaluation shards as Ray tasks (``evaluate --ray [ADDRESS]``; the ``ray`` extra), on
the cluster `edgeadapt.raytasks.ray_cluster` connects to.

The bundle is shipped by content: its manifest and files are put in the object store
once, and each Ray worker process writes them to a folder of its own once
(`edgeadapt.raytasks.write_files`), checks the manifest's sha256 against the run's and
loads the bundle with every file verified (`edgeadapt.measure.shards.load_checked`).
The data is read by the workers from its path (a shared one on a cluster: the same path
on every node).

Each shard is one task of one CPU (`evaluate_shard`); Ray runs a task whose worker died
once more (``max_retries=1``), and a task that raises an unexpected error once more too;
a shard that fails both times is an error naming its samples. An edgeadapt error (bad
data) is the run's as it is. The results are joined in shard order.

A loader script, which cannot be cut by sample, is read by the parent and its batches
dealt to Ray actors (`deal_ray_batches`, `edgeadapt.raytasks.deal_ray`), each loading
the shipped bundle once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.bundle import MANIFEST, Bundle
from edgeadapt.measure.shards import (
    DealtSetup,
    LabelledBatch,
    ShardJob,
    dealt_batches,
    evaluate_shard,
    joined,
    load_checked,
    run_batch,
)
from edgeadapt.measure.states import StateResults, StateRunner
from edgeadapt.raytasks import deal_ray, ray_module, write_files
from edgeadapt.workers import Done, ShardError

__all__ = ["bundle_files", "deal_ray_batches", "run_ray"]

#: Bundles this worker process has written and loaded, by manifest sha256.
_LOADED: dict[str, Bundle] = {}


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
    root = write_files(files, "edgeadapt-bundle-")
    _LOADED[manifest] = load_checked(str(root), manifest)
    return _LOADED[manifest]


def _task(shipped: list[Any], job: ShardJob) -> tuple[str, Any]:
    """One shard in a Ray worker: ``("done", StateResults)`` or ``("error",
    EdgeadaptError)`` (returned, so that Ray retries only other errors). `shipped`
    holds the object reference of `bundle_files` (in a list: fetched only when this
    process has not loaded the bundle yet)."""
    try:
        if job.manifest not in _LOADED:
            _materialize(ray_module().get(shipped[0]), job.manifest)
        return "done", evaluate_shard(job, _LOADED[job.manifest])
    except EdgeadaptError as e:
        return "error", e


def run_ray(
    jobs: Sequence[ShardJob], bundle: Bundle, progress: Done | None = None
) -> list[StateResults]:
    """The `StateResults` of each of `jobs`, in order, each a Ray task on the cluster
    connected to (`ray_cluster`; see the module docstring)."""
    ray = ray_module()
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


def _runner_shipped(setup: DealtSetup) -> StateRunner:
    """A dealt Ray actor's set-up: the shipped bundle written, checked and loaded."""
    assert setup.shipped is not None
    return StateRunner(_materialize(setup.shipped, setup.manifest), setup.config)


def deal_ray_batches(
    setup: DealtSetup,
    bundle: Bundle,
    batches: Iterable[tuple[int, dict[str, np.ndarray], np.ndarray]],
    workers: int,
    progress: Done | None = None,
) -> StateResults:
    """Every state of `bundle` on `batches` (read here), dealt to `workers` Ray actors
    on the cluster connected to, the bundle shipped by content; joined in order."""
    shipped = replace(setup, shipped=bundle_files(bundle))
    items = dealt_batches(batches)
    parts = deal_ray(shipped, items, workers, _runner_shipped, run_batch, LabelledBatch.where)
    return joined(parts, progress)
