"""``python run.py`` end to end: each subcommand as a real process.

Rules: loopback only, port 0 for the simulator, the real clock; the process under test
gets ``DATABASE_URL`` pointing at this run's test database (or its server, for the
demo, which keeps a database of its own). Running processes are watched for what they
should do (a row, a log line) and then stopped; subprocess timeouts are hang guards.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import asyncpg
import pytest
import trio

from actors.policy import ConfigError
from service.config import parse_config
from simulator.server import serve_simulator
from tests.support import run_asyncio, within

ROOT = Path(__file__).resolve().parent.parent


def run_py(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


VALID = {"exchanges": [{"name": "bybit"}]}


@pytest.mark.parametrize("doc,key", [
    ({}, "exchanges"),                                                          # missing key
    ({"exchanges": [{"rest_url": "http://x"}]}, "exchanges[0].name"),           # missing key in a table
    ({**VALID, "policy": {"max_age_hours": "three"}}, "policy.max_age_hours"),  # wrong type
    ({**VALID, "metrics": {"port": "9108"}}, "metrics.port"),                   # wrong type
    ({"exchanges": [{"name": "kraken"}]}, "exchanges[0].name"),                 # unknown exchange
    ({**VALID, "policy": {"grace_period_hours": -1}}, "policy.grace_period_hours"),  # negative value
    ({**VALID, "manager": {"error_cooldown_seconds": -5}}, "manager.error_cooldown_seconds"),
    ({**VALID, "policy": {"max_loss_percent": 0.1}}, "policy.max_loss_percent"),  # cap below the step
    ({**VALID, "policy": {"max_age": 3}}, "policy.max_age"),                    # unknown key
    ({**VALID, "surprise": {}}, "surprise"),
    ({"exchanges": [{"name": "bybit", "api_key_env": "K"}]}, "exchanges[0].api_secret_env"),
])
def test_config_errors_name_the_key(doc, key):
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert err.value.key == key


def test_valid_config_and_defaults():
    cfg = parse_config({**VALID, "policy": {"max_age_hours": 4, "commission_percent": 0.04},
                        "manager": {"emergency_close_after_hours": 48}})
    assert cfg.policy.max_age_hours == D(4) and cfg.policy.commission_percent == D("0.04")
    assert cfg.positions.emergency_close_after_hours == D(48)
    assert cfg.exchanges[0].ws_url.startswith("wss://stream.bybit.com")
    assert cfg.metrics.port == 9108


def test_live_with_a_bad_config_file_exits_non_zero_naming_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[exchanges]]\nname = "bybit"\n[policy]\nloss_step_percent = -0.5\n')
    out = run_py("live", "--config", str(path))
    assert out.returncode == 2
    assert "policy.loss_step_percent" in out.stderr and "Traceback" not in out.stderr
    path.write_text("this is = not [toml")
    out = run_py("live", "--config", str(path))
    assert out.returncode == 2 and "not valid TOML" in out.stderr


async def test_migrate_status_and_stats(db, database_url):  # db: empty tables
    env = {"DATABASE_URL": database_url}
    out = run_py("migrate", env=env)
    assert out.returncode == 0 and "up to date" in out.stdout
    out = run_py("status", env=env)
    assert out.returncode == 0 and "No active aged positions" in out.stdout
    out = run_py("stats", "--days", "3", env=env)
    assert out.returncode == 0 and "last 3 days" in out.stdout and "success rate" in out.stdout


# What the demo must show before it is stopped (it runs until then, however slow the
# machine): its scripted closes, the injected actor crash and order rejection, and the
# position that stays under water moving on to progressive.
DEMO_SHOWS = {
    # the actors' own lines (the alerts' log sink repeats each close as an ALERT line)
    "three closes": lambda log: log.count("actors.position: aged.close.completed") >= 3,
    "the injected actor crash and its restart": lambda log: "event=child_crashed" in log
    and "event=child_restarting" in log,
    "the injected rejection and its retry": lambda log: "RateLimitExceeded" in log and "(attempt 2)" in log,
    # detected in grace and then moved on, or (a slow start at 3600x) detected there
    "XRP in progressive": lambda log: re.search(r"aged\.(phase\.changed|position\.detected) binanceusdm "
                                                r"XRP/USDT:USDT .*phase=progressive", log) is not None,
}


@pytest.fixture
def demo_database(server_url):
    """A database name of this run's own for the demo (demos of other runs on the same
    server use theirs), dropped afterwards."""
    name = f"apm_demo_test_{uuid.uuid4().hex[:12]}"
    yield name

    async def drop():
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
    run_asyncio(drop())


async def test_demo_reaches_a_close_and_a_restart_and_exits_cleanly(server_url, demo_database, tmp_path):
    # --duration is only a ceiling; the demo is stopped with SIGTERM (as by Ctrl+C) once
    # it has shown everything.
    log_path, out_path = tmp_path / "demo.log", tmp_path / "demo.out"
    with open(log_path, "wb") as log_file, open(out_path, "wb") as out_file:  # files: the child never blocks
        proc = await trio.lowlevel.open_process(
            [sys.executable, "run.py", "demo", "--duration", "900", "--speed", "3600", "--database", demo_database],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": server_url}, stdout=out_file, stderr=log_file)
        try:
            missing = list(DEMO_SHOWS)
            with trio.move_on_after(600):  # a hang guard only
                while missing and proc.returncode is None:
                    await trio.sleep(0.2)
                    log = log_path.read_text()
                    missing = [what for what, shown in DEMO_SHOWS.items() if not shown(log)]
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            with within(120, "the demo exited after SIGTERM"):
                code = await proc.wait()
    log = log_path.read_text()
    assert not missing, f"the demo never showed: {', '.join(missing)}\n{log[-3000:]}"
    assert code == 0, log[-3000:]
    assert "SIGTERM received: shutting down" in log  # stopped by the signal, not by the ceiling
    assert "Traceback" not in log
    summary = out_path.read_text()
    assert "Aged positions" in summary and summary.count("closed") >= 3
    assert "XRP/USDT:USDT" in summary and "progressive_active" in summary  # the one that stays under water


async def _live_run(db, tmp_path, *, dry_run: bool):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        info = sim.info()
        opened = datetime.now(timezone.utc) - timedelta(hours=5)  # in grace: breakeven 100.2
        sim.state.set_position("bybit", "BTCUSDT", "long", "0.5", "100", opened_at=opened)
        sim.state.set_price("bybit", "BTCUSDT", bid=D("99"), ask=D("99.1"), last=D("99"))
        config = tmp_path / "live.toml"
        config.write_text(f"""
