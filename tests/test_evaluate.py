"""The evaluator: every state on every sample, matching a direct ONNX Runtime run."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeadapt import kernel_ref
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.measure.evaluate import evaluate_bundle

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"


def direct_logits(bundle, x):
    """Each state's logits from plain ORT sessions over the whole set at once."""
    tensors = {bundle.input.name: x}
    logits = []
    for step in bundle.steps:
        sess = ort.InferenceSession(str(step.path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        out = sess.run(names, {k: tensors[k] for k in step.inputs})
        tensors.update(zip(names, out, strict=True))
        logits.append(tensors[step.logits])
    return logits


@pytest.mark.parametrize("name", ["mnist1d-multiexit", "mnist1d-family"])
def test_every_state_matches_a_direct_run(name):
    bundle = load_bundle(BUNDLES / name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 1, 40)).astype(np.float32)
    y = rng.integers(0, bundle.num_classes, 50)
    seen = []
    ev = evaluate_bundle(bundle, x, y, batch=16, progress=lambda d, t: seen.append((d, t)))
    s = len(bundle.states)
    assert ev.pred.shape == ev.conf.shape == (50, s)
    assert list(ev.names) == [st.name for st in bundle.states]
    np.testing.assert_array_equal(ev.labels, y)
    assert seen == [(16, 50), (32, 50), (48, 50), (50, 50)]
    for i, logits in enumerate(direct_logits(bundle, x)):
        np.testing.assert_array_equal(ev.pred[:, i], logits.argmax(axis=1))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        np.testing.assert_allclose(
            ev.conf[:, i], (e / e.sum(axis=1, keepdims=True)).max(axis=1), rtol=1e-5
        )
        for measure in kernel_ref.MEASURES:  # as the kernel's numpy specification computes it
            np.testing.assert_allclose(
                ev.confidence(measure)[:, i],
                kernel_ref.confidence(logits, measure),
                rtol=0,
                atol=1e-6,
            )
    assert ev.conf_margin.dtype == ev.conf_entropy.dtype == np.float32
    assert np.all((ev.conf_margin >= 0) & (ev.conf_margin <= ev.conf))
    assert np.all((ev.conf_entropy <= 0) & (ev.conf_entropy >= -np.log(bundle.num_classes) - 1e-5))
    assert np.all((ev.conf > 1.0 / bundle.num_classes - 1e-6) & (ev.conf <= 1.0 + 1e-6))


@pytest.fixture(scope="module")
def multiexit():
    return load_bundle(BUNDLES / "mnist1d-multiexit")


@pytest.mark.parametrize(
    ("x", "y", "where"),
    [
        (np.zeros((4, 40), np.float32), np.zeros(4, int), "x"),
        (np.zeros((4, 1, 39), np.float32), np.zeros(4, int), "x"),
        (np.zeros((0, 1, 40), np.float32), np.zeros(0, int), "x"),
        (np.full((2, 1, 40), np.nan, np.float32), np.zeros(2, int), "x"),
        (np.zeros((4, 1, 40), np.float32), np.zeros(3, int), "y"),
        (np.zeros((4, 1, 40), np.float32), np.full(4, 10), "y"),
        (np.zeros((4, 1, 40), np.float32), np.full(4, -1), "y"),
        (np.zeros((4, 1, 40), np.float32), np.zeros(4, np.float32), "y"),
    ],
)
def test_bad_data_names_the_key(multiexit, x, y, where):
    with pytest.raises(InputError, match=rf"data\.npz: {where}:"):
        evaluate_bundle(multiexit, x, y, source="data.npz")


@pytest.mark.parametrize("batch", [0, -3, True])
def test_bad_batch_is_refused(multiexit, batch):
    x = np.zeros((2, 1, 40), np.float32)
    with pytest.raises(InputError, match="batch"):
        evaluate_bundle(multiexit, x, np.zeros(2, int), batch=batch)


def test_confidences_are_the_kernels_own(multiexit):
    """Bit for bit what `AdaptiveModel` computes from the same logits."""
    from edgeadapt.kernel import confidence

    x = np.random.default_rng(1).standard_normal((20, 1, 40)).astype(np.float32)
    ev = evaluate_bundle(multiexit, x, np.zeros(20, int), batch=20)
    last = direct_logits(multiexit, x)[-1]
    for measure in kernel_ref.MEASURES:
        np.testing.assert_array_equal(ev.confidence(measure)[:, -1], confidence(last, measure))
