"""A close order's quantity and limit price, as the exchange will accept them.

Quantities are rounded *down* to the market's lot size (never close more than asked)
and checked against the minimum order quantity and the maximum MARKET / LIMIT order
quantity before anything is sent::

    >>> close_quantity("bybit", "BTC/USDT:USDT", Decimal("0.0157"),
    ...                LotLimits(step=Decimal("0.001"), min_qty=Decimal("0.001")))
    '0.015'

The minimum notional (Binance ``MIN_NOTIONAL``, Bybit ``minNotionalValue``) is not
checked: both exchanges exempt reduce-only / closing orders from it (Binance -4164
"Order's notional must be no smaller than 5 (unless you choose reduce only)"; Bybit
"Derivatives Trading Rules": closing orders are exempt from the minimum notional value
but not the minimum size).

Limit prices are rounded to the tick towards the *better* side (a sell up, a buy
down): the price asked is the worst the caller accepts, so rounding never goes past it::

    >>> limit_price("bybit", Decimal("100.04"), Decimal("0.1"), "sell")
    '100.1'

Every refusal is a :class:`~exchanges.errors.NonRetryableError` with a ``code`` the
executor understands (``qty_below_lot_size``, ``qty_below_min``, ``qty_above_max``,
``qty_rounding``, ``bad_price``).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from exchanges.errors import NonRetryableError
from exchanges.port import LotLimits

__all__ = ["close_quantity", "limit_price"]


def close_quantity(
    exchange: str,
    symbol: str,
    qty: Decimal,
    limits: LotLimits,
    *,
    limit: bool = False,
    fallback_step: Decimal | None = None,
) -> str:
    """``qty`` rounded down to the lot size, as the string sent to the exchange.

    ``fallback_step`` (the market's amount precision) is the lot size when ``limits``
    has none. A quantity below the minimum order is refused (``qty_below_min``; below
    one lot: ``qty_below_lot_size``), as is one above the maximum order of its type
    (``qty_above_max``, ``limit`` telling which): the executor splits a larger close itself.
    """
    step = limits.step or fallback_step
    if not step or step <= 0:
        raise NonRetryableError(f"{exchange}: cannot round {qty}", exchange=exchange, code="qty_rounding")
    rounded = (qty / step).to_integral_value(rounding=ROUND_FLOOR) * step
    if rounded <= 0:
        raise NonRetryableError(
            f"{exchange}: close qty {qty} of {symbol} is below the lot size {step}",
            exchange=exchange,
            code="qty_below_lot_size",
        )
    if limits.min_qty is not None and rounded < limits.min_qty:
        raise NonRetryableError(
            f"{exchange}: close qty {qty} of {symbol} is below the minimum order quantity {limits.min_qty}",
            exchange=exchange,
            code="qty_below_min",
        )
    cap = limits.max_limit_qty if limit else limits.max_market_qty
    if cap is not None and cap > 0 and rounded > cap:
        raise NonRetryableError(
            f"{exchange}: close qty {rounded} of {symbol} is above the maximum "
            f"{'limit' if limit else 'market'} order quantity {cap}",
            exchange=exchange,
            code="qty_above_max",
        )
    return format(rounded, "f")


def limit_price(exchange: str, price: Decimal, tick: Decimal | None, order_side: str) -> str:
    """``price`` on the tick, rounded towards the better side: never past the limit asked."""
    if tick and tick > 0:
        rounding = ROUND_CEILING if order_side == "sell" else ROUND_FLOOR
        price = (price / tick).to_integral_value(rounding=rounding) * tick
    if price <= 0:
        raise NonRetryableError(f"{exchange}: limit price {price} is not positive", exchange=exchange, code="bad_price")
    return format(price, "f")
