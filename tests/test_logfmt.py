"""Decimals in log lines and alert texts: prices on the tick, percentages to 3 places."""

from datetime import datetime, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR
from decimal import Decimal as D

import pytest

from actors import position as pos
from actors.events import CLOSE_COMPLETED, LifecycleEvent
from actors.position_actor import _describe
from exchanges import logfmt
from service.alerts import alert_payload, alert_text


@pytest.mark.parametrize("value,tick,shown", [
    (D("143.24293076979150"), D("0.01"), "143.24"),
    (D("143.245"), D("0.01"), "143.25"),            # half up
    (D("143.2"), D("0.01"), "143.20"),              # as many places as the tick
    (D("65000.05"), D("0.1"), "65000.1"),
    (D("65000.05"), D("0.5"), "65000.0"),           # a tick that is not a power of ten
    (D("0.1499999"), D("0.00001"), "0.15000"),
    (D("0.1499999"), 0.00001, "0.15000"),           # ccxt gives ticks as floats
    (D("101"), D("1E+1"), "100"),
    ("99.123456789", "0.01", "99.12"),              # event data carries strings
])
def test_price_on_the_tick(value, tick, shown):
    assert logfmt.price(value, tick) == shown


def test_price_on_the_tick_in_a_given_direction():
    assert logfmt.price(D("99.509"), D("0.01"), ROUND_FLOOR) == "99.50"
    assert logfmt.price(D("99.501"), D("0.01"), ROUND_CEILING) == "99.51"


@pytest.mark.parametrize("value,shown", [
    (D("143.24293076979150"), "143.24293"),         # 8 significant digits
    (D("0.000012345678912"), "0.000012345679"),     # no exponent notation
    (D("1E-7"), "0.0000001"),
    (D("100.00000"), "100"),                        # trailing zeros trimmed
    (D("1E+2"), "100"),
    (D("123456789.5"), "123456790"),                # integer digits are kept
    (D("-2.5000000001"), "-2.5"),
    (D("0"), "0"),
    (D("-0.000"), "0"),
])
def test_price_without_a_tick_has_eight_significant_digits(value, shown):
    assert logfmt.price(value) == shown
    assert logfmt.price(value, None) == logfmt.price(value, D(0)) == shown  # no usable tick


@pytest.mark.parametrize("value,shown", [
    (D("4.505114424306"), "4.505"),
    (D("0.0016666666666666666666666667"), "0.002"),
    ("-1.25", "-1.250"),
    (D("-0.0001"), "0.000"),                        # no negative zero
    (10, "10.000"),
    (D("1E+1"), "10.000"),
])
def test_percent_to_three_places(value, shown):
    assert logfmt.percent(value) == shown


def test_quantity_is_exact_without_exponent_or_trailing_zeros():
    assert logfmt.qty(D("0.500")) == "0.5"
    assert logfmt.qty(D("1E-5")) == "0.00001"
    assert logfmt.qty(D("1E+3")) == "1000"
    assert logfmt.qty(D("0.123456789012345678")) == "0.123456789012"  # a computed one: no endless tail


@pytest.mark.parametrize("value", [None, "n/a", "", True, D("NaN"), D("Infinity"), object])
def test_anything_else_is_shown_as_it_is_and_never_raises(value):
    for fmt in (logfmt.price, logfmt.qty, logfmt.percent, logfmt.significant):
        assert fmt(value) == str(value)


def test_fields_format_each_value_by_its_key():
    data = {"phase": "progressive", "loss_tolerance_percent": "4.505114424306", "bid": "99.123456789",
            "ask": None, "emergency": False, "filled_qty": "0.500", "attempts": 2,
            "pnl_percent": "0.0016666666666666666666666667", "target": D("143.24293076979150"),
            "avg_price": D("99.999"), "pnl": D("0.12345678912")}
    assert logfmt.fields(data, D("0.01")) == (
        "phase=progressive loss_tolerance_percent=4.505 bid=99.12 emergency=False filled_qty=0.5 attempts=2 "
        "pnl_percent=0.002 target=143.24 avg_price=100.00 pnl=0.12345679")


AT = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_the_actor_log_line_shows_prices_on_the_tick_and_short_percentages():
    emit = pos.Emit("aged.close.triggered", market_price=D("143.25"), target_price=D("143.24293076979150"),
                    data={"phase": "progressive", "loss_tolerance_percent": "4.505114424306",
                          "bid": "143.25", "ask": "143.26", "emergency": False})
    assert _describe(emit, D("0.01")) == ("price=143.25 target=143.24 phase=progressive "
                                          "loss_tolerance_percent=4.505 bid=143.25 ask=143.26 emergency=False")
    assert "target=143.24293 " in _describe(emit)  # tick unknown: significant digits
    done = pos.Emit("aged.close.completed", market_price=D("100.5"), success=True,
                    data={"close_reason": "profitable", "filled_qty": "0.5", "attempts": 1,
                          "pnl_percent": "0.0016666666666666666666666667"})
    assert _describe(done, D("0.1")) == "price=100.5 close_reason=profitable filled_qty=0.5 attempts=1 pnl_percent=0.002"


def test_alert_text_is_rounded_while_the_webhook_data_keeps_full_precision():
    event = LifecycleEvent(CLOSE_COMPLETED, AT, None, "bybit", "BTC/USDT:USDT",
                           {"close_reason": "profitable", "pnl_percent": "0.0016666666666666666666666667",
                            "target": "143.24293076979150", "filled_qty": "0.500"})
    text = alert_text(event)
    assert "pnl_percent=0.002" in text and "target=143.24293 " in text and "filled_qty=0.5" in text
    payload = alert_payload(event)
    assert payload["data"]["pnl_percent"] == "0.0016666666666666666666666667"
    assert payload["data"]["target"] == "143.24293076979150"


async def test_a_whole_lifecycle_logs_prices_on_the_tick_and_percentages_to_three_places(autojump_clock, caplog):
    import logging  # noqa: PLC0415
    import re  # noqa: PLC0415
    from datetime import timedelta  # noqa: PLC0415

    import trio  # noqa: PLC0415

    from tests.test_position_actor import SYMBOL, T0, setup, start_actor  # noqa: PLC0415
    caplog.set_level(logging.INFO)
    aged_id, ctx, ex, feed, written = setup(T0 + timedelta(hours=2))
    ex.tick_size = D("0.01")
    async with trio.open_nursery() as n:
        start_actor(n, ctx, aged_id)
        ex.set_quote(SYMBOL, "92.003", "92.013")  # the walk's prices need not sit on the tick
        while SYMBOL in ex.positions:
            feed.push(SYMBOL, bid="92.003", ask="92.013", last="92.003")
            await trio.sleep(900)
        await trio.sleep(1)
        n.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("actors.")]
    assert any("aged.close.completed" in line for line in lines)
    numbers = [(k, v) for line in lines for k, v in re.findall(r"(\w+)=(-?\d+(?:\.\d+)?)\b", line)]
    prices = [v for k, v in numbers if k in ("price", "target", "bid", "ask")]
    percents = [v for k, v in numbers if k.endswith("percent")]
    assert prices and percents
    assert all(re.fullmatch(r"\d+\.\d\d", v) for v in prices), prices
    assert all(re.fullmatch(r"-?\d+\.\d\d\d", v) for v in percents), percents
