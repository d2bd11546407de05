"""close_rtt20_ms: tick → close order accepted by the exchange, REST answering in 20 ms.

The real :class:`service.runtime.Service` (as production wires it: metrics, alert
router) runs against the simulator over loopback: ccxt's real client behind
:class:`exchanges.ccxt_adapter.CcxtExchange`, the real public feed, the real
PostgreSQL of the bench database. The simulator answers every REST request of the
exchange 20 ms late (``rest_latency_ms``, what ``POST /_sim/latency`` sets), standing in
for the network between us and the exchange.

``closes`` aged longs (entry 100, opened 5 hours ago: in grace, so the target is the
breakeven price) sit on distinct symbols below breakeven. One at a time, the
simulator's bid of one symbol is moved above breakeven; its public stream sends the
tick, the position actor asks the executor to close, and the executor checks the
position, commits its write-ahead row and sends the reduce-only MARKET order. Each
sample runs from the moment the feed received that tick (``Tick.received_at``, the
executor's own tick→order measure, as in :mod:`bench.pipeline`) to the moment the
simulator accepted the order (its order record's ``recorded_monotonic``). The next
symbol moves ``gap`` seconds after the previous close is over, so closes never queue
behind each other, and ccxt's request pacing (:mod:`exchanges.clients`) has paid off
the previous close's requests. One close before the measured ones is left out (the
first order of a process pays one-time costs, about 20 ms more here); it is in the
details (``warmup_tick_to_accepted_ms``).

The whole run is done twice, each on a fresh simulator and empty tables:

* ``stream`` — with the exchange's account stream: the executor's check before the
  order reads the position from the stream's view, so the order is the only REST
  request on the path (one 20 ms wait);
* ``rest`` — without it: the check is ``fetch_positions`` over REST first (two waits),
  and the order then also waits for ccxt's pacing of that request: on Bybit ccxt
  charges ``/v5/position/list`` 5 × 20 ms (10 a second), so the order leaves about
  100 ms after the check was sent.

The details break each sample down: ``tick_to_order_sent`` (up to the executor
sending, write-ahead commit and, in ``rest``, the REST check included) and
``order_sent_to_accepted`` (ccxt, pacing, the 20 ms). ``fetch_positions_ms`` counts
every REST position check of the run: the one before the order and the one after the
fill (which waits for the pacing of the order lookup before it).

Each close is checked to have taken the path its run is about (the executor's
``positions_from_stream`` / ``positions_from_rest`` counters at the moment of the
order); a close that did not makes the bench fail rather than report a number.

The simulator runs in this process (as in the tests), so its work shares the CPU with
the service's in both runs alike. With 30 closes, p99 is the slowest close or two.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial

import trio

from actors.clock import PolicyClock
from bench.common import QUIET_FEED, connect, median, percentile, symbol, symbol_id, wait_until, watch
from bench.pipeline import _Timed
from service.asyncio_bridge import open_asyncio_loop

KEY, SECRET = "sim-key", "sim-secret"  # the simulator's default API key (simulator.state.values)
ENTRY = Decimal(100)
BELOW_BREAKEVEN = {"bid": Decimal("99.5"), "ask": Decimal("99.6"), "last": Decimal("99.5")}
ABOVE_BREAKEVEN = {"bid": Decimal("100.5"), "ask": Decimal("100.6"), "last": Decimal("100.5")}
OPENED_HOURS_AGO = 5  # past max_age_hours (3), inside the grace period: close at breakeven
WARMUP = 1  # closes before the measured ones (the first order of a process pays one-time costs)


@dataclass
class _Close:
    """What was seen of one close."""

    symbol_id: str
    price_changed: float  # time.monotonic() just before the simulator's price change
    tick_received: float | None = None  # time.monotonic() of the feed's receipt of that tick
    submitted: float | None = None  # time.monotonic() when the executor sent the order
    checks: tuple[int, int] = (0, 0)  # (from stream, from REST) before this close's order
    accepted: float | None = None  # the simulator's record of accepting the order


@dataclass
class _Run:
    closes: list[_Close] = field(default_factory=list)
    warmup: list[_Close] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def _ms(values: list[float], q: float) -> float | None:
    return round(percentile(values, q) * 1000, 3) if values else None


async def _measure(url: str, *, closes: int, exchange: str, rest_ms: int, account_stream: bool, gap: float) -> _Run:
    """One run: a fresh simulator, the service on it (with or without the account stream), ``closes`` closes."""
    from exchanges.ccxt_adapter import CcxtExchange  # noqa: PLC0415
    from service.app import build_service, make_account_stream, make_feeds, tune_gc  # noqa: PLC0415
    from service.config import DEFAULTS  # noqa: PLC0415
    from simulator.server import serve_simulator  # noqa: PLC0415

    run = _Run()
    positions = WARMUP + closes
    db = await connect(url)
    port = None
    try:
        async with trio.open_nursery() as nursery:
            sim = await nursery.start(partial(serve_simulator, tick_interval=None))
            state = sim.state
            info = sim.info()[exchange]
            opened = datetime.now(UTC) - timedelta(hours=OPENED_HOURS_AGO)
            for i in range(positions):
                state.ensure_market(exchange, symbol_id(i), ENTRY)
                state.set_position(exchange, symbol_id(i), "long", "1", str(ENTRY), opened_at=opened)
                state.set_price(exchange, symbol_id(i), **BELOW_BREAKEVEN)
            port = CcxtExchange.create(exchange, rest_url=info["rest"], api_key=KEY, secret=SECRET)
            await port.load_markets()
            feeds = make_feeds({exchange: port}, {exchange: info["ws"]}, QUIET_FEED)
            accounts = None
            if account_stream:
                accounts = {
                    exchange: make_account_stream(exchange, info["private_ws"], port, api_key=KEY, secret=SECRET)
                }
            cfg = replace(DEFAULTS, detector=replace(DEFAULTS.detector, poll_interval=3600.0))
            svc, _obs = build_service(
                db, {exchange: port}, feeds, cfg, PolicyClock(), http_port=None, accounts=accounts
            )
            tune_gc()  # as run_service does
            feed, stats = feeds[exchange], svc.executor.stats
            nursery.start_soon(svc.run)
            await wait_until(lambda: svc.registry.watching() == positions, timeout=120, what="actors watching")
            await wait_until(
                lambda: all(feed.latest(symbol(i)) is not None for i in range(positions)),
                timeout=60,
                what="a tick of every symbol",
            )
            if accounts:
                view = accounts[exchange].view
                await wait_until(lambda: view.healthy, timeout=60, what="account stream healthy")
            await wait_until(
                lambda: svc.detector.polls >= 1 and svc.writer.depth == 0,
                timeout=60,
                what="detector polled, writer idle",
            )

            checks = port.fetch_positions = _Timed(port.fetch_positions)
            state.rest_latency_ms = rest_ms
            seen = await _close_each(svc, state, exchange, positions, gap)
            run.warmup, run.closes = seen[:WARMUP], seen[WARMUP:]
            run.info = {
                "closed_rows": await _closed_rows(db, positions),
                "orders_accepted": len(state.accepted_orders(exchange)),
                "executor_checks_from_stream": stats.positions_from_stream,
                "executor_checks_from_rest": stats.positions_from_rest,
                "settled_by_stream": stats.settled_by_stream,
                "errors_by_code": dict(stats.errors_by_code),
                "fetch_positions_ms_p50_p99": [_ms(checks.samples, 50), _ms(checks.samples, 99)],
            }
            svc.shutdown()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if port is not None:
                await port.close()
            await db.close()
    return run


async def _closed_rows(db, expected: int) -> int:
    """The aged rows marked closed, once ``expected`` or after 10 s (the storage writer
    commits them in the background)."""
    query = "SELECT count(*) FROM monitoring.aged_positions WHERE status='closed'"
    closed = await db.fetchval(query)
    with trio.move_on_after(10):
        while closed < expected:
            await trio.sleep(0.05)  # noqa: ASYNC110 - the database tells no one
            closed = await db.fetchval(query)
    return closed


async def _close_each(svc, state, exchange: str, closes: int, gap: float) -> list[_Close]:
    """Move each symbol's bid above breakeven in turn; what was seen of each close."""
    stats = svc.executor.stats
    mono_minus_trio = time.monotonic() - trio.current_time()  # trio's clock reads CLOCK_MONOTONIC too
    seen: list[_Close] = []
    before = (0, 0)  # the executor's check counters (stream, REST) before the current close

    def on_order(_exchange: str, tick_to_order: float) -> None:
        close = seen[-1]
        now = trio.current_time() + mono_minus_trio
        close.submitted, close.tick_received = now, now - tick_to_order
        close.checks = (stats.positions_from_stream - before[0], stats.positions_from_rest - before[1])

    def accepted(sid: str) -> list:
        return [o for o in state.accepted_orders(exchange) if o.symbol == sid]

    watcher = watch(svc, order_submitted=on_order)
    try:
        for i in range(closes):
            await trio.sleep(gap)  # the previous close's requests are paid for (ccxt's pacing)
            close = _Close(symbol_id(i), time.monotonic())
            before = (stats.positions_from_stream, stats.positions_from_rest)
            seen.append(close)
            state.set_price(exchange, close.symbol_id, **ABOVE_BREAKEVEN)
            await wait_until(
                partial(lambda c: c.submitted is not None and bool(accepted(c.symbol_id)), close),
                timeout=30,
                interval=0.005,
                what=f"the close of {close.symbol_id} accepted",
            )
            [order] = accepted(close.symbol_id)
            close.accepted = order.recorded_monotonic
            left = closes - i - 1  # the close is over when its actor has stopped
            await wait_until(
                partial(lambda n: svc.registry.watching() == n, left),
                timeout=30,
                what=f"the close of {close.symbol_id} done",
            )
    finally:
        svc.observers.remove(watcher)
    return seen


