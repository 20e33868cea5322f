"""Atomic filesystem writes: readers see the old files or the new ones, never a part.

Two kinds of unit:

- files (`atomic_write_bytes`, `atomic_write_many`): each file's bytes go to a synced
  temp file beside it, then are renamed into place; a full disk fails before anything
  is renamed, and nothing new is left behind.
- a directory (`staged_directory`, `replace_directory`, `writers_lock`): the new tree
  is built in a temp directory beside the target and swapped in whole (Linux
  ``renameat2(RENAME_EXCHANGE)`` where the kernel has it, else two renames). A writer
  killed midway leaves the previous directory intact and its temp directory, named
  after its pid, is removed by the next writer into the same folder
  (`clean_stale`).

A writer stopped midway by a signal leaves nothing either: every temp file and folder is
registered while it exists (created with SIGINT and SIGTERM held back, so none escapes
the registry), the writers remove theirs on any exception, and `signals_as_exceptions`
(what the CLI runs every command under) turns SIGTERM into a `Terminated` exception, as
Python does SIGINT, so that this cleanup runs, then removes whatever is still registered
(`remove_temps`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from edgeadapt.errors import InputError

__all__ = [
    "TMP_PREFIX",
    "Terminated",
    "atomic_write_bytes",
    "atomic_write_many",
    "check_path",
    "clean_stale",
    "exchange",
    "fsync",
    "remove_temps",
    "replace_directory",
    "signals_as_exceptions",
    "staged_directory",
    "writers_lock",
]

#: The signals that stop a writer: while a temp is created they are held back.
_STOPS = {signal.SIGINT, signal.SIGTERM}
#: The temp files and folders this process is writing now.
_TEMPS: set[Path] = set()


class Terminated(BaseException):
    """SIGTERM arrived (`signals_as_exceptions`); a BaseException, as KeyboardInterrupt
    is, so that only cleanup (``finally``, ``except BaseException``) sees it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """SIGINT and SIGTERM held back while the block runs (a temp is created and
    registered), delivered when it ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def remove_temps() -> list[Path]:
    """Remove the temp files and folders this process is writing (a writer stopped
    midway); return them."""
    removed = []
    for tmp in list(_TEMPS):
        _TEMPS.discard(tmp)
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink(missing_ok=True)
        else:
            continue
        removed.append(tmp)
    return removed


def _terminate(signum: int, _frame: Any) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises `Terminated` where the
    program is, so that writers remove their temp files as they do on any error; on the
    way out, by any exception, the temps still registered are removed. The previous
    SIGTERM handler comes back afterwards. Elsewhere than the main thread, where Python
    cannot set a handler, only the last part is done."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main else None
    try:
        yield
    except BaseException:
        remove_temps()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def check_path(path: str | os.PathLike[str]) -> Path:
    """A path that can be handed to the OS: no NUL byte (which `open` refuses with a
    ValueError, not an OSError)."""
    text = os.fspath(path)
    if "\0" in str(text):
        raise InputError("a path must not contain a NUL byte", source=repr(str(text)))
    return Path(path)


def fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- files


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
    """Write `data` to a synced temp file beside `path` (registered until `_settle`);
    return its name."""
    with _held():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        _TEMPS.add(Path(tmp))
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _settle(tmp, None)
        raise
    return tmp


def _settle(tmp: str, target: Path | None) -> None:
    """Rename the temp file `tmp` to `target`, or with None remove it; either way it is
    no longer registered."""
    try:
        if target is None:
            Path(tmp).unlink(missing_ok=True)
        else:
            os.replace(tmp, target)
    finally:
        _TEMPS.discard(Path(tmp))


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
            _settle(tmp, current)
            temps.pop(0)
    except BaseException as e:
        for tmp, _ in temps:
            _settle(tmp, None)
        _remove_empty(created)
        if isinstance(e, OSError):
            raise _write_error(current, e) from None
        raise


# --------------------------------------------------------------------------- directories

#: Names of the temp directories a directory writer builds beside its target.
TMP_PREFIX = ".edgeadapt-tmp-"

_STALE = re.compile(rf"^{re.escape(TMP_PREFIX)}.+-(\d+)-[a-z0-9_]{{8}}(-old)?$")


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where the
    C library or the filesystem does not support it."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def clean_stale(parent: Path) -> list[Path]:
    """Remove the temp dirs that writers killed midway left in `parent` (whatever they
    were writing: the pid in the name is no longer running); return them."""
    removed = []
    for p in parent.glob(f"{TMP_PREFIX}*"):
        m = _STALE.match(p.name)
        if m is None or not p.is_dir() or p.is_symlink() or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        except (PermissionError, OverflowError):
            continue
    return removed


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """A fresh temp directory beside `out` to build its new contents in; removed on
    exit unless `replace_directory` moved it into place. The parent folder is created
    and the temp dirs of dead writers in it are removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent)
    with _held():
        tmp = Path(
            tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}-{os.getpid()}-", dir=out.parent)
        )
        _TEMPS.add(tmp)
    try:
        yield tmp
    finally:
        try:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            _TEMPS.discard(tmp)


@contextlib.contextmanager
def writers_lock(folder: Path) -> Iterator[None]:
    """Serialise the writers committing into `folder` (an exclusive flock on it), so that
    a writer can swap its directory in and read it back before another swaps again."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def replace_directory(tmp: Path, out: Path) -> None:
    """Move the finished (synced) `tmp` to `out`, replacing an existing directory there
    in one step where the kernel can swap them, and sync the parent folder. Deciding
    whether `out` may be replaced is the caller's job."""
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)
    elif exchange(tmp, out):
        shutil.rmtree(tmp)
    else:
        old = out.with_name(f"{tmp.name}-old")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    fsync(out.parent)
