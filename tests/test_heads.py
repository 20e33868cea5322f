"""Trained exit heads: the ridge fit, its streaming statistics, and the ONNX head graph."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from edgeadapt.exporters.heads import (
    RIDGE_GRID,
    HeadFitter,
    LinearHead,
    channels_last,
    choose_pool,
    features,
    head_graph,
    heldout_mask,
    is_token_sequence,
    overfit_message,
    train_linear_head,
)


def _run_head(
    head: LinearHead, act: np.ndarray, mask: np.ndarray | None = None, opset_version: int = 17
) -> np.ndarray:
    opset = [helper.make_opsetid("", opset_version)]
    model = head_graph(head, ["batch", *act.shape[1:]], opset, 8)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"act": act.astype(np.float32)}
    if mask is not None:
        feeds["mask"] = mask.astype(np.int64)
    return sess.run(["logits"], feeds)[0]


def _separable(n=300, c=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    act = rng.standard_normal((n, c, 6)).astype(np.float32)
    act[np.arange(n), y, :] += 2.0  # channel y carries the class
    return act, y


def test_ridge_head_fits_separable_data_and_reports_heldout_accuracy():
    act, y = _separable()
    head = train_linear_head(act, y, 3, "gap")
    assert head.weight.shape == (4, 3)
    assert head.heldout_samples == 60
    assert head.train_samples == 240
    assert head.train_accuracy > 0.9
    assert head.heldout_accuracy > 0.9
    assert not head.overfit
    assert overfit_message(head, "cut") is None
    held = heldout_mask(300)
    pred = head.predict(features(act, "gap")).argmax(1)
    assert np.mean(pred[~held] == y[~held]) == pytest.approx(head.train_accuracy)


def test_random_labels_choose_strong_ridge_instead_of_memorising():
    rng = np.random.default_rng(1)
    act = rng.standard_normal((120, 200)).astype(np.float32)  # more features than samples
    y = rng.integers(0, 10, 120)
    head = train_linear_head(act, y, 10, "flatten")
    assert head.heldout_accuracy < 0.35  # chance is 0.1 on 24 held-out samples
    # held-out accuracy is flat at chance, so the strongest ridge wins: no memorising
    assert head.ridge == max(RIDGE_GRID)
    assert head.train_accuracy < 0.5
    assert not head.overfit


def test_overfit_message_names_both_accuracies():
    act, y = _separable()
    head = train_linear_head(act, y, 3, "gap")
    bad = LinearHead(**{**head.__dict__, "train_accuracy": 1.0, "heldout_accuracy": 0.4})
    assert bad.overfit
    msg = overfit_message(bad, "layer2")
    assert "'layer2'" in msg
    assert "training accuracy 1.000 vs held-out 0.400" in msg


@pytest.mark.parametrize("pool", ["gap", "flatten"])
def test_onnx_head_equals_its_float64_prediction_on_cnn_activations(pool):
    act, y = _separable()
    head = train_linear_head(act, y, 3, pool)
    want = head.predict(features(act, pool))
    got = _run_head(head, act)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize(("pool", "prefix"), [("cls", 0), ("mean", 0), ("mean", 1)])
def test_token_heads_on_a_sequence(pool, prefix):
    rng = np.random.default_rng(2)
    n, t, h = 200, 6, 5
    y = rng.integers(0, 3, n)
    act = rng.standard_normal((n, t, h)).astype(np.float32)
    act[np.arange(n), 0, y] += 3.0
    keep = rng.integers(1, t - prefix + 1, n)
    mask = (np.arange(t - prefix)[None, :] < keep[:, None]).astype(np.int64)
    use_mask = mask if pool == "mean" else None
    fitter = HeadFitter(3, pool, heldout_mask(n))
    fitter.add(features(act, pool, use_mask, prefix), y)
    head = fitter.fit()
    head = LinearHead(
        **{**head.__dict__, "mask": "m" if use_mask is not None else None, "prefix": prefix}
    )
    want = head.predict(features(act, pool, use_mask, prefix))
    got = _run_head(head, act, use_mask)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    if pool == "mean":  # masked tokens do not count: changing them changes nothing
        noisy = act.copy()
        dead = np.concatenate([np.ones((n, prefix), bool), mask.astype(bool)], axis=1)
        noisy[~dead] += 100.0
        np.testing.assert_allclose(_run_head(head, noisy, use_mask), got, rtol=1e-5, atol=1e-4)


def test_masked_mean_by_hand():
    act = np.arange(2 * 3 * 2, dtype=np.float64).reshape(2, 3, 2)
    mask = np.array([[1, 0], [1, 1]])
    got = features(act, "mean", mask, prefix=1)
    np.testing.assert_allclose(got[0], act[0, :2].mean(0))
    np.testing.assert_allclose(got[1], act[1].mean(0))
    np.testing.assert_allclose(features(act, "cls"), act[:, 0])


def test_ill_conditioned_features_stay_within_float32_parity():
    """A large offset and tiny spreads: folding 1/std into the weights would give huge
    weights; the separate standardisation keeps float32 close to the float64 fit."""
    rng = np.random.default_rng(3)
    n = 400
    y = rng.integers(0, 5, n)
    act = 1000.0 + rng.standard_normal((n, 16)) * np.logspace(-4, 0, 16)
    act[np.arange(n), y] += 0.5
    act[:, 3] = 1000.0  # constant feature
    act = act.astype(np.float32)
    head = train_linear_head(act, y, 5, "flatten")
    assert np.all(np.isfinite(head.scale))
    want = head.predict(features(act, "flatten"))
    got = _run_head(head, act)
    err = np.abs(got - want).max()
    assert err <= 1e-3 * np.abs(want).max(), err
    assert head.heldout_accuracy > 0.8


def test_pooled_features_that_cancel_are_not_standardised_rounding_noise():
    """Channel means of values that cancel (a Swin's [B, H, W, C] after LayerNorm, pooled
    over W and C): in float64 they spread by ~1e-9, below what float32 pooling resolves
    (~1e-7 of the values' magnitude); scaled up by their own spread, float32 rounding
    became logit errors past the parity tolerance. The head keeps no weight on them."""
    rng = np.random.default_rng(5)
    n, c = 300, 4
    act = rng.standard_normal((n, c, 1536))
    act = (act - act.mean(axis=2, keepdims=True)).astype(np.float32)
    y = rng.integers(0, 3, n)
    head = train_linear_head(act, y, 3, "gap")
    want = head.predict(features(act, "gap"))
    err = np.abs(_run_head(head, act) - want).max()
    assert err <= 1e-3 * np.abs(want).max(), err
    np.testing.assert_allclose(want, np.broadcast_to(head.bias, want.shape), atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 97), seed=st.integers(0, 3))
def test_streaming_in_batches_gives_the_same_head(batch, seed):
    act, y = _separable(n=150, seed=seed)
    feats = features(act, "gap")
    held = heldout_mask(150, seed)
    whole = HeadFitter(3, "gap", held)
    whole.add(feats, y)
    streamed = HeadFitter(3, "gap", held)
    for start in range(0, 150, batch):
        streamed.add(feats[start : start + batch], y[start : start + batch])
    a, b = whole.fit(), streamed.fit()
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-5, atol=1e-5)
    assert (a.ridge, a.heldout_accuracy, a.train_accuracy) == (
        b.ridge,
        b.heldout_accuracy,
        b.train_accuracy,
    )


def test_heldout_mask_is_seeded_and_bounded():
    m = heldout_mask(1000, seed=4)
    assert m.sum() == 200
    assert np.array_equal(m, heldout_mask(1000, seed=4))
    assert heldout_mask(2).sum() == 1
    with pytest.raises(ValueError, match="at least 2"):
        heldout_mask(1)


def test_choose_pool():
    assert choose_pool((8, 40), "auto") == "flatten"
    assert choose_pool((64, 56, 56), "auto") == "gap"
    assert choose_pool((4, 4, 384), "auto", channels_last=True) == "gap_last"
    assert choose_pool((4, 4, 24), "auto", channels_last=True) == "flatten"  # small
    assert choose_pool((64, 56, 56), "gap_last") == "gap_last"
    assert choose_pool((13, 32), "auto", tokens=True) == "mean"
    assert choose_pool((13, 32), "cls") == "cls"
    with pytest.raises(ValueError, match=r"needs a \[batch, tokens, hidden\]"):
        choose_pool((8, 4, 4), "cls")
    assert is_token_sequence((13, 32), input_rank=2, integer_input=True)
    assert is_token_sequence((197, 192), input_rank=4, integer_input=False)
    assert not is_token_sequence((8, 40), input_rank=3, integer_input=False)


def _channels_last_act(n=300, hw=(4, 5), c=6, classes=3, seed=0):
    """``[n, H, W, C]`` whose channel y carries the class; every position's channels sum
    to zero, so a mean over W and C (``gap`` read as channels-first) carries nothing."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    act = rng.standard_normal((n, *hw, c))
    act[np.arange(n), ..., y] += 2.0
    act -= act.mean(axis=-1, keepdims=True)
    return act.astype(np.float32), y


def test_gap_last_averages_the_spatial_axes_of_a_channels_last_activation():
    act, y = _channels_last_act()
    feats = features(act, "gap_last")
    assert feats.shape == (300, 6)  # one feature per channel
    np.testing.assert_allclose(feats, act.astype(np.float64).mean(axis=(1, 2)))
    assert train_linear_head(act, y, 3, "gap_last").heldout_accuracy > 0.9
    # read as channels-first, the same activation leaves one feature per row, and none
    # of them tells the classes apart
    assert features(act, "gap").shape == (300, 4)
    assert train_linear_head(act, y, 3, "gap").heldout_accuracy < 0.6


@pytest.mark.parametrize("opset_version", [17, 18])
@pytest.mark.parametrize("shape", [(4, 5), (7,), (2, 3, 2)])
def test_onnx_gap_last_head_equals_its_float64_prediction(shape, opset_version):
    act, y = _channels_last_act(hw=shape)
    head = train_linear_head(act, y, 3, "gap_last")
    want = head.predict(features(act, "gap_last"))
    got = _run_head(head, act, opset_version=opset_version)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.mean(got.argmax(1) == y) > 0.9


def _reader_graph(nodes, inits=(), opset=17, rank=4):
    """``x`` -> Relu -> ``cut`` (``[B, 4, 4, 8]``, ``[B, 4, 8]`` or ``[B, 4]`` by
    `rank`), read by `nodes`."""
    shape = {4: ["batch", 4, 4, 8], 3: ["batch", 4, 8], 2: ["batch", 4]}[rank]
    outs = sorted({o for n in nodes for o in n.output} - {i for n in nodes for i in n.input})
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["cut"]), *nodes],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs],
        initializer=list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


