"""The order executor: the one actor that sends close orders to exchanges.

Every close goes through here, so rate limits and per-symbol ordering live in one
place. For each request, under that symbol's lock:

1. Reconcile: every earlier client order id of this aged position that is not known
   to be final is looked up on the exchange first. Nothing is ever re-sent blindly.
2. Verify the position (``fetch_positions``): gone → report it; a changed size → close
   the current size.
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
   anything else is sent). An order still open after the adapter's fill wait is
   followed until it is final. Errors retrying cannot fix are not retried. A market
   order the book cannot fill falls back to a reduce-only limit IOC, priced
   aggressively but never worse than the price the policy accepts (the request's
   ``worst_price``; any price only for an emergency close).
5. A partial fill leaves the remainder: the loop goes on until the exchange reports
   the position flat.
6. Lot limits (:meth:`ExchangePort.close_limits`): each order is rounded down to the
   lot, a close larger than the market-order maximum is split into several orders,
   and a remainder below the minimum order quantity, which no order can close, ends
   the close as ``dust``.

The result is a :class:`actors.position.CloseResult` sent back to the requesting
actor. If that actor has died meanwhile, the write-ahead table still holds the truth
and its successor reconciles on start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal
from typing import Any, Callable, Mapping
from uuid import UUID

import trio

from actors.episodes import reentered_at
from actors.failpoints import failpoint
from actors.position import CloseResult, PositionUpdate
from actors.statuses import FINAL, OrderState
from storage.writer import NoHold, StorageWriter
from exchanges import logfmt
from exchanges.errors import (
    ExchangeError, InsufficientLiquidityError, NonRetryableError, RetryableError, UnknownOutcomeError,
)
from exchanges.port import ExchangePort, LotLimits, OrderResult
from storage import ops as op
from supervisor.backoff import Backoff, retry_after_of
from supervisor.observer import NO_OBSERVER, Observer

log = logging.getLogger("actors.executor")

FINAL_STATES = FINAL
# Rejections that mean the quantity itself can never be sent (below the minimum order).
DUST_CODES = frozenset({"qty_below_lot_size", "qty_below_min"})


class EpisodeChanged(Exception):
    """The episode's position has another entry price than the actor decided on."""

    def __init__(self, qty: Decimal, entry_price: Decimal):
        super().__init__(f"position now {qty} at entry {entry_price}")
        self.qty, self.entry_price = qty, entry_price


_EPISODE_CHECK_WINDOW = timedelta(days=7) - timedelta(seconds=10)
_CLOCK_SKEW = timedelta(seconds=5)


def _order_side(position_side: str) -> str:
    """A long is closed by a sell, a short by a buy."""
    return "sell" if position_side == "long" else "buy"


def client_order_id(aged_id: UUID, attempt: int) -> str:
    """Deterministic: the same aged position and attempt always give the same id (≤ 36 chars)."""
    return f"apm-{aged_id.hex[:24]}-{attempt}"


@dataclass(frozen=True)
class CloseRequest:
    aged_id: UUID
    exchange: str
    symbol: str
    side: str  # the position's side: "long" | "short"
    qty: Decimal
    next_attempt: int
    reply: Any  # the actor's mailbox (anything with send_nowait), or None
    clock: Callable[[], datetime]
    reconcile_only: bool = False
    emergency: bool = False
    tick_received_at: float | None = None  # trio time of the tick that triggered it
    # The episode as the actor knows it: a position on the exchange that no longer
    # matches is checked against the fill history before anything is sent.
    entry_price: Decimal | None = None
    opened_at: datetime | None = None
    # The worst executable price the policy accepts for this close (its target); the
    # limit-IOC fallback is never priced worse. None: no bound (an emergency close).
    worst_price: Decimal | None = None


