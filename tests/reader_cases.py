"""The shared table of reader cases (tests/reader_cases.json) and the files it describes.

Each case is a file docs/formats.md rules on: a copy of the shipped mnist1d-multiexit
bundle with its manifest or one step's ONNX file edited, a plan for that bundle (a
scheduler plan: for the shipped mnist1d-family bundle declared as branches), or an input
file. tests/test_reader_cases.py hands each file to the Python readers and
tests/test_native.py to the native runner's `classify`; both hold them to the table's
verdict, so the two readers agree rule for rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.plan import Estimator, Gate, plan_to_doc
from tests.plans import runner_plan

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
FAMILY = ROOT / "edgeadapt" / "demo" / "bundles" / "mnist1d-family"
TABLE = json.loads((Path(__file__).with_name("reader_cases.json")).read_text())
#: the gates of the table's gate plan (one per kept state but the last)
GATES = (Gate((6.0, 1.0, 0.5, 0.0, 0.0), -4.5), Gate((3.0, 1.0, 0.0, 2.0, 1.5), -4.0))
#: the estimators of the table's scheduler plan (one per kept branch but the last)
ESTIMATORS = (Estimator((4.0, 1.0, 0.5), -2.5), Estimator((1.0, 2.0, 0.0), -1.0))


@dataclass(frozen=True)
class Case:
    """One row of the table: how its file is made and what both readers must say."""

    kind: str  # manifest, plan or inputs
    id: str
    refused: bool
    recipe: dict[str, Any]
    code: int | None = None  # the native runner's exit code when refused
    field: str | None = None  # the JSON path both errors name
    words: str | None = None  # words both errors hold
    pending: dict[str, str] = dataclasses.field(
        default_factory=dict
    )  # reader -> why it does not agree yet


def cases(kind: str) -> list[Case]:
    out = []
    for row in TABLE[kind]:
        row = dict(row)
        common = {
            k: row.pop(k)
            for k in ("id", "refused", "code", "field", "words", "pending")
            if k in row
        }
        out.append(Case(kind=kind, recipe=row, **common))
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _at(doc: Any, path: list[Any]) -> tuple[Any, Any]:
    for key in path[:-1]:
        doc = doc[key]
    return doc, path[-1]


def _edit_doc(doc: dict[str, Any], edits: list[dict[str, Any]]) -> str:
    """`doc` after the JSON edits, as text after the text edits."""
    pad_to = None
    for e in edits:
        if "set" in e:
            parent, key = _at(doc, e["set"])
            parent[key] = e["value"]
        elif "delete" in e:
            parent, key = _at(doc, e["delete"])
            del parent[key]
        elif "pad_to" in e:
            pad_to = e["pad_to"]
    if pad_to is not None:  # an unread field filled so the file has exactly pad_to bytes
        doc["padding"] = ""
        size = len(json.dumps(doc, indent=1).encode())
        doc["padding"] = "x" * (pad_to - size)
    text = json.dumps(doc, indent=1)
    for e in edits:
        if "replace" in e:
            assert e["replace"] in text, e
            text = text.replace(e["replace"], e["with"], 1)
        elif "prefix" in e:
            text = e["prefix"] + text
    return text


def _edit_onnx(path: Path, e: dict[str, Any], logits: str) -> None:
    model = onnx.load(str(path))
    graph = model.graph
    if "fix_batch" in e:
        values = graph.input if e["fix_batch"] == "input" else graph.output
        values[0].type.tensor_type.shape.dim[0].dim_value = e["to"]
    if "name_batch" in e:
        for v in (*graph.input, *graph.output):
            v.type.tensor_type.shape.dim[0].dim_param = e["name_batch"]
    out = next(v for v in graph.output if v.name == logits)
    if "logits_type" in e:
        out.type.tensor_type.elem_type = e["logits_type"]
    if "logits_width" in e:
        out.type.tensor_type.shape.dim[1].dim_value = e["logits_width"]
    if "input_type" in e:
        graph.input[0].type.tensor_type.elem_type = e["input_type"]
    if "rename_output" in e:
        out.name = e["rename_output"]
    onnx.save(model, str(path))


def make_bundle(case: Case, tmp: Path) -> Path:
    """A copy of the shipped bundle with the case's edits."""
    root = tmp / f"bundle-{case.id}"
    shutil.copytree(BUNDLE, root)
    manifest = root / "manifest.json"
    doc = json.loads(manifest.read_text())
    edits = case.recipe.get("edits", [])
    for e in edits:
        if "onnx" in e:
            state = doc["states"][e["onnx"]]
            step = root / state["file"]
            _edit_onnx(step, e, state["logits"])
            state["sha256"] = doc["files"][state["file"]] = _sha256(step)
        elif "append" in e:
            with (root / e["append"]).open("ab") as f:
                f.write(b"\0")
    manifest.write_bytes(_edit_doc(doc, edits).encode())
    return root


