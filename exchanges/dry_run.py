"""Dry-run: real market data and real positions, simulated fills, nothing sent.

:class:`DryRunExchange` wraps a real port. Reads (markets, positions, quotes) go to the
exchange. A close order is *not* sent: it fills locally at the current executable
price (bid for a sell, ask for a buy; a limit IOC only if that price is at or better
than its limit), and from then on the wrapped position is reported reduced by what
was "filled", so the rest of the system behaves exactly as it would live.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from exchanges import logfmt
from exchanges.errors import InsufficientLiquidityError, NonRetryableError
from exchanges.port import ExchangePort, ExchangePosition, Fill, OrderResult, Quote

log = logging.getLogger("exchanges.dry_run")


class DryRunExchange:
    def __init__(self, inner: ExchangePort):
        self.inner = inner
        self.name = inner.name
        self.orders: dict[str, OrderResult] = {}
        self._closed: dict[tuple[str, str], Decimal] = {}  # (symbol, side) -> qty closed in simulation

    def __repr__(self) -> str:
        return f"DryRunExchange({self.inner!r})"

    async def load_markets(self) -> None:
        await self.inner.load_markets()

    async def position_mode(self) -> str:
        return await self.inner.position_mode()

    async def fetch_positions(self, symbols: Sequence[str] | None = None) -> list[ExchangePosition]:
        out = []
        for p in await self.inner.fetch_positions(symbols):
            left = p.qty - self._closed.get((p.symbol, p.side), Decimal(0))
            if left > 0:
                out.append(replace(p, qty=left))
        return out

    async def fetch_quote(self, symbol: str) -> Quote:
        return await self.inner.fetch_quote(symbol)

    async def fetch_fills(self, symbol: str, since: datetime, until: datetime) -> list[Fill]:
        # The real account's fills: simulated closes never reach the history, so a
        # position this dry run closed in full simply drops out of fetch_positions.
        return await self.inner.fetch_fills(symbol, since, until)

    def price_tick(self, symbol: str) -> Decimal | None:
        tick = getattr(self.inner, "price_tick", None)
        return tick(symbol) if tick is not None else None

    async def create_close_order(
        self,
        symbol: str,
        position_side: str,
        qty: Decimal,
        client_order_id: str,
        *,
        limit_price: Decimal | None = None,
        wait_fill: bool = True,  # a simulated order is final at once
    ) -> OrderResult:
        if client_order_id in self.orders:
            raise NonRetryableError(
                f"duplicate client order id {client_order_id}", exchange=self.name, code="duplicate_client_order_id"
            )
        open_qty = sum(
            (p.qty for p in await self.fetch_positions([symbol]) if p.symbol == symbol and p.side == position_side),
            Decimal(0),
        )
        if open_qty <= 0:
            raise NonRetryableError(
                f"dry-run: no {position_side} position on {symbol}", exchange=self.name, code="position_zero"
            )
        quote = await self.inner.fetch_quote(symbol)
        price = (quote.bid if position_side == "long" else quote.ask) or quote.last
        if price is None:
            raise InsufficientLiquidityError(f"dry-run: no price for {symbol}", exchange=self.name)
        fill = min(qty, open_qty)
        if limit_price is not None and (price < limit_price if position_side == "long" else price > limit_price):
            fill = Decimal(0)
        key = (symbol, position_side)
        self._closed[key] = self._closed.get(key, Decimal(0)) + fill
        result = OrderResult(
            client_order_id,
            f"dry-{len(self.orders) + 1}",
            "closed" if fill == qty else "canceled",
            fill,
            price if fill else None,
            qty,
        )
        self.orders[client_order_id] = result
        tick = self.price_tick(symbol)
        limit = ""
        if limit_price:  # shown rounded the way it would be sent: down for a sell, up for a buy
            rounding = ROUND_FLOOR if position_side == "long" else ROUND_CEILING
            limit = f", limit IOC {logfmt.price(limit_price, tick, rounding)}"
        log.warning(
            "DRY RUN: would %s %s %s (reduce-only%s); simulated fill %s at %s",
            "sell" if position_side == "long" else "buy",
            logfmt.qty(qty),
            symbol,
            limit or ", market",
            logfmt.qty(fill),
            logfmt.price(price, tick),
        )
        return result

    async def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> OrderResult | None:
        return self.orders.get(client_order_id)

    async def close(self) -> None:
        await self.inner.close()
