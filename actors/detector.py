"""The detector: keeps the position book in sync and starts an actor the instant a
position ages.

Every ``poll_interval`` seconds it reads each exchange's open positions into
``monitoring.positions`` (rows an external trading bot wrote are honoured too: their
open time and trailing-stop flag win). For every open position it keeps one timer set
for the instant the position crosses ``max_age_hours``; when it fires, the
``aged_positions`` row is created and the actor started — at that instant, not at the
next poll. A position that disappears from the exchange is closed in the book, and
its actor is told (reason ``manual`` unless our own close did it).

Each poll also checks that every active aged position has a running actor, so an
aged position is never forgotten, whatever else has restarted.

Binance does not report when a position was opened. There the open time is taken
from the book (written by the trading bot) or, failing that, the moment the detector
first saw the position — which can only make it age later, never sooner.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Awaitable, Callable, Mapping, Sequence
from uuid import UUID

import asyncpg
import trio

from actors import position as pos
from actors.events import CLOSE_COMPLETED, DETECTED, LifecycleEvent
from actors.policy import Phase, aged_at, assess, breakeven_price
from actors.position_actor import ActorContext
from exchanges import logfmt
from exchanges.errors import ExchangeError
from exchanges.port import ExchangePort
from storage import ops as op

log = logging.getLogger("actors.detector")

DATABASE_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                   asyncpg.CannotConnectNowError, trio.TooSlowError)


class Detector:
    def __init__(self, ctx: ActorContext, exchanges: Mapping[str, ExchangePort],
                 start_actor: Callable[..., Awaitable[None]], is_running: Callable[[UUID], bool], *,
                 poll_interval: float = 30.0, symbols: Mapping[str, Sequence[str] | None] | None = None):
        self.ctx = ctx
        self.exchanges = dict(exchanges)
        self.start_actor = start_actor
        self.is_running = is_running
        self.poll_interval = poll_interval
        self.symbols = {k: (set(v) if v else None) for k, v in (symbols or {}).items()}
        self._timers: dict[int, trio.CancelScope] = {}
        self._last_sent: dict[UUID, tuple] = {}
        self._aged_ids: dict[int, UUID] = {}
        self.polls = 0
        self.detections = 0
        # called with the seconds from the aging instant to the row created (policy clock)
        self.on_detected: Callable[[float], None] = lambda lag_seconds: None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.ensure_actors()  # recovery: every active aged position back under watch
            task_status.started()
            while True:
                try:
                    await self.poll_once()
                except DATABASE_ERRORS as exc:
                    log.error("detector poll failed, database unavailable (%s: %s); retrying next poll",
                              type(exc).__name__, exc)
                await trio.sleep(self.poll_interval)

    # --- one poll ----------------------------------------------------------------------

    async def poll_once(self) -> None:
        for name, port in self.exchanges.items():
            try:
                positions = await port.fetch_positions()
            except ExchangeError as exc:
                log.warning("cannot read positions from %s: %s", name, exc)
                continue
            await self._sync_exchange(name, positions)
        book = await self.ctx.db.open_positions()
        open_ids = {row["id"] for row in book}
        for position_id in [p for p in self._timers if p not in open_ids]:
            self._timers.pop(position_id).cancel()  # closed: forget it
            aged = self._aged_ids.pop(position_id, None)
            self._last_sent.pop(aged, None)
        for row in book:
            if self._allowed(row["exchange"], row["symbol"]):
                self._ensure_timer(row)
        await self._update_actors(book)
        await self.ensure_actors()
        self.polls += 1

    def _allowed(self, exchange: str, symbol: str) -> bool:
        allow = self.symbols.get(exchange)
        return allow is None or symbol in allow

    async def _sync_exchange(self, name: str, positions) -> None:
        seen = set()
        now = self.ctx.clock.now()
        for p in positions:
            if not self._allowed(name, p.symbol):
                continue
            seen.add(p.symbol)
            await self.ctx.db.upsert_open_position(
                exchange=name, symbol=p.symbol, side=p.side, quantity=p.qty, entry_price=p.entry_price,
                opened_at=p.opened_at or now)
        for row in await self.ctx.db.open_positions(name):
            if row["symbol"] not in seen and self._allowed(name, row["symbol"]):
                await self._vanished(row)

    async def _vanished(self, row: dict) -> None:
        log.info("position %s %s %s is gone from the exchange", row["exchange"], row["symbol"], row["side"])
        await self.ctx.db.close_position(row["id"])
        scope = self._timers.pop(row["id"], None)
        if scope is not None:
            scope.cancel()
        aged = await self.ctx.db.aged_position_for(row["id"])
        if aged is None or aged["status"] == "closed":
            return
        known = self.ctx.state_cache.get(aged["id"])
        if known is not None and known.status == "closed":
            return  # our own close did it; the database may not have caught up yet
        if not self.ctx.tell(aged["id"], pos.PositionVanished(self.ctx.clock.now())):
            # No actor runs: record the manual close (a no-op if a close got there first).
            now = self.ctx.clock.now()
            self.ctx.writer.submit(op.CloseVanished(aged["id"], now))
            self.ctx.bus.publish(LifecycleEvent(CLOSE_COMPLETED, now, aged["id"], row["exchange"], row["symbol"],
                                                {"close_reason": "manual", "filled_qty": "0", "attempts": 0}))

    async def _update_actors(self, book: list[dict]) -> None:
        for row in book:
            aged = self._aged_ids.get(row["id"])
            if aged is None:
                continue
            key = (row["quantity"], row["trailing_activated"])
            if self._last_sent.get(aged) != key:
                if self.ctx.tell(aged, pos.PositionUpdate(self.ctx.clock.now(), quantity=row["quantity"],
                                                         trailing_active=row["trailing_activated"])):
                    self._last_sent[aged] = key

    # --- aging timers --------------------------------------------------------------------

    def _ensure_timer(self, row: dict) -> None:
        if row["id"] in self._timers:
            return
        scope = trio.CancelScope()
        self._timers[row["id"]] = scope
        self._nursery.start_soon(self._age_timer, row, scope)

    async def _age_timer(self, row: dict, scope: trio.CancelScope) -> None:
        with scope:
            existing = await self.ctx.db.aged_position_for(row["id"])
            if existing is None:
                crossing = aged_at(row["opened_at"], self.ctx.config)
                await self.ctx.clock.sleep_until(crossing)
                await trio.sleep(0)  # strictly older: assess just after the boundary
                while assess(row["side"], row["entry_price"], row["opened_at"], self.ctx.clock.now(),
                             self.ctx.config).phase is Phase.NOT_AGED:
                    await trio.sleep(0.001)
                existing = await self._create_aged(row, crossing)
            self._remember(row["id"], existing["id"])
            if (existing["status"] != "closed" and not self.is_running(existing["id"])
                    and existing["id"] not in self.ctx.finished):
                await self.start_actor(existing["id"])
        # the timer has done its job; keep the id so it is not scheduled again

    def _remember(self, position_id: int, aged_id: UUID) -> None:
        self._aged_ids[position_id] = aged_id

    async def _create_aged(self, row: dict, crossing: datetime) -> dict:
        now = self.ctx.clock.now()
        a = assess(row["side"], row["entry_price"], row["opened_at"], now, self.ctx.config)
        status = "skipped" if row["trailing_activated"] else pos.PHASE_STATUS[a.phase]
        aged, created = await self.ctx.db.create_aged_position(
            row, detected_at=now, status=status, target_price=a.target_price,
            breakeven_price=breakeven_price(row["side"], row["entry_price"], self.ctx.config),
            loss_tolerance_percent=a.loss_tolerance_percent, hours_aged=a.age_hours,
            config=self.ctx.config.as_dict())
        if created:
            self.detections += 1
            lag = (now - crossing).total_seconds()
            self.on_detected(lag)
            data = {"phase": a.phase.value, "status": status, "target": str(a.target_price),
                    "age_hours": str(a.age_hours.quantize(Decimal("0.001")))}
            self.ctx.writer.submit(op.AddEvent(aged["id"], DETECTED, target_price=a.target_price, metadata=data,
                                               at=now))
            self.ctx.bus.publish(LifecycleEvent(DETECTED, now, aged["id"], row["exchange"], row["symbol"], data))
            log.info("%s %s %s %s phase=%s target=%s", DETECTED, row["exchange"], row["symbol"], row["side"],
                     a.phase.value,
                     logfmt.price(a.target_price, self.ctx.executor.price_tick(row["exchange"], row["symbol"])))
        return aged

    async def ensure_actors(self) -> None:
        """Start an actor for every aged position not closed that has none.

        Their rows and in-flight orders are read in two queries for all of them, so a
        restart with a thousand positions does not cost two thousand round trips.
        """
        await self.ctx.writer.wait_flushed()
        rows = await self.ctx.db.fetch("SELECT * FROM monitoring.aged_positions WHERE status <> 'closed'")
        open_ids = {r["id"] for r in rows}
        # An actor that finished while the query ran may look unfinished in its result.
        self.ctx.finished &= open_ids
        missing = [r for r in rows if not self.is_running(r["id"]) and r["id"] not in self.ctx.finished]
        for r in rows:
            self._remember(r["position_id"], r["id"])
        if not missing:
            return
        inflight = {r["aged_position_id"] for r in await self.ctx.db.fetch(
            "SELECT DISTINCT aged_position_id FROM monitoring.close_orders "
            "WHERE state IN ('pending','unknown','open') AND aged_position_id = ANY($1::uuid[])",
            [r["id"] for r in missing])}
        for r in missing:
            if not self.is_running(r["id"]) and r["id"] not in self.ctx.finished:
                await self.start_actor(r["id"], preload=(r, r["id"] in inflight))
