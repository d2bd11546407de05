"""The ccxt adapter (exchanges.ccxt_adapter / exchanges.clients) against the local simulator.

Rules for this module:

* loopback only: the simulator binds 127.0.0.1 on port 0 (an ephemeral port), one
  simulator per test, with the price walk off (``tick_interval=None``) so prices only
  change when a test sets them;
* real clock: ccxt's timeouts are real aiohttp timeouts, so no MockClock here;
* every ccxt call runs under the ``aio_loop`` fixture (trio-asyncio), the way the
  service runs it;
* faults are injected through the simulator's admin API (``/_sim/...``), never by
  reaching into ccxt.

The first block needs no simulator (client factory, error-table fix, key hygiene).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial

import aiohttp
import ccxt
import pytest
import trio
import trio_asyncio

from exchanges import rounding
from exchanges.ccxt_adapter import CcxtExchange
from exchanges.clients import credentials_from_env, make_ccxt_client, rewrite_api_urls
from exchanges.errors import (
    ExchangeError,
    InsufficientLiquidityError,
    NonRetryableError,
    RetryableError,
    UnknownOutcomeError,
)
from exchanges.port import ExchangePosition, LotLimits

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
EXCHANGES = ["bybit", "binanceusdm"]
REJECT_CODE = {"bybit": "110017", "binanceusdm": "-2022"}
DUPLICATE_CODE = {"bybit": "110072", "binanceusdm": "-4116"}
LIQUIDITY_CODE = {"bybit": 30208, "binanceusdm": -4131}


# --------------------------------------------------------------------------- no simulator


def _leaves(api):
    if isinstance(api, dict):
        for v in api.values():
            yield from _leaves(v)
    else:
        yield api


@pytest.mark.parametrize("name", EXCHANGES)
def test_factory_rewrites_every_api_url(name):
    base = "http://127.0.0.1:9/" + ("bybit" if name == "bybit" else "binance")
    client = make_ccxt_client(name, rest_url=base)
    leaves = list(_leaves(client.urls["api"]))
    assert leaves and all(isinstance(u, str) and u.startswith(base) for u in leaves)
    if name == "bybit":
        assert set(leaves) == {base}
        assert client.options["enableUnifiedAccount"] is True
        assert client.options["enableUnifiedMargin"] is False
        assert client.options["defaultType"] == "swap"
        assert client.options["fetchMarkets"]["types"] == ["linear"]
    else:
        assert client.urls["api"]["fapiPrivate"] == base + "/fapi/v1"
        assert client.urls["api"]["fapiPrivateV3"] == base + "/fapi/v3"
        assert client.urls["api"]["fapiPublicV2"] == base + "/fapi/v2"
    assert client.has["fetchCurrencies"] is False
    assert client.enableRateLimit is True


def test_rewrite_walks_nested_dicts():
    api = {"a": "https://x.example.com/p/v1", "b": {"c": "https://api.{hostname}", "d": 5}}
    out = rewrite_api_urls(api, "http://127.0.0.1:1/base/")
    assert out == {"a": "http://127.0.0.1:1/base/p/v1", "b": {"c": "http://127.0.0.1:1/base", "d": 5}}


def test_binance_error_table_found_with_overridden_url():
    plain = ccxt.async_support.binanceusdm()
    ours = make_ccxt_client("binanceusdm", rest_url="http://127.0.0.1:9/binance")
    url = "http://127.0.0.1:9/binance/fapi/v1/order"
    assert plain.get_exceptions_by_url(url, "exact") == {}  # ccxt alone: no table → ExchangeError
    assert ours.get_exceptions_by_url(url, "exact")["-2022"] is ccxt.InvalidOrder
    assert ours.get_exceptions_by_url("https://fapi.binance.com/fapi/v1/order", "exact")["-2022"] is ccxt.InvalidOrder
    with pytest.raises(ccxt.InvalidOrder):
        ours.handle_errors(400, "Bad Request", url, "POST", {}, '{"code":-2022,"msg":"ReduceOnly Order is rejected."}',
                           {"code": -2022, "msg": "ReduceOnly Order is rejected."}, {}, "")


def test_unsupported_exchange():
    with pytest.raises(ValueError):
        make_ccxt_client("kraken")
    with pytest.raises(ValueError):
        CcxtExchange("kraken", object())


def test_credentials_from_env(monkeypatch):
    monkeypatch.setenv("APM_TEST_KEY", "k-123")
    monkeypatch.setenv("APM_TEST_SECRET", "s-456")
    monkeypatch.setenv("APM_TEST_EMPTY", "")
    assert credentials_from_env("APM_TEST_KEY", "APM_TEST_SECRET") == ("k-123", "s-456")
    assert credentials_from_env("APM_TEST_EMPTY", "APM_TEST_MISSING_XYZ") == (None, None)


def test_close_quantity_stays_within_the_order_limits_of_its_type():
    limits = LotLimits(step=Decimal("0.01"), min_qty=Decimal("0.05"), max_market_qty=Decimal("5"),
                       max_limit_qty=Decimal("50"))
    assert rounding.close_quantity("bybit", "X/USDT:USDT", Decimal("7.999"), limits, limit=True) == "7.99"
    with pytest.raises(NonRetryableError) as e:
        rounding.close_quantity("bybit", "X/USDT:USDT", Decimal("7.999"), limits)  # a MARKET order of 7.99 > 5
    assert e.value.code == "qty_above_max"
    with pytest.raises(NonRetryableError) as e:
        rounding.close_quantity("bybit", "X/USDT:USDT", Decimal("0.049"), limits)
    assert e.value.code == "qty_below_min"  # 0.04 is a whole lot, but under the minimum order
    no_step = LotLimits()
    assert rounding.close_quantity("bybit", "X/USDT:USDT", Decimal("1.29"), no_step, fallback_step=Decimal("0.5")) == "1.0"
    with pytest.raises(NonRetryableError) as e:
        rounding.close_quantity("bybit", "X/USDT:USDT", Decimal("1"), no_step)
    assert e.value.code == "qty_rounding"


def test_limit_price_is_rounded_towards_the_better_side():
    tick = Decimal("0.5")
    assert rounding.limit_price("binanceusdm", Decimal("100.1"), tick, "sell") == "100.5"
    assert rounding.limit_price("binanceusdm", Decimal("100.4"), tick, "buy") == "100.0"
    with pytest.raises(NonRetryableError) as e:
        rounding.limit_price("binanceusdm", Decimal("0.2"), tick, "buy")  # floors to 0
    assert e.value.code == "bad_price"


@pytest.mark.parametrize("name", EXCHANGES)
def test_repr_and_logs_never_show_keys(name, caplog):
    key, secret = "KEY-verysecret-1234", "SECRET-topsecret-5678"
    ex = CcxtExchange.create(name, rest_url="http://127.0.0.1:9/x", api_key=key, secret=secret)
    for text in (repr(ex), str(ex), f"{ex}", repr([ex]), repr(vars(ex).keys())):
        assert key not in text and secret not in text
    assert "authenticated=True" in repr(ex)
    # ccxt logs request headers (with the API key) at DEBUG: the client's logger redacts
    client = ex._client
    with caplog.at_level(logging.DEBUG):
        client.logger.setLevel(logging.DEBUG)
        client.logger.debug("%s %s, Request: %s %s", "GET", "http://x", {"X-BAPI-API-KEY": key}, f"secret={secret}")
    assert caplog.records, "the debug record was emitted"
    for record in caplog.records:
        assert key not in record.getMessage() and secret not in record.getMessage()
    assert "***" in caplog.text


async def test_rate_limiter_credits_idle_time_but_still_paces_bursts(aio_loop, monkeypatch):
    # Whether the bucket makes a call wait is read from its pacing sleeps (ccxt's leaky
    # bucket sleeps ``delay`` while its tokens are negative), not from a stopwatch.
    client = make_ccxt_client("bybit", rest_url="http://127.0.0.1:9/bybit")  # rateLimit 20 ms
    throttle = trio_asyncio.aio_as_trio(client.throttle)
    pacing = client.throttler.config["delay"]
    waits = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay, *args, **kwargs):
        if delay == pacing:
            waits.append(delay)
        return await real_sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    try:
        await throttle(5)  # costs 5 x 20 ms = 100 ms of budget
        assert waits == []  # a full bucket: no wait
        start = trio.current_time()
        await throttle(5)  # a burst: waits for the first call's budget
        assert waits and trio.current_time() - start >= 0.08
        await trio.sleep(0.15)  # idle longer than the debt
        waits.clear()
        await throttle(5)  # ccxt's stock bucket would wait ~100 ms again here
        assert waits == [], "the idle time was not credited: the call after a pause was paced"
    finally:
        await trio_asyncio.aio_as_trio(client.close)()


# --------------------------------------------------------------------------- simulator

serve_simulator = None
try:
    from simulator.server import serve_simulator  # noqa: F811
except ImportError:  # pragma: no cover - the simulator is built by another helper
    pass

needs_sim = pytest.mark.skipif(serve_simulator is None, reason="simulator.server not available")


@pytest.fixture
async def sim(nursery):
    return await nursery.start(partial(serve_simulator, "127.0.0.1", 0, 0, tick_interval=None))


async def admin(sim, method: str, path: str, body: dict | None = None):
    """Call the simulator's admin API (aiohttp under trio-asyncio)."""

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.request(method, sim.admin_url + path, json=body) as resp:
                data = await resp.json(content_type=None)
                assert resp.status == 200, (method, path, body, resp.status, data)
                return data

    return await trio_asyncio.aio_as_trio(go)()


