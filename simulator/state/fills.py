"""Fills: the history of executions, and the one rule by which a position changes.

Every change of a position is a :class:`Fill` — the product's orders and the admin
API's changes alike (the admin API's are synthetic, with client ids ``sim-admin-N``).
The fills of a symbol, in ``seq`` order (which is also time order), replay to exactly
the current position: :func:`fold_fill` is the one place a fill changes a position.
The symbol's ``first_opened`` (Bybit's ``createdTime``) is the first time a position
was ever opened there and survives re-openings and flips.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from simulator.state.activity import AdminFillActivity
from simulator.state.markets import Market
from simulator.state.positions import Position
from simulator.state.values import SimError, dstr, dt_ms, iso, normalize_exchange, normalize_symbol

_FUTURE_SLACK = timedelta(seconds=1)

ENTRY_QUANTUM = Decimal("1e-12")  # average entries are kept to 12 decimals


def fold_fill(
    pos: tuple[str, Decimal, Decimal] | None, side: str, qty: Decimal, price: Decimal
) -> tuple[tuple[str, Decimal, Decimal] | None, Decimal, Decimal, bool]:
    """Apply one fill to a position ``(side, qty, entry)`` (None = flat).

    Returns ``(new position, closed qty, realised pnl, opens)``; ``opens`` is True when
    the fill starts an episode (flat → non-flat, or through zero). An increase moves the
    average entry (kept to 12 decimals), a reduction keeps it, a flip opens the rest at
    the fill price. This is the only rule by which a position changes, so replaying a
    symbol's fills gives its position.
    """
    if side not in ("buy", "sell"):
        raise SimError(f"fill side must be 'buy' or 'sell', got {side!r}")
    if qty <= 0 or price <= 0:
        raise SimError("fill qty and price must be > 0")
    direction = "long" if side == "buy" else "short"
    if pos is None:
        return (direction, qty, price), Decimal(0), Decimal(0), True
    p_side, p_qty, p_entry = pos
    if p_side == direction:  # increase
        new_qty = p_qty + qty
        entry = ((p_entry * p_qty + price * qty) / new_qty).quantize(ENTRY_QUANTUM).normalize()
        return (p_side, new_qty, entry), Decimal(0), Decimal(0), False
    closing = min(p_qty, qty)
    pnl = (price - p_entry) * (closing if p_side == "long" else -closing)
    rest = qty - closing
    if p_qty > closing:
        return (p_side, p_qty - closing, p_entry), closing, pnl, False
    if rest > 0:  # through zero: a flip opens the rest at the fill price
        return (direction, rest, price), closing, pnl, True
    return None, closing, pnl, False


@dataclass
class Fill:
    """One execution: the product's order meeting the book, or an admin change."""

    exchange: str
    symbol: str
    seq: int  # global, increasing: the order in which fills happened
    trade_id: str  # Binance trade id (digits) / Bybit execId (uuid)
    order_id: str  # Binance orderId (digits) / Bybit orderId (uuid)
    client_order_id: str | None
    side: str  # "buy" | "sell"
    qty: Decimal
    price: Decimal
    time: datetime
    closed_qty: Decimal  # the part that reduced a position (Bybit closedSize)
    realized_pnl: Decimal  # of the closed part, before fees
    source: str  # "order" (the product's order) | "admin"
    order_type: str = "market"  # "market" | "limit"
    order_qty: Decimal | None = None
    order_price: Decimal | None = None
    leaves_qty: Decimal = Decimal(0)
    create_type: str = "CreateByUser"  # Bybit createType
    mark_price: Decimal | None = None
    is_maker: bool = False
    opens_episode: bool = False  # flat → non-flat, or a flip
    position_after: tuple[str, Decimal, Decimal] | None = None

    def record(self) -> dict:
        after = None
        if self.position_after is not None:
            s, q, e = self.position_after
            after = {"side": s, "qty": dstr(q), "entry_price": dstr(e)}
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "seq": self.seq,
            "trade_id": self.trade_id,
            "order_id": self.order_id,
            "client_order_id": self.client_order_id,
            "side": self.side,
            "qty": dstr(self.qty),
            "price": dstr(self.price),
            "time": iso(self.time),
            "time_ms": dt_ms(self.time),
            "closed_qty": dstr(self.closed_qty),
            "realized_pnl": dstr(self.realized_pnl),
            "source": self.source,
            "opens_episode": self.opens_episode,
            "position_after": after,
        }


