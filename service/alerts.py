"""Alerts: lifecycle events from the bus to the operator (log, webhook, Telegram).

An :class:`AlertRouter` listens on the :class:`actors.events.EventBus` and offers the
events that alert to each of its sinks. Which events alert:

* every critical event, always (``aged.close.failed`` after all retries,
  ``supervisor.escalation``);
* the kinds of event named in ``notify`` (``[alerts] notify`` in the configuration;
  :data:`NOTIFY_KINDS`): by default a close completed, a close failed, a phase change
  into progressive and every operator action. A name with a dot is an event type
  itself (``aged.close.triggered``).

Offering never blocks and never fails: each sink keeps a bounded queue and delivers
from its own task, which :meth:`AlertRouter.run` runs (a supervised child:
:meth:`AlertRouter.child`). A receiver that never answers costs one sink's task
``timeout`` seconds per attempt; nothing else waits for it. :meth:`AlertRouter.flush`
delivers what is left once the service has stopped.

The parts, one module each:

* :mod:`service.alert_messages` - what an alert says (:func:`alert_text`,
  :func:`alert_payload`);
* :mod:`service.alert_sinks` - the queue, pacing and retries every sink shares
  (:class:`Sink`), and :class:`LogSink`;
* :mod:`service.alert_channels` - :class:`WebhookSink` and :class:`TelegramSink`, over
  httpx.

Secrets (webhook URLs that carry tokens, the Telegram token) are never logged.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Sequence

import trio

from actors.events import ESCALATION, LifecycleEvent
from service.alert_channels import TelegramSink, WebhookSink, http_request
from service.alert_messages import alert_payload, alert_text
from service.alert_sinks import DeliveryFailed, DeliveryRefused, LogSink, Sink
from supervisor import ChildSpec, Restart

log = logging.getLogger("alerts")

# Each kind of event an operator may ask to be told of, and how to tell it on the bus.
NOTIFY_KINDS: dict[str, Callable[[LifecycleEvent], bool]] = {
    "close_completed": lambda e: e.type == "aged.close.completed",
    "close_failed": lambda e: e.type == "aged.close.failed",
    "close_triggered": lambda e: e.type == "aged.close.triggered",
    "progressive_started": lambda e: e.type == "aged.phase.changed" and e.data.get("to") == "progressive_active",
    "phase_changed": lambda e: e.type == "aged.phase.changed",
    "position_detected": lambda e: e.type == "aged.position.detected",
    "operator_action": lambda e: e.type == "aged.operator.action",
}


class AlertRouter:
    """Routes bus events to sinks and runs the sinks' delivery tasks.

    ``notify`` names the non-critical event types that alert too; critical events and
    ``supervisor.escalation`` always do.
    """

    def __init__(self, sinks: Sequence[Sink], *, notify: Iterable[str] = ()):
        self.sinks = list(sinks)
        self.notify = frozenset(notify)
        unknown = [n for n in self.notify if "." not in n and n not in NOTIFY_KINDS]
        if unknown:
            raise ValueError(f"unknown alert kinds {unknown} (known: {', '.join(NOTIFY_KINDS)})")
        self._kinds = [NOTIFY_KINDS[n] for n in self.notify if n in NOTIFY_KINDS]
        self.routed = 0

    def subscribe(self, bus: Any) -> Callable[[], None]:
        """Listen on ``bus``; returns the function that stops listening."""
        return bus.subscribe(self.publish)

    def wants(self, event: LifecycleEvent) -> bool:
        return (
            event.critical
            or event.type == ESCALATION
            or event.type in self.notify
            or any(kind(event) for kind in self._kinds)
        )

    def publish(self, event: LifecycleEvent) -> None:
        """The bus listener: never blocks."""
        if not self.wants(event):
            return
        self.routed += 1
        for sink in self.sinks:
            try:
                sink.offer(event)
            except Exception:  # noqa: BLE001 - one sink must not keep the alert from the others
                log.exception("alert sink %s refused an alert", getattr(sink, "name", sink))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every sink's delivery task until cancelled (a supervised child)."""
        async with trio.open_nursery() as nursery:
            for sink in self.sinks:
                nursery.start_soon(sink.run)
            task_status.started()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued, for at most ``timeout`` seconds; True if all went out.

        For after the supervision tree has stopped (e.g. to get the escalation alert
        out before the process exits).
        """
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for sink in self.sinks:
                    nursery.start_soon(sink.drain)
        return all(sink.queued == 0 for sink in self.sinks)

    def child(self, child_id: str = "alerts") -> ChildSpec:
        return ChildSpec(child_id, self.run, Restart.PERMANENT, kind="alerts", critical=False)


def alert_router_from_env(*, webhook_url_env: str | None = None, telegram: bool = False,
                          notify: Iterable[str] = (), **sink_options: Any) -> AlertRouter:
    """The CLI's router, from the ``[alerts]`` configuration.

    A :class:`LogSink` always. A :class:`WebhookSink` posting to the URL held in the
    environment variable named ``webhook_url_env`` (if one is named, it must be set).
    A :class:`TelegramSink` when ``telegram`` is true (``$TELEGRAM_BOT_TOKEN`` and
    ``$TELEGRAM_CHAT_ID`` must be set). A missing variable is a ``ValueError`` naming
    it; values are never shown. ``sink_options`` go to the webhook/Telegram sinks.
    """
    sinks: list[Sink] = [LogSink()]
    if webhook_url_env:
        webhook = WebhookSink.from_env(webhook_url_env, **sink_options)
        if webhook is None:
            raise ValueError(f"webhook alerts need the environment variable {webhook_url_env} (the webhook URL)")
        sinks.append(webhook)
    if telegram:
        sinks.append(TelegramSink(**sink_options))
    for sink in sinks:
        log.info("alerts: sink %s enabled", sink.name)
    return AlertRouter(sinks, notify=notify)


__all__ = [
    "AlertRouter", "DeliveryFailed", "DeliveryRefused", "LogSink", "Sink", "TelegramSink", "WebhookSink",
    "alert_payload", "alert_router_from_env", "alert_text", "http_request",
]
