"""The detector following positions from the account stream (actors/stream_positions.py).

The service runs on the in-memory exchange and a real PostgreSQL, on trio's MockClock.
The account stream is stood in for by an :class:`~feeds.account_view.AccountView` the
test feeds directly (``connected``/``synced``/``apply``), as the stream actor would.
The poll interval is a year: after the service's first poll every change below is
seen through the stream alone (the tests assert no further poll ran).

Virtual time stands still while a database call is in flight (the ``mdb`` fixture),
so "within 100 ms" below is 100 ms of the service's own time, never a wall-clock budget.

What the stream sends is the exchanges' documented behaviour: a position is sent whole
after each change, a flat one included (Bybit's ``position`` topic sends ``"side": ""``,
``"size": "0"``: ``docs/v5/websocket/private/position.mdx`` in bybit-exchange/docs at
033c3d5677f0e4d11a67e1ae0fdb0468c235a6b0; Binance ``ACCOUNT_UPDATE`` sends ``pa`` 0),
and messages of one event type come in order (Binance "Message Ordering Guarantee",
https://developers.binance.com/docs/derivatives/coin-futures/user-data-streams).
The parsing of those payloads is :mod:`feeds.account_view`'s feeders' concern; here
the typed events go in.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import trio

from actors import episodes as ep
from actors.close_request import client_order_id
from actors.events import CLOSE_COMPLETED
from doubles.exchange import MemoryExchange
from feeds.account_events import OrderChange, PositionChange
from feeds.account_view import AccountView
from tests.test_executor_stream import nothing_in_flight
from tests.support import MemoryFeed, make_service

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
SYMBOL = "BTC/USDT:USDT"
YEAR = 365 * 24 * 3600.0


def change(at: datetime, side: str | None, qty: str = "0", entry: str | None = None) -> PositionChange:
    return PositionChange("bybit", SYMBOL, side, D(qty), None if entry is None else D(entry), at, reason="ORDER")


def healthy_view() -> AccountView:
    """A view that stays healthy for the whole test (nothing goes stale in virtual hours)."""
    return AccountView("bybit", stale_after=10 * YEAR, barrier=nothing_in_flight)


@asynccontextmanager
async def running(mdb, ex: MemoryExchange, view: AccountView, *, bid: str = "99.5", ask: str = "99.6"):
    """The service on ``ex`` with ``view`` as its account stream; ticks every minute."""
    feed = MemoryFeed("bybit")
    svc = make_service(mdb, ex, feed, origin=T0, poll_interval=YEAR)
    svc.detector.accounts = {"bybit": view}  # the stand-in for the service wiring
    svc.executor.accounts = {"bybit": view}
    prices = {"bid": bid, "ask": ask}
    completed = []
    svc.bus.subscribe(lambda e: completed.append(e) if e.type == CLOSE_COMPLETED else None)

    async def tick():
        while True:
            for held in list(ex.positions) or [SYMBOL]:
                ex.set_quote(held, prices["bid"], prices["ask"], prices["bid"])
            feed.push(SYMBOL, bid=prices["bid"], ask=prices["ask"], last=prices["bid"])
            await trio.sleep(60)

    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        n.start_soon(tick)
        await wait_for(lambda: _true(svc.detector.polls >= 1), "the first poll")
        yield svc, prices, completed
        svc.shutdown()
        n.cancel_scope.cancel()


async def _true(value: bool) -> bool:
    return value


async def wait_for(predicate, what: str, within: float = 3600 * 60, interval: float = 10.0):
    try:
        with trio.fail_after(within):
            while not await predicate():  # noqa: ASYNC110 - a condition on the database
                await trio.sleep(interval)
    except trio.TooSlowError:
        raise AssertionError(f"{what}: not within {within:g} virtual seconds") from None


async def soon(predicate, what: str):
    """Within 100 ms of the service's time (nothing is polled in that time)."""
    await wait_for(predicate, what, within=0.1, interval=0.005)


async def episodes(db):
    return await db.fetch("SELECT * FROM monitoring.episodes ORDER BY id")


async def aged_rows(db):
    return await db.fetch("SELECT * FROM monitoring.aged_positions ORDER BY detected_at")


