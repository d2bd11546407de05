"""Factory for configured ccxt async clients (Bybit v5 linear, Binance USD-M).

The clients are plain ``ccxt.async_support`` objects; the adapter in
:mod:`exchanges.ccxt_adapter` drives them from trio through trio-asyncio.

What the factory sets up (see ``/work/shared/notes/stack-facts.md``):

* **Base URL override** (``rest_url``): every entry of ``client.urls['api']`` (nested
  dicts walked) gets its scheme+host replaced by ``rest_url``, keeping the path. So
  Bybit ``https://api.{hostname}`` → ``rest_url`` and Binance
  ``https://fapi.binance.com/fapi/v1`` → ``rest_url + '/fapi/v1'``.
* **No extra calls**: ``has['fetchCurrencies'] = False`` (otherwise load_markets calls
  currency endpoints when keys are set); Bybit ``enableUnifiedAccount=True,
  enableUnifiedMargin=False`` (otherwise every create_order first queries the account
  type); Bybit markets restricted to ``linear``; Binance USD-M markets are ``linear``.
* **Binance error table**: ccxt picks Binance's per-market-type error table (where
  ``-2022 ReduceOnly Order is rejected`` lives) by matching the request URL against the
  real hostnames (``https://fapi.binance.com/...``). With an overridden base URL that
  lookup returns nothing and -2022 surfaces as a plain ``ExchangeError``.
  :class:`BinanceUsdmClient` also recognises the table from the URL *path*
  (``/fapi/`` → linear, ``/dapi/`` → inverse, ...), whatever the host.
* **Rate limiting**: ccxt's own ``enableRateLimit`` (a per-client token bucket sized by
  the exchange's documented weights) is on. One client per exchange is shared by the
  whole process, so that bucket is the per-exchange limiter, and the only one (see
  "One rate limiter" below).
* **Idle time counts** (:class:`IdleCreditThrottler`): ccxt's leaky bucket forgets the
  time between bursts (its refill clock restarts with each burst), so even an isolated
  call waits for the previous call's cost (about 100 ms per Bybit private call). The
  replacement credits idle time, up to the bucket's capacity: the average rate stays
  the documented one, a lone call goes out at once.
* **Keys never logged**: ccxt logs request headers (which carry the API key) at DEBUG
  level. Each client gets its own logger with a filter that redacts the key and the
  secret from every record.

One rate limiter. The exchanges budget requests per IP and per account, weighing each
endpoint differently (Binance: ``userTrades`` 5, ``positionSide/dual`` 30, an order
1; Bybit: per-endpoint rates). ccxt carries those documented costs for every endpoint,
and every caller of the exchange goes through this client: the detector's position
and fill-history polls, the executor's orders and lookups, the feeds' REST price
polling. A limiter of our own in front of order sends only (a flat "requests per
second" on trio's clock) saw a fraction of the traffic, knew no weights, and slowed
the one call that must not wait, a close, while the budget it meant to protect was
spent elsewhere. So this bucket is the only limiter. The other one ran on trio's
clock, so tests could skip its waits; this one runs on the real clock, as do the
tests that drive it (they talk to the simulator over loopback). Its
``requests_per_second`` setting (never a key of the configuration file) is gone: one
number cannot stand for the weighted budgets ccxt already follows.
When the exchange still answers "too many requests", :mod:`exchanges.gate` stops every
request until the end it names.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any
from urllib.parse import urlsplit

import ccxt.async_support as ccxt_async
from ccxt.async_support.base.throttler import Throttler

__all__ = [
    "SUPPORTED_EXCHANGES",
    "BinanceUsdmClient",
    "BybitClient",
    "IdleCreditThrottler",
    "credentials_from_env",
    "make_ccxt_client",
    "rewrite_api_urls",
]

SUPPORTED_EXCHANGES = ("bybit", "binanceusdm")

_ORIGIN_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]+")

# Binance API path prefix → ccxt's market type key in ``exceptions``.
_BINANCE_PATH_MARKET_TYPE = {
    "fapi": "linear",
    "dapi": "inverse",
    "eapi": "option",
    "papi": "portfolioMargin",
    "api": "spot",
    "sapi": "spot",
}


class IdleCreditThrottler(Throttler):
    """ccxt's leaky-bucket throttler, crediting the idle time between bursts."""

    def __init__(self, config, loop=None):
        super().__init__(config, loop)
        self._idle_since_ms: float | None = None

    async def leaky_bucket_loop(self):
        now = time.time() * 1000
        if self._idle_since_ms is not None:
            idle = max(0.0, now - self._idle_since_ms)
            self.config["tokens"] = min(
                self.config["tokens"] + idle * self.config["refillRate"], self.config["capacity"]
            )
        try:
            await super().leaky_bucket_loop()
        finally:
            self._idle_since_ms = time.time() * 1000


