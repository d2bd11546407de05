"""Accounts in the configuration: ``[[accounts]]`` tables (several per exchange), the older
``[[exchanges]]`` tables (one account named after its exchange), unique names across
both, one account's configuration alone, and the ``[leases]`` section."""

from __future__ import annotations

import pytest

from actors.policy import ConfigError
from service.config import DEFAULTS, load_config, parse_config
from supervisor.leases import LeaseConfig

BYBIT_A = {"name": "bybit-a", "exchange": "bybit", "api_key_env": "A_KEY", "api_secret_env": "A_SECRET",
           "symbols": ["BTC/USDT:USDT"]}
BYBIT_B = {"name": "bybit-b", "exchange": "bybit", "rest_url": "http://127.0.0.1:8800/bybit",
           "ws_url": "ws://127.0.0.1:8800/bybit/v5/public/linear"}


def error_for(doc: dict) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    return err.value


def test_several_accounts_on_one_exchange():
    cfg = parse_config({"accounts": [BYBIT_A, BYBIT_B]})
    assert cfg.account_names == ("bybit-a", "bybit-b")
    a, b = cfg.exchanges
    assert (a.name, a.account, a.api_key_env, a.api_secret_env, a.symbols) == (
        "bybit", "bybit-a", "A_KEY", "A_SECRET", ("BTC/USDT:USDT",))
    assert (b.name, b.account, b.rest_url, b.ws_url, b.symbols) == (
        "bybit", "bybit-b", "http://127.0.0.1:8800/bybit", "ws://127.0.0.1:8800/bybit/v5/public/linear", None)
    assert b.private_ws_url == "wss://stream.bybit.com/v5/private"  # production when absent
    assert a.account_stream and b.account_stream


def test_an_exchanges_table_is_the_account_named_after_its_exchange():
    cfg = parse_config({"exchanges": [{"name": "bybit"}, {"name": "binanceusdm", "account_stream": False}]})
    assert cfg.account_names == ("bybit", "binanceusdm")
    assert [(e.name, e.account) for e in cfg.exchanges] == [("bybit", "bybit"), ("binanceusdm", "binanceusdm")]
    assert cfg.symbols == {"bybit": None, "binanceusdm": None}


def test_both_kinds_of_table_together():
    cfg = parse_config({"exchanges": [{"name": "binanceusdm"}], "accounts": [BYBIT_A]})
    assert cfg.account_names == ("binanceusdm", "bybit-a")
    assert [e.name for e in cfg.exchanges] == ["binanceusdm", "bybit"]


@pytest.mark.parametrize("doc,path,other", [
    ({"accounts": [BYBIT_A, {**BYBIT_B, "name": "bybit-a"}]}, "accounts[1].name", "accounts[0].name"),
    ({"exchanges": [{"name": "bybit"}], "accounts": [{"name": "bybit", "exchange": "binanceusdm"}]},
     "accounts[0].name", "exchanges[0].name"),
    ({"exchanges": [{"name": "bybit"}, {"name": "bybit"}]}, "exchanges[1].name", "exchanges[0].name"),
])
def test_a_duplicate_account_name_is_named_with_both_places(doc, path, other):
    err = error_for(doc)
    assert err.key == path and "duplicate account name" in str(err) and other in str(err)


@pytest.mark.parametrize("table,path,words", [
    ({"exchange": "bybit"}, "accounts[0].name", "is required"),
    ({"name": "x"}, "accounts[0].exchange", "is required"),
    ({"name": "x", "exchange": "kraken"}, "accounts[0].exchange", "must be one of"),
    ({"name": "has space", "exchange": "bybit"}, "accounts[0].name", "1 to 64"),
    ({"name": "", "exchange": "bybit"}, "accounts[0].name", "1 to 64"),
    ({"name": "x" * 65, "exchange": "bybit"}, "accounts[0].name", "1 to 64"),
    ({"name": "ünï", "exchange": "bybit"}, "accounts[0].name", "1 to 64"),
    ({"name": 7, "exchange": "bybit"}, "accounts[0].name", "must be a string"),
    ({"name": "x", "exchange": "bybit", "api_key_env": "K"}, "accounts[0].api_secret_env", "go together"),
    ({"name": "x", "exchange": "bybit", "colour": "red"}, "accounts[0].colour", "unknown setting"),
])
def test_a_bad_accounts_table_is_one_error_naming_the_key(table, path, words):
    err = error_for({"accounts": [table]})
    assert err.key == path and words in str(err)