async def test_a_position_followed_through_the_stream_alone(mock_clock, mdb):
    """Opened, averaged into, reduced, flipped, closed by hand and re-entered: each step
    reaches the book and the actor within 100 ms, with no poll in between."""
    ex = MemoryExchange(name="bybit")
    view = healthy_view()
    async with running(mdb, ex, view) as (svc, prices, completed):
        view.connected()
        view.synced([])  # nothing open: every symbol is known flat
        opened = svc.clock.now()
        ex.set_position(SYMBOL, "long", "1", "100")
        view.apply(change(opened, "long", "1", "100"))

        async def one_open():
            rows = await episodes(mdb)
            return len(rows) == 1 and rows[0]["status"] == "open"

        await soon(one_open, "the opening in the book")
        [first] = await episodes(mdb)
        assert (first["opened_at"], first["opened_at_source"], first["quantity"]) == (opened, ep.STREAM, D(1))
        assert ex.calls == [("fetch_positions", (None,))]  # the first poll; no fill look-up for an exact opening

        async def aged():
            rows = await aged_rows(mdb)
            return bool(rows) and rows[0]["status"] == "grace_active"

        await wait_for(aged, "the position aged (3 h after the stream's opening)")
        [row] = await aged_rows(mdb)
        assert row["position_opened_at"] == opened and row["grace_started_at"] == opened + timedelta(hours=3)

        # Averaged into: the same episode, the actor takes the new size and entry at once.
        view.apply(change(svc.clock.now(), "long", "2", "105"))
        ex.set_position(SYMBOL, "long", "2", "105")

        async def averaged():
            return (await aged_rows(mdb))[0]["entry_price"] == D(105)

        await soon(averaged, "the actor took the new entry")
        # Reduced by hand: the rest stays managed.
        view.apply(change(svc.clock.now(), "long", "1.5", "105"))
        ex.set_position(SYMBOL, "long", "1.5", "105")

        async def reduced():
            return (await aged_rows(mdb))[0]["quantity"] == D("1.5")

        await soon(reduced, "the actor took the reduction")
        changed = await mdb.events(row["id"], "position.changed")
        assert [(e["event_metadata"]["new_quantity"], e["event_metadata"]["new_entry_price"]) for e in changed] == [
            ("2", "105"),
            ("1.5", "105"),
        ]
        # Flipped: the old episode ends (its aged position as a manual close), a short starts now.
        flipped = svc.clock.now()
        view.apply(change(flipped, "short", "1", "99"))
        ex.set_position(SYMBOL, "short", "1", "99")

        async def two_episodes():
            return len(await episodes(mdb)) == 2

        await soon(two_episodes, "the flip in the book")
        # Closed by hand, then opened again a minute later: a new episode that starts young.
        await trio.sleep(60)
        view.apply(change(svc.clock.now(), None))
        ex.close_externally(SYMBOL)

        async def none_open():
            return all(r["status"] == "closed" for r in await episodes(mdb))

        await soon(none_open, "the manual close in the book")
        await trio.sleep(60)
        reopened = svc.clock.now()
        view.apply(change(reopened, "long", "1", "101"))
        ex.set_position(SYMBOL, "long", "1", "101")

        async def three_episodes():
            return len(await episodes(mdb)) == 3

        await soon(three_episodes, "the re-entry in the book")

        async def first_aged_closed():
            return (await aged_rows(mdb))[0]["status"] == "closed"

        await wait_for(first_aged_closed, "the flipped-away aged position closed")
        assert svc.detector.polls == 1 and svc.detector.stream_changes == 6
    rows = await episodes(mdb)
    assert [(r["side"], r["opened_at"], r["opened_at_source"], r["status"], r["end_reason"]) for r in rows] == [
        ("long", opened, ep.STREAM, "closed", "flip"),
        ("short", flipped, ep.STREAM, "closed", "flat"),
        ("long", reopened, ep.STREAM, "open", None),
    ]
    [aged_first] = await aged_rows(mdb)  # the short and the re-entry never aged
    assert aged_first["close_reason"] == "manual" and ex.orders == []
    assert [e.data["close_reason"] for e in completed] == ["manual"]


async def test_a_change_seen_before_any_snapshot_is_looked_up_in_the_fill_history(mock_clock, mdb):
    """Without a snapshot the view cannot tell the symbol was flat: the opening is looked up."""
    ex = MemoryExchange(name="bybit")
    view = healthy_view()
    async with running(mdb, ex, view) as (svc, prices, completed):
        view.connected()
        view.synced([])
        await trio.sleep(1)
        svc.detector._stream_open.clear()  # as after a restart of the detector
        ex.set_position(SYMBOL, "long", "1", "100")
        view.apply(change(svc.clock.now(), "long", "1", "100"))

        async def one():
            return len(await episodes(mdb)) == 1

        await soon(one, "the opening in the book")
        [row] = await episodes(mdb)
        assert row["opened_at_source"] == ep.FIRST_SEEN  # no fills scripted: the moment first seen
        assert [c[0] for c in ex.calls].count("fetch_fills") >= 1


