"""Bundles with several model inputs (a masked transformer classifier with int64
``input_ids`` and ``attention_mask``) through the cascade, evaluate, run and profile."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.cli import cli
from edgeadapt.data.inputs import random_batch, token_ranges
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import write_bundle
from edgeadapt.formats.npzio import save_npz
from edgeadapt.kernel import confidence
from edgeadapt.measure.evaluate import evaluate_bundle, load_dataset
from tests.backends import CPU_RUNTIMES
from tests.multi_input import (
    INPUTS,
    NUM_CLASSES,
    TOKENS,
    VOCAB,
    assert_median_threshold_split,
    run_steps,
    step_models,
    token_batch,
    transformer_bundle,
)
from tests.plans import runner_plan

RUNTIMES = CPU_RUNTIMES


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Every layer's attention masked: each step reads ``attention_mask``."""
    return transformer_bundle(tmp_path_factory.mktemp("masked") / "b")


@pytest.fixture(scope="module")
def gapped(tmp_path_factory):
    """Layer 1 unmasked: step 1 reads only ``h1``, step 2 the mask again, so the mask must
    be carried past a step that does not read it."""
    return transformer_bundle(tmp_path_factory.mktemp("gapped") / "b", masked=(True, False, True))


@pytest.fixture(scope="module")
def data():
    return token_batch(48, seed=3)


def _rows(feeds, rows):
    return {k: v[rows] for k, v in feeds.items()}


def test_padding_under_the_mask_changes_no_logit(bundle, data):
    """The fixture itself: with every layer masked, ids under a zero mask do not matter,
    so a step fed the wrong rows of the mask gives different logits."""
    ids = np.where(data["attention_mask"] == 1, data["input_ids"], 0)
    a = run_steps(bundle, data)
    b = run_steps(bundle, {**data, "input_ids": ids})
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    shuffled = {**data, "attention_mask": data["attention_mask"][::-1].copy()}
    assert not np.allclose(run_steps(bundle, shuffled)[-1], a[-1], atol=1e-3)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_full_path_equals_running_the_steps_by_hand(bundle, data, runtime):
    logits = run_steps(bundle, data)[-1]
    with AdaptiveModel.load(bundle, runtime, thresholds=2.0, warmup=1) as m:
        out = m.predict(data)
    np.testing.assert_array_equal(out.pred, logits.argmax(axis=1))
    np.testing.assert_allclose(out.conf, confidence(logits), rtol=1e-5, atol=1e-6)
    assert (out.exit_state == 2).all()
    assert out.latency_ms["rows"] == [48, 48, 48]
    assert data["input_ids"].dtype == np.int64  # nothing was converted in place