def test_the_longest_and_oddest_allowed_names():
    name = "A-z_0.9" + "x" * 57
    assert len(name) == 64
    assert parse_config({"accounts": [{"name": name, "exchange": "binanceusdm"}]}).account_names == (name,)


@pytest.mark.parametrize("doc,path", [
    ({}, "exchanges"),  # the key the older files knew
    ({"accounts": []}, "exchanges"),
    ({"accounts": {"name": "x", "exchange": "bybit"}}, "accounts"),  # [accounts], not [[accounts]]
    ({"accounts": ["x"]}, "accounts[0]"),
])
def test_no_accounts_or_a_malformed_list_is_refused(doc, path):
    err = error_for(doc)
    assert err.key == path
    if not doc.get("accounts"):
        assert "[[accounts]]" in str(err) and "[[exchanges]]" in str(err)


def test_for_account_is_that_account_alone():
    cfg = parse_config({"exchanges": [{"name": "binanceusdm"}], "accounts": [BYBIT_A, BYBIT_B],
                        "policy": {"max_age_hours": 5}})
    one = cfg.for_account("bybit-b")
    assert one.exchanges == (cfg.exchanges[2],) and one.account_names == ("bybit-b",)
    assert one.policy == cfg.policy and one.leases == cfg.leases and one.symbols == {"bybit": None}
    assert cfg.for_account("bybit-a").symbols == {"bybit": ("BTC/USDT:USDT",)}
    with pytest.raises(ConfigError) as err:
        cfg.for_account("nope")
    assert "'nope'" in str(err.value) and "bybit-a" in str(err.value)
    assert len(cfg.exchanges) == 3  # unchanged


def test_leases_defaults_and_values():
    assert parse_config({"accounts": [BYBIT_A]}).leases == LeaseConfig() == DEFAULTS.leases
    cfg = parse_config({"accounts": [BYBIT_A], "leases": {"ttl_seconds": 10, "renew_seconds": 1.5,
                                                         "max_accounts": 3, "instance": "node-1:443"}})
    assert cfg.leases == LeaseConfig(ttl=10.0, renew_interval=1.5, max_accounts=3, instance="node-1:443")


@pytest.mark.parametrize("leases,path,words", [
    ({"renew_seconds": 1}, "leases.renew_seconds", "leases.ttl_seconds"),       # 1 >= 2 / 2
    ({"ttl_seconds": 0.5}, "leases.renew_seconds", "less than half"),            # default renew 0.5
    ({"ttl_seconds": 0.4, "renew_seconds": 0.1}, "leases.ttl_seconds", "out of range"),
    ({"max_accounts": 0}, "leases.max_accounts", "out of range"),
    ({"max_accounts": 1.5}, "leases.max_accounts", "whole number"),
    ({"instance": "a/b"}, "leases.instance", "1 to 100"),
    ({"instance": "x" * 101}, "leases.instance", "1 to 100"),
])
def test_bad_leases_are_one_error_naming_the_key(leases, path, words):
    err = error_for({"accounts": [BYBIT_A], "leases": leases})
    assert err.key == path and words in str(err)


def test_a_file_with_accounts_loads(tmp_path):
    path = tmp_path / "accounts.toml"
    path.write_text('''
[[accounts]]
name = "desk-1"
exchange = "binanceusdm"
api_key_env = "DESK1_KEY"
api_secret_env = "DESK1_SECRET"

[[accounts]]
name = "desk-2"
exchange = "binanceusdm"

[leases]
max_accounts = 1
''', encoding="utf-8")
    cfg = load_config(path)
    assert cfg.account_names == ("desk-1", "desk-2") and cfg.leases.max_accounts == 1
    assert cfg.for_account("desk-1").exchanges[0].api_key_env == "DESK1_KEY"
