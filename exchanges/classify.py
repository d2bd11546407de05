"""Map ccxt exceptions (and exchange error codes) onto the port's error vocabulary.

:func:`classify` turns any exception raised while talking to an exchange into one of
:class:`~exchanges.errors.RetryableError`, :class:`~exchanges.errors.UnknownOutcomeError`,
:class:`~exchanges.errors.NonRetryableError` or
:class:`~exchanges.errors.InsufficientLiquidityError`, with ``.code`` set to the
exchange's own error code when the message carries one (ccxt messages look like
``bybit {"retCode":110017,...}`` and ``binanceusdm {"code":-2022,"msg":"..."}``).

Decision order:

1. The exchange code, looked up in :data:`BYBIT_CODES` / :data:`BINANCE_CODES`. Codes
   are more precise than ccxt's classes (and do not depend on ccxt's URL-based table
   choice for Binance).
2. Phrases in the message ("insufficient liquidity", "duplicate", ...), for replies
   without a known code.
3. The ccxt exception class, refined by the HTTP status found in the message and by
   the underlying aiohttp error (``__cause__``).

The one rule that matters most: **while creating an order, anything that does not
prove the order was not accepted is an unknown outcome.** A timeout, a dropped
connection after the request was written, an HTTP 5xx, a parse failure of the reply,
an "execution status unknown" code: the order may have landed, so the executor must
look the client order id up before any new attempt. Only failures that prove the
request was refused or never sent (connection refused, DNS failure, 429/418 rate
limiting, 403, timestamp outside the receive window, a business rejection code) are
plain :class:`RetryableError` during create.

``retry_after`` (seconds) is set on a :class:`RetryableError` when the exchange says how
long to wait: the ``Retry-After`` header of a 429/418 (Binance: "the number of seconds
required to wait, in the case of a 429, to prevent a ban, or, in the case of a 418, until
the ban is over"), Bybit's ``X-Bapi-Limit-Reset-Timestamp`` (both read by the adapter
from the response headers), Binance's "IP banned until <ms>" in a -1003 message, and a
Bybit HTTP 403 (an IP ban of at least 10 minutes). The adapter turns it into a
per-exchange gate that every caller honours.

Deliberate choices (documented for the executor):

* **Duplicate client order id on create** (Bybit 110072 ``OrderLinkedID is
  duplicate``, Bybit 10014 ``Invalid duplicate request``, Binance -4116
  ``DUPLICATED_CLIENT_ORDER_ID``) → :class:`UnknownOutcomeError`: an earlier attempt
  with this id reached the exchange, so the executor looks the id up instead of
  treating the close as failed. (Outside create: non-retryable.) Note Binance only
  rejects an id that is unique *among open orders*; a filled MARKET order's id can be
  reused, so looking up before resending remains the executor's job.
* **HTTP 5xx during create** → :class:`UnknownOutcomeError` (Binance documents 503 as
  "execution status UNKNOWN"); outside create → :class:`RetryableError`.
* **Insufficient liquidity** (fall back to a limit IOC): Binance -4131 (counterparty's
  best price does not meet PERCENT_PRICE: the book is too thin for a market order),
  -2020 ``Unable to fill``, -5021 (FOK could not fill); Bybit 30208 / 30209 (market
  order's protection price beyond the max-buy / min-sell band, i.e. the book is too
  thin). **Not** liquidity: Binance -2019 ``Margin is insufficient`` and Bybit
  110007/110012/170131 (balance insufficient): a reduce-only close needs no margin,
  so these mean the order would open or increase exposure, or the account is in a
  state a limit IOC cannot fix → non-retryable.
* Unknown exchange codes with an exchange reply → retryable (the exchange answered,
  so the order was not placed; the executor's bounded backoff applies).
* Non-ccxt exceptions (a malformed reply that broke parsing) → unknown outcome during
  create, retryable otherwise.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import ccxt

from exchanges.errors import (
    ExchangeError,
    InsufficientLiquidityError,
    NonRetryableError,
    RetryableError,
    UnknownOutcomeError,
)

__all__ = [
    "BINANCE_CODES",
    "BYBIT_CODES",
    "NOT_FOUND_CODES",
    "classify",
    "extract_code",
    "extract_http_status",
    "is_order_not_found",
]

# Categories of exchange codes.
RETRY = "retry"  # refused / not processed; try again later
CREATE_UNKNOWN = "create_unknown"  # unknown outcome during create, retryable otherwise
DUPLICATE = "duplicate"  # unknown outcome during create (look the id up), else non-retryable
NON_RETRY = "non_retry"
LIQUIDITY = "liquidity"
NOT_FOUND = "not_found"  # order does not exist (non-retryable; lookups turn it into None)

BYBIT_CODES: dict[str, str] = {
    # server side / unknown
    "10000": CREATE_UNKNOWN,  # Server Timeout
    "10016": CREATE_UNKNOWN,  # Server error / service restarting
    "10019": RETRY,  # trade service restarting, request not accepted
    # throttling / clock
    "10002": RETRY,  # request time outside recv_window
    "10006": RETRY,  # too many visits (API rate limit)
    "10018": RETRY,  # exceeded IP rate limit
    "10429": RETRY,  # system level frequency protection
    "110066": RETRY,  # no trading allowed at the current time
    # credentials / permissions
    "10003": NON_RETRY,  # invalid API key
    "10004": NON_RETRY,  # invalid signature
    "10005": NON_RETRY,  # permission denied
    "10007": NON_RETRY,  # user authentication failed
    "10008": NON_RETRY,  # common banned
    "10009": NON_RETRY,  # IP banned
    "10010": NON_RETRY,  # unmatched IP
    "10027": NON_RETRY,  # transactions banned
    "33004": NON_RETRY,  # API key expired
    # request / order rejections
    "10001": NON_RETRY,  # request parameter error (e.g. invalid symbol params)
    "10029": NON_RETRY,  # symbol not in whitelist / invalid
    "110003": NON_RETRY,  # order price out of permissible range
    "110004": NON_RETRY,  # wallet balance insufficient
    "110007": NON_RETRY,  # available balance insufficient
    "110012": NON_RETRY,  # available balance not enough
    "110017": NON_RETRY,  # reduce-only rule not satisfied / position is zero
    "110020": NON_RETRY,  # too many active orders
    "110094": NON_RETRY,  # order notional below the lower limit
    "170131": NON_RETRY,  # balance insufficient (spot) - NOT liquidity
    # duplicates
    "110072": DUPLICATE,  # OrderLinkedID is duplicate
    "10014": DUPLICATE,  # invalid duplicate request
    # liquidity
    "30208": LIQUIDITY,  # order price above the maximum buying price (thin book)
    "30209": LIQUIDITY,  # order price below the minimum selling price (thin book)
    # lookups
    "110001": NOT_FOUND,  # order does not exist
    "110008": NON_RETRY,  # order already completed or cancelled
    "170213": NOT_FOUND,  # order does not exist
}

BINANCE_CODES: dict[str, str] = {
    # server side / unknown
    "-1000": CREATE_UNKNOWN,  # UNKNOWN error while processing the request
    "-1001": CREATE_UNKNOWN,  # DISCONNECTED internal error
    "-1006": CREATE_UNKNOWN,  # UNEXPECTED_RESP: execution status unknown
    "-1007": CREATE_UNKNOWN,  # TIMEOUT: send status unknown; execution status unknown
    # throttling / clock / availability
    "-1003": RETRY,  # TOO_MANY_REQUESTS (maybe "IP banned until <ms>")
    "-1008": RETRY,  # server overloaded / request throttled
    "-1015": RETRY,  # too many new orders
    "-1016": RETRY,  # service shutting down
    "-1021": RETRY,  # timestamp outside recvWindow
    "-5028": RETRY,  # timestamp outside recvWindow of the matching engine
    "-5041": RETRY,  # too many requests queueing
    # credentials / permissions
    "-1002": NON_RETRY,  # unauthorized
    "-1022": NON_RETRY,  # invalid signature
    "-2014": NON_RETRY,  # API-key format invalid
    "-2015": NON_RETRY,  # invalid API-key, IP, or permissions
    "-4056": NON_RETRY,
    "-4057": NON_RETRY,
    # request / order rejections
    "-1013": NON_RETRY,  # invalid message (filter failure)
    "-1100": NON_RETRY,
    "-1102": NON_RETRY,  # mandatory parameter missing
    "-1106": NON_RETRY,
    "-1111": NON_RETRY,  # precision over the maximum
    "-1116": NON_RETRY,
    "-1117": NON_RETRY,
    "-1121": NON_RETRY,  # invalid symbol
    "-1122": NON_RETRY,  # invalid symbol status
    "-2010": NON_RETRY,  # NEW_ORDER_REJECTED
    "-2019": NON_RETRY,  # margin is insufficient - NOT liquidity (see module doc)
    "-2021": NON_RETRY,  # order would immediately trigger
    "-2022": NON_RETRY,  # ReduceOnly order is rejected
    "-2024": NON_RETRY,  # position is not sufficient
    "-2027": NON_RETRY,
    "-2028": NON_RETRY,
    "-4003": NON_RETRY,  # quantity less than zero
    "-4004": NON_RETRY,  # quantity less than min quantity
    "-4005": NON_RETRY,  # quantity greater than max quantity
    "-4014": NON_RETRY,  # price not increased by tick size
    "-4015": NON_RETRY,  # client order id is not valid
    "-4023": NON_RETRY,  # quantity not increased by step size
    "-4061": NON_RETRY,  # position side does not match the account's setting
    "-4118": NON_RETRY,  # REDUCE_ONLY_MARGIN_CHECK_FAILED
    "-4164": NON_RETRY,  # notional too small
    # duplicates
    "-4116": DUPLICATE,  # DUPLICATED_CLIENT_ORDER_ID
    # liquidity
    "-2020": LIQUIDITY,  # unable to fill
    "-4131": LIQUIDITY,  # counterparty's best price does not meet the PERCENT_PRICE filter
    "-5021": LIQUIDITY,  # FOK order could not be filled immediately
    # lookups
    "-2013": NOT_FOUND,  # order does not exist
    "-2011": NON_RETRY,  # unknown order (cancel)
}

NOT_FOUND_CODES = {
    "bybit": {c for c, k in BYBIT_CODES.items() if k == NOT_FOUND},
    "binanceusdm": {c for c, k in BINANCE_CODES.items() if k == NOT_FOUND},
}

_TABLES = {"bybit": BYBIT_CODES, "binanceusdm": BINANCE_CODES, "binance": BINANCE_CODES}
_KNOWN_IDS = tuple(_TABLES)

_BYBIT_CODE_RE = re.compile(r'"retCode"\s*:\s*"?(-?\d+)')
_BINANCE_CODE_RE = re.compile(r'"code"\s*:\s*"?(-?\d+)')
# handle_http_status_code: "<id> <METHOD> <url> <status> <reason> <body>"
_HTTP_STATUS_RE = re.compile(r"\b(?:GET|POST|PUT|DELETE|PATCH|HEAD) \S+ (\d{3})\b")
# binance handle_errors for 418/429: "<id> <status> <reason> <body>"
_LEADING_STATUS_RE = re.compile(r"^\S+ (4\d\d|5\d\d) ")
_BANNED_UNTIL_RE = re.compile(r"banned until (\d{12,14})")

_MAX_MESSAGE = 600
# Bybit answers HTTP 403 "access too frequent" when an IP broke its request limit, and
# documents: "terminate all HTTP sessions and wait for at least 10 minutes. The ban will
# be lifted automatically" (https://bybit-exchange.github.io/docs/v5/rate-limit).
BYBIT_IP_BAN_SECONDS = 600.0


def _exchange_of(message: str, default: str | None) -> str | None:
    head = message.split(" ", 1)[0] if message else ""
    if head in _KNOWN_IDS:
        return head
    return default


def extract_code(message: str, exchange: str | None = None) -> str | None:
    """The exchange's error code in a ccxt message, or None (0/200 mean success, ignored)."""
    if not message:
        return None
    regexes = (_BYBIT_CODE_RE, _BINANCE_CODE_RE) if exchange != "binanceusdm" else (_BINANCE_CODE_RE, _BYBIT_CODE_RE)
    for regex in regexes:
        match = regex.search(message)
        if match and match.group(1) not in ("0", "200"):
            return match.group(1)
    return None