@dataclass
class _Fills:
    """Every close order of one aged position: final ones with their fills, by client
    order id, and those sent whose outcome is not known to be final yet."""

    orders: dict[str, tuple[Decimal, Decimal | None]] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # client order id -> attempt
    max_attempt: int = 0
    last_order_id: str | None = None

    def sent(self, cid: str, attempt: int) -> None:
        """An order that may have reached the exchange: its attempt number is used up."""
        self.pending[cid] = attempt
        self.max_attempt = max(self.max_attempt, attempt)

    def settled(self, cid: str, attempt: int) -> None:
        """An order known never to have executed (rejected, or never seen)."""
        self.pending.pop(cid, None)
        self.max_attempt = max(self.max_attempt, attempt)

    def record(self, cid: str, attempt: int, filled: Decimal, avg: Decimal | None) -> None:
        self.orders[cid] = (filled, avg)
        self.pending.pop(cid, None)
        self.max_attempt = max(self.max_attempt, attempt)
        if filled > 0:
            self.last_order_id = cid

    @property
    def total(self) -> Decimal:
        return sum((q for q, _ in self.orders.values()), Decimal(0))

    @property
    def vwap(self) -> Decimal | None:
        total = self.total
        if total <= 0:
            return None
        return sum((q * p for q, p in self.orders.values() if q > 0 and p is not None), Decimal(0)) / total


