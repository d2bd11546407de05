"""The HTTP endpoint (``/metrics``, ``/health``, ``/stats``) and the wiring of observability.

A starlette app served by hypercorn on trio (:func:`hypercorn.trio.serve`):

``GET /metrics``
    Prometheus text exposition of the :class:`service.metrics.Metrics` registry
    (refreshed at each scrape).
``GET /health``
    JSON with every child of the ``root`` and ``positions`` supervisors (state,
    restarts, kind, critical, last error), how many aged positions have a position
    actor and how many of those watch (``actors``, from the actor registry), and the
    storage writer's state. **503**
    when the root supervisor is not running/healthy or a critical child of either
    supervisor has crashed for good; else **200**. A database outage alone is not
    unhealthy: the service keeps monitoring and closing (its writes are buffered),
    and ``storage.database_up`` says so. Nor is an account stream that is not healthy
    (``accounts``; a warning): positions and fills are then read over REST.
``GET /stats?days=7``
    :meth:`storage.repository.Database.statistics` as JSON (Decimals as strings,
    datetimes ISO 8601). **400** for a bad ``days``; **503** with
    ``{"error": ...}`` when the database does not answer within ``stats_timeout``.
``GET /`` and ``/api/...``
    The operator console and its API (:mod:`service.console`).

One instance, several accounts: :func:`instance_app` serves the same three paths for an
instance that runs one service per account it holds a lease for. ``/metrics`` is every
account's registry merged under an ``account`` label plus the lease gauges
(:class:`service.account_labels.InstanceMetrics`); ``/health`` is
``{"status", "instance", "leases", "accounts": {account: <that service's body above>}}``,
503 exactly when a running account service would answer 503 on its own (a standby
holding nothing is healthy); ``/stats`` is as above.

Wiring, from the CLI (one entry point, :class:`Observability`; ``service.app.build_service``
does this): build it first and hand its children to the Service (they find the service
when they start, so ``attach`` must come before ``run``)::

    obs = Observability(http_port=cfg.metrics_port or None,       # config 0 -> disabled
                        alerts=alert_router_from_env(webhook_url_env=cfg.webhook_url_env,
                                                     telegram=cfg.telegram))
    service = Service(db, exchanges, feeds, config, clock, extra_children=obs.children())
    obs.attach(service)
    code = await service.run()
    await obs.flush_alerts(5)        # e.g. the escalation alert, after the tree stopped

Ports: :func:`http_child` / :class:`HttpEndpoint` bind the port they are given;
``0`` means an ephemeral port (tests), learnt from :attr:`HttpEndpoint.port` or
``await endpoint.wait_bound()``. The CLI's "``port = 0`` disables the endpoint" is
expressed as ``http_port=None`` here.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import Counter
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Callable
from uuid import UUID

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.account_labels import InstanceMetrics
from service.account_metrics import account_health
from service.alerts import AlertRouter
from service.console import console_routes
from service.metrics import Metrics
from supervisor import ChildSpec, Restart

log = logging.getLogger("service.http")


# --- JSON --------------------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
    """Plain JSON types: Decimal → str, datetime/date → ISO 8601, UUID → str."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(jsonable(body), separators=(",", ":")), status_code=status,
                    media_type="application/json")


# --- the app -----------------------------------------------------------------------------------

def _resolver(target: Any) -> Callable[[], Any]:
    """``target`` is the service (anything with ``root``; ``positions``, ``db``, ``writer``
    optional) or a zero-argument callable returning it."""
    if callable(target) and not hasattr(target, "root"):
        return target
    return lambda: target


def _children(sup: Any) -> dict[str, dict[str, Any]]:
    return {cid: {"state": c.state, "restarts": c.restarts, "kind": c.kind, "critical": c.critical,
                  "restart": getattr(c.restart, "value", str(c.restart)), "last_error": c.last_error}
            for cid, c in sup.children().items()}


