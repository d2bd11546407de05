"""A headless Chromium driven over the Chrome DevTools Protocol, for browser tests.

The system's Chromium (Debian's ``chromium`` package) is started with
``--remote-debugging-port=0``; it writes the port it chose, and the browser's WebSocket
path, to ``DevToolsActivePort`` in its profile folder. One WebSocket (trio-websocket)
carries every command; each page is a flattened session on it (``Target.attachToTarget``
with ``flatten``), so commands for a page carry its ``sessionId``.

Only what the tests need: open a page, evaluate JavaScript in it (the page's own
inputs and buttons are driven from there), and take a screenshot. Nothing is
downloaded: :func:`find_chromium` says where the browser is, or ``None``.

::

    async with launch(find_chromium(), tmp_path / "profile") as browser:
        page = await browser.open("http://127.0.0.1:9108/")
        rows = await page.evaluate("document.querySelectorAll('tr').length")
        await page.screenshot(tmp_path / "page.png")
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from tests.support import within

INSTALL_HINT = "Chromium not found: apt-get install chromium"
MAX_MESSAGE = 64 * 1024 * 1024  # a full-page screenshot, base64


def find_chromium() -> str | None:
    """The system Chromium's path, or ``None``."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(RuntimeError):
    """A command the browser refused, or JavaScript that threw."""


class Browser:
    """One connection to a running Chromium: commands by id, answers matched by a reader task."""

    def __init__(self, ws: WebSocketConnection):
        self._ws = ws
        self._next_id = 0
        self._waiting: dict[int, tuple[trio.Event, list[dict]]] = {}

    async def read(self) -> None:
        """Hand each answer to its command; events (no ``id``) are not needed here."""
        while True:
            message = json.loads(await self._ws.get_message())
            slot = self._waiting.pop(message.get("id", -1), None)
            if slot is not None:
                slot[1].append(message)
                slot[0].set()

    async def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            command["sessionId"] = session
        done, answer = trio.Event(), []
        self._waiting[self._next_id] = (done, answer)
        await self._ws.send_message(json.dumps(command))
        with within(60, f"the browser answered {method}"):
            await done.wait()
        if "error" in answer[0]:
            raise CdpError(f"{method}: {answer[0]['error']}")
        return answer[0].get("result", {})

    async def open(self, url: str, *, width: int = 1400, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        await page.send("Page.enable")
        await page.send("Page.navigate", {"url": url})
        return page


class Page:
    """One tab: commands go to its session."""

    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict | None = None) -> dict:
        return await self.browser.send(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (a promise is awaited); JavaScript that throws is a :class:`CdpError`."""
        result = await self.send("Runtime.evaluate",
                                 {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        await trio.Path(path).write_bytes(base64.b64decode(data["data"]))
        return path


@asynccontextmanager
async def launch(executable: str, profile: Path) -> AsyncIterator[Browser]:
    """A headless Chromium with its profile in ``profile``, stopped (and waited for) on exit."""
    await trio.Path(profile).mkdir(parents=True, exist_ok=True)
    args = [executable, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "--no-sandbox",  # root (CI) cannot use the sandbox
            "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-dev-shm-usage", "about:blank"]
    process = await trio.lowlevel.open_process(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = trio.Path(profile / "DevToolsActivePort")
        lines: list[str] = []
        with within(60, "Chromium wrote DevToolsActivePort"):
            while len(lines) < 2:
                if process.returncode is not None:
                    raise AssertionError(f"Chromium exited with code {process.returncode} before it listened")
                await trio.sleep(0.05)
                lines = (await port_file.read_text()).splitlines() if await port_file.exists() else []
        port, path = lines[:2]
        async with open_websocket_url(f"ws://127.0.0.1:{port}{path}", max_message_size=MAX_MESSAGE) as ws:
            browser = Browser(ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(browser.read)
                yield browser
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
