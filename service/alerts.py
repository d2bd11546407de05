"""Alerts: lifecycle events from the bus to the operator (log, webhook, Telegram).

An :class:`AlertRouter` listens on the :class:`actors.events.EventBus` and offers the
events that alert to each of its sinks. Which events alert:

* every critical event, always (``aged.close.failed`` after all retries,
  ``supervisor.escalation``);
* any other event type named in ``notify`` (for example ``aged.close.completed``).

Offering never blocks and never fails: the bus calls listeners synchronously from the
actors, so each sink keeps a bounded queue (a full queue drops its *oldest* alert and
counts it) and delivers from its own task, which :meth:`AlertRouter.run` runs (a
supervised child: :meth:`AlertRouter.child`). A receiver that never answers costs
one sink's task ``timeout`` seconds per attempt; nothing else waits for it.

Sinks:

* :class:`LogSink` - one log line per alert, ``CRITICAL`` for critical events.
* :class:`WebhookSink` - a JSON POST per alert; retries timeouts, connection errors,
  408/425/429 and 5xx with exponential backoff; other 4xx are not retried.
* :class:`TelegramSink` - Bot API ``sendMessage``; the token and chat id come from
  environment variables only.

Secrets (webhook URLs that carry tokens, the Telegram token) are never logged: log
lines name a sink by scheme and host only, and scrub the secret from any error text.

HTTP client: a small HTTP/1.1 client on trio sockets (TLS through
:class:`trio.SSLStream`) with ``h11`` for the protocol. It runs natively under trio,
so trio's cancel scopes are its timeouts and no asyncio crossing is involved; ``h11``
is already installed as a dependency of hypercorn, so nothing new is needed. (httpx
would also run under trio, through anyio, but is not installed and would be a new
dependency for four small POSTs; aiohttp is installed but needs the asyncio loop.)
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import ssl
from collections import deque
from dataclasses import asdict, is_dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit
from uuid import UUID

import h11
import trio

from actors.events import ESCALATION, LifecycleEvent
from exchanges import logfmt
from supervisor import ChildSpec, Restart

log = logging.getLogger("alerts")

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "aged-position-manager/alerts"


# --- the HTTP client -------------------------------------------------------------------------

class HttpError(Exception):
    """The exchange with the server went wrong at the HTTP level (not a status code)."""


_ssl_context: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


async def http_request(method: str, url: str, body: bytes = b"", *, headers: Sequence[tuple[str, str]] = (),
                       timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None,
                       ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a new connection; returns ``(status, headers, body)``.

    The whole exchange (connect, TLS, send, receive) is bounded by ``timeout``:
    :exc:`trio.TooSlowError` when it runs out. Connection and protocol failures raise
    :exc:`OSError` / :exc:`HttpError`. Response bodies are capped at 64 KiB.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL is needed")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname and parts.port is None:
        host_header = f"[{parts.hostname}]"
    elif ":" in parts.hostname:
        host_header = f"[{parts.hostname}]:{parts.port}"
    all_headers = [("Host", host_header), ("User-Agent", USER_AGENT), ("Connection", "close"),
                   ("Content-Length", str(len(body))), *headers]
    with trio.fail_after(timeout):
        stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
        try:
            if tls:
                stream = trio.SSLStream(stream, ssl_context or _default_ssl_context(),
                                        server_hostname=parts.hostname, https_compatible=True)
                await stream.do_handshake()
            conn = h11.Connection(our_role=h11.CLIENT)
            # headers and body in one send: no Nagle/delayed-ACK stall
            out = conn.send(h11.Request(method=method, target=target, headers=all_headers))
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
            return await _read_response(stream, conn)
        except (h11.ProtocolError, trio.BrokenResourceError) as exc:
            detail = str(exc) or str(exc.__cause__ or "")
            raise HttpError(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__) from exc
        finally:
            await trio.aclose_forcefully(stream)


async def _read_response(stream: trio.abc.Stream, conn: h11.Connection) -> tuple[int, dict[str, str], bytes]:
    status = 0
    headers: dict[str, str] = {}
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)  # b"" at EOF: h11 reports what that means
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size <= MAX_RESPONSE_BYTES:
                chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, b"".join(chunks)[:MAX_RESPONSE_BYTES]
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpError("connection closed before the response was complete")
        # InformationalResponse (1xx): keep reading


# --- alerts ------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime,)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def alert_text(event: LifecycleEvent) -> str:
    """A short, human-readable description of an event (plain text, numbers rounded for reading)."""
    head = f"{'CRITICAL' if event.critical else 'INFO'} {event.type}"
    where = " ".join(x for x in (event.exchange, event.symbol) if x)
    lines = [head + (f" {where}" if where else "")]
    if event.aged_id is not None:
        lines.append(f"aged position {event.aged_id}")
    data = dict(event.data or {})
    error = data.pop("error", None)
    # for people: percentages to 3 places, prices to 8 significant digits (the payload's data keeps them whole)
    details = " ".join(f"{k}={logfmt.value(k, v) if logfmt.formatter_for(k) else _jsonable(v)}"
                       for k, v in data.items() if v is not None)
    if details:
        lines.append(details)
    if error:
        lines.append(f"error: {error}")
    lines.append(f"at {event.at.isoformat()}")
    return "\n".join(lines)


def alert_payload(event: LifecycleEvent) -> dict[str, Any]:
    """The JSON body a webhook receives for an event."""
    return {
        "type": event.type,
        "critical": event.critical,
        "at": event.at.isoformat(),
        "aged_id": None if event.aged_id is None else str(event.aged_id),
        "exchange": event.exchange,
        "symbol": event.symbol,
        "data": _jsonable(event.data or {}),
        "text": alert_text(event),
    }


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


class Sink:
    """Queue + delivery task. Subclasses implement :meth:`deliver_once`.

    Counters (read by :meth:`service.metrics.Metrics.watch_alerts`): ``delivered``,
    ``failed`` (gave up after every retry, or refused for good), ``retries_made``,
    ``dropped`` (queue full), ``queued`` (waiting now). ``retries`` is the setting.
    """

    name = "sink"

    def __init__(self, *, max_queue: int = 1000, timeout: float = 10.0, retries: int = 3, backoff: float = 1.0,
                 max_backoff: float = 60.0, min_interval: float = 0.0, secrets: Iterable[str] = ()):
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be > 0, retries and backoff >= 0")
        self.max_queue = max_queue
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.min_interval = min_interval
        self._secrets = [s for s in secrets if s]
        self._queue: deque[LifecycleEvent] = deque()
        self._wakeup: trio.Event | None = None
        self.delivered = 0
        self.failed = 0
        self.retries_made = 0
        self.dropped = 0
        self.in_flight: LifecycleEvent | None = None
        self._last_sent: float | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, event: LifecycleEvent) -> None:
        """Queue an alert. Never blocks, never raises; a full queue drops its oldest alert."""
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("alert sink %s: queue full (%d), dropped the oldest alert (%d dropped so far)",
                          self.name, self.max_queue, self.dropped)
        self._queue.append(event)
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        """Deliver queued alerts in order, forever."""
        while True:
            while not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            await self._deliver_next()

    async def drain(self) -> None:
        """Deliver everything queued now, then return."""
        while self._queue:
            await self._deliver_next()

    async def _deliver_next(self) -> None:
        event = self._queue.popleft()
        self.in_flight = event
        finished = False
        try:
            try:
                await self._deliver(event)
            except Exception as exc:  # noqa: BLE001 - a bug in one alert must not stop the others
                self.failed += 1
                log.error("alert sink %s: delivery of %s failed unexpectedly: %s", self.name, event.type,
                          self._scrub(f"{type(exc).__name__}: {exc}"))
            finished = True
        finally:
            self.in_flight = None
            if not finished:  # cancelled mid-delivery: keep it for the next run or a flush
                self._queue.appendleft(event)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _pace(self) -> None:
        if self.min_interval > 0 and self._last_sent is not None:
            await trio.sleep_until(self._last_sent + self.min_interval)
        self._last_sent = trio.current_time()

    async def _deliver(self, event: LifecycleEvent) -> None:
        attempt = 0
        while True:
            await self._pace()
            try:
                outcome, retry_after, reason = await self.deliver_once(event)
            except (OSError, HttpError, trio.TooSlowError, ssl.SSLError) as exc:
                reason = self._scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                if isinstance(exc, trio.TooSlowError):
                    reason = f"no answer within {self.timeout}s"
                outcome, retry_after = "retry", None
            if outcome == "ok":
                self.delivered += 1
                return
            if outcome == "permanent" or attempt >= self.retries:
                self.failed += 1
                log.error("alert sink %s: giving up on %s after %d attempt(s): %s", self.name, event.type,
                          attempt + 1, reason)
                return
            delay = min(self.backoff * 2 ** attempt, self.max_backoff)
            if retry_after is not None:
                delay = min(max(delay, retry_after), self.max_backoff)
            log.warning("alert sink %s: %s attempt %d failed (%s); retrying in %.2fs", self.name, event.type,
                        attempt + 1, reason, delay)
            attempt += 1
            self.retries_made += 1
            await trio.sleep(delay)

    async def deliver_once(self, event: LifecycleEvent) -> tuple[str, float | None, str]:
        """One attempt: ``("ok" | "retry" | "permanent", retry_after_seconds_or_None, detail)``.

        May raise OSError / HttpError / trio.TooSlowError (all retried).
        """
        raise NotImplementedError


def _classify(status: int, headers: Mapping[str, str]) -> tuple[str, float | None]:
    if 200 <= status < 300:
        return "ok", None
    retry_after = None
    try:
        retry_after = float(headers.get("retry-after", ""))
    except ValueError:
        pass
    if status in (408, 425, 429) or status >= 500:
        return "retry", retry_after
    return "permanent", None


class LogSink(Sink):
    """Writes each alert to the ``alerts`` logger: CRITICAL for critical events, else WARNING."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None, **kw: Any):
        super().__init__(**kw)
        self.logger = logger or log

    def offer(self, event: LifecycleEvent) -> None:  # logging is synchronous and cheap: do it now
        level = logging.CRITICAL if event.critical else logging.WARNING
        self.logger.log(level, "ALERT %s", alert_text(event).replace("\n", " | "))
        self.delivered += 1

    async def run(self) -> None:
        await trio.sleep_forever()


