"""Bybit v5 public linear ticker stream (``/v5/public/linear``, topic ``tickers.<ID>``). Sans-IO.

Wire format (Bybit v5 WebSocket docs, "Connect" and "Ticker"):

* subscribe   ``{"op":"subscribe","req_id":"1","args":["tickers.BTCUSDT"]}``
  (``unsubscribe`` likewise); reply
  ``{"success":true,"ret_msg":"","conn_id":"..","req_id":"1","op":"subscribe"}``,
  a refusal has ``"success":false`` and e.g.
  ``"ret_msg":"error:handler not found,topic:tickers.NOPEUSDT"``.
* heartbeat   the client sends ``{"op":"ping","req_id":".."}`` about every 20 s; the
  public linear reply is ``{"success":true,"ret_msg":"pong","conn_id":"..","req_id":"..",
  "op":"ping"}`` (other Bybit channels answer ``{"op":"pong","args":[..]}``; both are
  understood).
* updates     ``{"topic":"tickers.BTCUSDT","type":"snapshot"|"delta","ts":..,"cs":..,
  "data":{"symbol":"BTCUSDT","lastPrice":"..","bid1Price":"..","ask1Price":"..",
  "markPrice":"..",...}}``. A delta carries only the fields that changed; it is merged
  into the last snapshot of that symbol. A delta before any snapshot (on this
  connection) is ignored and counted in :attr:`BybitProtocol.deltas_before_snapshot`.

An empty string for a price means "no value" (e.g. an empty book side) and clears it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import NamedTuple

from exchanges.symbols import exchange_symbol_id
from feeds.protocol import (
    Ack,
    Alive,
    BadValue,
    ExchangeProtocol,
    Ignored,
    Malformed,
    ParseResult,
    Pong,
    RequestError,
    excerpt,
    ms_to_datetime,
    parse_price,
)
from feeds.tick import Tick

__all__ = ["BybitProtocol", "TOPIC_PREFIX"]

TOPIC_PREFIX = "tickers."
_PREFIX_LEN = len(TOPIC_PREFIX)
_ARGS_PER_REQUEST = 50


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


class _TickerState(NamedTuple):
    """Last accepted ticker of one symbol: raw strings (cheap change detection) and Decimals.

    Immutable: a frame builds a new value and the protocol stores it only once the whole
    frame is valid, so a rejected frame leaves the previous value exactly as it was.
    ``mark_frame`` is the number of the frame (:attr:`BybitProtocol.frames`) whose
    ``markPrice`` set the current mark.
    """

    bid_s: str | None = None
    ask_s: str | None = None
    last_s: str | None = None
    mark_s: str | None = None
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None
    mark: Decimal | None = None
    mark_frame: int = 0


_EMPTY = _TickerState()


def _merge(new_s, old_s, old_v, field):
    """One field of a snapshot/delta: (raw, value). Missing → unchanged; "" → cleared.

    Raises :class:`BadValue` for a value that is neither a price string nor "".
    """
    if new_s is None or new_s == old_s:
        return old_s, old_v
    if new_s == "":
        return "", None
    return new_s, parse_price(new_s, field)


class BybitProtocol(ExchangeProtocol):
    heartbeat = "json"
    min_control_interval = 0.05

    def __init__(self, exchange: str = "bybit"):
        super().__init__(exchange)
        self._state: dict[str, _TickerState] = {}
        self._req = 0

    # -- outgoing ----------------------------------------------------------------------

    def _next_req_id(self) -> str:
        self._req += 1
        return str(self._req)

    def reset(self) -> None:
        super().reset()
        self._state.clear()

    def _requests(self, op: str, symbols: list[str], ids: list[str]) -> list[str]:
        out = []
        for i in range(0, len(ids), _ARGS_PER_REQUEST):
            args = [TOPIC_PREFIX + sid for sid in ids[i : i + _ARGS_PER_REQUEST]]
            req_id = self._next_req_id()
            self.pending[req_id] = (op, tuple(symbols[i : i + _ARGS_PER_REQUEST]))
            out.append(_dumps({"op": op, "req_id": req_id, "args": args}))
        return out

    def ping_message(self) -> str:
        return _dumps({"op": "ping", "req_id": "ping-" + self._next_req_id()})

    # -- incoming ----------------------------------------------------------------------

    def parse(self, raw: str | bytes, received_at: float) -> ParseResult:
        msg = self._frame_object(raw)
        if isinstance(msg, Malformed):
            return msg
        topic = msg.get("topic")
        if topic is None:
            return self._control(msg, raw)
        if type(topic) is not str:
            return Malformed("topic is not a string", excerpt(raw))
        if not topic.startswith(TOPIC_PREFIX):
            return Ignored("unexpected topic")
        try:
            return self._ticker(msg, topic[_PREFIX_LEN:], received_at, raw)
        except BadValue as exc:
            return Malformed(exc.reason, excerpt(raw), exc.detail)

    def _ticker(self, msg: dict, sid: str, received_at: float, raw) -> ParseResult:
        data = msg.get("data")
        if type(data) is not dict:
            return Malformed("ticker data is not an object", excerpt(raw))
        kind = msg.get("type")
        old: _TickerState | None
        if kind == "snapshot":
            old = _EMPTY
        elif kind == "delta":
            old = self._state.get(sid)
            if old is None:
                self.deltas_before_snapshot += 1
                return Ignored("delta before snapshot")
        else:
            return Malformed("unknown ticker type", excerpt(raw), excerpt(kind))
        dsym = data.get("symbol")
        if dsym is not None and dsym != sid:
            return Malformed("data.symbol does not match the topic", excerpt(raw))
        symbol = self.unified(sid)

        # validate the whole frame into a new value; nothing is stored unless it all holds
        get = data.get
        bid_s, bid = _merge(get("bid1Price"), old.bid_s, old.bid, "bid1Price")
        ask_s, ask = _merge(get("ask1Price"), old.ask_s, old.ask, "ask1Price")
        last_s, last = _merge(get("lastPrice"), old.last_s, old.last, "lastPrice")
        mark_s, mark = _merge(get("markPrice"), old.mark_s, old.mark, "markPrice")
        changed = kind == "snapshot" or bid_s != old.bid_s or ask_s != old.ask_s or last_s != old.last_s
        if changed:
            if bid is not None and ask is not None and bid > ask:
                return Malformed("crossed book", excerpt(raw), f"bid {bid_s} > ask {ask_s}")
            if bid is None and ask is None and last is None:
                return Malformed("ticker without any price", excerpt(raw))
        mark_frame = self.frames if mark_s != old.mark_s else old.mark_frame

        # valid: commit
        self._state[sid] = _TickerState(bid_s, ask_s, last_s, mark_s, bid, ask, last, mark, mark_frame)
        if not changed:
            return Alive(symbol)
        return Tick(self.exchange, symbol, bid, ask, last, ms_to_datetime(msg.get("ts")), received_at)

    def _control(self, msg: dict, raw) -> ParseResult:
        op = msg.get("op")
        req_id = msg.get("req_id")
        req_id = str(req_id) if req_id not in (None, "") else None
        ret_msg = msg.get("ret_msg")
        if op == "pong" or (op == "ping" and ret_msg == "pong"):
            return Pong(req_id)
        success = msg.get("success")
        if type(op) is str and type(success) is bool:
            request = self._answered(req_id)
            text = str(ret_msg) if ret_msg is not None else ""
            if success or "already subscribed" in text:
                return Ack(op, req_id)
            return RequestError(op, text, req_id, symbols=request[1] if request else ())
        return Malformed("unexpected message", excerpt(raw))

    # -- introspection (tests, debugging) -----------------------------------------------

    def mark_price(self, symbol_id: str):
        """Last known mark price of an exchange symbol id on this connection."""
        st = self._state.get(symbol_id)
        return st.mark if st is not None else None

    def mark_info(self, symbol: str) -> tuple[Decimal | None, int]:
        """(mark price, number of the frame that set it) of a unified symbol; (None, 0) if unknown."""
        try:
            st = self._state.get(exchange_symbol_id(symbol))
        except ValueError:
            return None, 0
        if st is None or st.mark is None:
            return None, 0
        return st.mark, st.mark_frame

    def state(self) -> dict[str, _TickerState]:
        """A copy of the per-symbol state (immutable values): for tests and debugging."""
        return dict(self._state)
