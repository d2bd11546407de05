"""Metrics: a real Service on the in-memory exchange and a real PostgreSQL.

Rules: lifecycle tests run the Service as tests/test_runtime.py does — trio's autojump
MockClock with the ``mdb`` database, which holds virtual time still while a query is in
flight (tests/conftest.py), and asyncpg's timeouts off — and read metric
values straight from the Metrics object's own registry. The scrape test serves
``/metrics`` over real HTTP on loopback (port 0) on the real clock, with a fast
PolicyClock (one real second is one policy hour). Metric values are asserted, never
durations.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pytest
import trio
import trio.testing
from supervisor import Observer
from prometheus_client.parser import text_string_to_metric_families

from actors.clock import PolicyClock
from actors.events import CLOSE_COMPLETED, DETECTED, LifecycleEvent
from actors.detector import DetectorConfig
from actors.position import Settings
from exchanges.errors import RetryableError
from doubles.exchange import MemoryExchange
from feeds.feed import Feed
from service.alerts import AlertRouter, LogSink
from service.http import Observability
from service.metrics import Metrics
from service.config import DEFAULTS
from service.runtime import Service
from tests.support import MemoryFeed, make_service, push_prices, wait_until, within

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=timezone.utc)
SYMBOL = "BTC/USDT:USDT"
DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "aged-positions.json"


def value(metrics: Metrics, name: str, **labels) -> float:
    v = metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def until(predicate, timeout=3600 * 60, interval=600.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)


async def test_lifecycle_moves_every_metric_once(mock_clock, mdb):
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "2", "100", opened_at=T0)
    ex.set_quote(SYMBOL, "99", "99.01", "99")
    feed = MemoryFeed("bybit")
    svc = make_service(mdb, ex, feed, origin=T0 + timedelta(hours=1))
    seen_states, seen_submits = [], []

    class SomeoneElse(Observer):  # another watcher, added first: both are told
        def state_changed(self, new, old):
            seen_states.append(new.status)

        def order_submitted(self, exchange, seconds):
            seen_submits.append(exchange)

    svc.observers.add(SomeoneElse())
    metrics = Metrics()
    metrics.attach(svc)
    metrics.attach(svc)  # idempotent: no double subscription
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        n.start_soon(metrics.run_refresher, svc, 300.0)
        n.start_soon(push_prices, svc, feed, lambda now: ("99", "99.01"), 600)

        await until(lambda: value(metrics, "aged_positions_by_phase", phase="grace") == 1)
        assert value(metrics, "aged_positions_detected_total") == 1
        assert value(metrics, "aged_positions_active", status="grace_active") == 1
        assert value(metrics, "aged_positions_total") == 1

        # an actor crash is a supervisor restart; the restarted actor is still one position
        [aged_id] = list(svc.registry.states())
        svc.registry.crash_on_next_tick(aged_id)
        await until(lambda: value(metrics, "aged_supervisor_restarts_total", kind="position") == 1)
        metrics.refresh()
        assert value(metrics, "aged_positions_by_phase", phase="grace") == 1

        await until(lambda: value(metrics, "aged_positions_by_phase", phase="progressive") == 1)
        assert value(metrics, "aged_positions_by_phase", phase="grace") == 0
        assert value(metrics, "aged_positions_active", status="progressive_active") == 1
        assert value(metrics, "aged_position_phase_changes_total", phase="progressive") == 1

        await until(lambda: value(metrics, "aged_positions_closed_total", close_reason="loss_acceptable") == 1)
        await svc.writer.wait_flushed()
        for _ in range(3):
            metrics.refresh()  # refreshing again never counts again
        svc.shutdown()
        n.cancel_scope.cancel()

    row = (await mdb.fetch("SELECT * FROM monitoring.aged_positions"))[0]
    assert row["status"] == "closed" and row["close_reason"] == "loss_acceptable"
    assert value(metrics, "aged_positions_detected_total") == 1
    assert value(metrics, "aged_positions_closed_total", close_reason="loss_acceptable") == 1
    assert value(metrics, "aged_position_closes_total", phase="progressive", reason="loss_acceptable",
                 success="true") == 1
    assert value(metrics, "aged_positions_active", status="progressive_active") == 0
    assert value(metrics, "aged_positions_by_phase", phase="progressive") == 0
    assert value(metrics, "aged_positions_total") == 0
    assert value(metrics, "aged_position_close_duration_seconds_count") == 1
    assert value(metrics, "aged_position_pnl_percent_count") == 1
    assert row["actual_pnl_percent"] == D("-1.2")  # long 100 → 99, both fees: the -2 < pnl <= -1 bucket
    assert value(metrics, "aged_position_pnl_percent_bucket", le="-2.0") == 0
    assert value(metrics, "aged_position_pnl_percent_bucket", le="-1.0") == 1
    assert value(metrics, "aged_position_age_hours_count") == 1
    assert value(metrics, "aged_position_age_hours_bucket", le="12.0") == 0  # closed at age ~13 h
    assert value(metrics, "aged_position_age_hours_bucket", le="24.0") == 1
    assert value(metrics, "aged_tick_to_order_seconds_count", exchange="bybit") >= 1
    assert value(metrics, "aged_executor_attempts_total", exchange="bybit") == 1
    assert value(metrics, "aged_executor_retries_total", exchange="bybit") == 0
    assert value(metrics, "aged_detection_lag_seconds_count") == 1
    assert value(metrics, "aged_storage_write_buffer_depth") == 0
    assert value(metrics, "aged_supervisor_children", supervisor="root", state="running") == 7  # last refresh (the operator inbox is one)
    metrics.refresh()  # after the shutdown
    assert value(metrics, "aged_supervisor_children", supervisor="root", state="running") == 0
    assert value(metrics, "aged_supervisor_children", supervisor="root", state="stopped") == 7
    assert value(metrics, "aged_supervisor_healthy", supervisor="root") == 0
    # the hooks that were there before attach still run
    assert "closed" in seen_states and seen_submits == ["bybit"]


async def test_failed_closes_and_exchange_errors_are_counted(mock_clock, mdb):
    ex = MemoryExchange(name="bybit")
    ex.set_position(SYMBOL, "long", "1", "100", opened_at=T0)
    ex.fail_next(RetryableError("503 from exchange", code="503"), n=4)
    feed = MemoryFeed("bybit")
    settings = Settings(sample_interval=timedelta(minutes=10), error_cooldown=timedelta(minutes=15))
    svc = make_service(mdb, ex, feed, origin=T0 + timedelta(hours=4), settings=settings)
    metrics = Metrics()
    metrics.attach(svc)
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        n.start_soon(push_prices, svc, feed, lambda now: ("101", "101.1"), 300)
        await until(lambda: value(metrics, "aged_positions_active", status="error") == 1, interval=2)
        assert value(metrics, "aged_position_closes_total", phase="grace", reason="error", success="false") == 1
        await until(lambda: value(metrics, "aged_positions_closed_total", close_reason="profitable") == 1)
        svc.shutdown()
        n.cancel_scope.cancel()
    metrics.refresh()
    assert value(metrics, "aged_executor_errors_total", exchange="bybit", code="503") == 4
    assert value(metrics, "aged_position_closes_total", phase="grace", reason="error", success="false") == 1
    assert value(metrics, "aged_position_closes_total", phase="grace", reason="profitable", success="true") == 1
    assert value(metrics, "aged_executor_attempts_total", exchange="bybit") == 5
    assert value(metrics, "aged_executor_retries_total", exchange="bybit") == 4
    assert value(metrics, "aged_positions_active", status="error") == 0
    assert value(metrics, "aged_position_close_duration_seconds_count") == 1


def _fake_db():
    async def nothing(*args):
        return []
    return SimpleNamespace(write_batch=nothing, close_orders=nothing)


async def test_feed_stats_become_counters_by_delta_and_events_count_once():
    feed = Feed("bybit", "ws://127.0.0.1:9")  # never run: its stats are set by hand
    svc = Service(_fake_db(), {"bybit": MemoryExchange(name="bybit")}, {"bybit": feed})
    metrics = Metrics()
    metrics.attach(svc)
    feed.stats.ticks, feed.stats.reconnects, feed.stats.malformed = 10, 1, 2
    feed.stats.stale_symbols.add(SYMBOL)
    feed.stats.last_tick_at[SYMBOL] = trio.current_time() - 7
    metrics.refresh()
    metrics.refresh()
    assert value(metrics, "aged_feed_ticks_total", exchange="bybit") == 10
    feed.stats.ticks = 15
    metrics.refresh()
    assert value(metrics, "aged_feed_ticks_total", exchange="bybit") == 15
    assert value(metrics, "aged_feed_reconnects_total", exchange="bybit") == 1
    assert value(metrics, "aged_feed_malformed_messages_total", exchange="bybit") == 2
    assert value(metrics, "aged_feed_stale_symbols", exchange="bybit") == 1
    assert value(metrics, "aged_feed_quote_age_seconds", exchange="bybit", symbol=SYMBOL) >= 7
    assert value(metrics, "aged_feed_max_quote_age_seconds", exchange="bybit") >= 7
    del feed.stats.last_tick_at[SYMBOL]  # unsubscribed: its series goes away
    metrics.refresh()
    assert metrics.registry.get_sample_value("aged_feed_quote_age_seconds",
                                             {"exchange": "bybit", "symbol": SYMBOL}) is None

    now = datetime.now(timezone.utc)
    svc.bus.publish(LifecycleEvent(DETECTED, now, uuid4(), "bybit", SYMBOL))
    svc.bus.publish(LifecycleEvent(CLOSE_COMPLETED, now, uuid4(), "bybit", SYMBOL,
                                   {"close_reason": "manual", "pnl_percent": "None", "attempts": 0}))
    metrics.refresh()
    assert value(metrics, "aged_positions_detected_total") == 1
    assert value(metrics, "aged_positions_closed_total", close_reason="manual") == 1
    assert value(metrics, "aged_position_pnl_percent_count") == 0  # a manual close without a fill has no pnl
    svc.writer.submit(*[object() for _ in range(3)])  # write_buffer_depth
    assert value(metrics, "aged_storage_write_buffer_depth") == 3


def test_a_metrics_hook_that_fails_never_reaches_the_actor(caplog):
    svc = Service(_fake_db(), {"bybit": MemoryExchange(name="bybit")}, {})
    metrics = Metrics()
    metrics.attach(svc)
    broken = SimpleNamespace(aged_id=uuid4())  # no .status: the hook raises inside
    svc.observers.state_changed(broken, None)  # must not raise
    assert "Metrics.state_changed failed" in caplog.text
    with pytest.raises(RuntimeError):
        metrics.attach(Service(_fake_db(), {}, {}))


def _scrape_values(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _get(port: int, path: str) -> tuple[int, str]:
    with within(60, f"GET {path} answered"):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def test_metrics_scraped_over_http_change_while_the_system_runs(db):
    ex = MemoryExchange(name="bybit")
    feed = MemoryFeed("bybit")
    obs = Observability(http_port=0, refresh_interval=0.1)
    clock = PolicyClock(T0, speed=3600)  # one real second is one policy hour
    svc = Service(db, {"bybit": ex}, {"bybit": feed}, replace(DEFAULTS, detector=DetectorConfig(poll_interval=0.1)), clock,
                  extra_children=obs.children())
    obs.attach(svc)
    async with trio.open_nursery() as n:
        n.start_soon(svc.run)
        port = await obs.endpoint.wait_bound()
        status, first_text = await _get(port, "/metrics")
        assert status == 200
        first = _scrape_values(first_text)

        # a position that ages a policy minute from now, then a price above breakeven
        ex.set_position(SYMBOL, "long", "1", "100", opened_at=clock.now() - timedelta(hours=2, minutes=59))
        n.start_soon(push_prices, svc, feed, lambda now: ("101", "101.1"), 0.05)
        await wait_until(lambda: value(obs.metrics, "aged_positions_closed_total", close_reason="profitable") >= 1,
                         "the position aged, crossed its target and was closed", interval=0.05)
        status, second_text = await _get(port, "/metrics")
        health_status, health = await _get(port, "/health")
        svc.shutdown()
        n.cancel_scope.cancel()
    second = _scrape_values(second_text)
    key = lambda name, **labels: (name, tuple(sorted(labels.items())))  # noqa: E731
    assert first[key("aged_positions_detected_total")] == 0
    assert second[key("aged_positions_detected_total")] == 1
    assert first[key("aged_positions_closed_total", close_reason="profitable")] == 0
    assert second[key("aged_positions_closed_total", close_reason="profitable")] == 1
    assert second[key("aged_position_close_duration_seconds_count")] == 1
    assert second[key("aged_tick_to_order_seconds_count", exchange="bybit")] >= 1
    assert second[key("aged_supervisor_children", supervisor="root", state="running")] >= 5
    assert health_status == 200 and json.loads(health)["status"] == "ok"


# --- the Grafana dashboard ------------------------------------------------------------------

def _sample_names(metrics: Metrics) -> set[str]:
    names = set()
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum",
                                                                                 "_created")}
    for family in metrics.registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def _panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_dashboard_is_importable_and_uses_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = [v for v in variables.values() if v["type"] == "datasource"]
    assert ds and ds[0]["query"] == "prometheus"
    metrics = Metrics()
    metrics.watch_alerts(AlertRouter([LogSink()]))
    exported = _sample_names(metrics)
    ids, used = set(), set()
    for panel in _panels(dashboard):
        assert panel["id"] not in ids
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${" + ds[0]["name"] + "}"
            names = set(re.findall(r"\baged_[a-z0-9_]+", target["expr"]))
            assert names, target["expr"]
            missing = names - exported
            assert not missing, f"panel {panel['title']!r} uses unknown metrics {missing}"
            used |= names
    titles = " ".join(p["title"].lower() for p in _panels(dashboard))
    for needed in ("phase", "reason", "success rate", "close latency", "pnl", "tick", "quote age",
                   "buffer", "restarts"):
        assert needed in titles, needed
    assert {"aged_position_close_duration_seconds_bucket", "aged_tick_to_order_seconds_bucket",
            "aged_position_closes_total", "aged_storage_write_buffer_depth"} <= used
