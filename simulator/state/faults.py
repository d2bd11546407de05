"""Injected faults: the failures a test or the demo asks the simulator to show.

The admin API (``/_sim/faults``, :func:`simulator.admin.apply_faults`) queues them;
the REST dialects consume them. Counted faults (:class:`CountedFault`,
:class:`RejectRule`) are used up by the requests they hit, one each, optionally only on
one exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from simulator.state.values import dstr


@dataclass
class CountedFault:
    count: int
    exchange: str | None = None  # None: any exchange

    def to_dict(self) -> dict:
        return {"count": self.count, "exchange": self.exchange}


@dataclass
class RejectRule:
    count: int
    code: str | None = None  # None: the exchange's reduce-only rejection code
    exchange: str | None = None
    message: str | None = None

    def to_dict(self) -> dict:
        return {"count": self.count, "code": self.code, "exchange": self.exchange, "message": self.message}


class Faults:
    """Injected faults. Counted faults are consumed by the requests they hit."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.reject_next: list[RejectRule] = []
        self.http_5xx: list[CountedFault] = []
        self.rate_limit_429: list[CountedFault] = []
        self.drop_reply: list[CountedFault] = []
        self.partial_fill_ratio: Decimal | None = None
        # Binance: answer MARKET orders with status NEW / executedQty 0 even when the
        # client asked newOrderRespType=RESULT (the fill is still done; a lookup shows it)
        self.binance_market_new: bool = False
        self.ws: dict[str, str] = {}  # exchange or "*" -> last ws action, for display
        self.private_ws: dict[str, str] = {}  # the same for the private streams
        # Bybit private stream: how many next "auth" requests answer the documented failure
        self.bybit_auth_fail: int = 0
        # (exchange, symbol id) -> how many full position lists leave that position out
        # (a list asked for that symbol alone still shows it)
        self.omit_from_position_list: dict[tuple[str, str], int] = {}
        # (exchange, symbol id) -> fields of its position row replaced as given (a malformed row)
        self.position_row_overrides: dict[tuple[str, str], dict] = {}

    def take_bybit_auth_fail(self) -> bool:
        if self.bybit_auth_fail <= 0:
            return False
        self.bybit_auth_fail -= 1
        return True

    def take_omission(self, exchange: str, symbol_id: str) -> bool:
        key = (exchange, symbol_id)
        left = self.omit_from_position_list.get(key, 0)
        if left <= 0:
            return False
        self.omit_from_position_list[key] = left - 1
        return True

    def override_row(self, exchange: str, symbol_id: str, row: dict) -> dict:
        extra = self.position_row_overrides.get((exchange, symbol_id))
        return {**row, **extra} if extra else row

    @staticmethod
    def _take(queue: list, exchange: str):
        for i, f in enumerate(queue):
            if f.exchange is None or f.exchange == exchange:
                f.count -= 1
                if f.count <= 0:
                    del queue[i]
                return f
        return None

    def take_http_5xx(self, exchange: str) -> bool:
        return self._take(self.http_5xx, exchange) is not None

    def take_rate_limit(self, exchange: str) -> bool:
        return self._take(self.rate_limit_429, exchange) is not None

    def take_drop_reply(self, exchange: str) -> bool:
        return self._take(self.drop_reply, exchange) is not None

    def take_reject(self, exchange: str) -> RejectRule | None:
        return self._take(self.reject_next, exchange)

    def add_counted(self, name: str, fault: CountedFault) -> None:
        """Queue ``fault`` on ``http_5xx``/``rate_limit_429``/``drop_reply`` (merging counts)."""
        queue: list[CountedFault] = getattr(self, name)
        if fault.count <= 0:
            return
        for f in queue:
            if f.exchange == fault.exchange:
                f.count += fault.count
                return
        queue.append(fault)

    def add_reject(self, rule: RejectRule) -> None:
        if rule.count <= 0:
            return
        for r in self.reject_next:
            if (r.code, r.exchange, r.message) == (rule.code, rule.exchange, rule.message):
                r.count += rule.count
                return
        self.reject_next.append(rule)

    def to_dict(self) -> dict:
        return {
            "reject_next": [r.to_dict() for r in self.reject_next],
            "http_5xx": [f.to_dict() for f in self.http_5xx],
            "rate_limit_429": [f.to_dict() for f in self.rate_limit_429],
            "drop_reply": [f.to_dict() for f in self.drop_reply],
            "partial_fill_ratio": dstr(self.partial_fill_ratio),
            "binance_market_new": self.binance_market_new,
            "ws": dict(self.ws),
            "private_ws": dict(self.private_ws),
            "bybit_auth_fail": self.bybit_auth_fail,
        }