def _summary(run: _Run, label: str, *, stream: bool) -> dict:
    """The samples of one run, after checking that each close took the path its run is about."""
    expected = (1, 0) if stream else (0, 1)
    wrong = [c.symbol_id for c in run.closes if c.checks != expected]
    if wrong:
        raise RuntimeError(
            f"{label}: closes whose check before the order was not "
            f"{'the account stream' if stream else 'REST'} alone: {wrong} "
            f"({[c.checks for c in run.closes if c.checks != expected]})"
        )
    done = len(run.warmup) + len(run.closes)
    if run.info["closed_rows"] != done or run.info["orders_accepted"] != done:
        raise RuntimeError(f"{label}: {done} closes, but {run.info}")
    tick = [c.accepted - c.tick_received for c in run.closes]
    if min(tick) <= 0:
        raise RuntimeError(f"{label}: an order accepted before its tick arrived: {tick} (clocks apart?)")
    price = [c.accepted - c.price_changed for c in run.closes]
    to_submit = [c.submitted - c.tick_received for c in run.closes]
    send = [c.accepted - c.submitted for c in run.closes]
    return {
        "p50": round(median(tick) * 1000, 3),
        "p99": _ms(tick, 99),
        "details": {
            "closes": len(run.closes),
            **run.info,
            "tick_to_accepted_ms_all": [round(x * 1000, 2) for x in tick],
            "tick_to_accepted_max_ms": round(max(tick) * 1000, 3),
            "warmup_tick_to_accepted_ms": [round((c.accepted - c.tick_received) * 1000, 2) for c in run.warmup],
            "price_change_to_accepted_ms_p50_p99": [round(median(price) * 1000, 3), _ms(price, 99)],
            "tick_to_order_sent_ms_p50_p99": [round(median(to_submit) * 1000, 3), _ms(to_submit, 99)],
            "order_sent_to_accepted_ms_p50_p99": [round(median(send) * 1000, 3), _ms(send, 99)],
        },
    }


