"""GATEWAY_WORKERS=N on real processes: one port, supervised workers, totals over workers."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import mint, nothing_arrives
from tests.metricsutil import parse, total, value
from tests.process.logged_process import GatewayProcess, Record, base_env, free_port, run_cli

P = "realtime_gateway"
SOCKETS = 16
DRAIN_S = 1.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# The supervisor is backbone-agnostic. `serve` refuses several workers on the embedded
# backbone (they could not share events), so the mechanics tests start the supervisor
# directly; the broadcast test below runs the real `serve` against RabbitMQ.
SUPERVISE = (
    "import os, sys\n"
    "from service import config, supervisor\n"
    "from service.log import configure_logging\n"
    "c = config.load(os.environ)\n"
    "configure_logging(c.log_level, c.log_format)\n"
    "sys.exit(supervisor.Supervisor(c).run())\n"
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def _event(name: str, **fields: object) -> object:
    def match(record: Record) -> bool:
        return record.get("event") == name and all(record.get(k) == v for k, v in fields.items())

    return match


async def _scrape(http: aiohttp.ClientSession, gateway: GatewayProcess) -> dict[str, float]:
    text = await (await http.get(f"{gateway.url}/metrics")).text()
    samples = parse(text)
    return {
        "connections": total(samples, f"{P}_connections"),
        "connects": total(samples, f"{P}_connects_total"),
        "workers": value(samples, f"{P}_worker_processes"),
        "restarts": value(samples, f"{P}_worker_restarts_total"),
    }


async def _scrape_until(
    http: aiohttp.ClientSession, gateway: GatewayProcess, expected: dict[str, float]
) -> None:
    """Every scrape (answered by either worker) must reach `expected` within a few seconds."""
    got: dict[str, float] = {}
    async with asyncio.timeout(10):
        while True:
            got = await _scrape(http, gateway)
            if all(got[k] == v for k, v in expected.items()):
                break
            await asyncio.sleep(0.1)
    # The scrape is answered by whichever worker accepts it: ask several times.
    for _ in range(6):
        got = await _scrape(http, gateway)
        assert all(got[k] == v for k, v in expected.items()), (expected, got)


async def test_workers_share_one_port_and_are_restarted(http: aiohttp.ClientSession) -> None:
    env = base_env(
        GATEWAY_PORT=str(free_port()),
        GATEWAY_WORKERS="2",
        GATEWAY_DRAIN_SECONDS=str(DRAIN_S),
        GATEWAY_INSTANCE_ID="gw-test",
    )
    gateway = await GatewayProcess.start(env, argv=("-c", SUPERVISE), count=2)
    try:
        listening = gateway.matching(_event("listening"))
        assert {r["instance"] for r in listening} == {"gw-test-w1", "gw-test-w2"}
        assert {r["port"] for r in listening} == {gateway.port}
        started = {r["worker"]: r["pid"] for r in gateway.matching(_event("worker_started"))}
        assert len(set(started.values())) == 2
        assert gateway.matching(_event("socketio_polling_needs_one_worker", workers=2))

        sockets = {
            user: await http.ws_connect(
                f"{gateway.ws_url}/ws/notifications?access_token={mint(user)}"
            )
            for user in (f"user-{i}" for i in range(SOCKETS))
        }
        connected = await gateway.wait_log(_event("connected"), SOCKETS)
        instance_of = {r["user_id"]: r["instance"] for r in connected}
        per_worker = collections.Counter(instance_of.values())
        assert set(per_worker) == {"gw-test-w1", "gw-test-w2"}, per_worker  # SO_REUSEPORT
        await _scrape_until(
            http, gateway, {"connections": SOCKETS, "connects": SOCKETS, "workers": 2}
        )

        # A worker that dies is logged and restarted, with a new instance id.
        os.kill(started[1], signal.SIGKILL)
        await gateway.wait_log(_event("worker_exited", worker=1, pid=started[1]))
        await gateway.wait_log(_event("listening", instance="gw-test-w1-r1"))
        assert gateway.matching(_event("worker_exited"))[0]["exitcode"] == -signal.SIGKILL
        for user, ws in sockets.items():
            if instance_of[user] == "gw-test-w1":
                msg = await ws.receive(timeout=5)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        survivors = per_worker["gw-test-w2"]
        # Counters keep the dead worker's share; its live gauges are gone.
        await _scrape_until(
            http,
            gateway,
            {"connections": survivors, "connects": SOCKETS, "workers": 2, "restarts": 1},
        )

        # SIGTERM: every worker drains (1001) and the supervisor exits 0.
        gateway.signal(signal.SIGTERM)
        for user, ws in sockets.items():
            if instance_of[user] == "gw-test-w2":
                msg = await ws.receive(timeout=DRAIN_S + 5)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        assert await gateway.wait(within=DRAIN_S + 10) == 0
        assert len(gateway.matching(_event("stopped"))) == 2
        assert gateway.matching(_event("supervisor_stopped", status=0))
        for ws in sockets.values():
            await ws.close()
    finally:
        await gateway.kill()


async def test_port_0_picks_one_port_for_every_worker(http: aiohttp.ClientSession) -> None:
    env = base_env(GATEWAY_PORT="0", GATEWAY_WORKERS="2", GATEWAY_DRAIN_SECONDS="0")
    gateway = await GatewayProcess.start(env, argv=("-c", SUPERVISE), count=2)
    try:
        ports = {r["port"] for r in gateway.matching(_event("listening"))}
        (port,) = ports
        assert port != 0
        assert gateway.matching(_event("supervisor_started", port=port))
        for _ in range(4):
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(within=10) == 0
    finally:
        await gateway.kill()


async def test_workers_exit_when_the_supervisor_is_killed() -> None:
    env = base_env(GATEWAY_PORT=str(free_port()), GATEWAY_WORKERS="2", GATEWAY_DRAIN_SECONDS="0")
    gateway = await GatewayProcess.start(env, argv=("-c", SUPERVISE), count=2)
    try:
        pids = [r["pid"] for r in gateway.matching(_event("worker_started"))]
        gateway.signal(signal.SIGKILL)
        await gateway.wait(within=5)
        await gateway.wait_log(_event("stopped"), 2)  # both drained on their own
        await asyncio.wait_for(asyncio.gather(*(_exited(pid) for pid in pids)), 10)
    finally:
        await gateway.kill()


async def _exited(pid: int) -> None:
    """Return once a process that is not our child has exited (Linux pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(fd, gone.set)
    try:
        await gone.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def test_serve_refuses_several_workers_on_the_embedded_backbone() -> None:
    env = base_env(GATEWAY_PORT=str(free_port()), GATEWAY_WORKERS="2")
    out = run_cli("serve", env=env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "GATEWAY_WORKERS" in lines[0]
    assert "GATEWAY_AMQP_URL" in lines[0]


HAS_AMQP = importlib.util.find_spec("service.backbone.amqp") is not None


@pytest.mark.amqp
@pytest.mark.skipif(not HAS_AMQP, reason="needs the RabbitMQ backbone (service.backbone.amqp)")
async def test_clients_on_both_workers_receive_one_broadcast(
    http: aiohttp.ClientSession, amqp_broker: Any, amqp_names: Any, service: Any
) -> None:
    env = base_env(
        GATEWAY_PORT=str(free_port()),
        GATEWAY_WORKERS="2",
        GATEWAY_AMQP_URL=amqp_broker.url,
        GATEWAY_EXCHANGE=amqp_names.events,
        GATEWAY_UPSTREAM_EXCHANGE=amqp_names.upstream,
        GATEWAY_DRAIN_SECONDS="0",
        GATEWAY_INSTANCE_ID=f"gw-{amqp_names.tag}",
    )
    workers = {f"gw-{amqp_names.tag}-w1", f"gw-{amqp_names.tag}-w2"}
    gateway = await GatewayProcess.start(env, count=2)  # the real `serve`
    try:
        sockets = [
            await http.ws_connect(f"{gateway.ws_url}/ws/notifications?access_token={mint(f'u{i}')}")
            for i in range(SOCKETS)
        ]
        connected = await gateway.wait_log(_event("connected"), SOCKETS)
        assert {r["instance"] for r in connected} == workers  # clients on both workers

        # Published once, by a service, to the exchange: each worker's queue gets a copy.
        ident = await service.publish("notification.broadcast", {"data": {"hello": "all"}})
        for ws in sockets:
            frame = (await ws.receive(timeout=5)).json()
            assert (frame["event"], frame["id"], frame["data"]) == (
                "notification_new",
                ident,
                {"hello": "all"},
            )
        for ws in sockets:
            assert await nothing_arrives(ws, 0.2)  # once per socket, not once per worker

        # Totals over both workers, whichever of them answers the scrape.
        for _ in range(4):
            samples = parse(await (await http.get(f"{gateway.url}/metrics")).text())
            assert total(samples, f"{P}_deliveries_total") == SOCKETS
            assert value(samples, f"{P}_events_total", kind="broadcast") == 2
            assert total(samples, f"{P}_connections") == SOCKETS
            assert value(samples, f"{P}_backbone_ready") == 1

        gateway.signal(signal.SIGTERM)
        assert await gateway.wait(within=15) == 0
        for ws in sockets:
            await ws.close()
    finally:
        await gateway.kill()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_weak_secret_stops_start_up_once(workers: str) -> None:
    env = base_env(GATEWAY_PORT=str(free_port()), GATEWAY_WORKERS=workers)
    env["GATEWAY_JWT_SECRET"] = "short"
    if workers != "1":
        env["GATEWAY_AMQP_URL"] = "amqp://guest:guest@127.0.0.1:1/"  # never reached
    out = run_cli("serve", env=env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # no worker started, no restart loop
    assert lines[0].startswith("realtime-gateway: configuration error: GATEWAY_JWT_SECRET:")
