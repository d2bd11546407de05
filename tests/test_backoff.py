"""The shared backoff schedule and retry loop (supervisor/backoff.py).

The retry loop runs on trio's MockClock (pytest-trio's ``autojump_clock``): its waits
are virtual, so the tests read exactly how long it waited from ``trio.current_time()``.
"""

from __future__ import annotations

import random

import pytest
import trio

from supervisor import Backoff, Retrying, retry


class Busy(Exception):
    """A retryable failure that may carry the server's retry_after hint."""

    def __init__(self, retry_after=None):
        super().__init__("busy")
        self.retry_after = retry_after


def test_exponential_doubles_up_to_the_cap():
    schedule = Backoff.exponential(0.1, max=1.0)
    assert [schedule.delay(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert Backoff.exponential(1.0, factor=3).delay(4) == 27
    assert Backoff.exponential(1.0, max=60).delay(100_000) == 60  # no overflow far down the schedule


def test_a_listed_schedule_repeats_its_last_delay():
    schedule = Backoff.listed([1.0, 3.0, 5.0])
    assert [schedule.delay(n) for n in range(1, 6)] == [1.0, 3.0, 5.0, 5.0, 5.0]
    assert Backoff.listed([1.0, 30.0], max=10).delay(2) == 10


def test_retry_after_lengthens_a_delay_never_shortens_it_and_the_cap_still_holds():
    capped = Backoff.exponential(1.0, max=60)
    assert capped.delay(3, retry_after=0.5) == 4
    assert capped.delay(3, retry_after=7.5) == 7.5
    assert capped.delay(3, retry_after=3600) == 60
    assert Backoff.listed([1.0, 3.0]).delay(1, retry_after=120) == 120  # no cap: the server's word


def test_jitter_draws_from_the_upper_part_of_each_delay():
    asked = []

    def lowest(low, high):
        asked.append((low, high))
        return low

    schedule = Backoff.exponential(1.0, max=8, jitter=0.5, uniform=lowest)
    assert [schedule.delay(n) for n in (1, 2, 5)] == [0.5, 1.0, 4.0]
    assert asked == [(0.5, 1.0), (1.0, 2.0), (4.0, 8.0)]
    seeded = Backoff.exponential(2.0, jitter=0.25, uniform=random.Random(7).uniform)
    assert all(1.5 <= seeded.delay(1) <= 2.0 for _ in range(200))
    assert Backoff.exponential(1.0, jitter=0.5, uniform=lowest).delay(1, retry_after=3) == 3


@pytest.mark.parametrize("make", [
    lambda: Backoff.exponential(-1),
    lambda: Backoff.exponential(1, max=-1),
    lambda: Backoff.exponential(1, factor=0.5),
    lambda: Backoff.exponential(1, jitter=1.5),
    lambda: Backoff.listed([]),
    lambda: Backoff.listed([1, -2]),
])
def test_nonsense_schedules_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_retries_are_counted_from_one():
    with pytest.raises(ValueError):
        Backoff.listed([1.0]).delay(0)


async def test_retry_waits_the_schedule_and_honours_retry_after(autojump_clock):
    calls = []
    seen: list[Retrying] = []

    async def flaky():
        calls.append(trio.current_time())
        if len(calls) == 1:
            raise Busy()
        if len(calls) == 2:
            raise Busy(retry_after=10)
        return "done"

    start = trio.current_time()
    result = await retry(flaky, backoff=Backoff.listed([1.0, 3.0]), retries=5, on=Busy, before_sleep=seen.append)
    assert result == "done"
    assert [t - start for t in calls] == pytest.approx([0, 1, 11])
    assert [(r.retry, r.delay) for r in seen] == [(1, 1.0), (2, 10.0)]
    assert isinstance(seen[1].error, Busy) and seen[1].error.retry_after == 10


async def test_retry_gives_up_with_the_last_error_after_its_retries(autojump_clock):
    calls = 0

    async def always_busy():
        nonlocal calls
        calls += 1
        raise Busy(retry_after=calls)

    with pytest.raises(Busy) as caught:
        await retry(always_busy, backoff=Backoff.exponential(0.1), retries=2, on=Busy)
    assert calls == 3 and caught.value.retry_after == 3


async def test_errors_not_named_and_cancellation_are_not_retried(autojump_clock):
    calls = 0

    async def broken():
        nonlocal calls
        calls += 1
        raise KeyError("a bug, not a busy server")

    with pytest.raises(KeyError):
        await retry(broken, backoff=Backoff.exponential(0.1), retries=5, on=Busy)
    assert calls == 1

    async def hangs():
        nonlocal calls
        calls += 1
        await trio.sleep_forever()

    calls = 0
    with trio.move_on_after(5) as scope:
        await retry(hangs, backoff=Backoff.exponential(0.1), retries=None, on=BaseException)
    assert scope.cancelled_caught and calls == 1


async def test_sleep_waits_the_delay_on_trios_clock(autojump_clock):
    start = trio.current_time()
    await Backoff.exponential(2.0, max=5).sleep(3, retry_after=4.5)
    assert trio.current_time() - start == pytest.approx(5)
