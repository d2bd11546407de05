"""The simulator's vocabulary: exchange and symbol names, numbers, times, bad input.

Every other part of the simulator speaks in these terms:

* exchanges are ``"bybit"`` and ``"binanceusdm"`` (``"binance"`` is accepted as an
  alias by :func:`normalize_exchange`);
* markets are keyed by the exchange's symbol id (``"BTCUSDT"``); every market is a
  USDT-margined linear perpetual (:func:`normalize_symbol` also takes the unified
  ``"BTC/USDT:USDT"``);
* money and quantities are :class:`~decimal.Decimal` (:func:`to_decimal` parses what a
  client sends, :func:`dstr` prints it as the exchanges do), times are UTC
  (:func:`parse_time`, :func:`iso`, :func:`dt_ms`).

Bad input raises :class:`SimError`, which the admin API answers with HTTP 400.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Iterable

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


def is_multiple(value: Decimal, unit: Decimal) -> bool:
    try:
        return value % unit == 0
    except InvalidOperation:  # e.g. 1e400 % 0.001: too many digits to tell; refuse it
        return False


def pow10(exp: int) -> Decimal:
    return Decimal(1).scaleb(exp)


def as_utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def iter_exchanges(exchange: str | None) -> Iterable[str]:
    return EXCHANGES if exchange is None else (normalize_exchange(exchange),)
