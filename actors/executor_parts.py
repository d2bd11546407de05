"""What the parts of :class:`actors.executor.Executor` share: one declaration, checked by mypy.

The executor is assembled from one class per concern: the close loop
(:mod:`actors.close_loop`), the write-ahead table and reconciling
(:mod:`actors.close_reconcile`) and order lookups (:mod:`actors.order_lookup`). Each
works on state :meth:`Executor.__init__ <actors.executor.Executor>` sets and calls
methods another part defines. :class:`ExecutorParts` is their common base class; it
declares

* the executor's settings, collaborators and counters;
* the methods one part calls on another (for the type checker only: at run time the
  part that defines a method is the only place it exists).

It adds no behaviour. A new attribute or cross-part call is declared here first; mypy
then checks every use of it in every part.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from actors.close_fills import Fills
from actors.close_request import CloseRequest
from exchanges.errors import ExchangeError
from exchanges.port import ExchangePort, OrderResult
from feeds.account_view import AccountView
from storage import ops as op
from storage.writer import StorageWriter
from supervisor.observer import Observer

__all__ = ["ExecutorParts", "ExecutorStats"]


@dataclass
class ExecutorStats:
    """Counters for benchmarks and tests: orders sent, of which retries, lookups,
    exchange errors by code, where each position check was read (the account stream
    or REST) and orders the stream settled."""

    attempts: int = 0
    retries: int = 0
    lookups: int = 0
    positions_from_stream: int = 0
    positions_from_rest: int = 0
    settled_by_stream: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)


class ExecutorParts:
    """The common base of the executor's parts. See the module docstring."""

    exchanges: dict[str, ExchangePort]
    writer: StorageWriter
    load_orders: Callable[[UUID], Awaitable[list[dict[str, Any]]]]
    write_direct: Callable[[list[op.WriteOp]], Awaitable[object]] | None
    may_send: Callable[[], bool] | None
    retry_delays: tuple[float, ...]
    slippage: Decimal
    max_partial_rounds: int
    max_rounds: int
    follow_polls: int
    lookup_retries: int
    db_timeout: float
    stream_settle_timeout: float
    accounts: dict[str, AccountView]
    stats: ExecutorStats
    observer: Observer
    _fills: dict[UUID, Fills]

    if TYPE_CHECKING:
        # the executor
        def price_tick(self, exchange: str, symbol: str) -> Decimal | None: ...
        def _note_error(self, req: CloseRequest, exc: ExchangeError, stage: str) -> str: ...

        # order lookups
        async def _lookup(self, req: CloseRequest, port: ExchangePort, cid: str) -> OrderResult | None: ...
        async def _follow(
            self, req: CloseRequest, port: ExchangePort, cid: str, result: OrderResult
        ) -> OrderResult: ...

        # the write-ahead table
        async def _write_ahead(self, row: op.RecordCloseOrder) -> None: ...
        async def _reconcile(self, req: CloseRequest, port: ExchangePort) -> Fills: ...
        async def _probe_own_orders(
            self, req: CloseRequest, port: ExchangePort, fills: Fills, attempt: int
        ) -> None: ...
        def _record(self, req: CloseRequest, fills: Fills, cid: str, attempt: int, result: OrderResult) -> None: ...
        def _rejected(self, cid: str, exc: ExchangeError) -> None: ...
        def _wal(self, cid: str, **fields: Any) -> None: ...
