"""The interface of an exchange stream protocol, and the pieces its implementations share.

An exchange protocol object (:class:`feeds.bybit.BybitProtocol`,
:class:`feeds.binance.BinanceProtocol`) knows the wire format of one exchange's public
ticker stream and nothing about sockets or trio: it *builds* the text frames a client
sends (subscribe, unsubscribe, heartbeat) and *parses* the frames it receives into a
:class:`feeds.tick.Tick` — the hot path, returned as is — or one of the other results in
:mod:`feeds.parse_results` (:class:`Alive`, :class:`Ack`, :class:`Pong`,
:class:`RequestError`, :class:`Ignored`, :class:`Malformed`).

``parse`` never raises for any input (text or bytes): every failure is a result the feed
counts and logs. The field readers it uses (:func:`parse_price`, :func:`ms_to_datetime`,
...) live in :mod:`feeds.fields`; both modules' names are re-exported here, so that a
protocol implementation imports what it needs from this one module.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from exchanges.symbols import exchange_symbol_id, unified_symbol
from feeds.fields import BadValue, excerpt, loads, ms_to_datetime, parse_price
from feeds.parse_results import Ack, Alive, Ignored, Malformed, ParseResult, Pong, RequestError

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
    "excerpt",
    "loads",
    "ms_to_datetime",
    "parse_price",
]


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
    #: the request names of the exchange's subscribe and unsubscribe
    subscribe_op: str = "subscribe"
    unsubscribe_op: str = "unsubscribe"
    #: what is known of each subscribed symbol's book, by exchange id (each protocol's own kind)
    _state: dict[str, Any]

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

    def _frame_object(self, raw: str | bytes) -> dict | Malformed:
        """Count a received frame and decode it: the JSON object it holds, or why not."""
        self.frames += 1
        try:
            msg = loads(raw)
        except Exception:  # any decoder error, recursion limit, bad UTF-8, ...
            return Malformed("invalid JSON", excerpt(raw))
        if type(msg) is not dict:
            return Malformed("not a JSON object", excerpt(raw))
        return msg

    def subscribe_messages(self, symbols: Iterable[str]) -> list[str]:
        """The frames that subscribe ``symbols`` (unified), remembering their ids for parsing."""
        symbols = list(symbols)
        return self._requests(self.subscribe_op, symbols, self._remember(symbols))

    def unsubscribe_messages(self, symbols: Iterable[str]) -> list[str]:
        """The frames that unsubscribe ``symbols``; what was known of their books is dropped."""
        symbols = list(symbols)
        ids = self._forget(symbols)
        for sid in ids:
            self._state.pop(sid, None)
        return self._requests(self.unsubscribe_op, symbols, ids)

    def _requests(self, op: str, symbols: list[str], ids: list[str]) -> list[str]:
        """The request frames for ``op`` on ``ids`` (the exchange ids of ``symbols``)."""
        raise NotImplementedError

    def ping_message(self) -> str | None:
        return None

    def mark_info(self, symbol: str) -> tuple[Decimal | None, int]:
        """(mark price, number of the frame that set it) of a unified symbol, when the
        stream carries a mark price; ``(None, 0)`` otherwise."""
        return None, 0

    def parse(self, raw: str | bytes, received_at: float) -> ParseResult:
        raise NotImplementedError
