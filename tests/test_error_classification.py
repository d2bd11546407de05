"""Table-driven tests of exchanges.classify: (ccxt exception, during create) → port error."""

from __future__ import annotations

import socket
import time

import aiohttp
import ccxt
import pytest

from exchanges.classify import classify, extract_code, extract_http_status, is_order_not_found
from exchanges.errors import (
    ExchangeError,
    InsufficientLiquidityError,
    NonRetryableError,
    RetryableError,
    UnknownOutcomeError,
)

R, U, N, L = RetryableError, UnknownOutcomeError, NonRetryableError, InsufficientLiquidityError


def bybit(code: int, msg: str = "x") -> str:
    return 'bybit {"retCode":%d,"retMsg":"%s","result":{},"retExtInfo":{},"time":1700000000000}' % (code, msg)


def binance(code: int, msg: str = "x") -> str:
    return 'binanceusdm {"code":%d,"msg":"%s"}' % (code, msg)


URL_B = "http://127.0.0.1:1/binance/fapi/v1/order"
URL_Y = "http://127.0.0.1:1/bybit/v5/order/create"

# (id, exception class, message, during_create, expected class, expected code)
CASES = [
    # --- Bybit business codes
    ("bybit-110017-reduce-only", ccxt.InvalidOrder, bybit(110017, "current position is zero, cannot fix reduce-only order qty"), True, N, "110017"),
    ("bybit-110017-lookup", ccxt.InvalidOrder, bybit(110017), False, N, "110017"),
    ("bybit-10001-params", ccxt.BadRequest, bybit(10001, "params error: symbol invalid"), True, N, "10001"),
    ("bybit-10029-symbol", ccxt.ExchangeError, bybit(10029, "symbol invalid"), True, N, "10029"),
    ("bybit-110072-dup-create", ccxt.InvalidOrder, bybit(110072, "OrderLinkedID is duplicate"), True, U, "110072"),
    ("bybit-110072-dup-other", ccxt.InvalidOrder, bybit(110072, "OrderLinkedID is duplicate"), False, N, "110072"),
    ("bybit-10014-dup-request", ccxt.ExchangeError, bybit(10014, "Invalid duplicate request"), True, U, "10014"),
    ("bybit-30208-liquidity", ccxt.InvalidOrder, bybit(30208, "order price higher than the maximum buying price"), True, L, "30208"),
    ("bybit-30209-liquidity", ccxt.InvalidOrder, bybit(30209, "order price lower than the minimum selling price"), True, L, "30209"),
    ("bybit-170131-balance-not-liquidity", ccxt.InsufficientFunds, bybit(170131, "Insufficient balance"), True, N, "170131"),
    ("bybit-110007-balance", ccxt.InsufficientFunds, bybit(110007, "ab not enough for new order"), True, N, "110007"),
    ("bybit-10003-auth", ccxt.AuthenticationError, bybit(10003, "API key is invalid"), False, N, "10003"),
    ("bybit-10004-sign", ccxt.AuthenticationError, bybit(10004, "error sign"), True, N, "10004"),
    ("bybit-10005-perm", ccxt.PermissionDenied, bybit(10005, "permission denied"), True, N, "10005"),
    ("bybit-10006-ratelimit", ccxt.RateLimitExceeded, bybit(10006, "Too many visits"), True, R, "10006"),
    ("bybit-10018-ip-ratelimit", ccxt.RateLimitExceeded, bybit(10018, "exceed ip rate limit"), False, R, "10018"),
    ("bybit-10002-timestamp", ccxt.InvalidNonce, bybit(10002, "invalid request, please check your server timestamp"), True, R, "10002"),
    ("bybit-10016-server-create", ccxt.ExchangeError, bybit(10016, "Server error"), True, U, "10016"),
    ("bybit-10016-server-other", ccxt.ExchangeError, bybit(10016, "Server error"), False, R, "10016"),
    ("bybit-10000-timeout-create", ccxt.ExchangeError, bybit(10000, "Server Timeout"), True, U, "10000"),
    ("bybit-110001-not-found", ccxt.OrderNotFound, bybit(110001, "Order does not exist"), False, N, "110001"),
    ("bybit-unknown-code-create", ccxt.ExchangeError, bybit(199999, "something new"), True, R, "199999"),
    ("bybit-liquidity-phrase", ccxt.ExchangeError, bybit(188888, "insufficient liquidity for market order"), True, L, "188888"),
    # --- Binance business codes
    ("binance-2022-reduce-only", ccxt.InvalidOrder, binance(-2022, "ReduceOnly Order is rejected."), True, N, "-2022"),
    ("binance-2022-as-plain-exchange-error", ccxt.ExchangeError, binance(-2022, "ReduceOnly Order is rejected."), True, N, "-2022"),
    ("binance-1121-symbol", ccxt.BadSymbol, binance(-1121, "Invalid symbol."), True, N, "-1121"),
    ("binance-4116-dup-create", ccxt.InvalidOrder, binance(-4116, "ClientOrderId is duplicated."), True, U, "-4116"),
    ("binance-4116-dup-other", ccxt.InvalidOrder, binance(-4116, "ClientOrderId is duplicated."), False, N, "-4116"),
    ("binance-4131-liquidity", ccxt.OperationRejected, binance(-4131, "The counterparty's best price does not meet the PERCENT_PRICE filter limit."), True, L, "-4131"),
    ("binance-2020-unable-to-fill", ccxt.OrderNotFillable, binance(-2020, "Unable to fill."), True, L, "-2020"),
    ("binance-2019-margin-not-liquidity", ccxt.InsufficientFunds, binance(-2019, "Margin is insufficient."), True, N, "-2019"),
    ("binance-4118-reduce-margin", ccxt.OperationRejected, binance(-4118, "ReduceOnly Order Failed."), True, N, "-4118"),
    ("binance-2015-auth", ccxt.AuthenticationError, binance(-2015, "Invalid API-key, IP, or permissions for action."), False, N, "-2015"),
    ("binance-1022-signature", ccxt.AuthenticationError, binance(-1022, "Signature for this request is not valid."), True, N, "-1022"),
    ("binance-1003-ratelimit", ccxt.RateLimitExceeded, binance(-1003, "Too many requests."), True, R, "-1003"),
    ("binance-1021-timestamp", ccxt.InvalidNonce, binance(-1021, "Timestamp for this request is outside of the recvWindow."), True, R, "-1021"),
    ("binance-1007-timeout-create", ccxt.RequestTimeout, binance(-1007, "Timeout waiting for response from backend server. Send status unknown; execution status unknown."), True, U, "-1007"),
    ("binance-1007-timeout-other", ccxt.RequestTimeout, binance(-1007, "Timeout waiting for response"), False, R, "-1007"),
    ("binance-1006-unexpected-create", ccxt.OperationFailed, binance(-1006, "Execution status unknown."), True, U, "-1006"),
    ("binance-1001-disconnected-other", ccxt.OperationFailed, binance(-1001, "Internal error"), False, R, "-1001"),
    ("binance-1008-overloaded", ccxt.OperationFailed, binance(-1008, "Server is currently overloaded"), True, R, "-1008"),
    ("binance-2013-not-found", ccxt.OrderNotFound, binance(-2013, "Order does not exist."), False, N, "-2013"),
    ("binance-4164-notional", ccxt.InvalidOrder, binance(-4164, "Order's notional must be no smaller than 5"), True, N, "-4164"),
    # --- HTTP level (ccxt handle_http_status_code / binance 418-429 format)
    ("http-503-create", ccxt.ExchangeNotAvailable, f"bybit POST {URL_Y} 503 Service Unavailable <html>", True, U, "503"),
    ("http-503-other", ccxt.ExchangeNotAvailable, f"bybit GET {URL_Y} 503 Service Unavailable <html>", False, R, "503"),
    ("http-500-create", ccxt.ExchangeNotAvailable, f"binanceusdm POST {URL_B} 500 Internal Server Error oops", True, U, "500"),
    ("http-502-other", ccxt.ExchangeNotAvailable, f"binanceusdm GET {URL_B} 502 Bad Gateway", False, R, "502"),
    ("http-504-create", ccxt.RequestTimeout, f"binanceusdm POST {URL_B} 504 Gateway Timeout", True, U, "504"),
    ("http-429-create", ccxt.RateLimitExceeded, f"bybit POST {URL_Y} 429 Too Many Requests", True, R, "429"),
    ("http-429-binance-ddos", ccxt.DDoSProtection, "binanceusdm 429 Too Many Requests {\"code\":-1003,\"msg\":\"Too many requests\"}", True, R, "-1003"),
    ("http-418-binance-banned", ccxt.DDoSProtection, "binanceusdm 418 I'm a teapot ", False, R, "418"),
    ("http-403-bybit-ip-limit", ccxt.ExchangeNotAvailable, f"bybit POST {URL_Y} 403 Forbidden ", True, R, "403"),
    ("http-404-path", ccxt.ExchangeNotAvailable, f"bybit GET {URL_Y} 404 Not Found ", False, N, "404"),
    ("http-401-auth", ccxt.AuthenticationError, f"bybit GET {URL_Y} 401 Unauthorized ", False, N, "401"),
    ("maintenance", ccxt.OnMaintenance, "bybit system maintenance", True, R, None),
    # --- network / transport
    ("timeout-create", ccxt.RequestTimeout, f"bybit POST {URL_Y}", True, U, None),
    ("timeout-other", ccxt.RequestTimeout, f"bybit GET {URL_Y}", False, R, None),
    ("network-create", ccxt.NetworkError, "bybit connection reset", True, U, None),
    ("network-other", ccxt.NetworkError, "bybit connection reset", False, R, None),
    ("not-available-create", ccxt.ExchangeNotAvailable, f"binanceusdm POST {URL_B}", True, U, None),
    ("not-available-other", ccxt.ExchangeNotAvailable, f"binanceusdm GET {URL_B}", False, R, None),
    ("ddos-create", ccxt.DDoSProtection, "bybit ddos", True, R, None),
    ("bad-response-create", ccxt.BadResponse, "bybit unparseable", True, U, None),
    ("bad-response-other", ccxt.BadResponse, "bybit unparseable", False, R, None),
    # --- generic ccxt classes without a code
    ("invalid-order-generic", ccxt.InvalidOrder, "bybit amount must be greater than minimum", True, N, None),
    ("bad-symbol-generic", ccxt.BadSymbol, "bybit does not have market symbol FOO/USDT:USDT", False, N, None),
    ("auth-generic", ccxt.AuthenticationError, 'bybit requires "apiKey" credential', True, N, None),
    ("permission-generic", ccxt.PermissionDenied, "bybit no", False, N, None),
    ("order-not-fillable-generic", ccxt.OrderNotFillable, "binanceusdm unable to fill", True, L, None),
    ("exchange-error-nocode-create", ccxt.ExchangeError, "bybit something odd", True, U, None),
    ("exchange-error-nocode-other", ccxt.ExchangeError, "bybit something odd", False, R, None),
    # --- not ccxt at all (a malformed reply broke parsing)
    ("keyerror-create", KeyError, "orderId", True, U, None),
    ("keyerror-other", KeyError, "list", False, R, None),
]


