"""The commands the state machine returns, for the actor to carry out.

The machine decides, the actor acts: :class:`Persist` a change to the aged position,
:class:`RequestClose` from the executor, :class:`Emit` an event for the record and the
alerts, set a timer (:class:`ScheduleTimer`), tell an operator what came of their action
(:class:`Answer`), or :class:`Stop` once the aged position is finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from actors.statuses import Status


class _Keep:
    """The value of a :class:`Persist` field that does not change."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


@dataclass(frozen=True, slots=True, kw_only=True)
class Persist:
    """Record changes to the aged position: only the fields given (not :data:`KEEP`) change.

    The names are the machine's; storage maps them to its columns
    (:func:`storage.mapping.aged_columns`).
    """

    status: Status = KEEP
    grace_started_at: datetime = KEEP  # policy instants, from the open time
    progressive_started_at: datetime = KEEP
    hours_aged: Decimal = KEEP
    hours_in_grace: Decimal = KEEP
    hours_in_progressive: Decimal = KEEP
    target_price: Decimal | None = KEEP  # None: no target (not aged)
    breakeven_price: Decimal = KEEP
    loss_tolerance_percent: Decimal = KEEP
    sampled_price: Decimal | None = KEEP  # the last sampled executable price
    sampled_at: datetime = KEEP
    quantity: Decimal = KEEP  # still open
    entry_price: Decimal = KEEP
    closed_qty: Decimal = KEEP
    close_triggered_at: datetime = KEEP
    close_attempts: int = KEEP
    last_close_attempt_at: datetime = KEEP
    last_error: str | None = KEEP  # None clears it
    closed_at: datetime = KEEP
    close_reason: str = KEEP  # a CloseReason value
    phase_at_close: str | None = KEEP  # a Phase value; None: closed before the policy applied
    close_price: Decimal = KEEP
    close_order_id: str | None = KEEP
    pnl: Decimal = KEEP
    pnl_percent: Decimal = KEEP

    @property
    def fields(self) -> dict[str, Any]:
        """The fields given, by name."""
        return {name: value for name in PERSIST_FIELDS if (value := getattr(self, name)) is not KEEP}


PERSIST_FIELDS = tuple(Persist.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class RequestClose:
    qty: Decimal
    next_attempt: int
    reconcile_only: bool = False
    emergency: bool = False
    worst_price: Decimal | None = None  # the worst price the policy accepts (None: any, an emergency)


@dataclass(frozen=True, slots=True)
class Emit:
    event_type: str
    market_price: Decimal | None = None
    target_price: Decimal | None = None
    distance_percent: Decimal | None = None
    success: bool | None = None
    error: str | None = None
    data: dict[str, Any] | None = None
    critical: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleTimer:
    at: datetime
    kind: str = "phase"


@dataclass(frozen=True, slots=True)
class Answer:
    """What came of an operator's event (``"held until ..."``, ``"already closing"``), for the operator."""

    outcome: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The aged position is finished (closed); the actor may exit."""


Command = Persist | RequestClose | Emit | ScheduleTimer | Answer | Stop
