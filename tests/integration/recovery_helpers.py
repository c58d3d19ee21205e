"""Helpers shared by the recovery tests on both backbones."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import Gateway, receive


async def until_resumed(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[Any], Any]:
    """The frames before `resumed`, and the `resumed` data."""
    frames: list[Any] = []
    async with asyncio.timeout(10):
        while True:
            frame = await receive(ws)
            if frame["event"] == "resumed":
                return frames, frame["data"]
            frames.append(frame)


async def last_offset_seen(gateway: Gateway, user: str) -> int:
    """Connect, receive one notification, disconnect: the offset a client would keep."""
    ws = await gateway.connect("notifications", user=user)
    await gateway.publish(f"notification.user.{user}", {"n": 0})
    frame = await receive(ws)
    await ws.close()
    return int(frame["offset"])
