"""The stream URLs, each served by one :class:`~simulator.streams.hub.StreamHub`.

``/binance/ws/{stream}`` serves Binance's user data stream when ``stream`` is a live
listen key (production: ``wss://fstream.binance.com/ws/<listenKey>``) and the public
stream of that name otherwise; ``/bybit/v5/private`` is Bybit's private stream.
"""

from __future__ import annotations

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from simulator.streams.hub import StreamHub


def websocket_routes(state, hub: StreamHub) -> list[WebSocketRoute]:
    """The public stream routes, bound to ``state`` (the hub starts listening to it)."""
    hub.attach(state)

    async def bybit_linear(websocket: WebSocket) -> None:
        await hub.serve(websocket, "bybit")

    async def binance_ws(websocket: WebSocket) -> None:
        await hub.serve(websocket, "binanceusdm")

    async def binance_ws_stream(websocket: WebSocket) -> None:
        stream = websocket.path_params.get("stream", "")
        if hub.private is not None and state.listen_key_live(stream):
            await hub.private.serve_binance(websocket, stream)
            return
        await hub.serve(websocket, "binanceusdm", streams=[stream])

    async def bybit_private(websocket: WebSocket) -> None:
        if hub.private is None:  # the hub was closed: nothing to serve
            await websocket.close(code=1011)
            return
        await hub.private.serve_bybit(websocket)

    async def binance_combined(websocket: WebSocket) -> None:
        raw = websocket.query_params.get("streams", "")
        streams = [s for s in raw.split("/") if s]
        await hub.serve(websocket, "binanceusdm", combined=True, streams=streams)

    return [
        WebSocketRoute("/bybit/v5/public/linear", bybit_linear),
        WebSocketRoute("/bybit/v5/private", bybit_private),
        WebSocketRoute("/binance/ws", binance_ws),
        WebSocketRoute("/binance/ws/{stream}", binance_ws_stream),
        WebSocketRoute("/binance/stream", binance_combined),
    ]
