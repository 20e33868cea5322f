"""Variants exporter: same-structure early-exit bundles (the same exits at several
precisions: fp32, an ``export quantize`` int8 copy, ...) -> one bundle of several chains.

The combined bundle (manifest version 3, `edgeadapt.formats.chains`) holds the chains in
the order given, each a contiguous run of states named ``<state>@<chain>`` whose files
are copied into ``chain<k>/`` (external-data files beside them, so that their relative
locations still hold). Give the reference (the most accurate, usually the fp32 bundle)
last: the cascade walks states in bundle order, so a plan may run cheaper chains' exits
before the reference's.

Every source must be a verified one-chain early-exit bundle with the same inputs, class
count, state names and step I/O names as the first; anything else is refused naming
the bundle and the field. Each copy is checked against its source's sha256 when the
combined bundle is loaded back (`load_bundle` verifies every file).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import Any

from edgeadapt._version import __version__
from edgeadapt.errors import InputError
from edgeadapt.formats.atomic import check_path, fsync, staged_directory
from edgeadapt.formats.bundle import (
    CHAINS_VERSION,
    FORMAT,
    MANIFEST,
    Bundle,
    StepInfo,
    commit_bundle,
    load_bundle,
    writing_bundle,
)
from edgeadapt.formats.jsonio import read_json

__all__ = ["export_variants"]


def _structure(step: StepInfo) -> tuple[tuple[str, ...], str | None, str]:
    return step.inputs, step.activation, step.logits


def _check_same(first: Bundle, other: Bundle) -> None:
    """`other` has `first`'s layout: kind, inputs, classes, states and step I/O."""
    src = other.path / MANIFEST
    if other.kind != "early-exit" or other.chain_names:
        what = "several chains" if other.chain_names else f"kind {other.kind}"
        raise InputError(
            f"variants combine one-chain early-exit bundles; this one has {what}",
            source=src,
            field="$.kind",
        )
    if other.inputs != first.inputs:
        raise InputError(
            f"inputs {[i.to_json() for i in other.inputs]} differ from {first.path}'s "
            f"{[i.to_json() for i in first.inputs]}",
            source=src,
            field="$.inputs",
        )
    if other.num_classes != first.num_classes:
        raise InputError(
            f"{other.num_classes} classes, {first.path} has {first.num_classes}",
            source=src,
            field="$.num_classes",
        )
    names = [s.name for s in other.states]
    if names != [s.name for s in first.states]:
        raise InputError(
            f"states {names} differ from {first.path}'s {[s.name for s in first.states]}",
            source=src,
            field="$.states",
        )
    for i, (a, b) in enumerate(zip(first.steps, other.steps, strict=True)):
        if _structure(a) != _structure(b):
            raise InputError(
                f"step {i} reads {list(b.inputs)} and writes {b.activation!r}, {b.logits!r}; "
                f"{first.path}'s reads {list(a.inputs)} and writes {a.activation!r}, {a.logits!r}",
                source=src,
                field=f"$.states[{i}]",
            )


def _precision_name(bundle: Bundle) -> str | None:
    """A bundle's ``extra.precision``: a name, or an `export quantize` record's precision."""
    record = bundle.extra.get("precision")
    if isinstance(record, dict):
        record = record.get("precision")
    return str(record) if record else None


def _chain(bundle: Bundle, name: str) -> dict[str, Any]:
    """A chain's entry in ``extra.chains``: its name and source, with the source's
    `export quantize` record (precision, calibration, parity) when it has one."""
    entry = {
        "name": name,
        "source": str(bundle.path),
        "source_manifest_sha256": bundle.manifest_sha256,
    }
    record = bundle.extra.get("precision")
    return entry | {"precision": record} if isinstance(record, dict) else entry


def _chain_names(bundles: Sequence[Bundle], names: Sequence[str] | None) -> list[str]:
    """The chains' names: `names`, else each bundle's ``extra.precision``, else its
    folder's name; distinct, one per bundle."""
    if names is None:
        names = [_precision_name(b) or b.path.name for b in bundles]
    names = list(names)
    if len(names) != len(bundles):
        raise InputError(f"need {len(bundles)} chain names, got {names}", field="names")
    for j, name in enumerate(names):
        if not name or "@" in name or any(not (c.isalnum() or c in "-_.") for c in name):
            raise InputError(
                f"a chain name is letters, digits, '-', '_' or '.', got {name!r}",
                field=f"names[{j}]",
            )
        if name in names[:j]:
            raise InputError(f"duplicate chain name {name!r}", field=f"names[{j}]")
    return names


def _manifest(bundles: Sequence[Bundle], names: Sequence[str]) -> dict[str, Any]:
    """The combined manifest: each source's state entries with the chain's folder,
    name and ``chain``; every source file listed under its folder."""
    first = bundles[0]
    states: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    for k, (b, chain) in enumerate(zip(bundles, names, strict=True)):
        doc = read_json(b.path / MANIFEST, fmt=FORMAT, versions=[1, 2])
        for rel, digest in b.files.items():
            files[f"chain{k}/{rel}"] = digest
        for entry in doc["states"]:
            entry = dict(entry, chain=chain, name=f"{entry['name']}@{chain}")
            entry["file"] = f"chain{k}/{entry['file']}"
            states.append(entry)
    return {
        "format": FORMAT,
        "version": CHAINS_VERSION,
        "kind": "early-exit",
        "inputs": [i.to_json() for i in first.inputs],
        "num_classes": first.num_classes,
        "states": states,
        "files": files,
        "producer": {"edgeadapt": __version__, "exporter": "variants"},
        "extra": {"chains": [_chain(b, n) for b, n in zip(bundles, names, strict=True)]},
    }


def export_variants(
    sources: Sequence[Bundle | str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    force: bool = False,
) -> Bundle:
    """Combine the same-structure early-exit bundles `sources` (module docstring) into
    one bundle of several chains at `out_dir`, written atomically; the chains are named
    `names` (default each source's ``extra.precision``, else its folder's name)."""
    bundles = [s if isinstance(s, Bundle) else load_bundle(s) for s in sources]
    if len(bundles) < 2:
        raise InputError(f"need at least two bundles, got {len(bundles)}", field="sources")
    for j, b in enumerate(bundles):
        if not b.verified:
            bundles[j] = b = load_bundle(b.path)
        _check_same(bundles[0], b)
        for a in bundles[:j]:
            if a.manifest_sha256 == b.manifest_sha256:
                raise InputError(
                    f"the same bundle as {a.path} (manifest sha256 {b.manifest_sha256[:12]}...): "
                    "each chain must be a different variant",
                    source=b.path / MANIFEST,
                )
    chains = _chain_names(bundles, names)
    manifest = _manifest(bundles, chains)
    out = check_path(out_dir).absolute()
    with writing_bundle(out), staged_directory(out) as tmp:
        for k, b in enumerate(bundles):
            for rel in b.files:
                target = tmp / f"chain{k}" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(b.path / rel, target)
                fsync(target)
        return commit_bundle(tmp, out, manifest, force)
