"""The simulator records which API key placed each order, and when REST latency applies.

Several service instances may share one exchange account, each with its own API key;
tests of them ask the simulator which instance sent an order (``Order.api_key``,
``SimState.orders_by_key``, the ``"api_key"`` of ``GET /_sim/orders``).

Rules: loopback only, port 0, real clock, real ccxt clients (through the product's
adapter, :class:`~exchanges.ccxt_adapter.CcxtExchange`) against a real simulator
server with two keys of the same account; the price walk is off.
"""

from __future__ import annotations

import time
from decimal import Decimal
from functools import partial

import aiohttp
import pytest
import trio
import trio_asyncio

from exchanges.ccxt_adapter import CcxtExchange
from exchanges.clients import make_ccxt_client
from exchanges.errors import NonRetryableError
from simulator.server import serve_simulator
from simulator.state import SimState

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
EXCHANGES = ["bybit", "binanceusdm"]
KEYS = {"key-one": "secret-one", "key-two": "secret-two"}


@pytest.fixture
async def sim(nursery):
    return await nursery.start(partial(serve_simulator, "127.0.0.1", 0, 0, tick_interval=None, api_keys=KEYS))


def rest_url(sim, name: str) -> str:
    return sim.base_url + ("/bybit" if name == "bybit" else "/binance")


@pytest.fixture
async def adapters(aio_loop, sim):
    """One adapter per (exchange, key): two clients of one account on each exchange."""
    made: dict[tuple[str, str], CcxtExchange] = {}
    try:
        for name in EXCHANGES:
            for key, secret in KEYS.items():
                ex = CcxtExchange.create(name, rest_url=rest_url(sim, name), api_key=key, secret=secret)
                made[(name, key)] = ex
                await ex.load_markets()
        yield made
    finally:
        with trio.CancelScope(shield=True):
            for ex in made.values():
                await ex.close()


async def admin_orders(sim, exchange: str) -> list[dict]:
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{sim.admin_url}/orders?exchange={exchange}") as resp:
                assert resp.status == 200
                return await resp.json(content_type=None)

    return await trio_asyncio.aio_as_trio(go)()


@pytest.mark.parametrize("name", EXCHANGES)
async def test_each_order_carries_the_key_of_the_client_that_placed_it(sim, adapters, name):
    st = sim.state
    st.set_position(name, "BTCUSDT", "long", "1", "60000")
    st.set_position(name, "ETHUSDT", "short", "4", "3000")
    # key-one closes part of the long, key-two part of the short, then key-one again
    await adapters[(name, "key-one")].create_close_order(BTC, "long", Decimal("0.3"), "apm-k1-a")
    await adapters[(name, "key-two")].create_close_order(ETH, "short", Decimal("1"), "apm-k2-a")
    await adapters[(name, "key-one")].create_close_order(ETH, "short", Decimal("2"), "apm-k1-b")

    by_key = st.orders_by_key(name)
    assert {k: [(o.client_order_id, o.reduce_only, o.type) for o in v] for k, v in by_key.items()} == {
        "key-one": [("apm-k1-a", True, "market"), ("apm-k1-b", True, "market")],
        "key-two": [("apm-k2-a", True, "market")],
    }
    assert all(o.status == "filled" for orders in by_key.values() for o in orders)
    other = "binanceusdm" if name == "bybit" else "bybit"
    assert st.orders_by_key(other) == {}
    # the admin order log says the same to a test in another process
    rows = await admin_orders(sim, name)
    assert [(r["client_order_id"], r["api_key"]) for r in rows] == [
        ("apm-k1-a", "key-one"),
        ("apm-k2-a", "key-two"),
        ("apm-k1-b", "key-one"),
    ]


@pytest.mark.parametrize("name", EXCHANGES)
async def test_a_rejected_order_carries_its_key_too(sim, adapters, name):
    st = sim.state  # flat: a reduce-only order is rejected
    with pytest.raises(NonRetryableError):
        await adapters[(name, "key-two")].create_close_order(BTC, "long", Decimal("0.1"), "apm-rej")
    [o] = st.orders
    assert (o.client_order_id, o.status, o.api_key) == ("apm-rej", "rejected", "key-two")
    assert st.orders_by_key(name) == {}
    assert st.orders_by_key(name, include_rejected=True) == {"key-two": [o]}


def test_orders_by_key_groups_in_arrival_order_and_keyless_orders_under_none():
    st = SimState(api_keys=KEYS)
    m = st.market("bybit", "BTCUSDT")
    placed = []
    for key in ("key-two", None, "key-one", "key-two"):
        placed.append(
            st.execute_order(
                "bybit",
                m,
                side="buy",
                type="market",
                qty=Decimal("0.01"),
                price=None,
                time_in_force="IOC",
                reduce_only=False,
                client_order_id=None,
                api_key=key,
            )
        )
    assert st.orders_by_key("bybit") == {
        "key-two": [placed[0], placed[3]],
        None: [placed[1]],
        "key-one": [placed[2]],
    }
    assert [o.api_key for o in st.orders] == ["key-two", None, "key-one", "key-two"]
    assert st.orders[0].record()["api_key"] == "key-two"


@pytest.mark.parametrize("name", EXCHANGES)
async def test_rest_latency_delays_the_request_before_it_takes_effect(sim, aio_loop, name):
    """``POST /_sim/latency`` holds a request *before* it is handled: the order reaches the
    order log ``rest_ms`` after it was sent, and the reply arrives after that."""
    st = sim.state
    st.set_position(name, "BTCUSDT", "long", "1", "60000")
    client = make_ccxt_client(
        name,
        rest_url=rest_url(sim, name),
        api_key="key-one",
        secret="secret-one",
        timeout_ms=30_000,
        enable_rate_limit=False,
    )
    try:
        await trio_asyncio.aio_as_trio(client.load_markets)()
        rest_ms = 1500
        st.rest_latency_ms = rest_ms
        sent = time.monotonic()
        # one raw request (the adapter might send more than one)
        await trio_asyncio.aio_as_trio(client.create_order)(BTC, "market", "sell", 0.1, None, {"reduceOnly": True})
        replied = time.monotonic()
    finally:
        with trio.CancelScope(shield=True):
            await trio_asyncio.aio_as_trio(client.close)()
    [o] = st.accepted_orders(name)
    assert o.api_key == "key-one"
    # recorded_monotonic is the machine's CLOCK_MONOTONIC, as time.monotonic() here
    assert o.recorded_monotonic - sent >= rest_ms / 1000, "the order took effect before the latency elapsed"
    assert o.recorded_monotonic <= replied
