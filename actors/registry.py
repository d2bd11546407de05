"""The running position actors: one registry knows who runs and how to reach them.

An :class:`ActorRegistry` owns every position actor of a service. It keeps, per aged
position, the actor's mailbox while it runs and the last state it reached, and it is
the only way in: the detector asks it to :meth:`~ActorRegistry.ensure` an actor
(start it unless it runs), to :meth:`~ActorRegistry.tell` one a message, or to
:meth:`~ActorRegistry.stop` one; metrics and health read it. Actors run as transient
children of the ``positions`` supervisor, which :meth:`ActorRegistry.run` runs::

    registry = ActorRegistry(ctx, Supervisor("positions"),
                             load_for_recovery=partial(db.load_for_recovery, ctx.config, ctx.settings))
    await nursery.start(registry.run)          # recovers every active aged position
    await registry.ensure(aged_id, state)      # returns once the actor watches
    registry.tell(aged_id, PositionVanished(now))

An actor is started with :meth:`trio.Nursery.start`: :meth:`ensure` returns once its
state is loaded and its mailbox is subscribed to its symbol's ticks. A state handed to
:meth:`ensure` (the row the caller already read) is used by that first run; there is
no second read.

What a restart means for a position actor
-----------------------------------------

There is one restart path: the ``positions`` supervisor's. An actor that crashes is
started again after a backoff (10 ms, doubling); one that ends normally (its position
is closed) is not. If actors crash too often, the supervisor gives up, ``root``
restarts it, and :meth:`run` starts every active aged position again
(:meth:`~ActorRegistry.recover`, which the detector also calls after each poll, so an
active aged position without an actor gets one).

* **Reloaded.** A restarted actor reads its aged row again, once every write queued
  so far is flushed: status, size, entry, close attempts, when a close was triggered,
  the last sampled price. A close order in flight (a write-ahead row not known to be
  final, or a triggered close not recorded closed) makes it reconcile with the
  exchange before it may send anything new. If the database is away, it resumes from
  the last state it reached, reconciling all the same.
* **Lost.** Its mailbox: unread messages and the newest unread tick (the next tick
  and the detector's next poll bring them again); its timers (``step`` sets them again
  on ``Start``); a position update held back during a close (the detector sends it
  again while the state differs from the book).
* **Never repeated.** A client order id: the executor looks an order in flight up by
  its id before anything new is sent. A close: a row recorded closed ends the actor
  at once. The detection: it is recorded with the row, before the actor starts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import dataclass, replace
from uuid import UUID

import trio

from actors import position as pos
from actors.faults import FaultInjector
from actors.mailbox import Mailbox
from actors.position_actor import ActorContext, load_state, run_actor
from actors.statuses import Status
from supervisor import ChildSpec, Restart, Supervisor

log = logging.getLogger("actors.registry")


Recovery = tuple[set[UUID], Sequence[pos.PositionState]]
"""What ``load_for_recovery`` reads: the ids of every aged position not closed, and
the states of those that were asked for."""


class _Busy:
    """The aged positions recovery must not start: those with an actor, or finished."""

    def __init__(self, registry: ActorRegistry):
        self._registry = registry

    def __contains__(self, aged_id: object) -> bool:
        return isinstance(aged_id, UUID) and (self._registry.is_running(aged_id) or aged_id in self._registry._finished)


@dataclass(eq=False)
class _Entry:
    """One aged position's actor, across its restarts."""

    aged_id: UUID
    handed_over: pos.PositionState | None  # for the first run only
    state: pos.PositionState | None = None  # the last state it reached
    mailbox: Mailbox | None = None  # while a run is watching


