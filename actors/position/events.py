"""The events that move a position's state machine.

The actor turns what it hears into these: a price tick from the feed, a timer it set,
the executor's answer to a close, a change of the position on the exchange, the
position gone, and an operator's word (a hold, its release, a close now, a new
per-symbol policy). Each is a frozen value carrying ``now``, the instant it happened (the
machine never reads a clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.policy import PolicyConfig


@dataclass(frozen=True, slots=True)
class Start:
    now: datetime


@dataclass(frozen=True, slots=True)
class Tick:
    now: datetime
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Timer:
    """A timer the actor set is due. ``bid``/``ask``/``last``: the newest quote, when the
    actor has a recent one (a timer re-evaluates it against a target that moved)."""

    now: datetime
    kind: str = "phase"
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None


@dataclass(frozen=True, slots=True)
class CloseResult:
    """What the executor did with a close request.

    ``outcome``: ``"flat"`` (the exchange reports no position left), ``"vanished"``
    (the position was already gone before any fill of ours), ``"open"`` (nothing
    changed: e.g. a reconcile found no order), ``"failed"`` (every attempt failed).
    ``filled_qty``/``avg_price`` are *cumulative* over every close order ever sent for
    this aged position (volume-weighted price), so a result read back after a restart
    never double-counts. ``remaining_qty`` is what the exchange still shows;
    ``attempts`` is the highest attempt number used so far.
    """

    now: datetime
    outcome: str
    filled_qty: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    remaining_qty: Decimal | None = None
    attempts: int = 0
    last_order_id: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PositionUpdate:
    """The exchange (or the trading bot's book) shows the episode changed: a new size
    (averaging in, a partial reduction by someone else), a new average entry, or the
    trailing stop switched. ``None`` fields are unchanged."""

    now: datetime
    quantity: Decimal | None = None
    trailing_active: bool | None = None
    entry_price: Decimal | None = None

    def merged_with(self, later: PositionUpdate) -> PositionUpdate:
        return PositionUpdate(
            later.now,
            quantity=later.quantity if later.quantity is not None else self.quantity,
            trailing_active=later.trailing_active if later.trailing_active is not None else self.trailing_active,
            entry_price=later.entry_price if later.entry_price is not None else self.entry_price,
        )


@dataclass(frozen=True, slots=True)
class PositionVanished:
    now: datetime


@dataclass(frozen=True, slots=True)
class HoldSet:
    """An operator holds the position: no close before ``until`` except by the emergency rule."""

    now: datetime
    until: datetime
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class HoldReleased:
    """An operator ends the hold. ``bid``/``ask``/``last``: the newest quote the actor
    has, if recent (a price that is already good closes at once)."""

    now: datetime
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ForceCloseRequested:
    """An operator asks for a close now, at the market (close reason ``manual``)."""

    now: datetime
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    """The position's effective policy changed (a per-symbol override was set or cleared).
    ``bid``/``ask``/``last`` as for :class:`HoldReleased`: a target that moved past the
    price closes at once."""

    now: datetime
    config: PolicyConfig
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None


OperatorEvent = HoldSet | HoldReleased | ForceCloseRequested | PolicyChanged

Event = Start | Tick | Timer | CloseResult | PositionUpdate | PositionVanished | OperatorEvent
