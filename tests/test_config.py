"""The configuration file: every setting's type and range, the cross-field rules, the
error a bad file gives (one line naming the key, exit status 2), and a property: any
configuration the loader accepts runs the policy for ten years without an error."""

import os
import re
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from actors import position as pos
from actors.policy import ConfigError, PolicyConfig, assess, next_phase_change
from service.config import (
    BOOL, CHOICE, CHOICE_LIST, DEFAULTS, ENV_NAME, HOST, INTEGER, NAME, NUMBER, SECONDS, SECONDS_LIST, SETTINGS,
    SYMBOLS,
    URL, AppConfig, parse_config,
)

ROOT = Path(__file__).resolve().parent.parent
VALID = {"exchanges": [{"name": "bybit"}]}
TEN_YEARS = timedelta(hours=87600)


def doc_with(section: str, key: str, value) -> tuple[dict, str]:
    """A valid document with ``section.key = value``, and the key's full path."""
    if section == "exchanges":
        return {"exchanges": [{"name": "bybit", key: value}]}, f"exchanges[0].{key}"
    if section == "accounts":
        return {"accounts": [{"name": "main", "exchange": "bybit", key: value}]}, f"accounts[0].{key}"
    return {**VALID, section: {key: value}}, f"{section}.{key}"


def error_for(doc: dict) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    return err.value


ALL = [(section, s) for section, table in SETTINGS.items() for s in table]
RANGED = [(section, s) for section, s in ALL if s.kind in (NUMBER, SECONDS, INTEGER, SECONDS_LIST)]


def _ids(case):
    return f"{case[0]}.{case[1].key}"


def _below(s):
    if s.min_open:
        return s.min
    return s.min - 1 if s.kind == INTEGER else s.min - D("0.001")


def _above(s):
    if s.max_open:
        return s.max
    return s.max + 1 if s.kind == INTEGER else s.max + D("0.001")


def _toml_number(s, d: D):
    """``d`` as a config file would give it: an int when whole, else a float."""
    return int(d) if d == d.to_integral_value() else float(d)


def _placed(s, value):
    return [value] if s.kind == SECONDS_LIST else value


def _item_path(s, path):
    return f"{path}[0]" if s.kind == SECONDS_LIST else path


def test_every_setting_has_a_range_or_a_shape():
    for section, s in ALL:
        if s.kind in (NUMBER, SECONDS, INTEGER, SECONDS_LIST):
            assert s.min is not None and s.max is not None and s.min < s.max, (section, s.key)
        else:
            assert s.kind in (BOOL, CHOICE, CHOICE_LIST, URL, ENV_NAME, SYMBOLS, NAME, HOST), (section, s.key)
            assert s.kind != NAME or (s.pattern is not None and s.choices), (section, s.key)
        assert s.doc, (section, s.key)


@pytest.mark.parametrize("case", RANGED, ids=_ids)
def test_below_the_minimum_is_refused(case):
    section, s = case
    value = _toml_number(s, _below(s))
    doc, path = doc_with(section, s.key, _placed(s, value))
    err = error_for(doc)
    assert err.key == _item_path(s, path)
    assert "out of range" in str(err) and repr(value) in str(err) and str(s.max) in str(err)


@pytest.mark.parametrize("case", RANGED, ids=_ids)
def test_above_the_maximum_is_refused(case):
    section, s = case
    value = _toml_number(s, _above(s))
    doc, path = doc_with(section, s.key, _placed(s, value))
    err = error_for(doc)
    assert err.key == _item_path(s, path)
    assert "out of range" in str(err) and repr(value) in str(err) and str(s.min) in str(err)


