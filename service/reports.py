"""Readable tables for operators: the demo summary, ``status`` and ``stats``."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Sequence

from actors.policy import PolicyConfig, assess
from actors.statuses import PHASE_OF_STATUS, Status



def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, Decimal):
        if v == v.to_integral_value() and abs(v) < Decimal("1e12"):
            return f"{v.quantize(Decimal(1))}"
        return f"{v.normalize():f}"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def _phase_name(status: str) -> str:
    """The phase a status stands for, as words ("not aged"); the status itself outside the phases."""
    phase = PHASE_OF_STATUS.get(status)
    return status if phase is None else phase.value.replace("_", " ")


def _pct(v) -> str | None:
    return None if v is None else f"{Decimal(v):+.2f}%"


async def summary_table(db, now: datetime) -> str:
    rows = await db.all_aged_positions()
    body = []
    for r in rows:
        end = r["closed_at"] or now
        phase = r["phase_at_close"] if r["status"] == Status.CLOSED else _phase_name(r["status"])
        body.append([r["exchange"], r["symbol"], r["side"], r["status"], phase, r["close_reason"],
                     _pct(r["actual_pnl_percent"]), None if r["actual_pnl"] is None else r["actual_pnl"].quantize(
                         Decimal("0.0001")), f"{(end - r['position_opened_at']).total_seconds() / 3600:.1f}h",
                     r["close_attempts"]])
    return "\nAged positions\n" + table(
        ["exchange", "symbol", "side", "status", "phase", "close reason", "pnl %", "pnl", "age", "attempts"], body)


async def status_table(db, now: datetime, config: PolicyConfig) -> str:
    rows = await db.active_aged_positions()
    body = []
    for r in rows:
        a = assess(r["side"], r["entry_price"], r["position_opened_at"], now, config)
        price = r["last_checked_price"]
        distance = None
        if price is not None and a.target_price is not None:
            gap = (a.target_price - price) if r["side"] == "long" else (price - a.target_price)
            distance = _pct(gap / a.target_price * 100)
        hold_until = r.get("hold_until")
        held = hold_until if hold_until is not None and hold_until > now else None
        body.append([r["id"], r["exchange"], r["symbol"], r["side"], r["quantity"], r["entry_price"], r["status"],
                     a.phase.value, f"{a.age_hours:.2f}h", a.loss_tolerance_percent.quantize(Decimal("0.01")),
                     None if a.target_price is None else a.target_price.quantize(Decimal("1e-8")).normalize(),
                     price, distance, r["last_price_check"],
                     None if held is None else f"{_fmt(held)} ({r.get('hold_reason') or ''})"])
    if not body:
        return "No active aged positions."
    return table(["aged id", "exchange", "symbol", "side", "qty", "entry", "status", "phase", "age", "tolerance %",
                  "target", "last price", "to target", "checked at", "held until"], body)


def stats_tables(stats: dict) -> str:
    cur, hist, perf = stats["current"], stats["historical"], stats["performance"]
    out = [f"Statistics, aged positions detected in the last {stats['window_days']:g} days", ""]
    out.append(table(["now", "count"], [[k, v] for k, v in sorted(cur["by_status"].items())]
                     + [["monitored", cur["monitored"]], ["oldest (hours)", _round(cur["oldest_hours"])]]))
    out.append("")
    out.append(table(["history", "value"], [
        ["processed", hist["total_processed"]], ["closed", hist["closed"]], ["in error now", hist["errors"]],
        ["avg age at close (h)", _round(hist["avg_age_hours_at_close"])],
        ["avg pnl at close", _pct(hist["avg_pnl_percent"])], ["total pnl", _round(hist["total_pnl"], 4)],
    ]))
    out.append("")
    out.append(table(["close reason", "count", "avg pnl", "avg age (h)"], [
        [reason, v["count"], _pct(v["avg_pnl_percent"]), _round(v["avg_age_hours"])]
        for reason, v in sorted(hist["by_close_reason"].items())]))
    out.append("")
    rate = perf["success_rate"]
    out.append(table(["performance", "value"], [
        ["success rate", None if rate is None else f"{rate * 100:.1f}%"],
        ["avg close attempts", _round(perf["avg_close_attempts"])],
        ["close orders / retried", f"{perf['close_orders']} / {perf['retried_orders']}"],
        ["avg close latency (s)", _round(perf["avg_close_seconds"], 3)],
        ["p95 close latency (s)", _round(perf["p95_close_seconds"], 3)],
    ]))
    return "\n".join(out)


def _round(v, places: int = 2):
    if v is None:
        return None
    return Decimal(str(v)).quantize(Decimal(1).scaleb(-places))
