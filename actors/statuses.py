"""The words the service and its database share: aged position statuses, the policy
phase of each status, and the states of a close order.

Each is a :class:`enum.StrEnum`, so a member *is* the string stored in the database
(``Status.CLOSED == "closed"``) and a row read back compares equal to it. Define a new
status here and in a migration's ``CHECK``, nowhere else.
"""

from __future__ import annotations

from enum import StrEnum

from actors.policy import Phase


class Status(StrEnum):
    """Where an aged position is in its life (``monitoring.aged_positions.status``)."""

    DETECTED = "detected"  # aged, its phase not taken yet
    GRACE_PENDING = "grace_pending"  # accepted by the database for old rows; never set by the service
    GRACE_ACTIVE = "grace_active"  # closes only at breakeven, fees included
    PROGRESSIVE_ACTIVE = "progressive_active"  # closes within a loss allowance that grows with time
    ERROR = "error"  # every close attempt failed; tried again after a cool-down
    SKIPPED = "skipped"  # a trailing stop manages the position: hands off
    DUST = "dust"  # what is left is below the exchange's minimum order
    CLOSED = "closed"  # final


# The statuses whose actor watches prices and may close.
ACTIVE = frozenset({Status.DETECTED, Status.GRACE_ACTIVE, Status.PROGRESSIVE_ACTIVE})
# The statuses the database lists as being worked on (``ACTIVE`` and those waiting for a retry).
MONITORED = (Status.DETECTED, Status.GRACE_PENDING, Status.GRACE_ACTIVE, Status.PROGRESSIVE_ACTIVE, Status.ERROR)

# The status a position in each phase has.
STATUS_OF_PHASE = {
    Phase.NOT_AGED: Status.DETECTED,
    Phase.GRACE: Status.GRACE_ACTIVE,
    Phase.PROGRESSIVE: Status.PROGRESSIVE_ACTIVE,
}
# The phase each status stands for; statuses outside the phases (error, skipped, …) have none.
PHASE_OF_STATUS = {
    Status.DETECTED: Phase.NOT_AGED,
    Status.GRACE_PENDING: Phase.GRACE,
    Status.GRACE_ACTIVE: Phase.GRACE,
    Status.PROGRESSIVE_ACTIVE: Phase.PROGRESSIVE,
}


class OrderState(StrEnum):
    """What is known of one close order (``monitoring.close_orders.state``)."""

    PENDING = "pending"  # written ahead, maybe not sent yet
    UNKNOWN = "unknown"  # sent, outcome not known (a timeout, a lost reply)
    OPEN = "open"  # on the exchange's book, not final
    FILLED = "filled"
    PARTIALLY_FILLED = "partially_filled"  # final, with a part filled
    REJECTED = "rejected"
    CANCELED = "canceled"
    NOT_FOUND = "not_found"  # looked up by client order id: never reached the exchange


# A close in flight: the exchange may still fill it, so nothing new may be sent before
# it is looked up.
IN_FLIGHT = frozenset({OrderState.PENDING, OrderState.UNKNOWN, OrderState.OPEN})
FINAL = frozenset(
    {OrderState.FILLED, OrderState.REJECTED, OrderState.CANCELED, OrderState.NOT_FOUND, OrderState.PARTIALLY_FILLED}
)