@pytest.mark.parametrize("case", RANGED, ids=_ids)
def test_the_limits_themselves_are_accepted_unless_open(case):
    section, s = case
    for limit, is_open in ((s.min, s.min_open), (s.max, s.max_open)):
        if is_open:
            continue
        doc, _ = doc_with(section, s.key, _placed(s, _toml_number(s, limit)))
        if (section, s.key) == ("policy", "max_loss_percent"):
            doc["policy"]["loss_step_percent"] = 0.001  # the cap covers at least one step
        if (section, s.key) == ("leases", "ttl_seconds"):
            doc["leases"]["renew_seconds"] = 0.1  # renewals less than half the ttl apart
        if (section, s.key) == ("leases", "renew_seconds"):
            doc["leases"]["ttl_seconds"] = 60
        parse_config(doc)


@pytest.mark.parametrize("case", ALL, ids=_ids)
def test_a_value_of_the_wrong_type_is_refused(case):
    section, s = case
    wrong = {BOOL: "yes", CHOICE: 1, URL: 1, ENV_NAME: 1, NAME: 1, SYMBOLS: "BTC/USDT:USDT",
             SECONDS_LIST: 5}.get(s.kind, "3")
    doc, path = doc_with(section, s.key, wrong)
    err = error_for(doc)
    assert err.key == path and (str(wrong).lower() if isinstance(wrong, bool) else repr(wrong)) in str(err)


@pytest.mark.parametrize("case", [c for c in RANGED if c[1].kind != INTEGER], ids=_ids)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), True, False, "1", None])
def test_numbers_must_be_finite_numbers(case, bad):
    section, s = case
    doc, path = doc_with(section, s.key, _placed(s, bad))
    err = error_for(doc)
    assert err.key == _item_path(s, path) and (str(bad).lower() if isinstance(bad, bool) else repr(bad)) in str(err)


@pytest.mark.parametrize("section,key,value", [
    ("policy", "max_age_hours", 1e12),
    ("policy", "max_age_hours", 0),
    ("policy", "max_age_hours", 0.0),
    ("manager", "error_cooldown_seconds", 1e300),
    ("manager", "error_cooldown_seconds", 0),
    ("manager", "sample_interval_seconds", 0),
    ("manager", "emergency_close_after_hours", 1e12),
    ("policy", "acceleration_factor", 1e60),     # would overflow the policy's arithmetic
    ("policy", "grace_period_hours", 1e300),
    ("metrics", "port", 65536),
    ("metrics", "port", -1),
])
def test_the_reported_cases(section, key, value):
    doc, path = doc_with(section, key, value)
    err = error_for(doc)
    assert err.key == path and repr(value) in str(err) and "out of range" in str(err)


def test_emergency_close_must_come_after_aging():
    for emergency in (2, 3):
        err = error_for({**VALID, "policy": {"max_age_hours": 3},
                         "manager": {"emergency_close_after_hours": emergency}})
        assert err.key == "manager.emergency_close_after_hours" and "policy.max_age_hours" in str(err)
    cfg = parse_config({**VALID, "policy": {"max_age_hours": 3}, "manager": {"emergency_close_after_hours": 3.5}})
    assert cfg.positions.emergency_close_after_hours == D("3.5")
    assert parse_config(VALID).positions.emergency_close_after_hours is None  # off when absent


def test_the_loss_cap_must_cover_one_step():
    err = error_for({**VALID, "policy": {"loss_step_percent": 2, "max_loss_percent": 1}})
    assert err.key == "policy.max_loss_percent" and "policy.loss_step_percent" in str(err)


def test_each_retry_delay_is_named_by_its_position():
    err = error_for({**VALID, "manager": {"retry_delays_seconds": [1, 0, 5]}})
    assert err.key == "manager.retry_delays_seconds[1]" and "secondsd" not in str(err)
    err = error_for({**VALID, "manager": {"retry_delays_seconds": [1, 3, "5"]}})
    assert err.key == "manager.retry_delays_seconds[2]"
    for bad in ([], [1] * 11):
        assert error_for({**VALID, "manager": {"retry_delays_seconds": bad}}).key == "manager.retry_delays_seconds"
    assert parse_config({**VALID, "manager": {"retry_delays_seconds": [0.5, 2]}}).executor.retry_delays == (0.5, 2.0)


