"""The exchange port over real ccxt clients (Bybit v5 linear, Binance USD-M).

:class:`CcxtExchange` implements :class:`exchanges.port.ExchangePort`. Its methods are
trio-native; each ccxt call crosses into asyncio with ``trio_asyncio.aio_as_trio``, so
they must run inside ``service.asyncio_bridge.open_asyncio_loop()`` (the service opens one loop for the
process; tests use the ``aio_loop`` fixture).

Guarantees:

* Nothing but :mod:`exchanges.errors` exceptions leaves a method (plus trio's own
  ``Cancelled``): every ccxt exception, and any failure to read a reply, goes through
  :func:`exchanges.classify.classify`. Order creation classifies with
  ``during_order_create=True`` (timeouts and lost replies are *unknown outcomes*).
* Money is :class:`~decimal.Decimal`, read from the exchanges' raw string fields
  (``info``), never through ccxt's floats. Times are timezone-aware UTC.
* Close quantities are rounded *down* to the market's lot size (never close more than
  asked) and checked against the market's minimum order quantity and its maximum
  MARKET / LIMIT order quantity before anything is sent (:meth:`CcxtExchange.close_limits`
  reads them from the raw market list: Binance ``exchangeInfo`` filters ``LOT_SIZE`` /
  ``MARKET_LOT_SIZE``, Bybit ``instruments-info`` ``lotSizeFilter`` ``qtyStep`` /
  ``minOrderQty`` / ``maxOrderQty`` / ``maxMktOrderQty``). The minimum notional
  (Binance ``MIN_NOTIONAL``, Bybit ``minNotionalValue``) is not checked: both exchanges
  exempt reduce-only / closing orders from it (Binance -4164 "Order's notional must be no
  smaller than 5 (unless you choose reduce only)"; Bybit "Derivatives Trading Rules":
  closing orders are exempt from the minimum notional value but not the minimum size).
  Limit prices are rounded to the tick towards the *better* side (a sell up, a buy
  down): the price asked is the worst the caller accepts, so rounding never goes past it.
* A rate limit or ban with a known end (HTTP 429/418 ``Retry-After``, Binance "IP
  banned until <ms>", Bybit ``X-Bapi-Limit-Reset-Timestamp``, Bybit HTTP 403 "access
  too frequent": at least 10 minutes) closes a per-exchange gate: until it ends every
  call of this adapter, whoever makes it (executor, detector, the feeds' REST
  polling), fails at once with :class:`~exchanges.errors.RetryableError`
  (``code="banned"``, ``retry_after`` = the time left) without a request.
  :meth:`CcxtExchange.ban_state` shows it (``/health``, a metric).
* ``repr()``/``str()`` never show credentials.

Endpoints used (after ``load_markets``):

=================  ====================================  ===================================
call               Bybit v5 (category=linear)            Binance USD-M
=================  ====================================  ===================================
markets            /v5/market/instruments-info           /fapi/v1/exchangeInfo (swap only)
positions          /v5/position/list (cursor pages)      /fapi/v3/positionRisk
quote              /v5/market/tickers                    /fapi/v1/ticker/bookTicker +
                                                         /fapi/v1/ticker/price
close order        POST /v5/order/create (orderLinkId)   POST /fapi/v1/order
                   + lookup for the fill                 (newClientOrderId,
                                                         newOrderRespType=RESULT; a NEW
                                                         reply is followed by lookups)
lookup by id       /v5/order/realtime, then              GET /fapi/v1/order
                   /v5/order/history (orderLinkId)       (origClientOrderId; -2013 → None)
=================  ====================================  ===================================

Rate limiting is ccxt's ``enableRateLimit`` token bucket, one per client (the process
shares one :class:`CcxtExchange` per exchange).

Known limits: one-way position mode only (hedge mode would need ``positionIdx`` /
``positionSide`` on every order). :meth:`CcxtExchange.position_mode` tells which mode
the account is in, and the service refuses to start on a hedge-mode account; a
hedge-mode position that shows up later (Binance ``positionSide`` LONG/SHORT, Bybit
``positionIdx`` 1/2) is not reported by ``fetch_positions``, with one error logged per
symbol and side, because no order this adapter sends could close it.
USDT-settled linear perpetuals only.

Open time. Neither exchange's position row says reliably when *this* position was
opened. Bybit's ``createdTime`` is the first time a position was ever created on the
symbol (v5 docs, "Get Position Info") and Binance's ``updateTime`` moves on every
change; neither is used as an open time. ``opened_at`` is Bybit's ``openTime`` when
the row carries a non-zero one, else ``None``; ``updated_at`` (Bybit ``updatedTime``,
Binance ``updateTime``) tells the detector that something changed. The opening
itself is found in the fill history (:meth:`CcxtExchange.fetch_fills`).

A position row that cannot be read (no side, a size or entry price that is not a
positive number, an unknown symbol) is skipped, with one error per symbol.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, Iterator, Sequence

import trio
import trio_asyncio

from exchanges.classify import classify, is_order_not_found
from exchanges.clients import make_ccxt_client
from exchanges.errors import ExchangeError, NonRetryableError, RetryableError
from exchanges.port import ExchangePosition, Fill, LotLimits, OrderResult, Quote
from exchanges.symbols import exchange_symbol_id, unified_symbol

__all__ = ["CcxtExchange"]

log = logging.getLogger("exchanges.ccxt")

_BYBIT_STATUS = {
    "New": "open",
    "PartiallyFilled": "open",
    "Untriggered": "open",
    "Triggered": "open",
    "Created": "open",
    "Filled": "closed",
    "Cancelled": "canceled",
    "PartiallyFilledCanceled": "canceled",
    "Deactivated": "canceled",
    "Rejected": "rejected",
}

_BINANCE_STATUS = {
    "NEW": "open",
    "PARTIALLY_FILLED": "open",
    "FILLED": "closed",
    "CANCELED": "canceled",
    "EXPIRED": "canceled",
    "EXPIRED_IN_MATCH": "canceled",
    "REJECTED": "rejected",
}

_MAX_POSITION_PAGES = 50
_MAX_FILL_PAGES = 200
_FILL_WINDOW_MS = 7 * 24 * 3600 * 1000  # both exchanges answer at most 7 days per request


def _dec(value: Any) -> Decimal | None:
    """Decimal from an exchange string/number; None for missing/empty."""
    if value is None:
        return None
    if isinstance(value, float):
        value = str(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        result = Decimal(text)
    except InvalidOperation:
        return None
    if not result.is_finite():
        return None
    return result


def _price(value: Any) -> Decimal | None:
    """A price: None when missing or not positive (an empty book side reads as 0)."""
    result = _dec(value)
    if result is None or result <= 0:
        return None
    return result


def _ms_to_dt(value: Any) -> datetime | None:
    ms = _dec(value)
    if ms is None or ms <= 0:
        return None
    return datetime.fromtimestamp(float(ms) / 1000.0, tz=timezone.utc)


def _dt_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _header(headers: Any, name: str) -> str | None:
    if not isinstance(headers, dict):
        return None
    low = name.lower()
    for k, v in headers.items():
        if str(k).lower() == low:
            return str(v)
    return None


class CcxtExchange:
    """:class:`~exchanges.port.ExchangePort` over a ccxt async client.

    Build it with :meth:`create` (which makes the client via
    :func:`exchanges.clients.make_ccxt_client`) or pass a ready ``client``.

    ``fill_poll_attempts`` / ``fill_poll_interval``: after a create whose reply does not
    carry the final fill (Bybit always; Binance when the MARKET order comes back NEW),
    the order is looked up by client id up to that many times, ``interval * n`` apart,
    until it is no longer open. If the fill is still unknown after that, the result
    has ``status="open"``: look it up again later with :meth:`fetch_order_by_client_id`.
    """

    def __init__(
        self,
        name: str,
        client: Any,
        *,
        rest_url: str | None = None,
        fill_poll_attempts: int = 5,
        fill_poll_interval: float = 0.05,
    ):
        if name not in ("bybit", "binanceusdm"):
            raise ValueError(f"unsupported exchange {name!r}")
        self.name = name
        self._client = client
        self._rest_url = rest_url
        self._fill_poll_attempts = max(0, int(fill_poll_attempts))
        self._fill_poll_interval = float(fill_poll_interval)
        self._swap_symbols: frozenset[str] | None = None
        self._markets_lock = trio.Lock()
        self._hedge_rows_reported: set[tuple[str, str]] = set()
        self._bad_rows_reported: set[str] = set()
        self._last_reload: float | None = None
        self.market_reload_interval = 30.0
        # The per-exchange gate: no request before this trio time (a rate limit or ban).
        self._banned_until: float | None = None
        self._ban_reason: str | None = None
        self.bans = 0  # how many times the gate closed

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
    ) -> "CcxtExchange":
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
        self._check_gate()
        return await trio_asyncio.aio_as_trio(fn)(*args)

    # -- the rate-limit / ban gate -----------------------------------------------------

    def ban_remaining(self) -> float:
        """Seconds until requests may be sent again (0 when the gate is open)."""
        if self._banned_until is None:
            return 0.0
        left = self._banned_until - trio.current_time()
        if left <= 0:
            self._banned_until = None
            return 0.0
        return left

    def ban_state(self) -> dict | None:
        """``None``, or what ``/health`` shows while the gate is closed."""
        left = self.ban_remaining()
        if left <= 0:
            return None
        until = datetime.now(timezone.utc).timestamp() + left
        return {"seconds_left": round(left, 3),
                "until": datetime.fromtimestamp(until, tz=timezone.utc).isoformat(timespec="seconds"),
                "reason": self._ban_reason}

    def _check_gate(self) -> None:
        left = self.ban_remaining()
        if left > 0:
            raise RetryableError(f"{self.name}: requests held back for {left:.1f}s more ({self._ban_reason})",
                                 exchange=self.name, code="banned", retry_after=left)

    def _close_gate(self, err: ExchangeError) -> None:
        seconds = getattr(err, "retry_after", None)
        if not isinstance(err, RetryableError) or seconds is None or seconds <= 0:
            return
        until = trio.current_time() + float(seconds)
        if self._banned_until is None or until > self._banned_until:
            if self._banned_until is None:
                self.bans += 1
            self._banned_until = until
            self._ban_reason = f"{err.code or type(err).__name__}: {str(err)[:200]}"
            log.warning("%s: rate limit / ban: no request for %.1fs (%s)", self.name, seconds, self._ban_reason)

    def _retry_after_hint(self) -> float | None:
        headers = getattr(self._client, "last_response_headers", None)
        value = _header(headers, "Retry-After")
        if value is not None:
            seconds = _dec(value)
            if seconds is not None and seconds >= 0:
                return float(seconds)
        reset = _header(headers, "X-Bapi-Limit-Reset-Timestamp")
        if reset is not None:
            at = _ms_to_dt(reset)
            if at is not None:
                return max(0.0, (at - datetime.now(timezone.utc)).total_seconds())
        return None

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
        tick = _dec(raw)
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
            if self.name == "bybit":
                rows = await self._bybit_position_rows(wanted)
                positions = [p for p in (self._parse_bybit_position(r) for r in rows) if p is not None]
            else:
                params: dict[str, Any] = {}
                if wanted is not None and len(wanted) == 1:
                    params["symbol"] = self._market(next(iter(wanted)))["id"]
                rows = await self._aio(self._client.fapiPrivateV3GetPositionRisk, params)
                positions = [p for p in (self._parse_binance_position(r) for r in rows or []) if p is not None]
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
            if self.name == "bybit":
                rows = await self._bybit_position_rows(None)
                if not rows:
                    return "unknown"
                return "hedge" if any(str(r.get("positionIdx") or "0") in ("1", "2") for r in rows) else "one_way"
            rows = await self._aio(self._client.fapiPrivateV3GetPositionRisk, {})
            sides = {str(r.get("positionSide") or "BOTH").upper() for r in rows or [] if _dec(r.get("positionAmt"))}
            if sides:
                return "one_way" if sides == {"BOTH"} else "hedge"
            reply = await self._aio(self._client.fapiPrivateGetPositionSideDual)
        dual = (reply or {}).get("dualSidePosition")
        return "hedge" if dual is True or str(dual).lower() == "true" else "one_way"

    def _hedge_row(self, symbol_id: str, side: str) -> None:
        if (symbol_id, side) not in self._hedge_rows_reported:
            self._hedge_rows_reported.add((symbol_id, side))
            log.error("%s: %s %s is a hedge-mode position; only one-way mode is supported, so it is not "
                      "managed (switch the account to one-way mode to have it managed)", self.name, symbol_id, side)

    async def _bybit_position_rows(self, wanted: set[str] | None) -> list[dict]:
        base: dict[str, Any] = {"category": "linear", "limit": 200}
        if wanted is not None and len(wanted) == 1:
            base["symbol"] = self._market(next(iter(wanted)))["id"]
        else:
            base["settleCoin"] = "USDT"
        rows: list[dict] = []
        cursor: str | None = None
        seen_cursors: set[str] = set()
        for _ in range(_MAX_POSITION_PAGES):
            params = dict(base)
            if cursor:
                params["cursor"] = cursor
            response = await self._aio(self._client.privateGetV5PositionList, params)
            result = (response or {}).get("result") or {}
            page = result.get("list") or []
            rows.extend(page)
            cursor = result.get("nextPageCursor") or None
            if not cursor or not page or cursor in seen_cursors:
                break
            seen_cursors.add(cursor)
        return rows

    def _parse_bybit_position(self, row: dict) -> ExchangePosition | None:
        qty = _dec(row.get("size"))
        if qty is None or qty == 0:
            return None
        side_raw = str(row.get("side") or "")
        if side_raw == "Buy":
            side = "long"
        elif side_raw == "Sell":
            side = "short"
        else:
            return None
        if str(row.get("positionIdx") or "0") in ("1", "2"):
            self._hedge_row(str(row.get("symbol")), side)
            return None
        symbol = self._unified_from_id(str(row.get("symbol") or ""))
        if symbol is None:
            return self._bad_row(row.get("symbol"), "unknown symbol")
        entry = _price(row.get("avgPrice")) or _price(row.get("entryPrice"))
        if entry is None:
            return self._bad_row(row.get("symbol"), f"entry price {row.get('avgPrice')!r} is not a positive number")
        self._bad_rows_reported.discard(str(row.get("symbol")))
        return ExchangePosition(
            exchange=self.name,
            symbol=symbol,
            side=side,
            qty=abs(qty),
            entry_price=entry,
            opened_at=_ms_to_dt(row.get("openTime")),  # 0 or absent: unknown (never createdTime)
            updated_at=_ms_to_dt(row.get("updatedTime")),
        )

    def _parse_binance_position(self, row: dict) -> ExchangePosition | None:
        amount = _dec(row.get("positionAmt"))
        if amount is None or amount == 0:
            return None
        side = "long" if amount > 0 else "short"
        if str(row.get("positionSide") or "BOTH").upper() != "BOTH":
            self._hedge_row(str(row.get("symbol")), str(row.get("positionSide")).lower())
            return None
        symbol = self._unified_from_id(str(row.get("symbol") or ""))
        if symbol is None:
            return self._bad_row(row.get("symbol"), "unknown symbol")
        entry = _price(row.get("entryPrice"))
        if entry is None:
            return self._bad_row(row.get("symbol"), f"entry price {row.get('entryPrice')!r} is not a positive number")
        self._bad_rows_reported.discard(str(row.get("symbol")))
        return ExchangePosition(
            exchange=self.name,
            symbol=symbol,
            side=side,
            qty=abs(amount),
            entry_price=entry,
            opened_at=None,  # Binance does not report when a position was opened
            updated_at=_ms_to_dt(row.get("updateTime")),
        )

    def _bad_row(self, symbol_id: Any, why: str) -> None:
        key = str(symbol_id)
        if key not in self._bad_rows_reported:
            self._bad_rows_reported.add(key)
            log.error("%s: position row for %s skipped: %s", self.name, key, why)
        return None

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
        start, end = _dt_ms(since), _dt_ms(until)
        fills: list[Fill] = []
        with self._errors():
            lo = start
            while lo <= end:
                hi = min(end, lo + _FILL_WINDOW_MS - 1)
                if self.name == "bybit":
                    fills.extend(await self._bybit_fills(market_id, lo, hi))
                else:
                    fills.extend(await self._binance_fills(market_id, lo, hi))
                lo = hi + 1
        # Each window's fills come oldest first; windows are walked oldest first. A stable
        # sort by time keeps the exchange's own order for fills of the same millisecond.
        unique = {f.fill_id: f for f in fills if f is not None}
        return sorted(unique.values(), key=lambda f: f.time)

    async def _bybit_fills(self, market_id: str, lo: int, hi: int) -> list[Fill]:
        out: list[Fill] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_FILL_PAGES):
            params: dict[str, Any] = {"category": "linear", "symbol": market_id, "startTime": lo, "endTime": hi,
                                      "limit": 100}
            if cursor:
                params["cursor"] = cursor
            response = await self._aio(self._client.privateGetV5ExecutionList, params)
            result = (response or {}).get("result") or {}
            page = result.get("list") or []
            for row in page:
                if str(row.get("execType") or "Trade") == "Funding":
                    continue
                out.append(self._parse_fill(row, "execId", "execTime", "execQty", "execPrice", "orderLinkId"))
            cursor = result.get("nextPageCursor") or None
            if not cursor or not page or cursor in seen:
                break
            seen.add(cursor)
        out.reverse()  # Bybit answers newest first (execTime, then seq)
        return [f for f in out if f is not None]

    async def _binance_fills(self, market_id: str, lo: int, hi: int, depth: int = 0) -> list[Fill]:
        rows = await self._aio(self._client.fapiPrivateGetUserTrades,
                               {"symbol": market_id, "startTime": lo, "endTime": hi, "limit": 1000})
        rows = rows or []
        if len(rows) >= 1000 and hi > lo and depth < 20:
            mid = (lo + hi) // 2
            return (await self._binance_fills(market_id, lo, mid, depth + 1)
                    + await self._binance_fills(market_id, mid + 1, hi, depth + 1))
        return [f for f in (self._parse_fill(r, "id", "time", "qty", "price", None) for r in rows) if f is not None]

    def _parse_fill(self, row: dict, id_key: str, time_key: str, qty_key: str, price_key: str,
                    client_key: str | None) -> Fill | None:
        side = str(row.get("side") or "").lower()
        qty, price, at = _dec(row.get(qty_key)), _price(row.get(price_key)), _ms_to_dt(row.get(time_key))
        if side not in ("buy", "sell") or qty is None or qty <= 0 or price is None or at is None:
            log.error("%s: fill row skipped (cannot read side, quantity, price or time): %r", self.name, row)
            return None
        return Fill(fill_id=str(row.get(id_key)), time=at, side=side, qty=qty, price=price,
                    client_order_id=(str(row.get(client_key)) or None) if client_key else None)

    async def fetch_quote(self, symbol: str) -> Quote:
        await self._ensure_markets([symbol])
        market = self._market(symbol)
        with self._errors():
            if self.name == "bybit":
                response = await self._aio(
                    self._client.publicGetV5MarketTickers, {"category": "linear", "symbol": market["id"]}
                )
                rows = ((response or {}).get("result") or {}).get("list") or []
                row = next((r for r in rows if r.get("symbol") == market["id"]), None)
                if row is None:
                    raise NonRetryableError(
                        f"bybit: no ticker for {symbol}", exchange=self.name, code="no_ticker"
                    )
                return Quote(
                    symbol=symbol,
                    bid=_price(row.get("bid1Price")),
                    ask=_price(row.get("ask1Price")),
                    last=_price(row.get("lastPrice")),
                    timestamp=_ms_to_dt((response or {}).get("time")),
                )
            book, last = await self._aio(self._binance_quote_aio, market["id"])
            if isinstance(book, list):
                book = next((r for r in book if r.get("symbol") == market["id"]), {})
            if isinstance(last, list):
                last = next((r for r in last if r.get("symbol") == market["id"]), {})
            return Quote(
                symbol=symbol,
                bid=_price(book.get("bidPrice")),
                ask=_price(book.get("askPrice")),
                last=_price(last.get("price")),
                timestamp=_ms_to_dt(book.get("time")) or _ms_to_dt(last.get("time")),
            )

    async def _binance_quote_aio(self, market_id: str) -> tuple[Any, Any]:
        # asyncio side: both requests concurrently, one trio<->asyncio crossing
        book, last = await asyncio.gather(
            self._client.fapiPublicGetTickerBookTicker({"symbol": market_id}),
            self._client.fapiPublicGetTickerPrice({"symbol": market_id}),
        )
        return book or {}, last or {}

    # -- orders ---------------------------------------------------------------------

    async def close_limits(self, symbol: str) -> LotLimits:
        """The lot limits of ``symbol`` from the exchange's own market list (raw strings)."""
        await self._ensure_markets([symbol])
        return self._lot_limits(self._market(symbol))

    def _lot_limits(self, market: dict) -> LotLimits:
        info = market.get("info") or {}
        if self.name == "bybit":
            lot = info.get("lotSizeFilter") or {}
            return LotLimits(step=_dec(lot.get("qtyStep")), min_qty=_dec(lot.get("minOrderQty")),
                             max_market_qty=_dec(lot.get("maxMktOrderQty")) or _dec(lot.get("maxOrderQty")),
                             max_limit_qty=_dec(lot.get("maxOrderQty")))
        filters = {f.get("filterType"): f for f in info.get("filters") or [] if isinstance(f, dict)}
        lot, market_lot = filters.get("LOT_SIZE") or {}, filters.get("MARKET_LOT_SIZE") or {}
        step = _dec(lot.get("stepSize"))
        mins = [v for v in (_dec(lot.get("minQty")), _dec(market_lot.get("minQty"))) if v is not None and v > 0]
        return LotLimits(step=step if step and step > 0 else None, min_qty=max(mins) if mins else None,
                         max_market_qty=_dec(market_lot.get("maxQty")) or _dec(lot.get("maxQty")),
                         max_limit_qty=_dec(lot.get("maxQty")))

    def _close_qty(self, symbol: str, qty: Decimal, *, limit: bool = False) -> str:
        """``qty`` rounded down to the lot size, as the string sent to the exchange.

        A quantity below the minimum order is refused (``qty_below_min``; below one lot:
        ``qty_below_lot_size``), as is one above the maximum order of its type
        (``qty_above_max``): the executor splits a larger close itself.
        """
        limits = self._lot_limits(self._client.market(symbol))
        step = limits.step or _dec(self._client.market(symbol)["precision"]["amount"])
        if not step or step <= 0:
            raise NonRetryableError(f"{self.name}: cannot round {qty}", exchange=self.name, code="qty_rounding")
        rounded = (qty / step).to_integral_value(rounding=ROUND_FLOOR) * step
        if rounded <= 0:
            raise NonRetryableError(
                f"{self.name}: close qty {qty} of {symbol} is below the lot size {step}",
                exchange=self.name,
                code="qty_below_lot_size",
            )
        if limits.min_qty is not None and rounded < limits.min_qty:
            raise NonRetryableError(
                f"{self.name}: close qty {qty} of {symbol} is below the minimum order quantity {limits.min_qty}",
                exchange=self.name,
                code="qty_below_min",
            )
        cap = limits.max_limit_qty if limit else limits.max_market_qty
        if cap is not None and cap > 0 and rounded > cap:
            raise NonRetryableError(
                f"{self.name}: close qty {rounded} of {symbol} is above the maximum "
                f"{'limit' if limit else 'market'} order quantity {cap}",
                exchange=self.name,
                code="qty_above_max",
            )
        return format(rounded, "f")

    def _limit_price(self, symbol: str, price: Decimal, order_side: str) -> str:
        """``price`` on the tick, rounded towards the better side: never past the limit asked."""
        tick = _dec(self._client.market(symbol)["precision"].get("price"))
        if tick and tick > 0:
            rounding = ROUND_CEILING if order_side == "sell" else ROUND_FLOOR
            price = (price / tick).to_integral_value(rounding=rounding) * tick
        if price <= 0:
            raise NonRetryableError(f"{self.name}: limit price {price} is not positive", exchange=self.name, code="bad_price")
        return format(price, "f")

    async def create_close_order(
        self,
        symbol: str,
        position_side: str,
        qty: Decimal,
        client_order_id: str,
        *,
        limit_price: Decimal | None = None,
    ) -> OrderResult:
        if position_side not in ("long", "short"):
            raise NonRetryableError(f"position_side must be 'long' or 'short', not {position_side!r}", exchange=self.name)
        if not isinstance(qty, Decimal) or not qty.is_finite() or qty <= 0:
            raise NonRetryableError(f"close qty must be a positive Decimal, not {qty!r}", exchange=self.name)
        if not client_order_id:
            raise NonRetryableError("a client order id is required", exchange=self.name)
        if limit_price is not None and (not isinstance(limit_price, Decimal) or not limit_price.is_finite() or limit_price <= 0):
            raise NonRetryableError(f"limit_price must be a positive Decimal, not {limit_price!r}", exchange=self.name)
        await self._ensure_markets([symbol])
        self._market(symbol)
        order_side = "sell" if position_side == "long" else "buy"
        amount = self._close_qty(symbol, qty, limit=limit_price is not None)
        params: dict[str, Any] = {"reduceOnly": True}
        if self.name == "bybit":
            params["clientOrderId"] = client_order_id  # ccxt sends it as orderLinkId
        else:
            params["newClientOrderId"] = client_order_id
        if limit_price is None:
            order_type, price = "market", None
        else:
            order_type = "limit"
            price = self._limit_price(symbol, limit_price, order_side)
            params["timeInForce"] = "IOC"

        with self._errors(during_create=True):
            order = await self._aio(self._client.create_order, symbol, order_type, order_side, amount, price, params)
            info = (order or {}).get("info") or {}
            if self.name == "bybit":
                initial = OrderResult(
                    client_order_id=str(info.get("orderLinkId") or client_order_id),
                    exchange_order_id=str(info["orderId"]) if info.get("orderId") else order.get("id"),
                    status="open",  # Bybit's create reply carries no fill: look it up
                    filled_qty=Decimal(0),
                    avg_price=None,
                    requested_qty=Decimal(amount),
                )
            else:
                initial = self._parse_binance_order(info, client_order_id, Decimal(amount))

        if initial.status != "open":
            return initial
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
                if self.name == "bybit":
                    request = {"category": "linear", "symbol": market["id"], "orderLinkId": client_order_id}
                    for endpoint in (self._client.privateGetV5OrderRealtime, self._client.privateGetV5OrderHistory):
                        response = await self._aio(endpoint, dict(request))
                        rows = ((response or {}).get("result") or {}).get("list") or []
                        row = next((r for r in rows if r.get("orderLinkId") == client_order_id), None)
                        if row is not None:
                            return self._parse_bybit_order(row, client_order_id)
                    return None
                row = await self._aio(
                    self._client.fapiPrivateGetOrder, {"symbol": market["id"], "origClientOrderId": client_order_id}
                )
                if not row:
                    return None
                return self._parse_binance_order(row, client_order_id, None)
            except Exception as exc:
                if is_order_not_found(exc, self.name):
                    return None
                raise

    def _parse_bybit_order(self, row: dict, client_order_id: str) -> OrderResult:
        raw_status = str(row.get("orderStatus") or "")
        filled = _dec(row.get("cumExecQty")) or Decimal(0)
        status = _BYBIT_STATUS.get(raw_status, "open")
        return OrderResult(
            client_order_id=str(row.get("orderLinkId") or client_order_id),
            exchange_order_id=str(row["orderId"]) if row.get("orderId") else None,
            status=status,
            filled_qty=filled,
            avg_price=_price(row.get("avgPrice")) if filled > 0 else None,
            requested_qty=_dec(row.get("qty")),
        )

    def _parse_binance_order(self, row: dict, client_order_id: str, requested: Decimal | None) -> OrderResult:
        raw_status = str(row.get("status") or "").upper()
        filled = _dec(row.get("executedQty")) or Decimal(0)
        status = _BINANCE_STATUS.get(raw_status, "open")
        avg = _price(row.get("avgPrice")) if filled > 0 else None
        if avg is None and filled > 0:
            cum_quote = _dec(row.get("cumQuote"))
            if cum_quote:
                avg = cum_quote / filled
        order_id = row.get("orderId")
        return OrderResult(
            client_order_id=str(row.get("clientOrderId") or client_order_id),
            exchange_order_id=str(order_id) if order_id not in (None, "") else None,
            status=status,
            filled_qty=filled,
            avg_price=avg,
            requested_qty=_dec(row.get("origQty")) or requested,
        )

    async def close(self) -> None:
        try:
            await self._aio(self._client.close)
        except Exception:  # closing must not fail the caller's shutdown
            pass

    async def __aenter__(self) -> "CcxtExchange":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
