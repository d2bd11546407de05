"""The feed's counters and gauges: what :attr:`feeds.feed.Feed.stats` holds.

Plain data, read by logs and by the Prometheus exporter (:mod:`service.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

__all__ = ["FeedStats"]


@dataclass(slots=True)
class FeedStats:
    """Plain counters and gauges, for logs and (later) Prometheus. Times are trio.current_time()."""

    messages: int = 0  # frames received
    ticks: int = 0  # ticks from the stream (delivered or not)
    rest_ticks: int = 0  # ticks from the REST fallback
    alive: int = 0  # valid updates that changed no price
    malformed: int = 0
    ignored: int = 0
    request_errors: int = 0  # subscribe/unsubscribe refused by the exchange
    connects: int = 0  # successful connections
    reconnects: int = 0  # successful connections after the first
    disconnects: int = 0  # established connections that ended
    connect_failures: int = 0  # attempts that never got connected
    heartbeat_timeouts: int = 0
    rest_errors: int = 0
    errors: int = 0  # unexpected exceptions (bugs?) that ended a connection
    stale_events: int = 0  # times a symbol became stale
    suspects: int = 0  # well-formed stream ticks held as suspect (far from the last accepted price)
    suspects_confirmed: int = 0  # held ticks a second source agreed with (then delivered)
    suspects_rejected: int = 0  # held ticks dropped (refuted by REST, or superseded)
    suspect_checks: int = 0  # REST look-ups made to judge a held tick
    connected: bool = False
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    ignored_reasons: dict[str, int] = field(default_factory=dict)
    stale_symbols: set[str] = field(default_factory=set)
    refused_symbols: set[str] = field(default_factory=set)  # the exchange refused to subscribe them
    last_tick_at: dict[str, float] = field(default_factory=dict)  # any source
    last_stream_at: dict[str, float] = field(default_factory=dict)  # stream updates only

    def quote_age(self, symbol: str, now: float | None = None) -> float | None:
        """Seconds since the last tick (stream or REST) of ``symbol``; None if never."""
        at = self.last_tick_at.get(symbol)
        if at is None:
            return None
        return (trio.current_time() if now is None else now) - at

    def as_dict(self) -> dict:
        return {
            "messages": self.messages,
            "ticks": self.ticks,
            "rest_ticks": self.rest_ticks,
            "alive": self.alive,
            "malformed": self.malformed,
            "ignored": self.ignored,
            "request_errors": self.request_errors,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "disconnects": self.disconnects,
            "connect_failures": self.connect_failures,
            "heartbeat_timeouts": self.heartbeat_timeouts,
            "rest_errors": self.rest_errors,
            "errors": self.errors,
            "stale_events": self.stale_events,
            "suspects": self.suspects,
            "suspects_confirmed": self.suspects_confirmed,
            "suspects_rejected": self.suspects_rejected,
            "suspect_checks": self.suspect_checks,
            "connected": self.connected,
            "malformed_reasons": dict(self.malformed_reasons),
            "ignored_reasons": dict(self.ignored_reasons),
            "stale_symbols": sorted(self.stale_symbols),
            "refused_symbols": sorted(self.refused_symbols),
        }