@pytest.mark.parametrize("section", ["database", "policy", "manager", "metrics", "alerts", "exchanges", "accounts",
                                     "leases"])
def test_an_unknown_key_is_named_with_its_section(section):
    doc, path = doc_with(section, "max_age", 3)
    err = error_for(doc)
    assert err.key == path and "unknown setting" in str(err)


@pytest.mark.parametrize("section,key,value", [
    ("database", "url", "mysql://db/x"),
    ("database", "url", "127.0.0.1:5432"),
    ("exchanges", "rest_url", "not a url"),
    ("exchanges", "rest_url", "ftp://example.com"),
    ("exchanges", "rest_url", "http://"),
    ("exchanges", "rest_url", "http://127.0.0.1:99999/bybit"),
    ("exchanges", "ws_url", "https://stream.bybit.com"),
    ("exchanges", "api_key_env", "MY KEY"),
    ("exchanges", "symbols", []),
    ("exchanges", "symbols", ["BTCUSDT"]),
    ("exchanges", "name", "kraken"),
    ("alerts", "webhook_url_env", "https://hooks.example.com/x"),  # the URL itself, not its variable
])
def test_malformed_strings_are_refused(section, key, value):
    doc, path = doc_with(section, key, value)
    if key == "api_key_env":
        doc["exchanges"][0]["api_secret_env"] = "SECRET"
    assert error_for(doc).key == path


def test_well_formed_strings_are_accepted():
    cfg = parse_config({"database": {"url": "postgresql:///apm?host=/run/postgresql"},
                        "exchanges": [{"name": "bybit", "rest_url": "http://127.0.0.1:8800/bybit",
                                       "ws_url": "ws://127.0.0.1:8800/bybit/v5/public/linear",
                                       "api_key_env": "BYBIT_KEY", "api_secret_env": "BYBIT_SECRET",
                                       "symbols": ["BTC/USDT:USDT", "ETH/USDT:USDT-261225"]}],
                        "alerts": {"webhook_url_env": "APM_WEBHOOK", "telegram": True}})
    assert cfg.exchanges[0].symbols == ("BTC/USDT:USDT", "ETH/USDT:USDT-261225") and cfg.alerts.telegram
    assert cfg.symbols == {"bybit": ("BTC/USDT:USDT", "ETH/USDT:USDT-261225")}


def test_the_table_defaults_are_the_program_defaults():
    cfg = parse_config(VALID)
    assert cfg == replace(DEFAULTS, exchanges=cfg.exchanges) and DEFAULTS == AppConfig()
    assert {s.key: s.default for s in SETTINGS["policy"]} == {k: D(v) for k, v in PolicyConfig().as_dict().items()}
    assert cfg.positions.sample_interval == timedelta(seconds=60)
    assert cfg.positions.error_cooldown == timedelta(seconds=300)  # the documented default
    assert cfg.metrics.port == 9108


def test_every_manager_key_sets_its_section():
    cfg = parse_config({**VALID, "manager": {
        "poll_interval_seconds": 7, "stale_after_seconds": 4, "rest_poll_seconds": 1.5,
        "sample_interval_seconds": 90, "material_change_percent": 0.25, "error_cooldown_seconds": 45,
        "retry_delays_seconds": [2], "emergency_close_after_hours": 50}})
    assert cfg.detector == replace(DEFAULTS.detector, poll_interval=7.0)
    assert cfg.feeds == replace(DEFAULTS.feeds, stale_after=4.0, rest_poll_interval=1.5)
    assert cfg.executor == replace(DEFAULTS.executor, retry_delays=(2.0,))
    assert cfg.positions == replace(DEFAULTS.positions, sample_interval=timedelta(seconds=90),
                                    material_change_percent=D("0.25"), error_cooldown=timedelta(seconds=45),
                                    emergency_close_after_hours=D(50))
    assert (cfg.writer, cfg.supervision) == (DEFAULTS.writer, DEFAULTS.supervision)  # not in the file


