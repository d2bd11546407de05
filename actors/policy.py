"""The aging policy: when an old position may be closed, and at what price.

Everything here is a pure function of its arguments: no clock, no I/O, no trio. The
phase of a position depends only on ``(side, entry_price, opened_at, now, config)``,
so a restart, a late detection or a crash can never shift the schedule.

A position is *aged* once it is strictly older than ``max_age_hours``. For the next
``grace_period_hours`` it may close only at *breakeven* (the price that pays the taker
fee on both sides). After that the *progressive* phase accepts a loss that grows by
``loss_step_percent`` per hour (``acceleration_factor`` times faster after
``acceleration_after_hours``), continuously, up to ``max_loss_percent``.

All money is :class:`~decimal.Decimal`. If you have a float, you have a bug.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

__all__ = [
    "Schedule",
    "ConfigError",
    "PolicyConfig",
    "Phase",
    "Assessment",
    "CloseReason",
    "normalize_side",
    "assess",
    "should_close",
    "executable_price",
    "executable_price_for",
    "close_reason",
    "realised_pnl",
    "aged_at",
    "next_phase_change",
]

HOUR = Decimal(3600)
_MICROS_PER_HOUR = Decimal(3_600_000_000)
_BREAKEVEN_BAND = Decimal("0.05")  # net % within ±this counts as breakeven
# Tolerance is kept to 1e-12 percent: fine enough to grow continuously, coarse enough
# that the 1/3-hour steps of a clock land exactly on the cap, and that target prices
# computed at _PRECISION digits are exact (long and short mirror to the last digit).
_TOLERANCE_QUANTUM = Decimal("1e-12")
_PRECISION = 60


class ConfigError(ValueError):
    """A configuration value is invalid. ``key`` names the offending setting."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def _to_decimal(key: str, value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a number, got {value!r}")
    if isinstance(value, float):
        value = repr(value)  # 0.1 -> "0.1", not 0.1000000000000000055...
    if isinstance(value, (int, str, Decimal)):
        try:
            d = Decimal(value)
        except (InvalidOperation, ValueError):
            raise ConfigError(key, f"must be a number, got {value!r}") from None
    else:
        raise ConfigError(key, f"must be a number, got {type(value).__name__} {value!r}")
    if not d.is_finite():
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    return d


