"""examples/imagenet-on-device: the pipeline on two tiny timm-style models, and its
subset search against a per-sample reference."""

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.profile import load_profile
from tests.scripts import script_module

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "imagenet-on-device"


@pytest.fixture(scope="module")
def example():
    with script_module("examples/imagenet-on-device/run.py", "imagenet_on_device_run") as module:
        yield module


# ------------------------------------------------------------------ the subset search


def reference(correct, costs, states, cascade):
    """Per sample, in plain Python: the cheapest correct state of `states` (tried
    cheapest first), paying the states before it with `cascade`."""
    total, hits = 0.0, 0
    for row in correct:
        paid = 0.0
        for j in states:
            paid = paid + costs[j] if cascade else costs[j]
            if row[j]:
                hits += 1
                break
        else:
            paid = costs[states[0]]
        total += paid
    return hits / len(correct), total / len(correct)


def test_oracle_cost_by_hand(example):
    # samples right only at state 0, only 1, only 2, nowhere; costs 1, 2, 10. Subset
    # (1, 2) in cascade: 2 (none right there, the cheapest), 2, 2 + 10, 2
    correct = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    rows, weights = example._rows(correct)
    costs = np.array([1.0, 2.0, 10.0])
    assert example.oracle_cost(rows, weights, costs, (0, 1, 2), False) == (0.75, 3.5)
    assert example.oracle_cost(rows, weights, costs, (0, 1, 2), True) == (0.75, 4.5)
    assert example.oracle_cost(rows, weights, costs, (1, 2), True) == (0.5, 4.5)


@pytest.mark.parametrize("cascade", [False, True])
def test_best_subsets_match_an_exhaustive_per_sample_search(example, cascade):
    rng = np.random.default_rng(7)
    skill = np.array([0.3, 0.45, 0.5, 0.6, 0.8])
    correct = rng.random((300, 5)) < skill
    costs = rng.uniform(1, 20, 5)
    top = 4
    got = example.best_subsets(correct, costs, [2, 3, 4], cascade, top)
    for k, (states, a, r) in got.items():
        assert top in states
        assert list(states) == sorted(states, key=lambda i: costs[i])
        assert (a, r) == pytest.approx(reference(correct, costs, states, cascade))
        others = [i for i in range(5) if i != top]
        best = min(
            reference(correct, costs, sorted((*extra, top), key=lambda i: costs[i]), cascade)[1]
            for extra in itertools.combinations(others, k - 1)
        )
        assert r == pytest.approx(best)


# ------------------------------------------------------------------ the pipeline


def tiny_members(example):
    """Two timm-style classifiers: a conv net at 32x32 and a patch-embedding transformer
    whose predictions were made at 48x48 (so its member resizes the shared input)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)

    conv = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )

    class TinyViT(nn.Module):
        """Patch embedding, one pre-norm attention block (timm's layout), mean-pool head."""

        def __init__(self, dim=16, heads=2):
            super().__init__()
            self.heads = heads
            self.patch = nn.Conv2d(3, dim, 8, stride=8)
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.head = nn.Linear(dim, 10)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            b, n, c = x.shape
            qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
            x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
            x = x + self.mlp(self.norm2(x))
            return self.head(x.mean(dim=1))

    return [
        example.Member("tiny_conv", conv, 32),
        example.Member("tiny_vit", TinyViT(), 48),
    ]


@pytest.fixture(scope="module")
def run(example, tmp_path_factory):
    pytest.importorskip("matplotlib")
    members = tiny_members(example)
    tmp = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 400)
    pred = np.stack(
        [np.where(rng.random(400) < p, labels, (labels + 1) % 10) for p in (0.5, 0.7)], axis=1
    )
    predictions = tmp / "predictions.npz"
    np.savez(
        predictions,
        pred=pred.astype(np.int16),
        labels=labels.astype(np.int16),
        models=np.array(["tiny_conv", "tiny_vit"]),
    )
    lines = []
    summary = example.run_pipeline(
        members,
        predictions,
        tmp / "out",
        {"tiny_conv": 0.001, "tiny_vit": 0.002},
        seconds_per_state=0.05,
        log=lines.append,
    )
    right = pred == labels[:, None]
    order = [["tiny_conv", "tiny_vit"].index(st["name"]) for st in summary["states"]]
    return summary, tmp / "out", right[:, order], lines  # columns in the bundle's order