def exchange_bans(service: Any) -> dict[str, dict[str, Any]]:
    """Per exchange: whether requests are held back by a rate limit or ban, and for how long."""
    out: dict[str, dict[str, Any]] = {}
    for name, ex in (getattr(service, "exchanges", None) or {}).items():
        port = ex if hasattr(ex, "ban_state") else getattr(ex, "inner", None)  # a dry run wraps the adapter
        if port is None or not hasattr(port, "ban_state"):
            continue
        state = port.ban_state()
        out[name] = {"banned": state is not None, **(state or {})}
    return out


def health_report(service: Any) -> tuple[bool, dict[str, Any]]:
    """``(healthy, body)`` of one service: the whole ``/health`` of the single-service app,
    and one account's entry in the instance app's (:func:`instance_app`)."""
    problems: list[str] = []
    supervisors: dict[str, Any] = {}
    root = service.root
    for name, sup in (("root", root), ("positions", getattr(service, "positions", None))):
        if sup is None:
            continue
        children = _children(sup)
        supervisors[name] = {
            "running": bool(getattr(sup, "running", False)),
            "healthy": sup.healthy(),
            "states": dict(Counter(c["state"] for c in children.values())),
            "children": children,
        }
        for cid, child in children.items():
            if child["critical"] and child["state"] == "crashed":
                problems.append(f"{name}/{cid} crashed: {child['last_error']}")
    if not root.healthy():
        problems.insert(0, "root supervisor is not running" if not getattr(root, "running", False)
                        else "root supervisor is not healthy")
    body: dict[str, Any] = {"status": "ok" if not problems else "unhealthy", "problems": problems,
                            "supervisors": supervisors}
    bans = exchange_bans(service)
    if bans:
        body["exchanges"] = bans
        # Visible, but not a 503: restarting the service cannot lift a ban.
        warnings = [f"{name}: requests held back for {b['seconds_left']}s (rate limit / ban: {b['reason']})"
                    for name, b in bans.items() if b["banned"]]
        if warnings:
            body["warnings"] = warnings
    accounts = account_health(service)
    if accounts:
        body["accounts"] = accounts
        down = [f"{name}: account stream not healthy ({a['state']}); positions and fills from REST"
                for name, a in accounts.items() if not a["healthy"]]
        if down:
            body.setdefault("warnings", []).extend(down)
    registry = getattr(service, "registry", None)
    if registry is not None:
        body["actors"] = {"with_actor": len(registry), "watching": registry.watching()}
    writer = getattr(service, "writer", None)
    if writer is not None:
        body["storage"] = {"database_up": writer.database_up, "write_buffer_depth": writer.depth,
                           "dropped_routine": writer.dropped_routine}
    return not problems, body


def create_app(metrics: Metrics | None, target: Any, *, stats_timeout: float = 5.0,
               max_days: float = 3650) -> Starlette:
    """The starlette app. ``target``: see :func:`_resolver`."""
    resolve = _resolver(target)

    async def metrics_endpoint(request: Request) -> Response:
        if metrics is None:
            return _json({"error": "metrics are not enabled"}, 404)
        metrics.refresh()
        return _metrics_response(request, metrics.registry)

    async def health(request: Request) -> Response:
        ok, body = health_report(resolve())
        return _json(body, 200 if ok else 503)

    async def stats(request: Request) -> Response:
        return await _stats(request, getattr(resolve(), "db", None), stats_timeout=stats_timeout, max_days=max_days)

    return Starlette(routes=[
        Route("/metrics", metrics_endpoint), Route("/health", health), Route("/stats", stats),
        *console_routes(resolve, _json),
    ])


async def _stats(request: Request, db: Any, *, stats_timeout: float, max_days: float) -> Response:
    """``/stats?days=N`` from ``db``: 400 for a bad ``days``, 503 when the database does not answer."""
    raw = request.query_params.get("days", "7")
    try:
        days = float(raw)
    except ValueError:
        days = float("nan")
    if not math.isfinite(days) or not 0 < days <= max_days:
        return _json({"error": f"days must be a number in (0, {max_days:g}]"}, 400)
    if db is None:
        return _json({"error": "no database"}, 503)
    try:
        with trio.fail_after(stats_timeout):
            result = await db.statistics(days)
    except Exception as exc:  # noqa: BLE001 - any database trouble is a 503
        detail = "timed out" if isinstance(exc, trio.TooSlowError) else type(exc).__name__
        log.warning("/stats: database unavailable (%s)", detail)
        return _json({"error": "database unavailable", "detail": detail}, 503)
    return _json(result)


