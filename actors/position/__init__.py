"""The per-position logic, as a pure state machine.

``step(state, event) -> (state, commands)`` is all there is: no trio, no database, no
clock. The actor around it (:mod:`actors.position_actor`) feeds it events — ticks,
timers, close results, position updates — and carries its commands out: persist a
change, ask the executor to close, emit an event, set a timer.

Statuses move only along these edges::

    detected ──► grace_active ──► progressive_active ──► closed
        │              │   ▲              │   ▲
        └──────────────┼───┼──────────────┘   │        (any active status may go to
                       ▼   │                  │         error and back after a cool-down,
                     error / skipped ─────────┘         or to skipped and back while a
                                                        trailing stop is active)

An operator's per-symbol override that lengthens the grace period is the one way back
(``progressive_active`` to ``grace_active``). ``closed`` is final. At most one close is
in flight at a time, and a close never asks for more than the remaining quantity.
``dust`` (from any active status or ``error``) is where a close ends when what is
left is below the exchange's minimum order quantity: no order can close it, so the
actor stops (one alert) and the detector records the close once the position is gone.

The package, by concern: :mod:`~actors.position.state` (the state, the settings, the
legal status changes), :mod:`~actors.position.events` and
:mod:`~actors.position.commands` (what goes in and what comes out),
:mod:`~actors.position.machine` (:func:`step` and its per-event handlers),
:mod:`~actors.position.phases` (the status following the policy's phases),
:mod:`~actors.position.close` (when to close and what a close's result means),
:mod:`~actors.position.updates` (changes on the exchange),
:mod:`~actors.position.operator` (an operator's hold, release, close, policy) and
:mod:`~actors.position.quiet` (the ticks that cannot change anything). Callers import
from here.
"""

from actors.position.close import crossing_time
from actors.position.commands import (
    KEEP,
    PERSIST_FIELDS,
    Answer,
    Command,
    Emit,
    Persist,
    RequestClose,
    ScheduleTimer,
    Stop,
)
from actors.position.events import (
    CloseResult,
    Event,
    ForceCloseRequested,
    HoldReleased,
    HoldSet,
    OperatorEvent,
    PolicyChanged,
    PositionUpdate,
    PositionVanished,
    Start,
    Tick,
    Timer,
)
from actors.position.machine import step
from actors.position.quiet import QuietBand, quiet_band
from actors.position.state import LEGAL, PHASE_STATUS, PositionState, Settings

__all__ = [
    "step",
    "PositionState",
    "Settings",
    "LEGAL",
    "PHASE_STATUS",
    "Event",
    "Start",
    "Tick",
    "Timer",
    "CloseResult",
    "PositionUpdate",
    "PositionVanished",
    "HoldSet",
    "HoldReleased",
    "ForceCloseRequested",
    "PolicyChanged",
    "OperatorEvent",
    "Command",
    "Answer",
    "Persist",
    "KEEP",
    "PERSIST_FIELDS",
    "RequestClose",
    "Emit",
    "ScheduleTimer",
    "Stop",
    "QuietBand",
    "quiet_band",
    "crossing_time",
]
