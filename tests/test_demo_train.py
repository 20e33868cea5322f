"""The residual 1D CNN of `edgeadapt.demo.train`: trained in train mode and returned in
eval mode, exported as one ONNX file whose logits equal torch's at any batch size."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the demo models need torch")


def test_residual_cnn_trains_and_exports_with_a_dynamic_batch(tmp_path):
    import onnxruntime as ort

    from edgeadapt.data.mnist1d import Split
    from edgeadapt.demo.train import export_onnx_model, residual_cnn, train_residual_cnn

    assert sum(type(m).__name__ == "ResidualBlock" for m in residual_cnn(8, blocks=3)) == 3
    rng = np.random.default_rng(0)
    data = Split(rng.standard_normal((64, 1, 40)).astype(np.float32), rng.integers(0, 10, 64))
    model = train_residual_cnn(data, width=8, epochs=1)
    assert not model.training
    # training moved the BatchNorm statistics off their initial values (so logits are not ~0)
    assert float(model[2].body[1].running_mean.abs().sum()) > 0
    path = export_onnx_model(model, data.x, tmp_path / "net.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    x = data.x[:5]
    (got,) = sess.run(None, {"x": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 10)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_train_and_export_refuses_an_unknown_bundle_before_training(tmp_path):
    from edgeadapt.demo.train import TRAINERS, train_and_export
    from edgeadapt.errors import InputError

    assert set(TRAINERS) == {"mnist1d-resnet", "mnist1d-multiexit", "mnist1d-family"}
    with pytest.raises(InputError, match=r"unknown demo bundles \['mnist1d-nope'\]"):
        train_and_export(tmp_path, names=["mnist1d-resnet", "mnist1d-nope"])
    assert not any(tmp_path.iterdir())