def rest_url(sim, name: str) -> str:
    return sim.base_url + ("/bybit" if name == "bybit" else "/binance")


async def open_adapter(sim, name: str, *, timeout_ms: int = 30_000, secret: str = "sim-secret") -> CcxtExchange:
    ex = CcxtExchange.create(name, rest_url=rest_url(sim, name), api_key="sim-key", secret=secret, timeout_ms=timeout_ms)
    await ex.load_markets()
    return ex


@pytest.fixture(params=EXCHANGES)
async def ex(request, aio_loop, sim):
    adapter = await open_adapter(sim, request.param)
    try:
        yield adapter
    finally:
        with trio.CancelScope(shield=True):
            await adapter.close()


async def set_position(sim, ex, symbol, side, qty, entry, opened_at=T0):
    body = {"exchange": ex.name, "symbol": symbol, "side": side, "qty": qty, "entry_price": entry}
    if opened_at is not None:
        body["opened_at"] = opened_at.isoformat()
    await admin(sim, "POST", "/positions", body)


async def set_prices(sim, ex, symbol, bid, ask, last):
    await admin(sim, "POST", "/prices", {"exchange": ex.name, "symbol": symbol, "bid": bid, "ask": ask, "last": last})


async def faults(sim, body):
    await admin(sim, "POST", "/faults", body)


