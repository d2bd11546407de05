"""The instance's HTTP endpoint (:func:`service.http.instance_app`): one /health, /metrics
and /stats for an instance running one real :class:`~service.runtime.Service` per
account it holds a lease for.

As in ``test_http``: a real server on loopback, port 0, the real clock, a plain HTTP/1.1
client on a raw trio socket, the real test database; waits poll for conditions.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import trio
from prometheus_client.parser import text_string_to_metric_families

from doubles.exchange import MemoryExchange
from service.account_labels import InstanceMetrics
from service.http import Observability, health_report, instance_endpoint
from service.runtime import Service
from tests.support import MemoryFeed, wait_until
from tests.test_http import get, get_json, seed

EXPIRES = datetime(2026, 11, 30, 5, 0, 1, tzinfo=timezone.utc)


class Instance:
    """What the instance app reads: a name, the leases, the running services, the database."""

    def __init__(self, name: str, db, metrics: InstanceMetrics | None = None):
        self.name, self.db, self.metrics = name, db, metrics
        self.running: dict[str, Service] = {}
        self.lease_rows: dict[str, dict] = {}

    def leases(self) -> dict[str, dict]:
        return dict(self.lease_rows)

    def services(self) -> dict[str, Service]:
        return dict(self.running)


def account_service(db) -> tuple[Service, Observability]:
    obs = Observability(http_port=None, refresh_interval=0.05)
    service = Service(db, {"bybit": MemoryExchange(name="bybit")}, {"bybit": MemoryFeed("bybit")},
                      extra_children=obs.children())
    obs.attach(service)
    return service, obs


def all_running(service: Service) -> bool:
    children = service.root.children()
    return bool(children) and all(c.state == "running" for c in children.values())


def samples(text: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


async def test_health_and_metrics_cover_every_running_account(db):
    metrics = InstanceMetrics()
    instance = Instance("node-1:42", db, metrics)
    one, obs_one = account_service(db)
    two, obs_two = account_service(db)
    instance.lease_rows = {
        "desk-1": {"held_by_me": True, "holder": "node-1:42", "token": 3, "live": True, "expires_at": EXPIRES},
        "desk-2": {"held_by_me": True, "holder": "node-1:42", "token": 4, "live": True, "expires_at": EXPIRES},
        "desk-3": {"held_by_me": False, "holder": "node-2:7", "token": 5, "live": True,
                   "expires_at": EXPIRES + timedelta(seconds=1)},
    }
    metrics.update_lease_metrics(SimpleNamespace(held={"desk-1": 3, "desk-2": 4}, leases={},
                                                 live_instances=("node-1:42", "node-2:7")),
                                 "node-1:42", ["desk-1", "desk-2", "desk-3"])
    endpoint = instance_endpoint(instance, port=0)
    async with trio.open_nursery() as n:
        n.start_soon(one.run)
        n.start_soon(two.run)
        port = await n.start(endpoint.run)
        for account, service, obs in (("desk-1", one, obs_one), ("desk-2", two, obs_two)):
            instance.running[account] = service
            metrics.add_account(account, obs.metrics)
            await wait_until(lambda s=service: all_running(s), f"{account}'s service running")

        status, body = await get_json(port, "/health")
        assert status == 200 and body["status"] == "ok" and body["problems"] == []
        assert body["instance"] == "node-1:42"
        assert body["leases"]["desk-3"] == {"held_by_me": False, "holder": "node-2:7", "token": 5, "live": True,
                                            "expires_at": "2026-11-30T05:00:02+00:00"}
        assert set(body["accounts"]) == {"desk-1", "desk-2"}
        for account, service in (("desk-1", one), ("desk-2", two)):
            entry = body["accounts"][account]
            assert entry["status"] == "ok" and entry["storage"]["database_up"] is True
            assert set(entry["supervisors"]["root"]["children"]) == set(service.root.children())

        status, headers, text = await get(port, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        got = samples(text)
        for account, service in (("desk-1", one), ("desk-2", two)):
            key = ("aged_supervisor_children", (("account", account), ("state", "running"), ("supervisor", "root")))
            assert got[key] == len(service.root.children())
            assert got[("aged_positions_detected_total", (("account", account),))] == 0
        assert got[("aged_lease_held", (("account", "desk-2"), ("instance", "node-1:42")))] == 1
        assert got[("aged_lease_held", (("account", "desk-3"), ("instance", "node-1:42")))] == 0
        assert got[("aged_lease_token", (("account", "desk-1"),))] == 3
        assert got[("aged_instances_live", ())] == 2

        two.shutdown()  # its tree stops while the instance still lists it as running
        await wait_until(lambda: not health_report(two)[0], "desk-2 unhealthy")
        status, body = await get_json(port, "/health")
        assert status == 503 and body["status"] == "degraded"
        assert body["problems"] == ["desk-2: root supervisor is not running"]
        assert body["accounts"]["desk-1"]["status"] == "ok" and body["accounts"]["desk-2"]["status"] == "unhealthy"

        del instance.running["desk-2"]  # the instance stops it: healthy again
        metrics.remove_account("desk-2")
        status, body = await get_json(port, "/health")
        assert status == 200 and set(body["accounts"]) == {"desk-1"}
        got = samples((await get(port, "/metrics"))[2])
        assert not any(dict(labels).get("account") == "desk-2" for name, labels in got
                       if name.startswith("aged_supervisor"))
        one.shutdown()
        n.cancel_scope.cancel()


async def test_a_standby_holding_nothing_is_healthy_and_stats_read_the_database(db):
    await seed(db)
    instance = Instance("standby", db)
    instance.lease_rows = {"desk-1": {"held_by_me": False, "holder": "other", "token": 9, "live": True,
                                      "expires_at": EXPIRES}}
    async with trio.open_nursery() as n:
        port = await n.start(instance_endpoint(instance, port=0).run)
        status, body = await get_json(port, "/health")
        assert status == 200 and body == {"status": "ok", "instance": "standby", "accounts": {}, "problems": [],
                                          "leases": {"desk-1": {"held_by_me": False, "holder": "other", "token": 9,
                                                                "live": True,
                                                                "expires_at": "2026-11-30T05:00:01+00:00"}}}
        assert (await get(port, "/metrics"))[0] == 404  # no InstanceMetrics given
        status, stats = await get_json(port, "/stats?days=7")
        assert status == 200 and stats["historical"]["total_processed"] == 3
        bad_status, bad = await get_json(port, "/stats?days=-1")
        assert bad_status == 400 and "days" in bad["error"]
        status, _, page = await get(port, "/")  # the operator console, over every account
        assert status == 200 and b"<html" in page.lower()
        n.cancel_scope.cancel()
