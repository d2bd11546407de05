"""Account leases: which accounts this instance should take or give up, and until when it may act.

Several instances run on one database and share the configured accounts. An instance
acts for an account only while it holds that account's *lease*: a row in
``monitoring.leases`` carrying a fencing token, whose expiry the database decides with
its own ``now()``. Each round (every ``renew_interval`` seconds) the instance renews the
leases it holds, learns who holds the others, and asks :func:`plan` what to do next.

This module is the pure part, with no I/O, no trio and no database::

    LeaseConfig           the [leases] settings
    share(M, N, max)      how many accounts one instance should hold
    plan(...)             -> LeasePlan(acquire=..., release=...)
    LeaseDeadline         the local monotonic instant after which we must stop acting

How the load spreads: with ``M`` accounts and ``N`` live instances each instance takes
at most ``ceil(M / N)`` (or the configured ``max_accounts``). It acquires only leases
that are absent or expired, in an order of preference that is stable for one instance
and different between instances (a hash of the instance and account names), so
instances that start together mostly reach for different accounts. An instance above
its share gives back one account per round, and only while another live instance holds
fewer than the share, so a newcomer draws the load to itself gradually and nothing
flaps. A dead instance's leases expire and the others take its accounts.

Why a local deadline as well as the database's expiry: the database gives an expired
lease to someone else on *its* clock. A holder cut off from the database cannot learn
that, so it stops on its own clock, early enough: a renewal that was *sent* at
monotonic ``t`` and succeeded proves the lease runs until at least ``t + ttl`` on the
database's clock, and the holder stops acting at ``t + ttl - margin``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["INSTANCE_NAME", "LeaseConfig", "LeaseDeadline", "LeasePlan", "LeaseView", "plan", "preference", "share"]

INSTANCE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


@dataclass(frozen=True)
class LeaseConfig:
    """The ``[leases]`` section.

    ``ttl`` — seconds a lease lasts after its last renewal (0.5 … 60).
    ``renew_interval`` — seconds between renewal rounds; less than ``ttl / 2`` so one
    lost round never loses a lease. ``max_accounts`` — the most leases this instance
    takes (None: ``ceil(accounts / live instances)``). ``instance`` — this instance's
    name in the leases table (None: ``"<hostname>:<pid>"``, see :meth:`instance_name`).

    Bad values raise :exc:`ValueError` naming the field; nothing is built.
    """

    ttl: float = 2.0
    renew_interval: float = 0.5
    max_accounts: int | None = None
    instance: str | None = None

    def __post_init__(self) -> None:
        if not (
            isinstance(self.ttl, (int, float))
            and not isinstance(self.ttl, bool)
            and math.isfinite(self.ttl)
            and 0.5 <= self.ttl <= 60
        ):
            raise ValueError(f"ttl must be a number of seconds from 0.5 to 60, got {self.ttl!r}")
        if not (
            isinstance(self.renew_interval, (int, float))
            and not isinstance(self.renew_interval, bool)
            and math.isfinite(self.renew_interval)
            and 0 < self.renew_interval < self.ttl / 2
        ):
            raise ValueError(
                f"renew_interval must be more than 0 and less than half of ttl ({self.ttl / 2:g} s), "
                f"got {self.renew_interval!r}"
            )
        if self.max_accounts is not None and (
            isinstance(self.max_accounts, bool)
            or not isinstance(self.max_accounts, int)
            or not 1 <= self.max_accounts <= 10000
        ):
            raise ValueError(f"max_accounts must be a whole number from 1 to 10000, got {self.max_accounts!r}")
        if self.instance is not None and not (
            isinstance(self.instance, str) and INSTANCE_NAME.fullmatch(self.instance)
        ):
            raise ValueError(f"instance must be 1 to 100 of A-Z a-z 0-9 _ . : -, got {self.instance!r}")

    def instance_name(self) -> str:
        """The configured name, else ``"<hostname>:<pid>"``."""
        return self.instance if self.instance is not None else f"{socket.gethostname()}:{os.getpid()}"


class LeaseView(Protocol):
    """What :func:`plan` reads of one lease row (``storage``'s ``LeaseInfo`` has it)."""

    @property
    def holder(self) -> str: ...

    @property
    def live(self) -> bool: ...


@dataclass(frozen=True)
class LeasePlan:
    """What to do this round: leases to try to take, and leases to give back."""

    acquire: tuple[str, ...] = ()
    release: tuple[str, ...] = ()


def share(accounts: int, live_instances: int, max_accounts: int | None) -> int:
    """How many accounts one instance should hold.

    ``ceil(accounts / live_instances)``, or ``max_accounts`` when configured; never
    below 1 while there are accounts (0 when there are none). ``live_instances``
    counts at least this instance, so 0 is read as 1.
    """
    if accounts <= 0:
        return 0
    if max_accounts is not None:
        return max(1, max_accounts)
    return max(1, math.ceil(accounts / max(1, live_instances)))


def preference(me: str, account: str) -> str:
    """The sort key of ``account`` for instance ``me``: lower is preferred.

    A hash, so the order is stable across rounds and restarts of one instance and looks
    random between instances.
    """
    return hashlib.sha256(f"{me}\x00{account}".encode()).hexdigest()


def plan(
    *,
    accounts: Sequence[str],
    me: str,
    held: Mapping[str, int],
    leases: Mapping[str, LeaseView],
    live_instances: Sequence[str],
    max_accounts: int | None,
) -> LeasePlan:
    """This round's :class:`LeasePlan` for instance ``me``.

    ``accounts`` are the configured accounts; ``held`` the leases ``me`` holds now
    (account -> fencing token); ``leases`` every lease row (account -> its holder and
    whether it is live); ``live_instances`` the instances holding or asking for a
    lease recently (``me`` counts whether listed or not).

    - Held accounts that are no longer configured are released.
    - Below the share: acquire absent or expired leases, most preferred first, up to
      the share.
    - Above the share: release the least preferred held account, one per round, and
      only while some other live instance holds fewer than the share.
    """
    configured = set(accounts)
    removed = sorted(a for a in held if a not in configured)
    mine = sorted((a for a in held if a in configured), key=lambda a: preference(me, a))
    instances = set(live_instances) | {me}
    quota = share(len(configured), len(instances), max_accounts)

    if len(mine) < quota:
        free = [a for a in configured if a not in held and (a not in leases or not leases[a].live)]
        free.sort(key=lambda a: preference(me, a))
        return LeasePlan(acquire=tuple(free[: quota - len(mine)]), release=tuple(removed))

    if len(mine) > quota:
        holdings = Counter(v.holder for a, v in leases.items() if v.live and a in configured)
        if any(holdings[other] < quota for other in instances if other != me):
            return LeasePlan(release=tuple(removed) + (mine[-1],))
    return LeasePlan(release=tuple(removed))


class LeaseDeadline:
    """Per account, the local monotonic instant by which this instance must stop acting.

    ``renewed(account, sent_at)`` after each successful acquire or renewal whose request
    was sent at monotonic ``sent_at``: the deadline becomes ``sent_at + ttl - margin``
    (it never moves back). ``margin`` defaults to the renew interval, so a holder that
    misses rounds stops a full round before the database could give the lease away.
    """

    def __init__(self, config: LeaseConfig, *, margin: float | None = None):
        margin = config.renew_interval if margin is None else margin
        if not (math.isfinite(margin) and 0 <= margin < config.ttl):
            raise ValueError(f"margin must be at least 0 and less than ttl ({config.ttl:g} s), got {margin!r}")
        self.ttl = config.ttl
        self.margin = margin
        self._deadlines: dict[str, float] = {}

    def renewed(self, account: str, sent_at: float) -> None:
        """A renewal of ``account`` sent at ``sent_at`` succeeded."""
        deadline = sent_at + self.ttl - self.margin
        self._deadlines[account] = max(deadline, self._deadlines.get(account, deadline))

    def forget(self, account: str) -> None:
        """``account`` is no longer ours (released, lost, or stopped)."""
        self._deadlines.pop(account, None)

    def deadline(self, account: str) -> float | None:
        """The instant by which to stop acting for ``account``; None when not held."""
        return self._deadlines.get(account)

    def expired(self, now: float) -> list[str]:
        """The held accounts whose deadline has come (sorted), still tracked until :meth:`forget`."""
        return sorted(a for a, d in self._deadlines.items() if now >= d)

    def valid(self, account: str, now: float) -> bool:
        """True while ``account`` is held and its deadline has not come."""
        deadline = self._deadlines.get(account)
        return deadline is not None and now < deadline
