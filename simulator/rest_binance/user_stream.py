"""Binance USD-M user data stream keys: ``POST|PUT|DELETE /fapi/v1/listenKey``.

Security type USER_STREAM: the ``X-MBX-APIKEY`` header, no signature
(developers.binance.com, USD-M Futures, "Start/Keepalive/Close User Data Stream").
``POST`` answers ``{"listenKey": ...}`` — the account's active key, extended by 60
minutes, or a new one; ``PUT`` extends the active key by 60 minutes and answers
``{"listenKey": ...}`` (an unknown or expired key: HTTP 400 ``{"code": -1125, "msg":
"This listenKey does not exist."}``); ``DELETE`` closes it and answers ``{}``. The
stream itself is served at ``/binance/ws/<listenKey>`` (:mod:`simulator.streams`).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from simulator.http_common import json_response, service_unavailable
from simulator.rest_binance.envelope import EXCHANGE, MESSAGES, BinanceEnvelope


class BinanceUserStream(BinanceEnvelope):
    """The listen-key endpoints."""

    async def _user_stream_key(self, request: Request) -> tuple[Response | None, str, str | None]:
        """Faults, then the API key. Returns (error or None, api key, the listenKey parameter if sent)."""
        st = self.state
        if st.faults.take_http_5xx(EXCHANGE):
            return service_unavailable(), "", None
        if st.faults.take_rate_limit(EXCHANGE):
            body = {"code": -1003, "msg": MESSAGES["-1003"]}
            return json_response(body, status=429, headers={"Retry-After": "1"}), "", None
        key = request.headers.get("x-mbx-apikey")
        if not key:
            return self.error("-2014"), "", None
        if key not in st.api_keys:
            return self.error("-2015"), "", None
        params = dict(parse_qsl(request.scope.get("query_string", b"").decode("latin-1")))
        params.update(parse_qsl((await request.body()).decode("latin-1")))
        return None, key, params.get("listenKey") or None

    async def listen_key_open(self, request: Request) -> Response:
        err, api_key, _ = await self._user_stream_key(request)
        if err is not None:
            return err
        return json_response({"listenKey": self.state.open_listen_key(api_key)})

    async def listen_key_keepalive(self, request: Request) -> Response:
        err, api_key, key = await self._user_stream_key(request)
        if err is not None:
            return err
        live = self.state.keep_listen_key_alive(api_key, key)
        if live is None:
            return self.error("-1125")
        return json_response({"listenKey": live})

    async def listen_key_close(self, request: Request) -> Response:
        err, api_key, key = await self._user_stream_key(request)
        if err is not None:
            return err
        if not self.state.close_listen_key(api_key, key):
            return self.error("-1125")
        return json_response({})