@pytest.mark.parametrize(
    "exc_cls, message, during_create, expected, code",
    [pytest.param(c[1], c[2], c[3], c[4], c[5], id=c[0]) for c in CASES],
)
def test_classification_table(exc_cls, message, during_create, expected, code):
    err = classify(exc_cls(message), during_order_create=during_create)
    assert type(err) is expected, (type(err).__name__, str(err))
    assert err.code == code
    assert isinstance(err, ExchangeError)


def test_case_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_exchange_taken_from_message_or_argument():
    assert classify(ccxt.InvalidOrder(bybit(110017)), during_order_create=True).exchange == "bybit"
    assert classify(ccxt.InvalidOrder(binance(-2022)), during_order_create=True).exchange == "binanceusdm"
    err = classify(ccxt.RequestTimeout("no id here"), during_order_create=True, exchange="bybit")
    assert err.exchange == "bybit"


def test_port_errors_pass_through_unchanged():
    original = NonRetryableError("x", code="1")
    assert classify(original, during_order_create=True) is original


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as c:
            raise outer from c
    except BaseException as e:
        return e


def test_connection_refused_during_create_is_retryable():
    # the request never left: aiohttp.ClientConnectorError → ccxt ExchangeNotAvailable
    conn_key = type("K", (), {"ssl": None, "host": "127.0.0.1", "port": 1})()
    cause = aiohttp.ClientConnectorError(conn_key, ConnectionRefusedError(111, "refused"))
    exc = _chained(ccxt.ExchangeNotAvailable(f"bybit POST {URL_Y}"), cause)
    assert type(classify(exc, during_order_create=True)) is RetryableError


