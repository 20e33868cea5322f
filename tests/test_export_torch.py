"""PyTorch exporter: multi-exit 1D CNN and family round trips, refusals, the CLI entry."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgeadapt.cli import cli
from edgeadapt.errors import InputError, MissingExtraError
from edgeadapt.formats.bundle import load_bundle

torch = pytest.importorskip("torch", reason="the PyTorch exporter needs the torch extra")
nn = torch.nn

from edgeadapt.exporters import torch as torch_exporter  # noqa: E402
from edgeadapt.exporters.torch import (  # noqa: E402
    TorchExportOptions,
    export_from_factory,
    export_torch,
    export_torch_family,
    export_torch_model,
    load_factory,
)


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv1d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()]


def _head(c: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 10))


class SmallMultiExit(nn.Module):
    """Three stages and exits on MNIST-1D shaped input [B, 1, 40]."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                nn.Sequential(*_conv(1, 8)),
                nn.Sequential(nn.MaxPool1d(2), *_conv(8, 16)),
                nn.Sequential(*_conv(16, 16), nn.MaxPool1d(2)),
            ]
        )
        self.heads = nn.ModuleList([_head(8), _head(16), _head(16)])
        for bn in self.modules():  # non-trivial running statistics, so folding matters
            if isinstance(bn, nn.BatchNorm1d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)


@pytest.fixture(scope="module")
def model() -> SmallMultiExit:
    torch.manual_seed(0)
    return SmallMultiExit().eval()


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch") / "multiexit"
    return export_torch_model(model, torch.zeros(1, 1, 40), out)


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 7])
def test_multiexit_steps_chain_and_match_torch(model, bundle, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 1, 40)).astype(np.float32)
    with torch.no_grad():
        a, want = torch.from_numpy(x), []
        for stage, head in zip(model.stages, model.heads, strict=True):
            a = stage(a)
            want.append(head(a).numpy())
    previous: list[np.ndarray] = []
    for i, step in enumerate(bundle.steps):
        feed = {n: x if n == bundle.input.name else previous[0] for n in step.inputs}
        names = [n for n in (step.activation, step.logits) if n]
        previous = _session(step.path).run(names, feed)
        assert previous[-1].shape == (batch, 10)
        np.testing.assert_allclose(previous[-1], want[i], rtol=1e-3, atol=1e-5)


def test_multiexit_manifest(bundle):
    loaded = load_bundle(bundle.path)
    assert loaded.verified
    assert loaded.kind == "early-exit"
    assert loaded.num_classes == 10
    assert loaded.input.shape == ("batch", 1, 40)
    assert [s.name for s in loaded.states] == ["exit0", "exit1", "exit2"]
    assert [s.inputs for s in loaded.steps] == [("x",), ("activation0",), ("activation1",)]
    assert loaded.steps[-1].activation is None
    assert loaded.flops == sorted(loaded.flops)
    assert all(s.head_flops > 0 and s.stage_flops > 0 for s in loaded.steps)
    parity = loaded.extra["parity"]
    assert 0 <= parity["max_abs_error"] <= 1e-4
    assert len(parity["per_state"]) == 3
    assert loaded.producer["exporter"] == "edgeadapt.exporters.torch"
    assert len(loaded.producer["source_sha256"]) == 64


def test_steps_are_clean(bundle):
    """Constant folding leaves no BatchNormalization and no initializer aliases."""
    import onnx

    for step in bundle.steps:
        ops = {n.op_type for n in onnx.load(str(step.path)).graph.node}
        assert "BatchNormalization" not in ops
        assert "Identity" not in ops


def test_export_restores_training_mode(tmp_path):
    m = SmallMultiExit().train()
    export_torch(m.stages, m.heads, torch.zeros(2, 1, 40), tmp_path / "b")
    assert all(x.training for x in m.modules())


