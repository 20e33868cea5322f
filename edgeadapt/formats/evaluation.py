"""The evaluation format: per-sample results of every state on a labelled set (``.npz``).

Keys: ``labels`` int64 ``[N]``, ``pred`` int64 ``[N, S]``, ``states`` unicode ``[S]``
(state names, the columns of ``pred`` and of the confidences) and, optionally, the
confidence of each state in each measure of the decision kernel, float32 ``[N, S]``:
``conf`` (maxprob), ``conf_margin`` (margin) and ``conf_entropy`` (negative entropy).
Version 2 adds ``version`` (int, 2), ``num_classes`` (int, the class count that labels
and predictions lie below) and the identity of the bundle it scores
(`edgeadapt.formats.identity`): ``bundle_manifest_sha256`` (text) and ``bundle_states``
(unicode ``[K]``), both or neither, and optionally ``data_source`` (text, a JSON object:
what data made it, `Evaluation.data`). Files without ``version`` are version 1 and still
load. Evaluations written before the margin and entropy keys existed hold ``conf`` only;
predictions imported without logits hold none. Loaded without pickles; shapes and
dtypes are checked with errors that name the file and the key.

`check_evaluation` is what every reader that has the bundle runs: the identity (a file
of another bundle is refused, naming both; a file without an identity is read with an
`UncheckedWarning`), the state names, and labels and predictions against the bundle's
class count. `edgeadapt evaluate` and `edgeadapt import-predictions` write the format;
`bound`, `subset`, `report` and the planner read it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.identity import BundleIdentity, check_identity
from edgeadapt.formats.jsonio import dumps, loads, read_text
from edgeadapt.formats.npzio import ArraySpec, load_npz, save_npz
from edgeadapt.kernel_ref import MEASURES

if TYPE_CHECKING:
    from edgeadapt.formats.bundle import Bundle

__all__ = [
    "CONF_KEYS",
    "VERSION",
    "Evaluation",
    "check_classes",
    "check_evaluation",
    "from_prediction_csvs",
    "from_predictions_npz",
    "import_predictions",
    "load_evaluation",
    "save_evaluation",
]

#: The key holding each measure's confidences (maxprob keeps the first format's ``conf``).
CONF_KEYS = {m: "conf" if m == "maxprob" else f"conf_{m}" for m in MEASURES}
#: The version `save_evaluation` writes (1: no ``version`` key, no class count, no identity).
VERSION = 2
SPEC = {
    "labels": ArraySpec("iu", 1),
    "pred": ArraySpec("iu", 2),
    "states": ArraySpec("U", 1),
    **{key: ArraySpec("f", 2, optional=True) for key in CONF_KEYS.values()},
    "version": ArraySpec("iu", 0, optional=True),
    "num_classes": ArraySpec("iu", 0, optional=True),
    "bundle_manifest_sha256": ArraySpec("U", 0, optional=True),
    "bundle_states": ArraySpec("U", 1, optional=True),
    "data_source": ArraySpec("U", 0, optional=True),
}
#: Why a file of each version without an identity cannot be checked against a bundle.
_UNRECORDED = {
    1: "it was written before evaluations recorded the bundle they score",
    VERSION: "it records no bundle (imported without --bundle, or saved without one)",
}


def check_classes(
    values: np.ndarray,
    num_classes: int,
    *,
    source: str | os.PathLike[str] | None,
    field: str,
    of: str = "",
) -> None:
    """Refuse class indices outside ``0..num_classes - 1`` (labels or predictions),
    naming `source`, `field` and where the class count comes from (`of`, e.g. ``the
    bundle b/``)."""
    if values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_classes:
        where = f" of {of}" if of else ""
        raise InputError(
            f"class indices must lie in 0..{num_classes - 1} (the {num_classes} classes"
            f"{where}), got {low}..{high}",
            source=source,
            field=field,
        )


@dataclass(frozen=True)
class Evaluation:
    """Per-sample results of S states on N labelled samples (see the module docstring).

    `conf`, `conf_margin` and `conf_entropy` are the maxprob, margin and entropy
    confidences (each optional); `num_classes` the class count labels and predictions
    lie below, `bundle` the identity of the bundle scored (each None when unknown);
    `version` the format version it was read as; `data` what data made it (``kind``,
    ``path``, ``samples``, and per kind the loader's ``function`` or the images'
    ``list``, ``classes`` and ``recipe``; None when not recorded). Construction checks
    the shapes, names and class indices; `source` names the file in errors.
    """

    labels: np.ndarray
    pred: np.ndarray
    states: np.ndarray
    conf: np.ndarray | None = None
    source: str | None = None
    conf_margin: np.ndarray | None = None
    conf_entropy: np.ndarray | None = None
    num_classes: int | None = None
    bundle: BundleIdentity | None = None
    version: int = VERSION
    data: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        src = self.source
        labels = _checked_labels(np.asarray(self.labels), src)
        states = _checked_states(np.asarray(self.states), src)
        pred = np.asarray(self.pred)
        n, s = labels.shape[0], states.shape[0]
        _check_pred(pred, (n, s), labels, self.num_classes, src)
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "pred", pred.astype(np.int64, copy=False))
        object.__setattr__(self, "states", states)
        for key in CONF_KEYS.values():
            if getattr(self, key) is not None:
                conf = _checked_conf(np.asarray(getattr(self, key)), (n, s), src, key)
                object.__setattr__(self, key, conf)

    def confidence(self, measure: str = "maxprob") -> np.ndarray:
        """The float32 ``[N, S]`` confidences of `measure` (maxprob, margin or entropy);
        an `InputError` naming the key when this evaluation lacks them."""
        if measure not in CONF_KEYS:
            raise InputError(
                f"must be one of {', '.join(CONF_KEYS)}, got {measure!r}", field="measure"
            )
        key = CONF_KEYS[measure]
        values: np.ndarray | None = getattr(self, key)
        if values is None:
            raise InputError(
                f"has no {measure} confidences; write it again with edgeadapt evaluate "
                "(it stores every measure)",
                source=self.source,
                field=key,
            )
        return values

    @property
    def names(self) -> tuple[str, ...]:
        """State names, in column order."""
        return tuple(str(x) for x in self.states)

    @property
    def correct(self) -> np.ndarray:
        """bool ``[N, S]``: state j predicted sample i's label."""
        return self.pred == self.labels[:, None]

    @property
    def accuracies(self) -> np.ndarray:
        """Top-1 accuracy of each state."""
        return self.correct.mean(axis=0)

    def select(self, names: Sequence[str]) -> Evaluation:
        """The columns of the named states, in that order."""
        index = {name: j for j, name in enumerate(self.names)}
        missing = [name for name in names if name not in index]
        if missing:
            raise InputError(
                f"unknown state(s) {', '.join(missing)} (has: {', '.join(self.names)})",
                source=self.source,
                field="states",
            )
        cols = [index[name] for name in names]

        def columns(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[:, cols]

        return replace(
            self,
            pred=self.pred[:, cols],
            states=self.states[cols],
            conf=columns(self.conf),
            conf_margin=columns(self.conf_margin),
            conf_entropy=columns(self.conf_entropy),
        )


def _checked_labels(labels: np.ndarray, src: str | None) -> np.ndarray:
    """`labels` when a non-empty integer [N] array of class indices >= 0."""
    if labels.ndim != 1 or labels.size == 0 or labels.dtype.kind not in "iu":
        raise InputError(
            f"expected a non-empty integer [N] array, got {labels.dtype} {labels.shape}",
            source=src,
            field="labels",
        )
    if labels.min() < 0:
        raise InputError(
            f"labels must be class indices >= 0, got {int(labels.min())}",
            source=src,
            field="labels",
        )
    return labels


def _checked_states(states: np.ndarray, src: str | None) -> np.ndarray:
    """`states` when a non-empty unicode [S] array of distinct, non-empty names."""
    if states.ndim != 1 or states.size == 0 or states.dtype.kind != "U":
        raise InputError(
            f"expected a non-empty unicode [S] array, got {states.dtype} {states.shape}",
            source=src,
            field="states",
        )
    names = [str(x) for x in states]
    if any(not x for x in names):
        raise InputError("empty state name", source=src, field="states")
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise InputError(f"duplicate state names: {', '.join(dup)}", source=src, field="states")
    return states


def _check_pred(
    pred: np.ndarray,
    shape: tuple[int, int],
    labels: np.ndarray,
    num_classes: int | None,
    src: str | None,
) -> None:
    """`pred` is an integer [N, S] array of class indices >= 0; with `num_classes`,
    the labels and predictions fall below it."""
    n, s = shape
    if pred.dtype.kind not in "iu" or pred.shape != (n, s):
        raise InputError(
            f"expected integer [{n}, {s}] (samples x states), got {pred.dtype} {pred.shape}",
            source=src,
            field="pred",
        )
    if pred.size and pred.min() < 0:
        raise InputError(
            f"predictions must be class indices >= 0, got {int(pred.min())}",
            source=src,
            field="pred",
        )
    if num_classes is not None:
        if isinstance(num_classes, bool) or num_classes < 2:
            raise InputError(
                f"must be an integer >= 2, got {num_classes!r}",
                source=src,
                field="num_classes",
            )
        check_classes(labels, num_classes, source=src, field="labels")
        check_classes(pred, num_classes, source=src, field="pred")


def _checked_conf(
    conf: np.ndarray, shape: tuple[int, int], src: str | None, key: str
) -> np.ndarray:
    """`conf` as float32 when a float [N, S] array of finite values (within float32's range)."""
    n, s = shape
    if conf.dtype.kind != "f" or conf.shape != (n, s):
        raise InputError(
            f"expected float [{n}, {s}], got {conf.dtype} {conf.shape}",
            source=src,
            field=key,
        )
    with np.errstate(over="ignore"):  # a float64 past float32's range becomes inf
        conf = conf.astype(np.float32, copy=False)
    if not np.all(np.isfinite(conf)):
        raise InputError(
            "confidences must be finite (and within float32's range)", source=src, field=key
        )
    return conf


def check_evaluation(evaluation: Evaluation, bundle: Bundle) -> Evaluation:
    """`evaluation` checked to be of `bundle`, its columns in the bundle's state order.

    Refused, naming the file: one made for another bundle (`check_identity`, both
    identities named), states other than the bundle's, labels or predictions outside the
    bundle's classes. A file that records no identity is accepted with an
    `UncheckedWarning` (an evaluation built in memory without one is the caller's own).
    """
    ev = evaluation
    if ev.bundle is not None or ev.source is not None:
        check_identity(
            ev.bundle,
            bundle,
            source=ev.source,
            redo=f"evaluate this bundle again (edgeadapt evaluate {bundle.path} --data D.npz)",
            fields=("bundle_manifest_sha256", "bundle_states"),
            unrecorded=_UNRECORDED.get(ev.version, _UNRECORDED[VERSION]),
        )
    names = [s.name for s in bundle.states]
    missing = [n for n in names if n not in ev.names]
    extra = [n for n in ev.names if n not in names]
    if missing or extra:
        parts = [f"missing {', '.join(missing)}"] * bool(missing)
        parts += [f"not in the bundle: {', '.join(extra)}"] * bool(extra)
        raise InputError(
            f"states differ from the bundle {bundle.path} ({'; '.join(parts)}; "
            f"the bundle has {', '.join(names)}); evaluate this bundle again",
            source=ev.source,
            field="states",
        )
    if ev.num_classes not in (None, bundle.num_classes):
        raise InputError(
            f"records {ev.num_classes} classes, the bundle {bundle.path} has {bundle.num_classes}",
            source=ev.source,
            field="num_classes",
        )
    for field in ("labels", "pred"):
        check_classes(
            getattr(ev, field),
            bundle.num_classes,
            source=ev.source,
            field=field,
            of=f"the bundle {bundle.path}",
        )
    return ev.select(names)


def _identity(arrays: Mapping[str, np.ndarray], path: str) -> BundleIdentity | None:
    """``bundle_manifest_sha256`` and ``bundle_states``, both or neither."""
    keys = ("bundle_manifest_sha256", "bundle_states")
    given = [k for k in keys if k in arrays]
    if not given:
        return None
    if len(given) == 1:
        missing = next(k for k in keys if k not in arrays)
        raise InputError(f"missing array: {given[0]} needs it", source=path, field=missing)
    try:
        return BundleIdentity(
            str(arrays["bundle_manifest_sha256"]),
            tuple(str(x) for x in arrays["bundle_states"]),
        )
    except InputError as e:
        raise InputError(e.message, source=path, field=f"bundle_{e.field}") from None


def _scalar(arrays: Mapping[str, np.ndarray], key: str) -> int | None:
    return None if key not in arrays else int(arrays[key])


def load_evaluation(path: str | os.PathLike[str]) -> Evaluation:
    """Read and check an evaluation ``.npz`` (never unpickles); version 1 files (without
    class count and identity) still read."""
    arrays = load_npz(path, SPEC)
    version = _scalar(arrays, "version") or 1
    if version not in (1, VERSION):
        raise InputError(
            f"unsupported version {version} (this edgeadapt reads 1 and {VERSION})",
            source=path,
            field="version",
        )
    if version == 1 and any(k in arrays for k in ("num_classes", "bundle_manifest_sha256")):
        raise InputError(
            f"needs version {VERSION} for num_classes and the bundle identity",
            source=path,
            field="version",
        )
    return Evaluation(
        arrays["labels"],
        arrays["pred"],
        arrays["states"],
        source=str(path),
        **{key: arrays.get(key) for key in CONF_KEYS.values()},
        num_classes=_scalar(arrays, "num_classes"),
        bundle=_identity(arrays, str(path)),
        version=version,
        data=_data_source(arrays, str(path)),
    )


def _data_source(arrays: Mapping[str, np.ndarray], path: str) -> dict[str, Any] | None:
    """``data_source``: a JSON object saying what data made the evaluation, or None."""
    if "data_source" not in arrays:
        return None
    try:
        doc = loads(str(arrays["data_source"]), path)
    except InputError as e:
        raise InputError(e.message, source=path, field="data_source") from None
    if not isinstance(doc, dict):
        raise InputError("expected a JSON object", source=path, field="data_source")
    return doc


def save_evaluation(path: str | os.PathLike[str], evaluation: Evaluation) -> None:
    """Write an evaluation atomically, as version `VERSION`, in the documented dtypes."""
    arrays = {
        "version": np.array(VERSION, dtype=np.int64),
        "labels": evaluation.labels.astype(np.int64),
        "pred": evaluation.pred.astype(np.int64),
        "states": evaluation.states.astype(str),
    }
    for key in CONF_KEYS.values():
        conf = getattr(evaluation, key)
        if conf is not None:
            arrays[key] = conf.astype(np.float32)
    if evaluation.num_classes is not None:
        arrays["num_classes"] = np.array(evaluation.num_classes, dtype=np.int64)
    if evaluation.bundle is not None:
        arrays["bundle_manifest_sha256"] = np.array(evaluation.bundle.manifest_sha256)
        arrays["bundle_states"] = np.array(evaluation.bundle.states, dtype=str)
    if evaluation.data is not None:
        arrays["data_source"] = np.array(dumps(dict(evaluation.data)))
    save_npz(path, **arrays)


def from_predictions_npz(path: str | os.PathLike[str]) -> Evaluation:
    """An evaluation from an npz of predictions: ``pred`` ``[N, S]``, ``labels`` ``[N]``
    and the state names in ``models`` (as in `examples/imagenet-val-predictions`) or
    ``states``; other keys are ignored."""
    arrays = load_npz(
        path,
        {
            "pred": ArraySpec("iu", 2),
            "labels": ArraySpec("iu", 1),
            "models": ArraySpec("U", 1, optional=True),
            "states": ArraySpec("U", 1, optional=True),
        },
    )
    names = arrays.get("states", arrays.get("models"))
    if names is None:
        raise InputError("missing array: need 'models' or 'states'", source=path, field="models")
    return Evaluation(arrays["labels"], arrays["pred"], names, source=str(path))


def _read_prediction_csv(path: Path) -> dict[str, tuple[int, int]]:
    text = read_text(path, encoding="utf-8-sig")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in ("file", "predicted", "truth") if c not in header]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)} (want file,predicted,truth)",
            source=path,
            field="line 1",
        )
    f, p, t = (header.index(c) for c in ("file", "predicted", "truth"))
    try:
        return _prediction_rows(reader, header, (f, p, t), path)
    except csv.Error as e:  # e.g. a field past csv's 131,072-character limit
        raise InputError(
            f"not a readable CSV: {e}", source=path, field=f"line {reader.line_num}"
        ) from None


