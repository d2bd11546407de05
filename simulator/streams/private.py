"""The private (account) streams: Binance's user data stream and Bybit's v5 private stream.

Routes (:func:`simulator.streams.websocket_routes`): ``/binance/ws/<listenKey>`` (a
live listen key from ``POST /binance/fapi/v1/listenKey``) and ``/bybit/v5/private``
(``auth`` first, then ``subscribe``). :class:`PrivateHub` listens to the state's
account activity (:mod:`simulator.state.activity`) and queues each change's messages,
in order and never coalesced, on every connection entitled to them: Binance
connections whose listen key is live, authenticated Bybit connections subscribed to
the topic. Messages are made when the change happens, so every connection sees the
same ones.

A Binance connection whose key expires (60 minutes after the last keep-alive, on the
simulator's clock, checked every :data:`EXPIRY_CHECK_S` seconds, or at once through
the fault) gets ``listenKeyExpired`` and no account messages after it; the connection
stays open, as the real one does until the client leaves. A key closed by ``DELETE``
ends its connections.

Fault hooks: :meth:`~PrivateHub.drop` ends the connections at once (code 1011, no
goodbye), :meth:`~PrivateHub.silence` keeps them open but sends nothing — no data, no
replies, no pongs — until resumed (account messages of that time are lost to those
connections, as on a stalled link), :meth:`~PrivateHub.send_raw` pushes a text frame
verbatim, :meth:`~PrivateHub.expire_listen_keys` expires Binance keys now; the
``bybit_auth_fail`` fault (:class:`simulator.state.Faults`) fails the next auths.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque

import trio
from starlette.websockets import WebSocket

from simulator.state import SimState
from simulator.state.activity import Activity
from simulator.streams import private_binance
from simulator.streams.connection import exchanges_named
from simulator.streams.private_bybit import BybitPrivateMessages, BybitPrivateSession

log = logging.getLogger("simulator.streams")

EXPIRY_CHECK_S = 0.25  # how often an idle Binance connection looks at its listen key
OUTGOING_LIMIT = 10_000  # a client this far behind is cut off (its queue would grow without bound)


class PrivateConnection:
    """One private client: its protocol state and its ordered outgoing queue."""

    def __init__(
        self,
        exchange: str,
        websocket: WebSocket,
        *,
        listen_key: str | None = None,
        session: BybitPrivateSession | None = None,
    ):
        self.exchange = exchange
        self.websocket = websocket
        self.listen_key = listen_key  # Binance
        self.expired_sent = False  # Binance: listenKeyExpired was sent; no account messages after it
        self.session = session  # Bybit
        self.scope = trio.CancelScope()
        self.outgoing: deque[str] = deque()
        self.wake = trio.Event()

    def queue(self, text: str) -> None:
        self.outgoing.append(text)
        if len(self.outgoing) > OUTGOING_LIMIT:
            log.warning("simulator streams: private %s client too slow, cut off", self.exchange)
            self.scope.cancel()
        self.wake.set()


class PrivateHub:
    """Registry of private connections, the activity fan-out, and the private fault switches."""

    def __init__(self, state: SimState):
        self.state = state
        self._bybit = BybitPrivateMessages(state)
        self._conns: set[PrivateConnection] = set()
        self._silenced: set[str] = set()
        self.stats = {"connections": 0, "messages_sent": 0, "requests_handled": 0, "dropped": 0, "lost_while_silent": 0}
        self._unlisten = state.add_activity_listener(self._on_activity)

    def close(self) -> None:
        self._unlisten()

    # -- fault switches ------------------------------------------------------------------

    def drop(self, exchange: str | None = None) -> int:
        """Abruptly end every private connection of ``exchange`` (all if None). Returns how many."""
        exs = exchanges_named(exchange)
        victims = [c for c in self._conns if c.exchange in exs]
        for conn in victims:
            conn.scope.cancel()
        self.stats["dropped"] += len(victims)
        return len(victims)

    def silence(self, exchange: str | None = None, on: bool = True) -> None:
        for ex in exchanges_named(exchange):
            if on:
                self._silenced.add(ex)
            else:
                self._silenced.discard(ex)
        for conn in self._conns:
            conn.wake.set()

    def is_silenced(self, exchange: str) -> bool:
        return exchanges_named(exchange)[0] in self._silenced

    def send_raw(self, exchange: str | None, text: str) -> int:
        """Queue ``text`` verbatim on every private connection of ``exchange`` (all if None)."""
        exs = exchanges_named(exchange)
        n = 0
        for conn in self._conns:
            if conn.exchange in exs:
                conn.queue(text)
                n += 1
        return n

    def expire_listen_keys(self) -> int:
        """Expire every live Binance listen key now; their connections get ``listenKeyExpired``."""
        n = self.state.expire_listen_keys()
        for conn in self._conns:
            conn.wake.set()
        return n

    def connection_count(self, exchange: str | None = None) -> int:
        exs = exchanges_named(exchange)
        return sum(1 for c in self._conns if c.exchange in exs)

    # -- activity fan-out ----------------------------------------------------------------

    def _on_activity(self, activity: Activity) -> None:
        binance = None
        bybit = None
        for conn in self._conns:
            if conn.exchange in self._silenced:
                self.stats["lost_while_silent"] += 1
                continue
            if conn.exchange == "binanceusdm":
                if conn.expired_sent or not self.state.listen_key_live(conn.listen_key or ""):
                    continue
                if binance is None:
                    binance = private_binance.activity_messages(self.state, activity)
                for text in binance:
                    conn.queue(text)
            elif conn.session is not None and conn.session.authenticated:
                if bybit is None:
                    bybit = self._bybit.activity_messages(activity)
                for kind, rows in bybit:
                    for topic in (kind, f"{kind}.linear"):
                        if topic in conn.session.topics:
                            conn.queue(self._bybit.envelope(topic, rows))

    # -- serving -------------------------------------------------------------------------

    async def serve_binance(self, websocket: WebSocket, listen_key: str) -> None:
        await self._serve(PrivateConnection("binanceusdm", websocket, listen_key=listen_key))

    async def serve_bybit(self, websocket: WebSocket) -> None:
        session = BybitPrivateSession(self.state, str(uuid.uuid4()))
        await self._serve(PrivateConnection("bybit", websocket, session=session))

    async def _serve(self, conn: PrivateConnection) -> None:
        await conn.websocket.accept()
        with conn.scope:
            self._conns.add(conn)
            self.stats["connections"] += 1
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sender, conn)
                    while True:
                        message = await conn.websocket.receive()
                        if message["type"] == "websocket.disconnect":
                            break
                        text = message.get("text")
                        if text is None:
                            text = (message.get("bytes") or b"").decode("utf-8", "replace")
                        if conn.session is not None:
                            silent = conn.exchange in self._silenced
                            for reply in conn.session.handle(text, silenced=silent):
                                conn.queue(reply)
                        # Binance's user data stream takes no requests: frames are ignored
                        self.stats["requests_handled"] += 1
                    nursery.cancel_scope.cancel()
            finally:
                self._conns.discard(conn)

    def _check_listen_key(self, conn: PrivateConnection) -> None:
        if conn.listen_key is None or conn.expired_sent or self.state.listen_key_live(conn.listen_key):
            return
        if not self.state.listen_key_known(conn.listen_key):  # closed by DELETE: the stream ends
            conn.scope.cancel()
            return
        conn.expired_sent = True
        conn.queue(private_binance.listen_key_expired(self.state, conn.listen_key))

    async def _sender(self, conn: PrivateConnection) -> None:
        try:
            while True:
                silent = conn.exchange in self._silenced
                if not silent:
                    self._check_listen_key(conn)
                if silent or not conn.outgoing:
                    conn.wake = trio.Event()
                    with trio.move_on_after(EXPIRY_CHECK_S if conn.listen_key else float("inf")):
                        await conn.wake.wait()
                    continue
                text = conn.outgoing.popleft()
                await conn.websocket.send_text(text)
                self.stats["messages_sent"] += 1
        except Exception as exc:  # the client went away mid-send, etc.
            log.debug("simulator streams: private sender ends: %r", exc)
            conn.scope.cancel()
