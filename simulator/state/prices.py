"""Prices: each market's seeded random walk, held prices, and the price listeners.

Each market owns a :class:`random.Random` seeded from ``f"{seed}/{exchange}/{symbol_id}"``,
so a symbol's path depends only on the seed and on how many steps were taken, not on
which other markets exist or in what order they were created. One step
(:meth:`PriceBook.step_prices`) is a geometric random walk of the mid price (``drift``
and ``volatility`` per step), from which bid/ask are cut on the tick grid with
``spread_bps`` (never less than one tick). :meth:`PriceBook.set_price` sets a book by
hand and holds it until released.

Every price change is pushed synchronously to the listeners
(:meth:`PriceBook.add_price_listener`); the WebSocket streams are one.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Callable

from simulator.state.markets import Market, derive_market_spec
from simulator.state.values import EXCHANGES, QUOTE, SimError, dstr, normalize_exchange, normalize_symbol, to_decimal

log = logging.getLogger("simulator.state")


@dataclass(frozen=True)
class SimQuote:
    bid: Decimal
    ask: Decimal
    last: Decimal
    ts_ms: int

    def to_dict(self) -> dict:
        return {"bid": dstr(self.bid), "ask": dstr(self.ask), "last": dstr(self.last), "ts_ms": self.ts_ms}


@dataclass
class _Track:
    """Price path of one market."""

    rng: random.Random
    mid: float
    quote: SimQuote
    held: bool = False
    open_price: Decimal = Decimal(0)
    high: Decimal = Decimal(0)
    low: Decimal = Decimal(0)
    volume: Decimal = Decimal(0)
    turnover: Decimal = Decimal(0)
    trades: int = 0


PriceListener = Callable[[str, str, SimQuote], None]


class PriceBook:
    """The markets of both exchanges and their price paths (a part of
    :class:`~simulator.state.SimState`).

    Keeps ``_markets`` (exchange -> symbol id -> :class:`Market`), ``_tracks`` (one
    :class:`_Track` per market), ``_listeners`` and ``steps`` (random-walk steps so far).
    """

    seed: int

    def _init_prices(self) -> None:
        self._markets: dict[str, dict[str, Market]] = {ex: {} for ex in EXCHANGES}
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._listeners: list[PriceListener] = []
        self.steps = 0

    # --------------------------------------------------------------- markets

    def markets(self, exchange: str) -> list[str]:
        """Symbol ids of the exchange's markets, in creation order."""
        return list(self._markets[normalize_exchange(exchange)])

    def market_objects(self, exchange: str) -> list[Market]:
        return list(self._markets[normalize_exchange(exchange)].values())

    def get_market(self, exchange: str, symbol_id: str) -> Market | None:
        return self._markets[normalize_exchange(exchange)].get(symbol_id)

    def market(self, exchange: str, symbol_id: str) -> Market:
        m = self.get_market(exchange, symbol_id)
        if m is None:
            raise KeyError(f"{exchange}: unknown market {symbol_id!r}")
        return m

    def ensure_market(
        self,
        exchange: str,
        symbol_id: str,
        price_hint: Decimal | None = None,
        *,
        qty_hint: Decimal | None = None,
    ) -> Market:
        """The market, created (USDT linear perpetual, tick/lot from the price) if new.

        ``symbol_id`` may also be a unified symbol. A new market needs ``price_hint``.
        """
        ex = normalize_exchange(exchange)
        sid = normalize_symbol(symbol_id)
        m = self._markets[ex].get(sid)
        if m is not None:
            return m
        if price_hint is None:
            raise SimError(f"{ex}: unknown market {sid} and no price to create it from")
        price = to_decimal(price_hint, "price", positive=True)
        tick, step = derive_market_spec(price, qty_hint)
        m = Market(
            exchange=ex,
            symbol_id=sid,
            base=sid[: -len(QUOTE)],
            tick_size=tick,
            qty_step=step,
            min_qty=step,
            max_qty=step * Decimal(10**7),
            max_market_qty=step * Decimal(10**6),
        )
        start = m.round_price(price)
        if start <= 0:
            start = tick
        self._add_market(m, start)
        log.info("simulator: new market %s %s tick=%s lot=%s price=%s", ex, sid, tick, step, start)
        return m

    def _add_market(self, m: Market, price: Decimal) -> None:
        self._markets[m.exchange][m.symbol_id] = m
        rng = random.Random(f"{self.seed}/{m.exchange}/{m.symbol_id}")
        q = self._quote_from_mid(m, float(price), last=price)
        self._tracks[(m.exchange, m.symbol_id)] = _Track(
            rng=rng, mid=float(price), quote=q, open_price=q.last, high=q.last, low=q.last
        )

    def set_walk(
        self,
        exchange: str,
        symbol_id: str,
        *,
        volatility: float | None = None,
        drift: float | None = None,
        spread_bps: Decimal | None = None,
    ) -> Market:
        m = self.market(normalize_exchange(exchange), normalize_symbol(symbol_id))
        if volatility is not None:
            if not (0 <= volatility < 1):
                raise SimError("volatility must be in [0, 1)")
            m.volatility = float(volatility)
        if drift is not None:
            if not (-0.5 < drift < 0.5):
                raise SimError("drift must be in (-0.5, 0.5)")
            m.drift = float(drift)
        if spread_bps is not None:
            if spread_bps < 0:
                raise SimError("spread_bps must be >= 0")
            m.spread_bps = spread_bps
        return m

    # ---------------------------------------------------------------- prices

    def quote(self, exchange: str, symbol_id: str) -> SimQuote:
        try:
            return self._tracks[(normalize_exchange(exchange), symbol_id)].quote
        except KeyError:
            raise KeyError(f"{exchange}: unknown market {symbol_id!r}") from None

    def is_held(self, exchange: str, symbol_id: str) -> bool:
        return self._tracks[(normalize_exchange(exchange), symbol_id)].held

    def market_stats(self, exchange: str, symbol_id: str) -> dict:
        t = self._tracks[(normalize_exchange(exchange), symbol_id)]
        return {
            "open": t.open_price,
            "high": t.high,
            "low": t.low,
            "volume": t.volume,
            "turnover": t.turnover,
            "trades": t.trades,
        }

    def _quote_from_mid(self, m: Market, mid: float, last: Decimal | None = None) -> SimQuote:
        tick = m.tick_size
        dmid = Decimal(repr(mid))
        half = dmid * m.spread_bps / Decimal(20000)
        bid = m.round_price(dmid - half, ROUND_FLOOR)
        ask = m.round_price(dmid + half, ROUND_CEILING)
        if bid <= 0:
            bid = tick
        if ask <= bid:
            ask = bid + tick
        if last is None:
            last = m.round_price(dmid)
        last = min(max(last, bid), ask)
        return SimQuote(bid=bid, ask=ask, last=last, ts_ms=self.now_ms())

    def _publish(self, exchange: str, symbol_id: str, t: _Track, q: SimQuote) -> None:
        t.quote = q
        if q.last > t.high:
            t.high = q.last
        if q.last < t.low:
            t.low = q.last
        for fn in list(self._listeners):
            try:
                fn(exchange, symbol_id, q)
            except Exception:  # a broken listener must not stop the price path
                log.exception("simulator: price listener %r failed", fn)

    def step_prices(self) -> None:
        """One seeded random-walk step for every market whose price is not held."""
        self.steps += 1
        for ex in EXCHANGES:
            for sid, m in self._markets[ex].items():
                t = self._tracks[(ex, sid)]
                if t.held:
                    continue
                z = t.rng.gauss(0.0, 1.0)
                mid = t.mid * math.exp(m.drift + m.volatility * z)
                floor = float(m.tick_size) * 10
                if mid < floor:
                    mid = floor
                t.mid = mid
                self._publish(ex, sid, t, self._quote_from_mid(m, mid))

    def set_price(
        self,
        exchange: str,
        symbol_id: str,
        *,
        bid: Decimal | None = None,
        ask: Decimal | None = None,
        last: Decimal | None = None,
        hold: bool = True,
    ) -> SimQuote:
        """Set the book explicitly. Missing sides are derived with the market's spread.

        With ``hold`` the random walk leaves this market alone until
        :meth:`release_price` (or another ``set_price(..., hold=False)``).
        """
        ex = normalize_exchange(exchange)
        sid = normalize_symbol(symbol_id)
        m = self.market(ex, sid)
        t = self._tracks[(ex, sid)]
        vals = {}
        for name, v in (("bid", bid), ("ask", ask), ("last", last)):
            if v is None:
                continue
            d = to_decimal(v, name, positive=True)
            if not m.on_tick(d):
                raise SimError(f"{name} {d} is not a multiple of {sid}'s tick size {m.tick_size}")
            vals[name] = d
        if not vals:
            raise SimError("give at least one of bid, ask, last")
        spread = max(m.tick_size, m.round_price(self._ref_price(vals) * m.spread_bps / Decimal(10000), ROUND_CEILING))
        b, a, lst = vals.get("bid"), vals.get("ask"), vals.get("last")
        if b is None and a is None:
            half = m.round_price(spread / 2, ROUND_FLOOR)
            b = lst - half
            a = b + spread
        elif b is None:
            b = a - spread
        elif a is None:
            a = b + spread
        if b <= 0:
            raise SimError(f"derived bid {b} is not positive; give bid and ask explicitly")
        if not b < a:
            raise SimError(f"bid ({b}) must be below ask ({a})")
        if lst is None:
            lst = min(max(t.quote.last, b), a)
        t.mid = float((b + a) / 2)
        t.held = hold
        q = SimQuote(bid=b, ask=a, last=lst, ts_ms=self.now_ms())
        self._publish(ex, sid, t, q)
        return q

    @staticmethod
    def _ref_price(vals: dict) -> Decimal:
        return vals.get("last") or vals.get("bid") or vals.get("ask")

    def release_price(self, exchange: str, symbol_id: str) -> SimQuote:
        """Resume the random walk for this market from its current book."""
        ex = normalize_exchange(exchange)
        sid = normalize_symbol(symbol_id)
        self.market(ex, sid)
        t = self._tracks[(ex, sid)]
        t.held = False
        return t.quote

    def record_trade(self, exchange: str, symbol_id: str, qty: Decimal, price: Decimal) -> None:
        """Count an order's fill in the market's statistics (volume, turnover, trades)."""
        t = self._tracks[(exchange, symbol_id)]
        t.volume += qty
        t.turnover += qty * price
        t.trades += 1

    def add_price_listener(self, fn: PriceListener) -> Callable[[], None]:
        """Call ``fn(exchange, symbol_id, quote)`` synchronously on every price change."""
        self._listeners.append(fn)

        def unsubscribe() -> None:
            try:
                self._listeners.remove(fn)
            except ValueError:
                pass

        return unsubscribe

    def quotes_snapshot(self) -> list[dict]:
        out = []
        for ex in EXCHANGES:
            for sid, m in self._markets[ex].items():
                t = self._tracks[(ex, sid)]
                out.append(
                    {
                        "exchange": ex,
                        "symbol": sid,
                        "unified_symbol": m.unified,
                        **t.quote.to_dict(),
                        "held": t.held,
                        "tick_size": dstr(m.tick_size),
                        "qty_step": dstr(m.qty_step),
                        "volatility": m.volatility,
                        "drift": m.drift,
                        "spread_bps": dstr(m.spread_bps),
                    }
                )
        return out
