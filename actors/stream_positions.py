"""Following positions as the account stream reports them, between two polls.

Each exchange with an account view (:class:`feeds.account_view.AccountView`) gets one
task reading ``view.changes`` in order:

* a :class:`~feeds.account_view.Snapshot` (the REST snapshot taken after the stream
  (re)connected) is reconciled exactly as a poll's position list is: whatever happened
  while the stream was down is handled at once;
* a :class:`~feeds.account_events.PositionChange` moves the book one step:

  - flat: the open episode ends (the actor is told; our own close is recognised);
  - open where the book has nothing: a new episode. If the stream showed the symbol
    flat before (absent from the snapshot, or a flat change came), this change *is*
    the opening and its time is exact (source ``stream``); otherwise the open time is
    looked up as a poll would;
  - open on the other side: a flip, the old episode ends and a new one starts at the
    change's time;
  - open on the same side: averaging in or a partial reduction, the same episode; the
    actor gets the new size and entry at once. No fills are read: changes come in
    order, so a flat in between would have come as its own change first.

A change older than the open episode's opening is skipped: a poll read the exchange
after it, and the stream's later changes follow. After each step the aging timers of
the exchange's open episodes are set and the actors told what changed, as after a
poll. The stream's steps and the poll of one exchange never interleave (one lock per
exchange); the poll stays as the slower backstop and covers a view that is not healthy.

:class:`StreamPositions` is a part of :class:`actors.detector.Detector`.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

import trio

from actors import episodes as ep
from actors.close_request import client_order_id
from actors.detector_parts import DetectorParts
from exchanges.errors import ExchangeError
from exchanges.port import ExchangePosition
from feeds.account_events import PositionChange
from feeds.account_view import AccountView, Snapshot
from storage.errors import StorageUnavailable, WriteRejected

log = logging.getLogger("actors.detector")  # every part of the detector logs under one name

__all__ = ["StreamPositions"]


class StreamPositions(DetectorParts):
    """The detector's reading of the account streams. See the module docstring."""

    def _exchange_lock(self, exchange: str) -> trio.Lock:
        """The lock that keeps the stream's steps and the poll of ``exchange`` apart."""
        return self._exchange_locks.setdefault(exchange, trio.Lock())

    async def _follow_stream(self, exchange: str, view: AccountView) -> None:
        """Apply ``view``'s snapshots and position changes, in order, until cancelled."""
        async for item in view.changes:
            try:
                async with self._exchange_lock(exchange):
                    self._stream_steps[exchange] = self._stream_steps.get(exchange, 0) + 1
                    if isinstance(item, Snapshot):
                        await self._stream_snapshot(exchange, item)
                    else:
                        await self._stream_change(exchange, item)
                    await self._after_stream_step(exchange)
                    if isinstance(item, PositionChange):
                        self.stream_changes += 1
            except (StorageUnavailable, trio.TooSlowError) as exc:
                # The change is not lost for good: the next poll reads the exchange again.
                log.error(
                    "%s account stream: %s not applied, database unavailable (%s: %s); the next poll catches up",
                    exchange,
                    _describe(item),
                    type(exc).__name__,
                    exc,
                )

    async def _stream_snapshot(self, exchange: str, snapshot: Snapshot) -> None:
        bot_rows = await self.ctx.db.bot_positions()
        await self._sync_exchange(exchange, list(snapshot.positions), self._bot_rows_of(bot_rows, exchange))
        self._stream_open[exchange] = {p.symbol for p in snapshot.positions}

    async def _stream_change(self, exchange: str, change: PositionChange) -> None:
        if not self._allowed(exchange, change.symbol):
            return
        open_now = self._stream_open.get(exchange)
        # The stream showed this symbol flat since its last snapshot: an opening now is exact.
        was_flat = open_now is not None and change.symbol not in open_now
        if open_now is not None:
            if change.flat:
                open_now.discard(change.symbol)
            else:
                open_now.add(change.symbol)
        books = await self.ctx.db.open_positions(exchange)
        row = next((r for r in books if r["symbol"] == change.symbol), None)
        if row is not None and self._before_opening(change, row):
            log.info(
                "%s %s: the stream's change of %s is older than the open episode (opened %s); skipped",
                exchange,
                change.symbol,
                change.time.isoformat(),
                row["opened_at"].isoformat(),
            )
            return
        if change.flat:
            if row is not None:
                await self._vanished(row)
            return
        p = ExchangePosition(
            exchange=exchange,
            symbol=change.symbol,
            side=str(change.side),
            qty=change.qty,
            entry_price=change.entry_price if change.entry_price is not None else Decimal(0),
            updated_at=change.time,
        )
        problem = self._unusable(p)
        if problem is not None:
            log.error("%s %s: stream position skipped, %s", exchange, change.symbol, problem)
            return
        port = self.exchanges[exchange]
        now = self.ctx.clock.now()
        bot = self._bot_rows_of(await self.ctx.db.bot_positions(), exchange).get(change.symbol)
        # A book episode that began at or after this change is the one it opened (a poll
        # read the position before the stream's report of it came through).
        same_opening = row is not None and row["opened_at"] >= change.time - self.clock_skew
        try:
            if row is not None and row["side"] == p.side and (not was_flat or same_opening):
                await self._keep_episode(p, row, bot, now)
            elif row is not None:
                end = "flip" if row["side"] != p.side else "reentry"
                log.info(
                    "%s %s %s -> %s at %s (account stream): a new episode",
                    exchange,
                    p.symbol,
                    row["side"],
                    p.side,
                    change.time.isoformat(),
                )
                opened = ep.OpenTime(change.time, ep.STREAM)
                await self._start_episode(
                    port, p, _fresh(bot, change, self), now, end_previous=end, ended=row, known=opened
                )
            elif was_flat:
                opened = ep.OpenTime(change.time, ep.STREAM)
                await self._start_episode(port, p, _fresh(bot, change, self), now, end_previous=None, known=opened)
            else:
                await self._follow_guarded(port, p, None, bot, now)  # the open time is looked up
        except ExchangeError as exc:
            log.warning("%s %s: cannot follow the stream's change (%s); the next poll will", exchange, p.symbol, exc)
        except WriteRejected as exc:
            log.error("%s %s: stream position skipped, the book refused it (%s)", exchange, p.symbol, exc)

    def _before_opening(self, change: PositionChange, row: dict) -> bool:
        """Whether ``change`` happened before the open episode began: a poll read the
        exchange after it (a flat, flip or re-entry the stream reports late), and the
        changes that follow it in the stream bring the book up to date.

        Open times from the exchange's clock (the stream, the fills, Bybit's
        ``openTime``) compare exactly; others (the bot's, the moment first seen) with
        the clock allowance.
        """
        exact = row["opened_at_source"] in (ep.STREAM, ep.FILLS, ep.EXCHANGE)
        allowance = timedelta(0) if exact else self.clock_skew
        return change.time < row["opened_at"] - allowance

    async def _after_stream_step(self, exchange: str) -> None:
        """What a poll does after reading the book: aging timers and the actors' updates."""
        await self._refresh_book(await self.ctx.db.open_positions(exchange))

    def _closed_by_us(self, exchange: str, aged: dict) -> bool:
        """Whether a position found flat was (or may have been) closed by our own orders:
        the executor has a close of this aged position in hand, or the account stream
        reports an order of ours for it that filled. (Not asked of a position left as
        dust: its fills were ours, the rest was swept by someone else.)"""
        aged_id: UUID = aged["id"]
        if self.ctx.executor.closing(aged_id):
            return True
        view = self.accounts.get(exchange)
        if view is None:
            return False
        # The ids are deterministic: attempts 1.. up to the last recorded, and the next one.
        for attempt in range(1, int(aged.get("close_attempts") or 0) + 2):
            order = view.order(client_order_id(aged_id, attempt))
            if order is not None and order.filled_qty > 0:
                return True
        return False


def _fresh(bot: dict | None, change: PositionChange, parts: DetectorParts) -> dict | None:
    """The trading bot's row, if it can belong to the episode this change opens: a row
    opened before the change (less the clock allowance) is a previous episode's."""
    if bot is None or bot["opened_at"] is None or bot["opened_at"] < change.time - parts.clock_skew:
        return None
    return bot


def _describe(item: PositionChange | Snapshot) -> str:
    if isinstance(item, Snapshot):
        return f"a snapshot of {len(item.positions)} positions"
    return f"the {item.symbol} change of {item.time.isoformat()}"
