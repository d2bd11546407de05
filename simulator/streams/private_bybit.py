"""Bybit v5 private stream messages: the requests (auth, subscribe, ping) and the topics.

From Bybit's v5 docs (GitHub bybit-exchange/docs): ``docs/v5/ws/connect.mdx`` —
``{"op":"auth","args":[apiKey, expires, signature]}`` with signature = hex
HMAC-SHA256(secret, "GET/realtime" + expires) and ``expires`` (ms) in the future;
success ``{"success":true,"ret_msg":"","op":"auth","conn_id":..}`` (the docs' sample);
the private pong ``{"req_id":..,"op":"pong","args":["<ms>"],"conn_id":..}``; the
subscribe answer ``{"success":true,"ret_msg":"","op":"subscribe","conn_id":..}``.

Not in v5's docs, from real answers: an auth failure (bad signature, past ``expires``,
unknown key, malformed args) is ``{"conn_id":..,"op":"auth","ret_msg":"Params
Error","success":false}`` (a /v5/private answer posted in bybit-exchange/
api-usage-examples issue #70); a ``req_id`` sent is echoed (bybit-java-api issue #63).
A subscribe before auth is refused ``"Request not authorized"`` (the text client code
checks for; not documented either). Topics ``position``, ``order``, ``execution``
and their ``.linear`` variants (docs/v5/websocket/private/position.mdx, order.mdx,
execution.mdx), each message ``{"id","topic","creationTime","data":[..]}`` whose rows
are the REST rows of the same facts (``/v5/order/realtime``, ``/v5/execution/list``,
``/v5/position/list``) plus ``category`` — so the times agree with REST by construction.

For one order: ``order`` New, ``execution`` (all its fills in one message, as the docs
allow), ``order`` in its final state (Filled, PartiallyFilledCanceled, ...), then
``position``. An admin change is a filled Market order of a "trading bot" on the
account (not reduce-only), shown the same way; a cancel is one ``order`` Cancelled.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import uuid
from decimal import Decimal

from simulator.rest_bybit.api import BybitAPI
from simulator.state import Fill, Order, SimState, dstr
from simulator.state.activity import Activity, AdminFillActivity, CancelActivity, OrderActivity
from simulator.state.orders import bot_order
from simulator.streams.connection import dumps_compact

EXCHANGE = "bybit"
TOPICS = ("position", "order", "execution")
CATEGORY_TOPICS = tuple(f"{t}.linear" for t in TOPICS)
AUTH_FAILED = "Params Error"
NOT_AUTHORIZED = "Request not authorized"
_ids = itertools.count(1)
# in the REST order row, not in the order stream's example (docs/v5/websocket/private/order.mdx)
_REST_ONLY_ORDER_KEYS = ("basePrice", "createType", "isLeverage", "marketUnit", "ocoTriggerBy")


def _reply(conn_id: str, op: str, req_id, success: bool, ret_msg: str) -> str:
    reply = {"success": success, "ret_msg": ret_msg, "op": op, "conn_id": conn_id}
    if req_id is not None:
        reply["req_id"] = req_id
    return dumps_compact(reply)


def auth_problem(state: SimState, args) -> str | None:
    """None if ``args`` authenticate, else what is wrong (for the log; the client gets the docs' answer)."""
    if not isinstance(args, list) or len(args) != 3:
        return "args must be [apiKey, expires, signature]"
    key, expires, signature = args
    if not isinstance(key, str) or key not in state.api_keys:
        return "unknown API key"
    if isinstance(expires, bool) or not isinstance(expires, (int, str)) or not str(expires).isdigit():
        return "expires must be an integer (ms)"
    if int(expires) <= state.now_ms():
        return "expires is in the past"
    if not isinstance(signature, str):
        return "signature must be a string"
    expected = hmac.new(state.api_keys[key].encode(), f"GET/realtime{expires}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        return "bad signature"
    return None


class BybitPrivateSession:
    """One connection's protocol state: authenticated or not, its topics."""

    def __init__(self, state: SimState, conn_id: str):
        self.state = state
        self.conn_id = conn_id
        self.api_key: str | None = None
        self.topics: set[str] = set()
        self.last_auth_problem: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.api_key is not None

    def handle(self, text: str, *, silenced: bool) -> list[str]:
        """The replies to one client frame (none while silenced: a silent server answers nothing)."""
        try:
            req = json.loads(text)
        except ValueError:
            req = None
        if not isinstance(req, dict):
            replies = [_reply(self.conn_id, "", None, False, "error:request not in json format")]
            return [] if silenced else replies
        op = req.get("op")
        req_id = req.get("req_id")
        if req_id is not None and not isinstance(req_id, str):
            req_id = str(req_id)
        if op == "ping":
            pong = {"op": "pong", "args": [str(self.state.now_ms())], "conn_id": self.conn_id}
            if req_id is not None:
                pong = {"req_id": req_id, **pong}
            replies = [dumps_compact(pong)]
        elif op == "auth":
            replies = [self._auth(req.get("args"), req_id)]
        elif op in ("subscribe", "unsubscribe"):
            replies = [self._subscribe(op, req.get("args"), req_id)]
        else:
            replies = [_reply(self.conn_id, str(op), req_id, False, f"error:unknown op {op!r}")]
        return [] if silenced else replies

    def _auth(self, args, req_id) -> str:
        problem = "auth_fail fault" if self.state.faults.take_bybit_auth_fail() else auth_problem(self.state, args)
        self.last_auth_problem = problem
        if problem is not None:
            return _reply(self.conn_id, "auth", req_id, False, AUTH_FAILED)
        self.api_key = args[0]
        return _reply(self.conn_id, "auth", req_id, True, "")

    def _subscribe(self, op: str, args, req_id) -> str:
        if not self.authenticated:
            return _reply(self.conn_id, op, req_id, False, NOT_AUTHORIZED)
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            return _reply(self.conn_id, op, req_id, False, "error:args must be a non-empty list of topics")
        bad = [a for a in args if a not in TOPICS + CATEGORY_TOPICS]
        if bad:
            return _reply(self.conn_id, op, req_id, False, f"error:handler not found,topic:{bad[0]}")
        if op == "subscribe":
            self.topics.update(args)
        else:
            self.topics.difference_update(args)
        return _reply(self.conn_id, op, req_id, True, "")


class BybitPrivateMessages:
    """Turns account activity into topic messages (rows shared with the REST dialect)."""

    def __init__(self, state: SimState):
        self.state = state
        self.rest = BybitAPI(state)

    def activity_messages(self, activity: Activity) -> list[tuple[str, list[dict]]]:
        """[(topic kind, rows)] in the order they are sent; empty for another exchange."""
        if isinstance(activity, OrderActivity):
            if activity.order.exchange != EXCHANGE:
                return []
            return self._order_messages(activity.order, activity.fills)
        if isinstance(activity, AdminFillActivity):
            if activity.fill.exchange != EXCHANGE:
                return []
            return self._order_messages(bot_order(activity.fill), [activity.fill])
        if isinstance(activity, CancelActivity) and activity.order.exchange == EXCHANGE:
            return [("order", [self._order_row(activity.order)])]
        return []

    def _order_row(self, o: Order, *, as_new: bool = False) -> dict:
        """The REST order row in the stream's key set (the docs' order stream example)."""
        row = {"category": "linear", **self.rest._order_row(o)}
        for key in _REST_ONLY_ORDER_KEYS:
            row.pop(key, None)
        pnl = sum(
            (f.realized_pnl for f in self.state.fills if f.exchange == EXCHANGE and f.order_id == o.order_id),
            Decimal(0),
        )
        row["closedPnl"] = dstr(pnl)
        row["feeCurrency"] = "USDT"
        row["cumFeeDetail"] = {"USDT": row["cumExecFee"]}
        if as_new:
            row.update(
                {
                    "orderStatus": "New",
                    "avgPrice": "",
                    "cumExecQty": "0",
                    "cumExecValue": "0",
                    "cumExecFee": "0",
                    "leavesQty": row["qty"],
                    "updatedTime": row["createdTime"],
                    "closedPnl": "0",
                    "cumFeeDetail": {},
                }
            )
        return row

    def _execution_row(self, f: Fill) -> dict:
        """The REST execution row plus what the stream adds (the docs' linear execution example)."""
        row = {"category": "linear", **self.rest._execution_row(f)}
        row.update({"execPnl": dstr(f.realized_pnl), "isLeverage": "0", "marketUnit": "", "extraFees": []})
        return row

    def _order_messages(self, o: Order, fills: list[Fill]) -> list[tuple[str, list[dict]]]:
        out: list[tuple[str, list[dict]]] = [("order", [self._order_row(o, as_new=True)])]
        if fills:
            out.append(("execution", [self._execution_row(f) for f in fills]))
        if o.status != "new":
            out.append(("order", [self._order_row(o)]))
        if fills:
            out.append(("position", [self._position_row(fills[-1].symbol)]))
        return out

    def _position_row(self, symbol: str) -> dict:
        m = self.state.market(EXCHANGE, symbol)
        row = self.rest._position_row(m, self.state.position(EXCHANGE, symbol))
        row.pop("openTime", None)
        row["entryPrice"] = row.pop("avgPrice")
        return {"category": "linear", **row}

    def envelope(self, topic: str, rows: list[dict]) -> str:
        return dumps_compact(
            {
                "id": f"{next(_ids)}{uuid.uuid4()}",
                "topic": topic,
                "creationTime": self.state.now_ms(),
                "data": rows,
            }
        )
