"""Orders: accepting, matching and looking up the product's orders.

Matching is simple on purpose (:meth:`OrderDesk.execute_order`): market orders and
marketable limits fill at the touch with no depth; a limit that does not cross rests
and is never matched later. Rejected orders are kept too (:meth:`OrderDesk.record_rejected`),
so the admin order log shows everything the simulator received.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from time import monotonic

from simulator.state.activity import CancelActivity, OrderActivity
from simulator.state.markets import Market
from simulator.state.prices import SimQuote
from simulator.state.values import dstr, iso, normalize_exchange

ORDER_STATUSES = ("new", "filled", "partially_filled", "canceled", "rejected")


@dataclass
class Order:
    """One order the simulator received (accepted or rejected), in the admin log's terms."""

    exchange: str
    symbol: str | None
    side: str | None  # "buy" | "sell"
    type: str | None  # "market" | "limit"
    qty: Decimal | None  # as requested
    price: Decimal | None
    time_in_force: str | None  # "GTC" | "IOC" | "FOK" | "GTX" | None
    reduce_only: bool
    client_order_id: str | None
    order_id: str | None
    status: str
    filled_qty: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    reject_code: str | None = None
    reject_msg: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    # time.monotonic() when the simulator recorded the order (accepted or rejected): the
    # machine's CLOCK_MONOTONIC, comparable across processes (``time`` follows the
    # simulator's own, injectable clock)
    recorded_monotonic: float = field(default_factory=monotonic)
    updated_at: datetime | None = None
    # what the exchange reports as the order quantity (Bybit shrinks a reduce-only order
    # to the position size; Binance keeps the requested quantity)
    effective_qty: Decimal | None = None
    is_open: bool = False  # resting on the book (GTC limit not fully filled)
    canceled_by_user: bool = False
    fill_quote: SimQuote | None = None  # the book the order met
    # the API key the order request was signed with (None: not sent through the REST API,
    # e.g. an admin fill's "trading bot" order)
    api_key: str | None = None

    @property
    def remaining_qty(self) -> Decimal:
        q = self.effective_qty if self.effective_qty is not None else (self.qty or Decimal(0))
        return max(Decimal(0), q - self.filled_qty) if self.is_open else Decimal(0)

    @property
    def cum_quote(self) -> Decimal:
        if self.avg_price is None:
            return Decimal(0)
        return self.avg_price * self.filled_qty

    def record(self) -> dict:
        return {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "qty": dstr(self.qty),
            "price": dstr(self.price),
            "time_in_force": self.time_in_force,
            "reduce_only": self.reduce_only,
            "client_order_id": self.client_order_id,
            "order_id": self.order_id,
            "status": self.status,
            "filled_qty": dstr(self.filled_qty),
            "avg_price": dstr(self.avg_price),
            "reject_code": self.reject_code,
            "reject_msg": self.reject_msg,
            "time": iso(self.time),
            "api_key": self.api_key,
        }


def bot_order(fill) -> Order:
    """An admin fill as the filled MARKET order of another trader on the account (a "trading bot").

    What the private streams show for a position change made behind the product's back.
    """
    return Order(
        exchange=fill.exchange, symbol=fill.symbol, side=fill.side, type="market", qty=fill.qty, price=None,
        time_in_force="IOC", reduce_only=False, client_order_id=fill.client_order_id, order_id=fill.order_id,
        status="filled", filled_qty=fill.qty, avg_price=fill.price, time=fill.time, updated_at=fill.time,
        effective_qty=fill.qty,
    )


