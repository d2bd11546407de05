"""Markets: what a symbol trades like (tick and lot grid, limits, listing) and its walk.

A :class:`Market` is one USDT-margined linear perpetual on one exchange. The default
markets (:data:`DEFAULT_MARKETS`) exist on both exchanges from the start; any other
symbol becomes a market the first time the admin API names it, with a tick and lot size
derived from its price (:func:`derive_market_spec`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

from simulator.state.values import QUOTE, SimError, is_multiple, pow10

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
        return format(p.quantize(pow10(-self.price_decimals), rounding=ROUND_HALF_EVEN), "f")

    def fmt_qty(self, q: Decimal | None) -> str:
        if q is None:
            return ""
        return format(q.quantize(pow10(-self.qty_decimals), rounding=ROUND_HALF_EVEN), "f")

    def on_tick(self, price: Decimal) -> bool:
        return is_multiple(price, self.tick_size)

    def on_step(self, qty: Decimal) -> bool:
        return is_multiple(qty, self.qty_step)

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
    tick = pow10(mag - 4)
    step_exp = min(0, math.floor(math.log10(100 / float(price))))
    step = pow10(step_exp)
    if qty_hint is not None and qty_hint > 0:
        hint_exp = qty_hint.normalize().as_tuple().exponent
        if hint_exp < step_exp:
            step = pow10(hint_exp)
    return tick, step

