"""Assembling and running the whole system (live, dry-run and the demo share this)."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import trio

from actors.clock import PolicyClock
from actors.events import ESCALATION, LifecycleEvent
from exchanges.ccxt_adapter import CcxtExchange
from exchanges.clients import credentials_from_env
from exchanges.dry_run import DryRunExchange
from exchanges.port import ExchangePort
from feeds.account_stream import AccountStream, AccountStreamTimings
from feeds.account_view import AccountView
from feeds.feed import Feed, FeedTimings
from service.alerts import alert_router_from_env
from service.config import DEFAULTS, AppConfig, ExchangeConfig
from service.http import Observability
from service.runtime import Service

log = logging.getLogger("service")


def make_exchange(cfg: ExchangeConfig, *, dry_run: bool, api_key: str | None = None,
                  secret: str | None = None) -> ExchangePort:
    if api_key is None and cfg.api_key_env:
        api_key, secret = credentials_from_env(cfg.api_key_env, cfg.api_secret_env)
        if not api_key or not secret:
            raise SystemExit(f"exchange {cfg.name}: set the environment variables {cfg.api_key_env} and "
                             f"{cfg.api_secret_env} (the API key and secret)")
    port: ExchangePort = CcxtExchange.create(cfg.name, rest_url=cfg.rest_url, api_key=api_key, secret=secret)
    return DryRunExchange(port) if dry_run else port


def make_feeds(exchanges: Mapping[str, ExchangePort], ws_urls: Mapping[str, str],
               timings: FeedTimings = DEFAULTS.feeds) -> dict[str, Feed]:
    """One feed per exchange, at ``ws_urls[name]``, polling the exchange's REST quote when stale."""
    return {name: Feed(name, ws_urls[name], rest_quote=port.fetch_quote, timings=timings)
            for name, port in exchanges.items()}


def make_account_stream(name: str, url: str, port: ExchangePort, *, api_key: str | None, secret: str | None,
                        timings: AccountStreamTimings = DEFAULTS.accounts) -> AccountStream:
    """The account stream of one exchange at ``url`` (Binance: listen keys from ``port``;
    Bybit: ``auth`` with ``api_key``/``secret``), feeding a new view."""
    view = AccountView(name, stale_after=timings.stale_after)
    if name == "bybit":
        if not api_key or not secret:
            raise ValueError("the Bybit account stream needs the API key and secret")
        return AccountStream(name, url, view, port, credentials=(api_key, secret), timings=timings)
    return AccountStream(name, url, view, port, listen_keys=port, timings=timings)  # type: ignore[arg-type]


def make_account_streams(app: AppConfig, exchanges: Mapping[str, ExchangePort], *,
                         dry_run: bool) -> dict[str, AccountStream]:
    """One account stream per configured exchange with an API key and ``account_stream`` on.

    None in a dry run: its closes are simulated, so the real account never shows them,
    and the dry-run port's own view of the positions is the one to follow.
    """
    if dry_run:
        return {}
    streams = {}
    for cfg in app.exchanges:
        if not cfg.account_stream or not cfg.api_key_env or not cfg.api_secret_env:
            if not cfg.account_stream:
                log.info("%s: account stream off; positions are polled every %.0f s", cfg.name,
                         app.detector.poll_interval)
            continue
        api_key, secret = credentials_from_env(cfg.api_key_env, cfg.api_secret_env)
        streams[cfg.name] = make_account_stream(cfg.name, cfg.private_ws_url, exchanges[cfg.name], api_key=api_key,
                                                secret=secret, timings=app.accounts)
    return streams


@asynccontextmanager
async def exchanges_open(exchanges: Mapping[str, ExchangePort]) -> AsyncIterator[None]:
    try:
        for port in exchanges.values():
            await port.load_markets()
        yield
    finally:
        with trio.CancelScope(shield=True):
            for port in exchanges.values():
                try:
                    await port.close()
                except Exception as exc:  # noqa: BLE001 - closing must not hide the real outcome
                    log.warning("closing %s: %s", port.name, exc)


HEDGE_MODE_HELP = ("only one-way position mode is supported: every close is a reduce-only order without a "
                   "position side. Switch the account to one-way mode (Binance: Preferences → Position Mode; "
                   "Bybit: per symbol, in the position settings), or leave this exchange out of the configuration")


async def hedge_mode_accounts(exchanges: Mapping[str, ExchangePort]) -> list[str]:
    """The exchanges whose account is in hedge mode (which this service cannot manage).

    An exchange that cannot answer is logged and passed: the service starts, retries it,
    and ignores any hedge-mode position it finds later.
    """
    hedged = []
    for name, port in exchanges.items():
        try:
            mode = await port.position_mode()
        except Exception as exc:  # noqa: BLE001 - an unreachable exchange must not stop the others
            log.warning("%s: could not read the account's position mode (%s: %s)", name, type(exc).__name__, exc)
            continue
        if mode == "hedge":
            hedged.append(name)
        elif mode == "unknown":
            log.info("%s: position mode not known yet (no open positions)", name)
    return hedged


def build_service(db, exchanges: Mapping[str, ExchangePort], feeds: Mapping[str, Feed], config: AppConfig,
                  clock: PolicyClock, *, http_port: int | None,
                  accounts: Mapping[str, AccountStream] | None = None) -> tuple[Service, Observability]:
    """The service with its account streams, metrics, HTTP endpoint (on ``config.metrics.host``;
    ``http_port`` None: none; 0: any free port) and the alerts of ``config.alerts``."""
    alerts = config.alerts
    obs = Observability(http_host=config.metrics.host, http_port=http_port,
                        alerts=alert_router_from_env(webhook_url_env=alerts.webhook_url_env, telegram=alerts.telegram,
                                                     notify=alerts.notify))
    service = Service(db, exchanges, feeds, config, clock, extra_children=obs.children(), accounts=accounts)
    obs.attach(service)
    return service, obs


async def run_observed(service: Service, obs: Observability, **kw) -> int:
    """:func:`run_service`, then make sure a critical alert about giving up goes out."""
    code = await run_service(service, **kw)
    if code != 0:
        service.bus.publish(LifecycleEvent(ESCALATION, service.clock.now(), critical=True,
                                           data={"message": "restart intensity exceeded; the service stopped"}))
    await obs.flush_alerts(5.0)
    return code


def tune_gc() -> None:
    """Fewer, cheaper garbage collections on the tick path.

    Everything built at start-up (modules, markets, the service) is moved out of the
    collector's sight, and the young generation is allowed to grow before a
    collection: full collections otherwise pause the process for 100+ ms under a
    heavy tick load, which is exactly the latency a close must not pay.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def run_service(service: Service, *, before_run: Callable[[Service, trio.Nursery], None] | None = None) -> int:
    """Run ``service`` until SIGINT/SIGTERM (exit 0) or escalation at the root (exit 1).

    Anything with ``run() -> int`` and ``shutdown()`` will do: a whole instance
    (:class:`service.instance.Instance`) runs the same way."""
    tune_gc()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def on_signal():
                async for signum in signals:
                    log.info("%s received: shutting down", signal.Signals(signum).name)
                    service.shutdown()
                    return
            nursery.start_soon(on_signal)
            if before_run is not None:
                before_run(service, nursery)
            code = await service.run()
            nursery.cancel_scope.cancel()
    return code
