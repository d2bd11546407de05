"""The self-contained demo: ``python run.py`` (or ``python run.py demo``).

It starts the exchange simulator in-process on loopback, opens five positions on both
exchanges with ages chosen so that every phase shows within minutes, and runs the
whole system against them through the real code paths: ccxt clients over HTTP,
WebSocket feeds, PostgreSQL. It also injects one actor crash and one rejected order,
so the supervisor logs show a restart and the executor a retry.

The operator console is at ``/`` of the HTTP endpoint (the log says where); its
actions need the token in ``$APM_CONSOLE_TOKEN``, else it is read only.

``--speed`` runs the policy clock faster (the default 120 makes one real minute two
policy hours); ``--duration`` stops after that many real seconds and prints a summary.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal

import trio

from actors.clock import PolicyClock
from actors.events import DETECTED
from exchanges.ccxt_adapter import CcxtExchange
from service.app import build_service, exchanges_open, make_account_stream, make_feeds, run_observed
from service.config import DEFAULTS, AppConfig, ConsoleConfig
from simulator.server import serve_simulator
from simulator.state import RejectRule, SimState

log = logging.getLogger("demo")

SIM_KEY, SIM_SECRET = "sim-key", "sim-secret"
# The console's actions in the demo need this variable's value as their token.
CONSOLE_TOKEN_ENV = "APM_CONSOLE_TOKEN"


def demo_config() -> AppConfig:
    """The defaults, paced for a demo that shows every phase within minutes.

    The policy clock runs ``--speed`` times faster, so the position actors' intervals
    (policy time) are longer than in production, and the detector, the feeds and the
    executor's retries (real time) are quicker.
    """
    return replace(
        DEFAULTS,
        positions=replace(DEFAULTS.positions, sample_interval=timedelta(minutes=10),
                          error_cooldown=timedelta(minutes=30)),
        detector=replace(DEFAULTS.detector, poll_interval=2.0),
        feeds=replace(DEFAULTS.feeds, stale_after=5.0),
        executor=replace(DEFAULTS.executor, retry_delays=(1.0, 2.0, 3.0)),
        console=ConsoleConfig(token_env=CONSOLE_TOKEN_ENV),
    )


@dataclass(frozen=True)
class DemoPosition:
    exchange: str
    symbol: str  # unified
    side: str
    qty: str
    entry: str
    age_hours: float  # at the start of the demo (policy time)
    story: str

    @property
    def symbol_id(self) -> str:
        return self.symbol.split(":")[0].replace("/", "")


POSITIONS = [
    DemoPosition("bybit", "BTC/USDT:USDT", "long", "0.05", "60000", 2.9,
                 "about to age; the price climbs through breakeven during grace"),
    DemoPosition("binanceusdm", "ETH/USDT:USDT", "short", "1.2", "3000", 5.0,
                 "in grace; the price falls to breakeven"),
    DemoPosition("bybit", "SOL/USDT:USDT", "long", "10", "150", 20.0,
                 "deep in progressive (4.5 % allowed), 3 % under water: closes at once; "
                 "its first order is rejected and retried"),
    DemoPosition("binanceusdm", "XRP/USDT:USDT", "long", "500", "0.6", 10.0,
                 "15 % under water: grace, then progressive up to the 10 % cap; stays open"),
    DemoPosition("bybit", "DOGE/USDT:USDT", "short", "1000", "0.1", 4.0,
                 "slightly under water; its actor is crashed on purpose and restarts; "
                 "closes once the allowance covers the loss"),
]


def demo_price(p: DemoPosition, age_h: float) -> Decimal:
    """The scripted executable price of each demo symbol at a given position age."""
    entry = Decimal(p.entry)

    def ramp(start: float, hours: float) -> Decimal:
        return Decimal(str(min(1.0, max(0.0, (age_h - start) / hours))))

    if p.symbol.startswith("BTC"):
        return entry * (Decimal("0.998") + Decimal("0.006") * ramp(3.0, 1.0))
    if p.symbol.startswith("ETH"):
        return entry * (Decimal("1.004") - Decimal("0.008") * ramp(5.0, 1.5))
    if p.symbol.startswith("SOL"):
        return entry * Decimal("0.97")
    if p.symbol.startswith("XRP"):
        return entry * Decimal("0.85")
    return entry * Decimal("1.003")  # DOGE short: 0.3 % under water


async def _script_prices(state: SimState, clock: PolicyClock, origin) -> None:
    for p in POSITIONS:
        state.ensure_market(p.exchange, p.symbol, Decimal(p.entry))
    while True:
        for p in POSITIONS:
            age_h = p.age_hours + (clock.now() - origin).total_seconds() / 3600
            tick = state.market(p.exchange, p.symbol_id).tick_size
            px = demo_price(p, age_h).quantize(tick)
            # the scripted price is the executable side: the bid for a long, the ask for a short
            bid, ask = (px, px + tick) if p.side == "long" else (px - tick, px)
            state.set_price(p.exchange, p.symbol_id, bid=bid, ask=ask, last=px)
        await trio.sleep(0.5)


async def run_demo(db, *, duration: float | None, speed: float, metrics_port: int | None = None) -> int:
    """Run the demo until Ctrl+C or ``duration`` seconds, then print a summary.

    ``metrics_port`` None: the configured default (:data:`service.config.DEFAULTS`); 0: no endpoint.
    """
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve_simulator, "127.0.0.1", 0, 7)
        log.info("simulator at %s (admin %s)", handle.base_url, handle.admin_url)
        clock = PolicyClock(speed=speed)
        origin = clock.now()
        for p in POSITIONS:
            opened = origin - timedelta(hours=p.age_hours)
            handle.state.set_position(p.exchange, p.symbol, p.side, p.qty, p.entry, opened_at=opened)
            # Binance does not say when a position was opened: the trading bot's book does.
            await db.upsert_open_position(exchange=p.exchange, symbol=p.symbol, side=p.side,
                                          quantity=Decimal(p.qty), entry_price=Decimal(p.entry), opened_at=opened,
                                          source="bot")
            log.info("demo position %s %s %s %s @ %s, age %.1f h: %s", p.exchange, p.symbol, p.side, p.qty,
                     p.entry, p.age_hours, p.story)
        state = handle.state
        nursery.start_soon(_script_prices, state, clock, origin)
        # One rejected order: the first close order on Bybit is refused with a rate-limit
        # error (retried by the executor).
        state.faults.add_reject(RejectRule(count=1, code="10006", exchange="bybit", message="Too many visits!"))

        info = handle.info()
        exchanges = {name: CcxtExchange.create(name, rest_url=info[name]["rest"], api_key=SIM_KEY, secret=SIM_SECRET)
                     for name in ("bybit", "binanceusdm")}
        async with exchanges_open(exchanges):
            cfg = demo_config()
            feeds = make_feeds(exchanges, {n: info[n]["ws"] for n in exchanges}, cfg.feeds)
            http_port = (cfg.metrics.port if metrics_port is None else metrics_port) or None
            if http_port and not _port_free(http_port):
                log.warning("port %d is in use: the demo's metrics go to a free port instead", http_port)
                http_port = 0
            accounts = {n: make_account_stream(n, info[n]["private_ws"], port, api_key=SIM_KEY, secret=SIM_SECRET,
                                               timings=cfg.accounts) for n, port in exchanges.items()}
            service, obs = build_service(db, exchanges, feeds, cfg, clock, http_port=http_port, accounts=accounts)
            crash_target = next(p for p in POSITIONS if p.symbol.startswith("DOGE"))

            def inject_crash(event):
                if event.type == DETECTED and event.symbol == crash_target.symbol:
                    service.registry.crash_on_next_tick(event.aged_id)
                    log.warning("demo: the actor for %s will crash on its next tick (injected)", event.symbol)
            service.bus.subscribe(inject_crash)

            def stop_later(svc, n):
                if obs.endpoint is not None:
                    n.start_soon(_announce_metrics, obs)
                if duration is not None:
                    async def stopper():
                        await trio.sleep(duration)
                        log.info("demo: %.0f s are up", duration)
                        svc.shutdown()
                    n.start_soon(stopper)
            code = await run_observed(service, obs, before_run=stop_later)
        nursery.cancel_scope.cancel()
    await print_summary(db, clock)
    return code


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


async def _announce_metrics(obs) -> None:
    port = await obs.endpoint.wait_bound()
    log.info("metrics at http://127.0.0.1:%d/metrics (also /health and /stats)", port)
    token = "set" if os.environ.get(CONSOLE_TOKEN_ENV) else f"read only: export {CONSOLE_TOKEN_ENV}=<token> to act"
    log.info("console at %s/ (actions: %s)", obs.endpoint.url, token)


async def print_summary(db, clock: PolicyClock) -> None:
    from service.reports import summary_table  # noqa: PLC0415
    print(await summary_table(db, clock.now()))
