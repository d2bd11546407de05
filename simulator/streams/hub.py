"""The stream hub: live connections, the price fan-out, the fault switches, serving.

:class:`StreamHub` listens to the state's price changes and wakes the connections
subscribed to that symbol; each connection has one sender task that drains its queues
(control replies first, then initial books, then the newest pending prices). The wire
protocols come from :class:`~simulator.streams.bybit.BybitStreams` and
:class:`~simulator.streams.binance.BinanceStreams`.

Fault hooks: :meth:`~StreamHub.drop_all` ends connections at once (the server closes
them with code 1011, no goodbye), :meth:`~StreamHub.silence` keeps them open but sends
nothing — no data, no acks, no Bybit pongs — until resumed, and
:meth:`~StreamHub.send_raw` pushes an arbitrary text frame (tests of malformed input).
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Callable

import trio
from starlette.websockets import WebSocket

from simulator.streams.binance import BinanceStreams
from simulator.streams.bybit import BybitStreams
from simulator.streams.connection import StreamConnection, exchanges_named, plain_decimal
from simulator.streams.private import PrivateHub

log = logging.getLogger("simulator.streams")


class StreamHub(BybitStreams, BinanceStreams):
    """Registry of live stream connections, price fan-out, and the WS fault switches.

    Create it with or without a state; :func:`websocket_routes` attaches the state.
    """

    def __init__(self, state=None):
        self.state = None
        self.private: PrivateHub | None = None  # the account streams, made with the state
        self._unlisten: Callable[[], None] | None = None
        self._conns: set[StreamConnection] = set()
        self._by_symbol: dict[tuple[str, str], set[StreamConnection]] = {}
        self._silenced: set[str] = set()
        self.stats = {"connections": 0, "messages_sent": 0, "dropped": 0, "coalesced": 0}
        if state is not None:
            self.attach(state)

    # -- wiring --------------------------------------------------------------------------

    def attach(self, state) -> None:
        """Listen to ``state``'s price changes and account activity (idempotent)."""
        if state is self.state:
            return
        if self._unlisten is not None:
            self._unlisten()
        if self.private is not None:
            self.private.close()
        self.state = state
        self._unlisten = state.add_price_listener(self._on_price)
        self.private = PrivateHub(state)

    def close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self.private is not None:
            self.private.close()
            self.private = None

    # -- fault switches ------------------------------------------------------------------

    def drop_all(self, exchange: str | None = None) -> int:
        """Abruptly end every connection of ``exchange`` (all if None). Returns how many."""
        exs = exchanges_named(exchange)
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
        for ex in exchanges_named(exchange):
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
        return exchanges_named(exchange)[0] in self._silenced

    def send_raw(self, exchange: str | None, text: str) -> int:
        """Queue ``text`` verbatim on every connection of ``exchange`` (test hook)."""
        exs = exchanges_named(exchange)
        n = 0
        for conn in self._conns:
            if conn.exchange in exs:
                conn.queue_control(text)
                n += 1
        return n

    def connection_count(self, exchange: str | None = None) -> int:
        exs = exchanges_named(exchange)
        return sum(1 for c in self._conns if c.exchange in exs)

    def subscriptions(self, exchange: str | None = None) -> list[str]:
        """Symbol ids subscribed on any connection of ``exchange`` (sorted)."""
        exs = exchanges_named(exchange)
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

    def _add_sub(self, conn: StreamConnection, sid: str, stream: str) -> bool:
        streams = conn.subs.get(sid)
        if streams is None:
            streams = conn.subs[sid] = set()
            self._by_symbol.setdefault((conn.exchange, sid), set()).add(conn)
        if stream in streams:
            return False
        streams.add(stream)
        return True

    def _remove_sub(self, conn: StreamConnection, sid: str, stream: str) -> None:
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

    def _unregister(self, conn: StreamConnection) -> None:
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
        return plain_decimal(price)

    # -- serving -------------------------------------------------------------------------

    async def serve(self, websocket: WebSocket, exchange: str, *, combined: bool = False, streams=()) -> None:
        conn = StreamConnection(self, exchange, websocket, combined=combined)
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

    async def _sender(self, conn: StreamConnection) -> None:
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

    def _initial_messages(self, conn: StreamConnection, sid: str) -> list[str]:
        quote = self._quote(conn.exchange, sid)
        if quote is None:
            return []
        if conn.exchange == "bybit":
            return [self._bybit_ticker(conn, sid, quote, snapshot=True)]
        if "bookTicker" in conn.subs.get(sid, ()):
            return [self._binance_book_ticker(conn, sid, quote)]
        return []

    def _update_messages(self, conn: StreamConnection, sid: str, quote) -> list[str]:
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
