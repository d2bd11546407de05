"""Alert sinks: a bounded queue per destination, and the task that delivers from it.

The bus calls its listeners synchronously from the actors, so :meth:`Sink.offer`
never blocks and never raises: it appends to the sink's queue, and a full queue drops
its *oldest* alert and counts it. The sink's own task (:meth:`Sink.run`) delivers the
queue in order; :meth:`Sink.drain` delivers what is queued now and returns, for a
flush at shutdown. An alert whose delivery is cancelled halfway goes back to the front
of the queue.

A delivery that fails for a reason that may pass (no answer, a refused connection, a
429 or a 5xx: :exc:`DeliveryFailed`) is retried on a :class:`supervisor.Backoff`
schedule, ``backoff * 2**n`` seconds capped at ``max_backoff``, lengthened to the
server's ``retry_after`` when it sends one; :exc:`DeliveryRefused` (any other 4xx) is
not retried. ``min_interval`` paces successive sends to one destination.

Subclasses implement :meth:`Sink.deliver_once`. :class:`LogSink` is the simplest:
one log line per alert, written at once.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Iterable

import trio

from actors.events import LifecycleEvent
from service.alert_messages import alert_text
from supervisor import Backoff, Retrying, retry

log = logging.getLogger("alerts")


class DeliveryFailed(Exception):
    """One delivery attempt failed in a way worth retrying; ``retry_after`` is the server's hint."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class DeliveryRefused(Exception):
    """The receiver refused the alert for good (a 4xx other than 408/425/429): not retried."""


class Sink:
    """Queue + delivery task. Subclasses implement :meth:`deliver_once`.

    Counters (read by :meth:`service.metrics.Metrics.watch_alerts`): ``delivered``,
    ``failed`` (gave up after every retry, or refused for good), ``retries_made``,
    ``dropped`` (queue full), ``queued`` (waiting now). ``retries`` is the setting.
    """

    name = "sink"

    def __init__(self, *, max_queue: int = 1000, timeout: float = 10.0, retries: int = 3, backoff: float = 1.0,
                 max_backoff: float = 60.0, min_interval: float = 0.0, secrets: Iterable[str] = ()):
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be > 0, retries and backoff >= 0")
        self.max_queue = max_queue
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.min_interval = min_interval
        self._schedule = Backoff.exponential(backoff, max=max_backoff)
        self._secrets = [s for s in secrets if s]
        self._queue: deque[LifecycleEvent] = deque()
        self._wakeup: trio.Event | None = None
        self.delivered = 0
        self.failed = 0
        self.retries_made = 0
        self.dropped = 0
        self.in_flight: LifecycleEvent | None = None
        self._last_sent: float | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, event: LifecycleEvent) -> None:
        """Queue an alert. Never blocks, never raises; a full queue drops its oldest alert."""
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("alert sink %s: queue full (%d), dropped the oldest alert (%d dropped so far)",
                          self.name, self.max_queue, self.dropped)
        self._queue.append(event)
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        """Deliver queued alerts in order, forever."""
        while True:
            while not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            await self._deliver_next()

    async def drain(self) -> None:
        """Deliver everything queued now, then return."""
        while self._queue:
            await self._deliver_next()

    async def _deliver_next(self) -> None:
        event = self._queue.popleft()
        self.in_flight = event
        finished = False
        try:
            try:
                await self._deliver(event)
            except Exception as exc:  # noqa: BLE001 - a bug in one alert must not stop the others
                self.failed += 1
                log.error("alert sink %s: delivery of %s failed unexpectedly: %s", self.name, event.type,
                          self._scrub(f"{type(exc).__name__}: {exc}"))
            finished = True
        finally:
            self.in_flight = None
            if not finished:  # cancelled mid-delivery: keep it for the next run or a flush
                self._queue.appendleft(event)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _pace(self) -> None:
        if self.min_interval > 0 and self._last_sent is not None:
            await trio.sleep_until(self._last_sent + self.min_interval)
        self._last_sent = trio.current_time()

    async def _deliver(self, event: LifecycleEvent) -> None:
        attempts = 0

        async def attempt() -> None:
            nonlocal attempts
            attempts += 1
            await self._pace()
            await self.deliver_once(event)

        def retrying(next_try: Retrying) -> None:
            self.retries_made += 1
            log.warning("alert sink %s: %s attempt %d failed (%s); retrying in %.2fs", self.name, event.type,
                        next_try.retry, next_try.error, next_try.delay)

        try:
            await retry(attempt, backoff=self._schedule, retries=self.retries, on=DeliveryFailed,
                        before_sleep=retrying)
        except (DeliveryFailed, DeliveryRefused) as exc:
            self.failed += 1
            log.error("alert sink %s: giving up on %s after %d attempt(s): %s", self.name, event.type, attempts, exc)
            return
        self.delivered += 1

    async def deliver_once(self, event: LifecycleEvent) -> None:
        """One attempt to deliver ``event``; returns once the receiver has it.

        Raises :exc:`DeliveryFailed` (retried) or :exc:`DeliveryRefused` (not retried),
        each with a reason fit for the log: no secrets in it.
        """
        raise NotImplementedError


class LogSink(Sink):
    """Writes each critical alert to the ``alerts`` logger at CRITICAL.

    The other alerts (``[alerts] notify``: a completed close, an operator's action) are
    for the webhook and Telegram: the service logs each of those events already, once.
    """

    name = "log"

    def __init__(self, logger: logging.Logger | None = None, **kw: Any):
        super().__init__(**kw)
        self.logger = logger or log

    def offer(self, event: LifecycleEvent) -> None:  # logging is synchronous and cheap: do it now
        if not event.critical:
            return
        self.logger.log(logging.CRITICAL, "ALERT %s", alert_text(event).replace("\n", " | "))
        self.delivered += 1

    async def run(self) -> None:
        await trio.sleep_forever()


__all__ = ["DeliveryFailed", "DeliveryRefused", "LogSink", "Sink"]
