"""One task that wakes every actor at its timers.

An actor's timers (the next phase boundary, the end of a cool-down) are few and far
apart; a task or a deadline per actor would cost more than the timers themselves.
:class:`TimerService` keeps them all in one heap and, when one is due, puts its
message into the actor's mailbox.
"""

from __future__ import annotations

import heapq
import math

import trio


class TimerService:
    def __init__(self) -> None:
        self._heap: list = []
        self._seq = 0
        self._changed = trio.Event()

    def schedule(self, deadline: float, mailbox, message) -> None:
        """At trio time ``deadline``, ``mailbox.send_nowait(message)`` (dropped if it is closed)."""
        heapq.heappush(self._heap, (deadline, self._seq, mailbox, message))
        self._seq += 1
        if self._heap[0][1] == self._seq - 1:
            self._changed.set()  # a new earliest timer: re-arm

    def __len__(self) -> int:
        return len(self._heap)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, mailbox, message = heapq.heappop(self._heap)
                try:
                    mailbox.send_nowait(message)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass  # that actor has stopped
            self._changed = trio.Event()
            with trio.move_on_at(self._heap[0][0] if self._heap else math.inf):
                await self._changed.wait()
