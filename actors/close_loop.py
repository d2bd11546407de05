"""The close loop: one close request, from the position check to a flat position.

For each request (the executor holds that symbol's lock), :meth:`CloseLoop._close`:

1. reconciles first (:mod:`actors.close_reconcile`): nothing is sent while an earlier
   order's fate is unknown;
2. verifies the position: gone → report it; a changed size → close the current size;
   another entry price → :class:`EpisodeChanged`, or over when the fill history shows
   the position was opened again. The position is read from the account stream when
   its view is healthy and has reported every order of ours this close knows of (and
   the position since); else over REST (``fetch_positions``);
3. sizes the order by the lot limits (:mod:`actors.order_sizing`): a remainder below
   the smallest order ends the close as ``dust``;
4. records the order in the write-ahead table, *then* sends a reduce-only MARKET order
   (or, once the book could not fill one, a limit IOC bounded by the policy's price);
5. on an unknown outcome looks the order up before anything else; follows an order
   still open until it is final (with a healthy account stream, the adapter does not
   poll for the fill: the stream's order events settle it, :mod:`actors.order_lookup`);
   retries what retrying can fix on the request's :class:`RetrySchedule`, and stops
   at what it cannot;
6. goes on after a fill until the exchange reports the position flat.

:class:`CloseLoop` is a part of :class:`actors.executor.Executor`, whose lookups and
write-ahead rows it uses.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import trio

from actors.close_fills import Fills, close_result, dust_result, failed_result
from actors.close_reconcile import WriteAheadNotCommitted
from actors.close_request import CloseRequest, EpisodeChanged, client_order_id, order_side
from actors.episodes import CLOCK_SKEW, reentered_at
from actors.executor_parts import ExecutorParts
from actors.failpoints import failpoint
from actors.order_sizing import DUST_CODES, ioc_limit_price, limit_text, order_qty
from actors.position import CloseResult
from actors.statuses import OrderState
from exchanges import logfmt
from exchanges.errors import (
    ExchangeError,
    InsufficientLiquidityError,
    NonRetryableError,
    RetryableError,
    UnknownOutcomeError,
)
from exchanges.port import FILL_HISTORY_WINDOW, ExchangePort, ExchangePosition, LotLimits, OrderResult
from feeds.account_view import AccountView, AccountViewUnavailable
from storage import ops as op
from storage.errors import LeaseLost
from storage.writer import NO_HOLD
from supervisor.backoff import Backoff, retry_after_of

log = logging.getLogger("actors.executor")

# the longest wait for the account stream to show the position after a fill of ours
_CATCH_UP_WAIT = 1.0

# one fill-history request, a little inside the exchanges' limit
_EPISODE_CHECK_WINDOW = FILL_HISTORY_WINDOW - timedelta(seconds=10)


class RetrySchedule:
    """The retry schedule of one close request: ``delays`` on the shared backoff, then no more."""

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


class CloseLoop(ExecutorParts):
    """The executor's close procedure (see the module docstring)."""

    async def _close(self, req: CloseRequest, hold=NO_HOLD) -> CloseResult:
        """Carry out one close request; ``hold`` (the storage writer's) is released once
        its first write-ahead row is written."""
        port = self.exchanges[req.exchange]
        try:
            fills = await self._reconcile(req, port)
        except UnknownOutcomeError as exc:
            # An earlier order's fate is unknown and the exchange cannot tell now:
            # nothing new may be sent before it is known.
            fills = self._fills.setdefault(req.aged_id, Fills())
            return failed_result(
                req, fills, max(fills.max_attempt, req.next_attempt - 1), f"{type(exc).__name__}: {exc}"
            )
        attempt = max(req.next_attempt, fills.max_attempt + 1)
        if req.reconcile_only:
            remaining = await self._position_qty(req, port)
            return close_result(req, fills, remaining, attempt - 1, outcome=None)

        backoff = RetrySchedule(self.retry_delays)
        partial_rounds = 0
        rounds = 0
        result: OrderResult | None
        last_error = None
        limit_fallback = False
        limits: LotLimits | None = None
        while True:
            try:
                remaining = await self._position_qty(req, port)
            except ExchangeError as exc:
                last_error = self._note_error(req, exc, "verify")
                if not await backoff.pause(retry_after_of(exc)):
                    return failed_result(req, fills, attempt - 1, last_error)
                continue
            if remaining == 0:
                if fills.total == 0:
                    await self._probe_own_orders(req, port, fills, attempt)
                return close_result(req, fills, Decimal(0), attempt - 1, outcome=None)
            if limits is None:
                limits = await self._limits(req, port)
            qty = order_qty(remaining, limits, limit=limit_fallback)
            if qty is None:
                return dust_result(req, fills, remaining, attempt - 1, limits)
            rounds += 1
            if rounds > self.max_rounds:
                return failed_result(req, fills, attempt - 1, last_error or "too many orders for one close", remaining)

            cid = client_order_id(req.aged_id, attempt)
            side = order_side(req.side)
            limit_price = None
            if limit_fallback:
                try:
                    quote = await port.fetch_quote(req.symbol)
                    limit_price = ioc_limit_price(req, quote, self.slippage)
                except ExchangeError as exc:
                    last_error = self._note_error(req, exc, "quote")
                    if not await backoff.pause(retry_after_of(exc)):
                        return failed_result(req, fills, attempt - 1, last_error)
                    continue
            failpoint("before_wal")
            try:
                await self._write_ahead(
                    op.RecordCloseOrder(
                        client_order_id=cid,
                        aged_id=req.aged_id,
                        attempt=attempt,
                        exchange=req.exchange,
                        symbol=req.symbol,
                        side=side,
                        order_type="limit_ioc" if limit_price else "market",
                        requested_qty=qty,
                        limit_price=limit_price,
                    )
                )
            except LeaseLost as exc:
                # Another instance acts for this account now: nothing is sent.
                return failed_result(req, fills, attempt - 1, f"lease lost: {exc}")
            except WriteAheadNotCommitted as exc:
                # Nothing sent. The row may have committed all the same (a reply lost):
                # the next try takes the next client order id, and the look-up of this
                # one finds no order.
                last_error = f"write-ahead row not committed, nothing sent ({exc})"
                hold.release()
                log.warning("close of %s %s: %s", req.exchange, req.symbol, last_error)
                attempt += 1
                if not await backoff.pause(None):
                    return failed_result(req, fills, attempt - 1, last_error)
                continue
            fills.sent(cid, attempt)  # from here on this client order id is never sent again
            hold.release()
            self.stats.attempts += 1
            if attempt > 1:
                self.stats.retries += 1
            self.observer.close_attempted(req.exchange, attempt)
            if req.tick_received_at is not None and attempt == req.next_attempt:
                self.observer.order_submitted(req.exchange, trio.current_time() - req.tick_received_at)
            log.info(
                "close order %s: %s %s %s qty=%s%s (attempt %d)",
                cid,
                req.exchange,
                req.symbol,
                side,  # pragma: no mutate
                logfmt.qty(qty),
                limit_text(limit_price, side, self.price_tick(req.exchange, req.symbol)),  # pragma: no mutate
                attempt,
            )  # pragma: no mutate
            failpoint("after_wal")
            if self.may_send is not None and not self.may_send():
                # The lease ran out since the write-ahead row (say, the process was
                # stopped in between): the next holder looks this client order id up.
                return failed_result(req, fills, attempt - 1, "lease lost before the order was sent")
            try:
                if self._stream_settles(req):
                    result = await port.create_close_order(
                        req.symbol, req.side, qty, cid, limit_price=limit_price, wait_fill=False
                    )
                else:
                    result = await port.create_close_order(req.symbol, req.side, qty, cid, limit_price=limit_price)
                failpoint("after_send")
            except UnknownOutcomeError as exc:
                last_error = self._note_error(req, exc, "send")
                try:
                    result = await self._lookup(req, port, cid)
                except UnknownOutcomeError as lookup_exc:
                    self._wal(cid, state=OrderState.UNKNOWN, error_message=str(exc)[:500])
                    return failed_result(req, fills, attempt, f"{last_error}; {lookup_exc}")
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
                    return failed_result(req, fills, attempt - 1, last_error)  # the IOC found no liquidity either
                limit_fallback = fallback_allowed
                continue
            except NonRetryableError as exc:
                last_error = self._note_error(req, exc, "send")
                self._rejected(cid, exc)
                fills.settled(cid, attempt)
                left: Decimal | None
                try:
                    left = await self._position_qty(req, port)
                except ExchangeError:
                    left = None
                if left == 0:
                    return close_result(req, fills, Decimal(0), attempt, outcome=None)
                if exc.code in DUST_CODES and left is not None:
                    return dust_result(req, fills, left, attempt, limits)
                return failed_result(req, fills, attempt, last_error, left)
            except RetryableError as exc:
                last_error = self._note_error(req, exc, "send")
                self._rejected(cid, exc)
                fills.settled(cid, attempt)
                result = None
                attempt += 1
                if not await backoff.pause(retry_after_of(exc)):
                    return failed_result(req, fills, attempt - 1, last_error)
                continue
            if result is not None and result.status == "open":
                try:
                    result = await self._follow(req, port, cid, result)
                except UnknownOutcomeError as exc:
                    self._wal(cid, state=OrderState.OPEN)
                    return failed_result(req, fills, attempt, f"{type(exc).__name__}: {exc}")
                if result.status == "open":
                    self._wal(
                        cid,
                        state=OrderState.OPEN,
                        exchange_order_id=result.exchange_order_id,
                        filled_qty=result.filled_qty,
                        avg_price=result.avg_price,
                    )
                    return failed_result(req, fills, attempt, f"order {cid} is still open on the exchange")
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
                return failed_result(req, fills, attempt - 1, last_error)

    async def _limits(self, req: CloseRequest, port: ExchangePort) -> LotLimits | None:
        """The market's lot limits; None when the adapter has none or cannot tell now."""
        fn = getattr(port, "close_limits", None)
        if fn is None:
            return None
        try:
            return await fn(req.symbol)
        except ExchangeError as exc:
            self._note_error(req, exc, "limits")
            return None  # the adapter still rounds and checks; the exchange has the last word

    async def _position_qty(self, req: CloseRequest, port: ExchangePort) -> Decimal:
        """What is left to close of *this* episode (0 when the position is gone)."""
        positions = await self._positions(req, port)
        for p in positions:
            if p.symbol == req.symbol and p.side == req.side and p.qty > 0:
                if await self._another_episode(req, port, p):
                    return Decimal(0)
                if (
                    req.entry_price is not None
                    and p.entry_price != req.entry_price
                    and not self._fills.get(req.aged_id, Fills()).total
                ):
                    raise EpisodeChanged(p.qty, p.entry_price)
                return p.qty
        return Decimal(0)

    def _stream_settles(self, req: CloseRequest) -> bool:
        """Whether the account stream will settle an order sent now (its view is healthy)."""
        view = self.accounts.get(req.exchange)
        return view is not None and view.healthy

    async def _positions(self, req: CloseRequest, port: ExchangePort) -> list[ExchangePosition]:
        """The symbol's position: from the account stream when it can be trusted, else REST."""
        view = self.accounts.get(req.exchange)
        # Only a view known to hold everything the exchange sent so far (a ping through
        # the stream) is read: a tick can overtake the account event that goes with it.
        if view is not None and await view.caught_up(_CATCH_UP_WAIT):
            # After a fill of ours the stream's position event follows its order event
            # within moments: wait that long for it before asking REST.
            deadline = trio.current_time() + _CATCH_UP_WAIT
            try:
                while True:
                    if self._view_caught_up(req, view):
                        known = view.position(req.symbol)
                        self.stats.positions_from_stream += 1
                        return [] if known is None else [known]
                    left = deadline - trio.current_time()
                    if left <= 0:
                        break
                    await view.next_update(left)
            except AccountViewUnavailable:
                pass
        self.stats.positions_from_rest += 1
        return await port.fetch_positions([req.symbol])

    def _view_caught_up(self, req: CloseRequest, view: AccountView) -> bool:
        """Whether ``view`` has seen the effect of every order of ours this aged position
        may have filled: each reported final, and the position (if still open) reported
        at or after the last of them. Otherwise a position the stream has not updated
        yet could be closed twice. Raises :class:`AccountViewUnavailable` if unhealthy."""
        fills = self._fills.get(req.aged_id)
        if fills is None:
            return True
        latest = None
        for cid in [*fills.pending, *(c for c, (qty, _) in fills.orders.items() if qty > 0)]:
            order = view.order(cid)
            if order is None or not order.final:
                return False
            latest = order.time if latest is None else max(latest, order.time)
        if latest is None:
            return True
        known = view.position(req.symbol)
        return known is None or (known.updated_at is not None and known.updated_at >= latest)

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
        fills = await port.fetch_fills(req.symbol, max(req.opened_at, now - _EPISODE_CHECK_WINDOW), now + CLOCK_SKEW)
        at = reentered_at(fills, req.side, p.qty, last_look=req.opened_at, opened_at=req.opened_at, skew=CLOCK_SKEW)
        if at is not None:
            log.warning(
                "%s %s %s: not closing, the position on the exchange was opened again at %s "  # pragma: no mutate
                "(a new episode); this aged position is over",  # pragma: no mutate
                req.exchange,
                req.symbol,
                req.side,  # pragma: no mutate
                at.isoformat(),
            )  # pragma: no mutate
            return True
        return False
