"""Executor promises pinned down by mutation testing (``make mutate``).

Each scenario runs one close on the in-memory exchange under trio's autojump MockClock
and checks everything the executor did, not just the outcome:

* the whole :class:`CloseResult` it answered (every field, compared at once);
* what it asked the exchange, in order, with the arguments and the virtual time of
  each call (so a retry schedule is checked to the second);
* every write-ahead row and update it asked the storage writer to record;
* its counters (:class:`ExecutorStats`) and what it tells its observer
  (``order_submitted``, ``exchange_error``, ``close_attempted``).

The harness is the one of tests/test_executor.py; what it adds is the trace.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from uuid import UUID, uuid4

import pytest
import trio

from actors.executor import CloseRequest, EpisodeChanged, Executor, ExecutorConfig, client_order_id
from actors.order_sizing import order_qty
from actors.position import CloseResult, PositionUpdate
from storage.writer import StorageWriter
from supervisor.observer import Observer
from exchanges.errors import (
    InsufficientLiquidityError, NonRetryableError, RetryableError, UnknownOutcomeError,
)
from exchanges.port import Fill, LotLimits, OrderResult
from storage import ops as op
from tests.test_executor import NOW, SYMBOL, Harness, exchange

LIQUIDITY = "30208"  # Bybit's "insufficient liquidity" code, as the adapter passes it on


class _Told(Observer):
    """Records what the executor tells its observer into a :class:`Traced`'s lists."""

    def __init__(self, trace):
        self.trace = trace

    def exchange_error(self, exchange, code):
        self.trace.errors.append((exchange, code))

    def order_submitted(self, exchange, seconds):
        self.trace.submits.append((exchange, seconds))

    def close_attempted(self, exchange, attempt):
        self.trace.attempts.append((exchange, attempt))


class Traced(Harness):
    """The executor harness, plus a trace of everything the executor did.

    ``calls``: ``(virtual time, method, args)`` of every exchange call; ``errors``,
    ``attempts``, ``submits``: what the metric callbacks were told.
    """

    def __init__(self, ex, **kw):
        self.errors: list[tuple[str, str]] = []
        self.submits: list[tuple[str, float]] = []
        self.attempts: list[tuple[str, int]] = []
        super().__init__(ex, observer=_Told(self), **kw)
        self.calls: list[tuple[float, str, tuple]] = []
        real_enter = ex._enter

        async def enter(method, *args):
            self.calls.append((trio.current_time(), method, args))
            await real_enter(method, *args)

        ex._enter = enter

    async def _write(self, batch) -> None:
        # An update of an order the in-memory table never saw (its row is in a test's own
        # loader) is kept too: a write that always failed would hold the writer forever.
        for item in batch:
            if isinstance(item, op.UpdateCloseOrder):
                self.table.setdefault(item.client_order_id, {"client_order_id": item.client_order_id})
        await super()._write(batch)

    def timeline(self, method: str | None = None) -> list[tuple[float, str]]:
        """(seconds since the first call, method) of each exchange call."""
        t0 = self.calls[0][0]
        return [(round(t - t0, 6), m) for t, m, _ in self.calls if method in (None, m)]

    def writes(self) -> list:
        """Every write-ahead row and update, in the order they reached the database.

        Rows are written directly and updates through the storage writer's task, so rows
        and updates of *different* orders may interleave either way; compare those with
        :meth:`writes_of`.
        """
        return [o for o in self.ops if isinstance(o, (op.RecordCloseOrder, op.UpdateCloseOrder))]

    def writes_of(self, cid: str) -> list:
        """The write-ahead row and updates of one order, in order. (A next order's row,
        written straight to the database, may overtake an update still queued in the
        writer, so the writes of several orders interleave in no fixed order.)"""
        return [o for o in self.writes() if o.client_order_id == cid]

    def stats(self) -> tuple:
        s = self.executor.stats
        return s.attempts, s.retries, s.lookups, s.errors_by_code


def result(outcome: str, **fields) -> CloseResult:
    return CloseResult(NOW, outcome, **fields)


def row(cid: str, aged: UUID, attempt: int, *, side="sell", order_type="market", qty="1", limit=None):
    return op.RecordCloseOrder(client_order_id=cid, aged_id=aged, attempt=attempt, exchange="bybit",
                               symbol=SYMBOL, side=side, order_type=order_type, requested_qty=D(qty),
                               limit_price=limit)


def update(cid: str, **fields) -> op.UpdateCloseOrder:
    return op.UpdateCloseOrder(cid, fields)


def filled(cid: str, number: int, qty="1", price="100") -> op.UpdateCloseOrder:
    return update(cid, state="filled", exchange_order_id=f"bybit-{number}", filled_qty=D(qty), avg_price=D(price))


def answer_lookups(ex, answers: dict[str, OrderResult | None]) -> None:
    """Lookups of these client order ids get these answers (the call is still traced)."""
    real = ex.fetch_order_by_client_id

    async def lookup(symbol, cid):
        if cid in answers:
            await ex._enter("fetch_order_by_client_id", symbol, cid)
            return answers[cid]
        return await real(symbol, cid)

    ex.fetch_order_by_client_id = lookup


# --- the building blocks -----------------------------------------------------------------


def test_a_client_order_id_is_the_prefix_24_hex_digits_and_the_attempt():
    aged = UUID("0123456789abcdef0123456789abcdef")
    assert client_order_id(aged, 7) == "apm-0123456789abcdef01234567-7"
    assert len(client_order_id(aged, 9999)) <= 36


def test_an_episode_change_says_what_the_position_is_now():
    changed = EpisodeChanged(D("1.5"), D("101"))
    assert (changed.qty, changed.entry_price) == (D("1.5"), D("101"))
    assert str(changed) == "position now 1.5 at entry 101"


def test_the_price_tick_is_the_exchanges_own():
    ex = exchange(tick_size=D("0.1"))
    executor = Harness(ex).executor
    assert executor.price_tick("bybit", SYMBOL) == D("0.1")
    assert executor.price_tick("okx", SYMBOL) is None  # an exchange it does not know

    class NoTick:
        pass

    assert Executor({"bybit": NoTick()}, StorageWriter(None), None).price_tick("bybit", SYMBOL) is None

    class PerSymbol:
        def price_tick(self, symbol):
            return {SYMBOL: D("0.5")}.get(symbol)

    per_symbol = Executor({"bybit": PerSymbol()}, StorageWriter(None), None)
    assert (per_symbol.price_tick("bybit", SYMBOL), per_symbol.price_tick("bybit", "ETH/USDT:USDT")) == (D("0.5"), None)


def test_the_defaults():
    executor = Executor({}, StorageWriter(None), None)
    assert executor.config == ExecutorConfig()
    assert executor.retry_delays == (1.0, 3.0, 5.0)
    assert executor.slippage == D("0.01")
    assert (executor.max_partial_rounds, executor.max_rounds, executor.follow_polls) == (10, 1000, 60)
    assert (executor.lookup_retries, executor.db_timeout, executor.write_direct) == (3, 2.0, None)
    request = CloseRequest(aged_id=uuid4(), exchange="bybit", symbol=SYMBOL, side="long", qty=D(1), next_attempt=1,
                           reply=None, clock=lambda: NOW)
    assert (request.reconcile_only, request.emergency, request.tick_received_at) == (False, False, None)
    assert (request.entry_price, request.opened_at, request.worst_price) == (None, None, None)


def test_the_queue_takes_a_thousand_requests_then_refuses():
    executor = Executor({}, StorageWriter(None), None)
    request = CloseRequest(aged_id=uuid4(), exchange="bybit", symbol=SYMBOL, side="long", qty=D(1), next_attempt=1,
                           reply=None, clock=lambda: NOW)
    for _ in range(1000):
        executor.submit(request)
    with pytest.raises(trio.WouldBlock):
        executor.submit(request)


# --- a market close, traced --------------------------------------------------------------


async def test_a_market_close_in_full(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    cid = client_order_id(aged, 1)
    r = await h.close(aged)
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=1, last_order_id=cid)
    assert [(m, a) for _, m, a in h.calls] == [
        ("fetch_positions", ([SYMBOL],)), ("close_limits", (SYMBOL,)),
        ("create_close_order", (SYMBOL, "long", D(1), cid, None)), ("fetch_positions", ([SYMBOL],))]
    assert h.writes() == [row(cid, aged, 1), filled(cid, 1)]
    assert h.stats() == (1, 0, 0, {})
    assert (h.attempts, h.errors, h.submits) == ([("bybit", 1)], [], [])
    assert aged not in h.executor._fills


async def test_a_short_is_closed_by_a_buy(autojump_clock):
    h, aged = Traced(exchange(side="short")), uuid4()
    cid = client_order_id(aged, 1)
    r = await h.close(aged, side="short")
    assert r == result("flat", filled_qty=D(1), avg_price=D("100.1"), remaining_qty=D(0), attempts=1, last_order_id=cid)
    assert h.writes() == [row(cid, aged, 1, side="buy"), filled(cid, 1, price="100.1")]


