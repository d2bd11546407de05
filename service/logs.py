"""Logging set-up: readable lines by default, one JSON object per line for machines.

Every line logged by an account's service names the account (``[main]`` in text, an
``account`` key in JSON): :data:`ACCOUNT` is set in the task that runs the account's
service, and the tasks it starts inherit it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

ACCOUNT: contextvars.ContextVar[str | None] = contextvars.ContextVar("account", default=None)


class AccountFilter(logging.Filter):
    """Adds ``account`` (the name or None) and ``account_tag`` (`` [name]`` or empty) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        account = ACCOUNT.get()
        record.account = account
        record.account_tag = f" [{account}]" if account else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "account", None):
            out["account"] = record.account
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(AccountFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        text = "%(asctime)s %(levelname)-7s %(name)s%(account_tag)s: %(message)s"
        handler.setFormatter(logging.Formatter(text, "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("hypercorn.access", "hypercorn.error", "asyncio", "trio-websocket"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
