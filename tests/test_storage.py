"""Storage against a real PostgreSQL: migrations, trigger-written history, the
write-ahead table, statistics and refusal of bad input.

Rules: real database (see conftest), real clock, nothing mocked.
"""

import secrets
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import asyncpg
import pytest

import storage
import trio_asyncio
from storage import with_database
from storage.mapping import AGED_COLUMN
from storage.repository import AGED_UPDATABLE, Database
from tests.support import BOT_TABLE
from actors.policy import PolicyConfig
from actors.position import Persist, Settings
from actors.statuses import OrderState, Status
from storage import ops
from storage.embedded import EmbeddedPostgres
from storage.errors import StorageUnavailable, WriteRejected
from storage.migrate import available_migrations

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


async def make_aged(db, *, symbol="BTC/USDT:USDT", side="long", status="grace_active", entry=D(100),
                    opened_at=T0, exchange="bybit"):
    pos = await db.upsert_open_position(exchange=exchange, symbol=symbol, side=side, quantity=D("0.5"),
                                        entry_price=entry, opened_at=opened_at)
    row, created = await db.create_aged_position(
        pos, detected_at=opened_at + timedelta(hours=3), status=status, target_price=D("100.2"),
        breakeven_price=D("100.2"), loss_tolerance_percent=D(0), hours_aged=D(3), config={"max_age_hours": "3"})
    assert created
    return pos, row


