"""The public stream URLs, each served by one :class:`~simulator.streams.hub.StreamHub`."""

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
        await hub.serve(websocket, "binanceusdm", streams=[websocket.path_params.get("stream", "")])

    async def binance_combined(websocket: WebSocket) -> None:
        raw = websocket.query_params.get("streams", "")
        streams = [s for s in raw.split("/") if s]
        await hub.serve(websocket, "binanceusdm", combined=True, streams=streams)

    return [
        WebSocketRoute("/bybit/v5/public/linear", bybit_linear),
        WebSocketRoute("/binance/ws", binance_ws),
        WebSocketRoute("/binance/ws/{stream}", binance_ws_stream),
        WebSocketRoute("/binance/stream", binance_combined),
    ]
