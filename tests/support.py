"""Test helpers: a service builder, price pushing, and a TCP proxy that can cut the database."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit, urlunsplit

import trio

from actors.clock import PolicyClock
from actors.position import Settings
from doubles.feed import MemoryFeed  # noqa: F401 - tests import it from here


def run_asyncio(coro):
    """Run an asyncio coroutine outside trio (fixture set-up and tear-down)."""
    loop = asyncio.new_event_loop()  # trio_asyncio replaces the policy; use a private loop
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@contextmanager
def within(seconds: float, what: str):
    """``trio.fail_after(seconds)`` that fails the test saying what did not happen.

    A ceiling for a hang, never a speed assertion: pick it generously (tens of seconds
    on the real clock), since a loaded machine only makes the wait longer.
    """
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise AssertionError(f"{what}: did not happen within {seconds:g} s") from None


async def wait_until(predicate, what: str, *, timeout: float = 60.0, interval: float = 0.01) -> None:
    """Poll a plain (non-async) ``predicate()`` until it is true, at most ``timeout`` seconds."""
    with within(timeout, what):
        while not predicate():
            await trio.sleep(interval)


def make_service(db, exchange, feed, *, origin, poll_interval: float = 300.0,
                 retry_delays: tuple[float, ...] = (1.0, 3.0, 5.0),
                 settings: Settings = Settings(sample_interval=timedelta(minutes=10))):
    """A Service on one in-memory exchange named bybit, with test-friendly overrides of the defaults."""
    from service.config import DEFAULTS  # noqa: PLC0415
    from service.runtime import Service  # noqa: PLC0415

    config = replace(DEFAULTS, positions=settings, detector=replace(DEFAULTS.detector, poll_interval=poll_interval),
                     executor=replace(DEFAULTS.executor, retry_delays=retry_delays))
    return Service(db, {"bybit": exchange}, {"bybit": feed}, config, PolicyClock(origin))


async def push_prices(svc, feed, price_fn, every=60.0, symbol="BTC/USDT:USDT"):
    """Every ``every`` virtual seconds set the exchange's book and push a tick of ``symbol``;
    ``price_fn(now) -> (bid, ask)``."""
    while True:
        bid, ask = price_fn(svc.clock.now())
        for ex in svc.exchanges.values():
            for held in list(ex.positions) or [symbol]:
                ex.set_quote(held, bid, ask, bid)
        feed.push(symbol, bid=bid, ask=ask, last=bid)
        await trio.sleep(every)


class DatabaseProxy:
    """A TCP proxy in front of PostgreSQL whose link can be cut and restored.

    ``url`` is the database URL to use through the proxy. ``cut()`` drops every open
    connection and refuses new ones; ``restore()`` accepts again.
    """

    def __init__(self, target_url: str):
        parts = urlsplit(target_url)
        query = parse_qs(parts.query)
        self._unix = query.get("host", [None])[0]
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 5432
        self._parts = parts
        self.up = True
        self._streams: list[trio.abc.Stream] = []
        self.port = None

    @property
    def url(self) -> str:
        user = self._parts.username or "postgres"
        return urlunsplit((self._parts.scheme, f"{user}@127.0.0.1:{self.port}", self._parts.path, "", ""))

    async def _connect_target(self):
        if self._unix:
            return await trio.open_unix_socket(f"{self._unix}/.s.PGSQL.{self._port}")
        return await trio.open_tcp_stream(self._host, self._port)

    async def _handle(self, client: trio.SocketStream) -> None:
        if not self.up:
            await client.aclose()
            return
        try:
            server = await self._connect_target()
        except OSError:
            await client.aclose()
            return
        self._streams += [client, server]

        async def pump(a, b):
            try:
                while True:
                    data = await a.receive_some(65536)
                    if not data:
                        break
                    await b.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                for s in (a, b):
                    try:
                        await s.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

        async with trio.open_nursery() as n:
            n.start_soon(pump, client, server)
            n.start_soon(pump, server, client)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def cut(self) -> None:
        self.up = False
        streams, self._streams = self._streams, []
        for s in streams:
            try:
                await s.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def restore(self) -> None:
        self.up = True


# The trading bot's own book, as the seeds describe it (the service never creates it).
BOT_TABLE = """
CREATE TABLE monitoring.positions (
    id serial PRIMARY KEY, symbol text NOT NULL, exchange text NOT NULL, side text NOT NULL,
    quantity numeric NOT NULL, entry_price numeric NOT NULL, status text NOT NULL DEFAULT 'active',
    opened_at timestamptz NOT NULL, trailing_activated boolean NOT NULL DEFAULT false,
    closed_at timestamptz, exit_reason text, pnl numeric)
"""
