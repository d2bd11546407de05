"""The connection: one WebSocket to the exchange's public stream, kept alive forever.

:meth:`Connection._connection_loop` connects (trio-websocket), runs one *session* per
connection — a reader, the subscription sync (:mod:`feeds.subscriptions`) and a
heartbeat — and when the connection ends for any reason, waits
(:class:`supervisor.backoff.Backoff`: ``reconnect_initial`` doubling up to
``reconnect_max``, jittered) and connects again, resubscribing everything wanted. A
session that received anything resets the backoff.

Heartbeat: Bybit-style JSON ping every ``heartbeat_interval`` seconds (a connection that
answers nothing, not even the pong, for a whole interval is declared dead and
replaced); Binance-style WebSocket ping frames with the same rule.

Failures of any kind are logged (:mod:`feeds.failures`), counted in ``stats`` and
retried; only cancellation gets out.

:class:`Connection` is one part of :class:`feeds.feed.Feed`, which mixes it in; it works
on the feed's state (``stats``, ``protocol``, the subscriptions, ...).
"""

from __future__ import annotations

import math

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from feeds.failures import HeartbeatTimeout, describe_failure, is_expected_failure
from feeds.state import FeedState
from feeds.tick import Tick
from supervisor.backoff import Backoff

__all__ = ["Connection", "MESSAGE_QUEUE_SIZE", "RECEIVE_BUFFER_SIZE"]

# trio-websocket's defaults (a queue of 1 message, 4 KiB reads) make its reader task and
# ours take turns on every frame. A deeper queue and bigger reads let each side handle a
# whole burst per turn: about 10 % more frames per second through the feed on loopback.
MESSAGE_QUEUE_SIZE = 64
RECEIVE_BUFFER_SIZE = 64 * 1024


class Connection(FeedState):
    """The connection and reconnect loop of :class:`feeds.feed.Feed`. See the module docstring."""

    def _init_connection(self) -> None:
        self._connected = trio.Event()
        self._last_rx = 0.0  # when the last frame arrived (the heartbeat checks it)
        self._session_was_healthy = False

    async def wait_connected(self) -> None:
        """Return once the feed is connected (immediately if it is)."""
        await self._connected.wait()

    async def _connection_loop(self) -> None:
        attempt = 0
        while True:
            connected = False
            self._session_was_healthy = False
            try:
                async with open_websocket_url(
                    self.ws_url,
                    connect_timeout=self.connect_timeout,
                    disconnect_timeout=min(self.connect_timeout, 2.0),
                    message_queue_size=MESSAGE_QUEUE_SIZE,
                    receive_buffer_size=RECEIVE_BUFFER_SIZE,
                ) as ws:
                    connected = True
                    self.stats.connects += 1
                    if self.stats.connects > 1:
                        self.stats.reconnects += 1
                    self.log.info(
                        "%s: connected to %s (connection #%d)", self.exchange, self.ws_url, self.stats.connects
                    )
                    await self._session(ws)
            except Exception as exc:  # anything a socket can do; cancellation passes
                self._on_session_end(connected, exc)
            else:  # pragma: no cover - _session only returns by raising
                self._on_session_end(connected, None)
            if self._session_was_healthy:  # it worked for a while: start backing off afresh
                attempt = 0
            delay = self._backoff(attempt)
            attempt += 1
            self.log.info("%s: reconnecting in %.2fs", self.exchange, delay)
            await trio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Seconds before reconnect ``attempt`` (0 for the first after a failure)."""
        schedule = Backoff.exponential(self.reconnect_initial, max=self.reconnect_max, jitter=0.5)
        return schedule.delay(attempt + 1)

    def _on_session_end(self, connected: bool, exc: BaseException | None) -> None:
        self.stats.connected = False
        if self._connected.is_set():  # (an unset one may have waiters: keep it)
            self._connected = trio.Event()
        self._live.clear()
        why = describe_failure(exc) if exc is not None else "closed"
        if exc is not None and not is_expected_failure(exc):
            self.stats.errors += 1
            self.log.error("%s: connection failed unexpectedly: %s", self.exchange, why, exc_info=exc)
        if connected:
            self.stats.disconnects += 1
            self.log.warning("%s: disconnected: %s", self.exchange, why)
        else:
            self.stats.connect_failures += 1
            ok, suppressed = self._limiter.allow("connect")
            if ok:
                more = f" ({suppressed} more)" if suppressed else ""
                self.log.warning("%s: cannot connect to %s: %s%s", self.exchange, self.ws_url, why, more)

    async def _session(self, ws: WebSocketConnection) -> None:
        """One connection's life; ends only by raising (closed, dead, ...)."""
        self.protocol.reset()
        self._live.clear()
        self.stats.refused_symbols.clear()  # a new connection asks again
        self._last_rx = trio.current_time()
        self.stats.connected = True
        self._connected.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sync_subscriptions, ws)
            nursery.start_soon(self._heartbeat, ws)
            await self._reader(ws)

    async def _reader(self, ws: WebSocketConnection) -> None:
        parse = self.protocol.parse
        stats = self.stats
        now = trio.current_time
        get = ws.get_message
        first = True
        while True:
            raw = await get()
            t = now()
            self._last_rx = t
            stats.messages += 1
            if first:
                first = False
                self._session_was_healthy = True
            result = parse(raw, t)
            if type(result) is Tick:
                self._on_tick(result, t)
            else:
                self._on_event(result, t)

    async def _heartbeat(self, ws: WebSocketConnection) -> None:
        interval = self.heartbeat_interval
        if interval is None or interval <= 0 or math.isinf(interval):
            return
        if self.protocol.heartbeat == "json":
            sent_at: float | None = None
            while True:
                await trio.sleep(interval)
                if sent_at is not None and self._last_rx < sent_at:
                    self.stats.heartbeat_timeouts += 1
                    raise HeartbeatTimeout(f"no reply within {interval}s of a ping")
                msg = self.protocol.ping_message()
                if msg is None:
                    raise TypeError(f"{type(self.protocol).__name__} has a JSON heartbeat but no ping message")
                sent_at = trio.current_time()
                await ws.send_message(msg)
        else:
            while True:
                await trio.sleep(interval)
                with trio.move_on_after(interval) as scope:
                    await ws.ping()
                if scope.cancelled_caught:
                    self.stats.heartbeat_timeouts += 1
                    raise HeartbeatTimeout(f"no pong within {interval}s of a ping")
