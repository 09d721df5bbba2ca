"""Progress of long work: a tqdm bar on a terminal, a log line every `interval` seconds (done/total, rate, ETA)
when stderr is a pipe or a file, so logs get a few readable lines instead of thousands of carriage returns."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
DEFAULT_INTERVAL = 30.0


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """`update(n)` as work is done; a context manager. A bar when `stream` is a terminal, else log lines."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        interval: float = DEFAULT_INTERVAL,
        logger: logging.Logger | None = None,
        stream: Any = None,
        clock=time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.interval = interval
        self.logger = logger or logging.getLogger("progress")
        self.clock = clock
        self.done = 0
        stream = sys.stderr if stream is None else stream
        self.bar = (
            tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1, file=stream)
            if _is_terminal(stream)
            else None
        )
        self.start = self.clock()
        self.last_line = self.start

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self.logger.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """`desc: done/total unit (pct), rate unit/s, elapsed, ETA`."""
        now = self.clock() if now is None else now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.done}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100.0 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.2f} {self.unit}/s, elapsed {format_seconds(elapsed)}"
        if self.total and rate > 0:
            text += f", ETA {format_seconds((self.total - self.done) / rate)}"
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.done and self.clock() - self.start >= self.interval:
            self.logger.info("%s (finished)", self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it", **kwargs: Any
) -> Iterator[T]:
    """Iterate with a `Progress`; `total` defaults to len(iterable)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit, **kwargs) as meter:
        for item in iterable:
            yield item
            meter.update(1)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
