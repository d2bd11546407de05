"""Symbol names: ccxt's unified form inside the system, exchange ids on the wire."""


def exchange_symbol_id(unified: str) -> str:
    """``"BTC/USDT:USDT"`` → ``"BTCUSDT"`` (the id both Bybit linear and Binance USD-M use)."""
    base_quote = unified.split(":", 1)[0]
    base, _, quote = base_quote.partition("/")
    if not base or not quote:
        raise ValueError(f"not a unified linear symbol: {unified!r}")
    return f"{base}{quote}".upper()


def unified_symbol(exchange_id: str, quote: str = "USDT") -> str:
    """``"BTCUSDT"`` → ``"BTC/USDT:USDT"``. Only USDT-margined linear perpetuals."""
    exchange_id = exchange_id.upper()
    if not exchange_id.endswith(quote) or len(exchange_id) == len(quote):
        raise ValueError(f"not a {quote} linear symbol id: {exchange_id!r}")
    return f"{exchange_id[: -len(quote)]}/{quote}:{quote}"
