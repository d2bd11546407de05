"""HTTP helpers every simulated API shares: compact JSON, the lost reply, the 503 page.

The REST dialects (:mod:`simulator.rest_bybit`, :mod:`simulator.rest_binance`) and the
admin API (:mod:`simulator.admin`) answer through :func:`json_response`; the fault
injections use :class:`NoReply` with :func:`hold_until_disconnect` (a reply that never
comes) and :func:`service_unavailable` (what a gateway in trouble sends).
"""

from __future__ import annotations

import json
import logging

import anyio
from starlette.requests import Request
from starlette.responses import Response

MAX_DROP_HOLD_S = 300.0  # a dropped reply holds the request at most this long

log = logging.getLogger(__name__)


def json_response(payload, status: int = 200, headers: dict | None = None) -> Response:
    """Compact JSON, one body: hypercorn writes headers+body back to back."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class NoReply(Response):
    """A response that sends nothing (the "reply lost" fault)."""

    def __init__(self) -> None:  # noqa: D107 - nothing to set up
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        return None


async def hold_until_disconnect(request: Request, max_hold: float = MAX_DROP_HOLD_S) -> None:
    """Keep the request open, unanswered, until the client gives up (or ``max_hold``)."""
    with anyio.move_on_after(max_hold):
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                return


def service_unavailable() -> Response:
    return Response(
        b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
        status_code=503,
        media_type="text/html",
    )


def parse_bool(value) -> bool | None:
    """JSON true/false or the strings "true"/"false" (any case); None if neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


async def reply_or_drop(request: Request, response: Response, drop: bool, what: str) -> Response:
    """``response``, or, when ``drop`` (the "reply lost" fault), nothing at all.

    The order was handled either way: a dropped reply is an order the exchange took
    whose answer never reached the client.
    """
    if not drop:
        return response
    log.info("simulator: %s reply dropped (fault)", what)
    await hold_until_disconnect(request)
    return NoReply()


def default_window(start: int | None, end: int | None, now: int, window: int) -> tuple[int, int]:
    """A history query's ``[start, end]`` in ms when one or both ends are missing.

    Both exchanges document the same rule for their trade lists: neither given, the
    ``window`` up to now; one given, ``window`` from or up to it.
    """
    if start is None and end is None:
        return now - window, now
    if start is None:
        return end - window, end
    if end is None:
        return start, start + window
    return start, end
