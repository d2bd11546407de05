"""The asyncio loop under trio survives errors that nobody awaits.

Rules: no network; each test opens its own loop.
"""

import gc
import logging
import traceback

import pytest
import trio
import trio_asyncio

from service.asyncio_bridge import open_asyncio_loop


def _drop_failed_future(loop):
    future = loop.create_future()
    future.set_exception(ConnectionError("unexpected connection_lost() call"))
    del future
    gc.collect()  # the future's finaliser reports "exception was never retrieved"


async def test_an_unretrieved_future_exception_is_logged_and_the_loop_goes_on(caplog):
    caplog.set_level(logging.WARNING, logger="service.asyncio")
    async with open_asyncio_loop() as loop:
        _drop_failed_future(loop)
        await trio.sleep(0.05)
        assert await trio_asyncio.aio_as_trio(lambda: _answer())() == 42  # the loop still serves calls
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.asyncio"]
    assert any("never retrieved" in m and "connection_lost" in m for m in warnings), warnings


async def test_a_message_only_report_is_logged_too(caplog):
    caplog.set_level(logging.WARNING, logger="service.asyncio")
    async with open_asyncio_loop() as loop:
        loop.call_exception_handler({"message": "Unclosed client session"})
        await trio.sleep(0.05)
    assert any("Unclosed client session" in r.getMessage() for r in caplog.records if r.name == "service.asyncio")


async def test_the_plain_trio_asyncio_loop_would_have_stopped():
    # Why the bridge exists: the same report tears a plain trio-asyncio loop down.
    with pytest.raises(BaseException) as raised:
        async with trio_asyncio.open_loop() as loop:
            _drop_failed_future(loop)
            await trio.sleep(0.05)
    assert "connection_lost" in "".join(traceback.format_exception(raised.value))


async def test_an_awaited_error_still_reaches_its_caller():
    async with open_asyncio_loop():
        with pytest.raises(ConnectionError):
            await trio_asyncio.aio_as_trio(_fail)()


async def _answer():
    return 42


async def _fail():
    raise ConnectionError("refused")
