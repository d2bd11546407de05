"""Reading admin requests: the JSON body, counts, and the HTTP 400 for bad input.

Admin handlers raise :class:`BadInput` (or :class:`~simulator.state.SimError`) for
anything a client got wrong; the admin API answers it ``400 {"error": "..."}``.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from simulator.http_common import json_response
from simulator.state import CountedFault, normalize_exchange

MAX_COUNT = 1_000_000


class BadInput(Exception):
    pass


def bad_request(msg: str) -> Response:
    return json_response({"error": msg}, status=400)


async def json_body(request: Request) -> dict:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise BadInput(f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadInput("body must be a JSON object")
    return body


def parse_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{name} must be an integer count")
    if not (0 <= value <= MAX_COUNT):
        raise BadInput(f"{name} must be between 0 and {MAX_COUNT}")
    return value


def parse_counted_fault(value, name: str) -> CountedFault:
    """``N`` or ``{"count": N, "exchange": "bybit"}``."""
    if isinstance(value, dict):
        unknown = set(value) - {"count", "exchange"}
        if unknown:
            raise BadInput(f"{name}: unknown keys {sorted(unknown)}")
        ex = value.get("exchange")
        return CountedFault(parse_count(value.get("count", 1), f"{name}.count"), normalize_exchange(ex) if ex else None)
    return CountedFault(parse_count(value, name))
