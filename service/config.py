"""The configuration file (TOML) for live and dry-run modes.

::

    [database]
    url = "postgresql://..."            # optional; DATABASE_URL or embedded otherwise
    [policy]                            # any PolicyConfig field; defaults from the spec
    max_age_hours = 3
    [manager]                           # optional; how the actors behave around the policy
    poll_interval_seconds = 30
    stale_after_seconds = 10            # no tick for this long: poll the price over REST
    rest_poll_seconds = 2
    sample_interval_seconds = 60
    error_cooldown_seconds = 300
    retry_delays_seconds = [1, 3, 5]
    emergency_close_after_hours = 48    # off when absent
    [[exchanges]]
    name = "bybit"                      # or "binanceusdm"
    rest_url = "http://127.0.0.1:8800/bybit"                # optional, production by default
    ws_url = "ws://127.0.0.1:8800/bybit/v5/public/linear"   # optional
    api_key_env = "BYBIT_API_KEY"       # names of environment variables, never the keys
    api_secret_env = "BYBIT_API_SECRET"
    symbols = ["BTC/USDT:USDT"]         # optional allowlist (gradual rollout)
    [metrics]
    port = 9108                         # optional; 0 disables

Every mistake is one :class:`ConfigError` naming the key (``exchanges[0].name``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from actors.policy import ConfigError, PolicyConfig, _to_decimal
from actors.position import Settings

EXCHANGES = {
    "bybit": {"ws_url": "wss://stream.bybit.com/v5/public/linear"},
    "binanceusdm": {"ws_url": "wss://fstream.binance.com/ws"},
}
SECTIONS = {"database", "policy", "manager", "exchanges", "metrics", "alerts"}


@dataclass(frozen=True)
class ExchangeConfig:
    name: str
    rest_url: str | None
    ws_url: str
    api_key_env: str | None
    api_secret_env: str | None
    symbols: tuple[str, ...] | None


@dataclass(frozen=True)
class ManagerConfig:
    poll_interval: float = 30.0
    retry_delays: tuple[float, ...] = (1.0, 3.0, 5.0)
    settings: Settings = field(default_factory=Settings)
    stale_after: float = 10.0
    rest_poll_interval: float = 2.0


@dataclass(frozen=True)
class AppConfig:
    database_url: str | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    exchanges: tuple[ExchangeConfig, ...] = ()
    metrics_port: int = 9108
    webhook_url_env: str | None = None
    telegram: bool = False


def _table(doc: dict, key: str) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(key, f"must be a table, got {type(value).__name__}")
    return value


def _no_unknown(table: dict, known: set[str], prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown setting (known: {', '.join(sorted(known))})")


def _str(table: dict, key: str, prefix: str, *, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{prefix}{key}", "is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{prefix}{key}", f"must be a non-empty string, got {value!r}")
    return value


def _seconds(table: dict, key: str, prefix: str, default: float) -> float:
    if key not in table:
        return default
    value = _to_decimal(f"{prefix}{key}", table[key])
    if value < 0:
        raise ConfigError(f"{prefix}{key}", f"must not be negative, got {value}")
    return float(value)


def _manager(table: dict) -> ManagerConfig:
    p = "manager."
    _no_unknown(table, {"poll_interval_seconds", "sample_interval_seconds", "error_cooldown_seconds",
                        "retry_delays_seconds", "emergency_close_after_hours", "material_change_percent",
                        "stale_after_seconds", "rest_poll_seconds"}, p)
    delays = table.get("retry_delays_seconds", [1, 3, 5])
    if not isinstance(delays, list) or not delays:
        raise ConfigError(p + "retry_delays_seconds", f"must be a non-empty list of seconds, got {delays!r}")
    retry = tuple(_seconds({"d": d}, "d", p + "retry_delays_seconds", 0) for d in delays)
    emergency = table.get("emergency_close_after_hours")
    if emergency is not None:
        emergency = _to_decimal(p + "emergency_close_after_hours", emergency)
        if emergency <= 0:
            raise ConfigError(p + "emergency_close_after_hours", f"must be positive, got {emergency}")
    material = _to_decimal(p + "material_change_percent", table.get("material_change_percent", "0.5"))
    if material < 0:
        raise ConfigError(p + "material_change_percent", f"must not be negative, got {material}")
    poll = _seconds(table, "poll_interval_seconds", p, 30.0)
    if poll <= 0:
        raise ConfigError(p + "poll_interval_seconds", "must be positive")
    settings = Settings(
        sample_interval=timedelta(seconds=_seconds(table, "sample_interval_seconds", p, 60.0)),
        material_change_percent=material,
        error_cooldown=timedelta(seconds=_seconds(table, "error_cooldown_seconds", p, 300.0)),
        emergency_close_after_hours=emergency,
    )
    stale = _seconds(table, "stale_after_seconds", p, 10.0)
    rest_poll = _seconds(table, "rest_poll_seconds", p, 2.0)
    if stale <= 0 or rest_poll <= 0:
        raise ConfigError(p + ("stale_after_seconds" if stale <= 0 else "rest_poll_seconds"), "must be positive")
    return ManagerConfig(poll_interval=poll, retry_delays=retry, settings=settings, stale_after=stale,
                         rest_poll_interval=rest_poll)


def _exchange(i: int, table: Any) -> ExchangeConfig:
    p = f"exchanges[{i}]."
    if not isinstance(table, dict):
        raise ConfigError(f"exchanges[{i}]", "must be a table ([[exchanges]])")
    _no_unknown(table, {"name", "rest_url", "ws_url", "api_key_env", "api_secret_env", "symbols"}, p)
    name = _str(table, "name", p, required=True)
    if name not in EXCHANGES:
        raise ConfigError(p + "name", f"unknown exchange {name!r} (supported: {', '.join(EXCHANGES)})")
    symbols = table.get("symbols")
    if symbols is not None:
        if not isinstance(symbols, list) or not all(isinstance(s, str) and ":" in s for s in symbols):
            raise ConfigError(p + "symbols", "must be a list of unified symbols such as \"BTC/USDT:USDT\"")
        symbols = tuple(symbols)
    key_env, secret_env = _str(table, "api_key_env", p), _str(table, "api_secret_env", p)
    if (key_env is None) != (secret_env is None):
        raise ConfigError(p + ("api_secret_env" if secret_env is None else "api_key_env"),
                          "api_key_env and api_secret_env go together")
    return ExchangeConfig(name=name, rest_url=_str(table, "rest_url", p),
                          ws_url=_str(table, "ws_url", p) or EXCHANGES[name]["ws_url"],
                          api_key_env=key_env, api_secret_env=secret_env, symbols=symbols)


def parse_config(doc: dict) -> AppConfig:
    _no_unknown(doc, SECTIONS, "")
    database = _table(doc, "database")
    _no_unknown(database, {"url"}, "database.")
    policy = PolicyConfig.from_mapping(_table(doc, "policy"))
    manager = _manager(_table(doc, "manager"))
    raw_exchanges = doc.get("exchanges", [])
    if not isinstance(raw_exchanges, list) or not raw_exchanges:
        raise ConfigError("exchanges", "at least one [[exchanges]] table is required")
    exchanges = tuple(_exchange(i, t) for i, t in enumerate(raw_exchanges))
    names = [e.name for e in exchanges]
    if len(set(names)) != len(names):
        raise ConfigError("exchanges", "each exchange may appear once")
    metrics = _table(doc, "metrics")
    _no_unknown(metrics, {"port"}, "metrics.")
    port = metrics.get("port", 9108)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("metrics.port", f"must be a port number 0-65535 (0 disables), got {port!r}")
    alerts = _table(doc, "alerts")
    _no_unknown(alerts, {"webhook_url_env", "telegram"}, "alerts.")
    telegram = alerts.get("telegram", False)
    if not isinstance(telegram, bool):
        raise ConfigError("alerts.telegram", "must be true or false")
    return AppConfig(database_url=_str(database, "url", "database."), policy=policy, manager=manager,
                     exchanges=exchanges, metrics_port=port,
                     webhook_url_env=_str(alerts, "webhook_url_env", "alerts."), telegram=telegram)


def load_config(path: str | Path) -> AppConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    return parse_config(doc)

