"""Account-stream promises pinned down by mutation testing (``make mutate``).

Sans-IO like tests/test_account_parsing.py (the protocols are fed text frames built
from the real payloads in ``tests/conformance/private``), and on trio's MockClock like
tests/test_account_view.py for :class:`feeds.account_view.AccountView`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest
import trio

from exchanges.port import ExchangePosition
from feeds.account_binance import BinanceAccountProtocol, read_listen_key
from feeds.account_bybit import BybitAccountProtocol
from feeds.account_events import (
    AuthResult,
    Execution,
    Ignored,
    ListenKeyExpired,
    Malformed,
    OrderChange,
    Pong,
    PositionChange,
)
from feeds.account_view import AccountView, Snapshot, order_result
from feeds.fields import BadValue

CORPUS = Path(__file__).parent / "conformance" / "private"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_MS = 32_503_680_000_000  # 3000-01-01T00:00:00Z, the first time refused


def load(name: str):
    return json.loads((CORPUS / name).read_text(encoding="utf-8"))


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def binance(frame: dict):
    return BinanceAccountProtocol().parse(dumps(frame))


def bybit(frame: dict):
    return BybitAccountProtocol().parse(dumps(frame))


def market_fill(**fields) -> dict:
    """The published Binance market fill (SOURCES.md) in its documented envelope, with
    ``fields`` of the order object changed."""
    o = load("binance_order_market_fill_o_ccxt.json")
    o.update(fields)
    return {"e": "ORDER_TRADE_UPDATE", "E": o["T"], "T": o["T"], "o": o}


def binance_positions(**fields) -> dict:
    """The captured Binance short (SOURCES.md) with ``fields`` of the frame changed."""
    frame = load("binance_account_update_cross_short_capture.json")
    frame.update(fields)
    return frame


def bybit_order(**fields) -> dict:
    """The docs order frame (SOURCES.md) as a linear BTCUSDT order of ours, with ``fields`` changed."""
    frame = load("bybit_order_option_docs.json")
    frame["data"][0].update({"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "apm-7", **fields})
    return frame


def bybit_position(**fields) -> dict:
    """The docs position frame (SOURCES.md) made one-way (positionIdx 0) with ``fields`` changed."""
    frame = load("bybit_position_hedge_flat_docs.json")
    frame["data"][0].update(positionIdx=0, **fields)
    return frame


def bybit_execution(**fields) -> dict:
    """The docs linear execution frame (SOURCES.md) with ``fields`` changed."""
    frame = load("bybit_execution_linear_docs.json")
    frame["data"][0].update(fields)
    return frame


# -- Binance -------------------------------------------------------------------------------


@pytest.mark.parametrize("order_id", [1, 2**63 - 1])
def test_binance_order_ids_span_one_to_the_largest_signed_64_bit_integer(order_id):
    order, fill = binance(market_fill(i=order_id, t=order_id))
    assert order.exchange_order_id == fill.exchange_order_id == fill.fill_id == str(order_id)


@pytest.mark.parametrize("order_id", [0, 2**63, 2**64 - 1])
def test_binance_order_ids_outside_64_bit_are_malformed(order_id):
    [result] = binance(market_fill(i=order_id))
    assert isinstance(result, Malformed) and result.reason == "bad order"


@pytest.mark.parametrize("key", ["k", "A" * 200])
def test_binance_listen_keys_of_one_to_200_characters_are_read(key):
    assert read_listen_key({"listenKey": key}) == key


def test_binance_listen_key_of_201_characters_is_refused():
    with pytest.raises(BadValue):
        read_listen_key({"listenKey": "A" * 201})


@pytest.mark.parametrize("field", ["X", "S"])
@pytest.mark.parametrize("value", [["NEW"], {"BUY": 1}])
def test_binance_unhashable_status_or_side_is_malformed(field, value):
    [result] = binance(market_fill(**{field: value}))
    assert isinstance(result, Malformed) and result.reason == "bad order"


def test_binance_zero_requested_quantity_is_unknown():
    [order, _] = binance(market_fill(q="0"))
    assert order.requested_qty is None


def test_binance_event_with_a_data_field_is_not_taken_for_an_envelope():
    for frame in (
        {"e": "listenKeyExpired", "E": 1, "listenKey": "k", "data": {"e": "ACCOUNT_UPDATE"}},
        {"e": "listenKeyExpired", "listenKey": "k", "data": {"e": "ACCOUNT_UPDATE"}},
    ):
        assert binance(frame) == [ListenKeyExpired("k")]


def test_binance_listen_key_expired_with_a_key_that_is_not_text():
    assert binance({"e": "listenKeyExpired", "E": 1, "listenKey": 5}) == [ListenKeyExpired(None)]


@pytest.mark.parametrize("when", [1, LAST_MS - 1])
def test_times_from_one_millisecond_to_just_before_3000_are_read(when):
    [change] = binance(binance_positions(T=when))
    assert change.time == EPOCH + timedelta(milliseconds=when)


@pytest.mark.parametrize("when", [0, LAST_MS])
def test_times_at_zero_or_at_3000_are_malformed(when):
    [result] = binance(binance_positions(T=when))
    assert isinstance(result, Malformed) and result.reason == "bad position"


# -- Bybit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["orderStatus", "side"])
def test_bybit_unhashable_status_or_side_is_malformed(field):
    [result] = bybit(bybit_order(**{field: ["New"]}))
    assert isinstance(result, Malformed) and result.reason == "bad order"


def test_bybit_zero_requested_quantity_is_unknown():
    [order] = bybit(bybit_order(qty="0"))
    assert isinstance(order, OrderChange) and order.requested_qty is None


@pytest.mark.parametrize("avg", ["0.00000", "0.0"])
def test_zero_average_price_written_with_decimals_means_no_fill_yet(avg):
    [order] = bybit(bybit_order(avgPrice=avg))
    assert isinstance(order, OrderChange) and order.avg_price is None


def test_bybit_execution_carries_our_client_order_id():
    [fill] = bybit(bybit_execution(orderLinkId="apm-42"))
    assert isinstance(fill, Execution) and fill.client_order_id == "apm-42"


def test_bybit_flat_position_names_its_exchange_and_symbol():
    assert bybit(bybit_position(side="", size="0", entryPrice="0")) == [
        PositionChange("bybit", "BTC/USDT:USDT", None, D(0), None, EPOCH + timedelta(milliseconds=1697682317038))
    ]


def test_bybit_only_a_ping_answered_pong_is_a_pong():
    """The docs' "Pong message example of public channels", tab Linear/Inverse
    (``docs/v5/websocket/wss-authentication.mdx`` in github.com/bybit-exchange/docs @
    176038080db5657124ac1553aa6f25437a060e57), is a pong; the same answer with an empty
    ``ret_msg`` is not, and neither is the docs' auth answer whose ``ret_msg`` reads pong."""
    public_pong = {
        "success": True,
        "ret_msg": "pong",
        "conn_id": "465772b1-7630-4fdc-a492-e003e6f0f260",
        "req_id": "",
        "op": "ping",
    }
    assert bybit(public_pong) == [Pong(None)]
    [result] = bybit({**public_pong, "ret_msg": ""})
    assert isinstance(result, Ignored)
    assert bybit({**load("bybit_auth_success_docs.json"), "ret_msg": "pong"}) == [AuthResult(True, "pong")]