def test_the_example_config_documents_the_ranges():
    lines = (ROOT / "config.example.toml").read_text(encoding="utf-8").splitlines()
    for section in ("policy", "manager", "metrics", "leases"):
        for s in (s for s in SETTINGS[section] if s.max is not None):
            [line] = [ln for ln in lines if ln.lstrip("# ").startswith(f"{s.key} =")]
            assert re.search(rf"\b{s.max}\b", line.split("#", 2)[-1]), (s.key, line)


def test_alerts_notify_names_kinds_of_event_and_defaults_to_the_trader_set():
    assert DEFAULTS.alerts.notify == ("close_completed", "close_failed", "progressive_started", "operator_action")
    assert parse_config(VALID).alerts.notify == DEFAULTS.alerts.notify
    assert parse_config({**VALID, "alerts": {"notify": []}}).alerts.notify == ()
    assert parse_config({**VALID, "alerts": {"notify": ["close_triggered"]}}).alerts.notify == ("close_triggered",)
    err = error_for({**VALID, "alerts": {"notify": ["close_completed", "everything"]}})
    assert err.key == "alerts.notify[1]" and "'everything'" in str(err) and "operator_action" in str(err)
    assert error_for({**VALID, "alerts": {"notify": ["close_failed", "close_failed"]}}).key == "alerts.notify"


def test_per_symbol_policy_overrides_use_the_policy_ranges():
    cfg = parse_config({**VALID, "policy": {"max_loss_percent": 12,
                                            "overrides": {"BTC/USDT:USDT": {"max_loss_percent": 15.5}}}})
    assert cfg.policy.max_loss_percent == D(12)
    assert cfg.policy_overrides == {"BTC/USDT:USDT": {"max_loss_percent": D("15.5")}}
    assert parse_config(VALID).policy_overrides == {}
    bad = [
        ({"BTC/USDT:USDT": {"max_loss_percent": 100}}, 'policy.overrides."BTC/USDT:USDT".max_loss_percent'),
        ({"BTC/USDT:USDT": {"max_age_hours": 5}}, 'policy.overrides."BTC/USDT:USDT".max_age_hours'),
        ({"BTC/USDT:USDT": {"loss_step_percent": 20}}, 'policy.overrides."BTC/USDT:USDT".max_loss_percent'),
        ({"BTCUSDT": {"max_loss_percent": 12}}, 'policy.overrides."BTCUSDT"'),
        ({"BTC/USDT:USDT": 12}, 'policy.overrides."BTC/USDT:USDT"'),
        ([1], "policy.overrides"),
    ]
    for overrides, key in bad:
        assert error_for({**VALID, "policy": {"overrides": overrides}}).key == key


# --- the command line --------------------------------------------------------------------

def run_py(*args):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("command", ["live", "status", "stats"])
def test_a_bad_config_file_is_one_line_naming_the_key_and_exit_2(tmp_path, command):
    path = tmp_path / "bad.toml"
    path.write_text('[manager]\nerror_cooldown_seconds = 1e300\n[[exchanges]]\nname = "bybit"\n')
    out = run_py(command, "--config", str(path))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "manager.error_cooldown_seconds" in lines[0] and "1e+300" in lines[0] and "604800" in lines[0]
    assert out.stdout == ""


