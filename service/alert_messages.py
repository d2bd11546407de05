"""What an alert says: the text people read and the JSON a webhook receives.

Both are built from a :class:`actors.events.LifecycleEvent`. The text rounds numbers
for reading (percentages to 3 places, prices to 8 significant digits); the JSON
payload keeps every value whole, with Decimals, datetimes and UUIDs as strings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, is_dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Mapping
from uuid import UUID

from actors.events import LifecycleEvent
from exchanges import logfmt


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime,)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def alert_text(event: LifecycleEvent) -> str:
    """A short, human-readable description of an event (plain text, numbers rounded for reading)."""
    head = f"{'CRITICAL' if event.critical else 'INFO'} {event.type}"
    where = " ".join(x for x in (event.exchange, event.symbol) if x)
    lines = [head + (f" {where}" if where else "")]
    if event.aged_id is not None:
        lines.append(f"aged position {event.aged_id}")
    data = dict(event.data or {})
    error = data.pop("error", None)
    details = " ".join(f"{k}={logfmt.value(k, v) if logfmt.formatter_for(k) else _jsonable(v)}"
                       for k, v in data.items() if v is not None)
    if details:
        lines.append(details)
    if error:
        lines.append(f"error: {error}")
    lines.append(f"at {event.at.isoformat()}")
    return "\n".join(lines)


def alert_payload(event: LifecycleEvent) -> dict[str, Any]:
    """The JSON body a webhook receives for an event."""
    return {
        "type": event.type,
        "critical": event.critical,
        "at": event.at.isoformat(),
        "aged_id": None if event.aged_id is None else str(event.aged_id),
        "exchange": event.exchange,
        "symbol": event.symbol,
        "data": _jsonable(event.data or {}),
        "text": alert_text(event),
    }


__all__ = ["alert_payload", "alert_text"]