class WebhookSink(Sink):
    """POSTs :func:`alert_payload` as JSON to ``url``.

    ``timeout`` bounds each attempt; after a failed attempt it waits
    ``backoff * 2**n`` seconds (capped at ``max_backoff``; a Retry-After header is
    honoured up to that cap) and tries again, ``retries`` times at most. Take ``url``
    from the environment (:meth:`from_env`): webhook URLs usually carry a token.
    """

    name = "webhook"

    def __init__(self, url: str, timeout: float = 5.0, retries: int = 3, backoff: float = 1.0, *,
                 headers: Sequence[tuple[str, str]] = (), name: str | None = None, **kw: Any):
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("webhook URL must be http:// or https://")
        parts = urlsplit(url)
        secrets = [s for s in (parts.path.strip("/"), parts.query, parts.password) if s and len(s) >= 8]
        super().__init__(timeout=timeout, retries=retries, backoff=backoff, secrets=secrets, **kw)
        self.url = url
        self.headers = list(headers)
        self.name = name or f"webhook:{_redact(url)}"

    @classmethod
    def from_env(cls, env: str = "ALERT_WEBHOOK_URL", **kw: Any) -> "WebhookSink | None":
        url = os.environ.get(env, "").strip()
        return cls(url, **kw) if url else None

    async def deliver_once(self, event: LifecycleEvent) -> tuple[str, float | None, str]:
        body = json.dumps(alert_payload(event)).encode()
        status, headers, _ = await http_request(
            "POST", self.url, body, headers=[("Content-Type", "application/json"), *self.headers],
            timeout=self.timeout)
        outcome, retry_after = _classify(status, headers)
        return outcome, retry_after, f"HTTP {status}" + (" (not retried)" if outcome == "permanent" else "")