def _metrics_response(request: Request, registry: Any) -> Response:
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))  # 0.0.4 text unless asked
    return Response(encoder(registry), headers={"Content-Type": content_type})


# --- the instance app -------------------------------------------------------------------------

def instance_health(instance: Any) -> tuple[bool, dict[str, Any]]:
    """``(healthy, body)`` for the instance's ``/health``.

    ``body``: ``status`` (``"ok"``, or ``"degraded"`` when a running account service is
    unhealthy), ``instance`` (its name), ``leases`` (``instance.leases()``: account ->
    held_by_me, holder, token, live, expires_at), ``accounts`` (account -> that
    service's :func:`health_report` body; only the services running here) and
    ``problems`` (each unhealthy service's problems, prefixed with its account).
    Unhealthy exactly when one of the running services is; a standby holding nothing is
    healthy.
    """
    accounts: dict[str, Any] = {}
    problems: list[str] = []
    for account, service in sorted(instance.services().items()):
        ok, body = health_report(service)
        accounts[account] = body
        if not ok:
            problems.extend(f"{account}: {p}" for p in body["problems"])
    healthy = not problems
    return healthy, {"status": "ok" if healthy else "degraded", "instance": instance.name,
                     "leases": instance.leases(), "accounts": accounts, "problems": problems}


def instance_app(instance: Any, *, metrics: InstanceMetrics | None = None, stats_timeout: float = 5.0,
                 max_days: float = 3650) -> Starlette:
    """The starlette app of one instance running a service per account it holds a lease for.

    ``instance`` has ``name``, ``leases() -> dict[str, dict]``, ``services() -> dict[str,
    Service]`` (the running per-account services) and ``db``. ``metrics`` (default:
    ``instance.metrics`` when it has one) is served at ``/metrics``: every account's
    metrics with an ``account`` label and the lease gauges
    (:class:`~service.account_labels.InstanceMetrics`); 404 when there is none.
    ``/health`` is :func:`instance_health` (503 when unhealthy), ``/stats`` reads
    ``instance.db`` as the single-service app does.
    """
    served = metrics if metrics is not None else getattr(instance, "metrics", None)

    async def metrics_endpoint(request: Request) -> Response:
        if served is None:
            return _json({"error": "metrics are not enabled"}, 404)
        served.refresh()
        return _metrics_response(request, served.registry)

    async def health(request: Request) -> Response:
        ok, body = instance_health(instance)
        return _json(body, 200 if ok else 503)

    async def stats(request: Request) -> Response:
        return await _stats(request, getattr(instance, "db", None), stats_timeout=stats_timeout, max_days=max_days)

    return Starlette(routes=[
        Route("/metrics", metrics_endpoint), Route("/health", health), Route("/stats", stats),
        *console_routes(lambda: instance, _json),
    ])


def instance_endpoint(instance: Any, *, metrics: InstanceMetrics | None = None, host: str = "127.0.0.1",
                      port: int = 9108, stats_timeout: float = 5.0) -> HttpEndpoint:
    """An :class:`HttpEndpoint` serving :func:`instance_app`; port 0 = ephemeral."""
    return HttpEndpoint(instance_app(instance, metrics=metrics, stats_timeout=stats_timeout), host=host, port=port)


# --- serving -----------------------------------------------------------------------------------