class FillLedger:
    """The fill history and what it implies (a part of :class:`~simulator.state.SimState`).

    Keeps ``fills`` (in ``seq`` order) and, per (exchange, symbol id), the last fill,
    the first opening and the cumulative realised PnL.
    """

    def _init_fills(self, seed: int) -> None:
        self.fills: list[Fill] = []
        self._fill_seq = 0
        self._admin_fills = 0
        self._exec_rng = random.Random(f"{seed}/exec-ids")
        self._binance_next_trade_id = 698_759_000 + random.Random(f"{seed}/binance-trade-ids").randrange(10**6)
        self._first_opened: dict[tuple[str, str], datetime] = {}  # Bybit createdTime
        self._last_fill: dict[tuple[str, str], Fill] = {}
        self._cum_pnl: dict[tuple[str, str], Decimal] = {}  # Bybit cumRealisedPnl

    def symbol_fills(self, exchange: str, symbol: str) -> list[Fill]:
        ex = normalize_exchange(exchange)
        sid = normalize_symbol(symbol)
        return [f for f in self.fills if f.exchange == ex and f.symbol == sid]

    def last_fill(self, exchange: str, symbol_id: str) -> Fill | None:
        return self._last_fill.get((exchange, symbol_id))

    def first_opened(self, exchange: str, symbol_id: str) -> datetime | None:
        """When a position was first ever opened on this symbol (Bybit ``createdTime``)."""
        return self._first_opened.get((normalize_exchange(exchange), symbol_id))

    def cum_realised_pnl(self, exchange: str, symbol_id: str) -> Decimal:
        return self._cum_pnl.get((normalize_exchange(exchange), symbol_id), Decimal(0))

    def forget_fills(self, exchange: str | None = None, symbol: str | None = None) -> int:
        """Forget the fill history of flat symbols (refused while a position is open there)."""
        ex = normalize_exchange(exchange) if exchange is not None else None
        sid = normalize_symbol(symbol) if symbol is not None else None

        def hit(e: str, s: str) -> bool:
            return (ex is None or e == ex) and (sid is None or s == sid)

        open_ = [f"{e} {s}" for (e, s) in self.positions if hit(e, s)]
        if open_:
            raise SimError(f"positions are open on {', '.join(open_)}: their fills replay to them")
        before = len(self.fills)
        self.fills = [f for f in self.fills if not hit(f.exchange, f.symbol)]
        for key in [k for k in self._last_fill if hit(*k)]:
            del self._last_fill[key]
        return before - len(self.fills)

    def _forget_all_fills(self) -> None:
        """Forget the whole history (a reset: the positions go with it)."""
        self.fills.clear()
        self._last_fill.clear()
        self._first_opened.clear()
        self._cum_pnl.clear()

    def _admin_fill(
        self,
        ex: str,
        m: Market,
        side: str,
        qty: Decimal,
        price: Decimal,
        t: datetime,
        *,
        create_type: str = "CreateByUser",
        order_id: str | None = None,
        client_order_id: str | None = None,
    ) -> Fill:
        if t > self.now() + _FUTURE_SLACK:
            raise SimError(f"fill time {iso(t)} is in the future")
        last = self.last_fill(ex, m.symbol_id)
        if last is not None and t < last.time:
            raise SimError(
                f"fill time {iso(t)} is before the last fill on {ex} {m.symbol_id} ({iso(last.time)}); "
                "the fill history stays in time order (forget it with DELETE /_sim/fills once flat)")
        self._admin_fills += 1
        f = self._record_fill(
            ex, m, side, qty, price, t,
            order_id=order_id or self.new_order_id(ex),
            client_order_id=client_order_id or f"sim-admin-{self._admin_fills}",
            source="admin", order_type="market", order_qty=qty, order_price=price,
            create_type=create_type, mark_price=price,
        )
        self._emit_activity(AdminFillActivity(f))
        return f

    def _record_fill(
        self,
        ex: str,
        m: Market,
        side: str,
        qty: Decimal,
        price: Decimal,
        t: datetime,
        *,
        order_id: str,
        client_order_id: str | None,
        source: str,
        order_type: str,
        order_qty: Decimal | None,
        order_price: Decimal | None,
        leaves_qty: Decimal = Decimal(0),
        create_type: str = "CreateByUser",
        mark_price: Decimal | None = None,
    ) -> Fill:
        key = (ex, m.symbol_id)
        t = t.replace(microsecond=t.microsecond // 1000 * 1000)  # exchanges keep milliseconds
        p = self.positions.get(key)
        before = (p.side, p.qty, p.entry_price) if p is not None else None
        after, closed, pnl, opens = fold_fill(before, side, qty, price)
        self._fill_seq += 1
        if ex == "binanceusdm":
            self._binance_next_trade_id += 1
            trade_id = str(self._binance_next_trade_id)
        else:
            trade_id = str(uuid.UUID(int=self._exec_rng.getrandbits(128), version=4))
        f = Fill(
            exchange=ex, symbol=m.symbol_id, seq=self._fill_seq, trade_id=trade_id, order_id=str(order_id),
            client_order_id=client_order_id, side=side, qty=qty, price=price, time=t, closed_qty=closed,
            realized_pnl=pnl, source=source, order_type=order_type, order_qty=order_qty, order_price=order_price,
            leaves_qty=leaves_qty, create_type=create_type, mark_price=mark_price, opens_episode=opens,
            position_after=after,
        )
        self.fills.append(f)
        self._last_fill[key] = f
        if pnl:
            self._cum_pnl[key] = self._cum_pnl.get(key, Decimal(0)) + pnl
        if after is None:
            del self.positions[key]
        elif opens:
            self.positions[key] = Position(ex, m.symbol_id, after[0], after[1], after[2], t, t)
            first = self._first_opened.get(key)
            if first is None or t < first:
                self._first_opened[key] = t
        else:
            p.side, p.qty, p.entry_price = after
            p.realised_pnl += pnl
            p.updated_at = t
        return f
