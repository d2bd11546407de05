"""The simulator's ASGI app: public streams, Bybit and Binance REST, admin API.

One starlette app serves everything on one port::

    /bybit/v5/public/linear            Bybit public linear WebSocket (simulator.streams)
    /binance/ws, /binance/stream       Binance USD-M WebSocket streams (simulator.streams)
    /bybit/...                         Bybit v5 REST (simulator.rest_bybit)
    /binance/...                       Binance USD-M REST (simulator.rest_binance)
    /bybit/v5/private                  Bybit v5 private WebSocket (simulator.streams.private)
    /binance/ws/<listenKey>            Binance USD-M user data stream (simulator.streams.private)
    /_sim/...                          admin API (simulator.admin)

Every REST request of both exchanges waits ``state.rest_latency_ms`` before it is
handled (``POST /_sim/latency``; :class:`RestLatency`).
"""

from __future__ import annotations

import logging

import anyio
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from simulator import admin, rest_binance, rest_bybit
from simulator.state import SimState

log = logging.getLogger(__name__)

try:
    from simulator.streams import StreamHub, websocket_routes
except ImportError as exc:  # pragma: no cover - only while streams.py is being written
    StreamHub = None  # type: ignore[assignment]
    websocket_routes = None  # type: ignore[assignment]
    _STREAMS_IMPORT_ERROR: Exception | None = exc
else:
    _STREAMS_IMPORT_ERROR = None


class RestLatency:
    """ASGI middleware: HTTP requests under ``/bybit`` and ``/binance`` wait ``state.rest_latency_ms`` first.

    The wait comes before the request is handled, so what the request sees (prices,
    positions, the clock) is what is true when it is answered, as with a slow network.
    """

    def __init__(self, app, state: SimState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(("/bybit/", "/binance/")):
            delay_ms = self.state.rest_latency_ms
            if delay_ms > 0:
                await anyio.sleep(delay_ms / 1000)
        await self.app(scope, receive, send)


def build_app(state: SimState, hub=None) -> tuple[Starlette, object | None]:
    """The app and its stream hub (created here unless given; None without streams)."""
    routes: list[BaseRoute] = []
    if websocket_routes is not None:
        if hub is None:
            hub = StreamHub(state)
        # before the REST mounts: /bybit and /binance would otherwise swallow the WS paths
        routes += websocket_routes(state, hub)
    else:
        log.warning("simulator: WebSocket streams not mounted (%s)", _STREAMS_IMPORT_ERROR)
    routes += rest_bybit.routes(state)
    routes += rest_binance.routes(state)
    routes += admin.routes(state, hub)
    app = Starlette(routes=routes)
    app.add_middleware(RestLatency, state=state)
    app.state.sim = state
    app.state.hub = hub
    return app, hub
