"""Feed actors against the simulator's public streams, over real sockets.

Rules for this module:

* real sockets on loopback only, every server on port 0;
* the real clock (no MockClock: trio-websocket and hypercorn wait on real I/O);
* short feed intervals (REST every 0.1 s) so a test takes a second or two, but waits
  are for conditions, bounded generously (``TIMEOUT``), and nothing asserts on elapsed
  time — on a loaded machine a test gets slower, never red. A short ``stale_after`` or
  heartbeat interval is itself a wall-clock budget, so a test sets one only for the
  step that is meant to go stale or miss its pongs, and keeps it generous otherwise;
* most tests use a bare starlette app with just :func:`simulator.streams.websocket_routes`
  and a :class:`simulator.state.SimState` whose random walk is never stepped, so every
  price change comes from the test; the last test runs the whole simulator
  (:func:`simulator.server.serve_simulator`, random walk on), drives it only through
  its admin HTTP API and takes the REST fallback from the real ccxt adapter.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette

from exchanges.port import Quote
from feeds.feed import Feed, FeedTimings
from feeds.tick import Tick
from simulator.state import SimState
from simulator.streams import StreamHub, websocket_routes
from tests.support import wait_until as support_wait_until
from tests.support import within

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
TIMEOUT = 60  # generous: bounds a hang, never measures speed

EXCHANGES = ["bybit", "binanceusdm"]
PATHS = {"bybit": "/bybit/v5/public/linear", "binanceusdm": "/binance/ws"}


@dataclass
class Sim:
    state: SimState
    hub: StreamHub
    ws_base: str  # "ws://127.0.0.1:PORT"

    def url(self, exchange: str) -> str:
        return self.ws_base + PATHS[exchange]

    def set_price(self, exchange: str, symbol_id: str, bid: str, ask: str, last: str | None = None) -> None:
        # strings: SimState.set_price parses them itself (exactly)
        self.state.set_price(exchange, symbol_id, bid=bid, ask=ask, last=last)

    def rest_quote_fn(self, exchange: str, calls: list | None = None):
        """An async REST quote source reading the simulator state (stands in for ccxt)."""

        async def rest_quote(symbol: str) -> Quote:
            await trio.sleep(0)
            if calls is not None:
                calls.append(symbol)
            sid = symbol.split(":")[0].replace("/", "")
            q = self.state.quote(exchange, sid)  # KeyError for an unknown market
            return Quote(symbol, q.bid, q.ask, q.last)

        return rest_quote


@pytest.fixture
async def sim(nursery):
    state = SimState(seed=7)
    hub = StreamHub()
    app = Starlette(routes=websocket_routes(state, hub))
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.test")
    config.graceful_timeout = 0.5
    binds = await nursery.start(partial(serve, app, config))
    yield Sim(state, hub, binds[0].replace("http://", "ws://"))
    hub.close()


def make_feed(sim: Sim, exchange: str, *, rest_quote=None, **timings) -> Feed:
    """A feed on the test simulator, paced for tests; ``timings`` overrides :class:`FeedTimings` fields."""
    opts = dict(stale_after=5.0, rest_poll_interval=0.1, reconnect_initial=0.05, reconnect_max=0.5)
    opts.update(timings)
    return Feed(exchange, sim.url(exchange), rest_quote=rest_quote, timings=FeedTimings(**opts))


async def next_tick(rx, pred=lambda t: True) -> Tick:
    with within(TIMEOUT, "the expected tick arrived"):
        while True:
            tick = await rx.receive()
            if pred(tick):
                return tick


async def wait_until(cond, what: str = "the awaited condition") -> None:
    await support_wait_until(cond, what, timeout=TIMEOUT)


def price_is(bid: str):
    return lambda t: t.bid == Decimal(bid)


# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_ticks_arrive_with_unified_symbol_and_exact_decimals(sim, nursery, exchange):
    feed = make_feed(sim, exchange)
    rx = feed.subscribe(BTC)  # before run(): sent once connected
    await nursery.start(feed.run)
    first = await next_tick(rx)  # Bybit snapshot / Binance initial book
    q = sim.state.quote(exchange, "BTCUSDT")
    assert (first.bid, first.ask) == (q.bid, q.ask)

    sim.set_price(exchange, "BTCUSDT", "64000.1", "64000.5", "64000.3")
    t = await next_tick(rx, price_is("64000.1"))
    assert t.exchange == exchange
    assert t.symbol == BTC
    assert t.source == "ws"
    assert type(t.bid) is Decimal and type(t.ask) is Decimal
    assert (t.bid, t.ask) == (Decimal("64000.1"), Decimal("64000.5"))
    if t.last is None:  # Binance: the trade may arrive just after the book
        t = await next_tick(rx, lambda x: x.last is not None)
    assert t.last == Decimal("64000.3")
    assert t.exchange_ts is not None and t.exchange_ts.tzinfo is not None
    assert feed.stats.ticks >= 2 and feed.stats.malformed == 0
    assert feed.stats.quote_age(BTC) is not None and feed.stats.quote_age(BTC) >= 0


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_live_subscribe_and_unsubscribe_without_reconnect(sim, nursery, exchange):
    feed = make_feed(sim, exchange)
    await nursery.start(feed.run)
    btc = feed.subscribe(BTC)
    await next_tick(btc)
    assert feed.stats.connects == 1

    # a second symbol on the open connection
    eth = feed.subscribe(ETH)
    await next_tick(eth)
    await wait_until(lambda: sim.hub.subscriptions(exchange) == ["BTCUSDT", "ETHUSDT"])
    sim.set_price(exchange, "ETHUSDT", "3100.01", "3100.02")
    t = await next_tick(eth, price_is("3100.01"))
    assert t.symbol == ETH

    # a second subscriber of ETH gets the latest tick at once; one leaving keeps the stream
    eth2 = feed.subscribe(ETH)
    assert (await next_tick(eth2)).bid == Decimal("3100.01")
    feed.unsubscribe(ETH, eth2)
    sim.set_price(exchange, "ETHUSDT", "3100.03", "3100.04")
    await next_tick(eth, price_is("3100.03"))

    # the last one leaving unsubscribes on the exchange; its channel ends
    feed.unsubscribe(ETH, eth)
    await wait_until(lambda: sim.hub.subscriptions(exchange) == ["BTCUSDT"])
    with pytest.raises(trio.EndOfChannel):
        while True:
            await eth.receive()

    sim.set_price(exchange, "BTCUSDT", "64001.0", "64001.1")
    await next_tick(btc, price_is("64001.0"))
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0 and feed.stats.disconnects == 0
    assert feed.stats.request_errors == 0


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_drop_reconnect_resubscribe(sim, nursery, exchange):
    feed = make_feed(sim, exchange)
    await nursery.start(feed.run)
    rx = feed.subscribe(BTC)
    await next_tick(rx)

    assert sim.hub.drop_all(exchange) == 1
    await wait_until(lambda: feed.stats.reconnects == 1 and feed.stats.connected)
    sim.set_price(exchange, "BTCUSDT", "63000.0", "63000.2")
    t = await next_tick(rx, price_is("63000.0"))
    assert t.source == "ws"
    await wait_until(lambda: sim.hub.subscriptions(exchange) == ["BTCUSDT"])
    sim.set_price(exchange, "BTCUSDT", "63000.4", "63000.6")
    await next_tick(rx, price_is("63000.4"))
    assert feed.stats.reconnects == 1
    assert feed.stats.disconnects == 1
    assert feed.stats.connects == 2


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_silence_goes_stale_polls_rest_then_recovers(sim, nursery, exchange):
    calls: list[str] = []
    feed = make_feed(sim, exchange, rest_quote=sim.rest_quote_fn(exchange, calls))  # stale after 5 s
    await nursery.start(feed.run)
    rx = feed.subscribe(BTC)
    first = await next_tick(rx)
    assert first.source == "ws"

    sim.hub.silence(exchange)
    feed.stale_after = 0.5  # only the silent stream is meant to go stale
    sim.set_price(exchange, "BTCUSDT", "62000.0", "62000.1", "62000.0")  # not streamed while silent
    t = await next_tick(rx, lambda x: x.source == "rest")
    assert (t.bid, t.ask, t.last) == (Decimal("62000.0"), Decimal("62000.1"), Decimal("62000.0"))
    assert t.symbol == BTC and t.exchange == exchange
    assert BTC in feed.stats.stale_symbols
    assert feed.stats.stale_events == 1
    await next_tick(rx, lambda x: x.source == "rest")  # it keeps polling
    assert feed.stats.rest_ticks >= 2 and len(calls) >= 2

    # a quiet simulated market would go stale again after 0.5 s: give it time now
    feed.stale_after = 5.0
    sim.hub.silence(exchange, on=False)
    sim.set_price(exchange, "BTCUSDT", "62000.5", "62000.6")
    t = await next_tick(rx, lambda x: x.source == "ws" and x.bid == Decimal("62000.5"))
    assert BTC not in feed.stats.stale_symbols
    # polling stopped: no REST call after recovery (allow one already in flight)
    n = len(calls)
    await trio.sleep(0.3)
    assert len(calls) <= n + 1
    assert feed.stats.stale_events == 1
    assert feed.stats.connects == 1  # silence alone never forced a reconnect here


async def test_bybit_missing_pongs_force_a_reconnect(sim, nursery):
    # A pong must arrive within one interval: 1 s is a budget even a busy machine meets.
    feed = make_feed(sim, "bybit", heartbeat_interval=1.0)
    await nursery.start(feed.run)
    rx = feed.subscribe(BTC)
    await next_tick(rx)
    # a few ping/pong rounds on a healthy connection: the walk is off, so every message
    # the server sends from now on is a pong
    sent = sim.hub.stats["messages_sent"]
    await wait_until(lambda: sim.hub.stats["messages_sent"] >= sent + 3, "three pongs sent")
    assert feed.stats.heartbeat_timeouts == 0 and feed.stats.connects == 1

    sim.hub.silence("bybit")  # no pongs any more
    await wait_until(lambda: feed.stats.heartbeat_timeouts >= 1 and feed.stats.reconnects >= 1)
    sim.hub.silence("bybit", on=False)
    await wait_until(lambda: feed.stats.connected and sim.hub.subscriptions("bybit") == ["BTCUSDT"])
    sim.set_price("bybit", "BTCUSDT", "61000.0", "61000.1")
    await next_tick(rx, price_is("61000.0"))


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_malformed_frames_are_counted_and_the_feed_keeps_going(sim, nursery, exchange):
    feed = make_feed(sim, exchange)
    await nursery.start(feed.run)
    rx = feed.subscribe(BTC)
    await next_tick(rx)

    bad_price = (
        '{"topic":"tickers.BTCUSDT","type":"delta","ts":1,"data":{"symbol":"BTCUSDT","bid1Price":"abc"}}'
        if exchange == "bybit"
        else '{"e":"bookTicker","s":"BTCUSDT","b":"-5","a":"1","E":1}'
    )
    for raw in ["this is not json", "[1,2,3]", bad_price, '{"unexpected": true}']:
        assert sim.hub.send_raw(exchange, raw) == 1
    await wait_until(lambda: feed.stats.malformed >= 4)
    assert feed.stats.malformed_reasons.get("invalid JSON") == 1
    assert feed.stats.malformed_reasons.get("bad price") == 1

    sim.set_price(exchange, "BTCUSDT", "60000.0", "60000.1")
    t = await next_tick(rx, price_is("60000.0"))
    assert t.ask == Decimal("60000.1")
    assert feed.stats.connects == 1 and feed.stats.disconnects == 0


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_slow_consumer_gets_the_freshest_tick_not_a_backlog(sim, nursery, exchange):
    feed = make_feed(sim, exchange)
    await nursery.start(feed.run)
    rx = feed.subscribe(BTC)
    await next_tick(rx)

    # the consumer sleeps while 200 prices go by
    for i in range(200):
        bid = Decimal("50000.0") + Decimal(i) / 10
        sim.set_price(exchange, "BTCUSDT", str(bid), str(bid + Decimal("0.1")))
        if i % 20 == 0:
            await trio.sleep(0)
    final = Decimal("50019.9")
    await wait_until(lambda: (lt := feed.latest(BTC)) is not None and lt.bid == final)

    t = rx.receive_nowait()  # one tick waiting, and it is the newest
    assert t.bid == final
    with pytest.raises(trio.WouldBlock):
        rx.receive_nowait()


async def test_binance_combined_stream_endpoint(sim, nursery):
    feed = Feed("binanceusdm", sim.ws_base + "/binance/stream", timings=FeedTimings(stale_after=5.0))
    await nursery.start(feed.run)
    rx = feed.subscribe(ETH)
    await next_tick(rx)
    sim.set_price("binanceusdm", "ETHUSDT", "3000.00", "3000.05")
    t = await next_tick(rx, price_is("3000.00"))
    assert t.symbol == ETH and t.ask == Decimal("3000.05")
    assert feed.stats.malformed == 0


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_unknown_symbol_is_refused_and_polled_without_crashing(sim, nursery, exchange):
    feed = make_feed(sim, exchange, stale_after=0.3, rest_quote=sim.rest_quote_fn(exchange))
    # subscribed before run(): both go out in one request, which the exchange refuses
    # (Binance) or half-accepts (Bybit); the feed retries them one by one
    nope = feed.subscribe("NOPE/USDT:USDT")
    btc = feed.subscribe(BTC)
    await nursery.start(feed.run)
    await next_tick(btc, lambda x: x.source == "ws")
    await wait_until(lambda: "NOPE/USDT:USDT" in feed.stats.refused_symbols)
    assert BTC not in feed.stats.refused_symbols
    assert feed.stats.request_errors >= 1
    await wait_until(lambda: feed.stats.rest_errors >= 2)  # stale → REST → KeyError, retried
    assert "NOPE/USDT:USDT" in feed.stats.stale_symbols
    sim.set_price(exchange, "BTCUSDT", "59000.0", "59000.1")
    await next_tick(btc, lambda x: x.source == "ws" and x.bid == Decimal("59000.0"))
    with pytest.raises(trio.WouldBlock):
        nope.receive_nowait()
    assert sim.hub.subscriptions(exchange) == ["BTCUSDT"]
    assert feed.stats.connects == 1


async def test_feed_keeps_retrying_when_the_server_is_unreachable(nursery):
    # a port nobody listens on: bind a socket, remember the port, close it
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    calls: list[str] = []

    async def rest_quote(symbol):
        calls.append(symbol)
        return Quote(symbol, Decimal("1.5"), Decimal("1.6"), None)

    feed = Feed(
        "bybit",
        f"ws://127.0.0.1:{port}/bybit/v5/public/linear",
        rest_quote=rest_quote,
        timings=FeedTimings(stale_after=0.2, rest_poll_interval=0.05, reconnect_initial=0.02, reconnect_max=0.1),
    )
    await nursery.start(feed.run)
    rx = feed.subscribe(BTC)
    t = await next_tick(rx)
    assert t.source == "rest" and t.bid == Decimal("1.5") and t.last is None
    await wait_until(lambda: feed.stats.connect_failures >= 3)
    assert feed.stats.connects == 0


# --------------------------------------------------------------------------------------
# the whole simulator, driven over HTTP; REST fallback through ccxt


async def http_post_json(base_url: str, path: str, body: dict) -> dict:
    """Minimal HTTP/1.1 POST on a fresh loopback connection (no HTTP client needed)."""
    host, port = base_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    with within(TIMEOUT, f"POST {path} answered"):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(request)
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status == 200, (status, content)
    return json.loads(content)


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_full_simulator_admin_faults_and_ccxt_rest_fallback(nursery, aio_loop, exchange):
    server = pytest.importorskip("simulator.server")
    adapter = pytest.importorskip("exchanges.ccxt_adapter")
    handle = await nursery.start(partial(server.serve_simulator, seed=3, tick_interval=0.05))
    info = handle.info()[exchange]
    rest = adapter.CcxtExchange.create(exchange, rest_url=info["rest"])
    try:
        feed = Feed(
            exchange,
            info["ws"],
            rest_quote=rest.fetch_quote,
            timings=FeedTimings(stale_after=5.0, rest_poll_interval=0.1, reconnect_initial=0.05, reconnect_max=0.5),
        )
        await nursery.start(feed.run)
        rx = feed.subscribe(BTC)
        eth = feed.subscribe(ETH)  # moves with the random walk all along
        await next_tick(rx)
        await next_tick(eth)

        async def set_price(bid: str, ask: str) -> None:
            await http_post_json(
                handle.base_url, "/_sim/prices", {"exchange": exchange, "symbol": "BTCUSDT", "bid": bid, "ask": ask}
            )

        async def fault(what: str) -> None:
            await http_post_json(handle.base_url, "/_sim/faults", {"ws": what, "exchange": exchange})

        await set_price("64000.1", "64000.5")  # held: the walk leaves BTC alone now
        t = await next_tick(rx, price_is("64000.1"))
        assert t.source == "ws" and t.ask == Decimal("64000.5")

        await fault("silence")
        feed.stale_after = 0.5  # only the silent stream is meant to go stale
        await set_price("64000.2", "64000.6")
        t = await next_tick(rx, lambda x: x.source == "rest")  # via ccxt's REST ticker
        assert (t.bid, t.ask) == (Decimal("64000.2"), Decimal("64000.6"))
        assert t.symbol == BTC and type(t.bid) is Decimal
        assert BTC in feed.stats.stale_symbols

        feed.stale_after = 5.0  # the held BTC is quiet from now on
        await fault("resume")
        await set_price("64000.3", "64000.7")
        await next_tick(rx, lambda x: x.source == "ws" and x.bid == Decimal("64000.3"))
        assert BTC not in feed.stats.stale_symbols

        await fault("drop")
        await wait_until(lambda: feed.stats.reconnects == 1 and feed.stats.connected)
        await set_price("64000.4", "64000.8")
        await next_tick(rx, lambda x: x.source == "ws" and x.bid == Decimal("64000.4"))
        await next_tick(eth, lambda x: x.source == "ws")
        assert feed.stats.reconnects == 1 and feed.stats.malformed == 0
    finally:
        with trio.CancelScope(shield=True):
            await rest.close()


# --------------------------------------------------------------------------------------
# the simulator's streams seen by a raw client (wire-format conformance, back-pressure)


async def recv_json(ws) -> dict:
    with within(TIMEOUT, "the expected WebSocket message arrived"):
        return json.loads(await ws.get_message())


async def test_sim_bybit_wire_format(sim):
    from trio_websocket import open_websocket_url

    async with open_websocket_url(sim.url("bybit")) as ws:
        await ws.send_message('{"op":"subscribe","req_id":"r1","args":["tickers.BTCUSDT"]}')
        ack = await recv_json(ws)
        assert ack["success"] is True and ack["ret_msg"] == "" and ack["op"] == "subscribe"
        assert ack["req_id"] == "r1" and ack["conn_id"]
        snap = await recv_json(ws)
        assert snap["topic"] == "tickers.BTCUSDT" and snap["type"] == "snapshot"
        assert isinstance(snap["ts"], int) and isinstance(snap["cs"], int)
        for f in ("symbol", "lastPrice", "bid1Price", "ask1Price", "markPrice"):
            assert isinstance(snap["data"][f], str)

        sim.set_price("bybit", "BTCUSDT", snap["data"]["bid1Price"], "99999.9")  # only the ask moves
        delta = await recv_json(ws)
        assert delta["type"] == "delta" and delta["cs"] > snap["cs"]
        assert delta["data"] == {"symbol": "BTCUSDT", "ask1Price": "99999.9"}

        await ws.send_message('{"op":"ping","req_id":"p1"}')
        pong = await recv_json(ws)
        assert pong["success"] is True and pong["ret_msg"] == "pong" and pong["op"] == "ping"
        assert pong["req_id"] == "p1"

        await ws.send_message('{"op":"subscribe","req_id":"r2","args":["tickers.NOPEUSDT"]}')
        err = await recv_json(ws)
        assert err["success"] is False and err["ret_msg"] == "error:handler not found,topic:tickers.NOPEUSDT"
        assert err["req_id"] == "r2"

        await ws.send_message('{"op":"unsubscribe","req_id":"r3","args":["tickers.BTCUSDT"]}')
        assert (await recv_json(ws))["success"] is True
        assert sim.hub.subscriptions("bybit") == []

        # silenced: pings go unanswered, then resume answers again
        sim.hub.silence("bybit")
        await ws.send_message('{"op":"ping","req_id":"p2"}')
        with trio.move_on_after(0.3):
            await ws.get_message()
            pytest.fail("a silenced stream answered a ping")
        sim.hub.silence("bybit", on=False)
        await ws.send_message('{"op":"ping","req_id":"p3"}')
        assert (await recv_json(ws))["req_id"] == "p3"


async def test_sim_binance_wire_format(sim):
    from trio_websocket import open_websocket_url

    async with open_websocket_url(sim.url("binanceusdm")) as ws:
        await ws.send_message('{"method":"SUBSCRIBE","params":["btcusdt@bookTicker","btcusdt@aggTrade"],"id":1}')
        assert await recv_json(ws) == {"result": None, "id": 1}
        book = await recv_json(ws)
        assert book["e"] == "bookTicker" and book["s"] == "BTCUSDT"
        assert isinstance(book["b"], str) and isinstance(book["a"], str) and isinstance(book["E"], int)

        sim.set_price("binanceusdm", "BTCUSDT", "64000.1", "64000.5", "64000.3")
        got = {}
        while set(got) != {"bookTicker", "aggTrade"}:
            m = await recv_json(ws)
            got[m["e"]] = m
        assert (got["bookTicker"]["b"], got["bookTicker"]["a"]) == ("64000.1", "64000.5")
        assert got["aggTrade"]["p"] == "64000.3"

        await ws.send_message('{"method":"LIST_SUBSCRIPTIONS","id":2}')
        assert await recv_json(ws) == {"result": ["btcusdt@aggTrade", "btcusdt@bookTicker"], "id": 2}
        await ws.send_message('{"method":"SUBSCRIBE","params":["nopeusdt@bookTicker"],"id":3}')
        err = await recv_json(ws)
        assert err["id"] == 3 and err["error"]["code"] == 2
        await ws.send_message("not json")
        assert (await recv_json(ws))["error"]["code"] == 3
        await ws.send_message('{"method":"UNSUBSCRIBE","params":["btcusdt@bookTicker","btcusdt@aggTrade"],"id":4}')
        assert await recv_json(ws) == {"result": None, "id": 4}
        assert sim.hub.subscriptions("binanceusdm") == []

    # combined streams: subscribed from the URL, payloads wrapped
    async with open_websocket_url(sim.ws_base + "/binance/stream?streams=ethusdt@bookTicker") as ws:
        m = await recv_json(ws)
        assert m["stream"] == "ethusdt@bookTicker" and m["data"]["e"] == "bookTicker" and m["data"]["s"] == "ETHUSDT"


async def test_sim_slow_client_queue_is_bounded_and_ends_on_the_newest_price(sim):
    from trio_websocket import open_websocket_url

    async with open_websocket_url(sim.url("bybit")) as ws:
        await ws.send_message('{"op":"subscribe","req_id":"1","args":["tickers.BTCUSDT","tickers.ETHUSDT"]}')
        assert (await recv_json(ws))["success"] is True
        await recv_json(ws)
        await recv_json(ws)  # both snapshots
        (conn,) = sim.hub._conns
        before = sim.hub.stats["coalesced"]
        # 2000 changes with no checkpoint in between: the sender cannot run meanwhile
        for i in range(1000):
            for sid, base in (("BTCUSDT", Decimal("50000.0")), ("ETHUSDT", Decimal("3000.00"))):
                bid = base + Decimal(i) * (Decimal("0.1") if sid == "BTCUSDT" else Decimal("0.01"))
                sim.state.set_price("bybit", sid, bid=str(bid), ask=str(bid * 2))
            assert len(conn.pending) <= len(conn.subs) == 2
        assert sim.hub.stats["coalesced"] - before >= 1996
        seen = {}
        while seen.get("BTCUSDT") != "50099.9" or seen.get("ETHUSDT") != "3009.99":
            m = await recv_json(ws)
            if "bid1Price" in m["data"]:
                seen[m["data"]["symbol"]] = m["data"]["bid1Price"]
        with trio.move_on_after(0.2):
            extra = await ws.get_message()
            pytest.fail(f"backlog after the newest price: {extra}")
