"""The console in a real browser against a running demo.

A real ``run.py demo`` process (the simulator, the service, the real PostgreSQL in a
database of its own) at policy speed 1, so that the demo's positions stay open for the
test: XRP (15 % under water), ETH (in grace, far from breakeven) and DOGE are aged and
open; SOL closes at once. The system's headless Chromium, driven over the DevTools
protocol (:mod:`tests.cdp`), loads ``/``, waits for the table, sets the token, holds
XRP through the page's own hold form, closes ETH with its Close button (two clicks),
and each time waits until the API and the page agree. A screenshot goes to the test's
temp folder (``console.png``).

Without Chromium the test skips with one line saying how to install it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
import trio

from tests.cdp import INSTALL_HINT, Page, find_chromium, launch
from tests.http_client import get_json
from tests.support import run_asyncio, within

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "browser-test-token"  # a test value, not a secret
CHROMIUM = find_chromium()

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=INSTALL_HINT)


@pytest.fixture
def demo_database(server_url):
    """``(server url, database name)`` for one demo run; the database is dropped afterwards."""
    name = f"apm_console_browser_{uuid.uuid4().hex[:10]}"
    yield server_url, name

    async def drop():
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_asyncio(drop())


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def eventually(check, what: str, ceiling: float = 120) -> object:
    """Poll the async ``check()`` until it returns something truthy; that value. ``ceiling``
    only bounds a hang (see :func:`tests.support.within`)."""
    with within(ceiling, what):
        while not (value := await check()):
            await trio.sleep(0.25)
    return value


async def start_demo(database, log_path: Path):
    """``(process, its log file, port)`` of a demo whose console answers at 127.0.0.1:port."""
    server_url, name = database
    env = {**os.environ, "DATABASE_URL": server_url, "APM_CONSOLE_TOKEN": TOKEN}
    # A free port now; if another process takes it first, the demo picks another and its log says which.
    args = [sys.executable, "run.py", "demo", "--speed", "1", "--database", name, "--metrics-port", str(_free_port())]
    log = log_path.open("wb")
    process = await trio.lowlevel.open_process(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    async def console_port():
        if process.returncode is not None:
            text = await trio.Path(log_path).read_text(errors="replace")
            raise AssertionError(f"the demo exited with {process.returncode}:\n{text[-3000:]}")
        text = await trio.Path(log_path).read_text(errors="replace")
        found = re.search(r"console at http://127\.0\.0\.1:(\d+)/", text)
        return int(found.group(1)) if found else None

    port = await eventually(console_port, "the demo logged its console URL")
    return process, log, port


async def rows(page: Page) -> dict[str, dict]:
    """The positions table as the page shows it: symbol → {id, held, status text}."""
    found = await page.evaluate("""JSON.stringify([...document.querySelectorAll('#positions tbody tr')].map(tr => ({
        id: tr.dataset.id, held: tr.dataset.held,
        symbol: tr.querySelector('[data-col=symbol]').textContent,
        status: tr.querySelector('[data-col=status]').textContent})))""")
    return {r["symbol"]: r for r in json.loads(found)}


async def click(page: Page, selector: str) -> None:
    """Click the element ``selector`` as it is in the page now (the table is redrawn every second)."""
    await page.evaluate(f"""(() => {{
        const el = document.querySelector({json.dumps(selector)});
        if (!el) throw new Error('no element ' + {json.dumps(selector)});
        el.click();
    }})()""")


async def fill(page: Page, selector: str, value: str) -> None:
    await page.evaluate(f"""(() => {{
        const el = document.querySelector({json.dumps(selector)});
        el.focus(); el.value = {json.dumps(value)};
        el.dispatchEvent(new Event('input', {{bubbles: true}}));
    }})()""")


async def test_the_console_shows_the_demo_and_holds_and_closes_through_the_page(demo_database, tmp_path):
    assert CHROMIUM is not None
    async with trio.open_nursery() as nursery:
        process, log, port = await start_demo(demo_database, tmp_path / "demo.log")
        try:
            async with launch(CHROMIUM, tmp_path / "profile") as browser:
                page = await browser.open(f"http://127.0.0.1:{port}/")

                async def table_ready():
                    shown = await rows(page)
                    return shown if {"XRP/USDT:USDT", "ETH/USDT:USDT"} <= set(shown) else None

                shown = await eventually(table_ready, "the page listed the demo's open positions XRP and ETH")
                xrp, eth = shown["XRP/USDT:USDT"]["id"], shown["ETH/USDT:USDT"]["id"]
                assert xrp and eth and shown["XRP/USDT:USDT"]["held"] == "false"
                # every column the console promises, with the policy's numbers
                api = {p["id"]: p for p in await get_json(port, "/api/positions")}
                assert api[xrp]["phase"] == "grace" and api[xrp]["target_price"] is not None

                # the token, through the page's own form
                await click(page, "#token-button")
                await fill(page, "#token-input", TOKEN)
                await click(page, "#token-save")
                assert await page.evaluate("document.getElementById('token-state').textContent") == "token set"

                # hold XRP for 2 hours: the page's hold form
                await click(page, f'#positions tr[data-id="{xrp}"] button[data-action="hold"]')
                await fill(page, "#hold-hours", "2")
                await fill(page, "#hold-reason", "browser test: waiting for the news")
                await click(page, "#hold-submit")

                async def held_everywhere():
                    api = {p["id"]: p for p in await get_json(port, "/api/positions")}
                    page_rows = await rows(page)
                    return (api[xrp]["hold_until"] is not None and api[xrp]["held"]
                            and page_rows["XRP/USDT:USDT"]["held"] == "true")

                await eventually(held_everywhere, "the API and the row showed XRP held")
                assert (await get_json(port, f"/api/positions/{xrp}"))["hold_reason"].startswith("browser test")

                # close ETH now: Close arms the button (for 5 s), Confirm close sends it; both
                # clicks in one script, so that no pause of a loaded machine comes between them
                button = f'#positions tr[data-id="{eth}"] button[data-action="close"]'
                armed = await page.evaluate(f"""(() => {{
                    document.querySelector({json.dumps(button)}).click();
                    const again = document.querySelector({json.dumps(button)});
                    const label = again.textContent;
                    again.click();
                    return label;
                }})()""")
                assert armed == "Confirm close"

                async def closed_everywhere():
                    detail = await get_json(port, f"/api/positions/{eth}")
                    page_rows = await rows(page)
                    closed_ids = json.loads(await page.evaluate(
                        "JSON.stringify([...document.querySelectorAll('#closed tbody tr')].map(tr => tr.dataset.id))"))
                    done = detail["status"] == "closed" and "ETH/USDT:USDT" not in page_rows and eth in closed_ids
                    return detail if done else None

                detail = await eventually(closed_everywhere,
                                          "ETH closed in the API, gone from the table, listed as closed")
                assert [a["action"] for a in detail["actions"]] == ["close"]
                history = await get_json(port, "/api/actions")
                assert {a["action"] for a in history} == {"hold", "close"}
                shot = await page.screenshot(tmp_path / "console.png")
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGINT)
                    with trio.move_on_after(60):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                log.close()
        nursery.cancel_scope.cancel()
    assert process.returncode == 0, (tmp_path / "demo.log").read_text()[-3000:]
