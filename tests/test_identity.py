"""Every file made from a bundle records its identity, and every reader refuses a file
made for another one, naming both: the campaign's cases as a table (an evaluation of a
bundle whose step weights were negated and re-hashed, with the same state names; labels
and predictions outside the bundle's classes; an evaluation of the old format)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.digest import file_sha256
from edgeadapt.formats.evaluation import (
    Evaluation,
    check_evaluation,
    import_predictions,
    load_evaluation,
    save_evaluation,
)
from edgeadapt.formats.identity import BundleIdentity, UncheckedWarning, check_identity
from edgeadapt.formats.plan import check_plan
from edgeadapt.formats.profile import load_profile, save_profile
from edgeadapt.measure.evaluate import evaluate_bundle
from tests.clirun import invoke
from tests.conftest import MULTIEXIT
from tests.device_inputs import known_profile
from tests.plans import runner_plan


def negated_copy(root: Path) -> Path:
    """The multi-exit bundle with step 1's first weight tensor negated and the manifest
    re-hashed: a different, valid bundle with the same state names."""
    d = Path(
        shutil.copytree(
            MULTIEXIT, root / "negated", ignore=shutil.ignore_patterns("profiles", "*.npz")
        )
    )
    step = d / "step1.onnx"
    model = onnx.load(step)
    t = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
    onnx.save(model, step)
    manifest = json.loads((d / "manifest.json").read_text())
    sha = file_sha256(step)
    manifest["files"]["step1.onnx"] = sha
    for s in manifest["states"]:
        if s["file"] == "step1.onnx":
            s["sha256"] = sha
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return d


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The shipped bundle, its negated copy, and for each a profile and an evaluation
    on the same 120 samples; a labelled set."""
    root = tmp_path_factory.mktemp("identity")
    original = Path(
        shutil.copytree(
            MULTIEXIT, root / "original", ignore=shutil.ignore_patterns("profiles", "*.npz")
        )
    )
    bundles = {"original": load_bundle(original), "negated": load_bundle(negated_copy(root))}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 1, 40)).astype(np.float32)
    y = rng.integers(0, 10, 120)
    np.savez(root / "data.npz", x=x, y=y)
    files = {"data": root / "data.npz", "root": root}
    for name, b in bundles.items():
        files[f"{name}/profile"] = root / f"{name}-profile.json"
        save_profile(files[f"{name}/profile"], known_profile(b))
        files[f"{name}/evaluation"] = root / f"{name}-evaluation.npz"
        save_evaluation(files[f"{name}/evaluation"], evaluate_bundle(b, x, y))
    return bundles, files


def test_the_negated_bundle_differs_only_by_its_identity(two):
    bundles, _ = two
    a, b = bundles["original"], bundles["negated"]
    assert [s.name for s in a.states] == [s.name for s in b.states]
    assert a.manifest_sha256 != b.manifest_sha256


def test_evaluate_records_the_bundle_and_its_classes(two):
    bundles, files = two
    ev = load_evaluation(files["original/evaluation"])
    assert ev.bundle == BundleIdentity.of(bundles["original"])
    assert ev.num_classes == 10
    assert ev.version == 2


@pytest.mark.parametrize(
    "command",
    [
        ["plan", "{bundle}", "-o", "{out}/p.json"],
        ["bound", "{bundle}"],
        ["report", "{bundle}", "-o", "{out}/r.html"],
    ],
    ids=["plan", "bound", "report"],
)
def test_an_evaluation_of_another_bundle_with_the_same_states_is_refused(two, tmp_path, command):
    """The campaign's worst case: accepted by plan and report before."""
    bundles, files = two
    fill = {
        "bundle": bundles["original"].path,
        "profile": files["original/profile"],
        "evaluation": files["negated/evaluation"],
        "out": tmp_path,
    }
    inputs = ["--profile", "{profile}", "--evaluation", "{evaluation}"]
    result = invoke(*(part.format(**fill) for part in [*command, *inputs]))
    assert result.exit_code == 2, result.output
    assert (
        "negated-evaluation.npz: bundle_manifest_sha256: was made for another bundle"
        in result.output
    )
    negated, original = bundles["negated"].manifest_sha256, bundles["original"].manifest_sha256
    assert negated[:12] in result.output  # both identities named
    assert original[:12] in result.output
    assert str(bundles["original"].path) in result.output
    assert list(tmp_path.iterdir()) == []