class _Backoff:
    """The retry schedule of one close request."""

    def __init__(self, delays: tuple[float, ...]):
        self.delays = delays
        self.schedule = Backoff.listed(delays) if delays else None
        self.failures = 0

    async def pause(self, retry_after: float | None = None) -> bool:
        """Wait before the next try; False (without waiting) once every retry is used.

        ``retry_after`` (seconds, from the exchange) lengthens the wait, never shortens it.
        """
        self.failures += 1
        if self.schedule is None or self.failures > len(self.delays):
            return False
        await self.schedule.sleep(self.failures, retry_after)
        return True


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
    """

    retry_delays: tuple[float, ...] = (1.0, 3.0, 5.0)
    liquidity_slippage_percent: Decimal = Decimal(1)
    max_partial_rounds: int = 10
    lookup_retries: int = 3
    follow_polls: int = 60
    db_timeout: float = 2.0


@dataclass
class ExecutorStats:
    attempts: int = 0
    retries: int = 0
    lookups: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)


class Executor:
    """Closes positions on request. ``await executor.run()`` is the actor body.

    ``load_orders(aged_id)`` returns the write-ahead rows of an aged position (the
    repository's ``close_orders``); it may raise when the database is away, and the
    executor then relies on what it saw itself plus lookups on the exchange.
    """

    def __init__(self, exchanges: Mapping[str, ExchangePort], writer: StorageWriter, load_orders,
                 *, config: ExecutorConfig = ExecutorConfig(), observer: Observer = NO_OBSERVER,
                 write_direct=None):
        self.exchanges = dict(exchanges)
        self.writer = writer
        self.load_orders = load_orders
        self.write_direct = write_direct  # Database.write_batch, for write-ahead rows
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
        # Requests are not paced here: each exchange's ccxt client paces every request
        # (exchanges/clients.py).
        self._locks: dict[tuple[str, str], trio.Lock] = {}
        self._fills: dict[UUID, _Fills] = {}
        self._send, self._receive = trio.open_memory_channel(1000)
        self.stats = ExecutorStats()
        self.observer = observer

    def price_tick(self, exchange: str, symbol: str) -> Decimal | None:
        """The market's price tick, to show prices in log lines as the exchange does; None when not known."""
        tick = getattr(self.exchanges.get(exchange), "price_tick", None)
        return tick(symbol) if tick is not None else None

    def submit(self, request: CloseRequest) -> None:
        """Queue a close request (never blocks)."""
        fast = request.tick_received_at is not None and self.write_direct is not None
        self._send.send_nowait((request, self.writer.hold() if fast else NoHold()))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for request, hold in self._receive:
                nursery.start_soon(self._handle, request, hold)

    async def _handle(self, req: CloseRequest, hold=NoHold()) -> None:
        lock = self._locks.setdefault((req.exchange, req.symbol), trio.Lock())
        async with lock:
            try:
                result = await self._close(req, hold)
            except EpisodeChanged as changed:
                # Nothing was sent. The actor learns the new size and entry first, then that
                # its close did nothing; it decides again against the new targets.
                log.warning("%s %s %s: not closing, the position changed to %s at entry %s (averaged into); "  # pragma: no mutate
                            "targets follow the new entry", req.exchange, req.symbol, req.side, changed.qty,  # pragma: no mutate
                            changed.entry_price)  # pragma: no mutate
                if req.reply is not None:
                    try:
                        req.reply.send_nowait(PositionUpdate(req.clock(), quantity=changed.qty,
                                                             entry_price=changed.entry_price))
                    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                fills = self._fills.get(req.aged_id, _Fills())
                result = CloseResult(req.clock(), "open", filled_qty=fills.total, avg_price=fills.vwap,
                                     attempts=max(fills.max_attempt, req.next_attempt - 1))
            except Exception as exc:  # noqa: BLE001 - a close must always answer its actor
                log.exception("close of %s %s failed unexpectedly", req.exchange, req.symbol)  # pragma: no mutate
                fills = self._fills.get(req.aged_id, _Fills())
                result = CloseResult(req.clock(), "failed", filled_qty=fills.total, avg_price=fills.vwap,
                                     remaining_qty=None, last_order_id=fills.last_order_id,
                                     attempts=max(fills.max_attempt, req.next_attempt - 1),
                                     error=f"{type(exc).__name__}: {exc}")
            finally:
                hold.release()
        if result.outcome in ("flat", "vanished", "dust"):
            self._fills.pop(req.aged_id, None)  # finished: nothing left to reconcile
        if req.reply is not None:
            try:
                req.reply.send_nowait(result)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                log.warning("actor for %s %s is gone; its successor will reconcile from the write-ahead table",  # pragma: no mutate
                            req.exchange, req.symbol)  # pragma: no mutate

    # --- the close procedure -------------------------------------------------------------

    async def _call(self, exchange: str, fn, *args, **kw):
        return await fn(*args, **kw)

    async def _close(self, req: CloseRequest, hold=NoHold()) -> CloseResult:
        port = self.exchanges[req.exchange]
        try:
            fills = await self._reconcile(req, port)
        except UnknownOutcomeError as exc:
            # An earlier order's fate is unknown and the exchange cannot tell now:
            # nothing new may be sent before it is known.
            fills = self._fills.setdefault(req.aged_id, _Fills())
            return self._failed(req, fills, max(fills.max_attempt, req.next_attempt - 1),
                                f"{type(exc).__name__}: {exc}")
        attempt = max(req.next_attempt, fills.max_attempt + 1)
        if req.reconcile_only:
            remaining = await self._position_qty(req, port)
            return self._result(req, fills, remaining, attempt - 1, outcome=None)

        backoff = _Backoff(self.retry_delays)
        partial_rounds = 0
        rounds = 0
        last_error = None
        limit_fallback = False
        limits: LotLimits | None = None
        while True:
            try:
                remaining = await self._position_qty(req, port)
            except ExchangeError as exc:
                last_error = self._note_error(req, exc, "verify")
                if not await backoff.pause(retry_after_of(exc)):
                    return self._failed(req, fills, attempt - 1, last_error)
                continue
            if remaining == 0:
                if fills.total == 0:
                    await self._probe_own_orders(req, port, fills, attempt)
                return self._result(req, fills, Decimal(0), attempt - 1, outcome=None)
            if limits is None:
                limits = await self._limits(req, port)
            qty = self._order_qty(remaining, limits, limit=limit_fallback)
            if qty is None:
                return self._dust(req, fills, remaining, attempt - 1, limits)
            rounds += 1
            if rounds > self.max_rounds:
                return self._failed(req, fills, attempt - 1, last_error or "too many orders for one close", remaining)

            cid = client_order_id(req.aged_id, attempt)
            order_side = _order_side(req.side)
            limit_price = None
            if limit_fallback:
                try:
                    limit_price = await self._limit_price(req, port)
                except ExchangeError as exc:
                    last_error = self._note_error(req, exc, "quote")
                    if not await backoff.pause(retry_after_of(exc)):
                        return self._failed(req, fills, attempt - 1, last_error)
                    continue
            failpoint("before_wal")
            await self._write_ahead(op.RecordCloseOrder(
                client_order_id=cid, aged_id=req.aged_id, attempt=attempt, exchange=req.exchange,
                symbol=req.symbol, side=order_side, order_type="limit_ioc" if limit_price else "market",
                requested_qty=qty, limit_price=limit_price))
            fills.sent(cid, attempt)  # from here on this client order id is never sent again
            hold.release()
            self.stats.attempts += 1
            if attempt > 1:
                self.stats.retries += 1
            self.observer.close_attempted(req.exchange, attempt)
            if req.tick_received_at is not None and attempt == req.next_attempt:
                self.observer.order_submitted(req.exchange, trio.current_time() - req.tick_received_at)
            log.info("close order %s: %s %s %s qty=%s%s (attempt %d)", cid, req.exchange, req.symbol, order_side,  # pragma: no mutate
                     logfmt.qty(qty), self._limit_text(req, limit_price, order_side), attempt)  # pragma: no mutate
            failpoint("after_wal")
            try:
                result = await self._call(req.exchange, port.create_close_order, req.symbol, req.side, qty,
                                          cid, limit_price=limit_price)
                failpoint("after_send")
            except UnknownOutcomeError as exc:
                last_error = self._note_error(req, exc, "send")
                try:
                    result = await self._lookup(req, port, cid)
                except UnknownOutcomeError as lookup_exc:
                    self._wal(cid, state=OrderState.UNKNOWN, error_message=str(exc)[:500])
                    return self._failed(req, fills, attempt, f"{last_error}; {lookup_exc}")
                if result is None:
                    self._wal(cid, state=OrderState.NOT_FOUND, error_message=str(exc)[:500])
                    fills.settled(cid, attempt)
            except InsufficientLiquidityError as exc:
                last_error = self._note_error(req, exc, "send")
                self._rejected(cid, exc)
                fills.settled(cid, attempt)
                attempt += 1
                fallback_allowed = req.emergency or req.worst_price is not None
                if (limit_fallback or not fallback_allowed) and not await backoff.pause(retry_after_of(exc)):
                    return self._failed(req, fills, attempt - 1, last_error)  # the IOC found no liquidity either
                limit_fallback = fallback_allowed
                continue
            except NonRetryableError as exc:
                last_error = self._note_error(req, exc, "send")
                self._rejected(cid, exc)
                fills.settled(cid, attempt)
                try:
                    remaining = await self._position_qty(req, port)
                except ExchangeError:
                    remaining = None
                if remaining == 0:
                    return self._result(req, fills, Decimal(0), attempt, outcome=None)
                if exc.code in DUST_CODES and remaining is not None:
                    return self._dust(req, fills, remaining, attempt, limits)
                return self._failed(req, fills, attempt, last_error, remaining)
            except RetryableError as exc:
                last_error = self._note_error(req, exc, "send")
                self._rejected(cid, exc)
                fills.settled(cid, attempt)
                result = None
                attempt += 1
                if not await backoff.pause(retry_after_of(exc)):
                    return self._failed(req, fills, attempt - 1, last_error)
                continue
            if result is not None and result.status == "open":
                try:
                    result = await self._follow(req, port, cid, result)
                except UnknownOutcomeError as exc:
                    self._wal(cid, state=OrderState.OPEN)
                    return self._failed(req, fills, attempt, f"{type(exc).__name__}: {exc}")
                if result.status == "open":
                    self._wal(cid, state=OrderState.OPEN, exchange_order_id=result.exchange_order_id,
                              filled_qty=result.filled_qty, avg_price=result.avg_price)
                    return self._failed(req, fills, attempt, f"order {cid} is still open on the exchange")
            if result is not None:
                self._record(req, fills, cid, attempt, result)
                failpoint("after_record")
            attempt += 1
            if result is not None and result.filled_qty > 0:
                limit_fallback = False
                if result.requested_qty is None or result.filled_qty < min(result.requested_qty, qty):
                    partial_rounds += 1
                if partial_rounds <= self.max_partial_rounds:
                    continue  # verify again: flat, or close the remainder at once
            if not await backoff.pause():
                return self._failed(req, fills, attempt - 1, last_error)

    async def _follow(self, req: CloseRequest, port: ExchangePort, cid: str, result: OrderResult) -> OrderResult:
        """Follow an order that is still open until it is final (at most ``follow_polls`` lookups).

        Raises :class:`UnknownOutcomeError` when the lookups themselves fail.
        """
        schedule = Backoff.listed(self.retry_delays or (1.0,))
        for i in range(self.follow_polls):
            if result.status != "open":
                break
            await schedule.sleep(i + 1)
            found = await self._lookup(req, port, cid)
            if found is not None:
                if found.requested_qty is None and result.requested_qty is not None:
                    found = OrderResult(found.client_order_id, found.exchange_order_id, found.status,
                                        found.filled_qty, found.avg_price, result.requested_qty)
                result = found
        return result

    async def _limits(self, req: CloseRequest, port: ExchangePort) -> LotLimits | None:
        fn = getattr(port, "close_limits", None)
        if fn is None:
            return None
        try:
            return await self._call(req.exchange, fn, req.symbol)
        except ExchangeError as exc:
            self._note_error(req, exc, "limits")
            return None  # the adapter still rounds and checks; the exchange has the last word

    @staticmethod
    def _order_qty(remaining: Decimal, limits: LotLimits | None, *, limit: bool) -> Decimal | None:
        """The quantity of the next order; None when what is left is below the minimum order."""
        if limits is None:
            return remaining
        step = limits.step if limits.step and limits.step > 0 else None
        qty = (remaining / step).to_integral_value(rounding=ROUND_FLOOR) * step if step else remaining
        least = limits.min_qty if limits.min_qty and limits.min_qty > 0 else step
        if qty <= 0 or (least is not None and qty < least):
            return None
        cap = limits.max_limit_qty if limit else limits.max_market_qty
        if cap is not None and cap > 0 and qty > cap:
            chunk = (cap / step).to_integral_value(rounding=ROUND_FLOOR) * step if step else cap
            rest = qty - chunk
            if least is not None and 0 < rest < least and qty - least >= least:
                chunk = qty - least  # leave a remainder one order can still close
            qty = chunk
        return qty

    def _dust(self, req: CloseRequest, fills: _Fills, remaining: Decimal, attempts: int,
              limits: LotLimits | None) -> CloseResult:
        least = limits.min_qty if limits is not None and limits.min_qty else (limits.step if limits else None)
        error = (f"remaining {remaining} is below the minimum order quantity"
                 + (f" {least}" if least is not None else "") + ": no order can close it")
        log.error("%s %s: %s", req.exchange, req.symbol, error)  # pragma: no mutate
        return CloseResult(req.clock(), "dust", filled_qty=fills.total, avg_price=fills.vwap,
                           remaining_qty=remaining, attempts=max(attempts, fills.max_attempt),
                           last_order_id=fills.last_order_id, error=error)

    async def _probe_own_orders(self, req: CloseRequest, port: ExchangePort, fills: _Fills, attempt: int) -> None:
        """The position is flat and we know of no fill: was it one of our orders after all?

        (An order sent while the database was away, by a process that then died, left no
        row behind; its deterministic client order id is still on the exchange.)
        """
        for a in range(1, max(attempt, 2)):
            cid = client_order_id(req.aged_id, a)
            if cid in fills.orders:
                continue
            try:
                result = await self._lookup(req, port, cid)
            except UnknownOutcomeError:
                return
            if result is not None and result.filled_qty > 0:
                log.info("found our own order %s on the exchange: filled %s", cid, logfmt.qty(result.filled_qty))  # pragma: no mutate
                self._adopt(req, fills, cid, a, result)

    async def _write_ahead(self, row: op.RecordCloseOrder) -> None:
        """Commit the write-ahead row before the order is sent.

        It goes straight to the database on its own connection rather than queueing
        behind the storage writer's batches. If the database is away or slow it is
        queued in the writer instead (before any update of that order) and the close
        goes on: the deterministic client order id lets a restart find the order.
        """
        if self.write_direct is not None and self.writer.database_up:
            try:
                with trio.fail_after(self.db_timeout):
                    await self.write_direct([row])
                return
            except Exception as exc:  # noqa: BLE001 - database away: the writer keeps it
                log.warning("write-ahead row %s not committed (%s: %s); queued, sending anyway",  # pragma: no mutate
                            row.client_order_id, type(exc).__name__, exc)  # pragma: no mutate
        self.writer.submit(row)

    async def _position_qty(self, req: CloseRequest, port: ExchangePort) -> Decimal:
        """What is left to close of *this* episode (0 when the position is gone)."""
        positions = await self._call(req.exchange, port.fetch_positions, [req.symbol])
        for p in positions:
            if p.symbol == req.symbol and p.side == req.side and p.qty > 0:
                if await self._another_episode(req, port, p):
                    return Decimal(0)
                if (req.entry_price is not None and p.entry_price != req.entry_price
                        and not self._fills.get(req.aged_id, _Fills()).total):
                    raise EpisodeChanged(p.qty, p.entry_price)
                return p.qty
        return Decimal(0)

    async def _another_episode(self, req: CloseRequest, port: ExchangePort, p) -> bool:
        """True if the position on the exchange is a later episode than the one to close.

        Only asked when the position no longer matches what the actor knows (another
        entry price, or more than it asked to close): averaging in, or closed and opened
        again between two looks of the detector. The fills of the last 7 days (one
        request) show an opening after the episode's own if it was re-entered.
        """
        if req.entry_price is None or req.opened_at is None:
            return False
        if p.entry_price == req.entry_price and p.qty <= req.qty:
            return False
        now = req.clock()
        fills = await self._call(req.exchange, port.fetch_fills, req.symbol,
                                 max(req.opened_at, now - _EPISODE_CHECK_WINDOW), now + _CLOCK_SKEW)
        at = reentered_at(fills, req.side, p.qty, last_look=req.opened_at, opened_at=req.opened_at, skew=_CLOCK_SKEW)
        if at is not None:
            log.warning("%s %s %s: not closing, the position on the exchange was opened again at %s "  # pragma: no mutate
                        "(a new episode); this aged position is over", req.exchange, req.symbol, req.side,  # pragma: no mutate
                        at.isoformat())  # pragma: no mutate
            return True
        return False

    def _limit_text(self, req: CloseRequest, limit_price: Decimal | None, order_side: str) -> str:  # pragma: no mutate block
        if not limit_price:
            return " market"
        rounding = ROUND_FLOOR if order_side == "sell" else ROUND_CEILING  # as the adapter sends it
        return f" limit IOC {logfmt.price(limit_price, self.price_tick(req.exchange, req.symbol), rounding)}"

    async def _limit_price(self, req: CloseRequest, port: ExchangePort) -> Decimal:
        """The limit of the IOC fallback: ``liquidity_slippage_percent`` through the touch,
        but never worse than the price the policy accepts (``req.worst_price``) unless
        the close is an emergency. Rounded towards the better side (a sell up, a buy down)."""
        quote = await self._call(req.exchange, port.fetch_quote, req.symbol)
        long = req.side == "long"
        ref = (quote.bid if long else quote.ask) or quote.last
        if ref is None or ref <= 0:
            raise InsufficientLiquidityError(f"no price to set a limit for {req.symbol}", exchange=req.exchange)
        price = ref * ((1 - self.slippage) if long else (1 + self.slippage))
        bound = None if req.emergency else req.worst_price
        if bound is not None:
            price = max(price, bound) if long else min(price, bound)
        return price.quantize(Decimal("1e-8"), ROUND_CEILING if long else ROUND_FLOOR)

    async def _lookup(self, req: CloseRequest, port: ExchangePort, cid: str) -> OrderResult | None:
        """Find out what became of ``cid``; None only when the exchange says it never saw it."""
        schedule = Backoff.listed(self.retry_delays or (0.0,))
        for i in range(self.lookup_retries):
            self.stats.lookups += 1
            try:
                return await self._call(req.exchange, port.fetch_order_by_client_id, req.symbol, cid)
            except ExchangeError as exc:
                self._note_error(req, exc, "lookup")
                if i + 1 < self.lookup_retries:
                    await schedule.sleep(i + 1, retry_after_of(exc))
        raise UnknownOutcomeError(f"could not look up order {cid}", exchange=req.exchange)

    async def _reconcile(self, req: CloseRequest, port: ExchangePort) -> _Fills:
        fills = self._fills.setdefault(req.aged_id, _Fills())
        if (req.next_attempt == 1 and not req.reconcile_only and not fills.orders and not fills.pending
                and fills.max_attempt == 0):
            # A first close with no restart behind it (the actor reconciles first after
            # a restart) has no earlier orders to read; the position check before the
            # send covers the rest. This keeps a database read off the tick→order path.
            return fills
        rows = []
        try:
            with trio.fail_after(self.db_timeout):
                rows = await self.load_orders(req.aged_id)
        except Exception as exc:  # noqa: BLE001 - database away or slow: rely on memory and the exchange
            log.warning("cannot read the write-ahead table (%s: %s); reconciling from memory and the exchange",  # pragma: no mutate
                        type(exc).__name__, exc)  # pragma: no mutate
        for row in rows:
            if row["state"] in FINAL_STATES and row["client_order_id"] not in fills.orders:
                fills.record(row["client_order_id"], row["attempt"], row["filled_qty"], row["avg_price"])
            fills.max_attempt = max(fills.max_attempt, row["attempt"])
        unresolved = [r for r in rows if r["state"] not in FINAL_STATES and r["client_order_id"] not in fills.orders]
        # Orders this process sent whose outcome it never learnt (the table may be away or behind).
        listed = {r["client_order_id"] for r in unresolved}
        unresolved += [{"client_order_id": c, "attempt": a}
                       for c, a in sorted(fills.pending.items(), key=lambda x: x[1])
                       if c not in listed and c not in fills.orders]
        extra: list[int] = []
        if req.reconcile_only:
            # After a restart: attempts the table may not know of (sent while the
            # database was away) are looked up too. Outside a restart the table and
            # memory are complete, and the position check before each send guards
            # the rest.
            probe_to = max(fills.max_attempt, req.next_attempt - 1) + 1
            known = ({r["attempt"] for r in rows} | {int(c.rsplit("-", 1)[1]) for c in fills.orders}
                     | set(fills.pending.values()))
            extra = [a for a in range(1, probe_to + 1) if a not in known]
        for attempt in [r["attempt"] for r in unresolved] + extra:
            cid = client_order_id(req.aged_id, attempt)
            result = await self._lookup(req, port, cid)
            if result is None:
                if attempt in {r["attempt"] for r in unresolved}:
                    self._wal(cid, state=OrderState.NOT_FOUND)
                    fills.settled(cid, attempt)
                continue
            if result.status == "open":
                result = await self._follow(req, port, cid, result)
                if result.status == "open":
                    raise UnknownOutcomeError(f"order {cid} is still open on the exchange", exchange=req.exchange)
            log.info("reconciled order %s: %s filled %s", cid, result.status, logfmt.qty(result.filled_qty))  # pragma: no mutate
            if attempt in extra:
                self._adopt(req, fills, cid, attempt, result)
            else:
                self._record(req, fills, cid, attempt, result)
        return fills

    def _adopt(self, req: CloseRequest, fills: _Fills, cid: str, attempt: int, result: OrderResult) -> None:
        """Record an order of ours the write-ahead table never saw (found on the exchange)."""
        self.writer.submit(op.RecordCloseOrder(
            client_order_id=cid, aged_id=req.aged_id, attempt=attempt, exchange=req.exchange, symbol=req.symbol,
            side=_order_side(req.side), order_type="market",
            requested_qty=max(result.requested_qty or result.filled_qty, Decimal("1e-18"))))
        self._record(req, fills, cid, attempt, result)

    def _record(self, req: CloseRequest, fills: _Fills, cid: str, attempt: int, result: OrderResult) -> None:
        state = {"closed": OrderState.FILLED, "canceled": OrderState.CANCELED, "rejected": OrderState.REJECTED,
                 "open": OrderState.OPEN}.get(result.status, OrderState.UNKNOWN)
        if state == OrderState.CANCELED and result.filled_qty > 0:
            state = OrderState.PARTIALLY_FILLED
        if state == OrderState.FILLED and result.requested_qty is not None and result.filled_qty < result.requested_qty:
            state = OrderState.PARTIALLY_FILLED
        self._wal(cid, state=state, exchange_order_id=result.exchange_order_id, filled_qty=result.filled_qty,
                  avg_price=result.avg_price)
        if state in FINAL_STATES:
            fills.record(cid, attempt, result.filled_qty, result.avg_price)
        else:  # not final yet: looked up again before anything new is sent
            fills.sent(cid, attempt)

    def _rejected(self, cid: str, exc: ExchangeError) -> None:
        self._wal(cid, state=OrderState.REJECTED, error_code=exc.code, error_message=str(exc)[:500])

    def _wal(self, cid: str, **fields) -> None:
        self.writer.submit(op.UpdateCloseOrder(cid, {k: v for k, v in fields.items() if v is not None}))

    def _note_error(self, req: CloseRequest, exc: ExchangeError, stage: str) -> str:
        code = exc.code or type(exc).__name__
        self.stats.errors_by_code[code] = self.stats.errors_by_code.get(code, 0) + 1
        self.observer.exchange_error(req.exchange, code)
        log.warning("%s %s: %s failed: %s (%s)", req.exchange, req.symbol, stage, type(exc).__name__, exc)  # pragma: no mutate
        return f"{type(exc).__name__}: {exc}"

    def _result(self, req: CloseRequest, fills: _Fills, remaining: Decimal, attempts: int, *,
                outcome: str | None) -> CloseResult:
        if outcome is None:
            outcome = ("flat" if fills.total > 0 else "vanished") if remaining == 0 else "open"
        return CloseResult(req.clock(), outcome, filled_qty=fills.total, avg_price=fills.vwap,
                           remaining_qty=remaining, attempts=max(attempts, fills.max_attempt),
                           last_order_id=fills.last_order_id)

    def _failed(self, req: CloseRequest, fills: _Fills, attempts: int, error: str | None,
                remaining: Decimal | None = None) -> CloseResult:
        log.critical("CLOSE FAILED %s %s after %d attempts: %s — position stays under watch",  # pragma: no mutate
                     req.exchange, req.symbol, attempts, error)  # pragma: no mutate
        return CloseResult(req.clock(), "failed", filled_qty=fills.total, avg_price=fills.vwap,
                           remaining_qty=remaining, attempts=max(attempts, fills.max_attempt),
                           last_order_id=fills.last_order_id, error=error)
