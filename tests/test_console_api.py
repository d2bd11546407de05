"""The console's HTTP API against the real test database, served by hypercorn on loopback.

Rules as in test_http: a real server on port 0, the real clock, a plain HTTP/1.1 client
on a raw trio socket (not the code under test), the real PostgreSQL. Every refused
request is checked twice: its answer (status and a message naming what was wrong) and
the database, which must be exactly as before.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from types import SimpleNamespace
from uuid import uuid4

import pytest
import trio

from actors.clock import PolicyClock
from actors.operator import Override
from service.app import build_service
from service.config import DEFAULTS, ConfigError, ConsoleConfig, MetricsConfig, parse_config
from service.http import http_endpoint
from storage import ops as op
from supervisor import Supervisor
from tests.http_client import request

TOKEN_ENV = "APM_TEST_CONSOLE_TOKEN"
TOKEN = "test-token-for-the-console-api"  # a test value, not a secret
CONFIG = replace(DEFAULTS, console=ConsoleConfig(token_env=TOKEN_ENV))


async def call(port, method, path, body=None, token: str | None = TOKEN, raw=None):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    status, hdrs, payload = await request(port, method, path, body, headers, raw)
    assert hdrs["content-type"] == "application/json", (status, payload)
    return status, json.loads(payload)


NOW = datetime.now(UTC).replace(microsecond=0)  # the service's clock stands still here


async def seed(db, now: datetime = NOW) -> dict[str, dict]:
    """A position in grace, one in progressive with sampled prices, and a closed one."""
    out = {}
    for name, age, status in [("grace", 5, "grace_active"), ("progressive", 14, "progressive_active"),
                              ("closed", 12, "progressive_active")]:
        opened = now - timedelta(hours=age)
        pos = await db.upsert_open_position(exchange="bybit", symbol=f"{name.upper()}/USDT:USDT", side="long",
                                            quantity=D("0.5"), entry_price=D("100"), opened_at=opened)
        aged, _ = await db.create_aged_position(
            pos, detected_at=opened + timedelta(hours=3), status=status, target_price=D("100.2"),
            breakeven_price=D("100.2"), loss_tolerance_percent=D(0), hours_aged=D(age - 3), config={})
        out[name] = aged
    prog = out["progressive"]["id"]
    await db.write_batch([
        op.AddEvent(prog, "price_check", market_price=D(97 + i), target_price=D("98.5") - D(i) / 10,
                    price_distance_percent=D(1) - i, at=now - timedelta(minutes=30 - i)) for i in range(3)
    ] + [op.AddEvent(prog, "aged.phase.changed", at=now)])
    await db.update_aged_position(prog, sampled_price=D(99), sampled_at=now - timedelta(minutes=28))
    closed_at = now - timedelta(minutes=5)
    await db.update_aged_position(out["closed"]["id"], status="closed", close_reason="loss_acceptable",
                                  closed_at=closed_at, close_triggered_at=closed_at - timedelta(seconds=2),
                                  pnl_percent=D("-1.2"), pnl=D("-0.6"), close_attempts=1)
    return out


async def snapshot(db) -> tuple:
    """Everything an action may change."""
    return (await db.fetch("SELECT * FROM monitoring.operator_actions ORDER BY id"),
            await db.fetch("SELECT * FROM monitoring.symbol_overrides ORDER BY exchange, symbol"),
            await db.fetch("SELECT * FROM monitoring.aged_positions ORDER BY id"))


def target(db, config=CONFIG):
    return SimpleNamespace(root=Supervisor("root"), db=db, config=config, clock=SimpleNamespace(now=lambda: NOW),
                           feeds={})


async def serve(nursery, db, config=CONFIG) -> int:
    return await nursery.start(http_endpoint(target(db, config), None, port=0).run)


async def test_reads_positions_one_position_closed_and_the_page(db):
    seeded = await seed(db)
    async with trio.open_nursery() as n:
        port = await serve(n, db)
        status, positions = await call(port, "GET", "/api/positions", token=None)
        status_one, one = await call(port, "GET", f"/api/positions/{seeded['progressive']['id']}", token=None)
        status_closed, closed = await call(port, "GET", "/api/closed?limit=5", token=None)
        status_old, old = await call(port, "GET", f"/api/positions/{seeded['closed']['id']}", token=None)
        page_status, page_headers, page = await request(port, "GET", "/")
        js_status, _, js = await request(port, "GET", "/console/console.js")
        bad_limit, limit_error = await call(port, "GET", "/api/closed?limit=0", token=None)
        missing_file, _ = await call(port, "GET", "/console/secrets.txt", token=None)
        n.cancel_scope.cancel()
    assert status == 200 and [p["symbol"] for p in positions] == ["PROGRESSIVE/USDT:USDT", "GRACE/USDT:USDT"]
    for p in positions:
        assert {"id", "exchange", "symbol", "side", "status", "phase", "target_price", "hold_until"} <= set(p)
    prog, grace = positions
    assert (grace["phase"], D(grace["target_price"]), grace["hold_until"]) == ("grace", D("100.2"), None)
    assert D(grace["next_target_price"]) == 100 and grace["status"] == "grace_active"
    # 14 h old: 3 h into progressive, 1.5 % allowed, the next step at 4 h (2 %)
    assert prog["phase"] == "progressive" and D(prog["target_price"]) == D("98.5")
    assert D(prog["next_target_price"]) == 98
    assert (D(prog["price"]), prog["price_source"]) == (D(99), "sampled")  # no feed: the last price check
    assert D(prog["distance_percent"]) < 0  # 99 is above a long's target: reached
    assert status_one == 200 and [D(p["price"]) for p in one["prices"]] == [97, 98, 99]
    assert [p["at"] for p in one["prices"]] == sorted(p["at"] for p in one["prices"])
    assert one["transitions"][0]["to_status"] == "progressive_active" and one["actions"] == []
    assert status_closed == 200 and len(closed) == 1
    assert closed[0]["close_reason"] == "loss_acceptable" and D(closed[0]["actual_pnl"]) == D("-0.6")
    assert status_old == 200 and old["status"] == "closed" and old["prices"] == []
    assert page_status == 200 and page_headers["content-type"].startswith("text/html")
    assert b'<table id="positions">' in page and b'src="/console/console.js"' in page
    assert js_status == 200 and b"/api/positions" in js
    assert bad_limit == 400 and "limit" in limit_error["error"] and missing_file == 404


@pytest.mark.parametrize(("config", "env", "token", "expected", "words"), [
    (DEFAULTS, None, TOKEN, 403, "token_env"),  # no token configured: read only
    (CONFIG, None, TOKEN, 403, TOKEN_ENV),  # configured, but the variable is not set
    (CONFIG, TOKEN, None, 401, "Authorization: Bearer"),
    (CONFIG, TOKEN, "not-the-token", 401, "not the console's token"),
])
async def test_actions_need_the_configured_token(db, monkeypatch, config, env, token, expected, words):
    seeded = await seed(db)
    if env is None:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(TOKEN_ENV, env)
    before = await snapshot(db)
    async with trio.open_nursery() as n:
        port = await serve(n, db, config)
        status, answer = await call(port, "POST", f"/api/positions/{seeded['grace']['id']}/hold",
                                    {"hours": 2, "reason": "news"}, token=token)
        read_status, _ = await call(port, "GET", "/api/positions", token=None)
        n.cancel_scope.cancel()
    assert (status, read_status) == (expected, 200) and words in answer["error"]
    assert await snapshot(db) == before


async def test_every_action_without_the_token_is_refused(db, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    seeded = await seed(db)
    grace = seeded["grace"]["id"]
    await db.record_action(Override("bybit", "GRACE/USDT:USDT", {"max_loss_percent": D(5)}), "test")
    before = await snapshot(db)
    requests = [("POST", f"/api/positions/{grace}/hold", {"hours": 2, "reason": "x"}),
                ("POST", f"/api/positions/{grace}/release", {}), ("POST", f"/api/positions/{grace}/close", {}),
                ("POST", "/api/overrides", {"exchange": "bybit", "symbol": "GRACE/USDT:USDT",
                                            "settings": {"max_loss_percent": 6}}),
                ("DELETE", "/api/overrides/bybit/GRACE/USDT:USDT", None)]
    async with trio.open_nursery() as n:
        port = await serve(n, db)
        answers = [await call(port, method, path, body, token=None) for method, path, body in requests]
        n.cancel_scope.cancel()
    assert [status for status, _ in answers] == [401] * len(requests)
    assert await snapshot(db) == before


async def test_hold_release_close_and_overrides_with_the_token(db, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    seeded = await seed(db)
    grace, prog = seeded["grace"]["id"], seeded["progressive"]["id"]
    async with trio.open_nursery() as n:
        port = await serve(n, db)
        held = await call(port, "POST", f"/api/positions/{grace}/hold", {"hours": "2.5", "reason": "earnings"})
        _, positions = await call(port, "GET", "/api/positions", token=None)
        shown = {p["id"]: p for p in positions}[str(grace)]
        row = await db.aged_position(grace)
        released = await call(port, "POST", f"/api/positions/{grace}/release", {})
        row_after_release = await db.aged_position(grace)
        closing = await call(port, "POST", f"/api/positions/{prog}/close", {"reason": "enough"})
        override = await call(port, "POST", "/api/overrides", {
            "exchange": "bybit", "symbol": "GRACE/USDT:USDT", "settings": {"grace_period_hours": "1"},
            "reason": "thin book"})
        _, overrides = await call(port, "GET", "/api/overrides", token=None)
        _, positions = await call(port, "GET", "/api/positions", token=None)
        overridden = {p["id"]: p for p in positions}[str(grace)]
        cleared = await call(port, "DELETE", "/api/overrides/bybit/GRACE/USDT:USDT?reason=done")
        _, history = await call(port, "GET", "/api/actions", token=None)
        _, detail = await call(port, "GET", f"/api/positions/{grace}", token=None)
        n.cancel_scope.cancel()
    assert held[0] == 200 and held[1]["action"]["action"] == "hold" and held[1]["action"]["actor"] == "api:127.0.0.1"
    hold_hours = (row["hold_until"] - datetime.fromisoformat(held[1]["action"]["created_at"])).total_seconds() / 3600
    assert row["hold_reason"] == "earnings" and abs(hold_hours - 2.5) < 0.1
    assert shown["held"] is True and shown["hold_reason"] == "earnings" and shown["hold_until"] is not None
    assert released[0] == 200 and row_after_release["hold_until"] is None
    assert closing[0] == 202 and (closing[1]["action"]["action"], closing[1]["action"]["reason"]) == ("close", "enough")
    assert override[0] == 200 and overrides[0]["symbol"] == "GRACE/USDT:USDT"
    assert D(overrides[0]["settings"]["grace_period_hours"]) == 1
    # 5 h old, 3 h to age, 1 h of grace: progressive under the override (grace without it)
    assert overridden["phase"] == "progressive" and overridden["override"] == {"grace_period_hours": "1"}
    assert cleared[0] == 200 and cleared[1]["action"]["action"] == "clear_override"
    assert [a["action"] for a in history] == ["clear_override", "override", "close", "release", "hold"]
    assert [a["action"] for a in detail["actions"]] == ["release", "hold"]
    assert await db.symbol_overrides() == {}


async def test_bad_input_is_one_clear_error_and_changes_nothing(db, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    seeded = await seed(db)
    grace, closed, prog = seeded["grace"]["id"], seeded["closed"]["id"], seeded["progressive"]["id"]
    await db.update_aged_position(prog, close_triggered_at=datetime.now(UTC))  # its close is under way
    unknown = uuid4()
    cases = [
        ("POST", f"/api/positions/{grace}/hold", {"hours": 0, "reason": "x"}, 400, "hours"),
        ("POST", f"/api/positions/{grace}/hold", {"hours": "abc", "reason": "x"}, 400, "hours"),
        ("POST", f"/api/positions/{grace}/hold", {"hours": 721, "reason": "x"}, 400, "720"),
        ("POST", f"/api/positions/{grace}/hold", {"hours": True, "reason": "x"}, 400, "hours"),
        ("POST", f"/api/positions/{grace}/hold", {"reason": "x"}, 400, "hours: is required"),
        ("POST", f"/api/positions/{grace}/hold", {"hours": 2}, 400, "reason"),
        ("POST", f"/api/positions/{grace}/hold", [1, 2], 400, "JSON object"),
        ("POST", f"/api/positions/{unknown}/hold", {"hours": 2, "reason": "x"}, 404, str(unknown)),
        ("POST", "/api/positions/not-a-uuid/close", {}, 404, "not-a-uuid"),
        ("POST", f"/api/positions/{unknown}/close", {}, 404, str(unknown)),
        ("POST", f"/api/positions/{closed}/hold", {"hours": 2, "reason": "x"}, 409, "closed"),
        ("POST", f"/api/positions/{closed}/close", {}, 409, "closed"),
        ("POST", f"/api/positions/{closed}/release", {}, 409, "closed"),
        ("POST", f"/api/positions/{prog}/close", {}, 409, "already closing"),
        ("POST", "/api/overrides", {"exchange": "bybit", "symbol": "GRACE/USDT:USDT",
                                    "settings": {"max_loss_percent": 150}}, 400, "max_loss_percent"),
        ("POST", "/api/overrides", {"exchange": "bybit", "symbol": "GRACE/USDT:USDT",
                                    "settings": {"max_age_hours": 1}}, 400, "max_age_hours"),
        ("POST", "/api/overrides", {"exchange": "bybit", "symbol": "GRACE/USDT:USDT", "settings": {}}, 400,
         "settings"),
        ("POST", "/api/overrides", {"exchange": "bybit", "symbol": "GRACE/USDT:USDT", "settings": "wide"}, 400,
         "settings"),
        ("POST", "/api/overrides", {"symbol": "GRACE/USDT:USDT", "settings": {"max_loss_percent": 5}}, 400,
         "exchange"),
        ("DELETE", "/api/overrides/bybit/GRACE/USDT:USDT", None, 404, "no override"),
    ]
    before = await snapshot(db)
    answers = []
    async with trio.open_nursery() as n:
        port = await serve(n, db)
        for method, path, body, _, _ in cases:
            answers.append(await call(port, method, path, body))
        answers.append(await call(port, "POST", f"/api/positions/{grace}/hold", raw=b"{not json"))
        n.cancel_scope.cancel()
    cases.append(("POST", "hold", "raw", 400, "JSON object"))
    for (method, path, body, status, words), (got, answer) in zip(cases, answers, strict=True):
        assert got == status and words in answer["error"], (method, path, body, got, answer)
    assert await snapshot(db) == before


def test_the_endpoint_address_and_the_token_variable_come_from_the_configuration():
    base = {"exchanges": [{"name": "bybit"}]}
    assert parse_config(base).metrics == MetricsConfig(port=9108, host="127.0.0.1")
    assert parse_config(base).console.token_env is None
    cfg = parse_config({**base, "metrics": {"host": "::1"}, "console": {"token_env": "APM_CONSOLE_TOKEN"}})
    assert (cfg.metrics.host, cfg.console.token_env) == ("::1", "APM_CONSOLE_TOKEN")
    with pytest.raises(ConfigError, match=r"metrics\.host.*IP address"):
        parse_config({**base, "metrics": {"host": "example.com"}})
    with pytest.raises(ConfigError, match=r"console\.token_env"):
        parse_config({**base, "console": {"token_env": "the token itself!"}})


async def test_the_service_serves_the_console_on_its_configured_host(db):
    _, obs = build_service(db, {}, {}, CONFIG, PolicyClock(), http_port=0)
    assert obs.endpoint is not None and obs.endpoint.host == "127.0.0.1"
    other = replace(CONFIG, metrics=MetricsConfig(host="127.0.0.2"))
    _, obs2 = build_service(db, {}, {}, other, PolicyClock(), http_port=0)
    assert obs2.endpoint is not None and obs2.endpoint.host == "127.0.0.2"
