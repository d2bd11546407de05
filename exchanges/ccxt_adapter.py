"""The exchange port over real ccxt clients (Bybit v5 linear, Binance USD-M).

:class:`CcxtExchange` implements :class:`exchanges.port.ExchangePort` once for every
exchange; what differs between exchanges (endpoints, row formats, which field is the
open time, how an order carries our id, window sizes) is its *dialect*, picked once
when it is built: :mod:`exchanges.bybit` or :mod:`exchanges.binance` (the contract is
:class:`exchanges.dialect.Dialect`). Its methods are trio-native; each ccxt call crosses
into asyncio with ``trio_asyncio.aio_as_trio``, so they must run inside
``service.asyncio_bridge.open_asyncio_loop()`` (the service opens one loop for the
process; tests use the ``aio_loop`` fixture)::

    async with CcxtExchange.create("bybit", rest_url=url, api_key=key, secret=secret) as ex:
        for position in await ex.fetch_positions():
            ...

Guarantees:

* Nothing but :mod:`exchanges.errors` exceptions leaves a method (plus trio's own
  ``Cancelled``): every ccxt exception, and any failure to read a reply, goes through
  :func:`exchanges.classify.classify`. Order creation classifies with
  ``during_order_create=True`` (timeouts and lost replies are *unknown outcomes*).
* Money is :class:`~decimal.Decimal`, read from the exchanges' raw string fields
  (``info``), never through ccxt's floats. Times are timezone-aware UTC.
* Close quantities are rounded *down* to the market's lot size and checked against its
  minimum and maximum order quantity before anything is sent; limit prices are rounded
  to the tick towards the better side (:mod:`exchanges.rounding`; the dialect reads
  the limits from the exchange's raw market list, :meth:`CcxtExchange.close_limits`).
* A rate limit or ban with a known end (HTTP 429/418 ``Retry-After``, Binance "IP
  banned until <ms>", Bybit ``X-Bapi-Limit-Reset-Timestamp``, Bybit HTTP 403 "access
  too frequent": at least 10 minutes) closes a per-exchange gate: until it ends every
  call of this adapter, whoever makes it (executor, detector, the feeds' REST
  polling), fails at once with :class:`~exchanges.errors.RetryableError`
  (``code="banned"``, ``retry_after`` = the time left) without a request
  (:mod:`exchanges.gate`). :meth:`CcxtExchange.ban_state` shows it (``/health``, a metric).
* ``repr()``/``str()`` never show credentials.

Requests are paced by ccxt's ``enableRateLimit`` token bucket, one per client (the
process shares one :class:`CcxtExchange` per exchange); :mod:`exchanges.clients` says
why that is the only rate limiter.

Known limits: one-way position mode only (hedge mode would need ``positionIdx`` /
``positionSide`` on every order). :meth:`CcxtExchange.position_mode` tells which mode
the account is in, and the service refuses to start on a hedge-mode account; a
hedge-mode position that shows up later is not reported by ``fetch_positions``, with
one error logged per symbol and side, because no order this adapter sends could close
it. USDT-settled linear perpetuals only.

Open time. Neither exchange's position row says reliably when *this* position was
opened (the dialects tell why): ``opened_at`` is set only where the row carries a
trustworthy one (Bybit's non-zero ``openTime``), and ``updated_at`` tells the detector
that something changed. The opening itself is found in the fill history
(:meth:`CcxtExchange.fetch_fills`).

A position row that cannot be read (no side, a size or entry price that is not a
positive number, an unknown symbol) is skipped, with one error per symbol.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import trio
import trio_asyncio

from exchanges import rounding
from exchanges.binance import BinanceDialect
from exchanges.bybit import BybitDialect
from exchanges.classify import classify, is_order_not_found
from exchanges.clients import make_ccxt_client
from exchanges.dialect import Dialect
from exchanges.errors import ExchangeError, NonRetryableError, RetryableError
from exchanges.gate import RequestGate
from exchanges.port import ExchangePosition, Fill, LotLimits, OrderResult, Quote
from exchanges.raw import dec, dt_ms, header
from exchanges.symbols import exchange_symbol_id

__all__ = ["CcxtExchange"]

log = logging.getLogger("exchanges.ccxt")


class CcxtExchange:
    """:class:`~exchanges.port.ExchangePort` over a ccxt async client.

    Build it with :meth:`create` (which makes the client via
    :func:`exchanges.clients.make_ccxt_client`) or pass a ready ``client``. ``name``
    picks the dialect (``"bybit"`` or ``"binanceusdm"``; anything else is a
    ``ValueError``); :attr:`dialect` is it.

    ``fill_poll_attempts`` / ``fill_poll_interval``: after a create whose reply does not
    carry the final fill (Bybit always; Binance when the MARKET order comes back NEW),
    the order is looked up by client id up to that many times, ``interval * n`` apart,
    until it is no longer open. If the fill is still unknown after that, the result
    has ``status="open"``: look it up again later with :meth:`fetch_order_by_client_id`.
    """

    DIALECTS: dict[str, type[Dialect]] = {d.name: d for d in (BybitDialect, BinanceDialect)}

    def __init__(
        self,
        name: str,
        client: Any,
        *,
        rest_url: str | None = None,
        fill_poll_attempts: int = 5,
        fill_poll_interval: float = 0.05,
    ):
        if name not in self.DIALECTS:
            raise ValueError(f"unsupported exchange {name!r}")
        self.dialect: Dialect = self.DIALECTS[name](client, request=self._aio)
        self.name = name
        self._client = client
        self._rest_url = rest_url
        self._fill_poll_attempts = max(0, int(fill_poll_attempts))
        self._fill_poll_interval = float(fill_poll_interval)
        self._swap_symbols: frozenset[str] | None = None
        self._markets_lock = trio.Lock()
        self._last_reload: float | None = None
        self.market_reload_interval = 30.0
        self._gate = RequestGate(name)

    @classmethod
    def create(
        cls,
        name: str,
        *,
        rest_url: str | None = None,
        api_key: str | None = None,
        secret: str | None = None,
        timeout_ms: int = 10000,
        **kw: Any,
    ) -> CcxtExchange:
        client = make_ccxt_client(name, rest_url=rest_url, api_key=api_key, secret=secret, timeout_ms=timeout_ms)
        return cls(name, client, rest_url=rest_url, **kw)

    # -- presentation: never show credentials ---------------------------------------

    def __repr__(self) -> str:
        authenticated = bool(getattr(self._client, "apiKey", None))
        return f"CcxtExchange(name={self.name!r}, rest_url={self._rest_url!r}, authenticated={authenticated})"

    __str__ = __repr__

    # -- plumbing -------------------------------------------------------------------

    async def _aio(self, fn: Any, *args: Any) -> Any:
        """Run an asyncio coroutine function from trio (every exchange request passes here)."""
        self._gate.check()
        return await trio_asyncio.aio_as_trio(fn)(*args)

    # -- the rate-limit / ban gate (exchanges.gate) ------------------------------------

    def ban_remaining(self) -> float:
        """Seconds until requests may be sent again (0 when the gate is open)."""
        return self._gate.remaining()

    def ban_state(self) -> dict | None:
        """``None``, or what ``/health`` shows while the gate is closed."""
        return self._gate.state()

    @property
    def bans(self) -> int:
        """How many times the gate closed."""
        return self._gate.closings

    def _close_gate(self, err: ExchangeError) -> None:
        self._gate.close(err)

    def _retry_after_hint(self) -> float | None:
        headers = getattr(self._client, "last_response_headers", None)
        value = header(headers, "Retry-After")
        if value is not None:
            seconds = dec(value)
            if seconds is not None and seconds >= 0:
                return float(seconds)
        return self.dialect.ban_hint(headers)

    @contextmanager
    def _errors(self, *, during_create: bool = False) -> Iterator[None]:
        """Convert anything but a port error into one (trio.Cancelled passes through)."""
        try:
            yield
        except ExchangeError:
            raise
        except Exception as exc:
            hint = None
            try:
                import ccxt

                if isinstance(exc, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)):
                    hint = self._retry_after_hint()
            except Exception:  # pragma: no cover - a hint is optional
                hint = None
            err = classify(exc, during_order_create=during_create, exchange=self.name, retry_after=hint)
            self._close_gate(err)
            raise err from exc

    async def _ensure_markets(self, symbols: Sequence[str] | None = None) -> None:
        """Load markets once; reload when asked about a symbol not listed yet.

        Exchanges list new markets all the time, and a trading bot may open a position on
        one after we loaded the list. A reload for an unknown symbol happens at most once
        per ``market_reload_interval`` seconds.
        """
        if self._swap_symbols is None:
            await self._load_markets(only_if_missing=True)
            return
        if symbols and any(s not in self._swap_symbols for s in symbols):
            now = trio.current_time()
            if self._last_reload is None or now - self._last_reload >= self.market_reload_interval:
                self._last_reload = now
                await self._load_markets(only_if_missing=False)

    def _market(self, symbol: str) -> dict:
        if self._swap_symbols is None or symbol not in self._swap_symbols:
            raise NonRetryableError(
                f"{self.name}: {symbol!r} is not a linear perpetual market here",
                exchange=self.name,
                code="bad_symbol",
            )
        return self._client.market(symbol)

    # -- port -----------------------------------------------------------------------

    async def load_markets(self) -> None:
        """(Re)load the market list; only linear USDT perpetuals are kept."""
        await self._load_markets(only_if_missing=False)

    async def _load_markets(self, *, only_if_missing: bool) -> None:
        async with self._markets_lock:
            if only_if_missing and self._swap_symbols is not None:
                return  # another task loaded them while we waited
            with self._errors():
                markets = await self._aio(self._client.load_markets, True)
                swap = {
                    symbol
                    for symbol, m in (markets or {}).items()
                    if m.get("swap") and m.get("linear") and m.get("settle") in (None, "USDT")
                }
            self._swap_symbols = frozenset(swap)

    def price_tick(self, symbol: str) -> Decimal | None:
        """The market's price tick from the loaded markets (for display); None when not known."""
        from ccxt.base.decimal_to_precision import DECIMAL_PLACES

        try:
            market = self._client.market(symbol)
        except Exception:  # noqa: BLE001 - markets not loaded, unknown symbol: no tick
            return None
        raw = (market.get("precision") or {}).get("price")
        if getattr(self._client, "precisionMode", None) == DECIMAL_PLACES and raw is not None:
            try:
                return Decimal(1).scaleb(-int(raw))
            except (TypeError, ValueError):
                return None
        tick = dec(raw)
        return tick if tick is not None and tick > 0 else None

    @property
    def symbols(self) -> frozenset[str]:
        """Linear perpetual symbols known after :meth:`load_markets` (empty before)."""
        return self._swap_symbols or frozenset()

    async def fetch_positions(self, symbols: Sequence[str] | None = None) -> list[ExchangePosition]:
        await self._ensure_markets(symbols)
        wanted = set(symbols) if symbols is not None else None
        if wanted is not None and not wanted:
            return []
        with self._errors():
            symbol_id = self._market(next(iter(wanted)))["id"] if wanted is not None and len(wanted) == 1 else None
            rows = await self.dialect.position_rows(symbol_id)
            positions = [p for p in map(self.dialect.parse_position, rows) if p is not None]
        if wanted is not None:
            positions = [p for p in positions if p.symbol in wanted]
        return positions

    async def position_mode(self) -> str:
        """The account's position mode: ``"one_way"``, ``"hedge"``, or ``"unknown"``.

        Open positions tell first (Binance ``positionSide`` BOTH is one-way, LONG/SHORT
        hedge; Bybit ``positionIdx`` 0 is one-way, 1 and 2 hedge). With none open, Binance
        is asked (``GET /fapi/v1/positionSide/dual``; it weighs 30 against the request
        budget, so ccxt holds the next call back about 1.5 s, harmless when there is
        nothing to watch). Bybit has no such call, so a flat Bybit account is ``"unknown"``.
        """
        with self._errors():
            return await self.dialect.position_mode()

    async def fetch_fills(self, symbol: str, since: datetime, until: datetime) -> list[Fill]:
        """Our account's fills on ``symbol`` between ``since`` and ``until``, oldest first.

        Binance ``GET /fapi/v1/userTrades`` and Bybit ``GET /v5/execution/list`` both
        answer at most 7 days per request, so the span is walked in 7-day windows. Bybit
        pages by cursor; a Binance window that comes back full (1,000 rows) is split in
        halves. Bybit funding rows (``execType`` Funding) move no position and are left
        out; every other execution type (trades, liquidations, ADL, block trades) is kept.
        """
        await self._ensure_markets([symbol])
        try:
            market_id = self._market(symbol)["id"]
        except NonRetryableError:
            # A symbol the position list names but the market list does not know yet (a
            # listing newer than our last reload): linear ids on both are BASE + QUOTE.
            market_id = exchange_symbol_id(symbol)
        start, end = dt_ms(since), dt_ms(until)
        fills: list[Fill] = []
        with self._errors():
            lo = start
            while lo <= end:
                hi = min(end, lo + self.dialect.fill_window_ms - 1)
                fills.extend(await self.dialect.fills(market_id, lo, hi))
                lo = hi + 1
        # Each window's fills come oldest first; windows are walked oldest first. A stable
        # sort by time keeps the exchange's own order for fills of the same millisecond.
        unique = {f.fill_id: f for f in fills if f is not None}
        return sorted(unique.values(), key=lambda f: f.time)

    async def fetch_quote(self, symbol: str) -> Quote:
        await self._ensure_markets([symbol])
        market = self._market(symbol)
        with self._errors():
            return await self.dialect.quote(symbol, market["id"])

    # -- orders ---------------------------------------------------------------------

    async def close_limits(self, symbol: str) -> LotLimits:
        """The lot limits of ``symbol`` from the exchange's own market list (raw strings)."""
        await self._ensure_markets([symbol])
        return self.dialect.lot_limits(self._market(symbol))

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
        if position_side not in ("long", "short"):
            raise NonRetryableError(
                f"position_side must be 'long' or 'short', not {position_side!r}", exchange=self.name
            )
        if not isinstance(qty, Decimal) or not qty.is_finite() or qty <= 0:
            raise NonRetryableError(f"close qty must be a positive Decimal, not {qty!r}", exchange=self.name)
        if not client_order_id:
            raise NonRetryableError("a client order id is required", exchange=self.name)
        if limit_price is not None and (
            not isinstance(limit_price, Decimal) or not limit_price.is_finite() or limit_price <= 0
        ):
            raise NonRetryableError(f"limit_price must be a positive Decimal, not {limit_price!r}", exchange=self.name)
        await self._ensure_markets([symbol])
        market = self._market(symbol)
        order_side = "sell" if position_side == "long" else "buy"
        amount = rounding.close_quantity(
            self.name,
            symbol,
            qty,
            self.dialect.lot_limits(market),
            limit=limit_price is not None,
            fallback_step=dec(market["precision"]["amount"]),
        )
        params: dict[str, Any] = {"reduceOnly": True, **self.dialect.tag_order(client_order_id)}
        if limit_price is None:
            order_type, price = "market", None
        else:
            order_type = "limit"
            price = rounding.limit_price(self.name, limit_price, dec(market["precision"].get("price")), order_side)
            params["timeInForce"] = "IOC"

        with self._errors(during_create=True):
            order = await self._aio(self._client.create_order, symbol, order_type, order_side, amount, price, params)
            initial = self.dialect.created_order(order, client_order_id, Decimal(amount))

        if initial.status != "open" or not wait_fill:
            return initial  # not waiting: the caller settles an open order (the account stream)
        return await self._await_fill(symbol, client_order_id, initial)

    async def _await_fill(self, symbol: str, client_order_id: str, initial: OrderResult) -> OrderResult:
        """Follow a just-created order until it is no longer open (bounded)."""
        best = initial
        for attempt in range(self._fill_poll_attempts):
            if attempt:
                await trio.sleep(self._fill_poll_interval * attempt)
            try:
                found = await self.fetch_order_by_client_id(symbol, client_order_id)
            except ExchangeError:
                return best  # the order exists; its fill is simply not known yet
            if found is None:
                continue  # not indexed yet
            if found.requested_qty is None:
                found = OrderResult(
                    client_order_id=found.client_order_id,
                    exchange_order_id=found.exchange_order_id,
                    status=found.status,
                    filled_qty=found.filled_qty,
                    avg_price=found.avg_price,
                    requested_qty=initial.requested_qty,
                )
            best = found
            if found.status != "open":
                return found
        return best

    async def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> OrderResult | None:
        await self._ensure_markets([symbol])
        market = self._market(symbol)
        with self._errors():
            try:
                return await self.dialect.order_by_client_id(market["id"], client_order_id)
            except Exception as exc:
                if is_order_not_found(exc, self.name):
                    return None
                raise

    async def create_listen_key(self) -> str:
        """Binance USDⓈ-M ``POST /fapi/v1/listenKey``: the key of the account's user-data
        stream (the same key again, extended, while one is valid)."""
        with self._errors():
            answer = await self._aio(self._client.fapiPrivatePostListenKey, {})
        key = answer.get("listenKey") if isinstance(answer, dict) else None
        if not isinstance(key, str) or not key.strip():
            raise RetryableError(f"{self.name}: no listenKey in the answer {str(answer)[:200]!r}", exchange=self.name)
        return key

    async def keep_alive_listen_key(self) -> None:
        """Binance USDⓈ-M ``PUT /fapi/v1/listenKey``: keep the user-data stream's key valid
        for 60 more minutes (-1125 once it expired)."""
        with self._errors():
            await self._aio(self._client.fapiPrivatePutListenKey, {})

    async def close(self) -> None:
        try:
            await self._aio(self._client.close)
        except Exception:  # closing must not fail the caller's shutdown
            pass

    async def __aenter__(self) -> CcxtExchange:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
