"""The write-ahead table of close orders, and reconciling with it.

Every order is recorded *before* it is sent (:meth:`WriteAhead._write_ahead`) and
updated as its outcome becomes known (:meth:`WriteAhead._record`). Before a close
sends anything it reconciles (:meth:`WriteAhead._reconcile`): each earlier order of the
aged position that is not known to be final, in the table or in memory, is looked up
on the exchange first. After a restart it also looks up attempt numbers the table never
heard of (sent while the database was away), and a position found flat with no fill
of ours known is checked for such orders too (:meth:`WriteAhead._probe_own_orders`).
Nothing is ever re-sent blindly.

:class:`WriteAhead` is a part of :class:`actors.executor.Executor`; it uses the
executor's ``writer``, ``write_direct``, ``load_orders``, ``db_timeout``, ``_fills``
and its lookups (:class:`actors.order_lookup.OrderLookups`).
"""

from __future__ import annotations

import logging
from decimal import Decimal

import trio

from actors.close_fills import Fills
from actors.close_request import CloseRequest, client_order_id, order_side
from actors.executor_parts import ExecutorParts
from actors.statuses import FINAL, OrderState
from exchanges import logfmt
from exchanges.errors import ExchangeError, UnknownOutcomeError
from exchanges.port import ExchangePort, OrderResult
from storage import ops as op
from storage.errors import LeaseLost

log = logging.getLogger("actors.executor")

FINAL_STATES = FINAL


class WriteAheadNotCommitted(Exception):
    """Under a lease, the write-ahead row of an order could not be committed: the order is not sent."""