async def test_a_snapshot_after_a_reconnect_reconciles_at_once(mock_clock, mdb):
    """What happened while the stream was down comes with the snapshot: handled at once."""
    ex = MemoryExchange(name="bybit")
    view = healthy_view()
    async with running(mdb, ex, view) as (svc, prices, completed):
        view.connected()
        view.synced([])
        opened = svc.clock.now()
        ex.set_position(SYMBOL, "long", "1", "100")
        view.apply(change(opened, "long", "1", "100"))

        async def one_open():
            return [r["status"] for r in await episodes(mdb)] == ["open"]

        await soon(one_open, "the opening")
        view.lost("test: connection dropped")
        ex.close_externally(SYMBOL)  # closed by hand while the stream was down
        view.connected()
        view.synced(await ex.fetch_positions())

        async def closed():
            return [r["status"] for r in await episodes(mdb)] == ["closed"]

        await soon(closed, "the close missed while down, from the snapshot")
        assert svc.detector.polls == 1


async def test_a_stream_flat_before_our_close_result_is_our_close(mock_clock, mdb):
    """The position's flat change arrives while our order is still open: the close is ours."""
    ex = MemoryExchange(name="bybit")
    view = healthy_view()
    async with running(mdb, ex, view) as (svc, prices, completed):
        view.connected()
        view.synced([])
        ex.set_position(SYMBOL, "long", "1", "100")
        view.apply(change(svc.clock.now(), "long", "1", "100"))

        async def in_grace():
            rows = await aged_rows(mdb)
            return bool(rows) and rows[0]["status"] == "grace_active"

        await wait_for(in_grace, "aged")
        [row] = await aged_rows(mdb)
        ex.open_next(1, lookups=1_000)  # the order rests open: only the stream settles it
        prices.update(bid="100.5", ask="100.6")  # above breakeven: the actor closes

        async def order_sent():
            return bool(ex.orders)

        await wait_for(order_sent, "our order sent", within=600, interval=1)
        cid = client_order_id(row["id"], 1)
        assert ex.orders[0].client_order_id == cid
        # The exchange fills it; its position change comes before the order's report.
        order = ex.orders[0]
        order.status, order.filled_qty, order.avg_price, order.lookups_until_fill = "closed", D(1), D("100.5"), 0
        ex.close_externally(SYMBOL)
        at = svc.clock.now()
        view.apply(change(at, None))

        async def episode_closed():
            return [r["status"] for r in await episodes(mdb)] == ["closed"]

        await soon(episode_closed, "the flat in the book")
        assert svc.registry.is_watching(row["id"])  # the actor waits for its close's result
        view.apply(
            OrderChange(
                "bybit", SYMBOL, cid, order.exchange_order_id, "sell", "closed", D(1), D("100.5"), D(1), True, at
            )
        )

        async def aged_closed():
            return (await aged_rows(mdb))[0]["status"] == "closed"

        await wait_for(aged_closed, "the close recorded", within=600, interval=0.01)
    [row] = await aged_rows(mdb)
    assert row["close_reason"] != "manual" and row["close_price"] == D("100.5")
    assert [e.data["close_reason"] for e in completed] == [row["close_reason"]]
    assert not [c for c in ex.calls if c[0] == "fetch_order_by_client_id"]  # settled by the stream
    assert svc.executor.stats.settled_by_stream == 1 and svc.executor.stats.positions_from_stream >= 2


class GatedWrites:
    """Holds the storage writer's batches back while closed, so the book lags the actors."""

    def __init__(self, svc):
        self.open = trio.Event()
        self.open.set()
        self._real = svc.writer._write_batch
        svc.writer._write_batch = self._write

    def close(self) -> None:
        self.open = trio.Event()

    async def _write(self, batch):
        await self.open.wait()
        return await self._real(batch)


async def _closed_by_our_order(mdb, svc, ex, view, prices, *, report_order: bool, hold_for: float):
    """Our close fills at once and its actor finishes while the writer is held back (the
    aged row not yet closed in the database); then the stream reports the position
    flat (and, if ``report_order``, our order filled). The writer is let go ``hold_for``
    seconds later."""
    view.connected()
    view.synced([])
    ex.set_position(SYMBOL, "long", "1", "100")
    view.apply(change(svc.clock.now(), "long", "1", "100"))

    async def in_grace():
        rows = await aged_rows(mdb)
        return bool(rows) and rows[0]["status"] == "grace_active"

    await wait_for(in_grace, "aged")
    [row] = await aged_rows(mdb)
    gate = GatedWrites(svc)
    gate.close()
    prices.update(bid="100.5", ask="100.6")  # above breakeven: filled at once on the exchange

    async def finished():
        return svc.registry.has_finished(row["id"])

    await wait_for(finished, "our close finished", within=600, interval=0.01)
    assert (await aged_rows(mdb))[0]["status"] == "grace_active"  # the database lags
    at = svc.clock.now()
    if report_order:
        order = ex.orders[0]
        view.apply(
            OrderChange(
                "bybit",
                SYMBOL,
                order.client_order_id,
                order.exchange_order_id,
                "sell",
                "closed",
                D(1),
                order.avg_price,
                D(1),
                True,
                at,
            )
        )
    view.apply(change(at, None))

    async def episode_closed():
        return [r["status"] for r in await episodes(mdb)] == ["closed"]

    await soon(episode_closed, "the flat in the book")
    await trio.sleep(hold_for)
    gate.open.set()

    async def aged_closed():
        return (await aged_rows(mdb))[0]["status"] == "closed"

    await wait_for(aged_closed, "the close recorded", within=600, interval=0.01)
    await trio.sleep(60)


