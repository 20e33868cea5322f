"""The sha256 of a file, read in chunks: the one digest every format records (bundle
files, source models, whole models, engine-cache keys)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The lowercase hex sha256 of the file at `path`, streamed 1 MiB at a time so a
    multi-gigabyte weights file is never held in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
