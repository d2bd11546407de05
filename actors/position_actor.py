"""The per-position actor: a thin trio loop around :func:`actors.position.step`.

:func:`run_actor` feeds ticks, timers and messages (close results, position updates)
from its mailbox into ``step`` — one task, one mailbox. The registry
(:mod:`actors.registry`) starts it, with a state it read or :func:`load_state` reads,
and its mailbox subscribed to the symbol's ticks. Carrying out the commands never
blocks: writes go to the storage writer, closes to the executor, events to the bus.
So the loop always decides on the freshest tick (the mailbox keeps only the newest).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

import trio

from actors import position as pos
from actors.clock import PolicyClock
from actors.events import CLOSE_COMPLETED, EventBus, LifecycleEvent
from actors.executor import CloseRequest, Executor
from actors.mailbox import Inbox
from actors.operator import BadAction, ForceClose, Hold, Release, effective_policy
from actors.policy import CloseReason, PolicyConfig
from actors.statuses import Status
from actors.timers import TimerService
from exchanges import logfmt
from feeds.tick import Tick as FeedTick
from storage import ops as op
from storage.writer import StorageWriter
from supervisor.observer import NO_OBSERVER, Observer

log = logging.getLogger("actors.position")

# A quiet band ends this much early on the trio clock, so that rounding between trio time
# and policy time can never let a tick through that arrives as the band runs out.
_BAND_GUARD = timedelta(microseconds=10)


class TickSource(Protocol):
    def subscribe(self, symbol: str, sender=None): ...
    def unsubscribe(self, symbol: str, receiver) -> None: ...


@dataclass
class ActorContext:
    """What every position actor shares."""

    db: Any  # storage.Database: load_position (a stand-in in pure unit tests)
    writer: StorageWriter
    executor: Executor
    bus: EventBus
    clock: PolicyClock
    config: PolicyConfig
    settings: pos.Settings
    feeds: Mapping[str, TickSource] = field(default_factory=dict)
    timers: TimerService = field(default_factory=TimerService)  # someone must run timers.run()
    # Told what the actors and the detector do (metrics, benchmarks): supervisor.observer.
    observer: Observer = NO_OBSERVER
    # Per-symbol policy overrides: the configuration file's (by symbol, on every exchange)
    # and the operators' (by exchange and symbol; kept current by service.operator_inbox).
    config_overrides: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)
    db_overrides: Mapping[tuple[str, str], Mapping[str, Decimal]] = field(default_factory=dict)

    def policy_for(self, exchange: str, symbol: str) -> PolicyConfig:
        """The effective policy of ``symbol`` on ``exchange``: the configured one, then the
        file's overrides of the symbol, then the operators' (the last wins)."""
        file_layer = self.config_overrides.get(symbol, {})
        db_layer = self.db_overrides.get((exchange, symbol), {})
        if not file_layer and not db_layer:
            return self.config
        try:
            return effective_policy(self.config, file_layer, db_layer)
        except BadAction as exc:  # each layer was checked alone; together they may not fit
            log.error(
                "%s %s: the operators' policy override does not fit the configured one (%s); using the configured one",
                exchange,
                symbol,
                exc,
            )
            return effective_policy(self.config, file_layer)


async def load_state(
    ctx: ActorContext, aged_id: UUID, last_known: pos.PositionState | None = None
) -> pos.PositionState:
    """The actor's state from the database; from ``last_known`` if the database is away."""
    try:
        with trio.fail_after(10):
            await ctx.writer.wait_flushed()  # the table must reflect every write made so far
            state = await ctx.db.load_position(aged_id, ctx.config, ctx.settings)
    except Exception as exc:  # noqa: BLE001 - database away: fall back to memory
        if last_known is None:
            raise
        log.warning("aged %s: database unavailable (%s); resuming from the last known state", aged_id, exc)
        return replace(last_known, close_in_flight=False, needs_reconcile=True)
    if state is None:
        raise LookupError(f"aged position {aged_id} not found")
    return state


