"""How long the feed waits before it reconnects.

One function, so that the rule lives in one place.
"""

from __future__ import annotations

import random

__all__ = ["reconnect_delay"]


def reconnect_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait before reconnect ``attempt`` (0 for the first after a failure).

    Jittered exponential backoff: the cap starts at ``initial`` and doubles with every
    attempt up to ``maximum``; the delay is drawn uniformly from the cap's upper half,
    so that many clients cut off together do not come back together.
    """
    cap = min(maximum, initial * (2 ** min(attempt, 32)))
    return random.uniform(cap / 2, cap)
