"""Leases: which instance of the service acts for which account, decided by PostgreSQL.

Several instances may run on one database; for each account exactly one of them acts
at a time, the one holding the account's row in ``monitoring.leases``. A lease lasts
``ttl`` seconds from its last renewal, measured by the *database's* ``now()`` (the
instances' clocks never enter into it), and is renewed by :meth:`LeaseStore.lease_round`.

Each taking of a lease by a new holder (or anew after it lapsed) raises the row's
``token`` by one; the token is never reused, not even after a release, because the row
stays. Writes of an account-scoped, fenced view carry the token
(``Database.for_account(account, lease_token)``) and the database refuses them once
the token is no longer the live lease's (``monitoring.check_lease``): an instance that
lost its lease, however late it notices, cannot write for the account or record an
order it would send.

``monitoring.instances`` lists the instances alive now, for spreading accounts among
them; :meth:`LeaseStore.lease_round` keeps ours there and :meth:`LeaseStore.leave`
removes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from storage.errors import WriteRejected
from storage.store_base import StoreBase

__all__ = ["LeaseInfo", "LeaseRound", "LeaseStore"]


@dataclass(frozen=True)
class LeaseInfo:
    """One account's lease row as the database had it; ``live``: not expired at the database's now()."""

    account: str
    holder: str
    token: int
    expires_at: datetime
    acquired_at: datetime
    live: bool


@dataclass(frozen=True)
class LeaseRound:
    """What one :meth:`LeaseStore.lease_round` found.

    ``held`` — the leases still ours after the renewal (account → token); ``leases`` —
    every lease row (account → :class:`LeaseInfo`), ours renewed; ``live_instances`` —
    the instances alive now, ours included, sorted; ``db_now`` — the database's now().
    """

    held: dict[str, int]
    leases: dict[str, LeaseInfo]
    live_instances: tuple[str, ...]
    db_now: datetime


def _check(ttl: float | None = None, **names: str) -> None:
    """Refuse bad input before any round trip, naming what was wrong."""
    for what, value in names.items():
        if not isinstance(value, str) or not value:
            raise WriteRejected(f"{what} must be a non-empty string, got {value!r}")
    if ttl is not None and (
        isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0
    ):
        raise WriteRejected(f"ttl must be a positive number of seconds, got {ttl!r}")


_ACQUIRE = """
INSERT INTO monitoring.leases AS l (account, holder, token, acquired_at, renewed_at, expires_at)
VALUES ($1, $2, 1, now(), now(), now() + make_interval(secs => $3))
ON CONFLICT (account) DO UPDATE SET
    token = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.token ELSE l.token + 1 END,
    acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.acquired_at ELSE now() END,
    holder = EXCLUDED.holder,
    renewed_at = now(),
    expires_at = EXCLUDED.expires_at
WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now()
RETURNING token
"""

_RENEW = """
UPDATE monitoring.leases AS l SET renewed_at = now(), expires_at = now() + make_interval(secs => $4)
FROM unnest($2::text[], $3::bigint[]) AS h(account, token)
WHERE l.account = h.account AND l.token = h.token AND l.holder = $1 AND l.expires_at > now()
RETURNING l.account, l.token
"""

_SEEN = """
INSERT INTO monitoring.instances (instance, started_at, seen_at, expires_at)
VALUES ($1, now(), now(), now() + make_interval(secs => $2))
ON CONFLICT (instance) DO UPDATE SET seen_at = now(), expires_at = EXCLUDED.expires_at
"""

_TABLE = """
SELECT account, holder, token, acquired_at, renewed_at, expires_at, expires_at > now() AS live, now() AS db_now
FROM monitoring.leases ORDER BY account
"""


class LeaseStore(StoreBase):
    """Taking, renewing and giving up accounts' leases; the list of live instances."""

    async def acquire_lease(self, account: str, holder: str, ttl: float) -> int | None:
        """Take ``account``'s lease for ``holder`` for ``ttl`` seconds; return its token.

        Taken when there is no lease, when it has expired, or when ``holder`` has it
        already (then it is renewed). A live lease of ``holder`` keeps its token; any
        other taking gets the previous token plus one. None when another holder's lease
        is live. One statement.
        """
        _check(ttl, account=account, holder=holder)
        return await self.fetchval(_ACQUIRE, account, holder, float(ttl))

    async def lease_round(self, holder: str, held: Mapping[str, int], ttl: float) -> LeaseRound:
        """Renew ``held`` (account → token), mark ``holder`` alive, and read every lease.

        A lease is renewed (to expire ``ttl`` seconds from the database's now) only
        while its row still has ``holder``, that token, and has not expired; those are
        the ``held`` of the result. One transaction, one trio→asyncio crossing.
        """
        _check(ttl, holder=holder)
        for account, token in held.items():
            _check(account=account)
            if isinstance(token, bool) or not isinstance(token, int):
                raise WriteRejected(f"the token of account {account!r} must be an int, got {token!r}")
        accounts = list(held)
        tokens = [held[a] for a in accounts]

        async def job(conn):
            async with conn.transaction():
                renewed = await conn.fetch(_RENEW, holder, accounts, tokens, float(ttl))
                await conn.execute(_SEEN, holder, float(ttl))
                rows = await conn.fetch(_TABLE)
                db_now = await conn.fetchval("SELECT now()")
                instances = await conn.fetch(
                    "SELECT instance FROM monitoring.instances WHERE expires_at > now() ORDER BY instance"
                )
            return renewed, rows, db_now, instances

        renewed, rows, db_now, instances = await self._call(job)
        return LeaseRound(
            held={r["account"]: r["token"] for r in renewed},
            leases={r["account"]: _info(r) for r in rows},
            live_instances=tuple(r["instance"] for r in instances),
            db_now=db_now,
        )

    async def release_lease(self, account: str, holder: str, token: int) -> None:
        """Give up ``account``'s lease now, if ``holder`` still has it under ``token``.

        The row stays (expired now), so the next holder's token is ``token + 1``.
        """
        _check(account=account, holder=holder)
        if isinstance(token, bool) or not isinstance(token, int):
            raise WriteRejected(f"token must be an int, got {token!r}")
        await self.execute(
            "UPDATE monitoring.leases SET expires_at = now() "
            "WHERE account=$1 AND holder=$2 AND token=$3 AND expires_at > now()",
            account,
            holder,
            token,
        )

    async def leave(self, instance: str) -> None:
        """Release every lease ``instance`` holds and remove it from the live instances."""
        _check(instance=instance)

        async def job(conn):
            async with conn.transaction():
                await conn.execute(
                    "UPDATE monitoring.leases SET expires_at = now() WHERE holder=$1 AND expires_at > now()", instance
                )
                await conn.execute("DELETE FROM monitoring.instances WHERE instance=$1", instance)

        await self._call(job)

    async def lease_table(self) -> list[dict]:
        """Every lease row (account, holder, token, acquired_at, renewed_at, expires_at),
        with ``live`` (not expired at the database's now) and ``db_now``; by account."""
        return await self.fetch(_TABLE)


def _info(row) -> LeaseInfo:
    return LeaseInfo(
        account=row["account"],
        holder=row["holder"],
        token=row["token"],
        expires_at=row["expires_at"],
        acquired_at=row["acquired_at"],
        live=row["live"],
    )
