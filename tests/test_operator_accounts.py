"""Operator actions with several accounts (real PostgreSQL): each account's service
takes the actions on its own aged positions, and every one of them takes each symbol
override, even after another account's service marked it applied."""

from __future__ import annotations

from datetime import timedelta

from actors.operator import ForceClose, Hold, Override
from tests.test_accounts_storage import T0, open_aged


async def test_each_account_takes_its_own_actions_and_every_override(db):
    main, sub = db.for_account("main"), db.for_account("sub")
    _, aged_m = await open_aged(main)
    _, aged_s = await open_aged(sub, side="short", entry="200")
    hold = await db.record_action(Hold(aged_m["id"], T0 + timedelta(hours=4), "news"), "cli:alice")
    close = await db.record_action(ForceClose(aged_s["id"]), "api")
    before = await main.last_override_action()
    override = await db.record_action(Override("bybit", "BTC/USDT:USDT", {"max_loss_percent": "12"}), "api")

    assert [r["id"] for r in await main.pending_actions(overrides_after=before)] == [hold["id"], override["id"]]
    assert [r["id"] for r in await sub.pending_actions(overrides_after=before)] == [close["id"], override["id"]]
    # main's service applies the override first; sub's still takes it in, by id
    await main.mark_applied(override["id"], "applied to 1 position")
    assert [r["id"] for r in await sub.pending_actions(overrides_after=before)] == [close["id"], override["id"]]
    # once taken in, an override is not handed over again; applied actions are gone
    await sub.mark_applied(close["id"], "close sent")
    assert await sub.pending_actions(overrides_after=override["id"]) == []
    assert [r["id"] for r in await main.pending_actions(overrides_after=override["id"])] == [hold["id"]]
    # the unscoped database (one service for everything) sees what no one applied yet
    assert [r["id"] for r in await db.pending_actions()] == [hold["id"]]
    assert await main.last_override_action() == override["id"] == await db.last_override_action()
