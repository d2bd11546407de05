"""The in-process event bus: lifecycle events to whoever listens (alerts, metrics).

Listeners are plain callables invoked synchronously; they must not block (an alert
sink queues the event and delivers it from its own task). A failing listener is
logged and never breaks the publisher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

log = logging.getLogger("events")

DETECTED = "aged.position.detected"
PHASE_CHANGED = "aged.phase.changed"
CLOSE_TRIGGERED = "aged.close.triggered"
CLOSE_COMPLETED = "aged.close.completed"
CLOSE_FAILED = "aged.close.failed"
ESCALATION = "supervisor.escalation"


@dataclass(frozen=True)
class LifecycleEvent:
    type: str
    at: datetime
    aged_id: UUID | None = None
    exchange: str | None = None
    symbol: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    critical: bool = False


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Callable[[LifecycleEvent], None]] = []

    def subscribe(self, listener: Callable[[LifecycleEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, event: LifecycleEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener must never break an actor
                log.exception("event listener failed for %s", event.type)
