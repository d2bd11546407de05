"""The simulator's state: markets, seeded price paths, positions, orders and faults.

Everything here is synchronous and transport-free; the REST modules
(:mod:`simulator.rest_bybit`, :mod:`simulator.rest_binance`), the admin API
(:mod:`simulator.admin`) and the public streams (:mod:`simulator.streams`) all work on
one :class:`SimState` inside one trio thread.

Conventions:

* exchanges are ``"bybit"`` and ``"binanceusdm"`` (``"binance"`` is accepted as an
  alias by :func:`normalize_exchange`);
* markets are keyed by the exchange's symbol id (``"BTCUSDT"``); every market is a
  USDT-margined linear perpetual;
* money and quantities are :class:`~decimal.Decimal`, times are UTC.

Price paths: each market owns a :class:`random.Random` seeded from
``f"{seed}/{exchange}/{symbol_id}"``, so a symbol's path depends only on the seed and on
how many steps were taken, not on which other markets exist or in what order they were
created. One step is a geometric random walk of the mid price (``drift`` and
``volatility`` per step), from which bid/ask are cut on the tick grid with
``spread_bps`` (never less than one tick).

Fills: every change of a position is a :class:`Fill` — the product's orders and the
admin API's changes alike (the admin API's are synthetic, with client ids
``sim-admin-N``). The fills of a symbol, in ``seq`` order (which is also time order),
replay to exactly the current position: :func:`fold_fill` is the one place a fill
changes a position. A position's ``opened_at`` is the time of the fill that took it
from flat (or through zero, a flip); the symbol's ``first_opened`` (Bybit's
``createdTime``) is the first such time ever and survives re-openings and flips.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Callable, Iterable

log = logging.getLogger(__name__)

EXCHANGES: tuple[str, ...] = ("bybit", "binanceusdm")
_EXCHANGE_ALIASES = {
    "bybit": "bybit",
    "binanceusdm": "binanceusdm",
    "binance": "binanceusdm",
    "binance-usdm": "binanceusdm",
}
QUOTE = "USDT"
DEFAULT_API_KEYS = {"sim-key": "sim-secret"}
_SYMBOL_ID_RE = re.compile(r"^[A-Z0-9]{1,24}USDT$")

# symbol id -> (start price, tick size, qty step, max qty, max market qty)
DEFAULT_MARKETS: dict[str, tuple[str, str, str, str, str]] = {
    "BTCUSDT": ("65000.0", "0.1", "0.001", "1000", "120"),
    "ETHUSDT": ("3200.00", "0.01", "0.001", "10000", "2000"),
    "SOLUSDT": ("150.000", "0.001", "0.1", "100000", "20000"),
    "XRPUSDT": ("0.5500", "0.0001", "1", "10000000", "2000000"),
    "DOGEUSDT": ("0.150000", "0.00001", "1", "50000000", "30000000"),
}
DEFAULT_VOLATILITY = 0.0003  # relative std-dev of the mid per step
DEFAULT_SPREAD_BPS = Decimal("1")  # bid/ask distance around the mid, in basis points
DEFAULT_MIN_NOTIONAL = Decimal("5")
LAUNCH_TIME_MS = 1_585_526_400_000  # 2020-03-30, a plausible listing date

# Bybit's position list ``openTime``: "zero" reports "0" (unknown: clients must look at
# the fill history), "real" reports the opening time of the current episode, "absent"
# leaves the field out. Binance reports no opening time at all ("absent" only).
POSITION_OPEN_TIME_MODES = {"bybit": ("zero", "real", "absent"), "binanceusdm": ("absent",)}
DEFAULT_POSITION_OPEN_TIME = {"bybit": "zero", "binanceusdm": "absent"}


class SimError(ValueError):
    """Bad input to the simulator state (the admin API answers it with HTTP 400)."""


def normalize_exchange(name: str) -> str:
    if not isinstance(name, str):
        raise SimError(f"exchange must be a string, one of {list(EXCHANGES)}")
    ex = _EXCHANGE_ALIASES.get(name.strip().lower())
    if ex is None:
        raise SimError(f"unknown exchange {name!r}; expected one of {list(EXCHANGES)}")
    return ex


def normalize_symbol(symbol: str) -> str:
    """``"BTC/USDT:USDT"`` or ``"btcusdt"`` → ``"BTCUSDT"`` (USDT linear perpetuals only)."""
    if not isinstance(symbol, str) or not symbol.strip():
        raise SimError("symbol must be a non-empty string")
    s = symbol.strip().upper()
    if "/" in s:
        base_quote, _, settle = s.partition(":")
        base, _, quote = base_quote.partition("/")
        if not base or quote != QUOTE or (settle and settle != QUOTE):
            raise SimError(f"not a USDT linear perpetual symbol: {symbol!r}")
        s = base + quote
    if not _SYMBOL_ID_RE.match(s):
        raise SimError(f"not a USDT linear perpetual symbol id: {symbol!r}")
    return s


def to_decimal(value, name: str = "value", *, positive: bool = False) -> Decimal:
    """Parse a JSON string/number into a finite Decimal (floats go through ``str``)."""
    if isinstance(value, bool) or value is None:
        raise SimError(f"{name} must be a decimal number (string), got {value!r}")
    try:
        if isinstance(value, Decimal):
            d = value
        elif isinstance(value, (int, float)):
            d = Decimal(str(value))
        else:
            d = Decimal(value.strip())
    except (InvalidOperation, AttributeError, ValueError):
        raise SimError(f"{name} must be a decimal number, got {value!r}") from None
    if not d.is_finite():
        raise SimError(f"{name} must be finite, got {value!r}")
    if positive and d <= 0:
        raise SimError(f"{name} must be > 0, got {value!r}")
    return d


def parse_time(value) -> datetime:
    """ISO-8601 (``Z`` allowed; a naive time is taken as UTC) or epoch milliseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise SimError(f"time out of range: {value!r} (epoch milliseconds)") from None
    if not isinstance(value, str):
        raise SimError(f"time must be an ISO-8601 string, got {value!r}")
    text = value.strip()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise SimError(f"not an ISO-8601 time: {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dt_ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


def dstr(d: Decimal | None) -> str | None:
    """A Decimal as a plain string (no exponent), as the exchanges send numbers."""
    if d is None:
        return None
    if d == 0:
        return "0"
    return format(d, "f")


def _is_multiple(value: Decimal, unit: Decimal) -> bool:
    try:
        return value % unit == 0
    except InvalidOperation:  # e.g. 1e400 % 0.001: too many digits to tell; refuse it
        return False


def _pow10(exp: int) -> Decimal:
    return Decimal(1).scaleb(exp)


# --------------------------------------------------------------------------- markets


@dataclass
class Market:
    exchange: str
    symbol_id: str
    base: str
    tick_size: Decimal
    qty_step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    max_market_qty: Decimal
    min_notional: Decimal = DEFAULT_MIN_NOTIONAL
    quote: str = QUOTE
    status: str = "Trading"  # "Trading" | "PreLaunch" | ...
    launch_time_ms: int = LAUNCH_TIME_MS
    max_leverage: int = 100
    volatility: float = DEFAULT_VOLATILITY
    drift: float = 0.0
    spread_bps: Decimal = DEFAULT_SPREAD_BPS

    @property
    def unified(self) -> str:
        return f"{self.base}/{self.quote}:{self.quote}"

    @property
    def price_decimals(self) -> int:
        return max(0, -self.tick_size.normalize().as_tuple().exponent)

    @property
    def qty_decimals(self) -> int:
        return max(0, -self.qty_step.normalize().as_tuple().exponent)

    def fmt_price(self, p: Decimal | None) -> str:
        if p is None:
            return ""
        return format(p.quantize(_pow10(-self.price_decimals), rounding=ROUND_HALF_EVEN), "f")

    def fmt_qty(self, q: Decimal | None) -> str:
        if q is None:
            return ""
        return format(q.quantize(_pow10(-self.qty_decimals), rounding=ROUND_HALF_EVEN), "f")

    def on_tick(self, price: Decimal) -> bool:
        return _is_multiple(price, self.tick_size)

    def on_step(self, qty: Decimal) -> bool:
        return _is_multiple(qty, self.qty_step)

    def floor_qty(self, qty: Decimal) -> Decimal:
        return (qty / self.qty_step).to_integral_value(rounding=ROUND_DOWN) * self.qty_step

    def round_price(self, price: Decimal, rounding=ROUND_HALF_EVEN) -> Decimal:
        return (price / self.tick_size).to_integral_value(rounding=rounding) * self.tick_size


def derive_market_spec(price: Decimal, qty_hint: Decimal | None = None) -> tuple[Decimal, Decimal]:
    """Tick and lot size for a new market from its price: about 5 significant price digits,
    one lot worth at most about 100 USDT (never more than 1 unit); the lot also divides
    ``qty_hint`` so an admin-created position always sits on the lot grid."""
    if price <= 0:
        raise SimError("price must be > 0")
    mag = math.floor(math.log10(float(price)))
    tick = _pow10(mag - 4)
    step_exp = min(0, math.floor(math.log10(100 / float(price))))
    step = _pow10(step_exp)
    if qty_hint is not None and qty_hint > 0:
        hint_exp = qty_hint.normalize().as_tuple().exponent
        if hint_exp < step_exp:
            step = _pow10(hint_exp)
    return tick, step


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


# --------------------------------------------------------------------- positions, orders


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
    updated_at: datetime | None = None
    # what the exchange reports as the order quantity (Bybit shrinks a reduce-only order
    # to the position size; Binance keeps the requested quantity)
    effective_qty: Decimal | None = None
    is_open: bool = False  # resting on the book (GTC limit not fully filled)
    canceled_by_user: bool = False
    fill_quote: SimQuote | None = None  # the book the order met

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
        }


