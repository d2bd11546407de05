"""The detector: follows position *episodes* and starts an actor the instant one ages.

Every ``poll_interval`` seconds it reads each exchange's open positions and brings the
book (``monitoring.episodes``) in line. An episode runs from flat to flat on one
(exchange, symbol, side); what the detector does with each position it sees:

* nothing open in the book: a new episode. Its open time comes, in order of trust,
  from the trading bot's own row (``monitoring.positions``, when the database has the
  bot's table), from the exchange (Bybit ``openTime`` when non-zero), from the fill
  history (the fill that took the position from flat), or else it is the moment first
  seen (:mod:`actors.open_time_lookup`). A position may age later than it truly
  should, never sooner.
* an open episode on the other side: a flip. The old episode ends, a new one starts.
* an open episode on the same side that changed since the last look (size, entry or
  the exchange's update time): the fills since the last look say whether it went flat
  and was opened again (a re-entry: a new episode that starts young) or was averaged
  into / partly reduced (the same episode: the actor gets the new size and entry).
  When the fills cannot be read, a changed position is taken as a new episode.

With an account stream (``accounts``: an :class:`~feeds.account_view.AccountView` per
exchange) the same book follows each position change as it comes, within moments
rather than at the next poll (:mod:`actors.stream_positions`); the poll stays as the
backstop, and the stream's steps and the poll of one exchange never interleave.

An open episode missing from a snapshot is looked up on its own before it ends, so
one incomplete answer does not end it. A row the exchange adapter cannot read is
skipped there (one error per symbol); one the detector cannot store is skipped here.

For every open episode it keeps one timer set for the instant the episode crosses
``max_age_hours``; when it fires, the ``aged_positions`` row is created and the actor
started — at that instant, not at the next poll (:mod:`actors.aging_timers`). When
an episode ends, its actor is told (reason ``manual`` unless our own close did it: an
actor that is closing waits for its close's result, and with no actor watching, a
close the executor has in hand or an order of ours the stream saw filled keeps the
manual close from being recorded). Actors are reached through
the :class:`~actors.registry.ActorRegistry`; each poll also asks it to recover any
active aged position that has no actor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import trio

from actors import episodes as ep
from actors import position as pos
from actors.aging_timers import AgingTimers
from actors.events import CLOSE_COMPLETED, LifecycleEvent
from actors.open_time_lookup import OpenTimeLookup
from actors.policy import CloseReason
from actors.position_actor import ActorContext
from actors.registry import ActorRegistry
from actors.statuses import Status
from actors.stream_positions import StreamPositions
from exchanges.errors import ExchangeError
from exchanges.port import ExchangePort, ExchangePosition
from exchanges.symbols import unified_symbol
from feeds.account_view import AccountView
from storage import ops as op
from storage.errors import StorageUnavailable, WriteRejected

log = logging.getLogger("actors.detector")

DATABASE_ERRORS = (StorageUnavailable, trio.TooSlowError)
FLUSH_WAIT = 10.0  # seconds an ended episode waits for the storage writer to record a finished actor's close
# How the trading bot names exchanges in its book.
BOT_EXCHANGE_NAMES = {"binance": "binanceusdm", "binanceusdm": "binanceusdm", "bybit": "bybit"}
BOT_SIDES = {"long": "long", "buy": "long", "short": "short", "sell": "short"}


@dataclass(frozen=True)
class DetectorConfig:
    """How the detector follows the exchanges, with the service's defaults.

    ``poll_interval`` — seconds between two reads of every exchange's open positions.
    ``fill_history`` — how far back the fill history is searched for a position's
    opening. ``clock_skew`` — the allowance between the exchange's clock and ours.
    """

    poll_interval: float = 30.0
    fill_history: timedelta = timedelta(days=30)
    clock_skew: timedelta = ep.CLOCK_SKEW


class Detector(StreamPositions, OpenTimeLookup, AgingTimers):
    """The detector actor. See the module docstring; its parts are declared in
    :mod:`actors.detector_parts`."""

    def __init__(
        self,
        ctx: ActorContext,
        exchanges: Mapping[str, ExchangePort],
        registry: ActorRegistry,
        *,
        config: DetectorConfig = DetectorConfig(),
        symbols: Mapping[str, Sequence[str] | None] | None = None,
        accounts: Mapping[str, AccountView] | None = None,
    ):
        self.ctx = ctx
        self.exchanges = dict(exchanges)
        self.registry = registry
        self.poll_interval = config.poll_interval
        self.symbols = {k: (set(v) if v else None) for k, v in (symbols or {}).items()}
        self._timers = {}
        self._last_sent = {}
        self._bad_symbols = set()
        self.fill_history = config.fill_history
        self.clock_skew = config.clock_skew
        self.polls = 0
        self.detections = 0
        self.accounts = dict(accounts or {})
        self.stream_changes = 0
        self._exchange_locks = {}
        self._stream_steps = {}
        self._stream_open = {}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # Aging timers run in this nursery: after a restart none of a crashed run's is left.
            self._timers = {}
            self._stream_open = {}  # what a stream showed before a restart is not trusted: wait for a snapshot
            for name, view in self.accounts.items():
                nursery.start_soon(self._follow_stream, name, view)
            task_status.started()
            while True:
                try:
                    await self.poll_once()
                except DATABASE_ERRORS as exc:
                    log.error(
                        "detector poll failed, database unavailable (%s: %s); retrying next poll",
                        type(exc).__name__,
                        exc,
                    )
                await trio.sleep(self.poll_interval)

    # --- one poll ----------------------------------------------------------------------

    async def poll_once(self) -> None:
        bot_rows = await self.ctx.db.bot_positions()  # the trading bot's open rows, all exchanges
        for name, port in self.exchanges.items():
            steps = self._stream_steps.get(name, 0)
            try:
                positions = await port.fetch_positions()
                async with self._exchange_lock(name):
                    if self._stream_steps.get(name, 0) != steps:
                        # The stream moved the book while the list was read: read it again, in step.
                        positions = await port.fetch_positions()
                    await self._sync_exchange(name, positions, _bot_rows(bot_rows, name))
            except ExchangeError as exc:
                log.warning("cannot read positions from %s: %s", name, exc)
                continue
        book = await self.ctx.db.open_positions()
        open_ids = {row["id"] for row in book}
        for position_id in [p for p in self._timers if p not in open_ids]:
            self._timers.pop(position_id).cancel()  # closed: forget it
        for aged in [a for a in self._last_sent if not self.registry.is_running(a)]:
            del self._last_sent[aged]
        await self._refresh_book(book)
        await self.registry.recover()
        self.polls += 1

    async def _refresh_book(self, book: list[dict]) -> None:
        """After the book was brought in line: each open episode's aging timer, and each
        actor told what changed about its position."""
        for row in book:
            if self._allowed(row["exchange"], row["symbol"]):
                self._ensure_timer(row)
        await self._update_actors(book)

    def _allowed(self, exchange: str, symbol: str) -> bool:
        allow = self.symbols.get(exchange)
        return allow is None or symbol in allow

    async def _sync_exchange(self, name: str, positions, bot: dict[str, dict]) -> None:
        port = self.exchanges[name]
        now = self.ctx.clock.now()
        book = {row["symbol"]: row for row in await self.ctx.db.open_positions(name)}
        seen: set[str] = set()
        for p in positions:
            if not self._allowed(name, p.symbol):
                continue
            seen.add(p.symbol)
            await self._follow_guarded(port, p, book.get(p.symbol), bot.get(p.symbol), now)
        for symbol, row in book.items():
            if symbol in seen or not self._allowed(name, symbol):
                continue
            # Missing from the snapshot: ask for this symbol alone before ending the episode.
            try:
                again = [q for q in await port.fetch_positions([symbol]) if q.symbol == symbol]
            except ExchangeError as exc:
                log.warning(
                    "%s %s missing from the position list and the look-up failed (%s); kept open until the next poll",
                    name,
                    symbol,
                    exc,
                )
                continue
            if again:
                log.warning("%s %s was missing from one position list; a look-up shows it open", name, symbol)
                await self._follow_guarded(port, again[0], row, bot.get(symbol), now)
            else:
                await self._vanished(row)

    async def _follow_guarded(
        self, port: ExchangePort, p: ExchangePosition, row: dict | None, bot_row: dict | None, now: datetime
    ) -> None:
        key = (p.exchange, p.symbol)
        problem = _unusable(p)
        if problem is None:
            try:
                await self._follow(port, p, row, bot_row, now)
                self._bad_symbols.discard(key)
                return
            except ExchangeError as exc:
                log.warning("%s %s: cannot follow the position this poll (%s)", p.exchange, p.symbol, exc)
                return
            except WriteRejected as exc:
                problem = f"the book refused it ({exc})"
        if key not in self._bad_symbols:
            self._bad_symbols.add(key)
            log.error("%s %s: position skipped, %s", p.exchange, p.symbol, problem)

    async def _follow(
        self, port: ExchangePort, p: ExchangePosition, row: dict | None, bot_row: dict | None, now: datetime
    ) -> None:
        if row is None:
            await self._start_episode(port, p, bot_row, now, end_previous=None)
            return
        if row["side"] != p.side:
            log.info("%s %s flipped %s -> %s: a new episode", p.exchange, p.symbol, row["side"], p.side)
            await self._start_episode(port, p, bot_row, now, end_previous="flip", ended=row)
            return
        reentry = await self._reentered_at(port, p, row, bot_row, now)
        if reentry is not None:
            log.info(
                "%s %s %s went flat and was opened again at %s: a new episode",
                p.exchange,
                p.symbol,
                p.side,
                reentry.at.isoformat(),
            )
            await self._start_episode(port, p, bot_row, now, end_previous="reentry", ended=row, known=reentry)
            return
        await self._keep_episode(p, row, bot_row, now)

    async def _keep_episode(self, p: ExchangePosition, row: dict, bot_row: dict | None, now: datetime) -> None:
        """The same episode, averaged into or partly reduced: it takes the new size and entry."""
        await self.ctx.db.upsert_open_position(
            exchange=p.exchange,
            symbol=p.symbol,
            side=p.side,
            quantity=p.qty,
            entry_price=p.entry_price,
            opened_at=row["opened_at"],
            seen_at=now,
            exchange_updated_at=p.updated_at,
            trailing_activated=None if bot_row is None else bool(bot_row["trailing_activated"]),
            bot_position_id=None if bot_row is None else bot_row["id"],
        )

    async def _start_episode(
        self,
        port: ExchangePort,
        p: ExchangePosition,
        bot_row: dict | None,
        now: datetime,
        *,
        end_previous: str | None,
        ended: dict | None = None,
        known: ep.OpenTime | None = None,
    ) -> None:
        if bot_row is not None and ended is not None and bot_row["id"] == ended["bot_position_id"]:
            bot_row = None  # the bot's row belongs to the episode that ended
        opened = known if known is not None else await self._open_time(port, p, bot_row, now)
        if opened.at > now:
            opened = ep.OpenTime(now, opened.source)  # a clock ahead of ours never makes it older
        row = await self.ctx.db.start_episode(
            end_previous=end_previous,
            exchange=p.exchange,
            symbol=p.symbol,
            side=p.side,
            quantity=p.qty,
            entry_price=p.entry_price,
            opened_at=opened.at,
            opened_at_source=opened.source,
            seen_at=now,
            exchange_updated_at=p.updated_at,
            bot_position_id=None if bot_row is None else bot_row["id"],
            trailing_activated=bool(bot_row["trailing_activated"]) if bot_row is not None else False,
        )
        log.info(
            "episode %s %s %s %s opened %s (%s)",
            row["id"],
            p.exchange,
            p.symbol,
            p.side,
            opened.at.isoformat(),
            opened.source,
        )
        if ended is not None:
            await self._episode_ended(ended)

    async def _vanished(self, row: dict) -> None:
        log.info("position %s %s %s is gone from the exchange", row["exchange"], row["symbol"], row["side"])
        await self.ctx.db.close_position(row["id"], self.ctx.clock.now(), "flat")
        await self._episode_ended(row)

    async def _episode_ended(self, row: dict) -> None:
        scope = self._timers.pop(row["id"], None)
        if scope is not None:
            scope.cancel()
        aged = await self.ctx.db.aged_position_for(row["id"])
        if aged is None or aged["status"] == Status.CLOSED:
            return
        known = self.registry.state(aged["id"])
        if known is not None and known.status == Status.CLOSED:
            return  # our own close did it; the database may not have caught up yet
        if self.registry.has_finished(aged["id"]):
            # Its actor ended: closed by us (not written yet?) or left as dust. Let the
            # writer catch up before deciding; a close already recorded stays the only one.
            with trio.move_on_after(FLUSH_WAIT):
                await self.ctx.writer.wait_flushed()
            aged = await self.ctx.db.aged_position_for(row["id"])
            if aged is None or aged["status"] == Status.CLOSED:
                return
        # An actor that is closing waits for its close's result (the position machine).
        if not self.registry.tell(aged["id"], pos.PositionVanished(self.ctx.clock.now())):
            if aged["status"] != Status.DUST and self._closed_by_us(row["exchange"], aged):
                log.info(
                    "%s %s is flat while a close of ours is out: its actor records the close from its orders",
                    row["exchange"],
                    row["symbol"],
                )
                return
            # No actor runs: record the manual close (a no-op if a close got there first).
            now = self.ctx.clock.now()
            self.ctx.writer.submit(op.CloseVanished(aged["id"], now))
            self.ctx.bus.publish(
                LifecycleEvent(
                    CLOSE_COMPLETED,
                    now,
                    aged["id"],
                    row["exchange"],
                    row["symbol"],
                    {"close_reason": CloseReason.MANUAL.value, "filled_qty": "0", "attempts": 0},
                )
            )

    async def _update_actors(self, book: list[dict]) -> None:
        aged_of = self.registry.by_episode()
        for row in book:
            aged = aged_of.get(row["id"])
            if aged is None:
                continue
            key = (row["quantity"], row["entry_price"], row["trailing_activated"])
            state = self.registry.state(aged)
            # Sent again while the actor's state differs (an update that arrived during a
            # close is applied after it; the close's own result may set another size).
            differs = state is not None and (state.quantity, state.entry_price) != (row["quantity"], row["entry_price"])
            if self._last_sent.get(aged) != key or differs:
                if self.registry.tell(
                    aged,
                    pos.PositionUpdate(
                        self.ctx.clock.now(),
                        quantity=row["quantity"],
                        trailing_active=row["trailing_activated"],
                        entry_price=row["entry_price"],
                    ),
                ):
                    self._last_sent[aged] = key

    @staticmethod
    def _unusable(p: ExchangePosition) -> str | None:
        return _unusable(p)

    @staticmethod
    def _bot_rows_of(rows: list[dict], exchange: str) -> dict[str, dict]:
        return _bot_rows(rows, exchange)


def _unusable(p: ExchangePosition) -> str | None:
    """Why a position as read cannot be followed, or None."""
    if p.side not in ("long", "short"):
        return f"side {p.side!r} is neither long nor short"
    for name, value in (("size", p.qty), ("entry price", p.entry_price)):
        if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
            return f"{name} {value!r} is not a positive number"
    return None


def _bot_rows(rows: list[dict], exchange: str) -> dict[str, dict]:
    """The trading bot's open rows for ``exchange``, by unified symbol."""
    out: dict[str, dict] = {}
    for r in rows:
        if BOT_EXCHANGE_NAMES.get(str(r["exchange"]).lower()) != exchange:
            continue
        side = BOT_SIDES.get(str(r["side"]).lower())
        try:
            symbol = unified_symbol(str(r["symbol"]).replace("/", "").split(":")[0])
        except ValueError:
            continue
        if side is None or r["opened_at"] is None:
            continue
        out[symbol] = {**r, "side": side}
    return out
