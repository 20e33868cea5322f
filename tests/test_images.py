"""edgeadapt.data.images: image folders and CSV lists with a preprocessing recipe, for
evaluate, run and calibration: the same results as the npz and the loader script holding
the same arrays, decoded a batch at a time, and every bad file named."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.data.images import PRESETS, Recipe, load_recipe, make_recipe, open_images
from edgeadapt.data.sources import DataSpec, open_source
from edgeadapt.errors import InputError, MissingExtraError
from edgeadapt.formats.bundle import InputSpec
from edgeadapt.formats.evaluation import load_evaluation
from tests.clirun import invoke

Image = pytest.importorskip("PIL.Image")

CLASSES = ["ant", "bee", "cat", "dog"]
PER_CLASS = 60  # 240 images
SIDE = 8
SPECS = [InputSpec("x", ("batch", 3, SIDE, SIDE), "float32")]


def _classifier(path: Path, seed: int, hidden: bool) -> Path:
    """A linear (or one-hidden-layer) classifier of [batch, 3, 8, 8] images, 4 classes."""
    rng = np.random.default_rng(seed)
    d = 3 * SIDE * SIDE
    inits = []

    def weight(name: str, *shape: int) -> str:
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    nodes = [helper.make_node("Flatten", ["x"], ["flat"])]
    if hidden:
        nodes += [
            helper.make_node(
                "Gemm", ["flat", weight("w1", 16, d), weight("b1", 16)], ["h"], transB=1
            ),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node(
                "Gemm", ["r", weight("w2", 4, 16), weight("b2", 4)], ["logits"], transB=1
            ),
        ]
    else:
        nodes.append(
            helper.make_node(
                "Gemm", ["flat", weight("w", 4, d), weight("b", 4)], ["logits"], transB=1
            )
        )
    graph = helper.make_graph(
        nodes,
        "images",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """A folder of 240 PNGs in 4 class folders, the bundle that reads them, the same
    pixels (scaled to [0, 1]) as an npz and as a loader script, and a CSV list."""
    from edgeadapt.exporters.family import export_family

    root = tmp_path_factory.mktemp("images")
    folder = root / "train"
    rng = np.random.default_rng(0)
    xs, ys, lines = [], [], ["path,label"]
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
            pixels[..., label % 3] //= 4  # a little class signal
            Image.fromarray(pixels).save(folder / name / f"{i:03d}.png")
            xs.append(pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
            ys.append(label)
            lines.append(f"train/{name}/{i:03d}.png,{label}")
    npz = root / "data.npz"
    np.savez(npz, x=np.stack(xs), y=np.array(ys))
    csv = root / "list.csv"
    csv.write_text("\n".join(lines) + "\n")
    script = root / "loader.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import numpy as np

            def load_data():
                d = np.load({str(npz)!r})
                for lo in range(0, len(d["y"]), 50):
                    yield {{"x": d["x"][lo:lo + 50]}}, d["y"][lo:lo + 50]
            """
        )
    )
    models = [_classifier(root / "small.onnx", 1, False), _classifier(root / "big.onnx", 2, True)]
    bundle = export_family(models, root / "bundle").path
    return {"folder": folder, "npz": npz, "csv": csv, "script": script, "bundle": bundle}


def _evaluate(bundle, data, out, *extra):
    result = invoke("evaluate", bundle, "--data", data, "--batch", 32, "-o", out, "--json", *extra)
    assert result.exit_code == 0, result.output
    return load_evaluation(out)


def test_folder_csv_script_and_npz_give_identical_evaluations(image_set, tmp_path):
    got = {
        kind: _evaluate(image_set["bundle"], image_set[kind], tmp_path / f"{kind}.npz")
        for kind in ("npz", "script", "folder", "csv")
    }
    for kind in ("script", "folder", "csv"):
        for key in ("labels", "pred", "conf", "conf_margin", "conf_entropy"):
            np.testing.assert_array_equal(
                getattr(got[kind], key), getattr(got["npz"], key), err_msg=f"{kind} {key}"
            )
    assert got["folder"].labels.tolist() == [c for c in range(4) for _ in range(PER_CLASS)]
    assert got["folder"].data == {
        "kind": "images",
        "path": str(image_set["folder"]),
        "samples": 240,
        "list": "folder",
        "classes": 4,
        "recipe": Recipe().to_json(),
    }
    assert got["csv"].data["list"] == "csv"
    assert got["csv"].data["classes"] is None


