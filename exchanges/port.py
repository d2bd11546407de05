"""The exchange port: the small interface the rest of the system uses to talk to an exchange.

Everything above this line (executor, detector, feeds' REST fallback) speaks in these
types only. Two implementations exist: :mod:`exchanges.ccxt_adapter` (real ccxt clients
under trio-asyncio) and :mod:`doubles.exchange` (an in-memory exchange for unit tests
of actor logic).

Conventions:

* ``symbol`` is always ccxt's *unified* linear-perpetual symbol, e.g. ``"BTC/USDT:USDT"``.
* ``side`` of a position is ``"long"`` or ``"short"``. Close orders are always
  reduce-only; the order side is derived (a long is closed by a sell).
* Prices and quantities are :class:`~decimal.Decimal`. Times are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

FILL_HISTORY_WINDOW = timedelta(days=7)
"""The longest span one fill-history request may cover: both exchanges answer at most
7 days per request (Binance ``/fapi/v1/userTrades``, Bybit ``/v5/execution/list``)."""


@dataclass(frozen=True)
class ExchangePosition:
    exchange: str
    symbol: str
    side: str  # "long" | "short"
    qty: Decimal  # always > 0
    entry_price: Decimal
    # When this position was opened, only where the exchange reports it reliably
    # (Bybit's non-zero ``openTime``); otherwise None and the fill history tells.
    opened_at: datetime | None = None
    # The exchange's own time of the last change to the position (Bybit
    # ``updatedTime``, Binance ``updateTime``): a change since the last look.
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Fill:
    """One execution on our account: ``side`` is the order side, ``"buy"`` or ``"sell"``."""

    fill_id: str
    time: datetime
    side: str
    qty: Decimal
    price: Decimal
    client_order_id: str | None = None


@dataclass(frozen=True)
class Quote:
    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class OrderResult:
    """What the exchange says about one order.

    ``status`` is one of ``"open"``, ``"closed"`` (fully filled), ``"canceled"``
    (e.g. an IOC that filled partly or not at all), ``"rejected"``.
    """

    client_order_id: str
    exchange_order_id: str | None
    status: str
    filled_qty: Decimal
    avg_price: Decimal | None
    requested_qty: Decimal | None = None


@dataclass(frozen=True)
class LotLimits:
    """What one close order of a market may be (from the exchange's market list).

    ``step``: the quantity increment; ``min_qty``: the smallest order; ``max_market_qty``
    / ``max_limit_qty``: the largest MARKET / LIMIT order. ``None`` means unknown / no
    limit. A minimum notional is deliberately absent: both exchanges exempt reduce-only
    (closing) orders from it, and every close is reduce-only.
    """

    step: Decimal | None = None
    min_qty: Decimal | None = None
    max_market_qty: Decimal | None = None
    max_limit_qty: Decimal | None = None


class ExchangePort(Protocol):
    name: str  # "bybit" | "binanceusdm" | ...

    async def load_markets(self) -> None: ...

    async def position_mode(self) -> str:
        """``"one_way"``, ``"hedge"`` or ``"unknown"``. Only one-way accounts can be managed."""

    async def fetch_positions(self, symbols: Sequence[str] | None = None) -> list[ExchangePosition]:
        """Open positions (non-zero size) on the account, optionally only these symbols."""

    async def fetch_quote(self, symbol: str) -> Quote:
        """Best bid, best ask and last price for one symbol (REST)."""

    async def fetch_fills(self, symbol: str, since: datetime, until: datetime) -> list[Fill]:
        """Our fills on ``symbol`` between ``since`` and ``until`` (inclusive), oldest first."""

    async def create_close_order(
        self,
        symbol: str,
        position_side: str,
        qty: Decimal,
        client_order_id: str,
        *,
        limit_price: Decimal | None = None,
        wait_fill: bool = True,
    ) -> OrderResult:
        """Send a reduce-only order that closes ``qty`` of a ``position_side`` position.

        Without ``limit_price`` it is a MARKET order. With ``limit_price`` it is an
        aggressive reduce-only LIMIT order with time-in-force IOC (the fallback when
        the book is too thin for a market order).

        An order the exchange's answer shows still open (Bybit's answer carries no
        status) is looked up a few times until it is final, unless ``wait_fill`` is
        False: then it is returned as it is and the caller settles it (the executor
        does, from the account stream's order events).

        Raises an :mod:`exchanges.errors` exception on failure.
        """

    async def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> OrderResult | None:
        """Look an order up by its client order id; ``None`` if the exchange never saw it."""

    def price_tick(self, symbol: str) -> Decimal | None:
        """The market's price tick, to show prices as the exchange does; None when not known."""

    async def close_limits(self, symbol: str) -> LotLimits:
        """The lot limits of ``symbol`` (optional: a port without it gets no splitting)."""

    async def close(self) -> None: ...
