"""Random sequences of a trading bot's moves, seen through the account stream and polls.

Each sequence (seeded, so a failure replays) opens, averages into, reduces, flips,
closes and quickly re-enters one symbol, scripting the exchange's fills as the real
fill history would show them. Every move reaches the detector through the account
stream; with polls, a poll also reads the exchange just before the stream's report
arrives, or just after. After each move, within 100 ms of the service's time:

* the book's open episode is the exchange's position (side, size, entry), or none;
* the open episode's open time is never before the move that opened it: no episode
  inherits the age of one that went flat before it.

The service runs on the in-memory exchange, a real PostgreSQL and trio's MockClock (see
``tests/test_stream_detector.py`` for the stand-in stream and what it relies on).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal as D

import pytest
import trio

from doubles.exchange import MemoryExchange
from exchanges.port import Fill
from tests.test_stream_detector import SYMBOL, change, episodes, healthy_view, running, soon


@dataclass
class Held:
    """The position as the exchange holds it, and when its episode truly began."""

    side: str
    qty: D
    entry: D
    since: datetime


class Bot:
    """Moves the exchange's position and scripts the fills that did it."""

    def __init__(self, ex: MemoryExchange, rng: random.Random):
        self.ex, self.rng = ex, rng
        self.held: Held | None = None

    def trade(self, at: datetime, side: str, qty: D, price: D) -> None:
        fills = self.ex.fills.setdefault(SYMBOL, [])
        fills.append(Fill(f"f{len(fills)}", at, side, qty, price))

    def moves(self) -> list[str]:
        if self.held is None:
            return ["open"]
        return ["add", "reduce", "flip", "flat", "reenter"]

    def open(self, at: datetime, side: str, qty: D, price: D) -> None:
        self.trade(at, "buy" if side == "long" else "sell", qty, price)
        self.held = Held(side, qty, price, at)
        self.ex.set_position(SYMBOL, side, qty, price)

    def flat(self, at: datetime, price: D) -> None:
        assert self.held is not None
        self.trade(at, "sell" if self.held.side == "long" else "buy", self.held.qty, price)
        self.held = None
        self.ex.close_externally(SYMBOL)

    def add(self, at: datetime, qty: D, price: D) -> None:
        h = self.held
        assert h is not None
        self.trade(at, "buy" if h.side == "long" else "sell", qty, price)
        h.entry = ((h.entry * h.qty + price * qty) / (h.qty + qty)).quantize(D("0.01"))
        h.qty += qty
        self.ex.set_position(SYMBOL, h.side, h.qty, h.entry)

    def reduce(self, at: datetime, qty: D, price: D) -> None:
        h = self.held
        assert h is not None and qty < h.qty
        self.trade(at, "sell" if h.side == "long" else "buy", qty, price)
        h.qty -= qty
        self.ex.set_position(SYMBOL, h.side, h.qty, h.entry)

    def flip(self, at: datetime, qty: D, price: D) -> None:
        h = self.held
        assert h is not None
        other = "short" if h.side == "long" else "long"
        self.trade(at, "sell" if h.side == "long" else "buy", h.qty + qty, price)
        self.held = Held(other, qty, price, at)
        self.ex.set_position(SYMBOL, other, qty, price)

    def report(self, at: datetime):
        """The stream's report of the position as it is now."""
        h = self.held
        return change(at, None) if h is None else change(at, h.side, str(h.qty), str(h.entry))


async def play(mdb, seed: int, *, polls: bool, moves: int = 25) -> None:
    rng = random.Random(seed)
    ex = MemoryExchange(name="bybit")
    bot = Bot(ex, rng)
    view = healthy_view()
    async with running(mdb, ex, view) as (svc, prices, completed):
        view.connected()
        view.synced([])
        reported = 0
        for _ in range(moves):
            await trio.sleep(rng.choice([1, 10, 60, 300]))  # never long enough to age (3 h)
            clock = svc.clock
            price = D(rng.randint(90, 110))
            qty = D(rng.randint(1, 4))
            move = rng.choice(bot.moves())
            reports = []
            if move == "open":
                bot.open(clock.now(), rng.choice(["long", "short"]), qty, price)
            elif move == "add":
                bot.add(clock.now(), qty, price)
            elif move == "reduce" and bot.held is not None and bot.held.qty > 1:
                bot.reduce(clock.now(), D(1), price)
            elif move == "flip":
                bot.flip(clock.now(), qty, price)
            elif move in ("flat", "reduce"):
                bot.flat(clock.now(), price)
            else:  # closed and opened again a second later, before anything is read
                side = bot.held.side if bot.held is not None else "long"
                bot.flat(clock.now(), price)
                reports.append(bot.report(clock.now()))
                await trio.sleep(1)
                bot.open(clock.now(), side, qty, price + 1)
            reports.append(bot.report(clock.now()))
            when = rng.choice(["before", "after", "none"]) if polls else "none"
            if when == "before":
                await svc.detector.poll_once()  # a poll reads the exchange before the stream's report
            for report in reports:
                view.apply(report)
            reported += len(reports)
            if when == "after":
                await svc.detector.poll_once()
            await soon(
                lambda n=reported: handled(svc, n, mdb, bot.held), f"seed {seed}: the book after {move} ({when} a poll)"
            )


async def handled(svc, reported: int, mdb, held: Held | None) -> bool:
    """Every report handled to its end, and the book as the exchange is."""
    return svc.detector.stream_changes == reported and await book_matches(mdb, held)


async def book_matches(mdb, held: Held | None) -> bool:
    open_rows = [r for r in await episodes(mdb) if r["status"] == "open"]
    if held is None:
        return open_rows == []
    if len(open_rows) != 1:
        return False
    [row] = open_rows
    same = (row["side"], row["quantity"], row["entry_price"]) == (held.side, held.qty, held.entry)
    if same:
        # Never older than its true opening (a flat before it is never crossed).
        assert row["opened_at"] >= held.since, (row["opened_at"], held.since, row["opened_at_source"])
    return same


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_random_moves_through_the_stream_alone(mock_clock, mdb, seed):
    await play(mdb, seed, polls=False)


@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15, 16])
async def test_random_moves_through_the_stream_and_polls(mock_clock, mdb, seed):
    await play(mdb, seed, polls=True)
