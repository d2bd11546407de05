"""What an exchange protocol's ``parse`` returns, besides a :class:`feeds.tick.Tick`.

* :class:`Alive` — a valid update for a symbol whose bid/ask/last did not change
  (proves the stream is alive for that symbol, nothing to fan out);
* control events: :class:`Ack`, :class:`Pong`, :class:`RequestError`;
* :class:`Ignored` — well-formed but not for us (unknown topic or event, a Bybit delta
  before its snapshot, ...);
* :class:`Malformed` — bad JSON, missing or mistyped fields, non-numeric, non-positive
  or absurd prices, a crossed book.

:data:`ParseResult` is the union of all of them and :class:`~feeds.tick.Tick`.
"""

from __future__ import annotations

from dataclasses import dataclass

from feeds.tick import Tick

__all__ = ["Ack", "Alive", "Ignored", "Malformed", "ParseResult", "Pong", "RequestError"]


@dataclass(frozen=True, slots=True)
class Alive:
    """A valid update for ``symbol`` (unified) that changed none of bid/ask/last."""

    symbol: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The exchange accepted a request (subscribe/unsubscribe/...)."""

    op: str
    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """Reply to an application-level ping."""

    req_id: str | None = None


@dataclass(frozen=True, slots=True)
class RequestError:
    """The exchange rejected a request (e.g. subscribe to an unknown symbol).

    ``symbols``: the unified symbols of that request, when the protocol knows them.
    """

    op: str
    message: str
    req_id: str | None = None
    code: int | None = None
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ignored:
    """Well-formed, but nothing to do with it."""

    reason: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """Broken or nonsensical input.

    ``reason`` is a short, stable category (fit for a metric label: "invalid JSON",
    "bad price", "crossed book", ...); ``detail`` says what exactly; ``raw`` is an
    excerpt of the frame.
    """

    reason: str
    raw: str = ""
    detail: str = ""


ParseResult = Tick | Alive | Ack | Pong | RequestError | Ignored | Malformed
