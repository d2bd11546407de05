"""Binance USD-M's envelope: the ``{"code","msg"}`` error, request signing, the faults.

Every Binance area class derives from :class:`BinanceEnvelope`, which answers errors
(:meth:`~BinanceEnvelope.error`: HTTP 400, 401 for key errors), checks a signed
request and applies the injected HTTP faults (:meth:`~BinanceEnvelope._signed`), and
turns any crash into Binance's unknown-error answer (:meth:`~BinanceEnvelope._guard`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from decimal import Decimal
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from simulator.http_common import json_response, service_unavailable
from simulator.state import SimState

log = logging.getLogger(__name__)

EXCHANGE = "binanceusdm"
TAKER_FEE = Decimal("0.0005")

MESSAGES = {
    "-1003": "Too many requests; current limit of IP(127.0.0.1) is 2400 requests per minute. "
    "Please use WebSocket Streams for live updates to avoid polling the API.",
    "-1021": "Timestamp for this request is outside of the recvWindow.",
    "-1022": "Signature for this request is not valid.",
    "-1023": "Start time is greater than end time.",
    "-1102": "A mandatory parameter was not sent, was empty/null, or malformed.",
    "-1111": "Precision is over the maximum defined for this asset.",
    "-1116": "Invalid orderType.",
    "-1117": "Invalid side.",
    "-1121": "Invalid symbol.",
    "-1125": "This listenKey does not exist.",
    "-2010": "NEW_ORDER_REJECTED",
    "-2011": "Unknown order sent.",
    "-2013": "Order does not exist.",
    "-2014": "API-key format invalid.",
    "-2015": "Invalid API-key, IP, or permissions for action.",
    "-2019": "Margin is insufficient.",
    "-2022": "ReduceOnly Order is rejected.",
    "-4003": "Quantity less than or equal to zero.",
    "-4005": "Quantity greater than max quantity.",
    "-4014": "Price not increased by tick size.",
    "-4061": "Order's position side does not match user's setting.",
    "-4116": "ClientOrderId is duplicated.",
    "-4164": "Order's notional must be no smaller than 5 (unless you choose reduce only).",
    "-2020": "Unable to fill.",
    "-4131": "The counterparty's best price does not meet the PERCENT_PRICE filter limit.",
    "-5021": "Due to the order could not be filled immediately, the FOK order has been rejected.",
    "-1000": "An unknown error occured while processing the request.",
    "-1001": "Internal error; unable to process your request. Please try again.",
}


def illegal_parameter(name: str) -> str:
    return f"Illegal characters found in parameter '{name}'; legal range is '^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'."


def mandatory_parameter(name: str) -> str:
    return f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."


class BinanceEnvelope:
    """What every Binance endpoint shares; the area classes add the endpoints."""

    def __init__(self, state: SimState):
        self.state = state

    # -------------------------------------------------------------- envelope

    def error(self, code, message: str | None = None, status: int | None = None) -> Response:
        code = str(code)
        if status is None:
            status = 401 if code in ("-2014", "-2015") else 400
        body = {"code": int(code), "msg": message or MESSAGES.get(code, "simulated error")}
        return json_response(body, status=status)

    # ------------------------------------------------------------------ auth

    async def _signed(self, request: Request) -> tuple[Response | None, dict]:
        st = self.state
        if st.faults.take_http_5xx(EXCHANGE):
            return service_unavailable(), {}
        if st.faults.take_rate_limit(EXCHANGE):
            body = {"code": -1003, "msg": MESSAGES["-1003"]}
            return json_response(body, status=429, headers={"Retry-After": "1"}), {}
        key = request.headers.get("x-mbx-apikey")
        if not key:
            return self.error("-2014"), {}
        if key not in st.api_keys:
            return self.error("-2015"), {}
        qs = request.scope.get("query_string", b"").decode("latin-1")
        body = (await request.body()).decode("latin-1") if request.method in ("POST", "PUT", "DELETE") else ""
        params: dict[str, str] = {}
        for part in (qs, body):
            params.update(parse_qsl(part, keep_blank_values=True))
        sig = params.pop("signature", None)
        if not sig:
            return self.error("-1102", mandatory_parameter("signature")), {}
        ts = params.get("timestamp")
        if not ts:
            return self.error("-1102", mandatory_parameter("timestamp")), {}
        try:
            ts_i = int(ts)
            recv = int(params.get("recvWindow", "5000"))
        except ValueError:
            return self.error("-1102", mandatory_parameter("timestamp")), {}
        now = st.now_ms()
        if ts_i >= now + 1000 or now - ts_i > recv:
            return self.error("-1021"), {}
        total = _strip_signature(qs) + _strip_signature(body)
        expected = hmac.new(st.api_keys[key].encode(), total.encode("latin-1"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig.lower()):
            return self.error("-1022"), {}
        return None, params

    @staticmethod
    def _api_key(request: Request) -> str | None:
        """The API key a request was signed with: after :meth:`_signed` accepted it, a known key."""
        return request.headers.get("x-mbx-apikey") or None

    async def not_found(self, request: Request) -> Response:
        log.warning("simulator: binance has no %s %s", request.method, request.url.path)
        return Response(
            f"404 Not Found (simulator has no binance {request.method} {request.url.path})".encode(),
            status_code=404,
            media_type="text/plain",
        )

    def _guard(self, fn):
        """Whatever a client sends, answer like the exchange (never a bare 500)."""

        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except Exception:
                log.exception("simulator: binance %s %s failed", request.method, request.url.path)
                return self.error("-1000", status=500)

        return endpoint


def _strip_signature(raw: str) -> str:
    if "signature=" not in raw:
        return raw
    return "&".join(part for part in raw.split("&") if not part.startswith("signature="))
