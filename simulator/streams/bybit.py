"""Bybit v5 public linear stream protocol: subscribe/unsubscribe/ping, ticker frames.

``{"op":"subscribe","req_id":..,"args":["tickers.BTCUSDT"]}`` → an ack, then a
``snapshot`` per topic, then a ``delta`` with only the changed fields on every price
change. Deltas carry only price fields; sizes are fixed.
"""

from __future__ import annotations

import json
from decimal import Decimal

from simulator.streams.connection import FIXED_SIZE, StreamConnection, dumps_compact, plain_decimal


class BybitStreams:
    """The Bybit side of :class:`~simulator.streams.hub.StreamHub` (requests and frames)."""

    def _bybit_reply(self, conn: StreamConnection, op: str, req_id, success: bool, ret_msg: str) -> None:
        reply = {"success": success, "ret_msg": ret_msg, "conn_id": conn.conn_id}
        if req_id is not None:
            reply["req_id"] = req_id
        reply["op"] = op
        conn.queue_control(dumps_compact(reply))

    def _bybit_request(self, conn: StreamConnection, text: str) -> None:
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
                conn.queue_control(dumps_compact(reply))
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

    def _bybit_ticker(self, conn: StreamConnection, sid: str, quote, *, snapshot: bool) -> str | None:
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
                **self._bybit_day_fields(ex, sid, quote),
                "bid1Size": FIXED_SIZE,
                "ask1Size": FIXED_SIZE,
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
        return dumps_compact({"topic": f"tickers.{sid}", "type": kind, "ts": quote.ts_ms, "cs": conn.cs, "data": data})

    def _bybit_day_fields(self, ex: str, sid: str, quote) -> dict:
        """The rest of a snapshot: 24-hour and open-interest fields (a real snapshot has them all).

        Never in a delta: the simulator's deltas carry price fields only.
        """
        try:
            stats = self.state.market_stats(ex, sid)
        except Exception:  # a state without statistics for it: the last price stands in
            stats = {"open": quote.last, "high": quote.last, "low": quote.last, "turnover": 0, "volume": 0}
        day_open = stats["open"]
        change = (quote.last - day_open) / day_open if day_open else Decimal(0)
        funding_period_ms = 8 * 3600 * 1000
        return {
            "price24hPcnt": format(change.quantize(Decimal("0.000001")), "f"),
            "prevPrice24h": self._fmt(ex, sid, day_open),
            "highPrice24h": self._fmt(ex, sid, stats["high"]),
            "lowPrice24h": self._fmt(ex, sid, stats["low"]),
            "prevPrice1h": self._fmt(ex, sid, day_open),
            "openInterest": FIXED_SIZE,
            "openInterestValue": plain_decimal(Decimal(FIXED_SIZE) * quote.last),
            "turnover24h": plain_decimal(Decimal(stats["turnover"])),
            "volume24h": plain_decimal(Decimal(stats["volume"])),
            "nextFundingTime": str((quote.ts_ms // funding_period_ms + 1) * funding_period_ms),
        }

    # -- Binance -------------------------------------------------------------------------