@pytest.mark.parametrize("which", ["bundle", "gapped"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_mixed_exits_compact_every_carried_input(request, data, runtime, which):
    """About half the rows exit at state 0 and none at state 1, so state 2 runs on the
    rows gathered after state 0 (the gapped bundle's step 1 does not read the mask, its
    step 2 does). Each survivor's answer equals the hand-run steps on all rows: a mask
    row paired with the wrong activation row would change it."""
    b = request.getfixturevalue(which)
    logits = run_steps(b, data)
    c0 = confidence(logits[0])
    t0 = float(np.median(c0))
    exits = c0 >= t0
    assert 0 < exits.sum() < len(exits)
    with AdaptiveModel.load(b, runtime, thresholds=[t0, 2.0]) as m:
        out = m.predict(data)
    want_state = np.where(exits, 0, 2)
    np.testing.assert_array_equal(out.exit_state, want_state)
    want_pred = np.where(exits, logits[0].argmax(1), logits[2].argmax(1))
    np.testing.assert_array_equal(out.pred, want_pred)
    want_conf = np.where(exits, c0, confidence(logits[2]))
    np.testing.assert_allclose(out.conf, want_conf, rtol=1e-5, atol=1e-6)
    survivors = int((~exits).sum())
    assert out.latency_ms["rows"] == [48, survivors, survivors]


def test_compaction_twice_gathers_from_the_original_rows(bundle, data):
    logits = run_steps(bundle, data)
    c0, c1 = confidence(logits[0]), confidence(logits[1])
    t0, t1 = float(np.quantile(c0, 0.7)), float(np.quantile(c1[c0 < np.quantile(c0, 0.7)], 0.5))
    with AdaptiveModel.load(bundle, thresholds=[t0, t1]) as m:
        out = m.predict(data)
    state = np.where(c0 >= t0, 0, np.where(c1 >= t1, 1, 2))
    np.testing.assert_array_equal(out.exit_state, state)
    assert set(state.tolist()) == {0, 1, 2}
    rows = np.arange(48)
    np.testing.assert_array_equal(
        out.pred, np.stack([z.argmax(1) for z in logits], axis=1)[rows, state]
    )


def test_a_plan_that_skips_a_state_still_feeds_its_step(gapped, data):
    logits = run_steps(gapped, data)
    c0 = confidence(logits[0])
    t0 = float(np.median(c0))
    plan = runner_plan(gapped, [0, 2], [t0], [1.0, 3.0], budget=False)
    with AdaptiveModel.load(gapped, plan=plan) as m:
        out = m.predict(data)
    np.testing.assert_array_equal(out.exit_state, np.where(c0 >= t0, 0, 2))
    np.testing.assert_array_equal(
        out.pred, np.where(c0 >= t0, logits[0].argmax(1), logits[2].argmax(1))
    )


def test_ensemble_members_read_the_surviving_rows_of_every_input(tmp_path, data):
    members = [step_models((True,), seed=s)[0].model for s in (1, 2)]
    ens = write_bundle(
        tmp_path / "ens",
        kind="ensemble",
        inputs=list(INPUTS),
        num_classes=NUM_CLASSES,
        models=members,
        producer={"exporter": "tests", "source_sha256": "0" * 64},
    )
    assert_median_threshold_split(ens, data, run_steps(ens, data))


def test_single_rows_and_warm_up(bundle, data):
    with AdaptiveModel.load(bundle, thresholds=2.0, warmup=2) as m:
        whole = m.predict(data)
        for i in (0, 17, 47):
            one = m.predict(_rows(data, slice(i, i + 1)))
            assert one.pred[0] == whole.pred[i]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: {"input_ids": d["input_ids"]}, r"missing \['attention_mask'\]"),
        (lambda d: {**d, "token_type_ids": d["input_ids"]}, r"unexpected \['token_type_ids'\]"),
        (lambda d: d["input_ids"], r"2 inputs \(input_ids, attention_mask\): pass a mapping"),
        (
            lambda d: {**d, "input_ids": d["input_ids"].astype(np.float32)},
            r"input_ids: expected dtype int64, got float32",
        ),
        (
            lambda d: {**d, "attention_mask": d["attention_mask"].astype(np.int32)},
            r"attention_mask: expected dtype int64, got int32",
        ),
        (
            lambda d: {**d, "attention_mask": d["attention_mask"][:5]},
            r"attention_mask: has 5 rows, 'input_ids' has 48",
        ),
        (
            lambda d: {**d, "input_ids": d["input_ids"][:, :4]},
            rf"input_ids: expected shape \[B, {TOKENS}\], got \[48, 4\]",
        ),
        (lambda d: {k: v[:0] for k, v in d.items()}, "empty batch"),
        (lambda d: {**d, "input_ids": d["input_ids"].tolist()}, "expected a numpy array"),
    ],
    ids=[
        "missing",
        "unexpected",
        "bare-array",
        "float-ids",
        "int32",
        "batch",
        "shape",
        "empty",
        "list",
    ],
)
def test_bad_inputs_are_clear_errors(bundle, data, change, match):
    with AdaptiveModel.load(bundle, thresholds=0.5) as m:
        with pytest.raises(InputError, match=match):
            m.predict(change(data))
        with pytest.raises(InputError, match="pass a mapping"):
            m.check_input(data["input_ids"])


