"""Progress for long data steps (verifying images, indexing, tokenizing, caching): items, rate, ETA, and a summary.

Rules, decided when iteration starts:

* Only the process of global rank zero prints; on other ranks :func:`track` passes the items through unchanged.
* A step that ends within ``delay`` seconds (default 1) prints nothing: only long work shows progress.
* On a TTY (not ``TERM=dumb``): a transient rich progress bar from ``delay`` on, then one summary line.
* Without a TTY (CI logs, files, pipes): no redraws; one plain line each time another 10% is done (at most 10)
  from ``delay`` on, then the summary line. With an unknown total only the summary line.
* ``MEDFUSION_PROGRESS`` overrides: ``bar`` forces the bar, ``lines`` the plain lines, ``off`` prints nothing at all.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TextIO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from medfusion.runs.ranks import is_rank_zero

T = TypeVar("T")
ENV_VAR = "MEDFUSION_PROGRESS"


def _mode(stream: TextIO) -> str:
    """``"off"``, ``"bar"`` or ``"lines"``: the environment override, else ``"bar"`` exactly on a TTY that can redraw
    (``TERM=dumb`` cannot: rich would draw nothing there)."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced in ("off", "bar", "lines"):
        return forced
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        tty = False
    return "bar" if tty and os.environ.get("TERM", "").lower() not in ("dumb", "unknown") else "lines"


class _RateColumn(ProgressColumn):
    """The speed in ``unit``/s (rich's own speed columns say ``it/s`` or bytes/s)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        text = "?" if speed is None else f"{speed:,.0f}"
        return Text(f"{text} {self.unit}/s", style="progress.data.speed")


def _bar(description: str, unit: str, stream: TextIO) -> Progress:
    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(unit),
        TimeRemainingColumn(),
        console=Console(file=stream, force_terminal=True),
        transient=True,
    )


def _summary(description: str, count: int, unit: str, seconds: float) -> str:
    rate = count / seconds if seconds > 0 else 0.0
    return f"{description}: {count:,} {unit} in {seconds:.1f} s ({rate:,.0f} {unit}/s)"


def track(
    items: Iterable[T],
    *,
    description: str,
    total: int | None = None,
    unit: str = "items",
    size: Callable[[T], int] | None = None,
    stream: TextIO | None = None,
    delay: float = 1.0,
    summary: bool = True,
) -> Iterator[T]:
    """Yield every item of ``items`` in order, showing progress on rank zero (see the module docstring).

    ``total`` (in ``unit``) defaults to ``len(items)`` where it has one; ``None`` means unknown (a count, no
    percentage or ETA). ``size(item)`` is how many units an item holds (default 1: batches or chunks of texts
    count their samples). A step that ends within ``delay`` seconds prints nothing; the summary line is printed
    only when the iteration runs to its end, not when the consumer stops early.
    """
    stream = sys.stderr if stream is None else stream
    mode = _mode(stream)
    if mode == "off" or not is_rank_zero():
        yield from items
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    start, count, next_tenth = time.perf_counter(), 0, 1
    with ExitStack() as stack:
        bar: tuple[Progress, TaskID] | None = None
        for item in items:
            yield item
            count += 1 if size is None else size(item)
            elapsed = time.perf_counter() - start
            if elapsed < delay:
                continue
            if mode == "bar":
                if bar is None:
                    progress = stack.enter_context(_bar(description, unit, stream))
                    bar = progress, progress.add_task(description, total=total, completed=count)
                bar[0].update(bar[1], completed=count)
            elif total and next_tenth <= 10 and count * 10 >= next_tenth * total:
                next_tenth = min(count * 10 // total, 10) + 1
                eta = elapsed / count * max(total - count, 0)
                pct = min(count * 100 // total, 100)
                line = f"{description}: {count:,}/{total:,} {unit} ({pct}%), {elapsed:.0f} s elapsed, ETA {eta:.0f} s"
                print(line, file=stream, flush=True)
    seconds = time.perf_counter() - start
    if summary and seconds >= delay:
        print(_summary(description, count, unit, seconds), file=stream, flush=True)


@contextmanager
def timed(description: str, *, stream: TextIO | None = None, delay: float = 1.0) -> Iterator[None]:
    """One summary line ``f"{description}: done in {seconds:.1f} s"`` for a step without items (e.g. training a
    tokenizer) that took ``delay`` seconds or more, rank zero only; none when the step raises or
    ``MEDFUSION_PROGRESS=off``."""
    stream = sys.stderr if stream is None else stream
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    if seconds >= delay and is_rank_zero() and _mode(stream) != "off":
        print(f"{description}: done in {seconds:.1f} s", file=stream, flush=True)
