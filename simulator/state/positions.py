"""Positions: what the account holds, and the admin changes that make it so.

A position changes only through fills (:mod:`simulator.state.fills`): the admin API's
"make this position so" (:meth:`PositionDesk.admin_set_position`) records the one fill
that would do it, so the fill history always replays to the current position. A
position's ``opened_at`` is the time of the fill that took it from flat (or through
zero, a flip).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from simulator.state.markets import Market
from simulator.state.values import SimError, as_utc, dstr, iso, normalize_exchange, normalize_symbol, to_decimal

if TYPE_CHECKING:
    from simulator.state.fills import Fill


@dataclass
class Position:
    exchange: str
    symbol: str  # exchange id
    side: str  # "long" | "short"
    qty: Decimal  # > 0
    entry_price: Decimal
    opened_at: datetime
    updated_at: datetime
    realised_pnl: Decimal = Decimal(0)

    @property
    def signed_qty(self) -> Decimal:
        return self.qty if self.side == "long" else -self.qty

    def unrealised_pnl(self, mark: Decimal) -> Decimal:
        return (mark - self.entry_price) * self.signed_qty

    def to_dict(self, market: Market | None = None) -> dict:
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "unified_symbol": market.unified if market else None,
            "side": self.side,
            "qty": dstr(self.qty),
            "entry_price": dstr(self.entry_price),
            "opened_at": iso(self.opened_at),
            "updated_at": iso(self.updated_at),
            "realised_pnl": dstr(self.realised_pnl),
        }


class PositionDesk:
    """Reading and changing positions (a part of :class:`~simulator.state.SimState`).

    Keeps ``positions`` ((exchange, symbol id) -> :class:`Position`, open ones only).
    """

    def _init_positions(self) -> None:
        self.positions: dict[tuple[str, str], Position] = {}

    def position(self, exchange: str, symbol_id: str) -> Position | None:
        return self.positions.get((normalize_exchange(exchange), symbol_id))

    def list_positions(self, exchange: str | None = None) -> list[Position]:
        ex = normalize_exchange(exchange) if exchange is not None else None
        return [p for (e, _), p in self.positions.items() if ex is None or e == ex]

    def set_position(
        self,
        exchange: str,
        symbol: str,
        side: str,
        qty,
        entry_price,
        opened_at: datetime | None = None,
        *,
        at: datetime | None = None,
        fill_price=None,
    ) -> Position:
        """Make the position what is asked (admin), through the fills that would do it.

        See :meth:`admin_set_position`; this returns only the position.
        """
        pos, _ = self.admin_set_position(exchange, symbol, side, qty, entry_price, opened_at,
                                         at=at, fill_price=fill_price)
        return pos

    def admin_set_position(
        self,
        exchange: str,
        symbol: str,
        side: str,
        qty,
        entry_price,
        opened_at: datetime | None = None,
        *,
        at: datetime | None = None,
        fill_price=None,
    ) -> tuple[Position, list[Fill]]:
        """Create or change a position (admin) by recording the fill that makes it so.

        * flat: an opening fill of ``qty`` at ``entry_price`` at ``opened_at`` (default
          now) — a backdated ``opened_at`` makes an already aged position whose fill
          history agrees;
        * same side, more: averaging in — one fill of the difference at the price (on
          the tick grid) that brings the average to ``entry_price``; the opening time
          stays (``opened_at``, if given, must be the current one);
        * same side, less: a reducing fill of the difference at ``fill_price`` (default
          the touch: the bid for a long, the ask for a short); ``entry_price`` must be the
          current average entry;
        * the other side: a flip — one fill through zero at ``entry_price`` at
          ``opened_at`` (default now), which opens the new episode.

        ``at`` is the time of a change to an existing position (default now). Fill times
        never go backwards on a symbol and are never in the future.
        """
        ex = normalize_exchange(exchange)
        if side not in ("long", "short"):
            raise SimError(f"side must be 'long' or 'short', got {side!r}")
        q = to_decimal(qty, "qty", positive=True)
        entry = to_decimal(entry_price, "entry_price", positive=True)
        fp = to_decimal(fill_price, "fill_price", positive=True) if fill_price is not None else None
        m = self.ensure_market(ex, symbol, entry, qty_hint=q)
        if not m.on_step(q):
            raise SimError(f"qty {q} is not a multiple of {m.symbol_id}'s lot size {m.qty_step}")
        opened = as_utc(opened_at)
        at = as_utc(at)
        cur = self.positions.get((ex, m.symbol_id))
        if cur is None or cur.side != side:
            if fp is not None and fp != entry:
                raise SimError("an opening (or flipping) fill is at entry_price; leave fill_price out")
            t = opened or at or self.now()
            fill_qty = q if cur is None else q + cur.qty
            f = self._admin_fill(ex, m, "buy" if side == "long" else "sell", fill_qty, entry, t)
            return self.positions[(ex, m.symbol_id)], [f]
        if opened is not None and opened != cur.opened_at:
            raise SimError(
                f"{ex} {m.symbol_id} is open since {iso(cur.opened_at)}; opened_at cannot move an open "
                "position's opening (DELETE it first to re-open, or leave opened_at out)")
        t = at or self.now()
        add = "buy" if side == "long" else "sell"
        reduce = "sell" if side == "long" else "buy"
        if q > cur.qty:
            delta = q - cur.qty
            price = fp
            if price is None:
                price = m.round_price((entry * q - cur.entry_price * cur.qty) / delta)
            if price <= 0:
                raise SimError(
                    f"no fill at a positive price takes {m.symbol_id} from {dstr(cur.qty)} @ "
                    f"{dstr(cur.entry_price)} to {dstr(q)} @ {dstr(entry)}")
            f = self._admin_fill(ex, m, add, delta, price, t)
            return self.positions[(ex, m.symbol_id)], [f]
        if entry != cur.entry_price:
            raise SimError(
                f"a reduction keeps the average entry ({dstr(cur.entry_price)}); give that entry_price, "
                "or DELETE the position first to re-open at another")
        if q == cur.qty:
            return cur, []
        if fp is None:
            qt = self.quote(ex, m.symbol_id)
            fp = qt.bid if reduce == "sell" else qt.ask
        f = self._admin_fill(ex, m, reduce, cur.qty - q, fp, t)
        return self.positions[(ex, m.symbol_id)], [f]

    def remove_position(
        self, exchange: str, symbol: str, price=None, at: datetime | None = None
    ) -> Position | None:
        """Close a position "behind the service's back" (admin): a closing fill at
        ``price`` (default the touch) at ``at`` (default now). Returns it, or None."""
        ex = normalize_exchange(exchange)
        sid = normalize_symbol(symbol)
        p = self.positions.get((ex, sid))
        if p is None:
            return None
        m = self.market(ex, sid)
        side = "sell" if p.side == "long" else "buy"
        if price is None:
            qt = self.quote(ex, sid)
            px = qt.bid if side == "sell" else qt.ask
        else:
            px = to_decimal(price, "price", positive=True)
        self._admin_fill(ex, m, side, p.qty, px, as_utc(at) or self.now(), create_type="CreateByClosing")
        return p

    def clear_positions(self, exchange: str | None = None) -> int:
        ex = normalize_exchange(exchange) if exchange is not None else None
        keys = [k for k in self.positions if ex is None or k[0] == ex]
        for e, sid in keys:
            self.remove_position(e, sid)
        return len(keys)

    def admin_fill(
        self,
        exchange: str,
        symbol: str,
        side: str,
        qty,
        price,
        time: datetime | None = None,
        *,
        order_id: str | None = None,
        client_order_id: str | None = None,
    ) -> Fill:
        """One explicit fill (admin): the position changes by exactly this fill."""
        ex = normalize_exchange(exchange)
        q = to_decimal(qty, "qty", positive=True)
        px = to_decimal(price, "price", positive=True)
        m = self.ensure_market(ex, symbol, px, qty_hint=q)
        if not m.on_step(q):
            raise SimError(f"qty {q} is not a multiple of {m.symbol_id}'s lot size {m.qty_step}")
        if ex == "binanceusdm" and order_id is not None and not str(order_id).isdigit():
            raise SimError("a Binance order_id is a number")
        return self._admin_fill(ex, m, side, q, px, as_utc(time) or self.now(),
                                order_id=order_id, client_order_id=client_order_id)
