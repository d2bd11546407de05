"""The per-exchange gate: after a rate limit or ban with a known end, no request at all.

An exchange that says "too many requests, come back in 90 s" (HTTP 429/418
``Retry-After``, Binance "IP banned until <ms>", Bybit ``X-Bapi-Limit-Reset-Timestamp``)
escalates to a longer ban when asked again early. So the first such answer closes the
gate of that exchange, and until the end it named every request of every caller fails
at once, without reaching the exchange::

    gate = RequestGate("bybit")
    gate.check()                  # before each request: raises while closed
    gate.close(err)               # after an error: a RetryableError with retry_after closes it

Time is trio's clock, so tests move it with ``MockClock``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import trio

from exchanges.errors import ExchangeError, RetryableError

__all__ = ["RequestGate"]

log = logging.getLogger("exchanges.ccxt")


class RequestGate:
    """Open, or closed until a trio time. :attr:`closings` counts how often it closed."""

    def __init__(self, exchange: str):
        self.exchange = exchange
        self.closings = 0
        self._until: float | None = None
        self._reason: str | None = None

    def remaining(self) -> float:
        """Seconds until requests may be sent again (0 when the gate is open)."""
        if self._until is None:
            return 0.0
        left = self._until - trio.current_time()
        if left <= 0:
            self._until = None
            return 0.0
        return left

    def state(self) -> dict | None:
        """``None``, or what ``/health`` shows while the gate is closed."""
        left = self.remaining()
        if left <= 0:
            return None
        until = datetime.now(UTC).timestamp() + left
        return {
            "seconds_left": round(left, 3),
            "until": datetime.fromtimestamp(until, tz=UTC).isoformat(timespec="seconds"),
            "reason": self._reason,
        }

    def check(self) -> None:
        """Raise :class:`RetryableError` (``code="banned"``, ``retry_after``) while closed."""
        left = self.remaining()
        if left > 0:
            raise RetryableError(
                f"{self.exchange}: requests held back for {left:.1f}s more ({self._reason})",
                exchange=self.exchange,
                code="banned",
                retry_after=left,
            )

    def close(self, err: ExchangeError) -> None:
        """Close (or keep closed longer) for ``err.retry_after`` seconds; other errors leave it."""
        seconds = getattr(err, "retry_after", None)
        if not isinstance(err, RetryableError) or seconds is None or seconds <= 0:
            return
        until = trio.current_time() + float(seconds)
        if self._until is None or until > self._until:
            if self._until is None:
                self.closings += 1
            self._until = until
            self._reason = f"{err.code or type(err).__name__}: {str(err)[:200]}"
            log.warning("%s: rate limit / ban: no request for %.1fs (%s)", self.exchange, seconds, self._reason)
