"""What the parts of :class:`actors.detector.Detector` share: one declaration, checked by mypy.

The detector is assembled from one class per concern: following the exchanges' books
(:mod:`actors.detector` itself), finding when a position was opened or re-entered
(:mod:`actors.open_time_lookup`) and the aging timers that create aged positions
(:mod:`actors.aging_timers`). Each works on state :meth:`Detector.__init__
<actors.detector.Detector>` sets. :class:`DetectorParts` is their common base class;
it declares the detector's settings, collaborators and counters, and adds no
behaviour. A new shared attribute is declared here first; mypy then checks every use
of it in every part.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID

import trio

from actors import episodes as ep
from actors.position_actor import ActorContext
from actors.registry import ActorRegistry
from exchanges.port import ExchangePort, ExchangePosition
from feeds.account_view import AccountView

__all__ = ["DetectorParts"]


class DetectorParts:
    """The common base of the detector's parts. See the module docstring."""

    ctx: ActorContext
    exchanges: dict[str, ExchangePort]
    registry: ActorRegistry
    poll_interval: float
    symbols: dict[str, set[str] | None]
    fill_history: timedelta
    clock_skew: timedelta
    polls: int
    detections: int
    # One aging timer per open episode, by episode id; they run in ``_nursery``.
    _timers: dict[int, trio.CancelScope]
    _nursery: trio.Nursery
    _last_sent: dict[UUID, tuple]  # the last update told to each actor
    _bad_symbols: set[tuple[str, str]]
    # The account streams (exchange name -> view) and what the detector keeps of them.
    accounts: dict[str, AccountView]
    stream_changes: int  # position changes from the streams, each handled to its end
    _exchange_locks: dict[str, trio.Lock]  # one per exchange: a poll and a stream step never interleave
    _stream_steps: dict[str, int]  # steps taken per exchange (a poll re-reads if one came meanwhile)
    # The symbols each stream shows open since its last snapshot (absent: no snapshot read yet).
    _stream_open: dict[str, set[str]]

    if TYPE_CHECKING:
        # the detector itself
        def _allowed(self, exchange: str, symbol: str) -> bool: ...
        async def _sync_exchange(
            self, name: str, positions: Sequence[ExchangePosition], bot: dict[str, dict]
        ) -> None: ...
        async def _follow_guarded(
            self, port: ExchangePort, p: ExchangePosition, row: dict | None, bot_row: dict | None, now: datetime
        ) -> None: ...
        async def _start_episode(
            self,
            port: ExchangePort,
            p: ExchangePosition,
            bot_row: dict | None,
            now: datetime,
            *,
            end_previous: str | None,
            ended: dict | None = None,
            known: ep.OpenTime | None = None,
        ) -> None: ...
        async def _keep_episode(self, p: ExchangePosition, row: dict, bot_row: dict | None, now: datetime) -> None: ...
        async def _refresh_book(self, book: list[dict]) -> None: ...
        async def _vanished(self, row: dict) -> None: ...
        async def _update_actors(self, book: list[dict]) -> None: ...
        @staticmethod
        def _unusable(p: ExchangePosition) -> str | None: ...
        @staticmethod
        def _bot_rows_of(rows: list[dict], exchange: str) -> dict[str, dict]: ...

        # the aging timers
        def _ensure_timer(self, row: dict) -> None: ...
