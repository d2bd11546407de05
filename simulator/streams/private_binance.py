"""Binance USD-M user data stream messages, built from the simulator's account activity.

Formats from Binance's USD-M futures docs (developers.binance.com, User Data Streams):
"Event: Order Update" (``ORDER_TRADE_UPDATE``), "Event: Balance and Position Update"
(``ACCOUNT_UPDATE``) and "Event: User Data Stream Expired" (``listenKeyExpired``, whose
``E`` the real server sends as a string: adshao/go-binance issue #510 quotes one).

The order of messages for one order is the real one: ``NEW``, then per fill a
``TRADE`` (``PARTIALLY_FILLED``/``FILLED``) followed by the ``ACCOUNT_UPDATE`` of the
position after it, then ``EXPIRED`` if an IOC/market remainder (or a reduce-only
order larger than the position) was left. A resting limit gets ``NEW`` only; a cancel
gets ``CANCELED``. An admin change (a fill behind the product's back) is shown as a
MARKET order of a "trading bot" (not reduce-only): ``NEW``, ``TRADE``, ``ACCOUNT_UPDATE``.

Times: ``T`` of a trade is the fill's time (``/fapi/v1/userTrades`` ``time``), ``T`` of
``ACCOUNT_UPDATE`` the position's ``updateTime`` (``/fapi/v2/positionRisk``), ``E`` the
moment the message is made.
"""

from __future__ import annotations

from decimal import Decimal

from simulator.state import Fill, Order, SimState, dstr, dt_ms
from simulator.state.activity import Activity, AdminFillActivity, CancelActivity, OrderActivity
from simulator.state.orders import bot_order
from simulator.streams.connection import dumps_compact

EXCHANGE = "binanceusdm"
TAKER_FEE = Decimal("0.0005")  # the REST trade list's commission rate (simulator.rest_binance)
WALLET_BALANCE = Decimal(100000)
_Q8 = Decimal("0.00000001")


def listen_key_expired(state: SimState, listen_key: str) -> str:
    return dumps_compact({"e": "listenKeyExpired", "E": str(state.now_ms()), "listenKey": listen_key})


def activity_messages(state: SimState, activity: Activity) -> list[str]:
    """The messages one account change sends on the user data stream, in order (none for Bybit's)."""
    exchange = activity.fill.exchange if isinstance(activity, AdminFillActivity) else activity.order.exchange
    if exchange != EXCHANGE:
        return []
    if isinstance(activity, OrderActivity):
        return _order_messages(state, activity.order, activity.fills)
    if isinstance(activity, AdminFillActivity):
        return _order_messages(state, bot_order(activity.fill), [activity.fill])
    if isinstance(activity, CancelActivity):
        return [_order_update(state, activity.order, "CANCELED", "CANCELED", None, Decimal(0), None)]
    return []


def _order_messages(state: SimState, o: Order, fills: list[Fill]) -> list[str]:
    out = [_order_update(state, o, "NEW", "NEW", None, Decimal(0), None)]
    cum = Decimal(0)
    quote = Decimal(0)
    for f in fills:
        cum += f.qty
        quote += f.qty * f.price
        status = "FILLED" if cum >= (o.qty or Decimal(0)) else "PARTIALLY_FILLED"
        out.append(_order_update(state, o, "TRADE", status, f, cum, quote / cum))
        out.append(_account_update(state, f))
    if not o.is_open and not o.canceled_by_user and cum < (o.qty or Decimal(0)):
        out.append(_order_update(state, o, "EXPIRED", "EXPIRED", None, cum, quote / cum if cum else None))
    return out


def _order_update(
    state: SimState, o: Order, x: str, status: str, f: Fill | None, cum: Decimal, avg: Decimal | None
) -> str:
    m = state.market(EXCHANGE, str(o.symbol))  # an accepted order always has its symbol and id
    otype = "MARKET" if o.type == "market" else "LIMIT"
    if f is not None:
        t = f.time
    elif x == "NEW":
        t = o.time
    else:
        t = o.updated_at or o.time
    fee = (f.qty * f.price * TAKER_FEE).quantize(_Q8) if f is not None else Decimal(0)
    order = {
        "s": o.symbol,
        "c": o.client_order_id or "",
        "S": "BUY" if o.side == "buy" else "SELL",
        "o": otype,
        "f": o.time_in_force if o.type == "limit" else "GTC",
        "q": m.fmt_qty(o.qty),
        "p": m.fmt_price(o.price if o.price is not None else Decimal(0)),
        "ap": dstr(avg) if avg is not None else "0",
        "sp": "0",
        "x": x,
        "X": status,
        "i": int(str(o.order_id)),
        "l": m.fmt_qty(f.qty) if f is not None else "0",
        "z": m.fmt_qty(cum) if cum else "0",
        "L": dstr(f.price) if f is not None else "0",
        "N": "USDT",
        "n": dstr(fee),
        "T": dt_ms(t),
        "t": int(f.trade_id) if f is not None else 0,
        "b": "0",
        "a": "0",
        "m": bool(f.is_maker) if f is not None else False,
        "R": o.reduce_only,
        "wt": "CONTRACT_PRICE",
        "ot": otype,
        "ps": "BOTH",
        "cp": False,
        "rp": dstr(f.realized_pnl.quantize(_Q8)) if f is not None else "0",
        "pP": False,
        "si": 0,
        "ss": 0,
        "V": "EXPIRE_MAKER",
        "pm": "NONE",
        "gtd": 0,
    }
    return dumps_compact({"e": "ORDER_TRADE_UPDATE", "E": max(state.now_ms(), dt_ms(t)), "T": dt_ms(t), "o": order})


def _account_update(state: SimState, f: Fill) -> str:
    m = state.market(EXCHANGE, f.symbol)
    after = f.position_after
    ps = "BOTH"
    if after is None:
        amount, entry, unrealised = Decimal(0), None, Decimal(0)
    else:
        side, qty, entry = after
        amount = qty if side == "long" else -qty
        mark = f.mark_price if f.mark_price is not None else f.price
        unrealised = ((mark - entry) * amount).quantize(_Q8)
        if state.hedge_mode[EXCHANGE]:
            ps = "LONG" if side == "long" else "SHORT"
    wallet = WALLET_BALANCE + sum(
        (state.cum_realised_pnl(EXCHANGE, sid) for sid in state.markets(EXCHANGE)), Decimal(0)
    )
    position = {
        "s": f.symbol,
        "pa": m.fmt_qty(amount) if amount else "0",
        "ep": dstr(entry) if entry is not None else "0.00000",
        "bep": dstr(entry) if entry is not None else "0",
        "cr": dstr(state.cum_realised_pnl(EXCHANGE, f.symbol).quantize(_Q8)),
        "up": dstr(unrealised),
        "mt": "cross",
        "iw": "0",
        "ps": ps,
        "ma": "USDT",
    }
    balance = {"a": "USDT", "wb": dstr(wallet.quantize(_Q8)), "cw": dstr(wallet.quantize(_Q8)), "bc": "0"}
    t = dt_ms(f.time)
    return dumps_compact(
        {
            "e": "ACCOUNT_UPDATE",
            "E": max(state.now_ms(), t),
            "T": t,
            "a": {"m": "ORDER", "B": [balance], "P": [position]},
        }
    )
