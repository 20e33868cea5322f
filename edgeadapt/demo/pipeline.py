"""The demo pipeline: data, profile, evaluate, bound, plan, run and report, with caching.

Every artefact lands under ``OUT/<runtime>-<threads>t/<bundle>-<sha8>/`` in the formats
the separate commands read and write (``profile.json``, ``evaluation-calibration.npz``,
``evaluation-test.npz``, ``plan.json``, ``report.html``), so ``edgeadapt bound`` and
``edgeadapt plan`` run on the same files give the same figures. A re-run reuses each
artefact that still loads and still belongs to the bundle (and rebuilds what depends on
anything rebuilt); ``force`` rebuilds everything. The run of the plan on the test split
is measured anew every time: it is the figure the demo is about.

Steps are profiled in ``chain`` order (called in turn, as the cascade calls them), so the
costs the plan is made on include the cache refills a sequential run pays; the profile
also times the whole model (backbone and last head), in the same interleaved rounds as
the steps, so the bound and the plan state their savings against that measured static
model as well as against R_N, the sum of the steps, and a busy machine cannot tilt the
comparison. The plan is the one `edgeadapt plan` makes with its defaults
(`edgeadapt.planning.planner.PlanOptions`); the comparison plan adds ``policy="gate"``.

The plan's achieved latency is measured against the *static model*: the bundle's best
state on the calibration split as one plain model (for an early-exit bundle its
backbone and its own head only, without the earlier heads), called directly on the same
runtime, interleaved sample by sample with the adaptive run so machine noise hits both.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import onnx

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.data.mnist1d import (
    CALIBRATION_SEED,
    DEFAULT_SEED,
    DEMO_CALIBRATION,
    calibration_samples,
    mnist1d_splits,
)
from edgeadapt.errors import EdgeadaptError, InputError, MissingExtraError
from edgeadapt.exporters.compose import whole_model
from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.device import device_id
from edgeadapt.formats.evaluation import (
    Evaluation,
    check_evaluation,
    load_evaluation,
    save_evaluation,
)
from edgeadapt.formats.npzio import ArraySpec, load_npz, save_npz
from edgeadapt.formats.plan import Plan, check_plan, load_plan, save_plan
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.formats.profile import Profile, Ratio, load_profile, save_profile
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.measure.profiler import TimingOptions, profile_bundle, profile_calls
from edgeadapt.oracle.bound import BundleBound, bundle_bound
from edgeadapt.oracle.equations import exact_oracle
from edgeadapt.planning.planner import (
    PlanCosts,
    PlanOptions,
    PlanSummary,
    gap_closure,
    plan_bundle,
    profile_costs,
)
from edgeadapt.report import write_report
from edgeadapt.runtimes import from_config

DEFAULT_OUT = Path("edgeadapt-demo")
#: The shipped bundles the demo runs, in the order it shows them: a compute-bound residual
#: CNN with an exit after each block (where a plan pays), and a family of three models too
#: small for any cascade to beat the static model (where the plan keeps it). The 4-exit
#: ``mnist1d-multiexit`` is shipped too, for the tests, benchmarks and examples.
BUNDLES = ("mnist1d-resnet", "mnist1d-family")
#: Untimed calls of each model before the measured run.
WARMUP = 20
#: Samples the plan and the static model run in turn (see `_measure_run`).
BLOCK = 50
#: The steps are profiled in turn, as the cascade calls them (`edgeadapt.measure.profiler`).
PROFILE_ORDER = "chain"

T = TypeVar("T")
Progress = Callable[[int, int], None]


class UI(Protocol):
    """Where the demo reports progress (the CLI shows lines and bars on stderr)."""

    def log(self, message: str) -> None:
        """One line of progress."""

    def bar(self, label: str, total: int) -> AbstractContextManager[Progress]:
        """A progress bar fed by ``(done, total)`` callbacks."""


class QuietUI:
    """Reports nothing: the default for callers of the API."""

    def log(self, message: str) -> None:
        return None

    def bar(self, label: str, total: int) -> AbstractContextManager[Progress]:
        return _silent()


@contextmanager
def _silent() -> Iterator[Progress]:
    yield lambda done, total: None


@dataclass(frozen=True)
class RunFigures:
    """The plan run for real on the test split, next to the static model."""

    samples: int
    accuracy: float
    static_accuracy: float
    mean_ms: float
    static_mean_ms: float
    p50_ms: float
    p99_ms: float
    static_p50_ms: float
    exits: list[int]
    expected_cost_ms: float
    static_cost_ms: float
    oracle_r: float
    oracle_a: float
    gap_closure: float | None

    @property
    def speedup(self) -> float:
        return self.static_mean_ms / self.mean_ms

    @property
    def predicted_speedup(self) -> float:
        """What the profile predicts for the same comparison as `speedup`: the static
        model's profiled cost over the plan's expected cost (`plain_cost_ms` for a plan
        of one state: 1 for the static model itself)."""
        return self.static_cost_ms / self.expected_cost_ms

    @property
    def drop(self) -> float:
        return self.static_accuracy - self.accuracy


@dataclass
class BundleResult:
    """Everything the demo found for one bundle (paths, figures, the plan)."""

    name: str
    bundle: Bundle
    work: Path
    state_names: list[str]
    test_accuracy: list[float]
    p50_ms: list[float]
    cost_ms: list[float]
    static_ms: float | None  # the profile's whole model (p50, batch 1)
    #: The full path over the whole model per interleaved round of the profile (batch 1).
    full_over_whole: Ratio | None
    bounds: BundleBound
    plan: PlanSummary
    run: RunFigures
    report: Path
    device: dict[str, Any]
    reused: list[str] = field(default_factory=list)
    #: The same plan with learned exit gates instead of thresholds (`plan --policy
    #: gate`), for comparison; None when no gate plan can be made for the bundle.
    gate_plan: PlanSummary | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.run
        return {
            "bundle": self.name,
            "kind": self.bundle.kind,
            "path": str(self.bundle.path),
            "work": str(self.work),
            "states": [
                {"name": n, "test_accuracy": a, "p50_ms": p, "cost_ms": c}
                for n, a, p, c in zip(
                    self.state_names, self.test_accuracy, self.p50_ms, self.cost_ms, strict=True
                )
            ],
            "static_ms": self.static_ms,
            "full_over_whole": None
            if self.full_over_whole is None
            else self.full_over_whole.to_json(),
            "bound": self.bounds.to_json(),
            "plan": self.plan.to_json(),
            "gate_plan": None if self.gate_plan is None else self.gate_plan.to_json(),
            "run": {
                "samples": r.samples,
                "accuracy": r.accuracy,
                "static_accuracy": r.static_accuracy,
                "drop": r.drop,
                "mean_ms": r.mean_ms,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "static_mean_ms": r.static_mean_ms,
                "static_p50_ms": r.static_p50_ms,
                "speedup": r.speedup,
                "predicted_speedup": r.predicted_speedup,
                "exits": r.exits,
                "expected_cost_ms": r.expected_cost_ms,
                "oracle": {"r_oracle": r.oracle_r, "a_oracle": r.oracle_a},
                "gap_closure": r.gap_closure,
            },
            "report": str(self.report),
            "reused": self.reused,
        }


@dataclass
class DemoResult:
    """The demo's figures for every bundle, and where its files are."""

    out: Path
    runtime: str
    threads: int
    device: dict[str, Any]
    bundles: list[BundleResult]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "runtime": self.runtime,
            "threads": self.threads,
            "device": self.device,
            "seconds": self.seconds,
            "bundles": [b.to_json() for b in self.bundles],
        }