async def test_a_stream_flat_after_our_close_result_waits_for_the_book(mock_clock, mdb):
    """The actor finished its close, the database has not caught up, the stream says
    flat: the detector lets the writer catch up and records no manual close."""
    ex = MemoryExchange(name="bybit")
    view = healthy_view()
    async with running(mdb, ex, view) as (svc, prices, completed):
        await _closed_by_our_order(mdb, svc, ex, view, prices, report_order=False, hold_for=5)
    [row] = await aged_rows(mdb)
    assert row["status"] == "closed" and row["close_reason"] != "manual"
    assert [e.data["close_reason"] for e in completed] == [row["close_reason"]]
    assert len(ex.orders) == 1


async def test_a_stream_flat_with_our_order_reported_filled_is_ours_however_late_the_book(mock_clock, mdb):
    """As above, with the writer held past the detector's wait: the stream's report of
    our filled order says the flat is ours, so no manual close is recorded."""
    ex = MemoryExchange(name="bybit")
    view = healthy_view()
    async with running(mdb, ex, view) as (svc, prices, completed):
        await _closed_by_our_order(mdb, svc, ex, view, prices, report_order=True, hold_for=60)
    [row] = await aged_rows(mdb)
    assert row["status"] == "closed" and row["close_reason"] != "manual"
    assert [e.data["close_reason"] for e in completed] == [row["close_reason"]]


async def test_a_poll_that_saw_the_opening_first_keeps_one_episode(mock_clock, mdb):
    """The poll read the new position before the stream's report of its opening came
    through: that report is the same opening, not a re-entry."""
    ex = MemoryExchange(name="bybit")
    view = healthy_view()
    async with running(mdb, ex, view) as (svc, prices, completed):
        view.connected()
        view.synced([])
        opened = svc.clock.now()
        ex.set_position(SYMBOL, "long", "1", "100")
        await svc.detector.poll_once()  # the stream's report is still on its way
        [first] = await episodes(mdb)
        view.apply(change(opened, "long", "1", "100"))
        await trio.sleep(0.1)
        view.apply(change(svc.clock.now(), "long", "2", "100"))  # and it goes on from there

        async def grown():
            return (await episodes(mdb))[0]["quantity"] == D(2)

        await soon(grown, "the averaging in")
    rows = await episodes(mdb)
    assert [(r["id"], r["status"]) for r in rows] == [(first["id"], "open")]


async def test_dust_swept_by_hand_is_a_manual_close_despite_our_earlier_fills(mock_clock, mdb):
    """A close that ended as dust had fills of ours; the stream still remembers them. The
    dust swept by someone else is still a manual close, recorded without an actor."""
    ex = MemoryExchange(name="bybit", min_qty=D("0.01"))
    view = healthy_view()
    async with running(mdb, ex, view, bid="101", ask="101.1") as (svc, prices, completed):
        view.connected()
        view.synced([])
        ex.set_position(SYMBOL, "long", "0.005", "100")
        view.apply(change(svc.clock.now(), "long", "0.005", "100"))

        async def dust():
            rows = await aged_rows(mdb)
            return bool(rows) and rows[0]["status"] == "dust"

        await wait_for(dust, "left as dust")
        [row] = await aged_rows(mdb)
        # What the stream reported of an earlier order of this aged position (it filled).
        cid = client_order_id(row["id"], 1)
        view.apply(
            OrderChange(
                "bybit", SYMBOL, cid, "x-1", "sell", "closed", D("0.995"), D(101), D("0.995"), True, svc.clock.now()
            )
        )
        ex.close_externally(SYMBOL)
        view.apply(change(svc.clock.now(), None))

        async def closed():
            return (await aged_rows(mdb))[0]["status"] == "closed"

        await wait_for(closed, "the sweep recorded", within=600, interval=0.01)
    [row] = await aged_rows(mdb)
    assert row["close_reason"] == "manual" and [e.data["close_reason"] for e in completed] == ["manual"]
