"""Backoff: how long to wait before trying again, and a retry loop that waits it.

Everything that tries again after a failure (a supervisor restarting a child, a feed
reconnecting, the storage writer retrying a batch, the executor retrying a close, an
alert sink retrying a delivery) needs the same two things:

* a **schedule**, :class:`Backoff`: the delay before the *n*-th retry. Either
  exponential (``initial * factor ** (n - 1)``) or an explicit list of delays (the last
  one repeated), optionally capped at ``max`` and optionally jittered (each delay drawn
  uniformly from its upper ``jitter`` fraction, so that many clients that failed
  together do not all come back at the same moment);
* a **retry loop**, :func:`retry`: call a function, and when it fails with an error
  worth retrying, wait the schedule's delay and call it again, a bounded number of times.

Both honour a ``retry_after`` hint, the server's "not before N seconds" (a 429's
``Retry-After``, an exchange's rate-limit ban): it lengthens a delay, never shortens it,
and the cap still applies when there is one. :func:`retry` reads the hint from the
failing error's ``retry_after`` attribute, the convention of the exchange errors.

Every wait is a :func:`trio.sleep`, so code using this module runs on
:class:`trio.testing.MockClock` in tests exactly as on the real clock.

The loop is `tenacity <https://tenacity.readthedocs.io>`_'s :class:`~tenacity.AsyncRetrying`,
chosen over stamina (a friendlier wrapper around tenacity) because every caller here
has a schedule of its own, and tenacity takes any schedule as its ``wait`` callable:
our :class:`Backoff`, explicit lists and a ``retry_after`` read from the error
included. stamina fixes the schedule to its own jittered exponential, and bounds the
total time of a retry loop on :func:`time.monotonic` by default, which trio's virtual
clock does not move. We hand tenacity ``trio.sleep`` explicitly rather than rely on
its detection of trio.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import tenacity
import trio

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """A delay schedule: :meth:`delay` says how long to wait before retry number *n*.

    Build one with :meth:`exponential` or :meth:`listed`::

        Backoff.exponential(0.1, max=5.0)          # 0.1, 0.2, 0.4, ... 5.0, 5.0
        Backoff.exponential(1.0, max=60, jitter=0.5)  # 0.5-1, 1-2, 2-4, ... 30-60
        Backoff.listed([1.0, 3.0, 5.0])            # 1, 3, 5, 5, 5, ...

    Attributes:
      initial: The delay before the first retry (exponential schedules).
      factor: Each further retry waits ``factor`` times longer (exponential schedules).
      delays: The explicit delays, first retry first (list schedules); after the last
          one, the last one again.
      max: The longest delay, ``retry_after`` hints included; None for no cap.
      jitter: From 0 to 1: each delay is drawn uniformly from
          ``[delay * (1 - jitter), delay]``. 0 (the default) means no randomness.
      uniform: Where jitter comes from (``random.uniform`` by default); tests pass a
          seeded ``random.Random(...).uniform``.
    """

    initial: float = 1.0
    factor: float = 2.0
    delays: tuple[float, ...] = ()
    max: float | None = None
    jitter: float = 0.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial < 0 or any(d < 0 for d in self.delays) or (self.max is not None and self.max < 0):
            raise ValueError("backoff delays must be >= 0")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    @classmethod
    def exponential(
        cls,
        initial: float,
        *,
        factor: float = 2.0,
        max: float | None = None,
        jitter: float = 0.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> Backoff:
        """``initial``, then ``factor`` times longer each retry, up to ``max``."""
        return cls(initial=initial, factor=factor, max=max, jitter=jitter, uniform=uniform)

    @classmethod
    def listed(
        cls,
        delays: Sequence[float],
        *,
        max: float | None = None,
        jitter: float = 0.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> Backoff:
        """The given delays in order, then the last one for every further retry."""
        if not delays:
            raise ValueError("a listed backoff needs at least one delay")
        return cls(delays=tuple(delays), max=max, jitter=jitter, uniform=uniform)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """The seconds to wait before retry number ``retry`` (the first retry is 1).

        ``retry_after`` (seconds, from the server) lengthens the delay, never shortens
        it; ``max`` caps the result either way.
        """
        if retry < 1:
            raise ValueError("retries are counted from 1")
        if self.delays:
            base = self.delays[min(retry, len(self.delays)) - 1]
        else:
            try:
                base = self.initial * self.factor ** (retry - 1)
            except OverflowError:
                base = math.inf
        if self.max is not None:
            base = min(base, self.max)
        if self.jitter:
            base = self.uniform(base * (1 - self.jitter), base)
        if retry_after is not None and retry_after > base:
            base = retry_after if self.max is None else min(retry_after, self.max)
        return base

    async def sleep(self, retry: int, retry_after: float | None = None) -> None:
        """Wait :meth:`delay` seconds (on trio's clock)."""
        await trio.sleep(self.delay(retry, retry_after))


class Retrying(NamedTuple):
    """What :func:`retry` tells ``before_sleep``: retry number ``retry`` comes in ``delay`` s, after ``error``."""

    retry: int
    error: BaseException
    delay: float


def retry_after_of(error: BaseException) -> float | None:
    """The ``retry_after`` hint an error carries (seconds > 0), else None."""
    value = getattr(error, "retry_after", None)
    return float(value) if value is not None and value > 0 else None


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    retries: int | None,
    on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    before_sleep: Callable[[Retrying], None] | None = None,
) -> T:
    """Await ``attempt()`` until it returns, retrying the errors named by ``on``.

    After a failure with one of the ``on`` errors, waits ``backoff.delay(n,
    retry_after)`` (the error's ``retry_after`` hint, see :func:`retry_after_of`) and
    calls ``attempt`` again, at most ``retries`` times (None: for ever). When the
    retries are used up, the last error propagates as it is; any other error, and
    :exc:`trio.Cancelled` whatever ``on`` says, propagates at once. ``before_sleep`` is called before each wait, for
    logging and counting.
    """

    def worth_retrying(error: BaseException) -> bool:
        return isinstance(error, on) and not isinstance(error, trio.Cancelled)

    def wait(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        error = state.outcome.exception()
        return backoff.delay(state.attempt_number, retry_after_of(error) if error is not None else None)

    def report(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if before_sleep is not None and error is not None:  # (only failures are retried)
            before_sleep(Retrying(state.attempt_number, error, state.upcoming_sleep))

    looping = tenacity.AsyncRetrying(
        sleep=trio.sleep,
        stop=tenacity.stop_never if retries is None else tenacity.stop_after_attempt(retries + 1),
        wait=wait,
        retry=tenacity.retry_if_exception(worth_retrying),
        before_sleep=report,
        reraise=True,
    )
    return await looping(attempt)


__all__ = ["Backoff", "Retrying", "retry", "retry_after_of"]
