"""Binance USDⓈ-M user data stream (``wss://fstream.binance.com/ws/<listenKey>``). Sans-IO.

Wire format (Binance USDⓈ-M docs, "User Data Streams"; real examples and their sources
in ``tests/conformance/private/`` and ``tests/conformance/SOURCES.md``):

* The stream needs no login: ``POST /fapi/v1/listenKey`` answers
  ``{"listenKey": "..."}`` (:func:`read_listen_key`), ``PUT`` keeps it alive for 60
  minutes and answers the same shape. Heartbeat: WebSocket ping frames.
* ``ACCOUNT_UPDATE``: ``{"e", "E", "T", "a": {"m": reason, "B": [balances],
  "P": [{"s", "pa", "ep", "ps", ...}]}}``. Only the positions that changed are sent,
  each whole. ``pa`` is signed (negative: short); ``ps`` is ``BOTH`` in one-way mode,
  ``LONG``/``SHORT`` in hedge mode. A cross-margin funding fee comes without ``P``.
* ``ORDER_TRADE_UPDATE``: ``{"e", "E", "T", "o": {"s", "c", "S", "q", "ap", "x", "X",
  "i", "l", "z", "L", "T", "t", "R", "ps", ...}}``. ``x`` is the execution type
  (``TRADE`` for a fill), ``X`` the order status, ``z`` the cumulative filled
  quantity, ``l``/``L`` the fill this event reports, ``t`` its trade id.
* ``listenKeyExpired``: the stream sends nothing more until a new key is used.
* Anything else (``MARGIN_CALL``, ``ACCOUNT_CONFIG_UPDATE``, ``TRADE_LITE``, ...)
  is :class:`Ignored`.

What :meth:`BinanceAccountProtocol.parse` makes of them:

* each ``BOTH`` entry of ``P`` → a :class:`PositionChange` (side from the sign of
  ``pa``, quantity ``abs(pa)``, entry price ``ep``, time ``T``, reason ``a.m``); a
  ``LONG``/``SHORT`` entry → :class:`Ignored` (only one-way accounts are managed);
* an order event → an :class:`OrderChange` and, when ``x`` is ``TRADE``, an
  :class:`Execution` of that fill;
* a frame with any malformed entry → one :class:`Malformed` and nothing else: a frame
  is validated whole before anything of it is returned.
"""

from __future__ import annotations

from datetime import datetime

from feeds.account_events import (
    ORDER_CANCELED,
    ORDER_CLOSED,
    ORDER_OPEN,
    ORDER_REJECTED,
    AccountParseResult,
    Execution,
    Ignored,
    ListenKeyExpired,
    Malformed,
    OrderChange,
    PositionChange,
)
from feeds.account_fields import (
    NotUsdtPerpetual,
    amount,
    flag,
    optional_text,
    price,
    price_or_none,
    signed_amount,
    symbol,
    text,
    time_ms,
)
from feeds.fields import BadValue, excerpt, loads

__all__ = ["BinanceAccountProtocol", "read_listen_key"]

ORDER_STATUS = {
    "NEW": ORDER_OPEN,
    "PARTIALLY_FILLED": ORDER_OPEN,
    "FILLED": ORDER_CLOSED,
    "CANCELED": ORDER_CANCELED,
    "EXPIRED": ORDER_CANCELED,  # an IOC/FOK/GTX order the book could not (wholly) fill
    "EXPIRED_IN_MATCH": ORDER_CANCELED,  # expired by self-trade prevention
    "REJECTED": ORDER_REJECTED,  # not on the current list; harmless if never sent
}
"""``X`` → :data:`OrderChange.status` ("Event: Order Update", Order Status list)."""

SIDES = {"BUY": "buy", "SELL": "sell"}
POSITION_SIDES = ("BOTH", "LONG", "SHORT")


def read_listen_key(answer: object) -> str:
    """The key in Binance's answer to ``POST``/``PUT /fapi/v1/listenKey`` (decoded JSON).

    Raises :class:`~feeds.fields.BadValue` when the answer holds no usable key.
    """
    if type(answer) is dict:
        key = answer.get("listenKey")
        if type(key) is str and 0 < len(key) <= 200 and key.isascii() and key.isalnum():
            return key
    raise BadValue("bad listen key", f"no listenKey in {excerpt(repr(answer))}")


