"""Private-call latency against the simulator: ccxt's real clients over loopback HTTP.

``python -m bench.simulator_latency [--calls N]`` starts the simulator in-process (port
0), points the program's own ccxt clients (:func:`exchanges.clients.make_ccxt_client`,
rate limiting off so the limiter is not what is measured) at it, and times ``N``
``create_order`` + ``fetch_positions`` pairs per exchange on one kept-alive connection.
It prints the median and p99 per call in milliseconds as JSON.

A Nagle/delayed-ACK stall (a reply written in pieces to a socket without TCP_NODELAY)
shows up here as ~40 ms a call; a healthy loopback call takes a few milliseconds. This
is a reported number, not a pass/fail test: it depends on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

import trio
import trio_asyncio

from bench.common import median, percentile
from exchanges.clients import make_ccxt_client
from service.asyncio_bridge import open_asyncio_loop
from simulator.server import serve_simulator

BTC = "BTC/USDT:USDT"
PATHS = {"bybit": "/bybit", "binanceusdm": "/binance"}


async def measure(calls: int = 200) -> dict:
    out: dict = {"calls_per_exchange": calls * 2}
    async with open_asyncio_loop(), trio.open_nursery() as nursery:
        sim = await nursery.start(partial(serve_simulator, "127.0.0.1", 0, 7, tick_interval=None))
        for name, path in PATHS.items():
            client = make_ccxt_client(name, rest_url=sim.base_url + path, api_key="sim-key", secret="sim-secret")
            client.enableRateLimit = False
            aio = trio_asyncio.aio_as_trio
            try:
                await aio(client.load_markets)()
                sim.state.set_position(name, "BTCUSDT", "long", str(calls), "60000")
                await aio(client.fetch_positions)()  # warm up (leverage brackets, connection)
                samples = []
                for i in range(calls):
                    t0 = time.perf_counter()
                    await aio(client.create_order)(BTC, "market", "sell", 0.001, None,
                                                   {"reduceOnly": True, "clientOrderId": f"lat-{i}"})
                    samples.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    await aio(client.fetch_positions)()
                    samples.append(time.perf_counter() - t0)
            finally:
                await aio(client.close)()
            ms = [s * 1000 for s in samples]
            out[name] = {"median_ms": round(median(ms), 3), "p99_ms": round(percentile(ms, 99), 3)}
        nursery.cancel_scope.cancel()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="create_order + fetch_positions pairs per exchange")
    args = parser.parse_args(argv)
    print(json.dumps(trio.run(measure, args.calls), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
