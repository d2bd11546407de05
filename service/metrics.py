"""Prometheus metrics for the whole service, in a registry of their own.

:class:`Metrics` owns a :class:`prometheus_client.CollectorRegistry` (not the
process-global one, so tests can make as many as they like) holding the metric names
of the design notes (``aged_positions_*``, ``aged_position_*``) plus the health of
the parts around the policy: feeds, executor, supervisors, storage writer.

Where the numbers come from::

    lifecycle counters / histograms   the event bus (each LifecycleEvent counted once)
    active by status / by phase       state_changed (on every status change) and a
                                      periodic recount from the actor registry
    tick → order latency              order_submitted
    executor attempts, retries        close_attempted
    executor errors                   exchange_error
    supervisor restarts               child_restarted
    write buffer depth                write_buffer_depth (and the periodic refresh)
    detection lag                     position_detected
    feed, lookups, storage            deltas of the actors' own stats, periodically

:class:`Metrics` is a :class:`supervisor.observer.Observer`: ``attach(service)`` adds
it to the service's observers and subscribes it to the event bus; ``await metrics.run_refresher(service, interval)`` is the periodic part
(run it as a supervised child, see :mod:`service.http`). ``refresh()`` is also called
at every scrape, so ``/metrics`` is never staler than the request.

Money and prices are :class:`~decimal.Decimal` everywhere else; they become floats
only here, when a value is handed to Prometheus.

None of this ever raises into an actor: a failure in metrics code is logged (at most
once a minute per kind; the service's :class:`~supervisor.observer.ObserverSet` does
it for the observer calls) and otherwise ignored.
"""

from __future__ import annotations

import logging
from collections import Counter as _Tally
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from actors.events import CLOSE_COMPLETED, CLOSE_FAILED, CLOSE_TRIGGERED, DETECTED, ESCALATION, PHASE_CHANGED
from actors.policy import Phase, assess
from actors.statuses import PHASE_OF_STATUS, Status
from service.account_metrics import AccountStreamMetrics
from supervisor.log_limiter import LogLimiter
from supervisor.observer import Observer

log = logging.getLogger("service.metrics")

# statuses an aged position can have while it is under watch (``closed`` is not one)
# The statuses exported (others appear once a position has them).
WATCHED_STATUSES = (Status.DETECTED, Status.GRACE_ACTIVE, Status.PROGRESSIVE_ACTIVE, Status.ERROR, Status.SKIPPED)
# The phases exported by aged_positions_by_phase: those in which a position may close.
PHASES = (Phase.GRACE, Phase.PROGRESSIVE)
CLOSE_REASONS = ("profitable", "breakeven", "loss_acceptable", "max_loss", "emergency", "manual", "error")
CHILD_STATES = ("running", "restarting", "stopped", "exited", "crashed")

CLOSE_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 5, 10, 30, 60, 120, 300)  # seed 000 from 1 s up
AGE_HOURS_BUCKETS = (3, 6, 12, 24, 48, 72)  # seed 001
PNL_PERCENT_BUCKETS = (-10, -5, -2, -1, 0, 1, 2, 5, 10)  # seed 001
TICK_TO_ORDER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                         1, 2.5, 5, 10)
DETECTION_LAG_BUCKETS = (0.001, 0.01, 0.1, 1, 5, 30, 60, 300, 1800)


def _in_phase(counts: _Tally[str], phase: Phase) -> int:
    """How many of ``counts`` have a status of ``phase``."""
    return sum(n for status, n in counts.items() if PHASE_OF_STATUS.get(status) == phase)


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _trio_now() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:  # outside trio (a unit test publishing by hand)
        return None