@dataclass(frozen=True)
class PolicyConfig:
    """The policy's knobs, with the defaults of the specification.

    Values may be given as :class:`~decimal.Decimal`, ``int`` or numeric ``str``
    (floats are accepted for config files and converted through their shortest
    ``repr``). Every field must be a finite, non-negative number; in addition
    ``acceleration_factor`` must be at least 1 and ``max_loss_percent`` at least
    ``loss_step_percent``. A bad value raises :class:`ConfigError` naming the field.
    """

    max_age_hours: Decimal = Decimal(3)
    grace_period_hours: Decimal = Decimal(8)
    loss_step_percent: Decimal = Decimal("0.5")
    acceleration_after_hours: Decimal = Decimal(10)
    acceleration_factor: Decimal = Decimal("1.2")
    max_loss_percent: Decimal = Decimal(10)
    commission_percent: Decimal = Decimal("0.1")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = _to_decimal(f.name, getattr(self, f.name))
            if value < 0:
                raise ConfigError(f.name, f"must not be negative, got {value}")
            object.__setattr__(self, f.name, value)
        if self.acceleration_factor < 1:
            raise ConfigError("acceleration_factor", f"must be at least 1, got {self.acceleration_factor}")
        if self.max_loss_percent < self.loss_step_percent:
            raise ConfigError(
                "max_loss_percent",
                f"must be at least loss_step_percent ({self.loss_step_percent}), got {self.max_loss_percent}",
            )
        if self.max_loss_percent >= 100:
            raise ConfigError("max_loss_percent", f"must be below 100, got {self.max_loss_percent}")
        if self.commission_percent >= 50:
            raise ConfigError("commission_percent", f"must be below 50, got {self.commission_percent}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PolicyConfig:
        """Build from a config file's table; an unknown key is a :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(key, f"unknown policy setting (known: {', '.join(sorted(known))})")
        return cls(**dict(values))

    def as_dict(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}


class Phase(str, enum.Enum):
    NOT_AGED = "not_aged"
    GRACE = "grace"
    PROGRESSIVE = "progressive"

    def __str__(self) -> str:
        return self.value


class CloseReason(str, enum.Enum):
    PROFITABLE = "profitable"
    BREAKEVEN = "breakeven"
    LOSS_ACCEPTABLE = "loss_acceptable"
    MAX_LOSS = "max_loss"
    EMERGENCY = "emergency"
    MANUAL = "manual"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Assessment:
    """Where a position stands at one instant.

    ``target_price`` is the worst executable price at which it may close now
    (``None`` when not aged). ``at_cap`` is true when the loss tolerance has reached
    ``max_loss_percent``.
    """

    phase: Phase
    age_hours: Decimal
    hours_over: Decimal
    loss_tolerance_percent: Decimal
    target_price: Decimal | None
    breakeven_price: Decimal
    at_cap: bool = False


def normalize_side(side: str) -> str:
    """``"long"``/``"buy"`` → ``"long"``, ``"short"``/``"sell"`` → ``"short"`` (any case)."""
    s = str(side).strip().lower()
    if s in ("long", "buy"):
        return "long"
    if s in ("short", "sell"):
        return "short"
    raise ValueError(f"side must be long/short (or buy/sell), got {side!r}")


def _hours(delta: timedelta) -> Decimal:
    return Decimal(delta // timedelta(microseconds=1)) / _MICROS_PER_HOUR


def _check_time(name: str, value: datetime) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def breakeven_price(side: str, entry_price: Decimal, config: PolicyConfig) -> Decimal:
    two_c = 2 * config.commission_percent / 100
    return entry_price * (1 + two_c) if normalize_side(side) == "long" else entry_price * (1 - two_c)


def assess(side: str, entry_price: Decimal, opened_at: datetime, now: datetime, config: PolicyConfig) -> Assessment:
    """Assess a position at ``now``.

    >>> from datetime import datetime, timezone, timedelta
    >>> t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> a = assess("long", Decimal(100), t0, t0 + timedelta(hours=12), PolicyConfig())
    >>> a.phase.value, a.loss_tolerance_percent == Decimal("0.5"), a.target_price
    ('progressive', True, Decimal('99.5'))

    To assess one position over and over (once per tick), build its :class:`Schedule`
    once and call :meth:`Schedule.assess`: the same answers without re-checking the
    arguments each time.
    """
    _check_time("now", now)
    return Schedule.of(side, entry_price, opened_at, config).assess(now)


@dataclass(frozen=True, slots=True)
class Schedule:
    """One position's policy, checked once: ``Schedule.of(...).assess(now)``."""

    long: bool
    entry_price: Decimal
    opened_at: datetime
    config: PolicyConfig
    breakeven: Decimal

    @classmethod
    def of(cls, side: str, entry_price: Decimal, opened_at: datetime, config: PolicyConfig) -> Schedule:
        long = normalize_side(side) == "long"
        if not isinstance(entry_price, Decimal) or not entry_price.is_finite() or entry_price <= 0:
            raise ValueError(f"entry_price must be a positive Decimal, got {entry_price!r}")
        _check_time("opened_at", opened_at)
        return cls(
            long, entry_price, opened_at, config, breakeven_price("long" if long else "short", entry_price, config)
        )

    def assess(self, now: datetime) -> Assessment:
        config = self.config
        age = _hours(now - self.opened_at)
        over = age - config.max_age_hours
        if over <= 0:
            return Assessment(Phase.NOT_AGED, age, over, Decimal(0), None, self.breakeven)
        if over <= config.grace_period_hours:
            return Assessment(Phase.GRACE, age, over, Decimal(0), self.breakeven, self.breakeven)
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            p = over - config.grace_period_hours
            step = config.loss_step_percent
            accelerated = max(Decimal(0), p - config.acceleration_after_hours)
            raw = (step * p + step * (config.acceleration_factor - 1) * accelerated).quantize(_TOLERANCE_QUANTUM)
            tolerance = min(config.max_loss_percent, raw)
            factor = tolerance / 100
            target = self.entry_price * (1 - factor) if self.long else self.entry_price * (1 + factor)
        return Assessment(
            Phase.PROGRESSIVE, age, over, tolerance, target, self.breakeven, raw >= config.max_loss_percent
        )


def _usable(price: Decimal | None) -> Decimal | None:
    if price is None or not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
        return None
    return price


def executable_price(
    side: str, bid: Decimal | None = None, ask: Decimal | None = None, last: Decimal | None = None
) -> Decimal | None:
    """The price a close would get: best bid for a long, best ask for a short.

    The last trade price is used only when that side of the book is unknown.
    Nonsense prices (zero, negative, NaN) count as unknown.
    """
    return executable_price_for(normalize_side(side) == "long", bid, ask, last)


def executable_price_for(long: bool, bid: Decimal | None, ask: Decimal | None, last: Decimal | None) -> Decimal | None:
    """:func:`executable_price` with the side already known (``long``): the per-tick form."""
    book = _usable(bid if long else ask)
    return book if book is not None else _usable(last)


def should_close(
    assessment: Assessment,
    side: str,
    bid: Decimal | None = None,
    ask: Decimal | None = None,
    last: Decimal | None = None,
) -> bool:
    """True when the executable price is no worse than the target."""
    if assessment.phase is Phase.NOT_AGED or assessment.target_price is None:
        return False
    price = executable_price(side, bid, ask, last)
    if price is None:
        return False
    if normalize_side(side) == "long":
        return price >= assessment.target_price
    return price <= assessment.target_price


def net_pnl_percent(side: str, entry_price: Decimal, fill_price: Decimal, config: PolicyConfig) -> Decimal:
    """Price move in the position's favour, in percent, minus both commissions."""
    move = (fill_price - entry_price) if normalize_side(side) == "long" else (entry_price - fill_price)
    return move / entry_price * 100 - 2 * config.commission_percent


def close_reason(
    side: str,
    entry_price: Decimal,
    fill_price: Decimal,
    assessment: Assessment,
    config: PolicyConfig,
    *,
    emergency: bool = False,
) -> CloseReason:
    """Why a position closed, from its realised fill.

    ``profitable`` above +0.05 % net, ``breakeven`` within ±0.05 % net; a larger loss is
    ``max_loss`` when the tolerance was at its cap when the close triggered, else
    ``loss_acceptable`` (also for a grace-phase close that slipped below breakeven).
    ``emergency=True`` (a forced close) wins over everything.
    """
    if emergency:
        return CloseReason.EMERGENCY
    net = net_pnl_percent(side, entry_price, fill_price, config)
    if net > _BREAKEVEN_BAND:
        return CloseReason.PROFITABLE
    if net >= -_BREAKEVEN_BAND:
        return CloseReason.BREAKEVEN
    if assessment.phase is Phase.PROGRESSIVE and assessment.at_cap:
        return CloseReason.MAX_LOSS
    return CloseReason.LOSS_ACCEPTABLE


def realised_pnl(
    side: str, entry_price: Decimal, fill_price: Decimal, qty: Decimal, config: PolicyConfig
) -> tuple[Decimal, Decimal]:
    """``(pnl in quote currency after both fees, net pnl percent)`` for closing ``qty``."""
    c = config.commission_percent / 100
    move = (fill_price - entry_price) if normalize_side(side) == "long" else (entry_price - fill_price)
    pnl = move * qty - c * (entry_price + fill_price) * qty
    return pnl, net_pnl_percent(side, entry_price, fill_price, config)


def aged_at(opened_at: datetime, config: PolicyConfig) -> datetime:
    """The instant after which a position counts as aged."""
    _check_time("opened_at", opened_at)
    return opened_at + timedelta(microseconds=int(config.max_age_hours * _MICROS_PER_HOUR))


def next_phase_change(opened_at: datetime, now: datetime, config: PolicyConfig) -> datetime | None:
    """The next instant at which the phase changes, or ``None`` once progressive.

    Phases change just *after* the boundary (aged means strictly older), so a timer
    set for the returned instant should assess a moment later; :func:`assess` at the
    boundary itself still reports the earlier phase.
    """
    start_grace = aged_at(opened_at, config)
    if now <= start_grace:
        return start_grace
    end_grace = start_grace + timedelta(microseconds=int(config.grace_period_hours * _MICROS_PER_HOUR))
    if now <= end_grace:
        return end_grace
    return None
