"""The supervision tree, wired.

::

    root (one_for_one)
    ├── storage-writer        permanent
    ├── executor              permanent
    ├── feed:<exchange> …     permanent, one per exchange
    ├── positions             permanent supervisor; its children are the
    │   └── position:<id> …   per-position actors (transient)
    └── detector              permanent; recovery on start, then polls

A crashed position actor is restarted by ``positions`` and reloads from the
database. If ``positions`` itself gives up (too many restarts), ``root`` restarts it
and every active aged position is started again. If ``root`` gives up, the service
stops with a clear message and exit code 1.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from uuid import UUID

import trio

from actors.clock import PolicyClock
from actors.detector import Detector
from actors.events import EventBus
from actors.executor import Executor
from actors.policy import PolicyConfig
from actors.position import Settings
from actors.position_actor import ActorContext, run_position_actor
from actors.writer import StorageWriter
from exchanges.port import ExchangePort
from supervisor import ChildSpec, Restart, Supervisor, run_root

log = logging.getLogger("service")


@dataclass
class ServiceConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    settings: Settings = field(default_factory=Settings)
    poll_interval: float = 30.0
    retry_delays: tuple[float, ...] = (1.0, 3.0, 5.0)
    requests_per_second: float = 10.0
    symbols: Mapping[str, Sequence[str] | None] = field(default_factory=dict)
    root_intensity: int = 5
    root_period: float = 30.0
    positions_intensity: int = 20
    positions_period: float = 10.0


class Service:
    """Everything that runs, around one database and a set of exchanges."""

    def __init__(self, db: Any, exchanges: Mapping[str, ExchangePort], feeds: Mapping[str, Any],
                 config: ServiceConfig | None = None, clock: PolicyClock | None = None,
                 bus: EventBus | None = None, extra_children: Sequence[ChildSpec] = ()):
        self.config = config or ServiceConfig()
        self.db = db
        self.exchanges = dict(exchanges)
        self.feeds = dict(feeds)
        self.clock = clock or PolicyClock()
        self.bus = bus or EventBus()
        self.writer = StorageWriter(db.write_batch)
        self.executor = Executor(self.exchanges, self.writer, db.close_orders,
                                 retry_delays=self.config.retry_delays,
                                 requests_per_second=self.config.requests_per_second, write_direct=db.write_batch)
        self.ctx = ActorContext(db=db, writer=self.writer, executor=self.executor, bus=self.bus, clock=self.clock,
                                config=self.config.policy, settings=self.config.settings, feeds=self.feeds)
        self.positions = Supervisor("positions", intensity=self.config.positions_intensity,
                                    period=self.config.positions_period, backoff_initial=0.01, backoff_max=5.0)
        self.detector = Detector(self.ctx, self.exchanges, self.start_actor, self.is_watching,
                                 poll_interval=self.config.poll_interval, symbols=self.config.symbols)
        children = [
            ChildSpec("storage-writer", self.writer.run, Restart.PERMANENT, kind="writer"),
            ChildSpec("executor", self.executor.run, Restart.PERMANENT, kind="executor"),
            ChildSpec("timers", self.ctx.timers.run, Restart.PERMANENT, kind="timers"),
            *[ChildSpec(f"feed:{name}", feed.run, Restart.PERMANENT, kind="feed") for name, feed in self.feeds.items()],
            ChildSpec("positions", self._run_positions, Restart.PERMANENT, kind="supervisor"),
            ChildSpec("detector", self.detector.run, Restart.PERMANENT, kind="detector"),
            *extra_children,
        ]
        self.root = Supervisor("root", children, intensity=self.config.root_intensity,
                               period=self.config.root_period, backoff_initial=0.2, backoff_max=5.0)

    @staticmethod
    def child_id(aged_id: UUID) -> str:
        return f"position:{aged_id}"

    def is_watching(self, aged_id: UUID) -> bool:
        return self.positions.has_child(self.child_id(aged_id))

    async def start_actor(self, aged_id: UUID, preload: tuple[dict, bool] | None = None) -> None:
        while not self.positions.running:
            await trio.sleep(0.005)
        if self.is_watching(aged_id):
            return
        await self.positions.start_child(ChildSpec(
            self.child_id(aged_id),
            functools.partial(run_position_actor, self.ctx, aged_id, [preload] if preload else None),
            Restart.TRANSIENT, kind="position"))

    async def _run_positions(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.positions.run)
            if self.detector.polls:  # restarted after giving up: bring every actor back now
                await self.detector.ensure_actors()

    async def run(self) -> int:
        """Run until :meth:`shutdown`; 0 then, 1 if the root supervisor gave up."""
        return await run_root(self.root)

    def shutdown(self) -> None:
        self.root.shutdown()
