"""What an exchange's private (account) stream tells us, as typed events.

The private streams — Binance USDⓈ-M's user-data stream, Bybit v5's ``/v5/private``
— are parsed by sans-IO protocol objects (:mod:`feeds.account_binance`,
:mod:`feeds.account_bybit`) into these events; :class:`feeds.account_view.AccountView`
keeps what they say.

* :class:`PositionChange` — one symbol's position *after* an event, as a whole (both
  exchanges send the full position, never a delta): flat is ``side=None, qty=0``.
* :class:`OrderChange` — one order's state after an event (cumulative fill).
* :class:`Execution` — one fill (a trade of one of our orders).
* control: :class:`AuthResult`, :class:`Subscribed`, :class:`ListenKeyExpired`, and
  :class:`feeds.parse_results.Pong` / :class:`~feeds.parse_results.Ignored` /
  :class:`~feeds.parse_results.Malformed` as for the public streams.

Conventions are those of :mod:`exchanges.port`: unified symbols, ``"long"``/``"short"``
positions, ``"buy"``/``"sell"`` order sides, :class:`~decimal.Decimal` money,
timezone-aware UTC times (the exchange's own time of the change).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from feeds.parse_results import Ignored, Malformed, Pong

__all__ = [
    "AccountEvent",
    "AccountParseResult",
    "AuthResult",
    "Execution",
    "Ignored",
    "ListenKeyExpired",
    "Malformed",
    "OrderChange",
    "Pong",
    "PositionChange",
    "Subscribed",
]

# OrderChange.status, as in exchanges.port.OrderResult
ORDER_OPEN, ORDER_CLOSED, ORDER_CANCELED, ORDER_REJECTED = "open", "closed", "canceled", "rejected"
FINAL_ORDER_STATES = frozenset({ORDER_CLOSED, ORDER_CANCELED, ORDER_REJECTED})


@dataclass(frozen=True, slots=True)
class PositionChange:
    """One symbol's whole position after a change (one-way mode).

    ``side`` None and ``qty`` 0 mean flat; otherwise ``qty`` > 0 and ``entry_price`` > 0.
    ``time`` is the exchange's time of the change (Binance ``T``, the transaction time;
    Bybit ``updatedTime``). ``reason`` is Binance's ``m`` (``ORDER``, ``FUNDING_FEE``,
    ``ADL``, ...) where sent.
    """

    exchange: str
    symbol: str
    side: str | None
    qty: Decimal
    entry_price: Decimal | None
    time: datetime
    reason: str | None = None

    @property
    def flat(self) -> bool:
        return self.side is None


@dataclass(frozen=True, slots=True)
class OrderChange:
    """One order's state after an event.

    ``status`` is one of ``open``, ``closed`` (fully filled), ``canceled`` (including
    an expired IOC, filled partly or not at all), ``rejected`` — as in
    :class:`exchanges.port.OrderResult`. ``filled_qty`` is cumulative; ``avg_price``
    None until something filled. ``last_fill_qty``/``last_fill_price``: the fill this
    event reports (Binance ``l``/``L``), when it reports one.
    """

    exchange: str
    symbol: str
    client_order_id: str | None
    exchange_order_id: str
    side: str
    status: str
    filled_qty: Decimal
    avg_price: Decimal | None
    requested_qty: Decimal | None
    reduce_only: bool
    time: datetime
    last_fill_qty: Decimal | None = None
    last_fill_price: Decimal | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_ORDER_STATES


@dataclass(frozen=True, slots=True)
class Execution:
    """One fill of one of our orders (Bybit ``execution``; Binance ``ORDER_TRADE_UPDATE``
    with execution type ``TRADE``)."""

    exchange: str
    symbol: str
    fill_id: str
    exchange_order_id: str
    client_order_id: str | None
    side: str
    qty: Decimal
    price: Decimal
    time: datetime


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Bybit's answer to ``auth``: ``ok`` False carries the exchange's message."""

    ok: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The exchange's answer to a subscribe request (``ok`` False carries its message)."""

    ok: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class ListenKeyExpired:
    """Binance ``listenKeyExpired``: this stream sends nothing more; get a new key."""

    listen_key: str | None = None


AccountEvent = PositionChange | OrderChange | Execution
"""The events that change what we know of the account."""

AccountParseResult = (
    PositionChange | OrderChange | Execution | AuthResult | Subscribed | ListenKeyExpired | Pong | Ignored | Malformed
)
"""One item of what an account protocol's ``parse`` returns (it returns a list: one
Binance ``ACCOUNT_UPDATE`` or Bybit ``position`` frame may carry several positions)."""
