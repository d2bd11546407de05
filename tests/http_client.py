"""A plain HTTP/1.1 client on a raw trio socket: tests talk to our server with something
that is not the code under test."""

from __future__ import annotations

import json

import trio

from tests.support import within


async def request(port: int, method: str, path: str, body=None, headers: dict | None = None,
                  raw: bytes | None = None) -> tuple[int, dict, bytes]:
    """``(status, headers, body)`` of one request to 127.0.0.1:``port``; ``body`` is sent as JSON,
    ``raw`` as it is."""
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    head = {"Host": "127.0.0.1", "Connection": "close", "Content-Length": str(len(data)), **(headers or {})}
    if body is not None:
        head["Content-Type"] = "application/json"
    with within(60, f"{method} {path} answered"):  # a safety net, not a timing assertion
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            text = "".join(f"{k}: {v}\r\n" for k, v in head.items())
            await stream.send_all(f"{method} {path} HTTP/1.1\r\n{text}\r\n".encode() + data)
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
    top, _, payload = reply.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), hdrs, payload


async def get_json(port: int, path: str):
    """The JSON body of ``GET path`` (asserting 200)."""
    status, _, payload = await request(port, "GET", path)
    assert status == 200, (path, status, payload)
    return json.loads(payload)
