"""The simulator's state: one :class:`SimState` holding markets, prices, positions,
fills, orders, faults and the account settings.

Everything here is synchronous and transport-free; the REST dialects
(:mod:`simulator.rest_bybit`, :mod:`simulator.rest_binance`), the admin API
(:mod:`simulator.admin`) and the public streams (:mod:`simulator.streams`) all work on
one :class:`SimState` inside one trio thread.

:class:`SimState` is assembled from one part per concern, each in its own module:
:class:`~simulator.state.prices.PriceBook` (markets and their price walk),
:class:`~simulator.state.positions.PositionDesk` (positions and the admin changes to
them), :class:`~simulator.state.fills.FillLedger` (the fill history, the only way a
position changes) and :class:`~simulator.state.orders.OrderDesk` (order matching and
the order log), :class:`~simulator.state.activity.ActivityFeed` (telling the private
streams what changed) and :class:`~simulator.state.listen_keys.ListenKeys` (Binance's
user-data-stream keys). The parts share one clock (:meth:`SimState.now`) and call each other
through ``self``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Callable

from simulator.state.activity import ActivityFeed
from simulator.state.faults import Faults
from simulator.state.fills import FillLedger
from simulator.state.listen_keys import ListenKeys
from simulator.state.markets import DEFAULT_MARKETS, Market
from simulator.state.orders import OrderDesk
from simulator.state.positions import PositionDesk
from simulator.state.prices import PriceBook
from simulator.state.values import DEFAULT_API_KEYS, EXCHANGES, QUOTE, SimError, normalize_exchange

# Bybit's position list ``openTime``: "zero" reports "0" (unknown: clients must look at
# the fill history), "real" reports the opening time of the current episode, "absent"
# leaves the field out. Binance reports no opening time at all ("absent" only).
POSITION_OPEN_TIME_MODES = {"bybit": ("zero", "real", "absent"), "binanceusdm": ("absent",)}
DEFAULT_POSITION_OPEN_TIME = {"bybit": "zero", "binanceusdm": "absent"}


class SimState(PriceBook, PositionDesk, FillLedger, OrderDesk, ActivityFeed, ListenKeys):
    """All simulator state. Not thread-safe: use it from the one trio thread."""

    def __init__(
        self,
        seed: int = 0,
        *,
        api_keys: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        default_markets: bool = True,
    ) -> None:
        self.seed = seed
        self.api_keys: dict[str, str] = dict(DEFAULT_API_KEYS if api_keys is None else api_keys)
        self.clock = clock
        self._init_prices()
        self._init_positions()
        self._init_fills(seed)
        self._init_orders(seed)
        self._init_activity()
        self._init_listen_keys(seed)
        self.faults = Faults()
        # every REST request of both exchanges waits this long before it is answered
        self.rest_latency_ms = 0
        # Position mode per exchange: False = one-way (what the manager supports), True = hedge.
        self.hedge_mode: dict[str, bool] = {ex: False for ex in EXCHANGES}
        # What Bybit's position list says in ``openTime``: see POSITION_OPEN_TIME_MODES.
        self.position_open_time: dict[str, str] = dict(DEFAULT_POSITION_OPEN_TIME)
        if default_markets:
            for ex in EXCHANGES:
                for sid, (price, tick, step, max_qty, max_mkt) in DEFAULT_MARKETS.items():
                    self._add_market(
                        Market(
                            exchange=ex,
                            symbol_id=sid,
                            base=sid[: -len(QUOTE)],
                            tick_size=Decimal(tick),
                            qty_step=Decimal(step),
                            min_qty=Decimal(step),
                            max_qty=Decimal(max_qty),
                            max_market_qty=Decimal(max_mkt),
                        ),
                        Decimal(price),
                    )

    # ----------------------------------------------------------------- time

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=timezone.utc)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------ account settings

    def reset(self) -> None:
        """Forget positions, fills, orders and faults, back to one-way mode and the default
        settings (markets and prices stay): a fresh account."""
        self.positions.clear()
        self._forget_all_fills()
        self.clear_orders()
        self.faults.clear()
        self.hedge_mode = {ex: False for ex in EXCHANGES}
        self.position_open_time = dict(DEFAULT_POSITION_OPEN_TIME)
        self.rest_latency_ms = 0

    def set_position_open_time(self, exchange: str, mode: str) -> None:
        ex = normalize_exchange(exchange)
        allowed = POSITION_OPEN_TIME_MODES[ex]
        if mode not in allowed:
            raise SimError(f"{ex}: position_open_time must be one of {list(allowed)}, got {mode!r}")
        self.position_open_time[ex] = mode
