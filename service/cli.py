"""Command line: ``python run.py [command]``.

With no command it runs the self-contained demo.
"""

from __future__ import annotations

import argparse
import logging

import trio
import trio_asyncio

import storage
from service.logs import configure_logging

log = logging.getLogger("run")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description="Aged Position Manager")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ... (default INFO)")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("migrate", help="apply database migrations and exit")
    demo = sub.add_parser("demo", help="the self-contained demo (the default command)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--speed", type=float, default=1.0, help="run the policy clock this many times faster")
    return p


async def _migrate() -> int:
    async with trio_asyncio.open_loop():
        async with storage.open_database(migrate=False) as db:
            applied = await db.migrate()
            print(f"migrations applied: {', '.join(f'{v:03d}' for v in applied) or 'none (up to date)'}")
    return 0


async def _demo(args) -> int:
    async with trio_asyncio.open_loop():
        async with storage.open_database() as db:
            active = await db.active_aged_positions()
            log.info("database ready; %d active aged positions", len(active))
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    command = args.command or "demo"
    if command == "demo" and not hasattr(args, "duration"):
        args.duration, args.speed = None, 1.0
    try:
        if command == "migrate":
            return trio.run(_migrate)
        return trio.run(_demo, args)
    except storage.EmbeddedPostgresError as exc:
        log.error("cannot start the embedded database: %s", exc)
        return 2
    except KeyboardInterrupt:
        return 0
