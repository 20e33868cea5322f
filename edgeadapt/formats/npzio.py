"""Validated loading of ``.npz`` files (never with pickles): keys, dtypes and ranks checked."""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.atomic import atomic_write_bytes
from edgeadapt.formats.jsonio import check_regular


@dataclass(frozen=True)
class ArraySpec:
    """What one key of an npz must hold: a dtype kind ('i' integer, 'f' float, 'U' text,
    'b' bool; several letters allow several kinds) and a rank; optional keys may be absent."""

    kinds: str
    ndim: int
    optional: bool = False


_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def check_npz_file(path: str | os.PathLike[str]) -> Path:
    """`path` is a regular file that starts as a zip archive (an .npz); an .npy or any
    other file is refused by name before numpy reads it."""
    path = check_regular(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise InputError(f"cannot read: {e}", source=path) from None
    if head.startswith(_NPY_MAGIC):
        raise InputError("expected an .npz archive, got a single .npy array", source=path)
    if not head.startswith(_ZIP_MAGIC):
        raise InputError("not a readable .npz file (no zip archive header)", source=path)
    return path


def check_npz_member(npz: Any, key: str, path: Path) -> None:
    """The array `key` of an open npz declares no more data than its member holds: a
    header claiming a huge shape would otherwise make numpy allocate it before finding
    the member short (a MemoryError), and a cut-off member is reported as such."""
    zf = getattr(npz, "zip", None)
    if zf is None:
        return
    name = key if key in zf.namelist() else f"{key}.npy"
    try:
        info = zf.getinfo(name)
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            header = f.tell() if f.seekable() else None
    except (ValueError, KeyError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as e:
        raise InputError(f"corrupt or truncated array ({e})", source=path, field=key) from None
    if dtype.hasobject:
        raise InputError(
            "cannot load without pickle: it holds Python objects; object arrays are not accepted",
            source=path,
            field=key,
        )
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = info.file_size - (header or 0)
    if need > have:
        raise InputError(
            f"corrupt or truncated array: shape {list(shape)} {dtype} needs {need} bytes, "
            f"the archive member holds {have}",
            source=path,
            field=key,
        )


def _open(path: Path) -> np.lib.npyio.NpzFile:
    """Open an npz without pickles; a missing, non-regular, unreadable or non-npz file
    (an .npy included) is an InputError. The file handle is the NpzFile's to close, also
    when numpy fails to open the archive."""
    path = check_npz_file(path)
    fh = path.open("rb")
    try:
        loaded = np.load(fh, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        fh.close()
        raise InputError(f"not a readable .npz file ({e})", source=path) from None
    except BaseException:
        fh.close()
        raise
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        fh.close()
        raise InputError("expected an .npz archive, got a single .npy array", source=path)
    loaded.fid = fh  # type: ignore[assignment]  # closed with the archive
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
            check_npz_member(npz, key, path)
            try:
                arr = npz[key]
            except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as e:
                raise InputError(
                    f"corrupt or truncated array ({e})", source=path, field=key
                ) from None
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
