"""A memory budget's size (read from text such as ``512MiB``, written back) and the
bounds of a batch; `edgeadapt.data.memory` chooses the batch within them. Kept free of
numpy and onnx, so that the CLI can show them in ``--help`` without importing either."""

from __future__ import annotations

import re

from edgeadapt.errors import InputError

__all__ = ["DEFAULT_MEMORY", "MAX_AUTO_BATCH", "MAX_BATCH", "format_bytes", "parse_bytes"]

#: The default budget for one batch's inputs and activations.
DEFAULT_MEMORY = 1 << 30
#: A batch chosen from the budget is at most this (larger ones gain little on a CPU).
MAX_AUTO_BATCH = 256
#: The largest batch accepted when given: beyond it one call's activations alone can
#: exhaust memory.
MAX_BATCH = 1 << 20
_MOST = 1 << 50
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}


def parse_bytes(text: str | int, *, source: str = "memory") -> int:
    """A size in bytes from ``"1GiB"``, ``"512MiB"``, ``"1.5G"``, ``"800MB"`` or a number
    of bytes (``k/M/G/T`` are powers of 1000, ``Ki/Mi/Gi/Ti`` of 1024; ``B`` optional)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]i?)?b?\s*", str(text), re.IGNORECASE)
        if m is None:
            raise InputError(
                f"expected a size such as 1GiB, 512MiB or 2000000000, got {text!r}", source=source
            )
        unit = (m.group(2) or "").lower()
        number = float(m.group(1)) * (_BINARY.get(unit) or _UNITS[unit])
        value = int(min(number, _MOST + 1))
    if not 1 <= value <= _MOST:
        raise InputError(f"must lie between 1 byte and 1 PiB, got {text!r}", source=source)
    return value


def format_bytes(n: int) -> str:
    """``1 GiB``, ``37.5 MiB``, ``812 KiB``, ``96 B`` (4 significant digits at most)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} B"
