"""Binance USD-M futures public market streams (``<symbol>@bookTicker``, ``<symbol>@aggTrade``). Sans-IO.

Wire format (Binance USD-M "Websocket Market Streams"):

* live (un)subscribe on a ``/ws`` connection:
  ``{"method":"SUBSCRIBE","params":["btcusdt@bookTicker"],"id":1}``; reply
  ``{"result":null,"id":1}``; a refusal ``{"error":{"code":2,"msg":".."},"id":1}``
  (older servers: ``{"code":2,"msg":"..","id":1}``).
* ``bookTicker``: ``{"e":"bookTicker","u":..,"s":"BTCUSDT","b":"bid","B":"qty","a":"ask",
  "A":"qty","T":..,"E":..}`` on every change of the best bid/ask (price or quantity).
* ``aggTrade``: ``{"e":"aggTrade","E":..,"s":"BTCUSDT","a":..,"p":"price","q":"qty",..}``
  — only used for the *last* price, and only with ``with_last=True``. The close policy
  trades on bid/ask; last is a fallback when no bid/ask is known, so it can be switched
  off to halve the message rate.
* combined streams (``/stream?streams=a/b``) wrap every payload as
  ``{"stream":"btcusdt@bookTicker","data":{...}}``; both shapes are accepted.
* heartbeat: WebSocket protocol ping/pong frames (no JSON heartbeat).

Every tick carries the last known bid, ask and last of its symbol (merged across the two
streams).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import NamedTuple

from feeds.protocol import (
    Ack,
    Alive,
    BadValue,
    ExchangeProtocol,
    Ignored,
    Malformed,
    ParseResult,
    RequestError,
    excerpt,
    ms_to_datetime,
    parse_price,
)
from feeds.tick import Tick

__all__ = ["BinanceProtocol"]

_PARAMS_PER_REQUEST = 100


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


class _BookState(NamedTuple):
    """Last accepted best bid/ask (bookTicker) and last trade (aggTrade) of one symbol.

    Immutable: a frame builds a new value, stored only once the whole frame is valid.
    """

    bid_s: str | None = None
    ask_s: str | None = None
    last_s: str | None = None
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None


_EMPTY = _BookState()


class BinanceProtocol(ExchangeProtocol):
    heartbeat = "ws"
    # Binance USD-M allows 10 incoming messages per second per connection, pings and
    # pongs included; stay well below.
    min_control_interval = 0.25
    subscribe_op = "SUBSCRIBE"
    unsubscribe_op = "UNSUBSCRIBE"

    def __init__(self, exchange: str = "binanceusdm", *, with_last: bool = True):
        super().__init__(exchange)
        self.with_last = with_last
        self._state: dict[str, _BookState] = {}
        self._req = 0
        self._params: dict[str, list[str]] = {}  # request id → stream names (for error messages)

    # -- outgoing ----------------------------------------------------------------------

    def streams(self, symbol_id: str) -> list[str]:
        low = symbol_id.lower()
        if self.with_last:
            return [low + "@bookTicker", low + "@aggTrade"]
        return [low + "@bookTicker"]

    def reset(self) -> None:
        super().reset()
        self._state.clear()
        self._params.clear()

    def _requests(self, method: str, symbols: list[str], ids: list[str]) -> list[str]:
        per_symbol = len(self.streams("X"))
        step = max(1, _PARAMS_PER_REQUEST // per_symbol)
        out = []
        for i in range(0, len(ids), step):
            self._req += 1
            params = [s for sid in ids[i : i + step] for s in self.streams(sid)]
            key = str(self._req)
            self.pending[key] = (method, tuple(symbols[i : i + step]))
            self._params[key] = params
            out.append(_dumps({"method": method, "params": params, "id": self._req}))
        return out

    # -- incoming ----------------------------------------------------------------------

    def parse(self, raw: str | bytes, received_at: float) -> ParseResult:
        msg = self._frame_object(raw)
        if isinstance(msg, Malformed):
            return msg
        if "stream" in msg and "data" in msg:  # combined-stream wrapper
            msg = msg["data"]
            if type(msg) is not dict:
                return Malformed("combined-stream data is not an object", excerpt(raw))
        event = msg.get("e")
        try:
            if event == "bookTicker" or (event is None and "b" in msg and "a" in msg and "s" in msg):
                return self._book_ticker(msg, received_at, raw)
            if event == "aggTrade":
                return self._agg_trade(msg, received_at)
        except BadValue as exc:
            return Malformed(exc.reason, excerpt(raw), exc.detail)
        if event is not None:
            return Ignored("unexpected event")
        return self._control(msg, raw)

    def _symbol(self, msg: dict) -> tuple[str, str]:
        sid = msg.get("s")
        if type(sid) is not str:
            raise BadValue("bad symbol", "missing or not a string")
        return sid, self.unified(sid)

    def _book_ticker(self, msg: dict, received_at: float, raw) -> ParseResult:
        sid, symbol = self._symbol(msg)
        bid_s = msg.get("b")
        ask_s = msg.get("a")
        old = self._state.get(sid, _EMPTY)
        if old.bid_s is not None and bid_s == old.bid_s and ask_s == old.ask_s:
            return Alive(symbol)  # only a quantity changed (the prices were validated before)
        # validate the whole frame, then commit a new value
        bid = parse_price(bid_s, "bid")
        ask = parse_price(ask_s, "ask")
        if bid > ask:
            return Malformed("crossed book", excerpt(raw), f"bid {bid_s} > ask {ask_s}")
        self._state[sid] = _BookState(bid_s, ask_s, old.last_s, bid, ask, old.last)
        ts = msg.get("E")
        if ts is None:
            ts = msg.get("T")
        return Tick(self.exchange, symbol, bid, ask, old.last, ms_to_datetime(ts), received_at)

    def _agg_trade(self, msg: dict, received_at: float) -> ParseResult:
        sid, symbol = self._symbol(msg)
        last_s = msg.get("p")
        old = self._state.get(sid, _EMPTY)
        if old.last_s is not None and last_s == old.last_s:
            return Alive(symbol)
        last = parse_price(last_s, "price")
        self._state[sid] = old._replace(last_s=last_s, last=last)
        ts = msg.get("E")
        if ts is None:
            ts = msg.get("T")
        return Tick(self.exchange, symbol, old.bid, old.ask, last, ms_to_datetime(ts), received_at)

    def state(self) -> dict[str, _BookState]:
        """A copy of the per-symbol state (immutable values): for tests and debugging."""
        return dict(self._state)

    def _control(self, msg: dict, raw) -> ParseResult:
        req_id = msg.get("id")
        request = self._answered(req_id)
        params = self._params.pop(str(req_id), None) if request else None
        op = request[0] if request else "request"
        rid = str(req_id) if req_id is not None and not isinstance(req_id, (dict, list)) else None
        if "result" in msg and "id" in msg:
            return Ack(op, rid)
        err = msg.get("error")
        if type(err) is dict:
            code, text = err.get("code"), err.get("msg")
        elif "code" in msg and "msg" in msg:
            code, text = msg.get("code"), msg.get("msg")
        else:
            return Malformed("unexpected message", excerpt(raw))
        detail = str(text)
        if params:
            detail = f"{detail} (params {params})"
        return RequestError(op, detail, rid, code if type(code) is int else None, symbols=request[1] if request else ())
