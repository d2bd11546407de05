"""The admin endpoints under ``/_sim`` and their routes (see :mod:`simulator.admin`)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from simulator.admin.faults import apply_faults
from simulator.admin.validation import BadInput, bad_request, json_body, parse_count
from simulator.http_common import json_response
from simulator.state import (
    SimError,
    SimState,
    iso,
    iter_exchanges,
    normalize_exchange,
    normalize_symbol,
    parse_time,
    to_decimal,
)

log = logging.getLogger("simulator.admin")

MAX_LATENCY_MS = 10_000


def info_for(base_url: str) -> dict:
    ws_base = "ws" + base_url[len("http"):] if base_url.startswith("http") else base_url
    return {
        "bybit": {"rest": base_url + "/bybit", "ws": ws_base + "/bybit/v5/public/linear",
                  "private_ws": ws_base + "/bybit/v5/private"},
        "binanceusdm": {"rest": base_url + "/binance", "ws": ws_base + "/binance/ws",
                        "private_ws": ws_base + "/binance/ws"},  # the user data stream: + "/<listenKey>"
    }


class AdminAPI:
    def __init__(self, state: SimState, hub=None):
        self.state = state
        self.hub = hub

    async def _guard(self, request: Request, fn) -> Response:
        try:
            return await fn(request)
        except (BadInput, SimError) as e:
            return bad_request(str(e))
        except KeyError as e:
            return bad_request(str(e.args[0]) if e.args else "not found")
        except Exception as e:  # never crash on admin input
            log.exception("simulator: admin %s %s failed", request.method, request.url.path)
            return json_response({"error": f"internal error: {type(e).__name__}: {e}"}, status=500)

    def _base_url(self, request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}"

    # ------------------------------------------------------------- handlers

    async def info(self, request: Request) -> Response:
        return json_response(info_for(self._base_url(request)))

    async def orders(self, request: Request) -> Response:
        async def go(request):
            ex = request.query_params.get("exchange")
            ex = normalize_exchange(ex) if ex else None
            if request.method == "DELETE":
                self.state.clear_orders()
                return json_response({"ok": True})
            return json_response([o.record() for o in self.state.orders if ex is None or o.exchange == ex])

        return await self._guard(request, go)

    def _positions_json(self, exchange: str | None = None) -> list[dict]:
        out = []
        for p in self.state.list_positions(exchange):
            out.append(p.to_dict(self.state.get_market(p.exchange, p.symbol)))
        return out

    async def positions(self, request: Request) -> Response:
        async def go(request):
            if request.method == "GET":
                ex = request.query_params.get("exchange")
                return json_response(self._positions_json(normalize_exchange(ex) if ex else None))
            if request.method == "DELETE":
                q = request.query_params
                ex = q.get("exchange")
                sym = q.get("symbol")
                price = q.get("price")
                if sym:
                    if not ex:
                        raise BadInput("symbol needs exchange")
                    removed = 1 if self.state.remove_position(ex, sym, price=price) else 0
                else:
                    if price is not None:
                        raise BadInput("price goes with one position (exchange and symbol)")
                    removed = self.state.clear_positions(normalize_exchange(ex) if ex else None)
                return json_response({"removed": removed})
            body = await json_body(request)
            missing = [k for k in ("exchange", "symbol", "side", "qty", "entry_price") if k not in body]
            if missing:
                raise BadInput(f"missing fields {missing}")
            unknown = set(body) - {"exchange", "symbol", "side", "qty", "entry_price", "opened_at", "at",
                                   "fill_price"}
            if unknown:
                raise BadInput(f"unknown fields {sorted(unknown)}")
            opened = parse_time(body["opened_at"]) if body.get("opened_at") is not None else None
            at = parse_time(body["at"]) if body.get("at") is not None else None
            pos, fills = self.state.admin_set_position(
                body["exchange"], body["symbol"], body["side"], body["qty"], body["entry_price"], opened,
                at=at, fill_price=body.get("fill_price"),
            )
            out = pos.to_dict(self.state.get_market(pos.exchange, pos.symbol))
            out["first_opened_at"] = iso(self.state.first_opened(pos.exchange, pos.symbol))
            out["fills"] = [f.record() for f in fills]
            return json_response(out)

        return await self._guard(request, go)

    async def fills(self, request: Request) -> Response:
        async def go(request):
            q = request.query_params
            ex = q.get("exchange")
            sym = q.get("symbol")
            if sym and not ex:
                raise BadInput("symbol needs exchange")
            ex = normalize_exchange(ex) if ex else None
            sym = normalize_symbol(sym) if sym else None
            if request.method == "GET":
                return json_response([f.record() for f in self.state.fills
                                      if (ex is None or f.exchange == ex) and (sym is None or f.symbol == sym)])
            if request.method == "DELETE":
                return json_response({"forgotten": self.state.forget_fills(ex, sym)})
            body = await json_body(request)
            missing = [k for k in ("exchange", "symbol", "side", "qty", "price") if k not in body]
            if missing:
                raise BadInput(f"missing fields {missing}")
            unknown = set(body) - {"exchange", "symbol", "side", "qty", "price", "time", "order_id",
                                   "client_order_id"}
            if unknown:
                raise BadInput(f"unknown fields {sorted(unknown)}")
            for k in ("order_id", "client_order_id"):
                if body.get(k) is not None and (not isinstance(body[k], str) or not body[k]):
                    raise BadInput(f"{k} must be a non-empty string")
            t = parse_time(body["time"]) if body.get("time") is not None else None
            f = self.state.admin_fill(body["exchange"], body["symbol"], body["side"], body["qty"], body["price"], t,
                                      order_id=body.get("order_id"), client_order_id=body.get("client_order_id"))
            pos = self.state.position(f.exchange, f.symbol)
            return json_response({
                "fill": f.record(),
                "position": pos.to_dict(self.state.get_market(f.exchange, f.symbol)) if pos else None,
                "first_opened_at": iso(self.state.first_opened(f.exchange, f.symbol)),
            })

        return await self._guard(request, go)

    async def settings(self, request: Request) -> Response:
        async def go(request):
            if request.method == "POST":
                body = await json_body(request)
                if set(body) != {"exchange", "position_open_time"}:
                    raise BadInput('expected {"exchange": ..., "position_open_time": "zero"|"real"|"absent"}')
                self.state.set_position_open_time(body["exchange"], body["position_open_time"])
            return json_response({ex: {"position_open_time": self.state.position_open_time[ex]}
                                  for ex in self.state.position_open_time})

        return await self._guard(request, go)

    async def prices(self, request: Request) -> Response:
        async def go(request):
            if request.method == "GET":
                return json_response(self.state.quotes_snapshot())
            body = await json_body(request)
            unknown = set(body) - {"exchange", "symbol", "bid", "ask", "last", "release", "hold", "volatility",
                                   "drift", "spread_bps"}
            if unknown:
                raise BadInput(f"unknown fields {sorted(unknown)}")
            if "symbol" not in body:
                raise BadInput("symbol is required")
            exchanges = list(iter_exchanges(body.get("exchange")))
            sym = normalize_symbol(body["symbol"])
            for ex in exchanges:
                if self.state.get_market(ex, sym) is None:
                    if body.get("exchange") is None:
                        continue
                    hint = next((body[k] for k in ("last", "bid", "ask") if body.get(k) is not None), None)
                    if hint is None:
                        raise BadInput(f"{ex}: unknown market {sym}; give a price to create it")
                    self.state.ensure_market(ex, sym, to_decimal(hint, "price", positive=True))
            exchanges = [ex for ex in exchanges if self.state.get_market(ex, sym) is not None]
            if not exchanges:
                raise BadInput(f"unknown market {sym}; give the exchange and a price to create it")
            walk = {}
            for k in ("volatility", "drift"):
                if k in body:
                    v = body[k]
                    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                        raise BadInput(f"{k} must be a number")
                    try:
                        walk[k] = float(v)
                    except ValueError:
                        raise BadInput(f"{k} must be a number") from None
            if "spread_bps" in body:
                walk["spread_bps"] = to_decimal(body["spread_bps"], "spread_bps")
            release = body.get("release", False)
            if not isinstance(release, bool):
                raise BadInput("release must be true or false")
            hold = body.get("hold", True)
            if not isinstance(hold, bool):
                raise BadInput("hold must be true or false")
            has_price = any(body.get(k) is not None for k in ("bid", "ask", "last"))
            if release and has_price:
                raise BadInput("give either prices or release, not both")
            if not release and not has_price and not walk:
                raise BadInput("give bid/ask/last, release, or walk settings (volatility, drift, spread_bps)")
            # validate the walk settings on a copy first so a bad value changes nothing
            for ex in exchanges:
                m = self.state.market(ex, sym)
                saved = (m.volatility, m.drift, m.spread_bps)
                try:
                    self.state.set_walk(ex, sym, **walk)
                finally:
                    m.volatility, m.drift, m.spread_bps = saved
            out = []
            for ex in exchanges:
                self.state.set_walk(ex, sym, **walk)
                if release:
                    q = self.state.release_price(ex, sym)
                elif has_price:
                    q = self.state.set_price(ex, sym, bid=body.get("bid"), ask=body.get("ask"), last=body.get("last"),
                                             hold=hold)
                else:
                    q = self.state.quote(ex, sym)
                out.append({"exchange": ex, "symbol": sym, **q.to_dict(), "held": self.state.is_held(ex, sym)})
            return json_response(out[0] if len(out) == 1 else out)

        return await self._guard(request, go)

    async def step(self, request: Request) -> Response:
        async def go(request):
            body = await json_body(request)
            n = parse_count(body.get("n", 1), "n")
            if n > 100_000:
                raise BadInput("n must be at most 100000")
            for _ in range(n):
                self.state.step_prices()
            return json_response({"steps": self.state.steps})

        return await self._guard(request, go)

    def _resume_streams(self) -> None:
        if self.hub is not None:
            self.hub.silence(None, False)
            if getattr(self.hub, "private", None) is not None:
                self.hub.private.silence(None, False)

    async def faults(self, request: Request) -> Response:
        async def go(request):
            if request.method == "DELETE":
                self.state.faults.clear()
                self._resume_streams()
                return json_response(self.state.faults.to_dict())
            if request.method == "POST":
                body = await json_body(request)
                apply_faults(self.state, self.hub, body)
            return json_response(self.state.faults.to_dict())

        return await self._guard(request, go)

    async def mode(self, request: Request) -> Response:
        async def go(request):
            if request.method == "POST":
                body = await json_body(request)
                if set(body) != {"exchange", "hedge"} or not isinstance(body["hedge"], bool):
                    raise BadInput('expected {"exchange": ..., "hedge": true|false}')
                self.state.hedge_mode[normalize_exchange(body["exchange"])] = body["hedge"]
            return json_response({ex: ("hedge" if h else "one_way") for ex, h in self.state.hedge_mode.items()})

        return await self._guard(request, go)

    async def latency(self, request: Request) -> Response:
        async def go(request):
            if request.method == "POST":
                body = await json_body(request)
                if set(body) != {"rest_ms"}:
                    raise BadInput('expected {"rest_ms": N} (milliseconds, 0..10000)')
                ms = body["rest_ms"]
                if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not (0 <= ms <= MAX_LATENCY_MS):
                    raise BadInput(f"rest_ms must be a number of milliseconds from 0 to {MAX_LATENCY_MS}, got {ms!r}")
                self.state.rest_latency_ms = ms
            return json_response({"rest_ms": self.state.rest_latency_ms})

        return await self._guard(request, go)

    async def reset(self, request: Request) -> Response:
        async def go(request):
            self.state.reset()
            self._resume_streams()
            return json_response({"ok": True})

        return await self._guard(request, go)

    async def not_found(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        for r in self._routes:
            if isinstance(r, Route) and r.path == path and "{" not in r.path:
                allowed = ", ".join(sorted(r.methods or ()))
                return json_response({"error": f"{request.method} not allowed on {path} (allowed: {allowed})"},
                                     status=405, headers={"Allow": allowed})
        return json_response({"error": f"no admin endpoint {request.method} {request.url.path}"}, status=404)

    def routes(self) -> list[BaseRoute]:
        self._routes = [
            Route("/_sim/info", self.info, methods=["GET"]),
            Route("/_sim/orders", self.orders, methods=["GET", "DELETE"]),
            Route("/_sim/positions", self.positions, methods=["GET", "POST", "DELETE"]),
            Route("/_sim/fills", self.fills, methods=["GET", "POST", "DELETE"]),
            Route("/_sim/settings", self.settings, methods=["GET", "POST"]),
            Route("/_sim/prices", self.prices, methods=["GET", "POST"]),
            Route("/_sim/step", self.step, methods=["POST"]),
            Route("/_sim/faults", self.faults, methods=["GET", "POST", "DELETE"]),
            Route("/_sim/mode", self.mode, methods=["GET", "POST"]),
            Route("/_sim/latency", self.latency, methods=["GET", "POST"]),
            Route("/_sim/reset", self.reset, methods=["POST"]),
            Route("/_sim/{path:path}", self.not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]
        return self._routes


def routes(state: SimState, hub=None) -> list[BaseRoute]:
    return AdminAPI(state, hub).routes()
