"""`realtime-gateway serve` with a broker that is down at start-up, as a real process.

The broker's port is a TCP proxy that refuses connections at first and forwards to the real
broker later: the gateway (one process, or a supervisor with two workers) serves, unready, and
turns ready by itself. A wrong password still stops it with exit 2 and one line on stderr.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.broker import Broker, Names, TcpProxy
from tests.process.logged_process import GatewayProcess, base_env, free_port, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.amqp, pytest.mark.timeout(120)]

READY_S = 40.0


async def _status(path: str, gateway: GatewayProcess) -> tuple[int, Any]:
    # A fresh connection each time, so that with several workers any of them may answer.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.get(f"{gateway.url}{path}") as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_waits_for_a_broker_that_is_down_at_start_up(
    workers: int, amqp_broker: Broker, amqp_names: Names, broker_proxy: TcpProxy
) -> None:
    await broker_proxy.cut()
    env = base_env(
        GATEWAY_PORT=str(free_port()),
        GATEWAY_WORKERS=str(workers),
        GATEWAY_AMQP_URL=broker_proxy.url(amqp_broker.url),
        GATEWAY_EXCHANGE=amqp_names.events,
        GATEWAY_UPSTREAM_EXCHANGE=amqp_names.upstream,
        GATEWAY_RECOVERY_WINDOW_SECONDS="0",
        GATEWAY_DRAIN_SECONDS="0",
        GATEWAY_INSTANCE_ID=f"gw-{amqp_names.tag}",
    )
    gateway = await GatewayProcess.start(env, wait_for="backbone_connect_failed", count=workers)
    try:
        failed = gateway.matching(lambda r: r.get("event") == "backbone_connect_failed")
        password = URL(amqp_broker.url).password
        assert all("***" in r["url"] and f":{password}@" not in r["url"] for r in failed)
        await gateway.wait_log(lambda r: r.get("event") == "listening", workers)
        for _ in range(2 * workers):
            assert (await _status("/healthz", gateway))[0] == 200
            status, body = await _status("/readyz", gateway)
            assert status == 503
            assert body["status"] == "unavailable"
            assert body["reason"]

        await broker_proxy.restore()
        await gateway.wait_log(lambda r: r.get("event") == "backbone_connected", workers, READY_S)
        for _ in range(4 * workers):
            assert (await _status("/readyz", gateway))[0] == 200
        assert not gateway.matching(lambda r: r.get("event") == "worker_exited")
    finally:
        await gateway.kill()


def test_serve_exits_2_with_one_line_when_the_broker_refuses_the_login(
    amqp_broker: Broker,
) -> None:
    env = base_env(
        GATEWAY_PORT=str(free_port()),
        GATEWAY_AMQP_URL=str(URL(amqp_broker.url).with_password("wrong-pw")),
        GATEWAY_LOG_LEVEL="error",
    )
    done = run_cli("serve", env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("realtime-gateway: configuration error: GATEWAY_AMQP_URL: ")
    assert "authentication refused" in lines[0]
    assert "wrong-pw" not in lines[0]


def test_the_publish_command_still_fails_fast_when_the_broker_is_down() -> None:
    env = base_env(GATEWAY_AMQP_URL=f"amqp://guest:pw@127.0.0.1:{free_port()}/")
    done = run_cli("publish", "notification.broadcast", "{}", env=env)
    assert done.returncode == 1
    assert "cannot publish to RabbitMQ at amqp://guest:***@" in done.stderr
