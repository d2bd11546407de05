"""How big each close order is, and the price bound of the limit-IOC fallback.

Pure arithmetic on the market's lot limits and a quote, with no exchange call:

* :func:`order_qty` rounds what is left down to the lot step and splits a close larger
  than the largest order into several; ``None`` means the rest is *dust*, below the
  smallest order, which no order can close.
* :func:`ioc_limit_price` prices the reduce-only limit IOC sent when a market order
  finds no liquidity: aggressive, but never worse than the price the policy accepts.
* :func:`limit_text` shows an order's price in a log line as the exchange will see it.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from actors.close_request import CloseRequest
from exchanges import logfmt
from exchanges.errors import InsufficientLiquidityError
from exchanges.port import LotLimits, Quote

# Rejections that mean the quantity itself can never be sent (below the minimum order).
DUST_CODES = frozenset({"qty_below_lot_size", "qty_below_min"})


def order_qty(remaining: Decimal, limits: LotLimits | None, *, limit: bool) -> Decimal | None:
    """The quantity of the next order; None when what is left is below the minimum order.

    ``limit``: the order is the limit-IOC fallback, whose largest size may differ from
    a market order's. A split leaves a remainder one more order can still close.
    """
    if limits is None:
        return remaining
    step = limits.step if limits.step and limits.step > 0 else None
    qty = (remaining / step).to_integral_value(rounding=ROUND_FLOOR) * step if step else remaining
    least = limits.min_qty if limits.min_qty and limits.min_qty > 0 else step
    if qty <= 0 or (least is not None and qty < least):
        return None
    cap = limits.max_limit_qty if limit else limits.max_market_qty
    if cap is not None and cap > 0 and qty > cap:
        chunk = (cap / step).to_integral_value(rounding=ROUND_FLOOR) * step if step else cap
        rest = qty - chunk
        if least is not None and 0 < rest < least and qty - least >= least:
            chunk = qty - least  # leave a remainder one order can still close
        qty = chunk
    return qty


def ioc_limit_price(req: CloseRequest, quote: Quote, slippage: Decimal) -> Decimal:
    """The limit of the IOC fallback: ``slippage`` (a fraction) through the touch, but
    never worse than the price the policy accepts (``req.worst_price``) unless the close
    is an emergency. Rounded towards the better side (a sell up, a buy down).

    Raises :class:`InsufficientLiquidityError` when the quote has no usable price.
    """
    long = req.side == "long"
    ref = (quote.bid if long else quote.ask) or quote.last
    if ref is None or ref <= 0:
        raise InsufficientLiquidityError(f"no price to set a limit for {req.symbol}", exchange=req.exchange)
    price = ref * ((1 - slippage) if long else (1 + slippage))
    bound = None if req.emergency else req.worst_price
    if bound is not None:
        price = max(price, bound) if long else min(price, bound)
    return price.quantize(Decimal("1e-8"), ROUND_CEILING if long else ROUND_FLOOR)


def limit_text(limit_price: Decimal | None, order_side: str, tick: Decimal | None) -> str:  # pragma: no mutate block
    """`` market``, or `` limit IOC <price>`` rounded as the adapter sends it (for log lines)."""
    if not limit_price:
        return " market"
    rounding = ROUND_FLOOR if order_side == "sell" else ROUND_CEILING  # as the adapter sends it
    return f" limit IOC {logfmt.price(limit_price, tick, rounding)}"
