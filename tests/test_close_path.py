"""The close path around the executor: what the position logic asks for and does with
the answer (the policy's price bound, size updates, ``dust``), the ``dust`` status in
PostgreSQL, a manual close recorded when no actor runs, and the visibility of a rate
limit / ban (classification, ``/health``, the metric).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from types import SimpleNamespace
from uuid import uuid4

import ccxt
import pytest
import trio

from actors.policy import PolicyConfig
from actors.position import (
    CloseResult, Emit, Persist, PositionState, PositionUpdate, PositionVanished, RequestClose, Settings, Start, Stop,
    Tick, step,
)
from exchanges.ccxt_adapter import CcxtExchange
from exchanges.classify import classify
from exchanges.errors import RetryableError
from doubles.exchange import MemoryExchange
from service.http import health_report
from service.metrics import Metrics
from storage import ops as op
from tests.support import MemoryFeed, make_service, push_prices

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
SYMBOL = "BTC/USDT:USDT"


def h(hours) -> datetime:
    return T0 + timedelta(hours=hours)


def new_state(side="long", qty=D(2), **kw) -> PositionState:
    return PositionState(aged_id=uuid4(), position_id=1, exchange="bybit", symbol=SYMBOL, side=side,
                         entry_price=D(100), quantity=qty, opened_at=T0, config=PolicyConfig(), **kw)


def of(kind, cmds):
    return [c for c in cmds if isinstance(c, kind)]


# --------------------------------------------------------------------------- position logic


def test_a_close_request_carries_the_price_the_policy_accepts():
    s, _ = step(new_state(), Start(h(5)))  # grace: breakeven 100.2
    s, cmds = step(s, Tick(h(6), bid=D("100.3"), ask=D("100.4")))
    [req] = of(RequestClose, cmds)
    assert req.worst_price == D("100.2") and not req.emergency
    short, _ = step(new_state(side="short"), Start(h(20)))  # progressive: 4.5 % loss allowed
    short, cmds = step(short, Tick(h(20), bid=D("104"), ask=D("104.1")))
    [req] = of(RequestClose, cmds)
    assert req.worst_price == D("104.5")
    urgent, _ = step(new_state(settings=Settings(emergency_close_after_hours=D(12))), Start(h(5)))
    urgent, cmds = step(urgent, Tick(h(13), bid=D("50"), ask=D("50.1")))
    [req] = of(RequestClose, cmds)
    assert req.emergency and req.worst_price is None  # an emergency close accepts any price


def test_size_updates_change_what_a_close_asks_for():
    s, _ = step(new_state(qty=D(2)), Start(h(5)))
    s, cmds = step(s, PositionUpdate(h(5), quantity=D("0.5")))
    assert s.quantity == D("0.5") and Persist(quantity=D("0.5")) in cmds
    s, cmds = step(s, Tick(h(6), bid=D("100.3"), ask=D("100.4")))
    [req] = of(RequestClose, cmds)
    assert req.qty == D("0.5")


def test_dust_ends_the_close_with_one_alert():
    s, _ = step(new_state(qty=D(2)), Start(h(5)))
    s, _ = step(s, Tick(h(6), bid=D("100.3"), ask=D("100.4")))
    assert s.close_in_flight
    s, cmds = step(s, CloseResult(h(6), "dust", filled_qty=D("1.995"), avg_price=D("100.3"),
                                  remaining_qty=D("0.005"), attempts=2, error="below the minimum"))
    assert s.status == "dust" and not s.close_in_flight
    assert (s.quantity, s.closed_qty, s.close_attempts) == (D("0.005"), D("1.995"), 2)
    [persist] = [c for c in of(Persist, cmds) if "status" in c.fields]
    assert persist.fields["status"] == "dust" and persist.fields["quantity"] == D("0.005")
    [alert] = of(Emit, cmds)
    assert alert.event_type == "aged.close.dust" and alert.critical and alert.data["remaining_qty"] == "0.005"
    assert of(Stop, cmds) and not of(RequestClose, cmds)
    # a restart does not bring the close back; ticks change nothing; a vanished position is closed
    again, cmds = step(s, Start(h(7)))
    assert of(Stop, cmds) and not of(RequestClose, cmds) and not of(Emit, cmds)
    assert step(s, Tick(h(8), bid=D(200), ask=D(201))) == (s, [])
    closed, cmds = step(s, PositionVanished(h(9)))
    assert closed.status == "closed"


# --------------------------------------------------------------------------- PostgreSQL


async def test_the_dust_status_is_allowed_in_the_database(db):
    position = await db.upsert_open_position(exchange="bybit", symbol=SYMBOL, side="long", quantity=D("0.005"),
                                             entry_price=D(100), opened_at=T0)
    aged, _ = await db.create_aged_position(position, detected_at=h(4), status="grace_active", target_price=D(1),
                                            breakeven_price=D(1), loss_tolerance_percent=D(0), hours_aged=D(4),
                                            config={})
    await db.write_batch([op.UpdateAged(aged["id"], Persist(status="dust", quantity=D("0.005")))])
    row = await db.aged_position(aged["id"])
    assert (row["status"], row["quantity"]) == ("dust", D("0.005"))
    assert [r["to_status"] for r in await db.history(aged["id"])] == ["grace_active", "dust"]
    with pytest.raises(Exception, match="check"):
        await db.write_batch([op.UpdateAged(aged["id"], Persist(status="crumbs"))])


async def wait_for(predicate, timeout=3600.0, interval=1.0):
    """Wait (virtual time) for ``predicate``; the detector polls every 30 s, so an hour is ample."""
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(interval)


async def test_a_dust_position_stops_once_and_its_manual_close_is_recorded_without_an_actor(mock_clock, mdb):
    db = mdb
    ex = MemoryExchange(name="bybit", min_qty=D("0.01"))
    ex.set_position(SYMBOL, "long", "0.005", "100", opened_at=T0)
    feed = MemoryFeed("bybit")
    svc = make_service(db, ex, feed, origin=T0 + timedelta(hours=4), poll_interval=30,
                       settings=Settings(sample_interval=timedelta(minutes=10), error_cooldown=timedelta(seconds=60)))

    async def status():
        rows = await db.fetch("SELECT * FROM monitoring.aged_positions")
        return rows[0]["status"] if rows else None

    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        n.start_soon(push_prices, svc, feed, lambda now: ("101", "101.1"))  # above breakeven: close now

        async def is_dust():
            return await status() == "dust"
        await wait_for(is_dust)
        await trio.sleep(3600)  # an hour later: still dust, no retries, no more alerts
        [row] = await db.fetch("SELECT * FROM monitoring.aged_positions")
        assert row["status"] == "dust" and row["quantity"] == D("0.005")
        assert len(await db.events(row["id"], "aged.close.dust")) == 1
        assert await db.events(row["id"], "aged.close.failed") == []
        assert ex.orders == [] and not svc.is_watching(row["id"])
        ex.close_externally(SYMBOL)  # someone sweeps the dust: no actor runs, the detector records it

        async def closed():
            return await status() == "closed"
        await wait_for(closed)
        svc.shutdown()
        n.cancel_scope.cancel()
    [row] = await db.fetch("SELECT * FROM monitoring.aged_positions")
    assert row["close_reason"] == "manual"


# --------------------------------------------------------------------------- bans


def test_a_bybit_ip_ban_waits_ten_minutes():
    exc = ccxt.RateLimitExceeded("bybit GET https://api.bybit.com/v5/position/list 403 Forbidden access too frequent")
    err = classify(exc, during_order_create=False, exchange="bybit")
    assert isinstance(err, RetryableError) and err.retry_after == 600.0


def test_a_binance_ban_waits_until_its_end():
    until = int((datetime.now(timezone.utc).timestamp() + 120) * 1000)
    exc = ccxt.DDoSProtection(f'binanceusdm 418 {{"code":-1003,"msg":"Way too much request weight used; IP banned '
                              f'until {until}. Please use WebSocket Streams for live updates to avoid bans."}}')
    err = classify(exc, during_order_create=True, exchange="binanceusdm")
    assert type(err) is RetryableError and 100 < err.retry_after <= 120


class _Sup:
    running = True

    def healthy(self):
        return True

    def children(self):
        return {}


class _Service:
    def __init__(self, exchanges):
        self.root, self.positions, self.exchanges = _Sup(), _Sup(), exchanges


async def test_a_ban_shows_in_health_and_metrics():
    client = SimpleNamespace(load_markets=None)  # never called: the gate answers first
    adapter = CcxtExchange("binanceusdm", client=client)
    other = CcxtExchange("bybit", client=client)
    svc = _Service({"binanceusdm": adapter, "bybit": other})
    ok, body = health_report(svc)
    assert ok and body["exchanges"]["binanceusdm"] == {"banned": False}
    adapter._close_gate(RetryableError("-1003: banned", exchange="binanceusdm", code="-1003", retry_after=90.0))
    ok, body = health_report(svc)
    ban = body["exchanges"]["binanceusdm"]
    assert ok and ban["banned"] and 0 < ban["seconds_left"] <= 90 and "-1003" in ban["reason"]
    assert body["exchanges"]["bybit"] == {"banned": False} and len(body["warnings"]) == 1
    with pytest.raises(RetryableError) as e:  # every caller is held back, before any request
        await adapter.fetch_quote(SYMBOL)
    assert e.value.code == "banned"
    metrics = Metrics()
    metrics.service = svc
    metrics._refresh_exchanges()
    value = metrics.registry.get_sample_value
    assert 0 < value("aged_exchange_ban_seconds", {"exchange": "binanceusdm"}) <= 90
    assert value("aged_exchange_ban_seconds", {"exchange": "bybit"}) == 0
    assert value("aged_exchange_bans_total", {"exchange": "binanceusdm"}) == 1
