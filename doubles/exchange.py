"""An in-memory exchange implementing :class:`exchanges.port.ExchangePort` for unit tests.

Trio-native, no sockets, deterministic; works on trio's autojump ``MockClock``.
It behaves like the real adapter where actor logic can tell the difference:

* positions per symbol (one-way mode: one side per symbol); quotes set by the test;
* close orders are **reduce-only**: an order on a flat symbol, or on the wrong side
  (which would open or increase a position), is rejected with
  :class:`~exchanges.errors.NonRetryableError` (``code="position_zero"`` /
  ``"reduce_only"``); an order larger than the position closes the position and no
  more (Bybit behaviour), or is rejected when ``strict_reduce_only_qty=True``;
* quantities are rounded down to ``lot_size`` (per symbol or one for all); ``min_qty``,
  ``max_market_qty`` and ``max_limit_qty`` (each per symbol or one for all, ``None``: no
  limit) are checked after rounding and served by :meth:`close_limits`, with the
  adapter's codes (``qty_below_min``, ``qty_above_max``); no minimum notional, as for
  reduce-only orders on the real exchanges;
* a MARKET order fills at the bid (closing a long) / ask (closing a short), else the
  last price; without any price it raises
  :class:`~exchanges.errors.InsufficientLiquidityError`. A limit IOC fills at the
  touch if the touch is at or better than the limit, else it is ``canceled`` unfilled;
* a reused client order id raises :class:`~exchanges.errors.UnknownOutcomeError`
  (``code="duplicate_client_order_id"``), as the ccxt adapter classifies Bybit 110072
  / Binance -4116: the executor is expected to look the id up;
* every accepted order is in :attr:`orders` and can be looked up by client id.

Scriptable faults:

* :meth:`fail_next` - raise an exception on the next ``n`` calls of a method
  (``create_close_order`` by default; ``method=None`` for any port call);
* :meth:`lose_reply_next` - execute the next ``n`` orders but raise
  :class:`~exchanges.errors.UnknownOutcomeError` (the reply was lost);
* :attr:`partial_fill_ratio` - fill only this fraction (rounded down to the lot) of
  each order; the rest is canceled (status ``"canceled"``);
* :meth:`close_externally` - the position disappears (closed by someone else);
* :meth:`open_next` - the next ``n`` orders are accepted but stay ``open`` (no fill)
  until they have been looked up ``lookups`` times; then they fill at the touch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Callable, Sequence

import trio

from exchanges.errors import (
    InsufficientLiquidityError,
    NonRetryableError,
    UnknownOutcomeError,
)
from exchanges.port import ExchangePosition, Fill, LotLimits, OrderResult, Quote

__all__ = ["MemoryExchange", "MemoryOrder"]

PORT_METHODS = (
    "load_markets",
    "position_mode",
    "fetch_positions",
    "fetch_quote",
    "fetch_fills",
    "create_close_order",
    "fetch_order_by_client_id",
    "close_limits",
)


@dataclass
class _Position:
    side: str
    qty: Decimal
    entry_price: Decimal
    opened_at: datetime | None


@dataclass
class MemoryOrder:
    """One accepted order, as the exchange remembers it."""

    client_order_id: str
    exchange_order_id: str
    symbol: str
    position_side: str
    order_side: str  # "buy" | "sell"
    type: str  # "market" | "limit"
    requested_qty: Decimal
    limit_price: Decimal | None
    status: str
    filled_qty: Decimal
    avg_price: Decimal | None
    created_at: float  # trio.current_time()
    lookups_until_fill: int = 0  # > 0: still open; fills after that many lookups

    def result(self) -> OrderResult:
        return OrderResult(
            client_order_id=self.client_order_id,
            exchange_order_id=self.exchange_order_id,
            status=self.status,
            filled_qty=self.filled_qty,
            avg_price=self.avg_price,
            requested_qty=self.requested_qty,
        )


@dataclass
class _Fault:
    method: str | None
    make: Callable[[], BaseException]
    remaining: int


def _exception_factory(exc_or_factory: Any) -> Callable[[], BaseException]:
    if isinstance(exc_or_factory, BaseException):
        return lambda: exc_or_factory
    if isinstance(exc_or_factory, type) and issubclass(exc_or_factory, BaseException):
        return lambda: exc_or_factory("injected fault")
    if callable(exc_or_factory):
        return exc_or_factory
    raise TypeError(f"expected an exception, an exception class or a factory, got {exc_or_factory!r}")


@dataclass
class MemoryExchange:
    name: str = "memory"
    lot_size: Decimal | dict[str, Decimal] = Decimal("0.001")
    symbols: Sequence[str] | None = None  # if given, other symbols are rejected
    strict_reduce_only_qty: bool = False
    partial_fill_ratio: Decimal | None = None
    latency: float = 0.0  # trio.sleep per call (virtual time under MockClock)
    mode: str = "one_way"  # what position_mode() answers
    tick_size: Decimal | None = None  # what price_tick() answers (for every symbol)
    min_qty: Decimal | dict[str, Decimal] | None = None
    max_market_qty: Decimal | dict[str, Decimal] | None = None
    max_limit_qty: Decimal | dict[str, Decimal] | None = None

    positions: dict[str, _Position] = field(default_factory=dict)
    quotes: dict[str, Quote] = field(default_factory=dict)
    orders: list[MemoryOrder] = field(default_factory=list)
    fills: dict[str, list[Fill]] = field(default_factory=dict)  # scripted fill history per symbol
    rejections: list[tuple[str, str, BaseException]] = field(default_factory=list)
    calls: list[tuple[str, tuple]] = field(default_factory=list)
    closed: bool = False

    _faults: list[_Fault] = field(default_factory=list, repr=False)
    _lose_replies: int = field(default=0, repr=False)
    _open_next: list[int] = field(default_factory=list, repr=False)
    _next_id: int = field(default=1, repr=False)
    _by_client_id: dict[str, MemoryOrder] = field(default_factory=dict, repr=False)

    # -- test setup -----------------------------------------------------------------

    def set_position(
        self,
        symbol: str,
        side: str,
        qty: Decimal | str | int,
        entry_price: Decimal | str | int,
        opened_at: datetime | None = None,
    ) -> None:
        if side not in ("long", "short"):
            raise ValueError(f"side must be 'long' or 'short', not {side!r}")
        qty = Decimal(qty)
        if qty <= 0:
            self.positions.pop(symbol, None)
            return
        if opened_at is not None and opened_at.tzinfo is None:
            raise ValueError("opened_at must be timezone-aware")
        self.positions[symbol] = _Position(side, qty, Decimal(entry_price), opened_at)

    def set_quote(
        self,
        symbol: str,
        bid: Decimal | str | int | None,
        ask: Decimal | str | int | None,
        last: Decimal | str | int | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        def d(v):
            return None if v is None else Decimal(v)

        self.quotes[symbol] = Quote(
            symbol=symbol,
            bid=d(bid),
            ask=d(ask),
            last=d(last),
            timestamp=timestamp or datetime.now(timezone.utc),
        )

    def close_externally(self, symbol: str) -> None:
        """The position vanishes, as if closed by someone else."""
        self.positions.pop(symbol, None)

    def fail_next(self, exc_or_exc_factory: Any, n: int = 1, *, method: str | None = "create_close_order") -> None:
        """Raise on the next ``n`` calls of ``method`` (``None``: any port method).

        ``exc_or_exc_factory``: an exception instance, an exception class (instantiated
        with ``"injected fault"``) or a zero-argument callable returning an exception.
        Faults queue up in the order they were scripted.
        """
        if method is not None and method not in PORT_METHODS:
            raise ValueError(f"unknown port method {method!r}")
        if n > 0:
            self._faults.append(_Fault(method, _exception_factory(exc_or_exc_factory), n))

    def lose_reply_next(self, n: int = 1) -> None:
        """The next ``n`` orders execute, but the caller gets UnknownOutcomeError."""
        self._lose_replies += n

    def open_next(self, n: int = 1, *, lookups: int = 1) -> None:
        """The next ``n`` orders stay open, unfilled, until looked up ``lookups`` times."""
        self._open_next.extend([max(1, lookups)] * n)

    def clear_faults(self) -> None:
        self._faults.clear()
        self._lose_replies = 0
        self._open_next.clear()

    def order(self, client_order_id: str) -> MemoryOrder | None:
        return self._by_client_id.get(client_order_id)

    # -- helpers --------------------------------------------------------------------

    async def _enter(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))
        if self.latency > 0:
            await trio.sleep(self.latency)
        else:
            await trio.lowlevel.checkpoint()
        if self.closed:
            raise NonRetryableError(f"{self.name}: exchange client is closed", exchange=self.name, code="closed")
        for fault in self._faults:
            if fault.method is None or fault.method == method:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                raise fault.make()

    def _check_symbol(self, symbol: str) -> None:
        if self.symbols is not None and symbol not in self.symbols:
            raise NonRetryableError(f"{self.name}: unknown symbol {symbol!r}", exchange=self.name, code="bad_symbol")

    def _lot(self, symbol: str) -> Decimal:
        if isinstance(self.lot_size, dict):
            return Decimal(self.lot_size.get(symbol, Decimal("0.001")))
        return Decimal(self.lot_size)

    @staticmethod
    def _per_symbol(value: Any, symbol: str) -> Decimal | None:
        if isinstance(value, dict):
            value = value.get(symbol)
        return None if value is None else Decimal(value)

    def _round_down(self, symbol: str, qty: Decimal) -> Decimal:
        lot = self._lot(symbol)
        if lot <= 0:
            return qty
        return (qty / lot).to_integral_value(rounding=ROUND_FLOOR) * lot

    def _reject(self, method: str, client_order_id: str, exc: BaseException) -> BaseException:
        self.rejections.append((method, client_order_id, exc))
        return exc

    # -- port -----------------------------------------------------------------------

    async def load_markets(self) -> None:
        await self._enter("load_markets")

    async def position_mode(self) -> str:
        await self._enter("position_mode")
        return self.mode

    async def fetch_positions(self, symbols: Sequence[str] | None = None) -> list[ExchangePosition]:
        await self._enter("fetch_positions", symbols)
        wanted = None if symbols is None else set(symbols)
        return [
            ExchangePosition(
                exchange=self.name,
                symbol=symbol,
                side=p.side,
                qty=p.qty,
                entry_price=p.entry_price,
                opened_at=p.opened_at,
            )
            for symbol, p in sorted(self.positions.items())
            if wanted is None or symbol in wanted
        ]

    async def fetch_fills(self, symbol: str, since: datetime, until: datetime) -> list[Fill]:
        await self._enter("fetch_fills", symbol, since, until)
        return sorted((f for f in self.fills.get(symbol, []) if since <= f.time <= until), key=lambda f: f.time)

    def price_tick(self, symbol: str) -> Decimal | None:
        return self.tick_size

    async def fetch_quote(self, symbol: str) -> Quote:
        await self._enter("fetch_quote", symbol)
        self._check_symbol(symbol)
        quote = self.quotes.get(symbol)
        if quote is None:
            return Quote(symbol=symbol, bid=None, ask=None, last=None, timestamp=None)
        return quote

    async def create_close_order(
        self,
        symbol: str,
        position_side: str,
        qty: Decimal,
        client_order_id: str,
        *,
        limit_price: Decimal | None = None,
        wait_fill: bool = True,  # like the adapter's answer: an order kept open is returned open either way
    ) -> OrderResult:
        await self._enter("create_close_order", symbol, position_side, qty, client_order_id, limit_price)
        self._check_symbol(symbol)
        if position_side not in ("long", "short"):
            raise NonRetryableError(f"position_side must be 'long' or 'short', not {position_side!r}", exchange=self.name)
        if not isinstance(qty, Decimal) or qty <= 0:
            raise NonRetryableError(f"close qty must be a positive Decimal, not {qty!r}", exchange=self.name)
        if client_order_id in self._by_client_id:
            raise self._reject(
                "create_close_order",
                client_order_id,
                UnknownOutcomeError(
                    f"{self.name}: duplicate client order id {client_order_id!r}",
                    exchange=self.name,
                    code="duplicate_client_order_id",
                ),
            )
        amount = self._round_down(symbol, qty)
        if amount <= 0:
            raise self._reject(
                "create_close_order",
                client_order_id,
                NonRetryableError(f"{self.name}: qty {qty} below lot size", exchange=self.name, code="qty_below_lot_size"),
            )
        least = self._per_symbol(self.min_qty, symbol)
        if least is not None and amount < least:
            raise self._reject(
                "create_close_order",
                client_order_id,
                NonRetryableError(f"{self.name}: qty {amount} below the minimum order {least}", exchange=self.name,
                                  code="qty_below_min"),
            )
        cap = self._per_symbol(self.max_market_qty if limit_price is None else self.max_limit_qty, symbol)
        if cap is not None and amount > cap:
            raise self._reject(
                "create_close_order",
                client_order_id,
                NonRetryableError(f"{self.name}: qty {amount} above the maximum order {cap}", exchange=self.name,
                                  code="qty_above_max"),
            )
        position = self.positions.get(symbol)
        if position is None:
            raise self._reject(
                "create_close_order",
                client_order_id,
                NonRetryableError(f"{self.name}: position is zero for {symbol}", exchange=self.name, code="position_zero"),
            )
        if position.side != position_side:
            raise self._reject(
                "create_close_order",
                client_order_id,
                NonRetryableError(
                    f"{self.name}: reduce-only order would increase the {position.side} position on {symbol}",
                    exchange=self.name,
                    code="reduce_only",
                ),
            )
        if amount > position.qty and self.strict_reduce_only_qty:
            raise self._reject(
                "create_close_order",
                client_order_id,
                NonRetryableError(
                    f"{self.name}: reduce-only qty {amount} exceeds position {position.qty}",
                    exchange=self.name,
                    code="reduce_only",
                ),
            )

        order_side = "sell" if position_side == "long" else "buy"
        if self._open_next:
            order = MemoryOrder(
                client_order_id=client_order_id, exchange_order_id=f"{self.name}-{self._next_id}", symbol=symbol,
                position_side=position_side, order_side=order_side, type="market" if limit_price is None else "limit",
                requested_qty=amount, limit_price=limit_price, status="open", filled_qty=Decimal(0), avg_price=None,
                created_at=trio.current_time(), lookups_until_fill=self._open_next.pop(0))
            self._next_id += 1
            self.orders.append(order)
            self._by_client_id[client_order_id] = order
            return order.result()
        quote = self.quotes.get(symbol)
        touch = None
        if quote is not None:
            touch = quote.bid if order_side == "sell" else quote.ask
            if touch is None and limit_price is None:
                touch = quote.last
        if limit_price is None and touch is None:
            raise self._reject(
                "create_close_order",
                client_order_id,
                InsufficientLiquidityError(
                    f"{self.name}: no price to fill a market order on {symbol}", exchange=self.name, code="no_liquidity"
                ),
            )

        fillable = min(amount, position.qty)
        if limit_price is not None:
            crosses = touch is not None and (touch >= limit_price if order_side == "sell" else touch <= limit_price)
            if not crosses:
                fillable = Decimal(0)
        if self.partial_fill_ratio is not None and fillable > 0:
            fillable = self._round_down(symbol, fillable * Decimal(self.partial_fill_ratio))

        if fillable >= amount:
            status = "closed"
        elif fillable > 0 and fillable >= position.qty:
            status = "closed"  # reduce-only clamp: the whole position was closed
        else:
            status = "canceled"  # market/IOC remainder is not left on the book

        order = MemoryOrder(
            client_order_id=client_order_id,
            exchange_order_id=f"{self.name}-{self._next_id}",
            symbol=symbol,
            position_side=position_side,
            order_side=order_side,
            type="market" if limit_price is None else "limit",
            requested_qty=amount,
            limit_price=limit_price,
            status=status,
            filled_qty=fillable,
            avg_price=touch if fillable > 0 else None,
            created_at=trio.current_time(),
        )
        self._next_id += 1
        self.orders.append(order)
        self._by_client_id[client_order_id] = order

        if fillable > 0:
            remaining = position.qty - fillable
            if remaining <= 0:
                del self.positions[symbol]
            else:
                position.qty = remaining

        if self._lose_replies > 0:
            self._lose_replies -= 1
            raise UnknownOutcomeError(
                f"{self.name}: reply lost for {client_order_id!r} (order executed)", exchange=self.name, code="lost_reply"
            )
        return order.result()

    async def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> OrderResult | None:
        await self._enter("fetch_order_by_client_id", symbol, client_order_id)
        order = self._by_client_id.get(client_order_id)
        if order is None or order.symbol != symbol:
            return None
        if order.lookups_until_fill > 0:
            order.lookups_until_fill -= 1
            if order.lookups_until_fill == 0:
                self._fill_open(order)
        return order.result()

    def _fill_open(self, order: MemoryOrder) -> None:
        """An order left open fills now: at the touch, up to the position."""
        position = self.positions.get(order.symbol)
        quote = self.quotes.get(order.symbol)
        touch = None
        if quote is not None:
            touch = (quote.bid if order.order_side == "sell" else quote.ask) or quote.last
        if position is None or position.side != order.position_side or touch is None:
            order.status = "canceled"
            return
        fill = min(order.requested_qty, position.qty)
        order.filled_qty, order.avg_price, order.status = fill, touch, "closed"
        position.qty -= fill
        if position.qty <= 0:
            del self.positions[order.symbol]

    async def close_limits(self, symbol: str) -> LotLimits:
        await self._enter("close_limits", symbol)
        self._check_symbol(symbol)
        return LotLimits(step=self._lot(symbol), min_qty=self._per_symbol(self.min_qty, symbol),
                         max_market_qty=self._per_symbol(self.max_market_qty, symbol),
                         max_limit_qty=self._per_symbol(self.max_limit_qty, symbol))

    async def close(self) -> None:
        self.closed = True
