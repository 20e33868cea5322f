"""Set-up and work functions for the tests of `edgeadapt.workers.deal_processes` and
`edgeadapt.raytasks.deal_ray` (module-level, so that a spawned worker imports them)."""

from __future__ import annotations

import os
import random
import time

from edgeadapt.errors import InputError


def init(setup: int) -> int:
    """The worker's state: `setup` (a factor), or an edgeadapt error for a negative one."""
    if setup < 0:
        raise InputError("a negative factor", source="setup")
    return setup


def work(state: int, item: int) -> tuple[int, int]:
    """``(item * state, this process's id)`` after a random short pause (so that
    results come out of order); item 1013 is bad input, item -1 dies."""
    time.sleep(random.random() * 0.02)
    if item == 1013:
        raise InputError("item 1013 is bad", source="items")
    if item == -1:
        os._exit(3)
    return item * state, os.getpid()


def where(item: int) -> str:
    return f"item {item}"
