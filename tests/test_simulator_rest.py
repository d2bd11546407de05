"""The simulator's REST protocols against ccxt's real async clients (bybit, binanceusdm).

Rules: loopback only (127.0.0.1), port 0 for every server, real clock (everything here
waits on real sockets), nothing mocked: the clients are ccxt's own, only their
``urls['api']`` point at the simulator. The price walk is off (``tick_interval=None``)
unless a test steps it, so prices only move when a test says so.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from functools import partial

import ccxt.async_support as ccxt_async
import pytest
import trio_asyncio
from ccxt.base import errors as X

from simulator.server import serve_simulator
from simulator.state import CountedFault, RejectRule, SimState

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
EXCHANGES = ("bybit", "binanceusdm")


# ------------------------------------------------------------------------- helpers


def make_client(name: str, base_url: str, *, timeout_ms: int = 30_000, key="sim-key", secret="sim-secret"):
    """A real ccxt client pointed at the simulator (the options the adapter needs)."""
    common = {"apiKey": key, "secret": secret, "timeout": timeout_ms, "enableRateLimit": False}
    if name == "bybit":
        client = ccxt_async.bybit(
            {
                **common,
                "options": {
                    "defaultType": "swap",
                    "fetchMarkets": {"types": ["linear"]},
                    # skip the account-type probes (/v5/user/query-api, /v5/account/info)
                    "enableUnifiedAccount": True,
                    "enableUnifiedMargin": False,
                },
            }
        )
        client.has["fetchCurrencies"] = False  # else /v5/asset/coin/query-info on load_markets
        client.urls["api"] = {k: base_url + "/bybit" for k in client.urls["api"]}
    else:
        client = ccxt_async.binanceusdm(common)
        client.has["fetchCurrencies"] = False  # else /sapi/v1/capital/config/getall
        client.urls["api"] = {
            k: re.sub(r"^https://[^/]+", base_url + "/binance", v) for k, v in client.urls["api"].items()
        }
    client.timeout_on_exit = 0  # close() sleeps 250 ms by default (an SSL nicety; plain HTTP here)
    return client


def use_linear_error_table(client) -> None:
    """ccxt picks Binance's USD-M error codes by URL prefix (https://fapi.binance.com);
    with rewritten URLs they must be merged into the generic table."""
    for kind in ("exact", "broad"):
        client.exceptions[kind].update(client.exceptions.get("linear", {}).get(kind, {}))


async def aio(fn, *args, **kwargs):
    return await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)


@pytest.fixture
async def sim(nursery):
    return await nursery.start(partial(serve_simulator, seed=7, tick_interval=None))


@pytest.fixture
async def clients(aio_loop, sim):
    made = {}

    def get(name: str, **kw):
        c = make_client(name, sim.base_url, **kw)
        made[id(c)] = c
        return c

    yield get
    for c in made.values():
        await aio(c.close)


@pytest.fixture
async def loaded(clients):
    """Both clients with markets loaded."""
    out = {}
    for name in EXCHANGES:
        out[name] = clients(name)
        await aio(out[name].load_markets)
    return out


def close_side(position_side: str) -> str:
    return "sell" if position_side == "long" else "buy"


async def order_by_client_id(client, symbol: str, cid: str) -> dict:
    if client.id == "bybit":
        # fetch_order(id=None, ...) would send orderId=None; look the link id up instead
        orders = await aio(client.fetch_closed_orders, symbol, None, None, {"orderLinkId": cid})
        if not orders:
            orders = await aio(client.fetch_open_orders, symbol, None, None, {"orderLinkId": cid})
        assert len(orders) == 1, orders
        return orders[0]
    return await aio(client.fetch_order, None, symbol, {"clientOrderId": cid})


# ---------------------------------------------------------------------------- tests


async def test_load_markets_on_both_exchanges(loaded):
    for name, client in loaded.items():
        swaps = {s: m for s, m in client.markets.items() if m["swap"]}
        assert set(swaps) >= {BTC, ETH, "SOL/USDT:USDT", "XRP/USDT:USDT", "DOGE/USDT:USDT"}
        m = swaps[BTC]
        assert m["id"] == "BTCUSDT" and m["linear"] and m["settle"] == "USDT" and m["active"]
        assert m["precision"]["price"] == 0.1 and m["precision"]["amount"] == 0.001
        assert m["limits"]["amount"]["min"] == 0.001
    # Binance lists a quarterly too: clients must filter swaps
    assert any(m["future"] for m in loaded["binanceusdm"].markets.values())


async def test_ticker_and_bid_ask_follow_the_simulated_book(sim, loaded):
    for ex in EXCHANGES:
        sim.state.set_price(ex, "BTCUSDT", bid=D("64000.1"), ask=D("64000.5"), last=D("64000.3"))
    t = await aio(loaded["bybit"].fetch_ticker, BTC)
    assert (t["bid"], t["ask"], t["last"]) == (64000.1, 64000.5, 64000.3)
    assert t["info"]["markPrice"] == "64000.3"

    bn = loaded["binanceusdm"]
    t = await aio(bn.fetch_ticker, BTC)  # the 24hr ticker: last only
    assert t["last"] == 64000.3
    ba = await aio(bn.fetch_bids_asks, [BTC])
    assert (ba[BTC]["bid"], ba[BTC]["ask"]) == (64000.1, 64000.5)
    raw = await aio(bn.fapiPublicGetTickerBookTicker, {"symbol": "BTCUSDT"})
    assert raw["bidPrice"] == "64000.1" and raw["askPrice"] == "64000.5"

    with pytest.raises(X.BadSymbol):  # Binance -1121
        await aio(bn.fapiPublicGetTickerBookTicker, {"symbol": "NOPEUSDT"})
    with pytest.raises(X.BadRequest):  # Bybit 10001
        await aio(loaded["bybit"].publicGetV5MarketTickers, {"category": "linear", "symbol": "NOPEUSDT"})


async def test_fetch_positions_reports_side_size_entry_and_times(sim, loaded):
    opened = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    for ex in EXCHANGES:
        sim.state.set_position(ex, "BTCUSDT", "long", "0.5", "60000", opened)
        sim.state.set_position(ex, "ETHUSDT", "short", "2", "3000.5", opened + timedelta(hours=1))
    for ex, client in loaded.items():
        got = {p["symbol"]: p for p in await aio(client.fetch_positions)}
        assert set(got) == {BTC, ETH}, ex
        assert (got[BTC]["side"], got[BTC]["contracts"], got[BTC]["entryPrice"]) == ("long", 0.5, 60000.0)
        assert (got[ETH]["side"], got[ETH]["contracts"], got[ETH]["entryPrice"]) == ("short", 2.0, 3000.5)
        # ccxt's timestamp: Bybit createdTime / Binance updateTime, both the opening so far
        assert got[BTC]["timestamp"] == int(opened.timestamp() * 1000)
        assert got[BTC]["marginMode"] == "cross" or ex == "bybit"
    # closed and opened again: Bybit's createdTime is the first position ever on the symbol,
    # not the current one's opening; Binance's updateTime is the last change
    reopened = opened + timedelta(days=30)
    for ex in EXCHANGES:
        sim.state.remove_position(ex, "BTCUSDT", at=reopened - timedelta(minutes=1))
        sim.state.set_position(ex, "BTCUSDT", "short", "0.1", "61000", reopened)
    for ex, client in loaded.items():
        [p] = await aio(client.fetch_positions, [BTC])
        assert p["side"] == "short"
        assert p["timestamp"] == int((opened if ex == "bybit" else reopened).timestamp() * 1000), ex
    # Bybit answers a flat symbol with a size-0 row, as the real API does: filter on contracts
    flat = await aio(loaded["bybit"].fetch_positions, ["SOL/USDT:USDT"])
    assert [p["contracts"] for p in flat] == [0.0]
    assert await aio(loaded["binanceusdm"].fetch_positions, ["SOL/USDT:USDT"]) == []


@pytest.mark.parametrize("ex", EXCHANGES)
async def test_reduce_only_market_close_fills_at_the_touch_and_is_found_by_client_id(sim, loaded, ex):
    st = sim.state
    client = loaded[ex]
    st.set_position(ex, "BTCUSDT", "long", "0.5", "60000")
    st.set_position(ex, "ETHUSDT", "short", "2", "3000")
    st.set_price(ex, "BTCUSDT", bid=D("61000.0"), ask=D("61000.2"))
    st.set_price(ex, "ETHUSDT", bid=D("2990.00"), ask=D("2990.05"))

    o = await aio(client.create_order, BTC, "market", "sell", 0.2, None, {"reduceOnly": True, "clientOrderId": "apm-1"})
    assert o["clientOrderId"] == "apm-1" and o["id"]
    got = await order_by_client_id(client, BTC, "apm-1")
    assert (got["id"], got["status"], got["filled"], got["average"]) == (o["id"], "closed", 0.2, 61000.0)
    assert got["reduceOnly"] is True and got["side"] == "sell" and got["type"] == "market"
    assert st.position(ex, "BTCUSDT").qty == D("0.3")
    if ex == "bybit":
        # by exchange id (ccxt wants the acknowledgement), and by link id with the raw endpoint
        by_id = await aio(client.fetch_order, o["id"], BTC, {"acknowledged": True})
        assert (by_id["clientOrderId"], by_id["status"], by_id["filled"]) == ("apm-1", "closed", 0.2)
        raw = await aio(client.privateGetV5OrderRealtime, {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "apm-1"})
        [row] = raw["result"]["list"]
        assert (row["orderId"], row["orderStatus"], row["cumExecQty"], row["avgPrice"]) == (o["id"], "Filled", "0.200", "61000.0")
        assert client.parse_order(row)["status"] == "closed"

    # closing the whole short (buy at the ask) makes the position disappear
    await aio(client.create_order, ETH, "market", "buy", 2, None, {"reduceOnly": True, "clientOrderId": "apm-2"})
    got = await order_by_client_id(client, ETH, "apm-2")
    assert (got["status"], got["filled"], got["average"]) == ("closed", 2.0, 2990.05)
    assert st.position(ex, "ETHUSDT") is None
    assert [p["symbol"] for p in await aio(client.fetch_positions)] == [BTC]

    recs = [o.record() for o in st.orders]
    assert [(r["client_order_id"], r["status"], r["filled_qty"], r["avg_price"]) for r in recs] == [
        ("apm-1", "filled", "0.2", "61000.0"),
        ("apm-2", "filled", "2", "2990.05"),
    ]
    r = recs[0]
    assert (r["exchange"], r["symbol"], r["side"], r["type"], r["reduce_only"]) == (ex, "BTCUSDT", "sell", "market", True)
    assert r["qty"] == "0.2" and r["order_id"] == o["id"] and r["reject_code"] is None
    assert datetime.fromisoformat(r["time"].replace("Z", "+00:00")).tzinfo is not None


async def test_reduce_only_larger_than_the_position_is_capped(sim, loaded):
    st = sim.state
    for ex in EXCHANGES:
        st.set_position(ex, "SOLUSDT", "long", "1.5", "140")
    sym = "SOL/USDT:USDT"
    # Bybit shrinks the order to the position size: a full fill of 1.5
    await aio(loaded["bybit"].create_order, sym, "market", "sell", 4, None, {"reduceOnly": True, "clientOrderId": "cap-b"})
    got = await order_by_client_id(loaded["bybit"], sym, "cap-b")
    assert (got["status"], got["amount"], got["filled"]) == ("closed", 1.5, 1.5)
    # Binance keeps the order size; what the position cannot take expires
    o = await aio(loaded["binanceusdm"].create_order, sym, "market", "sell", 4, None, {"reduceOnly": True, "clientOrderId": "cap-n"})
    assert (o["status"], o["amount"], o["filled"]) == ("expired", 4.0, 1.5)
    assert st.list_positions() == []


@pytest.mark.parametrize("ex", EXCHANGES)
async def test_partial_fill_fault(sim, loaded, ex):
    st = sim.state
    client = loaded[ex]
    st.set_position(ex, "BTCUSDT", "short", "1", "60000")
    st.faults.partial_fill_ratio = D("0.5")
    await aio(client.create_order, BTC, "market", "buy", 0.3, None, {"reduceOnly": True, "clientOrderId": "pf-1"})
    got = await order_by_client_id(client, BTC, "pf-1")
    assert (got["amount"], got["filled"]) == (0.3, 0.15)
    # the rest is canceled, not resting: Bybit PartiallyFilledCanceled, Binance EXPIRED
    assert got["status"] == ("closed" if ex == "bybit" else "expired")
    assert got["info"]["orderStatus" if ex == "bybit" else "status"] in ("PartiallyFilledCanceled", "EXPIRED")
    assert st.position(ex, "BTCUSDT").qty == D("0.85")
    assert st.orders[-1].status == "partially_filled" and st.orders[-1].filled_qty == D("0.15")


@pytest.mark.parametrize("ex", EXCHANGES)
async def test_reduce_only_limit_ioc(sim, loaded, ex):
    st = sim.state
    client = loaded[ex]
    st.set_position(ex, "BTCUSDT", "long", "1", "60000")
    st.set_price(ex, "BTCUSDT", bid=D("60100.0"), ask=D("60100.5"))
    params = {"reduceOnly": True, "timeInForce": "IOC"}
    # priced through the bid: fills at the bid (the better price)
    await aio(client.create_order, BTC, "limit", "sell", 0.4, 60000.0, {**params, "clientOrderId": "ioc-1"})
    got = await order_by_client_id(client, BTC, "ioc-1")
    assert (got["status"], got["filled"], got["average"], got["price"]) == ("closed", 0.4, 60100.0, 60000.0)
    assert got["timeInForce"] == "IOC"
    # above the bid: nothing fills, nothing rests
    await aio(client.create_order, BTC, "limit", "sell", 0.4, 60200.0, {**params, "clientOrderId": "ioc-2"})
    got = await order_by_client_id(client, BTC, "ioc-2")
    assert got["filled"] == 0.0 and got["status"] == ("canceled" if ex == "bybit" else "expired")
    assert st.position(ex, "BTCUSDT").qty == D("0.6")


async def test_reduce_only_rejections(sim, loaded):
    st = sim.state
    for ex in EXCHANGES:
        st.set_position(ex, "BTCUSDT", "long", "0.5", "60000")
    by, bn = loaded["bybit"], loaded["binanceusdm"]

    with pytest.raises(X.InvalidOrder, match="110017.*current position is zero"):
        await aio(by.create_order, ETH, "market", "sell", 0.1, None, {"reduceOnly": True, "clientOrderId": "r-1"})
    with pytest.raises(X.InvalidOrder, match="110017.*Reduce-only rule not satisfied"):
        await aio(by.create_order, BTC, "market", "buy", 0.1, None, {"reduceOnly": True, "clientOrderId": "r-2"})

    # Binance -2022: a plain ExchangeError with rewritten URLs (ccxt picks the USD-M
    # table by URL prefix) ...
    with pytest.raises(X.ExchangeError, match='"code":-2022') as info:
        await aio(bn.create_order, BTC, "market", "buy", 0.1, None, {"reduceOnly": True, "clientOrderId": "r-3"})
    assert type(info.value) is X.ExchangeError
    # ... and InvalidOrder once the linear table is merged in
    use_linear_error_table(bn)
    with pytest.raises(X.InvalidOrder, match="ReduceOnly Order is rejected"):
        await aio(bn.create_order, ETH, "market", "sell", 0.1, None, {"reduceOnly": True, "clientOrderId": "r-4"})

    rejected = [(o.exchange, o.client_order_id, o.status, o.reject_code, o.order_id) for o in st.orders]
    assert rejected == [
        ("bybit", "r-1", "rejected", "110017", None),
        ("bybit", "r-2", "rejected", "110017", None),
        ("binanceusdm", "r-3", "rejected", "-2022", None),
        ("binanceusdm", "r-4", "rejected", "-2022", None),
    ]
    assert all(p.qty == D("0.5") for p in st.list_positions())
    # a rejected order is not on the books
    with pytest.raises(X.OrderNotFound):
        await aio(bn.fetch_order, None, BTC, {"clientOrderId": "r-3"})


async def test_duplicate_client_order_id_is_rejected(sim, loaded):
    st = sim.state
    for ex, client in loaded.items():
        st.set_position(ex, "BTCUSDT", "long", "1", "60000")
        await aio(client.create_order, BTC, "market", "sell", 0.1, None, {"reduceOnly": True, "clientOrderId": "dup"})
        if ex == "bybit":
            with pytest.raises(X.InvalidOrder, match="110072.*OrderLinkedID is duplicate"):
                await aio(client.create_order, BTC, "market", "sell", 0.1, None, {"reduceOnly": True, "clientOrderId": "dup"})
        else:
            with pytest.raises(X.ExchangeError, match="-4116.*ClientOrderId is duplicated"):
                await aio(client.create_order, BTC, "market", "sell", 0.1, None, {"reduceOnly": True, "clientOrderId": "dup"})
            use_linear_error_table(client)
            with pytest.raises(X.InvalidOrder):
                await aio(client.create_order, BTC, "market", "sell", 0.1, None, {"reduceOnly": True, "clientOrderId": "dup"})
        assert st.position(ex, "BTCUSDT").qty == D("0.9")  # executed once
        assert (await order_by_client_id(client, BTC, "dup"))["filled"] == 0.1
    codes = [o.reject_code for o in st.orders if o.status == "rejected"]
    assert codes == ["110072", "-4116", "-4116"]


async def test_bad_signature_and_unknown_key_are_refused(sim, clients):
    for ex in EXCHANGES:
        bad_secret = clients(ex, secret="not-the-secret")
        with pytest.raises(X.AuthenticationError, match="10004|-1022"):
            await aio(bad_secret.fetch_positions)
        bad_key = clients(ex, key="who-is-this")
        with pytest.raises(X.AuthenticationError, match="10003|-2015"):
            await aio(bad_key.fetch_positions)
        with pytest.raises(X.AuthenticationError):
            await aio(bad_secret.create_order, BTC, "market", "sell", 0.1, None, {"reduceOnly": True})
    assert sim.state.orders == []  # never reached the matching engine


async def test_a_custom_secret_is_honoured(aio_loop, nursery):
    sim = await nursery.start(partial(serve_simulator, tick_interval=None, api_keys={"k2": "s2"}))
    for ex in EXCHANGES:
        c = make_client(ex, sim.base_url, key="k2", secret="s2")
        try:
            assert await aio(c.fetch_positions) == []
        finally:
            await aio(c.close)


async def test_http_5xx_and_rate_limit_faults(sim, loaded):
    st = sim.state
    st.faults.http_5xx.append(CountedFault(2))
    st.faults.rate_limit_429.append(CountedFault(1, "binanceusdm"))
    st.faults.rate_limit_429.append(CountedFault(1, "bybit"))
    by, bn = loaded["bybit"], loaded["binanceusdm"]
    with pytest.raises(X.ExchangeNotAvailable, match="503"):
        await aio(by.fetch_positions)
    with pytest.raises(X.ExchangeNotAvailable, match="503"):
        await aio(bn.fetch_positions)
    with pytest.raises(X.RateLimitExceeded, match="10006"):  # HTTP 200, retCode 10006
        await aio(by.fetch_positions)
    with pytest.raises(X.DDoSProtection, match="429"):  # binance: HTTP 429 -> DDoSProtection
        await aio(bn.fetch_positions)
    await aio(by.fetch_positions)  # faults used up
    await aio(bn.fetch_positions)
    # public endpoints are never faulted
    st.faults.http_5xx.append(CountedFault(1))
    await aio(by.fetch_ticker, BTC)
    assert st.faults.http_5xx[0].count == 1


@pytest.mark.parametrize("ex", EXCHANGES)
async def test_dropped_reply_times_out_but_the_order_was_executed(sim, clients, ex):
    st = sim.state
    client = clients(ex)
    await aio(client.load_markets)
    st.set_position(ex, "BTCUSDT", "long", "1", "60000")
    st.faults.drop_reply.append(CountedFault(1, ex))
    generous, client.timeout = client.timeout, 700  # a short timeout for the lost reply only
    t0 = time.monotonic()
    with pytest.raises(X.RequestTimeout):
        await aio(client.create_order, BTC, "market", "sell", 0.25, None, {"reduceOnly": True, "clientOrderId": "lost-1"})
    assert time.monotonic() - t0 > 0.6  # it waited for the reply until the client gave up
    client.timeout = generous
    assert st.position(ex, "BTCUSDT").qty == D("0.75")
    got = await order_by_client_id(client, BTC, "lost-1")  # the lookup finds it
    assert (got["status"], got["filled"]) == ("closed", 0.25)
    # a retry with the same client id is refused, so it cannot close twice
    with pytest.raises(X.ExchangeError):
        await aio(client.create_order, BTC, "market", "sell", 0.25, None, {"reduceOnly": True, "clientOrderId": "lost-1"})
    assert st.position(ex, "BTCUSDT").qty == D("0.75")


async def test_reject_next_fault_uses_the_exchange_code(sim, loaded):
    st = sim.state
    for ex in EXCHANGES:
        st.set_position(ex, "BTCUSDT", "long", "1", "60000")
    st.faults.reject_next.append(RejectRule(1, "110007", "bybit"))
    st.faults.reject_next.append(RejectRule(1, None, "binanceusdm"))  # default: -2022
    by, bn = loaded["bybit"], loaded["binanceusdm"]
    use_linear_error_table(bn)
    with pytest.raises(X.InsufficientFunds, match="110007"):
        await aio(by.create_order, BTC, "market", "sell", 0.1, None, {"reduceOnly": True, "clientOrderId": "f-1"})
    with pytest.raises(X.InvalidOrder, match="-2022"):
        await aio(bn.create_order, BTC, "market", "sell", 0.1, None, {"reduceOnly": True, "clientOrderId": "f-2"})
    # used up: the same client ids now go through (a rejected id is not "used")
    for client in (by, bn):
        await aio(client.create_order, BTC, "market", "sell", 0.1, None,
                  {"reduceOnly": True, "clientOrderId": "f-1" if client is by else "f-2"})
    assert [o.status for o in st.orders] == ["rejected", "rejected", "filled", "filled"]


async def test_binance_market_order_may_answer_new(sim, loaded):
    st = sim.state
    st.set_position("binanceusdm", "BTCUSDT", "long", "1", "60000")
    st.faults.binance_market_new = True
    bn = loaded["binanceusdm"]
    o = await aio(bn.create_order, BTC, "market", "sell", 0.1, None, {"reduceOnly": True, "clientOrderId": "n-1"})
    assert (o["status"], o["filled"]) == ("open", 0.0)
    got = await aio(bn.fetch_order, o["id"], BTC)
    assert (got["status"], got["filled"]) == ("closed", 0.1)


async def test_prices_are_reproducible_for_a_seed(aio_loop, nursery):
    tickers = []
    for seed in (11, 11, 12):
        sim = await nursery.start(partial(serve_simulator, seed=seed, tick_interval=None))
        for _ in range(40):
            sim.state.step_prices()
        c = make_client("bybit", sim.base_url)
        try:
            t = await aio(c.fetch_ticker, BTC)
        finally:
            await aio(c.close)
        tickers.append((t["bid"], t["ask"], t["last"]))
    assert tickers[0] == tickers[1]
    assert tickers[0] != tickers[2]


def test_price_path_is_seeded_per_symbol_and_well_formed():
    a, b = SimState(5), SimState(5)
    b.ensure_market("bybit", "PEPEUSDT", D("0.00001234"))  # an extra market changes nothing
    path_a, path_b = [], []
    for _ in range(300):
        a.step_prices()
        b.step_prices()
        path_a.append(a.quote("binanceusdm", "ETHUSDT"))
        path_b.append(b.quote("binanceusdm", "ETHUSDT"))
    strip = lambda qs: [(q.bid, q.ask, q.last) for q in qs]  # noqa: E731
    assert strip(path_a) == strip(path_b)
    assert len({q.last for q in path_a}) > 50  # it moves
    for ex in ("bybit", "binanceusdm"):
        for sid in a.markets(ex):
            m = a.market(ex, sid)
            q = a.quote(ex, sid)
            assert 0 < q.bid < q.ask and q.bid <= q.last <= q.ask
            assert m.on_tick(q.bid) and m.on_tick(q.ask) and m.on_tick(q.last)


async def test_private_calls_back_to_back_on_one_connection(sim, loaded):
    # Their latency (a Nagle/delayed-ACK stall would cost ~40 ms a call) is measured by
    # ``python -m bench.simulator_latency``; here only what they do is checked.
    st = sim.state
    for ex, client in loaded.items():
        st.set_position(ex, "BTCUSDT", "long", "100", "60000")
        await aio(client.fetch_positions)  # warm up (leverage brackets, connection)
        for i in range(15):
            await aio(client.create_order, BTC, "market", "sell", 0.001, None,
                      {"reduceOnly": True, "clientOrderId": f"lat-{i}"})
            [position] = [p for p in await aio(client.fetch_positions) if p["symbol"] == BTC]
            assert D(str(position["contracts"])) == D("100") - D("0.001") * (i + 1)
        assert st.position(ex, "BTCUSDT").qty == D("99.985")
    assert [o.status for o in st.orders] == ["filled"] * 30
