"""What one exchange account's private stream has told us, and whether to trust it now.

The account stream actor (:mod:`feeds.account_stream`) feeds an :class:`AccountView`;
the detector, the executor and the exchange adapter read it.

A view is *healthy* only when all of these hold:

* the stream is connected (and, on Bybit, authenticated and subscribed);
* a REST snapshot of the positions was taken *after* the connection came up
  (:meth:`AccountView.synced`), so nothing that happened while it was down is missing;
* something was heard on it (a frame or a pong) within ``stale_after`` seconds.

While it is not healthy, readers fall back to REST: :meth:`AccountView.position`
raises :class:`AccountViewUnavailable`, :meth:`AccountView.order_final` returns None.

Healthy is not the same as up to date: an event the exchange sent a moment ago may
still be on its way (the price stream and the account stream are two connections, and
a tick can overtake the account event that belongs with it). Before a decision that
must not act on an old position — the check before a close order — a reader asks
:meth:`AccountView.caught_up`, which sends a ping through the stream itself and returns
once its pong has come back and everything that arrived before it is applied.

Position events between connecting and the snapshot are held back and applied after
it, unless the snapshot is newer for that symbol: both exchanges send a position whole,
never as a delta, so applying an event again is harmless and applying one older than
the snapshot is what must not happen.

Position changes and snapshots also go, in order, to :attr:`AccountView.changes` (the
detector reads them). If its reader falls ``backlog`` items behind, the view stops
being healthy and asks the stream actor for a fresh snapshot (:attr:`resync_wanted`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from exchanges.port import ExchangePosition, OrderResult
from feeds.account_events import AccountEvent, Execution, OrderChange, PositionChange

log = logging.getLogger("feeds.account")

__all__ = ["AccountView", "AccountViewUnavailable", "Snapshot", "order_result"]

ORDERS_KEPT = 2_000  # client order ids remembered (oldest forgotten first)


class AccountViewUnavailable(Exception):
    """The private stream cannot be trusted now: ask REST."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A REST snapshot taken after the stream (re)connected: every open position of
    the account (a symbol not in it is flat)."""

    exchange: str
    positions: tuple[ExchangePosition, ...]


DOWN, SYNCING, SYNCED = "down", "syncing", "synced"


class AccountView:
    """One account's positions and recent orders as the private stream reports them.

    ``stale_after`` — seconds without hearing anything after which the view is not
    healthy (the stream actor pings well inside it). ``backlog`` — the most position
    changes :attr:`changes` holds for its reader.
    """

    def __init__(
        self,
        exchange: str,
        *,
        stale_after: float = 30.0,
        backlog: int = 10_000,
        barrier: Callable[[float], Awaitable[bool]] | None = None,
    ):
        self.exchange = exchange
        #: ``await barrier(within)``: True once everything the exchange sent before the
        #: call is applied (the stream actor's ping); None: never known (REST is asked).
        self.barrier = barrier
        self.stale_after = stale_after
        self.state = DOWN
        self.connects = 0
        self._last_heard = float("-inf")
        self._positions: dict[str, PositionChange | ExchangePosition] = {}
        self._held: list[PositionChange] = []
        self._orders: OrderedDict[str, OrderChange] = OrderedDict()
        self._fills: dict[str, list[Execution]] = {}
        self._send, self.changes = trio.open_memory_channel[PositionChange | Snapshot](backlog)
        self.resync_wanted = trio.Event()
        self._updated = trio.Event()

    # -- the stream actor's side ---------------------------------------------------------

    def connected(self) -> None:
        """The stream is up (authenticated and subscribed): events are held until :meth:`synced`."""
        self.state = SYNCING
        self.connects += 1
        self._held = []
        self.heard()

    def synced(self, positions: Sequence[ExchangePosition]) -> None:
        """The REST snapshot taken after :meth:`connected`: from now on the view is whole."""
        if self.state == DOWN:
            return  # the connection went away while the snapshot was read
        snap = {p.symbol: p for p in positions if p.qty > 0}
        self._positions = dict(snap)
        self.state = SYNCED
        if self.resync_wanted.is_set():
            self.resync_wanted = trio.Event()
        self._publish(Snapshot(self.exchange, tuple(snap.values())))
        held, self._held = self._held, []
        for change in held:
            known = snap.get(change.symbol)
            if known is not None and known.updated_at is not None and change.time < known.updated_at:
                continue  # the snapshot is newer
            self._apply_position(change)

    def lost(self, reason: str) -> None:
        """The stream went down: not healthy until connected and synced again."""
        if self.state != DOWN:
            log.warning(
                "%s account stream down (%s): positions and fills from REST until it is back", self.exchange, reason
            )
        self.state = DOWN
        self._held = []
        self._wake()  # waiters look again and fall back to REST

    def heard(self) -> None:
        """Something arrived on the stream (a frame or a pong)."""
        self._last_heard = trio.current_time()

    def apply(self, event: AccountEvent) -> None:
        """One parsed event (already validated by the protocol)."""
        if isinstance(event, PositionChange):
            if self.state == SYNCING:
                self._held.append(event)
            elif self.state == SYNCED:
                self._apply_position(event)
        elif isinstance(event, OrderChange):
            self._apply_order(event)
        elif isinstance(event, Execution):
            if event.client_order_id:
                fills = self._fills.setdefault(event.client_order_id, [])
                if all(f.fill_id != event.fill_id for f in fills):
                    fills.append(event)

    # -- readers -------------------------------------------------------------------------

    @property
    def last_heard(self) -> float:
        """``trio.current_time()`` when something last arrived on the stream."""
        return self._last_heard

    @property
    def healthy(self) -> bool:
        return self.state == SYNCED and trio.current_time() - self._last_heard <= self.stale_after

    def position(self, symbol: str) -> ExchangePosition | None:
        """``symbol``'s open position as the stream last reported it; None when flat.

        Raises :class:`AccountViewUnavailable` when the view is not healthy.
        """
        if not self.healthy:
            raise AccountViewUnavailable(f"{self.exchange} account stream is {self._why_not()}")
        known = self._positions.get(symbol)
        if known is None:
            return None
        if isinstance(known, ExchangePosition):
            return known
        assert known.side is not None and known.entry_price is not None  # the protocols guarantee it
        return ExchangePosition(
            exchange=self.exchange,
            symbol=symbol,
            side=known.side,
            qty=known.qty,
            entry_price=known.entry_price,
            updated_at=known.time,
        )

    def order(self, client_order_id: str) -> OrderChange | None:
        """The latest state of one of our orders the stream reported, if any."""
        return self._orders.get(client_order_id)

    def fills(self, client_order_id: str) -> list[Execution]:
        """The fills of one of our orders the stream reported (oldest first)."""
        return list(self._fills.get(client_order_id, ()))

    async def caught_up(self, within: float) -> bool:
        """Whether the view now holds everything the exchange sent before this call,
        found out within ``within`` seconds; False when unhealthy or it cannot tell."""
        if not self.healthy or self.barrier is None:
            return False
        return await self.barrier(within) and self.healthy

    async def next_update(self, within: float) -> None:
        """Return at the next position or order event applied (or the view going down),
        or after ``within`` seconds, whichever comes first."""
        with trio.move_on_after(within):
            await self._updated.wait()

    async def order_final(self, client_order_id: str, within: float) -> OrderChange | None:
        """Wait up to ``within`` seconds for the stream to report ``client_order_id`` final.

        None when it did not (timed out, or the view is or became unhealthy): then the
        order is looked up over REST.
        """
        with trio.move_on_after(within):
            while self.healthy:
                known = self._orders.get(client_order_id)
                if known is not None and known.final:
                    return known
                await self._updated.wait()
        return None

    # -- inside ----------------------------------------------------------------------------

    def _why_not(self) -> str:
        if self.state == DOWN:
            return "down"
        if self.state == SYNCING:
            return "not yet synced with REST"
        return f"silent for more than {self.stale_after:g} s"

    def _apply_position(self, change: PositionChange) -> None:
        if change.flat:
            self._positions.pop(change.symbol, None)
        else:
            self._positions[change.symbol] = change
        self._publish(change)
        self._wake()

    def _wake(self) -> None:
        self._updated.set()
        self._updated = trio.Event()

    def _publish(self, item: PositionChange | Snapshot) -> None:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            log.error("%s account stream: the detector fell behind; resyncing from REST", self.exchange)
            self.state = SYNCING  # not healthy until a new snapshot
            self._held = []
            self.resync_wanted.set()

    def _apply_order(self, change: OrderChange) -> None:
        cid = change.client_order_id
        if not cid:
            return
        known = self._orders.get(cid)
        if known is not None and known.final and not change.final:
            return  # a late event never reopens a final order
        if known is not None and change.filled_qty < known.filled_qty:
            return  # out of order: the cumulative fill never shrinks
        self._orders[cid] = change
        self._orders.move_to_end(cid)
        while len(self._orders) > ORDERS_KEPT:
            old, _ = self._orders.popitem(last=False)
            self._fills.pop(old, None)
        self._wake()


def order_result(change: OrderChange) -> OrderResult:
    """An :class:`~exchanges.port.OrderResult` from the stream's report of an order."""
    assert change.client_order_id is not None
    return OrderResult(
        client_order_id=change.client_order_id,
        exchange_order_id=change.exchange_order_id,
        status=change.status,
        filled_qty=change.filled_qty,
        avg_price=change.avg_price,
        requested_qty=change.requested_qty,
    )
