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

from datetime import timedelta
from uuid import UUID

import trio

from actors.position_actor import ActorContext
from actors.registry import ActorRegistry
from exchanges.port import ExchangePort

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
