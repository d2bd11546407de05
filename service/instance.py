"""One running instance: the accounts it holds a lease for, each managed by its own service.

Several instances may run on one database (a standby for every deploy, or many
instances sharing many accounts). Exactly one of them acts for an account at a
time: the one holding that account's lease (:mod:`storage.lease_store`). What
that means, in the order things happen:

* The instance opens every account's exchange client at start (markets loaded),
  announces itself, and looks at the leases. It takes free or expired leases up to
  its share (``ceil(accounts / live instances)``, or ``[leases] max_accounts``; see
  :func:`supervisor.leases.plan`); the rest it watches, and logs that it stands by.
* For every lease it takes, it starts that account's :class:`~service.runtime.Service`
  (writer, executor, feeds, account stream, detector, position actors) as a child of
  its ``accounts`` supervisor. The service starts exactly as after a restart: it
  reloads the aged positions from the database and resolves the close orders that
  were in flight, by client order id.
* Every ``renew_interval`` it renews all its leases in one round trip. The database
  decides expiry (``now()``). Locally each lease has a deadline (the send time of the
  last renewal that succeeded, plus the lease time, minus a margin): past it, the
  account's service is cancelled even if nothing else noticed, so a holder that lost
  its database stops acting before anybody else can take the lease.
* Every write of a held account carries the lease's fencing token, and the database
  refuses a write-ahead row (so an order) whose token is no longer the holder's.
* On SIGTERM the services stop and the leases are released at once, so a standby
  takes over without waiting for them to expire.

::

    instance (one_for_one)
    ├── alerts          permanent   (one alert router for every account)
    ├── http            permanent   (/metrics /health /stats for the whole instance)
    ├── accounts        permanent supervisor
    │   └── account:<name> …  transient, one per held lease: that account's Service
    └── leases          permanent   renews, plans, takes and gives up leases
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import trio

from actors.clock import PolicyClock
from exchanges.port import ExchangePort
from service.account_labels import InstanceMetrics
from service.alerts import AlertRouter, alert_router_from_env
from service.app import (
    HEDGE_MODE_HELP,
    exchanges_open,
    hedge_mode_accounts,
    make_account_streams,
    make_exchange,
    make_feeds,
    run_service,
)
from service.config import AppConfig
from service.http import Observability, instance_endpoint
from service.logs import ACCOUNT
from service.runtime import Service
from supervisor import ChildSpec, Restart, Supervisor, run_root
from supervisor.leases import LeaseDeadline, plan

log = logging.getLogger("service.instance")


class AccountGaveUp(Exception):
    """An account's supervision tree exceeded its restart intensity."""


@dataclass
class _Held:
    """What this instance knows of one lease it holds."""

    token: int
    service: Service | None = None


