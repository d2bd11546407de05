"""How a feed connection (or a REST look-up) fails, and how that is told in the log.

A connection normally dies of the network: closed, refused, timed out, or silent past
the heartbeat (:class:`HeartbeatTimeout`). Those are logged in one line
(:func:`describe_failure`); anything else (:func:`is_expected_failure` says no) may be a
bug and is logged with its traceback.
"""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, HandshakeError

__all__ = ["HeartbeatTimeout", "describe_failure", "is_expected_failure"]


class HeartbeatTimeout(Exception):
    """The server answered nothing for a whole heartbeat interval after our ping."""


# what a network connection normally dies of; anything else is logged with a traceback
_EXPECTED = (ConnectionClosed, HandshakeError, OSError, HeartbeatTimeout, trio.TooSlowError, trio.BrokenResourceError)


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def is_expected_failure(exc: BaseException) -> bool:
    """Is ``exc`` (or every exception in its group) something networks normally do?"""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_expected_failure(e) for e in exc.exceptions)
    return isinstance(exc, _EXPECTED)


def describe_failure(exc: BaseException) -> str:
    """One line for a connection failure, unwrapping single-exception groups."""
    exc = _unwrap(exc)
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        return f"connection closed (code {getattr(reason, 'code', '?')} {getattr(reason, 'name', '')})".rstrip()
    text = str(exc)
    cause = exc.__cause__
    if not text and cause is not None:
        text = str(cause)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
