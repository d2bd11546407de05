"""Lease planning (:mod:`supervisor.leases`): the share, the plan, and the local deadline.

The system tests simulate N instances round by round against a model of the database:
each round every live instance renews what it holds and plans from one snapshot of the
leases table (as concurrent instances would), then the plans reach the database in a
random order, first come first served. A dead instance stops taking part; its leases
and its place among the live instances last ``TTL_ROUNDS`` more rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from supervisor.leases import LeaseConfig, LeaseDeadline, LeasePlan, plan, preference, share

TTL_ROUNDS = 4  # ttl 2 s / renew 0.5 s


@dataclass(frozen=True)
class Lease:
    holder: str
    token: int
    expires: int  # the round after which it is no longer live

    def live_at(self, now: int) -> bool:
        return now <= self.expires


@dataclass(frozen=True)
class View:
    holder: str
    live: bool


@dataclass
class Cluster:
    """A model of the leases table and the instances using it."""

    accounts: list[str]
    max_accounts: int | None = None
    now: int = 0
    rows: dict[str, Lease] = field(default_factory=dict)
    alive: list[str] = field(default_factory=list)
    last_seen: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    history: list[tuple[str, str, int]] = field(default_factory=list)  # (account, holder, token) per grant

    def join(self, name: str) -> None:
        self.alive.append(name)
        self.last_seen[name] = self.now

    def die(self, name: str) -> None:
        self.alive.remove(name)

    def held_by(self, name: str) -> dict[str, int]:
        return {a: r.token for a, r in self.rows.items() if r.holder == name and r.live_at(self.now)}

    def live_instances(self) -> list[str]:
        return sorted(n for n, seen in self.last_seen.items() if self.now - seen <= TTL_ROUNDS)

    def round(self, order: list[str]) -> None:
        """One renewal round; ``order`` is the order the plans reach the database."""
        self.now += 1
        for name in self.alive:
            self.last_seen[name] = self.now
            for account in self.held_by_before_expiry(name):
                r = self.rows[account]
                self.rows[account] = Lease(name, r.token, self.now + TTL_ROUNDS)
        snapshot = {a: View(r.holder, r.live_at(self.now)) for a, r in self.rows.items()}
        live = self.live_instances()
        plans = {name: plan(accounts=self.accounts, me=name, held=self.held_by(name), leases=snapshot,
                            live_instances=live, max_accounts=self.max_accounts) for name in self.alive}
        for name in order:
            if name not in plans:
                continue
            p = plans[name]
            assert not set(p.acquire) & set(p.release)
            for account in p.release:
                if self.rows.get(account) and self.rows[account].holder == name:
                    del self.rows[account]
            for account in p.acquire:
                row = self.rows.get(account)
                if row is None or not row.live_at(self.now):  # first come first served
                    self.tokens += 1
                    self.rows[account] = Lease(name, self.tokens, self.now + TTL_ROUNDS)
                    self.history.append((account, name, self.tokens))

    def held_by_before_expiry(self, name: str) -> list[str]:
        # the previous round's leases are renewed unless they already ran out
        return [a for a, r in self.rows.items() if r.holder == name and self.now - 1 <= r.expires]

    def holders(self) -> dict[str, str]:
        return {a: r.holder for a, r in self.rows.items() if r.live_at(self.now)}

    def quota(self) -> int:
        return share(len(self.accounts), len(self.alive), self.max_accounts)

    def settled(self) -> bool:
        holders = self.holders()
        counts = [sum(1 for h in holders.values() if h == name) for name in self.alive]
        return (set(holders) == set(self.accounts) and set(holders.values()) <= set(self.alive)
                and all(c <= self.quota() for c in counts))


def run_until_settled(cluster: Cluster, data, limit: int) -> int:
    for rounds in range(1, limit + 1):
        cluster.round(data.draw(st.permutations(cluster.alive), label="order"))
        if cluster.settled() and len(cluster.live_instances()) == len(cluster.alive):
            return rounds
    raise AssertionError(f"not settled after {limit} rounds: {cluster.holders()} alive={cluster.alive}")


def bound(cluster: Cluster) -> int:
    return TTL_ROUNDS + 2 * len(cluster.accounts) + 4


# --- share -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,n,mx,expected", [
    (0, 3, None, 0), (0, 1, 5, 0), (1, 3, None, 1), (4, 2, None, 2), (5, 2, None, 3), (5, 0, None, 5),
    (10, 3, None, 4), (10, 3, 2, 2), (3, 1, 1, 1),
])
def test_share(m, n, mx, expected):
    assert share(m, n, mx) == expected


@given(st.integers(1, 500), st.integers(0, 50))
def test_the_shares_cover_every_account(m, n):
    assert share(m, n, None) * max(1, n) >= m and share(m, n, None) >= 1


# --- plan, one round -------------------------------------------------------------------------------

def test_a_lone_instance_takes_every_free_account_in_its_order():
    accounts = [f"acct{i}" for i in range(5)]
    p = plan(accounts=accounts, me="a", held={}, leases={}, live_instances=[], max_accounts=None)
    assert p == LeasePlan(acquire=tuple(sorted(accounts, key=lambda x: preference("a", x))))


def test_live_leases_of_others_are_never_acquired_and_expired_ones_are():
    leases = {"x": View("b", True), "y": View("b", False)}
    p = plan(accounts=["x", "y"], me="a", held={}, leases=leases, live_instances=["a", "b"], max_accounts=None)
    assert p == LeasePlan(acquire=("y",))


def test_two_instances_prefer_different_orders():
    accounts = [f"acct{i}" for i in range(20)]
    assert sorted(accounts, key=lambda x: preference("a", x)) != sorted(accounts, key=lambda x: preference("b", x))


def test_above_the_share_releases_the_least_preferred_one_only_while_another_holds_less():
    accounts = ["p", "q", "r", "s"]
    mine = sorted(accounts, key=lambda x: preference("a", x))
    held = {a: i for i, a in enumerate(accounts)}
    leases = {a: View("a", True) for a in accounts}
    p = plan(accounts=accounts, me="a", held=held, leases=leases, live_instances=["a", "b"], max_accounts=None)
    assert p == LeasePlan(release=(mine[-1],))
    # within the share: nothing moves
    two = {a: held[a] for a in mine[:2]}
    leases2 = {**{a: View("a", True) for a in two}, **{a: View("b", True) for a in mine[2:]}}
    assert plan(accounts=accounts, me="a", held=two, leases=leases2, live_instances=["a", "b"],
                max_accounts=None) == LeasePlan()


def test_above_the_share_keeps_everything_when_nobody_else_is_short():
    # max_accounts=1 but another live instance already holds its one: giving ours back helps no one
    leases = {"x": View("a", True), "y": View("a", True), "z": View("b", True)}
    p = plan(accounts=["x", "y", "z"], me="a", held={"x": 1, "y": 2}, leases=leases, live_instances=["a", "b"],
             max_accounts=1)
    assert p == LeasePlan()


def test_accounts_removed_from_the_config_are_released():
    p = plan(accounts=["x"], me="a", held={"gone": 3, "x": 4}, leases={"gone": View("a", True), "x": View("a", True)},
             live_instances=["a"], max_accounts=None)
    assert p == LeasePlan(release=("gone",))


def test_the_configured_max_caps_what_one_instance_takes():
    p = plan(accounts=["x", "y", "z"], me="a", held={}, leases={}, live_instances=["a"], max_accounts=2)
    assert len(p.acquire) == 2 and set(p.acquire) < {"x", "y", "z"}


# --- the system, round by round ---------------------------------------------------------------------

names = st.integers(1, 6).map(lambda n: [f"i{k}" for k in range(n)])


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 12), instances=names, data=st.data())
def test_instances_converge_and_take_over_a_dead_ones_accounts(m, instances, data):
    cluster = Cluster([f"acct{i}" for i in range(m)])
    for name in instances:
        cluster.join(name)
    run_until_settled(cluster, data, bound(cluster))

    if len(instances) > 1:
        victim = data.draw(st.sampled_from(instances), label="victim")
        lost = {a for a, h in cluster.holders().items() if h == victim}
        cluster.die(victim)
        run_until_settled(cluster, data, bound(cluster))
        assert all(cluster.holders()[a] != victim for a in lost)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(2, 10), data=st.data())
def test_a_newcomer_draws_load_gradually(m, data):
    cluster = Cluster([f"acct{i}" for i in range(m)])
    cluster.join("first")
    run_until_settled(cluster, data, bound(cluster))
    assert set(cluster.holders().values()) == {"first"}
    cluster.join("second")
    before = len(cluster.held_by("first"))
    cluster.round(data.draw(st.permutations(cluster.alive)))
    assert before - len(cluster.held_by("first")) <= 1  # at most one account moves per round
    run_until_settled(cluster, data, bound(cluster))
    assert len(cluster.held_by("second")) >= m - math.ceil(m / 2)


class LeaseMachine(RuleBasedStateMachine):
    """Instances join, die and run rounds in any order; the table never has two holders."""

    @initialize(m=st.integers(1, 10), max_accounts=st.none() | st.integers(1, 10))
    def setup(self, m, max_accounts):
        self.cluster = Cluster([f"acct{i}" for i in range(m)], max_accounts=max_accounts)
        self.serial = 0
        self.grants_seen = 0

    @rule()
    def join(self):
        if len(self.cluster.alive) < 6:
            self.serial += 1
            self.cluster.join(f"n{self.serial}")

    @rule(data=st.data())
    def die(self, data):
        if self.cluster.alive:
            self.cluster.die(data.draw(st.sampled_from(self.cluster.alive)))

    @rule(data=st.data())
    def one_round(self, data):
        self.cluster.round(data.draw(st.permutations(self.cluster.alive)))

    @rule(data=st.data())
    def settle(self, data):
        c = self.cluster
        if c.alive and (c.max_accounts is None or c.max_accounts * len(c.alive) >= len(c.accounts)):
            run_until_settled(c, data, bound(c))

    @invariant()
    def one_holder_per_account_and_tokens_only_grow(self):
        c = getattr(self, "cluster", None)
        if c is None:
            return
        holders = c.holders()
        assert len(holders) <= len(c.accounts)
        for account in c.accounts:
            owners = {name for name in c.last_seen if account in c.held_by(name)}
            assert len(owners) <= 1, (account, owners)
        tokens = [t for _, _, t in c.history]
        assert tokens == sorted(set(tokens))


LeaseMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestLeaseMachine = LeaseMachine.TestCase


# --- the local deadline -------------------------------------------------------------------------------

def test_the_deadline_is_the_send_time_plus_ttl_less_the_margin():
    d = LeaseDeadline(LeaseConfig(ttl=2.0, renew_interval=0.5))
    assert d.deadline("a") is None and not d.valid("a", 0.0)
    d.renewed("a", 10.0)
    assert d.deadline("a") == 11.5
    assert d.valid("a", 11.49) and not d.valid("a", 11.5)
    assert d.expired(11.49) == [] and d.expired(11.5) == ["a"]
    d.renewed("a", 9.0)  # an older request answered late never moves it back
    assert d.deadline("a") == 11.5
    d.renewed("a", 11.0)
    assert d.deadline("a") == 12.5 and d.valid("a", 11.6)
    d.forget("a")
    assert not d.valid("a", 11.6) and d.expired(100.0) == []


def test_an_explicit_margin_and_bad_margins():
    assert LeaseDeadline(LeaseConfig(), margin=0).ttl == 2.0
    d = LeaseDeadline(LeaseConfig(ttl=3, renew_interval=1), margin=0.25)
    d.renewed("x", 0)
    assert d.deadline("x") == 2.75
    for bad in (-0.1, 3.0, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            LeaseDeadline(LeaseConfig(ttl=3, renew_interval=1), margin=bad)


@given(sent=st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 5)), min_size=1, max_size=20),
       ttl=st.floats(0.5, 60), check=st.floats(0, 1100))
def test_a_holder_never_acts_after_the_database_could_give_the_lease_away(sent, ttl, check):
    """The database stamps each renewal when it arrives (after the send) and lets it run
    ``ttl`` from then; the holder's deadline always comes first."""
    cfg = LeaseConfig(ttl=ttl, renew_interval=ttl / 4)
    d = LeaseDeadline(cfg)
    db_expiry = -math.inf
    for at, delay in sent:
        d.renewed("a", at)
        db_expiry = max(db_expiry, at + delay + ttl)
    if d.valid("a", check):
        assert check < db_expiry - cfg.renew_interval + 1e-9


@pytest.mark.parametrize("kwargs,word", [
    ({"ttl": 0.4}, "ttl"), ({"ttl": 61}, "ttl"), ({"ttl": float("nan")}, "ttl"),
    ({"renew_interval": 1.0}, "renew_interval"), ({"renew_interval": 0}, "renew_interval"),
    ({"max_accounts": 0}, "max_accounts"), ({"max_accounts": 10001}, "max_accounts"),
    ({"max_accounts": True}, "max_accounts"), ({"instance": "a b"}, "instance"), ({"instance": ""}, "instance"),
    ({"instance": "x" * 101}, "instance"),
])
def test_bad_lease_settings_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        LeaseConfig(**kwargs)


def test_the_default_instance_name_is_host_and_pid():
    import os
    import socket
    assert LeaseConfig().instance_name() == f"{socket.gethostname()}:{os.getpid()}"
    assert LeaseConfig(instance="node-1:7").instance_name() == "node-1:7"
