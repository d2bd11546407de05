"""Standby and scale-out with real processes: several ``run.py live`` instances on one
PostgreSQL and the simulator, each instance with its own API key of the same simulated
account, so every order the simulator accepts names the instance that sent it.

What a trader relies on, each awaited as a condition (the time a takeover takes is
printed here and measured in ``bench/``, ``takeover_s``):

* two or three instances on one account: orders come from one only; the others log
  that they stand by; no write is refused;
* ``kill -9`` of the holder, with a close in flight: a standby takes the lease, recovers
  the close by its client order id as a restart does, and closes every aged position;
  one order per position, none rejected;
* the holder's database link cut: it stops acting, the standby takes over, and every
  order after the cut is the standby's;
* four accounts over two instances: two each; kill one, the survivor takes all four.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest
import trio

from simulator.server import serve_simulator
from storage.repository import Database
from tests.test_account_stream_live import FrozenLink

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"key-a": "secret-a", "key-b": "secret-b", "key-c": "secret-c"}
SYMBOLS = {"BTCUSDT": "BTC/USDT:USDT", "ETHUSDT": "ETH/USDT:USDT", "SOLUSDT": "SOL/USDT:USDT"}
AGED_AT = timedelta(hours=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def account_toml(name: str, exchange: str, info: dict) -> str:
    return f"""
[[accounts]]
name = "{name}"
exchange = "{exchange}"
rest_url = "{info[exchange]['rest']}"
ws_url = "{info[exchange]['ws']}"
private_ws_url = "{info[exchange]['private_ws']}"
api_key_env = "TEST_SIM_KEY"
api_secret_env = "TEST_SIM_SECRET"
"""


def instance_toml(instance: str, accounts: str, port: int, extra: str = "") -> str:
    return f"""
[policy]
max_age_hours = 3
[manager]
poll_interval_seconds = 1
[leases]
ttl_seconds = 2
renew_seconds = 0.5
instance = "{instance}"
{extra}
[metrics]
port = {port}
{accounts}
"""


class Instance:
    """One ``run.py live`` process with its own API key, log file and HTTP port."""

    def __init__(self, tmp_path: Path, name: str, key: str, database_url: str, accounts: str, extra: str = ""):
        self.name, self.key = name, key
        self.port = _free_port()
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.config = self.dir / "live.toml"
        self.config.write_text(instance_toml(name, accounts, self.port, extra))
        self.log_path = self.dir / "live.log"
        self.database_url = database_url
        self.proc = None
        self.code: int | None = None

    async def start(self) -> None:
        self.log_file = open(self.log_path, "wb")
        env = {**os.environ, "TEST_SIM_KEY": self.key, "TEST_SIM_SECRET": KEYS[self.key],
               "DATABASE_URL": self.database_url}
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "run.py", "live", "--config", str(self.config)], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=self.log_file)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.code is not None:
            return
        self.proc.send_signal(sig)
        with trio.fail_after(60):
            self.code = await self.proc.wait()
        self.log_file.close()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def health(self) -> dict:
        def go():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as exc:
                return json.loads(exc.read())
            except (OSError, ValueError):
                return {}
        return await trio.to_thread.run_sync(go)

    async def managing(self, account: str) -> dict | None:
        """The account's service health while this instance holds the lease and runs it."""
        body = await self.health()
        if not body.get("leases", {}).get(account, {}).get("held_by_me"):
            return None
        return body.get("accounts", {}).get(account)


async def until(what: str, check, timeout: float = 120, interval: float = 0.1):
    with trio.fail_after(timeout):
        while True:
            got = await check()
            if got:
                return got
            await trio.sleep(interval)


async def rows(db: Database, sql: str, *args):
    return await db.fetch(sql, *args)


def aged_setup(st, exchange: str, symbols=SYMBOLS) -> None:
    """One 5-hour-old long per symbol, priced below breakeven (in grace, no close yet)."""
    opened = datetime.now(timezone.utc) - AGED_AT
    for sid in symbols:
        st.ensure_market(exchange, sid, D("100"))
        st.set_position(exchange, sid, "long", "0.5", "100", opened_at=opened)
        st.set_price(exchange, sid, bid=D("99"), ask=D("99.1"), last=D("99"))