def test_the_same_evaluation_is_accepted_for_its_own_bundle(two, tmp_path):
    bundles, files = two
    result = invoke(
        "plan",
        bundles["negated"].path,
        "--profile",
        files["negated/profile"],
        "--evaluation",
        files["negated/evaluation"],
        "-o",
        tmp_path / "p.json",
    )
    assert result.exit_code == 0, result.output
    assert "cannot be checked" not in result.output


@pytest.mark.parametrize("what", ["profile", "plan"])
def test_profiles_and_plans_of_another_bundle_name_both(two, tmp_path, what):
    bundles, files = two
    original, negated = bundles["original"], bundles["negated"]
    if what == "profile":
        with pytest.raises(
            InputError, match=r"\$\.bundle\.manifest_sha256: was made for another bundle"
        ) as e:
            load_profile(files["negated/profile"], original)
    else:
        plan = runner_plan(negated, [0, 3], [0.5], [0.1, 1.0])
        with pytest.raises(InputError, match="was made for another bundle") as e:
            check_plan(plan, original, "plan.json")
    assert negated.manifest_sha256[:12] in str(e.value)
    assert original.manifest_sha256[:12] in str(e.value)


def test_an_identity_with_other_state_names_is_refused_by_the_states_field():
    bundle = load_bundle(MULTIEXIT)
    renamed = BundleIdentity(bundle.manifest_sha256, ("a", "b", "c", "d"))
    with pytest.raises(InputError, match=r"f\.json: \$\.bundle\.states: was made for another"):
        check_identity(renamed, bundle, source="f.json", redo="redo")


def _old_format(path: Path, ev: Evaluation) -> Path:
    """`ev` saved as version 1 wrote it: no version, class count or identity."""
    np.savez(path, labels=ev.labels, pred=ev.pred, states=ev.states, conf=ev.conf)
    return path


def test_an_old_evaluation_reads_with_a_warning_that_it_cannot_be_checked(two, tmp_path):
    bundles, files = two
    old = _old_format(tmp_path / "old.npz", load_evaluation(files["original/evaluation"]))
    ev = load_evaluation(old)
    assert (ev.version, ev.bundle, ev.num_classes) == (1, None, None)
    with pytest.warns(UncheckedWarning, match="written before evaluations recorded the bundle"):
        checked = check_evaluation(ev, bundles["original"])
    assert checked.names == ev.names
    result = invoke(
        "bound",
        bundles["original"].path,
        "--profile",
        files["original/profile"],
        "--evaluation",
        old,
        "--envelope",
    )
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1  # once, though the evaluation is read and checked twice
    assert "cannot be checked to be of the bundle" in notes[0]


