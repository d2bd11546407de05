"""Rate-limited logging: trouble that repeats must not flood the log.

Ask :meth:`LogLimiter.allow` before logging a kind of trouble that can repeat many
times a second: the feed's malformed frames, failed REST look-ups and refused
connects; a watcher of the service that keeps failing (:mod:`supervisor.observer`,
the metrics). The first line of a burst is written, the rest are counted and the count
is reported with the next line that gets through.
"""

from __future__ import annotations

import time

__all__ = ["LogLimiter"]


class LogLimiter:
    """At most one log line per ``interval`` seconds per key; counts what it swallowed."""

    def __init__(self, interval: float = 5.0):
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """``(True, n)`` if a line for ``key`` may be logged now (``n`` lines were
        swallowed since the last one), else ``(False, 0)``."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)
