"""The account stream actor on the real stack: trio-websocket to the simulator's private
streams, ccxt's real clients for the listen key and the REST snapshot.

What the simulator sends is held to the exchanges' documented messages in
tests/test_simulator_private_conformance.py; here the actor's side is tested: it
connects (Binance listen key, Bybit ``auth`` + ``subscribe``), syncs, applies events,
notices a silent or dropped stream, renews an expired listen key, backs off from a
refused login, and after every reconnect takes a REST snapshot so that nothing that
happened while it was away is missed. Conditions are awaited; nothing asserts a duration.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from decimal import Decimal as D

import pytest
import trio

from exchanges.ccxt_adapter import CcxtExchange
from feeds.account_events import PositionChange
from feeds.account_stream import AccountStreamTimings
from feeds.account_view import Snapshot
from service.app import make_account_stream
from tests.sim_private_clients import KEY, SECRET, MovableClock, http, start_simulator
from tests.support import wait_until

SYMBOL_ID, SYMBOL = "BTCUSDT", "BTC/USDT:USDT"
FAST = AccountStreamTimings(heartbeat_interval=0.5, reconnect_initial=0.05, reconnect_max=0.5, refused_retry=0.3)
EXCHANGES = ["binanceusdm", "bybit"]
BROKEN = {  # a position event whose position is not one
    "binanceusdm": '{"e": "ACCOUNT_UPDATE", "E": 1, "T": 1, "a": {"m": "ORDER", "B": [], "P": [{"s": 1}]}}',
    "bybit": '{"id": "1", "topic": "position", "creationTime": 1, "data": [{"symbol": "BTCUSDT", "size": []}]}',
}


@asynccontextmanager
async def stream_on_simulator(exchange: str, timings: AccountStreamTimings = FAST, *, link: dict | None = None):
    """(simulator, account stream, port) with the stream running; with ``link`` (a dict)
    the stream goes through a :class:`FrozenLink`, left in ``link["link"]``."""
    async with trio.open_nursery() as nursery:
        sim = await start_simulator(nursery, MovableClock())
        info = sim.info()[exchange]
        sim.state.ensure_market(exchange, SYMBOL_ID, D("50000"))
        port = CcxtExchange.create(exchange, rest_url=info["rest"], api_key=KEY, secret=SECRET)
        try:
            await port.load_markets()
            url = info["private_ws"]  # Binance: the stream appends its listen key
            if link is not None:
                link["link"] = FrozenLink(sim.port)
                proxy_port = await nursery.start(link["link"].run)
                url = url.replace(f":{sim.port}/", f":{proxy_port}/")
            stream = make_account_stream(exchange, url, port, api_key=KEY, secret=SECRET, timings=timings)
            nursery.start_soon(stream.run)
            yield sim, stream, port
        finally:
            with trio.CancelScope(shield=True):
                await port.close()
            nursery.cancel_scope.cancel()


async def admin(sim, method: str, path: str, body=None):
    status, answer = await http(method, sim.admin_url + path, body)
    assert status == 200, (status, answer)
    return answer


async def open_position(sim, exchange: str, side: str, qty: str, entry: str):
    return await admin(sim, "POST", "/positions",
                       {"exchange": exchange, "symbol": SYMBOL_ID, "side": side, "qty": qty, "entry_price": entry})


def changes(view) -> list:
    out = []
    while True:
        try:
            out.append(view.changes.receive_nowait())
        except trio.WouldBlock:
            return out


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_connects_syncs_and_follows_positions_and_our_orders(aio_loop, exchange):
    async with stream_on_simulator(exchange) as (sim, stream, port):
        view = stream.view
        await wait_until(lambda: view.healthy, f"{exchange} account stream healthy")
        assert stream.stats.snapshots == 1
        seen = changes(view)
        assert isinstance(seen[0], Snapshot) and seen[0].positions == ()

        await open_position(sim, exchange, "long", "0.5", "50000")
        await wait_until(lambda: view.position(SYMBOL) is not None, "the opening on the stream")
        opened = view.position(SYMBOL)
        assert (opened.side, opened.qty, opened.entry_price) == ("long", D("0.5"), D("50000"))

        await open_position(sim, exchange, "long", "0.8", "50100")  # averaged in
        await wait_until(lambda: view.position(SYMBOL).qty == D("0.8"), "the averaging on the stream")

        result = await port.create_close_order(SYMBOL, "long", D("0.8"), "apm-test-1")
        final = await view.order_final("apm-test-1", within=60)
        assert final is not None, "the stream reported our close order final"
        assert (final.status, final.filled_qty, final.reduce_only) == ("closed", D("0.8"), True)
        assert final.exchange_order_id == result.exchange_order_id
        assert sum(f.qty for f in view.fills("apm-test-1")) == D("0.8")
        await wait_until(lambda: view.position(SYMBOL) is None, "the flat position on the stream")

        positions = [c for c in changes(view) if isinstance(c, PositionChange)]
        assert [(c.side, c.qty) for c in positions] == [("long", D("0.5")), ("long", D("0.8")), (None, D(0))]
        assert stream.stats.malformed == 0


class FrozenLink:
    """A TCP proxy whose link can freeze: sockets stay open, nothing goes through (a
    stalled network path, which no server-side switch can imitate for WebSocket ping
    frames: the server's WebSocket library answers those itself)."""

    def __init__(self, port: int):
        self.target = port
        self.thawed = trio.Event()
        self.thawed.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client):
        server = await trio.open_tcp_stream("127.0.0.1", self.target)

        async def pump(a, b):
            try:
                while data := await a.receive_some(65536):
                    await self.thawed.wait()
                    await b.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                with trio.CancelScope(shield=True):
                    await a.aclose()
                    await b.aclose()

        async with trio.open_nursery() as n:
            n.start_soon(pump, client, server)
            n.start_soon(pump, server, client)

    def freeze(self):
        self.thawed = trio.Event()

    def thaw(self):
        self.thawed.set()


