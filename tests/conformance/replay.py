"""A loopback HTTP server that answers each exchange endpoint with a recorded payload.

The conformance tests point a real ccxt client (built by
:func:`exchanges.clients.make_ccxt_client`, as the service builds it) at this server:
ccxt signs and sends its real requests, and every endpoint answers with the exchange's
own documented or captured payload from this folder, byte for byte. So the test sees
exactly what the adapter makes of a real reply, with nothing in between but ccxt::

    async with trio.open_nursery() as nursery:
        replay = await nursery.start(serve_replay)
        replay.answer("GET", "/fapi/v1/exchangeInfo", corpus_bytes("binance_exchange_info.json"))
        exchange = CcxtExchange.create("binanceusdm", rest_url=replay.base_url, ...)

Routes match on method and path, and optionally on query parameters (``when``): the
route added last that matches answers. The query string and the body of every request
are recorded in :attr:`ReplayServer.requests` (oldest first), so a test can check what
was asked. A request nobody answered gets HTTP 404 with an empty JSON object and is
recorded too. Port 0 (an ephemeral port), 127.0.0.1 only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from exchanges.ccxt_adapter import CcxtExchange

__all__ = ["CORPUS", "Recorded", "ReplayServer", "adapter", "corpus_bytes", "replay", "serve_replay"]

CORPUS = Path(__file__).resolve().parent


def corpus_bytes(name: str) -> bytes:
    """The raw bytes of a corpus file (served unchanged)."""
    return (CORPUS / name).read_bytes()


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes


@dataclass(frozen=True)
class _Route:
    method: str
    path: str
    when: dict[str, str]
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass
class ReplayServer:
    """The routes to answer and the requests seen. Build it with :func:`serve_replay`."""

    base_url: str = ""
    routes: list[_Route] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)

    def answer(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        when: dict[str, str] | None = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``method path`` (with the query parameters in ``when``) with ``body`` from now on."""
        extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self.routes.append(_Route(method.upper(), path, dict(when or {}), status, body, extra))

    def _reply(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, list]:
        for route in reversed(self.routes):
            if (route.method, route.path) == (method, path) and all(
                query.get(k, [None])[0] == v for k, v in route.when.items()
            ):
                return route.status, route.body, route.headers
        return 404, b"{}", []

    def seen(self, method: str, path: str) -> list[Recorded]:
        """The recorded requests to ``method path``, oldest first."""
        return [r for r in self.requests if r.method == method.upper() and r.path == path]

    async def __call__(self, scope, receive, send) -> None:  # the ASGI application
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"]  # lifespan.startup, then lifespan.shutdown
                await send({"type": event + ".complete"})
                if event == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)
        self.requests.append(Recorded(scope["method"], scope["path"], query, body))
        status, payload, extra = self._reply(scope["method"], scope["path"], query)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


async def serve_replay(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve a fresh :class:`ReplayServer` on 127.0.0.1 (ephemeral port) until cancelled."""
    replay = ReplayServer()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.loglevel = "WARNING"
    config.keep_alive_timeout = 75.0  # longer than aiohttp's idle keep-alive (see simulator.server)
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, replay, config)
        replay.base_url = next(b for b in binds if b.startswith("http://"))
        task_status.started(replay)


# -- pytest fixtures (import them into a test module to use them) ---------------------------


@pytest.fixture
async def replay(nursery) -> ReplayServer:
    """A running :class:`ReplayServer` with no routes yet."""
    return await nursery.start(serve_replay)


@pytest.fixture
async def adapter(aio_loop, replay):
    """``adapter(name)``: a :class:`CcxtExchange` built as the service builds it, on ``replay``.

    One lookup after an order create (``fill_poll_attempts=1``): the payloads never
    change between requests, so a second look would see the same reply.
    """
    made: list[CcxtExchange] = []

    def build(name: str) -> CcxtExchange:
        exchange = CcxtExchange.create(
            name, rest_url=replay.base_url, api_key="conformance-key", secret="conformance-secret", fill_poll_attempts=1
        )
        made.append(exchange)
        return exchange

    yield build
    for exchange in made:
        await exchange.close()