@dataclass
class Instance:
    """The instance; see the module docstring.

    ``ports`` (account -> exchange client) are opened by :meth:`run`. ``clock`` is the
    policy clock every account's service uses.
    """

    config: AppConfig
    db: Any
    ports: Mapping[str, ExchangePort]
    dry_run: bool = False
    http_port: int | None = None
    clock: PolicyClock = field(default_factory=PolicyClock)
    alerts: AlertRouter | None = None

    def __post_init__(self) -> None:
        leases = self.config.leases
        self.name = leases.instance_name()
        self.accounts = {e.account: e for e in self.config.exchanges}
        self.held: dict[str, _Held] = {}
        self.deadline = LeaseDeadline(leases)
        self.table: dict[str, Any] = {}  # account -> the last LeaseInfo seen
        self.live_instances: tuple[str, ...] = ()
        self.metrics = InstanceMetrics()
        self.standing_by: dict[str, str] = {}  # account -> holder we last logged standing by for
        self.lease_errors = 0
        if self.alerts is None:
            alerts = self.config.alerts
            self.alerts = alert_router_from_env(
                webhook_url_env=alerts.webhook_url_env, telegram=alerts.telegram, notify=alerts.notify
            )
        self.account_supervisor = Supervisor(
            "accounts", intensity=self.config.supervision.root_intensity, period=self.config.supervision.root_period
        )
        children = [
            self.alerts.child(),
            ChildSpec("accounts", self.account_supervisor.run, Restart.PERMANENT, kind="supervisor"),
            ChildSpec("leases", self.keep_leases, Restart.PERMANENT, kind="leases"),
        ]
        self.endpoint = None
        if self.http_port is not None:
            self.endpoint = instance_endpoint(
                self, metrics=self.metrics, host=getattr(self.config.metrics, "host", "127.0.0.1"), port=self.http_port
            )
            children.insert(1, self.endpoint.child())
        supervision = self.config.supervision
        self.root = Supervisor(
            "instance",
            children,
            intensity=supervision.root_intensity,
            period=supervision.root_period,
            backoff_initial=supervision.root_backoff_initial,
            backoff_max=supervision.root_backoff_max,
        )

    # --- what /health and /metrics read -------------------------------------------------------

    def services(self) -> dict[str, Service]:
        """The running services, by account."""
        return {name: h.service for name, h in self.held.items() if h.service is not None}

    @property
    def feeds(self) -> dict[str, Any]:
        """A running feed per exchange (for the console's live prices; any account's will do)."""
        return {exchange: feed for service in self.services().values() for exchange, feed in service.feeds.items()}

    def leases(self) -> dict[str, dict[str, Any]]:
        """Per configured account: whether this instance holds it, and the lease as last seen."""
        out = {}
        for name in self.accounts:
            info = self.table.get(name)
            out[name] = {
                "held_by_me": name in self.held,
                "holder": getattr(info, "holder", None),
                "token": self.held[name].token if name in self.held else getattr(info, "token", None),
                "live": bool(getattr(info, "live", False)),
                "expires_at": getattr(info, "expires_at", None),
            }
        return out

    # --- running --------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until :meth:`shutdown` (0) or escalation (1); leases are released on the way out."""
        try:
            return await run_root(self.root)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await self.db.leave(self.name)
                    log.info("leases released: %s", ", ".join(sorted(self.held)) or "none held")
                except Exception as exc:  # noqa: BLE001 - the leases then expire on their own
                    log.warning(
                        "could not release the leases (%s: %s); they expire in %.1f s",
                        type(exc).__name__,
                        exc,
                        self.config.leases.ttl,
                    )

    def shutdown(self) -> None:
        self.root.shutdown()

    def lease_token(self, account: str) -> int | None:
        """The fencing token of ``account`` while this instance may act for it, else None."""
        held = self.held.get(account)
        if held is None or not self.deadline.valid(account, trio.current_time()):
            return None
        return held.token

    # --- the lease keeper -------------------------------------------------------------------------

    async def keep_leases(self) -> None:
        """Renew, plan, take and give up leases every ``renew_interval`` seconds."""
        interval = self.config.leases.renew_interval
        first = not self.live_instances
        await self._round(take=not first)
        if first:
            # Announced: one interval lets instances starting together see each other
            # before anyone takes more than its share.
            await trio.sleep(interval)
        while True:
            await self._round(take=True)
            await trio.sleep(interval)

    async def _round(self, *, take: bool) -> None:
        leases = self.config.leases
        sent = trio.current_time()
        tokens = {name: h.token for name, h in self.held.items()}
        try:
            with trio.fail_after(max(leases.ttl - leases.renew_interval, leases.renew_interval)):
                result = await self.db.lease_round(self.name, tokens, leases.ttl)
        except (Exception, trio.TooSlowError) as exc:  # noqa: BLE001 - a database away: deadlines decide
            self.lease_errors += 1
            if self.lease_errors == 1 or self.lease_errors % 20 == 0:
                log.warning(
                    "lease renewal failed (%s: %s); holding %s until the deadline",
                    type(exc).__name__,
                    exc,
                    ", ".join(sorted(self.held)) or "nothing",
                )
            await self._drop_expired()
            return
        if self.lease_errors:
            log.info("lease renewal works again after %d failures", self.lease_errors)
            self.lease_errors = 0
        self.table = dict(result.leases)
        self.live_instances = tuple(result.live_instances)
        for name in list(self.held):
            if name in result.held:
                self.deadline.renewed(name, sent)
            else:
                info = self.table.get(name)
                await self._lose(name, f"taken by {getattr(info, 'holder', 'another instance')}")
        await self._drop_expired()
        await self._restart_missing()
        self.metrics.update_lease_metrics(result, self.name, tuple(self.accounts))
        if not take:
            self._log_standing_by()
            return
        decided = plan(
            accounts=tuple(self.accounts),
            me=self.name,
            held={name: h.token for name, h in self.held.items()},
            leases=self.table,
            live_instances=self.live_instances,
            max_accounts=leases.max_accounts,
        )
        for name in decided.release:
            await self._release(name)
        for name in decided.acquire:
            await self._acquire(name)
        self._log_standing_by()

    async def _restart_missing(self) -> None:
        """Start again the service of any account still held whose child is gone (its
        supervisor gave up and was itself restarted)."""
        if not self.account_supervisor.running:
            return
        for name in list(self.held):
            if not self.account_supervisor.has_child(f"account:{name}"):
                log.warning("%s: the account's service is not running; starting it again", name)
                await self._start_account(name)

    async def _start_account(self, name: str) -> None:
        await self.account_supervisor.start_child(
            ChildSpec(f"account:{name}", functools.partial(self._run_account, name), Restart.TRANSIENT, kind="account")
        )

    async def _acquire(self, name: str) -> None:
        sent = trio.current_time()
        try:
            token = await self.db.acquire_lease(name, self.name, self.config.leases.ttl)
        except Exception as exc:  # noqa: BLE001 - tried again next round
            log.warning("%s: could not take the lease (%s: %s)", name, type(exc).__name__, exc)
            return
        if token is None:
            return
        self.held[name] = _Held(token)
        self.deadline.renewed(name, sent)
        self.standing_by.pop(name, None)
        log.info("%s: lease taken (token %d); managing the account", name, token)
        await self._start_account(name)

    async def _lose(self, name: str, why: str) -> None:
        log.warning("%s: lease lost (%s); stopping the account's service", name, why)
        await self._stop(name)

    async def _release(self, name: str) -> None:
        if name not in self.held:
            return
        log.info("%s: giving the lease up so the accounts spread over the instances", name)
        held = await self._stop(name)
        try:
            await self.db.release_lease(name, self.name, held.token)
        except Exception as exc:  # noqa: BLE001 - it then expires on its own
            log.warning("%s: could not release the lease (%s: %s)", name, type(exc).__name__, exc)

    async def _stop(self, name: str) -> _Held:
        """Stop the account's service and forget the lease here; what was held."""
        await self.account_supervisor.stop_child(f"account:{name}")
        self.deadline.forget(name)
        return self.held.pop(name)

    async def _drop_expired(self) -> None:
        for name in self.deadline.expired(trio.current_time()):
            if name in self.held:
                await self._lose(name, "not renewed in time")

    def _log_standing_by(self) -> None:
        for name in self.accounts:
            if name in self.held:
                continue
            info = self.table.get(name)
            holder = getattr(info, "holder", None) if getattr(info, "live", False) else None
            if holder and self.standing_by.get(name) != holder:
                self.standing_by[name] = holder
                log.info("%s: standing by; the account is managed by %s", name, holder)

    # --- one account ------------------------------------------------------------------------------

    async def _run_account(self, name: str) -> None:
        """The account's service, for as long as the lease is ours (a transient child)."""
        if self.lease_token(name) is None:
            return
        ACCOUNT.set(name)
        held = self.held[name]
        cfg = self.accounts[name]
        app = self.config.for_account(name)
        port = self.ports[name]
        exchanges = {cfg.name: port}
        feeds = make_feeds(exchanges, {cfg.name: cfg.ws_url}, app.feeds)
        streams = make_account_streams(app, exchanges, dry_run=self.dry_run)
        obs = Observability(http_port=None)
        db = self.db.for_account(name, lease_token=functools.partial(self.lease_token, name))
        service = Service(
            db,
            exchanges,
            feeds,
            app,
            self.clock,
            extra_children=obs.children(),
            accounts=streams,
            may_send=lambda: self.lease_token(name) is not None,
        )
        obs.attach(service)
        held.service = service
        unsubscribe = self.alerts.subscribe(service.bus) if self.alerts is not None else None
        self.metrics.add_account(name, obs.metrics)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_deadline, name, nursery.cancel_scope)
                code = await service.run()
                nursery.cancel_scope.cancel()
            if code != 0:
                raise AccountGaveUp(f"account {name}: its supervision tree gave up (restart intensity exceeded)")
        finally:
            held.service = None
            self.metrics.remove_account(name)
            if unsubscribe is not None:
                unsubscribe()

    async def _watch_deadline(self, name: str, scope: trio.CancelScope) -> None:
        """Cancel the account's service at the lease deadline, whoever else noticed or not."""
        while True:
            until = self.deadline.deadline(name)
            if until is None or trio.current_time() >= until:
                log.warning("%s: lease deadline passed; the account's service stops", name)
                scope.cancel()
                return
            await trio.sleep_until(until)


