"""Comparing the shape of two JSON documents: keys (recursively), value types, envelope.

The simulator's replies must look like the exchanges' own: the same keys at every
level, and the same JSON type for every value (a price the exchange sends as a
string is never a number in the simulator, a time sent as a number never a string)::

    >>> shape_differences({"a": "1", "b": {"c": 2}}, {"a": 1, "b": {}})
    ['$.a: str in the real payload, int in the simulator', '$.b.c: missing in the simulator']

Lists: every element of the simulator's list is compared with the first element of
the real one (the documented examples show one row). An empty list on either side
compares nothing inside it. A list of different kinds of objects (Binance's market
``filters``) is compared by kind instead: ``keyed={"$.symbols[].filters": "filterType"}``
compares each simulator element with the real element of the same ``filterType``
(kinds only one side has are reported). ``null`` is a type of its own. Allowances
name the paths (``$.result.list[].openTime``, ``$.symbols[].filters[LOT_SIZE]``) that
may be missing or extra, or differ in type.
"""

from __future__ import annotations

from typing import Any

__all__ = ["json_type", "shape_differences"]


def json_type(value: Any) -> str:
    """The JSON type of a parsed value: ``str``, ``int``, ``float``, ``bool``, ``null``, ``list``, ``dict``."""
    if value is None:
        return "null"
    return type(value).__name__


def shape_differences(
    real: Any,
    sim: Any,
    allowed: frozenset[str] | set[str] = frozenset(),
    keyed: dict[str, str] | None = None,
    path: str = "$",
) -> list[str]:
    """How ``sim`` differs in shape from ``real``, one line per difference (empty: same shape).

    ``allowed`` holds paths whose difference (missing, extra, or of type) is accepted;
    ``keyed`` maps the path of a list of mixed objects to the field naming each kind.
    """
    keyed = keyed or {}
    if path in allowed:
        return []
    if json_type(real) != json_type(sim):
        return [f"{path}: {json_type(real)} in the real payload, {json_type(sim)} in the simulator"]
    out: list[str] = []
    if isinstance(real, dict):
        for key in real.keys() - sim.keys():
            if f"{path}.{key}" not in allowed:
                out.append(f"{path}.{key}: missing in the simulator")
        for key in sim.keys() - real.keys():
            if f"{path}.{key}" not in allowed:
                out.append(f"{path}.{key}: not in the real payload")
        for key in real.keys() & sim.keys():
            out.extend(shape_differences(real[key], sim[key], allowed, keyed, f"{path}.{key}"))
    elif isinstance(real, list) and path in keyed:
        kind = keyed[path]
        real_by_kind = {item.get(kind): item for item in real}
        sim_by_kind = {item.get(kind): item for item in sim}
        for name in real_by_kind.keys() | sim_by_kind.keys():
            where = f"{path}[{name}]"
            if name not in sim_by_kind:
                out.extend([] if where in allowed else [f"{where}: missing in the simulator"])
            elif name not in real_by_kind:
                out.extend([] if where in allowed else [f"{where}: not in the real payload"])
            else:
                out.extend(shape_differences(real_by_kind[name], sim_by_kind[name], allowed, keyed, where))
    elif isinstance(real, list) and real:
        for item in sim:
            out.extend(shape_differences(real[0], item, allowed, keyed, f"{path}[]"))
    return sorted(set(out))