def test_fast_acceptance_agrees_with_the_complete_check(bundle, data):
    with AdaptiveModel.load(bundle, thresholds=2.0) as m:
        want = m.predict(data).pred
        strided = {k: np.repeat(v, 2, axis=0)[::2] for k, v in data.items()}  # not contiguous
        assert not strided["input_ids"].flags.c_contiguous
        np.testing.assert_array_equal(m.predict(strided).pred, want)
        mapping = type("M", (dict,), {})(data)  # a dict subclass: the complete check
        np.testing.assert_array_equal(m.predict(mapping).pred, want)


# --- evaluate -------------------------------------------------------------------------


def _save_data(path, data, **extra):
    y = np.arange(len(data["input_ids"])) % NUM_CLASSES
    save_npz(path, **data, y=y, **extra)
    return y


def test_evaluate_on_an_npz_with_both_inputs(bundle, data, tmp_path):
    path = tmp_path / "data.npz"
    y = _save_data(path, data)
    x, labels = load_dataset(path, bundle)
    assert set(x) == {"input_ids", "attention_mask"}
    ev = evaluate_bundle(bundle, x, labels, batch=20, source=str(path))
    logits = run_steps(bundle, data)
    for i, z in enumerate(logits):
        np.testing.assert_array_equal(ev.pred[:, i], z.argmax(1))
        np.testing.assert_allclose(ev.conf[:, i], confidence(z), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ev.labels, y)

    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(bundle.path),
            "--data",
            str(path),
            "-o",
            str(tmp_path / "e.npz"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["samples"] == 48
    np.testing.assert_allclose(doc["accuracy"], ev.accuracies)


def test_evaluate_casts_widths_but_never_ids_to_floats(bundle, data, tmp_path):
    narrow = {k: v.astype(np.int32) for k, v in data.items()}
    path = tmp_path / "narrow.npz"
    _save_data(path, narrow)
    x, _ = load_dataset(path, bundle)
    assert all(v.dtype == np.int64 for v in x.values())
    floats = tmp_path / "floats.npz"
    _save_data(floats, {**data, "input_ids": data["input_ids"].astype(np.float32)})
    with pytest.raises(InputError, match=r"floats\.npz: input_ids: dtype float32 not accepted"):
        load_dataset(floats, bundle)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            lambda d: {"x": d["input_ids"]},
            r"input_ids: missing array\(s\) \['input_ids', 'attention_mask'\].*not 'x'",
        ),
        (
            lambda d: {"input_ids": d["input_ids"]},
            r"attention_mask: missing array\(s\) \['attention_mask'\]",
        ),
        (
            lambda d: {**d, "attention_mask": d["attention_mask"][:, :3]},
            rf"attention_mask: expected shape \[B, {TOKENS}\], got \[48, 3\]",
        ),
        (
            lambda d: {**d, "attention_mask": d["attention_mask"][:40]},
            "attention_mask: has 40 rows, 'input_ids' has 48",
        ),
        (lambda d: {**d, "input_ids": d["input_ids"][:, 0]}, "input_ids: expected 2 dimensions"),
    ],
    ids=["x-only", "one-missing", "shape", "rows", "rank"],
)
def test_bad_data_files_name_the_file_and_array(bundle, data, tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays(data), y=np.zeros(48, np.int64))
    with pytest.raises(InputError, match=r"bad\.npz: " + match):
        load_dataset(path, bundle)


def test_labels_must_match_the_rows(bundle, data, tmp_path):
    path = tmp_path / "d.npz"
    save_npz(path, **data, y=np.zeros(47, np.int64))
    with pytest.raises(InputError, match=r"d\.npz: y: expected integer labels \[48\]"):
        load_dataset(path, bundle)


# --- run ------------------------------------------------------------------------------


