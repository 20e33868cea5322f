"""Known inputs for the oracle on a bundle: a profile with chosen step times and an
evaluation with chosen per-state accuracies, for the shipped multi-exit bundle."""

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.device import device_id
from edgeadapt.formats.evaluation import Evaluation
from edgeadapt.formats.identity import BundleIdentity
from edgeadapt.formats.profile import MIN_SAMPLES, Profile, StepStats

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
MULTIEXIT = BUNDLES / "mnist1d-multiexit"
#: Step times (ms) of the known profile: cascade costs 0.1, 0.3, 0.6, 1.0.
STEP_MS = (0.1, 0.2, 0.3, 0.4)


def multiexit() -> Bundle:
    return load_bundle(MULTIEXIT)


def copy_multiexit(tmp_path: Path) -> Path:
    """A private copy of the shipped bundle (tests may write profiles and plans into it)."""
    return Path(shutil.copytree(MULTIEXIT, tmp_path / "bundle"))


def edited_multiexit(tmp_path: Path, edit: Callable[[bytes], bytes], name: str = "edited") -> Path:
    """A copy of the shipped bundle at ``tmp_path/name`` whose manifest bytes are
    `edit` of the shipped ones (a hand-edited or corrupted manifest)."""
    d = Path(shutil.copytree(MULTIEXIT, tmp_path / name))
    manifest = d / "manifest.json"
    manifest.write_bytes(edit(manifest.read_bytes()))
    return d


def _stats(t: float) -> StepStats:
    return StepStats(t, t, t, t, 0.0, t, MIN_SAMPLES)


def known_profile(
    bundle: Bundle,
    step_ms=STEP_MS,
    device: str | None = None,
    whole_ms: float | None = None,
    order: str | None = None,
) -> Profile:
    """A profile of `bundle` whose every statistic of step i is `step_ms[i]`; with
    `whole_ms`, the whole model (composed) timed at that; `order` the settings' order."""
    stats = tuple(_stats(t) for t in step_ms)
    settings = {"runtime": "onnxruntime", "threads": 1} | ({"order": order} if order else {})
    return Profile(
        manifest_sha256=bundle.manifest_sha256,
        kind=bundle.kind,
        states=tuple(s.name for s in bundle.states),
        device={"device_id": device or device_id(), "cpu": "test"},
        measured_at="2025-01-01T00:00:00+00:00",
        settings=settings,
        before={},
        after={},
        noisy=False,
        noise_reasons=(),
        steps={1: stats},
        whole={} if whole_ms is None else {1: _stats(whole_ms)},
        whole_model=None
        if whole_ms is None
        else {
            "origin": "composed",
            "path": None,
            "sha256": "0" * 64,
            "state": bundle.states[-1].name,
        },
    )


def known_evaluation(
    names=("exit0", "exit1", "exit2", "exit3"), rates=(0.5, 0.8, 0.9, 0.95), n=400, seed=0
) -> Evaluation:
    """Random labels; state j right with probability `rates[j]`, wrong answers one class
    off; made for the shipped multi-exit bundle (its identity and class count recorded)
    when `names` are its states."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    right = rng.random((n, len(names))) < np.asarray(rates)
    pred = np.where(right, labels[:, None], (labels[:, None] + 1) % 10)
    conf = np.where(right, rng.uniform(0.5, 1.0, right.shape), rng.uniform(0.1, 0.7, right.shape))
    shipped = multiexit()
    ours = tuple(names) == tuple(s.name for s in shipped.states)
    return Evaluation(
        labels,
        pred,
        np.array(names),
        conf.astype(np.float32),
        num_classes=10,
        bundle=BundleIdentity.of(shipped) if ours else None,
    )


def brute_oracle(correct: np.ndarray, costs) -> tuple[float, float]:
    """(R_oracle, A_oracle) of eq. 4/5 by a loop over samples (states in cost order)."""
    total, hits = 0.0, 0
    for row in correct:
        right = np.flatnonzero(row)
        total += costs[right[0]] if right.size else costs[0]
        hits += bool(right.size)
    return total / len(correct), hits / len(correct)