def test_pipeline_profiles_the_bundle_and_uses_its_costs(run):
    summary, out, _, _ = run
    bundle = load_bundle(out / "bundle")
    assert sorted(s.name for s in bundle.states) == ["tiny_conv", "tiny_vit"]
    assert bundle.flops == sorted(bundle.flops)  # the family is in counted-FLOPs order
    assert [s["name"] for s in summary["states"]] == [s.name for s in bundle.states]
    assert bundle.input.shape[1:] == (3, 32, 32)  # the smaller size; tiny_vit resizes
    prof = load_profile(out / "profile.json", bundle)
    assert prof.settings["seconds_per_state"] == 0.05
    p50 = [s.p50 for s in prof.step_stats(1)]
    assert [s["p50_ms"] for s in summary["states"]] == p50
    with (out / "ms-direct.csv").open() as f:
        assert [float(r["cost"]) for r in csv.DictReader(f)] == pytest.approx(p50, rel=1e-5)
    with (out / "ms-cascade.csv").open() as f:
        cascade = [float(r["cost"]) for r in csv.DictReader(f)]
    cheap = int(np.argmin(p50))
    assert cascade[cheap] == pytest.approx(p50[cheap], rel=1e-5)
    assert cascade[1 - cheap] == pytest.approx(sum(p50), rel=1e-5)


def test_pipeline_oracle_comes_from_the_real_predictions(run):
    summary, _, correct, _ = run
    any_right = float(correct.any(axis=1).mean())
    for view in ("gmacs", "ms-direct", "ms-cascade"):
        assert summary["views"][view]["bound"]["exact"]["a_oracle"] == pytest.approx(any_right)
    accs = [s["accuracy"] for s in summary["states"]]
    assert accs == pytest.approx(correct.mean(axis=0).tolist())
    # ms-direct: the cheapest correct model's p50, else the cheapest model's
    p50 = np.array([s["p50_ms"] for s in summary["states"]])
    low = int(np.argmin(p50))
    hit_low = correct[:, low]
    hit_any = correct.any(axis=1)
    want = np.where(hit_low, p50[low], np.where(hit_any, p50[1 - low], p50[low])).mean()
    assert summary["views"]["ms-direct"]["bound"]["exact"]["r_oracle"] == pytest.approx(want)
    # the keep-top search on two models has one answer, both models
    chosen = summary["views"]["ms-cascade"]["subset_keep_top"]["2"]
    assert sorted(chosen["states"]) == ["tiny_conv", "tiny_vit"]
    assert chosen["r_oracle"] == pytest.approx(
        summary["views"]["ms-cascade"]["bound"]["exact"]["r_oracle"]
    )


def test_pipeline_writes_the_report_and_prints_the_tables(run):
    summary, out, _, lines = run
    assert (out / "report" / "report.html").is_file()
    assert (out / "accuracy-vs-cost.png").is_file()
    text = "\n".join(lines)
    for needle in ("$ edgeadapt export family", "$ edgeadapt profile", "p50 ms", "ms/GMAC"):
        assert needle in text
    assert "where the choice differs" in text
    assert summary["profile"]["noisy"] == bool(summary["profile"]["noise_reasons"])


# ------------------------------------------------------------------ the agreement cascade


@pytest.fixture(scope="module")
def cascade():
    with script_module("examples/imagenet-on-device/cascade.py", "imagenet_cascade") as module:
        yield module


def test_cascade_plans_a_promised_agreement_cascade_from_predictions(cascade, tmp_path):
    """Three cheap models that are right together on most images and a costly one:
    the script plans an agreement cascade from the predictions and the summary's
    measured ms, cheapest first, and reports it against the costly model alone."""
    import json

    rng = np.random.default_rng(3)
    n = 6000
    labels = rng.integers(0, 20, n)
    names = ["big", "small", "mid", "tiny"]
    skill = {"big": 0.92, "small": 0.8, "mid": 0.85, "tiny": 0.7}
    pred = np.stack(
        [np.where(rng.random(n) < skill[m], labels, rng.integers(0, 20, n)) for m in names], 1
    )
    np.savez(tmp_path / "p.npz", pred=pred.astype(np.int16), labels=labels, models=names)
    ms = {"big": 100.0, "small": 8.0, "mid": 12.0, "tiny": 4.0}
    summary = {"states": [{"name": m, "p50_ms": ms[m]} for m in names]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "cascade.json"
    args = ["--summary", str(tmp_path / "summary.json"), "--predictions", str(tmp_path / "p.npz")]
    assert cascade.main([*args, "--max-drop", "0.02", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["order"] == ["tiny", "small", "mid", "big"]
    (plan,) = result["plans"]
    assert plan["reference"] == "big"
    assert plan["states"][-1] == "big"
    assert len(plan["states"]) > 1
    assert plan["speedup"] > 1.5
    assert plan["cost_ms"] == pytest.approx(100.0 / plan["speedup"])
    assert "promise: accuracy drop <= 2.00%" in plan["statement"]
    assert "agreement cascades" in cascade.cascade_text(result)
