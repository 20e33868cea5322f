"""Strict JSON I/O for every edgeadapt format: atomic writes, validated reads.

Every document carries ``format`` and ``version``; NaN and Infinity are rejected both
ways; read errors name the file and the JSON path (``$.states[2].file``).
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from edgeadapt.errors import InputError


def _file_mode() -> int:
    """The mode `open()` would give a new file under the current umask (mkstemp uses 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _make_parents(path: Path) -> list[Path]:
    """Create the missing folders above `path`; return them, deepest first, so that a
    writer that fails can remove what it created."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return missing


def _remove_empty(folders: Iterable[Path]) -> None:
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            break


def _write_error(path: Path, e: OSError) -> InputError:
    why = e.strerror or str(e)
    return InputError(f"cannot write: {why} (nothing was written)", source=path)


def _write_temp(path: Path, data: bytes) -> str:
    """Write `data` to a synced temp file beside `path`; return its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part.

    The file gets the permissions a plain `open()` would give it, not mkstemp's 0600.
    A full disk, a read-only folder or a bad path is an InputError naming `path`, and
    leaves neither a temp file nor the folders this call created."""
    atomic_write_many({path: data})


def atomic_write_many(files: Mapping[Any, bytes]) -> None:
    """Write several files as one unit: every file's bytes go to a synced temp file
    first (where a full disk fails), and only then are they renamed into place, in the
    order given (put the file that refers to the others last). On failure nothing new
    is left: temps, and folders this call created, are removed."""
    paths = [(check_path(p), data) for p, data in files.items()]
    created: list[Path] = []
    temps: list[tuple[str, Path]] = []
    current = paths[0][0] if paths else Path()
    try:
        for path, data in paths:
            current = path
            created += _make_parents(path)
            temps.append((_write_temp(path, data), path))
        while temps:
            tmp, current = temps[0]
            os.replace(tmp, current)
            temps.pop(0)
    except OSError as e:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        _remove_empty(created)
        raise _write_error(current, e) from None
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        _remove_empty(created)
        raise


def dumps(obj: Any) -> str:
    """Serialise `obj` as indented JSON; NaN/Infinity raise instead of writing invalid JSON."""
    return json.dumps(obj, indent=2, allow_nan=False, sort_keys=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Atomically write a format document (must hold ``format`` and ``version``)."""
    if "format" not in obj or "version" not in obj:
        raise ValueError("edgeadapt JSON documents must carry 'format' and 'version'")
    try:
        text = dumps(obj)
    except ValueError as e:  # NaN / Infinity
        raise InputError(f"cannot write non-finite number ({e})", source=path) from e
    atomic_write_bytes(path, text.encode())


#: the deepest nesting of objects and lists a document may have (cpp/runner reads the same)
MAX_DEPTH = 256
#: integers a document may hold: int64, what the native runner reads
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: the longest time (ms) a document may record, about 30 years: sums and ratios of costs
#: stay finite, where 1e308 would overflow them to infinity downstream (plan, bound, report)
MAX_MS = 1e12
#: the largest text file read whole (manifests, plans, profiles are kilobytes)
MAX_TEXT_BYTES = 64 << 20


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse_int(text: str) -> int:
    if len(text) > 20 or not INT_MIN <= (v := int(text)) <= INT_MAX:
        raise ValueError(f"integer {text[:24]}{'...' if len(text) > 24 else ''} is out of range")
    return v


def _parse_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:24]} is out of range")
    return v


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in an object (each key may appear once)")
        out[key] = value
    return out


