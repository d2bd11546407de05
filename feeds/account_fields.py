"""Reading the fields of a private-stream frame: amounts, times, ids, symbols.

The account protocols (:mod:`feeds.account_binance`, :mod:`feeds.account_bybit`) read
every field through these functions. Each returns the value or raises
:class:`~feeds.fields.BadValue` with a ``detail`` that names the field; the protocol
turns it into one :class:`~feeds.parse_results.Malformed` for the whole frame, whose
``reason`` names the kind of entry ("bad position", "bad order", ...).

Amounts arrive as decimal strings and become :class:`~decimal.Decimal` exactly as
written. A JSON number is refused, as for prices (:func:`feeds.fields.parse_price`):
it may already have gone through a binary float.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from exchanges.symbols import unified_symbol
from feeds.fields import BadValue, excerpt, ms_to_datetime, parse_price

__all__ = [
    "NotUsdtPerpetual",
    "amount",
    "flag",
    "optional_text",
    "price",
    "price_or_none",
    "signed_amount",
    "symbol",
    "text",
    "time_ms",
]

# Plain decimal strings only: no sign, exponent, spaces or unicode digits, at most 20
# integer digits (the same form feeds.fields accepts for prices).
_AMOUNT = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,30})?")
_SIGNED_AMOUNT = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,30})?")
_SYMBOL_ID = re.compile(r"[A-Z0-9][A-Z0-9_-]{0,39}")
_DIGITS = re.compile(r"[0-9]{1,15}")
_ZERO = Decimal(0)

# Exchange times outside (1970, 3000) are nonsense, not times.
_LAST_MS = 32_503_680_000_000  # 3000-01-01T00:00:00Z


class NotUsdtPerpetual(Exception):
    """A well-formed symbol id that is not a USDT-margined perpetual (``BTCUSDC``,
    ``BTC-26DEC25``, ...): the entry is not for us, but the frame is not broken."""

    def __init__(self, symbol_id: str):
        super().__init__(symbol_id)
        self.symbol_id = symbol_id


def _shown(value: object) -> str:
    if type(value) is str:
        return repr(excerpt(value)[:40])
    return "missing" if value is None else type(value).__name__


def amount(value: object, field: str) -> Decimal:
    """A quantity string ≥ 0 (``"0"`` allowed) → Decimal."""
    if type(value) is str and _AMOUNT.fullmatch(value) is not None:
        return Decimal(value)
    raise BadValue("bad amount", f"{field} is not a plain non-negative decimal string ({_shown(value)})")


def signed_amount(value: object, field: str) -> Decimal:
    """A signed quantity string (Binance's position amount ``pa``) → Decimal."""
    if type(value) is str and _SIGNED_AMOUNT.fullmatch(value) is not None:
        return Decimal(value)
    raise BadValue("bad amount", f"{field} is not a plain decimal string ({_shown(value)})")


def price(value: object, field: str) -> Decimal:
    """A price string > 0 → Decimal (see :func:`feeds.fields.parse_price`)."""
    return parse_price(value, field)


def price_or_none(value: object, field: str, *, empty: tuple[str, ...]) -> Decimal | None:
    """A price string, or None when the exchange sent one of its ``empty`` spellings
    (``"0"`` for Binance's average price before any fill, ``""`` for Bybit's)."""
    if type(value) is str and value in empty:
        return None
    if type(value) is str and _AMOUNT.fullmatch(value) is not None and Decimal(value) == _ZERO:
        return None  # "0.00000" like "0"
    return parse_price(value, field)


def time_ms(value: object, field: str) -> datetime:
    """Milliseconds since the epoch — a JSON integer (Binance) or a string of digits
    (Bybit) — → aware UTC datetime. Zero, negative and absurd values are refused."""
    ms: object = value
    if type(value) is str and _DIGITS.fullmatch(value) is not None:
        ms = int(value)
    if type(ms) is int and 0 < ms < _LAST_MS:
        when = ms_to_datetime(ms)
        if when is not None:
            return when
    raise BadValue("bad time", f"{field} is not a millisecond timestamp ({_shown(value)})")


def text(value: object, field: str) -> str:
    """A non-empty string."""
    if type(value) is str and value:
        return value
    raise BadValue("bad text", f"{field} is not a non-empty string ({_shown(value)})")


def optional_text(value: object, field: str) -> str | None:
    """A string, None when empty or absent (client order ids)."""
    if value is None or value == "":
        return None
    if type(value) is str:
        return value
    raise BadValue("bad text", f"{field} is not a string ({_shown(value)})")


def flag(value: object, field: str) -> bool:
    """A JSON boolean."""
    if type(value) is bool:
        return value
    raise BadValue("bad flag", f"{field} is not a boolean ({_shown(value)})")


def symbol(value: object, field: str = "symbol") -> str:
    """Exchange symbol id → unified symbol.

    Raises :class:`BadValue` for something that is not a symbol id at all, and
    :class:`NotUsdtPerpetual` for a real id of another market.
    """
    if type(value) is not str or _SYMBOL_ID.fullmatch(value) is None:
        raise BadValue("bad symbol", f"{field} is not a symbol id ({_shown(value)})")
    try:
        return unified_symbol(value)
    except ValueError:
        raise NotUsdtPerpetual(value) from None
