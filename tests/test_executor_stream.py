"""The executor with an account stream: positions checked and orders settled from it.

On the in-memory exchange and trio's autojump MockClock, with the harness of
``tests/test_executor.py``. The account stream is stood in for by an
:class:`~feeds.account_view.AccountView` fed directly; the test plays the exchange
(it fills the order and moves the position) and the stream (it reports both).

While the view is healthy the position is read from it (no REST round trip before an
order) and an order the exchange answers still open is settled by the stream's order
events (no REST look-up). While it is not healthy (down, syncing, silent) and when it
goes down during a wait, REST does it all, as before. Binance guarantees order only
within one event type ("Message Ordering Guarantee",
https://developers.binance.com/docs/derivatives/coin-futures/user-data-streams): an
order's report may come before the position change it caused, so a position the stream
has not updated since our fill is read over REST instead.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from uuid import uuid4

import pytest
import trio

from actors.close_request import client_order_id
from doubles.exchange import MemoryExchange
from exchanges.port import ExchangePosition
from feeds.account_events import OrderChange, PositionChange
from feeds.account_view import AccountView
from tests.test_executor import NOW, SYMBOL, Harness, exchange

LONG = ExchangePosition("bybit", SYMBOL, "long", D(1), D(100))


async def nothing_in_flight(within: float) -> bool:
    """The stand-in stream's barrier: the test applies each event itself, so whatever the
    view holds is everything the "exchange" sent."""
    return True


def with_view(ex: MemoryExchange, *, stale_after: float = 1e9, **kw) -> tuple[Harness, AccountView]:
    h = Harness(ex, **kw)
    view = AccountView("bybit", stale_after=stale_after, barrier=nothing_in_flight)
    h.executor.accounts = {"bybit": view}
    return h, view


def calls(ex: MemoryExchange) -> list[str]:
    return [name for name, _ in ex.calls]


def filled(ex: MemoryExchange, view: AccountView, *, report_position: bool = True) -> None:
    """The exchange fills our resting order and closes the position; the stream reports
    the order (and, unless told not to, the position) as it would."""
    order = ex.orders[-1]
    order.status, order.filled_qty, order.avg_price, order.lookups_until_fill = "closed", D(1), D(100), 0
    ex.close_externally(SYMBOL)
    view.apply(
        OrderChange(
            "bybit",
            SYMBOL,
            order.client_order_id,
            order.exchange_order_id,
            "sell",
            "closed",
            D(1),
            D(100),
            D(1),
            True,
            NOW,
        )
    )
    if report_position:
        view.apply(PositionChange("bybit", SYMBOL, None, D(0), None, NOW, reason="ORDER"))


async def when_sent(ex: MemoryExchange) -> None:
    while not ex.orders:  # noqa: ASYNC110 - the exchange double has no event to wait on
        await trio.sleep(0.01)


async def test_a_healthy_view_checks_the_position_without_rest(autojump_clock):
    h, view = with_view(exchange())
    view.connected()
    view.synced([LONG])
    r = await h.close(uuid4())
    assert (r.outcome, r.filled_qty) == ("flat", D(1))
    # Nothing before the order but the lot limits; after the fill the stream had not
    # reported our order, so the position was read over REST.
    assert calls(h.ex) == ["close_limits", "create_close_order", "fetch_positions"]
    assert (h.executor.stats.positions_from_stream, h.executor.stats.positions_from_rest) == (1, 1)


async def cannot_tell(within: float) -> bool:
    await trio.sleep(within)  # no pong came back in time
    return False


@pytest.mark.parametrize("barrier", [None, cannot_tell], ids=["no barrier", "no pong"])
async def test_a_healthy_view_not_known_to_be_up_to_date_leaves_it_to_rest(autojump_clock, barrier):
    """Healthy is not up to date: a tick can overtake the account event that goes with
    it, so the view is read only after a ping through the stream came back."""
    h, view = with_view(exchange())
    view.barrier = barrier
    view.connected()
    view.synced([LONG])
    r = await h.close(uuid4())
    assert (r.outcome, r.filled_qty) == ("flat", D(1))
    assert calls(h.ex) == ["fetch_positions", "close_limits", "create_close_order", "fetch_positions"]
    assert h.executor.stats.positions_from_stream == 0


def down(view: AccountView) -> None:
    pass


def syncing(view: AccountView) -> None:
    view.connected()


def lost(view: AccountView) -> None:
    view.connected()
    view.synced([LONG])
    view.lost("test")


@pytest.mark.parametrize("make", [down, syncing, lost], ids=["down", "syncing", "lost"])
async def test_a_view_that_is_not_healthy_leaves_it_to_rest(autojump_clock, make):
    h, view = with_view(exchange())
    make(view)
    r = await h.close(uuid4())
    assert (r.outcome, r.filled_qty) == ("flat", D(1))
    assert calls(h.ex) == ["fetch_positions", "close_limits", "create_close_order", "fetch_positions"]
    assert (h.executor.stats.positions_from_stream, h.executor.stats.positions_from_rest) == (0, 2)


async def test_a_silent_view_is_stale_and_leaves_it_to_rest(autojump_clock):
    h, view = with_view(exchange(), stale_after=30)
    view.connected()
    view.synced([LONG])
    await trio.sleep(31)  # nothing heard: not trusted
    assert not view.healthy
    await h.close(uuid4())
    assert calls(h.ex)[0] == "fetch_positions" and h.executor.stats.positions_from_stream == 0


async def test_an_open_order_is_settled_by_the_stream_without_rest(autojump_clock):
    ex = exchange()
    ex.open_next(1, lookups=1_000)  # it rests open: REST would not see it fill
    h, view = with_view(ex)
    view.connected()
    view.synced([LONG])
    aged = uuid4()
    async with trio.open_nursery() as n:
        n.start_soon(h.close, aged)
        await when_sent(ex)
        filled(ex, view)
    r = h.results[-1]
    assert (r.outcome, r.filled_qty, r.avg_price, r.last_order_id) == ("flat", D(1), D(100), client_order_id(aged, 1))
    assert calls(ex) == ["close_limits", "create_close_order"]  # no look-up, no position read over REST
    assert h.executor.stats.settled_by_stream == 1 and h.executor.stats.lookups == 0
    assert h.states(client_order_id(aged, 1))[-1] == "filled"


@pytest.mark.parametrize("known_by", ["snapshot", "older change"])
async def test_a_fill_the_position_stream_has_not_shown_yet_is_checked_over_rest(autojump_clock, known_by):
    ex = exchange()
    ex.open_next(1, lookups=1_000)
    h, view = with_view(ex)
    view.connected()
    view.synced([LONG])  # a snapshot's position carries no time of its own here
    if known_by == "older change":
        view.apply(PositionChange("bybit", SYMBOL, "long", D(1), D(100), NOW - timedelta(seconds=1)))
    async with trio.open_nursery() as n:
        n.start_soon(h.close, uuid4())
        await when_sent(ex)
        filled(ex, view, report_position=False)  # the view still shows the long
    assert h.results[-1].outcome == "flat"
    assert calls(ex) == ["close_limits", "create_close_order", "fetch_positions"]  # never a second order
    assert h.executor.stats.settled_by_stream == 1


async def test_a_view_going_down_during_the_wait_falls_back_to_rest(autojump_clock):
    ex = exchange()
    ex.open_next(1, lookups=1)  # fills at its first look-up
    h, view = with_view(ex)
    view.connected()
    view.synced([LONG])
    async with trio.open_nursery() as n:
        n.start_soon(h.close, uuid4())
        await when_sent(ex)
        view.lost("test: connection dropped")
    r = h.results[-1]
    assert (r.outcome, r.filled_qty) == ("flat", D(1))
    assert calls(ex) == ["close_limits", "create_close_order", "fetch_order_by_client_id", "fetch_positions"]
    assert h.executor.stats.settled_by_stream == 0


async def test_an_order_the_stream_does_not_report_in_time_is_looked_up(autojump_clock):
    ex = exchange()
    ex.open_next(1, lookups=1)
    h, view = with_view(ex, stream_settle_timeout=5.0)
    view.connected()
    view.synced([LONG])
    start = trio.current_time()
    r = await h.close(uuid4())
    assert (r.outcome, r.filled_qty) == ("flat", D(1))
    assert calls(ex) == ["close_limits", "create_close_order", "fetch_order_by_client_id", "fetch_positions"]
    assert trio.current_time() - start >= 5.0  # the stream was given its time first


# --------------------------------------------------------------------------- real adapter
# The simulator behind real ccxt clients: the adapter's own fill polling is skipped
# when the caller settles the order (``wait_fill=False``). Bybit's create answer carries
# no status: Place Order's response is ``orderId``/``orderLinkId`` only, and "The ack of
# create order request indicates that the request is successfully accepted. Please use
# websocket order stream to confirm the order status" (``docs/v5/order/create-order.mdx``
# in bybit-exchange/docs at 00a9d59b1149315398c25a0fd77b805692dccfa1).

from tests.test_ccxt_adapter import (  # noqa: E402 - the simulator fixtures
    needs_sim,
    open_adapter,
    set_position,
    set_prices,
    sim,
)

__all__ = ["sim"]  # a fixture, used by name


@needs_sim
@pytest.mark.parametrize("wait_fill", [True, False])
async def test_sim_the_adapter_skips_its_fill_polling_when_told(aio_loop, sim, wait_fill):
    adapter = await open_adapter(sim, "bybit")
    try:
        await set_position(sim, adapter, SYMBOL, "long", "0.5", "60000")
        await set_prices(sim, adapter, SYMBOL, "60000.0", "60000.5", "60000.2")
        lookups = []
        real_lookup = adapter.fetch_order_by_client_id

        async def lookup(symbol, cid):
            lookups.append(cid)
            return await real_lookup(symbol, cid)

        adapter.fetch_order_by_client_id = lookup
        r = await adapter.create_close_order(SYMBOL, "long", D("0.5"), "apm-wait-1", wait_fill=wait_fill)
        if wait_fill:
            assert (r.status, r.filled_qty) == ("closed", D("0.5")) and lookups
        else:
            assert (r.status, r.filled_qty) == ("open", D(0)) and lookups == []
    finally:
        with trio.CancelScope(shield=True):
            await adapter.close()
