"""Reading the exchanges' raw fields: numbers as Decimal, millisecond times, headers.

Both exchanges send money as strings (``"0.385"``) and times as epoch milliseconds
(``1697673600000``, as a number or a string). The adapter reads those raw fields
itself rather than ccxt's floats, so a price is exactly what the exchange wrote::

    >>> dec("0.385")
    Decimal('0.385')
    >>> price("0") is None        # an empty book side reads as 0
    True
    >>> ms_to_dt("1697673600000")
    datetime.datetime(2023, 10, 19, 0, 0, tzinfo=datetime.timezone.utc)

Anything that cannot be read (missing, empty, not a number, not finite) is ``None``:
the caller decides whether that row is skipped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["dec", "dt_ms", "header", "ms_to_dt", "price"]


def dec(value: Any) -> Decimal | None:
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


def price(value: Any) -> Decimal | None:
    """A price: None when missing or not positive (an empty book side reads as 0)."""
    result = dec(value)
    if result is None or result <= 0:
        return None
    return result


def ms_to_dt(value: Any) -> datetime | None:
    """Epoch milliseconds → aware UTC datetime; None for missing, zero or negative."""
    ms = dec(value)
    if ms is None or ms <= 0:
        return None
    return datetime.fromtimestamp(float(ms) / 1000.0, tz=UTC)


def dt_ms(value: datetime) -> int:
    """Aware datetime → epoch milliseconds (what both exchanges take as a time bound)."""
    return int(value.timestamp() * 1000)


def header(headers: Any, name: str) -> str | None:
    """The value of HTTP header ``name`` (case-insensitive) in ``headers``; None when absent."""
    if not isinstance(headers, dict):
        return None
    low = name.lower()
    for k, v in headers.items():
        if str(k).lower() == low:
            return str(v)
    return None
