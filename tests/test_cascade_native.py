"""The native batch-1 cascade of `AdaptiveModel.predict` (`edgeadapt.kernel.CascadeCall`):
the same answers, exits, budget exits and steps run as the Python loop, row for row, on
MNIST-1D test rows and random ones, for every measure, several threshold vectors and
budgets; outputs it cannot vouch for take the loop, which words the error as before."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.cascade.model import AdaptiveModel, Prediction, _Hop
from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.plan import BudgetRow
from edgeadapt.formats.plan import Gate as Gate2
from edgeadapt.kernel import CascadeCall, Gate, Policy, confidence
from edgeadapt.kernel_ref import gate_decide
from edgeadapt.runtimes import get_runtime
from tests.backends import CPU_RUNTIMES
from tests.plans import runner_plan

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
ORT = {"threads": 1}
MEASURES = ("maxprob", "margin", "entropy")
HUGE, TINY = 1e9, 1e-9


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """MNIST-1D test rows, random rows and a few extreme ones, float32 [N, 1, 40]."""
    from edgeadapt.data.mnist1d import mnist1d_splits

    test = mnist1d_splits(n_train=10, n_calibration=10, n_test=24).test.x
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((12, 1, 40)).astype(np.float32)
    extreme = np.stack([np.zeros((1, 40)), np.full((1, 40), 1e4), np.full((1, 40), -1e4)])
    return np.concatenate([test.astype(np.float32), noise, extreme.astype(np.float32)])


def _python(m: AdaptiveModel, x, budget_ms=None) -> Prediction:
    """`m.predict` with the native cascade turned off: the Python loop."""
    native, m._cascade = m._cascade, None
    try:
        return m.predict(x, budget_ms=budget_ms)
    finally:
        m._cascade = native


def _same(got: Prediction, want: Prediction) -> None:
    np.testing.assert_array_equal(got.pred, want.pred)
    assert got.conf.tobytes() == want.conf.tobytes()  # bit for bit, NaN included
    np.testing.assert_array_equal(got.exit_state, want.exit_state)
    np.testing.assert_array_equal(got.budget_exit, want.budget_exit)
    for a, b in ((got.pred, want.pred), (got.conf, want.conf), (got.exit_state, want.exit_state)):
        assert a.dtype == b.dtype
        assert a.shape == b.shape
    assert got.budget_exit.dtype == want.budget_exit.dtype
    assert len(got.latency_ms["steps"]) == len(want.latency_ms["steps"])
    assert got.latency_ms["rows"] == want.latency_ms["rows"]
    assert list(got.latency_ms) == list(want.latency_ms)


def _thresholds(bundle, rows: np.ndarray, measure: str, kind: str) -> list[float]:
    """One per state but the last: never exit, always exit at the first state, or each
    state's median confidence on `rows` (about half the rows left at each)."""
    n = len(bundle.states) - 1
    if kind == "never":
        return [2.0] * n
    if kind == "always":
        return [-1e9] * n
    with AdaptiveModel.load(bundle, "onnxruntime", thresholds=2.0, runtime_options=ORT) as m:
        got = []
        for j in range(n):
            step = bundle.steps[j]
            if bundle.kind == "early-exit":  # the state's logits after the steps before it
                env = {bundle.input.name: rows}
                for i in range(j + 1):
                    env.update(m.sessions[i].run({k: env[k] for k in bundle.steps[i].inputs}))
                logits = env[step.logits]
            else:
                logits = m.sessions[j].run({bundle.input.name: rows})[step.logits]
            got.append(float(np.median(confidence(np.ascontiguousarray(logits), measure))))
    return got


@pytest.mark.parametrize("name", ["mnist1d-multiexit", "mnist1d-family"])
@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("kind", ["never", "always", "mixed"])
def test_native_cascade_answers_as_the_python_loop(rows, name, measure, kind):
    bundle = load_bundle(BUNDLES / name)
    thresholds = _thresholds(bundle, rows, measure, kind)
    with AdaptiveModel.load(
        bundle, "onnxruntime", thresholds=thresholds, measure=measure, runtime_options=ORT
    ) as m:
        assert m._cascade is not None
        exits = set()
        for i in range(len(rows)):
            x = rows[i : i + 1]
            got = m._cascade(x, None)  # the native call itself answers
            assert type(got) is Prediction
            _same(got, _python(m, x))
            _same(m.predict(x), got)
            exits.add(int(got.exit_state[0]))
            assert got.latency_ms["rows"] == [1] * len(got.latency_ms["steps"])
            assert got.latency_ms["total"] >= sum(got.latency_ms["steps"]) > 0
        last = len(bundle.states) - 1
        assert exits == {"never": {last}, "always": {0}}.get(kind, exits)
        if kind == "mixed":
            assert len(exits) > 1  # the thresholds spread the rows over several exits


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
@pytest.mark.parametrize("budget", [None, TINY, HUGE])
def test_each_runtime_answers_natively_as_its_python_loop(rows, runtime, budget):
    """Each CPU runtime's outputs are ones the native cascade reads itself (it never
    hands a batch of one row back), with the loop's answers."""
    with _plan_model("mnist1d-multiexit", table=True, thresholds=0.6, runtime=runtime) as m:
        for i in range(0, len(rows), 2):
            x = rows[i : i + 1]
            got = m._cascade(x, budget)
            assert type(got) is Prediction
            _same(got, _python(m, x, budget))


