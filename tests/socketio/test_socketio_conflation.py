"""Conflation on Socket.IO (contract §3): over the WebSocket fast path and over long-polling,
a client that stops reading gets, when it reads again, the newest value of every topic, never
an older after a newer, and its acks in order. Raw Engine.IO clients, so the test controls
exactly when the client reads."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from tests.conftest import Gateway, GatewayFactory, mint

TOPICS = [f"t{i}" for i in range(20)]
PAD = "x" * 2000
NS = "/dashboard"


def update_of(args: list[Any]) -> tuple[str, int, str]:
    """(topic, seq, id) of a dashboard_update's arguments (either payload shape)."""
    if len(args) > 1 and isinstance(args[1], dict) and "topic" in args[1]:
        return args[1]["topic"], args[0]["seq"], args[1]["id"]
    frame = args[0]
    return frame["topic"], frame["data"]["seq"], frame["id"]


class Checker:
    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.last_id: dict[str, str] = {}
        self.updates = 0
        self.acks: list[int] = []

    def take(self, packet: str) -> None:
        """One Engine.IO message packet ("4..."); pings and others are ignored."""
        if not packet.startswith("4" + "2" + NS + ",") and not packet.startswith("43" + NS):
            return
        body = packet[len("42" + NS + ",") :]
        if packet[1] == "3":
            digits = len(body) - len(body.lstrip("0123456789"))
            self.acks.append(int(body[:digits]))
            return
        args = orjson.loads(body)
        assert args[0] == "dashboard_update", args
        topic, seq, ident = update_of(args[1:])
        assert seq > self.last.get(topic, -1), f"{topic}: {seq} after {self.last[topic]}"
        self.last[topic], self.last_id[topic] = seq, ident
        self.updates += 1

    def done(self, published: dict[str, int], acks: int) -> bool:
        return self.last == published and len(self.acks) >= acks


async def publish_until_conflated(
    gateway: Gateway, send_ack: Any, at_least: int
) -> tuple[dict[str, int], dict[str, str], int, int]:
    published: dict[str, int] = {}
    ids: dict[str, str] = {}
    acks = n = 0
    while gateway.node.outbox.conflated_frames < at_least:
        assert n < 30_000, "never conflated"
        topic = TOPICS[n % len(TOPICS)]
        ids[topic] = await gateway.node.publish(f"dashboard.{topic}", {"seq": n, "pad": PAD})
        published[topic] = n
        n += 1
        if n % 500 == 0:
            acks += 1
            await send_ack(f'42{NS},{acks}["subscribe",{{"topics":["*"]}}]')
        await asyncio.sleep(0)
    return published, ids, acks, n


def connect_packet() -> str:
    return f"40{NS}," + orjson.dumps({"token": mint("slow")}).decode()


async def test_websocket_slow_reader_gets_the_newest_value_of_each_topic(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(send_queue_bytes=256 * 1024)
    server = gateway.client.server
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"http://{server.host}:{server.port}/socket.io/?EIO=4&transport=websocket"
        )
        assert (await ws.receive_str(timeout=5)).startswith("0{")
        await ws.send_str(connect_packet())
        assert (await ws.receive_str(timeout=5)).startswith(f"40{NS},")
        published, ids, acks, n = await publish_until_conflated(gateway, ws.send_str, 1000)
        checker = Checker()
        async with asyncio.timeout(15):
            while not checker.done(published, acks):
                packet = await ws.receive_str()
                if packet == "2":
                    await ws.send_str("3")
                checker.take(packet)
        assert checker.acks == list(range(1, acks + 1))
        assert checker.updates < n
        assert checker.last_id == ids
        await ws.close()


async def test_polling_slow_reader_gets_the_newest_value_of_each_topic(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(send_queue_bytes=256 * 1024)
    server = gateway.client.server
    base = f"http://{server.host}:{server.port}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as resp:
            sid = orjson.loads((await resp.text())[1:])["sid"]
        url = f"{base}&sid={sid}"

        async def post(packet: str) -> None:
            async with http.post(url, data=packet) as resp:
                assert resp.status == 200

        async def poll() -> list[str]:
            async with http.get(url) as resp:
                assert resp.status == 200
                return (await resp.text()).split("\x1e")

        await post(connect_packet())
        assert (await poll())[0].startswith(f"40{NS},")
        # It stops polling: one batch waits in Engine.IO, the rest conflates in the session.
        published, ids, acks, n = await publish_until_conflated(gateway, post, 2000)
        checker = Checker()
        async with asyncio.timeout(15):
            while not checker.done(published, acks):
                for packet in await poll():
                    if packet == "2":
                        await post("3")
                    checker.take(packet)
        assert checker.acks == list(range(1, acks + 1))
        assert checker.updates < n
        assert checker.last_id == ids
    metrics = await (await gateway.client.get("/metrics")).text()
    assert 'realtime_gateway_frames_conflated_total{transport="socketio"}' in metrics
