"""The evaluation npz format and the prediction importers: round trip and faults."""

from pathlib import Path

import numpy as np
import pytest

from edgeadapt.errors import InputError
from edgeadapt.formats.evaluation import (
    Evaluation,
    from_prediction_csvs,
    from_predictions_npz,
    load_evaluation,
    save_evaluation,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "imagenet-val-predictions"


def make(conf=True):
    labels = np.array([0, 1, 2, 1])
    pred = np.array([[0, 0], [1, 1], [0, 2], [2, 2]])
    c = np.full(pred.shape, 0.5, np.float32) if conf else None
    return Evaluation(labels, pred, np.array(["small", "big"]), c)


@pytest.mark.parametrize("conf", [True, False])
def test_round_trip(tmp_path, conf):
    p = tmp_path / "e.npz"
    save_evaluation(p, make(conf))
    ev = load_evaluation(p)
    assert ev.names == ("small", "big")
    assert ev.pred.dtype == np.int64
    assert ev.labels.dtype == np.int64
    assert (ev.conf is not None) == conf
    if conf:
        assert ev.conf.dtype == np.float32
    np.testing.assert_array_equal(ev.correct, [[1, 1], [1, 1], [0, 1], [0, 0]])
    np.testing.assert_allclose(ev.accuracies, [0.5, 0.75])


def test_every_measure_round_trips_and_selects(tmp_path):
    base = make()
    margin = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], np.float32)
    entropy = -margin
    ev = Evaluation(
        base.labels, base.pred, base.states, base.conf, conf_margin=margin, conf_entropy=entropy
    )
    p = tmp_path / "e.npz"
    save_evaluation(p, ev)
    with np.load(p) as raw:
        assert sorted(raw.files) == [
            "conf",
            "conf_entropy",
            "conf_margin",
            "labels",
            "pred",
            "states",
            "version",
        ]
    back = load_evaluation(p)
    np.testing.assert_array_equal(back.confidence("maxprob"), base.conf)
    np.testing.assert_array_equal(back.confidence("margin"), margin)
    np.testing.assert_array_equal(back.confidence("entropy"), entropy)
    swapped = back.select(["big", "small"])
    np.testing.assert_array_equal(swapped.confidence("margin"), margin[:, ::-1])
    np.testing.assert_array_equal(swapped.confidence("entropy"), entropy[:, ::-1])


def test_an_old_evaluation_has_maxprob_only(tmp_path):
    p = tmp_path / "old.npz"
    old = make()
    np.savez(p, labels=old.labels, pred=old.pred, states=old.states, conf=old.conf)
    ev = load_evaluation(p)
    np.testing.assert_array_equal(ev.confidence(), old.conf)
    with pytest.raises(InputError, match="has no margin confidences") as info:
        ev.confidence("margin")
    assert info.value.source == str(p)
    assert info.value.field == "conf_margin"
    with pytest.raises(InputError, match="must be one of maxprob, margin, entropy"):
        ev.confidence("logit")


