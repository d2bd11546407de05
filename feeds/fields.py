"""Reading the values of a stream frame: JSON, prices, timestamps, log excerpts.

Prices go from the exchange's strings straight into :class:`~decimal.Decimal`
(:func:`parse_price`); a price sent as a JSON number is rejected, since it may already
have been rounded through a binary float. A field that fails raises :class:`BadValue`,
which a protocol turns into a :class:`feeds.parse_results.Malformed` result.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

_json_loads: Callable[[str | bytes], Any]
try:  # orjson comes with ccxt; about 2x faster than json for these small frames
    import orjson as _orjson

    _json_loads = _orjson.loads
except ImportError:  # pragma: no cover - plain json is a fine fallback
    _json_loads = json.loads

__all__ = ["BadValue", "excerpt", "loads", "ms_to_datetime", "parse_price"]

RAW_EXCERPT = 200  # characters of a bad frame kept for the log


def loads(raw: str | bytes):
    """JSON-decode one frame (raises ValueError-like exceptions on bad input)."""
    return _json_loads(raw)


def excerpt(raw: object) -> str:
    """A short printable piece of a frame, for logs."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        text = bytes(raw[: RAW_EXCERPT * 4]).decode("utf-8", "replace")
    elif isinstance(raw, str):
        text = raw
    else:
        text = repr(raw)
    if len(text) > RAW_EXCERPT:
        return text[:RAW_EXCERPT] + "..."
    return text


class BadValue(Exception):
    """A field failed validation: a stable ``reason`` and a variable ``detail``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# Exchanges send prices as plain decimal strings ("21109.77"). Anything else (exponents,
# signs, whitespace, underscores, unicode digits, 21+ integer digits) is refused before
# Decimal sees it; the check is cheaper than the Decimal construction it guards.
_PRICE_RE = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,30})?")
_price_match = _PRICE_RE.fullmatch
_ZERO = Decimal(0)


def parse_price(value: object, field: str) -> Decimal:
    """Exchange price string → positive :class:`Decimal`, exactly as written.

    Raises :class:`BadValue` for a non-string, a non-numeric string, zero, a negative
    number, NaN/Infinity, exponent notation or an absurdly long number.
    """
    if type(value) is str and _price_match(value) is not None:
        d = Decimal(value)
        if d > _ZERO:
            return d
        raise BadValue("bad price", f"non-positive {field} {value!r}")
    raise BadValue("bad price", _describe_bad_price(value, field))


def _describe_bad_price(value: object, field: str) -> str:
    if type(value) is not str:
        kind = "missing" if value is None else type(value).__name__
        return f"{field} is not a string ({kind})"
    shown = value if len(value) <= 40 else value[:40] + "..."
    try:
        d = Decimal(value)
    except (InvalidOperation, ValueError):
        return f"non-numeric {field} {shown!r}"
    if not d.is_finite():
        return f"non-finite {field} {shown!r}"
    if d <= 0:
        return f"non-positive {field} {shown!r}"
    return f"unsupported number format for {field} {shown!r}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_to_datetime(ms: object) -> datetime | None:
    """Exchange millisecond timestamp → aware UTC datetime; ``None`` if unusable.

    Integer arithmetic only (``timedelta(milliseconds=int)``), so no float rounding.
    """
    if type(ms) is not int:
        return None
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except (OverflowError, ValueError):
        return None
