"""The supervision tree, wired.

::

    root (one_for_one)
    ├── storage-writer        permanent
    ├── executor              permanent
    ├── feed:<exchange> …     permanent, one per exchange (public prices)
    ├── account:<exchange> …  permanent, one per exchange with an account stream
    ├── operator              permanent; operators' actions to the actors (service.operator_inbox)
    ├── positions             permanent supervisor; its children are the
    │   └── position:<id> …   per-position actors (transient)
    └── detector              permanent; recovery on start, then polls

The actor registry (:mod:`actors.registry`) runs ``positions`` and knows which
actors run. A crashed position actor is restarted by ``positions`` and reloads from
the database. If ``positions`` itself gives up (too many restarts), ``root`` restarts
it and the registry starts every active aged position again. If ``root`` gives up, the service
stops with a clear message and exit code 1.

Each part is built from its own section of the one configuration tree
(:class:`service.config.AppConfig`): the writer from ``writer``, the executor from
``executor``, the detector from ``detector``, the actors from ``policy`` and
``positions``, the supervisors from ``supervision``. The feeds come built (their
``feeds`` timings are applied where they are made, :func:`service.app.make_feeds`).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence
from uuid import UUID

from actors.clock import PolicyClock
from actors.detector import Detector
from actors.events import EventBus
from actors.executor import Executor
from actors.position_actor import ActorContext
from actors.registry import ActorRegistry
from storage.writer import StorageWriter
from exchanges.port import ExchangePort
from feeds.account_stream import AccountStream
from service.config import DEFAULTS, AppConfig
from service.operator_inbox import OperatorInbox
from supervisor import ChildSpec, ObserverSet, Restart, Supervisor, run_root

log = logging.getLogger("service")


class Service:
    """Everything that runs, around one database and a set of exchanges.

    ``config`` is the whole tree (:class:`~service.config.AppConfig`; the defaults
    when None). Its ``exchanges`` sections only say which symbols the detector
    manages on each exchange; the exchange ports, feeds and account streams
    (``accounts``, by exchange; none: REST only) are passed in built.
    """

    def __init__(self, db: Any, exchanges: Mapping[str, ExchangePort], feeds: Mapping[str, Any],
                 config: AppConfig | None = None, clock: PolicyClock | None = None,
                 bus: EventBus | None = None, extra_children: Sequence[ChildSpec] = (),
                 accounts: Mapping[str, AccountStream] | None = None):
        self.config = config or DEFAULTS
        self.db = db
        self.exchanges = dict(exchanges)
        self.feeds = dict(feeds)
        self.accounts = dict(accounts or {})
        views = {name: stream.view for name, stream in self.accounts.items()}
        self.clock = clock or PolicyClock()
        self.bus = bus or EventBus()
        # Whoever watches the service (metrics, benchmarks) adds itself here: see supervisor.observer.
        self.observers = ObserverSet()
        self.writer = StorageWriter(db.write_batch, config=self.config.writer, observer=self.observers)
        self.executor = Executor(self.exchanges, self.writer, db.close_orders, config=self.config.executor,
                                 write_direct=db.write_batch, observer=self.observers, accounts=views)
        self.ctx = ActorContext(db=db, writer=self.writer, executor=self.executor, bus=self.bus, clock=self.clock,
                                config=self.config.policy, settings=self.config.positions, feeds=self.feeds,
                                observer=self.observers, config_overrides=self.config.policy_overrides)
        supervision = self.config.supervision
        self.positions = Supervisor("positions", intensity=supervision.positions_intensity,
                                    period=supervision.positions_period,
                                    backoff_initial=supervision.positions_backoff_initial,
                                    backoff_max=supervision.positions_backoff_max, observer=self.observers)
        self.registry = ActorRegistry(self.ctx, self.positions, load_for_recovery=self._load_for_recovery)
        self.detector = Detector(self.ctx, self.exchanges, self.registry, config=self.config.detector,
                                 symbols=self.config.symbols, accounts=views)
        # Operators' actions (a database without the operator tables, e.g. a stand-in, has none).
        self.operator = (OperatorInbox(db, self.registry, self.ctx, self.bus, self.config.operator)
                         if hasattr(db, "pending_actions") else None)
        children = [
            ChildSpec("storage-writer", self.writer.run, Restart.PERMANENT, kind="writer"),
            ChildSpec("executor", self.executor.run, Restart.PERMANENT, kind="executor"),
            ChildSpec("timers", self.ctx.timers.run, Restart.PERMANENT, kind="timers"),
            *[ChildSpec(f"feed:{name}", feed.run, Restart.PERMANENT, kind="feed") for name, feed in self.feeds.items()],
            *[ChildSpec(f"account:{name}", stream.run, Restart.PERMANENT, kind="feed")
              for name, stream in self.accounts.items()],
            # before positions: the operators' overrides are loaded before any actor starts
            *([ChildSpec("operator", self.operator.run, Restart.PERMANENT, kind="operator", critical=False,
                         reports_started=True)] if self.operator is not None else []),
            ChildSpec("positions", self.registry.run, Restart.PERMANENT, kind="supervisor"),
            ChildSpec("detector", self.detector.run, Restart.PERMANENT, kind="detector"),
            *extra_children,
        ]
        self.root = Supervisor("root", children, intensity=supervision.root_intensity,
                               period=supervision.root_period, backoff_initial=supervision.root_backoff_initial,
                               backoff_max=supervision.root_backoff_max, observer=self.observers)

    def is_watching(self, aged_id: UUID) -> bool:
        """Whether ``aged_id`` has a position actor (running or about to restart)."""
        return self.registry.is_running(aged_id)

    async def _load_for_recovery(self, skip):
        return await self.db.load_for_recovery(self.config.policy, self.config.positions, skip)

    async def run(self) -> int:
        """Run until :meth:`shutdown`; 0 then, 1 if the root supervisor gave up."""
        return await run_root(self.root)

    def shutdown(self) -> None:
        self.root.shutdown()