def test_dns_failure_during_create_is_retryable():
    exc = _chained(ccxt.ExchangeNotAvailable(f"bybit POST {URL_Y}"), socket.gaierror(-2, "Name or service not known"))
    assert type(classify(exc, during_order_create=True)) is RetryableError


def test_server_disconnected_during_create_is_unknown():
    # the request was written, then the connection dropped: the order may have landed
    exc = _chained(ccxt.ExchangeNotAvailable(f"bybit POST {URL_Y}"), aiohttp.ServerDisconnectedError())
    assert type(classify(exc, during_order_create=True)) is UnknownOutcomeError
    assert type(classify(exc, during_order_create=False)) is RetryableError


def test_retry_after_hint_and_banned_until(monkeypatch):
    err = classify(ccxt.RateLimitExceeded(bybit(10006)), during_order_create=False, retry_after=2.5)
    assert isinstance(err, RetryableError) and err.retry_after == 2.5
    now = 1_767_225_600.0
    monkeypatch.setattr(time, "time", lambda: now)  # the wait is computed from the clock: hold it
    until = int((now + 60) * 1000)
    msg = binance(-1003, f"Way too many requests; IP banned until {until}. Please use the websocket")
    err = classify(ccxt.RateLimitExceeded(msg), during_order_create=False)
    assert isinstance(err, RetryableError)
    assert err.retry_after == 60


def test_extract_helpers():
    assert extract_code(bybit(110017)) == "110017"
    assert extract_code(binance(-2022)) == "-2022"
    assert extract_code('bybit {"retCode":0,"retMsg":"OK"}') is None
    assert extract_code("no code") is None
    assert extract_http_status(f"bybit GET {URL_Y} 503 Service Unavailable") == 503
    assert extract_http_status("binanceusdm 429 Too Many Requests {}") == 429
    assert extract_http_status("bybit nothing") is None


def test_order_not_found_detection():
    assert is_order_not_found(ccxt.OrderNotFound("whatever"))
    assert is_order_not_found(ccxt.ExchangeError(binance(-2013, "Order does not exist.")))
    assert is_order_not_found(ccxt.ExchangeError(bybit(110001, "Order does not exist")))
    assert not is_order_not_found(ccxt.InvalidOrder(bybit(110017)))
    assert is_order_not_found(classify(ccxt.OrderNotFound(binance(-2013)), during_order_create=False))


def test_message_is_bounded_and_names_the_original_class():
    err = classify(ccxt.ExchangeError("bybit " + "x" * 5000), during_order_create=False)
    assert len(str(err)) < 700
    assert str(err).startswith("ExchangeError: bybit")