def test_family_ordered_by_flops(tmp_path):
    torch.manual_seed(1)
    cnn = nn.Sequential(*_conv(1, 8), nn.Flatten(), nn.Linear(320, 10))
    logistic = nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
    b = export_torch_family(
        [cnn, logistic], torch.zeros(1, 1, 40), tmp_path / "fam", state_names=["cnn", "logistic"]
    )
    assert b.kind == "ensemble"
    assert [s.name for s in b.states] == ["logistic", "cnn"]
    assert b.flops == sorted(b.flops)
    x = np.ones((7, 1, 40), dtype=np.float32)
    for step, m in zip(b.steps, [logistic, cnn], strict=True):
        with torch.no_grad():
            want = m.eval()(torch.from_numpy(x)).numpy()
        got = _session(step.path).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # a trace bakes in one branch: must be refused
            return x
        return -x


def test_tracer_warning_is_an_error_and_nothing_is_written(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(InputError, match=r"steps\[0\].*TracerWarning"):
        export_torch([DataDependent()], [_head(1)], torch.ones(1, 1, 40), out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


class Wrong(nn.Module):
    """A head whose output is noisy, so the ONNX graph cannot match the torch model."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(40, 10)

    def forward(self, x):
        return self.lin(x.flatten(1)) + 1e-3 * torch.randn(x.shape[0], 10)


def test_parity_failure_refuses(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(InputError, match="parity check failed"):
        export_torch([nn.Identity()], [Wrong()], torch.ones(1, 1, 40), out)
    assert not out.exists()


@pytest.mark.parametrize(
    ("stages", "heads", "example", "match"),
    [
        ([], [], torch.ones(1, 1, 40), "as many heads"),
        ([nn.Identity()], [], torch.ones(1, 1, 40), "as many heads"),
        (
            [lambda x: x],
            [_head(1)],
            torch.ones(1, 1, 40),
            r"stages\[0\]: expected a torch.nn.Module",
        ),
        ([nn.Identity()], [_head(1)], np.ones((1, 1, 40)), "example_input"),
        ([nn.Identity()], [_head(1)], {"x": np.ones((1, 40))}, r"example_input\['x'\]"),
        ([nn.Identity()], [_head(1)], torch.ones(1, 40, dtype=torch.complex64), "unsupported"),
    ],
)
def test_bad_arguments(tmp_path, stages, heads, example, match):
    with pytest.raises(InputError, match=match):
        export_torch(stages, heads, example, tmp_path / "b")


def test_model_without_stages(tmp_path):
    with pytest.raises(InputError, match="no `stages` and `heads`"):
        export_torch_model(nn.Linear(40, 10), torch.ones(1, 40), tmp_path / "b")


def test_missing_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtraError, match=r"edgeadapt\[torch\]"):
        torch_exporter._torch()


_FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        stages = [nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU()), nn.Identity()]
        heads = [nn.Sequential(nn.Flatten(), nn.Linear(160, 10)) for _ in stages]
        return stages, heads, torch.zeros(1, 1, 40)

    def family():
        return [nn.Sequential(nn.Flatten(), nn.Linear(40, 10)) for _ in range(2)], torch.zeros(1, 1, 40)

    def broken():
        return 42

    not_callable = 3
    """
)


def test_load_factory_from_a_file_or_a_module(tmp_path, monkeypatch):
    (tmp_path / "facmod.py").write_text(_FACTORIES)
    by_file = load_factory(f"{tmp_path / 'facmod.py'}:build")
    assert by_file.__name__ == "build"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "facmod", raising=False)
    assert load_factory("facmod:family").__name__ == "family"
    (tmp_path / "raises.py").write_text("raise RuntimeError('boom')\n")
    for spec, message in [
        ("nocolon", "expected MODULE:FUNCTION"),
        ("facmod:1bad", "expected MODULE:FUNCTION"),
        ("missing.py:f", "file not found: missing.py"),
        ("facmod:nope", "no callable 'nope'"),
        ("facmod:not_callable", "no callable 'not_callable'"),
        ("raises.py:f", "cannot import 'raises.py': RuntimeError: boom"),
    ]:
        with pytest.raises(InputError, match=message) as e:
            load_factory(spec)
        assert e.value.source == "factory"


