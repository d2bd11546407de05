"""The detector's aging timers: one per open episode, firing the instant it ages.

Each timer sleeps on the policy clock until the episode crosses ``max_age_hours``,
then creates the ``aged_positions`` row (with its detection event) and starts the
position actor, at that instant rather than at the next poll. A timer whose aged row
already exists (after a restart) starts the actor at once. The timers run in the
detector's nursery, so none outlives the detector.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

import trio
import trio.lowlevel

from actors.detector_parts import DetectorParts
from actors.events import DETECTED, LifecycleEvent
from actors.policy import Phase, aged_at, assess, breakeven_price
from actors.statuses import STATUS_OF_PHASE, Status
from exchanges import logfmt
from storage import ops as op
from storage.mapping import position_state

log = logging.getLogger("actors.detector")  # every part of the detector logs under one name

__all__ = ["AgingTimers"]


class AgingTimers(DetectorParts):
    """Scheduling the aging timers and creating aged positions. See the module docstring."""

    def _ensure_timer(self, row: dict) -> None:
        if row["id"] in self._timers:
            return
        scope = trio.CancelScope()
        self._timers[row["id"]] = scope
        self._nursery.start_soon(self._age_timer, row, scope)

    def _not_aged_yet(self, row: dict) -> bool:
        now = self.ctx.clock.now()
        return assess(row["side"], row["entry_price"], row["opened_at"], now, self.ctx.config).phase is Phase.NOT_AGED

    async def _age_timer(self, row: dict, scope: trio.CancelScope) -> None:
        with scope:
            existing = await self.ctx.db.aged_position_for(row["id"])
            if existing is None:
                crossing = aged_at(row["opened_at"], self.ctx.config)
                await self.ctx.clock.sleep_until(crossing)
                await trio.lowlevel.checkpoint()  # strictly older: assess just after the boundary
                # the policy clock (scaled in the demo) may wake a hair early: step to just past the boundary
                while self._not_aged_yet(row):  # noqa: ASYNC110
                    await trio.sleep(0.001)
                current = await self.ctx.db.episode(row["id"])  # size and entry as they are now
                if current is None or current["status"] != "open":
                    return
                existing = await self._create_aged(current, crossing)
            if existing["status"] != Status.CLOSED:
                # The row in hand is the actor's state: it need not read it again (and can
                # start watching while the database is away). A close never triggered has
                # no order in flight.
                state = None
                if existing["close_triggered_at"] is None:
                    policy = self.ctx.policy_for(existing["exchange"], existing["symbol"])
                    state = position_state(existing, policy, self.ctx.settings, inflight_orders=False)
                await self.registry.ensure(existing["id"], state)
        # the timer has done its job; keep the id so it is not scheduled again

    async def _create_aged(self, row: dict, crossing: datetime) -> dict:
        now = self.ctx.clock.now()
        policy = self.ctx.policy_for(row["exchange"], row["symbol"])  # with the symbol's overrides
        a = assess(row["side"], row["entry_price"], row["opened_at"], now, policy)
        status = Status.SKIPPED if row["trailing_activated"] else STATUS_OF_PHASE[a.phase]
        grace_start = aged_at(row["opened_at"], self.ctx.config)
        aged, created = await self.ctx.db.create_aged_position(
            row,
            detected_at=now,
            status=status,
            target_price=a.target_price,
            breakeven_price=breakeven_price(row["side"], row["entry_price"], policy),
            loss_tolerance_percent=a.loss_tolerance_percent,
            hours_aged=a.age_hours,
            config=policy.as_dict(),
            grace_started_at=grace_start,
            progressive_started_at=grace_start + timedelta(microseconds=int(policy.grace_period_hours * 3_600_000_000)),
        )
        if created:
            self.detections += 1
            lag = (now - crossing).total_seconds()
            self.ctx.observer.position_detected(lag)
            data = {
                "phase": a.phase.value,
                "status": status,
                "target": str(a.target_price),
                "age_hours": str(a.age_hours.quantize(Decimal("0.001"))),
            }
            self.ctx.writer.submit(
                op.AddEvent(aged["id"], DETECTED, target_price=a.target_price, metadata=data, at=now)
            )
            self.ctx.bus.publish(LifecycleEvent(DETECTED, now, aged["id"], row["exchange"], row["symbol"], data))
            log.info(
                "%s %s %s %s phase=%s target=%s",
                DETECTED,
                row["exchange"],
                row["symbol"],
                row["side"],
                a.phase.value,
                logfmt.price(a.target_price, self.ctx.executor.price_tick(row["exchange"], row["symbol"])),
            )
        return aged