def above_breakeven(st, exchange: str, symbols=SYMBOLS) -> None:
    for sid in symbols:
        st.set_price(exchange, sid, bid=D("100.5"), ask=D("100.6"), last=D("100.5"))


def orders_by_key(st, exchange: str) -> dict[str | None, list]:
    out: dict[str | None, list] = {}
    for order in st.accepted_orders(exchange):
        out.setdefault(order.api_key, []).append(order)
    return out


REFUSED = ("LeaseLost", "lease token", "its close is final", "Traceback")


def assert_clean(instance: Instance) -> None:
    log = instance.log
    for bad in REFUSED:
        assert bad not in log, f"{instance.name}: {bad!r} in its log:\n{log[-4000:]}"


@pytest.fixture
async def dbc(aio_loop, db, database_url):
    conn = await Database.connect(database_url, max_size=2)
    try:
        yield conn
    finally:
        await conn.close()


async def in_grace(dbc: Database, n: int) -> None:
    await until(f"{n} aged positions of account main in grace", lambda: rows(
        dbc, "SELECT 1 FROM monitoring.aged_positions WHERE account='main' AND status='grace_active' "
             "HAVING count(*) = $1", n))


async def all_closed(dbc: Database, n: int) -> None:
    await until(f"{n} aged positions closed", lambda: rows(
        dbc, "SELECT 1 FROM monitoring.aged_positions WHERE status='closed' HAVING count(*) = $1", n))


async def holder_and_standby(dbc: Database, a: Instance, b: Instance) -> dict:
    """Start ``a`` and let it take account main, then ``b``, which stands by; wait for the
    three aged positions in grace. The lease row ``a`` took."""
    await a.start()
    lease = await wait_holder(dbc, "main")
    await b.start()
    await until("b standing by", lambda: _contains(b, "main: standing by"))
    await in_grace(dbc, 3)
    return lease


async def wait_holder(dbc: Database, account: str) -> dict:
    [row] = await until(f"a holder of {account}", lambda: rows(
        dbc, "SELECT * FROM monitoring.leases WHERE account=$1 AND expires_at > now()", account))
    return row


@pytest.mark.parametrize("count", [2, 3])
async def test_instances_on_one_account_one_acts_the_others_stand_by(dbc, database_url, tmp_path, count):
    exchange = "bybit"
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(functools.partial(serve_simulator, api_keys=KEYS))
        st = sim.state
        aged_setup(st, exchange)
        accounts = account_toml("main", exchange, sim.info())
        instances = [Instance(tmp_path, f"i{n}", key, database_url, accounts)
                     for n, key in zip(range(count), KEYS)]
        try:
            for i in instances:
                await i.start()
            lease = await wait_holder(dbc, "main")
            holder = next(i for i in instances if i.name == lease["holder"])
            others = [i for i in instances if i is not holder]
            await in_grace(dbc, 3)
            for other in others:
                await until(f"{other.name} standing by", lambda o=other: _contains(o, "main: standing by"))
            above_breakeven(st, exchange)
            await all_closed(dbc, 3)
            orders = await rows(dbc, "SELECT * FROM monitoring.close_orders")
        finally:
            for i in instances:
                await i.stop()
        nursery.cancel_scope.cancel()
    by_key = orders_by_key(st, exchange)
    assert set(by_key) == {holder.key}, by_key
    assert sorted(o.symbol for o in by_key[holder.key]) == sorted(SYMBOLS)  # one order per position
    assert {r["lease_token"] for r in orders} == {lease["token"]}
    assert {r["state"] for r in orders} == {"filled"}
    for i in instances:
        assert i.code == 0, i.log[-3000:]
        assert_clean(i)
    for other in others:
        assert "close order" not in other.log


async def _contains(instance: Instance, text: str) -> bool:
    return text in instance.log


