"""The simulator's public WebSocket ticker streams (Bybit v5 linear, Binance USD-M).

Served by starlette under hypercorn (trio). Routes (see :func:`websocket_routes`):

* ``/bybit/v5/public/linear`` — Bybit v5 public linear: ``{"op":"subscribe",
  "req_id":..,"args":["tickers.BTCUSDT"]}`` → ack ``{"success":true,"ret_msg":"",
  "conn_id":..,"req_id":..,"op":"subscribe"}`` then a ``snapshot`` per topic, then a
  ``delta`` with only the changed fields on every price change; ``unsubscribe``
  likewise; ``{"op":"ping"}`` → ``{"success":true,"ret_msg":"pong",..,"op":"ping"}``.
  A bad topic → ``{"success":false,"ret_msg":"error:handler not found,topic:..",..}``.
* ``/binance/ws`` (raw streams, live ``SUBSCRIBE``/``UNSUBSCRIBE``/``LIST_SUBSCRIPTIONS``/
  ``SET_PROPERTY``/``GET_PROPERTY``), ``/binance/ws/<stream>`` and
  ``/binance/stream?streams=a@bookTicker/b@aggTrade`` (combined: every payload wrapped as
  ``{"stream":..,"data":..}``; live SUBSCRIBE works there too). Streams:
  ``<symbol>@bookTicker`` (on every book update) and ``<symbol>@aggTrade`` (when the
  last price changes). Errors: ``{"error":{"code":2,"msg":"Invalid request: .."},"id":..}``.
  Protocol-level pings are answered by hypercorn.

Deliberate simplifications: a Binance subscription gets the current book at once (a busy
real market sends one within milliseconds; a quiet simulated one must not look dead);
quantities are fixed; Bybit deltas carry only price fields.

Back-pressure: each connection keeps at most one pending update per subscribed symbol
(newer prices overwrite older unsent ones) plus a bounded queue of control replies, so a
slow client costs bounded memory and, when it catches up, gets the latest prices.

Fault hooks (:class:`StreamHub`): :meth:`~StreamHub.drop_all` ends connections at once
(the server closes them with code 1011, no goodbye), :meth:`~StreamHub.silence` keeps
them open but sends nothing — no data, no acks, no Bybit pongs — until resumed, and
:meth:`~StreamHub.send_raw` pushes an arbitrary text frame (tests of malformed input).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections import deque
from decimal import Decimal
from typing import Any, Callable

import trio
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

log = logging.getLogger(__name__)

__all__ = ["StreamHub", "websocket_routes", "EXCHANGES"]

EXCHANGES = ("bybit", "binanceusdm")
_ALIASES = {"bybit": "bybit", "binanceusdm": "binanceusdm", "binance": "binanceusdm", "binance-usdm": "binanceusdm"}
CONTROL_QUEUE_LIMIT = 1000  # per connection; oldest replies are dropped beyond it
_BINANCE_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_BINANCE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
_BINANCE_STREAM_RE = re.compile(r"^([a-z0-9]{1,30})@(bookTicker|aggTrade)$")
_FIXED_SIZE = "1.000"


def _exchange(name: str | None) -> tuple[str, ...]:
    if name is None:
        return EXCHANGES
    ex = _ALIASES.get(str(name).strip().lower())
    if ex is None:
        raise ValueError(f"unknown exchange {name!r}; expected one of {list(EXCHANGES)}")
    return (ex,)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _plain(d: Decimal) -> str:
    return "0" if d == 0 else format(d, "f")


class _Conn:
    """One client connection: its subscriptions and its bounded outgoing queues."""

    def __init__(self, hub: "StreamHub", exchange: str, websocket: WebSocket, *, combined: bool = False):
        self.hub = hub
        self.exchange = exchange
        self.websocket = websocket
        self.combined = combined  # Binance: wrap payloads as {"stream":..,"data":..}
        self.conn_id = str(uuid.uuid4())
        self.scope = trio.CancelScope()
        self.subs: dict[str, set[str]] = {}  # symbol id -> {"tickers"} (Bybit) / {"bookTicker","aggTrade"}
        self.control: deque[str] = deque(maxlen=CONTROL_QUEUE_LIMIT)
        self.initial: dict[str, None] = {}  # symbol ids owed a snapshot/initial book (ordered set)
        self.pending: dict[str, Any] = {}  # symbol id -> newest unsent quote (coalesced)
        self.sent: dict[str, dict[str, str]] = {}  # Bybit: fields last sent per symbol
        self.last_sent: dict[str, str] = {}  # Binance: last price last sent (aggTrade)
        self.cs = 0
        self.update_id = 0
        self.wake = trio.Event()
        self.coalesced = 0  # updates overwritten before they could be sent

    def poke(self) -> None:
        self.wake.set()

    def queue_control(self, text: str) -> None:
        self.control.append(text)
        self.wake.set()


class StreamHub:
    """Registry of live stream connections, price fan-out, and the WS fault switches.

    Create it with or without a state; :func:`websocket_routes` attaches the state.
    """

    def __init__(self, state=None):
        self.state = None
        self._unlisten: Callable[[], None] | None = None
        self._conns: set[_Conn] = set()
        self._by_symbol: dict[tuple[str, str], set[_Conn]] = {}
        self._silenced: set[str] = set()
        self.stats = {"connections": 0, "messages_sent": 0, "dropped": 0, "coalesced": 0}
        if state is not None:
            self.attach(state)

    # -- wiring --------------------------------------------------------------------------

    def attach(self, state) -> None:
        """Listen to ``state``'s price changes (idempotent)."""
        if state is self.state:
            return
        if self._unlisten is not None:
            self._unlisten()
        self.state = state
        self._unlisten = state.add_price_listener(self._on_price)

    def close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    # -- fault switches ------------------------------------------------------------------

    def drop_all(self, exchange: str | None = None) -> int:
        """Abruptly end every connection of ``exchange`` (all if None). Returns how many."""
        exs = _exchange(exchange)
        n = 0
        for conn in list(self._conns):
            if conn.exchange in exs:
                conn.scope.cancel()
                n += 1
        self.stats["dropped"] += n
        if n:
            log.info("simulator streams: dropped %d connection(s) of %s", n, "/".join(exs))
        return n

    def silence(self, exchange: str | None = None, on: bool = True) -> None:
        """Keep connections open but send nothing (no data, no replies, no pongs) while on."""
        for ex in _exchange(exchange):
            if on:
                self._silenced.add(ex)
            else:
                self._silenced.discard(ex)
        if not on:
            for conn in self._conns:
                conn.poke()
        log.info("simulator streams: %s %s", "silenced" if on else "resumed", exchange or "all exchanges")

    def resume(self, exchange: str | None = None) -> None:
        self.silence(exchange, on=False)

    def is_silenced(self, exchange: str) -> bool:
        return _exchange(exchange)[0] in self._silenced

    def send_raw(self, exchange: str | None, text: str) -> int:
        """Queue ``text`` verbatim on every connection of ``exchange`` (test hook)."""
        exs = _exchange(exchange)
        n = 0
        for conn in self._conns:
            if conn.exchange in exs:
                conn.queue_control(text)
                n += 1
        return n

    def connection_count(self, exchange: str | None = None) -> int:
        exs = _exchange(exchange)
        return sum(1 for c in self._conns if c.exchange in exs)

    def subscriptions(self, exchange: str | None = None) -> list[str]:
        """Symbol ids subscribed on any connection of ``exchange`` (sorted)."""
        exs = _exchange(exchange)
        return sorted({sid for c in self._conns if c.exchange in exs for sid in c.subs})

    # -- price fan-out -------------------------------------------------------------------

    def _on_price(self, exchange: str, symbol_id: str, quote) -> None:
        conns = self._by_symbol.get((exchange, symbol_id))
        if not conns:
            return
        for conn in conns:
            if symbol_id in conn.pending:
                conn.coalesced += 1
                self.stats["coalesced"] += 1
            conn.pending[symbol_id] = quote
            conn.wake.set()

    def _add_sub(self, conn: _Conn, sid: str, stream: str) -> bool:
        streams = conn.subs.get(sid)
        if streams is None:
            streams = conn.subs[sid] = set()
            self._by_symbol.setdefault((conn.exchange, sid), set()).add(conn)
        if stream in streams:
            return False
        streams.add(stream)
        return True

    def _remove_sub(self, conn: _Conn, sid: str, stream: str) -> None:
        streams = conn.subs.get(sid)
        if streams is None:
            return
        streams.discard(stream)
        if not streams:
            del conn.subs[sid]
            conn.pending.pop(sid, None)
            conn.initial.pop(sid, None)
            conn.sent.pop(sid, None)
            conn.last_sent.pop(sid, None)
            others = self._by_symbol.get((conn.exchange, sid))
            if others is not None:
                others.discard(conn)
                if not others:
                    del self._by_symbol[(conn.exchange, sid)]

    def _unregister(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        for sid in list(conn.subs):
            for stream in list(conn.subs.get(sid, ())):
                self._remove_sub(conn, sid, stream)

    def _has_market(self, exchange: str, sid: str) -> bool:
        try:
            return sid in self.state.markets(exchange)
        except Exception:  # unknown exchange in the state, etc.
            return False

    def _quote(self, exchange: str, sid: str):
        try:
            return self.state.quote(exchange, sid)
        except Exception:  # the market vanished
            return None

    def _fmt(self, exchange: str, sid: str, price: Decimal) -> str:
        """A price as the exchange would print it (the market's tick decimals)."""
        get_market = getattr(self.state, "get_market", None)
        if get_market is not None:
            try:
                m = get_market(exchange, sid)
                if m is not None:
                    return m.fmt_price(price)
            except Exception:  # formatting is cosmetic: fall back to the plain number
                pass
        return _plain(price)

    # -- serving -------------------------------------------------------------------------

    async def serve(self, websocket: WebSocket, exchange: str, *, combined: bool = False, streams=()) -> None:
        conn = _Conn(self, exchange, websocket, combined=combined)
        await websocket.accept()
        with conn.scope:
            self._conns.add(conn)
            self.stats["connections"] += 1
            try:
                for stream in streams:  # Binance URL streams (combined or /ws/<stream>)
                    self._binance_subscribe_stream(conn, stream)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sender, conn)
                    while True:
                        message = await websocket.receive()
                        if message["type"] == "websocket.disconnect":
                            break
                        text = message.get("text")
                        if text is None:
                            data = message.get("bytes") or b""
                            text = data.decode("utf-8", "replace")
                        if exchange == "bybit":
                            self._bybit_request(conn, text)
                        else:
                            self._binance_request(conn, text)
                    nursery.cancel_scope.cancel()
            finally:
                self._unregister(conn)
        # returning without a close message: hypercorn closes the socket with 1011

    async def _sender(self, conn: _Conn) -> None:
        ws = conn.websocket
        try:
            while True:
                if conn.exchange in self._silenced or not (conn.control or conn.initial or conn.pending):
                    conn.wake = trio.Event()
                    if conn.exchange in self._silenced or not (conn.control or conn.initial or conn.pending):
                        await conn.wake.wait()
                    continue
                if conn.control:
                    texts = [conn.control.popleft()]
                elif conn.initial:
                    sid = next(iter(conn.initial))
                    del conn.initial[sid]
                    conn.pending.pop(sid, None)
                    texts = self._initial_messages(conn, sid)
                else:
                    sid = next(iter(conn.pending))
                    quote = conn.pending.pop(sid)
                    texts = self._update_messages(conn, sid, quote)
                for text in texts:
                    await ws.send_text(text)
                    self.stats["messages_sent"] += 1
        except Exception as exc:  # the client went away mid-send, etc.
            log.debug("simulator streams: sender of %s ends: %r", conn.conn_id, exc)
            conn.scope.cancel()

    def _initial_messages(self, conn: _Conn, sid: str) -> list[str]:
        quote = self._quote(conn.exchange, sid)
        if quote is None:
            return []
        if conn.exchange == "bybit":
            return [self._bybit_ticker(conn, sid, quote, snapshot=True)]
        if "bookTicker" in conn.subs.get(sid, ()):
            return [self._binance_book_ticker(conn, sid, quote)]
        return []

    def _update_messages(self, conn: _Conn, sid: str, quote) -> list[str]:
        if sid not in conn.subs:
            return []
        if conn.exchange == "bybit":
            text = self._bybit_ticker(conn, sid, quote, snapshot=False)
            return [text] if text is not None else []
        out = []
        streams = conn.subs[sid]
        if "aggTrade" in streams:
            last = self._fmt(conn.exchange, sid, quote.last)
            if conn.last_sent.get(sid) != last:
                conn.last_sent[sid] = last
                out.append(self._binance_agg_trade(conn, sid, quote, last))
        if "bookTicker" in streams:
            out.append(self._binance_book_ticker(conn, sid, quote))
        return out

    # -- Bybit ---------------------------------------------------------------------------

    def _bybit_reply(self, conn: _Conn, op: str, req_id, success: bool, ret_msg: str) -> None:
        reply = {"success": success, "ret_msg": ret_msg, "conn_id": conn.conn_id}
        if req_id is not None:
            reply["req_id"] = req_id
        reply["op"] = op
        conn.queue_control(_dumps(reply))

    def _bybit_request(self, conn: _Conn, text: str) -> None:
        try:
            req = json.loads(text)
        except ValueError:
            self._bybit_reply(conn, "", None, False, "error:request not in json format")
            return
        if not isinstance(req, dict):
            self._bybit_reply(conn, "", None, False, "error:request not in json format")
            return
        op = req.get("op")
        req_id = req.get("req_id")
        if req_id is not None and not isinstance(req_id, str):
            req_id = str(req_id)
        if op == "ping":
            if conn.exchange not in self._silenced:  # a silent server answers nothing
                reply = {"success": True, "ret_msg": "pong", "conn_id": conn.conn_id, "req_id": req_id or "",
                         "op": "ping"}
                conn.queue_control(_dumps(reply))
            return
        if op not in ("subscribe", "unsubscribe"):
            self._bybit_reply(conn, str(op), req_id, False, f"error:unknown op {op!r}")
            return
        args = req.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            self._bybit_reply(conn, op, req_id, False, "error:args must be a non-empty list of topics")
            return
        errors = []
        for topic in args:
            sid = topic[len("tickers."):] if topic.startswith("tickers.") else None
            if sid is None or not self._has_market("bybit", sid):
                errors.append(f"error:handler not found,topic:{topic}")
                continue
            if op == "subscribe":
                if self._add_sub(conn, sid, "tickers"):
                    conn.initial[sid] = None
                else:
                    errors.append(f"error:already subscribed,topic:{topic}")
            else:
                self._remove_sub(conn, sid, "tickers")
        if errors:
            self._bybit_reply(conn, op, req_id, False, errors[0])
        else:
            self._bybit_reply(conn, op, req_id, True, "")

    def _bybit_ticker(self, conn: _Conn, sid: str, quote, *, snapshot: bool) -> str | None:
        ex = conn.exchange
        fields = {
            "lastPrice": self._fmt(ex, sid, quote.last),
            "markPrice": self._fmt(ex, sid, quote.last),
            "indexPrice": self._fmt(ex, sid, quote.last),
            "bid1Price": self._fmt(ex, sid, quote.bid),
            "ask1Price": self._fmt(ex, sid, quote.ask),
        }
        prev = conn.sent.get(sid)
        if snapshot or prev is None:
            data = {
                "symbol": sid,
                "tickDirection": "ZeroPlusTick",
                **fields,
                "bid1Size": _FIXED_SIZE,
                "ask1Size": _FIXED_SIZE,
                "fundingRate": "0.0001",
            }
            kind = "snapshot"
        else:
            changed = {k: v for k, v in fields.items() if prev.get(k) != v}
            if not changed:
                return None
            if "lastPrice" in changed:
                up = Decimal(changed["lastPrice"]) > Decimal(prev["lastPrice"])
                changed["tickDirection"] = "PlusTick" if up else "MinusTick"
            data = {"symbol": sid, **changed}
            kind = "delta"
        conn.sent[sid] = fields
        conn.cs += 1
        return _dumps({"topic": f"tickers.{sid}", "type": kind, "ts": quote.ts_ms, "cs": conn.cs, "data": data})

    # -- Binance -------------------------------------------------------------------------

    def _binance_error(self, conn: _Conn, req_id, code: int, msg: str) -> None:
        conn.queue_control(_dumps({"error": {"code": code, "msg": msg}, "id": req_id}))

    def _binance_stream(self, stream: str) -> tuple[str, str] | None:
        """``"btcusdt@bookTicker"`` → ("BTCUSDT", "bookTicker") if that market exists."""
        if not isinstance(stream, str):
            return None
        m = _BINANCE_STREAM_RE.match(stream)
        if m is None:
            return None
        sid = m.group(1).upper()
        if not self._has_market("binanceusdm", sid):
            return None
        return sid, m.group(2)

    def _binance_subscribe_stream(self, conn: _Conn, stream: str) -> bool:
        parsed = self._binance_stream(stream)
        if parsed is None:
            return False
        sid, kind = parsed
        if self._add_sub(conn, sid, kind) and kind == "bookTicker":
            conn.initial[sid] = None
        return True

    def _binance_request(self, conn: _Conn, text: str) -> None:
        try:
            req = json.loads(text)
        except ValueError as exc:
            self._binance_error(conn, None, 3, f"Invalid JSON: {exc}")
            return
        if not isinstance(req, dict):
            self._binance_error(conn, None, 3, "Invalid JSON: expected an object")
            return
        req_id = req.get("id")
        if "id" not in req or isinstance(req_id, bool) or not (
            req_id is None or isinstance(req_id, int) or (isinstance(req_id, str) and _BINANCE_ID_RE.match(req_id))
        ):
            self._binance_error(conn, None, 2, "Invalid request: request ID must be an unsigned integer")
            return
        method = req.get("method")
        if method not in _BINANCE_METHODS:
            self._binance_error(
                conn,
                req_id,
                2,
                f"Invalid request: unknown variant `{method}`, expected one of "
                + ", ".join(f"`{m}`" for m in _BINANCE_METHODS),
            )
            return
        params = req.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            streams = sorted(f"{sid.lower()}@{kind}" for sid, kinds in conn.subs.items() for kind in kinds)
            conn.queue_control(_dumps({"result": streams, "id": req_id}))
            return
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not isinstance(params, list) or not params or params[0] != "combined":
                conn.queue_control(_dumps({"code": 0, "msg": "Unknown property", "id": req_id}))
                return
            if method == "GET_PROPERTY":
                conn.queue_control(_dumps({"result": conn.combined, "id": req_id}))
                return
            if len(params) != 2 or not isinstance(params[1], bool):
                self._binance_error(conn, req_id, 1, "Invalid value type: expected Boolean")
                return
            conn.combined = params[1]
            conn.queue_control(_dumps({"result": None, "id": req_id}))
            return
        if not isinstance(params, list) or not params or not all(isinstance(p, str) for p in params):
            self._binance_error(conn, req_id, 2, "Invalid request: params must be a non-empty array of stream names")
            return
        bad = [p for p in params if self._binance_stream(p) is None]
        if bad:
            self._binance_error(conn, req_id, 2, f"Invalid request: unknown stream(s) {', '.join(bad)}")
            return
        for stream in params:
            if method == "SUBSCRIBE":
                self._binance_subscribe_stream(conn, stream)
            else:
                sid, kind = self._binance_stream(stream)
                self._remove_sub(conn, sid, kind)
        conn.queue_control(_dumps({"result": None, "id": req_id}))

    def _binance_wrap(self, conn: _Conn, stream: str, payload: dict) -> str:
        if conn.combined:
            return _dumps({"stream": stream, "data": payload})
        return _dumps(payload)

    def _binance_book_ticker(self, conn: _Conn, sid: str, quote) -> str:
        conn.update_id += 1
        ex = conn.exchange
        payload = {
            "e": "bookTicker",
            "u": conn.update_id,
            "s": sid,
            "b": self._fmt(ex, sid, quote.bid),
            "B": _FIXED_SIZE,
            "a": self._fmt(ex, sid, quote.ask),
            "A": _FIXED_SIZE,
            "T": quote.ts_ms,
            "E": quote.ts_ms,
        }
        return self._binance_wrap(conn, f"{sid.lower()}@bookTicker", payload)

    def _binance_agg_trade(self, conn: _Conn, sid: str, quote, last: str) -> str:
        conn.update_id += 1
        payload = {
            "e": "aggTrade",
            "E": quote.ts_ms,
            "a": conn.update_id,
            "s": sid,
            "p": last,
            "q": _FIXED_SIZE,
            "f": conn.update_id,
            "l": conn.update_id,
            "T": quote.ts_ms,
            "m": False,
        }
        return self._binance_wrap(conn, f"{sid.lower()}@aggTrade", payload)


def websocket_routes(state, hub: StreamHub) -> list[WebSocketRoute]:
    """The public stream routes, bound to ``state`` (the hub starts listening to it)."""
    hub.attach(state)

    async def bybit_linear(websocket: WebSocket) -> None:
        await hub.serve(websocket, "bybit")

    async def binance_ws(websocket: WebSocket) -> None:
        await hub.serve(websocket, "binanceusdm")

    async def binance_ws_stream(websocket: WebSocket) -> None:
        await hub.serve(websocket, "binanceusdm", streams=[websocket.path_params.get("stream", "")])

    async def binance_combined(websocket: WebSocket) -> None:
        raw = websocket.query_params.get("streams", "")
        streams = [s for s in raw.split("/") if s]
        await hub.serve(websocket, "binanceusdm", combined=True, streams=streams)

    return [
        WebSocketRoute("/bybit/v5/public/linear", bybit_linear),
        WebSocketRoute("/binance/ws", binance_ws),
        WebSocketRoute("/binance/ws/{stream}", binance_ws_stream),
        WebSocketRoute("/binance/stream", binance_combined),
    ]
