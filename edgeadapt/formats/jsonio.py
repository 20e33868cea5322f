"""Strict JSON I/O for every edgeadapt format: atomic writes (`edgeadapt.formats.atomic`),
validated reads.

Every document carries ``format`` and ``version``; NaN and Infinity are rejected both
ways; read errors name the file and the JSON path (``$.states[2].file``).
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgeadapt.errors import InputError
from edgeadapt.formats.atomic import atomic_write_bytes, check_path


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
