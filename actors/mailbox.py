"""A position actor's one inbox.

Control messages (close results, position updates) are kept in order and never
dropped; ticks are not queued at all — the mailbox holds only the newest unread one,
so an actor that falls behind decides on the freshest price. One task reads both,
which keeps an actor down to a single trio task.

The feed writes ticks with :meth:`Mailbox.send_latest` (the same call a
:class:`feeds.tick.LatestTickSender` answers); everyone else sends control messages
with :meth:`Mailbox.send_nowait`. Control messages are read before a waiting tick.
"""

from __future__ import annotations

from collections import deque

import trio


class Mailbox:
    __slots__ = ("_messages", "_tick", "_waiter", "closed", "replaced")

    def __init__(self) -> None:
        self._messages: deque = deque()
        self._tick = None
        self._waiter: trio.Event | None = None
        self.closed = False
        self.replaced = 0  # ticks overwritten before the actor read them

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def send_latest(self, tick) -> bool:
        """Leave ``tick`` for the actor, replacing an unread one. False once closed."""
        if self.closed:
            return False
        if self._tick is not None:
            self.replaced += 1
        self._tick = tick
        self._wake()
        return True

    def send_nowait(self, message) -> None:
        """Queue a control message. Raises trio.ClosedResourceError once closed."""
        if self.closed:
            raise trio.ClosedResourceError("the actor has stopped")
        self._messages.append(message)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def receive(self):
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
