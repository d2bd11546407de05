"""``POST /_sim/faults``: check a fault request as a whole, then inject what it asks.

Keys: ``reject_next``, ``http_5xx``, ``rate_limit_429``, ``drop_reply`` (counted, per
exchange or any), ``partial_fill_ratio``, ``binance_market_new``, ``ws`` (``"drop"``,
``"silence"``, ``"resume"``, with an optional top-level ``exchange``),
``close_position``, and for the private (account) streams: ``private_ws`` (``"drop"``,
``"silence"``, ``"resume"``, optional top-level ``exchange``), ``private_raw`` (a text
frame pushed verbatim, optional top-level ``exchange``), ``expire_listen_key`` (true:
Binance listen keys expire now, their streams get ``listenKeyExpired``) and
``bybit_auth_fail`` (N: the next N Bybit private ``auth`` requests fail; 0 clears).
Nothing is applied unless everything is valid.
"""

from __future__ import annotations

import logging

from simulator.admin.validation import BadInput, parse_count, parse_counted_fault
from simulator.state import RejectRule, SimState, normalize_exchange, normalize_symbol, to_decimal

log = logging.getLogger("simulator.admin")


def apply_faults(state: SimState, hub, body: dict) -> list[str]:
    """Validate everything first, then apply. Returns what was done."""
    known = {"reject_next", "http_5xx", "rate_limit_429", "drop_reply", "partial_fill_ratio", "ws", "exchange",
             "close_position", "binance_market_new", "private_ws", "private_raw", "expire_listen_key",
             "bybit_auth_fail"}
    unknown = set(body) - known
    if unknown:
        raise BadInput(f"unknown fault keys {sorted(unknown)}; known: {sorted(known - {'exchange'})}")
    if not body:
        raise BadInput("no fault given")
    actions = []
    f = state.faults
    if "reject_next" in body:
        rn = body["reject_next"]
        if isinstance(rn, int) and not isinstance(rn, bool):
            rn = {"count": rn}
        if not isinstance(rn, dict):
            raise BadInput('reject_next must be {"count": N, "code": C?, "exchange": E?, "message": M?}')
        unknown = set(rn) - {"count", "code", "exchange", "message"}
        if unknown:
            raise BadInput(f"reject_next: unknown keys {sorted(unknown)}")
        count = parse_count(rn.get("count", 1), "reject_next.count")
        code = rn.get("code")
        if code is not None:
            if isinstance(code, bool) or not isinstance(code, (int, str)) or not str(code).lstrip("-").isdigit():
                raise BadInput("reject_next.code must be an integer exchange error code")
            code = str(int(code))
        ex = rn.get("exchange")
        ex = normalize_exchange(ex) if ex else None
        msg = rn.get("message")
        if msg is not None and not isinstance(msg, str):
            raise BadInput("reject_next.message must be a string")
        actions.append(("reject_next", RejectRule(count, code, ex, msg)))
    for name in ("http_5xx", "rate_limit_429", "drop_reply"):
        if name in body:
            actions.append((name, parse_counted_fault(body[name], name)))
    if "partial_fill_ratio" in body:
        v = body["partial_fill_ratio"]
        ratio = None
        if v is not None:
            ratio = to_decimal(v, "partial_fill_ratio")
            if not (0 <= ratio <= 1):
                raise BadInput("partial_fill_ratio must be between 0 and 1 (null clears it)")
        actions.append(("partial_fill_ratio", ratio))
    if "binance_market_new" in body:
        if not isinstance(body["binance_market_new"], bool):
            raise BadInput("binance_market_new must be true or false")
        actions.append(("binance_market_new", body["binance_market_new"]))
    private = getattr(hub, "private", None)
    if any(k in body for k in ("private_ws", "private_raw", "expire_listen_key")) and private is None:
        raise BadInput("the WebSocket streams are not mounted in this simulator")
    if "private_ws" in body:
        if body["private_ws"] not in ("drop", "silence", "resume"):
            raise BadInput('private_ws must be "drop", "silence" or "resume"')
        ex = body.get("exchange")
        actions.append(("private_ws", (body["private_ws"], normalize_exchange(ex) if ex else None)))
    if "private_raw" in body:
        if not isinstance(body["private_raw"], str):
            raise BadInput("private_raw must be a string (the frame's text)")
        ex = body.get("exchange")
        actions.append(("private_raw", (body["private_raw"], normalize_exchange(ex) if ex else None)))
    if "expire_listen_key" in body:
        if body["expire_listen_key"] is not True:
            raise BadInput("expire_listen_key must be true")
        actions.append(("expire_listen_key", True))
    if "bybit_auth_fail" in body:
        actions.append(("bybit_auth_fail", parse_count(body["bybit_auth_fail"], "bybit_auth_fail")))
    if "ws" in body:
        what = body["ws"]
        if what not in ("drop", "silence", "resume"):
            raise BadInput('ws must be "drop", "silence" or "resume"')
        ex = body.get("exchange")
        ex = normalize_exchange(ex) if ex else None
        if hub is None:
            raise BadInput("the WebSocket streams are not mounted in this simulator")
        actions.append(("ws", (what, ex)))
    elif "exchange" in body and "private_ws" not in body and "private_raw" not in body:
        raise BadInput('"exchange" at the top level goes with "ws", "private_ws" or "private_raw"; put it inside '
                       'the fault object otherwise')
    if "close_position" in body:
        cp = body["close_position"]
        if not isinstance(cp, dict) or "exchange" not in cp or "symbol" not in cp:
            raise BadInput('close_position must be {"exchange": E, "symbol": S}')
        ex = normalize_exchange(cp["exchange"])
        sym = normalize_symbol(cp["symbol"])
        if state.position(ex, sym) is None:
            raise BadInput(f"no {ex} position on {sym} to close")
        actions.append(("close_position", (ex, sym)))

    done = []
    for name, value in actions:
        if name == "reject_next":
            f.add_reject(value)
        elif name in ("http_5xx", "rate_limit_429", "drop_reply"):
            f.add_counted(name, value)
        elif name == "partial_fill_ratio":
            f.partial_fill_ratio = value
        elif name == "binance_market_new":
            f.binance_market_new = value
        elif name == "ws":
            what, ex = value
            if what == "drop":
                hub.drop_all(ex)
            elif what == "silence":
                hub.silence(ex, True)
            else:
                hub.silence(ex, False)
            f.ws[ex or "*"] = what
        elif name == "private_ws":
            what, ex = value
            if what == "drop":
                private.drop(ex)
            else:
                private.silence(ex, what == "silence")
            f.private_ws[ex or "*"] = what
        elif name == "private_raw":
            text, ex = value
            private.send_raw(ex, text)
        elif name == "expire_listen_key":
            private.expire_listen_keys()
        elif name == "bybit_auth_fail":
            f.bybit_auth_fail = value
        elif name == "close_position":
            state.remove_position(*value)
        done.append(name)
        log.info("simulator: fault %s = %r", name, value)
    return done
