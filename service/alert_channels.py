"""The HTTP alert channels: a webhook and Telegram, over httpx.

* :class:`WebhookSink` - a JSON POST of :func:`~service.alert_messages.alert_payload`
  per alert.
* :class:`TelegramSink` - the Bot API's ``sendMessage``; the token and chat id come
  from environment variables only.

Both answer a failed attempt the same way (:func:`_judge`): 2xx delivered; no answer,
a broken connection, 408/425/429 or 5xx retried (:exc:`DeliveryFailed`, with the
server's ``Retry-After``); any other 4xx refused for good (:exc:`DeliveryRefused`).

Secrets (webhook URLs that carry tokens, the Telegram token) are never logged: a sink
is named by scheme and host only, error texts are scrubbed, and the request lines
httpx logs itself (``HTTP Request: POST https://...``) pass through a filter that
blanks every secret a sink has registered.

:func:`http_request` runs under trio: httpx reaches trio through anyio, so trio's
cancel scopes bound the whole exchange, connect and TLS included.
"""

from __future__ import annotations

import html
import json
import logging
import os
import ssl
from typing import Any, Sequence
from urllib.parse import urlsplit

import httpx
import trio

from actors.events import LifecycleEvent
from service.alert_messages import alert_payload, alert_text
from service.alert_sinks import DeliveryFailed, DeliveryRefused, Sink

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "aged-position-manager/alerts"
RETRIED_STATUSES = frozenset({408, 425, 429})


class _Redact(logging.Filter):
    """Blanks the registered secrets out of log records (httpx logs whole request URLs)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            for secret in self.secrets:
                text = text.replace(secret, "***")
            record.msg, record.args = text, None
        return True


_redact_secrets = _Redact()
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).addFilter(_redact_secrets)

_ssl_context: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


TRANSPORT_ERRORS = (OSError, httpx.RequestError, trio.TooSlowError)
"""What :func:`http_request` raises when no answer came: all worth retrying."""


async def http_request(method: str, url: str, body: bytes = b"", *, headers: Sequence[tuple[str, str]] = (),
                       timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on a new connection; returns ``(status, headers, body)``.

    Header names come back in lower case. The whole exchange (connect, TLS, send,
    receive) is bounded by ``timeout``: :exc:`trio.TooSlowError` when it runs out.
    Connection and protocol failures raise :exc:`httpx.RequestError` (or
    :exc:`OSError`). Response bodies are cut at 64 KiB.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL is needed")
    with trio.fail_after(timeout):
        # trust_env=False: straight to the receiver, as configured, whatever proxy variables say
        async with httpx.AsyncClient(timeout=timeout, verify=_default_ssl_context(), trust_env=False,
                                     headers={"User-Agent": USER_AGENT}) as client:
            async with client.stream(method, url, content=body, headers=list(headers)) as response:
                kept = bytearray()
                async for chunk in response.aiter_bytes():
                    kept += chunk[: MAX_RESPONSE_BYTES - len(kept)]
                return response.status_code, dict(response.headers), bytes(kept)


def _judge(status: int, retry_after: float | None, detail: str) -> None:
    """Return if ``status`` means delivered; else raise what the sink should do about it."""
    if 200 <= status < 300:
        return
    if status in RETRIED_STATUSES or status >= 500:
        raise DeliveryFailed(detail, retry_after)
    raise DeliveryRefused(f"{detail} (not retried)")


def _retry_after_header(headers: dict[str, str]) -> float | None:
    try:
        return float(headers.get("retry-after", ""))
    except ValueError:
        return None


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


class HttpSink(Sink):
    """A sink that delivers with :func:`http_request`; a request that gets no answer is retried."""

    def __init__(self, *, secrets: Sequence[str] = (), **kw: Any):
        super().__init__(secrets=secrets, **kw)
        _redact_secrets.secrets.update(self._secrets)

    async def post_json(self, url: str, message: Any,
                        headers: Sequence[tuple[str, str]] = ()) -> tuple[int, dict[str, str], bytes]:
        """POST ``message`` as JSON; no answer becomes :exc:`DeliveryFailed` with a scrubbed reason."""
        try:
            return await http_request("POST", url, json.dumps(message).encode(), timeout=self.timeout,
                                      headers=[("Content-Type", "application/json"), *headers])
        except TRANSPORT_ERRORS as exc:
            if isinstance(exc, (trio.TooSlowError, httpx.TimeoutException)):
                reason = f"no answer within {self.timeout}s"
            else:
                reason = self._scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            raise DeliveryFailed(reason) from None


class WebhookSink(HttpSink):
    """POSTs :func:`~service.alert_messages.alert_payload` as JSON to ``url``.

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

    async def deliver_once(self, event: LifecycleEvent) -> None:
        status, headers, _ = await self.post_json(self.url, alert_payload(event), self.headers)
        _judge(status, _retry_after_header(headers), f"HTTP {status}")


class TelegramSink(HttpSink):
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

    async def deliver_once(self, event: LifecycleEvent) -> None:
        status, headers, payload = await self.post_json(f"{self.api_base}/bot{self._token}/sendMessage",
                                                        self.message(event))
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = {}
        retry_after = _retry_after_header(headers)
        if status == 429:
            try:
                retry_after = float(answer["parameters"]["retry_after"])
            except (KeyError, TypeError, ValueError):
                pass
        description = str(answer.get("description", ""))[:200] if isinstance(answer, dict) else ""
        _judge(status, retry_after, self._scrub(f"HTTP {status} {description}".strip()))


__all__ = ["HttpSink", "TelegramSink", "WebhookSink", "http_request"]
