"""Progress bars on stderr for long commands, fed by the library's ``progress(done, total)``
callbacks (stdout stays clean for ``--json``)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

__all__ = ["progress_bar", "progress_on_first_call", "progress_ticker", "rate_text"]


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


def rate_text(done: int, seconds: float) -> str:
    """``"1,234 samples/s"``: the rate of `done` samples in `seconds` ("" before any time
    has passed)."""
    return f"{done / seconds:,.0f} samples/s" if seconds > 0 else ""


@contextlib.contextmanager
def progress_on_first_call(label: str, show: bool) -> Iterator[Callable[[int, int | None], None]]:
    """`progress_bar` for a library call that learns the total itself: the bar opens on
    the first ``progress(done, total)`` call and follows `done`, with the samples per
    second since that call (the bundle's loading not counted); while the total is unknown (None: a loader script's data), a
    line counts the samples and their rate instead."""
    with contextlib.ExitStack() as stack:
        bar: Any = None
        first: tuple[float, int] | None = None  # when the first call came, and its `done`

        def update(done: int, total: int | None) -> None:
            nonlocal bar, first
            if not show:
                return
            now = time.monotonic()
            if first is None:
                first = (now, done)
            rate = rate_text(done - first[1], now - first[0])
            if total is None:  # drawn on a terminal only, as click's bar
                if not sys.stderr.isatty():
                    return
                if bar is None:
                    bar = stack.callback(click.echo, "", err=True)  # ends the line at exit
                line = f"{label}: {done:,} samples" + (f", {rate}" if rate else "")
                click.echo(f"\r{line}", err=True, nl=False)
                return
            if bar is None:
                bar = stack.enter_context(
                    click.progressbar(
                        length=total, label=label, file=sys.stderr, item_show_func=lambda r: r
                    )
                )
            bar.update(done - bar.pos, rate)

        yield update
