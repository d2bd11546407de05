"""Hostile public streams against a running manager, on the real stack.

The exchange simulator runs in-process on loopback (its REST API through the real ccxt
adapter, its WebSocket streams through the real :class:`feeds.feed.Feed`), the service
is the real :class:`service.runtime.Service` on a real PostgreSQL, on the real clock.
Every position is an aged long in grace (opened 5 h ago at 100) whose real book is
95 / 95.1, short of its target (breakeven); the simulator's :meth:`StreamHub.send_raw`
pushes hostile frames into the live connections between its real ones.

The hostile frames have the shapes of the real payloads in
``tests/conformance`` (see SOURCES.md): Bybit v5 ``tickers.<id>``
snapshot/delta frames and Binance USD-M ``bookTicker``/``aggTrade`` events, with bad
values. Nothing here measures time: every wait is for a condition, bounded only to
turn a hang into a failure.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from functools import partial

import pytest
import trio

from actors.clock import PolicyClock
from exchanges.ccxt_adapter import CcxtExchange
from actors.detector import DetectorConfig
from actors.executor import ExecutorConfig
from feeds.feed import Feed, FeedTimings
from service.config import DEFAULTS
from service.runtime import Service
from service.metrics import Metrics
from simulator.server import serve_simulator
from tests.test_feeds_live import make_feed, next_tick, sim  # noqa: F401 - sim is a fixture

EXCHANGES = ("bybit", "binanceusdm")
TIMEOUT = 60  # bounds a hang; never a speed requirement
REAL_BID, REAL_ASK = D("95"), D("95.1")
CROSS_BID, CROSS_ASK = D("101"), D("101.1")  # past breakeven (100 + fees): a long in grace closes


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


async def wait_until(cond, timeout=TIMEOUT) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


async def wait_until_async(cond, timeout=TIMEOUT) -> None:
    with trio.fail_after(timeout):
        while not await cond():
            await trio.sleep(0.05)


@dataclass
class Held:
    exchange: str
    sid: str  # exchange id, e.g. "HOSTBYUSDT"

    @property
    def symbol(self) -> str:
        return f"{self.sid[:-4]}/USDT:USDT"


class Stack:
    """The simulator, ccxt clients, feeds and the service, all running."""

    def __init__(self, sim, exchanges, feeds, svc, db):
        self.sim, self.exchanges, self.feeds, self.svc, self.db = sim, exchanges, feeds, svc, db

    def orders(self, held: Held) -> list[dict]:
        return [o.record() for o in self.sim.state.orders
                if o.record()["exchange"] == held.exchange and o.record()["symbol"] == held.sid]

    def aged_state(self, held: Held):
        for state in self.svc.registry.states().values():
            if state.exchange == held.exchange and state.symbol == held.symbol:
                return state
        return None

    async def watching(self, held: Held) -> None:
        """The position is aged, its actor runs in grace and has had a stream tick."""
        feed = self.feeds[held.exchange]

        def ready():
            state = self.aged_state(held)
            return (state is not None and state.status == "grace_active" and feed.subscriber_count(held.symbol) > 0
                    and (t := feed.latest(held.symbol)) is not None and t.source == "ws")
        await wait_until(ready)

    async def frames_reach_the_actor(self, held: Held, sent_before: int, n: int) -> None:
        """The feed has parsed ``n`` more frames, and the actor has taken any tick they made."""
        feed = self.feeds[held.exchange]
        await wait_until(lambda: feed.stats.messages >= sent_before + n)
        state = self.aged_state(held)
        inbox = self.svc.registry.mailbox(state.aged_id)
        await wait_until(lambda: inbox is None or inbox._tick is None)

    def send(self, exchange: str, frames: list[str]) -> None:
        for text in frames:
            assert self.sim.hub.send_raw(exchange, text) == 1

    def assert_untouched(self, held: Held) -> None:
        state = self.aged_state(held)
        assert state is not None and state.status == "grace_active", state
        assert state.close_triggered_at is None and not state.close_in_flight, state
        assert self.orders(held) == []

    async def real_crossing_closes_once(self, held: Held) -> None:
        self.sim.state.set_price(held.exchange, held.sid, bid=CROSS_BID, ask=CROSS_ASK, last=CROSS_BID)

        async def closed():
            rows = await self.db.fetch("SELECT status FROM monitoring.aged_positions WHERE exchange=$1 AND symbol=$2",
                                       held.exchange, held.symbol)
            return bool(rows) and rows[0]["status"] == "closed"
        await wait_until_async(closed)
        orders = self.orders(held)
        assert len(orders) == 1, orders
        assert orders[0]["reduce_only"] and D(orders[0]["avg_price"]) == CROSS_BID


@pytest.fixture
async def stack(aio_loop, db, nursery):
    sim = await nursery.start(partial(serve_simulator, tick_interval=None))
    stacks = []

    async def start(positions: list[Held]) -> Stack:
        opened = datetime.now(timezone.utc) - timedelta(hours=5)
        for h in positions:
            sim.state.set_position(h.exchange, h.sid, "long", "2", "100", opened_at=opened)
            sim.state.set_price(h.exchange, h.sid, bid=REAL_BID, ask=REAL_ASK, last=REAL_BID)
            # Binance does not say when a position was opened: the bot's book does
            await db.upsert_open_position(exchange=h.exchange, symbol=h.symbol, side="long", quantity=D(2),
                                          entry_price=D(100), opened_at=opened, source="bot")
        info = sim.info()
        exchanges = {n: CcxtExchange.create(n, rest_url=info[n]["rest"], api_key="sim-key", secret="sim-secret")
                     for n in EXCHANGES}
        for port in exchanges.values():
            await port.load_markets()
        timings = FeedTimings(stale_after=60.0, rest_poll_interval=0.2, reconnect_initial=0.05, reconnect_max=0.5)
        feeds = {n: Feed(n, info[n]["ws"], rest_quote=exchanges[n].fetch_quote, timings=timings) for n in EXCHANGES}
        config = replace(DEFAULTS, detector=DetectorConfig(poll_interval=0.3),
                         executor=ExecutorConfig(retry_delays=(0.2, 0.5, 1.0)))
        svc = Service(db, exchanges, feeds, config, PolicyClock())
        nursery.start_soon(svc.run)
        s = Stack(sim, exchanges, feeds, svc, db)
        stacks.append(s)
        for h in positions:
            await s.watching(h)
        return s

    yield start
    for s in stacks:
        s.svc.shutdown()
        with trio.CancelScope(shield=True):
            for port in s.exchanges.values():
                await port.close()


# --------------------------------------------------------------------------------------
# item 1: a rejected frame changes nothing


async def test_crossed_bybit_delta_then_cleared_ask_does_not_close(stack):
    """A delta with the bid above the ask is refused; a later delta clearing the ask must
    leave the bid the exchange really quoted (95), not the refused one (102)."""
    held = Held("bybit", "CROSSBYUSDT")
    s = await stack([held])
    feed = s.feeds["bybit"]
    before = feed.stats.messages
    topic = f"tickers.{held.sid}"
    s.send("bybit", [
        dumps({"topic": topic, "type": "delta", "data": {"symbol": held.sid, "bid1Price": "102"}, "cs": 2, "ts": 2}),
        dumps({"topic": topic, "type": "delta", "data": {"symbol": held.sid, "ask1Price": ""}, "cs": 3, "ts": 3}),
    ])
    await s.frames_reach_the_actor(held, before, 2)
    assert feed.stats.malformed_reasons.get("crossed book") == 1
    latest = feed.latest(held.symbol)
    assert (latest.bid, latest.ask) == (REAL_BID, None)  # one-sided, and the side is the quoted one
    s.assert_untouched(held)
    await s.real_crossing_closes_once(held)


# --------------------------------------------------------------------------------------
# item 7: absurd quotes


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_absurd_quote_is_held_and_refuted_by_rest(stack, exchange):
    """One well-formed quote with the bid at 1000x the price: held as suspect, REST says
    95, it is dropped; no order. A real crossing afterwards closes once."""
    held = Held(exchange, "ABSURD" + exchange[:2].upper() + "USDT")
    s = await stack([held])
    feed = s.feeds[exchange]
    before = feed.stats.messages
    if exchange == "bybit":
        frame = dumps({"topic": f"tickers.{held.sid}", "type": "delta", "cs": 2, "ts": 2,
                       "data": {"symbol": held.sid, "bid1Price": "95000", "ask1Price": "95100"}})
    else:
        frame = dumps({"e": "bookTicker", "u": 10**9, "E": 2, "T": 2, "s": held.sid, "b": "95000", "B": "1",
                       "a": "95100", "A": "1"})
    s.send(exchange, [frame])
    await s.frames_reach_the_actor(held, before, 1)
    s.assert_untouched(held)
    assert feed.stats.suspects == 1
    await wait_until(lambda: feed.stats.suspects_rejected == 1)  # REST disagreed
    assert feed.guard.held(held.symbol) is None and feed.latest(held.symbol).bid == REAL_BID
    s.assert_untouched(held)
    await s.real_crossing_closes_once(held)


# --------------------------------------------------------------------------------------
# fuzz: 10,000+ malformed and hostile frames of both exchanges through a running manager

FUZZ_FRAMES = 10_500
BATCH = 400  # the simulator queues at most 1000 raw frames per connection


def _plausible(rng: random.Random) -> str:
    """A believable price still short of the target: the exchange could really quote it."""
    return f"{rng.uniform(90, 98.9):.2f}"


def _absurd(rng: random.Random) -> str:
    """Far from anything real (more than 20 % off every price this test ever quotes)."""
    if rng.random() < 0.5:
        return f"{10 ** rng.uniform(2.12, 7):.2f}"  # 132 ... 10,000,000
    return f"{10 ** rng.uniform(-4, 1.7):.6f}"  # 0.0001 ... 50


def _bad_value(rng: random.Random):
    return rng.choice(["abc", "-1", "0", "0.000", "NaN", "Infinity", "1e5", " 95", "+95", ".5", "95.", "9" * 25,
                       "１２", "0x10", "95,1", 95.5, 95, True, None, [], {"p": "95"}])


def _garbage(rng: random.Random, sample: str) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return sample[: rng.randrange(len(sample))]  # truncated
    if kind == 1:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(1, 60)))
    if kind == 2:
        return rng.choice(["null", "[]", "[1,2,3]", '"text"', "42", "true", "{}", '{"": ""}'])
    if kind == 3:
        return "[" * 3000 + "]" * 3000
    if kind == 4:
        return dumps({"topic": "tickers.X" + "Y" * rng.randrange(1, 5000), "type": "delta", "data": {}})
    if kind == 5:
        return sample.replace('"', "'")
    if kind == 6:
        return sample + "}"
    return json.dumps({"stream": "x@bookTicker", "data": rng.choice([5, "x", [1], None])})


def _bybit_hostile(rng: random.Random, sid: str) -> str:
    topic = f"tickers.{sid}"
    kind = rng.randrange(12)
    data: dict = {"symbol": sid}
    mtype = "delta"
    if kind == 0:  # crossed within the frame itself
        bid = D(rng.choice([_plausible(rng), "101", "105", "110", "118", _absurd(rng)]))
        data.update(bid1Price=str(bid), ask1Price=str(max(bid - D(rng.randint(1, 50)) / 10, D("0.1"))))
    elif kind == 1:  # one side cleared, the other (if any) plausible or absurd
        side = rng.choice(["bid1Price", "ask1Price"])
        data[side] = ""
        if rng.random() < 0.5:
            other = "ask1Price" if side == "bid1Price" else "bid1Price"
            data[other] = rng.choice([_plausible(rng), _absurd(rng)])
    elif kind == 2:  # everything cleared, or only last left
        data.update(bid1Price="", ask1Price="", lastPrice=rng.choice(["", _plausible(rng), _absurd(rng)]))
    elif kind == 3:  # absurd but well formed, uncrossed
        bid = D(_absurd(rng))
        data.update(bid1Price=str(bid), ask1Price=str(bid * D("1.001")))
    elif kind == 4:  # absurd one-sided
        data[rng.choice(["bid1Price", "ask1Price", "lastPrice"])] = _absurd(rng)
    elif kind == 5:  # bad values in any price field
        data[rng.choice(["bid1Price", "ask1Price", "lastPrice", "markPrice"])] = _bad_value(rng)
    elif kind == 6:  # marks of any kind
        data["markPrice"] = rng.choice([_absurd(rng), _plausible(rng), "101", ""])
    elif kind == 7:  # plausible, short of the target
        bid = D(_plausible(rng))
        data.update(bid1Price=str(bid), ask1Price=str(bid + D("0.1")), lastPrice=str(bid))
    elif kind == 8:  # a snapshot of any of the above kinds of prices
        mtype = "snapshot"
        bid = D(rng.choice([_plausible(rng), _absurd(rng)]))
        data.update(bid1Price=str(bid), ask1Price=rng.choice([str(bid + D("0.1")), "", _absurd(rng)]),
                    lastPrice=rng.choice([_plausible(rng), _absurd(rng), ""]), markPrice=_absurd(rng))
    elif kind == 9:  # wrong symbol, type, shapes
        return rng.choice([
            dumps({"topic": topic, "type": "delta", "data": {"symbol": "ETHUSDT", "bid1Price": "120"}}),
            dumps({"topic": topic, "type": "weird", "data": {"bid1Price": "120"}}),
            dumps({"topic": topic, "type": "delta", "data": [{"bid1Price": "120"}]}),
            dumps({"topic": 5, "data": {}}),
            dumps({"topic": "tickers.", "type": "snapshot", "data": {"lastPrice": "120"}}),
            dumps({"topic": "orderbook.1." + sid, "type": "snapshot", "data": {"b": [["120", "1"]]}}),
            dumps({"topic": "tickers.OTHERUSDT", "type": "snapshot", "data": {"bid1Price": "120", "ask1Price": "121"}}),
        ])
    elif kind == 10:  # control frames nobody asked for
        return rng.choice([
            dumps({"success": False, "ret_msg": "error:handler not found", "op": "subscribe", "req_id": "1"}),
            dumps({"success": True, "ret_msg": "", "op": "unsubscribe", "req_id": "2"}),
            dumps({"success": True, "ret_msg": "pong", "op": "ping", "req_id": "x"}),
            dumps({"op": "pong", "args": ["1"]}),
            dumps({"success": "yes", "op": 7}),
        ])
    else:
        return _garbage(rng, dumps({"topic": topic, "type": "delta", "data": {"symbol": sid, "bid1Price": "120"}}))
    return dumps({"topic": topic, "type": mtype, "data": data, "cs": rng.randrange(10**9), "ts": rng.randrange(10**13)})


def _binance_hostile(rng: random.Random, sid: str) -> str:
    kind = rng.randrange(10)
    base = {"e": "bookTicker", "u": rng.randrange(10**12), "E": 1, "T": 1, "s": sid, "B": "1", "A": "1"}
    if kind == 0:  # crossed
        bid = D(rng.choice([_plausible(rng), "101", "110", "118", _absurd(rng)]))
        return dumps({**base, "b": str(bid), "a": str(max(bid - D(rng.randint(1, 50)) / 10, D("0.1")))})
    if kind == 1:  # absurd, uncrossed
        bid = D(_absurd(rng))
        return dumps({**base, "b": str(bid), "a": str(bid * D("1.001"))})
    if kind == 2:  # one absurd side
        return dumps({**base, "b": _plausible(rng), "a": _absurd(rng)} if rng.random() < 0.5
                     else {**base, "b": _absurd(rng), "a": "100000"})
    if kind == 3:  # a missing, empty or bad side
        frame = {**base, "b": _plausible(rng), "a": "99"}
        side = rng.choice(["b", "a"])
        if rng.random() < 0.3:
            del frame[side]
        else:
            frame[side] = rng.choice(["", _bad_value(rng)])
        return dumps(frame)
    if kind == 4:  # plausible, short of the target
        bid = D(_plausible(rng))
        return dumps({**base, "b": str(bid), "a": str(bid + D("0.1"))})
    if kind == 5:  # trades at absurd, plausible or bad prices
        return dumps({"e": "aggTrade", "E": 1, "a": 1, "s": sid, "q": "1", "f": 1, "l": 1, "T": 1, "m": False,
                      "p": rng.choice([_absurd(rng), _plausible(rng), _bad_value(rng)])})
    if kind == 6:  # combined-stream wrapper around any of the above
        inner = _binance_hostile(rng, sid) if rng.random() < 0.8 else '"x"'
        return '{"stream":"' + sid.lower() + '@bookTicker","data":' + inner + "}"
    if kind == 7:  # wrong symbols, other events
        return rng.choice([
            dumps({**base, "s": 5, "b": "120", "a": "121"}),
            dumps({**base, "s": "BTC", "b": "120", "a": "121"}),
            dumps({**base, "s": "OTHERUSDT", "b": "120", "a": "121"}),
            dumps({"e": "markPriceUpdate", "E": 1, "s": sid, "p": "120"}),
            dumps({"e": "depthUpdate", "s": sid, "b": [["120", "1"]], "a": []}),
        ])
    if kind == 8:  # control frames nobody asked for
        return rng.choice([
            dumps({"result": None, "id": 1}),
            dumps({"error": {"code": 2, "msg": "Invalid request"}, "id": 1}),
            dumps({"code": 3, "msg": "Invalid JSON"}),
            dumps({"result": ["x"], "id": "abc"}),
        ])
    return _garbage(rng, dumps({**base, "b": "95", "a": "95.1"}))


async def test_fuzz_hostile_streams_never_close_short_of_target_then_a_real_crossing_closes_once(stack, caplog):
    caplog.set_level(logging.ERROR)  # the warnings about each bad frame are the point, not news
    positions = [Held("bybit", "FUZZBYUSDT"), Held("binanceusdm", "FUZZBIUSDT")]
    s = await stack(positions)
    rng = random.Random(20261129)
    makers = {"bybit": _bybit_hostile, "binanceusdm": _binance_hostile}
    sent = 0
    while sent < FUZZ_FRAMES:
        for held in positions:
            feed = s.feeds[held.exchange]
            before = feed.stats.messages
            frames = [makers[held.exchange](rng, held.sid) for _ in range(BATCH // 2)]
            s.send(held.exchange, frames)
            await s.frames_reach_the_actor(held, before, len(frames))
            sent += len(frames)
            s.assert_untouched(held)
    # nothing reached the exchange, the manager and both feeds are alive on their first connection
    for held in positions:
        feed = s.feeds[held.exchange]
        assert feed.stats.connected and feed.stats.connects == 1 and feed.stats.errors == 0
        assert feed.stats.malformed > 500 and feed.stats.suspects > 100
        await wait_until(lambda f=feed, h=held: f.guard.held(h.symbol) is None)  # every suspect settled by REST
        s.assert_untouched(held)
    assert s.sim.state.orders == []
    assert all(child.restarts == 0 for child in s.svc.root.children().values())
    metrics = Metrics()
    metrics.attach(s.svc)
    metrics.refresh()
    for held in positions:
        assert metrics.registry.get_sample_value("aged_feed_suspect_quotes_total", {"exchange": held.exchange}) \
            == s.feeds[held.exchange].stats.suspects
    # a real crossing still closes each position exactly once
    for held in positions:
        await s.real_crossing_closes_once(held)
    assert sent >= 10_000


# --------------------------------------------------------------------------------------
# a real jump of more than 20 % is delayed, not lost (feed only, simulator streams)


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_real_jump_is_delivered_once_rest_agrees(sim, nursery, exchange):  # noqa: F811
    calls: list[str] = []
    feed = make_feed(sim, exchange, rest_quote=sim.rest_quote_fn(exchange, calls))
    await nursery.start(feed.run)
    rx = feed.subscribe("BTC/USDT:USDT")
    first = await next_tick(rx)
    bid = (first.bid * D("1.5")).quantize(D("0.1"))
    sim.set_price(exchange, "BTCUSDT", str(bid), str(bid + D("0.1")), str(bid))
    t = await next_tick(rx, lambda x: x.bid != first.bid)  # the only next tick: the jump, once REST agreed
    assert t.bid == bid and t.source == "ws"
    assert feed.stats.suspects >= 1 and feed.stats.suspects_confirmed >= 1 and calls
    assert feed.stats.suspects_rejected == 0


async def test_with_rest_down_the_next_tick_in_range_confirms(sim, nursery):  # noqa: F811
    async def rest_down(symbol):
        raise OSError("REST is down")

    feed = make_feed(sim, "bybit", rest_quote=rest_down)
    await nursery.start(feed.run)
    rx = feed.subscribe("BTC/USDT:USDT")
    first = await next_tick(rx)
    bid = (first.bid * D("1.5")).quantize(D("0.1"))
    sim.set_price("bybit", "BTCUSDT", str(bid), str(bid + D("0.1")), str(bid))
    await wait_until(lambda: feed.stats.suspects == 1 and feed.stats.rest_errors >= 1)
    with pytest.raises(trio.WouldBlock):
        rx.receive_nowait()  # held, not delivered
    sim.set_price("bybit", "BTCUSDT", str(bid + D("0.5")), str(bid + D("0.6")), str(bid + D("0.5")))
    t = await next_tick(rx)
    assert t.bid == bid + D("0.5") and feed.stats.suspects_confirmed == 1
