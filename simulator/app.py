"""The simulator's ASGI app: public streams, Bybit and Binance REST, admin API.

One starlette app serves everything on one port::

    /bybit/v5/public/linear            Bybit public linear WebSocket (simulator.streams)
    /binance/ws, /binance/stream       Binance USD-M WebSocket streams (simulator.streams)
    /bybit/...                         Bybit v5 REST (simulator.rest_bybit)
    /binance/...                       Binance USD-M REST (simulator.rest_binance)
    /_sim/...                          admin API (simulator.admin)
"""

from __future__ import annotations

import logging

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
    app.state.sim = state
    app.state.hub = hub
    return app, hub
