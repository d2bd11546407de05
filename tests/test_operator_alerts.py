"""What a trader is told: ``[alerts] notify`` on a running service, delivered to a real
local HTTP receiver through the webhook sink.

Rules: real PostgreSQL, real clock, the in-memory exchange; the receiver is the one of
tests/test_alerts.py on loopback. Waits are for what the receiver got.
"""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
import trio

from actors.events import DETECTED, PHASE_CHANGED, EventBus, LifecycleEvent
from actors.operator import Hold
from doubles.exchange import MemoryExchange
from service.alerts import AlertRouter, WebhookSink
from service.config import DEFAULTS
from tests.support import MemoryFeed, make_service, wait_until
from tests.test_alerts import Receiver

SYMBOL = "BTC/USDT:USDT"


def posted(rx) -> list[dict]:
    return [json.loads(r["body"]) for r in rx.requests]


async def test_by_default_a_completed_close_and_an_operator_action_are_posted(db):
    now = datetime.now(UTC)
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "2", "100", opened_at=now - timedelta(hours=5))  # grace: breakeven 100.2
    ex.set_quote(SYMBOL, "99", "99.01", "99")
    feed = MemoryFeed("bybit")
    svc = make_service(db, ex, feed, origin=now)
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver().run)
        sink = WebhookSink(rx.url(), timeout=30, retries=0, backoff=0)
        router = AlertRouter([sink], notify=DEFAULTS.alerts.notify)
        router.subscribe(svc.bus)
        n.start_soon(router.run)
        n.start_soon(svc.run)
        await wait_until(lambda: len(svc.registry) == 1, "the aged position is watched")
        [aged_id] = svc.registry.states()
        await db.record_action(Hold(aged_id, now + timedelta(minutes=1), "a minute"), "api")
        await wait_until(lambda: len(rx.requests) == 1, "the hold announced")
        await db.record_action(Hold(aged_id, now - timedelta(minutes=1), "over"), "api")  # ends the hold
        await wait_until(lambda: len(rx.requests) == 2, "the second hold announced")
        ex.set_quote(SYMBOL, "101", "101.01", "101")
        feed.push(SYMBOL, bid="101", ask="101.01", last="101")
        await wait_until(lambda: len(rx.requests) == 3, "the close announced")
        svc.shutdown()
        n.cancel_scope.cancel()
    hold, _, closed = posted(rx)
    assert hold["type"] == "aged.operator.action" and hold["symbol"] == SYMBOL and hold["aged_id"] == str(aged_id)
    assert (hold["data"]["action"], hold["data"]["actor"], hold["data"]["reason"]) == ("hold", "api", "a minute")
    assert hold["data"]["outcome"].startswith("held until")
    assert closed["type"] == "aged.close.completed" and closed["exchange"] == "bybit" and closed["symbol"] == SYMBOL
    data = closed["data"]
    assert (data["side"], data["phase"], data["close_reason"]) == ("long", "grace", "profitable")
    assert D(data["price"]) == D(101) and D(data["pnl"]) > 0 and D(data["pnl_percent"]) > 0
    assert "close_reason=profitable" in closed["text"] and "side=long" in closed["text"]
    assert DETECTED not in [p["type"] for p in posted(rx)]  # not a kind the defaults name


async def test_the_default_kinds_pick_the_start_of_progressive_but_not_other_phase_changes():
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver().run)
        sink = WebhookSink(rx.url(), timeout=30, retries=0, backoff=0)
        router = AlertRouter([sink], notify=DEFAULTS.alerts.notify)
        bus = EventBus()
        router.subscribe(bus)
        n.start_soon(router.run)
        at = datetime(2026, 3, 1, tzinfo=UTC)
        bus.publish(LifecycleEvent(PHASE_CHANGED, at, None, "bybit", SYMBOL, {"to": "grace_active"}))
        bus.publish(LifecycleEvent(PHASE_CHANGED, at, None, "bybit", SYMBOL, {"to": "progressive_active"}))
        bus.publish(LifecycleEvent("aged.close.triggered", at, None, "bybit", SYMBOL, {}))
        bus.publish(LifecycleEvent("aged.close.completed", at, None, "bybit", SYMBOL, {"close_reason": "manual"}))
        # delivered in order: had the others been sent, they would be among the first two
        await wait_until(lambda: sink.delivered == 2, "two alerts delivered")
        n.cancel_scope.cancel()
    assert [(p["type"], p["data"]) for p in posted(rx)] == [
        (PHASE_CHANGED, {"to": "progressive_active"}), ("aged.close.completed", {"close_reason": "manual"})]


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="everything"):
        AlertRouter([], notify=["everything"])
