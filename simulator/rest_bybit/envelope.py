"""Bybit v5's envelope: the ``retCode``/``retMsg`` answer, request signing, the faults.

Every Bybit area class derives from :class:`BybitEnvelope`, which answers
(:meth:`~BybitEnvelope.ok`, :meth:`~BybitEnvelope.error`), checks a private request's
signature and applies the injected HTTP faults (:meth:`~BybitEnvelope._private`), and
turns any crash into Bybit's internal-error answer (:meth:`~BybitEnvelope._guard`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from decimal import Decimal
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from simulator.http_common import json_response, service_unavailable
from simulator.state import SimState

log = logging.getLogger(__name__)

EXCHANGE = "bybit"
TAKER_FEE = Decimal("0.00055")

# real codes and messages (https://bybit-exchange.github.io/docs/v5/error)
MESSAGES = {
    "10001": "params error",
    "10002": "invalid request, please check your server timestamp or recv_window param",
    "10003": "API key is invalid.",
    "10004": "error sign!",
    "10005": "Permission denied, please check your API key permissions.",
    "10006": "Too many visits!",
    "10016": "Internal server error.",
    "110001": "order not exists or too late to cancel",
    "110004": "Insufficient wallet balance",
    "110007": "ab not enough for new order",
    "110012": "Insufficient available balance",
    "110017": "Reduce-only rule not satisfied",
    "110072": "OrderLinkedID is duplicate",
    "110094": "Order does not meet minimum order value",
    "30208": "Failed to submit order(s). The order price is higher than the maximum buying price.",
    "30209": "Failed to submit order(s). The order price is lower than the minimum selling price.",
}


class BybitEnvelope:
    """What every Bybit endpoint shares; the area classes add the endpoints."""

    def __init__(self, state: SimState):
        self.state = state

    # --------------------------------------------------------------- envelope

    def ok(self, result, headers: dict | None = None) -> Response:
        return json_response(
            {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": self.state.now_ms()},
            headers=headers,
        )

    def error(self, code, message: str | None = None, status: int = 200) -> Response:
        code = str(code)
        return json_response(
            {
                "retCode": int(code),
                "retMsg": message or MESSAGES.get(code, "simulated error"),
                "result": {},
                "retExtInfo": {},
                "time": self.state.now_ms(),
            },
            status=status,
        )

    # ------------------------------------------------------------------ auth

    def _check_signature(self, request: Request, payload: str) -> Response | None:
        h = request.headers
        key = h.get("x-bapi-api-key")
        if not key or key not in self.state.api_keys:
            return self.error("10003")
        ts = h.get("x-bapi-timestamp", "")
        recv = h.get("x-bapi-recv-window", "5000")
        sign = h.get("x-bapi-sign", "")
        try:
            ts_i = int(ts)
            recv_i = int(recv)
        except ValueError:
            return self.error("10002")
        now = self.state.now_ms()
        if not (now - recv_i <= ts_i < now + 1000):
            return self.error(
                "10002",
                f"{MESSAGES['10002']}. req_timestamp[{ts_i}],server_timestamp[{now}],recv_window[{recv_i}]",
            )
        secret = self.state.api_keys[key].encode()
        candidates = [payload]
        unquoted = unquote(payload)
        if unquoted != payload:
            candidates.append(unquoted)
        for p in candidates:
            expected = hmac.new(secret, (ts + key + recv + p).encode(), hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, sign.lower()):
                return None
        return self.error("10004", f"error sign! origin_string[{ts + key + recv + payload}]")

    async def _private(self, request: Request) -> tuple[Response | None, dict]:
        """Faults, then signature. Returns (error response or None, params)."""
        faults = self.state.faults
        if faults.take_http_5xx(EXCHANGE):
            return service_unavailable(), {}
        if faults.take_rate_limit(EXCHANGE):
            # the API-key rate limit: HTTP 200, retCode 10006, with the limit headers
            resp = self.error("10006")
            resp.headers["X-Bapi-Limit"] = "10"
            resp.headers["X-Bapi-Limit-Status"] = "0"
            resp.headers["X-Bapi-Limit-Reset-Timestamp"] = str(self.state.now_ms() + 1000)
            return resp, {}
        if request.method == "GET":
            payload = request.scope.get("query_string", b"").decode("latin-1")
            params = dict(request.query_params)
        else:
            raw = await request.body()
            payload = raw.decode("utf-8", "replace")
            try:
                params = json.loads(raw) if raw else {}
            except ValueError:
                params = None
        err = self._check_signature(request, payload)
        if err is not None:
            return err, {}
        if not isinstance(params, dict):
            return self.error("10001", "params error: request body is not a JSON object"), {}
        return None, params

    @staticmethod
    def _api_key(request: Request) -> str | None:
        """The API key a request was signed with: after :meth:`_private` accepted it, a known key."""
        return request.headers.get("x-bapi-api-key") or None

    async def not_found(self, request: Request) -> Response:
        log.warning("simulator: bybit has no %s %s", request.method, request.url.path)
        return Response(
            f"404 page not found (simulator has no bybit {request.method} {request.url.path})".encode(),
            status_code=404,
            media_type="text/plain",
        )

    def _guard(self, fn):
        """Whatever a client sends, answer like the exchange (never a bare 500)."""

        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except Exception:
                log.exception("simulator: bybit %s %s failed", request.method, request.url.path)
                return self.error("10016")

        return endpoint
