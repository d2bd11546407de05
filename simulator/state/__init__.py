"""The simulator's state, transport-free: :class:`SimState` and the values it deals in.

One module per concern: :mod:`~simulator.state.values` (names, numbers, times, bad
input), :mod:`~simulator.state.markets`, :mod:`~simulator.state.prices` (the seeded
random walk), :mod:`~simulator.state.positions`, :mod:`~simulator.state.fills` (the
fill history, the only way a position changes), :mod:`~simulator.state.orders`
(matching), :mod:`~simulator.state.faults` (injected failures) and
:mod:`~simulator.state.simstate`, which puts them together.
"""

from simulator.state.faults import CountedFault, Faults, RejectRule
from simulator.state.fills import ENTRY_QUANTUM, Fill, FillLedger, fold_fill
from simulator.state.markets import (
    DEFAULT_MARKETS,
    DEFAULT_MIN_NOTIONAL,
    DEFAULT_SPREAD_BPS,
    DEFAULT_VOLATILITY,
    LAUNCH_TIME_MS,
    Market,
    derive_market_spec,
)
from simulator.state.orders import ORDER_STATUSES, Order, OrderDesk
from simulator.state.positions import Position, PositionDesk
from simulator.state.prices import PriceBook, PriceListener, SimQuote
from simulator.state.simstate import DEFAULT_POSITION_OPEN_TIME, POSITION_OPEN_TIME_MODES, SimState
from simulator.state.values import (
    DEFAULT_API_KEYS,
    EXCHANGES,
    QUOTE,
    SimError,
    dstr,
    dt_ms,
    iso,
    iter_exchanges,
    normalize_exchange,
    normalize_symbol,
    parse_time,
    to_decimal,
)

__all__ = [
    "CountedFault", "DEFAULT_API_KEYS", "DEFAULT_MARKETS", "DEFAULT_MIN_NOTIONAL",
    "DEFAULT_POSITION_OPEN_TIME", "DEFAULT_SPREAD_BPS", "DEFAULT_VOLATILITY", "ENTRY_QUANTUM",
    "EXCHANGES", "Faults", "Fill", "FillLedger", "LAUNCH_TIME_MS", "Market", "ORDER_STATUSES",
    "Order", "OrderDesk", "POSITION_OPEN_TIME_MODES", "Position", "PositionDesk", "PriceBook",
    "PriceListener", "QUOTE", "RejectRule", "SimError", "SimQuote", "SimState",
    "derive_market_spec", "dstr", "dt_ms", "fold_fill", "iso", "iter_exchanges",
    "normalize_exchange", "normalize_symbol", "parse_time", "to_decimal",
]
