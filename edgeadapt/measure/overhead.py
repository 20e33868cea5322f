"""What the cascade itself costs on a device, beside the runtime calls: `Overhead`,
measured at batch 1 for the profile and the planner."""

from __future__ import annotations

from dataclasses import replace
from time import perf_counter_ns
from typing import Any

import numpy as np

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.data.inputs import warmup_batch
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import Bundle
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.formats.profile import Overhead

__all__ = ["measure_overhead"]

_BLOCK = 5


def measure_overhead(
    bundle: Bundle, runtime: str | RuntimeConfig | None = None, *, calls: int = 40
) -> Overhead:
    """`Overhead` of `bundle` on `runtime`, measured at batch 1: the cascade of every
    state with no early exit (``N`` hops) and the last state alone (the fast path; the
    merged static model for an early-exit bundle), about `calls` times each after a
    warm-up, in alternating rounds of a few calls. Each call's own cost is its wall time minus its runtime calls' time
    (`Prediction.latency_ms` ``steps``), so the models' own latency, and its noise, do
    not enter; medians. ``hop_ms = (cascade - alone) / N``: the fixed part the
    cascade's call pays beyond the fast path's is spread over its hops (a slight
    overstatement, the conservative side for a plan against the static model).

    A branches bundle is measured as the cascade over its branches runs: as an ensemble's
    members, each from the input (`edgeadapt.planning.branches`).
    """
    if bundle.kind == "branches":
        bundle = replace(bundle, kind="ensemble")
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise InputError(f"must be an integer >= 1, got {calls!r}", source="calls")
    n = len(bundle.states)
    high = 2.0  # above every maxprob: no row exits before the last state
    batch = warmup_batch(bundle)
    x: Any = batch[bundle.input.name] if len(batch) == 1 else batch
    with AdaptiveModel.load(bundle, runtime, thresholds=high, warmup=3) as full:
        assert full.runtime is not None
        with AdaptiveModel.alone(bundle, full.runtime, n - 1) as alone:
            alone.warm_up(3)
            got: dict[str, list[int]] = {"full": [], "alone": []}
            # rounds of a few calls of one model, as an application calls it; the first
            # of each round (caches the other model left) is not counted
            for _ in range(max(1, calls // _BLOCK)):
                for name, model in (("full", full), ("alone", alone)):
                    for k in range(_BLOCK + 1):
                        t = perf_counter_ns()
                        out = model.predict(x)
                        wall = perf_counter_ns() - t
                        if k:
                            got[name].append(wall - round(1e6 * sum(out.latency_ms["steps"])))
    cascade_ms = float(np.median(got["full"])) / 1e6
    call_ms = max(0.0, float(np.median(got["alone"])) / 1e6)
    return Overhead(hop_ms=max(0.0, (cascade_ms - call_ms) / n), call_ms=call_ms, hops=n)
