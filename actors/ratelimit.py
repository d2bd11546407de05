"""A token-bucket rate limiter on trio's clock (one per exchange)."""

from __future__ import annotations

import trio


class RateLimiter:
    """Allow ``rate`` calls per second on average, bursts of up to ``burst``.

    ``await limiter.acquire()`` before each call. Waiters are served in order.
    """

    def __init__(self, rate: float, burst: int = 1):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None
        self._lock = trio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = trio.current_time()
            if self._stamp is not None:
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.rate
                await trio.sleep(wait)
                self._tokens = 1.0
                self._stamp = trio.current_time()
            self._tokens -= 1