async def sim_orders(sim, ex):
    return await admin(sim, "GET", f"/orders?exchange={ex.name}")


@needs_sim
async def test_load_markets(ex):
    assert {BTC, ETH} <= ex.symbols
    assert all(s.endswith(":USDT") for s in ex.symbols)
    with pytest.raises(NonRetryableError) as e:
        await ex.fetch_quote("NOPE/USDT:USDT")
    assert e.value.code == "bad_symbol"


@needs_sim
async def test_price_tick_comes_from_the_loaded_markets(ex):
    from exchanges.dry_run import DryRunExchange  # noqa: PLC0415

    assert ex.price_tick(BTC) == Decimal("0.1") and ex.price_tick(ETH) == Decimal("0.01")
    assert ex.price_tick("NOPE/USDT:USDT") is None
    assert DryRunExchange(ex).price_tick(BTC) == Decimal("0.1")


@needs_sim
async def test_a_market_listed_after_loading_is_found_and_closable(sim, ex):
    await set_position(sim, ex, "NEWCOIN/USDT:USDT", "long", "10", "2.5")
    await set_prices(sim, ex, "NEWCOIN/USDT:USDT", "2.6", "2.61", "2.6")
    [p] = await ex.fetch_positions(["NEWCOIN/USDT:USDT"])
    assert p.qty == Decimal(10)
    assert (await ex.fetch_quote("NEWCOIN/USDT:USDT")).bid == Decimal("2.6")
    result = await ex.create_close_order("NEWCOIN/USDT:USDT", "long", Decimal(10), "apm-new-1")
    assert result.filled_qty == Decimal(10)
    # an unknown symbol does not reload the market list on every call
    calls_before = ex._last_reload
    with pytest.raises(NonRetryableError):
        await ex.fetch_quote("NOPE/USDT:USDT")
    assert ex._last_reload == calls_before


