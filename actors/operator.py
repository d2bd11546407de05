"""What an operator may ask of the service, checked before anything is stored.

An operator (through ``run.py hold|release|close|override`` or the HTTP API) can

* :class:`Hold` an aged position until an instant: it does not close, except by the
  emergency rule, before then;
* :class:`Release` it: it is managed again at once, as if never held;
* :class:`ForceClose` it now: a reduce-only market close through the executor, with
  close reason ``manual``;
* :class:`Override` a symbol's policy (a wider ``max_loss_percent`` for one symbol),
  or :class:`ClearOverride` it.

Everything here is pure: the actions are plain frozen values and the checks are
functions of their arguments. A bad value raises :class:`BadAction`, one message
naming the field, before anything is stored or changed::

    >>> parse_hold_hours("0")
    Traceback (most recent call last):
    ...
    actors.operator.BadAction: hours: must be more than 0 and at most 720, got '0'

The per-symbol settings and their ranges are those of the configuration file's
``[policy]`` table (:data:`service.config.SETTINGS`): one declaration, used by both.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

from actors.policy import ConfigError, PolicyConfig

__all__ = [
    "OVERRIDABLE",
    "MAX_HOLD_HOURS",
    "BadAction",
    "Hold",
    "Release",
    "ForceClose",
    "Override",
    "ClearOverride",
    "OperatorAction",
    "MAX_REASON_CHARS",
    "check_action",
    "hold_for",
    "parse_hold_hours",
    "parse_aged_id",
    "validate_override",
    "effective_policy",
]

MAX_HOLD_HOURS = Decimal(720)  # thirty days; a longer hold is a decision for the config
MAX_REASON_CHARS = 500

# The policy fields that make sense per symbol. ``max_age_hours`` is left out: it
# decides when a position becomes an aged one at all, which the detector does for the
# whole book before any symbol's actor exists.
OVERRIDABLE = (
    "grace_period_hours",
    "loss_step_percent",
    "acceleration_after_hours",
    "acceleration_factor",
    "max_loss_percent",
    "commission_percent",
)


class BadAction(ValueError):
    """An operator action that cannot be taken; the message names what was wrong."""


@dataclass(frozen=True, slots=True)
class Hold:
    """No close of ``aged_id`` before ``until`` (a UTC instant), except by the emergency rule."""

    aged_id: UUID
    until: datetime
    reason: str

    name = "hold"


@dataclass(frozen=True, slots=True)
class Release:
    """End a hold of ``aged_id`` now."""

    aged_id: UUID
    reason: str | None = None

    name = "release"


@dataclass(frozen=True, slots=True)
class ForceClose:
    """Close ``aged_id`` now at the market (close reason ``manual``)."""

    aged_id: UUID
    reason: str | None = None

    name = "close"


@dataclass(frozen=True, slots=True)
class Override:
    """Per-symbol policy settings (validated by :func:`validate_override`) for ``symbol`` on ``exchange``."""

    exchange: str
    symbol: str
    settings: Mapping[str, Decimal] = field(default_factory=dict)
    reason: str | None = None

    name = "override"


@dataclass(frozen=True, slots=True)
class ClearOverride:
    """Drop the operator's overrides of ``symbol`` on ``exchange`` (the config's stay)."""

    exchange: str
    symbol: str
    reason: str | None = None

    name = "clear_override"


OperatorAction = Hold | Release | ForceClose | Override | ClearOverride


def parse_hold_hours(value: Any) -> Decimal:
    """How long a hold lasts, in hours: a number more than 0 and at most 720.

    Accepts a number or its text (``"4"``, ``"0.5"``); anything else is a :class:`BadAction`.
    """
    shown = repr(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise BadAction(f"hours: must be a number of hours, got {shown}")
    try:
        hours = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation:
        raise BadAction(f"hours: must be a number of hours, got {shown}") from None
    if not hours.is_finite() or not 0 < hours <= MAX_HOLD_HOURS:
        raise BadAction(f"hours: must be more than 0 and at most {MAX_HOLD_HOURS}, got {shown}")
    return hours


def hold_for(aged_id: Any, hours: Any, reason: Any, now: datetime) -> Hold:
    """A :class:`Hold` of ``aged_id`` for ``hours`` from ``now``, every part checked."""
    _check_now(now)
    until = now + timedelta(microseconds=int(parse_hold_hours(hours) * 3_600_000_000))
    return check_action(Hold(parse_aged_id(aged_id), until, reason))


def _check_now(now: datetime) -> None:
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise BadAction(f"now: must be a timezone-aware datetime, got {now!r}")


def _reason(value: Any, *, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value.strip():
        raise BadAction(f"reason: {'is required' if required else 'must be text'}, got {value!r}")
    if len(value) > MAX_REASON_CHARS:
        raise BadAction(f"reason: at most {MAX_REASON_CHARS} characters, got {len(value)}")
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise BadAction("reason: must be one line of text (no control characters)")


_SYMBOL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/:-_.")


def _name(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value or len(value) > 64 or not set(value) <= _SYMBOL_CHARS:
        raise BadAction(
            f"{key}: must be a name such as {'BTC/USDT:USDT' if key == 'symbol' else 'bybit'}, got {value!r}"
        )


def check_action(action: Any) -> Any:
    """``action`` if every field is well formed (a :class:`BadAction` naming the field otherwise).

    Checks the fields alone; whether the aged position exists and may be acted on is
    for the database (:meth:`storage.operator_store.OperatorStore.record_action`), and an
    :class:`Override`'s settings are for :func:`validate_override`.
    """
    if not isinstance(action, (Hold, Release, ForceClose, Override, ClearOverride)):
        raise BadAction(f"action: not an operator action: {action!r}")
    if isinstance(action, (Hold, Release, ForceClose)):
        if not isinstance(action.aged_id, UUID):
            raise BadAction(f"aged position id: not a UUID: {action.aged_id!r}")
    else:
        _name("exchange", action.exchange)
        _name("symbol", action.symbol)
    if isinstance(action, Hold):
        _check_now(action.until)
    _reason(action.reason, required=isinstance(action, Hold))
    return action


def parse_aged_id(value: Any) -> UUID:
    """An aged position id (``monitoring.aged_positions.id``) from its text."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise BadAction(f"aged position id: not a UUID: {value!r}") from None