class TelegramSink(Sink):
    """Sends each alert with the Bot API: ``POST {api_base}/bot{token}/sendMessage``.

    The token and chat id are read from the environment variables named by
    ``token_env`` and ``chat_id_env`` (a missing one is a clear error naming the
    variable, never showing a value). ``parse_mode`` may be ``None`` (plain text) or
    ``"HTML"`` (the text is escaped). Telegram allows about one message a second per
    chat: ``min_interval`` paces the sends; a 429 answer's ``retry_after`` is honoured.
    """

    name = "telegram"
    MAX_TEXT = 4096

    def __init__(self, token_env: str = "TELEGRAM_BOT_TOKEN", chat_id_env: str = "TELEGRAM_CHAT_ID",
                 api_base: str = "https://api.telegram.org", *, parse_mode: str | None = None,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 1.0, min_interval: float = 1.0,
                 **kw: Any):
        token = os.environ.get(token_env, "").strip()
        chat_id = os.environ.get(chat_id_env, "").strip()
        missing = [name for name, value in ((token_env, token), (chat_id_env, chat_id)) if not value]
        if missing:
            raise ValueError(f"Telegram alerts need the environment variable(s) {', '.join(missing)}")
        if parse_mode not in (None, "HTML"):
            raise ValueError("parse_mode must be None or 'HTML'")
        super().__init__(timeout=timeout, retries=retries, backoff=backoff, min_interval=min_interval,
                         secrets=[token], **kw)
        self._token = token
        self.chat_id = chat_id
        self.api_base = api_base.rstrip("/")
        self.parse_mode = parse_mode

    def __repr__(self) -> str:  # never show the token
        return f"TelegramSink(api_base={self.api_base!r}, chat_id={self.chat_id!r})"

    def message(self, event: LifecycleEvent) -> dict[str, Any]:
        text = alert_text(event)
        if event.critical:
            text = "\U0001F6A8 " + text
        if self.parse_mode == "HTML":
            first, _, rest = html.escape(text, quote=False).partition("\n")
            text = f"<b>{first}</b>" + (f"\n{rest}" if rest else "")
        if len(text) > self.MAX_TEXT:
            text = text[: self.MAX_TEXT - 1] + "\u2026"
        msg: dict[str, Any] = {"chat_id": self.chat_id, "text": text, "disable_web_page_preview": True}
        if self.parse_mode:
            msg["parse_mode"] = self.parse_mode
        return msg

    async def deliver_once(self, event: LifecycleEvent) -> tuple[str, float | None, str]:
        url = f"{self.api_base}/bot{self._token}/sendMessage"
        body = json.dumps(self.message(event)).encode()
        status, headers, payload = await http_request(
            "POST", url, body, headers=[("Content-Type", "application/json")], timeout=self.timeout)
        outcome, retry_after = _classify(status, headers)
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = {}
        if status == 429:
            try:
                retry_after = float(answer["parameters"]["retry_after"])
            except (KeyError, TypeError, ValueError):
                pass
        description = str(answer.get("description", ""))[:200] if isinstance(answer, dict) else ""
        detail = self._scrub(f"HTTP {status} {description}".strip())
        return outcome, retry_after, detail + (" (not retried)" if outcome == "permanent" else "")


