"""The dashboard in a real browser: Playwright driving headless Chromium against a bridge, a
registry node and services in their own processes, all on a real nats-server.

One browser serves the whole module. Without Chromium (or Playwright) the tests are skipped
with the reason; in CI (``CI`` set), which installs both, a missing browser fails them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

import natsreg
from natsreg import bridge
from natsreg.bridge import BridgeConfig
from natsreg.testing import NatsServer
from tests.helpers import read_id, start_service, until_warm

AXE = Path(__file__).parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
pytestmark = pytest.mark.asyncio(loop_scope="module")


def _browser_or_skip() -> tuple[Any, str]:
    """Playwright's async API and Chromium's path; skips (fails in CI) without them."""
    problem = None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        problem = "Playwright is not installed: pip install -e '.[test]'"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if problem is None and chromium is None:
        problem = "no Chromium on PATH: apt-get install chromium (Debian) to run these tests"
    if problem is None and not AXE.exists():
        problem = "axe-core is missing: npm install --prefix tests/js"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem} (CI installs it, so it must not be skipped there)")
        pytest.skip(problem)
    assert chromium is not None
    return async_playwright, chromium


@dataclass
class Dashboard:
    url: str
    nats_url: str
    prefix: str
    browser: Any

    def service(self, name: str, *extra: str) -> Any:
        """A natsreg service (tests/service_proc.py: echo and work) in its own process."""
        return start_service(self.nats_url, name, self.prefix, *extra)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dashboard(nats_server: NatsServer) -> AsyncIterator[Dashboard]:
    async_playwright, chromium = _browser_or_skip()
    prefix = f"dash{os.getpid()}"
    ready: asyncio.Future[Dashboard] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def run() -> None:
        # pytest-asyncio sets a module fixture up and tears it down in different tasks;
        # task groups must be entered and left in one, so they live in this task.
        nc = await nats.connect(nats_server.url)
        try:
            # One missed heartbeat (1.5 s of silence) expires an instance: a killed one
            # leaves the page well within the 3 s the check allows.
            async with (
                natsreg.Registry(nc, prefix=prefix, missed_heartbeats=1, discover_jitter_s=0),
                bridge.run(nc, BridgeConfig(prefix=prefix), port=0) as running,
                async_playwright() as pw,
            ):
                await until_warm(nc, prefix)
                browser = await pw.chromium.launch(executable_path=chromium)
                ready.set_result(Dashboard(running.url, nats_server.url, prefix, browser))
                await stop.wait()
                await browser.close()
        finally:
            await nc.close()

    task = asyncio.create_task(run())
    await asyncio.wait((ready, task), return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # it failed to start: say why
    yield ready.result()
    stop.set()
    await task


async def new_page(dashboard: Dashboard, path: str, width: int = 1280, **options: Any) -> Any:
    context = await dashboard.browser.new_context(
        viewport={"width": width, "height": 800}, **options
    )
    page = await context.new_page()
    page.set_default_timeout(10_000)
    await page.goto(dashboard.url + path)
    return page


async def test_the_overview_lists_services_and_follows_a_kill_and_a_new_version(
    dashboard: Dashboard, unique: str
) -> None:
    first, second = f"alpha-{unique}", f"beta-{unique}"
    with dashboard.service(first) as a, dashboard.service(second) as b:
        read_id(a)
        read_id(b)
        page = await new_page(dashboard, "/_natsreg/ui")
        loads = []
        page.on("load", lambda _: loads.append(1))
        row_a = page.get_by_role("row").filter(has=page.get_by_role("link", name=first))
        row_b = page.get_by_role("row").filter(has=page.get_by_role("link", name=second))
        await row_a.wait_for()
        await row_b.wait_for()
        assert "1 passing" in await row_b.inner_text()
        assert await page.get_by_role("status").first.inner_text() == "Live"

        b.kill()  # SIGKILL: no goodbye, the registry notices the silence
        killed_at = time.monotonic()
        await row_b.wait_for(state="detached", timeout=5_000)
        assert time.monotonic() - killed_at < 3.0

        with dashboard.service(first, "2.0.0") as newer:
            read_id(newer)
            await page.get_by_role("cell", name="1.0.0, 2.0.0").wait_for()
            assert re.search(r"\b2\b", await row_a.get_by_role("cell").nth(3).inner_text())
        assert not loads, "the page reloaded"
        await page.context.close()


async def test_the_request_form_returns_the_reply_and_shows_a_validation_error(
    dashboard: Dashboard, unique: str
) -> None:
    name = f"gamma-{unique}"
    extra = ("--meta", "zone=eu-1", "--emits", "user.created", "--broadcast", "cache.flushed")
    with dashboard.service(name, *extra) as proc:
        instance_id = read_id(proc)
        page = await new_page(dashboard, "/_natsreg/ui")
        # By keyboard: from the overview's link to the service's page, then the form.
        await page.get_by_role("link", name=name).focus()
        await page.keyboard.press("Enter")
        await page.get_by_role("heading", name=name).wait_for()
        await page.get_by_role("cell", name=instance_id).wait_for()
        assert "zone=eu-1" in await page.get_by_role("table").first.inner_text()
        events = page.get_by_role("table", name=f"The events {name} consumes and emits")
        assert [await row.inner_text() for row in await events.get_by_role("row").all()] == [
            "Event\tRole\tMode",
            "cache.flushed\tconsumes\tbroadcast",
            "user.created\temits\t–",
        ]
        await page.get_by_label("Endpoint").select_option(f"{name}.echo")
        payload = page.get_by_label("Payload (JSON)")
        await payload.fill("")
        await payload.focus()
        await page.keyboard.type('{"greeting": "hello"}')
        await page.keyboard.press("Tab")
        await page.keyboard.press("Enter")  # the focused Send button
        outcome = page.get_by_role("status").filter(has_text="Reply")
        await outcome.get_by_text("Reply (200)").wait_for()
        assert '"greeting": "hello"' in await outcome.inner_text()

        await payload.fill('{"greeting": ')
        await page.get_by_role("button", name="Send").click()
        await page.get_by_text("The payload is not valid JSON").wait_for()

        # A typed endpoint: its schema is shown, a good payload gets the reply, a bad one the
        # service's validation error naming the field.
        await page.get_by_text("request", exact=True).click()  # opens the schema
        schema = page.get_by_role("cell").filter(has_text='"name"')
        assert '"string"' in await schema.inner_text()
        await page.get_by_label("Endpoint").select_option(f"{name}.greet")
        await payload.fill('{"name": "ada"}')
        await page.get_by_role("button", name="Send").click()
        await outcome.get_by_text("hello, ada").wait_for()
        await payload.fill('{"name": 42}')
        await page.get_by_role("button", name="Send").click()
        refused = page.get_by_role("status").filter(has_text="Error 400")
        await refused.wait_for()
        assert "$.name" in await refused.inner_text()
        await page.context.close()


async def test_both_pages_pass_axe_and_read_at_320_px(dashboard: Dashboard, unique: str) -> None:
    name = f"delta-{unique}"
    with dashboard.service(name, "--emits", "order.placed") as proc:
        read_id(proc)
        for path, width in (("/_natsreg/ui", 1280), (f"/_natsreg/ui/service/{name}", 320)):
            # axe is injected as a script, which the page's own policy (script-src 'self')
            # would refuse: this context bypasses it for the checker only.
            page = await new_page(dashboard, path, width=width, bypass_csp=True)
            await page.get_by_text(name).first.wait_for()
            await page.add_script_tag(path=str(AXE))
            result = await page.evaluate("axe.run(document)")
            serious = [
                f"{v['id']} ({v['impact']}): {v['help']}"
                for v in result["violations"]
                if v["impact"] in ("serious", "critical")
            ]
            assert serious == [], f"{path}: {serious}"
            # Readable at this width: nothing wider than the screen.
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} is {overflow} px wider than {width} px"
            await page.context.close()
