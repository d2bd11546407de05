"""Operator actions in a real PostgreSQL: stored with who/when/why, checked against the
database first, and what must hold without a service (a hold, an override) written in
the same transaction.

Rules: real database (see conftest), real clock, nothing mocked.
"""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from actors.operator import BadAction, ClearOverride, ForceClose, Hold, Override, Release
from actors.policy import PolicyConfig
from tests.test_storage import make_aged

NOW = datetime(2026, 3, 1, 18, 0, tzinfo=UTC)


async def _counts(db):
    return (await db.fetchval("SELECT count(*) FROM monitoring.operator_actions"),
            await db.fetchval("SELECT count(*) FROM monitoring.symbol_overrides"))


async def test_a_hold_is_stored_with_its_action_row_and_a_release_clears_it(db):
    _, aged = await make_aged(db)
    row = await db.record_action(Hold(aged["id"], NOW + timedelta(hours=4), "waiting for funding"), "cli:alice")
    assert (row["action"], row["actor"], row["reason"]) == ("hold", "cli:alice", "waiting for funding")
    assert (row["exchange"], row["symbol"], row["aged_position_id"]) == ("bybit", "BTC/USDT:USDT", aged["id"])
    assert row["applied_at"] is None and row["created_at"] is not None
    assert datetime.fromisoformat(row["params"]["until"]) == NOW + timedelta(hours=4)
    held = await db.aged_position(aged["id"])
    assert (held["hold_until"], held["hold_reason"]) == (NOW + timedelta(hours=4), "waiting for funding")

    await db.record_action(Release(aged["id"]), "api")
    released = await db.aged_position(aged["id"])
    assert (released["hold_until"], released["hold_reason"]) == (None, None)
    assert [a["action"] for a in await db.actions(aged["id"])] == ["release", "hold"]


async def test_unknown_or_closed_positions_are_refused_and_nothing_is_stored(db):
    missing = uuid.uuid4()
    with pytest.raises(BadAction, match=f"no aged position {missing}"):
        await db.record_action(Hold(missing, NOW, "x"), "api")
    _, aged = await make_aged(db)
    await db.update_aged_position(aged["id"], status="closed", close_reason="breakeven", closed_at=NOW)
    for action in (Hold(aged["id"], NOW + timedelta(hours=1), "x"), ForceClose(aged["id"]), Release(aged["id"])):
        with pytest.raises(BadAction, match=f"{aged['id']} is closed"):
            await db.record_action(action, "api")
    assert await _counts(db) == (0, 0)
    assert (await db.aged_position(aged["id"]))["hold_until"] is None


async def test_malformed_actions_are_refused_before_the_database(db):
    _, aged = await make_aged(db)
    bad = [
        (Hold(aged["id"], NOW, ""), "reason"),
        (Hold(aged["id"], NOW.replace(tzinfo=None), "x"), "timezone"),
        (Override("bybit", "BTC/USDT:USDT", {"max_loss_percent": "100"}), "max_loss_percent"),
        (Override("bybit", "BTC/USDT:USDT", {"max_age_hours": "5"}), "max_age_hours"),
        (Override("bybit", "", {"max_loss_percent": "12"}), "symbol"),
    ]
    for action, field in bad:
        with pytest.raises(BadAction, match=field):
            await db.record_action(action, "api")
    with pytest.raises(BadAction, match="actor"):
        await db.record_action(ForceClose(aged["id"]), " ")
    assert await _counts(db) == (0, 0)


async def test_overrides_are_upserted_cleared_and_read_back_as_decimals(db):
    await db.record_action(Override("bybit", "BTC/USDT:USDT", {"max_loss_percent": "12.5"}, "volatile"), "cli:bob")
    await db.record_action(Override("bybit", "BTC/USDT:USDT", {"max_loss_percent": 15, "grace_period_hours": "2"}),
                           "api")
    assert await db.symbol_overrides() == {
        ("bybit", "BTC/USDT:USDT"): {"max_loss_percent": D(15), "grace_period_hours": D(2)}}
    rows = await db.override_rows()
    assert (rows[0]["actor"], rows[0]["reason"]) == ("api", None)
    await db.record_action(ClearOverride("bybit", "BTC/USDT:USDT", "calmer now"), "api")
    assert await db.symbol_overrides() == {}
    with pytest.raises(BadAction, match="no override of BTC/USDT:USDT on bybit"):
        await db.record_action(ClearOverride("bybit", "BTC/USDT:USDT"), "api")
    history = await db.actions()
    assert [a["action"] for a in history] == ["clear_override", "override", "override"]
    assert history[1]["params"] == {"settings": {"max_loss_percent": "15", "grace_period_hours": "2"}}


async def test_an_override_is_checked_against_the_configured_policy(db):
    # loss_step 15 needs max_loss >= 15: refused with the defaults (10), accepted with a base of 20
    with pytest.raises(BadAction, match="max_loss_percent"):
        await db.record_action(Override("bybit", "ETH/USDT:USDT", {"loss_step_percent": "15"}), "api")
    await db.record_action(Override("bybit", "ETH/USDT:USDT", {"loss_step_percent": "15"}), "api",
                           base=PolicyConfig(max_loss_percent=D(20)))
    assert await db.symbol_overrides() == {("bybit", "ETH/USDT:USDT"): {"loss_step_percent": D(15)}}


async def test_pending_actions_are_marked_applied_once(db):
    _, aged = await make_aged(db)
    first = await db.record_action(ForceClose(aged["id"], "manual exit"), "api")
    second = await db.record_action(Release(aged["id"]), "api")
    assert [a["id"] for a in await db.pending_actions()] == [first["id"], second["id"]]
    await db.mark_applied(first["id"], "closed")
    await db.mark_applied(first["id"], "already closing")  # the first outcome stays
    assert [a["id"] for a in await db.pending_actions()] == [second["id"]]
    await db.mark_applied(second["id"], "not active", error="no actor")
    assert await db.pending_actions() == []
    stored = {a["id"]: a for a in await db.actions(aged["id"])}
    assert (stored[first["id"]]["outcome"], stored[first["id"]]["error"]) == ("closed", None)
    assert (stored[second["id"]]["outcome"], stored[second["id"]]["error"]) == ("not active", "no actor")
    assert all(a["applied_at"] is not None for a in stored.values())


async def test_a_new_action_notifies_the_aged_operator_channel(db, database_url):
    import asyncpg
    import trio
    import trio_asyncio

    heard = []
    conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(database_url)
    try:
        await trio_asyncio.aio_as_trio(conn.add_listener)("aged_operator", lambda *args: heard.append(args[3]))
        _, aged = await make_aged(db)
        row = await db.record_action(ForceClose(aged["id"]), "api")
        with trio.fail_after(30):
            while not heard:
                await trio.sleep(0.01)
        assert heard == [str(row["id"])]
    finally:
        await trio_asyncio.aio_as_trio(conn.close)()


async def test_status_shows_each_positions_id_and_a_hold_in_force(db):
    from service.reports import status_table

    _, held = await make_aged(db)
    _, free = await make_aged(db, symbol="ETH/USDT:USDT")
    await db.record_action(Hold(held["id"], NOW + timedelta(hours=2), "funding"), "api")
    lines = {line.split()[0]: line for line in (await status_table(db, NOW, PolicyConfig())).splitlines()[2:]}
    assert "2026-03-01 20:00:00 (funding)" in lines[str(held["id"])]
    assert "funding" not in lines[str(free["id"])] and lines[str(free["id"])].rstrip().endswith("-")
    later = await status_table(db, NOW + timedelta(hours=3), PolicyConfig())  # the hold has ended
    assert "funding" not in later