async def test_kill_9_of_the_holder_with_a_close_in_flight(dbc, database_url, tmp_path):
    exchange = "binanceusdm"
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(functools.partial(serve_simulator, api_keys=KEYS))
        st = sim.state
        aged_setup(st, exchange)
        accounts = account_toml("main", exchange, sim.info())
        a = Instance(tmp_path, "a", "key-a", database_url, accounts)
        b = Instance(tmp_path, "b", "key-b", database_url, accounts)
        try:
            await holder_and_standby(dbc, a, b)
            # One close goes out slowly: the simulator holds every REST request 1 s, less
            # than a takeover takes, so the standby's look-up comes after the order landed
            # (or after the request died with its sender: then it was never placed).
            st.rest_latency_ms = 1000
            st.set_price(exchange, "BTCUSDT", bid=D("100.5"), ask=D("100.6"), last=D("100.5"))
            [wal] = await until("the write-ahead row of the BTC close", lambda: rows(
                dbc, "SELECT * FROM monitoring.close_orders WHERE symbol='BTC/USDT:USDT'"), interval=0.02)
            killed_at = trio.current_time()
            await a.stop(signal.SIGKILL)
            st.rest_latency_ms = 0

            async def b_manages_all():
                health = await b.managing("main")
                active = await rows(dbc, "SELECT count(*) AS n FROM monitoring.aged_positions "
                                         "WHERE account='main' AND status NOT IN ('closed', 'skipped', 'dust')")
                return health is not None and health.get("actors", {}).get("with_actor") == active[0]["n"]
            await until("b managing every aged position", b_manages_all, interval=0.05)
            took = trio.current_time() - killed_at
            print(f"takeover after kill -9: {took:.2f} s")
            above_breakeven(st, exchange)
            await all_closed(dbc, 3)
            lease = await wait_holder(dbc, "main")
            orders = await rows(dbc, "SELECT * FROM monitoring.close_orders ORDER BY created_at")
        finally:
            await b.stop()
            await a.stop()
        nursery.cancel_scope.cancel()
    assert lease["holder"] == "b"
    accepted = st.accepted_orders(exchange)
    # The BTC order a sent may have reached the exchange before the kill: then b found it by
    # its client order id and sent nothing for BTC. Either way one order per position.
    assert sorted(o.symbol for o in accepted) == sorted(SYMBOLS), [(o.symbol, o.api_key) for o in accepted]
    assert {o.api_key for o in accepted if o.symbol != "BTCUSDT"} == {"key-b"}
    assert not [r for r in orders if r["state"] == "rejected"]
    assert wal["lease_token"] != lease["token"]  # written under a's lease, recovered under b's
    assert b.code == 0, b.log[-3000:]
    assert_clean(b)
    assert st.list_positions(exchange) == []


async def test_a_holder_cut_from_the_database_stops_and_the_standby_takes_over(dbc, database_url, tmp_path):
    exchange = "bybit"
    link = FrozenLink(5432)
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(functools.partial(serve_simulator, api_keys=KEYS))
        proxy_port = await nursery.start(link.run)
        st = sim.state
        aged_setup(st, exchange)
        accounts = account_toml("main", exchange, sim.info())
        via_proxy = database_url.replace(":5432", f":{proxy_port}")
        assert via_proxy != database_url
        a = Instance(tmp_path, "a", "key-a", via_proxy, accounts)
        b = Instance(tmp_path, "b", "key-b", database_url, accounts)
        try:
            first = await holder_and_standby(dbc, a, b)
            assert first["holder"] == "a"
            link.freeze()
            await until("a stops acting", lambda: _stopped(a))
            lease = await until("b holds the lease", lambda: rows(
                dbc, "SELECT * FROM monitoring.leases WHERE account='main' AND holder='b' AND expires_at > now()"))
            await until("b managing", lambda: b.managing("main"))
            above_breakeven(st, exchange)
            await all_closed(dbc, 3)
            link.thaw()
        finally:
            await b.stop()
            await a.stop()
        nursery.cancel_scope.cancel()
    assert set(orders_by_key(st, exchange)) == {"key-b"}
    assert lease[0]["token"] == first["token"] + 1
    assert b.code == 0, b.log[-3000:]
    assert_clean(b)


async def _stopped(instance: Instance) -> bool:
    log = instance.log
    return "main: lease deadline passed" in log or "main: lease lost" in log


