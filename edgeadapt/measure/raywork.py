"""Evaluation shards as Ray tasks (``evaluate --ray [ADDRESS]``; the ``ray`` extra), on
the cluster `edgeadapt.raytasks.ray_cluster` connects to.

The bundle is shipped by content: its manifest and files are put in the object store
once, and each Ray worker process writes them to a folder of its own once
(`edgeadapt.raytasks.write_files`), checks the manifest's sha256 against the run's and
loads the bundle with every file verified (`edgeadapt.measure.shards.load_checked`).
The data is read by the workers from its path (a shared one on a cluster: the same path
on every node).

Each shard is one task of one CPU (`evaluate_shard`, run by
`edgeadapt.raytasks.run_ray_jobs`); Ray runs a task whose worker died
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
from functools import partial
from typing import Any

import numpy as np

from edgeadapt.errors import InputError
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
from edgeadapt.raytasks import deal_ray, ray_module, run_ray_jobs, write_files
from edgeadapt.workers import Done

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


def _shard(shipped: list[Any], job: ShardJob, progress: object) -> StateResults:
    """One shard in a Ray worker (a `run_ray_jobs` job). `shipped` holds the object
    reference of `bundle_files` (in a list: fetched only when this process has not
    loaded the bundle yet)."""
    if job.manifest not in _LOADED:
        _materialize(ray_module().get(shipped[0]), job.manifest)
    return evaluate_shard(job, _LOADED[job.manifest])


def run_ray(
    jobs: Sequence[ShardJob], bundle: Bundle, progress: Done | None = None
) -> list[StateResults]:
    """The `StateResults` of each of `jobs`, in order, each a Ray task on the cluster
    connected to (`ray_cluster`, `run_ray_jobs`; see the module docstring)."""
    shipped = [ray_module().put(bundle_files(bundle))]
    finished: set[int] = set()

    def ended(i: int) -> None:
        finished.add(i)
        if progress is not None:
            progress(sum(jobs[j].stop - jobs[j].start for j in finished))

    return run_ray_jobs(jobs, partial(_shard, shipped), ended)


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