def test_an_evaluation_without_identity_in_memory_is_the_callers_own():
    bundle = load_bundle(MULTIEXIT)
    ev = Evaluation(
        np.array([1, 2]), np.zeros((2, 4), np.int64), np.array([s.name for s in bundle.states])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_evaluation(ev, bundle)


@pytest.mark.parametrize(
    ("field", "value"),
    [("labels", 99), ("pred", 99), ("labels", 10), ("pred", 10)],
)
def test_labels_and_predictions_outside_the_bundles_classes_are_refused(
    two, tmp_path, field, value
):
    """plan and bound accepted 99 in a 10-class bundle."""
    bundles, files = two
    ev = load_evaluation(files["original/evaluation"])
    arrays = {"labels": ev.labels.copy(), "pred": ev.pred.copy()}
    arrays[field][3] = value
    with pytest.raises(InputError, match=rf"{field}: class indices must lie in 0\.\.9"):
        Evaluation(arrays["labels"], arrays["pred"], ev.states, num_classes=10)
    bad = tmp_path / "bad.npz"
    np.savez(bad, labels=arrays["labels"], pred=arrays["pred"], states=ev.states, conf=ev.conf)
    with (
        pytest.warns(UncheckedWarning),
        pytest.raises(InputError, match=rf"bad\.npz: {field}: class indices"),
    ):
        check_evaluation(load_evaluation(bad), bundles["original"])
    b, profile = bundles["original"].path, files["original/profile"]
    for args in (
        ["plan", b, "--profile", profile, "--evaluation", bad, "-o", tmp_path / "p.json"],
        ["bound", b, "--profile", profile, "--evaluation", bad],
    ):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert f"bad.npz: {field}: class indices must lie in 0..9" in result.output


def test_a_recorded_class_count_bounds_the_table_commands(two, tmp_path):
    """subset and bound --table have no bundle: the evaluation's own class count, or
    --classes, bounds its labels and predictions."""
    _, files = two
    ev = load_evaluation(files["original/evaluation"])
    table = tmp_path / "t.csv"
    table.write_text(
        "name,cost,accuracy\n" + "".join(f"{n},{i + 1},0.5\n" for i, n in enumerate(ev.names))
    )
    pred = ev.pred.copy()
    pred[0, 0] = 12
    np.savez(
        tmp_path / "e.npz", version=2, num_classes=10, labels=ev.labels, pred=pred, states=ev.states
    )
    result = invoke("subset", "--table", table, "--evaluation", tmp_path / "e.npz")
    assert result.exit_code == 2
    assert "e.npz: pred: class indices must lie in 0..9" in result.output
    np.savez(tmp_path / "v1.npz", labels=ev.labels, pred=pred, states=ev.states)
    result = invoke("bound", "--table", table, "--evaluation", tmp_path / "v1.npz", "--classes", 10)
    assert result.exit_code == 2
    assert (
        "v1.npz: pred: class indices must lie in 0..9 (the 10 classes of --classes)"
        in result.output
    )


def test_import_predictions_records_the_bundle_it_is_given(two, tmp_path):
    bundles, files = two
    bundle = bundles["original"]
    names = [s.name for s in bundle.states]
    labels = np.arange(30) % 10
    np.savez(
        tmp_path / "p.npz",
        pred=np.tile(labels[:, None], (1, 5)),
        labels=labels,
        models=np.array([*names, "extra"]),
    )
    result = invoke(
        "import-predictions",
        tmp_path / "p.npz",
        "-o",
        tmp_path / "e.npz",
        "--bundle",
        bundle.path,
        "--states",
        ",".join(names),
    )
    assert result.exit_code == 0, result.output
    ev = load_evaluation(tmp_path / "e.npz")
    assert (ev.bundle, ev.num_classes) == (BundleIdentity.of(bundle), 10)
    result = invoke(
        "bound",
        bundles["negated"].path,
        "--profile",
        files["negated/profile"],
        "--evaluation",
        tmp_path / "e.npz",
    )
    assert result.exit_code == 2
    assert "was made for another bundle" in result.output
    with pytest.raises(InputError, match="not in the bundle: extra"):
        import_predictions([str(tmp_path / "p.npz")], bundle=bundle)
    np.savez(tmp_path / "q.npz", pred=np.full((30, 4), 10), labels=labels, models=np.array(names))
    with pytest.raises(InputError, match=r"q\.npz: pred: class indices must lie in 0\.\.9"):
        import_predictions([str(tmp_path / "q.npz")], bundle=bundle)
    with pytest.raises(InputError, match="has 10 classes, not 7"):
        import_predictions([str(tmp_path / "p.npz")], states=names, bundle=bundle, classes=7)
