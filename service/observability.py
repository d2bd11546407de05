"""Metrics endpoint and alert sinks, wired into a Service (filled in by the observability work)."""

from __future__ import annotations


def install(service, *, port: int, webhook_url_env: str | None = None, telegram: bool = False) -> None:
    return None
