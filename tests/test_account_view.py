"""The account view: what the private stream said, and when it can be trusted.

Unit tests of :class:`feeds.account_view.AccountView` on trio's autojump MockClock,
fed directly as the stream actor feeds it. Events are built as the protocols build them
(see tests/test_account_parsing.py for the real payloads behind them).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import trio

from exchanges.port import ExchangePosition
from feeds.account_events import Execution, OrderChange, PositionChange
from feeds.account_view import AccountView, AccountViewUnavailable, Snapshot, order_result

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SYM = "BTC/USDT:USDT"


def change(side, qty, entry=None, *, at=0, symbol=SYM):
    return PositionChange(
        "binanceusdm",
        symbol,
        side,
        Decimal(qty),
        None if entry is None else Decimal(entry),
        T0 + timedelta(seconds=at),
        "ORDER",
    )


def order(cid, status, filled="0", *, avg=None, at=0):
    return OrderChange(
        "binanceusdm",
        SYM,
        cid,
        "8886774",
        "sell",
        status,
        Decimal(filled),
        None if avg is None else Decimal(avg),
        Decimal("1"),
        True,
        T0 + timedelta(seconds=at),
    )


def rest(qty, entry, *, at=0, side="long", symbol=SYM):
    return ExchangePosition(
        "binanceusdm", symbol, side, Decimal(qty), Decimal(entry), updated_at=T0 + timedelta(seconds=at)
    )


def drain(view):
    out = []
    while True:
        try:
            out.append(view.changes.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_not_healthy_until_connected_and_synced(autojump_clock):
    view = AccountView("binanceusdm", stale_after=10)
    with pytest.raises(AccountViewUnavailable, match="down"):
        view.position(SYM)
    view.connected()
    assert not view.healthy
    with pytest.raises(AccountViewUnavailable, match="not yet synced"):
        view.position(SYM)
    view.synced([rest("2", "100")])
    assert view.healthy
    assert view.position(SYM) == rest("2", "100")
    assert view.position("ETH/USDT:USDT") is None  # absent from the snapshot: flat


async def test_silence_makes_it_unhealthy_and_a_frame_heals_it(autojump_clock):
    view = AccountView("binanceusdm", stale_after=10)
    view.connected()
    view.synced([])
    await trio.sleep(9.5)
    assert view.healthy
    await trio.sleep(1)
    assert not view.healthy
    with pytest.raises(AccountViewUnavailable, match="silent"):
        view.position(SYM)
    view.heard()
    assert view.healthy


async def test_events_while_syncing_are_applied_after_the_snapshot_unless_older(autojump_clock):
    view = AccountView("binanceusdm")
    view.connected()
    view.apply(change("long", "3", "101", at=5))  # newer than the snapshot: wins
    view.apply(change("long", "1", "99", at=1, symbol="ETH/USDT:USDT"))  # older than the snapshot: dropped
    assert drain(view) == []  # held back
    view.synced([rest("2", "100", at=3), rest("4", "50", at=4, symbol="ETH/USDT:USDT")])
    assert view.position(SYM).qty == Decimal(3)
    assert view.position("ETH/USDT:USDT").qty == Decimal(4)
    items = drain(view)
    assert isinstance(items[0], Snapshot) and len(items[0].positions) == 2
    assert items[1:] == [change("long", "3", "101", at=5)]


async def test_changes_are_published_in_order_and_flat_removes(autojump_clock):
    view = AccountView("binanceusdm")
    view.connected()
    view.synced([])
    drain(view)
    seq = [change("long", "1", "100", at=1), change("long", "2", "101", at=2), change(None, "0", at=3)]
    for c in seq:
        view.apply(c)
    assert drain(view) == seq
    assert view.position(SYM) is None


async def test_lost_stream_drops_held_events_and_a_late_snapshot(autojump_clock):
    view = AccountView("binanceusdm")
    view.connected()
    view.apply(change("long", "1", "100", at=1))
    view.lost("closed")
    view.synced([rest("2", "100")])  # arrives after the connection went away: ignored
    assert not view.healthy
    assert drain(view) == []


async def test_a_reader_that_falls_behind_forces_a_resync(autojump_clock):
    view = AccountView("binanceusdm", backlog=2)
    view.connected()
    view.synced([])  # the snapshot is item 1
    view.apply(change("long", "1", "100", at=1))  # item 2: full now
    assert not view.resync_wanted.is_set()
    view.apply(change("long", "2", "100", at=2))  # does not fit
    assert view.resync_wanted.is_set()
    assert not view.healthy
    drain(view)
    view.synced([rest("2", "100", at=2)])
    assert view.healthy and not view.resync_wanted.is_set()


async def test_order_final_returns_the_streamed_fill(autojump_clock):
    view = AccountView("binanceusdm")
    view.connected()
    view.synced([])
    got = []

    async def wait():
        got.append(await view.order_final("apm-1", within=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(0.1)
        view.apply(order("apm-1", "open"))
        await trio.sleep(0.1)
        assert got == []
        view.apply(order("apm-1", "closed", "1", avg="100.5", at=1))
    assert got == [order("apm-1", "closed", "1", avg="100.5", at=1)]
    result = order_result(got[0])
    assert (result.status, result.filled_qty, result.avg_price) == ("closed", Decimal(1), Decimal("100.5"))


async def test_order_final_gives_up_on_timeout_and_on_a_lost_stream(autojump_clock):
    view = AccountView("binanceusdm")
    view.connected()
    view.synced([])
    start = trio.current_time()
    assert await view.order_final("apm-2", within=3) is None
    assert trio.current_time() - start == pytest.approx(3)
    got = []

    async def wait():
        got.append(await view.order_final("apm-2", within=60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(1)
        view.lost("heartbeat")
    assert got == [None]
    assert trio.current_time() - start < 10


async def test_a_late_event_never_reopens_or_shrinks_an_order(autojump_clock):
    view = AccountView("binanceusdm")
    view.apply(order("apm-3", "closed", "1", avg="100", at=2))
    view.apply(order("apm-3", "open", "0", at=1))
    assert view.order("apm-3").status == "closed"
    view.apply(order("apm-4", "open", "0.6", avg="100", at=1))
    view.apply(order("apm-4", "open", "0.2", avg="100", at=0))
    assert view.order("apm-4").filled_qty == Decimal("0.6")


async def test_fills_are_kept_once_per_fill_id(autojump_clock):
    view = AccountView("binanceusdm")
    fill = Execution("binanceusdm", SYM, "t1", "8886774", "apm-5", "sell", Decimal("0.5"), Decimal("100"), T0)
    view.apply(fill)
    view.apply(fill)
    assert view.fills("apm-5") == [fill]
    assert view.fills("apm-6") == []


async def test_next_update_wakes_on_an_event_and_gives_up_after_its_time(autojump_clock):
    view = AccountView("binanceusdm")
    view.connected()
    view.synced([])
    start = trio.current_time()
    await view.next_update(within=2)
    assert trio.current_time() - start == pytest.approx(2)
    woke = []

    async def wait():
        await view.next_update(within=60)
        woke.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(1)
        view.apply(change("long", "1", "100", at=1))
    assert woke == [pytest.approx(3)]