@needs_sim
async def test_fetch_positions(sim, ex):
    assert await ex.fetch_positions() == []
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    await set_position(sim, ex, ETH, "short", "2", "3000.5")
    positions = sorted(await ex.fetch_positions(), key=lambda p: p.symbol)
    # No open time from the position list: Bybit's createdTime is the first position ever on
    # the symbol and Binance's updateTime moves on every change. Both tell *when it changed*.
    assert positions == [
        ExchangePosition(ex.name, BTC, "long", Decimal("0.5"), Decimal("60000"), None, T0),
        ExchangePosition(ex.name, ETH, "short", Decimal("2"), Decimal("3000.5"), None, T0),
    ]
    assert all(isinstance(p.qty, Decimal) and p.qty > 0 for p in positions)
    only = await ex.fetch_positions([ETH])
    assert [p.symbol for p in only] == [ETH]
    two = await ex.fetch_positions([ETH, BTC])
    assert len(two) == 2


@needs_sim
async def test_position_mode_and_hedge_mode_positions(sim, ex, caplog):
    # Binance answers from its account setting; Bybit only from open positions.
    assert await ex.position_mode() == ("unknown" if ex.name == "bybit" else "one_way")
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    assert await ex.position_mode() == "one_way"
    assert len(await ex.fetch_positions()) == 1
    await admin(sim, "POST", "/mode", {"exchange": ex.name, "hedge": True})
    assert await ex.position_mode() == "hedge"
    if ex.name == "binanceusdm":  # flat: the account setting answers
        sim.state.positions.clear()
        assert await ex.position_mode() == "hedge"
        await set_position(sim, ex, BTC, "long", "0.5", "60000")
    # a hedge-mode position cannot be closed by our orders: not reported, one error per symbol and side
    assert await ex.fetch_positions() == [] and await ex.fetch_positions([BTC]) == []
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "hedge-mode" in r.getMessage()]
    assert len(errors) == 1 and "BTCUSDT" in errors[0], errors
    await admin(sim, "POST", "/mode", {"exchange": ex.name, "hedge": False})
    assert [p.symbol for p in await ex.fetch_positions()] == [BTC]


@needs_sim
async def test_fetch_quote(sim, ex):
    await set_prices(sim, ex, BTC, "60000.1", "60000.3", "60000.2")
    q = await ex.fetch_quote(BTC)
    assert (q.symbol, q.bid, q.ask, q.last) == (BTC, Decimal("60000.1"), Decimal("60000.3"), Decimal("60000.2"))
    assert all(isinstance(v, Decimal) for v in (q.bid, q.ask, q.last))
    assert q.timestamp is None or q.timestamp.tzinfo is not None


@needs_sim
async def test_market_close_long_goes_flat(sim, ex):
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    await set_prices(sim, ex, BTC, "61000.0", "61000.5", "61000.2")
    r = await ex.create_close_order(BTC, "long", Decimal("0.5"), "apm-1-1")
    assert (r.client_order_id, r.status, r.filled_qty, r.avg_price) == ("apm-1-1", "closed", Decimal("0.5"), Decimal("61000.0"))
    assert r.exchange_order_id and r.requested_qty == Decimal("0.5")
    assert await ex.fetch_positions([BTC]) == []
    (order,) = await sim_orders(sim, ex)
    assert (order["side"], order["type"], order["reduce_only"], order["client_order_id"]) == ("sell", "market", True, "apm-1-1")


@needs_sim
async def test_market_close_short_partially(sim, ex):
    await set_position(sim, ex, ETH, "short", "2", "3000")
    await set_prices(sim, ex, ETH, "2990.00", "2990.50", "2990.20")
    r = await ex.create_close_order(ETH, "short", Decimal("0.75"), "apm-2-1")
    assert (r.status, r.filled_qty, r.avg_price) == ("closed", Decimal("0.75"), Decimal("2990.50"))
    (eth,) = await ex.fetch_positions([ETH])
    assert (eth.side, eth.qty) == ("short", Decimal("1.25"))
    (order,) = await sim_orders(sim, ex)
    assert order["side"] == "buy" and order["reduce_only"] is True


