"""Write operations: plain values that describe one database write each.

Actors describe what to write with these; the storage writer applies them in order in
batches, and can hold them in a bounded buffer while the database is away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from actors.position import Persist


@dataclass(frozen=True, slots=True)
class UpdateAged:
    """Apply a position actor's :class:`~actors.position.Persist` to its aged position."""

    aged_id: UUID
    changes: Persist


@dataclass(frozen=True, slots=True)
class AddEvent:
    aged_id: UUID
    event_type: str
    market_price: Decimal | None = None
    target_price: Decimal | None = None
    price_distance_percent: Decimal | None = None
    action_taken: str | None = None
    success: bool | None = None
    error_message: str | None = None
    metadata: Mapping[str, Any] | None = None
    at: datetime | None = None

    def as_row(self) -> tuple:
        return (
            self.aged_id,
            self.event_type,
            self.market_price,
            self.target_price,
            self.price_distance_percent,
            self.action_taken,
            self.success,
            self.error_message,
            None if self.metadata is None else dict(self.metadata),
            self.at,
        )


@dataclass(frozen=True, slots=True)
class RecordCloseOrder:
    client_order_id: str
    aged_id: UUID
    attempt: int
    exchange: str
    symbol: str
    side: str  # order side: "buy" | "sell"
    order_type: str  # "market" | "limit_ioc"
    requested_qty: Decimal
    limit_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class UpdateCloseOrder:
    client_order_id: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClosePosition:
    """The service closed this episode. ``exit_reason`` (``aged_<phase>``) also closes the
    trading bot's row for it, when there is one and that is switched on."""

    position_id: int
    closed_at: datetime | None = None
    exit_reason: str | None = None


@dataclass(frozen=True, slots=True)
class CloseVanished:
    """Close an aged position as ``manual`` — unless it is already closed."""

    aged_id: UUID
    closed_at: datetime


WriteOp = CloseVanished | UpdateAged | AddEvent | RecordCloseOrder | UpdateCloseOrder | ClosePosition