# ------------------------------------------------------------------ caching


@dataclass
class _Cache(Generic[T]):
    """Load an artefact if it is there and valid, else make and save it."""

    ui: UI
    force: bool
    reused: list[str]

    def get(
        self,
        path: Path,
        load: Callable[[Path], T],
        make: Callable[[], T],
        save: Callable[[Path, T], None],
        *,
        stale: bool = False,
    ) -> tuple[T, bool]:
        """The artefact and whether it was (re)built."""
        if path.exists() and not (self.force or stale):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # e.g. a profile from another device
                    value = load(path)
            except (EdgeadaptError, Warning) as e:
                self.ui.log(f"  {path.name}: not reusable ({e}); rebuilding")
            else:
                self.reused.append(path.name)
                return value, False
        value = make()
        save(path, value)
        return value, True


# ------------------------------------------------------------------ steps


def _data(out: Path, ui: UI, force: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The calibration and test samples of MNIST-1D, cached: the test split of the
    shipped bundles' seed, and its calibration split with an extra draw of another seed
    (`edgeadapt.data.mnist1d.calibration_samples`: a larger held-out half lets the promise
    tolerate more losses, and none of it is a training sample)."""
    names = ("calibration", "test")
    tags = {
        "calibration": f"seed{DEFAULT_SEED}+{CALIBRATION_SEED}-calibration-{DEMO_CALIBRATION}",
        "test": f"seed{DEFAULT_SEED}-test",
    }
    paths = {n: out / "data" / f"mnist1d-{tags[n]}.npz" for n in names}
    spec = {"x": ArraySpec("f", 3), "y": ArraySpec("iu", 1)}
    if not force and all(p.exists() for p in paths.values()):
        try:
            loaded = {n: load_npz(p, spec) for n, p in paths.items()}
            if len(loaded["calibration"]["y"]) != DEMO_CALIBRATION:
                raise InputError(
                    f"expected {DEMO_CALIBRATION} samples", source=paths["calibration"]
                )
            return {n: (a["x"], a["y"]) for n, a in loaded.items()}
        except EdgeadaptError as e:
            ui.log(f"cached data not reusable ({e}); regenerating")
    ui.log(f"generating MNIST-1D (seeds {DEFAULT_SEED} and {CALIBRATION_SEED}) ...")
    splits = mnist1d_splits(DEFAULT_SEED)
    data = {"calibration": calibration_samples(splits), "test": splits.test}
    for n, p in paths.items():
        save_npz(p, x=data[n].x, y=data[n].y)
    return {n: (s.x, s.y) for n, s in data.items()}


def _bundles(out: Path, retrain: bool, ui: UI) -> list[Bundle]:
    """The shipped bundles, or with `retrain` the same models trained anew from the seed."""
    if not retrain:
        root = Path(__file__).resolve().parent / "bundles"
        return [load_bundle(root / name) for name in BUNDLES]
    try:
        from edgeadapt.demo.train import train_and_export
    except ImportError as e:
        raise MissingExtraError("torch", "torch", "edgeadapt demo --retrain") from e
    ui.log("retraining the demo models from the seed (needs minutes) ...")
    trained = train_and_export(out / "bundles", names=BUNDLES, force=True, log=ui.log)
    return [load_bundle(trained[name].path) for name in BUNDLES]


def _measure_run(
    bundle: Bundle,
    plan: Any,
    config: RuntimeConfig,
    x: np.ndarray,
    y: np.ndarray,
    reference: int,
    ui: UI,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per test sample at batch 1: the plan's prediction, exit state and latency, and the
    static model's prediction and latency. The two alternate in blocks of `BLOCK` samples
    (who goes first alternates too): within a block each runs as it would deployed, with
    its own weights in the cache, while load on the machine hits both alike."""
    with tempfile.TemporaryDirectory(prefix="edgeadapt-static-") as tmp:
        static_path = Path(tmp) / "static.onnx"
        onnx.save(whole_model(bundle, reference), str(static_path))
        static = from_config(config).load(static_path)
    logits_name = static.outputs[0].name
    input_name = bundle.input.name
    n = x.shape[0]
    pred = np.empty(n, np.int64)
    exits = np.empty(n, np.int64)
    lat = np.empty(n)
    static_pred = np.empty(n, np.int64)
    static_lat = np.empty(n)

    def adaptive(block: range) -> None:
        for i in block:
            t0 = perf_counter_ns()
            out = model.predict(x[i : i + 1])
            lat[i] = (perf_counter_ns() - t0) / 1e6
            pred[i], exits[i] = out.pred[0], out.exit_state[0]

    def plain(block: range) -> None:
        for i in block:
            t0 = perf_counter_ns()
            logits = static.run({input_name: x[i : i + 1]}, check=False)[logits_name]
            static_lat[i] = (perf_counter_ns() - t0) / 1e6
            static_pred[i] = int(np.argmax(logits[0]))

    load = AdaptiveModel.load(bundle, config, plan=plan, warmup=WARMUP)
    with static, load as model:
        plain(range(min(WARMUP, n)))
        with ui.bar("running the plan", n) as progress:
            for k, lo in enumerate(range(0, n, BLOCK)):
                block = range(lo, min(lo + BLOCK, n))
                for run in (adaptive, plain) if k % 2 == 0 else (plain, adaptive):
                    run(block)
                progress(block.stop, n)
    return pred, exits, lat, static_pred, static_lat


def plain_cost_ms(plan: Plan, costs: list[float], state: int) -> float:
    """The profiled cost of `state` as one plain model (how the static model, and a plan
    of one state, run): the measured whole model's for the last state; for another
    state, which the profile does not time alone, the whole model's in the share of the
    last state's cost that state's takes; the state's own cost when the profile has no
    whole model."""
    if plan.static_ms is None:
        return float(costs[state])
    if state == len(costs) - 1:
        return float(plan.static_ms)
    return float(plan.static_ms * costs[state] / costs[-1])


def _run_figures(
    bundle: Bundle,
    plan: Any,
    costs: list[float],
    evaluation_test: Any,
    measured: tuple[np.ndarray, ...],
    y: np.ndarray,
) -> RunFigures:
    pred, exits, lat, static_pred, static_lat = measured
    n = y.shape[0]
    if len(plan.states) == 1:  # one plain model, as the static model runs
        expected = plain_cost_ms(plan, costs, plan.states[0])
    else:
        kept_cost = dict(zip(plan.states, plan.cost_ms, strict=True))
        expected = float(np.mean([kept_cost[int(s)] for s in exits]))
    correct = evaluation_test.correct[:n]
    oracle = exact_oracle(correct, np.asarray(costs))
    return RunFigures(
        samples=n,
        accuracy=float(np.mean(pred == y)),
        static_accuracy=float(np.mean(static_pred == y)),
        mean_ms=float(lat.mean()),
        static_mean_ms=float(static_lat.mean()),
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        static_p50_ms=float(np.percentile(static_lat, 50)),
        exits=[int(np.sum(exits == s)) for s in range(len(bundle.states))],
        expected_cost_ms=expected,
        static_cost_ms=plain_cost_ms(plan, costs, plan.reference_state),
        oracle_r=oracle.r_oracle,
        oracle_a=oracle.a_oracle,
        gap_closure=gap_closure(float(costs[-1]), expected, oracle.r_oracle),
    )


def _cached_profile(
    bundle: Bundle,
    work: Path,
    cache: _Cache[Any],
    config: RuntimeConfig,
    min_seconds: float,
    ui: UI,
) -> tuple[Profile, bool]:
    """The bundle's chain-order profile with the whole model, reused when valid."""

    def make_profile() -> Profile:
        with ui.bar(f"profiling {bundle.path.name}", profile_calls(bundle, (1,))) as progress:
            return profile_bundle(
                bundle,
                config,
                progress=progress,
                timing=TimingOptions(min_seconds=min_seconds, order=PROFILE_ORDER),
            )

    def load_profile_(path: Path) -> Profile:
        p = load_profile(path, bundle)
        if p.order != PROFILE_ORDER:
            raise InputError(f"must be profiled in {PROFILE_ORDER} order", source=path)
        if p.whole_model is None:
            raise InputError("was profiled without the whole model", source=path)
        if not p.full_over_whole:
            raise InputError("timed the whole model apart from the steps", source=path)
        return p

    return cache.get(work / "profile.json", load_profile_, make_profile, save_profile)


def _cached_evaluation(
    bundle: Bundle,
    work: Path,
    cache: _Cache[Any],
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    split: str,
    config: RuntimeConfig,
    ui: UI,
) -> tuple[Evaluation, bool]:
    """The bundle's evaluation on one data split, reused when made for these states and
    labels."""
    names = [s.name for s in bundle.states]
    x, y = data[split]

    def make() -> Evaluation:
        with ui.bar(f"evaluating on {split}", len(y)) as progress:
            return evaluate_bundle(bundle, x, y, config, progress=progress)

    def load(path: Path) -> Evaluation:
        ev = check_evaluation(load_evaluation(path), bundle)
        if ev.names != tuple(names) or not np.array_equal(ev.labels, y):
            raise InputError("made for other states or other data", source=path)
        return ev

    return cache.get(work / f"evaluation-{split}.npz", load, make, save_evaluation)


def _cached_plan(
    bundle: Bundle,
    work: Path,
    cache: _Cache[Any],
    ev_calib: Evaluation,
    measured: PlanCosts,
    stale: bool,
) -> Plan:
    """The plan `edgeadapt plan` makes with its defaults, reused unless its inputs were
    rebuilt."""

    def load_plan_(path: Path) -> Plan:
        p = load_plan(path)
        check_plan(p, bundle, path)
        if p.static_ms != measured.static_ms:
            raise InputError("made without this profile's static model", source=path)
        if p.hop_overhead_ms != measured.hop_overhead_ms:
            raise InputError("made without this profile's cascade overhead", source=path)
        return p

    plan, _ = cache.get(
        work / "plan.json",
        load_plan_,
        # as `edgeadapt plan` with its defaults
        lambda: plan_bundle(bundle, ev_calib, measured),
        save_plan,
        stale=stale,
    )
    return plan


def _gate_plan(bundle: Bundle, ev_calib: Evaluation, measured: PlanCosts) -> PlanSummary | None:
    """The same split and promise with learned exit gates in place of thresholds, when
    the planner finds one."""
    try:
        gated = plan_bundle(bundle, ev_calib, measured, PlanOptions(policy="gate"))
        return PlanSummary(gated)
    except InputError:
        return None


def _demo_bundle(
    bundle: Bundle,
    work: Path,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    config: RuntimeConfig,
    force: bool,
    samples: int | None,
    min_seconds: float,
    ui: UI,
) -> BundleResult:
    names = [s.name for s in bundle.states]
    reused: list[str] = []
    cache: _Cache[Any] = _Cache(ui, force, reused)
    profile, stale = _cached_profile(bundle, work, cache, config, min_seconds, ui)
    ev_calib, calib_rebuilt = _cached_evaluation(
        bundle, work, cache, data, "calibration", config, ui
    )
    ev_test, _ = _cached_evaluation(bundle, work, cache, data, "test", config, ui)
    stale = stale or calib_rebuilt  # the plan is made from the profile and this evaluation
    measured = profile_costs(profile, bundle)
    costs = list(measured.state_ms)
    # on the Pareto envelope: a retrained or re-split model may have a costlier state
    # that is less accurate, which the analytic bounds would otherwise refuse
    bounds = bundle_bound(bundle, profile=profile, evaluation=ev_calib, envelope=True)
    plan = _cached_plan(bundle, work, cache, ev_calib, measured, stale)
    gate_plan = _gate_plan(bundle, ev_calib, measured)
    x, y = data["test"]
    if samples is not None:
        x, y = x[:samples], y[:samples]
    timed = _measure_run(bundle, plan, config, x, y, plan.reference_state, ui)
    run = _run_figures(bundle, plan, costs, ev_test, timed, y)
    ui.log(f"  writing the report for {bundle.path.name} ...")
    report = work / "report.html"
    write_report(bundle, profile=profile, evaluation=ev_calib, plan=plan, out=report)
    return BundleResult(
        name=bundle.path.name,
        bundle=bundle,
        work=work,
        state_names=names,
        test_accuracy=[float(a) for a in ev_test.accuracies],
        p50_ms=[s.p50 for s in profile.step_stats(1)],
        cost_ms=[float(c) for c in costs],
        static_ms=measured.static_ms,
        full_over_whole=profile.full_over_whole.get(1),
        bounds=bounds,
        plan=PlanSummary(plan, path=str(work / "plan.json")),
        run=run,
        report=report,
        device=profile.device,
        reused=reused,
        gate_plan=gate_plan,
    )


def run_demo(
    out: str | Path = DEFAULT_OUT,
    *,
    runtime: str = "onnxruntime",
    threads: int = 1,
    retrain: bool = False,
    force: bool = False,
    samples: int | None = None,
    min_seconds: float = 0.5,
    ui: UI | None = None,
) -> DemoResult:
    """Run the whole pipeline on MNIST-1D for each demo bundle (module docstring).

    `samples` limits the measured run to the first test samples (default: all 2,500);
    `min_seconds` is how long the profiler times each step.
    """
    ui = ui or QuietUI()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"must be a positive integer, got {threads!r}", source="threads")
    if samples is not None and (isinstance(samples, bool) or samples < 1):
        raise InputError(f"must be a positive integer, got {samples!r}", source="samples")
    # one configuration for the profile, the evaluations, the plan and the timed run
    config = RuntimeConfig.resolve(None, runtime=runtime, threads=threads)
    start = perf_counter()
    out = Path(out)
    data = _data(out, ui, force)
    results = []
    for bundle in _bundles(out, retrain, ui):
        work = out / f"{runtime}-{threads}t" / f"{bundle.path.name}-{bundle.manifest_sha256[:8]}"
        ui.log(f"{bundle.path.name}: {bundle.kind}, {len(bundle.states)} states -> {work}")
        results.append(
            _demo_bundle(
                bundle,
                work,
                data,
                config=config,
                force=force or retrain,
                samples=samples,
                min_seconds=min_seconds,
                ui=ui,
            )
        )
    return DemoResult(
        out=out,
        runtime=runtime,
        threads=threads,
        device={"id": device_id(), **results[0].device},
        bundles=results,
        seconds=perf_counter() - start,
    )
