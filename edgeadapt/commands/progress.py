"""Progress bars on stderr for long commands, fed by the library's ``progress(done, total)``
callbacks (stdout stays clean for ``--json``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

__all__ = ["progress_bar", "progress_on_first_call", "progress_ticker"]


@contextlib.contextmanager
def progress_bar(label: str, total: int, show: bool) -> Iterator[Callable[[int, int], None]]:
    """A bar of `total` units while the block runs; a callback that ignores every call
    when `show` is false."""
    if not show:

        def ignore(done: int, total: int) -> None:
            return None

        yield ignore
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:

        def update(done: int, _total: int) -> None:
            bar.update(done - bar.pos)

        yield update


def progress_ticker(stack: contextlib.ExitStack, label: str) -> Any:
    """A `progress(done, total)` callback drawing one bar on stderr (only on a terminal),
    opened on the first call and closed with `stack`."""
    bar: Any = None

    def tick(done: int, total: int) -> None:
        nonlocal bar
        if not sys.stderr.isatty():
            return
        if bar is None:
            bar = stack.enter_context(click.progressbar(length=total, label=label, file=sys.stderr))
        bar.update(1)

    return tick


@contextlib.contextmanager
def progress_on_first_call(label: str, show: bool) -> Iterator[Callable[[int, int | None], None]]:
    """`progress_bar` for a library call that learns the total itself: the bar opens on
    the first ``progress(done, total)`` call and follows `done`; while the total is
    unknown (None: a loader script's data), a line counts the samples instead."""
    with contextlib.ExitStack() as stack:
        bar: Any = None

        def update(done: int, total: int | None) -> None:
            nonlocal bar
            if not show:
                return
            if total is None:  # drawn on a terminal only, as click's bar
                if not sys.stderr.isatty():
                    return
                if bar is None:
                    bar = stack.callback(click.echo, "", err=True)  # ends the line at exit
                click.echo(f"\r{label}: {done} samples", err=True, nl=False)
                return
            if bar is None:
                bar = stack.enter_context(
                    click.progressbar(length=total, label=label, file=sys.stderr)
                )
            bar.update(done - bar.pos)

        yield update