_GAMMA = [_init("gamma", np.ones(8, np.float32)), _init("beta", np.zeros(8, np.float32))]
_CONV_W = _init("w", np.ones((8, 4, 1, 1), np.float32))
_SLICE = {"zero": 0, "one": 1, "two": 2, "big": 1 << 30}


@pytest.mark.parametrize(
    ("nodes", "inits", "opset", "want"),
    [
        # a LayerNorm over the last axis (default axis -1): a Swin's or ConvNeXt's
        (
            [helper.make_node("LayerNormalization", ["cut", "gamma", "beta"], ["o"])],
            _GAMMA,
            17,
            True,
        ),
        # over axes 1.. (axis 1): not the last axis alone
        (
            [helper.make_node("LayerNormalization", ["cut", "gamma", "beta"], ["o"], axis=1)],
            _GAMMA,
            17,
            False,
        ),
        # a Conv reads axis 1 as channels
        ([helper.make_node("Conv", ["cut", "w"], ["o"])], [_CONV_W], 17, False),
        # a linear layer past a residual Add: reads the last axis
        (
            [
                helper.make_node("Add", ["cut", "cut"], ["s"]),
                helper.make_node("MatMul", ["s", "fc"], ["o"]),
            ],
            [_init("fc", np.ones((8, 3), np.float32))],
            17,
            True,
        ),
        # a transpose to channels-first (NHWC -> NCHW), then a Conv
        (
            [
                helper.make_node("Transpose", ["cut"], ["t"], perm=[0, 3, 1, 2]),
                helper.make_node("Conv", ["t", "w"], ["o"]),
            ],
            [_CONV_W],
            17,
            True,
        ),
        # a Swin's patch merging: Pad, two Slices (H, then W), Concat over C, LayerNorm
        (
            [
                helper.make_node("Pad", ["cut", "pads"], ["p"]),
                helper.make_node("Slice", ["p", "zero", "big", "one", "two"], ["h"]),
                helper.make_node("Slice", ["h", "zero", "big", "two", "two"], ["hw"]),
                helper.make_node("Slice", ["h", "one", "big", "two", "two"], ["hw1"]),
                helper.make_node("Concat", ["hw", "hw1"], ["cat"], axis=-1),
                helper.make_node("LayerNormalization", ["cat", "gamma2", "beta2"], ["o"]),
            ],
            [
                _init("pads", np.zeros(8, np.int64)),
                *(_init(k, np.array([v], np.int64)) for k, v in _SLICE.items()),
                _init("gamma2", np.ones(16, np.float32)),
                _init("beta2", np.zeros(16, np.float32)),
            ],
            17,
            True,
        ),
        # a decomposed LayerNorm: ReduceMean over the last axis, axes an attribute...
        ([helper.make_node("ReduceMean", ["cut"], ["o"], axes=[-1])], [], 17, True),
        # ... or an input (opset 18)
        (
            [helper.make_node("ReduceMean", ["cut", "axes"], ["o"])],
            [_init("axes", np.array([3], np.int64))],
            18,
            True,
        ),
        # a global average pool written as ReduceMean over H and W: channels-first
        ([helper.make_node("ReduceMean", ["cut"], ["o"], axes=[2, 3])], [], 17, False),
        # both kinds of reader: the layout is not clear, keep channels-first
        (
            [
                helper.make_node("LayerNormalization", ["cut", "gamma", "beta"], ["o"]),
                helper.make_node("Conv", ["cut", "w"], ["o2"]),
            ],
            [*_GAMMA, _CONV_W],
            17,
            False,
        ),
        # no reader that tells (a Reshape)
        (
            [helper.make_node("Reshape", ["cut", "shape"], ["o"])],
            [_init("shape", np.array([0, -1], np.int64))],
            17,
            False,
        ),
    ],
    ids=[
        "layernorm-last",
        "layernorm-axis1",
        "conv",
        "add-matmul",
        "transpose-to-nchw",
        "patch-merging",
        "reducemean-attr",
        "reducemean-input",
        "reducemean-hw",
        "both",
        "reshape",
    ],
)
def test_channels_last_is_told_by_the_ops_reading_the_cut(nodes, inits, opset, want):
    assert channels_last(_reader_graph(nodes, inits, opset), "cut", 4) is want


def test_channels_last_needs_spatial_axes():
    """A [B, T, C] sequence read by a LayerNorm: channels-last (a mean over T); a 2-D
    activation has nothing to pool."""
    ln = [helper.make_node("LayerNormalization", ["cut", "gamma", "beta"], ["o"])]
    assert channels_last(_reader_graph(ln, _GAMMA, rank=3), "cut", 3)
    mm = [helper.make_node("MatMul", ["cut", "fc"], ["o"])]
    fc = [_init("fc", np.ones((4, 3), np.float32))]
    assert not channels_last(_reader_graph(mm, fc, rank=2), "cut", 2)