def test_arrays_are_fresh_and_writeable_per_call(rows):
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    with AdaptiveModel.load(bundle, "onnxruntime", thresholds=2.0, runtime_options=ORT) as m:
        a, b = m.predict(rows[:1]), m.predict(rows[1:2])
        for field in ("pred", "conf", "exit_state", "budget_exit"):
            x, y = getattr(a, field), getattr(b, field)
            assert x is not y
            assert x.flags.writeable
            assert x.flags.c_contiguous


@pytest.mark.parametrize("measure", MEASURES)
def test_nan_logits_never_exit_and_end_as_the_loop_ends(tmp_path, measure):
    """Rows whose logits are NaN at every state: pred -1 and conf NaN at the last one."""
    from edgeadapt.formats.bundle import InputSpec, write_bundle
    from tests.test_cascade import _log_member

    bundle = write_bundle(
        tmp_path / "b",
        kind="ensemble",
        input=InputSpec("x", ("batch", 1, 40)),
        num_classes=10,
        models=[_log_member(0), _log_member(1), _log_member(2)],
        producer={"exporter": "test", "source_sha256": "0" * 64},
    )
    x = np.abs(np.random.default_rng(0).standard_normal((4, 1, 40))).astype(np.float32)
    x[[1, 3]] *= -1  # these rows give NaN logits at every state
    with AdaptiveModel.load(bundle, thresholds=-1e9, measure=measure) as m:
        assert m._cascade is not None
        for i in range(len(x)):
            got = m._cascade(x[i : i + 1], None)
            assert type(got) is Prediction
            _same(got, _python(m, x[i : i + 1]))
            if i in (1, 3):
                assert got.pred.tolist() == [-1]
                assert np.isnan(got.conf[0])
                assert got.exit_state.tolist() == [2]
            else:
                assert got.exit_state.tolist() == [0]


def _plan_model(
    name: str, *, table: bool, thresholds: float = 2.0, runtime: str = "onnxruntime", **plan_fields
):
    bundle = load_bundle(BUNDLES / name)
    n = len(bundle.states)
    costs = tuple(100.0 * (s + 1) for s in range(n))  # ms to each state: far above the steps
    rows_ = None
    if table:  # state 1 the most accurate: a large budget picks it
        accuracy = (0.5, 0.97, *[0.8] * (n - 2))
        rows_ = tuple(
            BudgetRow(budget_ms=c, state=s, accuracy=a)
            for s, c, a in zip(range(n), costs, accuracy, strict=True)
        )
    plan = runner_plan(
        bundle, tuple(range(n)), (thresholds,) * (n - 1), costs, budget=False, table=rows_
    )
    if plan_fields:
        plan = replace(plan, **plan_fields)
    return AdaptiveModel.load(bundle, runtime, plan=plan, runtime_options=ORT, warmup=2)


@pytest.mark.parametrize("name", ["mnist1d-multiexit", "mnist1d-family"])
@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("budget", [TINY, 1.0, HUGE, 10**9])
@pytest.mark.parametrize("thresholds", [2.0, 0.5])
def test_budgets_end_where_the_python_loop_ends(rows, name, table, budget, thresholds):
    with _plan_model(name, table=table, thresholds=thresholds) as m:
        assert m._cascade is not None
        for i in range(0, len(rows), 3):
            x = rows[i : i + 1]
            got = m._cascade(x, budget)
            assert type(got) is Prediction
            _same(got, _python(m, x, budget))
        if table and budget in (HUGE, 10**9) and thresholds == 2.0:
            # the table's pick, state 1, answers: through state 0 (early exit) or alone
            steps = 2 if m.bundle.kind == "early-exit" else 1
            assert got.exit_state.tolist() == [1]
            assert len(got.latency_ms["steps"]) == steps
            assert not got.budget_exit[0]
        if budget in (TINY, 1.0) and thresholds == 2.0:  # nothing fits after the first
            assert got.budget_exit.tolist() == [True]
            assert len(got.latency_ms["steps"]) == 1