def test_an_unreadable_config_file_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    out = run_py("live", "--config", str(path))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "UTF-8" in out.stderr
    out = run_py("live", "--config", str(tmp_path / f"missing-{uuid.uuid4().hex}.toml"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "cannot read" in out.stderr


# --- property: what the loader accepts, the policy can run -------------------------------

def _inside(s):
    lo, hi = float(s.min), float(s.max)
    floats = st.floats(min_value=lo, max_value=hi, exclude_min=s.min_open, exclude_max=s.max_open)
    return st.one_of(floats, st.integers(min_value=int(s.min), max_value=int(s.max)))


def _anything(s):
    """The setting's range, its edges and nonsense."""
    edges = st.sampled_from([float(s.min), float(s.max), 0, -1, 1e-300, 1e12, 1e300, float("inf"), float("nan")])
    return st.one_of(_inside(s), edges)


def _tables(values):
    return st.fixed_dictionaries({
        section: st.fixed_dictionaries({}, optional={s.key: values(s) for s in table})
        for section, table in NUMERIC.items()
    })


NUMERIC = {section: [s for s in SETTINGS[section] if s.kind in (NUMBER, SECONDS)] for section in ("policy", "manager")}
configs = st.one_of(_tables(_inside), _tables(_inside), _tables(_anything))  # mostly accepted ones


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables=configs, side=st.sampled_from(["long", "short"]),
       entry=st.decimals(min_value=D("0.00000001"), max_value=D("1000000"), places=8),
       opened=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                           timezones=st.just(timezone.utc)),
       offsets=st.lists(st.integers(min_value=0, max_value=TEN_YEARS // timedelta(microseconds=1)), max_size=4))
@example(tables={"policy": {"max_age_hours": 87599, "grace_period_hours": 87600, "loss_step_percent": 99.99,
                            "acceleration_after_hours": 0, "acceleration_factor": 100, "max_loss_percent": 99.999,
                            "commission_percent": 10},
                 "manager": {"sample_interval_seconds": 86400, "error_cooldown_seconds": 604800,
                             "material_change_percent": 100, "emergency_close_after_hours": 87600}},
         side="short", entry=D("1000000"), opened=datetime(2100, 1, 1, tzinfo=timezone.utc), offsets=[])
@example(tables={"policy": {"max_age_hours": 0.01, "grace_period_hours": 0, "loss_step_percent": 0.001,
                            "acceleration_after_hours": 0, "acceleration_factor": 100, "max_loss_percent": 0.001,
                            "commission_percent": 0},
                 "manager": {"sample_interval_seconds": 1, "error_cooldown_seconds": 1,
                             "material_change_percent": 0.001, "emergency_close_after_hours": 0.011}},
         side="long", entry=D("0.00000001"), opened=datetime(2000, 1, 1, tzinfo=timezone.utc), offsets=[1])
def test_an_accepted_config_runs_the_policy_for_ten_years(tables, side, entry, opened, offsets):
    try:
        cfg = parse_config({**VALID, **tables})
    except ConfigError as exc:
        assert exc.key.split(".")[0] in ("policy", "manager") and exc.key.split(".", 1)[1] in str(exc)
        return
    policy, s = cfg.policy, cfg.positions
    instants = {opened, opened + TEN_YEARS, *(opened + timedelta(microseconds=o) for o in offsets)}
    for boundary in (next_phase_change(opened, opened, policy),):  # the phase boundaries themselves
        while boundary is not None and boundary <= opened + TEN_YEARS:
            instants |= {boundary, boundary + timedelta(microseconds=1)}
            boundary = next_phase_change(opened, boundary + timedelta(microseconds=1), policy)
    state = pos.PositionState(aged_id=uuid.uuid4(), position_id=1, exchange="bybit", symbol="BTC/USDT:USDT",
                              side=side, entry_price=entry, quantity=D(1), opened_at=opened, config=policy,
                              settings=s)
    state, _ = pos.step(state, pos.Start(opened))
    for now in sorted(instants):
        a = assess(side, entry, opened, now, policy)
        assert a.target_price is None or a.target_price > 0
        assert D(0) <= a.loss_tolerance_percent <= policy.max_loss_percent
        next_phase_change(opened, now, policy)
        assert now + s.sample_interval > now and now + s.error_cooldown > now
        state, _ = pos.step(state, pos.Tick(now, bid=entry, ask=entry, last=entry))
        pos.quiet_band(state, now)
        state, _ = pos.step(state, pos.Timer(now))
