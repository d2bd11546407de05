"""What differs between exchanges behind the ccxt adapter: the dialect contract.

:class:`exchanges.ccxt_adapter.CcxtExchange` is the same for every exchange: the
rate-limit / ban gate, error mapping, the market list, lot-size and tick rounding, the
close procedure. Everything the exchanges do differently lives in one *dialect* per
exchange, picked by name once when the adapter is built (``CcxtExchange.DIALECTS``):

* :mod:`exchanges.bybit` - Bybit v5, ``category=linear``;
* :mod:`exchanges.binance` - Binance USD-M futures.

A dialect knows its exchange's raw endpoints (ccxt's implicit methods such as
``privateGetV5ExecutionList`` or ``fapiPrivateGetUserTrades``), how their rows read
(which field is the size, the entry price, the time of a change), how an order is
tagged with our client order id, and the exchange's limits (page sizes, time windows).
It sends every request through the ``request`` function the adapter hands it, so the
adapter's gate and error mapping cover every call::

    dialect = BybitDialect(client, request=adapter_request)
    rows = await dialect.position_rows(symbol_id=None)
    positions = [p for p in map(dialect.parse_position, rows) if p is not None]

Row parsers never raise on a bad row: they return ``None`` and log it (once per symbol
for position rows, so a poll loop does not flood the log).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, ClassVar

from exchanges.port import FILL_HISTORY_WINDOW, ExchangePosition, Fill, LotLimits, OrderResult, Quote
from exchanges.raw import dec, ms_to_dt, price
from exchanges.symbols import unified_symbol

__all__ = ["Dialect", "Request"]

log = logging.getLogger("exchanges.ccxt")

Request = Callable[..., Awaitable[Any]]
"""``await request(fn, *args)``: one exchange request through the adapter's gate."""

FILL_WINDOW_MS = int(FILL_HISTORY_WINDOW.total_seconds() * 1000)


class Dialect:
    """One exchange's endpoints, row formats and quirks, over a ccxt client.

    Subclasses set :attr:`name` and implement the methods that raise
    ``NotImplementedError`` here. The shared parts (symbol ids, reporting a row that
    cannot be managed) are here.
    """

    name: ClassVar[str]
    fill_window_ms: ClassVar[int] = FILL_WINDOW_MS
    """The longest span one fill-history request may cover (the adapter walks windows)."""

    def __init__(self, client: Any, *, request: Request):
        self._client = client
        self._request = request
        self._hedge_rows_reported: set[tuple[str, str]] = set()
        self._bad_rows_reported: set[str] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- positions -------------------------------------------------------------------

    async def position_rows(self, symbol_id: str | None) -> list[dict]:
        """The raw open-position rows: of one market (its exchange id), or all of them."""
        raise NotImplementedError

    def parse_position(self, row: dict) -> ExchangePosition | None:
        """One raw position row; None when flat, in hedge mode or unreadable."""
        raise NotImplementedError

    async def position_mode(self) -> str:
        """``"one_way"``, ``"hedge"`` or ``"unknown"``."""
        raise NotImplementedError

    # -- fills and prices ------------------------------------------------------------

    async def fills(self, symbol_id: str, start_ms: int, end_ms: int) -> list[Fill]:
        """Our fills in one window (at most :attr:`fill_window_ms`), oldest first."""
        raise NotImplementedError

    def parse_fill(self, row: dict) -> Fill | None:
        """One raw execution row; None (logged) when it cannot be read."""
        raise NotImplementedError

    async def quote(self, symbol: str, symbol_id: str) -> Quote:
        """Best bid, best ask and last price over REST."""
        raise NotImplementedError

    def lot_limits(self, market: dict) -> LotLimits:
        """Lot limits from a ccxt market's raw exchange entry (``market["info"]``)."""
        raise NotImplementedError

    # -- orders ----------------------------------------------------------------------

    def tag_order(self, client_order_id: str) -> dict[str, Any]:
        """The ccxt ``create_order`` params that carry our client order id."""
        raise NotImplementedError

    def created_order(self, order: dict, client_order_id: str, requested: Decimal) -> OrderResult:
        """What the create reply (ccxt's order, raw reply in ``info``) says; ``"open"`` means look it up."""
        raise NotImplementedError

    async def order_by_client_id(self, symbol_id: str, client_order_id: str) -> OrderResult | None:
        """Look an order up by client order id; None if not found (an exchange 'not found' may also raise)."""
        raise NotImplementedError

    def ban_hint(self, headers: Any) -> float | None:
        """Seconds until a rate limit ends, from an exchange-specific reply header; None when not told."""
        return None

    # -- shared row reading ----------------------------------------------------------

    def _parse_fill(
        self, row: dict, id_key: str, time_key: str, qty_key: str, price_key: str, client_key: str | None
    ) -> Fill | None:
        side = str(row.get("side") or "").lower()
        qty, at_price, at = dec(row.get(qty_key)), price(row.get(price_key)), ms_to_dt(row.get(time_key))
        if side not in ("buy", "sell") or qty is None or qty <= 0 or at_price is None or at is None:
            log.error("%s: fill row skipped (cannot read side, quantity, price or time): %r", self.name, row)
            return None
        return Fill(
            fill_id=str(row.get(id_key)),
            time=at,
            side=side,
            qty=qty,
            price=at_price,
            client_order_id=(str(row.get(client_key)) or None) if client_key else None,
        )

    def _unified_from_id(self, market_id: str) -> str | None:
        by_id = getattr(self._client, "markets_by_id", None) or {}
        candidates = by_id.get(market_id) or []
        if isinstance(candidates, dict):
            candidates = [candidates]
        for market in candidates:
            if market.get("swap") and market.get("linear", True):
                return market["symbol"]
        if candidates:
            return None  # a market we know, but not a linear perpetual: not ours
        try:
            return unified_symbol(market_id)
        except ValueError:
            return None

    def _hedge_row(self, symbol_id: str, side: str) -> None:
        if (symbol_id, side) not in self._hedge_rows_reported:
            self._hedge_rows_reported.add((symbol_id, side))
            log.error(
                "%s: %s %s is a hedge-mode position; only one-way mode is supported, so it is not "
                "managed (switch the account to one-way mode to have it managed)",
                self.name,
                symbol_id,
                side,
            )

    def _bad_row(self, symbol_id: Any, why: str) -> None:
        key = str(symbol_id)
        if key not in self._bad_rows_reported:
            self._bad_rows_reported.add(key)
            log.error("%s: position row for %s skipped: %s", self.name, key, why)

    def _row_read(self, symbol_id: Any) -> None:
        """A row of ``symbol_id`` was read again: a later bad row is reported anew."""
        self._bad_rows_reported.discard(str(symbol_id))