async def bench_close_rtt(
    url: str, *, closes: int = 30, exchange: str = "bybit", rest_ms: int = 20, gap: float = 0.3
) -> dict:
    async with open_asyncio_loop():
        with_stream = await _measure(
            url, closes=closes, exchange=exchange, rest_ms=rest_ms, account_stream=True, gap=gap
        )
        with_rest = await _measure(
            url, closes=closes, exchange=exchange, rest_ms=rest_ms, account_stream=False, gap=gap
        )
    stream = _summary(with_stream, "with the account stream", stream=True)
    rest = _summary(with_rest, "without the account stream", stream=False)
    return {
        "close_rtt20_ms_stream_p50": stream["p50"],
        "close_rtt20_ms_stream_p99": stream["p99"],
        "close_rtt20_ms_rest_p50": rest["p50"],
        "close_rtt20_ms_rest_p99": rest["p99"],
        "details": {
            "exchange": exchange,
            "rest_latency_ms": rest_ms,
            "stream": stream["details"],
            "rest": rest["details"],
            "stream_saves_ms_p50": round(rest["p50"] - stream["p50"], 3),
        },
    }


if __name__ == "__main__":
    # python -m bench.close_rtt DATABASE_URL [CLOSES [EXCHANGE]]  (a migrated database of its own)
    import json  # noqa: PLC0415
    import sys  # noqa: PLC0415

    args = sys.argv[1:]
    closes, exchange = int(args[1]) if len(args) > 1 else 10, args[2] if len(args) > 2 else "bybit"
    print(json.dumps(trio.run(partial(bench_close_rtt, args[0], closes=closes, exchange=exchange)), indent=1))
