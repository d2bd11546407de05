"""The order executor (actors/executor.py), branch by branch.

Two halves:

* on the in-memory exchange (``doubles.exchange``) and trio's autojump MockClock, with
  the write-ahead table kept in memory from the executor's own writes: every branch of
  the close procedure, and the backoff timing;
* on the real stack: the exchange simulator behind real ccxt clients (Bybit and Binance
  USD-M) and PostgreSQL, for what depends on the exchange (lot limits, the bounded
  limit-IOC fallback, lookups that fail, the rate-limit / ban gate) and one check that
  no order reaches the exchange before its write-ahead row is committed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D
from functools import partial
from uuid import UUID, uuid4

import pytest
import trio

from actors.executor import CloseRequest, Executor, ExecutorConfig, client_order_id
from storage.writer import StorageWriter
from exchanges.errors import InsufficientLiquidityError, NonRetryableError, RetryableError
from doubles.exchange import MemoryExchange
from storage import ops as op
from storage.errors import LeaseLost, StorageUnavailable
from supervisor.observer import NO_OBSERVER

SYMBOL = "BTC/USDT:USDT"
NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
FINAL = {"filled", "rejected", "canceled", "not_found", "partially_filled"}


class Harness:
    """An executor over one in-memory exchange; its writes kept as an in-memory table."""

    def __init__(self, ex: MemoryExchange, *, rows: list[dict] | None = None, observer=NO_OBSERVER, **kw):
        self.ex = ex
        self.ops: list = []
        self.table: dict[str, dict] = {r["client_order_id"]: dict(r) for r in rows or []}
        self.writer = StorageWriter(self._write)
        kw.setdefault("retry_delays", (1.0, 3.0, 5.0))
        self.executor = Executor({ex.name: ex}, self.writer, self._load, write_direct=self._write,
                                 config=ExecutorConfig(**kw), observer=observer)
        self.results: list = []

    async def _write(self, batch) -> None:
        for item in batch:
            self.ops.append(item)
            if isinstance(item, op.RecordCloseOrder):
                self.table.setdefault(item.client_order_id, {
                    "client_order_id": item.client_order_id, "attempt": item.attempt, "state": "pending",
                    "filled_qty": D(0), "avg_price": None, "requested_qty": item.requested_qty,
                    "order_type": item.order_type, "limit_price": item.limit_price})
            elif isinstance(item, op.UpdateCloseOrder):
                self.table[item.client_order_id].update(item.fields)

    async def _load(self, aged_id: UUID) -> list[dict]:
        return sorted((dict(r) for r in self.table.values()), key=lambda r: r["attempt"])

    def send_nowait(self, result) -> None:  # the requesting actor's mailbox
        self.results.append(result)

    def states(self, cid: str) -> list[str]:
        return [o.fields["state"] for o in self.ops if isinstance(o, op.UpdateCloseOrder)
                and o.client_order_id == cid and "state" in o.fields]

    def creates(self) -> list[tuple]:
        return [args for name, args in self.ex.calls if name == "create_close_order"]

    async def close(self, aged_id: UUID, *, side: str = "long", qty: str = "1", next_attempt: int = 1, **kw):
        req = CloseRequest(aged_id=aged_id, exchange=self.ex.name, symbol=SYMBOL, side=side, qty=D(qty),
                           next_attempt=next_attempt, reply=self, clock=lambda: NOW, **kw)
        async with trio.open_nursery() as n:
            n.start_soon(self.writer.run)
            await self.executor._handle(req)
            await self.writer.wait_flushed()
            n.cancel_scope.cancel()
        return self.results[-1]


def exchange(qty: str = "1", side: str = "long", **kw) -> MemoryExchange:
    ex = MemoryExchange(name="bybit", **kw)
    ex.set_position(SYMBOL, side, qty, "100")
    ex.set_quote(SYMBOL, "100", "100.1", "100")
    return ex


# --------------------------------------------------------------------------- in memory


async def test_a_market_close_goes_flat(autojump_clock):
    h, aged = Harness(exchange()), uuid4()
    r = await h.close(aged)
    assert (r.outcome, r.filled_qty, r.avg_price, r.attempts) == ("flat", D(1), D(100), 1)
    assert r.last_order_id == client_order_id(aged, 1)
    assert [(a[1], a[2], a[3]) for a in h.creates()] == [("long", D(1), client_order_id(aged, 1))]


async def test_the_side_is_checked_before_a_reduce_only_close(autojump_clock):
    # The exchange now holds a short on the symbol (ours was closed, another was opened):
    # it is not the position we were asked to close, so nothing may be sent.
    h = Harness(exchange(side="short"))
    r = await h.close(uuid4(), side="long")
    assert r.outcome == "vanished" and r.filled_qty == 0
    assert h.creates() == []


async def test_the_write_ahead_row_comes_before_the_send(autojump_clock):
    h, aged = Harness(exchange()), uuid4()
    order: list[str] = []
    real_write, real_create = h._write, h.ex.create_close_order

    async def write(batch):
        order.extend(f"row {i.client_order_id}" for i in batch if isinstance(i, op.RecordCloseOrder))
        await real_write(batch)

    async def create(symbol, side, qty, cid, **kw):
        order.append(f"send {cid}")
        return await real_create(symbol, side, qty, cid, **kw)

    h.executor.write_direct, h.ex.create_close_order = write, create
    await h.close(aged)
    cid = client_order_id(aged, 1)
    assert order == [f"row {cid}", f"send {cid}"]


async def test_an_unknown_outcome_is_looked_up_before_anything_else(autojump_clock):
    h, aged = Harness(exchange()), uuid4()
    h.ex.lose_reply_next(1)  # the order executes, the reply is lost
    r = await h.close(aged)
    cid = client_order_id(aged, 1)
    assert (r.outcome, r.filled_qty, r.attempts, r.last_order_id) == ("flat", D(1), 1, cid)
    names = [name for name, _ in h.ex.calls]
    sent = names.index("create_close_order")
    assert names[sent + 1] == "fetch_order_by_client_id"  # the lookup, before any position check
    assert h.states(cid) == ["filled"] and len(h.creates()) == 1


async def test_liquidity_rejection_falls_back_to_a_limit_ioc(autojump_clock):
    h, aged = Harness(exchange()), uuid4()
    h.ex.fail_next(InsufficientLiquidityError("thin book", exchange="bybit", code="30208"))
    r = await h.close(aged, emergency=True)  # an emergency close accepts any price
    assert (r.outcome, r.filled_qty, r.attempts) == ("flat", D(1), 2)
    first, second = h.creates()
    assert first[4] is None and second[4] == D("99.00")  # 1 % through the bid
    assert h.ex.order(client_order_id(aged, 2)).type == "limit"
    assert h.table[client_order_id(aged, 2)]["order_type"] == "limit_ioc"


async def test_the_limit_ioc_fallback_is_never_priced_worse_than_the_policy(autojump_clock):
    # Grace phase: breakeven 100.2 for a long. The bid is just above it; the stock
    # fallback would sell at bid - 1 % = 99.2..., well below breakeven.
    ex = exchange()
    ex.set_quote(SYMBOL, "100.3", "100.4", "100.3")
    h, aged = Harness(ex), uuid4()
    h.ex.fail_next(InsufficientLiquidityError("thin book", exchange="bybit", code="30208"))
    r = await h.close(aged, worst_price=D("100.2"))
    assert r.outcome == "flat" and r.avg_price == D("100.3")
    limit = h.creates()[1][4]
    assert limit == D("100.2")
    # the book drops below the policy price: the IOC does not fill below it
    ex2 = exchange()
    ex2.set_quote(SYMBOL, "99.5", "99.6", "99.5")
    h2 = Harness(ex2, retry_delays=(1.0,))
    h2.ex.fail_next(InsufficientLiquidityError("thin book", exchange="bybit", code="30208"))
    r2 = await h2.close(uuid4(), worst_price=D("100.2"))
    assert r2.outcome == "failed" and r2.filled_qty == 0
    assert all(o.avg_price is None or o.avg_price >= D("100.2") for o in ex2.orders)
    assert all(a[4] is None or a[4] >= D("100.2") for a in h2.creates())
    # short: never above the policy price
    ex3 = exchange(side="short")
    ex3.set_quote(SYMBOL, "99.7", "99.8", "99.8")
    h3 = Harness(ex3)
    h3.ex.fail_next(InsufficientLiquidityError("thin book", exchange="bybit", code="30208"))
    r3 = await h3.close(uuid4(), side="short", worst_price=D("99.8"))
    assert r3.outcome == "flat" and h3.creates()[1][4] == D("99.8")


async def test_a_reduce_only_rejection_is_followed_by_a_position_check(autojump_clock):
    h = Harness(exchange())

    def closed_meanwhile():
        h.ex.close_externally(SYMBOL)  # someone else closed it just before our order landed
        return NonRetryableError("reduce-only rule not satisfied", exchange="bybit", code="110017")

    h.ex.fail_next(closed_meanwhile)
    r = await h.close(uuid4())
    assert r.outcome == "vanished" and r.error is None
    # and while the position is still there, the rejection is a failure with what remains
    h2 = Harness(exchange())
    h2.ex.fail_next(NonRetryableError("reduce-only rule not satisfied", exchange="bybit", code="110017"))
    r2 = await h2.close(uuid4())
    assert (r2.outcome, r2.remaining_qty) == ("failed", D(1))
    assert [n for n, _ in h2.ex.calls].count("fetch_positions") == 2


async def test_partial_fills_loop_until_flat(autojump_clock):
    h, aged = Harness(exchange(qty="1")), uuid4()
    h.ex.partial_fill_ratio = D("0.5")
    real_create = h.ex.create_close_order

    async def create(*a, **kw):
        result = await real_create(*a, **kw)
        if len(h.creates()) == 2:
            h.ex.partial_fill_ratio = None  # the book refills
        return result

    h.ex.create_close_order = create
    r = await h.close(aged)
    assert [a[2] for a in h.creates()] == [D(1), D("0.5"), D("0.25")]
    assert (r.outcome, r.filled_qty, r.attempts) == ("flat", D(1), 3)
    assert h.states(client_order_id(aged, 1)) == ["partially_filled"]


async def test_attempts_are_numbered_after_earlier_orders(autojump_clock):
    aged = uuid4()
    rows = [{"client_order_id": client_order_id(aged, a), "attempt": a, "state": "partially_filled",
             "filled_qty": D("0.25"), "avg_price": D(100)} for a in (1, 2, 3)]
    h = Harness(exchange(qty="0.25"), rows=rows)
    r = await h.close(aged, qty="0.25", next_attempt=2)  # the actor only knew of one attempt
    assert [a[3] for a in h.creates()] == [client_order_id(aged, 4)]
    assert (r.outcome, r.filled_qty, r.attempts) == ("flat", D(1), 4)


async def test_a_flat_position_probes_our_own_orders(autojump_clock):
    # An order sent by a process that died before recording it: the position is flat,
    # the table knows nothing, the exchange knows the client order id.
    ex, aged = exchange(), uuid4()
    await ex.create_close_order(SYMBOL, "long", D(1), client_order_id(aged, 1))
    h = Harness(ex)
    r = await h.close(aged, next_attempt=2)
    assert (r.outcome, r.filled_qty, r.last_order_id) == ("flat", D(1), client_order_id(aged, 1))
    assert not h.creates()[1:]  # nothing new was sent


async def test_lookups_that_fail_never_lead_to_the_same_client_order_id_again(autojump_clock):
    h, aged = Harness(exchange()), uuid4()
    h.ex.lose_reply_next(1)
    h.ex.fail_next(RetryableError("lookup down", exchange="bybit"), 3, method="fetch_order_by_client_id")
    r = await h.close(aged)
    cid = client_order_id(aged, 1)
    assert (r.outcome, r.attempts) == ("failed", 1)  # attempt 1 is used up
    assert h.states(cid) == ["unknown"]
    # the actor asks again with its next attempt number: the unknown order is looked up first
    r2 = await h.close(aged, next_attempt=r.attempts + 1)
    assert (r2.outcome, r2.filled_qty, r2.last_order_id) == ("flat", D(1), cid)
    assert [a[3] for a in h.creates()] == [cid]
    # even when the table is away, memory knows the order is unresolved: here it closed
    # half the position, and its fill counts before the rest is closed
    h2, aged2 = Harness(exchange()), uuid4()
    h2.ex.lose_reply_next(1)
    h2.ex.partial_fill_ratio = D("0.5")
    h2.ex.fail_next(RetryableError("lookup down", exchange="bybit"), 3, method="fetch_order_by_client_id")
    await h2.close(aged2)
    h2.ex.partial_fill_ratio = None

    async def away(aged_id):
        raise OSError("database away")

    h2.executor.load_orders = away
    r3 = await h2.close(aged2, next_attempt=2)
    first, second = client_order_id(aged2, 1), client_order_id(aged2, 2)
    assert (r3.outcome, r3.filled_qty) == ("flat", D(1))
    assert [a[3] for a in h2.creates()] == [first, second]
    calls = [(n, a[3] if n == "create_close_order" else a[-1] if n == "fetch_order_by_client_id" else None)
             for n, a in h2.ex.calls]
    looked_up = max(i for i, c in enumerate(calls) if c == ("fetch_order_by_client_id", first))
    assert looked_up < calls.index(("create_close_order", second))


async def test_a_failed_lookup_on_reconcile_sends_nothing(autojump_clock):
    aged = uuid4()
    rows = [{"client_order_id": client_order_id(aged, 1), "attempt": 1, "state": "unknown",
             "filled_qty": D(0), "avg_price": None}]
    h = Harness(exchange(), rows=rows)
    h.ex.fail_next(RetryableError("lookup down", exchange="bybit"), 3, method="fetch_order_by_client_id")
    r = await h.close(aged, next_attempt=2)
    assert r.outcome == "failed" and h.creates() == []


async def test_an_order_still_open_is_followed_until_final(autojump_clock):
    h, aged = Harness(exchange()), uuid4()
    h.ex.open_next(1, lookups=4)  # accepted, fills only after it was looked up four times
    r = await h.close(aged)
    cid = client_order_id(aged, 1)
    assert (r.outcome, r.filled_qty, r.last_order_id) == ("flat", D(1), cid)
    assert [a[3] for a in h.creates()] == [cid]  # no second order while the first was open
    assert h.states(cid)[-1] == "filled"


async def test_an_order_open_for_too_long_stays_unresolved_and_is_followed_next_time(autojump_clock):
    h, aged = Harness(exchange()), uuid4()
    h.executor.follow_polls = 2
    h.ex.open_next(1, lookups=5)
    r = await h.close(aged)
    assert r.outcome == "failed" and "still open" in r.error
    r2 = await h.close(aged, next_attempt=r.attempts + 1)
    assert (r2.outcome, r2.filled_qty) == ("flat", D(1))
    assert len(h.creates()) == 1


async def test_an_unexpected_error_still_answers_the_actor(autojump_clock):
    h = Harness(exchange())
    h.ex.fail_next(ValueError("malformed reply"), method="fetch_positions")
    r = await h.close(uuid4())
    assert r.outcome == "failed" and "ValueError" in r.error
    r2 = await h.close(uuid4())  # the symbol's lock was released
    assert r2.outcome == "flat"


async def test_a_lost_lease_sends_nothing_and_fails_the_close_attempt_as_lease_lost(autojump_clock):
    # Another instance acts for the account now: the write-ahead row was refused, so the
    # order must not go out (a database that is merely away would not stop it).
    h, aged = Harness(exchange()), uuid4()

    async def refuse(batch):
        raise LeaseLost("account bybit-main: lease lost, token 1 refused: holder inst-b has token 2",
                        "bybit-main")

    h.executor.write_direct = refuse
    r = await h.close(aged)
    assert r.outcome == "failed" and r.error.startswith("lease lost: ") and "inst-b has token 2" in r.error
    assert r.filled_qty == 0 and r.attempts == 0
    assert h.creates() == []
    assert not any(isinstance(o, op.RecordCloseOrder) for o in h.ops)  # not queued for the writer either


async def test_a_lease_that_ran_out_after_the_write_ahead_row_sends_nothing(autojump_clock):
    # The row was committed under the lease, then the lease ran out (the process was
    # stopped in between, say): the order stays unsent and the next holder looks it up.
    h, aged = Harness(exchange()), uuid4()
    asked = []

    def may_send():
        asked.append(len(h.ops))
        return False

    h.executor.may_send = may_send
    r = await h.close(aged)
    assert r.outcome == "failed" and r.error == "lease lost before the order was sent"
    assert h.creates() == [] and r.filled_qty == 0
    assert len(asked) == 1


async def test_a_held_lease_lets_the_order_go(autojump_clock):
    h, aged = Harness(exchange()), uuid4()
    h.executor.may_send = lambda: True
    r = await h.close(aged)
    assert r.outcome == "flat" and len(h.creates()) == 1


async def test_under_a_lease_a_write_ahead_row_the_database_could_not_take_sends_nothing_and_is_retried(
        autojump_clock):
    # Queued is not enough under a lease: the lease may run out before the writer gets the
    # row in, and the next holder would never learn of the order.
    h, aged = Harness(exchange()), uuid4()
    h.executor.may_send = lambda: True
    calls = []

    async def away_then_back(batch):
        calls.append([o.client_order_id for o in batch])
        if len(calls) == 1:
            raise StorageUnavailable("connection refused")
        await h._write(batch)

    h.executor.write_direct = away_then_back
    r = await h.close(aged)
    assert r.outcome == "flat" and len(h.creates()) == 1
    # the first id was never sent (its row might have committed): the order went out under the next one
    assert calls == [[client_order_id(aged, 1)], [client_order_id(aged, 2)]]
    assert h.creates()[0][3] == client_order_id(aged, 2)
    # only the committed row: nothing of the first id was queued in the writer
    assert [o.client_order_id for o in h.ops if isinstance(o, op.RecordCloseOrder)] == [client_order_id(aged, 2)]


async def test_under_a_lease_a_database_away_for_good_fails_the_close_with_nothing_sent(autojump_clock):
    h, aged = Harness(exchange(), retry_delays=(1.0, 3.0)), uuid4()
    h.executor.may_send = lambda: True

    async def away(batch):
        raise StorageUnavailable("connection refused")

    h.executor.write_direct = away
    r = await h.close(aged)
    assert r.outcome == "failed" and r.error.startswith("write-ahead row not committed, nothing sent")
    assert h.creates() == []
    assert not any(isinstance(o, op.RecordCloseOrder) for o in h.ops)


async def test_a_write_ahead_row_the_database_could_not_take_is_queued_and_the_order_sent(autojump_clock):
    h, aged = Harness(exchange()), uuid4()

    async def away(batch):
        raise StorageUnavailable("connection refused")

    h.executor.write_direct = away
    r = await h.close(aged)
    assert r.outcome == "flat" and len(h.creates()) == 1
    assert [o.client_order_id for o in h.ops if isinstance(o, op.RecordCloseOrder)] == [client_order_id(aged, 1)]


async def test_retries_are_exhausted_into_a_failure(autojump_clock):
    h = Harness(exchange(), retry_delays=(1.0, 3.0))
    h.ex.fail_next(RetryableError("503", exchange="bybit"), 5)
    start = trio.current_time()
    r = await h.close(uuid4())
    assert r.outcome == "failed" and len(h.creates()) == 3
    assert trio.current_time() - start == pytest.approx(4.0, abs=0.01)


async def test_backoff_honours_retry_after(autojump_clock):
    h, aged = Harness(exchange()), uuid4()
    h.ex.fail_next(RetryableError("429 too many requests", exchange="bybit", code="10006", retry_after=42.0))
    sent_at: list[float] = []
    real_create = h.ex.create_close_order

    async def create(*a, **kw):
        sent_at.append(trio.current_time())
        return await real_create(*a, **kw)

    h.ex.create_close_order = create
    r = await h.close(aged)
    assert r.outcome == "flat"
    assert sent_at[1] - sent_at[0] == pytest.approx(42.0, abs=0.01)  # not the stock 1 s
    # a retry_after shorter than the schedule does not shorten it
    h2 = Harness(exchange())
    h2.ex.fail_next(RetryableError("429", exchange="bybit", retry_after=0.2))
    start = trio.current_time()
    await h2.close(uuid4())
    assert trio.current_time() - start == pytest.approx(1.0, abs=0.01)


async def test_a_close_above_the_market_maximum_is_split(autojump_clock):
    h, aged = Harness(exchange(qty="1", max_market_qty=D("0.4"))), uuid4()
    r = await h.close(aged)
    assert [a[2] for a in h.creates()] == [D("0.4"), D("0.4"), D("0.2")]
    assert (r.outcome, r.filled_qty, r.attempts) == ("flat", D(1), 3)
    assert all(not o.type == "limit" for o in h.ex.orders)


async def test_a_split_leaves_no_remainder_below_the_minimum(autojump_clock):
    h = Harness(exchange(qty="1.005", max_market_qty=D("0.5"), min_qty=D("0.01")))
    r = await h.close(uuid4(), qty="1.005")
    qtys = [a[2] for a in h.creates()]
    assert sum(qtys) == D("1.005") and all(q >= D("0.01") for q in qtys), qtys
    assert r.outcome == "flat"


async def test_a_remainder_below_the_minimum_is_dust(autojump_clock):
    h = Harness(exchange(qty="0.005", min_qty=D("0.01")))
    r = await h.close(uuid4(), qty="0.005")
    assert (r.outcome, r.remaining_qty) == ("dust", D("0.005")) and "minimum" in r.error
    assert h.creates() == []
    # a remainder off the lot grid after a fill
    h2, aged = Harness(exchange(qty="1.0005")), uuid4()
    r2 = await h2.close(aged, qty="1.0005")
    assert (r2.outcome, r2.filled_qty, r2.remaining_qty) == ("dust", D(1), D("0.0005"))
    assert r2.last_order_id == client_order_id(aged, 1)


async def test_a_minimum_rejection_by_the_exchange_is_dust(autojump_clock):
    # limits unknown to the executor (a port without close_limits): the exchange says it
    ex = exchange(qty="0.005", min_qty=D("0.01"))
    h = Harness(ex)
    h.ex.close_limits = None
    r = await h.close(uuid4(), qty="0.005")
    assert r.outcome == "dust" and len(h.creates()) == 1


async def test_the_write_ahead_rows_describe_the_orders(autojump_clock):
    h, aged = Harness(exchange(side="short")), uuid4()
    h.ex.fail_next(InsufficientLiquidityError("thin book", exchange="bybit", code="-4131"))
    r = await h.close(aged, side="short", worst_price=D("100.5"))
    assert r.outcome == "flat"
    rows = [o for o in h.ops if isinstance(o, op.RecordCloseOrder)]
    assert [(o.client_order_id, o.attempt, o.aged_id, o.exchange, o.symbol, o.side, o.order_type, o.requested_qty,
             o.limit_price) for o in rows] == [
        (client_order_id(aged, 1), 1, aged, "bybit", SYMBOL, "buy", "market", D(1), None),
        (client_order_id(aged, 2), 2, aged, "bybit", SYMBOL, "buy", "limit_ioc", D(1), D("100.5"))]
    assert h.states(client_order_id(aged, 1)) == ["rejected"]
    assert h.table[client_order_id(aged, 2)]["state"] == "filled"
    assert h.table[client_order_id(aged, 2)]["filled_qty"] == D(1)
    assert aged not in h.executor._fills  # finished: nothing kept


async def test_reconcile_only_reads_the_table_and_the_exchange_and_sends_nothing(autojump_clock):
    ex, aged = exchange(qty="1"), uuid4()
    await ex.create_close_order(SYMBOL, "long", D("0.4"), client_order_id(aged, 1))  # sent before a crash
    rows = [{"client_order_id": client_order_id(aged, 1), "attempt": 1, "state": "pending",
             "filled_qty": D(0), "avg_price": None}]
    h = Harness(ex, rows=rows)
    r = await h.close(aged, next_attempt=2, reconcile_only=True)
    assert (r.outcome, r.filled_qty, r.avg_price, r.remaining_qty, r.attempts) == ("open", D("0.4"), D(100), D("0.6"), 1)
    assert r.last_order_id == client_order_id(aged, 1) and len(h.creates()) == 1
    assert h.table[client_order_id(aged, 1)]["state"] == "filled"
    # an attempt the table never saw (sent while the database was away) is found too
    await ex.create_close_order(SYMBOL, "long", D("0.6"), client_order_id(aged, 2))
    r2 = await h.close(aged, next_attempt=2, reconcile_only=True)
    assert (r2.outcome, r2.filled_qty, r2.attempts) == ("flat", D(1), 2)
    assert client_order_id(aged, 2) in h.table


async def test_an_unexpected_error_reports_what_was_filled(autojump_clock):
    h, aged = Harness(exchange(qty="1")), uuid4()
    h.ex.partial_fill_ratio = D("0.5")
    real_create = h.ex.create_close_order

    async def create(*a, **kw):
        result = await real_create(*a, **kw)
        h.ex.fail_next(KeyError("malformed"), method="fetch_positions")
        return result

    h.ex.create_close_order = create
    r = await h.close(aged, next_attempt=3)
    assert (r.outcome, r.filled_qty, r.avg_price, r.attempts) == ("failed", D("0.5"), D(100), 3)
    assert r.last_order_id == client_order_id(aged, 3) and "KeyError" in r.error


# --------------------------------------------------------------------------- real stack
# The simulator behind real ccxt clients, PostgreSQL for the write-ahead table.

from simulator.state import CountedFault  # noqa: E402
from tests.test_ccxt_adapter import (  # noqa: E402 - the simulator fixtures
    EXCHANGES, admin, faults, needs_sim, open_adapter, set_position, set_prices, sim, sim_orders,
)

__all__ = ["sim"]  # a fixture, used by name

T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LIQUIDITY_CODE = {"bybit": 30208, "binanceusdm": -4131}


async def aged_row(db, name: str, side: str, qty: str, entry: str = "60000") -> UUID:
    """A fresh aged position (an earlier one on the symbol is closed first)."""
    await db.execute("UPDATE monitoring.episodes SET status='closed', closed_at=now() "
                     "WHERE exchange=$1 AND symbol=$2 AND status='open'", name, SYMBOL)
    position = await db.upsert_open_position(exchange=name, symbol=SYMBOL, side=side, quantity=D(qty),
                                             entry_price=D(entry), opened_at=T0)
    aged, _ = await db.create_aged_position(position, detected_at=NOW, status="grace_active", target_price=None,
                                            breakeven_price=D(entry), loss_tolerance_percent=D(0),
                                            hours_aged=D(4), config={})
    return aged["id"]


class Stack:
    """One executor over a ccxt adapter on the simulator, writing to PostgreSQL."""

    def __init__(self, db, adapter, **kw):
        self.db, self.adapter = db, adapter
        self.writer = StorageWriter(db.write_batch)
        kw.setdefault("retry_delays", (0.05, 0.1, 0.2))
        self.executor = Executor({adapter.name: adapter}, self.writer, db.close_orders, write_direct=db.write_batch,
                                 config=ExecutorConfig(**kw))
        self.results: list = []

    def send_nowait(self, result) -> None:
        self.results.append(result)

    async def close(self, aged_id: UUID, side: str, qty: str, next_attempt: int = 1, **kw):
        req = CloseRequest(aged_id=aged_id, exchange=self.adapter.name, symbol=SYMBOL, side=side, qty=D(qty),
                           next_attempt=next_attempt, reply=self, clock=lambda: NOW, **kw)
        async with trio.open_nursery() as n:
            n.start_soon(self.writer.run)
            await self.executor._handle(req)
            await self.writer.wait_flushed()
            n.cancel_scope.cancel()
        return self.results[-1]


@pytest.fixture(params=EXCHANGES)
async def stack(request, aio_loop, sim, db):
    adapter = await open_adapter(sim, request.param)
    try:
        yield Stack(db, adapter)
    finally:
        with trio.CancelScope(shield=True):
            await adapter.close()


@needs_sim
async def test_sim_no_order_before_its_write_ahead_row_is_committed(sim, stack):
    ex, db = stack.adapter, stack.db
    await set_position(sim, ex, SYMBOL, "long", "0.5", "60000")
    await set_prices(sim, ex, SYMBOL, "60000.0", "60000.5", "60000.2")
    aged = await aged_row(db, ex.name, "long", "0.5")
    seen: list = []
    real_create = ex.create_close_order

    async def create(symbol, side, qty, cid, **kw):
        rows = await db.fetch("SELECT state FROM monitoring.close_orders WHERE client_order_id=$1", cid)
        seen.append((cid, [r["state"] for r in rows], len(await sim_orders(sim, ex))))
        return await real_create(symbol, side, qty, cid, **kw)

    ex.create_close_order = create
    r = await stack.close(aged, "long", "0.5")
    assert r.outcome == "flat"
    assert seen == [(client_order_id(aged, 1), ["pending"], 0)]  # committed, and nothing on the exchange yet
    [row] = await db.close_orders(aged)
    assert (row["state"], row["filled_qty"]) == ("filled", D("0.5"))


@needs_sim
async def test_sim_a_close_above_the_market_order_maximum_is_split(sim, stack):
    # BTCUSDT on the simulator: MARKET_LOT_SIZE maxQty / maxMktOrderQty 120, maxQty 1000
    ex, db = stack.adapter, stack.db
    limits = await ex.close_limits(SYMBOL)
    assert (limits.step, limits.min_qty, limits.max_market_qty, limits.max_limit_qty) == (
        D("0.001"), D("0.001"), D("120"), D("1000"))
    await set_position(sim, ex, SYMBOL, "long", "250", "60000")
    await set_prices(sim, ex, SYMBOL, "60000.0", "60000.5", "60000.2")
    aged = await aged_row(db, ex.name, "long", "250")
    r = await stack.close(aged, "long", "250")
    assert (r.outcome, r.filled_qty, r.avg_price, r.attempts) == ("flat", D(250), D("60000.0"), 3)
    orders = await sim_orders(sim, ex)
    assert [(D(o["qty"]), o["type"], o["reduce_only"], o["status"]) for o in orders] == [
        (D(120), "market", True, "filled"), (D(120), "market", True, "filled"), (D(10), "market", True, "filled")]
    assert [(row["attempt"], row["requested_qty"], row["state"]) for row in await db.close_orders(aged)] == [
        (1, D(120), "filled"), (2, D(120), "filled"), (3, D(10), "filled")]
    assert await ex.fetch_positions([SYMBOL]) == []


@needs_sim
@pytest.mark.parametrize("name", EXCHANGES)
async def test_sim_a_remainder_below_the_minimum_quantity_is_dust(aio_loop, sim, db, name):
    # The exchange raised the symbol's minimum order quantity above what is left open.
    sim.state.market(name, "BTCUSDT").min_qty = D("0.01")
    adapter = await open_adapter(sim, name)
    try:
        assert (await adapter.close_limits(SYMBOL)).min_qty == D("0.01")
        await set_position(sim, adapter, SYMBOL, "short", "0.005", "60000")
        await set_prices(sim, adapter, SYMBOL, "60000.0", "60000.5", "60000.2")
        aged = await aged_row(db, name, "short", "0.005")
        r = await Stack(db, adapter).close(aged, "short", "0.005")
        assert (r.outcome, r.remaining_qty) == ("dust", D("0.005"))
        assert await sim_orders(sim, adapter) == [] and await db.close_orders(aged) == []
        # the adapter refuses it too, before any request
        from exchanges.errors import NonRetryableError as NRE
        with pytest.raises(NRE) as e:
            await adapter.create_close_order(SYMBOL, "short", D("0.005"), "apm-dust-1")
        assert e.value.code == "qty_below_min" and await sim_orders(sim, adapter) == []
    finally:
        with trio.CancelScope(shield=True):
            await adapter.close()


@needs_sim
async def test_sim_the_limit_ioc_fallback_respects_the_policy_price(sim, stack):
    ex, db = stack.adapter, stack.db
    await set_position(sim, ex, SYMBOL, "long", "0.5", "60000")
    await set_prices(sim, ex, SYMBOL, "60000.0", "60000.5", "60000.2")
    aged = await aged_row(db, ex.name, "long", "0.5")
    # the policy accepts 59950.05 or better: the fallback sells at that, not at bid - 1 % (59400)
    await faults(sim, {"reject_next": {"count": 1, "code": LIQUIDITY_CODE[ex.name]}})
    r = await stack.close(aged, "long", "0.5", worst_price=D("59950.05"))
    assert (r.outcome, r.filled_qty, r.avg_price) == ("flat", D("0.5"), D("60000.0"))
    orders = [o for o in await sim_orders(sim, ex) if o["order_id"]]
    [ioc] = [o for o in orders if o["type"] == "limit"]
    assert ioc["time_in_force"] == "IOC" and ioc["reduce_only"] is True
    assert D(ioc["price"]) == D("59950.1")  # rounded to the tick towards the better side, never below
    # the book falls below the policy price: the IOC rests nowhere and fills nothing
    await set_position(sim, ex, SYMBOL, "long", "0.5", "60000", opened_at=None)  # re-opened now
    await set_prices(sim, ex, SYMBOL, "59000.0", "59000.5", "59000.2")
    aged2 = await aged_row(db, ex.name, "long", "0.5")
    stack.executor.retry_delays = (0.05,)
    await faults(sim, {"reject_next": {"count": 1, "code": LIQUIDITY_CODE[ex.name]}})
    r2 = await stack.close(aged2, "long", "0.5", worst_price=D("59950.05"))
    assert r2.outcome == "failed" and r2.filled_qty == 0
    late = [o for o in await sim_orders(sim, ex) if o["order_id"] and o["type"] == "limit"][1:]
    assert late and all(D(o["price"]) >= D("59950.05") and D(o["filled_qty"]) == 0 for o in late)
    (pos,) = await ex.fetch_positions([SYMBOL])
    assert pos.qty == D("0.5")


@needs_sim
@pytest.mark.parametrize("name", EXCHANGES)
async def test_sim_failed_lookups_never_resend_the_client_order_id(aio_loop, sim, db, name):
    adapter = await open_adapter(sim, name, timeout_ms=800)
    try:
        stack = Stack(db, adapter)
        await set_position(sim, adapter, SYMBOL, "long", "0.5", "60000")
        await set_prices(sim, adapter, SYMBOL, "60000.0", "60000.5", "60000.2")
        aged = await aged_row(db, name, "long", "0.5")
        await faults(sim, {"drop_reply": 1})  # the order executes, the reply never comes
        real_create = adapter.create_close_order

        async def create(*a, **kw):
            try:
                return await real_create(*a, **kw)
            finally:
                sim.state.faults.add_counted("http_5xx", CountedFault(3))  # and every lookup fails

        adapter.create_close_order = create
        r = await stack.close(aged, "long", "0.5")
        cid = client_order_id(aged, 1)
        assert (r.outcome, r.attempts) == ("failed", 1)
        [row] = await db.close_orders(aged)
        assert (row["client_order_id"], row["state"]) == (cid, "unknown")
        adapter.create_close_order = real_create
        r2 = await stack.close(aged, "long", "0.5", next_attempt=r.attempts + 1)
        assert (r2.outcome, r2.filled_qty, r2.last_order_id) == ("flat", D("0.5"), cid)
        assert [o["client_order_id"] for o in await sim_orders(sim, adapter) if o["order_id"]] == [cid]
        [row] = await db.close_orders(aged)
        assert row["state"] == "filled"
    finally:
        with trio.CancelScope(shield=True):
            await adapter.close()


@needs_sim
async def test_sim_a_rate_limit_holds_every_caller_back(sim, stack):
    ex = stack.adapter
    await set_position(sim, ex, SYMBOL, "long", "0.5", "60000")
    await set_prices(sim, ex, SYMBOL, "60000.0", "60000.5", "60000.2")
    await faults(sim, {"rate_limit_429": 2})
    with pytest.raises(RetryableError) as e:
        await ex.fetch_positions([SYMBOL])  # the detector's call
    assert e.value.retry_after is not None and e.value.retry_after > 0
    state = ex.ban_state()
    assert state is not None and state["seconds_left"] > 0 and ex.bans == 1
    for call in (partial(ex.fetch_quote, SYMBOL),  # the feeds' REST polling
                 partial(ex.create_close_order, SYMBOL, "long", D("0.1"), "apm-ban-1")):  # the executor
        with pytest.raises(RetryableError) as e:
            await call()
        assert e.value.code == "banned" and e.value.retry_after > 0
    assert sim.state.faults.rate_limit_429[0].count == 1  # no request reached the exchange
    # the executor waits the ban out, then closes (the second 429 is met and waited out too)
    aged = await aged_row(stack.db, ex.name, "long", "0.5")
    r = await stack.close(aged, "long", "0.5")
    assert r.outcome == "flat" and not sim.state.faults.rate_limit_429
    assert ex.ban_state() is None
    assert await sim_orders(sim, ex) and all(o["client_order_id"] != "apm-ban-1" for o in await sim_orders(sim, ex))


@needs_sim
@pytest.mark.parametrize("name", ["binanceusdm"])
async def test_sim_an_order_answered_new_is_followed_not_misread(aio_loop, sim, db, name):
    # Binance often answers a MARKET order NEW; here the adapter's own short fill wait is
    # off, so the executor gets an open order and must follow it to its fill.
    adapter = await open_adapter(sim, name)
    adapter._fill_poll_attempts = 0
    try:
        stack = Stack(db, adapter)
        await set_position(sim, adapter, SYMBOL, "long", "0.5", "60000")
        await set_prices(sim, adapter, SYMBOL, "60000.0", "60000.5", "60000.2")
        aged = await aged_row(db, name, "long", "0.5")
        await faults(sim, {"binance_market_new": True})
        r = await stack.close(aged, "long", "0.5")
        cid = client_order_id(aged, 1)
        assert (r.outcome, r.filled_qty, r.avg_price, r.last_order_id) == ("flat", D("0.5"), D("60000.0"), cid)
        [row] = await db.close_orders(aged)
        assert (row["state"], row["filled_qty"]) == ("filled", D("0.5"))
        assert len([o for o in await sim_orders(sim, adapter) if o["order_id"]]) == 1
    finally:
        with trio.CancelScope(shield=True):
            await adapter.close()
