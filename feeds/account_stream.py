"""The account stream actor: one exchange account's private stream, kept alive forever.

:class:`AccountStream` feeds an :class:`~feeds.account_view.AccountView`. One
*session* per connection:

1. **Open.** Binance USDⓈ-M: ``POST /fapi/v1/listenKey`` gives a listen key, and the
   stream is ``<private_ws_url>/<listenKey>``. Bybit v5: connect to ``/v5/private``, send
   ``auth`` (key, expiry, HMAC signature), wait for its answer, subscribe to
   ``position``, ``order`` and ``execution``, wait for that answer.
2. **Sync.** The view is told it is connected (events are held), the positions are read
   over REST, and the view is told that snapshot (:meth:`AccountView.synced`): whatever
   happened while the stream was down is in it. Only now is the view healthy.
3. **Run.** Every frame is parsed (:mod:`feeds.account_protocols`) and each event applied
   to the view. A heartbeat (Bybit JSON ``ping``, Binance WebSocket ping frames) every
   ``heartbeat_interval`` seconds proves the connection alive; a connection silent for a
   whole interval after a ping is replaced. Binance: the listen key is kept alive with
   ``PUT /fapi/v1/listenKey`` every ``keepalive_interval`` seconds (it expires 60 minutes
   after the last one); ``listenKeyExpired`` ends the session and a new key is made.

When a session ends for any reason the view is marked down at once (readers go back to
REST), and the actor reconnects with jittered exponential backoff. A *refused*
credential — Bybit's ``auth`` failing, Binance refusing the listen key — is not a
network blip: it is logged as an error naming what to check, and tried again only every
``refused_retry`` seconds, so a wrong key does not become a reconnect storm.

Malformed frames are counted in :attr:`AccountStream.stats` and logged, rate-limited;
they never end a session. Only cancellation gets out of :meth:`AccountStream.run`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from exchanges.errors import ExchangeError, NonRetryableError
from exchanges.port import ExchangePort, ExchangePosition
from feeds.account_events import (
    AuthResult,
    Execution,
    ListenKeyExpired,
    Malformed,
    OrderChange,
    Pong,
    PositionChange,
    Subscribed,
)
from feeds.account_protocols import make_account_protocol
from feeds.account_view import AccountView
from feeds.failures import HeartbeatTimeout, describe_failure, is_expected_failure
from feeds.fields import excerpt
from supervisor.backoff import Backoff
from supervisor.log_limiter import LogLimiter

log = logging.getLogger("feeds.account")

__all__ = ["AccountStream", "AccountStreamStats", "AccountStreamTimings", "CredentialsRefused", "ListenKeys"]


class CredentialsRefused(Exception):
    """The exchange refused our credentials for the private stream."""


class StreamEnded(Exception):
    """The exchange ended the stream (Binance ``listenKeyExpired``)."""


class ListenKeys(Protocol):
    """Binance USDⓈ-M user-data stream keys (REST): :class:`exchanges.ccxt_adapter.CcxtExchange`."""

    async def create_listen_key(self) -> str: ...

    async def keep_alive_listen_key(self) -> None: ...


@dataclass(frozen=True)
class AccountStreamTimings:
    """How an account stream paces itself (seconds), with the service's defaults.

    ``heartbeat_interval`` — a ping this often; no answer within one more interval and
    the connection is replaced. ``handshake_timeout`` — the longest wait for the answer
    to ``auth`` or ``subscribe``. ``keepalive_interval`` — Binance listen-key keep-alive
    (the key lives 60 minutes after the last one). ``reconnect_initial`` /
    ``reconnect_max`` — the reconnect backoff. ``refused_retry`` — the wait after the
    exchange refused our credentials.
    """

    heartbeat_interval: float = 5.0
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    keepalive_interval: float = 30 * 60.0
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    refused_retry: float = 300.0

    @property
    def stale_after(self) -> float:
        """How long the view may go without hearing anything and stay healthy."""
        return 2 * self.heartbeat_interval + 1.0


@dataclass
class AccountStreamStats:
    """Counters of one account stream (the metrics and ``/health`` read them)."""

    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    refusals: int = 0
    expirations: int = 0
    keepalives: int = 0
    heartbeat_timeouts: int = 0
    snapshots: int = 0
    events: int = 0
    malformed: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None


class AccountStream:
    """The private stream of one exchange account (see the module docstring).

    ``url`` — the private stream: Bybit ``wss://stream.bybit.com/v5/private``, Binance
    ``wss://fstream.binance.com/ws`` (the listen key is appended). ``port`` reads the
    REST snapshot. ``credentials`` — ``(api_key, api_secret)``, Bybit only.
    ``listen_keys`` — Binance only.
    """

    def __init__(
        self,
        exchange: str,
        url: str,
        view: AccountView,
        port: ExchangePort,
        *,
        credentials: tuple[str, str] | None = None,
        listen_keys: ListenKeys | None = None,
        timings: AccountStreamTimings = AccountStreamTimings(),
        wall_clock_ms: Callable[[], int] | None = None,
    ):
        self.exchange = exchange
        self.url = url.rstrip("/")
        self.view = view
        self.port = port
        self.protocol: Any = make_account_protocol(exchange)
        self.timings = timings
        self.stats = AccountStreamStats()
        self._credentials = credentials
        self._listen_keys = listen_keys
        self._wall_clock_ms = wall_clock_ms or _epoch_ms
        self._limiter = LogLimiter()
        self._healthy_session = False
        self._ws: WebSocketConnection | None = None
        self._pongs: dict[str, trio.Event] = {}
        self._barriers = 0
        view.barrier = self.barrier
        if self.protocol.heartbeat == "json" and credentials is None:
            raise ValueError(f"{exchange}: the private stream needs an API key and secret")
        if self.protocol.heartbeat != "json" and listen_keys is None:
            raise ValueError(f"{exchange}: the private stream needs a listen-key source")

    def __repr__(self) -> str:  # never shows credentials
        return f"AccountStream(exchange={self.exchange!r}, url={self.url!r})"

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the stream up until cancelled."""
        task_status.started()
        attempt = 0
        while True:
            self._healthy_session = False
            delay: float | None = None
            try:
                await self._session()
            except Exception as exc:  # anything a socket or REST call can do; cancellation passes
                delay = self._ended(_unwrap(exc))
            finally:
                self.stats.connected = False
            if self._healthy_session:
                attempt = 0
            if delay is None:
                delay = Backoff.exponential(
                    self.timings.reconnect_initial, max=self.timings.reconnect_max, jitter=0.5
                ).delay(attempt + 1)
                attempt += 1
            await trio.sleep(delay)

    def _ended(self, exc: BaseException) -> float | None:
        """Log how a session ended; the wait before the next one (None: the backoff)."""
        if isinstance(exc, CredentialsRefused):
            self.stats.refusals += 1
            self.stats.last_error = str(exc)
            self.view.lost("credentials refused")
            log.error(
                "%s account stream: the exchange refused our credentials (%s); check the API key, its "
                "permissions and the clock; trying again in %.0f s, positions and fills from REST until then",
                self.exchange,
                exc,
                self.timings.refused_retry,
            )
            return self.timings.refused_retry
        self._session_failed(exc)
        return None

    # -- one session -----------------------------------------------------------------

    async def _session(self) -> None:
        url = self.url
        if self._listen_keys is not None:
            url = f"{self.url}/{await self._create_listen_key()}"
        connected = False
        try:
            async with open_websocket_url(
                url,
                connect_timeout=self.timings.connect_timeout,
                disconnect_timeout=min(self.timings.connect_timeout, 2.0),
            ) as ws:
                connected = True
                self.stats.connects += 1
                await self._handshake(ws)
                self.stats.connected = True
                self.view.connected()
                log.info("%s account stream connected (connection #%d)", self.exchange, self.stats.connects)
                self._ws = ws
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat, ws)
                    nursery.start_soon(self._sync)
                    if self._listen_keys is not None:
                        nursery.start_soon(self._keep_alive)
                    await self._reader(ws)
        except BaseException:
            self._ws = None
            if connected:
                self.stats.disconnects += 1
            else:
                self.stats.connect_failures += 1
            raise

    async def _create_listen_key(self) -> str:
        assert self._listen_keys is not None
        try:
            return await self._listen_keys.create_listen_key()
        except NonRetryableError as exc:
            raise CredentialsRefused(f"listen key refused: {exc}") from exc

    async def _handshake(self, ws: WebSocketConnection) -> None:
        """Bybit: authenticate and subscribe, each answered within ``handshake_timeout``."""
        if self._credentials is None:
            return
        key, secret = self._credentials
        expires = self._wall_clock_ms() + int(self.timings.handshake_timeout * 1000)
        await ws.send_message(self.protocol.auth_message(key, secret, expires))
        answer = await self._answer(ws, AuthResult, "auth")
        if not answer.ok:
            raise CredentialsRefused(f"auth: {answer.message or 'refused'}")
        await ws.send_message(self.protocol.subscribe_message())
        answer = await self._answer(ws, Subscribed, "subscribe")
        if not answer.ok:
            raise CredentialsRefused(f"subscribe: {answer.message or 'refused'}")

    async def _answer(self, ws: WebSocketConnection, kind: type, what: str) -> Any:
        with trio.fail_after(self.timings.handshake_timeout):
            while True:
                raw = await ws.get_message()
                self.view.heard()
                for result in self.protocol.parse(raw):
                    if isinstance(result, kind):
                        return result
                    if isinstance(result, Malformed):
                        self._malformed(result)

    async def _sync(self) -> None:
        """The REST snapshot after connecting, and again whenever the view asks for one."""
        schedule = Backoff.exponential(self.timings.reconnect_initial, max=self.timings.reconnect_max, jitter=0.5)
        while True:
            failures = 0
            while True:
                try:
                    positions: list[ExchangePosition] = await self.port.fetch_positions()
                    break
                except ExchangeError as exc:
                    failures += 1
                    log.warning("%s account stream: cannot read the positions to sync (%s)", self.exchange, exc)
                    await schedule.sleep(failures)
            self.stats.snapshots += 1
            self.view.synced(positions)
            self._healthy_session = True
            await self.view.resync_wanted.wait()

    async def _keep_alive(self) -> None:
        assert self._listen_keys is not None
        while True:
            await trio.sleep(self.timings.keepalive_interval)
            try:
                await self._listen_keys.keep_alive_listen_key()
                self.stats.keepalives += 1
            except ExchangeError as exc:
                # -1125 "This listenKey does not exist": the stream is over; start again.
                raise StreamEnded(f"listen key keep-alive failed: {exc}") from exc

    async def _reader(self, ws: WebSocketConnection) -> None:
        view, parse, stats = self.view, self.protocol.parse, self.stats
        while True:
            raw = await ws.get_message()
            view.heard()
            for result in parse(raw):
                if isinstance(result, (PositionChange, OrderChange, Execution)):
                    stats.events += 1
                    view.apply(result)
                elif isinstance(result, Malformed):
                    self._malformed(result)
                elif isinstance(result, ListenKeyExpired):
                    self.stats.expirations += 1
                    raise StreamEnded("the listen key expired")
                elif isinstance(result, AuthResult) and not result.ok:
                    raise CredentialsRefused(f"auth: {result.message or 'refused'}")
                elif isinstance(result, Pong):
                    waiter = self._pongs.pop(result.req_id or "", None)
                    if waiter is not None:
                        waiter.set()  # a barrier: every frame before this pong is applied

    async def barrier(self, within: float) -> bool:
        """True once everything the exchange sent on this stream before the call has been
        applied to the view; False if that is not known within ``within`` seconds.

        Bybit: a JSON ``ping`` on the stream; its pong is a reply on the same connection,
        behind the data frames sent before it, and our reader applies frames in order.
        Binance: always False. Its user data stream takes no request whose answer is
        ordered with the data, and a WebSocket pong is not: a server may answer a ping
        before it writes the data frames it has queued (the simulator's server does).
        So on Binance the check before a close asks REST.
        """
        ws = self._ws
        if ws is None or self.protocol.heartbeat != "json":
            return False
        with trio.move_on_after(within):
            message = self.protocol.ping_message()
            req_id = str(json.loads(message).get("req_id"))
            pong = self._pongs[req_id] = trio.Event()
            try:
                await ws.send_message(message)
                await pong.wait()
            finally:
                self._pongs.pop(req_id, None)
            return self._ws is ws
        return False

    async def _heartbeat(self, ws: WebSocketConnection) -> None:
        interval = self.timings.heartbeat_interval
        if interval <= 0 or math.isinf(interval):
            return
        while True:
            await trio.sleep(interval)
            if self.protocol.heartbeat == "json":
                sent_at = trio.current_time()
                await ws.send_message(self.protocol.ping_message())
                await trio.sleep(interval)
                if self.view.last_heard < sent_at:
                    self.stats.heartbeat_timeouts += 1
                    raise HeartbeatTimeout(f"no reply within {interval:g}s of a ping")
            else:
                with trio.move_on_after(interval) as scope:
                    await ws.ping()
                if scope.cancelled_caught:
                    self.stats.heartbeat_timeouts += 1
                    raise HeartbeatTimeout(f"no pong within {interval:g}s of a ping")
                self.view.heard()

    # -- logging ---------------------------------------------------------------------

    def _malformed(self, result: Malformed) -> None:
        self.stats.malformed += 1
        reasons = self.stats.malformed_reasons
        reasons[result.reason] = reasons.get(result.reason, 0) + 1
        ok, suppressed = self._limiter.allow("malformed")
        if ok:
            more = f" ({suppressed} more since the last line)" if suppressed else ""
            log.warning(
                "%s account stream: malformed frame ignored (%s: %s): %s%s",
                self.exchange,
                result.reason,
                result.detail,
                excerpt(result.raw),
                more,
            )

    def _session_failed(self, exc: BaseException) -> None:
        why = describe_failure(exc)
        self.stats.last_error = why
        self.view.lost(why)
        if not is_expected_failure(exc) and not isinstance(exc, (StreamEnded, ExchangeError)):
            log.error("%s account stream failed unexpectedly: %s", self.exchange, why, exc_info=exc)
            return
        ok, suppressed = self._limiter.allow("session")
        if ok:
            more = f" ({suppressed} more)" if suppressed else ""
            log.warning("%s account stream ended: %s%s; reconnecting", self.exchange, why, more)


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups; ``exc`` otherwise."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _epoch_ms() -> int:
    import time

    return int(time.time() * 1000)
