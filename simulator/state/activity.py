"""Account activity: what the private streams are told when the account changes.

The state calls its activity listeners synchronously, right after the change and
before anything else can run, with one of these facts:

* :class:`OrderActivity` — an order the simulator's REST accepted, with the fills it
  made at once (none for a resting limit; a market order fills in one go);
* :class:`AdminFillActivity` — a fill made behind the product's back (the admin API:
  a "trading bot" order or a manual trade), which changes a position like any other;
* :class:`CancelActivity` — a resting order canceled by the client.

The listeners (the private streams, :mod:`simulator.streams.private`) turn each fact
into the exchange's own messages; the state does not know about wire formats.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from simulator.state.fills import Fill
    from simulator.state.orders import Order

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrderActivity:
    order: Order
    fills: list[Fill] = field(default_factory=list)


@dataclass(frozen=True)
class AdminFillActivity:
    fill: Fill


@dataclass(frozen=True)
class CancelActivity:
    order: Order


Activity = Union[OrderActivity, AdminFillActivity, CancelActivity]  # noqa: UP007
ActivityListener = Callable[[Activity], None]


class ActivityFeed:
    """The activity listeners (a part of :class:`~simulator.state.SimState`)."""

    def _init_activity(self) -> None:
        self._activity_listeners: list[ActivityListener] = []

    def add_activity_listener(self, fn: ActivityListener) -> Callable[[], None]:
        """Call ``fn(activity)`` synchronously after every account change; returns an unsubscribe."""
        self._activity_listeners.append(fn)

        def unsubscribe() -> None:
            try:
                self._activity_listeners.remove(fn)
            except ValueError:
                pass

        return unsubscribe

    def _emit_activity(self, activity: Activity) -> None:
        # the change is already made: a listener's failure must not undo or hide it
        for fn in list(self._activity_listeners):
            try:
                fn(activity)
            except Exception:
                log.exception("simulator: activity listener %r failed", fn)
