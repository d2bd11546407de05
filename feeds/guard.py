"""Suspect quotes: a well-formed price far from everything trusted is held, not acted on. Sans-IO.

A parser accepts any well-formed, uncrossed quote. One with the bid at 1000 times the
price is well formed, and a position actor would market-close on it. So between the
parser and the subscribers, :class:`QuoteGuard` compares each stream tick of a symbol
with the last *accepted* price of that symbol (its anchor):

* the prices a close could act on — bid and ask, or the last price where one side of
  the book is missing (the policy falls back to it) — all within ``threshold`` (20 % by
  default) of the anchor, or of the mark price where that may vouch (below): the tick is
  **accepted**, and its price becomes the anchor;
* otherwise it is **suspect**: *held*, not delivered, until a second source agrees:

  - a REST look-up (:meth:`QuoteGuard.on_rest`): near the held tick, the tick is
    released; near anything else, the held tick is dropped. Either way the REST price
    becomes the anchor;
  - only where no REST answer can be had (no REST source, or the last look-up failed),
    the stream may vouch for itself: the next tick (a later frame) in the same range
    as the held one, or a mark price set by a later frame than the held tick's. A
    stream that sends garbage can also send "confirming" garbage, which is why a
    working REST source always has the last word.

The first tick of a symbol has no anchor and is accepted: there is nothing to compare it
with. A tick within range of the anchor supersedes a held suspect (the suspect is
dropped). Frame numbers (``frame``) order events: a confirmation must come from a
later frame than the tick it confirms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from feeds.tick import Tick

__all__ = ["ACCEPTED", "CONFIRMED", "DEFAULT_THRESHOLD", "HELD", "QuoteGuard"]

DEFAULT_THRESHOLD = Decimal("0.20")

ACCEPTED = "accepted"  # deliver the tick
CONFIRMED = "confirmed"  # deliver the tick: it confirmed a held suspect
HELD = "held"  # do not deliver: suspect


def actionable_prices(bid: Decimal | None, ask: Decimal | None, last: Decimal | None) -> tuple[Decimal, ...]:
    """The prices a close could be decided on: bid and ask, plus last where a side is missing."""
    if bid is not None:
        if ask is not None:
            return (bid, ask)
        return (bid,) if last is None else (bid, last)
    if ask is not None:
        return (ask,) if last is None else (ask, last)
    return () if last is None else (last,)


@dataclass(slots=True)
class _Held:
    tick: Tick
    frame: int


class QuoteGuard:
    """Per-symbol anchors and held suspects of one feed. See the module docstring.

    ``threshold=None`` turns the guard off: for synthetic streams (benchmarks) whose
    prices jump on purpose. Counters: ``suspects`` (ticks held), ``confirmed`` (suspects released by a second
    source), ``rejected`` (suspects dropped: refuted by REST or superseded by a tick in
    range of the anchor).
    """

    def __init__(self, threshold: Decimal | str | float | None = DEFAULT_THRESHOLD):
        if threshold is not None:
            threshold = Decimal(str(threshold))
            if not threshold.is_finite() or threshold <= 0:
                raise ValueError(f"the suspect threshold must be a positive fraction, got {threshold}")
        self.threshold = threshold  # None: the guard is off (every tick is accepted)
        self._anchor: dict[str, Decimal] = {}
        self._held: dict[str, _Held] = {}
        self.suspects = 0
        self.confirmed = 0
        self.rejected = 0

    # -- queries --------------------------------------------------------------------------

    def anchor(self, symbol: str) -> Decimal | None:
        return self._anchor.get(symbol)

    def held(self, symbol: str) -> Tick | None:
        h = self._held.get(symbol)
        return h.tick if h is not None else None

    def near(self, prices: tuple[Decimal, ...], ref: Decimal) -> bool:
        """Every price within ``threshold`` of ``ref`` (relative to ``ref``); any price
        while the guard is off."""
        if self.threshold is None:
            return True
        limit = ref * self.threshold
        for p in prices:
            if abs(p - ref) > limit:
                return False
        return True

    # -- events ---------------------------------------------------------------------------

    def check(
        self,
        tick: Tick,
        frame: int,
        *,
        stream_vouches: bool = False,
        mark_info: Callable[[str], tuple[Decimal | None, int]] | None = None,
    ) -> str:
        """Judge a stream tick from frame number ``frame``: :data:`ACCEPTED`,
        :data:`CONFIRMED` (both: deliver it) or :data:`HELD` (do not).

        ``stream_vouches``: the next tick or the mark price may confirm (no REST answer
        can be had); ``mark_info(symbol) -> (mark, frame that set it)``.
        """
        if self.threshold is None:
            return ACCEPTED
        symbol = tick.symbol
        prices = actionable_prices(tick.bid, tick.ask, tick.last)
        if not prices:
            return ACCEPTED  # (a parser never emits a tick without a price)
        anchor = self._anchor.get(symbol)
        if anchor is None or self.near(prices, anchor):
            return self._accept(symbol, prices, ACCEPTED, superseded=True)
        held = self._held.get(symbol)
        if stream_vouches:
            if held is not None and frame > held.frame:
                ref = actionable_prices(held.tick.bid, held.tick.ask, held.tick.last)[0]
                if self.near(prices, ref):  # the next tick agrees with the held one
                    self.confirmed += 1
                    return self._accept(symbol, prices, CONFIRMED)
            if mark_info is not None:
                mark, mark_frame = mark_info(symbol)
                if mark is not None and mark_frame < frame and self.near(prices, mark):
                    return self._accept(symbol, prices, ACCEPTED, superseded=True)
        self._held[symbol] = _Held(tick, frame)
        self.suspects += 1
        return HELD

    def on_mark(self, symbol: str, mark_info: Callable[[str], tuple[Decimal | None, int]]) -> Tick | None:
        """A later frame brought no new price (only the stream may vouch): a mark price set
        after the held tick's frame and near it releases the held tick (returned)."""
        held = self._held.get(symbol)
        if held is None:
            return None
        mark, mark_frame = mark_info(symbol)
        if mark is None or mark_frame <= held.frame:
            return None
        prices = actionable_prices(held.tick.bid, held.tick.ask, held.tick.last)
        if not self.near(prices, mark):
            return None
        self.confirmed += 1
        self._accept(symbol, prices, CONFIRMED)
        return held.tick

    def on_rest(self, symbol: str, bid: Decimal | None, ask: Decimal | None, last: Decimal | None) -> Tick | None:
        """A REST quote of ``symbol`` (valid, uncrossed prices): it becomes the anchor; a
        held tick near it is released (returned), one that is not is dropped."""
        rest = actionable_prices(bid, ask, last)
        if not rest:
            return None
        self._anchor[symbol] = rest[0]
        held = self._held.pop(symbol, None)
        if held is None:
            return None
        prices = actionable_prices(held.tick.bid, held.tick.ask, held.tick.last)
        if self.near(prices, rest[0]):
            self.confirmed += 1
            self._anchor[symbol] = prices[0]
            return held.tick
        self.rejected += 1
        return None

    def discard_held(self, symbol: str) -> None:
        """Nobody waits for ``symbol`` any more: forget its held tick (not its anchor)."""
        self._held.pop(symbol, None)

    # -- internals ------------------------------------------------------------------------

    def _accept(self, symbol: str, prices: tuple[Decimal, ...], outcome: str, superseded: bool = False) -> str:
        self._anchor[symbol] = prices[0]
        if self._held.pop(symbol, None) is not None and superseded:
            self.rejected += 1
        return outcome
