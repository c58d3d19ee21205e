"""Fixtures for the Socket.IO tests: socket.io-client v4 installed on demand, Node clients.

The client comes from the npm registry, pinned by package.json and package-lock.json beside
this file, and is installed once into `.cache/node/socketio` (gitignored) with `npm ci`.
Without Node or npm, or when the install fails, the tests are skipped locally and fail in CI
(`CI` set), so a CI run never passes without them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.conftest import Gateway
from tests.socketio.driver import ORIGINAL_APP_JS, NodeClients
from tests.socketio.install import InstallError, install


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"socket.io-client is needed in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def socketio_client_modules() -> Path:
    """The node_modules folder holding the pinned socket.io-client (installed if needed)."""
    try:
        return install()
    except InstallError as exc:
        _unavailable(str(exc))


NodeFactory = Callable[[Gateway], Awaitable[NodeClients]]


@pytest.fixture
async def node_clients(socketio_client_modules: Path) -> AsyncIterator[NodeFactory]:
    """Factory: `await node_clients(gateway)` → a Node process with socket.io-client."""
    started: list[NodeClients] = []

    async def start(gateway: Gateway) -> NodeClients:
        server = gateway.client.server
        clients = await NodeClients.start(
            socketio_client_modules, f"http://{server.host}:{server.port}"
        )
        started.append(clients)
        return clients

    yield start
    for clients in started:
        await clients.stop()


@pytest.fixture
async def original_apps(socketio_client_modules: Path) -> AsyncIterator[NodeFactory]:
    """Factory: `await original_apps(gateway)` → a Node process running the original
    gateway's web app unchanged (tests/socketio/original_client.mjs)."""
    started: list[NodeClients] = []

    async def start(gateway: Gateway) -> NodeClients:
        server = gateway.client.server
        clients = await NodeClients.start(
            socketio_client_modules, f"http://{server.host}:{server.port}", ORIGINAL_APP_JS
        )
        started.append(clients)
        return clients

    yield start
    for clients in started:
        await clients.stop()


# Default options (long-polling first, then the WebSocket upgrade) and WebSocket only.
TRANSPORTS = {
    "polling-first": {},
    "websocket-only": {"transports": ["websocket"]},
}


@pytest.fixture(params=list(TRANSPORTS))
def transport_opts(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Client options for each way a socket.io-client may connect."""
    return dict(TRANSPORTS[request.param])


async def expect_replay(clients: NodeClients, name: str, missed: list[str]) -> None:
    """Socket `name`'s next events are the `missed` notifications in order, then `resumed`
    with `recovered: true`."""
    lines = [await clients.expect(name=name, type="event") for _ in range(len(missed) + 1)]
    assert [line["event"] for line in lines] == ["notification_new"] * len(missed) + ["resumed"]
    assert [line["args"][1]["id"] for line in lines[:-1]] == missed
    assert lines[-1]["args"] == [{"recovered": True, "replayed": len(missed)}, {}]