def test_run_on_a_folder_equals_the_npz(image_set):
    answers = []
    for kind in ("npz", "folder"):
        result = invoke(
            "run", image_set["bundle"], "--input", image_set[kind], "--thresholds", "0.5", "--json"
        )
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.output)["pred"])
    assert answers[0] == answers[1]


def test_the_recipe_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    folder = tmp_path / "f"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)  # 20 wide
    Image.fromarray(pixels).save(folder / "a" / "one.png")
    Image.fromarray(pixels[:, :, ::-1].copy()).save(folder / "b" / "two.png")
    recipe = Recipe(resize=10, crop=SIDE, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    inputs = open_images(folder, SPECS, recipe)
    ((_, feeds),) = inputs.batches(8)
    # by hand: shorter side 12 -> 10 (width 20 -> 16), bilinear; centre 8x8 at (1, 4)
    small = Image.fromarray(pixels).resize((16, 10), Image.Resampling.BILINEAR)
    want = np.asarray(small, np.float32)[1:9, 4:12] / np.float32(255)
    want = (want - np.float32([0.5, 0.4, 0.3])) / np.float32([0.2, 0.25, 0.5])
    np.testing.assert_allclose(feeds["x"][0], want.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    assert feeds["x"].shape == (2, 3, SIDE, SIDE)
    assert inputs.labels(2).tolist() == [0, 1]


def test_nhwc_and_grey_inputs(tmp_path):
    folder = tmp_path / "f"
    (folder / "a").mkdir(parents=True)
    pixels = np.random.default_rng(2).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a" / "x.png")
    nhwc = [InputSpec("x", ("batch", SIDE, SIDE, 3), "float32")]
    ((_, feeds),) = open_images(folder, nhwc, Recipe(layout="NHWC")).batches(4)
    np.testing.assert_array_equal(feeds["x"][0], pixels.astype(np.float32) / np.float32(255))
    grey = [InputSpec("x", ("batch", 1, SIDE, SIDE), "float32")]
    ((_, feeds),) = open_images(folder, grey, None).batches(4)
    want = np.asarray(Image.fromarray(pixels).convert("L"), np.float32) / np.float32(255)
    np.testing.assert_array_equal(feeds["x"][0, 0], want)
    with pytest.raises(
        InputError, match=r"layout: input x \[batch, 8, 8, 3\] read as NCHW has 8 channels"
    ):
        open_images(folder, nhwc, None)


def test_images_are_decoded_a_batch_at_a_time(image_set, monkeypatch):
    import edgeadapt.data.images as images

    opened = []
    decode = images._decode
    monkeypatch.setattr(images, "_decode", lambda p, *a: opened.append(p) or decode(p, *a))
    batches = open_source(image_set["folder"], SPECS).batches(16)
    lo, feeds = next(batches)
    assert (lo, feeds["x"].shape[0], len(opened)) == (0, 16, 16)


def test_recipes_from_presets_json_and_options(tmp_path):
    assert load_recipe("imagenet") == PRESETS["imagenet"]
    assert PRESETS["imagenet"] == Recipe(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    path = tmp_path / "r.json"
    path.write_text('{"preset": "imagenet", "crop": 192, "layout": "NHWC"}')
    assert load_recipe(path) == Recipe(
        256, 192, PRESETS["imagenet"].mean, PRESETS["imagenet"].std, "NHWC"
    )
    assert make_recipe(None) is None
    assert make_recipe(None, std=[0.5]) == Recipe(std=(0.5,))
    assert make_recipe("imagenet", resize=232).resize == 232
    path.write_text('{"resise": 256}')
    with pytest.raises(InputError, match=r"r\.json: \$\.resise: unknown field"):
        load_recipe(path)
    path.write_text('{"std": [0.5, 0, 0.5]}')
    with pytest.raises(InputError, match=r"r\.json: \$\.std: must be > 0"):
        load_recipe(path)
    with pytest.raises(InputError, match="expected a preset"):
        load_recipe("imagenette")


# ------------------------------------------------------------------ faults


def _copy_of(image_set, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(image_set["folder"], tmp_path / "train"))


def _error(bundle, data, *extra):
    out = Path(bundle).parent / "never.npz"
    result = invoke("evaluate", bundle, "--data", data, "-o", out, *extra)
    assert result.exit_code == 2, result.output
    assert not out.exists()
    return result.output.strip().splitlines()[-1]


def test_a_non_image_file_in_a_class_folder(image_set, tmp_path):
    folder = _copy_of(image_set, tmp_path)
    (folder / "bee" / "notes.txt").write_text("not an image")
    error = _error(image_set["bundle"], folder)
    assert error.startswith(f"error: {folder / 'bee' / 'notes.txt'}: not an image file")


def test_an_unreadable_image(image_set, tmp_path):
    folder = _copy_of(image_set, tmp_path)
    (folder / "cat" / "007.png").write_bytes(b"\x89PNG but not really")
    error = _error(image_set["bundle"], folder)
    assert error.startswith(f"error: {folder / 'cat' / '007.png'}: not a readable image")


def test_folder_layout_faults(image_set, tmp_path):
    folder = _copy_of(image_set, tmp_path)
    (folder / "README").write_text("stray")
    assert "a file beside the class folders" in _error(image_set["bundle"], folder)
    (folder / "README").unlink()
    (folder / "eel").mkdir()
    error = _error(image_set["bundle"], folder)
    assert "has 5 class folders, the model has 4 classes" in error


def test_csv_faults_name_the_line_and_the_sample(image_set, tmp_path):
    base = image_set["csv"].read_text().splitlines()
    csv = image_set["csv"].parent / "bad.csv"
    csv.write_text("\n".join([*base[:4], "train/ant/999.png,0"]) + "\n")
    error = _error(image_set["bundle"], csv)
    assert error.startswith(f"error: {csv}: line 5: no such image file 'train/ant/999.png'")
    csv.write_text("\n".join([*base[:3], base[3].replace(",0", ",7")]) + "\n")
    error = _error(image_set["bundle"], csv)
    assert error == (
        f"error: {csv}: line 4: sample 2 (002.png): label 7 outside the 4 classes (0..3)"
    )
    csv.write_text("\n".join([*base[:3], base[3].replace(",0", ",x")]) + "\n")
    assert "line 4: label must be an integer class index, got 'x'" in _error(
        image_set["bundle"], csv
    )


def test_recipe_options_are_checked_against_the_model(image_set):
    error = _error(image_set["bundle"], image_set["folder"], "--crop", "7")
    assert error == "error: --crop: crop 7 differs from the model input's 8x8"
    error = _error(image_set["bundle"], image_set["npz"], "--recipe", "imagenet")
    assert error.startswith("error: --recipe: a preprocessing recipe applies to image folders")
    error = _error(image_set["bundle"], image_set["folder"], "--mean", "0.5,nan")
    assert "--mean: expected 1 or 3 finite numbers" in error


def test_a_small_image_needs_a_resize(image_set, tmp_path):
    folder = _copy_of(image_set, tmp_path)
    Image.fromarray(np.zeros((6, 9, 3), np.uint8)).save(folder / "dog" / "000.png")
    error = _error(image_set["bundle"], folder)
    assert "dog/000.png: image is 9x6 after the recipe, smaller than the model input's 8x8" in error
    result = invoke(
        "evaluate", image_set["bundle"], "--data", folder, "--resize", "8", "-o", tmp_path / "e.npz"
    )
    assert result.exit_code == 0, result.output


def test_without_pillow_the_error_says_what_to_install(image_set, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingExtraError, match=r"edgeadapt\[images\]"):
        open_source(DataSpec(image_set["folder"]), SPECS)


def test_export_calibration_from_a_folder_equals_the_npz(image_set, tmp_path):
    """Heads trained on the folder (cut at the hidden layer) are those trained on the npz."""
    model = image_set["bundle"].parent / "big.onnx"
    files = []
    for kind in ("npz", "folder", "csv"):
        out = tmp_path / kind
        result = invoke(
            "export", "onnx", model, "--cut", "r", "--logits", "logits",
            "--calibration", image_set[kind], "--batch-size", 64, "-o", out, "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        files.append(json.loads((out / "manifest.json").read_text())["files"])
    assert files[0] == files[1] == files[2]
