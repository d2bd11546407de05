"""Fail points for the kill -9 fault-injection suite.

``APM_FAILPOINTS="after_send"`` (comma-separated; ``name@N`` for the N-th hit) makes
the process SIGKILL itself when it reaches that point, exactly as a crash there would.
Unset (always, outside that suite) every call is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_armed: dict[str, int] = {}
for _item in filter(None, (s.strip() for s in os.environ.get("APM_FAILPOINTS", "").split(","))):
    _name, _, _nth = _item.partition("@")
    _armed[_name] = int(_nth or 1)


def failpoint(name: str) -> None:
    if name in _armed:
        _armed[name] -= 1
        if _armed[name] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
