"""The account (private stream) protocol of an exchange, by the exchange's name.

Both protocols have the same reading side — ``exchange``, ``heartbeat`` and
``parse(raw) -> list[AccountParseResult]`` (:class:`AccountProtocol`); what it takes to
open the stream differs (Binance: a listen key in the URL; Bybit: ``auth`` and
``subscribe`` requests) and is read from the concrete class.
"""

from __future__ import annotations

from typing import Protocol

from feeds.account_binance import BinanceAccountProtocol
from feeds.account_bybit import BybitAccountProtocol
from feeds.account_events import AccountParseResult

__all__ = ["AccountProtocol", "make_account_protocol"]


class AccountProtocol(Protocol):
    exchange: str
    heartbeat: str

    def parse(self, raw: str | bytes) -> list[AccountParseResult]: ...


def make_account_protocol(exchange: str) -> BinanceAccountProtocol | BybitAccountProtocol:
    """A new protocol object for ``exchange`` ("bybit", "binanceusdm" or "binance")."""
    if exchange == "bybit":
        return BybitAccountProtocol()
    if exchange in ("binanceusdm", "binance"):
        return BinanceAccountProtocol()
    raise ValueError(f"no account stream protocol for exchange {exchange!r}")
