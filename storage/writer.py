"""The storage writer: the one actor that writes actors' changes to PostgreSQL.

Actors hand it :mod:`storage.ops` values with :meth:`StorageWriter.submit`, which
never blocks; :meth:`StorageWriter.wait_flushed` waits until everything submitted so
far is written. It writes in arrival order, in batches, one trio→asyncio crossing per
batch.

The database is the memory, not the heartbeat. When it goes away the writer keeps
everything in a buffer and retries with backoff, logging loudly; actors carry on.
The buffer is bounded for *routine* rows only (sampled price checks): past
``max_buffer`` those are dropped first, oldest first, and counted. Lifecycle writes
(status, close orders, decisions) are never dropped. When the database comes back
the buffer is flushed in order.

A write the database refuses as invalid (:exc:`storage.errors.WriteRejected`, such as
a constraint violation) is not a database outage: that one write is logged with its
error and dropped, and the rest go on. A batch refused because the account's lease
is no longer ours (:exc:`storage.errors.LeaseLost`, from a fenced account view) is
neither: it is not retried but dropped with one warning naming the account, and the
writer goes on (the lease's next holder reloads from the database and reconciles with
the exchange). Any other failure is taken as an outage.

A write that must be committed on its own before something else happens (the
executor's write-ahead row, before its order is sent) can take a :meth:`~StorageWriter.hold`:
the writer starts no new batch until the hold is released, so the two commits do
not queue behind each other on the disk. A hold only reorders; it lapses on its own
after ``max_hold`` seconds.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from storage import ops as op
from storage.errors import LeaseLost, WriteRejected
from supervisor.backoff import Backoff
from supervisor.observer import NO_OBSERVER, Observer

log = logging.getLogger("storage.writer")

ROUTINE_EVENTS = frozenset({"price_check"})


def _is_routine(item: op.WriteOp) -> bool:
    return isinstance(item, op.AddEvent) and item.event_type in ROUTINE_EVENTS


@dataclass(frozen=True)
class WriterConfig:
    """How the storage writer batches and retries, with the service's defaults.

    ``max_buffer`` — queued writes past which routine rows are dropped (oldest
    first). ``max_batch`` — writes per database round trip. ``retry_initial`` /
    ``retry_max`` — the doubling pause (seconds) between tries while the database is
    away. ``max_hold`` — the longest (seconds) a :meth:`StorageWriter.hold` delays the
    next batch.
    """

    max_buffer: int = 100_000
    max_batch: int = 2_000
    retry_initial: float = 0.5
    retry_max: float = 10.0
    max_hold: float = 0.02


class WriterHold:
    """Returned by :meth:`StorageWriter.hold`; call :meth:`release` when your write is done."""

    __slots__ = ("_writer", "deadline")

    def __init__(self, writer: StorageWriter, deadline: float):
        self._writer = writer
        self.deadline = deadline

    def release(self) -> None:
        """Let the writer go on. Releasing twice is harmless."""
        self._writer._release(self)


class NoHold:
    """A hold that holds nothing (for callers that sometimes need none)."""

    def release(self) -> None:
        pass


NO_HOLD = NoHold()


class StorageWriter:
    """Ordered, batched, outage-tolerant writes.

    ``write_batch`` is the database call (``Database.write_batch``); tests may pass
    any async callable with the same contract.
    """

    def __init__(
        self,
        write_batch: Callable[[Sequence[op.WriteOp]], Awaitable[object]],
        *,
        config: WriterConfig = WriterConfig(),
        observer: Observer = NO_OBSERVER,
    ):
        self._write_batch = write_batch
        self._buffer: deque[op.WriteOp] = deque()
        self._wakeup = trio.Event()
        self._flushed = trio.Event()
        self._flushed.set()
        self.max_buffer = config.max_buffer
        self.shutdown_flush_timeout = 5.0
        self.max_batch = config.max_batch
        self.retry_initial = config.retry_initial
        self.retry_max = config.retry_max
        self.database_up = True
        self.dropped_routine = 0
        self.rejected = 0
        self.lease_lost = 0  # writes dropped because the account's lease was lost
        self.written = 0
        self.observer = observer
        self.max_hold = config.max_hold
        self._holds: set[WriterHold] = set()
        self._holds_changed = trio.Event()

    @property
    def depth(self) -> int:
        return len(self._buffer)

    def submit(self, *items: op.WriteOp) -> None:
        """Queue writes. Never blocks, never fails."""
        self._buffer.extend(items)
        self._after_enqueue()

    async def wait_flushed(self) -> None:
        """Wait until everything queued so far has been written."""
        await self._flushed.wait()

    def hold(self) -> WriterHold:
        """Ask the writer to start no new batch until the returned hold is released.

        For a write that goes to the database on its own connection and must be
        committed as fast as possible (the write-ahead row of an order about to be
        sent): a batch of audit rows committing at the same moment makes it wait for
        the disk twice. A batch already being written is not stopped. The hold lapses
        by itself ``max_hold`` seconds after it was taken, and the writer never waits
        longer than ``max_hold`` before a batch however many holds keep coming, so
        holds only reorder writes: they cannot starve the writer.
        """
        hold = WriterHold(self, trio.current_time() + self.max_hold)
        self._holds.add(hold)
        return hold

    def _release(self, hold: WriterHold) -> None:
        self._holds.discard(hold)
        self._holds_changed.set()

    async def _wait_for_holds(self) -> None:
        # Never longer than max_hold in all, however many holds keep arriving.
        give_up = trio.current_time() + self.max_hold
        while self._holds:
            now = trio.current_time()
            self._holds = {h for h in self._holds if h.deadline > now}
            if not self._holds or now >= give_up:
                return
            self._holds_changed = trio.Event()
            with trio.move_on_at(min(give_up, *(h.deadline for h in self._holds))):
                await self._holds_changed.wait()

    def _after_enqueue(self) -> None:
        self._flushed = trio.Event() if self._flushed.is_set() else self._flushed
        if len(self._buffer) > self.max_buffer:
            self._shed_routine()
        self.observer.write_buffer_depth(len(self._buffer))
        self._wakeup.set()

    def _shed_routine(self) -> None:
        excess = len(self._buffer) - self.max_buffer
        kept: deque = deque()
        dropped = 0
        for entry in self._buffer:
            if dropped < excess and _is_routine(entry):
                dropped += 1
                continue
            kept.append(entry)
        self._buffer = kept
        if dropped:
            self.dropped_routine += dropped
            log.error(
                "write buffer full (%d): dropped %d routine price-check rows (total dropped %d)",
                self.max_buffer,
                dropped,
                self.dropped_routine,
            )

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The actor body: write until cancelled, then flush what is queued (a few seconds at most)."""
        task_status.started()
        try:
            await self._write_forever()
        finally:
            if self._buffer and self.database_up:
                with trio.move_on_after(self.shutdown_flush_timeout, shield=True):
                    while self._buffer:
                        batch = self._next_batch()
                        try:
                            await self._write_batch(batch)
                        except LeaseLost as exc:
                            self._drop_lease_lost(len(batch), exc)
                            continue
                        self._commit(len(batch))
            if self._buffer:
                log.error(
                    "stopping with %d writes not written (the database is away); "
                    "the next start reconciles from the exchange",
                    len(self._buffer),
                )

    async def _write_forever(self) -> None:
        backoff = Backoff.exponential(self.retry_initial, max=self.retry_max)
        failures = 0  # in a row; a batch rejected for its data is not a database failure
        while True:
            if not self._buffer:
                self._flushed.set()
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            await self._wait_for_holds()
            batch = self._next_batch()
            try:
                await self._write_batch(batch)
            except LeaseLost as exc:
                self._drop_lease_lost(len(batch), exc)
                self.database_up = True  # it answered: refusing is not being away
                failures = 0
                continue
            except WriteRejected:
                await self._write_one_by_one(len(batch))
                continue
            except Exception as exc:  # noqa: BLE001 - anything else: the database is away
                if self.database_up:
                    log.error(
                        "DATABASE UNAVAILABLE (%s: %s): buffering writes (%d queued); actors carry on",
                        type(exc).__name__,
                        exc,
                        len(self._buffer),
                    )
                self.database_up = False
                failures += 1
                await backoff.sleep(failures)
                continue
            self._commit(len(batch))
            if not self.database_up:
                log.warning("database is back: flushed %d buffered writes", len(batch))
            self.database_up = True
            failures = 0

    def _next_batch(self) -> list[op.WriteOp]:
        return [self._buffer[i] for i in range(min(self.max_batch, len(self._buffer)))]

    def _commit(self, n: int) -> None:
        for _ in range(n):
            self._buffer.popleft()
        self.written += n
        self.observer.write_buffer_depth(len(self._buffer))

    def _drop_lease_lost(self, n: int, exc: LeaseLost) -> None:
        """Drop ``n`` queued writes the database refused because the lease is gone."""
        for _ in range(n):
            self._buffer.popleft()
        self.lease_lost += n
        self.observer.write_buffer_depth(len(self._buffer))
        log.warning(
            "lease of account %s lost: dropped %d writes; its next holder reloads from the database (%s)",
            exc.account,
            n,
            exc,
        )

    async def _write_one_by_one(self, n: int) -> None:
        for _ in range(n):
            item = self._buffer[0]
            try:
                await self._write_batch([item])
            except LeaseLost as exc:
                self._drop_lease_lost(1, exc)
                continue
            except WriteRejected as exc:
                self.rejected += 1
                log.error("database refused a write, dropped it: %r (%s: %s)", item, type(exc).__name__, exc)
            self._buffer.popleft()
            self.written += 1
