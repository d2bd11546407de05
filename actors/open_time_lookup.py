"""When a position was opened, and whether a changed one was re-entered: the detector's look-ups.

A new episode's open time comes, in order of trust, from the trading bot's own row,
from the exchange (Bybit ``openTime`` when non-zero), from the fill history (the fill
that took the position from flat), or else it is the moment first seen. A position
that changed since the last look is checked against the fills since then: went flat
and opened again (a re-entry, a new episode) or averaged into / partly reduced (the
same episode). Every fallback errs towards a younger position: one may age later than
it truly should, never sooner.

The reading of fills is pure (:mod:`actors.episodes`); this part asks the exchange.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from actors import episodes as ep
from actors.detector_parts import DetectorParts
from exchanges.errors import ExchangeError
from exchanges.port import FILL_HISTORY_WINDOW, ExchangePort, ExchangePosition

log = logging.getLogger("actors.detector")  # every part of the detector logs under one name

__all__ = ["OpenTimeLookup"]


class OpenTimeLookup(DetectorParts):
    """The detector's open-time and re-entry look-ups. See the module docstring."""

    async def _reentered_at(
        self, port: ExchangePort, p: ExchangePosition, row: dict, bot_row: dict | None, now: datetime
    ) -> ep.OpenTime | None:
        """A new opening of the same side since the last look, or None (the same episode)."""
        skew = self.clock_skew
        if bot_row is not None and row["bot_position_id"] is not None and bot_row["id"] != row["bot_position_id"]:
            return ep.OpenTime(bot_row["opened_at"], ep.BOT)  # the bot's book has a new row: a new episode
        if p.opened_at is not None and p.opened_at > row["opened_at"] + skew and row["opened_at_source"] != ep.BOT:
            return ep.OpenTime(p.opened_at, ep.EXCHANGE)
        changed = (
            p.qty != row["quantity"]
            or p.entry_price != row["entry_price"]
            or (
                p.updated_at is not None
                and row["exchange_updated_at"] is not None
                and p.updated_at != row["exchange_updated_at"]
            )
        )
        if not changed:
            return None
        last_look = row["last_seen_at"]
        try:
            fills = await port.fetch_fills(p.symbol, last_look - skew, now + skew)
        except ExchangeError as exc:
            if p.qty == row["quantity"] and p.entry_price == row["entry_price"]:
                raise  # only the update time moved: look again next poll
            log.warning(
                "%s %s changed (size %s -> %s, entry %s -> %s) and the fill history cannot be read (%s): "
                "taken as a new episode, which can only make it age later",
                p.exchange,
                p.symbol,
                row["quantity"],
                p.qty,
                row["entry_price"],
                p.entry_price,
                exc,
            )
            return ep.OpenTime(now, ep.FIRST_SEEN)
        at = ep.reentered_at(fills, p.side, p.qty, last_look=last_look, opened_at=row["opened_at"], skew=skew)
        return None if at is None else ep.OpenTime(at, ep.FILLS)

    async def _open_time(
        self, port: ExchangePort, p: ExchangePosition, bot_row: dict | None, now: datetime
    ) -> ep.OpenTime:
        if bot_row is not None and bot_row["opened_at"] is not None:
            return ep.OpenTime(bot_row["opened_at"], ep.BOT)
        if p.opened_at is not None:
            return ep.OpenTime(p.opened_at, ep.EXCHANGE)
        # Walk the fill history back, a window at a time, until the opening fill shows.
        earliest = now - self.fill_history
        fills: list = []
        hi = now + self.clock_skew
        try:
            while hi > earliest:
                lo = max(earliest, hi - FILL_HISTORY_WINDOW + timedelta(milliseconds=1))  # one request per window
                fills = list(await port.fetch_fills(p.symbol, lo, hi)) + fills
                if ep.opening_fill(fills, p.side, p.qty) is not None:
                    break
                hi = lo - timedelta(milliseconds=1)
        except ExchangeError as exc:
            log.warning(
                "%s %s: fill history unavailable (%s); open time is the moment first seen", p.exchange, p.symbol, exc
            )
            return ep.OpenTime(now, ep.FIRST_SEEN)
        return ep.open_time(fills, p.side, p.qty, window_start=earliest, first_seen=now)