@asynccontextmanager
async def silenced(sim, exchange: str, link: FrozenLink):
    """Bybit: the simulator stops answering (no data, no JSON pongs). Binance: the link freezes."""
    if exchange == "bybit":
        await admin(sim, "POST", "/faults", {"private_ws": "silence", "exchange": exchange})
    else:
        link.freeze()
    yield
    if exchange == "bybit":
        await admin(sim, "POST", "/faults", {"private_ws": "resume", "exchange": exchange})
    else:
        link.thaw()


async def test_caught_up_means_every_event_sent_before_it_is_applied(aio_loop):
    """Bybit: a JSON ping's pong comes back behind the data frames sent before it."""
    async with stream_on_simulator("bybit") as (sim, stream, port):
        view = stream.view
        await wait_until(lambda: view.healthy, "healthy")
        for qty in ("1", "2", "3"):
            sim.state.set_position("bybit", SYMBOL_ID, "long", qty, "50000")  # the events are sent now
            assert await view.caught_up(within=30)
            assert view.position(SYMBOL).qty == D(qty)  # no waiting: the ping came back after them
        assert stream.stats.connects == 1


async def test_binance_is_never_known_to_be_caught_up(aio_loop):
    """Binance's user data stream answers no request in order with its data, and a
    WebSocket pong can overtake queued data frames (this simulator's server sends it
    first: the position below is not yet applied when the pong is in). So the view
    never claims to be up to date, and the check before a close asks REST."""
    async with stream_on_simulator("binanceusdm") as (sim, stream, port):
        view = stream.view
        await wait_until(lambda: view.healthy, "healthy")
        sim.state.set_position("binanceusdm", SYMBOL_ID, "long", "1", "50000")
        assert not await view.caught_up(within=30)
        await wait_until(lambda: view.position(SYMBOL) is not None, "the event still arrives")
        assert view.healthy


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_silent_stream_is_replaced_and_the_snapshot_covers_what_it_missed(aio_loop, exchange):
    link_box = {}
    async with stream_on_simulator(exchange, link=link_box) as (sim, stream, port):
        view = stream.view
        await wait_until(lambda: view.healthy, "healthy")
        async with silenced(sim, exchange, link_box["link"]):
            await open_position(sim, exchange, "short", "2", "50000")  # lost to the silent connection
            await wait_until(lambda: stream.stats.heartbeat_timeouts >= 1, "the heartbeat notices the silence")
            await wait_until(lambda: not view.healthy, "the view stops being trusted")
        await wait_until(lambda: view.healthy and stream.stats.snapshots >= 2, "reconnected and synced again")
        got = view.position(SYMBOL)
        assert got is not None and (got.side, got.qty) == ("short", D("2"))
        snapshots = [c for c in changes(view) if isinstance(c, Snapshot)]
        assert [p.symbol for p in snapshots[-1].positions] == [SYMBOL]


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_dropped_stream_reconnects_and_malformed_frames_are_counted(aio_loop, exchange):
    async with stream_on_simulator(exchange) as (sim, stream, port):
        view = stream.view
        await wait_until(lambda: view.healthy, "healthy")
        await admin(sim, "POST", "/faults", {"private_raw": BROKEN[exchange], "exchange": exchange})
        await admin(sim, "POST", "/faults", {"private_raw": "not json at all", "exchange": exchange})
        await wait_until(lambda: stream.stats.malformed >= 2, "the malformed frames counted")
        assert view.healthy and stream.stats.connects == 1
        await admin(sim, "POST", "/faults", {"private_ws": "drop", "exchange": exchange})
        await wait_until(lambda: stream.stats.connects >= 2 and view.healthy, "reconnected after the drop")
        await open_position(sim, exchange, "long", "1", "50000")
        await wait_until(lambda: view.position(SYMBOL) is not None, "events flow on the new connection")


