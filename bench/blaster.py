"""A fast local WebSocket server speaking Bybit v5 public linear tickers, for the benchmarks.

Runs in its own process (``python -m bench.blaster --mode raw|feed``) so that the
client under test has a core and a GIL of its own. It prints ``PORT <n>`` on stdout,
then serves on 127.0.0.1 until ``QUIT`` arrives on stdin (or stdin closes).

The handshake and the client's frames go through wsproto; outgoing frames are framed
by hand (server frames are unmasked) and written in batches, so the server costs a few
microseconds per frame and is not what limits the client.

``--mode raw``: right after the handshake, send a pre-encoded block of Bybit ticker
deltas over and over until the client leaves. No protocol, no pacing.

``--mode feed``: what :class:`feeds.feed.Feed` expects from Bybit — subscribe acks,
a snapshot per subscribed symbol, then deltas; JSON pings are answered. Deltas are
sent at the rate set on stdin, round-robin over the subscribed symbols:

* ``RATE <ticks/s>`` — (re)start the schedule now; 0 stops it. Each delta carries its
  *scheduled* send time (CLOCK_MONOTONIC µs mod 1e12) as the bid ``50.<12 digits>``
  (see :func:`bench.common.lag_us_from_price`): if this server or the client falls
  behind, the lag measured from it grows.
* ``CROSS <interval_s> <ID,ID,...>`` — every interval, one of these symbols (in order)
  gets a delta with bid 100.5 / ask 100.6, which crosses the targets of the bench
  positions (long at 100: grace 100.2, progressive 97.5). ``CROSS 0`` stops.
* ``QUIT``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection, BytesMessage, CloseConnection, Ping, Request, TextMessage,
)

_NS = 1_000_000_000
ENCODE_MOD = 10 ** 12
MAX_BATCH = 2000  # frames per write when behind schedule

DELTA = ('{"topic":"tickers.%s","type":"delta","ts":%d,"cs":%d,"data":{"symbol":"%s","tickDirection":"PlusTick",'
         '"lastPrice":"%s","markPrice":"%s","indexPrice":"%s","bid1Price":"%s","bid1Size":"1.000",'
         '"ask1Price":"%s","ask1Size":"1.000"}}')
SNAPSHOT = ('{"topic":"tickers.%s","type":"snapshot","ts":%d,"cs":%d,"data":{"symbol":"%s",'
            '"tickDirection":"ZeroPlusTick","lastPrice":"50.0","markPrice":"50.0","indexPrice":"50.0",'
            '"bid1Price":"50.0","bid1Size":"1.000","ask1Price":"60.000","ask1Size":"1.000",'
            '"fundingRate":"0.0001"}}')


def frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def raw_block(count: int = 1000) -> tuple[bytes, int]:
    """``count`` realistic deltas over 100 symbols, framed and concatenated."""
    frames = []
    for k in range(count):
        sid = f"R{k % 100:04d}USDT"
        price = f"{50 + (k % 997) / 1000:.3f}"
        payload = DELTA % (sid, 1_700_000_000_000 + k, k, sid, price, price, price, price, "60.000")
        frames.append(frame(payload.encode()))
    return b"".join(frames), count


class Control:
    def __init__(self) -> None:
        self.gen = 0
        self.rate = 0
        self.cross_interval = 0.0
        self.cross: deque[str] = deque()
        self.conns: set = set()

    def poke(self) -> None:
        self.gen += 1
        for conn in self.conns:
            conn.wake.set()


class Conn:
    def __init__(self, stream, ws: WSConnection):
        self.stream = stream
        self.ws = ws
        self.out: deque[bytes] = deque()
        self.wake = trio.Event()
        self.syms: list[str] = []
        self.subscribed: set[str] = set()
        self.cs = 0
        self.closed = False

    def queue(self, data: bytes) -> None:
        self.out.append(data)
        self.wake.set()


async def _handshake(stream) -> WSConnection | None:
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return None
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection()))
                return ws


async def _reader(conn: Conn, on_text) -> None:
    while True:
        try:
            data = await conn.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            conn.closed = True
            conn.wake.set()
            return
        conn.ws.receive_data(data)
        for event in conn.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                on_text(conn, event.data if isinstance(event.data, str) else event.data.decode())
            elif isinstance(event, Ping):
                conn.queue(conn.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                try:
                    conn.queue(conn.ws.send(event.response()))
                except Exception:  # noqa: BLE001 - already closing
                    pass
                conn.closed = True
                conn.wake.set()
                return


# --- raw mode ----------------------------------------------------------------------------

async def serve_raw(stream) -> None:
    ws = await _handshake(stream)
    if ws is None:
        return
    conn = Conn(stream, ws)
    block, _ = raw_block()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_reader, conn, lambda c, t: None)
        try:
            while not conn.closed:
                await stream.send_all(block)
            while conn.out:
                await stream.send_all(conn.out.popleft())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()
    await stream.aclose()


# --- feed mode ---------------------------------------------------------------------------

def _on_feed_text(conn: Conn, text: str) -> None:
    try:
        req = json.loads(text)
    except ValueError:
        return
    op = req.get("op")
    req_id = req.get("req_id")
    if op == "ping":
        reply = {"success": True, "ret_msg": "pong", "conn_id": "bench", "req_id": req_id or "", "op": "ping"}
        conn.queue(frame(json.dumps(reply, separators=(",", ":")).encode()))
        return
    if op not in ("subscribe", "unsubscribe"):
        return
    out = [frame(json.dumps({"success": True, "ret_msg": "", "conn_id": "bench", "req_id": req_id, "op": op},
                            separators=(",", ":")).encode())]
    now_ms = int(time.time() * 1000)
    for topic in req.get("args") or ():
        sid = topic[len("tickers."):]
        if op == "subscribe" and sid not in conn.subscribed:
            conn.subscribed.add(sid)
            conn.syms.append(sid)
            conn.cs += 1
            out.append(frame((SNAPSHOT % (sid, now_ms, conn.cs, sid)).encode()))
        elif op == "unsubscribe" and sid in conn.subscribed:
            conn.subscribed.discard(sid)
            conn.syms.remove(sid)
    conn.queue(b"".join(out))


async def _feed_sender(conn: Conn, ctl: Control) -> None:
    stream = conn.stream
    gen = -1
    t0 = 0
    n = 0
    next_cross = None
    delta = DELTA
    mono = time.monotonic_ns
    while not conn.closed:
        if gen != ctl.gen:
            gen = ctl.gen
            t0 = mono()
            n = 0
            next_cross = t0 + int(ctl.cross_interval * _NS) if ctl.cross_interval > 0 else None
        parts = []
        while conn.out:
            parts.append(conn.out.popleft())
        now = mono()
        rate = ctl.rate
        syms = conn.syms
        if rate > 0 and syms:
            due = (now - t0) * rate // _NS - n
            if due > 0:
                due = min(due, MAX_BATCH)
                now_ms = int(time.time() * 1000)
                nsyms = len(syms)
                cs = conn.cs
                for k in range(n, n + due):
                    sched_us = (t0 + k * _NS // rate) // 1000
                    price = "50.%012d" % (sched_us % ENCODE_MOD)
                    sid = syms[k % nsyms]
                    cs += 1
                    parts.append(frame((delta % (sid, now_ms, cs, sid, price, price, price, price, "60.000"))
                                       .encode()))
                conn.cs = cs
                n += due
        if next_cross is not None and now >= next_cross:
            next_cross += int(ctl.cross_interval * _NS)
            while ctl.cross:
                sid = ctl.cross.popleft()
                if sid in conn.subscribed:
                    conn.cs += 1
                    parts.append(frame((delta % (sid, int(time.time() * 1000), conn.cs, sid, "100.5", "100.5",
                                                 "100.5", "100.5", "100.6")).encode()))
                    break
        if parts:
            try:
                await stream.send_all(b"".join(parts))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            continue
        # nothing due: sleep until the next frame (or crossing) is due, or something changes
        waits = []
        if rate > 0 and syms:
            waits.append((t0 + (n + 1) * _NS // rate - now) / _NS)
        if next_cross is not None:
            waits.append((next_cross - now) / _NS)
        timeout = max(0.0, min(waits)) if waits else 0.05
        conn.wake = trio.Event()
        with trio.move_on_after(timeout):
            await conn.wake.wait()


async def serve_feed(stream, ctl: Control) -> None:
    ws = await _handshake(stream)
    if ws is None:
        return
    conn = Conn(stream, ws)
    ctl.conns.add(conn)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_reader, conn, _on_feed_text)
            await _feed_sender(conn, ctl)
            nursery.cancel_scope.cancel()
    finally:
        ctl.conns.discard(conn)
    try:
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _control_loop(ctl: Control, cancel: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    while True:
        chunk = await stdin.receive_some(4096)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.decode().split()
            if not parts:
                continue
            cmd = parts[0].upper()
            if cmd == "QUIT":
                cancel.cancel()
                return
            if cmd == "RATE":
                ctl.rate = int(float(parts[1]))
            elif cmd == "CROSS":
                ctl.cross_interval = float(parts[1])
                ctl.cross = deque(parts[2].split(",")) if len(parts) > 2 and ctl.cross_interval > 0 else deque()
            ctl.poke()
    cancel.cancel()


async def main(mode: str) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    ctl = Control()
    with trio.CancelScope() as cancel:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_control_loop, ctl, cancel)

            async def handler(stream):
                try:
                    if mode == "raw":
                        await serve_raw(stream)
                    else:
                        await serve_feed(stream, ctl)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await nursery.start(trio.serve_listeners, handler, listeners)
            print(f"PORT {port}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("raw", "feed"), default="feed")
    args = p.parse_args()
    try:
        trio.run(main, args.mode)
    except KeyboardInterrupt:
        pass
