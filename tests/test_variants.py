"""Precision variants as states: `export variants` (one bundle of several chains, manifest
version 3), the chain rule of what a cascade pays (`edgeadapt.formats.chains`), and the
pipeline across (exit, precision) states: evaluate, profile costs, the planner, the
cascade and the whole model of a state."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeadapt.cascade.model import AdaptiveModel, _hops
from edgeadapt.errors import InputError
from edgeadapt.exporters.compose import whole_model
from edgeadapt.exporters.variants import export_variants
from edgeadapt.formats.bundle import Bundle, BundleError, load_bundle
from edgeadapt.formats.chains import chain_costs, chain_starts, kept_costs, layout, paid_costs
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.formats.profile import state_costs
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.measure.profiler import TimingOptions, _full_over_whole, profile_bundle
from edgeadapt.planning.outcomes import Outcomes
from edgeadapt.planning.planner import PlanOptions, make_plan, simulate_plan
from edgeadapt.render import pct
from edgeadapt.report import _agreement, _draw_states, report_data
from edgeadapt.runtimes import from_config
from tests.clirun import invoke
from tests.plans import runner_plan
from tests.variants import rounded_variant

ROOT = Path(__file__).resolve().parents[1]
RESNET = ROOT / "edgeadapt" / "demo" / "bundles" / "mnist1d-resnet"
FAMILY = ROOT / "edgeadapt" / "demo" / "bundles" / "mnist1d-family"


# ------------------------------------------------------------------ the chain rule


@st.composite
def _chained(draw: st.DrawFn) -> tuple[tuple[int, ...], np.ndarray, tuple[int, ...]]:
    """Contiguous chains (their lengths), step costs, and kept states in bundle order."""
    lengths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    chains = tuple(c for c, n in enumerate(lengths) for _ in range(n))
    steps = np.array(draw(st.lists(st.floats(0, 10), min_size=len(chains), max_size=len(chains))))
    kept = draw(st.sets(st.integers(0, len(chains) - 1), min_size=1))
    return chains, steps, tuple(sorted(kept))


def _simulated(chains: tuple[int, ...], steps: np.ndarray, kept: tuple[int, ...]) -> list[float]:
    """What a sample stopping at each kept state pays, by running the cascade: each hop
    runs its chain's steps after the last one run in that chain (from the input when
    none ran), and the sample pays every step run."""
    ran: dict[int, int] = {}  # chain -> last step run
    paid, out = 0.0, []
    starts = chain_starts(chains)
    for s in kept:
        first = ran.get(chains[s], starts[s] - 1) + 1
        paid += float(steps[first : s + 1].sum())
        ran[chains[s]] = s
        out.append(paid)
    return out


@given(_chained())
def test_chain_rule_equals_a_simulated_cascade(case):
    chains, steps, kept = case
    got = paid_costs(chain_costs(steps, chains), kept, chains)
    np.testing.assert_allclose(got, _simulated(chains, steps, kept), rtol=1e-9, atol=1e-9)


@dataclass(frozen=True)
class _Layout:
    """What `_hops` reads of a bundle: its kind and chains."""

    chains: tuple[int, ...]
    kind: str = "early-exit"

    def state_steps(self, state: int) -> tuple[int, ...]:
        return tuple(range(chain_starts(self.chains)[state], state + 1))


@given(_chained())
def test_cascade_hops_pay_the_chain_rule(case):
    chains, steps, kept = case
    hops = _hops(cast(Bundle, _Layout(chains)), kept)
    assert [h.state for h in hops] == list(kept)
    paid = np.cumsum([steps[list(h.steps)].sum() for h in hops])
    np.testing.assert_allclose(
        paid, paid_costs(chain_costs(steps, chains), kept, chains), atol=1e-9
    )


@given(st.lists(st.floats(0, 10), min_size=1, max_size=8), st.data())
def test_chain_rule_is_the_early_exit_and_ensemble_rules(costs, data):
    costs = np.array(costs)
    kept = tuple(sorted(data.draw(st.sets(st.integers(0, len(costs) - 1), min_size=1))))
    cols = list(kept)
    # early-exit: one chain, state costs already cumulative: a sample pays R_j
    np.testing.assert_allclose(kept_costs(costs, kept, "early-exit"), costs[cols])
    # ensemble: each member its own chain: the sum of the kept members up to j
    np.testing.assert_allclose(kept_costs(costs, kept, "ensemble"), np.cumsum(costs[cols]))
    # branches are not cascaded: one branch pays its own cost
    np.testing.assert_allclose(kept_costs(costs, kept, "branches"), costs[cols])
    assert layout("early-exit", len(costs)) == (0,) * len(costs)
    np.testing.assert_allclose(
        chain_costs(costs, layout("early-exit", len(costs))), np.cumsum(costs)
    )
    np.testing.assert_allclose(chain_costs(costs, layout("ensemble", len(costs))), costs)


def test_chain_rule_on_two_chains():
    # int8 exits 0..2 cost 1, 2, 3 (cumulative); fp32 exits 0..2 cost 2, 4, 6
    costs = [1.0, 2.0, 3.0, 2.0, 4.0, 6.0]
    chains = (0, 0, 0, 1, 1, 1)
    # int8 exit0, int8 exit1, fp32 exit2: 1, 2, then 2 + 6
    np.testing.assert_allclose(paid_costs(costs, (0, 1, 5), chains), [1.0, 2.0, 8.0])
    np.testing.assert_allclose(kept_costs(costs, (0, 5), chains), [1.0, 7.0])


# ------------------------------------------------------------------ the bundle


@pytest.fixture(scope="module")
def stacked(tmp_path_factory) -> dict:
    """The demo resnet with an fp16-rounded twin, combined (fp16r first, fp32 last)."""
    tmp = tmp_path_factory.mktemp("variants")
    twin = rounded_variant(RESNET, tmp / "fp16r")
    both = export_variants([twin.path, RESNET], tmp / "both")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 1, 40)).astype(np.float32)
    y = rng.integers(0, 10, 96)
    return {"tmp": tmp, "twin": twin, "both": both, "x": x, "y": y}


def test_combined_bundle_is_version_3_with_two_chains(stacked):
    both = stacked["both"]
    doc = json.loads((both.path / "manifest.json").read_text())
    assert doc["version"] == 3
    assert both.chain_names == ("fp16r",) * 4 + ("mnist1d-resnet",) * 4
    assert both.chains == (0, 0, 0, 0, 1, 1, 1, 1)
    assert [s.name for s in both.states][:2] == ["exit0@fp16r", "exit1@fp16r"]
    assert both.states[5].files == ("chain1/step0.onnx", "chain1/step1.onnx")
    assert both.state_steps(6) == (4, 5, 6)
    src = load_bundle(RESNET)
    assert [s.flops for s in both.states] == [s.flops for s in src.states] * 2
    # every copy is its source's file
    assert both.files["chain1/step2.onnx"] == src.files["step2.onnx"]


def test_combined_evaluation_equals_the_sources(stacked):
    both, twin, x, y = stacked["both"], stacked["twin"], stacked["x"], stacked["y"]
    ev = evaluate_bundle(both, {"x": x}, y, batch=32)
    for k, src in enumerate((twin, load_bundle(RESNET))):
        one = evaluate_bundle(src, {"x": x}, y, batch=32)
        cols = slice(4 * k, 4 * k + 4)
        np.testing.assert_array_equal(ev.pred[:, cols], one.pred)
        np.testing.assert_allclose(ev.conf[:, cols], one.conf, rtol=1e-6)


def test_state_costs_follow_each_chain(stacked):
    both = stacked["both"]
    timing = TimingOptions(iters=10, warmup=2, whole=True, overhead=False)
    profile = profile_bundle(both, "onnxruntime", timing)
    steps = state_costs(profile, both, view="step")
    np.testing.assert_allclose(
        state_costs(profile, both), [*np.cumsum(steps[:4]), *np.cumsum(steps[4:])]
    )


def test_whole_model_of_a_later_chain_state(stacked):
    both, x = stacked["both"], stacked["x"]
    import onnxruntime as ort

    model = whole_model(both, 6)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    rt = from_config(RuntimeConfig("onnxruntime", threads=1))
    tensors = {"x": x}
    for i in (4, 5, 6):
        s = rt.load(both.steps[i].path)
        tensors.update(s.run({n: tensors[n] for n in both.steps[i].inputs}))
        s.close()
    np.testing.assert_allclose(got, tensors[both.steps[6].logits], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the cascade


@pytest.mark.parametrize("batch", [1, 96])
def test_mixed_plan_runs_as_its_simulation(stacked, batch):
    both, x, y = stacked["both"], stacked["x"], stacked["y"]
    ev = evaluate_bundle(both, {"x": x}, y, batch=32)
    # fp16r exits 0 and 1, then the fp32 last exit; costs by the chain rule
    plan = runner_plan(both, (0, 1, 7), (0.7, 0.8), (1.0, 2.0, 6.0), budget=False)
    want = simulate_plan(plan, Outcomes.from_evaluation(ev, "maxprob"))
    kept = np.asarray(plan.states)
    with AdaptiveModel.load(both, plan=plan) as m:
        assert [h.steps for h in m.hops] == [(0,), (1,), (4, 5, 6, 7)]
        out = [m.predict(x[i : i + batch]) for i in range(0, len(x), batch)]
    exit_state = np.concatenate([o.exit_state for o in out])
    pred = np.concatenate([o.pred for o in out])
    np.testing.assert_array_equal(exit_state, kept[want.exit_state])
    np.testing.assert_array_equal(pred, ev.pred[np.arange(len(x)), exit_state])
    assert len(set(exit_state)) > 1  # the plan exits at several states here


def test_one_state_of_a_later_chain_runs_alone(stacked):
    both, x, y = stacked["both"], stacked["x"], stacked["y"]
    ev = evaluate_bundle(both, {"x": x}, y, batch=32)
    plan = runner_plan(both, (6,), (), (3.0,), budget=False)
    with AdaptiveModel.load(both, plan=plan) as m:
        out = m.predict(x)
    np.testing.assert_array_equal(out.pred, ev.pred[:, 6])


# ------------------------------------------------------------------ the planner


def _outcomes(rng: np.random.Generator, n: int, acc: list[float]) -> Outcomes:
    """Synthetic outcomes: state s right with probability acc[s] (more often when the
    sample is easy), its confidence higher when right."""
    easy = rng.random(n)
    correct = np.stack([easy < a for a in acc], axis=1)
    conf = np.clip(0.55 + 0.4 * correct + 0.1 * rng.standard_normal(correct.shape), 0.1, 1.0)
    names = tuple(f"s{i}" for i in range(len(acc)))
    return Outcomes(names, correct, conf.astype(np.float64), "maxprob")


def test_planner_over_both_chains_is_at_most_the_reference_chain_alone():
    rng = np.random.default_rng(5)
    # chain 0 (int8-like): cheaper, slightly less accurate; chain 1 (fp32) holds the reference
    acc = [0.80, 0.90, 0.93, 0.82, 0.92, 0.95]
    costs = np.array([0.5, 1.0, 1.5, 0.8, 1.6, 2.4])
    chains = (0, 0, 0, 1, 1, 1)
    calib, held = _outcomes(rng, 4000, acc), _outcomes(rng, 4000, acc)
    options = PlanOptions(max_drop=0.005, calibration="empirical", max_states=3)
    sha = "0" * 64
    mixed = make_plan(calib, held, costs, manifest_sha256=sha, options=options, chains=chains)
    cols = [3, 4, 5]

    def only(o: Outcomes) -> Outcomes:
        return Outcomes(
            tuple(o.names[c] for c in cols), o.correct[:, cols], o.conf[:, cols], "maxprob"
        )

    alone = make_plan(only(calib), only(held), costs[cols], manifest_sha256=sha, options=options)
    assert mixed.reference_state == 5
    assert alone.reference_state == 2
    assert mixed.calibration.cost_ms <= alone.calibration.cost_ms + 1e-12
    assert {chains[s] for s in mixed.states} == {0, 1}  # it mixes the chains here
    # the plan's costs are the chain rule's
    np.testing.assert_allclose(mixed.cost_ms, paid_costs(costs, mixed.states, chains))
    # a budget row's cost is the route's to its state (the cascade up to it)
    for row in mixed.budget:
        assert row.budget_ms == pytest.approx(mixed.cost_ms[mixed.states.index(row.state)])


def test_planner_refuses_chains_that_are_not_contiguous():
    rng = np.random.default_rng(1)
    o = _outcomes(rng, 200, [0.8, 0.9, 0.95])
    with pytest.raises(InputError, match="contiguous") as e:
        make_plan(o, o, [1.0, 2.0, 3.0], manifest_sha256="0" * 64, chains=(0, 1, 0))
    assert e.value.field == "chains"


# ------------------------------------------------------------------ refused inputs


def test_different_structures_are_refused_by_name(stacked, tmp_path):
    other = Path(shutil.copytree(RESNET, tmp_path / "other"))
    doc = json.loads((other / "manifest.json").read_text())
    doc["states"][1]["name"] = "middle"
    (other / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"states \['exit0', 'middle'") as e:
        export_variants([RESNET, other], tmp_path / "o")
    assert e.value.source == str(other / "manifest.json")
    assert e.value.field == "$.states"
    with pytest.raises(
        InputError, match="one-chain early-exit bundles; this one has kind ensemble"
    ):
        export_variants([RESNET, FAMILY], tmp_path / "o")
    with pytest.raises(InputError, match="several chains"):
        export_variants([stacked["both"].path, RESNET], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_duplicate_chains_are_refused(stacked, tmp_path):
    with pytest.raises(InputError, match="the same bundle as"):
        export_variants([RESNET, RESNET], tmp_path / "o", names=["a", "b"])
    with pytest.raises(InputError, match="duplicate chain name 'a'") as e:
        export_variants([stacked["twin"].path, RESNET], tmp_path / "o", names=["a", "a"])
    assert e.value.field == "names[1]"
    with pytest.raises(InputError, match="a chain name is"):
        export_variants([stacked["twin"].path, RESNET], tmp_path / "o", names=["a@b", "c"])


def test_cli_export_variants_refuses_with_exit_code_2(stacked, tmp_path):
    out = tmp_path / "o"
    twin = str(stacked["twin"].path)
    result = invoke("export", "variants", twin, RESNET, "-o", out, "--name", "x", "--name", "x")
    assert result.exit_code == 2
    assert "duplicate chain name 'x'" in result.output
    result = invoke("export", "variants", twin, RESNET, "-o", out, "--name", "q", "--name", "f")
    assert result.exit_code == 0, result.output
    assert "exit3@f" in result.output
    assert load_bundle(out).chain_names[0] == "q"


def _manifest_edit(stacked, tmp_path: Path, edit) -> Path:
    d = Path(shutil.copytree(stacked["both"].path, tmp_path / "b"))
    doc = json.loads((d / "manifest.json").read_text())
    edit(doc)
    (d / "manifest.json").write_text(json.dumps(doc))
    return d


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["states"][5].update(chain="fp16r"), r"\$\.states\[5\]\.chain: .*contiguous"),
        (lambda d: d["states"][2].pop("chain"), r"\$\.states\[2\]\.chain: missing"),
        (lambda d: [s.update(chain="one") for s in d["states"]], r"\$\.states: .*at least two"),
        (lambda d: d.update(version=2), r"\$\.states\[0\]\.chain: chains need manifest version 3"),
        (lambda d: d.update(kind="ensemble"), r"\$\.kind: version 3 is an early-exit"),
        # the first step of the second chain must read the model inputs
        (lambda d: d["states"][4].update(inputs=["activation3"]), r"\$\.states\[4\]\.inputs"),
    ],
)
def test_bad_v3_manifests_are_refused_by_field(stacked, tmp_path, edit, message):
    d = _manifest_edit(stacked, tmp_path, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(d, verify=False)


# ------------------------------------------------------------------ the report


class _Axes:
    """Records what `plot` draws."""

    def __init__(self) -> None:
        self.lines: list[tuple[list[float], list[float], str]] = []

    def plot(self, x, y, fmt, label, zorder) -> None:
        self.lines.append((list(x), list(y), label))


def test_report_draws_each_chain_by_state_name(stacked):
    both = stacked["both"]
    names = [s.name for s in both.states]
    order = [0, 4, 1, 5, 2, 6, 3, 7]  # the bound's order: by cost, chains interleaved
    costs = np.array([float(i) for i in order])
    ax = _Axes()
    _draw_states(ax, both, [names[i] for i in order], costs, costs * 10)
    (x0, _, label0), (x1, y1, label1) = ax.lines
    assert label0 == "states of chain fp16r"
    assert x0 == [0.0, 1.0, 2.0, 3.0]
    assert label1 == "states of chain mnist1d-resnet"
    assert (x1, y1) == ([4.0, 5.0, 6.0, 7.0], [40.0, 50.0, 60.0, 70.0])


def test_report_states_agree_with_the_reference_chain(stacked, tmp_path):
    both, x, y = stacked["both"], stacked["x"], stacked["y"]
    ev = evaluate_bundle(both, {"x": x}, y, batch=32)
    timing = TimingOptions(iters=10, warmup=2, whole=False, overhead=False)
    profile = profile_bundle(both, "onnxruntime", timing)
    data = report_data(both, profile=profile, evaluation=ev)
    agree = _agreement(data)
    assert agree is not None
    assert agree["exit2@mnist1d-resnet"] == "100.00%"
    want = float((ev.pred[:, 1] == ev.pred[:, 5]).mean())
    assert agree["exit1@fp16r"] == pct(want, 2)


def test_r_n_is_named_by_its_chain_in_the_report_and_the_plan(stacked, tmp_path):
    """In a bundle of several chains R_N is one chain's steps, not the sum of every step:
    the bound names the chain of its baseline state, the plan (whose R_N is the last
    state's cost) the last chain, in the report and in `edgeadapt plan`'s text."""
    from edgeadapt.commands.plan import plan_text
    from edgeadapt.oracle.bound import r_n_chain
    from edgeadapt.planning.planner import PlanSummary, plan_bundle, profile_costs
    from edgeadapt.report import render_report

    both, x, y = stacked["both"], stacked["x"], stacked["y"]
    ev = evaluate_bundle(both, {"x": x}, y, batch=32)
    timing = TimingOptions(iters=10, warmup=2, whole=False, overhead=False)
    profile = profile_bundle(both, "onnxruntime", timing)
    plan = plan_bundle(both, ev, profile_costs(profile, both), PlanOptions(max_drop=0.5))
    data = report_data(both, profile=profile, evaluation=ev, plan=plan)
    summary = data.bound.summary
    names = [s.name for s in both.states]
    baseline = names.index(summary.baseline)
    chain = both.chain_names[baseline]
    steps = state_costs(profile, both, stat="p50")
    assert summary.r_n == pytest.approx(steps[baseline])  # its chain's steps up to it alone
    assert data.bound.r_n_what == f"the sum of chain {chain}'s steps"
    assert r_n_chain(both) == "mnist1d-resnet"
    assert plan.r_n == pytest.approx(steps[-1])  # the last chain's steps
    page = render_report(data, tmp_path / "r.html")[-1].read_text()
    assert f"R_N: the sum of chain {chain}&#x27;s steps ({summary.baseline})" in page
    assert "vs R_N, the sum of chain mnist1d-resnet&#x27;s steps" in page
    assert "the sum of the steps" not in page
    text = plan_text(PlanSummary(plan), r_n_chain(both))
    assert "vs R_N, the sum of chain mnist1d-resnet's steps:" in text


def test_full_path_is_the_last_chain():
    rounds = np.array([[1.0, 2.0, 3.0, 4.0, 7.0], [1.0, 2.0, 5.0, 5.0, 5.0]])
    # two chains of two steps: the full path is the second chain's steps
    ratio = _full_over_whole((0, 0, 1, 1), rounds)
    assert ratio.median == pytest.approx((7 / 7 + 10 / 5) / 2)


def test_a_named_reference_holds_plans_to_the_same_state():
    rng = np.random.default_rng(7)
    # the int8-like chain's last state (2) beats the fp32 last state (5) on these samples
    acc = [0.80, 0.90, 0.97, 0.82, 0.92, 0.95]
    costs = np.array([0.5, 1.0, 1.5, 0.8, 1.6, 2.4])
    chains = (0, 0, 0, 1, 1, 1)
    calib, held = _outcomes(rng, 4000, acc), _outcomes(rng, 4000, acc)
    sha = "0" * 64
    options = PlanOptions(max_drop=0.005, calibration="empirical", max_states=3)
    default = make_plan(calib, held, costs, manifest_sha256=sha, options=options, chains=chains)
    assert default.reference_state == 2
    named = make_plan(
        calib,
        held,
        costs,
        manifest_sha256=sha,
        options=replace(options, reference="s5"),
        chains=chains,
    )
    assert named.reference_state == 5
    ref_acc = float(held.correct[:, 5].mean())
    assert named.heldout.drop == pytest.approx(ref_acc - named.heldout.accuracy)
    # the constraint is the named state's accuracy: the plan is no costlier than it
    assert named.calibration.cost_ms <= costs[5] + 1e-12
    with pytest.raises(InputError, match=r"no state named 'fp32'; the states are \['s0'") as e:
        make_plan(
            calib, held, costs, manifest_sha256=sha, options=replace(options, reference="fp32")
        )
    assert e.value.field == "reference"
