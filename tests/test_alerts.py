"""Alerts: sinks fed from the event bus, delivered to a local receiver.

Rules: every receiver is a tiny trio HTTP server in this module, on loopback, port 0,
on the real clock; the sinks talk to it with their real HTTP client (httpx). Timeouts
and backoffs are made small so the tests are quick, but nothing asserts how long
anything took: the assertions are on what the receiver got, on the sinks' counters
and on the log. Secrets in URLs must never reach the log, not even through the HTTP
client's own log lines.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from uuid import uuid4

import pytest
import trio

from actors.events import CLOSE_COMPLETED, CLOSE_FAILED, ESCALATION, PHASE_CHANGED, EventBus, LifecycleEvent
from service.alerts import AlertRouter, LogSink, TelegramSink, WebhookSink, alert_router_from_env
from service.metrics import Metrics
from tests.support import wait_until

SYMBOL = "BTC/USDT:USDT"


class Receiver:
    """Answers each request with the next scripted (status, body); 200 when the script is out.

    ``hang=True``: accept connections and never answer.
    """

    def __init__(self, script=(), *, hang=False):
        self.script = list(script)
        self.hang = hang
        self.requests: list[dict] = []
        self.connections = 0
        self.port = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, stream):
        self.connections += 1
        try:
            if self.hang:
                await trio.sleep_forever()
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                body += await stream.receive_some(65536)
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
            status, reply = self.script.pop(0) if self.script else (200, {"ok": True})
            payload = json.dumps(reply).encode()
            await stream.send_all(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                                  f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


def event(kind=CLOSE_FAILED, critical=True, **data):
    return LifecycleEvent(kind, datetime(2026, 3, 1, 12, tzinfo=timezone.utc), uuid4(), "bybit", SYMBOL,
                          data or {"attempts": 4, "error": "RetryableError: 503"}, critical)


async def until(predicate, what="the awaited delivery", timeout=60):
    """A safety net, not a timing assertion."""
    await wait_until(predicate, what, timeout=timeout, interval=0.005)


async def test_webhook_receives_the_alert_as_json_and_only_alerting_events():
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver().run)
        sink = WebhookSink(rx.url(), timeout=30, retries=0, backoff=0)
        router = AlertRouter([sink], notify={CLOSE_COMPLETED})
        bus = EventBus()
        router.subscribe(bus)
        n.start_soon(router.run)
        failed = event()
        bus.publish(event(PHASE_CHANGED, critical=False, to="progressive_active"))  # not an alert
        bus.publish(failed)
        bus.publish(event(CLOSE_COMPLETED, critical=False, close_reason="profitable", pnl_percent="0.4"))
        await until(lambda: sink.delivered == 2)
        n.cancel_scope.cancel()
    assert [r["method"] for r in rx.requests] == ["POST", "POST"]
    assert rx.requests[0]["path"] == "/hook"
    assert rx.requests[0]["headers"]["content-type"] == "application/json"
    first, second = (json.loads(r["body"]) for r in rx.requests)
    assert first["type"] == CLOSE_FAILED and first["critical"] is True
    assert first["aged_id"] == str(failed.aged_id) and first["exchange"] == "bybit" and first["symbol"] == SYMBOL
    assert first["data"] == {"attempts": 4, "error": "RetryableError: 503"}
    assert first["at"] == "2026-03-01T12:00:00+00:00"
    assert "aged.close.failed" in first["text"] and "RetryableError: 503" in first["text"]
    assert second["type"] == CLOSE_COMPLETED and second["data"]["close_reason"] == "profitable"
    assert sink.failed == 0 and sink.dropped == 0


async def test_a_500_is_retried_and_the_alert_delivered_once():
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver([(500, {"error": "boom"}), (200, {"ok": True})]).run)
        sink = WebhookSink(rx.url(), timeout=30, retries=3, backoff=0.01)
        router = AlertRouter([sink])
        n.start_soon(router.run)
        router.publish(event())
        await until(lambda: sink.delivered == 1)
        n.cancel_scope.cancel()
    assert len(rx.requests) == 2 and rx.requests[0]["body"] == rx.requests[1]["body"]
    assert sink.retries_made == 1 and sink.failed == 0 and sink.queued == 0


async def test_a_4xx_is_not_retried():
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver([(400, {"error": "bad"})]).run)
        sink = WebhookSink(rx.url(), timeout=30, retries=3, backoff=0.01)
        n.start_soon(AlertRouter([sink]).run)
        sink.offer(event())
        await until(lambda: sink.failed == 1)
        n.cancel_scope.cancel()
    assert len(rx.requests) == 1 and sink.delivered == 0


async def test_a_silent_receiver_times_out_is_retried_then_given_up_and_never_blocks_publishers(caplog):
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver(hang=True).run)
        secret_url = rx.url("/hooks/T0KEN-SECRET-abcdef123456")
        sink = WebhookSink(secret_url, timeout=0.2, retries=2, backoff=0.01, max_queue=100)
        router = AlertRouter([sink])
        bus = EventBus()
        router.subscribe(bus)
        n.start_soon(router.run)
        bus.publish(event(attempts=1))
        await until(lambda: rx.connections == 1)  # the first alert is stuck in delivery now

        # A burst while the receiver hangs: each publish returns at once (no checkpoint in
        # between), the queue stays bounded, and the overflow is counted.
        for i in range(10_000):
            bus.publish(event(attempts=i))
        assert sink.queued == 100 and sink.dropped == 10_000 - 100
        assert [e.data["attempts"] for e in list(sink._queue)[:2]] == [9_900, 9_901]  # the oldest went

        # Other tasks keep running while the delivery waits on the silent receiver.
        ticks = 0
        while sink.failed == 0:
            ticks += 1
            await trio.sleep(0.01)
        # the first try and two retries of the first alert (the receiver may accept the
        # last one after the client already gave up on it)
        await until(lambda: rx.connections >= 3, "three connections reached the silent receiver")
        n.cancel_scope.cancel()
    assert ticks > 0
    assert sink.delivered == 0 and sink.retries_made >= 2
    assert "giving up on aged.close.failed after 3 attempt(s): no answer within 0.2s" in caplog.text
    assert "T0KEN-SECRET" not in caplog.text


async def test_telegram_send_message_format_against_a_local_api(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:AAE-secret-token")
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "-100123")
    too_many = (429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 0",
                      "parameters": {"retry_after": 0.01}})
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver([too_many]).run)
        plain = TelegramSink(api_base=f"http://127.0.0.1:{rx.port}", timeout=30, min_interval=0, backoff=0.01)
        formatted = TelegramSink(api_base=f"http://127.0.0.1:{rx.port}/", parse_mode="HTML", timeout=30,
                                 min_interval=0, backoff=0.01)
        router = AlertRouter([plain, formatted])
        n.start_soon(router.run)
        router.publish(event(attempts=4, error="reduce-only <rejected> & more"))
        await until(lambda: plain.delivered == 1 and formatted.delivered == 1)
        n.cancel_scope.cancel()
    assert len(rx.requests) == 3  # the 429 was retried
    assert {r["path"] for r in rx.requests} == {"/bot123456:AAE-secret-token/sendMessage"}
    messages = [json.loads(r["body"]) for r in rx.requests]
    plain_msg = next(m for m in messages if "parse_mode" not in m)
    html_msg = next(m for m in messages if m.get("parse_mode") == "HTML")
    assert plain_msg["chat_id"] == "-100123"
    assert "aged.close.failed" in plain_msg["text"] and SYMBOL in plain_msg["text"]
    assert "reduce-only <rejected> & more" in plain_msg["text"]
    assert html_msg["text"].startswith("<b>") and "&lt;rejected&gt; &amp; more" in html_msg["text"]
    assert "secret-token" not in caplog.text and "secret-token" not in repr(plain)


async def test_secret_webhook_urls_stay_out_of_the_log_even_in_the_http_clients_own_lines(caplog):
    caplog.set_level(logging.DEBUG)
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver([(503, {"error": "later"})]).run)
        sink = WebhookSink(rx.url("/hooks/T0KEN-SECRET-abcdef123456?sig=0123456789abcdef"), timeout=30,
                           retries=2, backoff=0.01)
        n.start_soon(AlertRouter([sink]).run)
        sink.offer(event())
        await until(lambda: sink.delivered == 1)
        n.cancel_scope.cancel()
    assert rx.requests[1]["path"] == "/hooks/T0KEN-SECRET-abcdef123456?sig=0123456789abcdef"
    assert "attempt 1 failed (HTTP 503); retrying in 0.01s" in caplog.text
    assert "HTTP Request: POST" in caplog.text  # the client's own request lines were logged...
    assert "T0KEN-SECRET" not in caplog.text and "0123456789abcdef" not in caplog.text  # ...without the secrets


async def test_a_refused_connection_is_retried_then_given_up():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens there now
    sink = WebhookSink(f"http://127.0.0.1:{port}/hook", timeout=30, retries=2, backoff=0.01)
    sink.offer(event())
    await sink.drain()
    assert sink.failed == 1 and sink.delivered == 0 and sink.retries_made == 2 and sink.queued == 0


async def test_an_alert_whose_delivery_is_cancelled_goes_back_to_the_front_of_the_queue():
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver(hang=True).run)
        sink = WebhookSink(rx.url(), timeout=30, retries=0)
        first, second = event(attempts=1), event(attempts=2)
        sink.offer(first)
        sink.offer(second)
        n.start_soon(sink.run)
        await until(lambda: rx.connections == 1)  # the first alert is in flight now
        n.cancel_scope.cancel()
    assert list(sink._queue) == [first, second] and sink.in_flight is None
    assert sink.delivered == 0 and sink.failed == 0


def test_telegram_needs_its_environment(monkeypatch):
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "1")
    with pytest.raises(ValueError, match="TELEGRAM_BOT_TOKEN"):
        TelegramSink()


async def test_log_sink_logs_critical_events_at_critical(caplog):
    sink = LogSink()
    router = AlertRouter([sink], notify={CLOSE_COMPLETED})
    bus = EventBus()
    router.subscribe(bus)
    bus.publish(event())
    bus.publish(event(CLOSE_COMPLETED, critical=False, close_reason="breakeven"))
    bus.publish(event(PHASE_CHANGED, critical=False, to="grace_active"))
    records = [r for r in caplog.records if r.name == "alerts"]
    # the completed close is for the webhook and Telegram: the service's log has it already
    assert [r.levelno for r in records] == [logging.CRITICAL]
    assert "aged.close.failed" in records[0].getMessage() and SYMBOL in records[0].getMessage()


async def test_escalation_alerts_and_flush_delivers_after_the_tree_stopped():
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver().run)
        sink = WebhookSink(rx.url(), timeout=30, retries=0)
        router = AlertRouter([sink])
        # published while no delivery task runs (the supervision tree has stopped)
        router.publish(LifecycleEvent(ESCALATION, datetime.now(timezone.utc), data={"supervisor": "root"},
                                      critical=True))
        assert await router.flush(timeout=30)
        n.cancel_scope.cancel()
    assert json.loads(rx.requests[0]["body"])["type"] == ESCALATION


async def test_router_from_the_environment_and_its_exported_counters(monkeypatch):
    monkeypatch.delenv("APM_TEST_HOOK", raising=False)
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    assert [s.name for s in alert_router_from_env().sinks] == ["log"]
    with pytest.raises(ValueError, match="APM_TEST_HOOK"):
        alert_router_from_env(webhook_url_env="APM_TEST_HOOK")
    with pytest.raises(ValueError, match="TELEGRAM_BOT_TOKEN"):
        alert_router_from_env(telegram=True)
    monkeypatch.setenv("APM_TEST_HOOK", "http://127.0.0.1:9/never")
    router = alert_router_from_env(webhook_url_env="APM_TEST_HOOK", max_queue=2)
    assert [s.name for s in router.sinks] == ["log", "webhook:http://127.0.0.1:9"]
    metrics = Metrics()
    metrics.watch_alerts(router)
    for _ in range(5):
        router.publish(event())
    webhook = {"sink": "webhook:http://127.0.0.1:9"}
    assert metrics.registry.get_sample_value("aged_alerts_dropped_total", webhook) == 3
    assert metrics.registry.get_sample_value("aged_alerts_queued", webhook) == 2
    assert metrics.registry.get_sample_value("aged_alerts_delivered_total", {"sink": "log"}) == 5
