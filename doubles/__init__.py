"""Test doubles: in-process stand-ins for the product's parts, for tests and benchmarks.

They live outside the product packages so that nothing in production can import them
by accident. :class:`MemoryFeed` stands in for :class:`feeds.feed.Feed`;
:class:`MemoryExchange` stands in for an exchange behind :class:`exchanges.port.ExchangePort`,
with faults a test can switch on.
"""

from doubles.exchange import MemoryExchange
from doubles.feed import MemoryFeed

__all__ = ["MemoryExchange", "MemoryFeed"]
