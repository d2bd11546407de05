"""The operator's commands: ``run.py hold | release | close | override``.

Each checks its input, records one action in the database (who: ``cli:<user>``) and
prints what it recorded; a running service picks it up within a second
(:mod:`service.operator_inbox`), and one that starts later does on start. Whether a
service runs or not, a hold is in force at once: it is written to the aged position in
the same transaction.

Bad input (an unknown or closed aged position, hours out of range, a setting out of
range) is one line on stderr and exit status 2; nothing is stored::

    run.py hold 0b6c...e1 --hours 4 --reason "funding at noon"
    run.py release 0b6c...e1
    run.py close 0b6c...e1 --reason "risk off"
    run.py override BTC/USDT:USDT --exchange bybit --set max_loss_percent=15 --reason "wide book"
    run.py override BTC/USDT:USDT --exchange bybit --clear
"""

from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

from actors.operator import (
    BadAction,
    ClearOverride,
    ForceClose,
    OperatorAction,
    Override,
    Release,
    check_action,
    hold_for,
    parse_aged_id,
)
from actors.policy import PolicyConfig

__all__ = ["COMMANDS", "add_parsers", "build_action", "cli_actor", "describe", "record"]

COMMANDS = ("hold", "release", "close", "override")


class OneLineParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The four commands, on the CLI's subparsers."""

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.__class__ = OneLineParser  # argparse builds subparsers with the parent's class
        p.add_argument("--config", help="TOML configuration (for the database and the policy)")
        return p

    hold = add("hold", "hold an aged position: no close (but the emergency rule) for HOURS")
    hold.add_argument("aged_id", metavar="AGED_ID", help="monitoring.aged_positions.id (run.py status shows it)")
    hold.add_argument("--hours", required=True, help="how long, more than 0 and at most 720")
    hold.add_argument("--reason", required=True, help="why (recorded and shown in the history)")
    release = add("release", "end the hold of an aged position")
    release.add_argument("aged_id", metavar="AGED_ID")
    release.add_argument("--reason")
    close = add("close", "close an aged position now (reduce-only market order; close reason manual)")
    close.add_argument("aged_id", metavar="AGED_ID")
    close.add_argument("--reason")
    override = add("override", "per-symbol policy settings (e.g. a wider max_loss_percent)")
    override.add_argument("symbol", metavar="SYMBOL", help='a unified symbol such as "BTC/USDT:USDT"')
    override.add_argument("--exchange", required=True, help="bybit or binanceusdm")
    override.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                          help="a policy setting for this symbol (repeatable); replaces the symbol's overrides")
    override.add_argument("--clear", action="store_true", help="remove the operators' overrides of the symbol")
    override.add_argument("--reason")


def cli_actor() -> str:
    """Who acts from this command line: ``cli:<login name>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def _settings(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadAction(f"--set: expected KEY=VALUE, got {pair!r}")
        if key in out:
            raise BadAction(f"--set: {key} given twice")
        out[key] = value.strip()
    return out


def build_action(args: argparse.Namespace, now: datetime) -> OperatorAction:
    """The action the command line asks for, checked (a :class:`BadAction` otherwise)."""
    if args.command == "hold":
        return hold_for(args.aged_id, args.hours, args.reason, now)
    if args.command == "release":
        return check_action(Release(parse_aged_id(args.aged_id), args.reason))
    if args.command == "close":
        return check_action(ForceClose(parse_aged_id(args.aged_id), args.reason))
    if args.clear:
        if args.settings:
            raise BadAction("--clear and --set: choose one")
        return check_action(ClearOverride(args.exchange, args.symbol, args.reason))
    if not args.settings:
        raise BadAction("--set KEY=VALUE (one or more) or --clear is needed")
    return check_action(Override(args.exchange, args.symbol, _settings(args.settings), args.reason))


async def record(db: Any, action: OperatorAction, policy: PolicyConfig, actor: str | None = None) -> dict:
    """Store ``action`` for ``actor`` (this command line's user by default); the stored row."""
    return await db.record_action(action, actor or cli_actor(), base=policy)


def describe(row: dict) -> str:
    """One line saying what was recorded."""
    what = row["action"]
    target = f"aged position {row['aged_position_id']}" if row["aged_position_id"] else ""
    where = f"{row['exchange']} {row['symbol']}"
    details = ""
    if what == "hold":
        details = f" until {row['params']['until']}"
    elif what == "override":
        details = " " + " ".join(f"{k}={v}" for k, v in row["params"]["settings"].items())
    reason = f" ({row['reason']})" if row["reason"] else ""
    return (
        f"recorded {what} #{row['id']}: {target + ' ' if target else ''}{where}{details}{reason} "
        f"by {row['actor']}; a running service applies it within a second"
    )