def _number(key: str, value: Any) -> Any:
    """Text such as ``"12.5"`` (from a command line or a form) as a Decimal; other values unchanged."""
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise BadAction(f"{key}: must be a number, got {value!r}") from None
    return value


def validate_override(settings: Mapping[str, Any], base: PolicyConfig) -> dict[str, Decimal]:
    """The per-symbol settings in ``settings``, checked; ``{key: Decimal}``.

    Each key must be one of :data:`OVERRIDABLE`, each value within the range the
    configuration file allows for that ``[policy]`` key, and the policy they make with
    ``base`` must hold together (``max_loss_percent`` at least ``loss_step_percent``).
    An empty mapping is refused: clearing is :class:`ClearOverride`.
    """
    if not isinstance(settings, Mapping) or not settings:
        raise BadAction(f"settings: at least one of {', '.join(OVERRIDABLE)} is needed")
    declared = {s.key: s for s in _policy_settings()}
    checked: dict[str, Decimal] = {}
    for key, value in settings.items():
        if key not in OVERRIDABLE:
            raise BadAction(f"{key}: not a per-symbol setting (allowed: {', '.join(OVERRIDABLE)})")
        try:
            checked[key] = declared[key].parse(key, _number(key, value))
        except ConfigError as exc:
            raise BadAction(str(exc)) from None
    effective_policy(base, checked)
    return checked


def _policy_settings() -> tuple[Any, ...]:
    """The ``[policy]`` declarations of :data:`service.config.SETTINGS`.

    Looked up at call time: the configuration module imports every component, and
    this module is one, so importing it at the top would run the wrong way round
    (and make the components' type check depend on the service's).
    """
    return importlib.import_module("service.config").SETTINGS["policy"]


def effective_policy(base: PolicyConfig, *layers: Mapping[str, Any]) -> PolicyConfig:
    """``base`` with each layer of overrides applied in turn (the last wins).

    A combination that does not hold together is a :class:`BadAction` naming the field.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    if not merged:
        return base
    known = {f.name for f in fields(PolicyConfig)}
    for key in merged:
        if key not in known:
            raise BadAction(f"{key}: not a policy setting")
    try:
        return replace(base, **merged)
    except ConfigError as exc:
        raise BadAction(str(exc)) from None
