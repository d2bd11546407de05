"""The policy clock: UTC datetimes driven by trio's clock.

``now()`` is ``origin + (trio.current_time() - start) * speed``. Under trio's
``MockClock`` with autojump a 40-hour lifecycle takes milliseconds; the demo's
``--speed`` makes phases come sooner; in production ``speed`` is 1 and ``origin`` is
the wall clock at start.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio


class PolicyClock:
    def __init__(self, origin: datetime | None = None, speed: float = 1.0):
        if speed <= 0:
            raise ValueError("speed must be positive")
        if origin is not None and origin.tzinfo is None:
            raise ValueError("origin must be timezone-aware")
        self.speed = speed
        self._origin = origin
        self._start: float | None = None

    def _anchor(self) -> tuple[float, datetime]:
        """(trio time, policy time) of the moment this clock was first read."""
        if self._start is None:
            self._start = trio.current_time()
        if self._origin is None:
            self._origin = datetime.now(UTC)
        return self._start, self._origin

    def now(self) -> datetime:
        start, origin = self._anchor()
        return origin + timedelta(seconds=(trio.current_time() - start) * self.speed)

    def trio_time(self, when: datetime) -> float:
        """The trio clock reading at which ``now()`` reaches ``when``."""
        start, origin = self._anchor()
        return start + (when - origin).total_seconds() / self.speed

    async def sleep_until(self, when: datetime) -> None:
        await trio.sleep_until(max(trio.current_time(), self.trio_time(when)))