#: class indices an imported prediction may hold (int64, as the evaluation stores them)
_MAX_CLASS = 2**63 - 1


def _class_index(text: str, path: Path, line: int) -> int:
    s = text.strip()
    if not s.isdigit() or len(s) > 19 or int(s) > _MAX_CLASS:
        shown = s if len(s) <= 24 else f"{s[:24]}... ({len(s)} characters)"
        raise InputError(
            f"predicted and truth must be integers (class indices 0..{_MAX_CLASS}), got {shown!r}",
            source=path,
            field=f"line {line}",
        )
    return int(s)


def _prediction_rows(
    reader: Any, header: list[str], cols: tuple[int, int, int], path: Path
) -> dict[str, tuple[int, int]]:
    f, p, t = cols
    rows: dict[str, tuple[int, int]] = {}
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise InputError(
                f"{len(row)} fields, header has {len(header)}", source=path, field=f"line {line}"
            )
        key = row[f].strip()
        if key in rows:
            raise InputError(f"file {key!r} listed twice", source=path, field=f"line {line}")
        pair = (_class_index(row[p], path, line), _class_index(row[t], path, line))
        rows[key] = pair
    if not rows:
        raise InputError("no rows", source=path)
    return rows


def from_prediction_csvs(sources: Mapping[str, str | os.PathLike[str]]) -> Evaluation:
    """An evaluation from one CSV per state (``{state name: path}``), each with columns
    ``file,predicted,truth``; rows are matched by ``file`` and sorted by it. Every CSV
    must list the same files with the same truth."""
    if not sources:
        raise InputError("no prediction files given")
    tables = {name: _read_prediction_csv(Path(p)) for name, p in sources.items()}
    names = list(tables)
    first_name = names[0]
    files = sorted(tables[first_name])
    truth = np.array([tables[first_name][k][1] for k in files], dtype=np.int64)
    pred = np.empty((len(files), len(names)), dtype=np.int64)
    for j, name in enumerate(names):
        rows = tables[name]
        if rows.keys() != tables[first_name].keys():
            odd = sorted(rows.keys() ^ tables[first_name].keys())[0]
            raise InputError(
                f"lists other files than {sources[first_name]} (e.g. {odd!r})",
                source=sources[name],
            )
        pairs = np.array([rows[k] for k in files], dtype=np.int64)
        bad = np.flatnonzero(pairs[:, 1] != truth)
        if bad.size:
            raise InputError(
                f"truth of {files[bad[0]]!r} differs from {sources[first_name]}",
                source=sources[name],
            )
        pred[:, j] = pairs[:, 0]
    return Evaluation(truth, pred, np.array(names, dtype=str))