class Metrics(Observer):
    """All of the service's Prometheus metrics; see the module docstring."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # --- aged positions (names from the design notes) ---------------------------------
        self.active = Gauge("aged_positions_active", "Aged positions under watch, by status", ["status"],
                            registry=r)
        self.total = Gauge("aged_positions_total", "Aged positions under watch (all statuses but closed)",
                           registry=r)
        self.by_phase = Gauge("aged_positions_by_phase", "Aged positions being managed, by policy phase",
                              ["phase"], registry=r)
        self.detected = Counter("aged_positions_detected_total", "Aged positions detected", registry=r)
        self.closed = Counter("aged_positions_closed_total", "Aged positions closed, by close reason",
                              ["close_reason"], registry=r)
        self.closes = Counter("aged_position_closes_total",
                              "Close outcomes: success=true a close completed, success=false every attempt failed",
                              ["phase", "reason", "success"], registry=r)
        self.phase_changes = Counter("aged_position_phase_changes_total", "Phase changes, by the phase entered",
                                     ["phase"], registry=r)
        self.close_duration = Histogram("aged_position_close_duration_seconds",
                                        "Seconds from close triggered to position flat",
                                        buckets=CLOSE_DURATION_BUCKETS, registry=r)
        self.age_hours = Histogram("aged_position_age_hours", "Age of positions when closed, hours",
                                   buckets=AGE_HOURS_BUCKETS, registry=r)
        self.pnl_percent = Histogram("aged_position_pnl_percent", "Net PnL percent of closed aged positions",
                                     buckets=PNL_PERCENT_BUCKETS, registry=r)
        self.accounts = AccountStreamMetrics(r)
        self.detection_lag = Histogram("aged_detection_lag_seconds",
                                       "Policy seconds from the aging instant to the aged position being created",
                                       buckets=DETECTION_LAG_BUCKETS, registry=r)
        # --- feeds ---------------------------------------------------------------------------
        self.feed_ticks = Counter("aged_feed_ticks_total", "Ticks received from the stream", ["exchange"],
                                  registry=r)
        self.feed_rest_ticks = Counter("aged_feed_rest_ticks_total", "Ticks from the REST fallback (stale symbols)",
                                       ["exchange"], registry=r)
        self.feed_reconnects = Counter("aged_feed_reconnects_total", "Stream reconnections", ["exchange"],
                                       registry=r)
        self.feed_malformed = Counter("aged_feed_malformed_messages_total", "Malformed stream messages",
                                      ["exchange"], registry=r)
        self.feed_suspects = Counter("aged_feed_suspect_quotes_total", "Stream quotes held as suspect (far from the "
                                     "last accepted price)", ["exchange"], registry=r)
        self.feed_stale_events = Counter("aged_feed_stale_events_total", "Times a symbol went stale", ["exchange"],
                                         registry=r)
        self.feed_connected = Gauge("aged_feed_connected", "1 when the stream is connected", ["exchange"],
                                    registry=r)
        self.feed_stale = Gauge("aged_feed_stale_symbols", "Subscribed symbols with no recent stream update",
                                ["exchange"], registry=r)
        self.feed_quote_age = Gauge("aged_feed_quote_age_seconds", "Seconds since the last tick of a symbol",
                                    ["exchange", "symbol"], registry=r)
        self.feed_max_quote_age = Gauge("aged_feed_max_quote_age_seconds",
                                        "Oldest last tick among the subscribed symbols, seconds", ["exchange"],
                                        registry=r)
        # --- executor --------------------------------------------------------------------------
        self.exec_attempts = Counter("aged_executor_attempts_total", "Close orders sent", ["exchange"], registry=r)
        self.exec_retries = Counter("aged_executor_retries_total", "Close orders that were not a first attempt",
                                    ["exchange"], registry=r)
        self.exec_lookups = Counter("aged_executor_lookups_total", "Orders looked up by client order id",
                                    registry=r)
        self.exec_errors = Counter("aged_executor_errors_total", "Exchange errors met while closing",
                                   ["exchange", "code"], registry=r)
        self.tick_to_order = Histogram("aged_tick_to_order_seconds",
                                       "Seconds from the triggering tick's arrival to the close order being sent",
                                       ["exchange"], buckets=TICK_TO_ORDER_BUCKETS, registry=r)
        # --- supervision -----------------------------------------------------------------------
        self.restarts = Counter("aged_supervisor_restarts_total", "Child restarts, by child kind", ["kind"],
                                registry=r)
        self.escalations = Counter("aged_supervisor_escalations_total", "Supervisor escalations reported on the bus",
                                   registry=r)
        self.sup_children = Gauge("aged_supervisor_children", "Children of a supervisor, by state",
                                  ["supervisor", "state"], registry=r)
        self.sup_healthy = Gauge("aged_supervisor_healthy", "1 when the supervisor runs with no critical child down",
                                 ["supervisor"], registry=r)
        # --- storage ----------------------------------------------------------------------------
        self.exchange_ban = Gauge("aged_exchange_ban_seconds",
                                  "Seconds until requests to an exchange may resume (rate limit / ban; 0: none)",
                                  ["exchange"], registry=r)
        self.exchange_bans = Counter("aged_exchange_bans_total", "Rate limits / bans that held requests back",
                                     ["exchange"], registry=r)
        self.buffer_depth = Gauge("aged_storage_write_buffer_depth", "Writes queued for PostgreSQL", registry=r)
        self.database_up = Gauge("aged_storage_database_up", "1 while the storage writer reaches PostgreSQL",
                                 registry=r)
        self.dropped_routine = Counter("aged_storage_dropped_routine_writes_total",
                                       "Routine price-check rows dropped because the write buffer was full",
                                       registry=r)
        self.rejected_writes = Counter("aged_storage_rejected_writes_total",
                                       "Writes PostgreSQL refused as invalid (dropped, logged)", registry=r)

        for status in WATCHED_STATUSES:
            self.active.labels(status=status).set(0)
        for phase in PHASES:
            self.by_phase.labels(phase=phase).set(0)
        for reason in CLOSE_REASONS:
            self.closed.labels(close_reason=reason)

        self.service: Any = None
        self._status: dict[Any, str] = {}  # aged_id -> status, for positions under watch
        self._counts: _Tally[str] = _Tally()
        self._triggered: dict[Any, float | None] = {}  # aged_id -> trio time of aged.close.triggered
        self._last: dict[tuple, int] = {}  # previous readings of the actors' cumulative counters
        self._quote_labels: dict[str, set[str]] = {}
        self._failures = LogLimiter(interval=60.0)
        self._unsubscribe: Callable[[], None] | None = None

    # --- wiring ---------------------------------------------------------------------------

    def attach(self, service: Any) -> None:
        """Watch a :class:`service.runtime.Service`: its observers and its event bus. Idempotent for one service.

        A second, different service is refused: one :class:`Metrics` describes one service.
        """
        if self.service is service:
            return
        if self.service is not None:
            raise RuntimeError("this Metrics is already attached to another service")
        self.service = service
        self._unsubscribe = service.bus.subscribe(self._guard("event", self._on_event))
        service.observers.add(self)
        self.refresh()

    def watch_alerts(self, router: Any) -> None:
        """Export an :class:`service.alerts.AlertRouter`'s delivery counters (read at scrape time)."""
        self.registry.register(_AlertCollector(router))

    def _guard(self, kind: str, fn: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - metrics must never break an actor
                self._log_failure(kind)
        guarded.__name__ = f"metrics_{kind}"
        return guarded

    def _log_failure(self, kind: str) -> None:
        if self._failures.allow(kind)[0]:
            log.exception("metrics %s hook failed (logged at most once a minute)", kind)

    # --- hooks ------------------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        kind = event.type
        if kind == DETECTED:
            self.detected.inc()
        elif kind == PHASE_CHANGED:
            self.phase_changes.labels(phase=str(event.data.get("phase") or "unknown")).inc()
        elif kind == CLOSE_TRIGGERED:
            self._triggered[event.aged_id] = _trio_now()
        elif kind == CLOSE_COMPLETED:
            self._on_close_completed(event)
        elif kind == CLOSE_FAILED:
            self._triggered.pop(event.aged_id, None)
            state = self._state(event.aged_id)
            self.closes.labels(phase=self._phase_at_trigger(state, event), reason="error", success="false").inc()
        elif kind == ESCALATION:
            self.escalations.inc()

    def _on_close_completed(self, event: Any) -> None:
        data = event.data or {}
        reason = str(data.get("close_reason") or "unknown")
        state = self._state(event.aged_id)
        self.closed.labels(close_reason=reason).inc()
        self.closes.labels(phase=self._phase_at_trigger(state, event), reason=reason, success="true").inc()
        started = self._triggered.pop(event.aged_id, None)
        now = _trio_now()
        duration: float | None = None
        if started is not None and now is not None:
            duration = now - started
        elif state is not None and state.close_triggered_at is not None:
            # triggered before this process saw it (a restart): policy time, back to real seconds
            speed = getattr(getattr(self.service, "clock", None), "speed", 1.0) or 1.0
            duration = (event.at - state.close_triggered_at).total_seconds() / speed
        if duration is not None and duration >= 0:
            self.close_duration.observe(duration)
        if state is not None:
            age = Decimal(str((event.at - state.opened_at).total_seconds())) / 3600
            self.age_hours.observe(float(age))
        pnl = _decimal(data.get("pnl_percent"))
        if pnl is not None:
            self.pnl_percent.observe(float(pnl))

    def _state(self, aged_id: Any) -> Any:
        if self.service is None:
            return None
        return self.service.registry.state(aged_id)

    @staticmethod
    def _phase_at_trigger(state: Any, event: Any) -> str:
        if state is None:
            return "unknown"
        at = state.close_triggered_at or event.at
        return assess(state.side, state.entry_price, state.opened_at, at, state.config).phase.value

    def state_changed(self, new: Any, old: Any) -> None:
        previous = self._status.get(new.aged_id)
        if previous == new.status:
            return
        if new.status == Status.CLOSED:
            self._status.pop(new.aged_id, None)
        else:
            self._status[new.aged_id] = new.status
        self._bump(previous, -1)
        self._bump(new.status, +1)
        self.total.set(sum(self._counts.values()))

    def _bump(self, status: str | None, delta: int) -> None:
        if status is None or status == Status.CLOSED:
            return
        self._counts[status] = max(0, self._counts[status] + delta)
        self.active.labels(status=status).set(self._counts[status])
        phase = PHASE_OF_STATUS.get(status)
        if phase in PHASES:
            self.by_phase.labels(phase=phase).set(_in_phase(self._counts, phase))

    def order_submitted(self, exchange: str, tick_to_order_seconds: float) -> None:
        if tick_to_order_seconds >= 0:
            self.tick_to_order.labels(exchange=exchange).observe(tick_to_order_seconds)

    def exchange_error(self, exchange: str, code: str) -> None:
        self.exec_errors.labels(exchange=exchange, code=str(code)).inc()

    def close_attempted(self, exchange: str, attempt: int) -> None:
        self.exec_attempts.labels(exchange=exchange).inc()
        if attempt > 1:
            self.exec_retries.labels(exchange=exchange).inc()

    def write_buffer_depth(self, depth: int) -> None:
        self.buffer_depth.set(depth)

    def position_detected(self, lag_seconds: float) -> None:
        self.detection_lag.observe(max(0.0, float(lag_seconds)))

    def child_restarted(self, spec: Any, count: int) -> None:
        self.restarts.labels(kind=getattr(spec, "kind", "unknown")).inc()

    # --- periodic refresh -------------------------------------------------------------------

    async def run_refresher(self, service: Any = None, interval: float = 5.0, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh the state-derived metrics every ``interval`` seconds, forever.

        Attaches ``service`` first if it is given and not attached yet.
        """
        if service is not None:
            self.attach(service)
        task_status.started()
        while True:
            self.refresh()
            await trio.sleep(interval)

    def refresh(self) -> None:
        """Recompute what is read from state rather than counted from events. Never raises."""
        if self.service is None:
            return
        for kind, step in (("recount", self._recount), ("feeds", self._refresh_feeds),
                           ("executor", self._refresh_executor), ("storage", self._refresh_storage),
                           ("exchanges", self._refresh_exchanges),
                           ("accounts", lambda: self.accounts.refresh(self.service)),
                           ("supervisors", self._refresh_supervisors)):
            try:
                step()
            except Exception:  # noqa: BLE001 - one broken part must not hide the others
                self._log_failure(kind)

    def _recount(self) -> None:
        fresh: dict[Any, str] = {}
        for aged_id, state in self.service.registry.states().items():
            if state.status == Status.CLOSED:
                continue
            fresh[aged_id] = state.status
        counts = _Tally(fresh.values())
        for status in set(WATCHED_STATUSES) | set(self._counts) | set(counts):
            self.active.labels(status=status).set(counts.get(status, 0))
        for phase in PHASES:
            self.by_phase.labels(phase=phase).set(_in_phase(counts, phase))
        self.total.set(sum(counts.values()))
        self._status, self._counts = fresh, counts

    def _delta(self, counter: Any, key: tuple, value: int) -> None:
        """Add to ``counter`` what a cumulative reading grew by since the last one."""
        last = self._last.get(key, 0)
        grown = value - last if value >= last else value  # a smaller reading: the source started afresh
        if grown > 0:
            counter.inc(grown)
        self._last[key] = value

    def _refresh_feeds(self) -> None:
        for name, feed in self.service.feeds.items():
            stats = getattr(feed, "stats", None)
            if stats is None:
                continue
            self._delta(self.feed_ticks.labels(exchange=name), ("ticks", name), stats.ticks)
            self._delta(self.feed_rest_ticks.labels(exchange=name), ("rest_ticks", name), stats.rest_ticks)
            self._delta(self.feed_reconnects.labels(exchange=name), ("reconnects", name), stats.reconnects)
            self._delta(self.feed_malformed.labels(exchange=name), ("malformed", name), stats.malformed)
            self._delta(self.feed_stale_events.labels(exchange=name), ("stale_events", name), stats.stale_events)
            self._delta(self.feed_suspects.labels(exchange=name), ("suspects", name), getattr(stats, "suspects", 0))
            self.feed_connected.labels(exchange=name).set(1 if stats.connected else 0)
            self.feed_stale.labels(exchange=name).set(len(stats.stale_symbols))
            symbols: Iterable[str] = getattr(feed, "symbols", None) or list(stats.last_tick_at)
            now = _trio_now()
            ages: dict[str, float] = {}
            for symbol in symbols:
                age = stats.quote_age(symbol, now)
                if age is not None:
                    ages[symbol] = max(0.0, age)
            for symbol, age in ages.items():
                self.feed_quote_age.labels(exchange=name, symbol=symbol).set(age)
            for gone in self._quote_labels.get(name, set()) - set(ages):
                try:
                    self.feed_quote_age.remove(name, gone)
                except KeyError:
                    pass
            self._quote_labels[name] = set(ages)
            self.feed_max_quote_age.labels(exchange=name).set(max(ages.values(), default=0.0))

    def _refresh_executor(self) -> None:
        ex = self.service.executor
        stats = ex.stats
        self._delta(self.exec_lookups, ("lookups",), stats.lookups)  # attempts: close_attempted

    def _refresh_exchanges(self) -> None:
        for name, ex in (getattr(self.service, "exchanges", None) or {}).items():
            port = ex if hasattr(ex, "ban_remaining") else getattr(ex, "inner", None)
            if port is None or not hasattr(port, "ban_remaining"):
                continue
            self.exchange_ban.labels(exchange=name).set(port.ban_remaining())
            self._delta(self.exchange_bans.labels(exchange=name), ("bans", name), getattr(port, "bans", 0))

    def _refresh_storage(self) -> None:
        writer = self.service.writer
        self.buffer_depth.set(writer.depth)
        self.database_up.set(1 if writer.database_up else 0)
        self._delta(self.dropped_routine, ("dropped_routine",), writer.dropped_routine)
        self._delta(self.rejected_writes, ("rejected",), getattr(writer, "rejected", 0))

    def _refresh_supervisors(self) -> None:
        for name, sup in (("root", self.service.root), ("positions", self.service.positions)):
            states = _Tally(child.state for child in sup.children().values())
            for state in CHILD_STATES:
                self.sup_children.labels(supervisor=name, state=state).set(states.get(state, 0))
            self.sup_healthy.labels(supervisor=name).set(1 if sup.healthy() else 0)


class _AlertCollector:
    """Reads an AlertRouter's per-sink counters at scrape time (counted there, once)."""

    def __init__(self, router: Any):
        self.router = router

    def describe(self) -> list:
        return []  # names are fixed, values only at collect time

    def collect(self):
        fams = {
            "delivered": CounterMetricFamily("aged_alerts_delivered", "Alerts delivered, by sink", labels=["sink"]),
            "failed": CounterMetricFamily("aged_alerts_failed", "Alerts given up on after every retry, by sink",
                                          labels=["sink"]),
            "retries": CounterMetricFamily("aged_alerts_retries", "Alert delivery retries, by sink", labels=["sink"]),
            "dropped": CounterMetricFamily("aged_alerts_dropped", "Alerts dropped because a sink's queue was full",
                                           labels=["sink"]),
        }
        queued = GaugeMetricFamily("aged_alerts_queued", "Alerts waiting in a sink's queue", labels=["sink"])
        for sink in self.router.sinks:
            for key, fam in fams.items():
                attr = "retries_made" if key == "retries" else key
                fam.add_metric([sink.name], getattr(sink, attr, 0))
            queued.add_metric([sink.name], sink.queued)
        yield from fams.values()
        yield queued