class WriteAhead(ExecutorParts):
    """The executor's write-ahead rows and its reconciling (see the module docstring)."""

    async def _write_ahead(self, row: op.RecordCloseOrder) -> None:
        """Commit the write-ahead row before the order is sent.

        It goes straight to the database on its own connection rather than queueing
        behind the storage writer's batches. If the database is away or slow it is
        queued in the writer instead (before any update of that order) and the close
        goes on: the deterministic client order id lets a restart find the order.

        Under a lease (``may_send`` set) a queued row is not enough: the lease may run
        out before the writer gets the row in, and the next holder would never learn
        of the order. There :exc:`WriteAheadNotCommitted` is raised and nothing is sent.

        :exc:`~storage.errors.LeaseLost` is raised: another instance now acts for the
        account, so the order must not be sent.
        """
        durable = self.may_send is not None
        if self.write_direct is not None and (self.writer.database_up or durable):
            try:
                with trio.fail_after(self.db_timeout):
                    await self.write_direct([row])
                return
            except LeaseLost:
                raise
            except Exception as exc:  # noqa: BLE001 - database away: the writer keeps it
                if durable:
                    raise WriteAheadNotCommitted(f"{type(exc).__name__}: {exc}") from exc
                log.warning(
                    "write-ahead row %s not committed (%s: %s); queued, sending anyway",  # pragma: no mutate
                    row.client_order_id,
                    type(exc).__name__,  # pragma: no mutate
                    exc,
                )  # pragma: no mutate
        elif durable:
            raise WriteAheadNotCommitted("no database to write to")
        self.writer.submit(row)

    async def _reconcile(self, req: CloseRequest, port: ExchangePort) -> Fills:
        """The aged position's fills, after every earlier order not known to be final was looked up.

        Raises :class:`UnknownOutcomeError` when one of them cannot be looked up, or is
        still open on the exchange: nothing new may be sent before its fate is known.
        """
        fills = self._fills.setdefault(req.aged_id, Fills())
        if (
            req.next_attempt == 1
            and not req.reconcile_only
            and not fills.orders
            and not fills.pending
            and fills.max_attempt == 0
        ):
            # A first close with no restart behind it (the actor reconciles first after
            # a restart) has no earlier orders to read; the position check before the
            # send covers the rest. This keeps a database read off the tick→order path.
            return fills
        rows = []
        try:
            with trio.fail_after(self.db_timeout):
                rows = await self.load_orders(req.aged_id)
        except Exception as exc:  # noqa: BLE001 - database away or slow: rely on memory and the exchange
            log.warning(
                "cannot read the write-ahead table (%s: %s); "  # pragma: no mutate
                "reconciling from memory and the exchange",  # pragma: no mutate
                type(exc).__name__,  # pragma: no mutate
                exc,
            )  # pragma: no mutate
        for row in rows:
            if row["state"] in FINAL_STATES and row["client_order_id"] not in fills.orders:
                fills.record(row["client_order_id"], row["attempt"], row["filled_qty"], row["avg_price"])
            fills.max_attempt = max(fills.max_attempt, row["attempt"])
        unresolved = [r for r in rows if r["state"] not in FINAL_STATES and r["client_order_id"] not in fills.orders]
        # Orders this process sent whose outcome it never learnt (the table may be away or behind).
        listed = {r["client_order_id"] for r in unresolved}
        unresolved += [
            {"client_order_id": c, "attempt": a}
            for c, a in sorted(fills.pending.items(), key=lambda x: x[1])
            if c not in listed and c not in fills.orders
        ]
        extra: list[int] = []
        if req.reconcile_only:
            # After a restart: attempts the table may not know of (sent while the
            # database was away) are looked up too. Outside a restart the table and
            # memory are complete, and the position check before each send guards
            # the rest.
            probe_to = max(fills.max_attempt, req.next_attempt - 1) + 1
            known = (
                {r["attempt"] for r in rows}
                | {int(c.rsplit("-", 1)[1]) for c in fills.orders}
                | set(fills.pending.values())
            )
            extra = [a for a in range(1, probe_to + 1) if a not in known]
        for attempt in [r["attempt"] for r in unresolved] + extra:
            cid = client_order_id(req.aged_id, attempt)
            result = await self._lookup(req, port, cid)
            if result is None:
                if attempt in {r["attempt"] for r in unresolved}:
                    self._wal(cid, state=OrderState.NOT_FOUND)
                    fills.settled(cid, attempt)
                continue
            if result.status == "open":
                result = await self._follow(req, port, cid, result)
                if result.status == "open":
                    raise UnknownOutcomeError(f"order {cid} is still open on the exchange", exchange=req.exchange)
            log.info(
                "reconciled order %s: %s filled %s", cid, result.status, logfmt.qty(result.filled_qty)
            )  # pragma: no mutate
            if attempt in extra:
                self._adopt(req, fills, cid, attempt, result)
            else:
                self._record(req, fills, cid, attempt, result)
        return fills

    async def _probe_own_orders(self, req: CloseRequest, port: ExchangePort, fills: Fills, attempt: int) -> None:
        """The position is flat and we know of no fill: was it one of our orders after all?

        (An order sent while the database was away, by a process that then died, left no
        row behind; its deterministic client order id is still on the exchange.)
        """
        for a in range(1, max(attempt, 2)):
            cid = client_order_id(req.aged_id, a)
            if cid in fills.orders:
                continue
            try:
                result = await self._lookup(req, port, cid)
            except UnknownOutcomeError:
                return
            if result is not None and result.filled_qty > 0:
                log.info(
                    "found our own order %s on the exchange: filled %s", cid, logfmt.qty(result.filled_qty)
                )  # pragma: no mutate
                self._adopt(req, fills, cid, a, result)

    def _adopt(self, req: CloseRequest, fills: Fills, cid: str, attempt: int, result: OrderResult) -> None:
        """Record an order of ours the write-ahead table never saw (found on the exchange)."""
        self.writer.submit(
            op.RecordCloseOrder(
                client_order_id=cid,
                aged_id=req.aged_id,
                attempt=attempt,
                exchange=req.exchange,
                symbol=req.symbol,
                side=order_side(req.side),
                order_type="market",
                requested_qty=max(result.requested_qty or result.filled_qty, Decimal("1e-18")),
            )
        )
        self._record(req, fills, cid, attempt, result)

    def _record(self, req: CloseRequest, fills: Fills, cid: str, attempt: int, result: OrderResult) -> None:
        """Write what became of an order; a final one joins the fills, another stays to be looked up."""
        state = {
            "closed": OrderState.FILLED,
            "canceled": OrderState.CANCELED,
            "rejected": OrderState.REJECTED,
            "open": OrderState.OPEN,
        }.get(result.status, OrderState.UNKNOWN)
        if state == OrderState.CANCELED and result.filled_qty > 0:
            state = OrderState.PARTIALLY_FILLED
        if state == OrderState.FILLED and result.requested_qty is not None and result.filled_qty < result.requested_qty:
            state = OrderState.PARTIALLY_FILLED
        self._wal(
            cid,
            state=state,
            exchange_order_id=result.exchange_order_id,
            filled_qty=result.filled_qty,
            avg_price=result.avg_price,
        )
        if state in FINAL_STATES:
            fills.record(cid, attempt, result.filled_qty, result.avg_price)
        else:  # not final yet: looked up again before anything new is sent
            fills.sent(cid, attempt)

    def _rejected(self, cid: str, exc: ExchangeError) -> None:
        self._wal(cid, state=OrderState.REJECTED, error_code=exc.code, error_message=str(exc)[:500])

    def _wal(self, cid: str, **fields) -> None:
        self.writer.submit(op.UpdateCloseOrder(cid, {k: v for k, v in fields.items() if v is not None}))
