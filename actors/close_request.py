"""What a position actor asks the executor for: one close, and the ids of its orders.

A :class:`CloseRequest` names the aged position, the position as the actor knows it
(side, quantity, the episode's entry) and the price the policy accepts. Every order the
executor sends for it carries a client order id made from the aged position id and an
attempt number (:func:`client_order_id`): the same attempt always gives the same id, so
an order whose reply was lost can be looked up instead of being sent twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID


@dataclass(frozen=True)
class CloseRequest:
    aged_id: UUID
    exchange: str
    symbol: str
    side: str  # the position's side: "long" | "short"
    qty: Decimal
    next_attempt: int
    reply: Any  # the actor's mailbox (anything with send_nowait), or None
    clock: Callable[[], datetime]
    reconcile_only: bool = False
    emergency: bool = False
    tick_received_at: float | None = None  # trio time of the tick that triggered it
    # The episode as the actor knows it: a position on the exchange that no longer
    # matches is checked against the fill history before anything is sent.
    entry_price: Decimal | None = None
    opened_at: datetime | None = None
    # The worst executable price the policy accepts for this close (its target); the
    # limit-IOC fallback is never priced worse. None: no bound (an emergency close).
    worst_price: Decimal | None = None


class EpisodeChanged(Exception):
    """The episode's position has another entry price than the actor decided on."""

    def __init__(self, qty: Decimal, entry_price: Decimal):
        super().__init__(f"position now {qty} at entry {entry_price}")
        self.qty, self.entry_price = qty, entry_price


def order_side(position_side: str) -> str:
    """A long is closed by a sell, a short by a buy."""
    return "sell" if position_side == "long" else "buy"


def client_order_id(aged_id: UUID, attempt: int) -> str:
    """Deterministic: the same aged position and attempt always give the same id (≤ 36 chars)."""
    return f"apm-{aged_id.hex[:24]}-{attempt}"