class ActorRegistry:
    """The running position actors, by aged position id.

    Args:
      ctx: What every actor shares.
      supervisor: The ``positions`` supervisor the actors run under; whether an actor
          runs is whether it is a live child there (its cancel scope is the child's).
      load_for_recovery: Reads the ids of every aged position not closed and, for
          those not in the container it is given (they have an actor), their states
          ready for an actor.
      faults: Fault injection (the demo, the tests); by default nothing is armed.
    """

    def __init__(
        self,
        ctx: ActorContext,
        supervisor: Supervisor,
        *,
        load_for_recovery: Callable[[Container[UUID]], Awaitable[Recovery]] | None = None,
        faults: FaultInjector | None = None,
    ):
        self.ctx = ctx
        self.supervisor = supervisor
        self.faults = faults or FaultInjector()
        self._load_for_recovery = load_for_recovery
        # Every aged position an actor was started for and that is not closed; an entry
        # outlives crashes and restarts of its actor (its last state is the fallback
        # when the database is away).
        self._entries: dict[UUID, _Entry] = {}
        # Aged positions whose actor finished (closed) and whose close the database may not show yet.
        self._finished: set[UUID] = set()

    # --- running the actors ----------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the ``positions`` supervisor and bring every active aged position under watch.

        Run it as the ``positions`` child of the root supervisor: when ``root``
        restarts it, every actor is started again.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.supervisor.run)
            if self._load_for_recovery is not None:
                await self.recover()
            task_status.started()

    async def recover(self) -> None:
        """Start an actor for every aged position not closed that has none.

        One read for all of them, so recovering a thousand positions does not cost
        thousands of round trips.
        """
        if self._load_for_recovery is None:  # nothing to recover from
            return
        await self.ctx.writer.wait_flushed()
        open_ids, states = await self._load_for_recovery(_Busy(self))
        # An actor that finished while the read ran may look unfinished in its result.
        self._finished &= open_ids
        for state in states:
            await self.ensure(state.aged_id, state)

    async def ensure(self, aged_id: UUID, state: pos.PositionState | None = None) -> None:
        """Start the actor of ``aged_id`` unless it runs or has finished.

        ``state`` is its state as already read (it then reads nothing before it
        watches); without one, the actor loads it. Returns once the actor watches its
        symbol (or its first run ended).
        """
        if self.is_running(aged_id) or aged_id in self._finished:
            return
        await self.supervisor.wait_running()
        if self.is_running(aged_id):
            return
        entry = self._entries.get(aged_id)
        if entry is None:
            entry = self._entries[aged_id] = _Entry(aged_id, handed_over=state, state=state)
        else:
            entry.handed_over = state
        await self.supervisor.start_child(
            ChildSpec(
                self.child_id(aged_id),
                lambda *, task_status: self._run(entry, task_status),
                Restart.TRANSIENT,
                kind="position",
                reports_started=True,
            )
        )

    async def stop(self, aged_id: UUID) -> bool:
        """Stop the actor of ``aged_id`` (it is not restarted); False if none runs."""
        stopped = await self.supervisor.stop_child(self.child_id(aged_id))
        self._entries.pop(aged_id, None)
        return stopped

    async def _run(self, entry: _Entry, task_status) -> None:
        """One run of an actor, the supervisor's child body (restart type: transient)."""
        ctx = self.ctx
        if entry.handed_over is not None:
            state, entry.handed_over = entry.handed_over, None
        else:
            state = await load_state(ctx, entry.aged_id, last_known=entry.state)
        if state.status == Status.CLOSED:
            self._forget(entry)
            return
        policy = ctx.policy_for(state.exchange, state.symbol)
        if policy != state.config:
            state = replace(state, config=policy)
        entry.state = state
        mailbox = Mailbox()
        feed = ctx.feeds.get(state.exchange)
        if feed is not None:
            feed.subscribe(state.symbol, mailbox)
        entry.mailbox = mailbox
        try:
            finished = await run_actor(
                ctx,
                state,
                self.faults.wrap(entry.aged_id, mailbox),
                lambda new: setattr(entry, "state", new),
                task_status=task_status,
            )
        finally:
            if entry.mailbox is mailbox:
                entry.mailbox = None
            if feed is not None:
                feed.unsubscribe(state.symbol, mailbox)
            mailbox.close()
        if finished:
            self._finished.add(entry.aged_id)
            self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        if self._entries.get(entry.aged_id) is entry:
            del self._entries[entry.aged_id]

    # --- reaching the actors ---------------------------------------------------------

    @staticmethod
    def child_id(aged_id: UUID) -> str:
        return f"position:{aged_id}"

    def tell(self, aged_id: UUID, message) -> bool:
        """Send a message to a running actor; False if none watches."""
        entry = self._entries.get(aged_id)
        if entry is None or entry.mailbox is None:
            return False
        try:
            entry.mailbox.send_nowait(message)
            return True
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False

    def crash_on_next_tick(self, aged_id: UUID) -> None:
        """Fault injection: the actor of ``aged_id`` crashes on its next tick."""
        self.faults.crash_on_next_tick(aged_id)
        entry = self._entries.get(aged_id)
        if entry is not None and entry.mailbox is not None:
            entry.mailbox.set_band(None)  # the next tick must reach the actor

    # --- reading ---------------------------------------------------------------------

    def is_running(self, aged_id: UUID) -> bool:
        """Whether ``aged_id`` has an actor (watching, loading or waiting to restart)."""
        return self.supervisor.has_child(self.child_id(aged_id))

    def is_watching(self, aged_id: UUID) -> bool:
        """Whether the actor of ``aged_id`` is running with its mailbox subscribed."""
        entry = self._entries.get(aged_id)
        return entry is not None and entry.mailbox is not None

    def has_finished(self, aged_id: UUID) -> bool:
        """Whether the actor of ``aged_id`` ended because its position is closed."""
        return aged_id in self._finished

    def state(self, aged_id: UUID) -> pos.PositionState | None:
        """The last state the actor of ``aged_id`` reached; None once it finished."""
        entry = self._entries.get(aged_id)
        return None if entry is None else entry.state

    def states(self) -> dict[UUID, pos.PositionState]:
        """The last state of every aged position that has an actor."""
        return {
            aged_id: e.state for aged_id, e in self._entries.items() if e.state is not None and self.is_running(aged_id)
        }

    def mailbox(self, aged_id: UUID) -> Mailbox | None:
        """The mailbox of the actor of ``aged_id`` while it watches."""
        entry = self._entries.get(aged_id)
        return None if entry is None else entry.mailbox

    def by_episode(self) -> dict[int, UUID]:
        """The aged position of each episode (position id) that has an actor."""
        return {e.state.position_id: aged_id for aged_id, e in self._entries.items() if e.state is not None}

    def watching(self) -> int:
        """How many actors are watching now."""
        return sum(1 for e in self._entries.values() if e.mailbox is not None)

    def __len__(self) -> int:
        """How many aged positions have an actor (watching, loading or waiting to restart)."""
        return sum(1 for aged_id in self._entries if self.is_running(aged_id))