def extract_http_status(message: str) -> int | None:
    if not message:
        return None
    match = _HTTP_STATUS_RE.search(message) or _LEADING_STATUS_RE.search(message)
    return int(match.group(1)) if match else None


def _retry_after_from_message(message: str) -> float | None:
    match = _BANNED_UNTIL_RE.search(message or "")
    if not match:
        return None
    until_ms = int(match.group(1))
    return max(0.0, until_ms / 1000.0 - time.time())


def is_order_not_found(exc: BaseException, exchange: str | None = None) -> bool:
    """True when ``exc`` says the order does not exist (ccxt OrderNotFound or a not-found code)."""
    if isinstance(exc, ccxt.OrderNotFound):
        return True
    if isinstance(exc, ExchangeError):
        return exc.code is not None and exc.code in NOT_FOUND_CODES.get(exc.exchange or exchange or "", set())
    message = str(exc)
    ex = _exchange_of(message, exchange)
    code = extract_code(message, ex)
    return code is not None and code in NOT_FOUND_CODES.get(ex or "", set())


def _from_phrases(message: str) -> str | None:
    low = message.lower()
    if "liquidity" in low:
        return LIQUIDITY
    if "duplicate" in low and ("order" in low or "client" in low or "link" in low):
        return DUPLICATE
    if "reduce-only" in low or "reduceonly" in low or "reduce only" in low:
        return NON_RETRY
    return None