def test_select_reorders_and_rejects_unknown():
    ev = make().select(["big", "small"])
    assert ev.names == ("big", "small")
    np.testing.assert_array_equal(ev.pred[:, 0], [0, 1, 2, 2])
    with pytest.raises(InputError, match=r"unknown state.*nope"):
        make().select(["nope"])


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"pred": np.zeros((2, 1), int), "states": np.array(["a"])}, "labels: missing"),
        (
            {"labels": np.zeros(2, int), "pred": np.zeros((2, 1)), "states": np.array(["a"])},
            "pred: dtype float64",
        ),
        (
            {"labels": np.zeros(2, int), "pred": np.zeros((3, 1), int), "states": np.array(["a"])},
            r"pred: expected integer \[2, 1\]",
        ),
        (
            {
                "labels": np.zeros(2, int),
                "pred": np.zeros((2, 1), int),
                "states": np.array(["a", 1], dtype=object),
            },
            "states: cannot load without pickle",
        ),
        (
            {
                "labels": np.zeros(2, int),
                "pred": np.zeros((2, 2), int),
                "states": np.array(["a", "a"]),
            },
            "states: duplicate state names: a",
        ),
        (
            {
                "labels": np.zeros(2, int),
                "pred": np.zeros((2, 1), int),
                "states": np.array(["a"]),
                "conf": np.full((2, 1), np.nan, np.float32),
            },
            "conf: confidences must be finite",
        ),
        (
            {
                "labels": np.zeros(2, int),
                "pred": np.zeros((2, 1), int),
                "states": np.array(["a"]),
                "conf": np.zeros((2, 2), np.float32),
            },
            r"conf: expected float \[2, 1\]",
        ),
        (
            {
                "labels": np.zeros(2, int),
                "pred": np.zeros((2, 1), int),
                "states": np.array(["a"]),
                "conf_margin": np.zeros((2, 2), np.float32),
            },
            r"conf_margin: expected float \[2, 1\]",
        ),
        (
            {
                "labels": np.zeros(2, int),
                "pred": np.zeros((2, 1), int),
                "states": np.array(["a"]),
                "conf_entropy": np.array([[0.0], [np.inf]], np.float32),
            },
            "conf_entropy: confidences must be finite",
        ),
        (
            {
                "labels": np.zeros(2, int),
                "pred": np.zeros((2, 1), int),
                "states": np.array(["a"]),
                "conf_margin": np.zeros((2, 1), int),
            },
            "conf_margin: dtype int64",
        ),
        (
            {"labels": np.zeros(0, int), "pred": np.zeros((0, 1), int), "states": np.array(["a"])},
            "labels: expected a non-empty",
        ),
    ],
)
def test_bad_files_name_the_key(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(InputError, match=match) as info:
        load_evaluation(p)
    assert str(p) in str(info.value)


def test_example_predictions_import():
    ev = from_predictions_npz(EXAMPLE / "predictions.npz")
    assert ev.pred.shape == (50000, 15)
    acc = dict(zip(ev.names, ev.accuracies, strict=True))
    assert acc["swin_base_patch4_window7_224"] == pytest.approx(0.8526, abs=1e-4)


def test_npz_without_names(tmp_path):
    p = tmp_path / "p.npz"
    np.savez(p, pred=np.zeros((2, 1), int), labels=np.zeros(2, int))
    with pytest.raises(InputError, match="models"):
        from_predictions_npz(p)


def write(path, text):
    path.write_text(text)
    return path


def test_csv_import_matches_rows_by_file(tmp_path):
    a = write(tmp_path / "a.csv", "file,predicted,truth\nx.jpg,1,1\ny.jpg,2,0\n")
    b = write(tmp_path / "b.csv", "truth,file,predicted\n0,y.jpg,0\n1,x.jpg,3\n")
    ev = from_prediction_csvs({"a": a, "b": b})
    assert ev.names == ("a", "b")
    np.testing.assert_array_equal(ev.labels, [1, 0])
    np.testing.assert_array_equal(ev.pred, [[1, 3], [2, 0]])


@pytest.mark.parametrize(
    ("second", "match"),
    [
        ("file,predicted,truth\nx.jpg,1,1\nz.jpg,2,0\n", "other files"),
        ("file,predicted,truth\nx.jpg,1,1\ny.jpg,2,5\n", "truth of 'y.jpg' differs"),
        ("file,predicted\nx.jpg,1\n", "missing column.*truth"),
        ("file,predicted,truth\nx.jpg,one,1\n", "line 2: predicted and truth must be integers"),
        ("file,predicted,truth\nx.jpg,1,1\nx.jpg,1,1\n", "line 3: file 'x.jpg' listed twice"),
        ("file,predicted,truth\n", "no rows"),
    ],
)
def test_csv_import_faults(tmp_path, second, match):
    a = write(tmp_path / "a.csv", "file,predicted,truth\nx.jpg,1,1\ny.jpg,2,0\n")
    b = write(tmp_path / "b.csv", second)
    with pytest.raises(InputError, match=match):
        from_prediction_csvs({"a": a, "b": b})


def test_the_data_source_record_round_trips_and_is_optional(tmp_path):
    from dataclasses import replace

    p = tmp_path / "e.npz"
    save_evaluation(p, make())
    assert load_evaluation(p).data is None  # files without it read as before
    record = {"kind": "images", "path": "val", "samples": 4, "recipe": {"resize": 256}}
    save_evaluation(p, replace(make(), data=record))
    assert load_evaluation(p).data == record
    arrays = dict(np.load(p))
    for bad, why in (("[1, 2]", "expected a JSON object"), ("{", "invalid JSON")):
        np.savez(tmp_path / "bad.npz", **{**arrays, "data_source": np.array(bad)})
        with pytest.raises(InputError, match=f"bad.npz: data_source: {why}"):
            load_evaluation(tmp_path / "bad.npz")