def test_bybit_answer_without_ret_msg_has_an_empty_message():
    """The docs' auth answer (SOURCES.md) without its ``ret_msg``."""
    answer = load("bybit_auth_success_docs.json")
    del answer["ret_msg"]
    assert bybit(answer) == [AuthResult(True, "")]


def test_bybit_subscribe_request_has_only_the_documented_keys():
    """Bybit's "How to Subscribe to Topics" (``docs/v5/websocket/wss-authentication.mdx`` in
    github.com/bybit-exchange/docs @ 176038080db5657124ac1553aa6f25437a060e57): ``req_id``
    (a customised id, optional), ``op`` and ``args``; an unknown key is undocumented."""
    request = json.loads(BybitAccountProtocol().subscribe_message())
    assert set(request) == {"req_id", "op", "args"} and type(request["req_id"]) is str


def test_bybit_pong_keeps_its_request_id():
    assert bybit({"op": "pong", "req_id": "ping-3", "args": ["1"]}) == [Pong("ping-3")]


# -- AccountView (on trio's MockClock) -----------------------------------------------------

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SYM = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"


def change(side, qty, entry=None, *, at=0, symbol=SYM):
    entry_price = None if entry is None else D(entry)
    return PositionChange("bybit", symbol, side, D(qty), entry_price, T0 + timedelta(seconds=at))


def rest(qty, entry="100", *, at=0, symbol=SYM):
    return ExchangePosition("bybit", symbol, "long", D(qty), D(entry), updated_at=T0 + timedelta(seconds=at))


def order(cid, status, filled="0", *, at=0):
    return OrderChange(
        "bybit", SYM, cid, f"x-{cid}", "sell", status, D(filled), None, D("1"), True, T0 + timedelta(seconds=at)
    )


def fill(cid, fill_id="f1"):
    return Execution("bybit", SYM, fill_id, f"x-{cid}", cid, "sell", D("1"), D("100"), T0)


def synced_view(positions=(), **kw) -> AccountView:
    view = AccountView("bybit", **kw)
    view.connected()
    view.synced(list(positions))
    return view


