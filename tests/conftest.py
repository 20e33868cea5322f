"""Shared test settings (hypothesis profiles sized for a 2-core CI machine) and the
fixtures the command tests share."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MULTIEXIT = (
    Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
)


@pytest.fixture
def multiexit_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped multi-exit bundle without its profiles and data, so
    that default outputs land in tmp_path."""
    ignore = shutil.ignore_patterns("profiles", "*.npz")
    return Path(shutil.copytree(MULTIEXIT, tmp_path / "b", ignore=ignore))


@pytest.fixture
def mnist1d_npz(tmp_path: Path) -> Path:
    """40 random MNIST-1D shaped samples ``x [40, 1, 40]`` with labels ``y``, as an npz."""
    rng = np.random.default_rng(3)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.standard_normal((40, 1, 40)).astype(np.float32), y=rng.integers(0, 10, 40))
    return path
