"""Leases with fencing tokens (storage/lease_store.py, migration 005), on real PostgreSQL.

Taking, renewing, releasing and taking over a lease, and its token; the database's
refusal (``monitoring.check_lease``) of writes under a stale token or with no token
while a lease is live; the race between a fenced writer and a takeover, on two real
connections; a fenced account view's batches and the storage writer's handling of a
lost lease. Expiry is forced by a release, or by a short ttl and waiting for the
condition, never by sleeping a fixed time.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from uuid import uuid4

import asyncpg
import pytest
import trio
import trio_asyncio

from actors.position import Persist
from storage import LeaseInfo, LeaseLost, LeaseRound, StorageWriter, ops
from storage.errors import WriteRejected
from storage.repository import Database

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
ACC = "bybit-main"
PATIENCE = 30.0  # seconds: the most a condition may take on a loaded machine


async def wait_for(condition, what: str, interval: float = 0.02):
    """Poll ``condition`` (an async callable) until it returns a truthy value; return that."""
    with trio.fail_after(PATIENCE):
        while True:
            value = await condition()
            if value:
                return value
            await trio.sleep(interval)
    raise AssertionError(what)  # pragma: no cover - fail_after raises first


async def take_over(db: Database, account: str, holder: str, ttl: float = 30.0) -> int:
    """Acquire ``account`` for ``holder`` as soon as the current lease has lapsed."""
    return await wait_for(lambda: db.acquire_lease(account, holder, ttl), f"{holder} takes {account}")


async def make_aged(db: Database, *, exchange: str = "bybit", symbol: str = "BTC/USDT:USDT") -> dict:
    pos = await db.upsert_open_position(exchange=exchange, symbol=symbol, side="long", quantity=D("0.5"),
                                        entry_price=D(100), opened_at=T0)
    row, created = await db.create_aged_position(
        pos, detected_at=T0 + timedelta(hours=3), status="grace_active", target_price=D("100.2"),
        breakeven_price=D("100.2"), loss_tolerance_percent=D(0), hours_aged=D(3), config={})
    assert created
    return row


def close_order(aged: dict, attempt: int = 1) -> ops.RecordCloseOrder:
    return ops.RecordCloseOrder(client_order_id=f"{aged['id'].hex[:20]}-{attempt}", aged_id=aged["id"],
                                attempt=attempt, exchange=aged["exchange"], symbol=aged["symbol"], side="sell",
                                order_type="market", requested_qty=D("0.5"))


async def raw_connect(url: str) -> asyncpg.Connection:
    return await trio_asyncio.aio_as_trio(asyncpg.connect)(url)


async def raw(conn: asyncpg.Connection, method: str, *args):
    return await trio_asyncio.aio_as_trio(getattr(conn, method))(*args)


async def waiting_on_a_lock(db: Database, pid: int) -> bool:
    return bool(await db.fetchval(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid=$1", pid))


# --------------------------------------------------------------------------- taking and giving up


async def test_a_free_lease_is_taken_with_token_1_and_refused_to_another_while_live(db):
    assert await db.acquire_lease(ACC, "inst-a", 120) == 1
    assert await db.acquire_lease(ACC, "inst-b", 30) is None
    [row] = await db.lease_table()
    assert (row["account"], row["holder"], row["token"], row["live"]) == (ACC, "inst-a", 1, True)
    assert timedelta(seconds=120) >= row["expires_at"] - row["db_now"] > timedelta(seconds=60)


async def test_the_holder_taking_its_live_lease_again_keeps_the_token_and_extends_it(db):
    assert await db.acquire_lease(ACC, "inst-a", 30) == 1
    [before] = await db.lease_table()
    assert await db.acquire_lease(ACC, "inst-a", 120) == 1
    [after] = await db.lease_table()
    assert after["token"] == 1 and after["acquired_at"] == before["acquired_at"]
    assert after["expires_at"] > before["expires_at"] + timedelta(seconds=85)


async def test_a_released_lease_goes_to_the_next_holder_with_the_next_token(db):
    assert await db.acquire_lease(ACC, "inst-a", 30) == 1
    await db.release_lease(ACC, "inst-a", 1)
    [row] = await db.lease_table()
    assert row["live"] is False and row["token"] == 1  # the row stays, so the token is not reused
    assert await db.acquire_lease(ACC, "inst-b", 30) == 2
    await db.release_lease(ACC, "inst-b", 2)
    assert await db.acquire_lease(ACC, "inst-a", 30) == 3


async def test_a_release_by_a_stale_holder_or_token_changes_nothing(db):
    assert await db.acquire_lease(ACC, "inst-a", 30) == 1
    await db.release_lease(ACC, "inst-b", 1)
    await db.release_lease(ACC, "inst-a", 7)
    [row] = await db.lease_table()
    assert (row["holder"], row["token"], row["live"]) == ("inst-a", 1, True)


async def test_an_expired_lease_is_taken_over_with_the_next_token_and_no_longer_renews(db):
    assert await db.acquire_lease(ACC, "inst-a", 0.2) == 1
    assert await take_over(db, ACC, "inst-b") == 2
    lost = await db.lease_round("inst-a", {ACC: 1}, 30)
    assert lost.held == {}
    assert lost.leases[ACC].holder == "inst-b" and lost.leases[ACC].token == 2 and lost.leases[ACC].live


async def test_taking_back_a_lapsed_lease_of_ones_own_gets_a_new_token(db):
    # Writes of the tenure that lapsed must not pass as the new tenure's.
    assert await db.acquire_lease(ACC, "inst-a", 0.2) == 1

    async def lapsed():
        return not (await db.lease_table())[0]["live"]

    await wait_for(lapsed, "the lease lapses")
    assert await db.acquire_lease(ACC, "inst-a", 30) == 2


async def test_a_lease_round_renews_what_is_still_ours_and_lists_every_lease_and_live_instance(db):
    assert await db.acquire_lease("acc-1", "inst-a", 30) == 1
    assert await db.acquire_lease("acc-2", "inst-a", 30) == 1
    assert await db.acquire_lease("acc-3", "inst-b", 30) == 1
    await db.lease_round("inst-b", {"acc-3": 1}, 30)
    [before] = [r for r in await db.lease_table() if r["account"] == "acc-1"]
    # acc-2 is named with a stale token: it is neither renewed nor reported held
    rnd = await db.lease_round("inst-a", {"acc-1": 1, "acc-2": 9}, 120)
    assert isinstance(rnd, LeaseRound)
    assert rnd.held == {"acc-1": 1}
    assert set(rnd.leases) == {"acc-1", "acc-2", "acc-3"}
    assert all(isinstance(i, LeaseInfo) and i.live for i in rnd.leases.values())
    assert rnd.leases["acc-1"].expires_at - rnd.db_now > timedelta(seconds=115) > (
        rnd.leases["acc-2"].expires_at - rnd.db_now)
    assert rnd.leases["acc-1"].acquired_at == before["acquired_at"]
    assert rnd.live_instances == ("inst-a", "inst-b")
    assert rnd.db_now.tzinfo is not None


async def test_an_instance_whose_rounds_stop_drops_out_of_the_live_instances(db):
    await db.lease_round("inst-b", {}, 0.2)
    await db.lease_round("inst-a", {}, 30)

    async def only_a():
        return (await db.lease_round("inst-a", {}, 30)).live_instances == ("inst-a",)

    await wait_for(only_a, "inst-b expires")


async def test_leaving_releases_every_lease_of_the_instance_and_removes_it(db):
    assert await db.acquire_lease("acc-1", "inst-a", 30) == 1
    assert await db.acquire_lease("acc-2", "inst-a", 30) == 1
    assert await db.acquire_lease("acc-3", "inst-b", 30) == 1
    await db.lease_round("inst-a", {}, 30)
    await db.leave("inst-a")
    live = {r["account"]: r["live"] for r in await db.lease_table()}
    assert live == {"acc-1": False, "acc-2": False, "acc-3": True}
    rnd = await db.lease_round("inst-b", {"acc-3": 1}, 30)
    assert rnd.live_instances == ("inst-b",)
    assert await db.acquire_lease("acc-1", "inst-b", 30) == 2


@pytest.mark.parametrize("call", [
    lambda db: db.acquire_lease(ACC, "inst-a", 0),
    lambda db: db.acquire_lease(ACC, "inst-a", -1),
    lambda db: db.acquire_lease(ACC, "inst-a", math.nan),
    lambda db: db.acquire_lease("", "inst-a", 5),
    lambda db: db.acquire_lease(ACC, "", 5),
    lambda db: db.lease_round("inst-a", {ACC: 1}, math.inf),
    lambda db: db.lease_round("inst-a", {ACC: "1"}, 5),
    lambda db: db.lease_round("", {}, 5),
    lambda db: db.leave(""),
    lambda db: db.release_lease(ACC, "inst-a", "1"),
])
async def test_bad_input_is_one_clear_error_and_changes_nothing(db, call):
    with pytest.raises(WriteRejected, match="ttl|account|holder|token|instance"):
        await call(db)
    assert await db.lease_table() == []
    assert await db.fetchval("SELECT count(*) FROM monitoring.instances") == 0


# --------------------------------------------------------------------------- check_lease


async def test_check_lease_refuses_a_stale_token_naming_account_token_and_holder(db):
    assert await db.acquire_lease(ACC, "inst-a", 30) == 1
    await db.execute("SELECT monitoring.check_lease($1, 1)", ACC)
    await db.release_lease(ACC, "inst-a", 1)
    with pytest.raises(LeaseLost, match=f"{ACC}.*token 1 refused"):  # expired
        await db.execute("SELECT monitoring.check_lease($1, 1)", ACC)
    assert await db.acquire_lease(ACC, "inst-b", 30) == 2
    with pytest.raises(LeaseLost, match=f"{ACC}.*token 1 refused.*inst-b has token 2"):
        await db.execute("SELECT monitoring.check_lease($1, 1)", ACC)
    with pytest.raises(LeaseLost, match="no lease exists"):
        await db.execute("SELECT monitoring.check_lease('other', 1)")


async def test_check_lease_without_a_token_refuses_only_while_a_live_lease_exists(db):
    await db.execute("SELECT monitoring.check_lease($1, NULL)", ACC)  # no lease: an unfenced writer may write
    assert await db.acquire_lease(ACC, "inst-a", 30) == 1
    with pytest.raises(LeaseLost, match=f"{ACC}.*inst-a holds the lease"):
        await db.execute("SELECT monitoring.check_lease($1, NULL)", ACC)
    await db.release_lease(ACC, "inst-a", 1)
    await db.execute("SELECT monitoring.check_lease($1, NULL)", ACC)


async def test_an_unfenced_close_order_is_refused_while_its_account_is_leased(db):
    aged = await make_aged(db)  # unscoped: account 'bybit'
    assert await db.acquire_lease("bybit", "inst-a", 30) == 1
    with pytest.raises(LeaseLost, match="bybit"):
        await db.write_batch([close_order(aged)])
    assert await db.close_orders(aged["id"]) == []
    await db.release_lease("bybit", "inst-a", 1)
    await db.write_batch([close_order(aged)])
    [row] = await db.close_orders(aged["id"])
    assert row["lease_token"] is None and row["account"] == "bybit"


# --------------------------------------------------------------------------- the race, on two connections


async def test_a_takeover_waits_for_a_fenced_writer_and_then_its_token_is_refused(db, database_url):
    view = db.for_account(ACC)
    aged = await make_aged(view)
    a = await raw_connect(database_url)
    b_done = trio.Event()
    b_token: list[int] = []
    try:
        # A: a fenced transaction, its check passed while the lease was live, still open.
        while True:
            token = await db.acquire_lease(ACC, "inst-a", 1.0)
            assert token is not None
            await raw(a, "execute", "BEGIN")
            try:
                await raw(a, "execute", "SELECT monitoring.check_lease($1, $2)", ACC, token)
                break
            except asyncpg.PostgresError:  # lapsed before the check on a very slow machine: again
                await raw(a, "execute", "ROLLBACK")
        row = close_order(aged)
        await raw(a, "execute",
                  "INSERT INTO monitoring.close_orders (client_order_id, aged_position_id, attempt, exchange, "
                  "symbol, side, order_type, requested_qty, account, lease_token) "
                  "VALUES ($1,$2,1,'bybit',$3,'sell','market',0.5,$4,$5)",
                  row.client_order_id, aged["id"], aged["symbol"], ACC, token)

        async def b_takes_over():
            b_token.append(await take_over(db, ACC, "inst-b"))
            b_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(b_takes_over)
            # B cannot take the row while A's transaction reads it FOR SHARE.
            a_pid = a.get_server_pid()
            await wait_for(lambda: db.fetchval(
                "SELECT bool_or(wait_event_type = 'Lock') FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> $1 AND query LIKE '%monitoring.leases%'", a_pid),
                "B waits for A's lock")
            assert not b_done.is_set()
            await raw(a, "execute", "COMMIT")
        assert b_token == [token + 1]
        # A's write under its token committed before the takeover; the same token is now refused.
        [written] = await view.close_orders(aged["id"])
        assert written["lease_token"] == token
        await raw(a, "execute", "BEGIN")
        with pytest.raises(asyncpg.PostgresError, match=f"token {token} refused.*inst-b") as refused:
            await raw(a, "execute", "SELECT monitoring.check_lease($1, $2)", ACC, token)
        assert refused.value.sqlstate == "AP001"
        await raw(a, "execute", "ROLLBACK")
        with pytest.raises(asyncpg.PostgresError, match=f"token {token} refused") as refused:
            await raw(a, "execute",
                      "INSERT INTO monitoring.close_orders (client_order_id, aged_position_id, attempt, exchange, "
                      "symbol, side, order_type, requested_qty, account, lease_token) "
                      "VALUES ('late-2',$1,2,'bybit',$2,'sell','market',0.5,$3,$4)",
                      aged["id"], aged["symbol"], ACC, token)
        assert refused.value.sqlstate == "AP001"
        assert len(await view.close_orders(aged["id"])) == 1
    finally:
        await raw(a, "close")


async def test_a_fenced_writer_that_reads_during_a_takeover_waits_and_sees_the_new_token(db, database_url):
    assert await db.acquire_lease(ACC, "inst-a", 30) == 1
    await db.release_lease(ACC, "inst-a", 1)
    a, b = await raw_connect(database_url), await raw_connect(database_url)
    outcome: list[BaseException | None] = []
    try:
        # B: a takeover, not committed yet.
        await raw(b, "execute", "BEGIN")
        assert await raw(b, "fetchval",
                         "UPDATE monitoring.leases SET holder='inst-b', token=token+1, acquired_at=now(), "
                         "renewed_at=now(), expires_at=now()+interval '30 seconds' "
                         "WHERE account=$1 RETURNING token", ACC) == 2

        async def a_checks():
            # A took its token (1) before the release and checks it now.
            await raw(a, "execute", "BEGIN")
            try:
                await raw(a, "execute", "SELECT monitoring.check_lease($1, 1)", ACC)
                outcome.append(None)
            except asyncpg.PostgresError as exc:
                outcome.append(exc)
            await raw(a, "execute", "ROLLBACK")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(a_checks)
            await wait_for(lambda: waiting_on_a_lock(db, a.get_server_pid()), "A waits for B's takeover")
            assert outcome == []
            await raw(b, "execute", "COMMIT")
        [exc] = outcome
        assert exc is not None and exc.sqlstate == "AP001" and "inst-b has token 2" in str(exc)
    finally:
        await raw(a, "close")
        await raw(b, "close")


# --------------------------------------------------------------------------- fenced views and the writer


async def test_a_fenced_batch_under_the_live_token_writes_and_its_close_order_carries_the_token(db):
    assert await db.acquire_lease(ACC, "inst-a", 30) == 1
    view = db.for_account(ACC, lambda: 1)
    aged = await make_aged(view)
    await view.write_batch([close_order(aged)])  # a single write: a transaction with the check first
    await view.write_batch([ops.UpdateAged(aged["id"], Persist(close_attempts=1)), close_order(aged, 2)])
    rows = await view.close_orders(aged["id"])
    assert [(r["attempt"], r["account"], r["lease_token"]) for r in rows] == [(1, ACC, 1), (2, ACC, 1)]
    assert (await view.aged_position(aged["id"]))["close_attempts"] == 1


async def test_a_fenced_batch_after_the_lease_was_lost_raises_lease_lost_and_writes_nothing(db):
    assert await db.acquire_lease(ACC, "inst-a", 30) == 1
    view = db.for_account(ACC, lambda: 1)
    aged = await make_aged(view)
    await db.release_lease(ACC, "inst-a", 1)
    assert await db.acquire_lease(ACC, "inst-b", 30) == 2
    for batch in ([ops.UpdateAged(aged["id"], Persist(close_attempts=3))],
                  [ops.UpdateAged(aged["id"], Persist(close_attempts=3)), close_order(aged)]):
        with pytest.raises(LeaseLost, match=f"{ACC}.*token 1 refused") as lost:
            await view.write_batch(batch)
        assert lost.value.account == ACC
    assert (await view.aged_position(aged["id"]))["close_attempts"] == 0
    assert await view.close_orders(aged["id"]) == []


async def test_a_fenced_view_without_a_token_raises_lease_lost_without_a_round_trip(db, database_url):
    other = await Database.connect(database_url, min_size=0, max_size=1)
    await other.close()  # any round trip now would fail as StorageUnavailable
    view = other.for_account(ACC, lambda: None)
    with pytest.raises(LeaseLost, match=f"{ACC}.*no lease token"):
        await view.write_batch([ops.CloseVanished(aged_id=uuid4(), closed_at=T0)])


async def test_the_writer_drops_a_lease_lost_batch_with_one_warning_and_goes_on(db, caplog):
    token = {"value": 1}
    assert await db.acquire_lease(ACC, "inst-a", 30) == 1
    view = db.for_account(ACC, lambda: token["value"])
    aged = await make_aged(view)
    await db.release_lease(ACC, "inst-a", 1)
    assert await db.acquire_lease(ACC, "inst-b", 30) == 2
    writer = StorageWriter(view.write_batch)
    caplog.set_level(logging.WARNING, logger="storage.writer")
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(ops.UpdateAged(aged["id"], Persist(close_attempts=5)), close_order(aged))
        await writer.wait_flushed()
        assert writer.lease_lost == 2 and writer.database_up and writer.written == 0
        lost = [r for r in caplog.records if "lease" in r.getMessage()]
        assert len(lost) == 1 and ACC in lost[0].getMessage() and lost[0].levelno == logging.WARNING
        # the writer goes on: once its view writes under the live token again, writes land
        token["value"] = 2
        writer.submit(ops.UpdateAged(aged["id"], Persist(close_attempts=6)))
        await writer.wait_flushed()
        nursery.cancel_scope.cancel()
    assert writer.written == 1
    assert (await view.aged_position(aged["id"]))["close_attempts"] == 6
    assert await view.close_orders(aged["id"]) == []
