"""The HTTP endpoint: /health, /stats, /metrics served by hypercorn on trio.

Rules: a real server on loopback, port 0, the real clock, and a plain HTTP/1.1 client
on a raw trio socket (not the code under test). Supervisors are real
:class:`supervisor.Supervisor` objects; /stats reads the real test database.
Nothing asserts how long anything took.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from types import SimpleNamespace

import trio
from prometheus_client.parser import text_string_to_metric_families

from doubles.exchange import MemoryExchange
from service.alerts import AlertRouter, LogSink
from actors.clock import PolicyClock
from service.app import build_service
from service.http import Observability, http_child, http_endpoint
from service.config import DEFAULTS
from service.runtime import Service
from service.metrics import Metrics
from storage.repository import Database
from supervisor import ChildSpec, Restart, Supervisor
from tests.support import DatabaseProxy, MemoryFeed, wait_until, within


async def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with within(60, f"GET {path} answered"):  # a safety net, not a timing assertion
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert int(hdrs["content-length"]) == len(body)
    return int(lines[0].split()[1]), hdrs, body


async def get_json(port: int, path: str) -> tuple[int, dict]:
    status, headers, body = await get(port, path)
    assert headers["content-type"] == "application/json"
    return status, json.loads(body)


def crash_when(event: trio.Event, message: str):
    async def child():
        await event.wait()
        raise RuntimeError(message)
    return child


async def wait_state(sup: Supervisor, child_id: str, state: str) -> None:
    await wait_until(lambda: sup.children()[child_id].state == state, f"{child_id} became {state}", interval=0.005)


async def test_health_is_200_then_503_once_a_critical_child_crashed_for_good():
    optional_go, critical_go = trio.Event(), trio.Event()
    positions = Supervisor("positions", backoff_initial=0)
    root = Supervisor("root", [
        ChildSpec("steady", trio.sleep_forever),
        ChildSpec("optional", crash_when(optional_go, "not important"), Restart.TEMPORARY, critical=False),
        ChildSpec("fragile", crash_when(critical_go, "boom"), Restart.TEMPORARY, critical=True),
        ChildSpec("positions", positions.run, kind="supervisor"),
    ])
    async with trio.open_nursery() as n:
        await n.start(root.run)
        endpoint = http_endpoint(SimpleNamespace(root=root, positions=positions), Metrics(), port=0)
        port = await n.start(endpoint.run)
        assert endpoint.port == port and endpoint.url == f"http://127.0.0.1:{port}"
        await positions.start_child(ChildSpec("position:1", trio.sleep_forever, Restart.TRANSIENT, kind="position"))

        status, body = await get_json(port, "/health")
        assert status == 200 and body["status"] == "ok" and body["problems"] == []
        assert body["supervisors"]["root"]["children"]["fragile"] == {
            "state": "running", "restarts": 0, "kind": "worker", "critical": True, "restart": "temporary",
            "last_error": None}
        assert body["supervisors"]["positions"]["children"]["position:1"]["state"] == "running"

        optional_go.set()  # a non-critical child down is reported, not unhealthy
        await wait_state(root, "optional", "crashed")
        status, body = await get_json(port, "/health")
        assert status == 200 and body["supervisors"]["root"]["children"]["optional"]["state"] == "crashed"

        critical_go.set()
        await wait_state(root, "fragile", "crashed")
        status, body = await get_json(port, "/health")
        assert status == 503 and body["status"] == "unhealthy"
        assert body["supervisors"]["root"]["healthy"] is False
        assert body["supervisors"]["root"]["children"]["fragile"]["last_error"] == "RuntimeError: boom"
        assert any("root/fragile crashed: RuntimeError: boom" in p for p in body["problems"])
        n.cancel_scope.cancel()


async def test_health_is_503_when_a_position_child_crashed_for_good_or_root_is_not_running():
    go = trio.Event()
    positions = Supervisor("positions")
    root = Supervisor("root", [ChildSpec("positions", positions.run, kind="supervisor")])
    target = SimpleNamespace(root=root, positions=positions)
    async with trio.open_nursery() as n:
        port = await n.start(http_endpoint(lambda: target, None, port=0).run)  # a late-bound service
        status, body = await get_json(port, "/health")
        assert status == 503 and body["problems"] == ["root supervisor is not running"]

        await n.start(root.run)
        await positions.start_child(ChildSpec("position:7", crash_when(go, "bad row"), Restart.TEMPORARY))
        assert (await get_json(port, "/health"))[0] == 200
        go.set()
        await wait_state(positions, "position:7", "crashed")
        status, body = await get_json(port, "/health")
        assert status == 503 and body["problems"] == ["positions/position:7 crashed: RuntimeError: bad row"]
        assert (await get(port, "/metrics"))[0] == 404  # no Metrics given
        n.cancel_scope.cancel()


async def test_http_child_runs_under_a_supervisor_and_serves_metrics():
    metrics = Metrics()
    metrics.detected.inc()
    root = Supervisor("root")
    endpoint = http_endpoint(SimpleNamespace(root=root), metrics, port=0)
    assert http_child(SimpleNamespace(root=root), metrics, port=0).kind == "http"
    async with trio.open_nursery() as n:
        await n.start(root.run)
        await root.start_child(endpoint.child())
        port = await endpoint.wait_bound()
        status, headers, body = await get(port, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert b"aged_positions_detected_total 1.0" in body
        status, headers, body = await get(port, "/metrics", {"Accept": "application/openmetrics-text"})
        assert headers["content-type"].startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
        assert root.children()["http"].state == "running"
        n.cancel_scope.cancel()


async def seed(db) -> None:
    now = datetime.now(timezone.utc)
    for i, (status, reason, pnl) in enumerate([("closed", "profitable", D("0.75")),
                                               ("closed", "loss_acceptable", D("-1.25")),
                                               ("grace_active", None, None)]):
        opened = now - timedelta(hours=10 + i)
        pos = await db.upsert_open_position(exchange="bybit", symbol=f"S{i}/USDT:USDT", side="long",
                                            quantity=D("0.5"), entry_price=D("100"), opened_at=opened)
        aged, _ = await db.create_aged_position(
            pos, detected_at=opened + timedelta(hours=3), status="grace_active", target_price=D("100.2"),
            breakeven_price=D("100.2"), loss_tolerance_percent=D(0), hours_aged=D(3), config={})
        if status == "closed":
            closed = opened + timedelta(hours=9)
            await db.update_aged_position(aged["id"], status="closed", close_reason=reason, closed_at=closed,
                                          close_triggered_at=closed - timedelta(seconds=2), pnl_percent=pnl,
                                          pnl=pnl * D("0.5"), close_attempts=1)


async def test_stats_returns_the_database_statistics_with_decimals_as_strings(db):
    await seed(db)
    async with trio.open_nursery() as n:
        port = await n.start(http_endpoint(SimpleNamespace(root=Supervisor("root"), db=db), None, port=0).run)
        status, body = await get_json(port, "/stats?days=7")
        bad_status, bad = await get_json(port, "/stats?days=abc")
        zero_status, _ = await get_json(port, "/stats?days=0")
        n.cancel_scope.cancel()
    assert status == 200 and body["window_days"] == 7
    assert body["current"]["by_status"] == {"grace_active": 1} and body["current"]["monitored"] == 1
    h = body["historical"]
    assert h["total_processed"] == 3 and h["closed"] == 2 and h["errors"] == 0
    assert D(h["avg_pnl_percent"]) == D("-0.25") and isinstance(h["avg_pnl_percent"], str)
    assert D(h["total_pnl"]) == D("-0.25")
    assert h["by_close_reason"]["profitable"]["count"] == 1
    assert D(h["by_close_reason"]["loss_acceptable"]["avg_pnl_percent"]) == D("-1.25")
    assert D(body["performance"]["success_rate"]) == 1
    assert D(body["performance"]["avg_close_seconds"]) == 2
    assert bad_status == 400 and "days" in bad["error"] and zero_status == 400


async def test_stats_is_503_when_the_database_is_away(aio_loop, database_url):
    async with trio.open_nursery() as n:
        proxy = await n.start(DatabaseProxy(database_url).run)
        # generous timeouts: the 503 must come from the cut, never from a slow query
        pdb = await Database.connect(proxy.url, max_size=1, command_timeout=30)
        endpoint = http_endpoint(SimpleNamespace(root=Supervisor("root"), db=pdb), None, port=0,
                                 stats_timeout=30)
        port = await n.start(endpoint.run)
        assert (await get_json(port, "/stats"))[0] == 200
        await proxy.cut()
        status, body = await get_json(port, "/stats")
        assert status == 503 and body["error"] == "database unavailable" and body["detail"]
        proxy.restore()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(30):
                await pdb.close()
        n.cancel_scope.cancel()


async def test_observability_built_with_the_service(db):
    # the CLI's port 0 is http_port=None: no endpoint, metrics and alerts attached
    _, disabled = build_service(db, {}, {}, DEFAULTS, PolicyClock(), http_port=None)
    assert disabled.endpoint is None and [c.id for c in disabled.children()] == ["metrics", "alerts"]
    obs = Observability(http_port=0, alerts=AlertRouter([LogSink()]), refresh_interval=0.05)
    service = Service(db, {"bybit": MemoryExchange(name="bybit")}, {"bybit": MemoryFeed("bybit")},
                      extra_children=obs.children())
    obs.attach(service)
    async with trio.open_nursery() as n:
        n.start_soon(service.run)
        port = await obs.endpoint.wait_bound()
        status, body = await get_json(port, "/health")
        assert status == 200
        root = body["supervisors"]["root"]["children"]
        assert {"storage-writer", "executor", "feed:bybit", "positions", "detector", "metrics", "http",
                "alerts"} <= set(root)
        assert root["http"]["critical"] is False and body["storage"]["database_up"] is True
        status, stats = await get_json(port, "/stats?days=1")
        assert status == 200 and stats["historical"]["total_processed"] == 0
        status, _, text = await get(port, "/metrics")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text.decode()) for s in family.samples}
        assert samples[("aged_supervisor_children", (("state", "running"), ("supervisor", "root")))] == 10  # the operator inbox is one of them
        assert samples[("aged_alerts_delivered_total", (("sink", "log"),))] == 0
        service.shutdown()
