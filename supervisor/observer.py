"""Observers: what the running service tells whoever watches it.

The parts of the service (the supervisors, the position actors, the executor, the
detector, the storage writer) report what they do to one :class:`Observer`. Metrics is
one such watcher (:class:`service.metrics.Metrics`); a test that wants to see restarts
or submissions is another. A part never knows who listens::

    class Restarts(Observer):
        def __init__(self):
            self.seen = []

        def child_restarted(self, spec, count):
            self.seen.append((spec.id, count))

    watchers = ObserverSet()
    sup = Supervisor("positions", observer=watchers)
    watchers.add(Restarts())

Every method of :class:`Observer` does nothing; a watcher overrides the ones it cares
about. The calls are synchronous and made on the hot path (a tick turning into an
order), so a watcher must be quick and must not block.

:class:`ObserverSet` fans each call out to every watcher added to it, in order. A
watcher that raises is logged (at most once a minute per watcher and method) and
otherwise ignored: watching must never break what is watched.
"""

from __future__ import annotations

import logging
from typing import Any

from supervisor.log_limiter import LogLimiter

__all__ = ["NO_OBSERVER", "Observer", "ObserverSet"]

log = logging.getLogger("observer")


class Observer:
    """The events a watcher can be told about. Each does nothing here."""

    def state_changed(self, new: Any, old: Any | None) -> None:
        """A position actor's state is now ``new`` (``old``: before; None at its start)."""

    def close_attempted(self, exchange: str, attempt: int) -> None:
        """The executor is about to send close attempt number ``attempt`` on ``exchange``."""

    def order_submitted(self, exchange: str, tick_to_order_seconds: float) -> None:
        """A close order went out, this long after the tick that triggered it."""

    def exchange_error(self, exchange: str, code: str) -> None:
        """An exchange call of the executor failed with this error code."""

    def position_detected(self, lag_seconds: float) -> None:
        """The detector found a newly aged position this long after it aged."""

    def write_buffer_depth(self, depth: int) -> None:
        """The storage writer holds this many unwritten operations."""

    def child_restarted(self, spec: Any, count: int) -> None:
        """A supervisor is about to restart ``spec``'s child, its ``count``-th restart."""


NO_OBSERVER = Observer()
"""The watcher that ignores everything: the default of every part."""


def _fan_out(name: str):
    def call(self: ObserverSet, *args: Any) -> None:
        for watcher in self._watchers:
            try:
                getattr(watcher, name)(*args)
            except Exception:  # noqa: BLE001 - a watcher must never break the watched
                self._log_failure(watcher, name)

    call.__name__ = name
    call.__doc__ = getattr(Observer, name).__doc__
    return call


class ObserverSet(Observer):
    """An :class:`Observer` that passes every call on to the watchers added to it."""

    def __init__(self, *watchers: Observer):
        self._watchers: list[Observer] = list(watchers)
        self._failures = LogLimiter(interval=60.0)

    def add(self, watcher: Observer) -> None:
        """Tell ``watcher`` everything from now on (once, however often it is added)."""
        if watcher not in self._watchers:
            self._watchers.append(watcher)

    def remove(self, watcher: Observer) -> None:
        """Stop telling ``watcher``; no error if it was not added."""
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def __contains__(self, watcher: object) -> bool:
        return watcher in self._watchers

    def _log_failure(self, watcher: Observer, name: str) -> None:
        if self._failures.allow(f"{id(watcher)}.{name}")[0]:
            log.exception("%s.%s failed (logged at most once a minute)", type(watcher).__name__, name)

    state_changed = _fan_out("state_changed")
    close_attempted = _fan_out("close_attempted")
    order_submitted = _fan_out("order_submitted")
    exchange_error = _fan_out("exchange_error")
    position_detected = _fan_out("position_detected")
    write_buffer_depth = _fan_out("write_buffer_depth")
    child_restarted = _fan_out("child_restarted")
