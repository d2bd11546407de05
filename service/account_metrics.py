"""Prometheus metrics of the account streams (one label: the exchange).

Read from each stream's :class:`~feeds.account_stream.AccountStreamStats` and its
view at every refresh of :class:`service.metrics.Metrics`; counters advance by the
difference since the last refresh.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["AccountStreamMetrics", "account_health"]


class AccountStreamMetrics:
    """The account-stream part of the metrics registry."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.healthy = Gauge("aged_account_stream_healthy",
                             "1 when the account stream is connected, synced and heard from recently "
                             "(positions, orders and fills come from it; REST otherwise)", ["exchange"], registry=r)
        self.connects = Counter("aged_account_stream_connects_total", "Account stream connections", ["exchange"],
                                registry=r)
        self.events = Counter("aged_account_stream_events_total", "Position, order and fill events received",
                              ["exchange"], registry=r)
        self.malformed = Counter("aged_account_stream_malformed_messages_total", "Malformed account stream frames",
                                 ["exchange"], registry=r)
        self.refusals = Counter("aged_account_stream_refusals_total",
                                "Times the exchange refused our credentials for the account stream", ["exchange"],
                                registry=r)
        self.checks = Counter("aged_executor_position_checks_total",
                              "Position checks before a close order, by where the position was read "
                              "(stream: the account stream; rest: a REST request)", ["source"], registry=r)
        self.settled = Counter("aged_executor_settled_by_stream_total",
                               "Close orders whose outcome came from the account stream (no REST look-up)",
                               registry=r)
        self._seen: dict[tuple[str, str], int] = {}

    def _advance(self, counter: Any, key: tuple[str, str], value: int) -> None:
        delta = value - self._seen.get(key, 0)
        if delta > 0:
            counter.inc(delta)
        self._seen[key] = value

    def refresh(self, service: Any) -> None:
        stats = getattr(getattr(service, "executor", None), "stats", None)
        if stats is not None:
            self._advance(self.checks.labels(source="stream"), ("checks", "stream"), stats.positions_from_stream)
            self._advance(self.checks.labels(source="rest"), ("checks", "rest"), stats.positions_from_rest)
            self._advance(self.settled, ("settled", ""), stats.settled_by_stream)
        for name, stream in getattr(service, "accounts", {}).items():
            stats = stream.stats
            self.healthy.labels(exchange=name).set(1 if stream.view.healthy else 0)
            for counter, key in ((self.connects, "connects"), (self.events, "events"),
                                 (self.malformed, "malformed"), (self.refusals, "refusals")):
                self._advance(counter.labels(exchange=name), (key, name), getattr(stats, key))


def account_health(service: Any) -> dict[str, dict[str, Any]]:
    """What ``/health`` shows of each account stream."""
    out = {}
    for name, stream in getattr(service, "accounts", {}).items():
        s, view = stream.stats, stream.view
        out[name] = {"healthy": view.healthy, "state": view.state, "connects": s.connects,
                     "events": s.events, "malformed": s.malformed, "refusals": s.refusals,
                     "last_error": s.last_error}
    return out
