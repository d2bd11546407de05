"""The supervision tree, wired.

::

    root (one_for_one)
    ├── storage-writer        permanent
    ├── executor              permanent
    ├── feed:<exchange> …     permanent, one per exchange
    ├── positions             permanent supervisor; its children are the
    │   └── position:<id> …   per-position actors (transient)
    └── detector              permanent; recovery on start, then polls

The actor registry (:mod:`actors.registry`) runs ``positions`` and knows which
actors run. A crashed position actor is restarted by ``positions`` and reloads from
the database. If ``positions`` itself gives up (too many restarts), ``root`` restarts
it and the registry starts every active aged position again. If ``root`` gives up, the service
stops with a clear message and exit code 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from uuid import UUID

from actors.clock import PolicyClock
from actors.detector import Detector
from actors.events import EventBus
from actors.executor import Executor
from actors.policy import PolicyConfig
from actors.position import Settings
from actors.position_actor import ActorContext
from actors.registry import ActorRegistry
from storage.writer import StorageWriter
from exchanges.port import ExchangePort
from supervisor import ChildSpec, ObserverSet, Restart, Supervisor, run_root

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
        # Whoever watches the service (metrics, benchmarks) adds itself here: see supervisor.observer.
        self.observers = ObserverSet()
        self.writer = StorageWriter(db.write_batch, observer=self.observers)
        self.executor = Executor(self.exchanges, self.writer, db.close_orders,
                                 retry_delays=self.config.retry_delays,
                                 requests_per_second=self.config.requests_per_second, write_direct=db.write_batch,
                                 observer=self.observers)
        self.ctx = ActorContext(db=db, writer=self.writer, executor=self.executor, bus=self.bus, clock=self.clock,
                                config=self.config.policy, settings=self.config.settings, feeds=self.feeds,
                                observer=self.observers)
        self.positions = Supervisor("positions", intensity=self.config.positions_intensity,
                                    period=self.config.positions_period, backoff_initial=0.01, backoff_max=5.0,
                                    observer=self.observers)
        self.registry = ActorRegistry(self.ctx, self.positions, load_for_recovery=self._load_for_recovery)
        self.detector = Detector(self.ctx, self.exchanges, self.registry,
                                 poll_interval=self.config.poll_interval, symbols=self.config.symbols)
        children = [
            ChildSpec("storage-writer", self.writer.run, Restart.PERMANENT, kind="writer"),
            ChildSpec("executor", self.executor.run, Restart.PERMANENT, kind="executor"),
            ChildSpec("timers", self.ctx.timers.run, Restart.PERMANENT, kind="timers"),
            *[ChildSpec(f"feed:{name}", feed.run, Restart.PERMANENT, kind="feed") for name, feed in self.feeds.items()],
            ChildSpec("positions", self.registry.run, Restart.PERMANENT, kind="supervisor"),
            ChildSpec("detector", self.detector.run, Restart.PERMANENT, kind="detector"),
            *extra_children,
        ]
        self.root = Supervisor("root", children, intensity=self.config.root_intensity,
                               period=self.config.root_period, backoff_initial=0.2, backoff_max=5.0,
                               observer=self.observers)

    def is_watching(self, aged_id: UUID) -> bool:
        """Whether ``aged_id`` has a position actor (running or about to restart)."""
        return self.registry.is_running(aged_id)

    async def _load_for_recovery(self, skip):
        return await self.db.load_for_recovery(self.config.policy, self.config.settings, skip)

    async def run(self) -> int:
        """Run until :meth:`shutdown`; 0 then, 1 if the root supervisor gave up."""
        return await run_root(self.root)

    def shutdown(self) -> None:
        self.root.shutdown()