@needs_sim
async def test_qty_rounded_down_to_lot_size(sim, ex):
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    r = await ex.create_close_order(BTC, "long", Decimal("0.12399"), "apm-3-1")  # step 0.001
    assert r.requested_qty == Decimal("0.123") and r.filled_qty == Decimal("0.123")
    (order,) = await sim_orders(sim, ex)
    assert Decimal(order["qty"]) == Decimal("0.123")
    with pytest.raises(NonRetryableError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.0009"), "apm-3-2")
    assert e.value.code == "qty_below_lot_size"


@needs_sim
async def test_limit_ioc_close(sim, ex):
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    await set_prices(sim, ex, BTC, "60000.0", "60000.5", "60000.2")
    # aggressive sell limit below the bid: fills at the bid; the limit is the worst price
    # accepted, so it is rounded to the tick towards the better side (up for a sell)
    r = await ex.create_close_order(BTC, "long", Decimal("0.2"), "apm-4-1", limit_price=Decimal("59990.07"))
    assert (r.status, r.filled_qty, r.avg_price) == ("closed", Decimal("0.2"), Decimal("60000.0"))
    # a sell limit above the bid does not cross: IOC cancels unfilled
    r = await ex.create_close_order(BTC, "long", Decimal("0.2"), "apm-4-2", limit_price=Decimal("60100"))
    assert (r.status, r.filled_qty, r.avg_price) == ("canceled", Decimal("0"), None)
    (btc,) = await ex.fetch_positions([BTC])
    assert btc.qty == Decimal("0.3")
    o1, o2 = await sim_orders(sim, ex)
    assert (o1["type"], o1["time_in_force"], Decimal(o1["price"])) == ("limit", "IOC", Decimal("59990.1"))
    assert o1["reduce_only"] is True and o2["time_in_force"] == "IOC"


@needs_sim
async def test_lookup_by_client_id(sim, ex):
    assert await ex.fetch_order_by_client_id(BTC, "never-sent") is None
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    await set_prices(sim, ex, BTC, "60000.0", "60000.5", "60000.2")
    r = await ex.create_close_order(BTC, "long", Decimal("0.5"), "apm-5-1")
    found = await ex.fetch_order_by_client_id(BTC, "apm-5-1")
    assert found is not None
    assert (found.client_order_id, found.exchange_order_id, found.status, found.filled_qty, found.avg_price) == (
        "apm-5-1", r.exchange_order_id, "closed", Decimal("0.5"), Decimal("60000.0"))
    assert await ex.fetch_order_by_client_id(BTC, "apm-5-2") is None


@needs_sim
async def test_reduce_only_rejection_is_non_retryable_with_code(sim, ex):
    # no position at all
    with pytest.raises(NonRetryableError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "apm-6-1")
    assert e.value.code == REJECT_CODE[ex.name] and e.value.exchange == ex.name
    assert isinstance(e.value.__cause__, ccxt.InvalidOrder)  # binance: the error-table fix
    # a close of the wrong side would open/increase: rejected too
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    with pytest.raises(NonRetryableError) as e:
        await ex.create_close_order(BTC, "short", Decimal("0.1"), "apm-6-2")
    assert e.value.code == REJECT_CODE[ex.name]
    (btc,) = await ex.fetch_positions([BTC])
    assert btc.qty == Decimal("0.5")


@needs_sim
async def test_injected_rejection_codes(sim, ex):
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    await faults(sim, {"reject_next": {"count": 1, "code": int(REJECT_CODE[ex.name])}})
    with pytest.raises(NonRetryableError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "apm-7-1")
    assert e.value.code == REJECT_CODE[ex.name]
    await faults(sim, {"reject_next": {"count": 1, "code": LIQUIDITY_CODE[ex.name]}})
    with pytest.raises(InsufficientLiquidityError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "apm-7-2")
    assert e.value.code == str(LIQUIDITY_CODE[ex.name])
    r = await ex.create_close_order(BTC, "long", Decimal("0.1"), "apm-7-3")
    assert r.status == "closed"


@needs_sim
async def test_duplicate_client_id_is_unknown_outcome(sim, ex):
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    first = await ex.create_close_order(BTC, "long", Decimal("0.1"), "apm-8-1")
    with pytest.raises(UnknownOutcomeError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "apm-8-1")
    assert e.value.code == DUPLICATE_CODE[ex.name]
    found = await ex.fetch_order_by_client_id(BTC, "apm-8-1")
    assert found is not None and found.exchange_order_id == first.exchange_order_id
    (btc,) = await ex.fetch_positions([BTC])
    assert btc.qty == Decimal("0.4")  # the duplicate did not execute


@needs_sim
async def test_http_5xx_is_retryable_and_unknown_during_create(sim, ex):
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    await faults(sim, {"http_5xx": 1})
    with pytest.raises(RetryableError) as e:
        await ex.fetch_positions()
    assert e.value.code == "503"
    assert len(await ex.fetch_positions()) == 1
    # during create a 5xx may hide an executed order: unknown outcome, then look it up
    await faults(sim, {"http_5xx": 1})
    with pytest.raises(UnknownOutcomeError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "apm-9-1")
    assert e.value.code == "503"
    assert await ex.fetch_order_by_client_id(BTC, "apm-9-1") is None
    r = await ex.create_close_order(BTC, "long", Decimal("0.1"), "apm-9-2")
    assert r.status == "closed"


@needs_sim
async def test_rate_limit_is_retryable_with_retry_after(sim, ex):
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    await faults(sim, {"rate_limit_429": 1})
    with pytest.raises(RetryableError) as e:
        await ex.fetch_positions()
    assert e.value.retry_after is not None and 0 <= e.value.retry_after <= 2
    await trio.sleep(ex.ban_remaining())  # the adapter holds every request back until then
    # refused before processing: retryable even during create (not unknown)
    await faults(sim, {"rate_limit_429": 1})
    with pytest.raises(RetryableError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "apm-10-1")
    assert type(e.value) is RetryableError
    await trio.sleep(ex.ban_remaining())
    assert await ex.fetch_order_by_client_id(BTC, "apm-10-1") is None
    r = await ex.create_close_order(BTC, "long", Decimal("0.1"), "apm-10-1")
    assert r.status == "closed"


@needs_sim
@pytest.mark.parametrize("name", EXCHANGES)
async def test_dropped_reply_is_unknown_outcome_then_found(aio_loop, sim, name):
    ex = await open_adapter(sim, name)
    try:
        await set_position(sim, ex, BTC, "long", "0.5", "60000")
        await set_prices(sim, ex, BTC, "60000.0", "60000.5", "60000.2")
        await faults(sim, {"drop_reply": 1})
        generous, ex._client.timeout = ex._client.timeout, 800  # a short timeout for the lost reply only
        with pytest.raises(UnknownOutcomeError):
            await ex.create_close_order(BTC, "long", Decimal("0.5"), "apm-11-1")
        ex._client.timeout = generous
        found = await ex.fetch_order_by_client_id(BTC, "apm-11-1")
        assert found is not None
        assert (found.status, found.filled_qty, found.avg_price) == ("closed", Decimal("0.5"), Decimal("60000.0"))
        assert await ex.fetch_positions([BTC]) == []
    finally:
        with trio.CancelScope(shield=True):
            await ex.close()


@needs_sim
async def test_partial_fill(sim, ex):
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    await faults(sim, {"partial_fill_ratio": "0.5"})
    r = await ex.create_close_order(BTC, "long", Decimal("0.5"), "apm-12-1")
    assert r.filled_qty == Decimal("0.25") and r.filled_qty < r.requested_qty
    assert r.status == "canceled"  # the market remainder expired
    (btc,) = await ex.fetch_positions([BTC])
    assert btc.qty == Decimal("0.25")
    await admin(sim, "DELETE", "/faults")
    r = await ex.create_close_order(BTC, "long", Decimal("0.25"), "apm-12-2")
    assert r.status == "closed" and await ex.fetch_positions([BTC]) == []


@needs_sim
@pytest.mark.parametrize("name", ["binanceusdm"])
async def test_binance_market_order_answered_new_is_followed_up(aio_loop, sim, name):
    ex = await open_adapter(sim, name)
    try:
        await set_position(sim, ex, BTC, "long", "0.5", "60000")
        await set_prices(sim, ex, BTC, "60000.0", "60000.5", "60000.2")
        await faults(sim, {"binance_market_new": True})
        r = await ex.create_close_order(BTC, "long", Decimal("0.5"), "apm-13-1")
        assert (r.status, r.filled_qty, r.avg_price) == ("closed", Decimal("0.5"), Decimal("60000.0"))
    finally:
        with trio.CancelScope(shield=True):
            await ex.close()


@needs_sim
async def test_position_closed_behind_our_back(sim, ex):
    await set_position(sim, ex, BTC, "long", "0.5", "60000")
    await faults(sim, {"close_position": {"exchange": ex.name, "symbol": BTC}})
    assert await ex.fetch_positions() == []
    with pytest.raises(NonRetryableError):
        await ex.create_close_order(BTC, "long", Decimal("0.5"), "apm-14-1")


@needs_sim
@pytest.mark.parametrize("name", EXCHANGES)
async def test_bad_credentials_are_non_retryable(aio_loop, sim, name):
    ex = await open_adapter(sim, name, secret="wrong-secret")
    try:
        with pytest.raises(NonRetryableError) as e:
            await ex.fetch_positions()
        assert e.value.code is not None
        assert "wrong-secret" not in str(e.value) and "wrong-secret" not in repr(ex)
    finally:
        with trio.CancelScope(shield=True):
            await ex.close()


@needs_sim
@pytest.mark.parametrize("name", EXCHANGES)
async def test_unreachable_exchange_is_retryable(aio_loop, name):
    # a port nothing listens on (bind, learn the port, close): connection refused
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    ex = CcxtExchange.create(name, rest_url=f"http://127.0.0.1:{port}/x", api_key="k", secret="s", timeout_ms=2000)
    try:
        with pytest.raises(RetryableError):
            await ex.load_markets()
    finally:
        with trio.CancelScope(shield=True):
            await ex.close()


@needs_sim
async def test_only_port_errors_escape(sim, ex):
    """Every failure path above raised ExchangeError subclasses; spot-check a few more."""
    await faults(sim, {"http_5xx": 3})
    for call in (ex.fetch_positions, partial(ex.fetch_order_by_client_id, BTC, "x")):
        with pytest.raises(ExchangeError) as e:
            await call()
        assert not isinstance(e.value, ccxt.BaseError)


@needs_sim
@pytest.mark.parametrize("name", EXCHANGES)
async def test_markets_load_lazily_once_under_concurrency(aio_loop, sim, name):
    ex = CcxtExchange.create(name, rest_url=rest_url(sim, name), api_key="sim-key", secret="sim-secret")
    try:
        await set_prices(sim, ex, BTC, "60000.0", "60000.5", "60000.2")
        quotes = []

        async def one():
            quotes.append(await ex.fetch_quote(BTC))

        async with trio.open_nursery() as n:
            for _ in range(3):
                n.start_soon(one)
        assert [q.bid for q in quotes] == [Decimal("60000.0")] * 3
        assert BTC in ex.symbols
    finally:
        with trio.CancelScope(shield=True):
            await ex.close()


@needs_sim
async def test_fill_history_of_symbols_listed_after_the_markets_were_loaded(sim, ex):
    """The opening fill of a position is found even on a symbol the market list does not
    know yet (a new listing); the market list is reloaded at most once in a while."""
    await ex.load_markets()
    now = datetime.now(timezone.utc)
    opened = now - timedelta(hours=2)
    for coin in ("FRESHA", "FRESHB"):  # the second is listed right after the reload the first caused
        await set_position(sim, ex, f"{coin}/USDT:USDT", "long", "10", "2.5", opened_at=opened)
        fills = await ex.fetch_fills(f"{coin}/USDT:USDT", now - timedelta(days=1), now + timedelta(seconds=5))
        assert [(f.side, f.qty) for f in fills] == [("buy", Decimal(10))]
        assert abs((fills[0].time - opened).total_seconds()) < 0.002
