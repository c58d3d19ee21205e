"""The demo page in a real browser: live charts, notifications synced across tabs, and a
page that comes back by itself after the gateway is killed and restarted on the same port.

Screenshots go to the test's tmp dir; with UPDATE_SCREENSHOTS=1 to docs/images/ (the README
shows those).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.browser.conftest import CHROMIUM_ARGS, ROOT, GatewayProcess
from tests.conftest import API_KEY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60, func_only=True)]

WAIT_MS = 10_000  # every wait in this test is bounded by this (or less)
TOKEN_TTL_S = 8  # tab A's tokens live 8 s, so the client must refresh them during the test
IMAGES = ROOT / "docs" / "images"
USER = "42"  # the demo user (service.demo_producer.DEMO_USER)


class Wire:
    """The frames each page's sockets sent, by socket, as the browser saw them."""

    def __init__(self) -> None:
        self.sockets: list[tuple[str, list[dict[str, Any]]]] = []

    def attach(self, page: Any) -> None:
        def on_socket(ws: Any) -> None:
            sent: list[dict[str, Any]] = []
            self.sockets.append((ws.url, sent))
            ws.on("framesent", lambda payload: sent.append(_json(payload)))

        page.on("websocket", on_socket)

    def of(self, namespace: str) -> list[tuple[str, list[dict[str, Any]]]]:
        return [(url, sent) for url, sent in self.sockets if f"/ws/{namespace}?" in url]


def _json(payload: str | bytes) -> dict[str, Any]:
    value = json.loads(payload)
    return value if isinstance(value, dict) else {}


async def points(page: Any, topic: str) -> int:
    value = await page.locator(f'.chart[data-topic="{topic}"]').get_attribute("data-points")
    return int(value or 0)


async def wait_points(page: Any, topic: str, at_least: int) -> None:
    await page.wait_for_function(
        """([topic, n]) => Number(document.querySelector(
            `.chart[data-topic="${topic}"]`)?.dataset.points) >= n""",
        arg=[topic, at_least],
        timeout=WAIT_MS,
    )


async def publish_note(gateway: GatewayProcess, title: str) -> str:
    ident = f"note-{uuid.uuid4().hex[:12]}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway.base_url}/api/publish",
            json={
                "routing_key": f"notification.user.{USER}",
                "id": ident,
                "data": {"title": title, "body": "published by the browser test"},
            },
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp,
    ):
        assert resp.status == 202, await resp.text()
    return ident


async def screenshot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    await page.screenshot(path=str(path))
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, IMAGES / name)


async def test_demo_page_live_synced_and_self_healing(
    chromium: str, demo_gateway: GatewayProcess, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    read = re.compile(r"(^|\s)read(\s|$)")
    unread = re.compile(r"(^|\s)unread(\s|$)")
    page_errors: list[str] = []
    console: list[str] = []
    wire = Wire()
    url = f"{demo_gateway.base_url}/demo/"
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 820},
        )
        try:
            tab_a, tab_b = context.pages[0], await context.new_page()
            for page in (tab_a, tab_b):
                page.on("pageerror", lambda exc: page_errors.append(str(exc)))
                page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            wire.attach(tab_a)
            await tab_a.goto(f"{url}?ttl={TOKEN_TTL_S}")
            await tab_b.goto(url)
            for page in (tab_a, tab_b):
                await expect(page.locator("#status")).to_have_attribute(
                    "data-state", "live", timeout=WAIT_MS
                )

            # Live chart points and a notification, both from the synthetic producer.
            await wait_points(tab_a, "sales", 3)
            await expect(tab_a.locator("li.notification").first).to_be_visible(timeout=WAIT_MS)

            # A notification both tabs receive; marking it read in A marks it read in B.
            ident = await publish_note(demo_gateway, "Browser test")
            note_a = tab_a.locator(f'li.notification[data-id="{ident}"]')
            note_b = tab_b.locator(f'li.notification[data-id="{ident}"]')
            await expect(note_a).to_have_class(unread, timeout=WAIT_MS)
            await expect(note_b).to_have_class(unread, timeout=WAIT_MS)
            await note_a.get_by_role("button", name="Mark read").click()
            await expect(note_a).to_have_class(read, timeout=WAIT_MS)
            await expect(note_b).to_have_class(read, timeout=WAIT_MS)
            await expect(note_b.get_by_role("button")).to_be_disabled()
            unread_b = await tab_b.locator("li.notification.unread").count()
            await expect(tab_b.locator("#unread")).to_have_text(str(unread_b))
            await screenshot(tab_a, tmp_path, "demo.png")
            await screenshot(tab_b, tmp_path, "demo-second-tab.png")

            # Tab A's 8-second tokens were refreshed on the open sockets (`auth`).
            await tab_a.wait_for_function(
                "() => demo.dashboard.stats.refreshes >= 1 && "
                "demo.notifications.stats.refreshes >= 1",
                timeout=WAIT_MS,
            )

            # Unsubscribe from one topic: the choice must survive the reconnect.
            await tab_a.locator('input[data-topic="latency"]').uncheck()
            await expect(tab_a.locator("#log")).to_contain_text(
                "unsubscribed from latency", timeout=WAIT_MS
            )

            # Crash the gateway; the page notices, and comes back once it is restarted.
            await demo_gateway.kill()
            await expect(tab_a.locator("#status")).to_have_attribute(
                "data-state", "reconnecting", timeout=WAIT_MS
            )
            latency = await points(tab_a, "latency")
            sales = await points(tab_a, "sales")
            await demo_gateway.start()
            for page in (tab_a, tab_b):
                await expect(page.locator("#status")).to_have_attribute(
                    "data-state", "live", timeout=WAIT_MS
                )
            # Two new producer ticks reached A for sales, none for latency: re-subscribed
            # to exactly what the user chose (a bare new socket would get every topic).
            await wait_points(tab_a, "sales", sales + 2)
            assert await points(tab_a, "latency") == latency

            # Notifications flow again, to both tabs.
            again = await publish_note(demo_gateway, "After the restart")
            for page in (tab_a, tab_b):
                await expect(page.locator(f'li.notification[data-id="{again}"]')).to_be_visible(
                    timeout=WAIT_MS
                )
            await screenshot(tab_a, tmp_path, "demo-reconnected.png")

            stats = await tab_a.evaluate(
                "() => ({d: demo.dashboard.stats, n: demo.notifications.stats})"
            )
        finally:
            await context.close()

    assert page_errors == []
    # The page's Content-Security-Policy allowed everything it does (sockets included).
    assert [line for line in console if "Content Security Policy" in line] == []
    # One connect before the crash and one after: no 4001 drop despite 8-second tokens.
    assert (stats["d"]["connects"], stats["n"]["connects"]) == (2, 2), stats

    # What the client said after reconnecting: its subscriptions, then a refresh...
    # (sockets refused while the gateway was down sent nothing, and are left out)
    dashboard = [sent for _, sent in wire.of("dashboard") if sent]
    assert len(dashboard) == 2, [u.split("?")[0] for u, _ in wire.sockets]
    events = [(f["event"], f.get("data")) for f in dashboard[1]]
    subscribe = events.index(("subscribe", {"topics": ["sales", "visitors"]}))
    assert ("dashboard_refresh", {}) in events[subscribe + 1 :], events
    # ...and the notifications socket asked to resume after the last offset it saw.
    first, *later = (parse_qs(urlsplit(u).query) for u, _ in wire.of("notifications"))
    assert "since" not in first
    assert later
    assert all(int(query["since"][0]) >= 2 for query in later)
