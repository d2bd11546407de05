"""What the machine knows about one aged position, and the rules its status follows.

:class:`PositionState` is the whole memory of one aged position: what the exchange
showed when it was detected, how much is left, where the status stands, and the
bookkeeping of a close in flight. It is immutable: :func:`~actors.position.step` returns
a new one. :class:`Settings` are the actor's knobs around the policy; :data:`LEGAL` lists
the status changes the machine may make (any other is a bug, and raises).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING
from uuid import UUID

from actors.policy import PolicyConfig, Schedule
from actors.statuses import STATUS_OF_PHASE, Status

if TYPE_CHECKING:
    from actors.position.events import PositionUpdate

PHASE_STATUS = STATUS_OF_PHASE
LEGAL = {
    Status.DETECTED: {
        Status.GRACE_ACTIVE,
        Status.PROGRESSIVE_ACTIVE,
        Status.CLOSED,
        Status.ERROR,
        Status.SKIPPED,
        Status.DUST,
    },
    Status.GRACE_ACTIVE: {Status.PROGRESSIVE_ACTIVE, Status.CLOSED, Status.ERROR, Status.SKIPPED, Status.DUST},
    # back to grace only when an operator's per-symbol override lengthens the grace period
    Status.PROGRESSIVE_ACTIVE: {Status.GRACE_ACTIVE, Status.CLOSED, Status.ERROR, Status.SKIPPED, Status.DUST},
    Status.ERROR: {
        Status.GRACE_ACTIVE,
        Status.PROGRESSIVE_ACTIVE,
        Status.CLOSED,
        Status.SKIPPED,
        Status.DETECTED,
        Status.DUST,
    },
    Status.SKIPPED: {Status.DETECTED, Status.GRACE_ACTIVE, Status.PROGRESSIVE_ACTIVE, Status.CLOSED, Status.DUST},
    Status.DUST: {Status.CLOSED},
    Status.CLOSED: set(),
}


@dataclass(frozen=True)
class Settings:
    """How the actor behaves around the policy.

    ``sample_interval`` — at most one routine price-check row per this many seconds…
    ``material_change_percent`` — …unless the distance to target moved at least this
    many percentage points since the last sample.
    ``error_cooldown`` — after a close failed on every attempt, wait this long before
    trying again (the position stays under watch).
    ``emergency_close_after_hours`` — force a close at any price once a position is
    this old. ``None`` (the default) turns it off.
    """

    sample_interval: timedelta = timedelta(seconds=60)
    material_change_percent: Decimal = Decimal("0.5")
    error_cooldown: timedelta = timedelta(seconds=300)
    emergency_close_after_hours: Decimal | None = None


@dataclass(frozen=True)
class PositionState:
    """Everything the machine knows about one aged position; :func:`step` returns a new one.

    ``schedule`` is derived from the side, entry price, open time and policy config.
    """

    aged_id: UUID
    position_id: int
    exchange: str
    symbol: str
    side: str
    entry_price: Decimal
    quantity: Decimal  # remaining open quantity
    opened_at: datetime
    config: PolicyConfig
    settings: Settings = field(default_factory=Settings)
    status: Status = Status.DETECTED
    closed_qty: Decimal = Decimal(0)
    close_in_flight: bool = False
    close_attempts: int = 0
    close_triggered_at: datetime | None = None
    error_until: datetime | None = None
    last_sample_at: datetime | None = None
    last_sample_distance: Decimal | None = None
    last_price: Decimal | None = None  # the last sampled executable price
    needs_reconcile: bool = False  # a close may have been in flight when we (re)started
    pending_update: PositionUpdate | None = None  # arrived while a close was in flight; applied after it
    ended_during_close: bool = False  # the episode ended while our close was in flight
    hold_until: datetime | None = None  # an operator's hold: no close before then but the emergency rule
    hold_reason: str | None = None
    manual_close: bool = False  # the close in flight (or done) is an operator's: its reason is manual
    schedule: Schedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", Schedule.of(self.side, self.entry_price, self.opened_at, self.config))

    def held(self, now: datetime) -> bool:
        """Whether an operator's hold is in force at ``now``."""
        return self.hold_until is not None and now < self.hold_until
