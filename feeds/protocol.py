"""Sans-IO pieces shared by the exchange stream protocols.

An exchange protocol object (:class:`feeds.bybit.BybitProtocol`,
:class:`feeds.binance.BinanceProtocol`) knows the wire format of one exchange's public
ticker stream and nothing about sockets or trio: it *builds* the text frames a client
sends (subscribe, unsubscribe, heartbeat) and *parses* the frames it receives into

* a :class:`feeds.tick.Tick` — the hot path, returned as is;
* an :class:`Alive` — a valid update for a symbol whose bid/ask/last did not change
  (proves the stream is alive for that symbol, nothing to fan out);
* control events: :class:`Ack`, :class:`Pong`, :class:`RequestError`;
* :class:`Ignored` — well-formed but not for us (unknown topic or event, a Bybit delta
  before its snapshot, ...);
* :class:`Malformed` — bad JSON, missing or mistyped fields, non-numeric, non-positive
  or absurd prices, a crossed book.

``parse`` never raises for any input (text or bytes): every failure is a result the feed
counts and logs. Prices go from the exchange's strings straight into
:class:`~decimal.Decimal`; a price sent as a JSON number is rejected, since it may
already have been rounded through a binary float.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Iterable, Union

from exchanges.symbols import exchange_symbol_id, unified_symbol
from feeds.tick import Tick

try:  # orjson comes with ccxt; about 2x faster than json for these small frames
    import orjson as _orjson

    _json_loads = _orjson.loads
except ImportError:  # pragma: no cover - plain json is a fine fallback
    _json_loads = json.loads

__all__ = [
    "Ack",
    "Alive",
    "BadValue",
    "ExchangeProtocol",
    "Ignored",
    "Malformed",
    "ParseResult",
    "Pong",
    "RequestError",
    "loads",
    "ms_to_datetime",
    "parse_price",
]

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


# ---------------------------------------------------------------------------------------
# parse results (everything except Tick)


@dataclass(frozen=True, slots=True)
class Alive:
    """A valid update for ``symbol`` (unified) that changed none of bid/ask/last."""

    symbol: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The exchange accepted a request (subscribe/unsubscribe/...)."""

    op: str
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """Reply to an application-level ping."""

    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class RequestError:
    """The exchange rejected a request (e.g. subscribe to an unknown symbol).

    ``symbols``: the unified symbols of that request, when the protocol knows them.
    """

    op: str
    message: str
    req_id: str | None = None
    code: int | None = None
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ignored:
    """Well-formed, but nothing to do with it."""

    reason: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """Broken or nonsensical input.

    ``reason`` is a short, stable category (fit for a metric label: "invalid JSON",
    "bad price", "crossed book", ...); ``detail`` says what exactly; ``raw`` is an
    excerpt of the frame.
    """

    reason: str
    raw: str = ""
    detail: str = ""


ParseResult = Union[Tick, Alive, Ack, Pong, RequestError, Ignored, Malformed]


# ---------------------------------------------------------------------------------------
# field helpers


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


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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


# ---------------------------------------------------------------------------------------
# the protocol interface


class ExchangeProtocol:
    """What :class:`feeds.feed.Feed` needs from an exchange. Sans-IO.

    Subclasses set the class attributes and implement the ``*_messages`` builders and
    :meth:`parse`.
    """

    #: "json": the protocol sends :meth:`ping_message` and expects a :class:`Pong`;
    #: "ws": use WebSocket protocol-level ping frames.
    heartbeat: str = "ws"
    #: minimum seconds between two control frames we send (exchange rate limits)
    min_control_interval: float = 0.0

    def __init__(self, exchange: str):
        self.exchange = exchange
        self._unified: dict[str, str] = {}  # exchange id ("BTCUSDT") → unified symbol
        self.deltas_before_snapshot = 0
        self.frames = 0  # frames parsed, ever (not reset on reconnect): numbers each frame
        # requests sent on this connection and not answered yet: req id → (op, symbols)
        self.pending: dict[str, tuple[str, tuple[str, ...]]] = {}

    # -- symbols ---------------------------------------------------------------------

    def _remember(self, symbols: Iterable[str]) -> list[str]:
        """Unified symbols → exchange ids, remembering the mapping for parsing."""
        ids = []
        for symbol in symbols:
            sid = exchange_symbol_id(symbol)
            self._unified[sid] = symbol
            ids.append(sid)
        return ids

    def _forget(self, symbols: Iterable[str]) -> list[str]:
        ids = []
        for symbol in symbols:
            sid = exchange_symbol_id(symbol)
            self._unified.pop(sid, None)
            ids.append(sid)
        return ids

    def unified(self, symbol_id: str) -> str:
        """Exchange id → unified symbol (raises BadValue)."""
        u = self._unified.get(symbol_id)
        if u is not None:
            return u
        try:
            return unified_symbol(symbol_id)
        except (ValueError, AttributeError) as exc:
            raise BadValue("bad symbol", f"{excerpt(symbol_id)!r}") from exc

    def _answered(self, req_id: object) -> tuple[str, tuple[str, ...]] | None:
        """Pop the pending request a reply refers to."""
        if req_id is None or isinstance(req_id, (dict, list)):
            return None
        return self.pending.pop(str(req_id), None)

    # -- to implement ----------------------------------------------------------------

    def reset(self) -> None:
        """A new connection starts: forget per-connection stream state.

        Subclasses call ``super().reset()``.
        """
        self.pending.clear()

    def subscribe_messages(self, symbols: Iterable[str]) -> list[str]:
        raise NotImplementedError

    def unsubscribe_messages(self, symbols: Iterable[str]) -> list[str]:
        raise NotImplementedError

    def ping_message(self) -> str | None:
        return None

    def mark_info(self, symbol: str) -> tuple[Decimal | None, int]:
        """(mark price, number of the frame that set it) of a unified symbol, when the
        stream carries a mark price; ``(None, 0)`` otherwise."""
        return None, 0

    def parse(self, raw: str | bytes, received_at: float) -> ParseResult:
        raise NotImplementedError