def _depth(doc: Any) -> int:
    """The nesting depth of a parsed document, walked without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((c, d + 1) for c in v if isinstance(c, (dict, list)))
    return deepest


def check_path(path: str | os.PathLike[str]) -> Path:
    """A path that can be handed to the OS: no NUL byte (which `open` refuses with a
    ValueError, not an OSError)."""
    text = os.fspath(path)
    if "\0" in str(text):
        raise InputError("a path must not contain a NUL byte", source=repr(str(text)))
    return Path(path)


def check_regular(path: str | os.PathLike[str]) -> Path:
    """`path` names a regular file (symlinks followed); checked before opening, since
    opening a FIFO or a device blocks or reads without end."""
    path = check_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError("file not found", source=path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", source=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError("not a regular file (a FIFO, device or directory)", source=path)
    return path


def read_text(path: str | os.PathLike[str], encoding: str = "utf-8") -> str:
    """Read a user's text file; a missing, non-regular, oversized or unreadable file is
    an InputError naming it."""
    path = check_regular(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot read: {e}", source=path) from None
    if len(data) > MAX_TEXT_BYTES:
        raise InputError(f"larger than {MAX_TEXT_BYTES >> 20} MiB", source=path)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise InputError(f"cannot read: {e}", source=path) from None


def loads(text: str, source: str | os.PathLike[str]) -> Any:
    """Parse JSON strictly: no NaN/Infinity, no number past int64 or float range, no
    duplicate key, no byte order mark, nesting at most `MAX_DEPTH`."""
    if text.startswith("\ufeff"):
        raise InputError("invalid JSON: starts with a UTF-8 byte order mark", source=source)
    try:
        doc = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise InputError(
            f"invalid JSON: nested deeper than {MAX_DEPTH} levels", source=source
        ) from None
    except ValueError as e:
        raise InputError(f"invalid JSON: {e}", source=source) from None
    if _depth(doc) > MAX_DEPTH:
        raise InputError(f"invalid JSON: nested deeper than {MAX_DEPTH} levels", source=source)
    return doc


def read_json(path: str | os.PathLike[str], *, fmt: str, versions: Iterable[int]) -> dict[str, Any]:
    """Read a format document, checking it is JSON, finite, and of a known format/version."""
    path = Path(path)
    text = read_text(path)
    doc = loads(text, path)
    if not isinstance(doc, dict):
        raise InputError("expected a JSON object", source=path, field="$")
    got = doc.get("format")
    if got != fmt:
        raise InputError(f"expected format {fmt!r}, got {got!r}", source=path, field="$.format")
    known = list(versions)
    ver = doc.get("version")
    if not isinstance(ver, int) or isinstance(ver, bool) or ver not in known:
        raise InputError(
            f"unsupported version {ver!r} (this edgeadapt reads {known})",
            source=path,
            field="$.version",
        )
    return doc


class Fields:
    """Typed accessors over a parsed JSON object that report the file and JSON path.

    >>> f = Fields(doc, source="manifest.json")
    >>> f.get("states", list)            # error: manifest.json: $.states: ...
    >>> f.child("input").get("name", str)
    """

    def __init__(self, obj: Any, *, source: str | os.PathLike[str], path: str = "$") -> None:
        self.source = str(source)
        self.path = path
        if not isinstance(obj, dict):
            self.fail("expected an object")
        self.obj: dict[str, Any] = obj

    def fail(self, message: str, key: str | int | None = None) -> Any:
        """Raise an InputError at this path (or at `key` below it)."""
        raise InputError(message, source=self.source, field=self._at(key))

    def _at(self, key: str | int | None) -> str:
        if key is None:
            return self.path
        return f"{self.path}[{key}]" if isinstance(key, int) else f"{self.path}.{key}"

    def get(
        self,
        key: str,
        typ: type | tuple[type, ...],
        default: Any = ...,
        *,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """Return obj[key] checked against `typ` (bool is never an int or float here)."""
        if key not in self.obj:
            if default is not ...:
                return default
            self.fail("missing required field", key)
        value = self.obj[key]
        return check_value(value, typ, self.source, self._at(key), check)

    def number(
        self,
        key: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        default: Any = ...,
    ) -> float:
        """Return a finite number within [minimum, maximum]."""
        value = self.get(key, (int, float), default)
        if value is default and default is not ...:
            return value
        if not math.isfinite(value):
            self.fail("must be a finite number", key)
        if minimum is not None and value < minimum:
            self.fail(f"must be >= {minimum}, got {value}", key)
        if maximum is not None and value > maximum:
            self.fail(f"must be <= {maximum}, got {value}", key)
        return float(value)

    def child(self, key: str) -> Fields:
        """Fields over the object at obj[key]."""
        return Fields(self.get(key, dict), source=self.source, path=self._at(key))

    def items(self, key: str) -> list[Fields]:
        """Fields over each object of the list at obj[key]."""
        values = self.get(key, list)
        at = self._at(key)
        return [Fields(v, source=self.source, path=f"{at}[{i}]") for i, v in enumerate(values)]


def check_value(
    value: Any,
    typ: type | tuple[type, ...],
    source: str,
    field: str,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """Check one JSON value's type (rejecting bool where a number is wanted) and `check`."""
    types = typ if isinstance(typ, tuple) else (typ,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        names = " or ".join(t.__name__ for t in types)
        raise InputError(
            f"expected {names}, got {type(value).__name__}", source=source, field=field
        )
    if check is not None:
        problem = check(value)
        if problem:
            raise InputError(problem, source=source, field=field)
    return value