# --- the router ------------------------------------------------------------------------------

class AlertRouter:
    """Routes bus events to sinks and runs the sinks' delivery tasks.

    ``notify`` names the non-critical event types that alert too; critical events and
    ``supervisor.escalation`` always do.
    """

    def __init__(self, sinks: Sequence[Sink], *, notify: Iterable[str] = ()):
        self.sinks = list(sinks)
        self.notify = frozenset(notify)
        self.routed = 0

    def subscribe(self, bus: Any) -> Callable[[], None]:
        """Listen on ``bus``; returns the function that stops listening."""
        return bus.subscribe(self.publish)

    def wants(self, event: LifecycleEvent) -> bool:
        return event.critical or event.type == ESCALATION or event.type in self.notify

    def publish(self, event: LifecycleEvent) -> None:
        """The bus listener: never blocks."""
        if not self.wants(event):
            return
        self.routed += 1
        for sink in self.sinks:
            try:
                sink.offer(event)
            except Exception:  # noqa: BLE001 - one sink must not keep the alert from the others
                log.exception("alert sink %s refused an alert", getattr(sink, "name", sink))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every sink's delivery task until cancelled (a supervised child)."""
        async with trio.open_nursery() as nursery:
            for sink in self.sinks:
                nursery.start_soon(sink.run)
            task_status.started()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued, for at most ``timeout`` seconds; True if all went out.

        For after the supervision tree has stopped (e.g. to get the escalation alert
        out before the process exits).
        """
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for sink in self.sinks:
                    nursery.start_soon(sink.drain)
        return all(sink.queued == 0 for sink in self.sinks)

    def child(self, child_id: str = "alerts") -> ChildSpec:
        return ChildSpec(child_id, self.run, Restart.PERMANENT, kind="alerts", critical=False)


def alert_router_from_env(*, webhook_url_env: str | None = None, telegram: bool = False,
                          notify: Iterable[str] = (), **sink_options: Any) -> AlertRouter:
    """The CLI's router, from the ``[alerts]`` configuration.

    A :class:`LogSink` always. A :class:`WebhookSink` posting to the URL held in the
    environment variable named ``webhook_url_env`` (if one is named, it must be set).
    A :class:`TelegramSink` when ``telegram`` is true (``$TELEGRAM_BOT_TOKEN`` and
    ``$TELEGRAM_CHAT_ID`` must be set). A missing variable is a ``ValueError`` naming
    it; values are never shown. ``sink_options`` go to the webhook/Telegram sinks.
    """
    sinks: list[Sink] = [LogSink()]
    if webhook_url_env:
        webhook = WebhookSink.from_env(webhook_url_env, **sink_options)
        if webhook is None:
            raise ValueError(f"webhook alerts need the environment variable {webhook_url_env} (the webhook URL)")
        sinks.append(webhook)
    if telegram:
        sinks.append(TelegramSink(**sink_options))
    for sink in sinks:
        log.info("alerts: sink %s enabled", sink.name)
    return AlertRouter(sinks, notify=notify)


__all__ = [
    "AlertRouter", "HttpError", "LogSink", "Sink", "TelegramSink", "WebhookSink", "alert_payload", "alert_text",
    "alert_router_from_env", "http_request",
]