[manager]
poll_interval_seconds = 0.5
[[exchanges]]
name = "bybit"
rest_url = "{info['bybit']['rest']}"
ws_url = "{info['bybit']['ws']}"
private_ws_url = "{info['bybit']['private_ws']}"
api_key_env = "TEST_BYBIT_KEY"
api_secret_env = "TEST_BYBIT_SECRET"
[metrics]
port = 0
""")
        env = {**os.environ, "TEST_BYBIT_KEY": "sim-key", "TEST_BYBIT_SECRET": "sim-secret"}
        args = [sys.executable, "run.py", "live", "--config", str(config)] + (["--dry-run"] if dry_run else [])
        log_path = tmp_path / "live.log"
        log_file = open(log_path, "wb")  # a file, not a pipe: the child never blocks on a full pipe
        proc = await trio.lowlevel.open_process(args, cwd=ROOT, env={**env, "DATABASE_URL": db},
                                                stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            import storage.repository as repo  # noqa: PLC0415
            database = await repo.Database.connect(db, max_size=1)
            with within(300, "the live service detected the aged position"):
                while not await database.fetch("SELECT id FROM monitoring.aged_positions"):
                    await trio.sleep(0.2)
            sim.state.set_price("bybit", "BTCUSDT", bid=D("100.5"), ask=D("100.6"), last=D("100.5"))
            with within(300, "the live service closed the position after the price crossed its target"):
                while not await database.fetch("SELECT id FROM monitoring.aged_positions WHERE status='closed'"):
                    await trio.sleep(0.2)
            [row] = await database.fetch("SELECT * FROM monitoring.aged_positions")
            await database.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            with within(120, "the live service exited after SIGTERM"):
                code = await proc.wait()
            log_file.close()
            stderr = log_path.read_text()
        orders = [o.record() for o in sim.state.orders]
        position = sim.state.positions.get(("bybit", "BTCUSDT"))
        nursery.cancel_scope.cancel()
    return code, stderr, row, orders, position


async def test_live_mode_closes_a_position_whose_price_crosses_its_target(aio_loop, db, database_url, tmp_path):
    code, stderr, row, orders, position = await _live_run(database_url, tmp_path, dry_run=False)
    assert code == 0, stderr
    assert row["close_reason"] == "profitable" and row["close_price"] == D("100.5")
    assert len(orders) == 1 and orders[0]["reduce_only"] and orders[0]["status"] == "filled"
    assert position is None  # flat on the exchange
    assert "sim-secret" not in stderr


async def test_dry_run_sends_nothing(aio_loop, db, database_url, tmp_path):
    code, stderr, row, orders, position = await _live_run(database_url, tmp_path, dry_run=True)
    assert code == 0, stderr
    assert row["status"] == "closed" and row["close_price"] == D("100.5")  # a simulated fill
    assert orders == [] and position is not None  # nothing reached the exchange
    assert "DRY RUN" in stderr


async def test_live_refuses_a_hedge_mode_account_and_sends_nothing(tmp_path, database_url):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)
        info = sim.info()
        sim.state.hedge_mode["binanceusdm"] = True
        sim.state.set_position("binanceusdm", "BTCUSDT", "long", "0.5", "100",
                               opened_at=datetime.now(timezone.utc) - timedelta(hours=5))
        config = tmp_path / "live.toml"
        config.write_text(f"""
