"""Accounts as a dimension of every row (migration 005, ``Database.for_account``), on real PostgreSQL.

Two accounts on the same exchange hold the same symbol at once: each account-scoped
view sees and changes only its own episodes, aged positions, close orders, events,
history and statistics, while the unscoped ``Database`` reads them all and writes new
rows in the account named like their exchange. A database with rows from before
accounts is migrated with ``account = exchange``.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import asyncpg
import pytest
import trio_asyncio

from actors.policy import PolicyConfig
from actors.position import Persist, Settings
from storage import ops, with_database
from storage.errors import WriteRejected
from storage.migrate import available_migrations
from storage.repository import Database

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
SYMBOL = "BTC/USDT:USDT"


async def open_aged(db: Database, *, side: str = "long", entry: str = "100", exchange: str = "bybit",
                    symbol: str = SYMBOL) -> tuple[dict, dict]:
    pos = await db.upsert_open_position(exchange=exchange, symbol=symbol, side=side, quantity=D("0.5"),
                                        entry_price=D(entry), opened_at=T0)
    row, created = await db.create_aged_position(
        pos, detected_at=T0 + timedelta(hours=3), status="grace_active", target_price=D("100.2"),
        breakeven_price=D("100.2"), loss_tolerance_percent=D(0), hours_aged=D(3), config={})
    assert created
    return pos, row


def order(aged: dict, attempt: int = 1, state_tag: str = "") -> ops.RecordCloseOrder:
    return ops.RecordCloseOrder(client_order_id=f"{aged['id'].hex[:16]}{state_tag}-{attempt}", aged_id=aged["id"],
                                attempt=attempt, exchange=aged["exchange"], symbol=aged["symbol"], side="sell",
                                order_type="market", requested_qty=D("0.5"))


async def test_two_accounts_hold_the_same_symbol_on_one_exchange_and_their_reads_never_cross(db):
    main, sub = db.for_account("main"), db.for_account("sub")
    assert (db.account, main.account, sub.account) == (None, "main", "sub")
    pos_m, aged_m = await open_aged(main, entry="100")
    pos_s, aged_s = await open_aged(sub, side="short", entry="200")
    assert (pos_m["account"], aged_m["account"], pos_s["account"], aged_s["account"]) == ("main",) * 2 + ("sub",) * 2
    await main.write_batch([order(aged_m), ops.AddEvent(aged_m["id"], "price_check", market_price=D(101))])
    await sub.write_batch([order(aged_s), ops.AddEvent(aged_s["id"], "price_check", market_price=D(199))])

    for view, mine, theirs in ((main, (pos_m, aged_m), (pos_s, aged_s)), (sub, (pos_s, aged_s), (pos_m, aged_m))):
        (my_pos, my_aged), (their_pos, their_aged) = mine, theirs
        assert [p["id"] for p in await view.open_positions()] == [my_pos["id"]]
        assert [p["id"] for p in await view.open_positions("bybit")] == [my_pos["id"]]
        assert await view.episode(their_pos["id"]) is None and (await view.episode(my_pos["id"]))["id"] == my_pos["id"]
        assert await view.aged_position(their_aged["id"]) is None
        assert await view.aged_position_for(their_pos["id"]) is None
        assert [a["id"] for a in await view.all_aged_positions()] == [my_aged["id"]]
        assert [a["id"] for a in await view.active_aged_positions()] == [my_aged["id"]]
        open_ids, states = await view.load_for_recovery(PolicyConfig(), Settings())
        assert open_ids == {my_aged["id"]} and [s.aged_id for s in states] == [my_aged["id"]]
        assert [o["aged_position_id"] for o in await view.inflight_close_orders()] == [my_aged["id"]]
        assert await view.close_orders(their_aged["id"]) == []
        assert len(await view.close_orders(my_aged["id"])) == 1
        assert await view.events(their_aged["id"]) == [] and await view.history(their_aged["id"]) == []
        assert len(await view.events(my_aged["id"], "price_check")) == 1
        assert [h["to_status"] for h in await view.history(my_aged["id"])] == ["grace_active"]
        assert await view.load_position(their_aged["id"], PolicyConfig(), Settings()) is None
        stats = await view.statistics(days=3650, now=T0 + timedelta(days=1))
        assert stats["current"]["monitored"] == 1 and stats["historical"]["total_processed"] == 1
        assert stats["performance"]["close_orders"] == 1

    # the unscoped database reads across accounts
    assert {p["id"] for p in await db.open_positions()} == {pos_m["id"], pos_s["id"]}
    assert len(await db.active_aged_positions()) == 2 and len(await db.inflight_close_orders()) == 2
    assert (await db.statistics(days=3650, now=T0 + timedelta(days=1)))["current"]["monitored"] == 2


async def test_a_view_refreshes_and_flips_only_its_own_accounts_episode(db):
    main, sub = db.for_account("main"), db.for_account("sub")
    pos_m = await main.upsert_open_position(exchange="bybit", symbol=SYMBOL, side="long", quantity=D(1),
                                            entry_price=D(100), opened_at=T0)
    pos_s = await sub.upsert_open_position(exchange="bybit", symbol=SYMBOL, side="long", quantity=D(2),
                                           entry_price=D(200), opened_at=T0)
    assert pos_s["id"] != pos_m["id"]
    again = await main.upsert_open_position(exchange="bybit", symbol=SYMBOL, side="long", quantity=D(3),
                                            entry_price=D(100), opened_at=T0)
    assert again["id"] == pos_m["id"] and again["quantity"] == 3
    flipped = await sub.upsert_open_position(exchange="bybit", symbol=SYMBOL, side="short", quantity=D(1),
                                             entry_price=D(210), opened_at=T0)
    assert flipped["account"] == "sub" and flipped["id"] not in (pos_m["id"], pos_s["id"])
    assert (await db.episode(pos_s["id"]))["end_reason"] == "flip"
    assert (await db.episode(pos_m["id"]))["status"] == "open"
    await sub.close_position(pos_m["id"])  # not its episode: nothing happens
    await sub.set_trailing(pos_m["id"], True)
    assert (await db.episode(pos_m["id"]))["status"] == "open"
    assert (await db.episode(pos_m["id"]))["trailing_activated"] is False
    await main.close_position(pos_m["id"])
    assert (await db.episode(pos_m["id"]))["status"] == "closed"


async def test_a_view_cannot_change_another_accounts_aged_position_or_close_order(db):
    main, sub = db.for_account("main"), db.for_account("sub")
    pos, aged = await open_aged(main)
    await main.write_batch([order(aged)])
    cid = order(aged).client_order_id
    await sub.write_batch([ops.UpdateAged(aged["id"], Persist(close_attempts=4)),
                           ops.UpdateCloseOrder(cid, {"state": "filled"}),
                           ops.CloseVanished(aged["id"], T0),
                           ops.ClosePosition(pos["id"], T0)])
    row = await main.aged_position(aged["id"])
    assert row["close_attempts"] == 0 and row["status"] == "grace_active"
    assert [o["state"] for o in await main.close_orders(aged["id"])] == ["pending"]
    assert (await main.episode(pos["id"]))["status"] == "open"
    await main.write_batch([ops.UpdateAged(aged["id"], Persist(close_attempts=4))])
    assert (await main.aged_position(aged["id"]))["close_attempts"] == 4


async def test_the_unscoped_database_writes_in_the_account_named_like_the_exchange(db):
    pos, aged = await open_aged(db, exchange="binanceusdm")
    await db.write_batch([order(aged)])
    [o] = await db.close_orders(aged["id"])
    assert (pos["account"], aged["account"], o["account"], o["lease_token"]) == ("binanceusdm",) * 3 + (None,)
    # and the view of that account sees them: a single-account configuration names its account so
    assert [p["id"] for p in await db.for_account("binanceusdm").open_positions()] == [pos["id"]]


async def test_an_aged_position_takes_its_episodes_account(db):
    pos = await db.for_account("sub").upsert_open_position(exchange="bybit", symbol=SYMBOL, side="long",
                                                           quantity=D(1), entry_price=D(100), opened_at=T0)
    row, _ = await db.create_aged_position(
        pos, detected_at=T0, status="detected", target_price=None, breakeven_price=D("100.2"),
        loss_tolerance_percent=D(0), hours_aged=D(3), config={})
    assert row["account"] == "sub"


@pytest.mark.parametrize("account", ["", None, 7])
async def test_a_view_of_no_account_is_refused(db, account):
    with pytest.raises(WriteRejected, match="account"):
        db.for_account(account)


async def test_a_view_shares_the_pool_and_closing_it_leaves_the_pool_open(db):
    view = db.for_account("main")
    assert view._pool is db._pool
    await view.close()
    assert await db.fetchval("SELECT 1") == 1


# --------------------------------------------------------------------------- migration of existing rows


async def _admin(url: str, sql: str) -> None:
    conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(url)
    try:
        await trio_asyncio.aio_as_trio(conn.execute)(sql)
    finally:
        await trio_asyncio.aio_as_trio(conn.close)()


async def test_rows_from_before_accounts_belong_to_the_account_named_like_their_exchange(aio_loop, database_url):
    name = f"apm_accounts_test_{secrets.token_hex(4)}"
    await _admin(database_url, f'CREATE DATABASE "{name}"')
    url = with_database(database_url, name)
    try:
        database = await Database.connect(url)
        try:
            await database.execute(
                "CREATE SCHEMA monitoring; CREATE TABLE monitoring.schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            for mig in available_migrations():
                if mig.version < 5:
                    await database.execute(mig.sql)
                    await database.execute("INSERT INTO monitoring.schema_migrations VALUES ($1, $2, $3)",
                                           mig.version, mig.name, hashlib.sha256(mig.sql.encode()).hexdigest())
            pos_id = await database.fetchval(
                "INSERT INTO monitoring.episodes (exchange, symbol, side, quantity, entry_price, opened_at, "
                "opened_at_source, first_seen_at, last_seen_at) "
                "VALUES ('bybit', $1, 'long', 1, 100, $2, 'exchange', $2, $2) RETURNING id", SYMBOL, T0)
            aged_id = await database.fetchval(
                "INSERT INTO monitoring.aged_positions (position_id, symbol, exchange, side, entry_price, quantity, "
                "position_opened_at, status) VALUES ($1, $2, 'bybit', 'long', 100, 1, $3, 'grace_active') RETURNING id",
                pos_id, SYMBOL, T0)
            await database.execute(
                "INSERT INTO monitoring.close_orders (client_order_id, aged_position_id, attempt, exchange, symbol, "
                "side, order_type, requested_qty) VALUES ('old-1', $1, 1, 'bybit', $2, 'sell', 'market', 1)",
                aged_id, SYMBOL)

            assert (await database.migrate())[0] == 5  # and any later ones

            view = database.for_account("bybit")
            assert (await view.episode(pos_id))["account"] == "bybit"
            assert (await view.aged_position(aged_id))["account"] == "bybit"
            [o] = await view.close_orders(aged_id)
            assert o["account"] == "bybit" and o["lease_token"] is None
            nullable = {(r["table_name"], r["is_nullable"]) for r in await database.fetch(
                "SELECT table_name, is_nullable FROM information_schema.columns "
                "WHERE table_schema='monitoring' AND column_name='account' "
                "AND table_name IN ('episodes', 'aged_positions', 'close_orders')")}
            assert nullable == {("episodes", "NO"), ("aged_positions", "NO"), ("close_orders", "NO")}
            index = await database.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE schemaname='monitoring' AND indexname='episodes_one_open'")
            assert "(account, exchange, symbol)" in index and "status = 'open'" in index
            # the same symbol may now be open in a second account of the same exchange
            other = await database.for_account("bybit-sub").upsert_open_position(
                exchange="bybit", symbol=SYMBOL, side="long", quantity=D(1), entry_price=D(100), opened_at=T0)
            assert other["id"] != pos_id and (await database.episode(pos_id))["status"] == "open"
        finally:
            await database.close()
    finally:
        await _admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
