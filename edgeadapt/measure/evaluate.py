"""The evaluator: every state of a bundle on every sample of a labelled set.

Runs the bundle batch by batch on a runtime (early-exit: step i reads the activation of
step i-1 and any model inputs it needs, so one pass yields every state; ensemble: each
member reads the model inputs) and
records per sample and state the predicted class (argmax of the logits) and the
confidence in every measure the decision kernel supports (maxprob, margin, negative
entropy), computed by the kernel itself (`edgeadapt.kernel`, float32, specified by
`edgeadapt.kernel_ref`), so a plan calibrated on these confidences exits exactly the
rows `AdaptiveModel` exits on the same logits. The result is an `Evaluation`.

`evaluate_to_file` is `edgeadapt evaluate`: it runs under the runtime configuration of
the bundle's profile on this device (the one its costs were measured under) unless told
otherwise, and saves the evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.data.batches import Inputs, array_inputs, check_labels, read_labelled
from edgeadapt.data.inputs import X_KEY
from edgeadapt.data.memory import BatchChoice, bundle_sample_bytes, choose_batch, run_notes
from edgeadapt.data.sources import DataSpec, open_source
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle, as_bundle
from edgeadapt.formats.evaluation import Evaluation, save_evaluation
from edgeadapt.formats.presets import RuntimeConfig, inherit_runtime
from edgeadapt.formats.profile import find_profile, load_profile
from edgeadapt.measure.raywork import deal_ray_batches, run_ray
from edgeadapt.measure.shards import (
    DealtSetup,
    ShardJob,
    check_workers,
    deal_local,
    plan_shards,
    run_local,
    worker_config,
)
from edgeadapt.measure.states import StateResults, run_states
from edgeadapt.raytasks import LOCAL, check_address, ray_cluster

__all__ = [
    "EvaluateRun",
    "StateResults",
    "evaluate_bundle",
    "evaluate_to_file",
    "load_dataset",
    "run_states",
]

#: ``progress(done, total)``: samples done so far, of `total` (None while unknown: a
#: loader script's).
Progress = Callable[[int, int | None], None]


Data = np.ndarray | Mapping[str, np.ndarray]


def load_dataset(path: str | os.PathLike[str], bundle: Bundle) -> tuple[Data, np.ndarray]:
    """A labelled set for `bundle` from an npz, in memory: one array ``[N, *input shape]``
    per model input, named as the input (a one-input bundle may name it ``x``), and
    integer ``y`` ``[N]``; errors name the file and the array. A one-input bundle's inputs
    come back as the bare array, a multi-input bundle's as ``{name: array}``.
    (`evaluate_to_file` reads the file a batch at a time instead.)"""
    inputs, y = read_labelled(path, bundle.inputs, bundle.num_classes)
    if len(bundle.inputs) == 1:
        return inputs[bundle.inputs[0].name], y
    return inputs, y


def _runtime(runtime: str | RuntimeConfig, threads: int | None) -> RuntimeConfig:
    if isinstance(runtime, RuntimeConfig):
        return runtime if threads is None else replace(runtime, threads=threads)
    return RuntimeConfig(runtime, threads=threads)


def evaluate_bundle(
    bundle: Bundle,
    x: Data | Inputs,
    y: np.ndarray,
    runtime: str | RuntimeConfig = "onnxruntime",
    batch: int | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    source: str | None = None,
    memory: int | str | None = None,
) -> Evaluation:
    """Run every state of `bundle` on `x` a batch at a time; `y` are the labels.

    `x` is one array for a one-input bundle, else ``{input name: array}`` holding every
    model input with the same number of rows (or `Inputs` read from a file); each step is
    fed the inputs it reads. The batch is `batch`, else the most that `memory` (bytes, or
    a size such as ``"512MiB"``; default `edgeadapt.data.memory.DEFAULT_MEMORY`) holds
    (`edgeadapt.data.memory.choose_batch`). `progress(done, total)` is called after each
    batch with the samples done so far. `source` names the data in errors about `x` and
    `y`. `runtime` is a runtime name (its own defaults, `threads` if given) or a
    `RuntimeConfig` (`threads`, if given, replaces its threads).
    """
    choice = choose_batch(lambda: bundle_sample_bytes(bundle), batch=batch, memory=memory)
    where = source or "input"
    inputs = (
        x
        if isinstance(x, Inputs)
        else array_inputs(bundle.inputs, x, source=where, array_field=X_KEY)
    )
    if inputs.rows is None:
        raise InputError(
            "a loader script's labels come with its batches: evaluate it with "
            "evaluate_to_file (edgeadapt evaluate --data)",
            source=where,
        )
    labels = check_labels(np.asarray(y), inputs.rows, bundle.num_classes, where)
    batches = (
        (lo, feeds, labels[lo : lo + next(iter(feeds.values())).shape[0]])
        for lo, feeds in inputs.batches(choice.batch)
    )
    rows = inputs.rows

    def tick(done: int, _total: int | None) -> None:
        if progress is not None:
            progress(done, rows)

    return _evaluate(bundle, batches, inputs, _runtime(runtime, threads), tick)


def _evaluate(
    bundle: Bundle,
    batches: Iterable[tuple[int, dict[str, np.ndarray], np.ndarray]],
    inputs: Inputs,
    config: RuntimeConfig,
    progress: Progress | None,
) -> Evaluation:
    """Every state on each labelled batch of `batches` (read from `inputs`, whose rows
    may be known only at the end); the per-sample results are kept, the batches not."""

    def tick(done: int) -> None:
        if progress is not None:
            progress(done, inputs.rows)

    return run_states(bundle, batches, config, tick).evaluation(bundle)


@dataclass(frozen=True)
class EvaluateRun:
    """An evaluation made and saved (`evaluate_to_file`), the runtime configuration it
    ran under, a line saying how that differs from the profile's (None: it does not, or
    there was no profile), the batch it ran at and why, the data arrays it read as
    another dtype than they hold, and the workers it ran in (a line saying how, when
    more than one)."""

    evaluation: Evaluation
    path: Path
    runtime: RuntimeConfig
    runtime_note: str | None = None
    batch: BatchChoice | None = None
    casts: tuple[str, ...] = ()
    workers: int = 1
    workers_note: str | None = None

    @property
    def notes(self) -> list[str]:
        """The lines to show beside the result (`run_notes`, and how the workers ran)."""
        notes = run_notes(self.runtime_note, self.batch, self.casts)
        return notes if self.workers_note is None else [*notes, self.workers_note]

    @property
    def oracle_accuracy(self) -> float:
        """The share of samples some state gets right."""
        return float(self.evaluation.correct.any(axis=1).mean())

    def to_json(self) -> dict[str, Any]:
        ev = self.evaluation
        return {
            "path": str(self.path),
            "samples": int(ev.labels.shape[0]),
            "states": list(ev.names),
            "accuracy": [float(a) for a in ev.accuracies],
            "oracle_accuracy": self.oracle_accuracy,
            "batch": None if self.batch is None else self.batch.to_json(),
            "casts": list(self.casts),
            "workers": self.workers,
        }


def evaluate_to_file(
    bundle: Bundle | str | os.PathLike[str],
    data: str | os.PathLike[str] | DataSpec,
    *,
    output: str | os.PathLike[str] | None = None,
    profile: str | os.PathLike[str] | None = None,
    runtime: str | None = None,
    threads: int | None = None,
    batch: int | None = None,
    memory: int | str | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    ray: str | None = None,
) -> EvaluateRun:
    """`edgeadapt evaluate`: every state of `bundle` on the labelled `data` (an npz, a
    loader script, an image folder or CSV list: `edgeadapt.data.sources.open_source`),
    saved to `output` (default ``BUNDLE/evaluation.npz``) with a record of the data
    (`Evaluation.data`).

    The runtime configuration is the `profile`'s (default: this device's profile of the
    bundle, `edgeadapt.formats.profile.find_profile`, when there is one) unless `runtime` or
    `threads` override it, and then `EvaluateRun.runtime_note` says so; without a
    profile, `runtime` (default onnxruntime) with its own defaults. The data is read
    a batch at a time, at `batch` or the batch
    `memory` holds (`evaluate_bundle`); `EvaluateRun.batch` says which.

    `workers` above 1 runs the data in that many shards in worker processes
    (`edgeadapt.measure.shards`), the threads split among them; `ray` (a cluster's
    address, or ``"local"`` for a local cluster: `edgeadapt.raytasks`) runs the
    shards as Ray tasks instead, `workers` of them (default: the cluster's CPUs). A
    loader script cannot be split (it is read from its start): it is read here and its
    batches dealt to the workers (or Ray actors). The file is the same, bit for bit.
    Nothing is written when a shard (or a batch) fails twice.
    """

    if workers is not None:
        check_workers(workers)
    if ray is not None:
        check_address(ray)
    loaded = as_bundle(bundle)
    found = find_profile(loaded, profile)
    recorded = None if found is None else load_profile(found, loaded).runtime_config
    choice = inherit_runtime(recorded, runtime=runtime, threads=threads, what="profile")
    inputs = open_source(data, loaded.inputs)
    size = choose_batch(lambda: bundle_sample_bytes(loaded), batch=batch, memory=memory)
    if ray is None and workers in (None, 1):
        batches = inputs.labelled(size.batch, loaded.num_classes)
        ev = _evaluate(loaded, batches, inputs, choice.config, progress)
        used, worker_note = 1, None
    else:
        sharded = _Sharded(loaded, data, inputs, choice.config, size.batch, progress)
        ev, used, worker_note = sharded.run(workers, ray)
    ev = replace(ev, data=inputs.record())
    path = Path(output) if output is not None else loaded.path / "evaluation.npz"
    save_evaluation(path, ev)
    return EvaluateRun(ev, path, choice.config, choice.note, size, inputs.casts, used, worker_note)


@dataclass(frozen=True)
class _Sharded:
    """`bundle` on `inputs` (opened from `data`) in shards of whole `batch`-row batches
    (`edgeadapt.measure.shards`)."""

    bundle: Bundle
    data: str | os.PathLike[str] | DataSpec
    inputs: Inputs
    config: RuntimeConfig
    batch: int
    progress: Progress | None

    def run(self, workers: int | None, ray: str | None) -> tuple[Evaluation, int, str]:
        """The evaluation made by `workers` worker processes, or by Ray tasks on the
        cluster at `ray`; the shards it took (fewer than asked when there are fewer
        batches) and a line saying how it ran."""

        if not self.inputs.shardable:
            return self._dealt(workers, ray)
        self.inputs.labels(self.bundle.num_classes)  # bad labels found before any worker
        if ray is None:
            assert workers is not None
            jobs = self._jobs(workers, None)
            results, retried = run_local(jobs, workers, self._tick)
            note = f"{len(jobs)} worker processes, {self._threads(jobs)} each"
            if retried:
                note += f"; tried again: {', '.join(retried)}"
        else:
            with ray_cluster(ray, workers) as cpus:
                jobs = self._jobs(workers or cpus, None if ray == LOCAL else workers or cpus)
                results = run_ray(jobs, self.bundle, self._tick)
            where = "a local Ray cluster" if ray == LOCAL else f"the Ray cluster at {ray}"
            note = f"{len(jobs)} Ray tasks on {where}, {self._threads(jobs)} each"
        return StateResults.join(results).evaluation(self.bundle), len(jobs), note

    def _dealt(self, workers: int | None, ray: str | None) -> tuple[Evaluation, int, str]:
        """The evaluation of data that cannot be cut by sample (a loader script): read
        here a batch at a time, the batches dealt to worker processes or Ray actors
        that each load the bundle once (`edgeadapt.measure.shards.deal_local`)."""
        bundle, batches = self.bundle, self.inputs.labelled(self.batch, self.bundle.num_classes)
        if ray is None:
            assert workers is not None
            setup = DealtSetup(
                str(bundle.path), bundle.manifest_sha256, worker_config(self.config, workers)
            )
            results = deal_local(setup, batches, workers, self._tick)
            note = f"{workers} worker processes, the batches of the {self.inputs.kind} dealt"
            return results.evaluation(bundle), workers, note
        with ray_cluster(ray, workers) as cpus:
            count = workers or cpus
            each = worker_config(self.config, count, None if ray == LOCAL else count)
            setup = DealtSetup(str(bundle.path), bundle.manifest_sha256, each)
            results = deal_ray_batches(setup, bundle, batches, count, self._tick)
        where = "a local Ray cluster" if ray == LOCAL else f"the Ray cluster at {ray}"
        note = f"{count} Ray actors on {where}, the batches of the {self.inputs.kind} dealt"
        return results.evaluation(bundle), count, note

    def _jobs(self, workers: int, cpus: int | None) -> list[ShardJob]:

        assert self.inputs.rows is not None  # data that can be split knows its rows
        spec = DataSpec.absolute(self.data)
        each = worker_config(self.config, workers, cpus)
        return [
            ShardJob(
                str(self.bundle.path), self.bundle.manifest_sha256, spec, each, self.batch, lo, hi
            )
            for lo, hi in plan_shards(self.inputs.rows, self.batch, workers)
        ]

    def _tick(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, self.inputs.rows)

    @staticmethod
    def _threads(jobs: Sequence[ShardJob]) -> str:
        n = jobs[0].config.threads
        return "the runtime's threads" if n is None else f"{n} runtime thread{'s' * (n != 1)}"
