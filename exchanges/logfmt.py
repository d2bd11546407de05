"""Decimals for people: prices on the market's tick, percentages to three places.

Log lines and alert texts use these; the database and machine-readable payloads keep
full precision. Every function takes a :class:`~decimal.Decimal`, an int, a float or a
numeric string (event data carries strings), and gives anything else back as
``str(value)`` unchanged, so formatting a log line never raises.

* :func:`price` - on the market's price tick when it is known (``143.24`` for tick
  0.01), else to :data:`SIGNIFICANT_DIGITS` significant digits;
* :func:`qty` - as given, without exponent notation or trailing zeros;
* :func:`percent` - :data:`PERCENT_PLACES` decimal places (``4.505``);
* :func:`fields` - ``key=value`` pairs, each value formatted by what its key names.

No exponent notation anywhere (``0.00001``, never ``1E-5``). This module sits in
``exchanges`` (which imports nothing else of the project) so that exchanges, actors
and service can all use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

SIGNIFICANT_DIGITS = 8
PERCENT_PLACES = 3
_MAX_QTY_PLACES = 12

# Keys of event data and log fields, by what they hold.
PRICE_KEYS = frozenset({"price", "target", "bid", "ask", "last", "limit", "breakeven"})
PERCENT_KEYS = frozenset({"pnl_pct", "distance"})
QTY_KEYS = frozenset({"qty", "quantity", "size", "remaining"})


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, (int, float, str)):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            return None
    else:
        return None
    return result if result.is_finite() else None


def _exponent(d: Decimal) -> int:
    """The exponent of a finite ``d`` (``Decimal("0.015")``: -3)."""
    exponent = d.as_tuple().exponent
    if not isinstance(exponent, int):  # "n", "N" or "F": NaN or infinity
        raise ValueError(f"{d} has no exponent")
    return exponent


def _plain(d: Decimal) -> str:
    """No exponent, no trailing zeros after the point, no negative zero."""
    text = format(d.normalize(), "f")
    if text.startswith("-") and not text.strip("-0."):
        text = text[1:]
    return text


def significant(value: Any, digits: int = SIGNIFICANT_DIGITS) -> str:
    """``value`` to ``digits`` significant digits (integer digits are never dropped)."""
    d = _decimal(value)
    if d is None:
        return str(value)
    if d == 0:
        return "0"
    places = max(0, digits - 1 - d.adjusted())
    return _plain(d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def price(value: Any, tick: Any = None, rounding: str = ROUND_HALF_UP) -> str:
    """A price on the market's ``tick`` (as many decimals as the tick has), else :func:`significant`.

    ``rounding`` (a :mod:`decimal` rounding mode) picks the tick: a limit price is shown
    rounded the way it is sent (down for a sell, up for a buy).
    """
    d = _decimal(value)
    if d is None:
        return str(value)
    t = _decimal(tick)
    if t is None or t <= 0:
        return significant(d)
    on_tick = (d / t).to_integral_value(rounding=rounding) * t
    places = max(0, -_exponent(t.normalize()))
    text = format(on_tick.quantize(Decimal(1).scaleb(-places)), "f")
    if text.startswith("-") and not text.strip("-0."):
        text = text[1:]
    return text


def qty(value: Any) -> str:
    """A quantity as given (quantities are already on the lot step), without exponent or trailing zeros."""
    d = _decimal(value)
    if d is None:
        return str(value)
    if _exponent(d) < -_MAX_QTY_PLACES:  # a computed quantity: no endless tails
        d = d.quantize(Decimal(1).scaleb(-_MAX_QTY_PLACES), rounding=ROUND_HALF_UP)
    return _plain(d)


def percent(value: Any, places: int = PERCENT_PLACES) -> str:
    """A percentage to ``places`` decimals: ``4.505``, ``0.002``, ``-1.250``."""
    d = _decimal(value)
    if d is None:
        return str(value)
    text = format(d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP), "f")
    if text.startswith("-") and not text.strip("-0."):
        text = text[1:]
    return text


def formatter_for(key: str, tick: Any = None) -> Callable[[Any], str] | None:
    """How the value of a field named ``key`` is shown; None: as it is.

    ``*percent*`` and ``*_pct`` are percentages, ``*price*`` and the names in
    :data:`PRICE_KEYS` prices, ``*qty*`` quantities, ``*pnl*`` (money) significant digits.
    """
    k = key.lower()
    if "percent" in k or k.endswith("_pct") or k in PERCENT_KEYS:
        return percent
    if "price" in k or k in PRICE_KEYS:
        return lambda v: price(v, tick)
    if "qty" in k or "quantity" in k or k in QTY_KEYS:
        return qty
    if "pnl" in k:
        return significant
    return None


def value(key: str, v: Any, tick: Any = None) -> str:
    """``v`` formatted by what ``key`` names (:func:`formatter_for`); other values as ``str(v)``."""
    fmt = formatter_for(key, tick)
    if fmt is None or isinstance(v, bool):
        return str(v)
    return fmt(v)


def fields(data: Mapping[str, Any] | Iterable[tuple[str, Any]], tick: Any = None) -> str:
    """``key=value`` pairs separated by spaces (None values left out), each value by :func:`value`."""
    items = data.items() if isinstance(data, Mapping) else data
    return " ".join(f"{k}={value(k, v, tick)}" for k, v in items if v is not None)
