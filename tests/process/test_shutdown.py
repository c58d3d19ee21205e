"""SIGTERM on a real process: sockets get 1001, the process exits 0 within the window."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.conftest import mint
from tests.process.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow


async def test_sigterm_closes_every_socket_with_1001_and_exits_0() -> None:
    drain_s = 1.0
    async with (
        GatewayProcess(env={"GATEWAY_DRAIN_SECONDS": str(drain_s)}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        sockets = [
            await http.ws_connect(
                f"{gateway.base}/ws/{ns}", headers={"Authorization": f"Bearer {mint(str(i))}"}
            )
            for i, ns in enumerate(["dashboard", "notifications"] * 5)
        ]
        started = time.monotonic()
        gateway.terminate()

        async def close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
            msg = await ws.receive(timeout=drain_s + 5)
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            return ws.close_code

        codes = await asyncio.gather(*(close_code(ws) for ws in sockets))
        status = await gateway.wait(timeout=drain_s + 5)
        elapsed = time.monotonic() - started
    assert codes == [1001] * len(sockets)
    assert status == 0
    assert elapsed < drain_s + 5


async def test_readyz_turns_503_at_once_and_new_upgrades_are_refused() -> None:
    async with (
        GatewayProcess(env={"GATEWAY_DRAIN_SECONDS": "3"}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        held = await http.ws_connect(
            f"{gateway.base}/ws/dashboard", headers={"Authorization": f"Bearer {mint('1')}"}
        )
        gateway.terminate()
        async with asyncio.timeout(2):
            while True:  # the signal is handled asynchronously: wait for the flip
                async with http.get(f"{gateway.base}/readyz") as resp:
                    if resp.status == 503:
                        assert (await resp.json())["status"] == "draining"
                        break
                await asyncio.sleep(0.02)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                f"{gateway.base}/ws/dashboard", headers={"Authorization": f"Bearer {mint('2')}"}
            )
        assert refused.value.status == 503
        msg = await held.receive(timeout=8)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert held.close_code == 1001
        assert await gateway.wait(timeout=10) == 0


async def test_invalid_configuration_exits_2_with_one_line() -> None:
    template = GatewayProcess()
    proc = await asyncio.create_subprocess_exec(
        *template.args_for("--port", "notaport"),
        env=template.env,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert "GATEWAY_PORT" in lines[0]


async def test_sigterm_goes_through_begin_drain_and_logs_drain_started() -> None:
    async with GatewayProcess(env={"GATEWAY_DRAIN_SECONDS": "0"}) as gateway:
        gateway.terminate()
        assert await gateway.wait(timeout=10) == 0
        records = [json.loads(line) for line in (await gateway.stderr()).splitlines() if line]
    events = [r.get("event") for r in records]
    assert "drain_started" in events
    assert events.index("sigterm") < events.index("drain_finished")
    assert events.index("drain_started") < events.index("drain_finished")
