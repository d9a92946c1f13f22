"""Progress that reads well in a terminal and in a redirected log.

``progress(iterable, total=..., desc=...)`` is a tqdm bar when stderr is a terminal and,
when it is redirected (``make run > log``), a plain log line every ``interval_s`` seconds
and one at the end (``desc: 120/300 it (40%), 12.0 it/s, 10 s``), never ``\\r`` updates.
The returned object iterates, and has ``update(n)`` and ``close()`` like a tqdm bar.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)


def interactive() -> bool:
    """True when stderr is a terminal (where a bar redraws in place)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class LineProgress:
    """Counts items and logs ``desc: n/total unit (pct), rate, elapsed`` every ``interval_s``."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", interval_s: float = 30.0, clock=time.monotonic) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.interval_s, self.clock = desc, unit.strip() or "it", interval_s, clock
        self.n = 0
        self.t0 = self._last = clock()
        self._closed = False
        self._logged_n = -1

    def line(self) -> str:
        dt = self.clock() - self.t0
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / dt:.1f} {self.unit}/s" if dt > 0 else ""
        return f"{self.desc}: {self.n}{of} {self.unit}{pct}{rate}, {dt:.0f} s"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last >= self.interval_s:
            self._last = now
            self._log()

    def _log(self) -> None:
        self._logged_n = self.n
        log.info(self.line())

    def close(self) -> None:
        """Log the final count (once; not again when the last update already logged it)."""
        if not self._closed:
            self._closed = True
            if self._logged_n != self.n:
                self._log()

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:  # tqdm compatibility
        pass

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", interval_s: float = 30.0, **tqdm_kwargs: Any):
    """A tqdm bar on a terminal, else a ``LineProgress`` (see the module docstring)."""
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, **tqdm_kwargs)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, interval_s=interval_s)