[[exchanges]]
name = "binanceusdm"
rest_url = "{info['binanceusdm']['rest']}"
ws_url = "{info['binanceusdm']['ws']}"
private_ws_url = "{info['binanceusdm']['private_ws']}"
api_key_env = "TEST_BINANCE_KEY"
api_secret_env = "TEST_BINANCE_SECRET"
[metrics]
port = 0
""")
        env = {"TEST_BINANCE_KEY": "sim-key", "TEST_BINANCE_SECRET": "sim-secret", "DATABASE_URL": database_url}
        out = await trio.to_thread.run_sync(lambda: run_py("live", "--config", str(config), env=env))
        orders = list(sim.state.orders)
        nursery.cancel_scope.cancel()
    assert out.returncode == 2, out.stderr
    assert "binanceusdm: the account is in hedge mode" in out.stderr and "one-way" in out.stderr
    assert orders == []


async def test_hedge_mode_check_names_hedged_accounts_and_passes_unreachable_ones(caplog):
    from exchanges.errors import RetryableError  # noqa: PLC0415
    from doubles.exchange import MemoryExchange  # noqa: PLC0415
    from service.app import hedge_mode_accounts  # noqa: PLC0415
    down = MemoryExchange(name="down")
    down.fail_next(RetryableError("timeout"), method="position_mode")
    exchanges = {"one": MemoryExchange(name="one"), "two": MemoryExchange(name="two", mode="hedge"),
                 "new": MemoryExchange(name="new", mode="unknown"), "down": down}
    assert await hedge_mode_accounts(exchanges) == ["two"]
    assert any("down: could not read the account's position mode" in r.getMessage() for r in caplog.records)


def test_the_example_config_is_valid():
    from service.config import DEFAULTS, load_config  # noqa: PLC0415
    cfg = load_config(ROOT / "config.example.toml")
    assert [e.name for e in cfg.exchanges] == ["bybit", "binanceusdm"]
    assert cfg.policy.max_age_hours == D(3) and cfg.executor.retry_delays == (1.0, 3.0, 5.0)
    # the values it writes out are the program's defaults
    assert cfg == replace(DEFAULTS, exchanges=cfg.exchanges)


# --- the standalone simulator, as a newcomer uses it -------------------------------------------


@pytest.mark.parametrize("command", [["run.py", "simulator"], ["-m", "simulator"]])
def test_simulator_help_lists_every_option_and_the_accepted_keys(command):
    out = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "100"})
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # whatever the line breaks
    for option in ("--host", "--port", "--seed", "--tick-interval", "--api-key KEY:SECRET"):
        assert option in text
    assert "default sim-key:sim-secret" in text
    assert "'sim-key' with the secret 'sim-secret'" in text


def test_simulator_rejects_a_malformed_key_option():
    out = run_py("simulator", "--port", "0", "--api-key", "no-secret", timeout=60)
    assert out.returncode == 2 and "--api-key wants KEY:SECRET" in out.stderr


async def _wait_for_text(path: Path, text: str, proc) -> str:
    """The file's contents once ``text`` is in it (fails if ``proc`` exits first)."""
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        assert proc.returncode is None, f"exited with {proc.returncode} before {text!r}:\n{content[-3000:]}"
        await trio.sleep(0.1)