class HttpEndpoint:
    """Serves an ASGI app with hypercorn on trio; ``port=0`` binds an ephemeral port.

    ``await endpoint.run()`` serves until cancelled (``task_status.started(port)``).
    :attr:`port` is the bound port while it runs; :meth:`wait_bound` waits for it.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 9108, graceful_timeout: float = 1.0):
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.app = app
        self.host = host
        self.requested_port = port
        self.graceful_timeout = graceful_timeout
        self.port: int | None = None
        self._bound = trio.Event()

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def wait_bound(self) -> int:
        await self._bound.wait()
        assert self.port is not None
        return self.port

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        config = HypercornConfig()
        host = f"[{self.host}]" if ":" in self.host else self.host
        config.bind = [f"{host}:{self.requested_port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = self.graceful_timeout
        config.include_server_header = False
        try:
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(functools.partial(hypercorn_serve, self.app, config))
                self.port = int(binds[0].rsplit(":", 1)[1])
                self._bound.set()
                log.info("HTTP endpoint on %s (the console at /; /metrics /health /stats)", self.url)
                task_status.started(self.port)
        finally:
            self.port = None
            if self._bound.is_set():
                self._bound = trio.Event()

    def child(self, child_id: str = "http") -> ChildSpec:
        """A permanent, non-critical child spec (a crash is restarted; trading health is unaffected)."""
        return ChildSpec(child_id, self.run, Restart.PERMANENT, kind="http", critical=False)


def http_endpoint(service: Any, metrics: Metrics | None, *, host: str = "127.0.0.1", port: int = 9108,
                  stats_timeout: float = 5.0) -> HttpEndpoint:
    """An endpoint for ``service`` (or a zero-argument callable returning it); port 0 = ephemeral."""
    return HttpEndpoint(create_app(metrics, service, stats_timeout=stats_timeout), host=host, port=port)


def http_child(service: Any, metrics: Metrics | None, *, host: str = "127.0.0.1", port: int = 9108) -> ChildSpec:
    """The HTTP endpoint as a supervised child. ``port=0`` binds an ephemeral port (to learn
    it, use :func:`http_endpoint` and its :attr:`~HttpEndpoint.port`). Never pass the CLI's
    "0 = disabled" here: leave the child out instead."""
    return http_endpoint(service, metrics, host=host, port=port).child()


# --- the single entry point ----------------------------------------------------------------------

class Observability:
    """Metrics, the HTTP endpoint and alerts for one service; see the module docstring.

    ``http_port=None`` disables the endpoint; ``0`` binds an ephemeral port.
    """

    def __init__(self, *, metrics: Metrics | None = None, http_host: str = "127.0.0.1",
                 http_port: int | None = 9108, alerts: AlertRouter | None = None, refresh_interval: float = 5.0,
                 stats_timeout: float = 5.0):
        self.metrics = metrics if metrics is not None else Metrics()
        self.alerts = alerts
        self.refresh_interval = refresh_interval
        self.service: Any = None
        self._unsubscribe_alerts: Callable[[], None] | None = None
        self.endpoint = (http_endpoint(self._service, self.metrics, host=http_host, port=http_port,
                                       stats_timeout=stats_timeout)
                         if http_port is not None else None)
        if alerts is not None:
            self.metrics.watch_alerts(alerts)

    def _service(self) -> Any:
        if self.service is None:
            raise RuntimeError("Observability.attach(service) must be called before the service runs")
        return self.service

    def attach(self, service: Any) -> None:
        """Wire the metrics hooks and subscribe the alerts to the service's bus (once)."""
        if self.service is not None and self.service is not service:
            raise RuntimeError("already attached to another service")
        self.service = service
        self.metrics.attach(service)
        if self.alerts is not None and self._unsubscribe_alerts is None:
            self._unsubscribe_alerts = self.alerts.subscribe(service.bus)

    async def _refresh(self) -> None:
        await self.metrics.run_refresher(self._service(), self.refresh_interval)

    def children(self) -> list[ChildSpec]:
        """The supervised children to pass as ``Service(..., extra_children=...)``."""
        specs = [ChildSpec("metrics", self._refresh, Restart.PERMANENT, kind="metrics", critical=False)]
        if self.endpoint is not None:
            specs.append(self.endpoint.child())
        if self.alerts is not None:
            specs.append(self.alerts.child())
        return specs

    async def flush_alerts(self, timeout: float = 5.0) -> bool:
        """Deliver queued alerts (e.g. an escalation) after the service stopped; True if all went out."""
        return True if self.alerts is None else await self.alerts.flush(timeout)


__all__ = ["HttpEndpoint", "Observability", "create_app", "health_report", "http_child", "http_endpoint",
           "instance_app", "instance_endpoint", "instance_health", "jsonable"]