class OrderDesk:
    """The order log and the matching (a part of :class:`~simulator.state.SimState`).

    Keeps ``orders`` (in arrival order) and indexes by order id and client order id.
    """

    def _init_orders(self, seed: int) -> None:
        self.orders: list[Order] = []
        self._orders_by_id: dict[tuple[str, str], Order] = {}
        self._orders_by_client_id: dict[tuple[str, str], Order] = {}
        self._id_rng = random.Random(f"{seed}/order-ids")
        self._binance_next_id = 8_389_765_000_000 + random.Random(f"{seed}/binance-ids").randrange(10**6) * 1000

    def new_order_id(self, exchange: str) -> str:
        if exchange == "bybit":
            return str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))
        self._binance_next_id += 1
        return str(self._binance_next_id)

    def find_order(
        self, exchange: str, *, order_id: str | None = None, client_order_id: str | None = None
    ) -> Order | None:
        ex = normalize_exchange(exchange)
        if order_id is not None:
            o = self._orders_by_id.get((ex, str(order_id)))
            if o is not None and client_order_id is not None and o.client_order_id != client_order_id:
                return None
            return o
        if client_order_id is not None:
            return self._orders_by_client_id.get((ex, client_order_id))
        return None

    def accepted_orders(self, exchange: str) -> list[Order]:
        ex = normalize_exchange(exchange)
        return [o for o in self.orders if o.exchange == ex and o.order_id is not None]

    def orders_by_key(self, exchange: str, *, include_rejected: bool = False) -> dict[str | None, list[Order]]:
        """The exchange's orders grouped by the API key that placed them, each list in arrival order.

        Several clients of one account (one key each) can tell their orders apart this
        way. Only accepted orders unless ``include_rejected``; an order placed without a
        key (an admin fill's bot order) would group under ``None``.
        """
        ex = normalize_exchange(exchange)
        out: dict[str | None, list[Order]] = {}
        for o in self.orders:
            if o.exchange == ex and (include_rejected or o.order_id is not None):
                out.setdefault(o.api_key, []).append(o)
        return out

    def client_id_used(self, exchange: str, client_order_id: str) -> bool:
        return (normalize_exchange(exchange), client_order_id) in self._orders_by_client_id

    def reduce_only_problem(self, exchange: str, symbol_id: str, side: str) -> str | None:
        """None if a reduce-only order on ``side`` may execute, else ``"no_position"`` or
        ``"would_increase"``."""
        p = self.position(exchange, symbol_id)
        if p is None:
            return "no_position"
        if (p.side == "long" and side == "buy") or (p.side == "short" and side == "sell"):
            return "would_increase"
        return None

    def record_rejected(
        self,
        exchange: str,
        *,
        symbol: str | None,
        side: str | None,
        type: str | None,
        qty: Decimal | None,
        price: Decimal | None,
        time_in_force: str | None,
        reduce_only: bool,
        client_order_id: str | None,
        code: str | int,
        message: str,
        api_key: str | None = None,
    ) -> Order:
        o = Order(
            exchange=normalize_exchange(exchange),
            symbol=symbol,
            side=side,
            type=type,
            qty=qty,
            price=price,
            time_in_force=time_in_force,
            reduce_only=reduce_only,
            client_order_id=client_order_id,
            order_id=None,
            status="rejected",
            reject_code=str(code),
            reject_msg=message,
            time=self.now(),
            api_key=api_key,
        )
        o.updated_at = o.time
        self.orders.append(o)
        return o

    def execute_order(
        self,
        exchange: str,
        m: Market,
        *,
        side: str,
        type: str,
        qty: Decimal,
        price: Decimal | None,
        time_in_force: str,
        reduce_only: bool,
        client_order_id: str | None,
        reduce_only_cap: str = "shrink",
        api_key: str | None = None,
    ) -> Order:
        """Accept an already validated order, fill what can be filled now, record it.

        * market orders and marketable limits fill at the touch (ask for a buy, bid for a
          sell) — there is no depth;
        * reduce-only fills are capped at the position size; with
          ``reduce_only_cap="shrink"`` (Bybit) the order quantity itself is reduced,
          with ``"expire"`` (Binance) the rest of the order expires;
        * the ``partial_fill_ratio`` fault fills only that fraction (rounded down to the
          lot) of market and IOC/FOK orders; FOK then fills nothing;
        * a GTC/GTX limit that does not cross rests as ``new`` (it is never matched later).

        ``api_key`` is the key the request was signed with (kept on the order).
        """
        ex = normalize_exchange(exchange)
        now = self.now()
        q = self.quote(ex, m.symbol_id)
        order = Order(
            exchange=ex,
            symbol=m.symbol_id,
            side=side,
            type=type,
            qty=qty,
            price=price,
            time_in_force=time_in_force,
            reduce_only=reduce_only,
            client_order_id=client_order_id,
            order_id=self.new_order_id(ex),
            status="new",
            time=now,
            updated_at=now,
            effective_qty=qty,
            fill_quote=q,
            api_key=api_key,
        )
        target = qty
        if reduce_only:
            pos = self.position(ex, m.symbol_id)
            cap = pos.qty if pos is not None else Decimal(0)
            if target > cap:
                target = cap
                if reduce_only_cap == "shrink":
                    order.effective_qty = cap
        touch = q.ask if side == "buy" else q.bid
        marketable = type == "market" or (price is not None and (price >= touch if side == "buy" else price <= touch))
        immediate = type == "market" or time_in_force in ("IOC", "FOK")
        if time_in_force == "GTX" and marketable:  # post-only would take: expires
            marketable = False
            immediate = True
        fill = Decimal(0)
        made = []  # the fills this order makes now
        if marketable:
            fill = target
            ratio = self.faults.partial_fill_ratio
            if immediate and ratio is not None and ratio < 1:
                fill = m.floor_qty(target * ratio)
                if time_in_force == "FOK":
                    fill = Decimal(0)
        if fill > 0:
            last = self.last_fill(ex, m.symbol_id)
            t = now if last is None or now >= last.time else last.time  # never before the last fill
            leaves = (order.effective_qty - fill) if not immediate else Decimal(0)
            f = self._record_fill(
                ex, m, side, fill, touch, t,
                order_id=order.order_id, client_order_id=client_order_id, source="order", order_type=type,
                order_qty=order.effective_qty, order_price=price, leaves_qty=max(leaves, Decimal(0)),
                mark_price=q.last,
            )
            made.append(f)
            order.filled_qty = fill
            order.avg_price = touch
            self.record_trade(ex, m.symbol_id, fill, touch)
        eff = order.effective_qty
        if fill >= eff and eff > 0:
            order.status = "filled"
        elif immediate:
            order.status = "partially_filled" if fill > 0 else "canceled"
        else:
            order.status = "partially_filled" if fill > 0 else "new"
            order.is_open = True
        self.orders.append(order)
        self._orders_by_id[(ex, order.order_id)] = order
        if client_order_id:
            self._orders_by_client_id[(ex, client_order_id)] = order
        self._emit_activity(OrderActivity(order, made))
        return order

    def cancel_order(self, order: Order) -> Order:
        order.is_open = False
        order.canceled_by_user = True
        order.status = "canceled"
        order.updated_at = self.now()
        self._emit_activity(CancelActivity(order))
        return order

    # ----------------------------------------------------------------- admin

    def clear_orders(self) -> None:
        """Forget every order (client order ids become usable again)."""
        self.orders.clear()
        self._orders_by_id.clear()
        self._orders_by_client_id.clear()
