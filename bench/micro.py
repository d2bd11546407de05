"""decision_us: the pure per-tick decision, in process, timeit-style.

What an actor runs per tick is :func:`actors.position.step` with a ``Tick`` event;
``step`` itself calls :func:`actors.policy.assess` and :func:`actors.policy.should_close`
(plus ``next_phase_change``, ``executable_price`` and two ``dataclasses.replace``).
The key is the median over repeats of the mean cost of one ``step(state, Tick)`` for a
progressive-phase long (the costlier phase: 60-digit Decimal arithmetic) whose tick
neither closes nor is due for a sampled price-check row — the common tick. The grace
phase and the parts (assess, should_close alone) are reported beside it.
"""

from __future__ import annotations

import gc
import timeit
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from uuid import uuid4

from actors.policy import PolicyConfig, assess, should_close
from actors.position import PositionState, Settings, Tick, step


def _state(age: timedelta, now: datetime) -> tuple[PositionState, Tick]:
    config = PolicyConfig()
    s = PositionState(aged_id=uuid4(), position_id=1, exchange="bybit", symbol="BTC/USDT:USDT", side="long",
                      entry_price=D(100), quantity=D(1), opened_at=now - age, config=config, settings=Settings())
    # settle: status follows the phase, one sample row is taken
    s, _ = step(s, Tick(now, D("90.00"), D("90.01"), D("90.00")))
    return s, Tick(now + timedelta(milliseconds=1), D("90.01"), D("90.02"), D("90.01"))


def _per_call_us(fn, number: int, repeats: int) -> list[float]:
    timer = timeit.Timer(fn)
    gc_was = gc.isenabled()
    gc.disable()  # as timeit does
    try:
        return [t / number * 1e6 for t in timer.repeat(repeat=repeats, number=number)]
    finally:
        if gc_was:
            gc.enable()


def bench_decision(number: int = 20_000, repeats: int = 7) -> dict:
    import statistics  # noqa: PLC0415
    now = datetime.now(timezone.utc)
    out = {}
    for name, age in (("progressive", timedelta(hours=16)), ("grace", timedelta(hours=7))):
        s, tick = _state(age, now)
        _, commands = step(s, tick)
        assert s.status == f"{name}_active" and not commands[1:], (s.status, commands)
        runs = _per_call_us(lambda: step(s, tick), number, repeats)
        out[f"step_{name}_us"] = statistics.median(runs)
        out[f"step_{name}_min_us"] = min(runs)
        a = assess(s.side, s.entry_price, s.opened_at, tick.now, s.config)
        out[f"assess_{name}_us"] = statistics.median(
            _per_call_us(lambda: assess(s.side, s.entry_price, s.opened_at, tick.now, s.config), number, repeats))
        out[f"should_close_{name}_us"] = statistics.median(
            _per_call_us(lambda: should_close(a, s.side, tick.bid, tick.ask, tick.last), number, repeats))
    details = {k: round(v, 2) for k, v in out.items()}
    details["number_per_repeat"] = number
    details["repeats"] = repeats
    return {"decision_us": round(out["step_progressive_us"], 2), "details": details}


if __name__ == "__main__":
    print(bench_decision())