def bundle_of(case: Case, tmp: Path) -> Path:
    """The bundle a plan case's plan is for: the shipped bundle, or for a scheduler plan
    the shipped family bundle declared as branches (copied under `tmp`, once)."""
    if case.recipe.get("plan") != "scheduler":
        return BUNDLE
    root = tmp / "branches"
    if not root.exists():
        shutil.copytree(FAMILY, root)
        manifest = root / "manifest.json"
        text = manifest.read_text()
        assert '"kind": "ensemble"' in text
        manifest.write_text(text.replace('"kind": "ensemble"', '"kind": "branches"'))
    return root


def make_plan(case: Case, tmp: Path) -> Path:
    """A plan for the shipped bundle (kept states 0, 2, 3; a threshold or a gate plan),
    or a scheduler plan for the branches bundle of `bundle_of` (kept branches 0, 1, 2),
    with the case's edits."""
    if case.recipe["plan"] == "scheduler":
        bundle = load_bundle(bundle_of(case, tmp))
        plan = runner_plan(bundle, (0, 1, 2), (0.5, 0.6), (0.1, 0.5, 2.0))
        plan = replace(plan, scheduler=ESTIMATORS)
    else:
        plan = runner_plan(load_bundle(BUNDLE), (0, 2, 3), (0.9, 0.8), (0.1, 0.2, 0.3))
    if case.recipe["plan"] == "gate":
        plan = replace(plan, gates=GATES, thresholds=(0.5, 0.5))
    path = tmp / f"plan-{case.id}.json"
    path.write_bytes(_edit_doc(plan_to_doc(plan), case.recipe.get("edits", [])).encode())
    return path


def _npy(header: str, data: bytes, version: int, aligned: bool) -> bytes:
    """An .npy file of this header and data: its header padded so the data starts on a
    64-byte boundary, or with `aligned` false at an odd offset."""
    start = 10 if version == 1 else 12
    text = header.encode("latin1")
    pad = (-(start + len(text) + 1)) % 64 + (0 if aligned else 1)
    text += b" " * pad + b"\n"
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + data


def make_inputs(case: Case, tmp: Path) -> Path:
    """An input file for the shipped bundle (float32 rows [4, 1, 40], or `rows` of them)
    made as the case says."""
    r = case.recipe
    x = np.random.default_rng(0).standard_normal((4, 1, 40)).astype(np.float32)[: r.get("rows", 4)]
    if r.get("nan"):
        x[2, 0, 5] = np.nan
    if r["make"] == "npz":
        path = tmp / f"{case.id}.npz"
        np.savez(path, x=x)
        raw = bytearray(path.read_bytes())
        if "truncate" in r:
            raw = raw[: int(len(raw) * r["truncate"])]
        if "flip_byte" in r:  # inside the member's data: its CRC-32 no longer matches
            raw[raw.index(b"\x93NUMPY") + r["flip_byte"]] ^= 0xFF
        path.write_bytes(bytes(raw))
        return path
    descr = r.get("descr", "<f4")
    fortran = r.get("fortran", False)
    data = x.astype(np.dtype(descr)).tobytes(order="F" if fortran else "C")
    shape = r.get("shape", str(x.shape))
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    path = tmp / f"{case.id}.npy"
    path.write_bytes(_npy(header, data, r.get("version", 1), not r.get("unaligned", False)))
    return path


def make(case: Case, tmp: Path) -> Path:
    """The case's file: a bundle directory, a plan or an input file."""
    return {"manifest": make_bundle, "plan": make_plan, "inputs": make_inputs}[case.kind](case, tmp)


def source_of(case: Case, made: Path) -> Path:
    """The file both readers' errors must name."""
    return made / "manifest.json" if case.kind == "manifest" else made