def test_the_hop_overhead_counts_against_the_budget(rows):
    """A budget every hop fits but for the plan's overhead per hop exits after the first."""
    x = rows[:1]
    with _plan_model("mnist1d-multiexit", table=False) as free:
        got = free.predict(x, budget_ms=5000.0)
        _same(got, _python(free, x, 5000.0))
        assert not got.budget_exit[0]
    with _plan_model("mnist1d-multiexit", table=False, hop_overhead_ms=4900.0) as costly:
        assert costly._hop_overhead_ms == 4900.0
        got = costly.predict(x, budget_ms=5000.0)
        _same(got, _python(costly, x, 5000.0))
        assert got.budget_exit.tolist() == [True]
        assert got.exit_state.tolist() == [0]


def test_costs_are_observed_and_a_skipped_hop_decays_as_the_loop_does(rows):
    x = rows[:1]
    with _plan_model("mnist1d-multiexit", table=False) as m:
        ewma, priors = m.policy.ewma, m.policy.costs_ms
        m.predict(x, budget_ms=HUGE)  # every hop runs and is observed (far below the prior)
        after = m.policy.costs_ms
        assert all(a < p for a, p in zip(after, priors, strict=True))
        m.predict(x, budget_ms=50.0)  # hop 0 runs; hop 1 (90 ms predicted) does not fit
        got = m.policy.costs_ms
        assert got[0] < after[0]
        for j in range(1, 4):  # hop 1 skipped: one step back toward its prior; the rest alone
            want = (1 - ewma) * after[j] + ewma * priors[j] if j == 1 else after[j]
            assert got[j] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("batch", [2, 5])
def test_other_batches_budgets_and_feeds_take_the_python_loop(rows, batch):
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    with AdaptiveModel.load(bundle, "onnxruntime", thresholds=0.6, runtime_options=ORT) as m:
        c = m._cascade
        x = rows[:batch]
        assert c(x, None) is None
        assert c(rows[:1], None) is not None
        assert c({bundle.input.name: rows[:1]}, None) is None  # a mapping: the loop
        assert c(rows[:1], 1.0) is None  # no costs known: the loop refuses the budget
        view = np.repeat(rows[:1], 2, axis=2)[:, :, ::2]
        assert c(view, None) is None
        _same(m.predict(x), _python(m, x))
        with pytest.raises(InputError, match="predicted step costs"):
            m.predict(rows[:1], budget_ms=1.0)
    with _plan_model("mnist1d-multiexit", table=False) as p:
        c = p._cascade
        for odd in (True, np.float32(5.0), 0.0, -1.0, float("nan"), float("inf"), "5"):
            assert c(rows[:1], odd) is None
        assert c(rows[:1], np.float64(5.0)) is not None
        for odd in (True, 0.0, -1.0, float("nan"), float("inf"), "5"):
            with pytest.raises(InputError) as e:
                p.predict(rows[:1], budget_ms=odd)
            assert e.value.source == "budget_ms"


def test_a_branches_bundle_without_a_budget_table_runs_its_last_branch_alone():
    bundle = load_bundle(BUNDLES / "mnist1d-family")
    branches = replace(bundle, kind="branches")
    n = len(bundle.states)
    sessions = [None] * n
    try:
        rt = get_runtime("onnxruntime", **ORT)
        sessions = [rt.load(s.path) for s in bundle.steps]
    except Exception:
        for s in sessions:
            if s is not None:
                s.close()
        raise
    hops = [_Hop(s, (s,)) for s in range(n)]
    policy = Policy([2.0] * (n - 1), [1.0] * n, cumulative=False)
    with AdaptiveModel(branches, sessions, hops, policy, True) as m:
        x = np.zeros((1, 1, 40), np.float32)
        assert m._cascade is not None
        for budget in (None, HUGE):  # no budget table: the most accurate branch alone
            got = m._cascade(x, budget)
            assert type(got) is Prediction
            assert got.exit_state.tolist() == [n - 1]
            assert len(got.latency_ms["steps"]) == 1
            _same(got, _python(m, x, budget))


# ---- gate plans ----------------------------------------------------------------------------