class BinanceUsdmClient(ccxt_async.binanceusdm):
    """``ccxt.binanceusdm`` whose error-table lookup also works with overridden URLs."""

    def get_exceptions_by_url(self, url, exactOrBroad):  # noqa: N803 (ccxt's name)
        found = super().get_exceptions_by_url(url, exactOrBroad)
        if found or url is None:
            return found
        market_type = binance_market_type_from_url(url)
        if market_type is None:
            return {}
        by_type = self.safe_dict(self.exceptions, market_type, {})
        return self.safe_dict(by_type, exactOrBroad, {})


class BybitClient(ccxt_async.bybit):
    """``ccxt.bybit``; a subclass only so both clients are constructed the same way."""


def binance_market_type_from_url(url: str) -> str | None:
    """``http://h:1/binance/fapi/v1/order`` → ``"linear"`` (first known API segment)."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    for segment in path.split("/"):
        market_type = _BINANCE_PATH_MARKET_TYPE.get(segment)
        if market_type is not None:
            return market_type
    return None


def rewrite_api_urls(api: Any, rest_url: str) -> Any:
    """Replace scheme+host of every URL string in ``api`` (nested dicts/lists) with ``rest_url``.

    ``"https://fapi.binance.com/fapi/v1"`` → ``rest_url + "/fapi/v1"``;
    ``"https://api.{hostname}"`` → ``rest_url``.
    """
    base = rest_url.rstrip("/")
    if isinstance(api, dict):
        return {k: rewrite_api_urls(v, rest_url) for k, v in api.items()}
    if isinstance(api, list):
        return [rewrite_api_urls(v, rest_url) for v in api]
    if isinstance(api, str):
        match = _ORIGIN_RE.match(api)
        if match is None:
            return api
        return base + api[match.end() :]
    return api


class _RedactFilter(logging.Filter):
    """Replaces secrets in a log record's rendered message with ``***``."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record is logging's problem, not ours
            return True
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


_client_counter = 0


def _redacting_logger(exchange: str, secrets: list[str]) -> logging.Logger:
    global _client_counter
    _client_counter += 1
    logger = logging.getLogger(f"exchanges.ccxt.{exchange}.{_client_counter}")
    logger.addFilter(_RedactFilter(secrets))
    return logger


def make_ccxt_client(
    name: str,
    *,
    rest_url: str | None = None,
    api_key: str | None = None,
    secret: str | None = None,
    timeout_ms: int = 10000,
    enable_rate_limit: bool = True,
):
    """A configured ``ccxt.async_support`` client for ``"bybit"`` or ``"binanceusdm"``.

    The client is not opened here; its aiohttp session is created on first use, on the
    running asyncio loop (so the first call must happen inside ``service.asyncio_bridge.open_asyncio_loop``).
    """
    config: dict[str, Any] = {
        "timeout": int(timeout_ms),
        "enableRateLimit": bool(enable_rate_limit),
    }
    if api_key:
        config["apiKey"] = api_key
    if secret:
        config["secret"] = secret

    if name == "bybit":
        config["options"] = {
            "defaultType": "swap",
            "defaultSubType": "linear",
            "defaultSettle": "USDT",
            "fetchMarkets": {"types": ["linear"]},
            "enableUnifiedAccount": True,
            "enableUnifiedMargin": False,
        }
        client = BybitClient(config)
    elif name == "binanceusdm":
        config["options"] = {
            "defaultType": "swap",
            "defaultSubType": "linear",
            "fetchMarkets": {"types": ["linear"]},
            "adjustForTimeDifference": False,
            "warnOnFetchOpenOrdersWithoutSymbol": False,
        }
        client = BinanceUsdmClient(config)
    else:
        raise ValueError(f"unsupported exchange {name!r}; expected one of {SUPPORTED_EXCHANGES}")

    client.has["fetchCurrencies"] = False
    client.throttler = IdleCreditThrottler(client.tokenBucket, client.asyncio_loop)
    client.logger = _redacting_logger(name, [api_key or "", secret or ""])
    client.verbose = False
    if rest_url:
        client.urls["api"] = rewrite_api_urls(client.urls["api"], rest_url)
    return client


def credentials_from_env(api_key_env: str, api_secret_env: str) -> tuple[str | None, str | None]:
    """Read an API key pair from the environment (names given by configuration).

    Empty values count as missing. Never reads files; never logs the values.
    """
    key = os.environ.get(api_key_env) or None
    secret = os.environ.get(api_secret_env) or None
    return key, secret
