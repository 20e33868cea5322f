"""Property-based fuzzing of the Python readers: JSON text, the bundle manifest, plans,
profiles and npz files, each seeded with a valid document and mutated (byte edits,
JSON-hostile tokens, truncation, fields replaced by arbitrary JSON values). A reader
must return or raise an `EdgeadaptError` (a clear message naming the file); any other
exception, a warning (the suite runs with filterwarnings=error) or a hang fails.
`pytest tests/test_fuzz.py --hypothesis-show-statistics` reports the cases tried; the
examples per test follow the hypothesis profile in conftest.py (60 in CI)."""

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeadapt.errors import EdgeadaptError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.evaluation import Evaluation, load_evaluation, save_evaluation
from edgeadapt.formats.jsonio import loads
from edgeadapt.formats.plan import BranchesChoice, BranchOption, load_plan, save_plan
from edgeadapt.formats.profile import load_profile
from tests.plans import runner_plan

ROOT = Path(__file__).resolve().parents[1]
MULTIEXIT = ROOT / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
PROFILE = ROOT / "profiles" / "reference" / "mnist1d-multiexit-x86-ort-1t.json"
TOKENS = [
    b"[",
    b"]",
    b"{",
    b"}",
    b'"',
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e400",
    b"1e308",
    b"9" * 400,
    b"1" * 23,
    b"\xef\xbb\xbf",
    b"NaN",
    b'"../x"',
    b"[" * 300,
    b"\x00",
    b"\xff",
    b'"a": 1, "a": 2',
    b'"\\u001b[31m"',
]
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

edits = st.lists(
    st.tuples(
        st.floats(0, 1),
        st.sampled_from(["flip", "insert", "delete", "token", "truncate"]),
        st.integers(0, 255),
        st.sampled_from(TOKENS),
    ),
    min_size=1,
    max_size=4,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3)
    ),
    max_leaves=8,
)


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for where, op, byte, token in ops:
        at = int(where * len(b)) if b else 0
        at = min(at, max(len(b) - 1, 0))
        if op == "flip" and b:
            b[at] ^= 1 << (byte % 8)
        elif op == "insert":
            b[at:at] = bytes([byte])
        elif op == "delete" and b:
            del b[at : at + 1 + byte % 32]
        elif op == "token":
            b[at:at] = token
        elif op == "truncate":
            del b[at:]
    return bytes(b)


def _replace_field(doc, path_choice: float, value):
    """`doc` with one field, picked by `path_choice` among all of them, set to `value`."""
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((*path, k))
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append((*path, i))
                walk(v, (*path, i))

    walk(doc, ())
    doc = json.loads(json.dumps(doc))
    path = paths[min(int(path_choice * len(paths)), len(paths) - 1)]
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return doc


def _refuses_cleanly(read) -> None:
    try:
        read()
        message = "accepted"
    except EdgeadaptError as e:
        message = str(e)
    assert message  # a refusal says what is wrong


@given(st.text(max_size=200))
def test_json_text(text):
    _refuses_cleanly(lambda: loads(text, "fuzz.json"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    plan = d / "plan.json"
    made = runner_plan(load_bundle(MULTIEXIT), [0, 2, 3], [0.9, 0.8], [0.1, 0.2, 0.3])
    save_plan(plan, made)
    # a branches cascade plan, with the record of its choice (`Plan.branches`)
    table = BranchOption("table", (3,), 0.9, 0.3)
    choice = BranchesChoice(
        "cascade", "auto", "cheaper", table, BranchOption("threshold", (0, 2, 3), 0.9, 0.2)
    )
    save_plan(d / "bplan.json", replace(made, kind="branches", branches=choice))
    ev = Evaluation(
        np.arange(20) % 10,
        np.zeros((20, 4), np.int64),
        np.array(["exit0", "exit1", "exit2", "final"]),
        np.full((20, 4), 0.5, np.float32),
    )
    npz = d / "ev.npz"
    save_evaluation(npz, ev)
    bundle = d / "bundle"
    shutil.copytree(MULTIEXIT, bundle)
    return {
        "manifest": (MULTIEXIT / "manifest.json").read_bytes(),
        "plan": plan.read_bytes(),
        "branches-plan": (d / "bplan.json").read_bytes(),
        "profile": PROFILE.read_bytes(),
        "npz": npz.read_bytes(),
        "bundle": bundle,
    }


def _readers(seeds, tmp: Path):
    bundle = seeds["bundle"]
    return {
        "manifest": (bundle / "manifest.json", lambda p: load_bundle(bundle, verify=False)),
        "plan": (tmp / "plan.json", load_plan),
        "branches-plan": (tmp / "plan.json", load_plan),
        "profile": (tmp / "profile.json", lambda p: load_profile(p, check_device=False)),
        "npz": (tmp / "ev.npz", load_evaluation),
    }


@pytest.mark.parametrize("kind", ["manifest", "plan", "branches-plan", "profile", "npz"])
@FUZZ
@given(ops=edits)
def test_mutated_bytes(seeds, tmp_path, kind, ops):
    path, read = _readers(seeds, tmp_path)[kind]
    path.write_bytes(_mutate(seeds[kind], ops))
    _refuses_cleanly(lambda: read(path))


@pytest.mark.parametrize("kind", ["manifest", "plan", "branches-plan", "profile"])
@FUZZ
@given(where=st.floats(0, 1), value=json_values)
def test_a_field_replaced_by_any_json_value(seeds, tmp_path, kind, where, value):
    path, read = _readers(seeds, tmp_path)[kind]
    doc = _replace_field(json.loads(seeds[kind]), where, value)
    path.write_text(json.dumps(doc))
    _refuses_cleanly(lambda: read(path))


@FUZZ
@given(
    shape=st.lists(st.integers(0, 10**13), min_size=0, max_size=3),
    descr=st.sampled_from(["<f4", "<i8", "|O", "<U3", ">f8", "<c16", "|V4"]),
    pad=st.integers(0, 64),
)
def test_npz_members_with_any_header(seeds, tmp_path, shape, descr, pad):
    import zipfile

    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        b, {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
    )
    path = tmp_path / "ev.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("labels.npy", b.getvalue() + b"\0" * pad)
        with zipfile.ZipFile(io.BytesIO(seeds["npz"])) as seed:
            for name in seed.namelist():
                if name != "labels.npy":
                    z.writestr(name, seed.read(name))
    _refuses_cleanly(lambda: load_evaluation(path))