async def test_migrations_are_recorded_and_a_second_apply_is_a_no_op(db):
    assert await db.migrate() == []
    versions = [r["version"] for r in await db.fetch("SELECT version FROM monitoring.schema_migrations")]
    assert versions == [m.version for m in available_migrations()]
    tables = {r["table_name"] for r in await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema='monitoring'")}
    assert {"episodes", "aged_positions", "aged_positions_history", "aged_positions_monitoring",
            "close_orders", "active_aged_positions", "aged_positions_statistics"} <= tables
    assert "positions" not in tables  # that name belongs to the trading bot's own book


async def test_an_edited_applied_migration_is_refused(db):
    await db.execute("UPDATE monitoring.schema_migrations SET checksum='x' WHERE version=1")
    try:
        with pytest.raises(Exception, match="changed after it was applied"):
            await db.migrate()
    finally:
        await db.execute("UPDATE monitoring.schema_migrations SET checksum=$1 WHERE version=1",
                         available_migrations()[0].checksum)


async def test_history_is_written_by_the_trigger_on_every_status_change(db):
    _, aged = await make_aged(db, status="detected")
    await db.update_aged_position(aged["id"], status="grace_active", sampled_price=D("99.1"))
    await db.update_aged_position(aged["id"], sampled_price=D("99.2"))  # no status change: no row
    await db.update_aged_position(aged["id"], status="progressive_active", loss_tolerance_percent=D("0.5"),
                                  target_price=D("99.5"), sampled_price=D("99.3"))
    await db.update_aged_position(aged["id"], status="closed", close_reason="loss_acceptable",
                                  closed_at=T0 + timedelta(hours=12), close_price=D("99.6"),
                                  pnl_percent=D("-0.6"))
    hist = await db.history(aged["id"])
    assert [(h["from_status"], h["to_status"]) for h in hist] == [
        (None, "detected"), ("detected", "grace_active"), ("grace_active", "progressive_active"),
        ("progressive_active", "closed")]
    assert hist[2]["market_price"] == D("99.3") and hist[2]["loss_tolerance_percent"] == D("0.5")
    assert hist[3]["market_price"] == D("99.6") and hist[3]["close_reason"] == "loss_acceptable"
    assert hist[3]["pnl_percent"] == D("-0.6")


async def test_a_closed_aged_position_is_final(db):
    _, aged = await make_aged(db)
    await db.update_aged_position(aged["id"], status="closed", close_reason="breakeven", closed_at=T0)
    with pytest.raises(WriteRejected, match="closed") as refused:
        await db.update_aged_position(aged["id"], status="progressive_active")
    assert isinstance(refused.value.__cause__, asyncpg.CheckViolationError)  # the driver's error, kept as cause
    with pytest.raises(WriteRejected, match="final"):
        await db.update_aged_position(aged["id"], close_reason="manual")
    await db.write_batch([ops.CloseVanished(aged["id"], T0)])  # a late "vanished" changes nothing
    row = await db.aged_position(aged["id"])
    assert row["close_reason"] == "breakeven" and row["closed_at"] == T0
    _, other = await make_aged(db, symbol="ETH/USDT:USDT")
    await db.write_batch([ops.CloseVanished(other["id"], T0)])
    assert (await db.aged_position(other["id"]))["close_reason"] == "manual"


@pytest.mark.parametrize("fields,error", [
    ({"status": "finished"}, WriteRejected),
    ({"close_reason": "bored"}, WriteRejected),
    ({"status": "closed"}, WriteRejected),  # closed without a reason
    ({"loss_tolerance_percent": D(-1)}, WriteRejected),
])
async def test_bad_values_are_refused_by_the_database(db, fields, error):
    _, aged = await make_aged(db)
    with pytest.raises(error):
        await db.update_aged_position(aged["id"], **fields)
    assert (await db.aged_position(aged["id"]))["status"] == "grace_active"


async def test_unknown_columns_and_sides_are_refused(db):
    _, aged = await make_aged(db)
    with pytest.raises(WriteRejected, match="not updatable"):
        await db.update_aged_position(aged["id"], id="x")
    with pytest.raises(WriteRejected):
        await db.upsert_open_position(exchange="bybit", symbol="ETH/USDT:USDT", side="sideways", quantity=D(1),
                                      entry_price=D(1), opened_at=T0)


async def test_aged_row_is_created_once_per_position(db):
    pos, aged = await make_aged(db)
    again, created = await db.create_aged_position(
        pos, detected_at=T0, status="detected", target_price=None, breakeven_price=D(1),
        loss_tolerance_percent=D(0), hours_aged=D(0), config={})
    assert not created and again["id"] == aged["id"] and again["status"] == "grace_active"


async def test_position_book_side_flip_starts_a_new_position(db):
    a = await db.upsert_open_position(exchange="bybit", symbol="BTC/USDT:USDT", side="long", quantity=D(1),
                                      entry_price=D(100), opened_at=T0)
    same = await db.upsert_open_position(exchange="bybit", symbol="BTC/USDT:USDT", side="long", quantity=D("0.4"),
                                         entry_price=D(100), opened_at=T0)
    assert same["id"] == a["id"] and same["quantity"] == D("0.4")
    flipped = await db.upsert_open_position(exchange="bybit", symbol="BTC/USDT:USDT", side="short",
                                            quantity=D(1), entry_price=D(101), opened_at=T0 + timedelta(hours=1))
    assert flipped["id"] != a["id"]
    assert [p["id"] for p in await db.open_positions("bybit")] == [flipped["id"]]


async def test_our_close_ends_an_episode_the_stream_already_ended_as_flat(db):
    """The account stream's flat can reach the detector before our close result is
    written: the close still ends the episode as ours and closes the trading bot's row."""
    await db.execute("DROP TABLE IF EXISTS monitoring.positions")
    await db.execute(BOT_TABLE)
    try:
        db._bot_columns = None  # the bot's book appeared after the connection was made
        bot_id = await db.fetchval(
            "INSERT INTO monitoring.positions (symbol, exchange, side, quantity, entry_price, opened_at) "
            "VALUES ('BTCUSDT', 'bybit', 'long', 0.5, 100, $1) RETURNING id", T0)
        pos = await db.upsert_open_position(exchange="bybit", symbol="BTC/USDT:USDT", side="long", quantity=D("0.5"),
                                            entry_price=D(100), opened_at=T0, bot_position_id=bot_id)
        await db.close_position(pos["id"], T0 + timedelta(hours=4), "flat")  # the detector, from the stream
        await db.write_batch([ops.ClosePosition(pos["id"], T0 + timedelta(hours=4, seconds=1), "aged_grace")])
        [episode] = await db.fetch("SELECT * FROM monitoring.episodes WHERE id=$1", pos["id"])
        assert episode["end_reason"] == "closed_by_service" and episode["closed_at"] == T0 + timedelta(hours=4)
        [bot] = await db.fetch("SELECT * FROM monitoring.positions WHERE id=$1", bot_id)
        assert bot["status"] == "closed" and bot["exit_reason"] == "aged_grace"
        # An episode that ended as a flip or a re-entry is not taken for ours.
        other = await db.upsert_open_position(exchange="bybit", symbol="ETH/USDT:USDT", side="long",
                                              quantity=D(1), entry_price=D(10), opened_at=T0)
        await db.close_position(other["id"], T0 + timedelta(hours=1), "reentry")
        await db.write_batch([ops.ClosePosition(other["id"], T0 + timedelta(hours=2), "aged_grace")])
        [kept] = await db.fetch("SELECT * FROM monitoring.episodes WHERE id=$1", other["id"])
        assert kept["end_reason"] == "reentry"
    finally:
        await db.execute("DROP TABLE IF EXISTS monitoring.positions")
        db._bot_columns = None


async def test_write_ahead_rows_and_in_flight_orders(db):
    _, aged = await make_aged(db)
    wal = ops.RecordCloseOrder(client_order_id="apm-abc-1", aged_id=aged["id"], attempt=1, exchange="bybit",
                               symbol="BTC/USDT:USDT", side="sell", order_type="market", requested_qty=D("0.5"))
    await db.record_close_order(wal)
    await db.record_close_order(wal)  # re-recording after a crash is harmless
    assert [o["client_order_id"] for o in await db.inflight_close_orders()] == ["apm-abc-1"]
    await db.write_batch([ops.UpdateCloseOrder("apm-abc-1", {"state": "filled", "filled_qty": D("0.5"),
                                                             "avg_price": D("100.3"), "exchange_order_id": "X1"})])
    assert await db.inflight_close_orders() == []
    [row] = await db.close_orders(aged["id"])
    assert row["state"] == "filled" and row["avg_price"] == D("100.3") and row["attempt"] == 1
    with pytest.raises(WriteRejected):  # never more filled than requested
        await db.write_batch([ops.UpdateCloseOrder("apm-abc-1", {"filled_qty": D("0.6")})])
    with pytest.raises(WriteRejected, match="UniqueViolation"):  # one order per attempt number
        await db.record_close_order(ops.RecordCloseOrder(
            client_order_id="apm-other-1", aged_id=aged["id"], attempt=1, exchange="bybit",
            symbol="BTC/USDT:USDT", side="sell", order_type="market", requested_qty=D("0.5")))


async def test_write_batch_is_atomic_and_ordered(db):
    _, aged = await make_aged(db)
    batch = [
        ops.AddEvent(aged["id"], "price_check", market_price=D("99"), target_price=D("100.2")),
        ops.UpdateAged(aged["id"], Persist(sampled_price=D("99"))),
        ops.AddEvent(aged["id"], "close_triggered", metadata={"bid": "100.3"}),
        ops.UpdateAged(aged["id"], Persist(status="no-such-status")),
    ]
    with pytest.raises(WriteRejected):
        await db.write_batch(batch)
    assert await db.events(aged["id"]) == []  # nothing from the failed batch
    await db.write_batch(batch[:3])
    evs = await db.events(aged["id"])
    assert [e["event_type"] for e in evs] == ["price_check", "close_triggered"]
    assert evs[1]["event_metadata"] == {"bid": "100.3"}


async def test_statistics_on_seeded_data(db):
    now = datetime.now(timezone.utc)
    rows = []
    for i, (reason, pnl, age_h, attempts, latency) in enumerate([
        ("profitable", D("1.0"), 6, 1, 2), ("breakeven", D("0.0"), 8, 1, 4),
        ("loss_acceptable", D("-2.0"), 16, 2, 6), ("max_loss", D("-10"), 40, 3, 8),
        ("manual", None, 20, 0, None),
    ]):
        opened = now - timedelta(hours=age_h + 1)
        _, aged = await make_aged(db, symbol=f"S{i}/USDT:USDT", opened_at=opened)
        closed = opened + timedelta(hours=age_h)
        await db.update_aged_position(
            aged["id"], status="closed", close_reason=reason, closed_at=closed, pnl_percent=pnl,
            close_attempts=attempts,
            close_triggered_at=None if latency is None else closed - timedelta(seconds=latency))
        for attempt in range(1, attempts + 1):
            await db.record_close_order(ops.RecordCloseOrder(
                client_order_id=f"c{i}-{attempt}", aged_id=aged["id"], attempt=attempt, exchange="bybit",
                symbol="X", side="sell", order_type="market", requested_qty=D(1)))
        rows.append(aged)
    _, err = await make_aged(db, symbol="ERR/USDT:USDT", opened_at=now - timedelta(hours=30))
    await db.update_aged_position(err["id"], status="error", last_error="rejected")
    await make_aged(db, symbol="LIVE/USDT:USDT", opened_at=now - timedelta(hours=5))

    stats = await db.statistics(days=7, now=now)
    assert stats["current"]["by_status"] == {"error": 1, "grace_active": 1}
    assert stats["current"]["monitored"] == 2
    h = stats["historical"]
    assert h["total_processed"] == 7 and h["closed"] == 5 and h["errors"] == 1
    assert h["avg_pnl_percent"] == D("-2.75")  # manual closes excluded
    assert h["by_close_reason"]["max_loss"]["count"] == 1
    assert round(h["avg_age_hours_at_close"], 6) == 18  # (6+8+16+40+20)/5
    p = stats["performance"]
    assert p["success_rate"] == D(4) / D(5)  # 4 closed by the service, 1 in error
    assert p["avg_close_attempts"] == D("1.75")
    assert p["close_orders"] == 7 and p["retried_orders"] == 3
    assert round(p["avg_close_seconds"], 6) == 5
    # the window excludes older detections
    assert (await db.statistics(days=7, now=now + timedelta(days=30)))["historical"]["total_processed"] == 0


async def test_active_view_keeps_errors_under_watch(db):
    _, a = await make_aged(db, symbol="A/USDT:USDT")
    _, b = await make_aged(db, symbol="B/USDT:USDT")
    _, c = await make_aged(db, symbol="C/USDT:USDT")
    await db.update_aged_position(b["id"], status="error")
    await db.update_aged_position(c["id"], status="closed", close_reason="manual", closed_at=T0)
    view = {r["id"] for r in await db.fetch("SELECT id FROM monitoring.active_aged_positions")}
    assert view == {a["id"], b["id"]}
    assert {r["id"] for r in await db.active_aged_positions()} == view


async def test_embedded_server_starts_migrates_and_is_reused(aio_loop, embedded_dir, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    tmp_path = embedded_dir
    async with storage.open_database(data_dir=tmp_path / "pg") as db:
        assert await db.fetchval("SELECT count(*) FROM monitoring.schema_migrations") == len(available_migrations())
        pos = await db.upsert_open_position(exchange="bybit", symbol="BTC/USDT:USDT", side="long", quantity=D(1),
                                            entry_price=D(1), opened_at=T0)
    # stopped on exit; a second run reuses the same data directory and finds the row
    async with storage.open_database(data_dir=tmp_path / "pg") as db:
        assert [p["id"] for p in await db.open_positions()] == [pos["id"]]
        assert await db.migrate() == []
    assert not EmbeddedPostgres(tmp_path / "pg").is_running()


def test_embedded_server_refuses_a_socket_path_that_is_too_long(tmp_path):
    deep = tmp_path / ("x" * 120)
    with pytest.raises(storage.EmbeddedPostgresError, match="DATABASE_URL"):
        EmbeddedPostgres(deep).start()


# --- beside the trading bot; upgrading a book from before episodes ------------------------



async def _fresh_database(database_url, name):
    import asyncpg as apg
    admin = await trio_asyncio.aio_as_trio(apg.connect)(database_url)
    await trio_asyncio.aio_as_trio(admin.execute)(f'DROP DATABASE IF EXISTS "{name}"')
    await trio_asyncio.aio_as_trio(admin.execute)(f'CREATE DATABASE "{name}"')
    await trio_asyncio.aio_as_trio(admin.close)()
    return with_database(database_url, name)


async def _drop_database(database_url, name):
    import asyncpg as apg
    admin = await trio_asyncio.aio_as_trio(apg.connect)(database_url)
    await trio_asyncio.aio_as_trio(admin.execute)(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await trio_asyncio.aio_as_trio(admin.close)()


async def test_migrations_leave_the_trading_bots_table_alone(aio_loop, database_url):
    name = f"apm_bot_book_test_{secrets.token_hex(4)}"  # two test runs may share the server
    url = await _fresh_database(database_url, name)
    try:
        database = await Database.connect(url)
        try:
            await database.execute("CREATE SCHEMA monitoring")
            await database.execute(BOT_TABLE)
            await database.execute("INSERT INTO monitoring.positions (symbol, exchange, side, quantity, entry_price, "
                                   "opened_at) VALUES ('BTCUSDT', 'binance', 'long', 1, 100, $1)", T0)
            before = await database.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema='monitoring' AND table_name='positions' ORDER BY ordinal_position")
            assert await database.migrate() == [m.version for m in available_migrations()]
            after = await database.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema='monitoring' AND table_name='positions' ORDER BY ordinal_position")
            assert before == after
            [bot] = await database.bot_positions()
            assert bot["symbol"] == "BTCUSDT" and bot["opened_at"] == T0
            assert await database.open_positions() == []  # our own book is separate
        finally:
            await database.close()
    finally:
        await _drop_database(database_url, name)


async def test_a_book_from_before_episodes_is_renamed_and_kept(aio_loop, database_url):
    """A database whose migration 001 created the service's book as monitoring.positions."""
    from pathlib import Path
    legacy = (Path(__file__).parent / "fixtures" / "legacy_001_schema.sql").read_text(encoding="utf-8")
    name = f"apm_legacy_book_test_{secrets.token_hex(4)}"
    url = await _fresh_database(database_url, name)
    try:
        database = await Database.connect(url)
        try:
            await database.execute("CREATE SCHEMA monitoring; CREATE TABLE monitoring.schema_migrations ("
                                   "version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, "
                                   "applied_at timestamptz NOT NULL DEFAULT now())")
            await database.execute(legacy)
            import hashlib
            await database.execute("INSERT INTO monitoring.schema_migrations (version, name, checksum) "
                                   "VALUES (1, 'schema', $1)", hashlib.sha256(legacy.encode()).hexdigest())
            pos_id = await database.fetchval(
                "INSERT INTO monitoring.positions (exchange, symbol, side, quantity, entry_price, opened_at, source) "
                "VALUES ('bybit', 'BTC/USDT:USDT', 'long', 1, 100, $1, 'exchange') RETURNING id", T0)
            await database.execute(
                "INSERT INTO monitoring.aged_positions (position_id, symbol, exchange, side, entry_price, quantity, "
                "position_opened_at, status) VALUES ($1, 'BTC/USDT:USDT', 'bybit', 'long', 100, 1, $2, 'grace_active')",
                pos_id, T0)
            assert await database.migrate() == [m.version for m in available_migrations() if m.version > 1]
            [book] = await database.open_positions()
            assert book["id"] == pos_id and book["opened_at_source"] == "legacy"
            assert (await database.aged_position_for(pos_id))["status"] == "grace_active"
            tables = {r["table_name"] for r in await database.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema='monitoring'")}
            assert "positions" not in tables  # the name is free for the trading bot
            # a new episode after the upgrade gets the next id
            new = await database.upsert_open_position(exchange="bybit", symbol="ETH/USDT:USDT", side="long",
                                                      quantity=D(1), entry_price=D(1), opened_at=T0)
            assert new["id"] == pos_id + 1
        finally:
            await database.close()
    finally:
        await _drop_database(database_url, name)


async def test_a_database_that_cannot_be_reached_is_storage_unavailable(db, database_url):
    bad = await Database.connect(database_url, min_size=0, max_size=1)
    await bad.close()
    with pytest.raises(StorageUnavailable):
        await bad.open_positions()


def test_every_persist_field_has_a_column_the_repository_may_update():
    assert set(AGED_COLUMN.values()) <= AGED_UPDATABLE
    assert len(set(AGED_COLUMN.values())) == len(AGED_COLUMN)  # no two fields share a column


async def test_what_an_actor_persists_is_what_it_loads_again(db):
    _, aged = await make_aged(db)
    await db.update_aged_position(aged["id"], status="progressive_active", sampled_price=D("99.4"),
                                  sampled_at=T0 + timedelta(hours=12), close_attempts=2, closed_qty=D("0.1"),
                                  quantity=D("0.4"), last_error="rejected")
    state = await db.load_position(aged["id"], PolicyConfig(), Settings())
    assert state.status is Status.PROGRESSIVE_ACTIVE and state.last_price == D("99.4")
    assert state.last_sample_at == T0 + timedelta(hours=12) and state.close_attempts == 2
    assert state.quantity == D("0.4") and state.closed_qty == D("0.1") and not state.needs_reconcile
    row = await db.aged_position(aged["id"])
    assert row["last_checked_price"] == D("99.4") and row["last_error_message"] == "rejected"

    await db.record_close_order(ops.RecordCloseOrder(
        client_order_id="apm-x-3", aged_id=aged["id"], attempt=3, exchange="bybit", symbol="BTC/USDT:USDT",
        side="sell", order_type="market", requested_qty=D("0.4")))
    assert (await db.load_position(aged["id"], PolicyConfig(), Settings())).needs_reconcile  # pending: in flight
    open_ids, states = await db.load_for_recovery(PolicyConfig(), Settings())
    assert open_ids == {aged["id"]} and [s.needs_reconcile for s in states] == [True]
    await db.write_batch([ops.UpdateCloseOrder("apm-x-3", {"state": OrderState.FILLED, "filled_qty": D("0.4")})])
    assert not (await db.load_position(aged["id"], PolicyConfig(), Settings())).needs_reconcile
    assert await db.load_for_recovery(PolicyConfig(), Settings(), skip={aged["id"]}) == ({aged["id"]}, [])
