"""Shared fixtures: a gateway on a real port with real WebSocket clients."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.auth import Authenticator
from service.backbone.base import Backbone
from service.backbone.memory import MemoryBackbone
from service.config import Config
from service.node import Node
from service.transports.context import GATEWAY

pytest_plugins = ["tests.broker"]  # RabbitMQ fixtures: amqp_broker, amqp_names, service, ...

SECRET = "test-secret-" + "s" * 32
API_KEY = "test-api-key"
RECEIVE_TIMEOUT_S = 5.0


def make_config(**overrides: Any) -> Config:
    """A Config for tests: a known secret and API key, small drain window, quiet logs."""
    base = Config(
        jwt_secret=SECRET,
        api_keys=(API_KEY,),
        drain_s=0.5,
        binding_grace_s=0.2,
        instance_id="test-instance",
    )
    return dataclasses.replace(base, **overrides)


def mint(sub: str, **kwargs: Any) -> str:
    """A valid HS256 token for `sub` signed with the test secret."""
    return Authenticator(secret=SECRET).mint(sub, **kwargs)


class Gateway:
    """A running gateway app with helpers to connect clients and publish."""

    def __init__(self, client: TestClient[Any, Any], app: web.Application) -> None:
        self.client = client
        self.app = app

    @property
    def node(self) -> Node:
        return self.app[GATEWAY].node

    @property
    def backbone(self) -> Backbone:
        return self.node.backbone

    async def connect(
        self,
        namespace: str,
        *,
        token: str | None = None,
        user: str | None = None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket; `user` mints a token for that sub."""
        if user is not None:
            token = mint(user)
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        return await self.client.ws_connect(
            f"/ws/{namespace}", params=query, headers=hdrs, **kwargs
        )

    async def publish(
        self, routing_key: str, data: Any, *, event: str | None = None, ident: str | None = None
    ) -> str:
        """Publish through `POST /api/publish`; returns the id."""
        body: dict[str, Any] = {"routing_key": routing_key, "data": data}
        if event is not None:
            body["event"] = event
        if ident is not None:
            body["id"] = ident
        resp = await self.client.post(
            "/api/publish", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
        )
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["id"])


async def receive(ws: aiohttp.ClientWebSocketResponse, within: float = RECEIVE_TIMEOUT_S) -> Any:
    """The next JSON frame, failing the test after `within` seconds."""
    msg = await ws.receive(timeout=within)
    assert msg.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg!r}"
    return msg.json()


async def request(
    ws: aiohttp.ClientWebSocketResponse, event: str, data: Any = None, ack: int = 1
) -> Any:
    """Send an event with an ack id and return the answer to it (skipping other frames)."""
    await ws.send_json({"event": event, "data": data, "ack": ack})
    async with asyncio.timeout(RECEIVE_TIMEOUT_S):
        while True:
            frame = await receive(ws)
            if frame.get("ack") == ack and frame["event"] in ("ack", "error"):
                return frame


async def nothing_arrives(ws: aiohttp.ClientWebSocketResponse, within: float = 0.3) -> bool:
    """True when no frame arrives within `within` seconds (used after a barrier message)."""
    try:
        msg = await ws.receive(timeout=within)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected frame: {msg!r}")


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> GatewayFactory:
    """Factory: `await start_gateway(**config_overrides, backbone=...)` → Gateway."""

    async def start(backbone: Backbone | None = None, **overrides: Any) -> Gateway:
        config = make_config(**overrides)
        app = create_app(config, backbone=backbone or MemoryBackbone())
        client = await aiohttp_client(app)
        return Gateway(client, app)

    return start


@pytest.fixture
async def gateway(start_gateway: GatewayFactory) -> Gateway:
    """A gateway with the embedded backbone and test defaults."""
    return await start_gateway()