def drain(view):
    out = []
    while True:
        try:
            out.append(view.changes.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_streamed_position_reads_back_whole(autojump_clock):
    view = synced_view()
    view.apply(change("short", "0.5", "95900.1", at=3))
    assert view.position(SYM) == ExchangePosition(
        exchange="bybit",
        symbol=SYM,
        side="short",
        qty=D("0.5"),
        entry_price=D("95900.1"),
        updated_at=T0 + timedelta(seconds=3),
    )


async def test_snapshot_keeps_fractional_positions_and_drops_empty_ones(autojump_clock):
    view = synced_view([rest("0.5"), rest("0", symbol=ETH)])
    assert view.position(SYM) == rest("0.5")
    assert view.position(ETH) is None
    assert drain(view) == [Snapshot("bybit", (rest("0.5"),))]


async def test_held_event_as_new_as_the_snapshot_is_applied_and_later_ones_too(autojump_clock):
    view = AccountView("bybit")
    view.connected()
    view.apply(change("long", "1", "100", at=1))  # older than the snapshot: skipped
    view.apply(change("long", "2", "100", at=5))  # as new as the snapshot: applied
    view.apply(change("long", "3", "100", at=1, symbol=ETH))  # no snapshot entry: applied
    view.synced([rest("7", at=5)])
    assert view.position(SYM).qty == D(2)
    assert view.position(ETH).qty == D(3)


async def test_flat_for_a_symbol_not_held_is_harmless(autojump_clock):
    view = synced_view()
    view.apply(change(None, "0", at=1))
    assert view.position(SYM) is None


async def test_default_staleness_is_30_seconds(autojump_clock):
    view = synced_view()
    await trio.sleep(30)
    assert view.healthy
    await trio.sleep(0.5)
    assert not view.healthy


async def test_default_backlog_is_10000_items(autojump_clock):
    view = synced_view()  # the snapshot is the first item
    for i in range(9_999):
        view.apply(change("long", "1", "100", at=i))
    assert view.healthy and not view.resync_wanted.is_set()
    view.apply(change("long", "2", "100", at=10_000))
    assert view.resync_wanted.is_set() and not view.healthy


async def test_events_after_an_overflow_are_held_for_the_next_snapshot(autojump_clock):
    view = synced_view(backlog=2)  # the snapshot is the first item
    view.apply(change("long", "1", "100", at=1))
    view.apply(change("long", "2", "100", at=2))  # overflow
    assert view.resync_wanted.is_set()
    drain(view)
    view.apply(change("long", "4", "100", at=9))
    view.synced([rest("3", at=5)])
    assert view.position(SYM).qty == D(4)


async def test_connects_counts_connections(autojump_clock):
    view = AccountView("bybit")
    assert view.connects == 0
    view.connected()
    view.lost("test")
    view.connected()
    assert view.connects == 2


async def test_order_result_carries_the_streamed_order(autojump_clock):
    change_ = order("apm-1", "closed", "1")
    result = order_result(change_)
    assert (result.client_order_id, result.exchange_order_id, result.requested_qty) == ("apm-1", "x-apm-1", D(1))


async def test_a_final_order_may_be_reported_final_again(autojump_clock):
    view = synced_view()
    view.apply(order("apm-1", "canceled", "0", at=1))
    view.apply(order("apm-1", "closed", "1", at=2))
    assert view.order("apm-1") == order("apm-1", "closed", "1", at=2)


async def test_an_order_canceled_unfilled_becomes_final(autojump_clock):
    view = synced_view()
    view.apply(order("apm-1", "open", "0"))
    view.apply(order("apm-1", "canceled", "0", at=1))
    assert view.order("apm-1").final


async def test_the_oldest_orders_and_their_fills_are_forgotten_first(autojump_clock):
    view = synced_view()
    view.apply(fill("apm-0"))
    for i in range(2_002):
        view.apply(order(f"apm-{i}", "open"))
    assert view.order("apm-0") is None and view.order("apm-1") is None
    assert view.fills("apm-0") == []
    assert view.order("apm-2") is not None and view.order("apm-2001") is not None


async def test_order_final_gives_up_after_a_report_that_is_not_final(autojump_clock):
    view = synced_view()
    got = []

    async def wait():
        got.append(await view.order_final("apm-1", within=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(1)
        view.apply(order("apm-1", "open", "0.5"))
    assert got == [None]
    assert trio.current_time() == pytest.approx(5)


async def test_caught_up_asks_the_barrier_only_while_healthy(autojump_clock):
    asked = []

    async def barrier(within):
        asked.append(within)
        return True

    assert await AccountView("bybit", barrier=barrier).caught_up(2) is False
    assert await synced_view().caught_up(2) is False  # no barrier: it cannot tell
    view = synced_view(barrier=barrier)
    assert await view.caught_up(2) is True
    assert asked == [2]


async def test_caught_up_is_false_when_the_barrier_fails_or_the_view_goes_down(autojump_clock):
    async def refuse(within):
        return False

    assert await synced_view(barrier=refuse).caught_up(2) is False
    view = AccountView("bybit")

    async def drop(within):
        view.lost("test")
        return True

    view.barrier = drop
    view.connected()
    view.synced([])
    assert await view.caught_up(2) is False


async def test_order_final_waits_again_after_the_stream_came_back(autojump_clock):
    """The stream drops and comes back before the waiter runs: it waits on, and gives up
    at its time (it neither returns early nor spins)."""
    view = synced_view()
    got = []

    async def wait():
        got.append(await view.order_final("apm-1", within=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(1)
        view.lost("test")
        view.connected()
        view.synced([])
    assert got == [None]
    assert trio.current_time() == pytest.approx(5)