async def test_an_expired_listen_key_is_replaced(aio_loop):
    async with stream_on_simulator("binanceusdm") as (sim, stream, port):
        view = stream.view
        await wait_until(lambda: view.healthy, "healthy")
        await admin(sim, "POST", "/faults", {"expire_listen_key": True})
        await wait_until(lambda: stream.stats.expirations == 1, "listenKeyExpired seen")
        await wait_until(lambda: stream.stats.connects >= 2 and view.healthy, "a new key and a new connection")
        await open_position(sim, "binanceusdm", "long", "1", "50000")
        await wait_until(lambda: view.position(SYMBOL) is not None, "events flow under the new key")


async def test_the_listen_key_is_kept_alive(aio_loop):
    timings = AccountStreamTimings(heartbeat_interval=0.5, keepalive_interval=0.2, reconnect_initial=0.05)
    async with stream_on_simulator("binanceusdm", timings) as (sim, stream, port):
        await wait_until(lambda: stream.stats.keepalives >= 2, "two keep-alives sent and accepted")
        assert stream.stats.connects == 1


async def test_a_refused_bybit_login_is_an_error_not_a_reconnect_storm(aio_loop, caplog):
    timings = AccountStreamTimings(heartbeat_interval=0.5, reconnect_initial=0.01, reconnect_max=0.01,
                                   refused_retry=0.5)
    async with trio.open_nursery() as nursery:
        sim = await start_simulator(nursery, MovableClock())
        await admin(sim, "POST", "/faults", {"bybit_auth_fail": 2})
        info = sim.info()["bybit"]
        port = CcxtExchange.create("bybit", rest_url=info["rest"], api_key=KEY, secret=SECRET)
        try:
            await port.load_markets()
            stream = make_account_stream("bybit", info["private_ws"], port, api_key=KEY, secret=SECRET,
                                         timings=timings)
            nursery.start_soon(stream.run)
            await wait_until(lambda: stream.view.healthy, "logged in once the refusals are over")
            assert stream.stats.refusals == 2
            # the backoff after a refusal is refused_retry, not the 10 ms reconnect backoff
            assert stream.stats.connects == 3
            refused = [r for r in caplog.records if "refused our credentials" in r.getMessage()]
            assert len(refused) == 2 and all(r.levelname == "ERROR" for r in refused)
            assert SECRET not in caplog.text
        finally:
            with trio.CancelScope(shield=True):
                await port.close()
            nursery.cancel_scope.cancel()
