"""Metrics across accounts (:mod:`service.account_labels`): per-account registries merged
into one exposition with an ``account`` label, read back with prometheus_client's own
parser; and the lease gauges of one instance."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from service.account_labels import AccountLabelled, InstanceMetrics
from service.alerts import AlertRouter, LogSink
from service.metrics import Metrics


def families(registry: CollectorRegistry) -> dict:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def samples(registry: CollectorRegistry) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}


def merged(**registries: CollectorRegistry) -> CollectorRegistry:
    labelled = AccountLabelled()
    for account, registry in registries.items():
        labelled.add(account, registry)
    out = CollectorRegistry()
    out.register(labelled)
    return out


def test_each_family_once_with_every_accounts_samples_labelled():
    a, b = Metrics(), Metrics()
    a.detected.inc(3)
    b.detected.inc(5)
    a.exec_errors.labels(exchange="bybit", code="10006").inc()
    b.exec_errors.labels(exchange="bybit", code="10006").inc(2)
    b.buffer_depth.set(7)
    a.close_duration.observe(0.3)
    out = merged(desk1=a.registry, desk2=b.registry)

    text = generate_latest(out).decode()
    assert text.count("# TYPE aged_positions_detected_total counter") == 1
    assert text.count("# HELP aged_executor_errors_total ") == 1
    fams = families(out)
    assert fams["aged_positions_detected"].type == "counter"
    assert fams["aged_positions_detected"].documentation == "Aged positions detected"
    assert fams["aged_storage_write_buffer_depth"].type == "gauge"
    assert fams["aged_position_close_duration_seconds"].type == "histogram"

    got = samples(out)
    assert got[("aged_positions_detected_total", (("account", "desk1"),))] == 3
    assert got[("aged_positions_detected_total", (("account", "desk2"),))] == 5
    assert ("aged_positions_detected_created", (("account", "desk1"),)) in got
    errors = (("account", "desk2"), ("code", "10006"), ("exchange", "bybit"))
    assert got[("aged_executor_errors_total", errors)] == 2
    assert got[("aged_storage_write_buffer_depth", (("account", "desk2"),))] == 7
    assert got[("aged_position_close_duration_seconds_count", (("account", "desk1"),))] == 1
    assert got[("aged_position_close_duration_seconds_bucket", (("account", "desk1"), ("le", "0.5")))] == 1
    assert got[("aged_position_close_duration_seconds_count", (("account", "desk2"),))] == 0
    # every sample of the merge carries the label, and nothing was lost on the way
    assert all("account" in labels for _, labels in (
        (name, dict(labels)) for name, labels in got))
    per_account = {k: v for k, v in samples(a.registry).items()}
    assert len([k for k in got if ("account", "desk1") in k[1]]) == len(per_account)


def test_openmetrics_exposition_parses_too():
    # (not a whole Metrics: its pnl histogram has negative buckets, which OpenMetrics
    # exposes without _sum and its own parser then refuses, merged or not)
    one, two = CollectorRegistry(), CollectorRegistry()
    for registry, n in ((one, 1), (two, 2)):
        Counter("closes", "closes", ["reason"], registry=registry).labels(reason="profitable").inc(n)
        Histogram("lag_seconds", "lag", buckets=(0.1, 1), registry=registry).observe(0.5 * n)
    text = generate_openmetrics(merged(x=one, y=two)).decode()
    fams = {f.name: f for f in parse_openmetrics(text)}
    totals = {s.labels["account"]: s.value for s in fams["closes"].samples if s.name == "closes_total"}
    assert totals == {"x": 1, "y": 2}
    counts = {s.labels["account"]: s.value for s in fams["lag_seconds"].samples if s.name == "lag_seconds_count"}
    assert counts == {"x": 1, "y": 1} and fams["lag_seconds"].type == "histogram"


def test_add_remove_and_bad_input():
    labelled = AccountLabelled()
    one, two = CollectorRegistry(), CollectorRegistry()
    Gauge("g", "a gauge", registry=one).set(1)
    labelled.add("a", one)
    labelled.add("a", one)  # the same pair again: nothing changes
    with pytest.raises(ValueError, match="'a' already has a registry"):
        labelled.add("a", two)
    for bad in ("", None):
        with pytest.raises(ValueError, match="account"):
            labelled.add(bad, two)
    assert labelled.accounts() == ("a",)
    out = CollectorRegistry()
    out.register(labelled)
    assert samples(out) == {("g", (("account", "a"),)): 1}
    assert labelled.remove("a") and not labelled.remove("a")
    assert samples(out) == {} and labelled.accounts() == ()


def test_the_registrys_own_account_label_gives_way_and_a_type_clash_is_left_out():
    one, two = CollectorRegistry(), CollectorRegistry()
    Gauge("x", "x", ["account"], registry=one).labels(account="wrong").set(4)
    Counter("y", "y as a counter", registry=one).inc()
    Gauge("y", "y as a gauge", registry=two).set(9)
    got = samples(merged(a=one, b=two))
    assert got[("x", (("account", "a"),))] == 4
    assert ("y_total", (("account", "a"),)) in got
    assert not any(name == "y" for name, _ in got)  # b's gauge y clashes with a's counter y


def test_a_registry_with_a_custom_collector_is_merged():
    a = Metrics()
    a.watch_alerts(AlertRouter([LogSink()]))
    got = samples(merged(desk=a.registry))
    assert got[("aged_alerts_delivered_total", (("account", "desk"), ("sink", "log")))] == 0
    assert ("aged_alerts_queued", (("account", "desk"), ("sink", "log"))) in got


def test_lease_gauges_follow_the_rounds():
    m = InstanceMetrics()
    lease = SimpleNamespace
    m.update_lease_metrics(SimpleNamespace(held={"a": 7}, leases={"a": lease(holder="me", live=True),
                                                                    "b": lease(holder="other", live=True)},
                                           live_instances=("me", "other")), "me", ["a", "b", "c"])
    got = samples(m.registry)
    assert got[("aged_lease_held", (("account", "a"), ("instance", "me")))] == 1
    assert got[("aged_lease_held", (("account", "b"), ("instance", "me")))] == 0
    assert got[("aged_lease_held", (("account", "c"), ("instance", "me")))] == 0
    assert got[("aged_lease_token", (("account", "a"),))] == 7
    assert ("aged_lease_token", (("account", "b"),)) not in got
    assert got[("aged_instances_live", ())] == 2

    m.update_lease_metrics(SimpleNamespace(held={"b": 9}, leases={}, live_instances=("me",)), "me", ["b"])
    got = samples(m.registry)
    assert got[("aged_lease_held", (("account", "b"), ("instance", "me")))] == 1
    assert not any(dict(labels).get("account") in ("a", "c") for name, labels in got if name.startswith("aged_lease"))
    assert got[("aged_lease_token", (("account", "b"),))] == 9 and got[("aged_instances_live", ())] == 1


def test_instance_metrics_merge_accounts_and_refresh_them():
    m = InstanceMetrics()
    refreshed = []

    class Broken:
        registry = CollectorRegistry()

        def refresh(self):
            refreshed.append("broken")
            raise RuntimeError("boom")
    a = Metrics()
    a.detected.inc()
    m.add_account("a", a)
    m.add_account("z", Broken())
    m.refresh()  # the broken one is logged, not raised
    assert refreshed == ["broken"]
    assert samples(m.registry)[("aged_positions_detected_total", (("account", "a"),))] == 1
    assert m.remove_account("a") and not m.remove_account("a")
    assert not any(name == "aged_positions_detected_total" for name, _ in samples(m.registry))