async def test_four_accounts_spread_over_two_instances_and_move_when_one_dies(dbc, database_url, tmp_path):
    names = ["acct-1", "acct-2", "acct-3", "acct-4"]
    exchanges = ["bybit", "binanceusdm", "bybit", "binanceusdm"]
    async with trio.open_nursery() as nursery:
        sims = [await nursery.start(functools.partial(serve_simulator, seed=n, api_keys=KEYS)) for n in range(4)]
        for sim, exchange in zip(sims, exchanges):
            aged_setup(sim.state, exchange, {"BTCUSDT": "BTC/USDT:USDT"})
        accounts = "".join(account_toml(n, e, s.info()) for n, e, s in zip(names, exchanges, sims))
        a = Instance(tmp_path, "a", "key-a", database_url, accounts)
        b = Instance(tmp_path, "b", "key-b", database_url, accounts)
        try:
            await a.start()
            await b.start()

            async def spread():
                held = await rows(dbc, "SELECT holder, count(*) AS n FROM monitoring.leases "
                                       "WHERE expires_at > now() GROUP BY holder")
                return {r["holder"]: r["n"] for r in held} == {"a": 2, "b": 2}
            await until("two accounts each", spread)

            async def all_managed(instance, expected):
                body = await instance.health()
                managed = {n for n, lease in body.get("leases", {}).items() if lease.get("held_by_me")}
                return managed == expected and set(body.get("accounts", {})) == expected
            a_held = {r["account"] for r in await rows(dbc, "SELECT account FROM monitoring.leases WHERE holder='a'")}
            await until("a runs its two", lambda: all_managed(a, a_held))
            await a.stop(signal.SIGKILL)
            await until("b holds all four", lambda: all_managed(b, set(names)))
            for sim, exchange in zip(sims, exchanges):
                above_breakeven(sim.state, exchange, {"BTCUSDT": "BTC/USDT:USDT"})
            closed = await until("every account's aged position closed", lambda: rows(
                dbc, "SELECT 1 FROM monitoring.aged_positions WHERE status='closed' HAVING count(*) = 4"))
            per_account = await rows(dbc, "SELECT account, count(*) AS n FROM monitoring.aged_positions "
                                          "GROUP BY account ORDER BY account")
        finally:
            await b.stop()
            await a.stop()
        nursery.cancel_scope.cancel()
    assert closed
    assert [(r["account"], r["n"]) for r in per_account] == [(n, 1) for n in names]
    for sim, exchange in zip(sims, exchanges):
        assert set(orders_by_key(sim.state, exchange)) == {"key-b"}
        assert len(sim.state.accepted_orders(exchange)) == 1
    assert b.code == 0, b.log[-3000:]
    assert_clean(b)


async def test_a_hung_holder_that_wakes_up_after_the_takeover_sends_nothing(dbc, database_url, tmp_path):
    exchange = "bybit"
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(functools.partial(serve_simulator, api_keys=KEYS))
        st = sim.state
        aged_setup(st, exchange)
        accounts = account_toml("main", exchange, sim.info())
        a = Instance(tmp_path, "a", "key-a", database_url, accounts)
        b = Instance(tmp_path, "b", "key-b", database_url, accounts)
        try:
            first = await holder_and_standby(dbc, a, b)
            a.proc.send_signal(signal.SIGSTOP)  # hung: no renewals, nothing else either
            await until("b holds the lease", lambda: rows(
                dbc, "SELECT 1 FROM monitoring.leases WHERE account='main' AND holder='b' AND expires_at > now()"))
            await until("b managing", lambda: b.managing("main"))
            above_breakeven(st, exchange)  # a's feed has these ticks waiting when it wakes
            await all_closed(dbc, 3)
            a.proc.send_signal(signal.SIGCONT)
            await until("a knows it lost the account", lambda: _stopped(a))
            await until("a standing by", lambda: _contains(a, "main: standing by; the account is managed by b"))
        finally:
            await b.stop()
            await a.stop()
        nursery.cancel_scope.cancel()
    assert first["holder"] == "a"
    assert set(orders_by_key(st, exchange)) == {"key-b"}
    assert len(st.accepted_orders(exchange)) == 3
    assert "close order" not in a.log
    assert a.code == 0 and b.code == 0, a.log[-3000:]
    assert_clean(b)
