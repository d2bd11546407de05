"""Writer holds: a write-ahead row is committed before the audit rows of the same decision.

Rules: no sockets and no database — writes go into a list, with a virtual commit time;
trio's autojump MockClock; the exchange is the in-memory one.
"""

from datetime import datetime, timezone
from decimal import Decimal as D
from uuid import uuid4

import trio

from actors.executor import CloseRequest, Executor
from storage.writer import StorageWriter, WriterConfig
from doubles.exchange import MemoryExchange
from actors.position import Persist
from storage import ops

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SYMBOL = "BTC/USDT:USDT"
COMMIT = 0.004  # virtual seconds one commit takes


def recorder(log: list, name: str):
    async def write_batch(batch):
        log.append((name, "start", trio.current_time()))
        await trio.sleep(COMMIT)
        log.append((name, "done", [type(item).__name__ for item in batch]))
    return write_batch


def event():
    return ops.AddEvent(uuid4(), "aged.close.triggered")


async def test_no_batch_starts_while_a_hold_is_live_and_one_starts_when_it_is_released(autojump_clock):
    log = []
    writer = StorageWriter(recorder(log, "writer"))
    async with trio.open_nursery() as n:
        n.start_soon(writer.run)
        hold = writer.hold()
        writer.submit(event())
        await trio.sleep(0.01)
        assert log == []
        released_at = trio.current_time()
        hold.release()
        hold.release()  # twice is harmless
        await writer.wait_flushed()
        n.cancel_scope.cancel()
    assert log[0][:2] == ("writer", "start") and log[0][2] == released_at


async def test_a_forgotten_hold_lapses_after_max_hold(autojump_clock):
    log = []
    writer = StorageWriter(recorder(log, "writer"), config=WriterConfig(max_hold=0.05))
    async with trio.open_nursery() as n:
        n.start_soon(writer.run)
        began = trio.current_time()
        writer.hold()  # never released
        writer.submit(event())
        await writer.wait_flushed()
        writer.submit(event())  # the lapsed hold holds nothing any more
        second = trio.current_time()
        await writer.wait_flushed()
        n.cancel_scope.cancel()
    starts = [t for name, what, t in log if what == "start"]
    assert starts[0] - began == 0.05
    assert starts[1] == second


async def test_holds_that_keep_coming_delay_a_batch_by_max_hold_at_most(autojump_clock):
    log = []
    writer = StorageWriter(recorder(log, "writer"), config=WriterConfig(max_hold=0.05))
    async with trio.open_nursery() as n:
        n.start_soon(writer.run)

        async def a_close_every_5_ms():
            while True:
                writer.hold()  # each one would lapse after 50 ms on its own
                await trio.sleep(0.005)
        n.start_soon(a_close_every_5_ms)
        await trio.sleep(0.001)
        wanted = trio.current_time()
        writer.submit(event())
        with trio.fail_after(1):  # starved: the batch would never start
            await writer.wait_flushed()
        n.cancel_scope.cancel()
    [started] = [t for name, what, t in log if what == "start"]
    assert started - wanted <= 0.05 + 1e-9


def executor_with(log: list, qty="1"):
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", qty, "100", opened_at=T0)
    ex.set_quote(SYMBOL, "101", "101.01")
    writer = StorageWriter(recorder(log, "writer"))

    async def no_orders(aged_id):
        return []
    executor = Executor({"bybit": ex}, writer, no_orders, write_direct=recorder(log, "write-ahead"))
    return ex, writer, executor


def close_request(aged_id, reply, *, from_tick=True):
    return CloseRequest(aged_id=aged_id, exchange="bybit", symbol=SYMBOL, side="long", qty=D(1), next_attempt=1,
                        reply=reply, clock=lambda: T0, tick_received_at=trio.current_time() if from_tick else None)


async def test_a_tick_triggered_close_commits_its_write_ahead_row_before_the_decisions_audit_rows(autojump_clock):
    log = []
    ex, writer, executor = executor_with(log)
    send, receive = trio.open_memory_channel(1)
    async with trio.open_nursery() as n:
        n.start_soon(writer.run)
        n.start_soon(executor.run)
        await trio.sleep(0)
        # what an actor does on the crossing tick: audit rows first, then the close request
        writer.submit(event(), ops.UpdateAged(uuid4(), Persist(status="closing")))
        executor.submit(close_request(uuid4(), send))
        result = await receive.receive()
        await writer.wait_flushed()
        n.cancel_scope.cancel()
    assert result.outcome == "flat"
    order = [(name, what) for name, what, _ in log]
    assert order[:2] == [("write-ahead", "start"), ("write-ahead", "done")], order
    assert ("writer", "start") in order
    assert not writer._holds


async def test_without_a_tick_there_is_no_hold_and_a_close_without_a_write_ahead_row_releases_its_hold(
        autojump_clock):
    log = []
    ex, writer, executor = executor_with(log)
    ex.positions.clear()  # the position is gone: no order, no write-ahead row
    send, receive = trio.open_memory_channel(2)
    async with trio.open_nursery() as n:
        n.start_soon(writer.run)
        n.start_soon(executor.run)
        await trio.sleep(0)
        executor.submit(close_request(uuid4(), send))
        assert len(writer._holds) == 1
        result = await receive.receive()
        assert result.outcome == "vanished" and not writer._holds
        executor.submit(close_request(uuid4(), send, from_tick=False))
        assert not writer._holds
        await receive.receive()
        n.cancel_scope.cancel()
