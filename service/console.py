"""The operator console: one page and its JSON API, served by the HTTP endpoint.

Reads are open; actions need ``Authorization: Bearer <token>``, the token being the
value of the environment variable that ``[console] token_env`` names (read at each
request, never logged). With no token configured every action is refused (403) with
a message saying how to set one. The endpoint binds loopback unless ``[metrics] host``
says otherwise.

========================================  ==========================================================
``GET /``                                 the page (``console_static/index.html``; its script and
                                          style under ``/console/``; nothing from elsewhere)
``GET /api/positions``                    every aged position still open: a list of
                                          :func:`service.console_view.position_view` objects
``GET /api/positions/{id}``               one aged position with ``prices`` (sampled checks),
                                          ``transitions`` (status history) and ``actions``
``GET /api/closed?limit=20``              the newest closed aged positions
``GET /api/actions?limit=50``             the operators' actions, newest first
``GET /api/overrides``                    the per-symbol policy overrides
``POST /api/positions/{id}/hold``         ``{"hours": 4, "reason": "..."}``
``POST /api/positions/{id}/release``      ``{"reason": "..."}`` (optional)
``POST /api/positions/{id}/close``        ``{"reason": "..."}`` (optional): close now at the market
``POST /api/overrides``                   ``{"exchange", "symbol", "settings": {...}, "reason"}``
``DELETE /api/overrides/{exchange}/{symbol}``  drop a symbol's override (``?reason=``)
========================================  ==========================================================

Every action is validated first and stored second: it becomes one row of
``monitoring.operator_actions`` (actor ``api:<remote address>``), which the running
service applies. A bad request is one JSON ``{"error": "..."}`` — 400 for a malformed
value, 401/403 for the token, 404 for an unknown position or override, 409 for a
position that is closed, or already closing when asked to close — and nothing changes.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from actors.operator import (
    BadAction,
    ClearOverride,
    ForceClose,
    OperatorAction,
    Override,
    Release,
    check_action,
    effective_policy,
    hold_for,
    validate_override,
)
from actors.policy import PolicyConfig
from actors.statuses import Status
from service.console_view import position_view

log = logging.getLogger("service.console")

STATIC = Path(__file__).resolve().parent / "console_static"
# The page's files, read once: three small files, served from memory with no thread
# hop. Only these names are served under /console/.
STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
MAX_BODY_BYTES = 16 * 1024
MAX_LIMIT = 500
NOT_OPEN = frozenset({Status.CLOSED, Status.DUST})

__all__ = ["console_routes"]


class ApiError(Exception):
    """One clear answer to a bad request: ``status`` and the message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


