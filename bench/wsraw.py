"""ws_raw_msgs_per_s: trio-websocket receive + json.loads of Bybit ticker frames, no logic.

trio-websocket is opened with the feed's own queue and read sizes, so that the limit and
the feed are measured on the same footing.

The server is :mod:`bench.blaster` in raw mode, in another process, sending a
pre-encoded block of deltas as fast as the socket takes them. The client counts the
messages it receives and decodes per second of wall time, after a short warm-up.
"""

from __future__ import annotations

import json
import time

import trio
from trio_websocket import open_websocket_url

from bench.blaster import raw_block
from bench.common import Blaster, CpuWindow, median
from feeds.feed import MESSAGE_QUEUE_SIZE, RECEIVE_BUFFER_SIZE


async def _measure_once(url: str, seconds: float, warmup: float, decode) -> float:
    async with open_websocket_url(url, disconnect_timeout=2, message_queue_size=MESSAGE_QUEUE_SIZE,
                                  receive_buffer_size=RECEIVE_BUFFER_SIZE) as ws:
        get = ws.get_message
        clock = time.perf_counter
        end_warm = clock() + warmup
        while clock() < end_warm:
            decode(await get())
        n = 0
        began = clock()
        end = began + seconds
        while True:
            for _ in range(500):
                decode(await get())
            n += 500
            now = clock()
            if now >= end:
                break
        return n / (now - began)


async def bench_ws_raw(seconds: float = 5.0, repeats: int = 3, warmup: float = 0.5, with_orjson: bool = True
                       ) -> dict:
    async with Blaster("raw") as blaster:
        url = f"ws://127.0.0.1:{blaster.port}/"
        with CpuWindow(blaster.proc.pid) as cpu:
            runs = [await _measure_once(url, seconds, warmup, json.loads) for _ in range(repeats)]
        orjson_run = None
        if with_orjson:
            try:
                import orjson  # noqa: PLC0415 - the feed's decoder, for comparison
                orjson_run = await _measure_once(url, seconds, warmup, orjson.loads)
            except ImportError:
                pass
    block, count = raw_block()
    return {"ws_raw_msgs_per_s": round(median(runs)),
            "details": {"runs_json_loads": [round(r) for r in runs],
                        "orjson_loads_msgs_per_s": None if orjson_run is None else round(orjson_run),
                        "mean_frame_bytes": round(len(block) / count), "seconds_per_run": seconds,
                        "cpu": cpu.shares}}


if __name__ == "__main__":
    print(trio.run(bench_ws_raw, 2.0, 1))
