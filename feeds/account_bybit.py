"""Bybit v5 private stream (``wss://stream.bybit.com/v5/private``), linear only. Sans-IO.

Wire format (Bybit v5 docs: "Connect" — ``docs/v5/websocket/wss-authentication.mdx``,
slug ``/v5/ws/connect`` — and the private topics ``docs/v5/websocket/private/*.mdx``
in ``github.com/bybit-exchange/docs``; real examples and their sources in
``tests/conformance/private/`` and ``tests/conformance/SOURCES.md``):

* login       ``{"op":"auth","args":[api_key, expires, signature]}`` where ``expires``
  is a millisecond time in the future and ``signature`` the hex HMAC-SHA256 of
  ``"GET/realtime" + str(expires)`` keyed with the API secret
  (:meth:`BybitAccountProtocol.auth_message`). Answer
  ``{"success":true,"ret_msg":"","op":"auth","conn_id":".."}``; a refusal has
  ``"success":false`` and the reason in ``ret_msg``.
* subscribe   ``{"op":"subscribe","args":["position.linear","order.linear",
  "execution.linear"]}``: the *categorised* topics, which carry linear contracts only
  (an all-in-one topic and a categorised one cannot share a request). Answer
  ``{"success":true,"ret_msg":"","op":"subscribe","conn_id":".."}``.
* heartbeat   ``{"req_id":"..","op":"ping"}`` about every 20 s; the private answer is
  ``{"req_id":"..","op":"pong","args":["<ms>"],"conn_id":".."}``.
* topics      ``{"id","topic","creationTime","data":[entries]}``; every entry has its
  ``category`` and only ``linear`` ones are read (others are :class:`Ignored`).

  - ``position``: the whole position of one symbol. ``positionIdx`` 0 is one-way mode
    (1/2 are the two sides of hedge mode: :class:`Ignored`); ``side`` ``Buy``/``Sell``,
    ``""`` for an empty position (``"None"`` in other clients' examples: read as empty
    too, and only with size 0); ``size``; ``entryPrice``; ``updatedTime`` (a string
    of milliseconds).
  - ``order``: ``orderId``, ``orderLinkId`` (ours), ``side``, ``orderStatus``, ``qty``,
    ``cumExecQty``, ``avgPrice`` (``""`` before any fill), ``reduceOnly``,
    ``updatedTime``.
  - ``execution``: one fill per entry: ``execId``, ``execQty``, ``execPrice``,
    ``execTime``, ``orderId``, ``orderLinkId``, ``side``, ``execType``.

Only ``execType`` ``Trade`` — a fill of an order — is an :class:`Execution`.
``Funding`` is a fee, not a fill; ``AdlTrade``/``BustTrade`` (auto-deleveraging,
takeover liquidation) and ``Delivery``/``Settle`` close a position by the exchange's
hand, not by one of our orders: they are :class:`Ignored`, and the position topic
reports the position they leave (the close path reads those fills over REST).

A frame with any malformed entry is one :class:`Malformed` and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable

from feeds.account_events import (
    ORDER_CANCELED,
    ORDER_CLOSED,
    ORDER_OPEN,
    ORDER_REJECTED,
    AccountParseResult,
    AuthResult,
    Execution,
    Ignored,
    Malformed,
    OrderChange,
    Pong,
    PositionChange,
    Subscribed,
)
from feeds.account_fields import (
    NotUsdtPerpetual,
    amount,
    flag,
    optional_text,
    price,
    price_or_none,
    symbol,
    text,
    time_ms,
)
from feeds.fields import BadValue, excerpt, loads

__all__ = ["TOPICS", "BybitAccountProtocol", "auth_signature"]

TOPICS = ("position.linear", "order.linear", "execution.linear")
"""The categorised linear topics ("Categorised Topic" on each topic's page)."""

ORDER_STATUS = {
    "New": ORDER_OPEN,
    "PartiallyFilled": ORDER_OPEN,
    "Untriggered": ORDER_OPEN,
    "Triggered": ORDER_OPEN,  # "instantaneous state ... from Untriggered to New"
    "Filled": ORDER_CLOSED,
    "Cancelled": ORDER_CANCELED,  # "in derivatives ... may have an executed qty"
    "PartiallyFilledCanceled": ORDER_CANCELED,  # "only spot has this order status"
    "Deactivated": ORDER_CANCELED,
    "Rejected": ORDER_REJECTED,
}
"""``orderStatus`` → :data:`OrderChange.status` (``docs/v5/enum.mdx``, orderStatus)."""

SIDES = {"Buy": "buy", "Sell": "sell"}
POSITION_SIDES = {"Buy": "long", "Sell": "short"}
_KINDS = {"position": "bad position", "order": "bad order", "execution": "bad execution"}


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def auth_signature(api_secret: str, expires_ms: int) -> str:
    """Hex HMAC-SHA256 of ``"GET/realtime" + str(expires_ms)`` keyed with the secret."""
    payload = f"GET/realtime{expires_ms}".encode()
    return hmac.new(api_secret.encode(), payload, hashlib.sha256).hexdigest()


class BybitAccountProtocol:
    """Builds the requests of one Bybit v5 private connection and parses its frames.

    The only state is the ping counter (numbers the ``req_id`` of each ping).
    """

    exchange = "bybit"
    #: "json": send :meth:`ping_message` and expect a :class:`Pong`
    heartbeat = "json"

    def __init__(self) -> None:
        self._pings = 0

    # -- requests ----------------------------------------------------------------------

    def auth_message(self, api_key: str, api_secret: str, expires_ms: int) -> str:
        """The ``auth`` request; ``expires_ms`` must lie a little in the future."""
        return _dumps({"op": "auth", "args": [api_key, expires_ms, auth_signature(api_secret, expires_ms)]})

    def subscribe_message(self) -> str:
        """The one subscribe request for the linear position, order and execution topics."""
        return _dumps({"req_id": "account", "op": "subscribe", "args": list(TOPICS)})

    def ping_message(self) -> str:
        self._pings += 1
        return _dumps({"req_id": f"ping-{self._pings}", "op": "ping"})

    # -- parsing -----------------------------------------------------------------------

    def parse(self, raw: str | bytes) -> list[AccountParseResult]:
        """One received frame → what it says. Never raises, whatever ``raw`` holds."""
        try:
            msg = loads(raw)
        except Exception:  # any decoder error: bad UTF-8, nesting too deep, ...
            return [Malformed("invalid JSON", excerpt(raw))]
        if type(msg) is not dict:
            return [Malformed("not a JSON object", excerpt(raw))]
        topic = msg.get("topic")
        if topic is not None:
            return self._topic(topic, msg, raw)
        return [self._reply(msg, raw)]

    def _reply(self, msg: dict, raw: str | bytes) -> AccountParseResult:
        op = msg.get("op")
        request = msg.get("request")
        if op is None and type(request) is dict:
            op = request.get("op")  # the shape of Bybit's earlier WebSocket API
        if op == "pong" or (op == "ping" and msg.get("ret_msg") == "pong"):
            req_id = msg.get("req_id")
            return Pong(req_id if type(req_id) is str and req_id else None)
        if op not in ("auth", "subscribe"):
            return Ignored(f"reply to {excerpt(repr(op))[:40]}")
        ok = msg.get("success")
        message = msg.get("ret_msg", "")
        if type(ok) is not bool or type(message) is not str:
            return Malformed("bad reply", excerpt(raw), f"{op} answer without boolean success / string ret_msg")
        return AuthResult(ok, message) if op == "auth" else Subscribed(ok, message)

    def _topic(self, topic: object, msg: dict, raw: str | bytes) -> list[AccountParseResult]:
        if type(topic) is not str:
            return [Malformed("bad topic", excerpt(raw), "topic is not a string")]
        name, _, category = topic.partition(".")
        read = {"position": self._position, "order": self._order, "execution": self._execution}.get(name)
        if read is None or category not in ("", "linear"):
            return [Ignored(f"topic {excerpt(topic)[:40]}")]
        entries = msg.get("data")
        if type(entries) is not list:
            return [Malformed(_KINDS[name], excerpt(raw), "data is not a list")]
        if not entries:
            return [Ignored(f"{name} frame without entries")]
        try:
            return [self._entry(read, name, category, entry, i) for i, entry in enumerate(entries)]
        except BadValue as exc:
            return [Malformed(_KINDS[name], excerpt(raw), exc.detail)]

    def _entry(
        self, read: Callable[[dict, str], AccountParseResult], name: str, topic_category: str, entry: object, i: int
    ) -> AccountParseResult:
        where = f"data[{i}]"
        if type(entry) is not dict:
            raise BadValue(_KINDS[name], f"{where} is not an object")
        # The docs list `category` in every entry; on a categorised topic it is implied anyway.
        category = entry.get("category", topic_category or None)
        if type(category) is not str:
            raise BadValue(_KINDS[name], f"{where}.category is not a string")
        if category != "linear":
            return Ignored(f"{excerpt(category)[:20]} {name} (only linear is managed)")
        try:
            return read(entry, where)
        except NotUsdtPerpetual as other:
            return Ignored(f"{name} of {other.symbol_id}, not a USDT perpetual")

    def _position(self, entry: dict, where: str) -> AccountParseResult:
        index = entry.get("positionIdx")
        if type(index) is not int or index not in (0, 1, 2):
            raise BadValue("bad position", f"{where}.positionIdx is not 0, 1 or 2 ({excerpt(repr(index))[:40]})")
        side_code = entry.get("side")
        if side_code not in ("Buy", "Sell", "", "None"):
            raise BadValue("bad position", f"{where}.side is not Buy/Sell/'' ({excerpt(repr(side_code))[:40]})")
        size = amount(entry.get("size"), f"{where}.size")
        entry_price = amount(entry.get("entryPrice"), f"{where}.entryPrice")
        when = time_ms(entry.get("updatedTime"), f"{where}.updatedTime")
        unified = symbol(entry.get("symbol"), f"{where}.symbol")
        if index != 0:
            return Ignored(f"hedge-mode position (positionIdx {index}) of {unified}: only one-way accounts are managed")
        if size == 0:
            return PositionChange("bybit", unified, None, size, None, when)
        if side_code not in POSITION_SIDES:
            raise BadValue("bad position", f"{where}: side {side_code!r} with size {entry.get('size')!r}")
        if entry_price == 0:
            raise BadValue("bad position", f"{where}: open position of size {entry.get('size')!r} with entryPrice 0")
        return PositionChange("bybit", unified, POSITION_SIDES[side_code], size, entry_price, when)

    def _order(self, entry: dict, where: str) -> AccountParseResult:
        status_code = entry.get("orderStatus")
        status = ORDER_STATUS.get(status_code) if type(status_code) is str else None
        if status is None:
            raise BadValue("bad order", f"{where}.orderStatus is unknown ({excerpt(repr(status_code))[:40]})")
        side = _side(entry.get("side"), f"{where}.side")
        requested = amount(entry.get("qty"), f"{where}.qty")
        return OrderChange(
            exchange="bybit",
            symbol=symbol(entry.get("symbol"), f"{where}.symbol"),
            client_order_id=optional_text(entry.get("orderLinkId"), f"{where}.orderLinkId"),
            exchange_order_id=text(entry.get("orderId"), f"{where}.orderId"),
            side=side,
            status=status,
            filled_qty=amount(entry.get("cumExecQty"), f"{where}.cumExecQty"),
            avg_price=price_or_none(entry.get("avgPrice"), f"{where}.avgPrice", empty=("", "0")),
            requested_qty=requested if requested > 0 else None,
            reduce_only=flag(entry.get("reduceOnly"), f"{where}.reduceOnly"),
            time=time_ms(entry.get("updatedTime"), f"{where}.updatedTime"),
        )

    def _execution(self, entry: dict, where: str) -> AccountParseResult:
        kind = entry.get("execType")
        if type(kind) is not str:
            raise BadValue("bad execution", f"{where}.execType is not a string")
        if kind != "Trade":
            return Ignored(f"execType {excerpt(kind)[:20]} is not a fill of an order")
        qty = amount(entry.get("execQty"), f"{where}.execQty")
        if qty == 0:
            raise BadValue("bad execution", f"{where}.execQty is 0")
        return Execution(
            exchange="bybit",
            symbol=symbol(entry.get("symbol"), f"{where}.symbol"),
            fill_id=text(entry.get("execId"), f"{where}.execId"),
            exchange_order_id=text(entry.get("orderId"), f"{where}.orderId"),
            client_order_id=optional_text(entry.get("orderLinkId"), f"{where}.orderLinkId"),
            side=_side(entry.get("side"), f"{where}.side"),
            qty=qty,
            price=price(entry.get("execPrice"), f"{where}.execPrice"),
            time=time_ms(entry.get("execTime"), f"{where}.execTime"),
        )


def _side(value: object, field: str) -> str:
    side = SIDES.get(value) if type(value) is str else None
    if side is None:
        raise BadValue("bad side", f"{field} is not Buy/Sell ({excerpt(repr(value))[:40]})")
    return side
