"""What one close has done so far, and the :class:`CloseResult` it answers with.

:class:`Fills` is the executor's memory of one aged position: its final orders with
what each filled, the orders sent whose outcome is not known yet, and the highest
attempt number used. It outlives a single request (a failed close leaves it for the
next one) and is dropped when the close is finished. The three result builders turn
it into the answer the position actor gets: :func:`close_result` (flat, vanished or
still open), :func:`failed_result` and :func:`dust_result`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal

from actors.close_request import CloseRequest
from actors.position import CloseResult
from exchanges.port import LotLimits

log = logging.getLogger("actors.executor")


@dataclass
class Fills:
    """Every close order of one aged position: final ones with their fills, by client
    order id, and those sent whose outcome is not known to be final yet."""

    orders: dict[str, tuple[Decimal, Decimal | None]] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # client order id -> attempt
    max_attempt: int = 0
    last_order_id: str | None = None

    def sent(self, cid: str, attempt: int) -> None:
        """An order that may have reached the exchange: its attempt number is used up."""
        self.pending[cid] = attempt
        self.max_attempt = max(self.max_attempt, attempt)

    def settled(self, cid: str, attempt: int) -> None:
        """An order known never to have executed (rejected, or never seen)."""
        self.pending.pop(cid, None)
        self.max_attempt = max(self.max_attempt, attempt)

    def record(self, cid: str, attempt: int, filled: Decimal, avg: Decimal | None) -> None:
        self.orders[cid] = (filled, avg)
        self.pending.pop(cid, None)
        self.max_attempt = max(self.max_attempt, attempt)
        if filled > 0:
            self.last_order_id = cid

    @property
    def total(self) -> Decimal:
        return sum((q for q, _ in self.orders.values()), Decimal(0))

    @property
    def vwap(self) -> Decimal | None:
        total = self.total
        if total <= 0:
            return None
        return sum((q * p for q, p in self.orders.values() if q > 0 and p is not None), Decimal(0)) / total


def close_result(
    req: CloseRequest, fills: Fills, remaining: Decimal, attempts: int, *, outcome: str | None
) -> CloseResult:
    """The answer of a close that ended normally: ``flat`` when nothing is left and
    something filled, ``vanished`` when nothing is left and nothing of ours filled,
    ``open`` when some remains (unless ``outcome`` names it)."""
    if outcome is None:
        outcome = ("flat" if fills.total > 0 else "vanished") if remaining == 0 else "open"
    return CloseResult(
        req.clock(),
        outcome,
        filled_qty=fills.total,
        avg_price=fills.vwap,
        remaining_qty=remaining,
        attempts=max(attempts, fills.max_attempt),
        last_order_id=fills.last_order_id,
    )


def failed_result(
    req: CloseRequest, fills: Fills, attempts: int, error: str | None, remaining: Decimal | None = None
) -> CloseResult:
    """The answer of a close that gave up for now; the position stays under watch."""
    log.critical(
        "CLOSE FAILED %s %s after %d attempts: %s — position stays under watch",  # pragma: no mutate
        req.exchange,
        req.symbol,
        attempts,
        error,
    )  # pragma: no mutate
    return CloseResult(
        req.clock(),
        "failed",
        filled_qty=fills.total,
        avg_price=fills.vwap,
        remaining_qty=remaining,
        attempts=max(attempts, fills.max_attempt),
        last_order_id=fills.last_order_id,
        error=error,
    )


def dust_result(
    req: CloseRequest, fills: Fills, remaining: Decimal, attempts: int, limits: LotLimits | None
) -> CloseResult:
    """The answer of a close whose remainder is below the minimum order: no order can close it."""
    least = limits.min_qty if limits is not None and limits.min_qty else (limits.step if limits else None)
    error = (
        f"remaining {remaining} is below the minimum order quantity"
        + (f" {least}" if least is not None else "")
        + ": no order can close it"
    )
    log.error("%s %s: %s", req.exchange, req.symbol, error)  # pragma: no mutate
    return CloseResult(
        req.clock(),
        "dust",
        filled_qty=fills.total,
        avg_price=fills.vwap,
        remaining_qty=remaining,
        attempts=max(attempts, fills.max_attempt),
        last_order_id=fills.last_order_id,
        error=error,
    )
