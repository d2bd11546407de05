"""Command line: ``python run.py [command]``. With no command it runs the demo.

Commands: ``demo`` (the default), ``live --config FILE [--dry-run]``, ``status``,
``stats [--days N]``, ``migrate``, ``simulator [--port N] [--api-key KEY:SECRET] ...``,
and the operator's ``hold``, ``release``, ``close``, ``override``
(:mod:`service.operator_cli`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from datetime import UTC, datetime

import trio

import storage
from actors.clock import PolicyClock
from actors.policy import ConfigError, PolicyConfig
from service import operator_cli
from service.asyncio_bridge import open_asyncio_loop
from service.logs import configure_logging
from simulator import options as simulator_options

log = logging.getLogger("run")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ... (default INFO)")
    common.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="text for people (default), json for machines")
    p = argparse.ArgumentParser(prog="run.py", description="Aged Position Manager", parents=[common])
    sub = p.add_subparsers(dest="command")
    demo = sub.add_parser("demo", parents=[common], help="the self-contained demo (the default command)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl+C)")
    demo.add_argument("--speed", type=float, default=DEMO_SPEED,
                      help="run the policy clock this many times faster (default 120: a minute is two hours)")
    demo.add_argument("--metrics-port", type=int, default=None,
                      help="HTTP /metrics, /health, /stats on this port (0 disables; default: the [metrics] default)")
    demo.add_argument("--database", default=DEMO_DATABASE,
                      help=f"the database on the server the demo empties and uses (default {DEMO_DATABASE})")
    live = sub.add_parser("live", parents=[common], help="manage real positions (or any base URLs)")
    live.add_argument("--config", required=True, help="TOML configuration file")
    live.add_argument("--dry-run", action="store_true", help="real market data and positions; send nothing")
    live.add_argument("--metrics-port", type=int, default=None, help="override [metrics] port (0 disables)")
    status = sub.add_parser("status", parents=[common], help="the active aged positions now")
    status.add_argument("--config", help="TOML configuration (for the policy and database)")
    stats = sub.add_parser("stats", parents=[common], help="statistics from the database")
    stats.add_argument("--days", type=float, default=7.0)
    stats.add_argument("--config", help="TOML configuration (for the database)")
    sub.add_parser("migrate", parents=[common], help="apply database migrations and exit")
    operator_cli.add_parsers(sub, common)
    simulator = sub.add_parser("simulator", parents=[common],
                               help="the exchange simulator alone; prints its API keys and a config for live",
                               description=simulator_options.DESCRIPTION,
                               formatter_class=simulator_options.HelpFormatter)
    simulator_options.add_arguments(simulator)
    simulator.set_defaults(subparser=simulator)  # for its usage errors
    return p


def _load(path):
    from service.config import load_config  # noqa: PLC0415
    return load_config(path)


DEMO_DATABASE = "aged_position_demo"
DEMO_SPEED = 120.0  # a real minute is two policy hours


async def _with_db(url, fn, migrate=True, **kw):
    try:
        async with open_asyncio_loop():
            async with storage.open_database(url, migrate=migrate, **kw) as db:
                return await fn(db)
    except BaseExceptionGroup as group:
        # The asyncio loop's nurseries wrap an embedded-server failure in exception
        # groups; unwrap it so that main() reports it in one line.
        embedded, rest = group.split(storage.EmbeddedPostgresError)
        if embedded is None or rest is not None:
            raise
        raise _first_leaf(embedded) from None


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _migrate(db) -> int:
    applied = await db.migrate()
    print(f"migrations applied: {', '.join(f'{v:03d}' for v in applied) or 'none (up to date)'}")
    return 0


def _operator(args) -> int:
    """``hold``/``release``/``close``/``override``: check, record, print what was recorded."""
    from actors.operator import BadAction  # noqa: PLC0415

    cfg = _load(args.config) if args.config else None
    policy = cfg.policy if cfg else PolicyConfig()
    try:
        action = operator_cli.build_action(args, datetime.now(UTC))
    except BadAction as exc:
        print(f"run.py {args.command}: {exc}", file=sys.stderr)
        return 2

    async def record(db):
        try:
            row = await operator_cli.record(db, action, policy)
        except BadAction as exc:
            print(f"run.py {args.command}: {exc}", file=sys.stderr)
            return 2
        print(operator_cli.describe(row))
        return 0
    return trio.run(_with_db, cfg.database.url if cfg else None, record)


def main(argv: list[str]) -> int:
    # SIGTERM before the service is up (while starting) stops as cleanly as Ctrl+C;
    # once it runs, the service handles both signals itself.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    command = args.command or "demo"
    try:
        if command == "simulator":
            from simulator.server import run as run_simulator  # noqa: PLC0415
            return run_simulator(simulator_options.check_arguments(args.subparser, args))
        if command == "migrate":
            return trio.run(_with_db, None, _migrate, False)
        if command == "status":
            from service.reports import status_table  # noqa: PLC0415
            cfg = _load(args.config) if args.config else None
            policy = cfg.policy if cfg else PolicyConfig()

            async def show(db):
                print(await status_table(db, PolicyClock().now(), policy))
                return 0
            return trio.run(_with_db, cfg.database.url if cfg else None, show)
        if command in operator_cli.COMMANDS:
            return _operator(args)
        if command == "stats":
            from service.reports import stats_tables  # noqa: PLC0415
            cfg = _load(args.config) if args.config else None

            async def show(db):
                print(stats_tables(await db.statistics(days=args.days)))
                return 0
            return trio.run(_with_db, cfg.database.url if cfg else None, show)
        if command == "live":
            from service.app import run_live  # noqa: PLC0415
            cfg = _load(args.config)
            return trio.run(_with_db, cfg.database.url,
                            lambda db: run_live(cfg, db, dry_run=args.dry_run, metrics_port=args.metrics_port))
        from service.demo import run_demo  # noqa: PLC0415
        if args.command is None:
            args.duration, args.speed, args.metrics_port, args.database = None, DEMO_SPEED, None, DEMO_DATABASE
        if args.speed <= 0:
            print("run.py: --speed must be positive", file=sys.stderr)
            return 2
        # The demo works in a database of its own, emptied at each start.
        return trio.run(functools.partial(_with_db, None, lambda db: run_demo(db, duration=args.duration,
                                                                            speed=args.speed,
                                                                            metrics_port=args.metrics_port),
                                          database=args.database, fresh_schema=True))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except storage.EmbeddedPostgresError as exc:
        print(f"cannot start the embedded database: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
