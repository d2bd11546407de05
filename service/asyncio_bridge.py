"""The one asyncio loop the program runs on top of trio, for asyncpg and ccxt.

Enter it once, at the top of the program::

    async with open_asyncio_loop():
        ...  # storage and exchange calls cross into it with trio_asyncio.aio_as_trio

It is :func:`trio_asyncio.open_loop` with one difference. trio-asyncio turns every
error that asyncio reports to its loop's exception handler into an exception that
tears the whole loop down, and with it the program. Those reports are about work
nobody is waiting for: a future whose exception was never retrieved (asyncpg leaves
one behind when a connection attempt is cancelled half-way and the socket closes
later), an unclosed client session (aiohttp, under ccxt). Such a report must not stop
a service that is watching positions, so here it is logged as a warning and the loop
goes on. Errors of calls somebody awaits still reach their caller as before.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio_asyncio

log = logging.getLogger("service.asyncio")


def log_unawaited_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An asyncio loop exception handler that only logs."""
    exc = context.get("exception")
    message = context.get("message") or "unhandled error in the asyncio loop"
    if exc is not None:
        log.warning("asyncio: %s: %s: %s (nobody was waiting for it; carrying on)", message, type(exc).__name__, exc)
        log.debug("asyncio error detail", exc_info=exc)
    else:
        log.warning("asyncio: %s (carrying on)", message)


@asynccontextmanager
async def open_asyncio_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(log_unawaited_error)
        yield loop