async def test_the_time_from_tick_to_order_is_reported_for_the_first_order_only(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.ex.fail_next(RetryableError("503", exchange="bybit"))
    r = await h.close(aged, tick_received_at=trio.current_time() - 0.25)
    assert (r.outcome, r.attempts) == ("flat", 2)
    assert h.submits == [("bybit", pytest.approx(0.25))]
    assert h.attempts == [("bybit", 1), ("bybit", 2)]
    assert h.stats() == (2, 1, 0, {"RetryableError": 1})
    # a later request whose first order is not its first attempt is timed too
    h2, aged2 = Traced(exchange()), uuid4()
    await h2.close(aged2, next_attempt=3, tick_received_at=trio.current_time() - 0.5)
    assert h2.submits == [("bybit", pytest.approx(0.5))] and h2.attempts == [("bybit", 3)]
    assert h2.stats() == (1, 1, 0, {})


# --- failures on the send ----------------------------------------------------------------


async def test_retryable_rejections_are_retried_on_schedule_then_fail(autojump_clock):
    h, aged = Traced(exchange(), retry_delays=(1.0, 3.0)), uuid4()
    h.ex.fail_next(RetryableError("busy " + "x" * 600, exchange="bybit", code="10006"), 5)
    r = await h.close(aged)
    cids = [client_order_id(aged, a) for a in (1, 2, 3)]
    error = "RetryableError: busy " + "x" * 600
    assert r == result("failed", attempts=3, error=error)
    assert h.timeline() == [(0, "fetch_positions"), (0, "close_limits"), (0, "create_close_order"),
                            (1, "fetch_positions"), (1, "create_close_order"),
                            (4, "fetch_positions"), (4, "create_close_order")]
    rejected = update("", state="rejected", error_code="10006", error_message=("busy " + "x" * 600)[:500]).fields
    assert h.writes() == [w for c, a in zip(cids, (1, 2, 3)) for w in (row(c, aged, a), update(c, **rejected))]
    assert h.stats() == (3, 2, 0, {"10006": 3})
    assert h.errors == [("bybit", "10006")] * 3 and h.attempts == [("bybit", a) for a in (1, 2, 3)]
    assert aged in h.executor._fills  # failed: kept for the next request
    assert h.executor._fills[aged].pending == {}  # each rejected: nothing to look up next time


async def test_a_rejection_the_exchange_can_not_retry_ends_the_close(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.ex.fail_next(NonRetryableError("bad symbol", exchange="bybit", code="10001"))
    r = await h.close(aged, next_attempt=2)
    cid = client_order_id(aged, 2)
    assert r == result("failed", remaining_qty=D(1), attempts=2, error="NonRetryableError: bad symbol")
    assert h.writes() == [row(cid, aged, 2),
                          update(cid, state="rejected", error_code="10001", error_message="bad symbol")]
    assert [m for _, m, _ in h.calls] == ["fetch_positions", "close_limits", "create_close_order", "fetch_positions"]
    assert h.stats() == (1, 1, 0, {"10001": 1})
    # the position check after it fails too: what remains is unknown
    h2, aged2 = Traced(exchange()), uuid4()
    h2.ex.fail_next(NonRetryableError("bad symbol", exchange="bybit", code="10001"))
    real = h2.ex.create_close_order

    async def create(*a, **kw):
        try:
            return await real(*a, **kw)
        finally:
            h2.ex.fail_next(RetryableError("502", exchange="bybit"), method="fetch_positions")

    h2.ex.create_close_order = create
    r2 = await h2.close(aged2)
    assert r2 == result("failed", attempts=1, error="NonRetryableError: bad symbol")
    # a minimum-quantity rejection then is a failure too, not dust: the remainder is unknown
    h3, aged3 = Traced(exchange(qty="0.005", min_qty=D("0.01"))), uuid4()
    h3.ex.close_limits = None
    h3.ex.fail_next(RetryableError("502", exchange="bybit"), method="fetch_positions")
    real3 = h3.ex.create_close_order

    async def create3(*a, **kw):
        try:
            return await real3(*a, **kw)
        finally:
            h3.ex.fail_next(RetryableError("502", exchange="bybit"), method="fetch_positions")

    h3.ex.create_close_order = create3
    r3 = await h3.close(aged3, qty="0.005")
    assert r3 == result("failed", attempts=1, error="NonRetryableError: bybit: qty 0.005 below the minimum order 0.01")


async def test_a_minimum_rejection_is_dust_with_what_remains(autojump_clock):
    # the executor's limits know no minimum; the exchange does
    h, aged = Traced(exchange(qty="0.005", min_qty=D("0.01"))), uuid4()

    async def limits(symbol):
        await h.ex._enter("close_limits", symbol)
        return LotLimits(step=D("0.001"))

    h.ex.close_limits = limits
    r = await h.close(aged, qty="0.005", next_attempt=2)
    cid = client_order_id(aged, 2)
    error = "remaining 0.005 is below the minimum order quantity 0.001: no order can close it"
    assert r == result("dust", remaining_qty=D("0.005"), attempts=2, error=error)
    assert h.writes() == [row(cid, aged, 2, qty="0.005"),
                          update(cid, state="rejected", error_code="qty_below_min",
                                 error_message="bybit: qty 0.005 below the minimum order 0.01")]
    assert aged not in h.executor._fills  # dust: finished
    # without any limits the message names no minimum
    h2, aged2 = Traced(exchange(qty="0.005", min_qty=D("0.01"))), uuid4()
    h2.ex.close_limits = None
    r2 = await h2.close(aged2, qty="0.005")
    assert r2 == result("dust", remaining_qty=D("0.005"), attempts=1,
                        error="remaining 0.005 is below the minimum order quantity: no order can close it")


async def test_dust_before_any_order_names_the_minimum(autojump_clock):
    h, aged = Traced(exchange(qty="0.005", min_qty=D("0.01"))), uuid4()
    r = await h.close(aged, qty="0.005", next_attempt=3)
    assert r == result("dust", remaining_qty=D("0.005"), attempts=2,
                       error="remaining 0.005 is below the minimum order quantity 0.01: no order can close it")
    # no minimum, only the lot: the lot is the least order
    h2 = Traced(exchange(qty="0.0005"))
    r2 = await h2.close(uuid4(), qty="0.0005")
    assert r2 == result("dust", remaining_qty=D("0.0005"), attempts=0,
                        error="remaining 0.0005 is below the minimum order quantity 0.001: no order can close it")
    # after a fill: what was filled is reported with the dust
    h3, aged3 = Traced(exchange(qty="1.0005")), uuid4()
    r3 = await h3.close(aged3, qty="1.0005")
    assert r3 == result("dust", filled_qty=D(1), avg_price=D(100), remaining_qty=D("0.0005"), attempts=1,
                        last_order_id=client_order_id(aged3, 1),
                        error="remaining 0.0005 is below the minimum order quantity 0.001: no order can close it")


# --- no liquidity: the limit-IOC fallback ------------------------------------------------


def thin_book(message="thin book"):
    return InsufficientLiquidityError(message, exchange="bybit", code=LIQUIDITY)


async def test_without_a_price_bound_a_thin_book_is_retried_at_market(autojump_clock):
    # neither an emergency nor a policy price: no limit order, the market order again later
    h, aged = Traced(exchange()), uuid4()
    h.ex.fail_next(thin_book("x" * 600))
    r = await h.close(aged)
    c1, c2 = client_order_id(aged, 1), client_order_id(aged, 2)
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=2, last_order_id=c2)
    assert h.writes() == [row(c1, aged, 1),
                          update(c1, state="rejected", error_code=LIQUIDITY, error_message="x" * 500),
                          row(c2, aged, 2), filled(c2, 1)]
    assert h.timeline("create_close_order") == [(0, "create_close_order"), (1, "create_close_order")]
    assert h.stats() == (2, 1, 0, {LIQUIDITY: 1}) and h.errors == [("bybit", LIQUIDITY)]


async def test_a_thin_book_falls_back_at_once_and_the_ioc_is_retried_on_schedule(autojump_clock):
    h, aged = Traced(exchange(), retry_delays=(1.0, 3.0)), uuid4()
    h.ex.fail_next(thin_book(), 4)
    r = await h.close(aged, emergency=True)
    cids = [client_order_id(aged, a) for a in (1, 2, 3, 4)]
    assert r == result("failed", attempts=4, error="InsufficientLiquidityError: thin book")
    assert h.timeline("create_close_order") == [(0, "create_close_order"), (0, "create_close_order"),
                                                (1, "create_close_order"), (4, "create_close_order")]
    assert [a[4] for _, m, a in h.calls if m == "create_close_order"] == [None, D("99.00"), D("99.00"), D("99.00")]
    rejected = {"state": "rejected", "error_code": LIQUIDITY, "error_message": "thin book"}
    assert h.writes() == [row(cids[0], aged, 1), update(cids[0], **rejected)] + [
        w for a, c in enumerate(cids[1:], 2)
        for w in (row(c, aged, a, order_type="limit_ioc", limit=D("99.00")), update(c, **rejected))]
    assert h.stats() == (4, 3, 0, {LIQUIDITY: 4})
    assert h.executor._fills[aged].pending == {}


async def test_after_a_fill_the_next_order_is_at_market_again(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.ex.fail_next(thin_book())
    h.ex.partial_fill_ratio = D("0.5")
    real = h.ex.create_close_order

    async def create(*a, **kw):
        try:
            return await real(*a, **kw)
        finally:
            if kw.get("limit_price") is not None:
                h.ex.partial_fill_ratio = None  # the IOC filled half; the book refills

    h.ex.create_close_order = create
    r = await h.close(aged, worst_price=D(90))
    c1, c2, c3 = (client_order_id(aged, a) for a in (1, 2, 3))
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=3, last_order_id=c3)
    assert [(a[3], a[2], a[4]) for _, m, a in h.calls if m == "create_close_order"] == [
        (c1, D(1), None), (c2, D(1), D("99.00")), (c3, D("0.5"), None)]
    assert h.writes_of(c2)[1:] == [update(c2, state="partially_filled", exchange_order_id="bybit-1",
                                          filled_qty=D("0.5"), avg_price=D(100))]


async def test_the_limit_order_has_its_own_maximum(autojump_clock):
    h, aged = Traced(exchange(max_market_qty=D("0.4"), max_limit_qty=D(1))), uuid4()
    h.ex.fail_next(thin_book())
    r = await h.close(aged, emergency=True)
    assert (r.outcome, r.filled_qty, r.attempts) == ("flat", D(1), 2)
    assert [(a[2], a[4]) for _, m, a in h.calls if m == "create_close_order"] == [(D("0.4"), None), (D(1), D("99.00"))]


async def test_an_ioc_that_finds_nothing_is_canceled_and_retried(autojump_clock):
    ex = exchange()
    ex.set_quote(SYMBOL, "99", "99.1", "99")
    h, aged = Traced(ex, retry_delays=(1.0,)), uuid4()
    h.ex.fail_next(thin_book())
    r = await h.close(aged, worst_price=D(100))
    c1, c2, c3 = (client_order_id(aged, a) for a in (1, 2, 3))
    assert r == result("failed", remaining_qty=None, attempts=3, error="InsufficientLiquidityError: thin book")
    assert h.writes() == [
        row(c1, aged, 1), update(c1, state="rejected", error_code=LIQUIDITY, error_message="thin book"),
        row(c2, aged, 2, order_type="limit_ioc", limit=D(100)),
        update(c2, state="canceled", exchange_order_id="bybit-1", filled_qty=D(0)),
        row(c3, aged, 3, order_type="limit_ioc", limit=D(100)),
        update(c3, state="canceled", exchange_order_id="bybit-2", filled_qty=D(0))]
    assert h.timeline("create_close_order") == [(0, "create_close_order"), (0, "create_close_order"),
                                                (1, "create_close_order")]


@pytest.mark.parametrize("side, bid, ask, last, bound, emergency, limit", [
    ("long", "100.123456789", "100.2", "100", None, True, "99.12222223"),  # bid - 1 %, rounded up
    ("short", "100", "100.123456789", "100", None, True, "101.12469135"),  # ask + 1 %, rounded down
    ("long", None, "100.2", "50", None, True, "49.50"),  # no bid: the last price
    ("short", "100", None, "50", None, True, "50.50"),  # no ask: the last price
    ("long", "100", "100.1", "100", "99.5", False, "99.5"),  # the policy price is better: it bounds
    ("long", "100", "100.1", "100", "98", False, "99.00"),  # the bound is worse: 1 % through
    ("short", "100", "100.1", "100", "100.5", False, "100.5"),
    ("short", "100", "100.1", "100", "102", False, "101.101"),
    ("long", "100", "100.1", "100", "99.5", True, "99.00"),  # an emergency ignores the bound
])
async def test_the_limit_price(autojump_clock, side, bid, ask, last, bound, emergency, limit):
    ex = exchange(side=side)
    ex.set_quote(SYMBOL, bid, ask, last)
    h = Traced(ex)
    h.ex.fail_next(thin_book())
    await h.close(uuid4(), side=side, emergency=emergency, worst_price=None if bound is None else D(bound))
    assert [a[4] for _, m, a in h.calls if m == "create_close_order"][1] == D(limit)


async def test_a_limit_slippage_of_two_percent(autojump_clock):
    h = Traced(exchange(), liquidity_slippage_percent=D(2))
    h.ex.fail_next(thin_book())
    await h.close(uuid4(), emergency=True)
    assert [a[4] for _, m, a in h.calls if m == "create_close_order"] == [None, D("98.00")]


@pytest.mark.parametrize("bid, last", [(None, None), ("0", None), (None, "0")])
async def test_no_price_for_a_limit_is_retried_then_fails(autojump_clock, bid, last):
    ex = exchange()
    ex.set_quote(SYMBOL, bid, "100.1", last)
    h, aged = Traced(ex, retry_delays=(1.0, 3.0)), uuid4()
    h.ex.fail_next(thin_book())
    r = await h.close(aged, emergency=True)
    assert r == result("failed", attempts=1, error=f"InsufficientLiquidityError: no price to set a limit for {SYMBOL}")
    assert [t for t, m in h.timeline("fetch_quote")] == [0, 1, 4]
    assert h.stats() == (1, 0, 0, {LIQUIDITY: 1, "InsufficientLiquidityError": 3})
    assert [w.client_order_id for w in h.writes()] == [client_order_id(aged, 1)] * 2  # no limit order was sent


async def test_a_price_just_above_one_is_a_price(autojump_clock):
    ex = exchange()
    ex.set_quote(SYMBOL, "0.5", "0.6", "0.5")
    h = Traced(ex)
    h.ex.fail_next(thin_book())
    r = await h.close(uuid4(), emergency=True)
    assert r.outcome == "flat"
    assert [a[4] for _, m, a in h.calls if m == "create_close_order"] == [None, D("0.495")]


async def test_a_quote_that_fails_is_retried(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.ex.fail_next(thin_book())
    h.ex.fail_next(RetryableError("quote 503", exchange="bybit", retry_after=7), method="fetch_quote")
    r = await h.close(aged, emergency=True)
    c2 = client_order_id(aged, 2)
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=2, last_order_id=c2)
    assert h.timeline("fetch_quote") == [(0, "fetch_quote"), (7, "fetch_quote")]
    assert h.errors == [("bybit", LIQUIDITY), ("bybit", "RetryableError")]


# --- the position check, lookups, unknown outcomes, open orders --------------------------


async def test_a_position_check_that_fails_is_retried_on_schedule(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.ex.fail_next(RetryableError("502", exchange="bybit"), method="fetch_positions")
    h.ex.fail_next(RetryableError("429", exchange="bybit", code="10006", retry_after=8), method="fetch_positions")
    r = await h.close(aged)
    cid = client_order_id(aged, 1)
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=1, last_order_id=cid)
    assert h.timeline() == [(0, "fetch_positions"), (1, "fetch_positions"), (9, "fetch_positions"),
                            (9, "close_limits"), (9, "create_close_order"), (9, "fetch_positions")]
    assert h.errors == [("bybit", "RetryableError"), ("bybit", "10006")]


async def test_a_position_check_that_keeps_failing_fails_the_close(autojump_clock):
    h, aged = Traced(exchange(), retry_delays=(1.0, 3.0)), uuid4()
    h.ex.fail_next(RetryableError("502", exchange="bybit"), 3, method="fetch_positions")
    r = await h.close(aged, next_attempt=3)
    assert r == result("failed", attempts=2, error="RetryableError: 502")
    assert h.timeline() == [(0, "fetch_positions"), (1, "fetch_positions"), (4, "fetch_positions")]
    assert h.writes() == [] and h.stats() == (0, 0, 0, {"RetryableError": 3})


async def test_a_lost_reply_with_lookups_that_fail_leaves_the_order_unknown(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    cid = client_order_id(aged, 1)
    h.ex.lose_reply_next(1)
    h.ex.fail_next(RetryableError("lookup 502", exchange="bybit", retry_after=2), 3, method="fetch_order_by_client_id")
    r = await h.close(aged)
    lost = f"bybit: reply lost for {cid!r} (order executed)"
    assert r == result("failed", attempts=1, error=f"UnknownOutcomeError: {lost}; could not look up order {cid}")
    assert h.writes() == [row(cid, aged, 1), update(cid, state="unknown", error_message=lost)]
    assert h.timeline("fetch_order_by_client_id") == [(0, "fetch_order_by_client_id"), (2, "fetch_order_by_client_id"),
                                                      (5, "fetch_order_by_client_id")]
    assert trio.current_time() - h.calls[0][0] == pytest.approx(5)  # no wait after the last lookup
    assert h.stats() == (1, 0, 3, {"lost_reply": 1, "RetryableError": 3})
    assert h.executor._fills[aged].pending == {cid: 1}


async def test_a_long_unknown_outcome_message_is_cut_for_the_table(autojump_clock):
    h, aged = Traced(exchange(), lookup_retries=1), uuid4()
    cid = client_order_id(aged, 1)
    h.ex.fail_next(UnknownOutcomeError("timeout " + "x" * 600, exchange="bybit"))
    h.ex.fail_next(RetryableError("lookup 502", exchange="bybit"), method="fetch_order_by_client_id")
    r = await h.close(aged)
    assert r.error == f"UnknownOutcomeError: timeout {'x' * 600}; could not look up order {cid}"
    assert h.writes()[-1] == update(cid, state="unknown", error_message=("timeout " + "x" * 600)[:500])
    assert h.stats()[2] == 1  # one lookup, no wait


async def test_an_order_that_never_arrived_is_not_found_and_the_next_attempt_follows(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    c1, c2 = client_order_id(aged, 1), client_order_id(aged, 2)
    h.ex.fail_next(UnknownOutcomeError("timeout " + "x" * 600, exchange="bybit"))  # never reached the exchange
    r = await h.close(aged)
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=2, last_order_id=c2)
    assert h.writes() == [row(c1, aged, 1), update(c1, state="not_found", error_message=("timeout " + "x" * 600)[:500]),
                          row(c2, aged, 2), filled(c2, 1)]
    assert h.timeline("create_close_order") == [(0, "create_close_order"), (1, "create_close_order")]
    assert h.stats() == (2, 1, 1, {"UnknownOutcomeError": 1})


async def test_lookups_retry_on_the_schedule_and_the_last_delay_repeats(autojump_clock):
    h, aged = Traced(exchange(), retry_delays=(1.0, 3.0), lookup_retries=4), uuid4()
    h.ex.lose_reply_next(1)
    h.ex.fail_next(RetryableError("lookup 502", exchange="bybit"), 3, method="fetch_order_by_client_id")
    r = await h.close(aged)
    assert (r.outcome, r.attempts) == ("flat", 1)
    assert [t for t, _ in h.timeline("fetch_order_by_client_id")] == [0, 1, 4, 7]
    assert h.stats()[2] == 4
    # without a schedule lookups follow each other at once
    h2, aged2 = Traced(exchange(), retry_delays=(), lookup_retries=3), uuid4()
    h2.ex.lose_reply_next(1)
    h2.ex.fail_next(RetryableError("lookup 502", exchange="bybit"), 2, method="fetch_order_by_client_id")
    r2 = await h2.close(aged2)
    assert (r2.outcome, r2.attempts) == ("flat", 1)
    assert [t for t, _ in h2.timeline("fetch_order_by_client_id")] == [0, 0, 0]


async def test_an_open_order_is_followed_on_the_schedule(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    cid = client_order_id(aged, 1)
    h.ex.open_next(1, lookups=4)
    r = await h.close(aged)
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=1, last_order_id=cid)
    assert [t for t, _ in h.timeline("fetch_order_by_client_id")] == [1, 4, 9, 14]
    assert h.writes() == [row(cid, aged, 1), filled(cid, 1)]
    # without a schedule: one second apart
    h2 = Traced(exchange(), retry_delays=())
    h2.ex.open_next(1, lookups=3)
    r2 = await h2.close(uuid4())
    assert r2.outcome == "flat"
    assert [t for t, _ in h2.timeline("fetch_order_by_client_id")] == [1, 2, 3]


async def test_a_followed_order_keeps_its_requested_quantity(autojump_clock):
    # the lookup does not say how much was asked for: the order is still known to be partial
    h, aged = Traced(exchange()), uuid4()
    c1, c2 = client_order_id(aged, 1), client_order_id(aged, 2)
    h.ex.open_next(1, lookups=99)
    real = h.ex.fetch_order_by_client_id

    async def lookup(symbol, cid):
        found = await real(symbol, cid)
        if cid != c1:
            return found
        h.ex.set_position(SYMBOL, "long", "0.5", "100")
        return OrderResult(cid, "x-1", "closed", D("0.5"), D(100), None)

    h.ex.fetch_order_by_client_id = lookup
    r = await h.close(aged)
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=2, last_order_id=c2)
    assert h.writes_of(c1) == [row(c1, aged, 1), update(c1, state="partially_filled", exchange_order_id="x-1",
                                                        filled_qty=D("0.5"), avg_price=D(100))]


async def test_a_followed_order_takes_the_quantity_the_lookup_reports(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    c1 = client_order_id(aged, 1)
    h.ex.open_next(1, lookups=99)
    real = h.ex.fetch_order_by_client_id

    async def lookup(symbol, cid):
        found = await real(symbol, cid)
        if cid != c1:
            return found
        h.ex.set_position(SYMBOL, "long", "0.5", "100")
        return OrderResult(cid, "x-1", "closed", D("0.5"), D(100), D("0.5"))  # the exchange cut the order

    h.ex.fetch_order_by_client_id = lookup
    await h.close(aged)
    assert h.writes_of(c1)[1:] == [update(c1, state="filled", exchange_order_id="x-1", filled_qty=D("0.5"), avg_price=D(100))]


async def test_a_followed_order_that_fills_in_full_without_a_requested_quantity(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    cid = client_order_id(aged, 1)
    h.ex.open_next(1, lookups=99)
    real = h.ex.fetch_order_by_client_id

    async def lookup(symbol, c):
        await real(symbol, c)
        h.ex.close_externally(SYMBOL)
        return OrderResult(c, "x-1", "closed", D(1), D(100), None)

    h.ex.fetch_order_by_client_id = lookup
    r = await h.close(aged)
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=1, last_order_id=cid)
    assert h.writes()[1] == update(cid, state="filled", exchange_order_id="x-1", filled_qty=D(1), avg_price=D(100))


async def test_an_open_order_whose_lookups_fail_stays_open(autojump_clock):
    h, aged = Traced(exchange(), lookup_retries=2), uuid4()
    cid = client_order_id(aged, 1)
    h.ex.open_next(1, lookups=9)
    h.ex.fail_next(RetryableError("lookup 502", exchange="bybit"), 2, method="fetch_order_by_client_id")
    r = await h.close(aged)
    assert r == result("failed", attempts=1, error=f"UnknownOutcomeError: could not look up order {cid}")
    assert h.writes() == [row(cid, aged, 1), update(cid, state="open")]
    assert h.executor._fills[aged].pending == {cid: 1}


async def test_an_order_open_too_long_is_recorded_open(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.executor.follow_polls = 2
    cid = client_order_id(aged, 1)
    h.ex.open_next(1, lookups=9)
    r = await h.close(aged)
    assert r == result("failed", attempts=1, error=f"order {cid} is still open on the exchange")
    assert h.writes() == [row(cid, aged, 1), update(cid, state="open", exchange_order_id="bybit-1", filled_qty=D(0))]
    assert [t for t, _ in h.timeline("fetch_order_by_client_id")] == [1, 4]


# --- partial fills, splits and the round limits ------------------------------------------


async def test_partial_fills_go_on_at_once_up_to_the_limit_then_wait(autojump_clock):
    h, aged = Traced(exchange(qty="1"), max_partial_rounds=2, retry_delays=(1.0, 3.0)), uuid4()
    h.ex.partial_fill_ratio = D("0.5")
    r = await h.close(aged)
    # three orders at once (the first and two partial rounds), then the schedule
    assert [t for t, _ in h.timeline("create_close_order")] == [0, 0, 0, 1, 4]
    assert [a[2] for a in h.creates()] == [D(1), D("0.5"), D("0.25"), D("0.125"), D("0.063")]
    assert r == result("failed", filled_qty=D("0.968"), avg_price=D(100), attempts=5,
                       last_order_id=client_order_id(aged, 5))
    assert h.stats() == (5, 4, 0, {})


async def test_full_fills_of_a_split_close_do_not_count_as_partial(autojump_clock):
    h, aged = Traced(exchange(qty="1", max_market_qty=D("0.4")), max_partial_rounds=0), uuid4()
    r = await h.close(aged)
    assert (r.outcome, r.filled_qty, r.attempts) == ("flat", D(1), 3)
    assert [t for t, _ in h.timeline("create_close_order")] == [0, 0, 0]
    # a fill reported without the quantity asked for counts as partial
    h2, aged2 = Traced(exchange(qty="1", max_market_qty=D("0.4")), max_partial_rounds=0), uuid4()
    real = h2.ex.create_close_order

    async def create(*a, **kw):
        found = await real(*a, **kw)
        return OrderResult(found.client_order_id, found.exchange_order_id, found.status, found.filled_qty,
                           found.avg_price, None)

    h2.ex.create_close_order = create
    r2 = await h2.close(aged2)
    assert (r2.outcome, r2.filled_qty) == ("flat", D(1))
    assert [t for t, _ in h2.timeline("create_close_order")] == [0, 1, 4]


async def test_one_request_sends_at_most_max_rounds_orders(autojump_clock):
    h, aged = Traced(exchange(qty="1", max_market_qty=D("0.4"))), uuid4()
    h.executor.max_rounds = 2
    r = await h.close(aged)
    c2 = client_order_id(aged, 2)
    assert r == result("failed", filled_qty=D("0.8"), avg_price=D(100), remaining_qty=D("0.2"), attempts=2,
                       last_order_id=c2, error="too many orders for one close")
    assert len(h.creates()) == 2
    # with an error before, that error is reported
    h2, aged2 = Traced(exchange(qty="1", max_market_qty=D("0.4"))), uuid4()
    h2.executor.max_rounds = 2
    h2.ex.fail_next(RetryableError("502", exchange="bybit"))
    r2 = await h2.close(aged2)
    assert (r2.outcome, r2.error, r2.remaining_qty, r2.attempts) == ("failed", "RetryableError: 502", D("0.6"), 2)


async def test_a_split_with_a_minimum_leaves_a_closable_remainder(autojump_clock):
    # 1.005 in orders of at most 0.5 with a minimum 0.01: 0.5, 0.495, then 0.01
    h = Traced(exchange(qty="1.005", max_market_qty=D("0.5"), min_qty=D("0.01")))
    r = await h.close(uuid4(), qty="1.005")
    assert [a[2] for a in h.creates()] == [D("0.5"), D("0.495"), D("0.01")] and r.outcome == "flat"
    # a remainder of exactly the minimum can be closed: no change
    h2 = Traced(exchange(qty="1.01", max_market_qty=D("0.5"), min_qty=D("0.01")))
    await h2.close(uuid4(), qty="1.01")
    assert [a[2] for a in h2.creates()] == [D("0.5"), D("0.5"), D("0.01")]
    # the cap not on the lot grid: rounded down to it
    h3 = Traced(exchange(qty="1", max_market_qty=D("0.4008")))
    await h3.close(uuid4())
    assert [a[2] for a in h3.creates()] == [D("0.4"), D("0.4"), D("0.2")]
    # one minimum too few to split well: two orders are still made
    h4 = Traced(exchange(qty="0.52", max_market_qty=D("0.5"), min_qty=D("0.03")))
    await h4.close(uuid4(), qty="0.52")
    assert [a[2] for a in h4.creates()] == [D("0.49"), D("0.03")]
    h6 = Traced(exchange(qty="0.6", max_market_qty=D("0.5"), min_qty=D("0.3")))  # two minimums exactly
    await h6.close(uuid4(), qty="0.6")
    assert [a[2] for a in h6.creates()] == [D("0.3"), D("0.3")]
    h5 = Traced(exchange(qty="0.52", max_market_qty=D("0.5"), min_qty=D("0.3")))
    r5 = await h5.close(uuid4(), qty="0.52")
    assert [a[2] for a in h5.creates()] == [D("0.5")] and r5.outcome == "dust"


@pytest.mark.parametrize("limits, remaining, qty", [
    (LotLimits(), "1.23456", "1.23456"),  # nothing known: all of it
    (LotLimits(step=D(0)), "1.23456", "1.23456"),  # a zero step is no step
    (LotLimits(step=D("0.5")), "1.23456", "1.0"),
    (LotLimits(step=D("0.5"), min_qty=D(0)), "0.4", None),  # a zero minimum: the step is the least order
    (LotLimits(step=D("0.001"), min_qty=D("0.5")), "0.5", "0.5"),  # exactly the minimum
    (LotLimits(step=D("0.001"), max_market_qty=D(0)), "3", "3"),  # a zero maximum is no maximum
    (LotLimits(step=D("0.001"), max_market_qty=D(2)), "2", "2"),  # exactly the maximum
    (LotLimits(step=D("0.001"), max_market_qty=D("0.8")), "2", "0.8"),
    (LotLimits(max_market_qty=D("0.8")), "2", "0.8"),  # no step: the cap as it is
    (LotLimits(step=D("0.001")), "0", None),
])
def test_the_order_quantity(limits, remaining, qty):
    expected = None if qty is None else D(qty)
    assert order_qty(D(remaining), limits, limit=False) == expected


async def test_a_position_without_lot_limits_is_closed_as_it_is(autojump_clock):
    h = Traced(exchange(qty="0.0005"))
    h.ex.close_limits = None
    h.ex.lot_size = D(0)
    r = await h.close(uuid4(), qty="0.0005")
    assert r.outcome == "flat" and [a[2] for a in h.creates()] == [D("0.0005")]


async def test_lot_limits_that_fail_to_load_leave_the_adapter_to_check(autojump_clock):
    h = Traced(exchange())
    h.ex.fail_next(RetryableError("markets 502", exchange="bybit", code="m502"), method="close_limits")
    r = await h.close(uuid4())
    assert r.outcome == "flat" and h.errors == [("bybit", "m502")]
    assert [m for _, m, _ in h.calls] == ["fetch_positions", "close_limits", "create_close_order", "fetch_positions"]


# --- reconciling with the write-ahead table and the exchange -----------------------------


class Table:
    """A write-ahead table frozen at ``rows`` (one aged position's), as a loader."""

    def __init__(self, aged: UUID, rows: list[dict]):
        self.aged, self.rows, self.reads = aged, rows, 0

    async def __call__(self, aged_id: UUID) -> list[dict]:
        self.reads += 1
        return [dict(r) for r in self.rows] if aged_id == self.aged else []


def table_row(aged: UUID, attempt: int, state: str, qty="0", price=None) -> dict:
    return {"client_order_id": client_order_id(aged, attempt), "attempt": attempt, "state": state,
            "filled_qty": D(qty), "avg_price": None if price is None else D(price)}


def lookups(h: Traced) -> list[str]:
    return [a[1] for _, m, a in h.calls if m == "fetch_order_by_client_id"]


async def test_a_first_close_does_not_read_the_table(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.executor.load_orders = table = Table(aged, [])
    await h.close(aged)
    assert table.reads == 0
    await h.close(uuid4(), next_attempt=2)
    await h.close(uuid4(), reconcile_only=True)
    assert table.reads == 2


async def test_an_order_unresolved_in_memory_is_looked_up_even_on_a_first_attempt(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    cid = client_order_id(aged, 1)
    h.ex.lose_reply_next(1)
    h.ex.fail_next(RetryableError("lookup 502", exchange="bybit"), 3, method="fetch_order_by_client_id")
    await h.close(aged)
    h.executor.load_orders = Table(aged, [])  # the table knows nothing of it
    r = await h.close(aged)  # the actor asks again with attempt 1
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=1, last_order_id=cid)
    assert lookups(h)[3:] == [cid] and len(h.creates()) == 1


async def test_an_order_both_in_the_table_and_in_memory_is_looked_up_once(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    cid = client_order_id(aged, 1)
    h.ex.lose_reply_next(1)
    h.ex.fail_next(RetryableError("lookup 502", exchange="bybit"), 3, method="fetch_order_by_client_id")
    await h.close(aged)
    assert h.table[cid]["state"] == "unknown"
    r = await h.close(aged, next_attempt=2)
    assert (r.outcome, r.filled_qty) == ("flat", D(1))
    assert lookups(h)[3:] == [cid]


async def test_the_table_is_read_for_this_aged_position(autojump_clock):
    h, aged = Traced(exchange(qty="0.75")), uuid4()
    h.executor.load_orders = Table(aged, [table_row(aged, 1, "partially_filled", "0.25", "110")])
    r = await h.close(aged, qty="0.75", next_attempt=2)
    c2 = client_order_id(aged, 2)
    assert r == result("flat", filled_qty=D(1), avg_price=D("102.5"), remaining_qty=D(0), attempts=2, last_order_id=c2)


async def test_a_table_that_does_not_answer_in_time_is_done_without(autojump_clock):
    h, aged = Traced(exchange()), uuid4()

    async def hangs(aged_id):
        await trio.sleep_forever()

    h.executor.load_orders = hangs
    r = await h.close(aged, next_attempt=2)
    assert (r.outcome, r.attempts) == ("flat", 2)
    assert h.calls[0][0] == pytest.approx(2.0)  # the database got its two seconds


async def test_what_memory_knows_is_final_is_not_looked_up_again(autojump_clock):
    # the table lags: it still shows every order pending
    h, aged = Traced(exchange(), retry_delays=(1.0,)), uuid4()
    c1, c2, c3 = (client_order_id(aged, a) for a in (1, 2, 3))
    h.ex.partial_fill_ratio = D("0.5")
    real = h.ex.create_close_order

    async def create(*a, **kw):
        found = await real(*a, **kw)
        h.ex.partial_fill_ratio = None
        h.ex.fail_next(RetryableError("502", exchange="bybit"), 2)
        return found

    h.ex.create_close_order = create
    r = await h.close(aged)
    assert (r.outcome, r.filled_qty, r.attempts) == ("failed", D("0.5"), 3)
    h.ex.create_close_order = real
    h.executor.load_orders = Table(aged, [table_row(aged, a, "pending") for a in (1, 2, 3)])
    r2 = await h.close(aged, next_attempt=4)
    assert lookups(h) == [c2, c3]  # never seen by the exchange: not found
    assert [w for w in h.writes() if isinstance(w, op.UpdateCloseOrder)][-3:-1] == [
        update(c2, state="not_found"), update(c3, state="not_found")]
    assert (r2.outcome, r2.filled_qty, r2.attempts) == ("flat", D(1), 4)


async def test_orders_unresolved_in_memory_are_looked_up_in_attempt_order(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    c9, c10, c11 = (client_order_id(aged, a) for a in (9, 10, 11))
    odd = {c: OrderResult(c, None, "expired", D(0), None, D(1)) for c in (c9, c10)}  # a status we do not know
    answer_lookups(h.ex, odd)
    h.executor.load_orders = Table(aged, [table_row(aged, 9, "pending"), table_row(aged, 10, "pending")])
    h.ex.fail_next(NonRetryableError("maintenance", exchange="bybit", code="10001"))
    r = await h.close(aged, next_attempt=11)
    assert (r.outcome, r.attempts) == ("failed", 11)
    assert [w for w in h.writes() if w.client_order_id in (c9, c10)] == [update(c9, state="unknown", filled_qty=D(0)),
                                                                          update(c10, state="unknown", filled_qty=D(0))]
    assert h.executor._fills[aged].pending == {c9: 9, c10: 10}

    async def away(aged_id):
        raise OSError("database away")

    h.executor.load_orders = away
    r2 = await h.close(aged, next_attempt=12)
    assert lookups(h)[2:] == [c9, c10]
    assert lookups(h)[:2] == [c9, c10]
    assert c11 not in lookups(h)  # rejected: settled


async def test_an_unresolved_order_found_never_sent_is_settled(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    c1, c2 = client_order_id(aged, 1), client_order_id(aged, 2)
    h.ex.fail_next(UnknownOutcomeError("timeout", exchange="bybit"))  # never reached the exchange
    h.ex.fail_next(RetryableError("lookup 502", exchange="bybit"), 3, method="fetch_order_by_client_id")
    await h.close(aged)
    assert h.executor._fills[aged].pending == {c1: 1}
    h.ex.fail_next(NonRetryableError("maintenance", exchange="bybit", code="10001"))
    r = await h.close(aged, next_attempt=2)
    assert r == result("failed", remaining_qty=D(1), attempts=2, error="NonRetryableError: maintenance")
    assert h.states(c1) == ["unknown", "not_found"]
    assert h.executor._fills[aged].pending == {} and h.executor._fills[aged].max_attempt == 2
    assert [a[3] for a in h.creates()] == [c1, c2]


async def test_every_unresolved_order_is_looked_up(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.executor.load_orders = Table(aged, [table_row(aged, 1, "pending"), table_row(aged, 2, "unknown")])
    r = await h.close(aged, next_attempt=3)
    assert lookups(h) == [client_order_id(aged, 1), client_order_id(aged, 2)]
    assert [w for w in h.writes() if isinstance(w, op.UpdateCloseOrder)][:2] == [
        update(client_order_id(aged, 1), state="not_found"), update(client_order_id(aged, 2), state="not_found")]
    assert (r.outcome, r.attempts) == ("flat", 3)


async def test_an_order_still_open_on_reconcile_stops_the_close(autojump_clock):
    ex, aged = exchange(), uuid4()
    cid = client_order_id(aged, 1)
    ex.open_next(1, lookups=9)
    await ex.create_close_order(SYMBOL, "long", D(1), cid)
    h = Traced(ex)
    h.executor.follow_polls = 1
    h.executor.load_orders = Table(aged, [table_row(aged, 1, "pending")])
    r = await h.close(aged, next_attempt=2)
    assert r == result("failed", attempts=1, error=f"UnknownOutcomeError: order {cid} is still open on the exchange")
    assert [m for _, m, _ in h.calls].count("create_close_order") == 0 and len(lookups(h)) == 2


async def test_what_lookups_find_is_recorded_by_its_status(autojump_clock):
    ex, aged = exchange(qty="0.5"), uuid4()
    c = {a: client_order_id(aged, a) for a in range(1, 9)}
    answer_lookups(ex, {
        c[1]: OrderResult(c[1], "e1", "rejected", D(0), None, D(1)),
        c[2]: OrderResult(c[2], "e2", "expired", D(0), None, D(1)),
        c[3]: OrderResult(c[3], "e3", "canceled", D(0), None, D(1)),
        c[4]: OrderResult(c[4], "e4", "closed", D("0.3"), D(100), D("0.5")),
        c[5]: OrderResult(c[5], "e5", "closed", D("0.2"), D(110), None),
        c[6]: OrderResult(c[6], "e6", "canceled", D("0.1"), D(90), D(1)),
        c[7]: OrderResult(c[7], None, "canceled", D(0), None, None),  # never in the table: adopted
    })
    h = Traced(ex)
    h.executor.load_orders = Table(aged, [table_row(aged, a, "pending") for a in range(1, 7)])
    r = await h.close(aged, qty="0.5", next_attempt=7, reconcile_only=True)
    assert lookups(h) == [c[a] for a in range(1, 8)]  # the table's six, then one beyond
    assert [w for w in h.writes() if w.client_order_id != c[7]] == [
        update(c[1], state="rejected", exchange_order_id="e1", filled_qty=D(0)),
        update(c[2], state="unknown", exchange_order_id="e2", filled_qty=D(0)),
        update(c[3], state="canceled", exchange_order_id="e3", filled_qty=D(0)),
        update(c[4], state="partially_filled", exchange_order_id="e4", filled_qty=D("0.3"), avg_price=D(100)),
        update(c[5], state="filled", exchange_order_id="e5", filled_qty=D("0.2"), avg_price=D(110)),
        update(c[6], state="partially_filled", exchange_order_id="e6", filled_qty=D("0.1"), avg_price=D(90))]
    assert [w for w in h.writes() if w.client_order_id == c[7]] == [
        row(c[7], aged, 7, qty="1e-18"), update(c[7], state="canceled", filled_qty=D(0))]
    assert r == result("open", filled_qty=D("0.6"), avg_price=(D(30) + D(22) + D(9)) / D("0.6"), remaining_qty=D("0.5"),
                       attempts=7, last_order_id=c[6])
    assert h.executor._fills[aged].pending == {c[2]: 2}


async def test_orders_found_beyond_the_table_are_adopted_as_they_were(autojump_clock):
    ex, aged = exchange(qty="2"), uuid4()
    c2, c3 = client_order_id(aged, 2), client_order_id(aged, 3)
    ex.partial_fill_ratio = D("0.5")
    await ex.create_close_order(SYMBOL, "long", D("0.5"), c2)  # sent while the table was away
    ex.partial_fill_ratio = None
    answer_lookups(ex, {c3: OrderResult(c3, "e3", "closed", D("0.2"), D(100), None)})
    h = Traced(ex)
    h.executor.load_orders = Table(aged, [table_row(aged, 1, "filled", "0.1", "100")])
    r = await h.close(aged, qty="2", next_attempt=3, reconcile_only=True)
    assert lookups(h) == [c2, c3]
    assert h.writes() == [
        row(c2, aged, 2, qty="0.5"),
        update(c2, state="partially_filled", exchange_order_id="bybit-1", filled_qty=D("0.25"), avg_price=D(100)),
        row(c3, aged, 3, qty="0.2"), update(c3, state="filled", exchange_order_id="e3", filled_qty=D("0.2"),
                                            avg_price=D(100))]
    assert (r.outcome, r.filled_qty, r.remaining_qty, r.attempts) == ("open", D("0.55"), D("1.75"), 3)
    # a short's orders were buys
    ex2, aged2 = exchange(side="short"), uuid4()
    await ex2.create_close_order(SYMBOL, "short", D(1), client_order_id(aged2, 1))
    h2 = Traced(ex2)
    await h2.close(aged2, side="short", next_attempt=2, reconcile_only=True)
    assert h2.writes()[0] == row(client_order_id(aged2, 1), aged2, 1, side="buy")


@pytest.mark.parametrize("next_attempt, rows, expected", [
    (3, [], [1, 2, 3]),  # up to the attempt after the last the actor knew
    (1, [], [1]),
    (3, [(1, "filled")], [2, 3]),
    (2, [(1, "rejected"), (4, "rejected")], [2, 3, 5]),
])
async def test_a_restart_probes_the_attempts_the_table_may_have_missed(autojump_clock, next_attempt, rows, expected):
    h, aged = Traced(exchange()), uuid4()
    h.executor.load_orders = Table(aged, [table_row(aged, a, s) for a, s in rows])
    r = await h.close(aged, next_attempt=next_attempt, reconcile_only=True)
    assert lookups(h) == [client_order_id(aged, a) for a in expected]
    attempts = max([next_attempt - 1] + [a for a, _ in rows])
    assert r == result("open", remaining_qty=D(1), attempts=attempts)
    assert h.writes() == []


async def test_a_restart_probe_skips_what_memory_knows_though_the_table_lags(autojump_clock):
    h, aged = Traced(exchange(qty="1")), uuid4()
    h.executor.load_orders = Table(aged, [table_row(aged, 1, "filled", "0.25", "100")])
    h.ex.set_position(SYMBOL, "long", "0.75", "100")
    h.ex.partial_fill_ratio = D("0.5")
    real = h.ex.create_close_order

    async def create(*a, **kw):
        found = await real(*a, **kw)
        h.ex.partial_fill_ratio = None
        h.ex.fail_next(NonRetryableError("maintenance", exchange="bybit", code="10001"))
        return found

    h.ex.create_close_order = create
    r = await h.close(aged, qty="0.75", next_attempt=2)
    assert (r.outcome, r.attempts) == ("failed", 3)
    r2 = await h.close(aged, qty="0.75", next_attempt=4, reconcile_only=True)
    # attempt 2 is final in memory though the table lags; 3 was rejected, so it is probed
    assert lookups(h) == [client_order_id(aged, 3), client_order_id(aged, 4)]
    assert (r2.outcome, r2.filled_qty, r2.attempts) == ("open", D("0.625"), 3)


# --- a position already flat: our own orders are probed ----------------------------------


async def test_a_flat_position_probes_from_the_first_attempt_to_the_last_sent(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.ex.close_externally(SYMBOL)
    r = await h.close(aged)
    assert lookups(h) == [client_order_id(aged, 1)]
    assert r == result("vanished", remaining_qty=D(0), attempts=0)
    h2, aged2 = Traced(exchange()), uuid4()
    h2.ex.close_externally(SYMBOL)
    r2 = await h2.close(aged2, next_attempt=4)
    assert lookups(h2) == [client_order_id(aged2, a) for a in (1, 2, 3)]
    assert r2 == result("vanished", remaining_qty=D(0), attempts=3)
    assert aged2 not in h2.executor._fills


async def test_the_probe_skips_known_orders_and_adopts_a_filled_one(autojump_clock):
    ex, aged = exchange(), uuid4()
    c1, c2, c3 = (client_order_id(aged, a) for a in (1, 2, 3))
    await ex.create_close_order(SYMBOL, "long", D(1), c2)  # filled, by a process that died unrecorded
    h = Traced(ex)
    h.executor.load_orders = Table(aged, [table_row(aged, 1, "rejected")])
    r = await h.close(aged, next_attempt=4)
    assert lookups(h) == [c2, c3]
    assert r == result("flat", filled_qty=D(1), avg_price=D(100), remaining_qty=D(0), attempts=3, last_order_id=c2)
    assert h.writes() == [row(c2, aged, 2), filled(c2, 1)]


async def test_the_probe_leaves_an_unfilled_order_alone(autojump_clock):
    ex, aged = exchange(), uuid4()
    ex.set_quote(SYMBOL, "90", "90.1", "90")
    await ex.create_close_order(SYMBOL, "long", D(1), client_order_id(aged, 1), limit_price=D(100))  # found nothing
    ex.close_externally(SYMBOL)
    h = Traced(ex)
    r = await h.close(aged, next_attempt=2)
    assert r == result("vanished", remaining_qty=D(0), attempts=1)
    assert h.writes() == []


async def test_a_probe_whose_lookups_fail_reports_the_position_vanished(autojump_clock):
    h, aged = Traced(exchange(), lookup_retries=1), uuid4()
    h.ex.close_externally(SYMBOL)
    h.ex.fail_next(RetryableError("lookup 502", exchange="bybit"), 5, method="fetch_order_by_client_id")
    r = await h.close(aged, next_attempt=3)
    assert lookups(h) == [client_order_id(aged, 1)]  # the first failure ends the probe
    assert r == result("vanished", remaining_qty=D(0), attempts=2)


# --- the episode on the exchange is not the one the actor decided on ---------------------


def episode(h: Traced, aged: UUID, fills=(), **kw):
    opened = NOW - timedelta(days=2)
    h.ex.fills[SYMBOL] = list(fills)
    return h.close(aged, entry_price=D(100), opened_at=opened, **kw)


def fill(side: str, qty: str, hours_ago: float, price="100") -> Fill:
    return Fill(f"f{hours_ago}", NOW - timedelta(hours=hours_ago), side, D(qty), D(price))


async def test_an_averaged_in_position_is_not_closed_and_the_actor_learns_of_it(autojump_clock):
    ex = exchange(qty="1.5")
    ex.set_position(SYMBOL, "long", "1.5", "101")
    h, aged = Traced(ex), uuid4()
    h.executor.load_orders = Table(aged, [table_row(aged, a, "rejected") for a in (1, 2, 3)])
    await episode(h, aged, [fill("buy", "1", 48), fill("buy", "0.5", 1, "103")], next_attempt=2)
    assert h.results == [PositionUpdate(NOW, quantity=D("1.5"), entry_price=D(101)), result("open", attempts=3)]
    assert [(m, a) for _, m, a in h.calls] == [
        ("fetch_positions", ([SYMBOL],)),
        ("fetch_fills", (SYMBOL, NOW - timedelta(days=2), NOW + timedelta(seconds=5)))]
    assert h.writes() == [] and aged in h.executor._fills
    # without a table behind it: the attempts the actor knew of
    ex2 = exchange()
    ex2.set_position(SYMBOL, "long", "1", "99")
    h2, aged2 = Traced(ex2), uuid4()
    await episode(h2, aged2, next_attempt=4)
    assert h2.results == [PositionUpdate(NOW, quantity=D(1), entry_price=D(99)), result("open", attempts=3)]


async def test_a_position_opened_again_is_another_episode(autojump_clock):
    ex = exchange(qty="1")
    ex.set_position(SYMBOL, "long", "1", "105")
    h, aged = Traced(ex), uuid4()
    r = await episode(h, aged, [fill("buy", "1", 40), fill("sell", "1", 3), fill("buy", "1", 1, "105")])
    assert r == result("vanished", remaining_qty=D(0), attempts=0)
    assert h.creates() == [] and h.results == [r]


async def test_the_fill_history_asked_is_at_most_a_week(autojump_clock):
    ex = exchange(qty="2")
    h, aged = Traced(ex), uuid4()
    h.ex.fills[SYMBOL] = []
    r = await h.close(aged, entry_price=D(100), opened_at=NOW - timedelta(days=30))  # more than asked: ask
    assert [a for _, m, a in h.calls if m == "fetch_fills"] == [
        (SYMBOL, NOW - timedelta(days=7) + timedelta(seconds=10), NOW + timedelta(seconds=5))]
    assert (r.outcome, r.filled_qty) == ("flat", D(2))


@pytest.mark.parametrize("position_qty, entry, opened, asks", [
    ("1", "100", True, False),  # the episode as the actor knows it
    ("0.5", "100", True, False),  # less than asked (a partial close by someone else)
    ("1.5", "100", True, True),  # more
    ("1", "101", True, True),  # another entry
    ("1.5", "100", False, False),  # no open time known: nothing to compare with
])
async def test_the_fill_history_is_asked_only_when_the_position_changed(autojump_clock, position_qty, entry, opened,
                                                                         asks):
    ex = exchange(qty=position_qty)
    ex.set_position(SYMBOL, "long", position_qty, entry)
    h = Traced(ex)
    await h.close(uuid4(), entry_price=D(100), opened_at=NOW - timedelta(days=2) if opened else None)
    assert ("fetch_fills" in [m for _, m, _ in h.calls]) == asks


async def test_without_a_known_entry_nothing_is_compared(autojump_clock):
    ex = exchange(qty="1.5")
    ex.set_position(SYMBOL, "long", "1.5", "101")
    h = Traced(ex)
    r = await h.close(uuid4(), opened_at=NOW - timedelta(days=2))
    assert (r.outcome, r.filled_qty) == ("flat", D("1.5"))
    assert "fetch_fills" not in [m for _, m, _ in h.calls]


async def test_after_a_fill_a_changed_entry_is_closed_anyway(autojump_clock):
    h, aged = Traced(exchange(qty="1")), uuid4()
    h.ex.partial_fill_ratio = D("0.5")
    real = h.ex.create_close_order

    async def create(*a, **kw):
        found = await real(*a, **kw)
        if h.ex.partial_fill_ratio is not None:
            h.ex.partial_fill_ratio = None
            h.ex.set_position(SYMBOL, "long", "0.5", "102")  # the exchange re-averaged the entry
        return found

    h.ex.create_close_order = create
    r = await h.close(aged, entry_price=D(100))
    assert (r.outcome, r.filled_qty, r.attempts) == ("flat", D(1), 2)
    assert not any(isinstance(x, PositionUpdate) for x in h.results)


# --- answering the actor ------------------------------------------------------------------


def request(h: Traced, aged: UUID, *, exchange_name: str = "bybit", symbol: str = SYMBOL, **kw):
    """A close of a 1-lot long; the harness is the actor's mailbox unless ``reply`` says otherwise."""
    kw.setdefault("next_attempt", 1)
    kw.setdefault("reply", h)
    return CloseRequest(aged_id=aged, exchange=exchange_name, symbol=symbol, side="long", qty=D(1),
                        clock=lambda: NOW, **kw)


async def handle(h: Traced, req: CloseRequest) -> None:
    async with trio.open_nursery() as n:
        n.start_soon(h.writer.run)
        await h.executor._handle(req)
        await h.writer.wait_flushed()
        n.cancel_scope.cancel()


async def test_a_close_on_an_exchange_it_does_not_know_fails_and_says_why(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    await handle(h, request(h, aged, exchange_name="okx", next_attempt=3))
    assert h.results == [result("failed", attempts=2, error="KeyError: 'okx'")]


async def test_an_unexpected_error_reports_everything_known(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.ex.fail_next(ValueError("malformed"), method="fetch_positions")
    r = await h.close(aged, next_attempt=3)
    assert r == result("failed", attempts=2, error="ValueError: malformed")
    h2, aged2 = Traced(exchange(qty="1")), uuid4()
    h2.ex.partial_fill_ratio = D("0.5")
    real = h2.ex.create_close_order

    async def create(*a, **kw):
        found = await real(*a, **kw)
        h2.ex.fail_next(KeyError("malformed"), method="fetch_positions")
        return found

    h2.ex.create_close_order = create
    r2 = await h2.close(aged2)
    assert r2 == result("failed", filled_qty=D("0.5"), avg_price=D(100), attempts=1,
                        last_order_id=client_order_id(aged2, 1), error="KeyError: 'malformed'")


class Gone:
    """An actor that died: its mailbox refuses everything."""

    def __init__(self, exc):
        self.exc = exc

    def send_nowait(self, message):
        raise self.exc


@pytest.mark.parametrize("exc", [trio.WouldBlock(), trio.BrokenResourceError(), trio.ClosedResourceError()])
async def test_a_dead_actor_does_not_stop_the_executor(autojump_clock, exc):
    h, aged = Traced(exchange()), uuid4()
    await handle(h, request(h, aged, reply=Gone(exc)))
    assert len(h.creates()) == 1 and aged not in h.executor._fills
    ex = exchange()
    ex.set_position(SYMBOL, "long", "1", "101")
    h2 = Traced(ex)
    h2.ex.fills[SYMBOL] = []
    await handle(h2, request(h2, uuid4(), reply=Gone(exc), entry_price=D(100), opened_at=NOW - timedelta(days=1)))
    assert h2.creates() == []
    await handle(h2, request(h2, uuid4(), reply=None, entry_price=D(100), opened_at=NOW - timedelta(days=1)))
    assert h2.creates() == []


@pytest.mark.parametrize("setup, outcome, kept", [
    (lambda ex: None, "flat", False),
    (lambda ex: ex.close_externally(SYMBOL), "vanished", False),
    (lambda ex: ex.set_position(SYMBOL, "long", "0.0001", "100"), "dust", False),
    (lambda ex: ex.fail_next(NonRetryableError("no", exchange="bybit")), "failed", True),
])
async def test_a_finished_close_forgets_its_orders(autojump_clock, setup, outcome, kept):
    h, aged = Traced(exchange()), uuid4()
    setup(h.ex)
    r = await h.close(aged)
    assert r.outcome == outcome and (aged in h.executor._fills) == kept


class Hold:
    """A writer hold that notes how many orders had been sent when it was released."""

    def __init__(self, h: Traced):
        self.h, self.released_after = h, []

    def release(self) -> None:
        self.released_after.append(len(self.h.creates()))


async def run_all(h: Traced, *requests: CloseRequest) -> None:
    """Submit ``requests`` to the running executor and wait for every answer."""
    async with trio.open_nursery() as n:
        n.start_soon(h.writer.run)
        await n.start(h.executor.run)
        for req in requests:
            h.executor.submit(req)
        while len(h.results) < len(requests):
            await trio.sleep(0.01)
        await h.writer.wait_flushed()
        n.cancel_scope.cancel()


async def test_a_close_from_a_tick_holds_the_writer_until_its_row_is_written(autojump_clock):
    h = Traced(exchange())
    holds: list[Hold] = []
    h.writer.hold = lambda: holds.append(Hold(h)) or holds[-1]
    await run_all(h, request(h, uuid4(), tick_received_at=trio.current_time()))
    assert [hold.released_after for hold in holds] == [[0, 1]]  # released before the send (and once more after)
    assert h.results[0].outcome == "flat"
    # a close not triggered by a tick holds nothing
    await run_all(h, request(h, uuid4()))
    assert len(holds) == 1
    # nor one whose row is not written straight to the database
    h2 = Traced(exchange())
    h2.executor.write_direct = None
    h2.writer.hold = lambda: holds.append(Hold(h2)) or holds[-1]
    await run_all(h2, request(h2, uuid4(), tick_received_at=trio.current_time()))
    assert len(holds) == 1 and h2.results[0].outcome == "flat"


async def test_closes_on_different_symbols_run_side_by_side_and_on_one_symbol_in_turn(autojump_clock):
    other = "ETH/USDT:USDT"
    ex = exchange(latency=1.0)
    ex.set_position(other, "long", "1", "100")
    ex.set_quote(other, "100", "100.1", "100")
    h = Traced(ex)
    await run_all(h, request(h, uuid4()), request(h, uuid4(), symbol=other))
    assert trio.current_time() == pytest.approx(4.0, abs=0.1)  # four calls of one second each, side by side
    h2 = Traced(exchange(latency=1.0))
    start = trio.current_time()
    await run_all(h2, request(h2, uuid4()), request(h2, uuid4()))
    assert trio.current_time() - start == pytest.approx(6.0, abs=0.1)  # 4 s, then 2 s for the one found flat


# --- the write-ahead row -----------------------------------------------------------------


def direct_writes(h: Traced) -> list:
    """Record what goes straight to the database (the rest goes through the writer)."""
    seen: list = []
    real = h.executor.write_direct

    async def write(batch):
        seen.extend(batch)
        await real(batch)

    h.executor.write_direct = write
    return seen


async def test_the_row_goes_straight_to_the_database_while_it_is_up(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    seen = direct_writes(h)
    await h.close(aged)
    assert seen == [row(client_order_id(aged, 1), aged, 1)]


async def test_while_the_database_is_down_the_row_is_queued_in_the_writer(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    seen = direct_writes(h)
    h.writer.database_up = False
    r = await h.close(aged)
    cid = client_order_id(aged, 1)
    assert seen == [] and r.outcome == "flat"
    assert h.writes() == [row(cid, aged, 1), filled(cid, 1)]


async def test_a_direct_write_that_fails_is_queued_and_the_order_sent(autojump_clock):
    h, aged = Traced(exchange()), uuid4()

    async def fails(batch):
        raise OSError("connection reset")

    h.executor.write_direct = fails
    r = await h.close(aged)
    cid = client_order_id(aged, 1)
    assert r.outcome == "flat" and h.writes() == [row(cid, aged, 1), filled(cid, 1)]


async def test_a_direct_write_gets_two_seconds(autojump_clock):
    h, aged = Traced(exchange()), uuid4()

    async def hangs(batch):
        await trio.sleep_forever()

    h.executor.write_direct = hangs
    r = await h.close(aged)
    assert r.outcome == "flat"
    assert h.timeline("create_close_order") == [(2.0, "create_close_order")]
    assert h.writes()[0] == row(client_order_id(aged, 1), aged, 1)


# --- the retry schedule ------------------------------------------------------------------


async def test_a_retry_waits_the_schedule_or_what_the_exchange_asks_whichever_is_longer(autojump_clock):
    h = Traced(exchange(), retry_delays=(0.1, 0.2))
    h.ex.fail_next(RetryableError("502", exchange="bybit"))
    h.ex.fail_next(RetryableError("429", exchange="bybit", retry_after=0.5))
    r = await h.close(uuid4())
    assert r.outcome == "flat"
    assert [t for t, _ in h.timeline("create_close_order")] == [0, 0.1, 0.6]
    h2 = Traced(exchange(), retry_delays=(0.1,))
    h2.ex.fail_next(RetryableError("429", exchange="bybit", retry_after=0))  # no wait asked: the schedule
    await h2.close(uuid4())
    assert [t for t, _ in h2.timeline("create_close_order")] == [0, 0.1]


async def test_an_order_found_after_a_lost_reply_is_no_longer_unresolved(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    c1 = client_order_id(aged, 1)
    h.ex.lose_reply_next(1)
    h.ex.partial_fill_ratio = D("0.5")
    real = h.ex.create_close_order

    async def create(*a, **kw):
        try:
            return await real(*a, **kw)
        finally:
            h.ex.partial_fill_ratio = None
            h.ex.fail_next(NonRetryableError("maintenance", exchange="bybit", code="10001"))

    h.ex.create_close_order = create
    r = await h.close(aged)
    assert r == result("failed", filled_qty=D("0.5"), avg_price=D(100), remaining_qty=D("0.5"), attempts=2,
                       last_order_id=c1, error="NonRetryableError: maintenance")
    fills = h.executor._fills[aged]
    assert (fills.pending, fills.max_attempt) == ({}, 2)


async def test_an_order_that_never_arrived_is_settled_even_when_the_close_then_fails(autojump_clock):
    h, aged = Traced(exchange(), retry_delays=(1.0,)), uuid4()
    h.ex.fail_next(UnknownOutcomeError("timeout", exchange="bybit"), 2)
    r = await h.close(aged)
    assert r == result("failed", attempts=2, error="UnknownOutcomeError: timeout")
    assert h.executor._fills[aged].pending == {}


async def test_a_reconcile_that_cannot_finish_reports_what_the_table_knows(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    c2 = client_order_id(aged, 2)
    h.executor.load_orders = Table(aged, [table_row(aged, 1, "filled", "0.3", "100"), table_row(aged, 2, "unknown")])
    h.ex.fail_next(RetryableError("lookup 502", exchange="bybit"), 3, method="fetch_order_by_client_id")
    r = await h.close(aged, next_attempt=2)
    assert r == result("failed", filled_qty=D("0.3"), avg_price=D(100), attempts=2,
                       last_order_id=client_order_id(aged, 1),
                       error=f"UnknownOutcomeError: could not look up order {c2}")
    h2, aged2 = Traced(exchange()), uuid4()
    h2.executor.load_orders = Table(aged2, [table_row(aged2, 1, "unknown")])
    h2.ex.fail_next(RetryableError("lookup 502", exchange="bybit"), 3, method="fetch_order_by_client_id")
    r2 = await h2.close(aged2, next_attempt=4)
    assert (r2.outcome, r2.attempts) == ("failed", 3)


async def test_no_order_at_all_when_the_round_limit_is_zero(autojump_clock):
    h = Traced(exchange())
    h.executor.max_rounds = 0
    r = await h.close(uuid4(), next_attempt=3)
    assert r == result("failed", remaining_qty=D(1), attempts=2, error="too many orders for one close")
    assert h.creates() == []


class WithoutLimits:
    """A port that has no ``close_limits`` at all (the adapter checks the lot itself)."""

    def __init__(self, ex):
        self._ex = ex

    def __getattr__(self, name):
        if name == "close_limits":
            raise AttributeError(name)
        return getattr(self._ex, name)


async def test_a_port_without_lot_limits(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.executor.exchanges["bybit"] = WithoutLimits(h.ex)
    r = await h.close(aged)
    assert (r.outcome, r.filled_qty) == ("flat", D(1))
    assert "close_limits" not in [m for _, m, _ in h.calls]


# --- the crash points of the fault-injection suite ---------------------------------------


class Crashed(Exception):
    pass


@pytest.mark.parametrize("point, rows, sent, recorded", [
    ("before_wal", 0, 0, 0),  # nothing written, nothing sent
    ("after_wal", 1, 0, 0),  # the row is committed, the order not sent
    ("after_send", 1, 1, 0),  # the order is on the exchange, its outcome not recorded
    ("after_record", 1, 1, 1),  # recorded
])
async def test_each_crash_point_is_where_its_name_says(autojump_clock, monkeypatch, point, rows, sent, recorded):
    import actors.failpoints as failpoints

    def crash(pid, sig):
        raise Crashed(point)

    monkeypatch.setattr(failpoints, "_armed", {point: 1})
    monkeypatch.setattr(failpoints.os, "kill", crash)
    h, aged = Traced(exchange()), uuid4()
    r = await h.close(aged)
    assert (r.outcome, r.error) == ("failed", f"Crashed: {point}")
    assert len([w for w in h.writes() if isinstance(w, op.RecordCloseOrder)]) == rows
    assert len(h.creates()) == sent
    assert len([w for w in h.writes() if isinstance(w, op.UpdateCloseOrder)]) == recorded


async def test_an_order_open_too_long_with_a_partial_fill_is_recorded_with_it(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    h.executor.follow_polls = 1
    cid = client_order_id(aged, 1)
    h.ex.open_next(1, lookups=9)
    answer_lookups(h.ex, {cid: OrderResult(cid, "x-1", "open", D("0.3"), D(100), D(1))})
    r = await h.close(aged)
    assert r == result("failed", attempts=1, error=f"order {cid} is still open on the exchange")
    assert h.writes()[1] == update(cid, state="open", exchange_order_id="x-1", filled_qty=D("0.3"), avg_price=D(100))


async def test_an_own_order_found_still_open_on_a_flat_position_stays_unresolved(autojump_clock):
    h, aged = Traced(exchange()), uuid4()
    cid = client_order_id(aged, 1)
    h.ex.close_externally(SYMBOL)
    answer_lookups(h.ex, {cid: OrderResult(cid, "x-1", "open", D("0.5"), D(100), D(1))})
    r = await h.close(aged)
    assert r == result("vanished", remaining_qty=D(0), attempts=1)  # its attempt is used up
    assert h.writes() == [row(cid, aged, 1), update(cid, state="open", exchange_order_id="x-1", filled_qty=D("0.5"),
                                                    avg_price=D(100))]