def test_export_from_factory_dispatches_on_what_it_returns(tmp_path):
    (tmp_path / "facmod.py").write_text(_FACTORIES)
    where = tmp_path / "facmod.py"
    early = export_from_factory(f"{where}:build", tmp_path / "b")
    assert (early.kind, [s.name for s in early.states]) == ("early-exit", ["exit0", "exit1"])
    fam = export_from_factory(load_factory(f"{where}:family"), tmp_path / "f")
    assert fam.kind == "ensemble"
    model = SmallMultiExit()
    whole = export_from_factory(lambda: (model, torch.zeros(1, 1, 40)), tmp_path / "m")
    assert len(whole.states) == 3
    with pytest.raises(InputError, match="the factory must return") as e:
        export_from_factory(f"{where}:broken", tmp_path / "x")
    assert e.value.source == "factory"
    assert not (tmp_path / "x").exists()


def test_cli_factory(tmp_path, monkeypatch):
    (tmp_path / "mymodel.py").write_text(_FACTORIES)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(cli, ["export", "torch", "--factory", "mymodel:build", "-o", "b"])
    assert r.exit_code == 0, r.output
    assert "2 states" in r.output
    assert load_bundle(tmp_path / "b").verified
    r = runner.invoke(
        cli, ["export", "torch", "--factory", "mymodel.py:family", "-o", "f", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert '"kind": "ensemble"' in r.output
    for spec, message in [
        ("mymodel:broken", "the factory must return"),
        ("mymodel:nope", "no callable 'nope'"),
        ("missing.py:f", "file not found"),
        ("nocolon", "--factory: expected MODULE:FUNCTION"),
    ]:
        r = runner.invoke(cli, ["export", "torch", "--factory", spec, "-o", "x"])
        assert r.exit_code == 2, r.output
        assert message in r.output


def test_residual_bn_cnn_stages_full_path_equals_the_model(tmp_path):
    from tests import graphs

    net = graphs.residual_cnn()
    stages, heads = graphs.cnn_stages(net)
    bundle = export_torch(stages, heads, torch.zeros(2, 3, 16, 16), tmp_path / "b")
    assert [s.name for s in bundle.states] == ["exit0", "exit1", "exit2"]
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = graphs.run_chain(bundle, {"x": x})[-1]
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_masked_text_encoder_with_two_inputs(tmp_path):
    from tests import graphs

    net = graphs.text_encoder()
    stages, heads = graphs.text_stages(net)
    ids, mask = graphs.text_inputs(3)
    example = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    bundle = export_torch(stages, heads, example, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert [i.name for i in loaded.inputs] == ["input_ids", "attention_mask"]
    assert loaded.steps[0].inputs == ("input_ids", "attention_mask")
    assert loaded.steps[1].inputs == ("activation0", "attention_mask")
    for batch in (1, 6):
        ids, mask = graphs.text_inputs(batch, seed=batch)
        with torch.no_grad():
            want = net(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        got = graphs.run_chain(bundle, {"input_ids": ids, "attention_mask": mask})
        assert got[0].shape == (batch, graphs.TEXT_CLASSES)
        np.testing.assert_allclose(got[-1], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_stage_forward_naming_an_unknown_input_is_refused(tmp_path):
    class Odd(nn.Module):
        def forward(self, h, token_type_ids):
            return h

    with pytest.raises(InputError, match=r"stages\[1\]: forward parameter 'token_type_ids'"):
        export_torch(
            [nn.Identity(), Odd()], [_head(1), _head(1)], torch.ones(1, 1, 40), tmp_path / "b"
        )


def test_parity_tolerance_is_overridable(tmp_path):
    with pytest.raises(InputError, match=r"tolerance .* = max\(atol 1e-05, rtol 0\.001"):
        export_torch([nn.Identity()], [Wrong()], torch.ones(1, 1, 40), tmp_path / "b")
    bundle = export_torch(
        [nn.Identity()],
        [Wrong()],
        torch.ones(1, 1, 40),
        tmp_path / "b",
        options=TorchExportOptions(parity_rtol=1.0),
    )
    assert bundle.extra["parity"]["rtol"] == 1.0


def test_export_restores_each_submodule_mode(tmp_path):
    """A fresh container (in training mode) around eval-mode layers must not switch
    those layers to training mode when the export restores modes."""
    m = SmallMultiExit().eval()
    stages = [nn.Sequential(m.stages[0]), m.stages[1], m.stages[2]]
    export_torch(stages, m.heads, torch.zeros(2, 1, 40), tmp_path / "b")
    assert not any(x.training for x in m.modules())
    assert stages[0].training
