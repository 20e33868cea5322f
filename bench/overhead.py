"""What `AdaptiveModel.predict` adds to the model it runs, for a plan that keeps one state.

A plan that keeps one state deploys that state as one plain model: a family (ensemble)
member's own file, or for an early-exit bundle the merged static model
(`exporters.compose.whole_model`). Its `predict` should cost that model's runtime call
and little more. For each shipped demo bundle's most accurate state, at batch 1 on ONNX
Runtime with 1 thread, in one process:

- ORT: the bare `onnxruntime.InferenceSession.run` of the same model (the baseline);
- Session: our `Session.run(check=False)` (ORT's compiled fast path);
- predict: `AdaptiveModel.predict(x)` under the one-state plan (one native call: the
  input check, the call, the answer, the `Prediction`);
- ORT + one `np.empty(1)`: the bare call and one small numpy allocation after it, which
  shows what code run between two calls costs once a large model has filled the caches.

Each is timed around the public call (`perf_counter_ns`), in interleaved rounds (the
order rotating) of a few calls each, the first call of each block left out; medians.
Prints microseconds, predict's overhead over ORT (the difference of the medians, and
the median of the differences paired within each round, which the machine's drift
between rounds does not enter: the steadier figure for a model whose own time is
hundreds of microseconds) and over Session, and the ratios.

    python bench/overhead.py [--rounds 400] [--block 10]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.plan import Plan, SplitFigures
from edgeadapt.render import table

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
WARMUP = 10


def one_state_plan(bundle: Bundle, state: int) -> Plan:
    """A plan that keeps `state` alone; its record (accuracies, oracle) is filler, as
    nothing here reads it."""
    fig = SplitFigures(n=1, accuracy=1.0, reference_accuracy=1.0, drop=0.0, cost_ms=1.0)
    return Plan(
        manifest_sha256=bundle.manifest_sha256,
        kind=bundle.kind,
        bundle_states=tuple(s.name for s in bundle.states),
        measure="maxprob",
        states=(state,),
        thresholds=(),
        cost_ms=(1.0,),
        budget=(),
        reference_state=state,
        max_drop=0.01,
        calibration=fig,
        heldout=fig,
        drop_bound=0.0,
        delta=0.05,
        r_oracle=1.0,
        a_oracle=1.0,
        r_n=1.0,
        a_n=1.0,
        gap_closure=None,
        search_method="exhaustive",
        max_states=1,
        subsets_evaluated=1,
    )


def _timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        t = perf_counter_ns()
        fn()
        return perf_counter_ns() - t

    return run


def _rounds(
    fns: dict[str, Callable[[], float]], rounds: int, block: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Median (ns) of each function over `rounds` interleaved rounds of `block` calls, the
    first call of each block left out; the order within a round rotates. Also each
    round's block median per function, for differences paired within a round (the
    machine's drift between rounds cancels there)."""
    names = list(fns)
    got: dict[str, list[float]] = {n: [] for n in names}
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + WARMUP):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            values = [fns[name]() for _ in range(block)]
            if r >= WARMUP:
                got[name].extend(values[1:])
                per_round[name].append(float(np.median(values[1:])))
    medians = {n: float(np.median(v)) for n, v in got.items()}
    return medians, {n: np.asarray(v) for n, v in per_round.items()}


def one_state(name: str, rounds: int, block: int) -> tuple[str, list[float]]:
    bundle = load_bundle(BUNDLES / name)
    state = len(bundle.states) - 1
    plan = one_state_plan(bundle, state)
    x = np.random.default_rng(0).standard_normal((1, *bundle.input.shape[1:])).astype(np.float32)
    with AdaptiveModel.load(bundle, "onnxruntime", plan=plan, threads=1, warmup=3) as m:
        ((session, _),) = m._route[0].calls
        ort = session._session  # the InferenceSession our Session wraps
        feeds = {bundle.input.name: x}
        outs = [o.name for o in ort.get_outputs()]
        med, per_round = _rounds(
            {
                "ort": _timed(lambda: ort.run(outs, feeds)),
                "session": _timed(lambda: session.run(feeds, check=False)),
                "predict": _timed(lambda: m.predict(x)),
                "ort+alloc": _timed(lambda: (ort.run(outs, feeds), np.empty(1))),
            },
            rounds,
            block,
        )
    o, s, p = (med[k] / 1e3 for k in ("ort", "session", "predict"))
    paired = float(np.median(per_round["predict"] - per_round["ort"])) / 1e3
    alloc = float(np.median(per_round["ort+alloc"] - per_round["ort"])) / 1e3
    what = "merged static model" if m.static is not None else "member alone"
    label = f"{name} [{bundle.states[state].name}, {what}]"
    return label, [o, s, p, p - o, paired, p - s, p / o, alloc]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--block", type=int, default=10)
    args = ap.parse_args()
    rows = [one_state(n, args.rounds, args.block) for n in ("mnist1d-family", "mnist1d-multiexit")]
    print(
        f"one-state plan, batch 1, onnxruntime 1 thread; median over {args.rounds} interleaved "
        f"rounds of {args.block} calls (us)"
    )
    print(
        table(
            [
                "plan",
                "ORT run",
                "Session.run",
                "predict",
                "predict-ORT",
                "paired",
                "predict-Session",
                "/ORT",
            ],
            [[label, *(f"{v:.2f}" for v in us[:6]), f"{us[6]:.3f}x"] for label, us in rows],
        )
    )
    print("target: predict - ORT run < 2 us")
    print(
        "one np.empty(1) right after the call (paired, us): "
        + ", ".join(f"{label.split(' ')[0]} {us[7]:.2f}" for label, us in rows)
        + " (what any code run between two calls pays once the model has filled the caches)"
    )


if __name__ == "__main__":
    main()
