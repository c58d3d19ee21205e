"""SIGTERM on a real process: paced closes, 503 at once, exit 0 in time (contract §3)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import mint
from tests.process.logged_process import GatewayProcess, base_env, free_port

SOCKETS = 500
DRAIN_S = 4.0
CONNECT_BATCH = 50

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def test_sigterm_spreads_closes_over_the_drain_window(
    http: aiohttp.ClientSession,
) -> None:
    env = base_env(
        GATEWAY_PORT=str(free_port()),
        GATEWAY_DRAIN_SECONDS=str(DRAIN_S),
        GATEWAY_MAX_CONNECTIONS_PER_USER=str(SOCKETS + 10),
    )
    gateway = await GatewayProcess.start(env)
    try:
        await _run_drain(gateway, http)
    finally:
        await gateway.kill()


async def _run_drain(gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    token = mint("drain-user", ttl_s=600)
    url = f"{gateway.ws_url}/ws/notifications?access_token={token}"
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    for _ in range(SOCKETS // CONNECT_BATCH):
        batch = await asyncio.gather(*(http.ws_connect(url) for _ in range(CONNECT_BATCH)))
        sockets.extend(batch)
    assert (await http.get(f"{gateway.url}/readyz")).status == 200

    closes: list[tuple[float, int | None]] = []

    async def watch(ws: aiohttp.ClientWebSocketResponse) -> None:
        msg = await ws.receive()
        closes.append((loop.time(), msg.data if msg.type is aiohttp.WSMsgType.CLOSE else None))

    watchers = [loop.create_task(watch(ws)) for ws in sockets]
    await asyncio.sleep(0)  # every watcher is now waiting on its socket

    started = loop.time()
    gateway.signal()
    first = await http.get(f"{gateway.url}/readyz")
    assert first.status == 503, "/readyz must turn 503 from the first moment"
    assert (await first.json())["status"] == "draining"

    # During the window the listener stays open: probes say 503, upgrades get 503.
    refused = await http.get(
        f"{gateway.ws_url}/ws/notifications?access_token={token}",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert refused.status == 503
    probes: list[int] = []

    async def probe() -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                probes.append((await http.get(f"{gateway.url}/readyz")).status)
            await asyncio.sleep(0.25)

    prober = loop.create_task(probe())
    try:
        await asyncio.wait_for(asyncio.gather(*watchers), DRAIN_S + 5)
        status = await gateway.wait(within=DRAIN_S + 5 - (loop.time() - started))
    finally:
        prober.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prober
    exited_after = loop.time() - started

    assert status == 0
    assert exited_after < DRAIN_S + 5
    assert probes
    assert set(probes) == {503}, probes
    codes = collections.Counter(code for _, code in closes)
    assert codes == {1001: SOCKETS}, codes
    offsets = sorted(t - started for t, _ in closes)
    per_second = collections.Counter(int(t) for t in offsets)
    assert max(per_second.values()) <= SOCKETS / 3, per_second
    # Spread over the window, not bunched at either end of it.
    assert offsets[SOCKETS // 2] == pytest.approx(DRAIN_S / 2, abs=0.75), offsets[SOCKETS // 2]
    assert DRAIN_S * 0.75 <= offsets[-1] <= DRAIN_S + 1.0, offsets[-1]
    for ws in sockets:
        await ws.close()
