"""One stream client's connection: its subscriptions and bounded outgoing queues.

Back-pressure lives here: a connection keeps at most one pending update per subscribed
symbol (newer prices overwrite older unsent ones) plus a bounded queue of control
replies, so a slow client costs bounded memory and, when it catches up, gets the
latest prices.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import trio
from starlette.websockets import WebSocket

if TYPE_CHECKING:
    from simulator.streams.hub import StreamHub

EXCHANGES = ("bybit", "binanceusdm")
_ALIASES = {"bybit": "bybit", "binanceusdm": "binanceusdm", "binance": "binanceusdm", "binance-usdm": "binanceusdm"}
CONTROL_QUEUE_LIMIT = 1000  # per connection; oldest replies are dropped beyond it
FIXED_SIZE = "1.000"


def exchanges_named(name: str | None) -> tuple[str, ...]:
    if name is None:
        return EXCHANGES
    ex = _ALIASES.get(str(name).strip().lower())
    if ex is None:
        raise ValueError(f"unknown exchange {name!r}; expected one of {list(EXCHANGES)}")
    return (ex,)


def dumps_compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def plain_decimal(d: Decimal) -> str:
    return "0" if d == 0 else format(d, "f")


class StreamConnection:
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
