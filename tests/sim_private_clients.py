"""Clients for the simulator's private streams tests: plain HTTP, signed exchange calls, WebSockets.

Real loopback traffic only: the standard library's ``urllib`` in a worker thread for
HTTP (signatures computed here by hand, which checks the wire protocol independently
of ccxt) and trio-websocket for the streams. Signed requests take their timestamp
from the simulator's clock (:meth:`SimState.now_ms`), which a test may move forward.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from functools import partial
from urllib.parse import urlencode

import trio
import trio_websocket

from simulator.server import serve_simulator
from simulator.state import SimState
from tests.support import within

KEY, SECRET = "sim-key", "sim-secret"


class MovableClock:
    """The simulator's clock: the real time plus an offset a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


async def start_simulator(nursery, clock: MovableClock):
    """A simulator on an ephemeral loopback port, its clock ``clock``, no automatic price steps."""
    state = SimState(3, clock=clock)
    return await nursery.start(partial(serve_simulator, state=state, tick_interval=None))


async def http(method: str, url: str, body=None, *, raw: bytes | None = None, headers: dict | None = None):
    """(status, decoded JSON body or text) — never raises on HTTP errors."""

    def go():
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode()

    return await trio.to_thread.run_sync(go)


def binance_signed(sim, method: str, path: str, params: dict):
    q = urlencode({**params, "timestamp": sim.state.now_ms(), "recvWindow": 5000})
    q += "&signature=" + hmac.new(SECRET.encode(), q.encode(), hashlib.sha256).hexdigest()
    headers = {"X-MBX-APIKEY": KEY, "Content-Type": "application/x-www-form-urlencoded"}
    if method == "POST":
        return http("POST", sim.base_url + "/binance" + path, raw=q.encode(), headers=headers)
    return http(method, sim.base_url + "/binance" + path + "?" + q, headers=headers)


def listen_key_call(sim, method: str, *, key: str | None = KEY, params: dict | None = None):
    """A USER_STREAM call: the API key header, no signature."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if key is not None:
        headers["X-MBX-APIKEY"] = key
    q = urlencode(params or {})
    return http(method, sim.base_url + "/binance/fapi/v1/listenKey" + (f"?{q}" if q else ""), raw=b"", headers=headers)


def bybit_signed(sim, method: str, path: str, params: dict):
    ts = str(sim.state.now_ms())
    if method == "POST":
        payload = json.dumps(params)
        url = sim.base_url + "/bybit" + path
    else:
        payload = urlencode(params)
        url = sim.base_url + "/bybit" + path + "?" + payload
    sign = hmac.new(SECRET.encode(), (ts + KEY + "5000" + payload).encode(), hashlib.sha256).hexdigest()
    headers = {"X-BAPI-API-KEY": KEY, "X-BAPI-TIMESTAMP": ts, "X-BAPI-RECV-WINDOW": "5000", "X-BAPI-SIGN": sign}
    if method == "POST":
        return http("POST", url, raw=payload.encode(), headers=headers)
    return http("GET", url, headers=headers)


def bybit_auth_args(sim, *, key: str = KEY, secret: str = SECRET, expires_in_ms: int = 10_000) -> list:
    expires = sim.state.now_ms() + expires_in_ms
    signature = hmac.new(secret.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256).hexdigest()
    return [key, expires, signature]


def ws_url(sim, path: str) -> str:
    return "ws" + sim.base_url[len("http") :] + path


async def next_json(ws, what: str = "the next message") -> dict:
    with within(60, what):
        return json.loads(await ws.get_message())


async def next_text(ws, what: str = "the next frame") -> str:
    with within(60, what):
        return await ws.get_message()


async def send_json(ws, obj) -> None:
    await ws.send_message(json.dumps(obj))


async def binance_user_stream(sim):
    """(listen key, an open connection to its user data stream): use as ``async with``."""
    status, body = await listen_key_call(sim, "POST")
    assert status == 200, body
    return body["listenKey"], trio_websocket.open_websocket_url(ws_url(sim, "/binance/ws/" + body["listenKey"]))


async def bybit_private_session(ws, sim, topics=("order", "execution", "position")) -> None:
    """Authenticate and subscribe ``topics`` on an open Bybit private connection."""
    await send_json(ws, {"req_id": "auth", "op": "auth", "args": bybit_auth_args(sim)})
    reply = await next_json(ws, "the auth answer")
    assert reply["success"] is True, reply
    await send_json(ws, {"req_id": "sub", "op": "subscribe", "args": list(topics)})
    reply = await next_json(ws, "the subscribe answer")
    assert reply["success"] is True, reply
