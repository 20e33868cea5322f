"""A progress callback that kills the worker processes running, for the tests of
`edgeadapt.workers` (evaluate's shards, export branches' candidates)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable


def worker_killer(every: bool) -> tuple[Callable[..., None], list[int]]:
    """A ``progress(done, total)`` callback that kills the worker processes running (on
    its first call, or on every call when `every`), and the pids it killed."""
    killed: list[int] = []

    def progress(done: int, total: int | None) -> None:
        if killed and not every:
            return
        for child in multiprocessing.active_children():
            if child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)

    return progress, killed
