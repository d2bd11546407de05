"""The configuration: one frozen tree, every default in it, validated once at start.

:class:`AppConfig` is the tree, one frozen section per component (the policy, the
position actors, the detector, the feeds, the executor, the storage writer, the
supervisors, the exchanges, metrics, alerts). ``AppConfig()`` holds every default of
the program, written once, in the section classes; :data:`DEFAULTS` is that value.
Most sections live beside their component (:class:`~feeds.feed.FeedTimings` in
:mod:`feeds.feed`, :class:`~actors.executor.ExecutorConfig` in :mod:`actors.executor`,
...) so that imports flow one way: the service knows the components, never the reverse.

The configuration file (TOML, for live and dry-run modes; ``config.example.toml``
shows every key) sets part of the tree::

    [database]      url, update_bot_book                    -> database
    [policy]        every PolicyConfig field                -> policy
    [policy.overrides."<symbol>"]  per-symbol policy fields -> policy_overrides
    [manager]       poll_interval_seconds                   -> detector
                    stale_after_seconds, rest_poll_seconds  -> feeds
                    sample_interval_seconds, material_change_percent,
                    error_cooldown_seconds, emergency_close_after_hours -> positions
                    retry_delays_seconds                    -> executor
    [[accounts]]    name, exchange, rest_url, ws_url, private_ws_url, account_stream,
                    api_key_env, api_secret_env, symbols        -> exchanges (one per account)
    [[exchanges]]   name (the exchange), and the same keys       -> exchanges (an account named
                                                                    after its exchange)
    [leases]        ttl_seconds, renew_seconds, max_accounts, instance -> leases
    [metrics]       port, host (the HTTP endpoint: metrics, health, the console)
    [console]       token_env (the operator console's token for its actions)
    [alerts]        webhook_url_env, telegram, notify

Every key is declared once, in :data:`SETTINGS`: its type, its allowed range, its
unit and its doc; its default is read from :data:`DEFAULTS`. The ranges are what a
trader could mean (no position is managed on a schedule longer than ten years) and
keep all date arithmetic at run time far from overflow. :func:`load_config` and
:func:`parse_config` return the tree or raise one :class:`ConfigError` naming the key
by its full path (``manager.retry_delays_seconds[1]``, ``accounts[1].name``), the
value and what is allowed; ``run.py`` prints it on one line and exits with status 2.

Accounts: an exchange can be traded through several accounts, each an ``[[accounts]]``
table with its own name, keys and URLs. A ``[[exchanges]]`` table is the older spelling
of one account, named after its exchange, and keeps working; both may appear, and every
account name is unique across both. Each account becomes one :class:`ExchangeConfig`
(``name`` the exchange id, ``account`` the account); :meth:`AppConfig.for_account` is the
configuration of one account alone, as one per-account service runs it.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from actors.detector import DetectorConfig
from actors.executor import ExecutorConfig
from actors.operator import BadAction, validate_override
from actors.policy import ConfigError, PolicyConfig
from actors.position import Settings
from feeds.account_stream import AccountStreamTimings
from feeds.feed import FeedTimings
from service.operator_inbox import OperatorConfig
from storage.writer import WriterConfig
from supervisor.leases import INSTANCE_NAME, LeaseConfig

EXCHANGES = {
    "bybit": {"ws_url": "wss://stream.bybit.com/v5/public/linear", "private_ws_url": "wss://stream.bybit.com/v5/private"},
    "binanceusdm": {"ws_url": "wss://fstream.binance.com/ws", "private_ws_url": "wss://fstream.binance.com/ws"},
}

TEN_YEARS_HOURS = Decimal(87600)

# The kinds of value a setting holds.
NUMBER = "number"            # int or float in the file; a Decimal in the program
SECONDS = "seconds"          # int or float in the file; a float (seconds) in the program
SECONDS_LIST = "seconds list"  # a list of SECONDS
INTEGER = "integer"
BOOL = "bool"
CHOICE = "choice"            # one of `choices`
URL = "url"                  # a URL with one of `choices` as its scheme
ENV_NAME = "env name"        # the name of an environment variable
SYMBOLS = "symbols"          # a list of unified symbols such as "BTC/USDT:USDT"
NAME = "name"                # a string matching `pattern` (described by `choices[0]`)
HOST = "host"                # an IP address to bind (IPv4 or IPv6), or "localhost"
CHOICE_LIST = "choice list"  # a list of `choices`, each at most once

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMBOL = re.compile(r"[^/:\s]+/[^/:\s]+:[^/:\s]+")
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Setting:
    """One key of the configuration file.

    ``min``/``max`` bound numbers (and each item of a list of seconds); they are
    inclusive unless ``min_open``/``max_open``. ``items`` bounds the length of a list.
    ``default`` is the value when the key is absent (``None``: not set / off), as the
    file would spell it (seconds, not a ``timedelta``); it comes from :data:`DEFAULTS`.
    A ``NAME`` matches ``pattern``; ``choices[0]`` says in words what it allows.
    """

    key: str
    kind: str
    default: Any = None
    min: Decimal | None = None
    max: Decimal | None = None
    min_open: bool = False
    max_open: bool = False
    unit: str = ""
    doc: str = ""
    required: bool = False
    choices: tuple[str, ...] = ()
    items: tuple[int, int] = (1, 1)
    pattern: re.Pattern[str] | None = None

    def range_text(self) -> str:
        """``"at least 1 and at most 604800 seconds"``."""
        lo = f"{'more than' if self.min_open else 'at least'} {self.min}"
        hi = f"{'less than' if self.max_open else 'at most'} {self.max}"
        return f"{lo} and {hi}{' ' + self.unit if self.unit else ''}"

    def parse(self, path: str, value: Any) -> Any:
        """The program's value for ``value`` found at ``path``; :class:`ConfigError` if it is not allowed."""
        if self.kind in (NUMBER, SECONDS):
            number = self._in_range(path, value)
            return float(number) if self.kind == SECONDS else number
        if self.kind == SECONDS_LIST:
            lo, hi = self.items
            if not isinstance(value, list) or not lo <= len(value) <= hi:
                raise ConfigError(path, f"must be a list of {lo} to {hi} numbers of seconds, got {value!r}")
            return tuple(float(self._in_range(f"{path}[{i}]", v)) for i, v in enumerate(value))
        if self.kind == INTEGER:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(path, f"must be a whole number ({self.range_text()}), got {_shown(value)}")
            if not self.min <= value <= self.max:
                raise ConfigError(path, f"{value!r} is out of range: must be {self.range_text()}")
            return value
        if self.kind == BOOL:
            if not isinstance(value, bool):
                raise ConfigError(path, f"must be true or false, got {_shown(value)}")
            return value
        if self.kind == CHOICE_LIST:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(path, f"must be a list of names ({', '.join(self.choices)}), got {_shown(value)}")
            for i, v in enumerate(value):
                if v not in self.choices:
                    raise ConfigError(f"{path}[{i}]", f"must be one of {', '.join(self.choices)}, got {v!r}")
            if len(set(value)) != len(value):
                raise ConfigError(path, "names each kind at most once")
            return tuple(value)
        if not isinstance(value, str) and self.kind != SYMBOLS:
            raise ConfigError(path, f"must be a string, got {_shown(value)}")
        if self.kind == CHOICE:
            if value not in self.choices:
                raise ConfigError(path, f"must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if self.kind == URL:
            return _url(path, value, self.choices)
        if self.kind == NAME:
            assert self.pattern is not None
            if not self.pattern.fullmatch(value):
                raise ConfigError(path, f"must be {self.choices[0]}, got {value!r}")
            return value
        if self.kind == ENV_NAME:
            if not _ENV_NAME.fullmatch(value):
                raise ConfigError(path, f"must be the name of an environment variable (letters, digits, _), "
                                        f"got {value!r}")
            return value
        if self.kind == HOST:
            return _host(path, value)
        if self.kind == SYMBOLS:
            lo, hi = self.items
            if (not isinstance(value, list) or not lo <= len(value) <= hi
                    or not all(isinstance(s, str) and _SYMBOL.fullmatch(s) for s in value)):
                raise ConfigError(path, f"must be a list of {lo} to {hi} unified symbols such as "
                                        f"\"BTC/USDT:USDT\", got {value!r}")
            return tuple(value)
        raise AssertionError(f"unknown kind {self.kind!r}")  # pragma: no cover

    def _in_range(self, path: str, value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            raise ConfigError(path, f"must be a number ({self.range_text()}), got {_shown(value)}")
        if (isinstance(value, float) and not math.isfinite(value)) or (
                isinstance(value, Decimal) and not value.is_finite()):
            raise ConfigError(path, f"must be a finite number ({self.range_text()}), got {value!r}")
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        too_low = number <= self.min if self.min_open else number < self.min
        too_high = number >= self.max if self.max_open else number > self.max
        if too_low or too_high:
            shown = str(value) if isinstance(value, Decimal) else repr(value)
            raise ConfigError(path, f"{shown} is out of range: must be {self.range_text()}")
        return number


def _shown(value: Any) -> str:
    """``value`` with its kind, as the file spells it: ``string '3'``, ``boolean true``."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    kind = {str: "string", list: "list", dict: "table"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}"


def _host(path: str, value: str) -> str:
    if value == "localhost":
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(path, f"must be an IP address to bind (such as 127.0.0.1 or ::1) or localhost, "
                                f"got {value!r}") from None


def _url(path: str, value: str, schemes: tuple[str, ...]) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(path, f"is not a valid URL ({exc}): {value!r}") from None
    if parts.scheme not in schemes or any(c.isspace() for c in value):
        raise ConfigError(path, f"must be a URL starting {' or '.join(s + '://' for s in schemes)}, got {value!r}")
    if not parts.hostname and not parts.scheme.startswith("postgres"):  # postgresql:///db: a local socket
        raise ConfigError(path, f"must name a host, got {value!r}")
    return value


@dataclass(frozen=True)
class DatabaseConfig:
    """``url`` — the PostgreSQL server (None: ``DATABASE_URL``, else an embedded one).
    ``update_bot_book`` — after our close, mark the trading bot's row closed too."""

    url: str | None = None
    update_bot_book: bool = True


@dataclass(frozen=True)
class ExchangeConfig:
    """One account (an ``[[accounts]]`` or ``[[exchanges]]`` table): where to reach the
    exchange and what to manage there.

    ``name`` is the exchange id (a key of :data:`EXCHANGES`), ``account`` the account's
    name, unique in the configuration (the exchange id when not given, as for an
    ``[[exchanges]]`` table).

    ``rest_url`` None is production; ``ws_url`` (the public stream) and
    ``private_ws_url`` (the account stream) are always set (production when the file
    leaves them out). ``account_stream`` — follow positions, orders and fills on the
    account stream (only with an API key; REST polling alone when off). ``symbols``
    None manages every symbol.
    """

    name: str
    rest_url: str | None
    ws_url: str
    api_key_env: str | None
    api_secret_env: str | None
    symbols: tuple[str, ...] | None
    private_ws_url: str = ""
    account_stream: bool = True
    account: str = ""

    def __post_init__(self) -> None:
        if not self.private_ws_url:
            object.__setattr__(self, "private_ws_url", EXCHANGES[self.name]["private_ws_url"])
        if not self.account:
            object.__setattr__(self, "account", self.name)


@dataclass(frozen=True)
class SupervisionConfig:
    """How many restarts each supervisor allows, and how it paces them.

    More than ``*_intensity`` restarts within ``*_period`` seconds and the supervisor
    gives up (``root`` giving up stops the service). Restarts wait a backoff from
    ``*_backoff_initial`` up to ``*_backoff_max`` seconds.
    """

    root_intensity: int = 5
    root_period: float = 30.0
    root_backoff_initial: float = 0.2
    root_backoff_max: float = 5.0
    positions_intensity: int = 20
    positions_period: float = 10.0
    positions_backoff_initial: float = 0.01
    positions_backoff_max: float = 5.0


@dataclass(frozen=True)
class MetricsConfig:
    """``port`` — the HTTP endpoint (Prometheus ``/metrics``, ``/health``, ``/stats`` and the
    operator console); 0 disables. ``host`` — the address it binds: loopback unless
    configured otherwise, because the console can act on positions."""

    port: int = 9108
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class ConsoleConfig:
    """``token_env`` — the environment variable holding the operator console's token. The
    console's actions (hold, release, close, overrides) need ``Authorization: Bearer
    <token>``; with no token configured they are refused and the console is read only."""

    token_env: str | None = None


# The kinds of event an operator may be told of besides the critical ones (which always alert).
NOTIFY_KINDS = ("close_completed", "close_failed", "progressive_started", "operator_action", "close_triggered",
                "phase_changed", "position_detected")


@dataclass(frozen=True)
class AlertsConfig:
    """``webhook_url_env`` — the environment variable holding the webhook URL (None: no
    webhook). ``telegram`` — send alerts to Telegram too. ``notify`` — the kinds of
    event sent besides the critical ones (:data:`NOTIFY_KINDS`)."""

    webhook_url_env: str | None = None
    telegram: bool = False
    notify: tuple[str, ...] = ("close_completed", "close_failed", "progressive_started", "operator_action")


@dataclass(frozen=True)
class AppConfig:
    """The whole configuration: one frozen section per component.

    ``AppConfig()`` is every default of the program; :data:`DEFAULTS` is that value,
    and the file's table (:data:`SETTINGS`) takes its defaults from it. A variant
    (the demo, a test, a benchmark) is the defaults with explicit overrides::

        replace(DEFAULTS, detector=DetectorConfig(poll_interval=2.0))

    Each component takes its own section: :class:`~actors.policy.PolicyConfig` the
    policy, :class:`~actors.position.Settings` the position actors,
    :class:`~actors.detector.DetectorConfig`, :class:`~feeds.feed.FeedTimings`,
    :class:`~actors.executor.ExecutorConfig`, :class:`~storage.writer.WriterConfig`,
    and :class:`SupervisionConfig` the supervisors.
    """

    database: DatabaseConfig = DatabaseConfig()
    policy: PolicyConfig = PolicyConfig()
    positions: Settings = Settings()
    detector: DetectorConfig = DetectorConfig()
    feeds: FeedTimings = FeedTimings()
    accounts: AccountStreamTimings = AccountStreamTimings()
    executor: ExecutorConfig = ExecutorConfig()
    writer: WriterConfig = WriterConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    exchanges: tuple[ExchangeConfig, ...] = ()
    metrics: MetricsConfig = MetricsConfig()
    console: ConsoleConfig = ConsoleConfig()
    alerts: AlertsConfig = AlertsConfig()
    leases: LeaseConfig = LeaseConfig()
    # [policy.overrides."<symbol>"]: per-symbol policy settings on every exchange, checked
    # by actors.operator.validate_override; operators' overrides (database) go on top.
    policy_overrides: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)
    operator: OperatorConfig = OperatorConfig()

    @property
    def symbols(self) -> dict[str, tuple[str, ...] | None]:
        """Each exchange's allowlist of symbols (None: all); for one account's configuration
        (:meth:`for_account`) when several accounts share an exchange."""
        return {e.name: e.symbols for e in self.exchanges}

    @property
    def account_names(self) -> tuple[str, ...]:
        """The accounts, in the order of the file (``[[exchanges]]`` tables first)."""
        return tuple(e.account for e in self.exchanges)

    def for_account(self, account: str) -> AppConfig:
        """This configuration with ``exchanges`` holding only ``account``'s entry.

        :class:`ConfigError` (key ``accounts``) naming the known accounts when there is none such.
        """
        chosen = tuple(e for e in self.exchanges if e.account == account)
        if not chosen:
            raise ConfigError("accounts", f"no account named {account!r} (known: {', '.join(self.account_names)})")
        return replace(self, exchanges=chosen)


DEFAULTS = AppConfig()


def _hours(key: str, default: Decimal | None, doc: str, *, minimum: str = "0", **kw) -> Setting:
    return Setting(key, NUMBER, default, Decimal(minimum), TEN_YEARS_HOURS, unit="hours", doc=doc, **kw)


def _seconds(key: str, default: float | timedelta, minimum: str, maximum: int, doc: str) -> Setting:
    seconds = default.total_seconds() if isinstance(default, timedelta) else default
    return Setting(key, SECONDS, seconds, Decimal(minimum), Decimal(maximum), unit="seconds", doc=doc)


def _percent(key: str, default: Decimal, minimum: str, maximum: int, doc: str, *, unit: str = "percent",
             **kw) -> Setting:
    return Setting(key, NUMBER, default, Decimal(minimum), Decimal(maximum), unit=unit, doc=doc, **kw)


# The keys an [[accounts]] and an [[exchanges]] table share.
_ACCOUNT_KEYS: tuple[Setting, ...] = (
    Setting("rest_url", URL, choices=("https", "http"), doc="the REST API; production when absent"),
    Setting("ws_url", URL, choices=("wss", "ws"), doc="the public stream; production when absent"),
    Setting("private_ws_url", URL, choices=("wss", "ws"),
            doc="the account (private) stream; production when absent"),
    Setting("account_stream", BOOL, True,
            doc="follow positions, orders and fills on the account stream (with an API key, not in a dry run)"),
    Setting("api_key_env", ENV_NAME, doc="the environment variable holding the API key"),
    Setting("api_secret_env", ENV_NAME, doc="the environment variable holding the API secret"),
    Setting("symbols", SYMBOLS, items=(1, 1000), doc="manage only these symbols; all when absent"),
)

SETTINGS: dict[str, tuple[Setting, ...]] = {
    "database": (
        Setting("url", URL, choices=("postgresql", "postgres"),
                doc="the PostgreSQL server; else DATABASE_URL, else an embedded server"),
        Setting("update_bot_book", BOOL, DEFAULTS.database.update_bot_book,
                doc="after the service closes a position, mark the trading bot's row in monitoring.positions "
                    "closed (status, closed_at, exit_reason = 'aged_<phase>')"),
    ),
    "policy": (
        _hours("max_age_hours", DEFAULTS.policy.max_age_hours, "a position is aged once strictly older than this",
               minimum="0.01"),
        _hours("grace_period_hours", DEFAULTS.policy.grace_period_hours,
               "after aging, close only at breakeven for this long"),
        _percent("loss_step_percent", DEFAULTS.policy.loss_step_percent, "0.001", 100,
                 "the accepted loss grows this much per hour", unit="percent per hour", max_open=True),
        _hours("acceleration_after_hours", DEFAULTS.policy.acceleration_after_hours,
               "hours of the progressive phase before the step speeds up"),
        Setting("acceleration_factor", NUMBER, DEFAULTS.policy.acceleration_factor, Decimal(1), Decimal(100),
                doc="how much faster the loss grows after acceleration_after_hours"),
        _percent("max_loss_percent", DEFAULTS.policy.max_loss_percent, "0.001", 100, "the largest accepted loss",
                 max_open=True),
        _percent("commission_percent", DEFAULTS.policy.commission_percent, "0", 10,
                 "the taker fee of one side (breakeven pays two)"),
    ),
    "manager": (
        _seconds("poll_interval_seconds", DEFAULTS.detector.poll_interval, "0.5", 3600,
                 "how often the position book is synced"),
        _seconds("stale_after_seconds", DEFAULTS.feeds.stale_after, "0.5", 3600,
                 "no tick for this long: poll the price over REST"),
        _seconds("rest_poll_seconds", DEFAULTS.feeds.rest_poll_interval, "0.5", 3600,
                 "how often a stale symbol's price is polled"),
        _seconds("sample_interval_seconds", DEFAULTS.positions.sample_interval, "1", 86400,
                 "at most one routine price-check row per this"),
        _percent("material_change_percent", DEFAULTS.positions.material_change_percent, "0.001", 100,
                 "…unless the distance to target moved this many points", unit="percentage points"),
        _seconds("error_cooldown_seconds", DEFAULTS.positions.error_cooldown, "1", 604800,
                 "after a close failed on every attempt, retry after"),
        Setting("retry_delays_seconds", SECONDS_LIST, DEFAULTS.executor.retry_delays, Decimal("0.1"), Decimal(300),
                unit="seconds", items=(1, 10), doc="the pauses between the attempts of one close"),
        _hours("emergency_close_after_hours", DEFAULTS.positions.emergency_close_after_hours,
               "force a close at any price once this old (after aging); off when absent",
               minimum="0.01", min_open=True),
    ),
    "exchanges": (  # each [[exchanges]] table: an account named after its exchange
        Setting("name", CHOICE, required=True, choices=tuple(EXCHANGES), doc="the exchange"),
        *_ACCOUNT_KEYS,
    ),
    "accounts": (  # each [[accounts]] table
        Setting("name", NAME, required=True, choices=("1 to 64 of A-Z a-z 0-9 _ . -",), pattern=ACCOUNT_NAME,
                doc="the account's name, unique in the file (episodes, orders, metrics and audit rows carry it)"),
        Setting("exchange", CHOICE, required=True, choices=tuple(EXCHANGES), doc="the exchange"),
        *_ACCOUNT_KEYS,
    ),
    "leases": (
        _seconds("ttl_seconds", DEFAULTS.leases.ttl, "0.5", 60,
                 "an account's lease lasts this long after its last renewal (the database's clock)"),
        Setting("renew_seconds", SECONDS, DEFAULTS.leases.renew_interval, Decimal("0.01"), Decimal(30),
                max_open=True, unit="seconds", doc="how often held leases are renewed; less than half of ttl_seconds"),
        Setting("max_accounts", INTEGER, DEFAULTS.leases.max_accounts, Decimal(1), Decimal(10000),
                doc="the most accounts this instance holds; ceil(accounts / live instances) when absent"),
        Setting("instance", NAME, DEFAULTS.leases.instance, choices=("1 to 100 of A-Z a-z 0-9 _ . : -",),
                pattern=INSTANCE_NAME, doc="this instance's name in the leases table; <hostname>:<pid> when absent"),
    ),
    "metrics": (
        Setting("port", INTEGER, DEFAULTS.metrics.port, Decimal(0), Decimal(65535),
                doc="Prometheus /metrics, /health, /stats and the console; 0 disables"),
        Setting("host", HOST, DEFAULTS.metrics.host, doc="the address the HTTP endpoint binds"),
    ),
    "console": (
        Setting("token_env", ENV_NAME, DEFAULTS.console.token_env,
                doc="the environment variable holding the token the console's actions need"),
    ),
    "alerts": (
        Setting("webhook_url_env", ENV_NAME, doc="the environment variable holding the webhook URL"),
        Setting("telegram", BOOL, DEFAULTS.alerts.telegram,
                doc="send alerts to Telegram (TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID)"),
        Setting("notify", CHOICE_LIST, list(DEFAULTS.alerts.notify), choices=NOTIFY_KINDS,
                doc="the events sent besides the critical ones (which always are)"),
    ),
}
SECTIONS = set(SETTINGS)


def _section(table: Any, path: str, settings: tuple[Setting, ...]) -> dict[str, Any]:
    """Every setting of one table, parsed, with the defaults of the absent ones."""
    if not isinstance(table, dict):
        raise ConfigError(path, f"must be a table, got {_shown(table)}")
    known = {s.key: s for s in settings}
    for key in table:
        if key not in known:
            raise ConfigError(f"{path}.{key}", f"unknown setting (known: {', '.join(sorted(known))})")
    values = {}
    for s in settings:
        if s.key in table:
            values[s.key] = s.parse(f"{path}.{s.key}", table[s.key])
        elif s.required:
            raise ConfigError(f"{path}.{s.key}", "is required")
        else:
            values[s.key] = s.default
    return values


def _policy(values: dict[str, Any]) -> PolicyConfig:
    if values["max_loss_percent"] < values["loss_step_percent"]:
        raise ConfigError("policy.max_loss_percent", f"{values['max_loss_percent']} must be at least "
                                                     f"policy.loss_step_percent ({values['loss_step_percent']})")
    try:
        return PolicyConfig(**values)
    except ConfigError as exc:  # PolicyConfig's own checks, should they ever be stricter
        raise ConfigError(f"policy.{exc.key}", str(exc)[len(exc.key) + 2:]) from None


def _manager(values: dict[str, Any], policy: PolicyConfig) -> dict[str, Any]:
    """The sections the ``[manager]`` table sets: the position actors', the detector's,
    the feeds' and the executor's (their other fields keep the defaults)."""
    emergency = values["emergency_close_after_hours"]
    if emergency is not None and emergency <= policy.max_age_hours:
        raise ConfigError("manager.emergency_close_after_hours",
                          f"{emergency} must be more than policy.max_age_hours ({policy.max_age_hours})")
    return dict(
        positions=Settings(
            sample_interval=timedelta(seconds=values["sample_interval_seconds"]),
            material_change_percent=values["material_change_percent"],
            error_cooldown=timedelta(seconds=values["error_cooldown_seconds"]),
            emergency_close_after_hours=emergency,
        ),
        detector=replace(DEFAULTS.detector, poll_interval=values["poll_interval_seconds"]),
        feeds=replace(DEFAULTS.feeds, stale_after=values["stale_after_seconds"],
                      rest_poll_interval=values["rest_poll_seconds"]),
        executor=replace(DEFAULTS.executor, retry_delays=values["retry_delays_seconds"]),
    )


def _account(section: str, i: int, table: Any) -> ExchangeConfig:
    """One ``[[accounts]]`` or ``[[exchanges]]`` table (``section``), the ``i``-th of its kind."""
    path = f"{section}[{i}]"
    if not isinstance(table, dict):
        raise ConfigError(path, f"must be a table ([[{section}]])")
    v = _section(table, path, SETTINGS[section])
    if (v["api_key_env"] is None) != (v["api_secret_env"] is None):
        raise ConfigError(f"{path}.{'api_secret_env' if v['api_secret_env'] is None else 'api_key_env'}",
                          "api_key_env and api_secret_env go together")
    exchange = v["exchange"] if section == "accounts" else v["name"]
    return ExchangeConfig(name=exchange, rest_url=v["rest_url"], ws_url=v["ws_url"] or EXCHANGES[exchange]["ws_url"],
                          api_key_env=v["api_key_env"], api_secret_env=v["api_secret_env"], symbols=v["symbols"],
                          private_ws_url=v["private_ws_url"] or EXCHANGES[exchange]["private_ws_url"],
                          account_stream=v["account_stream"], account=v["name"])


def _accounts(doc: Mapping[str, Any]) -> tuple[ExchangeConfig, ...]:
    """Every account: the ``[[exchanges]]`` tables, then the ``[[accounts]]`` tables; names unique across both."""
    found: list[ExchangeConfig] = []
    where: dict[str, str] = {}
    for section in ("exchanges", "accounts"):
        tables = doc.get(section, [])
        if not isinstance(tables, list):
            raise ConfigError(section, f"must be an array of tables ([[{section}]]), got {_shown(tables)}")
        for i, table in enumerate(tables):
            account = _account(section, i, table)
            path = f"{section}[{i}].name"
            if account.account in where:
                raise ConfigError(path, f"duplicate account name {account.account!r} (also {where[account.account]}; "
                                        "an [[exchanges]] table is the account named after its exchange)")
            where[account.account] = path
            found.append(account)
    if not found:
        raise ConfigError("exchanges", "at least one [[exchanges]] or [[accounts]] table is required")
    return tuple(found)


def _leases(values: dict[str, Any]) -> LeaseConfig:
    ttl, renew = values["ttl_seconds"], values["renew_seconds"]
    if renew >= ttl / 2:
        raise ConfigError("leases.renew_seconds",
                          f"{renew:g} must be less than half of leases.ttl_seconds ({ttl:g}), so that one missed "
                          "renewal never loses a lease")
    return LeaseConfig(ttl=ttl, renew_interval=renew, max_accounts=values["max_accounts"],
                       instance=values["instance"])


def parse_config(doc: Mapping[str, Any]) -> AppConfig:
    """The configuration in ``doc`` (a parsed TOML document); :class:`ConfigError` on the first mistake."""
    for key in doc:
        if key not in SECTIONS:
            raise ConfigError(key, f"unknown section (known: {', '.join(sorted(SECTIONS))})")
    database = _section(doc.get("database", {}), "database", SETTINGS["database"])
    policy_table = doc.get("policy", {})
    overrides_table: Any = {}
    if isinstance(policy_table, dict):
        policy_table = dict(policy_table)
        overrides_table = policy_table.pop("overrides", {})
    policy = _policy(_section(policy_table, "policy", SETTINGS["policy"]))
    policy_overrides = _policy_overrides(overrides_table, policy)
    manager = _manager(_section(doc.get("manager", {}), "manager", SETTINGS["manager"]), policy)
    exchanges = _accounts(doc)
    leases = _leases(_section(doc.get("leases", {}), "leases", SETTINGS["leases"]))
    metrics = _section(doc.get("metrics", {}), "metrics", SETTINGS["metrics"])
    console = _section(doc.get("console", {}), "console", SETTINGS["console"])
    alerts = _section(doc.get("alerts", {}), "alerts", SETTINGS["alerts"])
    alerts["notify"] = tuple(alerts["notify"])
    return replace(DEFAULTS, database=DatabaseConfig(**database), policy=policy, **manager, exchanges=exchanges,
                   leases=leases, metrics=MetricsConfig(**metrics), console=ConsoleConfig(**console),
                   alerts=AlertsConfig(**alerts),
                   policy_overrides=policy_overrides)


def _policy_overrides(table: Any, policy: PolicyConfig) -> dict[str, dict[str, Decimal]]:
    """``[policy.overrides."BTC/USDT:USDT"]`` tables: per-symbol settings, each checked as an
    operator's override is (the same keys and ranges as ``[policy]``)."""
    if not isinstance(table, dict):
        raise ConfigError("policy.overrides", f"must be a table of symbols, got {_shown(table)}")
    out = {}
    for symbol, settings in table.items():
        path = f'policy.overrides."{symbol}"'
        if not _SYMBOL.fullmatch(symbol):
            raise ConfigError(path, "must be a unified symbol such as \"BTC/USDT:USDT\"")
        if not isinstance(settings, dict):
            raise ConfigError(path, f"must be a table, got {_shown(settings)}")
        try:
            out[symbol] = validate_override(settings, policy)
        except BadAction as exc:
            raise ConfigError(f"{path}.{str(exc).split(':', 1)[0]}", str(exc).split(": ", 1)[-1]) from None
    return out


def load_config(path: str | Path) -> AppConfig:
    """The configuration in the TOML file at ``path``, validated; one :class:`ConfigError` naming the key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("config", f"{path} is not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    return parse_config(doc)
