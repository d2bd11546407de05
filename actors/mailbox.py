"""A position actor's one inbox.

Control messages (close results, position updates) are kept in order and never
dropped; ticks are not queued at all — the mailbox holds only the newest unread one,
so an actor that falls behind decides on the freshest price. One task reads both,
which keeps an actor down to a single trio task.

The feed writes ticks with :meth:`Mailbox.send_latest` (the same call a
:class:`feeds.tick.LatestTickSender` answers); everyone else sends control messages
with :meth:`Mailbox.send_nowait`. Control messages are read before a waiting tick.

Most ticks change nothing: the price is still short of the target, no sample is due.
The actor publishes a :class:`actors.position.QuietBand` after each event it handles
(:meth:`Mailbox.set_band`); a tick inside it is counted and dropped without waking the
actor, because ``step`` would return the state unchanged and do nothing. A tick is
judged against the band only while the mailbox is otherwise empty — with a message
waiting, the band may be out of date, so the tick is kept for the actor as usual.

:class:`Inbox` is what an actor needs of its mailbox; a :class:`Mailbox` is one, and so
is a wrapper such as :class:`actors.faults.FaultyMailbox`.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import trio

from feeds.tick import Tick

if TYPE_CHECKING:
    from actors.position import QuietBand

__all__ = ["Inbox", "Mailbox"]


class Inbox(Protocol):
    """What a position actor reads from and tells: see :class:`Mailbox`."""

    async def receive(self) -> Any:
        """The next control message, else the newest tick; waits for either."""
        ...

    def send_nowait(self, message: Any) -> None:
        """Queue a control message."""
        ...

    def set_band(self, band: QuietBand | None, until: float = 0.0) -> None:
        """Ticks ``band`` calls quiet, arriving before ``until``, need not wake the actor."""
        ...

    @property
    def last_quote(self) -> Tick | None:
        """The newest tick the feed delivered, quiet or not."""
        ...


class Mailbox:
    __slots__ = ("_messages", "_tick", "_waiter", "closed", "replaced", "quiet", "_band", "_band_until", "last_quote")

    def __init__(self) -> None:
        self._messages: deque[Any] = deque()
        self._tick: Tick | None = None
        self._waiter: trio.Event | None = None
        self.closed = False
        self.replaced = 0  # ticks overwritten before the actor read them
        self.quiet = 0  # ticks dropped inside the actor's quiet band
        self._band: QuietBand | None = None
        self._band_until = 0.0
        self.last_quote: Tick | None = None  # the newest tick the feed delivered, quiet or not

    def set_band(self, band: QuietBand | None, until: float = 0.0) -> None:
        """Drop ticks that ``band`` calls quiet and that arrive before ``until`` (trio
        time). ``None`` hands every tick to the actor."""
        self._band = band
        self._band_until = until

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def send_latest(self, tick: Tick) -> bool:
        """Leave ``tick`` for the actor, replacing an unread one. False once closed."""
        if self.closed:
            return False
        self.last_quote = tick
        band = self._band
        if (
            band is not None
            and self._tick is None
            and not self._messages
            and trio.current_time() < self._band_until
            and band.quiet_price(tick.bid, tick.ask, tick.last)
        ):
            self.quiet += 1
            return True
        if self._tick is not None:
            self.replaced += 1
        self._tick = tick
        self._wake()
        return True

    def send_nowait(self, message: Any) -> None:
        """Queue a control message. Raises trio.ClosedResourceError once closed."""
        if self.closed:
            raise trio.ClosedResourceError("the actor has stopped")
        self._messages.append(message)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def receive(self) -> Any:
        """The next control message, else the newest tick; waits for either."""
        while True:
            if self._messages:
                return self._messages.popleft()
            if self._tick is not None:
                tick, self._tick = self._tick, None
                return tick
            if self.closed:
                raise trio.EndOfChannel
            self._waiter = trio.Event()
            await self._waiter.wait()
