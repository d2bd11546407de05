"""What ``run.py stats`` and ``GET /stats`` report: four queries on one connection,
one trio→asyncio crossing. An account-scoped view counts its account only; the
unscoped ``Database`` counts every account."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from actors.statuses import MONITORED, Status

if TYPE_CHECKING:
    from storage.repository import Database


async def statistics(db: Database, days: float = 7, now: datetime | None = None) -> dict:
    """Counts, success rate, averages at close, by close reason, retries, close latency.

    *Historical* figures cover aged positions detected in the last ``days`` days.
    ``success_rate`` is the share of positions the service set out to close that it
    did close: closed (by the service, i.e. not ``manual``) divided by closed plus
    those currently in ``error``. ``None`` when there is nothing to rate.
    """
    now = now or datetime.now(UTC)
    since = now - timedelta(days=days)
    account = db.account

    async def job(conn):
        current = await conn.fetch(
            "SELECT status, count(*) AS n, max(EXTRACT(EPOCH FROM ($1 - position_opened_at))/3600) AS oldest "
            "FROM monitoring.aged_positions WHERE status = ANY($2::text[]) AND ($3::text IS NULL OR account=$3) "
            "GROUP BY status",
            now,
            [str(s) for s in (*MONITORED, Status.SKIPPED)],
            account,
        )
        totals = await conn.fetchrow(
            """SELECT count(*) AS total,
                      count(*) FILTER (WHERE status='closed') AS closed,
                      count(*) FILTER (WHERE status='closed' AND close_reason <> 'manual') AS closed_by_service,
                      count(*) FILTER (WHERE status='error') AS errors,
                      avg(EXTRACT(EPOCH FROM (closed_at - position_opened_at))/3600)
                          FILTER (WHERE status='closed') AS avg_age_hours,
                      avg(actual_pnl_percent) FILTER (WHERE status='closed' AND close_reason <> 'manual')
                          AS avg_pnl_percent,
                      sum(actual_pnl) FILTER (WHERE status='closed') AS total_pnl,
                      avg(close_attempts) FILTER (WHERE status='closed' AND close_reason <> 'manual')
                          AS avg_close_attempts,
                      avg(EXTRACT(EPOCH FROM (closed_at - close_triggered_at)))
                          FILTER (WHERE status='closed' AND close_triggered_at IS NOT NULL)
                          AS avg_close_seconds,
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM (closed_at - close_triggered_at)))
                          FILTER (WHERE status='closed' AND close_triggered_at IS NOT NULL)
                          AS p95_close_seconds
               FROM monitoring.aged_positions WHERE detected_at >= $1 AND ($2::text IS NULL OR account=$2)""",
            since,
            account,
        )
        by_reason = await conn.fetch(
            """SELECT close_reason, count(*) AS n, avg(actual_pnl_percent) AS avg_pnl_percent,
                      avg(EXTRACT(EPOCH FROM (closed_at - position_opened_at))/3600) AS avg_age_hours
               FROM monitoring.aged_positions
               WHERE status='closed' AND detected_at >= $1 AND ($2::text IS NULL OR account=$2)
               GROUP BY close_reason ORDER BY close_reason""",
            since,
            account,
        )
        retries = await conn.fetchrow(
            """SELECT count(*) AS orders, count(*) FILTER (WHERE o.attempt > 1) AS retries
               FROM monitoring.close_orders o JOIN monitoring.aged_positions a ON a.id = o.aged_position_id
               WHERE a.detected_at >= $1 AND ($2::text IS NULL OR a.account=$2)""",
            since,
            account,
        )
        return current, totals, by_reason, retries

    current, totals, by_reason, retries = await db._call(job)
    rated = totals["closed_by_service"] + totals["errors"]
    return {
        "window_days": days,
        "current": {
            "by_status": {r["status"]: r["n"] for r in current},
            "monitored": sum(r["n"] for r in current if r["status"] != Status.SKIPPED),
            "oldest_hours": max((r["oldest"] for r in current if r["oldest"] is not None), default=None),
        },
        "historical": {
            "total_processed": totals["total"],
            "closed": totals["closed"],
            "errors": totals["errors"],
            "avg_age_hours_at_close": totals["avg_age_hours"],
            "avg_pnl_percent": totals["avg_pnl_percent"],
            "total_pnl": totals["total_pnl"],
            "by_close_reason": {
                r["close_reason"]: {
                    "count": r["n"],
                    "avg_pnl_percent": r["avg_pnl_percent"],
                    "avg_age_hours": r["avg_age_hours"],
                }
                for r in by_reason
            },
        },
        "performance": {
            "success_rate": (Decimal(totals["closed_by_service"]) / rated) if rated else None,
            "avg_close_attempts": totals["avg_close_attempts"],
            "close_orders": retries["orders"],
            "retried_orders": retries["retries"],
            "avg_close_seconds": totals["avg_close_seconds"],
            "p95_close_seconds": totals["p95_close_seconds"],
        },
    }
