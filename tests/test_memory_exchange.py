"""Unit tests of doubles.exchange.MemoryExchange (pure trio, no sockets)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
import trio
import trio.testing

from exchanges.errors import (
    InsufficientLiquidityError,
    NonRetryableError,
    RetryableError,
    UnknownOutcomeError,
)
from doubles.exchange import MemoryExchange
from exchanges.port import ExchangePort, ExchangePosition, OrderResult, Quote

BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def make() -> MemoryExchange:
    ex = MemoryExchange(name="bybit")
    ex.set_position(BTC, "long", "0.5", "60000", opened_at=T0)
    ex.set_position(ETH, "short", "2", "3000")
    ex.set_quote(BTC, "60100", "60101", "60100.5")
    ex.set_quote(ETH, "2990", "2991")
    return ex


def test_satisfies_the_port_protocol():
    ex: ExchangePort = MemoryExchange()
    for name in ("load_markets", "fetch_positions", "fetch_quote", "create_close_order", "fetch_order_by_client_id", "close"):
        assert callable(getattr(ex, name))
    assert ex.name == "memory"


async def test_positions_and_quotes():
    ex = make()
    await ex.load_markets()
    positions = await ex.fetch_positions()
    assert positions == [
        ExchangePosition("bybit", BTC, "long", Decimal("0.5"), Decimal("60000"), T0),
        ExchangePosition("bybit", ETH, "short", Decimal("2"), Decimal("3000"), None),
    ]
    assert [p.symbol for p in await ex.fetch_positions([ETH])] == [ETH]
    q = await ex.fetch_quote(BTC)
    assert (q.bid, q.ask, q.last) == (Decimal("60100"), Decimal("60101"), Decimal("60100.5"))
    assert q.timestamp is not None and q.timestamp.tzinfo is not None
    empty = await ex.fetch_quote("SOL/USDT:USDT")
    assert empty == Quote("SOL/USDT:USDT", None, None, None, None)


async def test_market_close_long_fills_at_bid_and_goes_flat():
    ex = make()
    r = await ex.create_close_order(BTC, "long", Decimal("0.5"), "c1")
    assert r == OrderResult("c1", "bybit-1", "closed", Decimal("0.5"), Decimal("60100"), Decimal("0.5"))
    assert [p.symbol for p in await ex.fetch_positions()] == [ETH]
    assert ex.orders[0].order_side == "sell"


async def test_market_close_short_fills_at_ask():
    ex = make()
    r = await ex.create_close_order(ETH, "short", Decimal("1"), "c1")
    assert (r.status, r.filled_qty, r.avg_price) == ("closed", Decimal("1"), Decimal("2991"))
    (eth,) = await ex.fetch_positions([ETH])
    assert eth.qty == Decimal("1")
    assert ex.orders[0].order_side == "buy"


async def test_qty_rounded_down_to_lot():
    ex = make()
    r = await ex.create_close_order(BTC, "long", Decimal("0.12349"), "c1")
    assert r.requested_qty == Decimal("0.123") and r.filled_qty == Decimal("0.123")
    (btc,) = await ex.fetch_positions([BTC])
    assert btc.qty == Decimal("0.377")
    with pytest.raises(NonRetryableError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.0004"), "c2")
    assert e.value.code == "qty_below_lot_size"


async def test_reduce_only_enforced():
    ex = make()
    with pytest.raises(NonRetryableError) as e:
        await ex.create_close_order(BTC, "short", Decimal("0.1"), "wrong-side")  # would increase/open
    assert e.value.code == "reduce_only"
    ex.close_externally(BTC)
    with pytest.raises(NonRetryableError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "flat")
    assert e.value.code == "position_zero"
    assert ex.orders == []  # rejected orders are not on the exchange
    assert [r[1] for r in ex.rejections] == ["wrong-side", "flat"]
    assert await ex.fetch_order_by_client_id(BTC, "flat") is None


async def test_oversized_reduce_only_closes_position_and_no_more():
    ex = make()
    r = await ex.create_close_order(BTC, "long", Decimal("1.0"), "c1")
    assert r.status == "closed" and r.filled_qty == Decimal("0.5") and r.requested_qty == Decimal("1.0")
    assert await ex.fetch_positions([BTC]) == []

    strict = make()
    strict.strict_reduce_only_qty = True
    with pytest.raises(NonRetryableError):
        await strict.create_close_order(BTC, "long", Decimal("1.0"), "c1")


async def test_duplicate_client_id_is_unknown_outcome_and_not_executed():
    ex = make()
    await ex.create_close_order(BTC, "long", Decimal("0.1"), "dup")
    with pytest.raises(UnknownOutcomeError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "dup")
    assert e.value.code == "duplicate_client_order_id"
    assert len(ex.orders) == 1
    (btc,) = await ex.fetch_positions([BTC])
    assert btc.qty == Decimal("0.4")


async def test_lookup_by_client_id():
    ex = make()
    assert await ex.fetch_order_by_client_id(BTC, "nope") is None
    r = await ex.create_close_order(BTC, "long", Decimal("0.2"), "c1")
    assert await ex.fetch_order_by_client_id(BTC, "c1") == r
    assert await ex.fetch_order_by_client_id(ETH, "c1") is None  # other symbol


async def test_fail_next_with_instance_class_and_factory():
    ex = make()
    ex.fail_next(RetryableError("boom", code="503"))
    ex.fail_next(RetryableError, n=2)
    ex.fail_next(lambda: InsufficientLiquidityError("thin", code="-4131"))
    with pytest.raises(RetryableError) as e:
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "a1")
    assert e.value.code == "503"
    for _ in range(2):
        with pytest.raises(RetryableError):
            await ex.create_close_order(BTC, "long", Decimal("0.1"), "a2")
    with pytest.raises(InsufficientLiquidityError):
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "a3")
    # faults target create_close_order by default: other calls are unaffected
    assert len(await ex.fetch_positions()) == 2
    r = await ex.create_close_order(BTC, "long", Decimal("0.1"), "a4")
    assert r.status == "closed"
    assert [o.client_order_id for o in ex.orders] == ["a4"]


async def test_fail_next_on_other_methods():
    ex = make()
    ex.fail_next(RetryableError, method="fetch_positions")
    await ex.fetch_quote(BTC)  # not targeted
    await ex.create_close_order(ETH, "short", Decimal("0.1"), "ok")  # not targeted
    with pytest.raises(RetryableError):
        await ex.fetch_positions()
    assert len(await ex.fetch_positions()) == 2
    with pytest.raises(ValueError):
        ex.fail_next(RetryableError, method="nope")


async def test_fail_next_fifo_any_call():
    ex = make()
    ex.fail_next(RetryableError, method=None)
    with pytest.raises(RetryableError):
        await ex.fetch_quote(BTC)
    await ex.fetch_quote(BTC)


async def test_lose_reply_executes_then_raises_and_lookup_finds_it():
    ex = make()
    ex.lose_reply_next()
    with pytest.raises(UnknownOutcomeError):
        await ex.create_close_order(BTC, "long", Decimal("0.5"), "lost")
    assert await ex.fetch_positions([BTC]) == []
    found = await ex.fetch_order_by_client_id(BTC, "lost")
    assert found is not None and found.status == "closed" and found.filled_qty == Decimal("0.5")


async def test_partial_fill_ratio():
    ex = make()
    ex.partial_fill_ratio = Decimal("0.5")
    r = await ex.create_close_order(BTC, "long", Decimal("0.5"), "p1")
    assert r.status == "canceled" and r.filled_qty == Decimal("0.25") and r.requested_qty == Decimal("0.5")
    (btc,) = await ex.fetch_positions([BTC])
    assert btc.qty == Decimal("0.25")


async def test_limit_ioc_fills_only_when_the_touch_is_good_enough():
    ex = make()
    r = await ex.create_close_order(BTC, "long", Decimal("0.1"), "l1", limit_price=Decimal("60200"))
    assert r.status == "canceled" and r.filled_qty == 0 and r.avg_price is None
    r = await ex.create_close_order(BTC, "long", Decimal("0.1"), "l2", limit_price=Decimal("60000"))
    assert r.status == "closed" and r.avg_price == Decimal("60100")
    r = await ex.create_close_order(ETH, "short", Decimal("1"), "l3", limit_price=Decimal("2995"))
    assert r.status == "closed" and r.avg_price == Decimal("2991")
    assert ex.order("l1").type == "limit"


async def test_market_order_without_any_price_is_insufficient_liquidity():
    ex = make()
    ex.set_quote(BTC, None, None, None)
    with pytest.raises(InsufficientLiquidityError):
        await ex.create_close_order(BTC, "long", Decimal("0.1"), "m1")
    ex.set_quote(BTC, None, None, "60000")  # last price only: fills at last
    r = await ex.create_close_order(BTC, "long", Decimal("0.1"), "m2")
    assert r.avg_price == Decimal("60000")


async def test_symbols_restriction_and_input_validation():
    ex = MemoryExchange(symbols=[BTC])
    with pytest.raises(NonRetryableError) as e:
        await ex.fetch_quote(ETH)
    assert e.value.code == "bad_symbol"
    with pytest.raises(NonRetryableError):
        await ex.create_close_order(BTC, "up", Decimal("1"), "x")
    with pytest.raises(NonRetryableError):
        await ex.create_close_order(BTC, "long", Decimal("0"), "x")
    with pytest.raises(ValueError):
        ex.set_position(BTC, "long", "1", "1", opened_at=datetime(2024, 1, 1))


async def test_latency_uses_trio_time_and_close(autojump_clock):
    ex = make()
    ex.latency = 5.0
    start = trio.current_time()
    await ex.fetch_positions()
    assert trio.current_time() - start >= 5.0
    await ex.close()
    with pytest.raises(NonRetryableError):
        await ex.fetch_positions()


async def test_calls_are_recorded():
    ex = make()
    await ex.fetch_quote(BTC)
    await ex.create_close_order(BTC, "long", Decimal("0.1"), "c")
    assert [c[0] for c in ex.calls] == ["fetch_quote", "create_close_order"]
