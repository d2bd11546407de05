"""Fault injection for position actors, from the outside.

The demo and the tests crash an actor on purpose to show that its supervisor brings
it back. The actor knows nothing about this: :class:`FaultInjector` wraps the mailbox
an actor reads from, and the wrapper raises :exc:`InjectedCrash` in place of the
next tick once a crash is armed for that position::

    faults = FaultInjector()
    faults.crash_on_next_tick(aged_id)         # before or after its actor started
    mailbox = faults.wrap(aged_id, Mailbox())  # what the actor reads from

While a crash is armed the wrapper lets no quiet band through to the mailbox, so
the next tick is never dropped as quiet: it reaches the actor and crashes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from actors.mailbox import Inbox
from feeds.tick import Tick as FeedTick

if TYPE_CHECKING:
    from actors.position import QuietBand


class InjectedCrash(RuntimeError):
    """Raised on purpose by fault injection (demo, tests)."""


class FaultInjector:
    """The crashes armed for position actors, by aged position id."""

    def __init__(self) -> None:
        self._armed: set[UUID] = set()

    def crash_on_next_tick(self, aged_id: UUID) -> None:
        """Make the actor of ``aged_id`` crash on the next tick it reads (once)."""
        self._armed.add(aged_id)

    def armed(self, aged_id: UUID) -> bool:
        return aged_id in self._armed

    def wrap(self, aged_id: UUID, mailbox: Inbox) -> FaultyMailbox:
        """``mailbox`` as its actor should see it: crashing where a crash is armed."""
        return FaultyMailbox(self, aged_id, mailbox)

    def _fire(self, aged_id: UUID, message: object) -> None:
        if aged_id in self._armed and isinstance(message, FeedTick):
            self._armed.discard(aged_id)
            raise InjectedCrash(f"injected crash in actor for {message.symbol}")


class FaultyMailbox:
    """A :class:`actors.mailbox.Mailbox` seen through a :class:`FaultInjector`."""

    __slots__ = ("_faults", "_aged_id", "inner")

    def __init__(self, faults: FaultInjector, aged_id: UUID, inner: Inbox):
        self._faults = faults
        self._aged_id = aged_id
        self.inner = inner

    async def receive(self) -> Any:
        message = await self.inner.receive()
        self._faults._fire(self._aged_id, message)
        return message

    def set_band(self, band: QuietBand | None, until: float = 0.0) -> None:
        if self._faults.armed(self._aged_id):
            band = None  # the next tick must reach the actor
        self.inner.set_band(band, until)

    def send_nowait(self, message: Any) -> None:
        self.inner.send_nowait(message)

    @property
    def last_quote(self) -> FeedTick | None:
        return self.inner.last_quote
