"""The console in a real browser against a running demo.

A real ``run.py demo`` process (the simulator, the service, the real PostgreSQL in a
database of its own) at policy speed 1, so that the demo's positions stay open for the
test: XRP (15 % under water), ETH (in grace, far from breakeven) and DOGE are aged and
open; SOL closes at once. The system's headless Chromium, driven over the DevTools
protocol (:mod:`tests.cdp`), loads ``/``, waits for the table, sets the token, holds
XRP through the page's own hold form and releases it with its Release button, sets a
per-symbol override on XRP through the Overrides form, submits an out-of-range one
(the page shows the API's refusal word for word and nothing is stored), closes ETH
with its Close button (two clicks), takes a screenshot (``console.png`` in the test's
temp folder: the override listed, the refusal next to the form) and clears the
override with its Clear button. Each time it waits until the API and the page agree.

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

from actors.operator import OVERRIDABLE
from tests.cdp import INSTALL_HINT, Page, find_chromium, launch
from tests.http_client import get_json, request
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


async def text_of(page: Page, selector: str) -> str | None:
    """The text of the element ``selector`` if it is shown; ``None`` if absent or hidden."""
    return await page.evaluate(f"""(() => {{
        const el = document.querySelector({json.dumps(selector)});
        return el && !el.hidden ? el.textContent : null;
    }})()""")


async def override_rows(page: Page) -> list[dict]:
    """The Overrides table as the page shows it: exchange, symbol, settings text."""
    found = await page.evaluate("""JSON.stringify([...document.querySelectorAll('#overrides tbody tr')].map(tr => ({
        exchange: tr.dataset.exchange, symbol: tr.dataset.symbol,
        settings: tr.querySelector('[data-col=settings]').textContent})))""")
    return json.loads(found)


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

                # release XRP: its Release button (enabled now that the row shows the hold)
                await click(page, f'#positions tr[data-id="{xrp}"] button[data-action="release"]')

                async def released_everywhere():
                    api = {p["id"]: p for p in await get_json(port, "/api/positions")}
                    page_rows = await rows(page)
                    return (api[xrp]["hold_until"] is None and not api[xrp]["held"]
                            and page_rows["XRP/USDT:USDT"]["held"] == "false"
                            and "held" not in page_rows["XRP/USDT:USDT"]["status"])

                await eventually(released_everywhere, "the API and the row showed XRP released")

                # override XRP's max_loss_percent: the row's Override button fills in the
                # exchange and symbol, the form's select offers exactly the overridable keys
                xrp_exchange = api[xrp]["exchange"]
                await click(page, f'#positions tr[data-id="{xrp}"] button[data-action="override"]')
                assert await page.evaluate("document.getElementById('override-exchange').value") == xrp_exchange
                assert await page.evaluate("document.getElementById('override-symbol').value") == "XRP/USDT:USDT"
                offered = json.loads(await page.evaluate(
                    "JSON.stringify([...document.querySelectorAll('#override-settings .override-key option')]"
                    ".map(o => o.value))"))
                assert offered == list(OVERRIDABLE)
                await fill(page, "#override-settings .override-key", "max_loss_percent")
                await fill(page, "#override-settings .override-value", "25")
                await fill(page, "#override-reason", "browser test: a wider cap for XRP")
                await click(page, "#override-submit")

                async def override_applied():
                    stored = await get_json(port, "/api/overrides")
                    done = [a for a in await get_json(port, "/api/actions") if a["action"] == "override"
                            and re.fullmatch(r"applied to \d+ positions?", a["outcome"] or "")]
                    wanted = [(xrp_exchange, "XRP/USDT:USDT")]
                    if not (done and [(o["exchange"], o["symbol"]) for o in stored] == wanted):
                        return None
                    shown = await text_of(page, f'#actions tr[data-id="{done[0]["id"]}"] [data-col=outcome]')
                    listed = await override_rows(page)
                    xrp_row = (await rows(page)).get("XRP/USDT:USDT")
                    agree = (shown == done[0]["outcome"] and xrp_row is not None and "override" in xrp_row["status"]
                             and [(o["exchange"], o["symbol"]) for o in listed] == wanted)
                    return stored if agree else None

                stored = await eventually(override_applied, "the override stored, applied, and listed by the page")
                assert {k: float(v) for k, v in stored[0]["settings"].items()} == {"max_loss_percent": 25.0}
                assert "max_loss_percent = 25" in (await override_rows(page))[0]["settings"]
                now_api = {p["id"]: p for p in await get_json(port, "/api/positions")}
                assert {k: float(v) for k, v in now_api[xrp]["override"].items()} == {"max_loss_percent": 25.0}

                # out of range: the page shows the API's own refusal, and nothing is stored
                actions_before = [a["id"] for a in await get_json(port, "/api/actions")]
                bad = {"exchange": xrp_exchange, "symbol": "XRP/USDT:USDT",
                       "settings": {"max_loss_percent": "500"}, "reason": "browser test: too wide"}
                status, _, payload = await request(port, "POST", "/api/overrides", bad,
                                                   {"Authorization": f"Bearer {TOKEN}"})
                refusal = json.loads(payload)["error"]
                assert status == 400 and "max_loss_percent" in refusal
                await fill(page, "#override-exchange", bad["exchange"])
                await fill(page, "#override-symbol", bad["symbol"])
                await fill(page, "#override-settings .override-key", "max_loss_percent")
                await fill(page, "#override-settings .override-value", "500")
                await fill(page, "#override-reason", bad["reason"])
                await click(page, "#override-submit")

                async def refusal_shown():
                    return await text_of(page, "#override-error")

                assert await eventually(refusal_shown, "the page showed the API's refusal") == refusal
                assert await get_json(port, "/api/overrides") == stored
                assert [a["id"] for a in await get_json(port, "/api/actions")] == actions_before

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
                shot = await page.screenshot(tmp_path / "console.png")
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

                # clear the override: its Clear button in the Overrides table
                await click(page, '#overrides tbody tr[data-symbol="XRP/USDT:USDT"] button[data-action="clear"]')

                async def cleared_everywhere():
                    cleared = [a for a in await get_json(port, "/api/actions")
                               if a["action"] == "clear_override" and a["applied_at"] is not None]
                    return (cleared and await get_json(port, "/api/overrides") == []
                            and await override_rows(page) == []
                            and "override" not in (await rows(page))["XRP/USDT:USDT"]["status"])

                await eventually(cleared_everywhere, "the override cleared in the API and gone from the page")
                history = await get_json(port, "/api/actions")
                assert sorted(a["action"] for a in history) == sorted(
                    ["hold", "release", "override", "close", "clear_override"])
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