#: Gates that let sure rows leave early (maxprob), and rows whose answers agree with the
#: earlier exits' (agreement, the previous score); thresholds 0.5 on their scores.
GATES = (
    Gate2((6.0, 1.0, 0.5, 0.0, 0.0), -4.5),
    Gate2((3.0, 1.0, 0.0, 2.0, 1.5), -4.0),
    Gate2((2.0, 0.5, 0.0, 2.5, 2.0), -4.0),
)


def _gate_model(name: str, *, table: bool, runtime: str = "onnxruntime"):
    n = len(load_bundle(BUNDLES / name).states)
    return _plan_model(name, table=table, thresholds=0.5, runtime=runtime, gates=GATES[: n - 1])


@pytest.mark.parametrize("name", ["mnist1d-multiexit", "mnist1d-family"])
@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("budget", [None, TINY, 250.0, HUGE])
def test_gate_plans_answer_natively_as_the_python_loop(rows, name, table, budget):
    """Budgets where the route does not depend on how far the costs have drifted: 250
    picks kept state 1 from the table (the most accurate, 200 ms) on every call."""
    with _gate_model(name, table=table) as m:
        assert m.gates is not None
        assert m._cascade is not None
        exits = set()
        for i in range(len(rows)):
            x = rows[i : i + 1]
            got = m._cascade(x, budget)
            assert type(got) is Prediction
            _same(got, _python(m, x, budget))
            exits.add(int(got.exit_state[0]))
        if budget is None:  # the gates spread the rows over several exits
            assert len(exits) > 1, exits


def test_a_gate_plans_early_exits_are_its_gates_scores(rows):
    """Rows leave the first kept state when its gate's score reaches the threshold; the
    conf a row answers with there is that score, as the numpy reference computes it."""
    with _gate_model("mnist1d-multiexit", table=False) as m:
        first = m.sessions[0]
        left = 0
        for i in range(len(rows)):
            x = rows[i : i + 1]
            got = m.predict(x)
            if got.exit_state[0] != 0:
                continue
            left += 1
            logits = first.run({m.bundle.input.name: x})[m.bundle.steps[0].logits]
            g = GATES[0]
            _, score, *_ = gate_decide(logits, g.weights, g.bias, 0.5, np.zeros((1, 0)), None)
            assert got.conf[0] >= 0.5
            np.testing.assert_array_max_ulp(got.conf, score, maxulp=1)
        assert 0 < left < len(rows)


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_each_runtime_runs_a_gate_plan_natively(rows, runtime):
    with _gate_model("mnist1d-multiexit", table=True, runtime=runtime) as m:
        for i in range(0, len(rows), 3):
            x = rows[i : i + 1]
            for budget in (None, HUGE):
                got = m._cascade(x, budget)
                assert type(got) is Prediction
                _same(got, _python(m, x, budget))


def test_a_policy_whose_costs_do_not_follow_the_bundle_takes_the_loop():
    """Budget routes come from the policy in the engine and from the bundle's kind in the
    loop: a policy built by hand whose cumulative flag says otherwise runs the loop."""
    bundle = load_bundle(BUNDLES / "mnist1d-family")
    rt = get_runtime("onnxruntime", **ORT)
    sessions = [rt.load(s.path) for s in bundle.steps]
    hops = [_Hop(s, (s,)) for s in range(len(sessions))]
    for cumulative, native in ((False, True), (True, False)):  # an ensemble's costs are not
        policy = Policy([0.6, 0.6], [1.0, 1.0, 1.0], cumulative=cumulative)
        m = AdaptiveModel(bundle, sessions, hops, policy, True)
        assert (m._cascade is not None) == native
    m.close()


# ---- faults: the loop's words -------------------------------------------------------------


@pytest.fixture
def multiexit():
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    with AdaptiveModel.load(bundle, "onnxruntime", thresholds=2.0, runtime_options=ORT) as m:
        yield m


def _patched(m: AdaptiveModel, step: int, wrap, monkeypatch) -> CascadeCall:
    """A CascadeCall over `m`'s route with step `step`'s backend call `wrap(call)`, which
    the Python loop's `Session.run` then makes too."""
    session = m.sessions[step]
    monkeypatch.setattr(session, "_run", wrap(session._run))
    native = m._native_cascade(m._check.single[:3])
    assert native is not None
    return native


def _loop_error(m: AdaptiveModel, x) -> BaseException:
    try:
        _python(m, x)
    except BaseException as e:
        return e
    raise AssertionError("the loop accepted the batch")


