"""Metrics of one instance: every account's metrics under an ``account`` label, and the leases.

One instance runs one :class:`~service.runtime.Service` per account it holds a lease
for, and each service has its own :class:`~service.metrics.Metrics` with its own
registry, whose metric names know nothing of accounts. The instance serves one
``/metrics`` for all of them:

:class:`AccountLabelled`
    A Prometheus collector over per-account registries (``add(account, registry)``,
    ``remove(account)``). Each scrape yields every metric family once, the samples of
    all accounts merged into it, each sample carrying an extra label
    ``account="<name>"``. HELP, TYPE and unit come from the first account that has the
    family; sample names are kept as each registry gives them, so a counter keeps its
    ``_total`` and ``_created`` samples exactly as :mod:`prometheus_client` names them.
    A registry that already labels a sample ``account`` has that label replaced:
    the account the registry was added under is the one that counts.

:class:`InstanceMetrics`
    The instance's own registry: an :class:`AccountLabelled` plus the lease gauges::

        aged_lease_held{account,instance}   1 while this instance holds the account's lease, else 0
        aged_lease_token{account}           the fencing token of each lease this instance holds
        aged_instances_live                 instances the leases table counts as live

    :meth:`InstanceMetrics.update_lease_metrics` sets them from one lease round.

Nothing here touches the process-global registry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["ACCOUNT_LABEL", "AccountLabelled", "InstanceMetrics", "LeaseRoundLike"]

log = logging.getLogger("service.metrics")

ACCOUNT_LABEL = "account"


class AccountLabelled(Collector):
    """Per-account registries merged into one exposition, each sample labelled with its account.

    Safe to scrape from another thread while accounts are added and removed.
    """

    def __init__(self) -> None:
        self._registries: dict[str, CollectorRegistry] = {}
        self._lock = threading.Lock()

    def add(self, account: str, registry: CollectorRegistry) -> None:
        """Export ``registry`` under ``account``. Adding the same pair again does nothing;
        another registry for an account already added is a :exc:`ValueError` (remove it first)."""
        if not isinstance(account, str) or not account:
            raise ValueError(f"account must be a non-empty string, got {account!r}")
        with self._lock:
            current = self._registries.get(account)
            if current is not None and current is not registry:
                raise ValueError(f"account {account!r} already has a registry; remove it first")
            self._registries[account] = registry

    def remove(self, account: str) -> bool:
        """Stop exporting ``account``; False when it was not there."""
        with self._lock:
            return self._registries.pop(account, None) is not None

    def accounts(self) -> tuple[str, ...]:
        """The accounts exported, sorted."""
        with self._lock:
            return tuple(sorted(self._registries))

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            registries = sorted(self._registries.items())
        merged: dict[str, Metric] = {}
        for account, registry in registries:
            for family in registry.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type,
                                                        family.unit)
                elif into.type != family.type:
                    log.warning("metric %s is a %s for one account and a %s for %s; %s's samples left out",
                                family.name, into.type, family.type, account, account)
                    continue
                for sample in family.samples:
                    into.samples.append(sample._replace(labels={**sample.labels, ACCOUNT_LABEL: account}))
        yield from merged.values()


class LeaseInfoLike(Protocol):
    """What the lease gauges read of one lease row."""

    @property
    def holder(self) -> str: ...

    @property
    def live(self) -> bool: ...


class LeaseRoundLike(Protocol):
    """What the lease gauges read of one lease round (``storage``'s ``LeaseRound`` has it)."""

    @property
    def held(self) -> Mapping[str, int]: ...

    @property
    def leases(self) -> Mapping[str, Any]: ...

    @property
    def live_instances(self) -> Sequence[str]: ...


class InstanceMetrics:
    """The registry one instance serves at ``/metrics``; see the module docstring.

    ``add_account(account, metrics)`` when an account's service starts (``metrics``: its
    :class:`~service.metrics.Metrics`, or anything with ``registry`` and ``refresh()``),
    ``remove_account(account)`` when it stops; ``refresh()`` refreshes every account's
    metrics (the endpoint calls it at each scrape).
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.labelled = AccountLabelled()
        self.registry.register(self.labelled)
        r = self.registry
        self.lease_held = Gauge("aged_lease_held", "1 while this instance holds the account's lease, else 0",
                                ["account", "instance"], registry=r)
        self.lease_token = Gauge("aged_lease_token", "The fencing token of each lease this instance holds",
                                 ["account"], registry=r)
        self.instances_live = Gauge("aged_instances_live", "Instances the leases table counts as live", registry=r)
        self._metrics: dict[str, Any] = {}

    def add_account(self, account: str, metrics: Any) -> None:
        """Export ``metrics.registry`` under ``account`` (see :meth:`AccountLabelled.add`)."""
        self.labelled.add(account, metrics.registry)
        self._metrics[account] = metrics

    def remove_account(self, account: str) -> bool:
        """Stop exporting ``account``; False when it was not there."""
        self._metrics.pop(account, None)
        return self.labelled.remove(account)

    def refresh(self) -> None:
        """Refresh each account's metrics; a failure is logged, never raised (a scrape still answers)."""
        for account, metrics in list(self._metrics.items()):
            try:
                metrics.refresh()
            except Exception:  # noqa: BLE001 - one account's metrics must not break the scrape
                log.exception("refreshing the metrics of account %s failed", account)

    def update_lease_metrics(self, round: LeaseRoundLike, me: str, accounts: Sequence[str]) -> None:
        """Set the lease gauges from one lease round, as instance ``me`` saw it.

        ``aged_lease_held`` has one series per configured account (and per account held
        but no longer configured); ``aged_lease_token`` one per held account; series of
        accounts that left both are dropped.
        """
        held = dict(round.held)
        self.lease_held.clear()
        self.lease_token.clear()
        for account in sorted(set(accounts) | set(held)):
            self.lease_held.labels(account=account, instance=me).set(1 if account in held else 0)
        for account, token in sorted(held.items()):
            self.lease_token.labels(account=account).set(token)
        self.instances_live.set(len(set(round.live_instances)))
