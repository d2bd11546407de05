"""The service's ear for operators: pending actions from the database to the actors.

An operator's action is a row in ``monitoring.operator_actions``, written by whoever
took it (``run.py hold``, the HTTP API) whether or not a service runs. The
:class:`OperatorInbox` (the ``operator`` child of the service) picks up every row not
yet applied, oldest first, hands it to the actor of its aged position through the
registry, waits for the actor's answer and marks the row applied with it:

* hold / release: ``held until ...`` / ``released`` from the actor; with no actor
  running (a closed position, one owned by no one yet) ``recorded`` — the hold is in
  the aged row already, and an actor started later loads it;
* close: ``close sent``, ``already closing`` (nothing sent), or ``not active``;
* override / clear_override: the symbol's overrides are read again and every running
  actor of that symbol gets its new effective policy (``applied to N positions``).

It hears new rows at once: a LISTEN on channel ``aged_operator`` (the table's insert
trigger notifies it). While that connection is not up it polls every
``poll_interval`` seconds (0.5: an action reaches the actors within a second); with
it up, it still reads the table every ``idle_poll_interval`` seconds as a backstop.

Every applied action is published on the bus as ``aged.operator.action`` (the alert
kind ``operator_action``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import trio

from actors.events import EventBus, LifecycleEvent
from actors.operator import ForceClose, Hold, Release
from actors.position_actor import ActorContext, OperatorMessage
from actors.registry import ActorRegistry
from actors.statuses import ACTIVE, Status
from storage.errors import StorageError

log = logging.getLogger("service.operator")

CHANNEL = "aged_operator"
OPERATOR_ACTION = "aged.operator.action"


@dataclass(frozen=True)
class OperatorConfig:
    """``poll_interval`` — seconds between reads of the table while LISTEN is down;
    ``idle_poll_interval`` — between reads while it is up (a backstop);
    ``answer_timeout`` — how long to wait for an actor's answer;
    ``listen`` — use LISTEN/NOTIFY at all."""

    poll_interval: float = 0.5
    idle_poll_interval: float = 30.0
    answer_timeout: float = 10.0
    listen: bool = True


class OperatorInbox:
    """Applies pending operator actions to the running actors. See the module docstring."""

    def __init__(
        self,
        db: Any,
        registry: ActorRegistry,
        ctx: ActorContext,
        bus: EventBus,
        config: OperatorConfig = OperatorConfig(),
    ):
        self.db = db
        self.registry = registry
        self.ctx = ctx
        self.bus = bus
        self.config = config
        self.listening = False
        self.applied = 0
        self._wake = trio.Event()
        self._db_away = False
        self.polls_failed = 0  # reads that found the database away
        # The newest symbol-override action this service has taken in: an override
        # concerns every account's service, so each one follows them by id itself.
        self.overrides_seen = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load the operators' overrides (before any actor starts), then apply actions until cancelled.

        A database that does not answer stops nothing: the overrides are read and the
        actions applied once it is back (the poll keeps trying).
        """
        loaded = await self._try(self.refresh_overrides)
        task_status.started()
        async with trio.open_nursery() as nursery:
            if self.config.listen:
                nursery.start_soon(self._listen)
            while True:
                self._wake = trio.Event()
                if not loaded:
                    loaded = await self._try(self.refresh_overrides)
                ok = loaded and await self._try(self.drain)
                interval = self.config.idle_poll_interval if self.listening and ok else self.config.poll_interval
                with trio.move_on_after(interval):
                    await self._wake.wait()

    async def _try(self, step) -> bool:
        """Run ``step()``; False (logged once per outage) if the database did not answer."""
        try:
            await step()
        except StorageError as exc:
            self.polls_failed += 1
            if not self._db_away:
                log.warning("operator actions wait for the database: %s", exc)
            self._db_away = True
            return False
        if self._db_away:
            log.info("operator actions: the database is back")
        self._db_away = False
        return True

    def wake(self) -> None:
        """Read the table now (a notification came)."""
        self._wake.set()

    async def _listen(self) -> None:
        while True:
            try:
                await self.db.listen(CHANNEL, lambda payload: self.wake(), self._listening)
            except Exception as exc:  # noqa: BLE001 - polling carries on while LISTEN is down
                if self.listening:
                    log.warning("operator actions: LISTEN %s lost (%s); polling every %.1f s", CHANNEL, exc,
                                self.config.poll_interval)
                else:
                    log.debug("operator actions: LISTEN %s failed: %s", CHANNEL, exc)
            self.listening = False
            await trio.sleep(5.0)

    def _listening(self) -> None:
        self.listening = True
        self.wake()  # anything written before the LISTEN was in place

    async def drain(self) -> int:
        """Apply every pending action; how many."""
        done = 0
        while True:
            rows = await self.db.pending_actions(100, overrides_after=self.overrides_seen)
            if not rows:
                return done
            for row in rows:
                if row["aged_position_id"] is None:
                    self.overrides_seen = max(self.overrides_seen, row["id"])
                try:
                    outcome, error = await self.apply(row)
                except StorageError:
                    raise  # tried again once the database answers
                except Exception as exc:  # noqa: BLE001 - one bad action must not block the rest
                    log.exception("operator action %s failed", row["id"])
                    outcome, error = "failed", f"{type(exc).__name__}: {exc}"
                await self.db.mark_applied(row["id"], outcome, error)
                self.applied += 1
                done += 1
                self._announce(row, outcome, error)

    async def apply(self, row: dict) -> tuple[str, str | None]:
        """What came of one action row: ``(outcome, error)``."""
        action = row["action"]
        if action in ("override", "clear_override"):
            n = await self.refresh_overrides(only=(row["exchange"], row["symbol"]))
            return f"applied to {n} position{'' if n == 1 else 's'}", None
        aged_id: UUID = row["aged_position_id"]
        message: Hold | Release | ForceClose
        if action == "hold":
            message = Hold(aged_id, datetime.fromisoformat(row["params"]["until"]), row["reason"])
        elif action == "release":
            message = Release(aged_id, row["reason"])
        else:
            message = ForceClose(aged_id, row["reason"])
        if not self.registry.is_watching(aged_id):
            aged = await self.db.aged_position(aged_id)
            status = aged["status"] if aged is not None else None
            if status in ACTIVE or status == Status.ERROR:
                await self.registry.ensure(aged_id)  # an actor that should run: start it now
            if not self.registry.is_watching(aged_id):
                if action == "close":
                    return f"not active ({status})", None
                return "recorded", None
        return await self._tell(aged_id, OperatorMessage(message))

    async def _tell(self, aged_id: UUID, message: OperatorMessage) -> tuple[str, str | None]:
        if not self.registry.tell(aged_id, message):
            return "not active (no actor)", None
        with trio.move_on_after(self.config.answer_timeout):
            await message.reply.done.wait()
        if message.reply.outcome is None:
            return "no answer", f"the actor did not answer within {self.config.answer_timeout:g} s"
        return message.reply.outcome, None

    async def refresh_overrides(self, only: tuple[str, str] | None = None) -> int:
        """Read the operators' overrides; tell each running actor (of ``only``, when given)
        whose effective policy changed. How many were told."""
        if only is None:
            self.overrides_seen = max(self.overrides_seen, await self.db.last_override_action())
        self.ctx.db_overrides = await self.db.symbol_overrides()
        told = 0
        for aged_id, state in self.registry.states().items():
            if only is not None and (state.exchange, state.symbol) != only:
                continue
            policy = self.ctx.policy_for(state.exchange, state.symbol)
            if policy == state.config:
                continue
            message = OperatorMessage(policy)
            if self.registry.tell(aged_id, message):
                with trio.move_on_after(self.config.answer_timeout):
                    await message.reply.done.wait()
                told += 1
        return told

    def _announce(self, row: dict, outcome: str, error: str | None) -> None:
        data = {
            "action": row["action"],
            "actor": row["actor"],
            "reason": row["reason"],
            "outcome": outcome,
            **({"params": row["params"]} if row["params"] else {}),
            **({"error": error} if error else {}),
        }
        self.bus.publish(
            LifecycleEvent(
                OPERATOR_ACTION,
                self.ctx.clock.now(),
                row["aged_position_id"],
                row["exchange"],
                row["symbol"],
                data,
            )
        )
        log.info(
            "operator %s %s %s by %s: %s",
            row["action"],
            row["aged_position_id"] or "",
            row["symbol"] or "",
            row["actor"],
            outcome,
        )
