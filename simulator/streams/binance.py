"""Binance USD-M stream protocol: live SUBSCRIBE & co., ``bookTicker`` and ``aggTrade``.

Requests ``SUBSCRIBE``/``UNSUBSCRIBE``/``LIST_SUBSCRIPTIONS``/``SET_PROPERTY``/
``GET_PROPERTY``; errors as ``{"error":{"code":2,"msg":"Invalid request: .."},"id":..}``.
A combined connection wraps every payload as ``{"stream":..,"data":..}``. A
subscription to ``bookTicker`` gets the current book at once (a busy real market sends
one within milliseconds; a quiet simulated one must not look dead).
"""

from __future__ import annotations

import json
import re

from simulator.streams.connection import FIXED_SIZE, StreamConnection, dumps_compact

_BINANCE_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_BINANCE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
_BINANCE_STREAM_RE = re.compile(r"^([a-z0-9]{1,30})@(bookTicker|aggTrade)$")


class BinanceStreams:
    """The Binance side of :class:`~simulator.streams.hub.StreamHub` (requests and frames)."""

    def _binance_error(self, conn: StreamConnection, req_id, code: int, msg: str) -> None:
        conn.queue_control(dumps_compact({"error": {"code": code, "msg": msg}, "id": req_id}))

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

    def _binance_subscribe_stream(self, conn: StreamConnection, stream: str) -> bool:
        parsed = self._binance_stream(stream)
        if parsed is None:
            return False
        sid, kind = parsed
        if self._add_sub(conn, sid, kind) and kind == "bookTicker":
            conn.initial[sid] = None
        return True

    def _binance_request(self, conn: StreamConnection, text: str) -> None:
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
            conn.queue_control(dumps_compact({"result": streams, "id": req_id}))
            return
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not isinstance(params, list) or not params or params[0] != "combined":
                conn.queue_control(dumps_compact({"code": 0, "msg": "Unknown property", "id": req_id}))
                return
            if method == "GET_PROPERTY":
                conn.queue_control(dumps_compact({"result": conn.combined, "id": req_id}))
                return
            if len(params) != 2 or not isinstance(params[1], bool):
                self._binance_error(conn, req_id, 1, "Invalid value type: expected Boolean")
                return
            conn.combined = params[1]
            conn.queue_control(dumps_compact({"result": None, "id": req_id}))
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
        conn.queue_control(dumps_compact({"result": None, "id": req_id}))

    def _binance_wrap(self, conn: StreamConnection, stream: str, payload: dict) -> str:
        if conn.combined:
            return dumps_compact({"stream": stream, "data": payload})
        return dumps_compact(payload)

    def _binance_book_ticker(self, conn: StreamConnection, sid: str, quote) -> str:
        conn.update_id += 1
        ex = conn.exchange
        payload = {
            "e": "bookTicker",
            "u": conn.update_id,
            "s": sid,
            "b": self._fmt(ex, sid, quote.bid),
            "B": FIXED_SIZE,
            "a": self._fmt(ex, sid, quote.ask),
            "A": FIXED_SIZE,
            "T": quote.ts_ms,
            "E": quote.ts_ms,
        }
        return self._binance_wrap(conn, f"{sid.lower()}@bookTicker", payload)

    def _binance_agg_trade(self, conn: StreamConnection, sid: str, quote, last: str) -> str:
        conn.update_id += 1
        payload = {
            "e": "aggTrade",
            "E": quote.ts_ms,
            "a": conn.update_id,
            "s": sid,
            "p": last,
            "q": FIXED_SIZE,
            "f": conn.update_id,
            "l": conn.update_id,
            "T": quote.ts_ms,
            "m": False,
        }
        return self._binance_wrap(conn, f"{sid.lower()}@aggTrade", payload)
