"""Validated loading of ``.npz`` files (never with pickles): keys, dtypes and ranks checked."""

from __future__ import annotations

import io
import math
import os
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


def array_file_kind(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """The regular file `path` and what its first bytes say it is: ``npz`` (a zip
    archive), ``npy`` or ``other``; told before numpy reads it."""
    path = check_regular(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise InputError(f"cannot read: {e}", source=path) from None
    if head.startswith(_ZIP_MAGIC):
        return path, "npz"
    return path, "npy" if head.startswith(_NPY_MAGIC) else "other"


def check_npz_file(path: str | os.PathLike[str]) -> Path:
    """`path` is a regular file that starts as a zip archive (an .npz); an .npy or any
    other file is refused by name before numpy reads it."""
    path, kind = array_file_kind(path)
    if kind == "npy":
        raise InputError("expected an .npz archive, got a single .npy array", source=path)
    if kind != "npz":
        raise InputError("not a readable .npz file (no zip archive header)", source=path)
    return path


@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` header declares: the array's shape, dtype and order, and where
    its data starts (bytes from the start of the ``.npy``)."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """The bytes of data the header declares."""
        return math.prod(self.shape) * self.dtype.itemsize


#: The errors reading a header or the data of an .npy (also inside a zip) may raise
#: (numpy parses a header with `ast.literal_eval`, falling back to `tokenize`).
READ_ERRORS = (
    ValueError,
    TypeError,
    SyntaxError,
    RecursionError,
    tokenize.TokenError,
    EOFError,
    OSError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,  # zipfile: a compression method it has no decoder for
)


def read_npy_header(
    f: IO[bytes], size: int, *, source: str | os.PathLike[str], field: str | None = None
) -> NpyHeader:
    """The checked header of the ``.npy`` at `f`'s position, `size` bytes long (a file
    or a zip member). Versions 1 to 3 are read; a negative dimension, an object or
    structured dtype, or more declared data than the `size` bytes hold (a truncated file,
    or a shape of 10^13) is an `InputError` naming `source` and `field`, and nothing is
    allocated for the data."""
    fmt = np.lib.format
    try:
        start = f.tell()
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell() - start
    except READ_ERRORS as e:
        raise InputError(f"corrupt or truncated array ({e})", source=source, field=field) from None
    if dtype.hasobject:
        raise InputError(
            "cannot load without pickle: it holds Python objects; object arrays are not accepted",
            source=source,
            field=field,
        )
    if dtype.names is not None or dtype.subdtype is not None:
        raise InputError(
            f"structured dtype {dtype} not accepted (one plain number type per array)",
            source=source,
            field=field,
        )
    if any(d < 0 for d in shape):
        raise InputError(
            f"corrupt array: shape {list(shape)} has a negative dimension",
            source=source,
            field=field,
        )
    header = NpyHeader(tuple(int(d) for d in shape), dtype, bool(fortran), offset)
    have = size - offset
    if header.nbytes > have:
        raise InputError(
            f"corrupt or truncated array: shape {list(shape)} {dtype} needs "
            f"{header.nbytes} bytes, the file holds {max(have, 0)}",
            source=source,
            field=field,
        )
    return header


def npz_member_name(zf: zipfile.ZipFile, key: str) -> str:
    """The name of the member of the open npz `zf` that holds the array `key`."""
    return key if key in zf.namelist() else f"{key}.npy"


def npz_member_header(zf: zipfile.ZipFile, key: str, path: Path) -> NpyHeader:
    """The checked header (`read_npy_header`) of the array `key` of the open npz `zf`."""
    try:
        info = zf.getinfo(npz_member_name(zf, key))
        with zf.open(info) as f:
            return read_npy_header(f, info.file_size, source=path, field=key)
    except (KeyError, *READ_ERRORS) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"corrupt or truncated array ({e})", source=path, field=key) from None


def check_npz_member(npz: Any, key: str, path: Path) -> None:
    """The array `key` of an open npz declares no more data than its member holds: a
    header claiming a huge shape would otherwise make numpy allocate it before finding
    the member short (a MemoryError), and a cut-off member is reported as such."""
    zf = getattr(npz, "zip", None)
    if zf is not None:
        npz_member_header(zf, key, path)


class NpyRows:
    """The rows of one ``.npy`` array (a file or an npz member) read in order, a batch
    at a time, each into a fresh aligned C-order array: memory holds one batch, not the
    file, and data at any offset (an unaligned version-3 file) reads the same.

    `stream` is positioned at the array's data (after `header`); a Fortran-order array,
    which cannot be read row by row, is read whole by `whole` instead."""

    def __init__(
        self,
        stream: IO[bytes],
        header: NpyHeader,
        *,
        source: str | os.PathLike[str],
        field: str | None = None,
    ) -> None:
        self.header = header
        self.source = source
        self.field = field
        self._stream = stream
        self._done = 0
        self._whole: np.ndarray | None = None
        if header.fortran:
            self._whole = np.ascontiguousarray(self._read(header.shape, fortran=True))

    def _read(self, shape: tuple[int, ...], fortran: bool = False) -> np.ndarray:
        out = np.empty(shape, dtype=self.header.dtype, order="F" if fortran else "C")
        view = memoryview(out.reshape(-1, order="A")).cast("B")  # type: ignore[arg-type]
        got = 0
        try:
            while got < len(view):
                n = self._stream.readinto(view[got:])  # type: ignore[attr-defined]
                if not n:
                    break
                got += n
        except READ_ERRORS as e:
            raise InputError(
                f"corrupt or truncated array ({e})", source=self.source, field=self.field
            ) from None
        if got != len(view):
            raise InputError(
                "corrupt or truncated array: its data ends early",
                source=self.source,
                field=self.field,
            )
        return out

    def skip(self, count: int) -> None:
        """Pass over the next `count` rows without keeping them (a seek where the stream
        can, else read and dropped a chunk at a time, as a compressed npz member is)."""
        rows = self.header.shape[0]
        lo, hi = self._done, min(self._done + count, rows)
        self._done = hi
        if self._whole is not None or hi == lo:
            return
        row = self.header.dtype.itemsize * math.prod(self.header.shape[1:])
        try:
            self._stream.seek((hi - lo) * row, os.SEEK_CUR)
        except READ_ERRORS as e:
            raise InputError(
                f"corrupt or truncated array ({e})", source=self.source, field=self.field
            ) from None

    def read(self, count: int) -> np.ndarray:
        """The next `count` rows (fewer at the end of the array)."""
        rows = self.header.shape[0]
        lo, hi = self._done, min(self._done + count, rows)
        self._done = hi
        if self._whole is not None:
            return self._whole[lo:hi]
        return self._read((hi - lo, *self.header.shape[1:]))


def _open(path: Path) -> np.lib.npyio.NpzFile:
    """Open an npz without pickles; a missing, non-regular, unreadable or non-npz file
    (an .npy included) is an InputError. The file handle is the NpzFile's to close, also
    when numpy fails to open the archive."""
    path = check_npz_file(path)
    fh = path.open("rb")
    try:
        loaded = np.load(fh, allow_pickle=False)
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        NotImplementedError,
    ) as e:
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
            except READ_ERRORS as e:
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