def import_predictions(
    sources: Sequence[str],
    states: Sequence[str] | None = None,
    *,
    bundle: Bundle | None = None,
    classes: int | None = None,
) -> Evaluation:
    """An evaluation from per-sample predictions: one ``.npz`` (`from_predictions_npz`),
    or one CSV per state given as ``PATH.csv`` (the state named after the file) or
    ``NAME=PATH.csv`` (`from_prediction_csvs`); `states` keeps those states, in order.

    With `bundle`, the predictions are of its states (`check_evaluation`: the same names,
    labels and predictions within its classes) and the evaluation records its identity
    and class count; else `classes`, when given, is recorded and checked."""
    if len(sources) == 1 and sources[0].lower().endswith(".npz"):
        evaluation = from_predictions_npz(sources[0])
    else:
        named: dict[str, str] = {}
        for item in sources:
            name, sep, path = item.partition("=")
            if not sep:
                name, path = Path(item).stem, item
            if not path.lower().endswith(".csv"):
                raise InputError("expected a .csv file (or a single .npz)", source=item)
            if name in named:
                raise InputError(f"state name {name!r} given twice", source=item)
            named[name] = path
        evaluation = from_prediction_csvs(named)
    if states is not None:
        evaluation = evaluation.select(list(states))
    if bundle is not None:
        if classes not in (None, bundle.num_classes):
            raise InputError(
                f"the bundle {bundle.path} has {bundle.num_classes} classes, not {classes}",
                source="classes",
            )
        evaluation = replace(
            evaluation, bundle=BundleIdentity.of(bundle), num_classes=bundle.num_classes
        )
        return check_evaluation(evaluation, bundle)
    if classes is not None:
        evaluation = replace(evaluation, num_classes=classes)
    return evaluation