class Reply:
    """Where an actor puts what came of an operator's message; the sender waits on it."""

    def __init__(self) -> None:
        self.outcome: str | None = None
        self.done = trio.Event()

    def answer(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()


@dataclass(frozen=True, slots=True)
class OperatorMessage:
    """An operator's action for one actor (:mod:`actors.operator`), or a new effective
    policy for it; the actor answers on ``reply``."""

    action: Hold | Release | ForceClose | PolicyConfig
    reply: Reply = field(default_factory=Reply)


@dataclass(frozen=True, slots=True)
class TimerDue:
    kind: str
    at: datetime


class PositionActor:
    """What one actor holds between events: its state, its mailbox, its timers."""

    def __init__(
        self,
        ctx: ActorContext,
        state: pos.PositionState,
        mailbox: Inbox,
        on_state: Callable[[pos.PositionState], None] = lambda state: None,
    ):
        self.ctx = ctx
        self.state = state
        self.mailbox = mailbox
        self.on_state = on_state
        self.done = False
        self._timers: dict[str, datetime] = {}
        self._tick_received_at: float | None = None
        self._reply: Reply | None = None  # the operator's message being handled
        self._closed: pos.Persist | None = None  # the change that closed the position, for its event

    def operator(self, message: OperatorMessage) -> None:
        """Turn an operator's message into the machine's event (with the quote that still
        holds, so a release or a new target can close without waiting for a tick)."""
        now = self.ctx.clock.now()
        action = message.action
        quote = self._current_quote()
        prices = (quote.bid, quote.ask, quote.last) if quote is not None else (None, None, None)
        event: pos.Event
        if isinstance(action, Hold):
            event = pos.HoldSet(now, action.until, action.reason)
        elif isinstance(action, Release):
            event = pos.HoldReleased(now, *prices)
        elif isinstance(action, ForceClose):
            event = pos.ForceCloseRequested(now, action.reason)
        else:
            event = pos.PolicyChanged(now, action, *prices)
        self._reply = message.reply
        try:
            self.handle(event)
        finally:
            self._reply = None
            message.reply.answer("no answer")  # only if the machine gave none

    def handle(self, event: pos.Event) -> None:
        before = self.state
        self.state, commands = pos.step(self.state, event)
        self.on_state(self.state)
        self.ctx.observer.state_changed(self.state, before)
        for command in commands:
            self._carry_out(command)
        self._publish_band()

    def _publish_band(self) -> None:
        """Tell the mailbox which ticks it may drop: those ``step`` would ignore."""
        ctx = self.ctx
        band = None
        if not self.done:
            band = pos.quiet_band(self.state, ctx.clock.now())
        if band is None:
            self.mailbox.set_band(None)
        else:
            self.mailbox.set_band(band, ctx.clock.trio_time(band.until - _BAND_GUARD))

    def _carry_out(self, c: pos.Command) -> None:
        s = self.state
        if isinstance(c, pos.Persist):
            self.ctx.writer.submit(op.UpdateAged(s.aged_id, c))
            if c.status == Status.CLOSED:
                self._closed = c
            if c.status == Status.CLOSED and c.close_reason not in (pos.KEEP, None, CloseReason.MANUAL):
                # Our close made the episode flat. (Anything else that ends an episode, the
                # detector sees on the exchange and records itself.)
                phase = None if c.phase_at_close is pos.KEEP else c.phase_at_close
                closed_at = None if c.closed_at is pos.KEEP else c.closed_at
                self.ctx.writer.submit(op.ClosePosition(s.position_id, closed_at, f"aged_{phase}" if phase else "aged"))
        elif isinstance(c, pos.RequestClose):
            self.ctx.executor.submit(
                CloseRequest(
                    aged_id=s.aged_id,
                    exchange=s.exchange,
                    symbol=s.symbol,
                    side=s.side,
                    qty=c.qty,
                    next_attempt=c.next_attempt,
                    reply=self.mailbox,
                    clock=self.ctx.clock.now,
                    reconcile_only=c.reconcile_only,
                    emergency=c.emergency,
                    tick_received_at=self._tick_received_at,
                    entry_price=s.entry_price,
                    opened_at=s.opened_at,
                    worst_price=c.worst_price,
                )
            )
        elif isinstance(c, pos.Emit):
            self.ctx.writer.submit(
                op.AddEvent(
                    s.aged_id,
                    c.event_type,
                    market_price=c.market_price,
                    target_price=c.target_price,
                    price_distance_percent=c.distance_percent,
                    success=c.success,
                    error_message=c.error,
                    metadata=c.data,
                    at=self.ctx.clock.now(),
                )
            )
            if c.event_type.startswith("aged."):
                data = {"side": s.side, **(c.data or {})}
                if c.market_price is not None:
                    data.setdefault("price", c.market_price)
                if c.event_type == CLOSE_COMPLETED and self._closed is not None:
                    # what a trader reads first: the phase it closed in and the money
                    data.setdefault(
                        "phase", None if self._closed.phase_at_close is pos.KEEP else self._closed.phase_at_close
                    )
                    data.setdefault("pnl", None if self._closed.pnl is pos.KEEP else self._closed.pnl)
                self.ctx.bus.publish(
                    LifecycleEvent(
                        c.event_type,
                        self.ctx.clock.now(),
                        s.aged_id,
                        s.exchange,
                        s.symbol,
                        data,
                        c.critical,
                    )
                )
                log.log(
                    logging.CRITICAL if c.critical else logging.INFO,
                    "%s %s %s %s %s",
                    c.event_type,
                    s.exchange,
                    s.symbol,
                    s.side,
                    _describe(c, self._price_tick()),
                )
        elif isinstance(c, pos.ScheduleTimer):
            if self._timers.get(c.kind) != c.at:
                self._timers[c.kind] = c.at
                self.ctx.timers.schedule(self.ctx.clock.trio_time(c.at), self.mailbox, TimerDue(c.kind, c.at))
        elif isinstance(c, pos.Answer):
            if self._reply is not None:
                self._reply.answer(c.outcome)
        elif isinstance(c, pos.Stop):
            self.done = True

    def _price_tick(self):
        """The market's price tick when the executor's exchange knows it (log lines only)."""
        tick = getattr(self.ctx.executor, "price_tick", None)
        return tick(self.state.exchange, self.state.symbol) if tick is not None else None

    def timer_due(self, due: TimerDue) -> None:
        if self._timers.get(due.kind) == due.at:  # else replaced by a later one meanwhile
            del self._timers[due.kind]
            quote = self._current_quote()
            if quote is not None:
                self.handle(pos.Timer(self.ctx.clock.now(), due.kind, quote.bid, quote.ask, quote.last))
            else:
                self.handle(pos.Timer(self.ctx.clock.now(), due.kind))

    def _current_quote(self):
        """The quote that still holds, for a timer: when the target moves past an unchanged
        price, the stream sends nothing new. The feed's word first (its stream is alive
        and the book is as last sent), else the newest tick delivered if it is recent."""
        feed = self.ctx.feeds.get(self.state.exchange)
        fresh = getattr(feed, "fresh_quote", None)
        quote = fresh(self.state.symbol) if fresh is not None else None
        if quote is not None:
            return quote
        quote = self.mailbox.last_quote
        if quote is not None and trio.current_time() - quote.received_at <= _QUOTE_MAX_AGE:
            return quote
        return None


_QUOTE_MAX_AGE = 60.0  # seconds of trio time; the feed polls REST for a symbol stale for far less


def _describe(c: pos.Emit, tick: Decimal | None = None) -> str:
    """The event's numbers for a log line: prices on the tick, percentages to 3 places."""
    parts = []
    if c.market_price is not None:
        parts.append(f"price={logfmt.price(c.market_price, tick)}")
    if c.target_price is not None:
        parts.append(f"target={logfmt.price(c.target_price, tick)}")
    if c.data:
        parts.append(logfmt.fields(c.data, tick))
    if c.error:
        parts.append(f"error={c.error}")
    return " ".join(p for p in parts if p)


async def run_actor(
    ctx: ActorContext,
    state: pos.PositionState,
    mailbox: Inbox,
    on_state: Callable[[pos.PositionState], None] = lambda state: None,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
) -> bool:
    """Run one actor from ``state`` until its position is closed; True then.

    ``mailbox`` must already be subscribed to the symbol's ticks; ``on_state`` is told
    of every state the actor reaches. ``task_status.started()`` is called once the
    actor has handled its ``Start`` and watches.
    """
    actor = PositionActor(ctx, state, mailbox, on_state)
    actor.handle(pos.Start(ctx.clock.now()))
    task_status.started()
    while not actor.done:
        message = await mailbox.receive()
        if isinstance(message, TimerDue):
            actor.timer_due(message)
            continue
        if isinstance(message, OperatorMessage):
            actor.operator(message)
            continue
        if isinstance(message, FeedTick):
            actor._tick_received_at = message.received_at
            message = pos.Tick(ctx.clock.now(), message.bid, message.ask, message.last)
        actor.handle(message)
    return True
