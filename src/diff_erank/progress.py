"""Progress that reads well both on a terminal and in a job's log file.

On a terminal this is tqdm. Snakemake sends each job's stderr to a log file, where tqdm's
carriage-return redraws pile up into one unreadable line; there, progress is a plain log line
every ``interval`` seconds (and one at the end), so ``less`` and ``tail -f`` show it as it goes.
:func:`quiet_libraries` does the same for the bars of ``datasets``, ``transformers`` and the hub.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger("diff_erank.progress")


def on_terminal() -> bool:
    return sys.stderr.isatty()


def quiet_libraries() -> None:
    """Switch off the progress bars of the HF libraries when stderr is a file (before they import)."""
    if not on_terminal():
        for var in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(var, "1")


class LogProgress:
    """The part of tqdm's interface the pipeline uses (iterate, ``update``, ``close``), as log lines."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        interval: float = 30.0,
    ) -> None:
        self.iterable = iterable
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = 0
        self.start = self.last = time.monotonic()
        self.closed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        # whole percent rounded down: 100% only when every item is done (never 999/1,000 (100%))
        done = f"{self.n:,.0f}" + (
            f"/{self.total:,.0f} ({math.floor(100 * self.n / self.total)}%)" if self.total else ""
        )
        rate = f", {self.n / elapsed:,.1f} {self.unit}/s" if elapsed > 0 else ""
        return f"{self.desc}: {done} {self.unit} in {elapsed:.0f} s{rate}"

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            log.info("%s", self._line())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            log.info("%s (end)", self._line())

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                try:
                    yield item
                except GeneratorExit:
                    # the loop stopped taking items (break, return): the item in hand was its last,
                    # so the line ends at N/N where the loop broke at the last item, not N-1/N
                    self.n += 1
                    raise
                self.update()
        finally:  # also when the loop breaks early
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tqdm(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm`` on a terminal, :class:`LogProgress` otherwise (a drop-in for both uses)."""
    if on_terminal():
        from tqdm.auto import tqdm as bar

        return bar(iterable, **kwargs)
    kwargs.pop("mininterval", None)
    return LogProgress(iterable, **{k: v for k, v in kwargs.items() if k in ("total", "desc", "unit")})