class BinanceAccountProtocol:
    """Parses frames of one Binance USDⓈ-M user data stream. Holds no state.

    >>> BinanceAccountProtocol().parse('{"e":"listenKeyExpired","E":1,"listenKey":"k"}')
    [ListenKeyExpired(listen_key='k')]
    """

    exchange = "binanceusdm"
    #: "ws": keep the connection alive with WebSocket protocol pings (no JSON heartbeat)
    heartbeat = "ws"

    def parse(self, raw: str | bytes) -> list[AccountParseResult]:
        """One received frame → what it says. Never raises, whatever ``raw`` holds."""
        try:
            msg = loads(raw)
        except Exception:  # any decoder error: bad UTF-8, nesting too deep, ...
            return [Malformed("invalid JSON", excerpt(raw))]
        if type(msg) is dict and "e" not in msg and type(msg.get("data")) is dict:
            msg = msg["data"]  # combined-stream envelope {"stream": .., "data": {..}}
        if type(msg) is not dict:
            return [Malformed("not a JSON object", excerpt(raw))]
        event = msg.get("e")
        if type(event) is not str:
            return [Malformed("bad event", excerpt(raw), "no event type (e)")]
        try:
            if event == "ACCOUNT_UPDATE":
                return self._account_update(msg)
            if event == "ORDER_TRADE_UPDATE":
                return self._order_update(msg)
        except BadValue as exc:
            kind = "bad position" if event == "ACCOUNT_UPDATE" else "bad order"
            return [Malformed(kind, excerpt(raw), exc.detail)]
        if event == "listenKeyExpired":
            key = msg.get("listenKey")
            return [ListenKeyExpired(key if type(key) is str else None)]
        return [Ignored(f"{excerpt(event)[:40]} event")]

    # -- ACCOUNT_UPDATE --------------------------------------------------------------

    def _account_update(self, msg: dict) -> list[AccountParseResult]:
        when = time_ms(msg.get("T"), "T")
        update = msg.get("a")
        if type(update) is not dict:
            raise BadValue("bad position", f"a is not an object ({type(update).__name__})")
        reason = optional_text(update.get("m"), "a.m")
        entries = update.get("P", [])
        if type(entries) is not list:
            raise BadValue("bad position", f"a.P is not a list ({type(entries).__name__})")
        if not entries:
            return [Ignored(f"ACCOUNT_UPDATE without positions ({reason})")]
        return [self._position(entry, i, when, reason) for i, entry in enumerate(entries)]

    def _position(self, entry: object, i: int, when: datetime, reason: str | None) -> AccountParseResult:
        where = f"a.P[{i}]"
        if type(entry) is not dict:
            raise BadValue("bad position", f"{where} is not an object")
        position_side = entry.get("ps")
        if position_side not in POSITION_SIDES:
            raise BadValue("bad position", f"{where}.ps is not BOTH/LONG/SHORT ({excerpt(repr(position_side))[:40]})")
        signed = signed_amount(entry.get("pa"), f"{where}.pa")
        entry_price = amount(entry.get("ep"), f"{where}.ep")
        try:
            unified = symbol(entry.get("s"), f"{where}.s")
        except NotUsdtPerpetual as other:
            return Ignored(f"{other.symbol_id} is not a USDT perpetual")
        if position_side != "BOTH":
            return Ignored(f"hedge-mode {position_side} position of {unified}: only one-way accounts are managed")
        if signed == 0:
            return PositionChange("binanceusdm", unified, None, abs(signed), None, when, reason)
        if entry_price == 0:
            raise BadValue("bad position", f"{where}: open position {signed} with entry price {entry.get('ep')!r}")
        side = "long" if signed > 0 else "short"
        return PositionChange("binanceusdm", unified, side, abs(signed), entry_price, when, reason)

    # -- ORDER_TRADE_UPDATE ----------------------------------------------------------

    def _order_update(self, msg: dict) -> list[AccountParseResult]:
        order = msg.get("o")
        if type(order) is not dict:
            raise BadValue("bad order", f"o is not an object ({type(order).__name__})")
        status_code = order.get("X")
        status = ORDER_STATUS.get(status_code) if type(status_code) is str else None
        if status is None:
            raise BadValue("bad order", f"o.X is not a known order status ({excerpt(repr(status_code))[:40]})")
        side_code = order.get("S")
        side = SIDES.get(side_code) if type(side_code) is str else None
        if side is None:
            raise BadValue("bad order", f"o.S is not BUY/SELL ({excerpt(repr(order.get('S')))[:40]})")
        exchange_order_id = _order_id(order.get("i"), "o.i")
        client_order_id = optional_text(order.get("c"), "o.c")
        requested = amount(order.get("q"), "o.q")
        filled = amount(order.get("z"), "o.z")
        avg_price = price_or_none(order.get("ap"), "o.ap", empty=("0",))
        reduce_only = flag(order.get("R"), "o.R")
        when = time_ms(order.get("T"), "o.T")
        execution_type = text(order.get("x"), "o.x")
        try:
            unified = symbol(order.get("s"), "o.s")
        except NotUsdtPerpetual as other:
            return [Ignored(f"order on {other.symbol_id}, not a USDT perpetual")]
        last_qty = last_price = None
        fill: Execution | None = None
        if execution_type == "TRADE":
            last_qty = amount(order.get("l"), "o.l")
            if last_qty == 0:
                raise BadValue("bad order", "o.l is 0 in a TRADE event")
            last_price = price(order.get("L"), "o.L")
            fill_id = _order_id(order.get("t"), "o.t")
            fill = Execution(
                "binanceusdm", unified, fill_id, exchange_order_id, client_order_id, side, last_qty, last_price, when
            )
        change = OrderChange(
            exchange="binanceusdm",
            symbol=unified,
            client_order_id=client_order_id,
            exchange_order_id=exchange_order_id,
            side=side,
            status=status,
            filled_qty=filled,
            avg_price=avg_price,
            requested_qty=requested if requested > 0 else None,
            reduce_only=reduce_only,
            time=when,
            last_fill_qty=last_qty,
            last_fill_price=last_price,
        )
        return [change] if fill is None else [change, fill]


def _order_id(value: object, field: str) -> str:
    """Binance order and trade ids are JSON integers ≥ 1."""
    if type(value) is int and 0 < value < 2**63:
        return str(value)
    raise BadValue("bad id", f"{field} is not a positive integer ({excerpt(repr(value))[:40]})")