# -------------------------------------------------------------------------------- faults


@dataclass
class CountedFault:
    count: int
    exchange: str | None = None  # None: any exchange

    def to_dict(self) -> dict:
        return {"count": self.count, "exchange": self.exchange}


@dataclass
class RejectRule:
    count: int
    code: str | None = None  # None: the exchange's reduce-only rejection code
    exchange: str | None = None
    message: str | None = None

    def to_dict(self) -> dict:
        return {"count": self.count, "code": self.code, "exchange": self.exchange, "message": self.message}


class Faults:
    """Injected faults. Counted faults are consumed by the requests they hit."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.reject_next: list[RejectRule] = []
        self.http_5xx: list[CountedFault] = []
        self.rate_limit_429: list[CountedFault] = []
        self.drop_reply: list[CountedFault] = []
        self.partial_fill_ratio: Decimal | None = None
        # Binance: answer MARKET orders with status NEW / executedQty 0 even when the
        # client asked newOrderRespType=RESULT (the fill is still done; a lookup shows it)
        self.binance_market_new: bool = False
        self.ws: dict[str, str] = {}  # exchange or "*" -> last ws action, for display
        # (exchange, symbol id) -> how many full position lists leave that position out
        # (a list asked for that symbol alone still shows it)
        self.omit_from_position_list: dict[tuple[str, str], int] = {}
        # (exchange, symbol id) -> fields of its position row replaced as given (a malformed row)
        self.position_row_overrides: dict[tuple[str, str], dict] = {}

    def take_omission(self, exchange: str, symbol_id: str) -> bool:
        key = (exchange, symbol_id)
        left = self.omit_from_position_list.get(key, 0)
        if left <= 0:
            return False
        self.omit_from_position_list[key] = left - 1
        return True

    def override_row(self, exchange: str, symbol_id: str, row: dict) -> dict:
        extra = self.position_row_overrides.get((exchange, symbol_id))
        return {**row, **extra} if extra else row

    @staticmethod
    def _take(queue: list, exchange: str):
        for i, f in enumerate(queue):
            if f.exchange is None or f.exchange == exchange:
                f.count -= 1
                if f.count <= 0:
                    del queue[i]
                return f
        return None

    def take_http_5xx(self, exchange: str) -> bool:
        return self._take(self.http_5xx, exchange) is not None

    def take_rate_limit(self, exchange: str) -> bool:
        return self._take(self.rate_limit_429, exchange) is not None

    def take_drop_reply(self, exchange: str) -> bool:
        return self._take(self.drop_reply, exchange) is not None

    def take_reject(self, exchange: str) -> RejectRule | None:
        return self._take(self.reject_next, exchange)

    def add_counted(self, name: str, fault: CountedFault) -> None:
        """Queue ``fault`` on ``http_5xx``/``rate_limit_429``/``drop_reply`` (merging counts)."""
        queue: list[CountedFault] = getattr(self, name)
        if fault.count <= 0:
            return
        for f in queue:
            if f.exchange == fault.exchange:
                f.count += fault.count
                return
        queue.append(fault)

    def add_reject(self, rule: RejectRule) -> None:
        if rule.count <= 0:
            return
        for r in self.reject_next:
            if (r.code, r.exchange, r.message) == (rule.code, rule.exchange, rule.message):
                r.count += rule.count
                return
        self.reject_next.append(rule)

    def to_dict(self) -> dict:
        return {
            "reject_next": [r.to_dict() for r in self.reject_next],
            "http_5xx": [f.to_dict() for f in self.http_5xx],
            "rate_limit_429": [f.to_dict() for f in self.rate_limit_429],
            "drop_reply": [f.to_dict() for f in self.drop_reply],
            "partial_fill_ratio": dstr(self.partial_fill_ratio),
            "binance_market_new": self.binance_market_new,
            "ws": dict(self.ws),
        }


# --------------------------------------------------------------------------------- state

PriceListener = Callable[[str, str, SimQuote], None]


class SimState:
    """All simulator state. Not thread-safe: use it from the one trio thread."""

    def __init__(
        self,
        seed: int = 0,
        *,
        api_keys: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        default_markets: bool = True,
    ) -> None:
        self.seed = seed
        self.api_keys: dict[str, str] = dict(DEFAULT_API_KEYS if api_keys is None else api_keys)
        self.clock = clock
        self._markets: dict[str, dict[str, Market]] = {ex: {} for ex in EXCHANGES}
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._listeners: list[PriceListener] = []
        self.positions: dict[tuple[str, str], Position] = {}
        self.orders: list[Order] = []
        self._orders_by_id: dict[tuple[str, str], Order] = {}
        self._orders_by_client_id: dict[tuple[str, str], Order] = {}
        self._id_rng = random.Random(f"{seed}/order-ids")
        self._binance_next_id = 8_389_765_000_000 + random.Random(f"{seed}/binance-ids").randrange(10**6) * 1000
        self.faults = Faults()
        # Position mode per exchange: False = one-way (what the manager supports), True = hedge.
        self.hedge_mode: dict[str, bool] = {ex: False for ex in EXCHANGES}
        # What Bybit's position list says in ``openTime``: see POSITION_OPEN_TIME_MODES.
        self.position_open_time: dict[str, str] = dict(DEFAULT_POSITION_OPEN_TIME)
        self.fills: list[Fill] = []
        self._fill_seq = 0
        self._admin_fills = 0
        self._exec_rng = random.Random(f"{seed}/exec-ids")
        self._binance_next_trade_id = 698_759_000 + random.Random(f"{seed}/binance-trade-ids").randrange(10**6)
        self._first_opened: dict[tuple[str, str], datetime] = {}  # Bybit createdTime
        self._last_fill: dict[tuple[str, str], Fill] = {}
        self._cum_pnl: dict[tuple[str, str], Decimal] = {}  # Bybit cumRealisedPnl
        self.steps = 0
        if default_markets:
            for ex in EXCHANGES:
                for sid, (price, tick, step, max_qty, max_mkt) in DEFAULT_MARKETS.items():
                    self._add_market(
                        Market(
                            exchange=ex,
                            symbol_id=sid,
                            base=sid[: -len(QUOTE)],
                            tick_size=Decimal(tick),
                            qty_step=Decimal(step),
                            min_qty=Decimal(step),
                            max_qty=Decimal(max_qty),
                            max_market_qty=Decimal(max_mkt),
                        ),
                        Decimal(price),
                    )

    # ----------------------------------------------------------------- time

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=timezone.utc)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

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

    def add_price_listener(self, fn: PriceListener) -> Callable[[], None]:
        """Call ``fn(exchange, symbol_id, quote)`` synchronously on every price change."""
        self._listeners.append(fn)

        def unsubscribe() -> None:
            try:
                self._listeners.remove(fn)
            except ValueError:
                pass

        return unsubscribe

    # ------------------------------------------------------------- positions

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
        opened = _utc(opened_at)
        at = _utc(at)
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
        self._admin_fill(ex, m, side, p.qty, px, _utc(at) or self.now(), create_type="CreateByClosing")
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
        return self._admin_fill(ex, m, side, q, px, _utc(time) or self.now(),
                                order_id=order_id, client_order_id=client_order_id)

    # -------------------------------------------------------------- fills

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
        return self._record_fill(
            ex, m, side, qty, price, t,
            order_id=order_id or self.new_order_id(ex),
            client_order_id=client_order_id or f"sim-admin-{self._admin_fills}",
            source="admin", order_type="market", order_qty=qty, order_price=price,
            create_type=create_type, mark_price=price,
        )

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

    # ---------------------------------------------------------------- orders

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
            self._record_fill(
                ex, m, side, fill, touch, t,
                order_id=order.order_id, client_order_id=client_order_id, source="order", order_type=type,
                order_qty=order.effective_qty, order_price=price, leaves_qty=max(leaves, Decimal(0)),
                mark_price=q.last,
            )
            order.filled_qty = fill
            order.avg_price = touch
            t = self._tracks[(ex, m.symbol_id)]
            t.volume += fill
            t.turnover += fill * touch
            t.trades += 1
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
        return order

    def cancel_order(self, order: Order) -> Order:
        order.is_open = False
        order.canceled_by_user = True
        order.status = "canceled"
        order.updated_at = self.now()
        return order

    # ----------------------------------------------------------------- admin

    def clear_orders(self) -> None:
        """Forget every order (client order ids become usable again)."""
        self.orders.clear()
        self._orders_by_id.clear()
        self._orders_by_client_id.clear()

    def reset(self) -> None:
        """Forget positions, fills, orders and faults, back to one-way mode and the default
        settings (markets and prices stay): a fresh account."""
        self.positions.clear()
        self.fills.clear()
        self._last_fill.clear()
        self._first_opened.clear()
        self._cum_pnl.clear()
        self.clear_orders()
        self.faults.clear()
        self.hedge_mode = {ex: False for ex in EXCHANGES}
        self.position_open_time = dict(DEFAULT_POSITION_OPEN_TIME)

    def set_position_open_time(self, exchange: str, mode: str) -> None:
        ex = normalize_exchange(exchange)
        allowed = POSITION_OPEN_TIME_MODES[ex]
        if mode not in allowed:
            raise SimError(f"{ex}: position_open_time must be one of {list(allowed)}, got {mode!r}")
        self.position_open_time[ex] = mode

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


_FUTURE_SLACK = timedelta(seconds=1)


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def iter_exchanges(exchange: str | None) -> Iterable[str]:
    return EXCHANGES if exchange is None else (normalize_exchange(exchange),)
