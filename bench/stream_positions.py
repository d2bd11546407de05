"""stream_to_book_ms_p50/p99: how fast a position change on the exchange reaches the book.

Issue #16 asks that a position opened, averaged into, reduced, flipped and closed by
hand be seen within 100 ms each through the account stream. This bench runs the real
:class:`service.runtime.Service` as ``run.py live`` builds it: the real
:class:`~exchanges.ccxt_adapter.CcxtExchange` clients over loopback to the exchange
simulator (in this process, serving Binance USD-M and Bybit linear), the real public
feeds and account streams (:func:`service.app.make_account_stream`: Binance's
user-data stream with its listen key, Bybit's authenticated v5 private stream) and the
bench's PostgreSQL database. The detector polls once at start and then only every
hour, so only the stream can explain what the book shows after that. The simulator's
private messages are held to the exchanges' documented ones (with their sources) in
``tests/test_simulator_private_conformance.py``.

Each round, on each exchange in turn, a symbol goes through the five changes a person
makes by hand: opened (long 1 @ 150), averaged into (long 2 @ 151), reduced (long 1.5),
flipped (short 0.5 @ 149) and closed. One change at a time, each made through the
simulator's admin call (:meth:`simulator.state.SimState.set_position` /
``remove_position``: the same fills and private-stream events as ``POST/DELETE
/_sim/positions``, without an HTTP request of our own in the window).

What is measured, on the real monotonic clock (``time.monotonic``), per change:

* **start** — read just before the admin call; the simulator emits the change's
  events from there (their frames are written by its connection tasks, so the
  simulator's own serialising is inside the window, as the exchange's would be);
* **end** — the detector's step for that change done: the episode row written in
  PostgreSQL (the write commits before the step goes on), the aging timers set and the
  actors told (:meth:`actors.stream_positions.StreamPositions._after_stream_step`
  returned). No observer event marks that moment, so the bench wraps the detector's
  two stream-step methods on the instance, as ``bench/pipeline.py`` wraps the feed's
  fan-out: the wrapper reads the clock when the original returns, which adds no
  polling delay to the number (polling the database for the row would add up to one
  polling interval, and its queries would compete with the service's own).

Nothing sleeps inside a window: the bench waits on an event the wrapper sets. Between
changes, and outside the window, the book is checked in PostgreSQL (the open episode's
side and quantity; nothing open after the close), and the bench pauses ``gap`` seconds
so that the change's trailing order and fill events are handled before the next
change starts. At the end every episode must be closed, two per round (a flip ends
one, the manual close the other), or the bench fails.

The details break each change into ``emit_to_view`` (the stream actor has parsed the
frame and put the change on the view's queue: the wire, the parser) and
``view_to_step`` (the detector took it and finished its step: our book), per exchange
and per kind of change.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from decimal import Decimal as D

import trio

from bench.common import QUIET_FEED, connect, median, percentile, wait_until
from service.asyncio_bridge import open_asyncio_loop

EXCHANGES = ("binanceusdm", "bybit")
SYMBOL_ID, SYMBOL = "SOLUSDT", "SOL/USDT:USDT"  # a default market of the simulator on both exchanges
SIM_KEY, SIM_SECRET = "sim-key", "sim-secret"  # the simulator's default key pair


@dataclass(frozen=True)
class Change:
    """One change by hand: what the simulator is told, and what the book must show after."""

    kind: str  # open, average, reduce, flip, close
    side: str | None  # None: closed
    qty: str
    entry: str


ROUND = (
    Change("open", "long", "1", "150"),
    Change("average", "long", "2", "151"),  # one fill of 1 at 152 brings the average to 151
    Change("reduce", "long", "1.5", "151"),  # a reduction keeps the average entry
    Change("flip", "short", "0.5", "149"),  # one sell of 2 through zero
    Change("close", None, "0", "0"),
)


class StepClock:
    """The moments the detector finished its stream steps, read as the step returns.

    ``install`` wraps, on one detector instance, ``_stream_change`` and
    ``_stream_snapshot`` (to know which change the step is about) and ``_after_stream_step`` (the step's last part), and
    each view's ``_publish`` (when the stream actor handed the change over).
    """

    def __init__(self) -> None:
        self.steps: list[tuple[str, object, float, float | None]] = []  # exchange, change, done, published
        self.stepped = trio.Event()
        self._current: dict[str, object] = {}
        self._published: dict[int, float] = {}

    def install(self, detector, views: dict) -> None:
        change_step, snapshot_step = detector._stream_change, detector._stream_snapshot
        after_step = detector._after_stream_step

        async def stream_snapshot(exchange, snapshot):
            self._current.pop(exchange, None)
            return await snapshot_step(exchange, snapshot)

        async def stream_change(exchange, change):
            self._current[exchange] = change
            return await change_step(exchange, change)

        async def after_stream_step(exchange):
            await after_step(exchange)
            done = time.monotonic()
            change = self._current.pop(exchange, None)  # None: a snapshot's step
            published = self._published.pop(id(change), None) if change is not None else None
            self.steps.append((exchange, change, done, published))
            self.stepped.set()
            self.stepped = trio.Event()

        detector._stream_change, detector._stream_snapshot = stream_change, stream_snapshot
        detector._after_stream_step = after_stream_step
        for view in views.values():
            view._publish = self._timed_publish(view._publish)

    def _timed_publish(self, publish):
        def timed(item):
            self._published[id(item)] = time.monotonic()
            publish(item)

        return timed

    async def wait_for(self, exchange: str, change: Change, after: float) -> tuple[float, float | None]:
        """(done, published) of the first step on ``exchange`` after ``after`` that shows ``change``."""
        while True:
            for ex, seen, done, published in self.steps:
                if ex == exchange and done > after and seen is not None and _shows(seen, change):
                    return done, published
            await self.stepped.wait()


def _shows(seen, change: Change) -> bool:
    if change.side is None:
        return seen.symbol == SYMBOL and seen.flat
    return seen.symbol == SYMBOL and seen.side == change.side and seen.qty == D(change.qty)


async def _check_book(db, exchange: str, change: Change) -> None:
    """The book in PostgreSQL shows ``change`` (outside the measured window)."""
    rows = await db.fetch(
        "SELECT side, quantity FROM monitoring.episodes WHERE exchange=$1 AND symbol=$2 AND status='open'",
        exchange,
        SYMBOL,
    )
    want = [] if change.side is None else [(change.side, D(change.qty))]
    got = [(r["side"], r["quantity"]) for r in rows]
    if got != want:
        raise RuntimeError(f"{exchange} after the {change.kind}: the book shows {got}, expected {want}")


def _make(state, exchange: str, change: Change) -> None:
    if change.side is None:
        state.remove_position(exchange, SYMBOL_ID)
    else:
        state.set_position(exchange, SYMBOL_ID, change.side, change.qty, change.entry)


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(median(ms), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


async def bench_stream_to_book(url: str, *, rounds: int = 20, gap: float = 0.05, give_up_after: float = 10.0) -> dict:
    from actors.clock import PolicyClock  # noqa: PLC0415
    from exchanges.ccxt_adapter import CcxtExchange  # noqa: PLC0415
    from service.app import build_service, exchanges_open, make_account_stream, make_feeds, tune_gc  # noqa: PLC0415
    from service.config import DEFAULTS  # noqa: PLC0415
    from simulator.server import serve_simulator  # noqa: PLC0415

    samples: dict = {ex: [] for ex in EXCHANGES}  # (kind, emit_to_step, emit_to_view)
    async with open_asyncio_loop():
        db = await connect(url)
        try:
            async with trio.open_nursery() as nursery:
                # no price walk: the only private events are the ones this bench makes
                sim = await nursery.start(functools.partial(serve_simulator, tick_interval=None))
                info = sim.info()
                exchanges = {
                    n: CcxtExchange.create(n, rest_url=info[n]["rest"], api_key=SIM_KEY, secret=SIM_SECRET)
                    for n in EXCHANGES
                }
                async with exchanges_open(exchanges):
                    cfg = replace(DEFAULTS, detector=replace(DEFAULTS.detector, poll_interval=3600.0))
                    feeds = make_feeds(exchanges, {n: info[n]["ws"] for n in EXCHANGES}, QUIET_FEED)
                    accounts = {
                        n: make_account_stream(
                            n, info[n]["private_ws"], port, api_key=SIM_KEY, secret=SIM_SECRET, timings=cfg.accounts
                        )
                        for n, port in exchanges.items()
                    }
                    svc, _obs = build_service(
                        db, exchanges, feeds, cfg, PolicyClock(), http_port=None, accounts=accounts
                    )
                    tune_gc()  # as run_service does before the service runs
                    clock = StepClock()
                    clock.install(svc.detector, {n: a.view for n, a in accounts.items()})
                    nursery.start_soon(svc.run)
                    await wait_until(
                        lambda: (
                            svc.detector.polls >= 1
                            and all(a.view.healthy for a in accounts.values())
                            and {ex for ex, change, _, _ in clock.steps if change is None} == set(EXCHANGES)
                        ),
                        timeout=60,
                        what="the first poll and both account streams synced",
                    )
                    for _ in range(rounds):
                        for exchange in EXCHANGES:
                            for change in ROUND:
                                emitted = time.monotonic()
                                _make(sim.state, exchange, change)
                                with trio.fail_after(give_up_after):
                                    done, published = await clock.wait_for(exchange, change, emitted)
                                samples[exchange].append(
                                    (change.kind, done - emitted, None if published is None else published - emitted)
                                )
                                await _check_book(db, exchange, change)
                                await trio.sleep(gap)
                    episodes = await db.fetch(
                        "SELECT exchange, status, end_reason, opened_at_source FROM monitoring.episodes"
                    )
                    orders = {n: len(sim.state.accepted_orders(n)) for n in EXCHANGES}
                    polls = svc.detector.polls
                    svc.shutdown()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await db.close()
    if polls != 1:
        raise RuntimeError(f"the detector polled {polls} times: a poll, not only the stream, may explain the book")
    return _result(samples, episodes, orders, rounds, gap)


def _result(samples: dict, episodes: list[dict], orders: dict, rounds: int, gap: float) -> dict:
    for exchange in EXCHANGES:
        mine = [e for e in episodes if e["exchange"] == exchange]
        ends = sorted(e["end_reason"] for e in mine if e["status"] == "closed")
        if len(mine) != 2 * rounds or ends != sorted(["flip", "flat"] * rounds):
            raise RuntimeError(
                f"{exchange}: {len(mine)} episodes ending {ends}; expected {rounds} flips and {rounds} closes"
            )
    every = [t for ex in EXCHANGES for _, t, _ in samples[ex]]
    per_exchange = {}
    for exchange in EXCHANGES:
        mine = samples[exchange]
        per_exchange[exchange] = {
            "emit_to_step": _stats([t for _, t, _ in mine]),
            "emit_to_view": _stats([v for _, _, v in mine if v is not None]),
            "view_to_step": _stats([t - v for _, t, v in mine if v is not None]),
            "by_change": {c.kind: _stats([t for k, t, _ in mine if k == c.kind]) for c in ROUND},
        }
    return {
        "stream_to_book_ms_p50": round(median(every) * 1000, 3),
        "stream_to_book_ms_p99": round(percentile(every, 99) * 1000, 3),
        "details": {
            "rounds": rounds,
            "changes": len(every),
            "gap_between_changes_s": gap,
            "episodes": len(episodes),
            "detector_polls": 1,
            "orders_sent_by_the_service": orders,
            "opened_at_sources": sorted({e["opened_at_source"] for e in episodes}),
            "exchanges": per_exchange,
        },
    }