def test_run_takes_an_npz_of_every_input(bundle, data, tmp_path):
    path = tmp_path / "in.npz"
    save_npz(path, **data)
    args = ["run", str(bundle.path), "--input", str(path), "--thresholds", "0.5", "--json"]
    whole = CliRunner().invoke(cli, args)
    assert whole.exit_code == 0, whole.output
    doc = json.loads(whole.output)
    with AdaptiveModel.load(bundle, thresholds=0.5) as m:
        want = m.predict(data)
    assert doc["pred"] == want.pred.tolist()
    assert doc["exit_state"] == want.exit_state.tolist()
    batched = CliRunner().invoke(cli, [*args, "--batch", "5"])
    assert batched.exit_code == 0, batched.output
    assert json.loads(batched.output)["pred"] == doc["pred"]
    assert json.loads(batched.output)["latency_ms"]["batches"] == 10


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (
            lambda p, d: np.save(p, d["input_ids"]),
            "2 inputs (input_ids, attention_mask): give an .npz",
        ),
        (lambda p, d: np.savez(p, input_ids=d["input_ids"]), "attention_mask: missing array"),
        (
            lambda p, d: np.savez(p, **{**d, "input_ids": d["input_ids"].astype(np.float32)}),
            "input_ids: dtype float32 not accepted for input 'input_ids'",
        ),
    ],
    ids=["npy", "missing", "dtype"],
)
def test_run_input_errors_name_the_file(bundle, data, tmp_path, write, match):
    path = tmp_path / "in.bin"
    write(path, data)
    path = next(tmp_path.glob("in.bin*"))
    result = CliRunner().invoke(
        cli, ["run", str(bundle.path), "--input", str(path), "--thresholds", "0.5"]
    )
    assert result.exit_code == 2, result.output
    assert path.name in result.output
    assert match in result.output


# --- profile --------------------------------------------------------------------------


def test_random_inputs_respect_the_embedding_table(bundle):
    assert token_ranges(bundle) == {"input_ids": VOCAB}
    batch = random_batch(bundle, 64, np.random.default_rng(0))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64
    assert ids.min() == 0
    assert ids.max() == VOCAB - 1
    assert (mask == 1).all()


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("order", ["step", "chain"])
def test_profile_times_every_step_of_a_multi_input_bundle(bundle, runtime, order):
    from edgeadapt.formats.profile import MIN_SAMPLES
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle

    prof = profile_bundle(
        bundle,
        runtime,
        threads=1,
        timing=TimingOptions(batches=(1, 4), iters=MIN_SAMPLES, warmup=1, order=order),
    )
    for b in (1, 4):
        stats = prof.step_stats(b)
        assert len(stats) == 3
        assert all(s.n == MIN_SAMPLES and s.p50 > 0 for s in stats)


# --- the whole model ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["bundle", "gapped"])
def test_whole_model_reads_each_model_input_once(request, data, which, tmp_path):
    import onnxruntime as ort

    from edgeadapt.exporters.compose import whole_model

    b = request.getfixturevalue(which)
    whole = whole_model(b)
    assert [i.name for i in whole.graph.input] == ["input_ids", "attention_mask"]
    sess = ort.InferenceSession(whole.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, data)
    np.testing.assert_allclose(got, run_steps(b, data)[-1], rtol=1e-5, atol=1e-5)


def test_a_one_input_npz_may_use_x_or_the_inputs_name(tmp_path):
    from edgeadapt.data.batches import read_batch
    from edgeadapt.formats.bundle import InputSpec

    spec = [InputSpec("signal", ("batch", 3), "float32")]
    x = np.ones((2, 3), np.float64)
    for key in ("x", "signal"):
        save_npz(tmp_path / f"{key}.npz", **{key: x})
        got = read_batch(tmp_path / f"{key}.npz", spec)
        assert got["signal"].dtype == np.float32
    save_npz(tmp_path / "both.npz", x=x, signal=x)
    with pytest.raises(InputError, match="holds both 'x' and 'signal'"):
        read_batch(tmp_path / "both.npz", spec)
