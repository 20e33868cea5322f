"""Validated loading of ``.npz`` files (never with pickles): keys, dtypes and ranks checked."""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.jsonio import atomic_write_bytes


@dataclass(frozen=True)
class ArraySpec:
    """What one key of an npz must hold: a dtype kind ('i' integer, 'f' float, 'U' text,
    'b' bool; several letters allow several kinds) and a rank; optional keys may be absent."""

    kinds: str
    ndim: int
    optional: bool = False


def _open(path: Path) -> np.lib.npyio.NpzFile:
    """Open an npz without pickles; a missing, unreadable or non-npz file is an InputError."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError("file not found", source=path) from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise InputError(f"not a readable .npz file ({e})", source=path) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError("expected an .npz archive, got a single .npy array", source=path)
    return loaded


def npz_keys(path: str | os.PathLike[str]) -> set[str]:
    """The names of the arrays in the npz at `path` (none is read)."""
    with _open(Path(path)) as npz:
        return set(npz.files)


def load_npz(path: str | os.PathLike[str], spec: dict[str, ArraySpec]) -> dict[str, np.ndarray]:
    """Load the keys of `spec` from `path`, with errors that name the file and the key."""
    path = Path(path)
    with _open(path) as npz:
        present = set(npz.files)
        out: dict[str, np.ndarray] = {}
        for key, want in spec.items():
            if key not in present:
                if want.optional:
                    continue
                raise InputError(f"missing array (has: {sorted(present)})", source=path, field=key)
            try:
                arr = npz[key]
            except ValueError as e:  # object arrays need pickle
                raise InputError(
                    f"cannot load without pickle ({e}); object arrays are not accepted",
                    source=path,
                    field=key,
                ) from None
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise InputError(f"not a readable array ({e})", source=path, field=key) from None
            if arr.dtype.kind not in want.kinds:
                raise InputError(
                    f"dtype {arr.dtype} not accepted (want kind {'/'.join(want.kinds)})",
                    source=path,
                    field=key,
                )
            if arr.ndim != want.ndim:
                raise InputError(
                    f"expected {want.ndim} dimensions, got shape {arr.shape}",
                    source=path,
                    field=key,
                )
            out[key] = arr
        return out


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Write an npz atomically (temp file in the same directory, then rename)."""
    for key, arr in arrays.items():
        if np.asarray(arr).dtype.kind == "O":
            raise ValueError(f"{key}: object arrays are not written")
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue())