def _cause_chain(exc: BaseException):
    seen = set()
    cur: BaseException | None = exc.__cause__ or exc.__context__
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _request_never_sent(exc: BaseException) -> bool:
    """The underlying error proves the request never reached the server."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        aiohttp = None  # type: ignore[assignment]
    import socket

    for cause in _cause_chain(exc):
        if isinstance(cause, socket.gaierror):
            return True
        if aiohttp is not None and isinstance(cause, aiohttp.ClientConnectorError):
            return True
        if isinstance(cause, ConnectionRefusedError):
            return True
    return False


def _category_from_ccxt(exc: BaseException, message: str, status: int | None, during_create: bool) -> str:
    # network-level failures
    if isinstance(exc, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)):
        return RETRY
    if isinstance(exc, ccxt.OnMaintenance):
        return RETRY
    if isinstance(exc, ccxt.InvalidNonce):
        return RETRY  # the exchange refused a stale timestamp; nothing was placed
    if isinstance(exc, ccxt.RequestTimeout):
        return CREATE_UNKNOWN
    if isinstance(exc, ccxt.ExchangeNotAvailable):
        if status is not None:
            if status in (429, 418, 403):
                return RETRY
            if status in (400, 404, 405, 410, 422):
                return NON_RETRY
            if status >= 500:
                return CREATE_UNKNOWN
        if _request_never_sent(exc):
            return RETRY
        return CREATE_UNKNOWN
    if isinstance(exc, ccxt.NetworkError):
        if _request_never_sent(exc):
            return RETRY
        return CREATE_UNKNOWN
    if isinstance(exc, (ccxt.BadResponse, ccxt.NullResponse)):
        return CREATE_UNKNOWN  # the server answered something we cannot read
    if isinstance(exc, ccxt.OperationFailed):
        return CREATE_UNKNOWN
    # exchange said no
    if isinstance(exc, (ccxt.AuthenticationError, ccxt.PermissionDenied, ccxt.AccountSuspended)):
        return NON_RETRY
    if isinstance(exc, ccxt.OrderNotFound):
        return NOT_FOUND
    if isinstance(exc, ccxt.DuplicateOrderId):
        return DUPLICATE
    if isinstance(exc, ccxt.OrderNotFillable):
        return LIQUIDITY
    if isinstance(exc, (ccxt.InvalidOrder, ccxt.BadSymbol, ccxt.BadRequest, ccxt.ArgumentsRequired)):
        return NON_RETRY
    if isinstance(exc, (ccxt.NotSupported, ccxt.InsufficientFunds, ccxt.OperationRejected)):
        return NON_RETRY
    if isinstance(exc, ccxt.ExchangeClosedByUser):
        return NON_RETRY
    if isinstance(exc, ccxt.ExchangeError):
        if status is not None and status >= 500:
            return CREATE_UNKNOWN
        if isinstance(exc.__cause__, Exception) and not isinstance(exc.__cause__, ccxt.BaseError):
            # ccxt wraps a transport error (aiohttp.ClientError) as ExchangeError
            return RETRY if _request_never_sent(exc) else CREATE_UNKNOWN
        return RETRY if extract_code(message) is not None else CREATE_UNKNOWN
    # anything else (a parsing failure, a KeyError on a malformed reply ...)
    return CREATE_UNKNOWN


def _short(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[:_MAX_MESSAGE] + "..."


def classify(
    exc: BaseException,
    *,
    during_order_create: bool,
    exchange: str | None = None,
    retry_after: float | None = None,
) -> ExchangeError:
    """Return the port error (an instance, ready to ``raise ... from exc``) for ``exc``.

    ``exchange`` is used when the message does not start with a ccxt exchange id.
    ``retry_after`` (seconds) is a hint from response headers for rate limits.
    """
    if isinstance(exc, ExchangeError):
        return exc

    message = str(exc) or type(exc).__name__
    ex = _exchange_of(message, exchange)
    code = extract_code(message, ex)
    status = extract_http_status(message)

    category: str | None = None
    if code is not None:
        table = _TABLES.get(ex or "")
        if table is not None:
            category = table.get(code)
        else:  # unknown exchange: try both tables
            category = BYBIT_CODES.get(code) or BINANCE_CODES.get(code)
    if category is None:
        category = _from_phrases(message)
    if category is None:
        category = _category_from_ccxt(exc, message, status, during_order_create)

    text = _short(f"{type(exc).__name__}: {message}")
    kw: dict[str, Any] = {"exchange": ex, "code": code if code is not None else (str(status) if status else None)}

    if category == RETRY:
        hint = retry_after if retry_after is not None else _retry_after_from_message(message)
        if hint is None and ex == "bybit" and status == 403:
            hint = BYBIT_IP_BAN_SECONDS
        return RetryableError(text, retry_after=hint, **kw)
    if category == CREATE_UNKNOWN:
        if during_order_create:
            return UnknownOutcomeError(text, **kw)
        return RetryableError(text, retry_after=retry_after, **kw)
    if category == DUPLICATE:
        if during_order_create:
            return UnknownOutcomeError(text, **kw)
        return NonRetryableError(text, **kw)
    if category == LIQUIDITY:
        return InsufficientLiquidityError(text, **kw)
    # NON_RETRY, NOT_FOUND
    return NonRetryableError(text, **kw)


def describe(err: ExchangeError) -> str:
    """A one-line JSON description of a port error (for structured logs)."""
    return json.dumps(
        {
            "kind": type(err).__name__,
            "exchange": err.exchange,
            "code": err.code,
            "retry_after": getattr(err, "retry_after", None),
            "message": str(err),
        }
    )