def _snippet_and_env(printed: str) -> tuple[str, dict[str, str]]:
    """What a newcomer copies from the simulator's output: the config file and the exports."""
    from simulator.options import SNIPPET_BEGIN, SNIPPET_END  # noqa: PLC0415
    lines = printed.splitlines()
    config = "\n".join(lines[lines.index(SNIPPET_BEGIN):lines.index(SNIPPET_END) + 1]) + "\n"
    env = {}
    for line in lines:
        if line.startswith("export "):
            for assignment in shlex.split(line)[1:]:
                name, _, value = assignment.partition("=")
                env[name] = value
    return config, env


async def _stop(proc) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        return await proc.wait()


async def test_live_runs_against_the_standalone_simulator_with_what_it_prints(db, database_url, tmp_path):
    from service.alerts import http_request  # noqa: PLC0415
    sim_out, sim_err, live_log = tmp_path / "sim.out", tmp_path / "sim.err", tmp_path / "live.log"
    with open(sim_out, "wb") as out, open(sim_err, "wb") as err:  # files, not pipes: a child never blocks
        sim = await trio.lowlevel.open_process([sys.executable, "run.py", "simulator", "--port", "0"], cwd=ROOT,
                                               stdout=out, stderr=err)
    live = None
    try:
        with trio.fail_after(60):
            printed = await _wait_for_text(sim_out, "sim.toml (end)", sim)
        config, exports = _snippet_and_env(printed)
        assert exports == {"BYBIT_API_KEY": "sim-key", "BYBIT_API_SECRET": "sim-secret",
                           "BINANCE_API_KEY": "sim-key", "BINANCE_API_SECRET": "sim-secret"}
        parsed = parse_config(tomllib.loads(config))
        assert [e.name for e in parsed.exchanges] == ["bybit", "binanceusdm"]
        admin = parsed.exchanges[0].rest_url.rsplit("/", 1)[0] + "/_sim"
        # an aged position on each exchange, opened the way the README shows (the admin API)
        opened = (datetime.now(timezone.utc) - timedelta(hours=5)).isoformat()
        for exchange in ("bybit", "binanceusdm"):
            body = {"exchange": exchange, "symbol": "BTCUSDT", "side": "long", "qty": "0.5", "entry_price": "80000",
                    "opened_at": opened}
            status, _, reply = await http_request("POST", admin + "/positions", json.dumps(body).encode(),
                                                  headers=[("Content-Type", "application/json")])
            assert status == 200, reply
        (tmp_path / "sim.toml").write_text(config)
        with open(live_log, "wb") as log_file:
            live = await trio.lowlevel.open_process(
                [sys.executable, "run.py", "live", "--config", str(tmp_path / "sim.toml"), "--metrics-port", "0"],
                cwd=ROOT, env={**os.environ, **exports, "DATABASE_URL": database_url},
                stdout=subprocess.DEVNULL, stderr=log_file)
        with trio.fail_after(90):  # a ceiling for a slow machine, not a budget
            await _wait_for_text(live_log, "aged.position.detected bybit BTC/USDT:USDT long", live)
            await _wait_for_text(live_log, "aged.position.detected binanceusdm BTC/USDT:USDT long", live)
    finally:
        live_code = await _stop(live) if live is not None else None
        sim_code = await _stop(sim)
    log = live_log.read_text()
    assert live_code == 0, log[-3000:]
    assert sim_code == 0, sim_err.read_text()[-3000:]
    assert "starting LIVE mode on bybit (http://127.0.0.1:" in log
    for bad in ("API key is invalid", "AuthenticationError", "Traceback", "sim-secret"):
        assert bad not in log
    # the target is shown on the market's tick (BTCUSDT: 0.1), not with every digit policy math gives
    [detected] = [line for line in log.splitlines() if "aged.position.detected bybit" in line]
    assert detected.endswith("target=80160.0")
