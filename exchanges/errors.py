"""The short error vocabulary of exchange access.

Every failure that crosses the exchange port is one of these, so callers decide what to
do from the class alone:

* :class:`RetryableError` — try again after a pause (network error, HTTP 5xx, 429).
* :class:`UnknownOutcomeError` — the order may or may not have reached the exchange
  (timeout, lost reply). Never resend before looking the client order id up.
* :class:`NonRetryableError` — retrying cannot help (position is zero, reduce-only
  would increase the position, invalid symbol, bad credentials).
* :class:`InsufficientLiquidityError` — a market order cannot be filled; fall back to
  an aggressive reduce-only limit IOC.
"""

from __future__ import annotations


class ExchangeError(Exception):
    """Base class. ``code`` is the exchange's own error code when there is one."""

    def __init__(self, message: str, *, exchange: str | None = None, code: str | int | None = None):
        super().__init__(message)
        self.exchange = exchange
        self.code = None if code is None else str(code)


class RetryableError(ExchangeError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class UnknownOutcomeError(ExchangeError):
    pass


class NonRetryableError(ExchangeError):
    pass


class InsufficientLiquidityError(ExchangeError):
    pass
