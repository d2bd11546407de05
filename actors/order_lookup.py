"""Finding out what became of an order: lookups by client order id, and following
an order that is still open.

A send whose reply was lost (:class:`UnknownOutcomeError`), an order of ours the
write-ahead table does not know as final, an order still open after the adapter's fill
wait: each is looked up on the exchange by its deterministic client order id before
anything new is sent. Lookups retry on the shared backoff; when they all fail the
outcome stays unknown and the caller stops there.

:class:`OrderLookups` is a part of :class:`actors.executor.Executor`; it uses the
executor's ``retry_delays``, ``lookup_retries``, ``follow_polls``, ``stats`` and
``_note_error``.
"""

from __future__ import annotations

from actors.close_request import CloseRequest
from actors.executor_parts import ExecutorParts
from exchanges.errors import ExchangeError, UnknownOutcomeError
from exchanges.port import ExchangePort, OrderResult
from feeds.account_view import order_result
from supervisor.backoff import Backoff, retry_after_of


class OrderLookups(ExecutorParts):
    """The executor's lookups on the exchange (see the module docstring)."""

    async def _lookup(self, req: CloseRequest, port: ExchangePort, cid: str) -> OrderResult | None:
        """Find out what became of ``cid``; None only when the exchange says it never saw it.

        Raises :class:`UnknownOutcomeError` when every one of ``lookup_retries`` lookups fails.
        """
        schedule = Backoff.listed(self.retry_delays or (0.0,))
        for i in range(self.lookup_retries):
            self.stats.lookups += 1
            try:
                return await port.fetch_order_by_client_id(req.symbol, cid)
            except ExchangeError as exc:
                self._note_error(req, exc, "lookup")
                if i + 1 < self.lookup_retries:
                    await schedule.sleep(i + 1, retry_after_of(exc))
        raise UnknownOutcomeError(f"could not look up order {cid}", exchange=req.exchange)

    async def _follow(self, req: CloseRequest, port: ExchangePort, cid: str, result: OrderResult) -> OrderResult:
        """Follow an order that is still open until it is final (at most ``follow_polls`` lookups).

        With a healthy account stream, its order events settle it first (up to
        ``stream_settle_timeout`` seconds, no request sent); when the stream does not
        report it final in that time, or goes down meanwhile, it is looked up over REST.
        Raises :class:`UnknownOutcomeError` when the lookups themselves fail.
        """
        view = self.accounts.get(req.exchange)
        if result.status == "open" and view is not None and view.healthy:
            change = await view.order_final(cid, within=self.stream_settle_timeout)
            if change is not None:
                self.stats.settled_by_stream += 1
                return _with_requested(order_result(change), result)
        schedule = Backoff.listed(self.retry_delays or (1.0,))
        for i in range(self.follow_polls):
            if result.status != "open":
                break
            await schedule.sleep(i + 1)
            found = await self._lookup(req, port, cid)
            if found is not None:
                result = _with_requested(found, result)
        return result


def _with_requested(found: OrderResult, known: OrderResult) -> OrderResult:
    """``found``, with the requested quantity of ``known`` when it does not say its own."""
    if found.requested_qty is not None or known.requested_qty is None:
        return found
    return OrderResult(
        found.client_order_id,
        found.exchange_order_id,
        found.status,
        found.filled_qty,
        found.avg_price,
        known.requested_qty,
    )