async def run_instance(app: AppConfig, db: Any, *, dry_run: bool, metrics_port: int | None = None) -> int:
    """``run.py live``: every configured account, each acted on only under its lease."""
    ports = {e.account: make_exchange(e, dry_run=dry_run) for e in app.exchanges}
    db.update_bot_book = app.database.update_bot_book and not dry_run  # a dry run writes nothing of the bot's
    log.info(
        "starting %s mode on %s",
        "DRY-RUN (nothing is sent)" if dry_run else "LIVE",
        ", ".join(_account_text(e) for e in app.exchanges),
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(exchanges_open(ports))
        hedged = await hedge_mode_accounts(ports)
        for name in hedged:
            log.critical("%s: the account is in hedge mode; %s", name, HEDGE_MODE_HELP)
        if hedged:
            return 2
        port = app.metrics.port if metrics_port is None else metrics_port
        instance = Instance(app, db, ports, dry_run=dry_run, http_port=port or None)
        log.info(
            "instance %s: %d account(s), lease %.1f s renewed every %.1f s",
            instance.name,
            len(instance.accounts),
            app.leases.ttl,
            app.leases.renew_interval,
        )
        code = await run_service(instance)  # anything with run() and shutdown(): SIGINT/SIGTERM shut it down
        if code != 0 and instance.alerts is not None:
            await instance.alerts.flush(5.0)
        return code


def _account_text(e) -> str:
    """``bybit (http://...)`` for an account named after its exchange, else ``desk-1 (bybit, http://...)``."""
    where = e.rest_url or "production"
    return f"{e.account} ({where})" if e.account == e.name else f"{e.account} ({e.name}, {where})"