def console_routes(resolve: Callable[[], Any], to_json: Callable[..., Response]) -> list[BaseRoute]:
    """The console's routes for the service that ``resolve()`` returns (anything with
    ``db``, ``config``, ``clock``; ``feeds`` optional). ``to_json(body, status)`` renders
    a JSON response (Decimals as strings, datetimes ISO 8601)."""

    def handler(fn: Callable[..., Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except ApiError as exc:
                response = to_json({"error": str(exc)}, exc.status)
                for key, value in (exc.headers or {}).items():
                    response.headers[key] = value
                return response

        return endpoint

    def service() -> Any:
        svc = resolve()
        if getattr(svc, "db", None) is None:
            raise ApiError(503, "no database")
        return svc

    # --- reads --------------------------------------------------------------------------------

    files = {name: (STATIC / name).read_bytes() for name in STATIC_TYPES}

    def static(name: str) -> Response:
        return Response(files[name], media_type=STATIC_TYPES[name], headers={"Cache-Control": "no-cache"})

    async def page(request: Request) -> Response:
        return static("index.html")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files or name == "index.html":
            raise ApiError(404, f"no such file: {name}")
        return static(name)

    async def positions(request: Request) -> Response:
        svc = service()
        rows = await svc.db.positions_overview()
        overrides = await svc.db.symbol_overrides()
        now = svc.clock.now()
        return to_json([_view(svc, row, overrides, now) for row in rows])

    async def position(request: Request) -> Response:
        svc = service()
        aged_id = _aged_id(request.path_params["aged_id"])
        row = await svc.db.aged_position(aged_id)
        if row is None:
            raise ApiError(404, f"no aged position {aged_id}")
        body: dict[str, Any]
        if row["status"] in NOT_OPEN:
            body = {**row, "id": str(row["id"])}
        else:
            overview = await svc.db.positions_overview(aged_id)
            body = _view(svc, overview[0] if overview else row, await svc.db.symbol_overrides(), svc.clock.now())
        body["prices"] = await svc.db.price_history(aged_id, _limit(request, "limit", 200))
        body["transitions"] = await svc.db.history(aged_id)
        body["actions"] = await svc.db.actions(aged_id=aged_id, limit=50)
        return to_json(body)

    async def closed(request: Request) -> Response:
        return to_json(await service().db.recent_closed(_limit(request, "limit", 20)))

    async def actions(request: Request) -> Response:
        return to_json(await service().db.actions(limit=_limit(request, "limit", 50)))

    async def overrides(request: Request) -> Response:
        return to_json(await service().db.override_rows())

    # --- actions ------------------------------------------------------------------------------

    async def hold(request: Request) -> Response:
        svc = _authorized(request, service())
        aged_id = _aged_id(request.path_params["aged_id"])
        body = await _body(request)
        action = _checked(lambda: hold_for(aged_id, _required(body, "hours"), body.get("reason"), svc.clock.now()))
        await _open_position(svc, aged_id, action)
        return await _record(svc, request, action, 200, to_json)

    async def release(request: Request) -> Response:
        svc = _authorized(request, service())
        aged_id = _aged_id(request.path_params["aged_id"])
        body = await _body(request)
        action = _checked(lambda: Release(aged_id, body.get("reason")))
        await _open_position(svc, aged_id, action)
        return await _record(svc, request, action, 200, to_json)

    async def close(request: Request) -> Response:
        svc = _authorized(request, service())
        aged_id = _aged_id(request.path_params["aged_id"])
        body = await _body(request)
        action = _checked(lambda: ForceClose(aged_id, body.get("reason")))
        row = await _open_position(svc, aged_id, action)
        if row["close_triggered_at"] is not None:
            raise ApiError(409, f"aged position {aged_id} is already closing (close triggered at "
                                f"{row['close_triggered_at'].isoformat()}): nothing to do")
        return await _record(svc, request, action, 202, to_json)

    async def set_override(request: Request) -> Response:
        svc = _authorized(request, service())
        body = await _body(request)
        settings = _required(body, "settings")
        if not isinstance(settings, dict):
            raise ApiError(400, f"settings: must be an object of policy settings, got {settings!r}")
        action = _checked(lambda: Override(_required(body, "exchange"), _required(body, "symbol"),
                                           validate_override(settings, svc.config.policy), body.get("reason")))
        return await _record(svc, request, action, 200, to_json)

    async def clear_override(request: Request) -> Response:
        svc = _authorized(request, service())
        exchange, symbol = unquote(request.path_params["exchange"]), unquote(request.path_params["symbol"])
        action = _checked(lambda: ClearOverride(exchange, symbol, request.query_params.get("reason")))
        if (exchange, symbol) not in await svc.db.symbol_overrides():
            raise ApiError(404, f"no override of {symbol} on {exchange} to clear")
        return await _record(svc, request, action, 200, to_json)

    return [
        Route("/", handler(page)),
        Route("/console/{name}", handler(asset)),
        Route("/api/positions", handler(positions)),
        Route("/api/positions/{aged_id}", handler(position)),
        Route("/api/positions/{aged_id}/hold", handler(hold), methods=["POST"]),
        Route("/api/positions/{aged_id}/release", handler(release), methods=["POST"]),
        Route("/api/positions/{aged_id}/close", handler(close), methods=["POST"]),
        Route("/api/closed", handler(closed)),
        Route("/api/actions", handler(actions)),
        Route("/api/overrides", handler(overrides)),
        Route("/api/overrides", handler(set_override), methods=["POST"]),
        Route("/api/overrides/{exchange}/{symbol:path}", handler(clear_override), methods=["DELETE"]),
    ]


# --- helpers ---------------------------------------------------------------------------------------


def _view(svc: Any, row: dict, overrides: dict, now: Any) -> dict[str, Any]:
    """:func:`position_view` of ``row`` with the policy in force for its symbol and the feed's
    quote while the feed vouches for it (else the last sampled price)."""
    policy: PolicyConfig = svc.config.policy
    # As the position actors layer them (ActorContext.policy_for): the configuration
    # file's per-symbol settings, then the operators'.
    file_layer = (getattr(svc.config, "policy_overrides", None) or {}).get(row["symbol"], {})
    db_layer = overrides.get((row["exchange"], row["symbol"]), {})
    layer = {**file_layer, **db_layer}
    if layer:
        try:
            policy = effective_policy(policy, file_layer, db_layer)
        except BadAction:  # each layer fits alone, not together: the actors use the file's alone
            policy = effective_policy(policy, file_layer)
            layer = dict(file_layer)
    feed = (getattr(svc, "feeds", None) or {}).get(row["exchange"])
    tick = feed.fresh_quote(row["symbol"]) if feed is not None and hasattr(feed, "fresh_quote") else None
    if tick is None:
        view = position_view(row, now, policy)
    else:
        view = position_view(row, now, policy, bid=tick.bid, ask=tick.ask, last=tick.last, quote_at=now)
    view["override"] = layer or None
    return view


def _authorized(request: Request, svc: Any) -> Any:
    """``svc`` if the request carries the console's token; an :class:`ApiError` otherwise."""
    env = svc.config.console.token_env
    token = os.environ.get(env) if env else None
    if not token:
        where = (f"the environment variable {env} is not set" if env
                 else "no [console] token_env is configured")
        raise ApiError(403, f"actions are disabled: {where}. Set [console] token_env = \"NAME\" in the "
                            f"configuration and export NAME=<a long random token> before starting the service")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "this action needs the header Authorization: Bearer <token>",
                       {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "the token is not the console's token", {"WWW-Authenticate": "Bearer"})
    return svc


def _aged_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise ApiError(404, f"no aged position {text!r} (an id is a UUID)") from None


def _limit(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, f"{name}: must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body)."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(400, f"the body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def _required(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise ApiError(400, f"{key}: is required")
    return body[key]


def _checked(build: Callable[[], OperatorAction]) -> OperatorAction:
    """The action ``build()`` makes and :func:`actors.operator.check_action` accepts; 400 otherwise."""
    try:
        return check_action(build())
    except BadAction as exc:
        raise ApiError(400, str(exc)) from None


async def _open_position(svc: Any, aged_id: UUID, action: OperatorAction) -> dict:
    """The aged row of ``aged_id`` if it is still open; 404/409 otherwise."""
    row = await svc.db.aged_position(aged_id)
    if row is None:
        raise ApiError(404, f"no aged position {aged_id}")
    if row["status"] in NOT_OPEN:
        raise ApiError(409, f"aged position {aged_id} is {row['status']}: nothing to {action.name}")
    return row


async def _record(svc: Any, request: Request, action: OperatorAction, status: int,
                  to_json: Callable[..., Response]) -> Response:
    """Store ``action`` (actor ``api:<remote address>``); ``{"action": <its row>}``."""
    client = request.client.host if request.client is not None else None
    actor = f"api:{client}" if client else "api"
    try:
        row = await svc.db.record_action(action, actor, base=svc.config.policy)
    except BadAction as exc:  # the database's checks (a race with a close, a clear of nothing)
        message = str(exc)
        status = 404 if message.startswith("no ") else 409 if message.startswith("aged position") else 400
        raise ApiError(status, message) from None
    log.info("operator action %s by %s: %s", action.name, actor, _target(action))
    return to_json({"action": row}, status)


def _target(action: OperatorAction) -> str:
    aged_id = getattr(action, "aged_id", None)
    return str(aged_id) if aged_id is not None else f"{action.symbol} on {action.exchange}"  # type: ignore[union-attr]
