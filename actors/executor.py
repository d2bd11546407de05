"""The order executor: the one actor that sends close orders to exchanges.

Every close goes through here, so the order of closes per symbol is kept in one
place (each exchange's client paces the requests). For each request, under that
symbol's lock:

1. Reconcile: every earlier client order id of this aged position that is not known
   to be final is looked up on the exchange first. Nothing is ever re-sent blindly.
2. Verify the position: from the account stream when its view is healthy (no REST
   round trip before the order), else ``fetch_positions``. Gone → report it; a changed
   size → close the current size.
3. Record the order in the write-ahead table, *then* send a reduce-only MARKET order
   with a deterministic client order id (aged position id + attempt number). A close
   triggered by a tick holds the storage writer (:meth:`StorageWriter.hold`) from the
   moment it is queued until its first write-ahead row is committed, so that row does
   not wait behind the audit rows of the same decision.
4. On failure retry with backoff (``retry_delays``, default 1 s, 3 s, 5 s; longer when
   the exchange says how long to wait: ``retry_after`` of a rate limit or a ban). An
   unknown outcome (timeout, lost reply) is looked up by client order id before any
   new attempt; when the lookups fail too the close stops there (the order stays
   unresolved, in memory and in the write-ahead table, and is looked up again before
   anything else is sent). An order the exchange reports still open is settled by
   the account stream's order events when its view is healthy (the adapter then does
   not poll for the fill), else followed over REST until it is final. Errors
   retrying cannot fix are not retried. A market order the book cannot fill falls
   back to a reduce-only limit IOC, priced aggressively but never worse than the
   price the policy accepts (the request's ``worst_price``; any price only for an
   emergency close).
5. A partial fill leaves the remainder: the loop goes on until the exchange reports
   the position flat.
6. Lot limits (:meth:`ExchangePort.close_limits`): each order is rounded down to the
   lot, a close larger than the market-order maximum is split into several orders,
   and a remainder below the minimum order quantity, which no order can close, ends
   the close as ``dust``.

The result is a :class:`actors.position.CloseResult` sent back to the requesting
actor. If that actor has died meanwhile, the write-ahead table still holds the truth
and its successor reconciles on start.

The executor is put together from single-purpose parts:

* :mod:`actors.close_request`: the request, its side and its client order ids;
* :mod:`actors.close_fills`: what one close has filled so far, and the result it answers;
* :mod:`actors.order_sizing`: lot-limit rounding and splitting, dust, the IOC price bound;
* :mod:`actors.order_lookup`: lookups by client order id and following open orders;
* :mod:`actors.close_reconcile`: the write-ahead rows and reconciling with them;
* :mod:`actors.close_loop`: the close procedure of one request;
* this module: the actor itself (its queue, the per-symbol locks, the answer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

import trio

from actors.close_fills import Fills
from actors.close_loop import CloseLoop
from actors.close_reconcile import FINAL_STATES, WriteAhead
from actors.close_request import CloseRequest, EpisodeChanged, client_order_id, order_side
from actors.executor_parts import ExecutorStats
from actors.order_lookup import OrderLookups
from actors.order_sizing import DUST_CODES
from actors.position import CloseResult, PositionUpdate
from exchanges.errors import ExchangeError
from exchanges.port import ExchangePort
from feeds.account_view import AccountView
from storage.writer import NO_HOLD, StorageWriter
from supervisor.observer import NO_OBSERVER, Observer

__all__ = [
    "CloseRequest",
    "DUST_CODES",
    "EpisodeChanged",
    "Executor",
    "ExecutorStats",
    "FINAL_STATES",
    "client_order_id",
    "order_side",
]

log = logging.getLogger("actors.executor")


@dataclass(frozen=True)
class ExecutorConfig:
    """How the executor retries and bounds a close, with the service's defaults.

    ``retry_delays`` — the pauses (seconds) between the attempts of one close; the
    same schedule paces the lookups of an unknown outcome and the follow-ups of an
    open order. ``liquidity_slippage_percent`` — how far past the book a limit-IOC
    fallback is priced (never past the policy's worst price). ``max_partial_rounds`` —
    partial fills in a row before a close stops for now. ``lookup_retries`` — lookups
    of an unknown outcome before the close gives up for now. ``follow_polls`` — how
    often an order still open after the adapter's fill wait is looked up again.
    ``db_timeout`` — how long a close waits on the database (a write-ahead row, a
    read) before it goes on without it: the database is the memory, not the heartbeat.
    ``stream_settle_timeout`` — how long an open order waits for the account stream to
    report it final before it is looked up over REST.
    """

    retry_delays: tuple[float, ...] = (1.0, 3.0, 5.0)
    liquidity_slippage_percent: Decimal = Decimal(1)
    max_partial_rounds: int = 10
    lookup_retries: int = 3
    follow_polls: int = 60
    db_timeout: float = 2.0
    stream_settle_timeout: float = 5.0


class Executor(CloseLoop, WriteAhead, OrderLookups):
    """Closes positions on request. ``await executor.run()`` is the actor body.

    Its close procedure, write-ahead rows and lookups come from its parts
    (:class:`CloseLoop`, :class:`WriteAhead`, :class:`OrderLookups`); this class holds
    their shared state and answers each request.

    ``load_orders(aged_id)`` returns the write-ahead rows of an aged position (the
    repository's ``close_orders``); it may raise when the database is away, and the
    executor then relies on what it saw itself plus lookups on the exchange.

    ``accounts`` (exchange name -> :class:`~feeds.account_view.AccountView`): the
    account streams. While one is healthy, the position is checked from it and open
    orders are settled by its order events; otherwise everything goes over REST.
    """

    def __init__(
        self,
        exchanges: Mapping[str, ExchangePort],
        writer: StorageWriter,
        load_orders,
        *,
        config: ExecutorConfig = ExecutorConfig(),
        observer: Observer = NO_OBSERVER,
        write_direct=None,
        accounts: Mapping[str, AccountView] | None = None,
        may_send: Callable[[], bool] | None = None,
    ):
        self.exchanges = dict(exchanges)
        self.writer = writer
        self.load_orders = load_orders
        self.write_direct = write_direct  # Database.write_batch, for write-ahead rows
        # Asked right before each order goes out (None: always): False once this instance
        # no longer holds the account's lease.
        self.may_send = may_send
        self.config = config
        self.retry_delays = tuple(config.retry_delays)
        self.slippage = config.liquidity_slippage_percent / 100
        self.max_partial_rounds = config.max_partial_rounds
        self.max_rounds = 1000  # orders of one request at most (a split close included)
        # An order still open after the adapter's fill wait is looked up again this many
        # times (``retry_delays`` apart, the last one repeated) before the close gives
        # up for now; the order stays unresolved and is followed again before anything new.
        self.follow_polls = config.follow_polls
        self.lookup_retries = config.lookup_retries
        self.db_timeout = config.db_timeout
        self.stream_settle_timeout = config.stream_settle_timeout
        self.accounts = dict(accounts or {})
        # Per aged position: requests queued, and requests being carried out.
        self._queued: dict[UUID, int] = {}
        self._closing: dict[UUID, int] = {}
        # Requests are not paced here: each exchange's ccxt client paces every request
        # (exchanges/clients.py).
        self._locks: dict[tuple[str, str], trio.Lock] = {}
        self._fills: dict[UUID, Fills] = {}
        self._send, self._receive = trio.open_memory_channel(1000)
        self.stats = ExecutorStats()
        self.observer = observer

    def price_tick(self, exchange: str, symbol: str) -> Decimal | None:
        """The market's price tick, to show prices in log lines as the exchange does; None when not known."""
        tick = getattr(self.exchanges.get(exchange), "price_tick", None)
        return tick(symbol) if tick is not None else None

    def closing(self, aged_id: UUID) -> bool:
        """Whether a close of ``aged_id`` is queued or being carried out now."""
        return self._queued.get(aged_id, 0) > 0 or self._closing.get(aged_id, 0) > 0

    def submit(self, request: CloseRequest) -> None:
        """Queue a close request (never blocks)."""
        fast = request.tick_received_at is not None and self.write_direct is not None
        self._send.send_nowait((request, self.writer.hold() if fast else NO_HOLD))
        _count(self._queued, request.aged_id, +1)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Take queued requests and handle each in its own task until cancelled."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for request, hold in self._receive:
                nursery.start_soon(self._handle, request, hold)

    async def _handle(self, req: CloseRequest, hold=NO_HOLD) -> None:
        """Close under the symbol's lock and always answer the actor, even when the close
        broke; a finished close forgets the aged position's fills."""
        if self._queued.get(req.aged_id):
            _count(self._queued, req.aged_id, -1)
        _count(self._closing, req.aged_id, +1)
        try:
            await self._handle_locked(req, hold)
        finally:
            _count(self._closing, req.aged_id, -1)

    async def _handle_locked(self, req: CloseRequest, hold=NO_HOLD) -> None:
        lock = self._locks.setdefault((req.exchange, req.symbol), trio.Lock())
        async with lock:
            try:
                result = await self._close(req, hold)
            except EpisodeChanged as changed:
                # Nothing was sent. The actor learns the new size and entry first, then that
                # its close did nothing; it decides again against the new targets.
                log.warning(
                    "%s %s %s: not closing, the position changed to %s at entry %s "  # pragma: no mutate
                    "(averaged into); "  # pragma: no mutate
                    "targets follow the new entry",
                    req.exchange,
                    req.symbol,
                    req.side,
                    changed.qty,  # pragma: no mutate
                    changed.entry_price,
                )  # pragma: no mutate
                if req.reply is not None:
                    try:
                        req.reply.send_nowait(
                            PositionUpdate(req.clock(), quantity=changed.qty, entry_price=changed.entry_price)
                        )
                    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                fills = self._fills.get(req.aged_id, Fills())
                result = CloseResult(
                    req.clock(),
                    "open",
                    filled_qty=fills.total,
                    avg_price=fills.vwap,
                    attempts=max(fills.max_attempt, req.next_attempt - 1),
                )
            except Exception as exc:  # noqa: BLE001 - a close must always answer its actor
                log.exception("close of %s %s failed unexpectedly", req.exchange, req.symbol)  # pragma: no mutate
                fills = self._fills.get(req.aged_id, Fills())
                result = CloseResult(
                    req.clock(),
                    "failed",
                    filled_qty=fills.total,
                    avg_price=fills.vwap,
                    remaining_qty=None,
                    last_order_id=fills.last_order_id,
                    attempts=max(fills.max_attempt, req.next_attempt - 1),
                    error=f"{type(exc).__name__}: {exc}",
                )
            finally:
                hold.release()
        if result.outcome in ("flat", "vanished", "dust"):
            self._fills.pop(req.aged_id, None)  # finished: nothing left to reconcile
        if req.reply is not None:
            try:
                req.reply.send_nowait(result)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                log.warning(
                    "actor for %s %s is gone; "  # pragma: no mutate
                    "its successor will reconcile from the write-ahead table",  # pragma: no mutate
                    req.exchange,
                    req.symbol,
                )  # pragma: no mutate

    def _note_error(self, req: CloseRequest, exc: ExchangeError, stage: str) -> str:
        """Count and tell an exchange error at ``stage`` (for the log line); returns its text for the result."""
        code = exc.code or type(exc).__name__
        self.stats.errors_by_code[code] = self.stats.errors_by_code.get(code, 0) + 1
        self.observer.exchange_error(req.exchange, code)
        log.warning(
            "%s %s: %s failed: %s (%s)", req.exchange, req.symbol, stage, type(exc).__name__, exc
        )  # pragma: no mutate
        return f"{type(exc).__name__}: {exc}"


def _count(counts: dict[UUID, int], key: UUID, step: int) -> None:
    """Add ``step`` to ``counts[key]``; a count that reaches 0 is forgotten."""
    n = counts.get(key, 0) + step
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