@pytest.mark.parametrize(
    "fault",
    ["float64 logits", "two rows", "rowless output", "missing carried", "not a dict"],
)
def test_outputs_it_cannot_vouch_for_get_the_loops_error(multiexit, fault, monkeypatch):
    m = multiexit
    step = 1
    logits = m.bundle.steps[step].logits
    carried = m._route[step].carried[0] if m._route[step].carried else None

    def wrap(run):
        def bad(feeds):
            out = dict(run(feeds))
            if fault == "float64 logits":
                out[logits] = out[logits].astype(np.float64)
            elif fault == "two rows":
                out[logits] = np.repeat(out[logits], 2, axis=0)
            elif fault == "rowless output":
                out["extra"] = np.float32(1.0)
            elif fault == "missing carried":
                del out[carried]
            else:
                return list(out.items())
            return out

        return bad

    native = _patched(m, step, wrap, monkeypatch)
    x = np.zeros((1, 1, 40), np.float32)
    assert native(x, None) is None
    m._cascade = native
    want = _loop_error(m, x)
    with pytest.raises(type(want)) as got:
        m.predict(x)
    assert str(got.value) == str(want)
    if isinstance(want, InputError):
        assert (got.value.source, got.value.field) == (want.source, want.field)


def test_a_non_contiguous_logits_row_is_read_as_the_loop_reads_it(multiexit, monkeypatch):
    m = multiexit
    logits = m.bundle.steps[2].logits

    def wrap(run):
        def strided(feeds):
            out = dict(run(feeds))
            wide = np.repeat(out[logits], 2, axis=1)  # [1, 2C]: every other value is the row
            out[logits] = wide[:, ::2]
            assert not out[logits].flags.c_contiguous
            return out

        return strided

    native = _patched(m, 2, wrap, monkeypatch)
    x = np.random.default_rng(3).standard_normal((1, 1, 40)).astype(np.float32)
    got = native(x, None)
    assert type(got) is Prediction
    _same(got, _python(m, x))


def test_a_failing_run_names_the_step_that_failed(multiexit, monkeypatch):
    m = multiexit
    path = m.sessions[2].path

    def wrap(run):
        def broken(feeds):
            raise RuntimeError("device lost")

        return broken

    m._cascade = _patched(m, 2, wrap, monkeypatch)
    with pytest.raises(EdgeadaptError, match=r"failed to run: device lost") as e:
        m.predict(np.zeros((1, 1, 40), np.float32))
    assert str(path) in str(e.value)
    assert m._cascade.failed is not None
    assert m._cascade.failed.path == path
    assert type(e.value.__cause__) is RuntimeError


def test_an_edgeadapt_error_of_a_run_passes_as_it_is(multiexit, monkeypatch):
    m = multiexit

    def wrap(run):
        def refusing(feeds):
            raise InputError("refused", source="somewhere")

        return refusing

    m._cascade = _patched(m, 0, wrap, monkeypatch)
    with pytest.raises(InputError, match="refused") as e:
        m.predict(np.zeros((1, 1, 40), np.float32))
    assert e.value.source == "somewhere"


def test_a_closed_model_refuses_rather_than_calling_natively():
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    m = AdaptiveModel.load(bundle, "onnxruntime", thresholds=2.0, runtime_options=ORT)
    m.predict(np.zeros((1, 1, 40), np.float32))
    m.close()
    assert m._cascade is None
    with pytest.raises(EdgeadaptError, match="closed"):
        m.predict(np.zeros((1, 1, 40), np.float32))


def test_constructor_refuses_a_route_it_cannot_walk(multiexit):
    m = multiexit
    name, dtype, shape = m._check.single[:3]
    steps = [(h.state, h.logits, [(s, f, i) for s, f in h.calls]) for i, h in enumerate(m._route)]

    def make(route, classes=m.bundle.num_classes, gates=None):
        return CascadeCall(
            route, name, dtype, shape, classes, policy=m.policy, result=Prediction,
            hop_overhead_ms=0.0, costs_known=True, last_alone=False, gates=gates,
        )  # fmt: skip

    make(steps)
    with pytest.raises(ValueError, match="no hop"):
        make(())
    with pytest.raises(ValueError, match="classes"):
        make(steps, classes=1)
    with pytest.raises(ValueError, match="one hop per kept state"):
        make(steps[:2])
    with pytest.raises(ValueError, match="one gate per kept state but the last"):
        make(steps, gates=[Gate([0.0] * 5, 0.0)])
    make(steps, gates=[Gate([0.0] * 5, 0.0)] * 3)
    bad = (steps[0][0], steps[0][1], [(m.sessions[0], (("other", True),), 0)])
    with pytest.raises(ValueError, match="only model input"):
        make((bad, *steps[1:]))
    with pytest.raises(ValueError, match=r"\(state, logits, calls\)"):
        make([(0, "logits0"), *steps[1:]])
